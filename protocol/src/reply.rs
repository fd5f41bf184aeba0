//! The reply a module posts for a command (docs/protocol.md §1.4): any JSON
//! object, with the envelope fields CodeProject's SDKs add to every reply.
//!
//! ```json
//! {"success":true,"message":"hi","moduleId":"Echo","moduleName":"Echo","code":200,
//!  "command":"echo","requestId":"<reqid>","inferenceDevice":"CPU","processMs":3}
//! ```

use serde_json::{json, Value};

use crate::long_process::{CommandStatus, PROGRESS_PUSH_FIELD};
use crate::JsonMap;

/// What the envelope of a reply says, read from the object a module posted.
/// Every field is optional on the wire; absent or mistyped fields read as
/// `None` (or `false`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyMeta {
    /// `success`; a reply without it counts as a success, as CodeProject's
    /// clients read it.
    pub success: bool,
    /// `moduleId`: which module answered.
    pub module_id: Option<String>,
    /// `command`: the command answered (`status` replies are not counted as
    /// requests).
    pub command: Option<String>,
    /// `inferenceDevice`, e.g. `CPU`.
    pub inference_device: Option<String>,
    /// `commandId` of a long process.
    pub command_id: Option<String>,
    /// `commandStatus` of a long process.
    pub command_status: Option<CommandStatus>,
    /// `progressPush: true`: the module pushes this long process's progress
    /// itself (modhost extension, docs/protocol.md §4.2).
    pub pushes_progress: bool,
}

impl ReplyMeta {
    /// Reads the envelope fields of `reply`.
    pub fn read(reply: &JsonMap) -> ReplyMeta {
        let text = |key: &str| reply.get(key).and_then(Value::as_str).map(str::to_owned);
        ReplyMeta {
            success: reply
                .get("success")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            module_id: text("moduleId"),
            command: text("command"),
            inference_device: text("inferenceDevice"),
            command_id: text("commandId").filter(|id| !id.is_empty()),
            command_status: text("commandStatus").map(|s| CommandStatus::parse(&s)),
            pushes_progress: reply
                .get(PROGRESS_PUSH_FIELD)
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }

    /// True when the reply starts a long process: a success with a
    /// `commandId` and `commandStatus: running` (or `queued`).
    pub fn starts_long_process(&self) -> bool {
        self.success
            && self.command_id.is_some()
            && matches!(
                self.command_status,
                Some(CommandStatus::Running | CommandStatus::Queued)
            )
    }
}

/// Who answers a command, for [`envelope`].
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeFields<'a> {
    /// `moduleId`.
    pub module_id: &'a str,
    /// `moduleName`.
    pub module_name: &'a str,
    /// `command`: the command as the server sent it.
    pub command: &'a str,
    /// `requestId`: the queue item's `reqid`.
    pub request_id: &'a str,
    /// `inferenceDevice`, e.g. `CPU` or `GPU`.
    pub inference_device: &'a str,
    /// `processMs`, kept if `body` already has it.
    pub process_ms: u64,
}

/// Adds the envelope CodeProject's SDKs put on every reply: `moduleId`,
/// `moduleName`, `code` (200 if `success` is true, else 500), `command`,
/// `requestId`, `inferenceDevice`, and `processMs` unless `body` set it.
/// `success` defaults to true when `body` left it out.
pub fn envelope(mut body: JsonMap, fields: &EnvelopeFields<'_>) -> JsonMap {
    let success = body
        .entry("success")
        .or_insert(Value::Bool(true))
        .as_bool()
        .unwrap_or(false);
    body.insert("moduleId".into(), fields.module_id.into());
    body.insert("moduleName".into(), fields.module_name.into());
    body.insert("code".into(), (if success { 200 } else { 500 }).into());
    body.insert("command".into(), fields.command.into());
    body.insert("requestId".into(), fields.request_id.into());
    body.insert("inferenceDevice".into(), fields.inference_device.into());
    body.entry("processMs").or_insert(fields.process_ms.into());
    body
}

/// An error reply body: `{"success":false,"error":<message>}`.
pub fn error_body(message: &str) -> JsonMap {
    crate::long_process::object(json!({"success": false, "error": message}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::long_process::object;

    #[test]
    fn envelope_adds_the_standard_fields_and_defaults_success() {
        let fields = EnvelopeFields {
            module_id: "Echo",
            module_name: "Echo",
            command: "Echo",
            request_id: "r1",
            inference_device: "CPU",
            process_ms: 7,
        };
        let body = envelope(object(json!({"message": "hi"})), &fields);
        assert_eq!(
            Value::Object(body),
            json!({
                "message": "hi", "success": true, "moduleId": "Echo", "moduleName": "Echo",
                "code": 200, "command": "Echo", "requestId": "r1", "inferenceDevice": "CPU",
                "processMs": 7,
            })
        );
        let body = envelope(
            object(json!({"success": false, "processMs": 99, "moduleId": "spoofed"})),
            &fields,
        );
        assert_eq!(body["code"], 500);
        assert_eq!(body["processMs"], 99);
        assert_eq!(body["moduleId"], "Echo");
    }

    #[test]
    fn a_running_reply_starts_a_long_process() {
        let meta = ReplyMeta::read(&object(json!({
            "success": true, "commandId": "c1", "commandStatus": "running", "progressPush": true
        })));
        assert!(meta.starts_long_process());
        assert!(meta.pushes_progress);
        let refused = ReplyMeta::read(&object(json!({
            "success": false, "commandId": "c0", "error": "A long running command is already in progress"
        })));
        assert!(!refused.starts_long_process());
        assert!(!ReplyMeta::read(&object(json!({"message": "hi"}))).starts_long_process());
    }
}
