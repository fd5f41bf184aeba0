//! `POST /v1/{route}[/{extra}]`: a client request becomes a command on the
//! module's queue, and the module's reply comes back with
//! `analysisRoundTripMs`, `processedBy` and `timestampUTC` added
//! (docs/protocol.md §2.1–§2.3).
//!
//! The one-call streaming form (docs/protocol.md §4.4): with `stream=true`
//! among the values, or `Accept: text/event-stream`, the answer is the job's
//! Server-Sent Events instead: the module's first reply as a `status` event,
//! then its deltas, then `done` or `error`. A command that is not a long
//! process streams its reply as one `done` event.

use std::time::{Instant, SystemTime};

use actix_web::{web, Either, HttpRequest, HttpResponse, Responder};
use modhost_protocol::{FailureKind, JsonMap, ReplyMeta};
use serde_json::json;

use crate::error::ApiError;
use crate::payload::{self, BodyLimits};
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(command));
}

/// True when the client asks for the one-call streaming form.
fn wants_stream(req: &HttpRequest, values: &payload::RequestValues) -> bool {
    let accepts = req
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let flag = values
        .get("stream")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    accepts || flag
}

#[tracing::instrument(name = "request", skip_all, fields(path = %req.path()))]
async fn command(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<Either<HttpResponse, impl Responder>, ApiError> {
    let started = Instant::now();
    let path = req.path().trim_start_matches("/v1").trim_start_matches('/');
    let method = req.method().as_str();
    let Some(target) = state.registry.route(method, path) else {
        return Err(ApiError::NotFound(format!(
            "no route matches {method} /v1/{path}"
        )));
    };
    let limits = BodyLimits {
        max_bytes: state.config.max_body_bytes,
        max_fields: state.config.max_form_fields,
        read_timeout: state.config.body_read_timeout,
    };
    let values = payload::parse(req.query_string(), req.headers(), body, limits).await?;
    if let Some(route) = &target.route {
        payload::validate(&route.route, &route.inputs, &values)?;
    }
    let stream = wants_stream(&req, &values);
    let module = std::sync::Arc::clone(&target.module);

    let reply = match state.commands.run(target, values).await {
        Ok(reply) => reply,
        Err(failure) if stream => {
            return Ok(Either::Left(one_event(
                "error",
                &json!({"code": failure.kind.code(), "message": failure.message}),
            )));
        }
        Err(failure) => return Err(failure.into()),
    };
    let reply = with_timing(reply, started);
    if !stream {
        return Ok(Either::Left(HttpResponse::Ok().json(reply)));
    }
    let meta = ReplyMeta::read(&reply);
    let job = meta
        .starts_long_process()
        .then(|| meta.command_id.as_deref().and_then(|id| state.jobs.get(id)))
        .flatten();
    let Some(job) = job else {
        // A plain command: its reply is the `done` event; a module's error
        // is an `error` event of the same shape as a job's.
        if meta.success {
            return Ok(Either::Left(one_event(
                "done",
                &serde_json::Value::Object(reply),
            )));
        }
        let message = reply
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("the command failed");
        let code = FailureKind::CommandFailed.code();
        return Ok(Either::Left(one_event(
            "error",
            &json!({"code": code, "message": message}),
        )));
    };
    let cancel = (!state.config.keep_jobs_on_disconnect).then_some(module);
    Ok(Either::Right(super::jobs::stream(
        &state, req, job, 0, cancel,
    )))
}

/// The reply with CodeProject's `analysisRoundTripMs`, `processedBy` and
/// `timestampUTC` added.
fn with_timing(mut reply: JsonMap, started: Instant) -> JsonMap {
    reply.insert(
        "analysisRoundTripMs".into(),
        json!(started.elapsed().as_millis() as u64),
    );
    reply.insert("processedBy".into(), json!("localhost"));
    reply.insert(
        "timestampUTC".into(),
        json!(httpdate::fmt_http_date(SystemTime::now())),
    );
    reply
}

/// A complete SSE answer of one event.
fn one_event(name: &str, data: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .body(format!("id: 1\nevent: {name}\ndata: {data}\n\n"))
}
