//! One job: its state, its events as stored, and its views (the jobs API's
//! and `get_command_status`'s).

use std::sync::Arc;
use std::time::SystemTime;

use modhost_protocol::{
    status_reply, CommandStatus, Failure, FailureKind, JsonMap, ProgressUpdate, REPLY_FIELD,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{Event, EventKind, JobStatus};
use crate::queue::Origin;

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
struct JobState {
    status: JobStatus,
    /// All text produced so far (the `reply` status field).
    reply: String,
    /// The latest status fields other than `reply`.
    fields: JsonMap,
    events: Vec<Stored>,
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
    /// The final `get_command_status` reply, once finished.
    result: Option<JsonMap>,
    failure: Option<Failure>,
    /// A cancel was sent for it: a `completed` that follows is `cancelled`.
    cancel_requested: bool,
}

/// A long process the server owns.
#[derive(Debug)]
pub struct Job {
    /// The command id (the module's `commandId`, the request id of the
    /// command that started it).
    pub id: String,
    pub origin: Origin,
    /// Whether the module pushes its progress (docs/protocol.md §4.2), so
    /// the server answers `get_command_status` from the job.
    pub pushes: bool,
    /// When the client's command was queued.
    pub created: SystemTime,
    // parking_lot: short critical sections, never across an .await.
    state: Mutex<JobState>,
    /// The number of events so far; changes wake the watchers.
    version: watch::Sender<u64>,
    /// Watchers now reading the job's events (SSE streams).
    watchers: std::sync::atomic::AtomicUsize,
    /// A job the server runs itself (a skill run) is cancelled through
    /// this token rather than by a module.
    pub(super) canceller: Option<tokio_util::sync::CancellationToken>,
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub module_id: String,
    pub route: String,
    pub command: String,
    pub status: JobStatus,
    /// The text so far.
    pub reply: String,
    /// The latest status fields other than `reply`.
    pub fields: JsonMap,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The final `get_command_status` reply, once finished.
    pub result: Option<JsonMap>,
    /// `{code, message}` of a failed job.
    pub error: Option<Value>,
    /// Events so far: the id of the latest one.
    pub events: u64,
    /// Whether the module pushes its progress.
    pub pushes_progress: bool,
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Job {
    pub(super) fn new(
        id: String,
        origin: Origin,
        pushes: bool,
        created: SystemTime,
        running: &JsonMap,
    ) -> Job {
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
        let count = events.len() as u64;
        Job {
            id,
            origin,
            pushes,
            created,
            state: Mutex::new(JobState {
                status,
                reply,
                fields,
                events,
                started: (status == JobStatus::Running).then(SystemTime::now),
                finished: None,
                result: None,
                failure: None,
                cancel_requested: false,
            }),
            version: watch::channel(count).0,
            watchers: Default::default(),
            canceller: None,
        }
    }

    /// The current status.
    pub fn status(&self) -> JobStatus {
        self.state.lock().status
    }

    /// A snapshot for the jobs API.
    pub fn view(&self) -> JobView {
        let s = self.state.lock();
        JobView {
            id: self.id.clone(),
            module_id: self.origin.module_id.clone(),
            route: self.origin.route.clone(),
            command: self.origin.command.clone(),
            status: s.status,
            reply: s.reply.clone(),
            fields: s.fields.clone(),
            created_at: rfc3339(self.created),
            started_at: s.started.map(rfc3339),
            finished_at: s.finished.map(rfc3339),
            result: s.result.clone(),
            error: s
                .failure
                .as_ref()
                .map(|f| json!({"code": f.kind.code(), "message": f.message})),
            events: s.events.len() as u64,
            pushes_progress: self.pushes,
        }
    }

    /// The `get_command_status` reply the job stands for now, in the shapes
    /// of docs/protocol.md §1.7.
    pub fn status_reply(&self) -> JsonMap {
        let s = self.state.lock();
        if let Some(result) = &s.result {
            return result.clone();
        }
        if let Some(failure) = &s.failure {
            let mut reply = status_reply::failed(&self.id, s.fields.clone(), &failure.message);
            reply.insert(REPLY_FIELD.into(), s.reply.clone().into());
            reply.insert("errorCode".into(), failure.kind.code().into());
            return reply;
        }
        let mut fields = s.fields.clone();
        fields.insert(REPLY_FIELD.into(), s.reply.clone().into());
        let status = if s.status == JobStatus::Queued {
            CommandStatus::Queued
        } else {
            CommandStatus::Running
        };
        status_reply::running_as(&self.id, fields, status)
    }

    /// Events with id greater than `after`, and whether the job has ended
    /// (no more will come once these are read).
    pub fn events_after(&self, after: u64) -> (Vec<Event>, bool) {
        let s = self.state.lock();
        let skip = usize::try_from(after).unwrap_or(usize::MAX);
        let out = s
            .events
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
                        text: s.reply[*start..*end].to_owned(),
                        produced_at_us: *produced_at_us,
                    },
                    Stored::Other(kind) => kind.clone(),
                },
            })
            .collect();
        (out, s.status.is_final())
    }

    /// The token that cancels a job the server runs itself; `None` for a
    /// module's job.
    pub fn canceller(&self) -> Option<&tokio_util::sync::CancellationToken> {
        self.canceller.as_ref()
    }

    /// Waits until the job has ended.
    pub async fn until_final(&self) {
        let mut changes = self.subscribe();
        while !self.status().is_final() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that changes whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Counts a watcher in for as long as the guard lives.
    pub fn watch(self: &Arc<Self>) -> WatchGuard {
        self.watchers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Wakes the job's poller, which polls faster while it is watched.
        self.version.send_modify(|_| {});
        WatchGuard(Arc::clone(self))
    }

    /// Whether someone reads the job's events now.
    pub fn is_watched(&self) -> bool {
        self.watchers.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Notes that a cancel was sent, so that the `completed` that follows is
    /// recorded as `cancelled`.
    pub fn cancel_requested(&self) {
        self.state.lock().cancel_requested = true;
    }

    /// Appends events under the lock, then wakes the watchers.
    fn change(&self, f: impl FnOnce(&mut JobState)) {
        let count = {
            let mut s = self.state.lock();
            if s.status.is_final() {
                return;
            }
            f(&mut s);
            s.events.len() as u64
        };
        self.version.send_replace(count);
    }

    /// Applies a module's progress push.
    pub(super) fn push(&self, update: ProgressUpdate) {
        self.change(|s| {
            s.start();
            s.append(&update.delta, update.produced_at_us);
            s.merge_fields(update.fields);
            if let Some(done) = update.done {
                s.finish_with(&done);
            }
        });
    }

    /// Applies a `get_command_status` reply the module gave.
    pub(super) fn observe(&self, reply: &JsonMap) {
        self.change(|s| {
            let mut fields = reply.clone();
            let status = fields
                .get("commandStatus")
                .and_then(Value::as_str)
                .map(CommandStatus::parse);
            match status {
                Some(
                    CommandStatus::Completed | CommandStatus::Failed | CommandStatus::Cancelled,
                ) => {
                    if let Some(Value::String(text)) = fields.remove(REPLY_FIELD) {
                        s.update_text(text);
                    }
                    s.finish_with(reply);
                }
                Some(CommandStatus::Running | CommandStatus::Queued) => {
                    if status == Some(CommandStatus::Running) {
                        s.start();
                    }
                    if let Some(Value::String(text)) = fields.remove(REPLY_FIELD) {
                        s.update_text(text);
                    }
                    s.merge_fields(without_envelope(fields));
                }
                // The module no longer knows the command (restarted, or it
                // forgot it): it will never finish.
                _ => s.fail(Failure::new(
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
        });
    }

    /// Fails the job (module crashed or stopped).
    pub(super) fn fail(&self, failure: Failure) {
        self.change(|s| s.fail(failure));
    }
}

impl JobState {
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

    fn fail(&mut self, failure: Failure) {
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

/// Counts a watcher out when dropped.
pub struct WatchGuard(Arc<Job>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0
            .watchers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
