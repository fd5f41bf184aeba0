//! Turns a client request into the values and files a module receives, and
//! checks them against the route map.
//!
//! Values come from the query string, then from the body: multipart or
//! urlencoded forms (uploads become base64 files), JSON in CodeProject's payload
//! shape (`{"values":[{"key":"prompt","value":["hi"]}]}`), or, as a modhost
//! extension, a plain JSON object (`{"prompt":"hi","max_tokens":5}`). Payload
//! format: docs/protocol.md §1.3 and §2.1.
//!
//! Parsing is linear in the size of the request and bounded three ways, so
//! that no request can freeze a worker: a body byte limit, a limit on the
//! number of values, and a deadline for reading the body. Bodies larger than
//! [`INLINE_PARSE_BYTES`] are parsed on the blocking pool, off the HTTP worker.
//!
//! The parts: reading the body and choosing its parser (this file), with the
//! check against the route map; the collected values (`values.rs`); the
//! body formats (`formats.rs`).

mod formats;
mod values;

use std::time::Duration;

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};
use actix_web::web::Bytes;
use futures_util::StreamExt;
use modulesettings::{ParamType, RouteParam};
use serde_json::Value;

use crate::error::ApiError;
use formats::{parse_json, parse_multipart, parse_urlencoded};
pub use values::RequestValues;

/// Bodies up to this size are parsed on the HTTP worker; larger ones on the
/// blocking pool, so that a 50 MiB JSON body does not stall the worker's
/// other connections.
pub const INLINE_PARSE_BYTES: usize = 256 * 1024;

/// How much of a request the server will read and parse.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, in bytes (413 beyond it).
    pub max_bytes: usize,
    /// Most values and files in one request, query string included (413
    /// beyond it).
    pub max_fields: usize,
    /// Longest time reading the body may take (408 beyond it).
    pub read_timeout: Duration,
}

/// Reads the body (within `limits`) and collects the request's values.
///
/// # Errors
/// 413 over the byte or value limit; 408 when the body does not arrive in
/// time; 415 for a content type that carries no values; 400 for a malformed
/// body (bad JSON, bad or unterminated form, invalid UTF-8), naming the
/// problem.
pub async fn parse(
    query: &str,
    headers: &HeaderMap,
    body: actix_web::web::Payload,
    limits: BodyLimits,
) -> Result<RequestValues, ApiError> {
    let mut values = RequestValues::with_limit(limits.max_fields);
    parse_urlencoded(query.as_bytes(), "query string", &mut values)?;
    let bytes = read_body(headers, body, limits).await?;
    if bytes.is_empty() {
        return Ok(values);
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if bytes.len() <= INLINE_PARSE_BYTES {
        parse_body(&content_type, bytes, values)
    } else {
        actix_web::web::block(move || parse_body(&content_type, bytes, values))
            .await
            .map_err(|_| ApiError::BadRequest("the request body could not be parsed".into()))?
    }
}

/// Reads the whole body: at most `limits.max_bytes`, within
/// `limits.read_timeout`.
///
/// # Errors
/// 413 over the limit (told by `Content-Length` before reading, when sent);
/// 408 when the body is not complete in time (a slow or stalled client);
/// 400 when the connection fails mid-body.
pub async fn read_body(
    headers: &HeaderMap,
    mut body: actix_web::web::Payload,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    if let Some(length) = headers
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if length > limits.max_bytes {
            return Err(ApiError::PayloadTooLarge {
                limit: limits.max_bytes,
            });
        }
    }
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    let mut bytes = actix_web::web::BytesMut::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => {
                return Err(ApiError::RequestTimeout {
                    secs: limits.read_timeout.as_secs(),
                })
            }
            Ok(None) => break,
            Ok(Some(chunk)) => chunk
                .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?,
        };
        if bytes.len() + chunk.len() > limits.max_bytes {
            return Err(ApiError::PayloadTooLarge {
                limit: limits.max_bytes,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// Collects the values of a complete body of `content_type` into `values`.
/// Synchronous and CPU-bound: callers run large bodies on the blocking pool.
fn parse_body(
    content_type: &str,
    bytes: Bytes,
    mut values: RequestValues,
) -> Result<RequestValues, ApiError> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "multipart/form-data" => parse_multipart(content_type, bytes, &mut values)?,
        "application/x-www-form-urlencoded" => parse_urlencoded(&bytes, "form body", &mut values)?,
        "application/json" | "text/json" => parse_json(&bytes, &mut values)?,
        "" if bytes.first() == Some(&b'{') => parse_json(&bytes, &mut values)?,
        _ => return Err(ApiError::UnsupportedMediaType(content_type.to_owned())),
    }
    Ok(values)
}

/// Checks each present value against the route's declared inputs: type and
/// range. Absent values are left to the module (it applies its defaults).
///
/// # Errors
/// 400 naming the input, the value and what was expected.
pub fn validate(
    route: &str,
    inputs: &[RouteParam],
    values: &RequestValues,
) -> Result<(), ApiError> {
    for input in inputs {
        for text in values.all(&input.name) {
            check_value(route, input, text)?;
        }
    }
    Ok(())
}

/// Checks one value of `input`: its type, then its range.
fn check_value(route: &str, input: &RouteParam, text: &str) -> Result<(), ApiError> {
    let bad = |expected: String| {
        ApiError::BadRequest(format!(
            "input '{}' of route {route} is '{text}': expected {expected}",
            input.name
        ))
    };
    let number = match input.param_type {
        ParamType::Integer => Some(
            text.trim()
                .parse::<i64>()
                .map_err(|_| bad("an integer".into()))? as f64,
        ),
        ParamType::Float => {
            let v = text
                .trim()
                .parse::<f64>()
                .map_err(|_| bad("a number".into()))?;
            if !v.is_finite() {
                return Err(bad("a finite number".into()));
            }
            Some(v)
        }
        ParamType::Boolean => {
            match text.trim().to_ascii_lowercase().as_str() {
                "true" | "false" | "1" | "0" | "yes" | "no" | "on" | "off" => {}
                _ => return Err(bad("true or false".into())),
            }
            None
        }
        ParamType::Object => {
            serde_json::from_str::<Value>(text).map_err(|e| bad(format!("JSON ({e})")))?;
            None
        }
        ParamType::Text | ParamType::File => None,
    };
    if let Some(v) = number {
        if let Some(min) = input.min_value {
            if v < min {
                return Err(bad(format!("at least {min}")));
            }
        }
        if let Some(max) = input.max_value {
            if v > max {
                return Err(bad(format!("at most {max}")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
