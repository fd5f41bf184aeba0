//! Jobs: the long processes the server owns.
//!
//! A command whose module answers `commandStatus: running` with a `commandId`
//! becomes a [`Job`]: who runs it, its status, the text it has produced (the
//! `reply` status field), its other status fields, timestamps, and how it
//! ended. Everything that happens to a job is an [`Event`] with an increasing
//! id, kept with the job so that a watcher that reconnects with
//! `Last-Event-ID` gets exactly what it missed (docs/protocol.md §4.4).
//!
//! Jobs learn their progress from the module: pushed by modules that speak
//! modhost's extension ([`Jobs::push`]), or observed from the
//! `get_command_status` replies the server asks for on behalf of modules that
//! don't ([`Jobs::observe`], driven by `commands`). Finished jobs are kept for a
//! retention time and up to a maximum count, oldest first out; running jobs
//! are never dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use modhost_protocol::{
    status_reply, CommandStatus, Failure, FailureKind, JsonMap, ProgressBatch, ProgressUpdate,
    REPLY_FIELD,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::queue::Origin;

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
    canceller: Option<tokio_util::sync::CancellationToken>,
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
    fn new(
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
    fn push(&self, update: ProgressUpdate) {
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
    fn observe(&self, reply: &JsonMap) {
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
    fn fail(&self, failure: Failure) {
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

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished jobs older than this are dropped.
    pub age: Duration,
    /// At most this many finished jobs are kept; the oldest go first.
    pub count: usize,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Arc<Job>>,
    /// Finished jobs, oldest first, with when they finished.
    finished: VecDeque<(String, Instant)>,
}

/// All jobs.
pub struct Jobs {
    // parking_lot: map operations only; each job has its own lock.
    inner: Mutex<Inner>,
    retention: Retention,
}

impl Jobs {
    pub fn new(retention: Retention) -> Arc<Jobs> {
        Arc::new(Jobs {
            inner: Mutex::new(Inner::default()),
            retention,
        })
    }

    /// Registers the job a module's `running` reply announced. A second
    /// announcement of a known id keeps the first job.
    pub fn start(
        &self,
        id: &str,
        origin: Origin,
        pushes: bool,
        queued_at: SystemTime,
        running: &JsonMap,
    ) -> Arc<Job> {
        let mut inner = self.inner.lock();
        Arc::clone(inner.jobs.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(Job::new(id.to_owned(), origin, pushes, queued_at, running))
        }))
    }

    /// Registers a job the server runs itself (a skill run), `running` from
    /// the start, cancelled through `canceller`.
    pub fn start_local(
        &self,
        id: &str,
        origin: Origin,
        canceller: tokio_util::sync::CancellationToken,
    ) -> Arc<Job> {
        let mut running = JsonMap::new();
        running.insert("commandId".into(), id.into());
        running.insert("commandStatus".into(), "running".into());
        let mut job = Job::new(id.to_owned(), origin, true, SystemTime::now(), &running);
        job.canceller = Some(canceller);
        let job = Arc::new(job);
        self.inner
            .lock()
            .jobs
            .insert(id.to_owned(), Arc::clone(&job));
        job
    }

    /// Ends a job the server runs itself with `result`, or fails it.
    pub fn end_local(&self, job: &Arc<Job>, result: Result<JsonMap, Failure>) {
        match result {
            Ok(done) => job.push(ProgressUpdate {
                done: Some(done),
                ..ProgressUpdate::default()
            }),
            Err(failure) => job.fail(failure),
        }
        self.note_if_finished(job);
    }

    /// The job with this id, if known and not expired.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.sweep();
        self.inner.lock().jobs.get(id).cloned()
    }

    /// Every job, oldest first, optionally only `module_id`'s (any letter
    /// case) and only those in `status`.
    pub fn list(&self, module_id: Option<&str>, status: Option<JobStatus>) -> Vec<Arc<Job>> {
        self.sweep();
        let mut jobs: Vec<Arc<Job>> = self
            .inner
            .lock()
            .jobs
            .values()
            .filter(|j| module_id.is_none_or(|m| j.origin.module_id.eq_ignore_ascii_case(m)))
            .cloned()
            .collect();
        jobs.retain(|j| status.is_none_or(|s| j.status() == s));
        jobs.sort_by_key(|j| j.created);
        jobs
    }

    /// Applies a push from `module_id` to its job `id`.
    ///
    /// # Errors
    /// [`FailureKind::UnknownCommand`] when `module_id` has no job `id`.
    pub fn push(&self, module_id: &str, id: &str, update: ProgressUpdate) -> Result<(), Failure> {
        let job = self.owned(module_id, id)?;
        job.push(update);
        self.note_if_finished(&job);
        Ok(())
    }

    /// Applies each update of a batch pushed by `module_id`, in order, over
    /// HTTP or on its progress stream (docs/protocol.md §4.2).
    ///
    /// # Errors
    /// The ids `module_id` has no job for, named in one message; the other
    /// updates are applied.
    pub fn push_batch(&self, module_id: &str, batch: ProgressBatch) -> Result<(), String> {
        let unknown: Vec<String> = batch
            .into_iter()
            .filter_map(|(id, update)| self.push(module_id, &id, update).err().map(|_| id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(format!(
            "module {module_id} has no job '{}' (the other updates were saved)",
            unknown.join("', '")
        ))
    }

    /// Applies a `get_command_status` reply of `module_id` for job `id`.
    pub fn observe(&self, module_id: &str, id: &str, reply: &JsonMap) {
        if let Ok(job) = self.owned(module_id, id) {
            job.observe(reply);
            self.note_if_finished(&job);
        }
    }

    /// Fails every unfinished job of `module_id`; returns how many.
    pub fn fail_module(&self, module_id: &str, kind: FailureKind, message: &str) -> usize {
        let jobs = self.list(Some(module_id), None);
        let mut failed = 0;
        for job in jobs.into_iter().filter(|j| !j.status().is_final()) {
            job.fail(Failure::new(kind, message));
            self.note_if_finished(&job);
            failed += 1;
        }
        failed
    }

    fn owned(&self, module_id: &str, id: &str) -> Result<Arc<Job>, Failure> {
        self.get(id)
            .filter(|j| j.origin.module_id.eq_ignore_ascii_case(module_id))
            .ok_or_else(|| {
                Failure::new(
                    FailureKind::UnknownCommand,
                    format!("module {module_id} has no job '{id}'"),
                )
            })
    }

    /// Puts a job that just finished on the retention list.
    fn note_if_finished(&self, job: &Arc<Job>) {
        if job.status().is_final() {
            let mut inner = self.inner.lock();
            if !inner.finished.iter().any(|(id, _)| id == &job.id) {
                inner.finished.push_back((job.id.clone(), Instant::now()));
            }
        }
        self.sweep();
    }

    /// Drops finished jobs past the retention age or beyond its count,
    /// oldest first. Running jobs are never on the list.
    fn sweep(&self) {
        let mut inner = self.inner.lock();
        while let Some((id, finished)) = inner.finished.front().cloned() {
            let over_count = inner.finished.len() > self.retention.count;
            if !over_count && finished.elapsed() < self.retention.age {
                break;
            }
            inner.finished.pop_front();
            inner.jobs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Value) -> JsonMap {
        value.as_object().cloned().unwrap()
    }

    fn jobs(count: usize) -> Arc<Jobs> {
        Jobs::new(Retention {
            age: Duration::from_secs(600),
            count,
        })
    }

    fn origin() -> Origin {
        Origin {
            module_id: "LlamaChat".into(),
            route: "text/chat".into(),
            command: "prompt".into(),
        }
    }

    fn running(id: &str) -> JsonMap {
        obj(json!({"success": true, "commandId": id, "commandStatus": "running"}))
    }

    fn start(jobs: &Jobs, id: &str, pushes: bool) -> Arc<Job> {
        jobs.start(id, origin(), pushes, SystemTime::now(), &running(id))
    }

    fn texts(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Delta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pushed_deltas_join_to_the_reply_and_done_ends_the_job() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        for piece in ["The", " solar", " system"] {
            jobs.push(
                "LlamaChat",
                "c1",
                ProgressUpdate {
                    delta: piece.into(),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        jobs.push(
            "llamachat",
            "c1",
            ProgressUpdate {
                fields: obj(json!({"tokens": 3})),
                done: Some(status_reply::completed(
                    "c1",
                    obj(json!({"reply": "The solar system", "stop_reason": "completed"})),
                    false,
                )),
                ..Default::default()
            },
        )
        .unwrap();
        let (events, ended) = job.events_after(0);
        assert!(ended);
        assert_eq!(texts(&events), "The solar system");
        assert_eq!(
            events.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=events.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(events.last().unwrap().kind.name(), "done");
        assert_eq!(job.status(), JobStatus::Completed);
        assert_eq!(job.status_reply()["stop_reason"], "completed");
        assert_eq!(job.view().fields["tokens"], 3);
    }

    #[test]
    fn a_running_job_answers_in_the_python_sdk_s_words() {
        let jobs = jobs(10);
        let running = obj(
            json!({"success": true, "commandId": "c1", "commandStatus": "running",
            "message": "Command is running in the background", "moduleId": "LlamaChat",
            "progressPush": true, "model": "tiny"}),
        );
        let job = jobs.start("c1", origin(), true, SystemTime::now(), &running);
        jobs.push(
            "LlamaChat",
            "c1",
            ProgressUpdate {
                delta: "Hi".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            Value::Object(job.status_reply()),
            json!({"success": true, "message": "The long running command is still in progress",
                   "commandId": "c1", "commandStatus": "running", "reply": "Hi", "model": "tiny"})
        );
        let (events, _) = job.events_after(0);
        assert_eq!(
            events[0].kind.data()["commandId"],
            "c1",
            "the first event is the running reply"
        );
    }

    #[test]
    fn a_resume_after_an_event_gets_exactly_what_follows() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        for piece in ["a", "b", "c", "d"] {
            jobs.push(
                "LlamaChat",
                "c1",
                ProgressUpdate {
                    delta: piece.into(),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let (all, _) = job.events_after(0);
        for cut in 0..all.len() as u64 {
            let (rest, _) = job.events_after(cut);
            assert_eq!(rest, all[cut as usize..].to_vec());
        }
    }

    #[test]
    fn observed_status_replies_become_deltas() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", false);
        jobs.observe(
            "LlamaChat",
            "c1",
            &obj(json!({"commandStatus": "running", "reply": "The"})),
        );
        jobs.observe(
            "LlamaChat",
            "c1",
            &obj(json!({"commandStatus": "running", "reply": "The sun"})),
        );
        jobs.observe("LlamaChat", "c1", &obj(json!({"commandStatus": "completed", "reply": "The sun.", "message": "Command has completed"})));
        let (events, ended) = job.events_after(0);
        assert!(ended);
        assert_eq!(texts(&events), "The sun.");
        assert_eq!(job.status(), JobStatus::Completed);
    }

    #[test]
    fn a_rewritten_text_keeps_the_deltas_that_came_before() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", false);
        for text in ["abc", "xy", "xyz"] {
            jobs.observe(
                "LlamaChat",
                "c1",
                &obj(json!({"commandStatus": "running", "reply": text})),
            );
        }
        let (events, _) = job.events_after(0);
        let data: Vec<Value> = events.iter().map(|e| e.kind.data()).collect();
        assert_eq!(data[1], json!({"text": "abc"}));
        assert_eq!(data[2], json!({"reply": "xy"}));
        assert_eq!(data[3], json!({"text": "z"}));
        assert_eq!(job.view().reply, "xyz");
        assert_eq!(job.events_after(3).0[0].kind.data(), json!({"text": "z"}));
    }

    #[test]
    fn a_completed_after_a_cancel_is_cancelled() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", false);
        job.cancel_requested();
        jobs.observe(
            "LlamaChat",
            "c1",
            &obj(json!({"commandStatus": "completed", "reply": "x"})),
        );
        assert_eq!(job.status(), JobStatus::Cancelled);
    }

    #[test]
    fn a_crash_fails_running_jobs_with_the_reason() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        assert_eq!(
            jobs.fail_module(
                "LlamaChat",
                FailureKind::ModuleCrashed,
                "module LlamaChat exited"
            ),
            1
        );
        let (events, ended) = job.events_after(0);
        assert!(ended);
        assert_eq!(
            events.last().unwrap().kind.data(),
            json!({"code": "module_crashed", "message": "module LlamaChat exited"})
        );
        let reply = job.status_reply();
        assert_eq!(reply["commandStatus"], "failed");
        assert_eq!(reply["errorCode"], "module_crashed");
        // Nothing more happens to a finished job.
        jobs.push(
            "LlamaChat",
            "c1",
            ProgressUpdate {
                delta: "late".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(job.events_after(0).0.len(), events.len());
    }

    #[test]
    fn a_job_being_cancelled_when_its_module_goes_is_cancelled() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        job.cancel_requested();
        jobs.fail_module(
            "LlamaChat",
            FailureKind::ModuleStopped,
            "module LlamaChat was stopped",
        );
        assert_eq!(job.status(), JobStatus::Cancelled);
        let (events, _) = job.events_after(0);
        assert_eq!(events.last().unwrap().kind.data()["code"], "cancelled");
    }

    #[test]
    fn pushes_for_another_module_s_job_are_refused() {
        let jobs = jobs(10);
        start(&jobs, "c1", true);
        let err = jobs
            .push("Echo", "c1", ProgressUpdate::default())
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::UnknownCommand);
    }

    #[test]
    fn finished_jobs_beyond_the_count_go_oldest_first_and_running_ones_stay() {
        let jobs = jobs(2);
        let running_job = start(&jobs, "running", true);
        for id in ["a", "b", "c"] {
            start(&jobs, id, true);
            jobs.push(
                "LlamaChat",
                id,
                ProgressUpdate {
                    done: Some(status_reply::completed(id, JsonMap::new(), false)),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        assert!(jobs.get("a").is_none(), "the oldest finished job went");
        assert!(jobs.get("b").is_some() && jobs.get("c").is_some());
        assert!(jobs.get("running").is_some());
        assert_eq!(running_job.status(), JobStatus::Running);
        assert_eq!(jobs.list(None, Some(JobStatus::Completed)).len(), 2);
    }

    #[test]
    fn finished_jobs_expire_after_the_retention_age() {
        let jobs = Jobs::new(Retention {
            age: Duration::from_millis(20),
            count: 100,
        });
        start(&jobs, "a", true);
        jobs.push(
            "LlamaChat",
            "a",
            ProgressUpdate {
                done: Some(status_reply::completed("a", JsonMap::new(), false)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(jobs.get("a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(jobs.get("a").is_none());
    }
}
