//! What a module reports besides replies: progress pushes for its jobs
//! (docs/protocol.md §4.2), its status data (§1.5) and log entries (§1.6).

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::{ProgressBatch, ProgressUpdate};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, body_limits, from_loopback, header_token, refused, ModuleQuery};
use crate::logs::LogLevel;
use crate::registry::{Caller, Module};
use crate::{envelope, AppState};

/// `POST /v1/queue/progress/{commandId}?moduleId=<id>`: a module pushes
/// progress for one of its jobs (docs/protocol.md §4.2). Needs the token.
pub(super) async fn progress(
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
pub(super) async fn progress_batch(
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
    let limits = body_limits(state);
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
pub(super) struct StatusForm {
    #[serde(rename = "statusData")]
    status_data: Option<String>,
}

pub(super) async fn update_status(
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

pub(super) async fn update_status_without_id() -> HttpResponse {
    HttpResponse::NotFound().body("No Module specified")
}

#[derive(Deserialize)]
pub(super) struct LogForm {
    entry: Option<String>,
    category: Option<String>,
    label: Option<String>,
    log_level: Option<String>,
}

/// `POST /v1/log/`: an entry from a module. From this machine, or with a
/// module's current token; entries are cut to [`MAX_ENTRY_BYTES`].
pub(super) async fn add_log(
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
