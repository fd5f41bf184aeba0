//! Endpoints modules call: `GET /v1/queue/{queue}` (long poll),
//! `POST /v1/queue/{reqid}` (reply), `POST /v1/queue/updatemodulestatus/{moduleId}`,
//! `POST /v1/log/` and `GET /v1/log/list`. Reference §1.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::logs::LogLevel;
use crate::registry::Module;
use crate::{envelope, AppState};

/// Longest a poll is held before it is answered 204 (reference §1: ≤ 10 s,
/// below the SDKs' 15 s client timeout).
pub const POLL_WAIT: Duration = Duration::from_secs(10);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/queue/updatemodulestatus/{module_id}",
        web::post().to(update_status),
    )
    .route(
        "/queue/updatemodulestatus",
        web::post().to(update_status_without_id),
    )
    .route("/queue/{queue}", web::get().to(poll))
    .route("/queue/{reqid}", web::post().to(reply))
    .route("/log", web::post().to(add_log))
    .route("/log/", web::post().to(add_log))
    .route("/log/list", web::get().to(list_log));
}

#[derive(Deserialize)]
struct PollQuery {
    #[serde(rename = "moduleId")]
    module_id: Option<String>,
    #[serde(rename = "executionProvider")]
    execution_provider: Option<String>,
    #[serde(rename = "canUseGPU")]
    can_use_gpu: Option<String>,
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
    query: web::Query<PollQuery>,
) -> HttpResponse {
    let queue = path.into_inner().to_ascii_lowercase();
    let module = polling_module(&state, &queue, query.module_id.as_deref());
    if let Some(module) = &module {
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
    }
    let module_id = module
        .as_ref()
        .map(|m| m.id().to_owned())
        .or_else(|| query.module_id.clone())
        .unwrap_or_default();
    // A module that went away while waiting (crashed, or its client timed
    // out) is not handed a command: dequeue asks first.
    let _watch = PollWatch(&queue);
    tracing::debug!(queue, module_id, "poll waiting");
    match state
        .queues
        .dequeue(&queue, &module_id, POLL_WAIT, || {
            crate::conn::client_connected(&req)
        })
        .await
    {
        Some(item) => {
            tracing::debug!(
                queue,
                module_id,
                reqid = item.reqid,
                "poll handed a command"
            );
            HttpResponse::Ok().json(item)
        }
        None => HttpResponse::NoContent().finish(),
    }
}

/// Logs (at trace level) when a poll ends, answered or dropped.
struct PollWatch<'a>(&'a str);

impl Drop for PollWatch<'_> {
    fn drop(&mut self) {
        tracing::trace!(queue = self.0, "poll ended");
    }
}

async fn reply(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    mut body: web::Payload,
) -> HttpResponse {
    let reqid = path.into_inner();
    let limit = state.config.max_body_bytes;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                // The module will not send it again: the client hears now.
                let _ = state.queues.complete(
                    &reqid,
                    Err(format!(
                        "The module's response could not be read: {err} (#reqid {reqid})"
                    )),
                );
                return HttpResponse::BadRequest()
                    .body(format!("cannot read the response body: {err}"));
            }
        };
        if bytes.len() + chunk.len() > limit {
            let _ = state.queues.complete(
                &reqid,
                Err(format!(
                    "The module's response is larger than {limit} bytes (#reqid {reqid})"
                )),
            );
            return HttpResponse::PayloadTooLarge()
                .body(format!("response larger than {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    let query_module = web::Query::<PollQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().module_id);

    let parsed: Result<Value, String> = match std::str::from_utf8(&bytes) {
        Err(_) => Err(format!(
            "Invalid JSON response from backend: not UTF-8 (#reqid {reqid})"
        )),
        Ok(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Null) => Err(format!("null json returned from backend (#reqid {reqid})")),
            Ok(Value::Object(map)) => Ok(Value::Object(map)),
            Ok(_) => Err(format!(
                "Invalid JSON response from backend: not an object (#reqid {reqid})"
            )),
            Err(e) => Err(format!(
                "Invalid JSON response from backend: {e} (#reqid {reqid})"
            )),
        },
    };

    let module_id = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("moduleId"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(query_module);
    let module = module_id
        .as_deref()
        .and_then(|id| state.registry.get(id))
        .cloned();
    let is_status = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("command"))
        .and_then(Value::as_str)
        .is_some_and(|c| c.eq_ignore_ascii_case("status"));
    if let Some(module) = &module {
        module.seen();
        if let Ok(v) = &parsed {
            module.update(|s| {
                if !is_status {
                    s.request_count += 1;
                }
                if let Some(device) = v.get("inferenceDevice").and_then(Value::as_str) {
                    s.inference_device = Some(device.to_owned());
                }
            });
        }
    }

    let bad_body = parsed.as_ref().err().cloned();
    match state.queues.complete(&reqid, parsed) {
        Ok(()) => match bad_body {
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
        },
        Err(err) => {
            state.logs.add(
                LogLevel::Warning,
                module.as_ref().map_or("Server", |m| m.name()),
                "",
                &format!("a module answered a request nobody waits for: {err}"),
            );
            HttpResponse::BadRequest()
                .content_type("text/plain")
                .body("failure to set response.")
        }
    }
}

#[derive(Deserialize)]
struct StatusForm {
    #[serde(rename = "statusData")]
    status_data: Option<String>,
}

async fn update_status(
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<StatusForm>,
) -> HttpResponse {
    let Some(module) = state.registry.get(&path.into_inner()).cloned() else {
        return HttpResponse::NotFound().body("Module status data not updated");
    };
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

async fn add_log(state: web::Data<AppState>, form: web::Form<LogForm>) -> HttpResponse {
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

#[derive(Deserialize)]
struct LogListQuery {
    count: Option<usize>,
    last_id: Option<u64>,
    /// modhost extension: only entries of this module (id or name).
    #[serde(rename = "moduleId")]
    module_id: Option<String>,
}

async fn list_log(state: web::Data<AppState>, query: web::Query<LogListQuery>) -> HttpResponse {
    let count = query.count.unwrap_or(10).min(crate::logs::LOG_CAPACITY);
    let category = query.module_id.as_deref().map(|id| {
        state
            .registry
            .get(id)
            .map_or_else(|| id.to_owned(), |m| m.name().to_owned())
    });
    let mut entries = state.logs.list(query.last_id.unwrap_or(0), usize::MAX);
    if let Some(category) = &category {
        entries.retain(|e| e.category.eq_ignore_ascii_case(category));
    }
    // The newest `count`: a live tail that fell behind skips to the present.
    let skip = entries.len().saturating_sub(count);
    entries.drain(..skip);
    HttpResponse::Ok().json(envelope(json!({"entries": entries})))
}
