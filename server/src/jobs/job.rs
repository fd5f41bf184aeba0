//! One job: its record under a lock (`state.rs`), the watchers woken by
//! its changes, and its views (the jobs API's and `get_command_status`'s).

use std::sync::Arc;
use std::time::SystemTime;

use modhost_protocol::{
    status_reply, CommandStatus, Failure, JsonMap, ProgressUpdate, REPLY_FIELD,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::state::JobState;
use super::{Event, JobStatus};
use crate::queue::Origin;

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
        let state = JobState::new(running);
        let count = state.event_count();
        Job {
            id,
            origin,
            pushes,
            created,
            state: Mutex::new(state),
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
            events: s.event_count(),
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
        (s.events_after(after), s.status.is_final())
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
            s.event_count()
        };
        self.version.send_replace(count);
    }

    /// Applies a module's progress push.
    pub(super) fn push(&self, update: ProgressUpdate) {
        self.change(|s| s.push(update));
    }

    /// Applies a `get_command_status` reply the module gave.
    pub(super) fn observe(&self, reply: &JsonMap) {
        self.change(|s| s.observe(reply));
    }

    /// Fails the job (module crashed or stopped).
    pub(super) fn fail(&self, failure: Failure) {
        self.change(|s| s.fail(failure));
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
