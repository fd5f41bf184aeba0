//! The one place that maps errors to HTTP answers.
//!
//! Two families, following CodeProject.AI Server 2.9 (reference/codeproject-protocol.md §2):
//! - *request* errors (bad input, unknown route, oversized body) get a 4xx status;
//! - *command* failures (timeout, full queue, module down or crashed, bad module
//!   reply) keep HTTP 200 with `success:false, code:500`, as CodeProject answers
//!   them and as its clients expect; a full queue or a down module adds
//!   `Retry-After`.
//!
//! Every body is the CodeProject envelope: `{"success":false,"code":N,"hostname":H,"error":MSG}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
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
    /// The body's content type cannot carry request values.
    #[error("unsupported content type '{0}': send multipart/form-data, application/x-www-form-urlencoded or application/json")]
    UnsupportedMediaType(String),
    /// The command could not be carried out; CodeProject answers these with
    /// HTTP 200 and `success:false`. `retry` adds `Retry-After` (seconds).
    #[error("{message}")]
    Command { message: String, retry: Option<u32> },
}

impl ApiError {
    /// A command failure without a retry hint.
    pub fn command(message: impl Into<String>) -> ApiError {
        ApiError::Command {
            message: message.into(),
            retry: None,
        }
    }
}

/// The failure envelope body for `code` and `message`.
pub fn failure_body(code: u16, message: &str) -> serde_json::Value {
    json!({"success": false, "code": code, "hostname": hostname(), "error": message})
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Command { .. } => StatusCode::OK,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let code = match self {
            ApiError::Command { .. } => 500,
            _ => status.as_u16(),
        };
        let mut response = HttpResponse::build(status);
        if let ApiError::Command {
            retry: Some(secs), ..
        } = self
        {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(failure_body(code, &self.to_string()))
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
        let (status, body, retry) = body_of(ApiError::Command {
            message: "Request queue 'q' is full (#reqid 1)".into(),
            retry: Some(1),
        })
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], false);
        assert_eq!(body["code"], 500);
        assert_eq!(body["error"], "Request queue 'q' is full (#reqid 1)");
        assert_eq!(retry.as_deref(), Some("1"));
    }

    #[actix_web::test]
    async fn request_errors_carry_their_http_status_as_code() {
        let (status, body, _) = body_of(ApiError::PayloadTooLarge { limit: 10 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], 413);
        assert!(body["error"].as_str().unwrap().contains("10 bytes"));
    }
}
