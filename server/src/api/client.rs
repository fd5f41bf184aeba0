//! `POST /v1/{route}[/{extra}]`: a client request becomes a command on the
//! module's queue, and the module's reply comes back with
//! `analysisRoundTripMs`, `processedBy` and `timestampUTC` added.
//! Reference §2 "POST /v1/{route}".

use std::time::{Instant, SystemTime};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::payload;
use crate::queue::QueueItem;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(command));
}

#[tracing::instrument(name = "request", skip_all, fields(path = %req.path()))]
async fn command(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let path = req.path().trim_start_matches("/v1").trim_start_matches('/');
    let method = req.method().as_str();
    let Some(target) = state.registry.route(method, path) else {
        return Err(ApiError::NotFound(format!(
            "no route matches {method} /v1/{path}"
        )));
    };
    let values = payload::parse(
        req.query_string(),
        req.headers(),
        body,
        state.config.max_body_bytes,
    )
    .await?;
    if let Some(route) = &target.route {
        payload::validate(&route.route, &route.inputs, &values)?;
    }

    let module = &target.module;
    let module_state = module.state();
    let status = module_state.status;
    if !status.accepts_commands() {
        let mut message = format!(
            "module '{}' is not running (status: {status:?})",
            module.id()
        );
        if let Some(why) = &module_state.last_error {
            message.push_str(": ");
            message.push_str(why);
        }
        return Err(ApiError::Command {
            message,
            retry: Some(5),
        });
    }

    let reqid = uuid::Uuid::new_v4().to_string();
    tracing::debug!(%reqid, module = module.id(), command = %target.command, "queueing command");
    let item = QueueItem {
        reqid: reqid.clone(),
        reqtype: target.command.clone(),
        payload: values.into_payload(&target.command, target.url_segments),
    };
    let ticket = state
        .queues
        .enqueue(&module.queue, item)
        .map_err(|err| ApiError::Command {
            message: err.to_string(),
            retry: Some(1),
        })?;
    let result = ticket
        .wait(state.config.request_timeout)
        .await
        .ok_or_else(|| ApiError::command(format!("The request timed out (#reqid {reqid})")))?;
    let mut reply = match result.map_err(ApiError::command)? {
        Value::Object(map) => map,
        _ => {
            return Err(ApiError::command(format!(
                "Invalid JSON response from backend: not an object (#reqid {reqid})"
            )))
        }
    };
    reply.insert(
        "analysisRoundTripMs".into(),
        json!(started.elapsed().as_millis() as u64),
    );
    reply.insert("processedBy".into(), json!("localhost"));
    reply.insert(
        "timestampUTC".into(),
        json!(httpdate::fmt_http_date(SystemTime::now())),
    );
    Ok(HttpResponse::Ok().json(reply))
}
