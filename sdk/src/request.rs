//! A queued command as the module sees it: [`RequestData`] and its typed getters.
//!
//! The queue item is defined once, in `modhost_protocol::QueueItem`
//! (docs/protocol.md §1.3):
//!
//! ```json
//! {"reqid":"<guid>","reqtype":"prompt",
//!  "payload":{"command":"prompt",
//!    "values":[{"key":"prompt","value":["Hi"]}],
//!    "files":[{"name":"image1","filename":"a.jpg","contentType":"image/jpeg","data":"<base64>"}],
//!    "urlSegments":[]}}
//! ```

use base64::Engine as _;
use modhost_protocol::QueueItem;
use serde_json::Value;

use crate::error::ModuleError;

/// A value a command needs is missing or has the wrong form.
///
/// Converts into [`ModuleError`], so `request.int("max_tokens")?` inside
/// [`ModuleRunner::process`](crate::ModuleRunner::process) turns into an
/// error reply with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The request has no value for `key` (or, for typed getters, only an
    /// empty one).
    #[error("missing value '{key}'")]
    Missing {
        /// The name of the value, as the client sent it.
        key: String,
    },
    /// The value for `key` cannot be read as the requested type.
    #[error("value '{key}' is '{value}': expected {expected}")]
    Invalid {
        /// The name of the value.
        key: String,
        /// The value as received.
        value: String,
        /// What would have been accepted, e.g. `"a number"`.
        expected: String,
    },
}

/// An uploaded file from the request (`payload.files[]`), already decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileData {
    /// The form field name, e.g. `"image1"`.
    pub name: String,
    /// The file name the client gave, e.g. `"a.jpg"` (may be empty).
    pub filename: String,
    /// The MIME type the client gave, e.g. `"image/jpeg"` (may be empty).
    pub content_type: String,
    /// The file's bytes, decoded from the base64 `data` field.
    pub data: Vec<u8>,
}

/// One command taken from the module's queue.
///
/// Values are arrays of strings on the wire; the single-value getters read
/// the first element, like the Python SDK. Keys match exactly first, then
/// ASCII case-insensitively. The typed getters (`int`, `float`, `bool` and
/// their `_or` forms) treat an empty or all-blank value as missing, because
/// HTML forms send unfilled fields as empty strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestData {
    request_id: String,
    request_type: String,
    /// The command exactly as sent; replies echo it back.
    raw_command: String,
    /// Lowercased, for dispatch.
    command: String,
    values: Vec<(String, Vec<String>)>,
    files: Vec<FileData>,
    url_segments: Vec<String>,
}

impl RequestData {
    /// Parses a queue item (the body of a 200 reply to the module's poll).
    ///
    /// Missing parts (`payload`, `values`, `files`, …) are read as empty.
    ///
    /// # Errors
    /// The text is not JSON of the queue-item shape, or a file's `data` is not
    /// valid base64.
    pub fn from_json(text: &str) -> Result<Self, ModuleError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModuleError(format!("malformed queue item: {e}")))?;
        Self::from_value(value)
    }

    /// Like [`RequestData::from_json`], from an already parsed value.
    ///
    /// # Errors
    /// As for [`RequestData::from_json`].
    pub fn from_value(value: Value) -> Result<Self, ModuleError> {
        let item: QueueItem = serde_json::from_value(value)
            .map_err(|e| ModuleError(format!("malformed queue item: {e}")))?;
        let payload = item.payload;
        let values = payload
            .values
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let files = payload
            .files
            .into_iter()
            .map(|f| {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(f.data.trim())
                    .map_err(|e| {
                        ModuleError(format!("file '{}' is not valid base64: {e}", f.name))
                    })?;
                Ok(FileData {
                    name: f.name,
                    filename: f.filename,
                    content_type: f.content_type,
                    data,
                })
            })
            .collect::<Result<Vec<_>, ModuleError>>()?;
        Ok(Self {
            request_id: item.reqid,
            request_type: item.reqtype,
            command: payload.command.to_lowercase(),
            raw_command: payload.command,
            values,
            files,
            url_segments: payload.url_segments,
        })
    }

    /// A request built in code, for tests of a module's `process`.
    pub fn new(command: &str) -> Self {
        Self {
            request_type: command.to_owned(),
            raw_command: command.to_owned(),
            command: command.to_lowercase(),
            ..Self::default()
        }
    }

    /// Sets the request id (`reqid`); builder style, for tests.
    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = request_id.to_owned();
        self
    }

    /// Adds a value (a further one for a key already present, as a repeated
    /// form field arrives); builder style, for tests.
    pub fn with_value(mut self, key: &str, value: &str) -> Self {
        match self.values.iter_mut().find(|(k, _)| k == key) {
            Some((_, list)) => list.push(value.to_owned()),
            None => self.values.push((key.to_owned(), vec![value.to_owned()])),
        }
        self
    }

    /// Adds a file; builder style, for tests.
    pub fn with_file(mut self, file: FileData) -> Self {
        self.files.push(file);
        self
    }

    /// The request id (`reqid`), which is also the command id of a long
    /// process started by this request.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The request type (`reqtype`), usually the same as the command.
    pub fn request_type(&self) -> &str {
        &self.request_type
    }

    /// The command, lowercased (`payload.command`, e.g. `"prompt"`).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The command as the server sent it (replies echo it in `command`).
    pub fn raw_command(&self) -> &str {
        &self.raw_command
    }

    /// The parts of the URL after the matched route, split on `/`.
    pub fn url_segments(&self) -> &[String] {
        &self.url_segments
    }

    /// All values, in the order received: `(key, strings)`.
    pub fn all_values(&self) -> &[(String, Vec<String>)] {
        &self.values
    }

    /// All strings sent for `key` (empty if none).
    pub fn values(&self, key: &str) -> &[String] {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .or_else(|| {
                self.values
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
            })
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// The first string sent for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values(key).first().map(String::as_str)
    }

    /// The first string sent for `key`.
    ///
    /// # Errors
    /// [`ValueError::Missing`] if there is none (an empty string is returned
    /// as is).
    pub fn string(&self, key: &str) -> Result<String, ValueError> {
        self.get(key).map(str::to_owned).ok_or_else(|| missing(key))
    }

    /// The first string sent for `key`, or `default` if there is none.
    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or(default).to_owned()
    }

    /// The value for `key` as a whole number.
    ///
    /// # Errors
    /// [`ValueError::Missing`] if absent or blank; [`ValueError::Invalid`]
    /// ("expected an integer") if it does not parse as an `i64`.
    pub fn int(&self, key: &str) -> Result<i64, ValueError> {
        self.typed(key, "an integer", |s| s.parse::<i64>().ok())?
            .ok_or_else(|| missing(key))
    }

    /// Like [`RequestData::int`], but `default` when absent or blank.
    ///
    /// # Errors
    /// [`ValueError::Invalid`] if present but not an integer: a typo from the
    /// client is reported, not silently replaced by the default.
    pub fn int_or(&self, key: &str, default: i64) -> Result<i64, ValueError> {
        Ok(self
            .typed(key, "an integer", |s| s.parse::<i64>().ok())?
            .unwrap_or(default))
    }

    /// The value for `key` as a number.
    ///
    /// # Errors
    /// [`ValueError::Missing`] if absent or blank; [`ValueError::Invalid`]
    /// ("expected a number") if it does not parse as an `f64`.
    pub fn float(&self, key: &str) -> Result<f64, ValueError> {
        self.typed(key, "a number", |s| s.parse::<f64>().ok())?
            .ok_or_else(|| missing(key))
    }

    /// Like [`RequestData::float`], but `default` when absent or blank.
    ///
    /// # Errors
    /// [`ValueError::Invalid`] if present but not a number.
    pub fn float_or(&self, key: &str, default: f64) -> Result<f64, ValueError> {
        Ok(self
            .typed(key, "a number", |s| s.parse::<f64>().ok())?
            .unwrap_or(default))
    }

    /// The value for `key` as a flag: `true`/`false`, `1`/`0`, `yes`/`no`,
    /// case-insensitive.
    ///
    /// # Errors
    /// [`ValueError::Missing`] if absent or blank; [`ValueError::Invalid`]
    /// ("expected true or false") otherwise.
    pub fn bool(&self, key: &str) -> Result<bool, ValueError> {
        self.typed(key, "true or false", parse_bool)?
            .ok_or_else(|| missing(key))
    }

    /// Like [`RequestData::bool`], but `default` when absent or blank.
    ///
    /// # Errors
    /// [`ValueError::Invalid`] if present but not a recognised flag.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ValueError> {
        Ok(self
            .typed(key, "true or false", parse_bool)?
            .unwrap_or(default))
    }

    /// The uploaded file whose form field is `name` (e.g. `"image1"`).
    pub fn file(&self, name: &str) -> Option<&FileData> {
        self.files.iter().find(|f| f.name == name).or_else(|| {
            self.files
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
        })
    }

    /// All uploaded files, in the order received.
    pub fn files(&self) -> &[FileData] {
        &self.files
    }

    /// `Ok(None)` when absent or blank, `Ok(Some(v))` when it parses.
    fn typed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ValueError> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        parse(trimmed).map(Some).ok_or_else(|| ValueError::Invalid {
            key: key.to_owned(),
            value: raw.to_owned(),
            expected: expected.to_owned(),
        })
    }
}

fn missing(key: &str) -> ValueError {
    ValueError::Missing {
        key: key.to_owned(),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> RequestData {
        RequestData::from_value(json!({
            "reqid": "r-1",
            "reqtype": "prompt",
            "payload": {
                "command": "Prompt",
                "values": [
                    {"key": "prompt", "value": ["Hi", "ignored"]},
                    {"key": "max_tokens", "value": ["12"]},
                    {"key": "temperature", "value": ["abc"]},
                    {"key": "top_p", "value": [" 0.5 "]},
                    {"key": "stream", "value": ["Yes"]},
                    {"key": "blank", "value": [""]},
                    {"key": "Mixed", "value": "single"},
                    {"key": "nothing", "value": null}
                ],
                "files": [{"name": "image1", "filename": "a.jpg", "contentType": "image/jpeg", "data": "aGVsbG8="}],
                "urlSegments": ["extra", "part"]
            }
        }))
        .expect("sample parses")
    }

    #[test]
    fn parses_the_queue_item_shape() {
        let r = sample();
        assert_eq!(r.request_id(), "r-1");
        assert_eq!(r.request_type(), "prompt");
        assert_eq!(r.command(), "prompt");
        assert_eq!(r.raw_command(), "Prompt");
        assert_eq!(r.url_segments(), ["extra", "part"]);
        assert_eq!(r.values("prompt"), ["Hi", "ignored"]);
        assert_eq!(r.get("prompt"), Some("Hi"));
        assert_eq!(r.values("absent"), [] as [String; 0]);
        assert_eq!(r.values("nothing"), [] as [String; 0]);
        assert_eq!(r.all_values().len(), 8);
    }

    #[test]
    fn keys_fall_back_to_case_insensitive_match() {
        let r = sample();
        assert_eq!(r.get("mixed"), Some("single"));
        assert_eq!(r.get("PROMPT"), Some("Hi"));
    }

    #[test]
    fn files_are_decoded_from_base64() {
        let r = sample();
        let f = r.file("image1").expect("file present");
        assert_eq!(f.filename, "a.jpg");
        assert_eq!(f.content_type, "image/jpeg");
        assert_eq!(f.data, b"hello");
        assert!(r.file("IMAGE1").is_some());
        assert!(r.file("image2").is_none());
        assert_eq!(r.files().len(), 1);
    }

    #[test]
    fn bad_base64_is_a_parse_error_naming_the_file() {
        let err = RequestData::from_value(json!({
            "reqid": "r", "payload": {"command": "x", "files": [{"name": "image1", "data": "%%%"}]}
        }))
        .unwrap_err();
        assert!(
            err.message()
                .starts_with("file 'image1' is not valid base64"),
            "{err}"
        );
    }

    #[test]
    fn non_json_and_wrong_shapes_are_parse_errors() {
        assert!(RequestData::from_json("not json")
            .unwrap_err()
            .message()
            .starts_with("malformed queue item"));
        assert!(RequestData::from_json(r#"{"payload":{"values":[{"value":["x"]}]}}"#).is_err());
    }

    #[test]
    fn missing_parts_read_as_empty() {
        let r = RequestData::from_json(r#"{"reqid":"r","payload":null}"#).expect("parses");
        assert_eq!(r.request_id(), "r");
        assert_eq!(r.command(), "");
        assert!(r.files().is_empty() && r.url_segments().is_empty());
        let r = RequestData::from_json("{}").expect("parses");
        assert_eq!(r.request_id(), "");
    }

    #[test]
    fn string_getters() {
        let r = sample();
        assert_eq!(r.string("prompt").as_deref(), Ok("Hi"));
        assert_eq!(r.string("blank").as_deref(), Ok(""));
        assert_eq!(
            r.string("system_prompt").unwrap_err().to_string(),
            "missing value 'system_prompt'"
        );
        assert_eq!(r.string_or("system_prompt", "be brief"), "be brief");
        assert_eq!(r.string_or("prompt", "unused"), "Hi");
    }

    #[test]
    fn int_getters() {
        let r = sample();
        assert_eq!(r.int("max_tokens"), Ok(12));
        assert_eq!(r.int_or("max_tokens", 5), Ok(12));
        assert_eq!(r.int_or("absent", 5), Ok(5));
        assert_eq!(r.int_or("blank", 5), Ok(5));
        assert_eq!(
            r.int("absent").unwrap_err().to_string(),
            "missing value 'absent'"
        );
        assert_eq!(
            r.int("blank").unwrap_err().to_string(),
            "missing value 'blank'"
        );
        assert_eq!(
            r.int("top_p").unwrap_err().to_string(),
            "value 'top_p' is ' 0.5 ': expected an integer"
        );
        assert!(r.int_or("temperature", 1).is_err());
    }

    #[test]
    fn float_getters() {
        let r = sample();
        assert_eq!(r.float("top_p"), Ok(0.5));
        assert_eq!(r.float("max_tokens"), Ok(12.0));
        assert_eq!(r.float_or("absent", 0.4), Ok(0.4));
        assert_eq!(
            r.float_or("temperature", 0.4).unwrap_err(),
            ValueError::Invalid {
                key: "temperature".into(),
                value: "abc".into(),
                expected: "a number".into()
            }
        );
        assert_eq!(
            r.float("temperature").unwrap_err().to_string(),
            "value 'temperature' is 'abc': expected a number"
        );
        assert_eq!(
            r.float("absent").unwrap_err().to_string(),
            "missing value 'absent'"
        );
    }

    #[test]
    fn bool_getters_accept_the_usual_spellings() {
        for (text, want) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("False", false),
            ("0", false),
            ("NO", false),
        ] {
            let r = RequestData::new("x").with_value("flag", text);
            assert_eq!(r.bool("flag"), Ok(want), "{text}");
        }
        let r = sample();
        assert_eq!(r.bool("stream"), Ok(true));
        assert_eq!(r.bool_or("absent", true), Ok(true));
        assert_eq!(r.bool_or("blank", false), Ok(false));
        assert_eq!(
            r.bool("absent").unwrap_err().to_string(),
            "missing value 'absent'"
        );
        assert_eq!(
            r.bool_or("prompt", false).unwrap_err().to_string(),
            "value 'prompt' is 'Hi': expected true or false"
        );
    }

    #[test]
    fn builder_makes_requests_for_module_tests() {
        let r = RequestData::new("Echo")
            .with_request_id("id-9")
            .with_value("text", "hi")
            .with_file(FileData {
                name: "f".into(),
                ..FileData::default()
            });
        assert_eq!(r.command(), "echo");
        assert_eq!(r.raw_command(), "Echo");
        assert_eq!(r.request_id(), "id-9");
        assert_eq!(r.get("text"), Some("hi"));
        assert!(r.file("f").is_some());
    }
}
