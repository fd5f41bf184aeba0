//! The Ollama-compatible API over the modules' generation routes
//! (docs/protocol.md §4.7, `crate::generation`), under `/api` as Ollama
//! serves it: `POST /api/chat` and `/api/generate` (newline-delimited JSON
//! while generating unless `"stream": false`), `GET /api/tags`,
//! `POST /api/show`, `GET /api/ps`, `GET /api/version`, `POST /api/embed`.
//! Durations are in nanoseconds, as Ollama gives them. Errors are
//! `{"error": "<message>"}`. Ollama's model management routes (`pull`,
//! `push`, `create`, `copy`, `delete`, blobs) answer 501 naming what modhost
//! serves instead.
//!
//! The parts: the error shape and the routes (this file), chat and
//! generation with their streams (`generate.rs`), the model routes and
//! embeddings (`models.rs`).

mod generate;
mod models;

use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::Failure;
use serde_json::{json, Value};

use crate::generation::{self, ModelError};
use generate::{chat, generate};
use models::{embed, ps, show, tags};

/// The Ollama API version modhost answers `/api/version` with: the one whose
/// shapes it follows.
pub const OLLAMA_API_VERSION: &str = "0.6.0";

/// Largest request body, in bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What modhost serves of Ollama's API, for the answer to the rest.
const SUPPORTED: &str =
    "modhost serves /api/chat, /api/generate, /api/embed, /api/tags, /api/show, \
     /api/ps and /api/version; models are modules: put a GGUF in a module's models folder \
     (modules/llama_chat/README.md)";

pub fn configure(cfg: &mut web::ServiceConfig) {
    let post = |path: &str| web::resource(path).app_data(web::PayloadConfig::new(MAX_BODY));
    cfg.service(post("/api/chat").route(web::post().to(chat)))
        .service(post("/api/generate").route(web::post().to(generate)))
        .service(post("/api/embed").route(web::post().to(embed)))
        .service(post("/api/show").route(web::post().to(show)))
        .route("/api/tags", web::get().to(tags))
        .route("/api/ps", web::get().to(ps))
        .route("/api/version", web::get().to(version))
        .route("/api/{rest:.*}", web::route().to(unsupported));
}

/// An error in Ollama's shape.
#[derive(Debug)]
pub struct OllamaError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl OllamaError {
    fn bad(message: impl Into<String>) -> OllamaError {
        OllamaError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A refused API key (the access check), in Ollama's shape.
    pub fn unauthorized(message: String) -> OllamaError {
        OllamaError {
            status: StatusCode::UNAUTHORIZED,
            message,
            retry_after: None,
        }
    }

    fn json(&self) -> Value {
        json!({"error": self.message})
    }
}

impl std::fmt::Display for OllamaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for OllamaError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(self.json())
    }
}

impl From<ModelError> for OllamaError {
    fn from(err: ModelError) -> OllamaError {
        OllamaError {
            status: StatusCode::NOT_FOUND,
            message: err.to_string(),
            retry_after: None,
        }
    }
}

impl From<Failure> for OllamaError {
    fn from(failure: Failure) -> OllamaError {
        let (status, retry_after) = generation::failure_status(failure.kind);
        OllamaError {
            status,
            message: failure.message,
            retry_after,
        }
    }
}

/// The body as `T`, or a 400 naming what JSON was expected.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, OllamaError> {
    serde_json::from_slice(body)
        .map_err(|e| OllamaError::bad(format!("the request body is not the expected JSON: {e}")))
}

/// Now, as Ollama writes times (RFC 3339, nanoseconds, UTC).
fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// `GET /api/version`.
async fn version() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"version": OLLAMA_API_VERSION, "modhost": env!("CARGO_PKG_VERSION")}))
}

/// Ollama's other routes: 501, naming what modhost serves.
async fn unsupported(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotImplemented().json(json!({
        "error": format!("{} {} is not supported: {SUPPORTED}", req.method(), req.path()),
    }))
}
