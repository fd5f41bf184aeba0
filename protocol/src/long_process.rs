//! Long processes (docs/protocol.md §1.7 and §2.3): a command that answers at
//! once with `{"commandStatus":"running","commandId":<reqid>}` and keeps
//! working; clients follow it with `get_command_status` and stop it with
//! `cancel_command`. This module holds the status values, the replies to
//! those two commands in the shapes the CodeProject Python SDK gives, and the
//! progress a module pushes (modhost extension, docs/protocol.md §4.2).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::JsonMap;

/// The built-in command that reports a long process's state.
pub const GET_COMMAND_STATUS_COMMAND: &str = "get_command_status";
/// The built-in command that stops a long process.
pub const CANCEL_COMMAND: &str = "cancel_command";
/// The status field holding a long process's text output so far (LlamaChat's
/// growing reply); a job's deltas are what is appended to it.
pub const REPLY_FIELD: &str = "reply";
/// The field of a `running` reply by which a module says it pushes its
/// progress (modhost extension, docs/protocol.md §4.2).
pub const PROGRESS_PUSH_FIELD: &str = "progressPush";

/// `commandStatus` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    /// Waiting for a free slot in the module (modhost extension).
    Queued,
    /// Working.
    Running,
    /// Finished. The Python SDK reports a cancelled command as completed too,
    /// with a message saying so.
    Completed,
    /// Ended with an error (modhost; the Python SDK has no such state).
    Failed,
    /// Stopped by `cancel_command`: the answer to the cancel itself, and a
    /// job's state once its module confirmed the stop.
    Cancelled,
    /// Nothing was ever started in this module.
    #[serde(rename = "not started")]
    NotStarted,
    /// No such command id, or none given.
    Unknown,
}

impl CommandStatus {
    /// The wire string, e.g. `"not started"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Running => "running",
            CommandStatus::Completed => "completed",
            CommandStatus::Failed => "failed",
            CommandStatus::Cancelled => "cancelled",
            CommandStatus::NotStarted => "not started",
            CommandStatus::Unknown => "unknown",
        }
    }

    /// Reads a wire string, case-insensitively; anything else is `Unknown`.
    pub fn parse(text: &str) -> CommandStatus {
        match text.trim().to_ascii_lowercase().as_str() {
            "queued" => CommandStatus::Queued,
            "running" => CommandStatus::Running,
            "completed" => CommandStatus::Completed,
            "failed" => CommandStatus::Failed,
            "cancelled" | "canceled" => CommandStatus::Cancelled,
            "not started" => CommandStatus::NotStarted,
            _ => CommandStatus::Unknown,
        }
    }

    /// True for the states a command never leaves.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandStatus::Completed | CommandStatus::Failed | CommandStatus::Cancelled
        )
    }
}

/// Unwraps a `json!` object literal.
pub(crate) fn object(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        other => {
            let mut map = JsonMap::new();
            map.insert("result".into(), other);
            map
        }
    }
}

/// Replies to `get_command_status`, in the Python SDK's shapes.
pub mod status_reply {
    use super::*;

    /// `running`: `fields` (e.g. the reply so far) merged in; `success` true.
    pub fn running(id: &str, fields: JsonMap) -> JsonMap {
        running_as(id, fields, CommandStatus::Running)
    }

    /// `running` or `queued`, as `status` says.
    pub fn running_as(id: &str, fields: JsonMap, status: CommandStatus) -> JsonMap {
        let mut reply = object(json!({
            "success": true,
            "message": if status == CommandStatus::Queued {
                "The long running command is waiting for a free slot"
            } else {
                "The long running command is still in progress"
            },
        }));
        reply.extend(fields);
        reply.insert("commandStatus".into(), status.as_str().into());
        reply.insert("commandId".into(), id.into());
        reply
    }

    /// `completed`: the result merged in. A command that returned after a
    /// cancel is `completed` too, as the Python SDK reports it, so that
    /// clients polling until `completed` stop; its message says it was
    /// cancelled.
    pub fn completed(id: &str, result: JsonMap, was_cancelled: bool) -> JsonMap {
        let mut reply = object(json!({
            "success": true,
            "message": if was_cancelled { "The command was cancelled" } else { "Command has completed" },
            "error": null,
        }));
        reply.extend(result);
        reply.insert("commandStatus".into(), "completed".into());
        reply.insert("commandId".into(), id.into());
        reply
    }

    /// `failed`: what the command had published, then the error.
    pub fn failed(id: &str, published: JsonMap, error: &str) -> JsonMap {
        let mut reply = published;
        reply.extend(object(json!({
            "success": false,
            "message": "Command has failed",
            "commandStatus": "failed",
            "error": error,
        })));
        reply.insert("commandId".into(), id.into());
        reply
    }

    /// `not started`: no long process ever ran in this module.
    pub fn not_started(id: &str) -> JsonMap {
        object(json!({
            "success": false,
            "commandId": id,
            "commandStatus": "not started",
            "error": "No long running command has been started",
        }))
    }

    /// `unknown`: no such id, or (`None`) none given.
    pub fn unknown(id: Option<&str>) -> JsonMap {
        match id {
            None => object(json!({
                "success": false,
                "commandStatus": "unknown",
                "error": "No command ID provided",
            })),
            Some(id) => object(json!({
                "success": false,
                "commandId": id,
                "commandStatus": "unknown",
                "error": format!("Unknown command ID '{id}'"),
            })),
        }
    }
}

/// Replies to `cancel_command`, in the Python SDK's shapes.
pub mod cancel_reply {
    use super::*;

    /// The command was running and has been told to stop.
    pub fn cancelled(id: &str) -> JsonMap {
        object(json!({
            "success": true,
            "message": "The command has been cancelled",
            "commandId": id,
            "commandStatus": "cancelled",
        }))
    }

    /// The command had finished already; `status` is how it is reported.
    pub fn already_finished(id: &str, status: CommandStatus) -> JsonMap {
        object(json!({
            "success": true,
            "message": "The command had already finished",
            "commandId": id,
            "commandStatus": status.as_str(),
        }))
    }

    /// No such id, or (`None`) none given.
    pub fn unknown(id: Option<&str>) -> JsonMap {
        match id {
            None => object(json!({"success": false, "error": "No command ID provided"})),
            Some(id) => object(json!({
                "success": false,
                "commandId": id,
                "error": format!("Unknown command ID '{id}'"),
            })),
        }
    }
}

/// Progress a module pushes for one of its long processes:
/// `POST /v1/queue/progress/{commandId}?moduleId=<id>` with this as JSON
/// (modhost extension, docs/protocol.md §4.2). Updates for one command are
/// posted one at a time, in order; the server applies them in that order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressUpdate {
    /// Text appended to the command's [`REPLY_FIELD`] since the last update.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delta: String,
    /// Status fields that changed since the last update, other than the
    /// reply text (e.g. `{"tokens": 12}`).
    #[serde(default, skip_serializing_if = "JsonMap::is_empty")]
    pub fields: JsonMap,
    /// The command left the module's queue and now runs (sent once, by a
    /// command that answered `commandStatus: queued`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started: bool,
    /// On the last update only: the final `get_command_status` reply
    /// (`completed` or `failed`, see [`status_reply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<JsonMap>,
    /// When the module produced the newest part of this update, in
    /// microseconds since the Unix epoch; lets the server and clients measure
    /// delivery delay on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced_at_us: Option<u64>,
}

/// Progress of several of a module's long processes in one push:
/// `POST /v1/queue/progress?moduleId=<id>` with a JSON object from command id
/// to its [`ProgressUpdate`] (modhost extension, docs/protocol.md §4.2). A
/// module that decodes several chats in one step pushes them all at once.
pub type ProgressBatch = std::collections::BTreeMap<String, ProgressUpdate>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_wire_strings() {
        for status in [
            CommandStatus::Queued,
            CommandStatus::Running,
            CommandStatus::Completed,
            CommandStatus::Failed,
            CommandStatus::Cancelled,
            CommandStatus::NotStarted,
            CommandStatus::Unknown,
        ] {
            assert_eq!(CommandStatus::parse(status.as_str()), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::String(status.as_str().into())
            );
        }
        assert_eq!(CommandStatus::parse("Bogus"), CommandStatus::Unknown);
    }

    #[test]
    fn running_reply_merges_fields_under_the_fixed_ones() {
        let r = status_reply::running(
            "c1",
            object(json!({"reply": "The", "commandStatus": "bogus"})),
        );
        assert_eq!(
            Value::Object(r),
            json!({"success": true, "message": "The long running command is still in progress",
                   "commandId": "c1", "commandStatus": "running", "reply": "The"})
        );
    }

    #[test]
    fn failed_reply_keeps_what_was_published() {
        let r = status_reply::failed("c1", object(json!({"reply": "half"})), "boom");
        assert_eq!(
            Value::Object(r),
            json!({"success": false, "message": "Command has failed", "commandId": "c1",
                   "commandStatus": "failed", "error": "boom", "reply": "half"})
        );
    }

    #[test]
    fn progress_updates_leave_out_what_is_empty() {
        let update = ProgressUpdate {
            delta: "Hi".into(),
            ..ProgressUpdate::default()
        };
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({"delta": "Hi"})
        );
        let back: ProgressUpdate = serde_json::from_value(json!({})).unwrap();
        assert_eq!(back, ProgressUpdate::default());
        let timed = ProgressUpdate {
            produced_at_us: Some(7),
            ..ProgressUpdate::default()
        };
        assert_eq!(
            serde_json::to_value(&timed).unwrap(),
            json!({"producedAtUs": 7})
        );
    }
}
