//! The one place that maps errors to HTTP answers.
//!
//! Two families, following CodeProject.AI Server 2.9 (docs/protocol.md §2.2):
//! - *request* errors (bad input, unknown route, oversized or slow body,
//!   missing API key, refused origin) get a 4xx status;
//! - *command* failures ([`Failure`]: timeout, full queue, module down or
//!   crashed, bad module reply) keep HTTP 200 with `success:false, code:500`, as
//!   CodeProject answers them and as its clients expect, plus modhost's
//!   `errorCode`; the failures a retry can cure add `Retry-After`.
//!
//! Every body is the CodeProject envelope: `{"success":false,"code":N,"hostname":H,"error":MSG}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use modhost_protocol::{Failure, FailureKind};
use serde_json::json;

use crate::hostname;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request's shape or values are wrong; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// No route or endpoint matches the path.
    #[error("{0}")]
    NotFound(String),
    /// The body is over the configured limit (bytes).
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The request has more values and files than the configured limit.
    #[error("the request has more than {limit} values (setting max_form_fields)")]
    TooManyFields { limit: usize },
    /// The body did not arrive within the configured time (seconds).
    #[error("the request body was not received within {secs} s (setting body_read_timeout_secs)")]
    RequestTimeout { secs: u64 },
    /// An API key is required and was missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The request is refused whoever sends it (e.g. a foreign origin).
    #[error("{0}")]
    Forbidden(String),
    /// The body's content type cannot carry request values.
    #[error("unsupported content type '{0}': send multipart/form-data, application/x-www-form-urlencoded or application/json")]
    UnsupportedMediaType(String),
    /// The server failed at something of its own (e.g. writing its settings
    /// file); the message says what.
    #[error("{0}")]
    Internal(String),
    /// The command could not be carried out; CodeProject answers these with
    /// HTTP 200 and `success:false`.
    #[error("{0}")]
    Command(Failure),
    /// A skill call failed; its status says who should act (400, 404, 500,
    /// 503), and `job` names the run's job where one was made.
    #[error("{error}")]
    Skill {
        error: modhost_skills::SkillError,
        job: Option<String>,
    },
}

impl From<modhost_skills::SkillError> for ApiError {
    fn from(error: modhost_skills::SkillError) -> ApiError {
        ApiError::Skill { error, job: None }
    }
}

impl ApiError {
    /// A command failure of `kind`.
    pub fn failure(kind: FailureKind, message: impl Into<String>) -> ApiError {
        ApiError::Command(Failure::new(kind, message))
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> ApiError {
        ApiError::Command(failure)
    }
}

/// The failure envelope body for `code` and `message`.
pub fn failure_body(code: u16, message: &str) -> serde_json::Value {
    json!({"success": false, "code": code, "hostname": hostname(), "error": message})
}

/// The body of a command failure: the envelope with `code` 500 and the
/// failure's `errorCode` (docs/protocol.md §4.3).
pub fn failure_json(failure: &Failure) -> serde_json::Value {
    let mut body = failure_body(500, &failure.message);
    body["errorCode"] = json!(failure.kind.code());
    body
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } | ApiError::TooManyFields { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Command(_) => StatusCode::OK,
            ApiError::Skill { error, .. } => {
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Command(failure) => {
                if let Some(secs) = failure.kind.retry_after_secs() {
                    response.insert_header(("Retry-After", secs.to_string()));
                }
                response.json(failure_json(failure))
            }
            ApiError::Skill { error, job } => {
                let mut body = failure_body(status.as_u16(), &self.to_string());
                body["errorCode"] = json!(error.code());
                if let Some(job) = job {
                    body["jobId"] = json!(job);
                    response.insert_header(("X-Job-Id", job.as_str()));
                }
                response.json(body)
            }
            ApiError::Unauthorized(_) => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
                response.json(failure_body(status.as_u16(), &self.to_string()))
            }
            _ => response.json(failure_body(status.as_u16(), &self.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body_of(err: ApiError) -> (StatusCode, serde_json::Value, Option<String>) {
        let response = err.error_response();
        let status = response.status();
        let retry = response
            .headers()
            .get("Retry-After")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), retry)
    }

    #[actix_web::test]
    async fn command_failures_keep_http_200_like_codeproject() {
        let (status, body, retry) = body_of(ApiError::failure(
            FailureKind::QueueFull,
            "Request queue 'q' is full (#reqid 1)",
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], false);
        assert_eq!(body["code"], 500);
        assert_eq!(body["error"], "Request queue 'q' is full (#reqid 1)");
        assert_eq!(body["errorCode"], "queue_full");
        assert_eq!(retry.as_deref(), Some("1"));
        let (_, body, retry) = body_of(ApiError::failure(FailureKind::Timeout, "late")).await;
        assert_eq!(body["errorCode"], "timeout");
        assert_eq!(retry, None);
    }

    #[actix_web::test]
    async fn request_errors_carry_their_http_status_as_code() {
        let (status, body, _) = body_of(ApiError::PayloadTooLarge { limit: 10 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], 413);
        assert!(body["error"].as_str().unwrap().contains("10 bytes"));
    }
}
