//! Turns a client request into the values and files a module receives, and
//! checks them against the route map.
//!
//! Values come from the query string, then from the body: multipart or
//! urlencoded forms (uploads become base64 files), JSON in CodeProject's payload
//! shape (`{"values":[{"key":"prompt","value":["hi"]}]}`), or, as a modhost
//! extension, a plain JSON object (`{"prompt":"hi","max_tokens":5}`). Payload
//! format of CodeProject.AI Server 2.9, see reference/codeproject-protocol.md §1
//! "Queue item" and §2.

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};
use actix_web::web::Bytes;
use base64::Engine;
use futures_util::StreamExt;
use modulesettings::{ParamType, RouteParam};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;

/// One named value; CodeProject sends every value as an array of strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<String>,
}

/// An uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileValue {
    pub name: String,
    pub filename: String,
    pub content_type: String,
    /// Base64 (standard alphabet, padded).
    pub data: String,
}

/// The values and files of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestValues {
    pub values: Vec<KeyValue>,
    pub files: Vec<FileValue>,
}

impl RequestValues {
    fn push(&mut self, key: &str, value: String) {
        match self.values.iter_mut().find(|kv| kv.key == key) {
            Some(kv) => kv.value.push(value),
            None => self.values.push(KeyValue {
                key: key.to_owned(),
                value: vec![value],
            }),
        }
    }

    /// The first value of `key` (case-insensitive).
    #[cfg(test)]
    fn get(&self, key: &str) -> Option<&str> {
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

    /// The `payload` object of a queue item for `command`.
    pub fn into_payload(self, command: &str, url_segments: Vec<String>) -> Value {
        serde_json::json!({
            "command": command,
            "values": self.values,
            "files": self.files,
            "urlSegments": url_segments,
        })
    }
}

/// Reads the body (at most `limit` bytes) and collects the request's values.
///
/// # Errors
/// 413 over the limit; 415 for a content type that carries no values; 400 for
/// a malformed body (bad JSON, bad form, invalid UTF-8), naming the problem.
pub async fn parse(
    query: &str,
    headers: &HeaderMap,
    mut body: actix_web::web::Payload,
    limit: usize,
) -> Result<RequestValues, ApiError> {
    let mut values = RequestValues::default();
    for (key, value) in parse_urlencoded(query.as_bytes(), "query string")? {
        values.push(&key, value);
    }

    if let Some(length) = headers
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if length > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    let mut bytes = actix_web::web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes = bytes.freeze();
    if bytes.is_empty() {
        return Ok(values);
    }

    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "multipart/form-data" => parse_multipart(headers, bytes, &mut values).await?,
        "application/x-www-form-urlencoded" => {
            for (key, value) in parse_urlencoded(&bytes, "form body")? {
                values.push(&key, value);
            }
        }
        "application/json" | "text/json" => parse_json(&bytes, &mut values)?,
        "" if bytes.first() == Some(&b'{') => parse_json(&bytes, &mut values)?,
        _ => return Err(ApiError::UnsupportedMediaType(content_type)),
    }
    Ok(values)
}

/// Decodes `application/x-www-form-urlencoded` pairs (`+` is a space,
/// `%XX` a byte). Strict where the common decoders are lossy: a value whose
/// decoded bytes are not UTF-8 (such as `%FF`) is an error, not a U+FFFD.
fn parse_urlencoded(bytes: &[u8], what: &str) -> Result<Vec<(String, String)>, ApiError> {
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
    bytes
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
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
            Ok((key, value))
        })
        .collect()
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
                        values.push(key, scalar_text(v));
                    }
                }
                Some(v) => values.push(key, scalar_text(v)),
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
                values.files.push(file);
            }
        }
        return Ok(());
    }
    for (key, value) in object {
        match value {
            Value::Null => {}
            Value::Array(list) => {
                for v in &list {
                    values.push(&key, scalar_text(v));
                }
            }
            other => values.push(&key, scalar_text(&other)),
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

async fn parse_multipart(
    headers: &HeaderMap,
    bytes: Bytes,
    values: &mut RequestValues,
) -> Result<(), ApiError> {
    let stream =
        futures_util::stream::once(async move { Ok::<_, actix_web::error::PayloadError>(bytes) });
    let mut multipart = actix_multipart::Multipart::new(headers, stream);
    while let Some(field) = multipart.next().await {
        let mut field =
            field.map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
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
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!("malformed multipart field '{name}': {e}"))
            })?;
            data.extend_from_slice(&chunk);
        }
        match filename {
            Some(filename) => values.files.push(FileValue {
                name,
                filename,
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                data: base64::engine::general_purpose::STANDARD.encode(&data),
            }),
            None => {
                let text = String::from_utf8(data).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "form field '{name}' is not valid UTF-8 (byte {})",
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                values.push(&name, text);
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
            v.push(k, val.to_string());
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

    #[test]
    fn urlencoded_decodes_plus_and_percent_escapes() {
        let pairs = parse_urlencoded(b"prompt=a+b%21&x&empty=&n=%C3%A9", "form body").unwrap();
        let expected = [
            ("prompt", "a b!"),
            ("x", ""),
            ("empty", ""),
            ("n", "\u{e9}"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn percent_escapes_that_are_not_utf8_are_refused_by_name() {
        let err = parse_urlencoded(b"ok=1&n=%FF", "query string")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the value of 'n' in the query string is not valid UTF-8 once percent-decoded (byte 0)"
        );
        let err = parse_urlencoded(b"%C3=1", "form body")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a name in the form body is not valid UTF-8"),
            "{err}"
        );
    }

    #[actix_web::test]
    async fn multipart_uploads_become_base64_files_beside_the_fields() {
        let body = [
            &b"--XyZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n"[..],
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.bin\"\r\n",
            b"Content-Type: application/octet-stream\r\n\r\n",
            &[0x00, 0x01, 0x02, 0xff],
            b"\r\n--XyZ--\r\n",
        ]
        .concat();
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            "multipart/form-data; boundary=XyZ".parse().unwrap(),
        );
        let mut v = RequestValues::default();
        parse_multipart(&headers, Bytes::from(body), &mut v)
            .await
            .unwrap();
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
        let err = parse_urlencoded(b"a=\xff", "form body")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }
}
