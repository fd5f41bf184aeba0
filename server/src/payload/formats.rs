//! The body formats: urlencoded forms, JSON (CodeProject's payload shape
//! or a plain object) and multipart forms.

use std::future::Future;

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};
use actix_web::web::Bytes;
use base64::Engine;
use futures_util::StreamExt;
use modhost_protocol::FileValue;
use serde_json::Value;

use super::RequestValues;
use crate::error::ApiError;

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space,
/// `%XX` a byte) into `values`. Strict where the common decoders are lossy: a
/// value whose decoded bytes are not UTF-8 (such as `%FF`) is an error, not a
/// U+FFFD.
pub(super) fn parse_urlencoded(
    bytes: &[u8],
    what: &str,
    values: &mut RequestValues,
) -> Result<(), ApiError> {
    std::str::from_utf8(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the {what} is not valid UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let decode = |part: &[u8]| -> Result<String, std::string::FromUtf8Error> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        String::from_utf8(percent_encoding::percent_decode(&spaced).collect())
    };
    for pair in bytes.split(|&b| b == b'&').filter(|pair| !pair.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let key = decode(key).map_err(|e| {
            ApiError::BadRequest(format!(
                "a name in the {what} is not valid UTF-8 once percent-decoded (byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let value = decode(value).map_err(|e| {
            ApiError::BadRequest(format!(
                "the value of '{key}' in the {what} is not valid UTF-8 once percent-decoded (byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        values.push(&key, value)?;
    }
    Ok(())
}

pub(super) fn parse_json(bytes: &[u8], values: &mut RequestValues) -> Result<(), ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the JSON body is not valid UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let json: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let Value::Object(object) = json else {
        return Err(ApiError::BadRequest(
            "the JSON body must be an object: CodeProject's payload shape {\"values\":[{\"key\":..,\"value\":[..]}]} or a plain object such as {\"prompt\":\"hi\"}".into(),
        ));
    };
    if let Some(Value::Array(items)) = object.get("values") {
        // CodeProject's payload shape.
        for (i, item) in items.iter().enumerate() {
            let key = item.get("key").and_then(Value::as_str).ok_or_else(|| {
                ApiError::BadRequest(format!("values[{i}] has no string \"key\""))
            })?;
            match item.get("value") {
                Some(Value::Array(list)) => {
                    for v in list {
                        values.push(key, scalar_text(v))?;
                    }
                }
                Some(v) => values.push(key, scalar_text(v))?,
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "values[{i}] ('{key}') has no \"value\""
                    )))
                }
            }
        }
        if let Some(Value::Array(files)) = object.get("files") {
            for (i, file) in files.iter().enumerate() {
                let file: FileValue = serde_json::from_value(file.clone())
                    .map_err(|e| ApiError::BadRequest(format!("files[{i}]: {e}")))?;
                values.push_file(file)?;
            }
        }
        return Ok(());
    }
    for (key, value) in object {
        match value {
            Value::Null => {}
            Value::Array(list) => {
                for v in &list {
                    values.push(&key, scalar_text(v))?;
                }
            }
            other => values.push(&key, scalar_text(&other))?,
        }
    }
    Ok(())
}

/// Strings as they are, everything else as its JSON text.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Collects a complete multipart body into `values`.
///
/// The body is all in memory, so the parser never has to wait: a parse
/// that would wait for more input means the body ended before its closing
/// boundary, and is answered 400 at once instead of never. A body that is
/// only the closing boundary is the empty form a browser sends for an
/// empty `FormData`: no values.
pub(super) fn parse_multipart(
    content_type: &str,
    bytes: Bytes,
    values: &mut RequestValues,
) -> Result<(), ApiError> {
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|param| param.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "malformed multipart body: the Content-Type has no boundary".into(),
            )
        })?;
    let closing = format!("--{boundary}--");
    if bytes.trim_ascii() == closing.as_bytes() {
        return Ok(());
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        content_type.parse().map_err(|_| {
            ApiError::BadRequest("malformed multipart body: bad Content-Type".into())
        })?,
    );
    let stream =
        futures_util::stream::once(async move { Ok::<_, actix_web::error::PayloadError>(bytes) });
    let multipart = actix_multipart::Multipart::new(&headers, stream);
    let collect = collect_multipart(multipart, values);
    futures_util::pin_mut!(collect);
    let waker = futures_util::task::noop_waker();
    match collect
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker))
    {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(ApiError::BadRequest(
            "malformed multipart body: it ends before its closing boundary".into(),
        )),
    }
}

/// Reads every field of `multipart` into `values`.
async fn collect_multipart(
    mut multipart: actix_multipart::Multipart,
    values: &mut RequestValues,
) -> Result<(), ApiError> {
    let malformed = |e: actix_multipart::MultipartError, what: &str| match e {
        actix_multipart::MultipartError::Incomplete => ApiError::BadRequest(
            "malformed multipart body: it ends before its closing boundary".into(),
        ),
        e => ApiError::BadRequest(format!("malformed multipart {what}: {e}")),
    };
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(|e| malformed(e, "body"))?;
        let disposition = field.content_disposition().cloned();
        let name = disposition
            .as_ref()
            .and_then(|d| d.get_name())
            .unwrap_or("")
            .to_owned();
        let filename = disposition
            .as_ref()
            .and_then(|d| d.get_filename())
            .map(str::to_owned);
        let content_type = field.content_type().map(|m| m.to_string());
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| malformed(e, &format!("field '{name}'")))?;
            data.extend_from_slice(&chunk);
        }
        match filename {
            Some(filename) => values.push_file(FileValue {
                name,
                filename,
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                data: base64::engine::general_purpose::STANDARD.encode(&data),
            })?,
            None => {
                let text = String::from_utf8(data).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "form field '{name}' is not valid UTF-8 (byte {})",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                values.push(&name, text)?;
            }
        }
    }
    Ok(())
}
