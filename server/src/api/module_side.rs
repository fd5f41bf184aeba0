//! Endpoints modules call (docs/protocol.md §1.2–§1.6, §4.1, §4.2):
//! `GET /v1/queue/{queue}` (long poll), `POST /v1/queue/{reqid}` (reply),
//! `POST /v1/queue/updatemodulestatus/{moduleId}`,
//! `POST /v1/queue/progress/{commandId}` (modhost's progress push) and
//! `POST /v1/log/`.
//!
//! Who may call them: a module proves it is the current launch with its
//! launch token, in the `X-Modhost-Token` header or after `~` in the queue
//! name it polls. Polls and pushes need it; a reply needs either it or the
//! `reqid`, which only the poll that took the command learned. Status updates
//! and log entries without a token are taken from this machine only, since
//! the unmodified Python SDK cannot send one. `allow_external_modules` lets
//! modules started outside the server poll without a token.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::{
    split_queue_token, Failure, FailureKind, JsonMap, ProgressBatch, ProgressUpdate, TOKEN_HEADER,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::logs::{LogLevel, MAX_ENTRY_BYTES};
use crate::registry::{Caller, Module, ModuleStatus};
use crate::{envelope, AppState};

/// Longest a poll is held before it is answered 204 (docs/protocol.md §1.2:
/// ≤ 10 s, below the SDKs' 15 s client timeout).
pub const POLL_WAIT: Duration = Duration::from_secs(10);

/// Largest `POST /v1/log/` body, in bytes: an entry of [`MAX_ENTRY_BYTES`]
/// once urlencoded, plus its other fields.
const LOG_BODY_LIMIT: usize = 4 * MAX_ENTRY_BYTES;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/queue/updatemodulestatus/{module_id}",
        web::post().to(update_status),
    )
    .route(
        "/queue/updatemodulestatus",
        web::post().to(update_status_without_id),
    )
    .route("/queue/progress", web::post().to(progress_batch))
    .route("/queue/progress/{command_id}", web::post().to(progress))
    .route("/queue/{queue}", web::get().to(poll))
    .route("/queue/{reqid}", web::post().to(reply))
    .service(
        web::resource(["/log", "/log/"])
            .app_data(
                web::FormConfig::default()
                    .limit(LOG_BODY_LIMIT)
                    .error_handler(|err, _| match err {
                        actix_web::error::UrlencodedError::Overflow { .. } => {
                            crate::error::ApiError::PayloadTooLarge {
                                limit: LOG_BODY_LIMIT,
                            }
                            .into()
                        }
                        err => crate::error::ApiError::BadRequest(format!(
                            "malformed log entry: {err}"
                        ))
                        .into(),
                    }),
            )
            .route(web::post().to(add_log)),
    );
}

#[derive(Deserialize)]
struct ModuleQuery {
    #[serde(rename = "moduleId")]
    module_id: Option<String>,
    #[serde(rename = "executionProvider")]
    execution_provider: Option<String>,
    #[serde(rename = "canUseGPU")]
    can_use_gpu: Option<String>,
}

/// The token in the `X-Modhost-Token` header, if any.
fn header_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether the call came from this machine.
fn from_loopback(req: &HttpRequest) -> bool {
    req.peer_addr().is_some_and(|a| a.ip().is_loopback())
}

/// A refusal of a module-side call: 403 with the reason as text.
fn refused(reason: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::Forbidden()
        .content_type("text/plain")
        .body(reason.to_string())
}

/// Who makes this call as `module`, given the token it carried: its current
/// launch, or (where allowed) a caller without a token.
///
/// # Errors
/// Why the call is refused (answered 403 with [`refused`]): a stale token,
/// or no token when one is required (`need_token`) and external modules are
/// not allowed.
fn authorize(
    state: &AppState,
    module: &Module,
    token: Option<&str>,
    need_token: bool,
) -> Result<Caller, String> {
    match module.caller(token) {
        Ok(caller @ Caller::Launch(_)) => Ok(caller),
        Ok(Caller::Untokened) if !need_token || state.config.allow_external_modules => {
            Ok(Caller::Untokened)
        }
        Ok(Caller::Untokened) => Err(format!(
            "module {} must present its launch token (the {TOKEN_HEADER} header, or the queue \
             name in CPAI_MODULE_QUEUENAME); a module started by hand needs the server's \
             allow_external_modules setting",
            module.id()
        )),
        Err(err) => Err(err.to_string()),
    }
}

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

async fn poll(
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

async fn reply(
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
    let limits = crate::payload::BodyLimits {
        max_bytes: state.config.max_body_bytes,
        max_fields: 0,
        read_timeout: state.config.body_read_timeout,
    };
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

/// `POST /v1/queue/progress/{commandId}?moduleId=<id>`: a module pushes
/// progress for one of its jobs (docs/protocol.md §4.2). Needs the token.
async fn progress(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ModuleQuery>,
    body: web::Payload,
) -> HttpResponse {
    let command_id = path.into_inner();
    let (module, update) = match read_push::<ProgressUpdate>(&state, &req, &query, body).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    match state.jobs.push(module.id(), &command_id, update) {
        Ok(()) => progress_saved(),
        Err(failure) => HttpResponse::NotFound()
            .content_type("text/plain")
            .body(failure.message),
    }
}

/// `POST /v1/queue/progress?moduleId=<id>`: a module pushes progress for
/// several of its jobs at once, a JSON object from command id to update
/// (docs/protocol.md §4.2). Needs the token. Every update for a known job is
/// applied; 404 names the ids with no job.
async fn progress_batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ModuleQuery>,
    body: web::Payload,
) -> HttpResponse {
    let (module, batch) = match read_push::<ProgressBatch>(&state, &req, &query, body).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    match state.jobs.push_batch(module.id(), batch) {
        Ok(()) => progress_saved(),
        Err(unknown) => HttpResponse::NotFound()
            .content_type("text/plain")
            .body(unknown),
    }
}

fn progress_saved() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("Progress saved.")
}

/// The module and body of a progress push, or the answer that refuses it:
/// 404 without a known `moduleId`, 403 without its token, 400 for a body
/// that is too large, too slow or not a `T`. Records the module's contact.
async fn read_push<T: serde::de::DeserializeOwned>(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    query: &ModuleQuery,
    body: web::Payload,
) -> Result<(Arc<Module>, T), HttpResponse> {
    let Some(module) = query
        .module_id
        .as_deref()
        .and_then(|id| state.registry.get(id))
        .cloned()
    else {
        return Err(HttpResponse::NotFound()
            .content_type("text/plain")
            .body("progress needs the moduleId of a known module"));
    };
    if let Err(why) = authorize(state, &module, header_token(req).as_deref(), true) {
        return Err(refused(why));
    }
    let limits = crate::payload::BodyLimits {
        max_bytes: state.config.max_body_bytes,
        max_fields: 0,
        read_timeout: state.config.body_read_timeout,
    };
    let parsed = match crate::payload::read_body(req.headers(), body, limits).await {
        Ok(bytes) => serde_json::from_slice::<T>(&bytes)
            .map_err(|e| format!("malformed progress update: {e}")),
        Err(err) => Err(err.to_string()),
    };
    match parsed {
        Ok(value) => {
            module.seen();
            Ok((module, value))
        }
        Err(problem) => Err(HttpResponse::BadRequest()
            .content_type("text/plain")
            .body(problem)),
    }
}

#[derive(Deserialize)]
struct StatusForm {
    #[serde(rename = "statusData")]
    status_data: Option<String>,
}

async fn update_status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<StatusForm>,
) -> HttpResponse {
    let Some(module) = state.registry.get(&path.into_inner()).cloned() else {
        return HttpResponse::NotFound().body("Module status data not updated");
    };
    let token = header_token(&req);
    if let Err(why) = authorize(&state, &module, token.as_deref(), !from_loopback(&req)) {
        return refused(why);
    }
    module.seen();
    if let Some(text) = &form.status_data {
        let data: Value =
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
        module.update(|s| {
            if let Some(device) = data.get("inferenceDevice").and_then(Value::as_str) {
                s.inference_device = Some(device.to_owned());
            }
            s.status_data = Some(data);
        });
    }
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("Module status updated")
}

async fn update_status_without_id() -> HttpResponse {
    HttpResponse::NotFound().body("No Module specified")
}

#[derive(Deserialize)]
struct LogForm {
    entry: Option<String>,
    category: Option<String>,
    label: Option<String>,
    log_level: Option<String>,
}

/// `POST /v1/log/`: an entry from a module. From this machine, or with a
/// module's current token; entries are cut to [`MAX_ENTRY_BYTES`].
async fn add_log(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LogForm>,
) -> HttpResponse {
    if !from_loopback(&req) {
        let tokened = header_token(&req).is_some_and(|token| {
            state
                .registry
                .modules()
                .iter()
                .any(|m| matches!(m.caller(Some(&token)), Ok(Caller::Launch(_))))
        });
        if !tokened {
            return refused(
                "log entries come from modules on this machine, or with a module's launch token",
            );
        }
    }
    let form = form.into_inner();
    let Some(entry) = form.entry.filter(|e| !e.is_empty()) else {
        return HttpResponse::BadRequest()
            .json(crate::error::failure_body(400, "field 'entry' is missing"));
    };
    let level = LogLevel::parse(form.log_level.as_deref().unwrap_or("information"));
    state.logs.add(
        level,
        form.category.as_deref().unwrap_or("Module"),
        form.label.as_deref().unwrap_or(""),
        &entry,
    );
    HttpResponse::Ok().json(envelope(json!({})))
}
