//! What a job is and what happens to it: its status and its events.

use modhost_protocol::{Failure, JsonMap};
use serde::Serialize;
use serde_json::{json, Value};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted by the module, waiting for a free slot.
    Queued,
    Running,
    Completed,
    Failed,
    /// Ended after a `cancel_command`.
    Cancelled,
}

impl JobStatus {
    /// Reads a status filter such as `running`.
    pub fn parse(text: &str) -> Option<JobStatus> {
        match text.trim().to_ascii_lowercase().as_str() {
            "queued" => Some(JobStatus::Queued),
            "running" => Some(JobStatus::Running),
            "completed" => Some(JobStatus::Completed),
            "failed" => Some(JobStatus::Failed),
            "cancelled" | "canceled" => Some(JobStatus::Cancelled),
            _ => None,
        }
    }

    /// True once the job can change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One thing that happened to a job, as a watcher receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// 1, 2, 3, … within the job; the SSE event id.
    pub id: u64,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Text appended to the reply; `produced_at_us` is when the module
    /// produced it (µs since the Unix epoch), when the module said.
    Delta {
        text: String,
        produced_at_us: Option<u64>,
    },
    /// Status fields that changed (`commandStatus` among them when the status
    /// did).
    Status(JsonMap),
    /// The job finished; the final `get_command_status` reply.
    Done(JsonMap),
    /// The job failed; the failure's code and message.
    Error(Failure),
}

impl EventKind {
    /// The SSE event name: `delta`, `status`, `done` or `error`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Delta { .. } => "delta",
            EventKind::Status(_) => "status",
            EventKind::Done(_) => "done",
            EventKind::Error(_) => "error",
        }
    }

    /// The SSE data, as JSON.
    pub fn data(&self) -> Value {
        match self {
            EventKind::Delta {
                text,
                produced_at_us,
            } => match produced_at_us {
                Some(at) => json!({"text": text, "producedAtUs": at}),
                None => json!({"text": text}),
            },
            EventKind::Status(fields) | EventKind::Done(fields) => Value::Object(fields.clone()),
            EventKind::Error(failure) => {
                json!({"code": failure.kind.code(), "message": failure.message})
            }
        }
    }
}
