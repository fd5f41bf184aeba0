//! The jobs API (docs/protocol.md §4.4): `GET /v1/jobs` (filters `module`
//! and `status`), `GET /v1/jobs/{id}`, `POST /v1/jobs/{id}/cancel`, and
//! `GET /v1/jobs/{id}/events`, a Server-Sent Events stream of the job's
//! `delta`, `status`, `done` and `error` events, resumable with
//! `Last-Event-ID`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse, Responder};
use actix_web_lab::sse;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::jobs::{Job, JobStatus};
use crate::registry::Module;
use crate::watcher::Watcher;
use crate::{envelope, AppState};

/// Comment pings keep proxies from cutting a stream that is quiet this long.
pub const SSE_PING: Duration = Duration::from_secs(15);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/jobs", web::get().to(list))
        .route("/jobs/{id}", web::get().to(show))
        .route("/jobs/{id}/events", web::get().to(events))
        .route("/jobs/{id}/cancel", web::post().to(cancel));
}

#[derive(Deserialize)]
struct ListQuery {
    /// Only this module's jobs (module id, any letter case).
    module: Option<String>,
    /// Only jobs in this status: queued, running, completed, failed, cancelled.
    status: Option<String>,
}

async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status '{text}' is not one of queued, running, completed, failed, cancelled"
            ))
        })?),
    };
    let jobs: Vec<_> = state
        .jobs
        .list(query.module.as_deref(), status)
        .iter()
        .map(|job| job.view())
        .collect();
    Ok(HttpResponse::Ok().json(envelope(json!({"jobs": jobs}))))
}

/// The job `id`.
///
/// # Errors
/// 404 when no job has this id (never seen, or expired).
fn known_job(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    state.jobs.get(id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no job with id '{id}' (unknown, or finished more than the retention time ago)"
        ))
    })
}

async fn show(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = known_job(&state, &path)?;
    Ok(HttpResponse::Ok().json(envelope(json!({"job": job.view()}))))
}

/// `POST /v1/jobs/{id}/cancel`: `cancel_command` for the job, sent to its
/// module ahead of queued commands; the module's answer.
async fn cancel(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = known_job(&state, &path)?;
    if let Some(canceller) = job.canceller() {
        // A job the server runs itself (a skill run) stops at its next tick.
        let finished = job.status().is_final();
        if !finished {
            job.cancel_requested();
            canceller.cancel();
        }
        return Ok(HttpResponse::Ok().json(envelope(json!({
            "commandId": job.id,
            "canceled": !finished,
            "message": if finished { "The command had already finished" } else { "The command is being cancelled" },
        }))));
    }
    let module = job_module(&state, &job)?;
    let reply = state.commands.cancel(&module, Some(&job.id)).await?;
    Ok(HttpResponse::Ok().json(reply))
}

fn job_module(state: &AppState, job: &Job) -> Result<Arc<Module>, ApiError> {
    state
        .registry
        .get(&job.origin.module_id)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("job '{}' has no module", job.id)))
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Resume after this event id, for clients that cannot send the
    /// `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<u64>,
}

async fn events(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<impl Responder, ApiError> {
    let job = known_job(&state, &path)?;
    let after = match req.headers().get("Last-Event-ID") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::BadRequest("Last-Event-ID must be an event id (a number)".into())
            })?,
        None => query.last_event_id.unwrap_or(0),
    };
    Ok(stream(&state, req, job, after, None))
}

/// Streams `job`'s events after event `after` as SSE until the job ends, the
/// client goes, or the server shuts down. With `cancel_on_disconnect`, a
/// client that goes before the end cancels the job (the one-call form).
pub fn stream(
    state: &web::Data<AppState>,
    req: HttpRequest,
    job: Arc<Job>,
    after: u64,
    cancel_on_disconnect: Option<Arc<Module>>,
) -> impl Responder {
    let watcher = Watcher::new(state, req, job, after, cancel_on_disconnect);
    let events = futures_util::stream::unfold(watcher, |mut w| async move {
        let event = w.next().await?;
        let data = sse::Data::new(event.kind.data().to_string())
            .event(event.kind.name())
            .id(event.id.to_string());
        Some((Ok::<_, std::convert::Infallible>(sse::Event::Data(data)), w))
    });
    sse::Sse::from_stream(events)
        .with_keep_alive(SSE_PING)
        .customize()
        .insert_header(("X-Accel-Buffering", "no"))
}
