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
//!
//! Here: the routes and who may call them. Polls and replies are
//! `queue.rs`; progress pushes, status updates and log entries, what a
//! module reports, `reports.rs`.

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::TOKEN_HEADER;
use serde::Deserialize;

use crate::logs::MAX_ENTRY_BYTES;
use crate::registry::{Caller, Module};
use crate::AppState;

/// Largest `POST /v1/log/` body, in bytes: an entry of [`MAX_ENTRY_BYTES`]
/// once urlencoded, plus its other fields.
const LOG_BODY_LIMIT: usize = 4 * MAX_ENTRY_BYTES;

mod queue;
mod reports;

use queue::{poll, reply};
use reports::{add_log, progress, progress_batch, update_status, update_status_without_id};

/// Adds the module-side routes (relative to `/v1`).
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

/// The limits on a module's reply or push body: the server's body limits,
/// without a field limit (it is JSON, not a form).
fn body_limits(state: &AppState) -> crate::payload::BodyLimits {
    crate::payload::BodyLimits {
        max_bytes: state.config.max_body_bytes,
        max_fields: 0,
        read_timeout: state.config.body_read_timeout,
    }
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
