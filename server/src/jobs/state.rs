//! A job's record: its text, its status fields and its events as stored,
//! and how a module's pushes and replies change them.

use std::time::SystemTime;

use modhost_protocol::{CommandStatus, Failure, FailureKind, JsonMap, ProgressUpdate, REPLY_FIELD};
use serde_json::Value;

use super::{Event, EventKind, JobStatus};

/// The envelope and status keys of a reply, which are not a job's own
/// status fields.
const ENVELOPE_KEYS: &[&str] = &[
    "success",
    "message",
    "error",
    "commandId",
    "commandStatus",
    "moduleId",
    "moduleName",
    "code",
    "command",
    "requestId",
    "inferenceDevice",
    "processMs",
    "analysisRoundTripMs",
    "processedBy",
    "timestampUTC",
    modhost_protocol::PROGRESS_PUSH_FIELD,
];

/// `reply` less its [`ENVELOPE_KEYS`].
fn without_envelope(mut reply: JsonMap) -> JsonMap {
    for key in ENVELOPE_KEYS {
        reply.remove(*key);
    }
    reply
}

/// How an event is stored: a delta as the range of its text in `reply`, so
/// a long reply costs a few bytes per delta beyond its text. (When a module
/// rewrites its text instead of extending it, the deltas before are turned
/// into owned text first.)
#[derive(Debug, Clone)]
enum Stored {
    Delta {
        start: usize,
        end: usize,
        produced_at_us: Option<u64>,
    },
    Other(EventKind),
}

/// A job's changing part.
#[derive(Debug)]
pub(super) struct JobState {
    pub(super) status: JobStatus,
    /// All text produced so far (the `reply` status field).
    pub(super) reply: String,
    /// The latest status fields other than `reply`.
    pub(super) fields: JsonMap,
    events: Vec<Stored>,
    pub(super) started: Option<SystemTime>,
    pub(super) finished: Option<SystemTime>,
    /// The final `get_command_status` reply, once finished.
    pub(super) result: Option<JsonMap>,
    pub(super) failure: Option<Failure>,
    /// A cancel was sent for it: a `completed` that follows is `cancelled`.
    pub(super) cancel_requested: bool,
}

impl JobState {
    /// The state of a job the module has just started, from its first
    /// (`running` or `queued`) reply: the reply is the first event, its
    /// text so far the first delta.
    pub(super) fn new(running: &JsonMap) -> JobState {
        let mut fields = without_envelope(running.clone());
        let reply = match fields.remove(REPLY_FIELD) {
            Some(Value::String(text)) => text,
            _ => String::new(),
        };
        let status = match running.get("commandStatus").and_then(Value::as_str) {
            Some(s) if CommandStatus::parse(s) == CommandStatus::Queued => JobStatus::Queued,
            _ => JobStatus::Running,
        };
        // The first event is the module's whole running reply (its
        // commandId first of all); the job keeps only its own fields.
        let mut first = running.clone();
        first.remove(REPLY_FIELD);
        let mut events = vec![Stored::Other(EventKind::Status(first))];
        if !reply.is_empty() {
            events.push(Stored::Delta {
                start: 0,
                end: reply.len(),
                produced_at_us: None,
            });
        }
        JobState {
            status,
            reply,
            fields,
            events,
            started: (status == JobStatus::Running).then(SystemTime::now),
            finished: None,
            result: None,
            failure: None,
            cancel_requested: false,
        }
    }

    /// How many events there are so far: the id of the latest one.
    pub(super) fn event_count(&self) -> u64 {
        self.events.len() as u64
    }

    /// Events with id greater than `after` (ids count from 1).
    pub(super) fn events_after(&self, after: u64) -> Vec<Event> {
        let skip = usize::try_from(after).unwrap_or(usize::MAX);
        self.events
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, stored)| Event {
                id: i as u64 + 1,
                kind: match stored {
                    Stored::Delta {
                        start,
                        end,
                        produced_at_us,
                    } => EventKind::Delta {
                        text: self.reply[*start..*end].to_owned(),
                        produced_at_us: *produced_at_us,
                    },
                    Stored::Other(kind) => kind.clone(),
                },
            })
            .collect()
    }

    /// Applies a module's progress push.
    pub(super) fn push(&mut self, update: ProgressUpdate) {
        self.start();
        self.append(&update.delta, update.produced_at_us);
        self.merge_fields(update.fields);
        if let Some(done) = update.done {
            self.finish_with(&done);
        }
    }

    /// Applies a `get_command_status` reply the module gave.
    pub(super) fn observe(&mut self, reply: &JsonMap) {
        let mut fields = reply.clone();
        let status = fields
            .get("commandStatus")
            .and_then(Value::as_str)
            .map(CommandStatus::parse);
        match status {
            Some(CommandStatus::Completed | CommandStatus::Failed | CommandStatus::Cancelled) => {
                if let Some(Value::String(text)) = fields.remove(REPLY_FIELD) {
                    self.update_text(text);
                }
                self.finish_with(reply);
            }
            Some(CommandStatus::Running | CommandStatus::Queued) => {
                if status == Some(CommandStatus::Running) {
                    self.start();
                }
                if let Some(Value::String(text)) = fields.remove(REPLY_FIELD) {
                    self.update_text(text);
                }
                self.merge_fields(without_envelope(fields));
            }
            // The module no longer knows the command (restarted, or it
            // forgot it): it will never finish.
            _ => self.fail(Failure::new(
                FailureKind::UnknownCommand,
                format!(
                    "the module no longer knows command {}: {}",
                    reply
                        .get("commandId")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    reply
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no error given")
                ),
            )),
        }
    }

    fn start(&mut self) {
        if self.status == JobStatus::Queued {
            self.status = JobStatus::Running;
            self.started = Some(SystemTime::now());
            let mut changed = JsonMap::new();
            changed.insert("commandStatus".into(), "running".into());
            self.events.push(Stored::Other(EventKind::Status(changed)));
        }
    }

    fn append(&mut self, delta: &str, produced_at_us: Option<u64>) {
        if delta.is_empty() {
            return;
        }
        let start = self.reply.len();
        self.reply.push_str(delta);
        self.events.push(Stored::Delta {
            start,
            end: self.reply.len(),
            produced_at_us,
        });
    }

    /// Takes the module's whole text so far: what extends the known text is
    /// a delta; a text that was rewritten instead is a status change
    /// carrying all of it.
    fn update_text(&mut self, text: String) {
        match text.strip_prefix(self.reply.as_str()) {
            Some(delta) => {
                let delta = delta.to_owned();
                self.append(&delta, None);
            }
            None => self.rewrite(text),
        }
    }

    /// Replaces the text with `text`, which does not extend it: the deltas
    /// so far keep their own text, and a `status` event carries the new one.
    fn rewrite(&mut self, text: String) {
        for stored in &mut self.events {
            if let Stored::Delta {
                start,
                end,
                produced_at_us,
            } = *stored
            {
                *stored = Stored::Other(EventKind::Delta {
                    text: self.reply[start..end].to_owned(),
                    produced_at_us,
                });
            }
        }
        self.reply = text.clone();
        let mut changed = JsonMap::new();
        changed.insert(REPLY_FIELD.into(), text.into());
        self.events.push(Stored::Other(EventKind::Status(changed)));
    }

    /// Merges changed fields; a status event carries only what changed.
    fn merge_fields(&mut self, fields: JsonMap) {
        let changed: JsonMap = fields
            .into_iter()
            .filter(|(k, v)| k != REPLY_FIELD && self.fields.get(k) != Some(v))
            .collect();
        if changed.is_empty() {
            return;
        }
        for (k, v) in &changed {
            self.fields.insert(k.clone(), v.clone());
        }
        self.events.push(Stored::Other(EventKind::Status(changed)));
    }

    /// Ends the job with the module's final `get_command_status` reply.
    fn finish_with(&mut self, done: &JsonMap) {
        let status = done
            .get("commandStatus")
            .and_then(Value::as_str)
            .map_or(CommandStatus::Completed, CommandStatus::parse);
        let success = done.get("success").and_then(Value::as_bool).unwrap_or(true);
        if status == CommandStatus::Failed || !success {
            let message = done
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the command failed")
                .to_owned();
            self.result = Some(done.clone());
            self.status = JobStatus::Failed;
            let failure = Failure::new(FailureKind::CommandFailed, message);
            self.failure = Some(failure.clone());
            self.finished = Some(SystemTime::now());
            self.events.push(Stored::Other(EventKind::Error(failure)));
            return;
        }
        let cancelled = self.cancel_requested
            || status == CommandStatus::Cancelled
            || done.get("message").and_then(Value::as_str) == Some("The command was cancelled");
        self.status = if cancelled {
            JobStatus::Cancelled
        } else {
            JobStatus::Completed
        };
        self.result = Some(done.clone());
        self.finished = Some(SystemTime::now());
        self.events
            .push(Stored::Other(EventKind::Done(done.clone())));
    }

    pub(super) fn fail(&mut self, failure: Failure) {
        // A job that was being cancelled when its module went is cancelled.
        let failure = if self.cancel_requested {
            Failure::new(
                FailureKind::Cancelled,
                format!(
                    "cancelled; the module could not confirm it: {}",
                    failure.message
                ),
            )
        } else {
            failure
        };
        self.status = if failure.kind == FailureKind::Cancelled {
            JobStatus::Cancelled
        } else {
            JobStatus::Failed
        };
        self.finished = Some(SystemTime::now());
        self.events
            .push(Stored::Other(EventKind::Error(failure.clone())));
        self.failure = Some(failure);
    }
}
