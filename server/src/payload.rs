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

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};
use actix_web::web::Bytes;
use base64::Engine;
use futures_util::StreamExt;
use modhost_protocol::{FileValue, KeyValue, Payload};
use modulesettings::{ParamType, RouteParam};
use serde_json::Value;

use crate::error::ApiError;

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

/// The values and files of one request, in the order they came. Repeated
/// names add to one entry, found through an index, so collecting n values
/// costs O(n).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestValues {
    pub values: Vec<KeyValue>,
    pub files: Vec<FileValue>,
    /// Position in `values` of each exact key.
    index: HashMap<String, usize>,
    /// Values and files so far.
    count: usize,
    /// Most values and files allowed; 0 means no limit (tests).
    max_fields: usize,
}

impl RequestValues {
    /// An empty set that refuses more than `max_fields` values and files.
    pub fn with_limit(max_fields: usize) -> RequestValues {
        RequestValues {
            max_fields,
            ..RequestValues::default()
        }
    }

    /// Counts one more value or file.
    ///
    /// # Errors
    /// 413 naming the limit when there are more than `max_fields`.
    fn count_one(&mut self) -> Result<(), ApiError> {
        self.count += 1;
        if self.max_fields > 0 && self.count > self.max_fields {
            return Err(ApiError::TooManyFields {
                limit: self.max_fields,
            });
        }
        Ok(())
    }

    /// Adds a value under `key` (a further one if `key` is present).
    ///
    /// # Errors
    /// 413 when over the limit of values.
    pub(crate) fn push(&mut self, key: &str, value: String) -> Result<(), ApiError> {
        self.count_one()?;
        match self.index.get(key) {
            Some(&at) => self.values[at].value.push(value),
            None => {
                self.index.insert(key.to_owned(), self.values.len());
                self.values.push(KeyValue {
                    key: key.to_owned(),
                    value: vec![value],
                });
            }
        }
        Ok(())
    }

    /// Adds an uploaded file.
    ///
    /// # Errors
    /// 413 when over the limit of values.
    fn push_file(&mut self, file: FileValue) -> Result<(), ApiError> {
        self.count_one()?;
        self.files.push(file);
        Ok(())
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).next()
    }

    /// Every value of `key` (case-insensitive), in the order they came.
    pub fn all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let key = key.to_owned();
        self.values
            .iter()
            .filter(move |kv| kv.key.eq_ignore_ascii_case(&key))
            .flat_map(|kv| kv.value.iter().map(String::as_str))
    }

    /// The `payload` of a queue item, less its command.
    pub fn into_payload(self, url_segments: Vec<String>) -> Payload {
        Payload {
            values: self.values,
            files: self.files,
            url_segments,
            ..Payload::default()
        }
    }
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

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space,
/// `%XX` a byte) into `values`. Strict where the common decoders are lossy: a
/// value whose decoded bytes are not UTF-8 (such as `%FF`) is an error, not a
/// U+FFFD.
fn parse_urlencoded(bytes: &[u8], what: &str, values: &mut RequestValues) -> Result<(), ApiError> {
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

fn parse_json(bytes: &[u8], values: &mut RequestValues) -> Result<(), ApiError> {
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
fn parse_multipart(
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
mod tests {
    use super::*;

    fn param(name: &str, ty: ParamType, min: Option<f64>, max: Option<f64>) -> RouteParam {
        let mut p: RouteParam =
            serde_json::from_value(serde_json::json!({"Name": name, "Type": "Text"})).unwrap();
        p.param_type = ty;
        p.min_value = min;
        p.max_value = max;
        p
    }

    fn values(pairs: &[(&str, &str)]) -> RequestValues {
        let mut v = RequestValues::default();
        for (k, val) in pairs {
            v.push(k, val.to_string()).unwrap();
        }
        v
    }

    #[test]
    fn plain_json_objects_become_values() {
        let mut v = RequestValues::default();
        parse_json(
            br#"{"prompt":"hi","max_tokens":5,"stop":["a","b"],"x":null}"#,
            &mut v,
        )
        .unwrap();
        assert_eq!(v.get("prompt"), Some("hi"));
        assert_eq!(v.get("max_tokens"), Some("5"));
        assert_eq!(
            v.values.iter().find(|kv| kv.key == "stop").unwrap().value,
            vec!["a", "b"]
        );
        assert_eq!(v.get("x"), None);
    }

    #[test]
    fn codeproject_payload_shape_is_understood() {
        let mut v = RequestValues::default();
        parse_json(br#"{"values":[{"key":"prompt","value":["hi"]}]}"#, &mut v).unwrap();
        assert_eq!(v.get("prompt"), Some("hi"));
    }

    #[test]
    fn malformed_json_is_a_clear_400() {
        let mut v = RequestValues::default();
        let err = parse_json(br#"{"prompt": "#, &mut v)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("malformed JSON body"), "{err}");
        let err = parse_json(b"[1,2]", &mut v).unwrap_err().to_string();
        assert!(err.contains("must be an object"), "{err}");
        let err = parse_json(b"{\"a\":\"\xff\"}", &mut v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn validation_names_the_input_and_the_expectation() {
        let inputs = [
            param("temperature", ParamType::Float, Some(0.0), Some(2.0)),
            param("max_tokens", ParamType::Integer, Some(0.0), None),
        ];
        let ok = values(&[("temperature", "0.5"), ("max_tokens", "10")]);
        validate("text/chat", &inputs, &ok).unwrap();
        let err = validate("text/chat", &inputs, &values(&[("temperature", "-1")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "input 'temperature' of route text/chat is '-1': expected at least 0"
        );
        let err = validate("text/chat", &inputs, &values(&[("max_tokens", "ten")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "input 'max_tokens' of route text/chat is 'ten': expected an integer"
        );
        validate("text/chat", &inputs, &values(&[])).unwrap();
    }

    #[test]
    fn every_value_of_a_repeated_input_is_checked() {
        let inputs = [param("max_tokens", ParamType::Integer, Some(0.0), None)];
        let err = validate(
            "text/chat",
            &inputs,
            &values(&[("max_tokens", "5"), ("MAX_TOKENS", "-2")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "input 'max_tokens' of route text/chat is '-2': expected at least 0"
        );
    }

    /// Urlencoded `bytes` parsed into fresh values.
    fn urlencoded(bytes: &[u8], what: &str) -> Result<RequestValues, ApiError> {
        let mut v = RequestValues::default();
        parse_urlencoded(bytes, what, &mut v).map(|()| v)
    }

    #[test]
    fn urlencoded_decodes_plus_and_percent_escapes() {
        let v = urlencoded(b"prompt=a+b%21&x&empty=&n=%C3%A9&x=2", "form body").unwrap();
        let pairs: Vec<(&str, Vec<&str>)> = v
            .values
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("prompt", vec!["a b!"]),
                ("x", vec!["", "2"]),
                ("empty", vec![""]),
                ("n", vec!["\u{e9}"]),
            ]
        );
    }

    #[test]
    fn percent_escapes_that_are_not_utf8_are_refused_by_name() {
        let err = urlencoded(b"ok=1&n=%FF", "query string")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the value of 'n' in the query string is not valid UTF-8 once percent-decoded (byte 0)"
        );
        let err = urlencoded(b"%C3=1", "form body").unwrap_err().to_string();
        assert!(
            err.starts_with("a name in the form body is not valid UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn multipart_uploads_become_base64_files_beside_the_fields() {
        let body = [
            &b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n"[..],
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.bin\"\r\n",
            b"Content-Type: application/octet-stream\r\n\r\n",
            &[0x00, 0x01, 0x02, 0xff],
            b"\r\n--XyZ--\r\n",
        ]
        .concat();
        let mut v = RequestValues::default();
        parse_multipart(MULTIPART, Bytes::from(body), &mut v).unwrap();
        assert_eq!(v.get("prompt"), Some("hi"));
        assert_eq!(
            v.files,
            [FileValue {
                name: "image".into(),
                filename: "a.bin".into(),
                content_type: "application/octet-stream".into(),
                data: "AAEC/w==".into(),
            }]
        );
    }

    #[test]
    fn urlencoded_rejects_invalid_utf8() {
        let err = urlencoded(b"a=\xff", "form body").unwrap_err().to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }

    const MULTIPART: &str = "multipart/form-data; boundary=XyZ";

    #[test]
    fn a_multipart_body_without_its_closing_boundary_is_refused_at_once() {
        let mut v = RequestValues::default();
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue";
        let err = parse_multipart(MULTIPART, Bytes::from(body), &mut v)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("closing boundary") || err.contains("multipart"),
            "{err}"
        );
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--XyZ\r\n";
        assert!(parse_multipart(MULTIPART, Bytes::from(body), &mut v).is_err());
    }

    #[test]
    fn an_empty_multipart_form_has_no_values() {
        for body in ["--XyZ--\r\n", "--XyZ--"] {
            let mut v = RequestValues::default();
            parse_multipart(MULTIPART, Bytes::from(body), &mut v).unwrap();
            assert_eq!(v, RequestValues::default(), "{body:?}");
        }
        let mut v = RequestValues::default();
        let err = parse_multipart("multipart/form-data", Bytes::from("--XyZ--"), &mut v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no boundary"), "{err}");
    }

    #[test]
    fn values_beyond_the_limit_are_refused_naming_it() {
        let mut v = RequestValues::with_limit(3);
        let err = parse_urlencoded(b"a=1&b=2&a=3&c=4", "form body", &mut v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 3 values"), "{err}");
        let mut v = RequestValues::with_limit(2);
        assert!(parse_json(br#"{"a":[1,2,3]}"#, &mut v).is_err());
    }

    #[test]
    fn repeated_and_distinct_names_are_grouped_through_the_index() {
        // 160,000 fields (what froze the server for minutes when each name
        // was looked up among the earlier ones), half of them repeats.
        let body: String = (0..160_000)
            .map(|i| format!("f{}=v{i}&", i % 80_000))
            .collect();
        let v = urlencoded(body.as_bytes(), "form body").unwrap();
        assert_eq!(v.values.len(), 80_000);
        assert_eq!(v.values[7].key, "f7");
        assert_eq!(v.values[7].value, ["v7", "v80007"]);
        assert_eq!(v.get("F79999"), Some("v79999"));
    }
}
