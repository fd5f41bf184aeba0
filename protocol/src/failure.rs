//! Why a command failed, as the server tells the waiting client
//! (docs/protocol.md §2.2). CodeProject answers these with HTTP 200 and
//! `{"success":false,"code":500,"error":<message>}`; modhost adds a stable
//! machine-readable `errorCode` (docs/protocol.md §4.3) so that clients, the
//! jobs API and the OpenAI and Ollama APIs can branch on the kind of failure
//! instead of on message text.

use serde::{Deserialize, Serialize};

/// The kinds of failure, each with a stable wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The module's queue holds its maximum count or bytes of commands.
    QueueFull,
    /// No reply within the request timeout (queue time included).
    Timeout,
    /// The module is not running (stopped, failed to start, restarting).
    ModuleNotRunning,
    /// The module exited while it held or was about to take the command.
    ModuleCrashed,
    /// The module was stopped (dashboard or server shutdown) meanwhile.
    ModuleStopped,
    /// The module stopped answering (no contact while commands waited) and
    /// is being restarted.
    ModuleUnresponsive,
    /// The module's reply was not a JSON object, or could not be read.
    InvalidReply,
    /// The module reported that the command failed (its own error).
    CommandFailed,
    /// The job was cancelled before its module had finished it, and the module
    /// could not report how far it got (it stopped, or crashed, meanwhile).
    Cancelled,
    /// No command or job with that id is known (never seen, or expired).
    UnknownCommand,
}

impl FailureKind {
    /// The wire code, e.g. `"queue_full"`.
    pub fn code(self) -> &'static str {
        match self {
            FailureKind::QueueFull => "queue_full",
            FailureKind::Timeout => "timeout",
            FailureKind::ModuleNotRunning => "module_not_running",
            FailureKind::ModuleCrashed => "module_crashed",
            FailureKind::ModuleStopped => "module_stopped",
            FailureKind::ModuleUnresponsive => "module_unresponsive",
            FailureKind::InvalidReply => "invalid_reply",
            FailureKind::CommandFailed => "command_failed",
            FailureKind::Cancelled => "cancelled",
            FailureKind::UnknownCommand => "unknown_command",
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), for
    /// the failures that a retry can cure.
    pub fn retry_after_secs(self) -> Option<u32> {
        match self {
            FailureKind::QueueFull => Some(1),
            FailureKind::ModuleNotRunning
            | FailureKind::ModuleCrashed
            | FailureKind::ModuleUnresponsive => Some(5),
            _ => None,
        }
    }
}

/// A failed command: its kind and a message for the person calling the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Failure {
    /// What went wrong, for programs.
    pub kind: FailureKind,
    /// What went wrong, for people; CodeProject's wording where it has one,
    /// e.g. `The request timed out (#reqid <id>)`.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_serde_names() {
        for kind in [
            FailureKind::QueueFull,
            FailureKind::Timeout,
            FailureKind::ModuleNotRunning,
            FailureKind::ModuleCrashed,
            FailureKind::ModuleStopped,
            FailureKind::ModuleUnresponsive,
            FailureKind::InvalidReply,
            FailureKind::CommandFailed,
            FailureKind::Cancelled,
            FailureKind::UnknownCommand,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.code().into())
            );
        }
    }
}
