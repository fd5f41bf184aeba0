//! A module's long poll for its next command (`GET /v1/queue/{queue}`) and
//! its reply to one (`POST /v1/queue/{reqid}`), docs/protocol.md §1.2–§1.4.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::{split_queue_token, Failure, FailureKind, JsonMap};
use serde_json::Value;

use super::{authorize, body_limits, header_token, refused, ModuleQuery};
use crate::logs::LogLevel;
use crate::registry::{Caller, Module, ModuleStatus};
use crate::AppState;

/// Longest a poll is held before it is answered 204 (docs/protocol.md §1.2:
/// ≤ 10 s, below the SDKs' 15 s client timeout).
pub const POLL_WAIT: Duration = Duration::from_secs(10);

/// The module polling `queue`: by id when given, else the module owning the queue.
fn polling_module(state: &AppState, queue: &str, module_id: Option<&str>) -> Option<Arc<Module>> {
    match module_id {
        Some(id) => state.registry.get(id).cloned(),
        None => state
            .registry
            .modules()
            .iter()
            .find(|m| m.queue == queue)
            .cloned(),
    }
}

/// `GET /v1/queue/{queue}[~token]`: holds the poll up to [`POLL_WAIT`] and
/// answers the next queue item (200) or nothing (204); 403 for a queue the
/// module does not own or a missing or stale token.
pub(super) async fn poll(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ModuleQuery>,
) -> HttpResponse {
    let name = path.into_inner();
    let (queue, queue_token) = split_queue_token(&name);
    let queue = queue.to_ascii_lowercase();
    let token = queue_token
        .map(str::to_owned)
        .or_else(|| header_token(&req));
    let Some(module) = polling_module(&state, &queue, query.module_id.as_deref()) else {
        return refused(format!("no module serves queue '{queue}'"));
    };
    if module.queue != queue {
        return refused(format!(
            "module {} takes commands from queue '{}', not '{queue}'",
            module.id(),
            module.queue
        ));
    }
    let caller = match authorize(&state, &module, token.as_deref(), true) {
        Ok(caller) => caller,
        Err(why) => return refused(why),
    };
    if caller == Caller::Untokened {
        // A module started outside the server (allowed): it runs, so it is
        // Started, as CodeProject marks any module that polls.
        module.update(|s| {
            if !matches!(s.status, ModuleStatus::Starting | ModuleStatus::Started) {
                s.status = ModuleStatus::Started;
            }
        });
    }
    module.seen();
    // Legacy (pre-2.5.2) modules report their device on each poll.
    if let (Some(provider), Some(_)) = (&query.execution_provider, &query.can_use_gpu) {
        let device = if provider.eq_ignore_ascii_case("CPU") {
            "CPU"
        } else {
            "GPU"
        };
        module.update(|s| s.inference_device = Some(device.to_owned()));
    }
    // A module that went away while waiting (crashed, or its client timed
    // out) is not handed a command: dequeue asks first.
    tracing::debug!(queue, module = module.id(), "poll waiting");
    match state
        .queues
        .dequeue(&queue, module.id(), POLL_WAIT, || {
            crate::conn::client_connected(&req)
        })
        .await
    {
        Some(item) => {
            tracing::debug!(queue, reqid = item.reqid, "poll handed a command");
            HttpResponse::Ok().json(item)
        }
        None => HttpResponse::NoContent().finish(),
    }
}

/// `POST /v1/queue/{reqid}`: the module's reply to a command, delivered to
/// the client that waits for it; 400 for a body that is not a JSON object
/// (the client hears that too) or a `reqid` nobody waits for.
pub(super) async fn reply(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    let reqid = path.into_inner();
    // A token, when sent, must be the current one of the module that took
    // the command.
    if let (Some(token), Some(taker)) = (header_token(&req), state.queues.taker(&reqid)) {
        if let Some(module) = state.registry.get(&taker) {
            if let Err(why) = authorize(&state, module, Some(&token), true) {
                return refused(why);
            }
        }
    }
    let limits = body_limits(&state);
    let bytes = match crate::payload::read_body(req.headers(), body, limits).await {
        Ok(bytes) => bytes,
        Err(err) => {
            // The module will not send it again: the client hears now.
            if let Some(delivery) = state.queues.take(&reqid) {
                delivery.send(Err(Failure::new(
                    FailureKind::InvalidReply,
                    format!("The module's response could not be read: {err} (#reqid {reqid})"),
                )));
            }
            return HttpResponse::BadRequest()
                .content_type("text/plain")
                .body(format!("cannot read the response body: {err}"));
        }
    };
    let parsed: Result<JsonMap, Failure> = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Err(format!("null json returned from backend (#reqid {reqid})")),
        Ok(_) => Err(format!(
            "Invalid JSON response from backend: not an object (#reqid {reqid})"
        )),
        Err(e) => Err(format!(
            "Invalid JSON response from backend: {e} (#reqid {reqid})"
        )),
    }
    .map_err(|message| Failure::new(FailureKind::InvalidReply, message));

    let Some(delivery) = state.queues.take(&reqid) else {
        let name = web::Query::<ModuleQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().module_id)
            .and_then(|id| state.registry.get(&id).map(|m| m.name().to_owned()))
            .unwrap_or_else(|| "Server".into());
        state.logs.add(
            LogLevel::Warning,
            &name,
            "",
            &format!("a module answered a request nobody waits for (#reqid {reqid})"),
        );
        return HttpResponse::BadRequest()
            .content_type("text/plain")
            .body("failure to set response.");
    };
    let module = state.registry.get(&delivery.origin.module_id).cloned();
    if let Some(module) = &module {
        module.seen();
        if let Ok(reply) = &parsed {
            let meta = modhost_protocol::ReplyMeta::read(reply);
            module.update(|s| {
                if meta
                    .command
                    .as_deref()
                    .is_none_or(|c| !c.eq_ignore_ascii_case("status"))
                {
                    s.request_count += 1;
                }
                if let Some(device) = meta.inference_device {
                    s.inference_device = Some(device);
                }
            });
            state.commands.on_reply(module, &delivery, reply);
        }
    }
    let problem = parsed.as_ref().err().map(|f| f.message.clone());
    delivery.send(parsed);
    match problem {
        None => HttpResponse::Ok()
            .content_type("text/plain")
            .body("Response saved."),
        Some(problem) => {
            let name = module.as_ref().map_or("Server", |m| m.name());
            state.logs.add(LogLevel::Warning, name, "", &problem);
            HttpResponse::BadRequest()
                .content_type("text/plain")
                .body(problem)
        }
    }
}
