//! The OpenAI-compatible API over the modules' generation routes
//! (docs/protocol.md §4.7, `crate::generation`): `POST /v1/chat/completions`
//! and `POST /v1/completions` (with `stream`: Server-Sent Events chunks, then
//! `data: [DONE]`), `GET /v1/models`, `GET /v1/models/{id}`,
//! `POST /v1/embeddings`. Shapes as OpenAI's API reference gives them;
//! errors are `{"error": {"message", "type", "param", "code"}}`.
//!
//! These routes are registered before CodeProject's catch-all
//! `POST /v1/{route}`, so they win over a module route of the same path.
//!
//! The parts: the error shape and the routes (this file), chat and text
//! completions with their streams (`generate.rs`), the model list and
//! embeddings (`models.rs`).

mod generate;
mod models;

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use modhost_protocol::Failure;
use serde_json::{json, Value};

use crate::generation::{self, ModelError};
use generate::{chat, completions};
use models::{embeddings, model, models};

/// Largest request body, in bytes: long conversations fit.
const MAX_BODY: usize = 16 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let post = |path: &str| web::resource(path).app_data(web::PayloadConfig::new(MAX_BODY));
    cfg.service(post("/chat/completions").route(web::post().to(chat)))
        .service(post("/completions").route(web::post().to(completions)))
        .service(post("/embeddings").route(web::post().to(embeddings)))
        .route("/models", web::get().to(models))
        .route("/models/{id:.*}", web::get().to(model));
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    retry_after: Option<u32>,
}

impl OpenAiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    /// The answer: the status, `Retry-After` where a retry may succeed, and
    /// the body.
    pub fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(self.body())
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind,
                         "param": self.param, "code": self.code}})
    }

    /// A refused API key (the access check), in OpenAI's shape.
    pub fn unauthorized(message: String) -> OpenAiError {
        OpenAiError {
            status: StatusCode::UNAUTHORIZED,
            message,
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }
}

impl From<ModelError> for OpenAiError {
    fn from(err: ModelError) -> OpenAiError {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: err.to_string(),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }
}

impl From<Failure> for OpenAiError {
    fn from(failure: Failure) -> OpenAiError {
        let (status, retry_after) = generation::failure_status(failure.kind);
        let kind = match status {
            StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "server_error",
        };
        OpenAiError {
            status,
            message: failure.message,
            kind,
            param: None,
            code: Some(failure.kind.code()),
            retry_after,
        }
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.response()
    }
}

/// The body as `T`, or a 400 `invalid_request_error` naming the JSON error.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, OpenAiError> {
    serde_json::from_slice(body).map_err(|e| {
        OpenAiError::invalid(
            format!("the request body is not the expected JSON: {e}"),
            None,
        )
    })
}

/// Now, in seconds since the Unix epoch (OpenAI's `created`).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
