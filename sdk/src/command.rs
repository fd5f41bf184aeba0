//! Long-running commands: the [`CommandHandle`] a long process works with,
//! and the registry behind `get_command_status` and `cancel_command`.
//!
//! Protocol of CodeProject.AI Server 2.9, docs/protocol.md §1.7; the reply
//! shapes are `modhost_protocol`'s. One long command runs at a time; its id is the
//! request id of the command that started it. modhost adds the `failed`
//! status (the Python SDK reports a failure as `completed` with an error)
//! and remembers the last few finished commands, not just the latest. A
//! cancelled command ends `completed`, as in the Python SDK, so that clients
//! polling until `completed` stop; its message and the module's result
//! (e.g. LlamaChat's `stop_reason`) say it was cancelled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modhost_protocol::{cancel_reply, status_reply, CommandStatus, ProgressUpdate, REPLY_FIELD};
use parking_lot::{Condvar, Mutex};
use serde_json::{Map, Value};

/// A JSON object, the shape of every reply.
pub(crate) type JsonMap = Map<String, Value>;

/// How many finished commands keep their result for `get_command_status`.
const FINISHED_KEPT: usize = 8;

/// The long process's view of its command: its id, the cancel flag and the
/// fields it publishes to `get_command_status` while running.
///
/// On modhost, what a long process publishes is also pushed to the server as
/// it happens (docs/protocol.md §4.2), so clients streaming the job see each
/// piece at once: [`CommandHandle::append_reply`] for text, the other
/// methods for fields.
///
/// Cheap to clone; all clones share the same state.
#[derive(Clone, Debug)]
pub struct CommandHandle {
    id: Arc<str>,
    cancelled: Arc<AtomicBool>,
    // parking_lot: held only to copy or change a map, never across an await.
    published: Arc<Mutex<JsonMap>>,
    /// Where pushed progress waits for the pusher task; `None` when the
    /// server does not take pushes.
    progress: Option<Arc<ProgressSink>>,
}

/// Progress not yet pushed, and the wake-up of the task that pushes it.
/// Updates made while a push is in flight are merged into the next one.
#[derive(Debug, Default)]
pub(crate) struct ProgressSink {
    // parking_lot: a merge or a take, never across an await.
    pending: Mutex<ProgressUpdate>,
    wake: tokio::sync::Notify,
    /// Set once the final status has been pushed (or given up on).
    delivered: Mutex<bool>,
    delivered_now: parking_lot::Condvar,
}

impl ProgressSink {
    fn change(&self, f: impl FnOnce(&mut ProgressUpdate)) {
        f(&mut self.pending.lock());
        self.wake.notify_one();
    }

    /// Queues the final status reply; the pusher sends it and stops.
    pub(crate) fn finish(&self, done: JsonMap) {
        self.change(|p| p.done = Some(done));
    }

    /// Records that the final status has left (pushed, or given up on).
    pub(crate) fn mark_delivered(&self) {
        *self.delivered.lock() = true;
        self.delivered_now.notify_all();
    }

    /// Blocks until the final status has left or `timeout` passes; true if
    /// it has.
    pub(crate) fn wait_delivered(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut delivered = self.delivered.lock();
        while !*delivered {
            if self
                .delivered_now
                .wait_until(&mut delivered, deadline)
                .timed_out()
            {
                break;
            }
        }
        *delivered
    }

    /// Waits for something to push, then takes all of it.
    pub(crate) async fn next(&self) -> ProgressUpdate {
        loop {
            {
                let mut pending = self.pending.lock();
                if *pending != ProgressUpdate::default() {
                    return std::mem::take(&mut *pending);
                }
            }
            self.wake.notified().await;
        }
    }
}

/// Microseconds since the Unix epoch, now.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl CommandHandle {
    /// A fresh handle, not cancelled, with nothing published. The SDK makes
    /// one per long command; tests of a long process make their own.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            cancelled: Arc::default(),
            published: Arc::default(),
            progress: None,
        }
    }

    /// A handle whose progress is also queued on `sink` for pushing.
    pub(crate) fn pushing(id: &str, sink: Arc<ProgressSink>) -> Self {
        Self {
            progress: Some(sink),
            ..Self::new(id)
        }
    }

    /// Blocks until the command's final status has been pushed to the
    /// server, or `timeout` passes; true at once when nothing is pushed.
    /// A cancel is answered only after this, so that the server has the
    /// final status before the client hears the cancel succeeded.
    pub(crate) fn wait_pushed(&self, timeout: Duration) -> bool {
        self.progress
            .as_ref()
            .is_none_or(|sink| sink.wait_delivered(timeout))
    }

    /// The command id (the request id of the command that started it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `cancel_command` was received for this command. A long
    /// process should check it often (e.g. once per generated token) and
    /// return its partial result when it is set.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Sets the cancel flag (the SDK does this on `cancel_command` and at
    /// shutdown).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Appends `piece` to the published `reply` text (LlamaChat's growing
    /// answer), in O(piece): the way to publish generated text.
    pub fn append_reply(&self, piece: &str) {
        {
            let mut published = self.published.lock();
            match published.get_mut(REPLY_FIELD) {
                Some(Value::String(text)) => text.push_str(piece),
                _ => {
                    published.insert(REPLY_FIELD.into(), piece.into());
                }
            }
        }
        if let Some(sink) = &self.progress {
            sink.change(|p| {
                p.delta.push_str(piece);
                p.produced_at_us = Some(now_us());
            });
        }
    }

    /// Replaces all published status fields, e.g. `{"reply": <text so far>}`.
    /// They are merged into `get_command_status` replies while the command
    /// runs, and into a `failed` reply.
    pub fn publish(&self, fields: JsonMap) {
        let old = std::mem::replace(&mut *self.published.lock(), fields.clone());
        if self.progress.is_some() {
            for (key, value) in fields {
                if old.get(&key) != Some(&value) {
                    self.push_field(&key, value, old.get(&key));
                }
            }
        }
    }

    /// Sets one published status field, keeping the others. Setting `reply`
    /// to a longer text that starts with the old one pushes only what was
    /// appended; prefer [`CommandHandle::append_reply`] for text.
    pub fn update(&self, key: &str, value: Value) {
        let old = self.published.lock().insert(key.to_owned(), value.clone());
        if self.progress.is_some() && old.as_ref() != Some(&value) {
            self.push_field(key, value, old.as_ref());
        }
    }

    /// Queues a changed field for pushing: text appended to `reply` as a
    /// delta, anything else as a field.
    fn push_field(&self, key: &str, value: Value, old: Option<&Value>) {
        let Some(sink) = &self.progress else {
            return;
        };
        let old_text = match old {
            Some(Value::String(text)) => text.as_str(),
            None => "",
            Some(_) => "\u{0}not text",
        };
        sink.change(|p| match (&value, key == REPLY_FIELD) {
            (Value::String(text), true) if text.starts_with(old_text) => {
                p.delta.push_str(&text[old_text.len()..]);
                p.produced_at_us = Some(now_us());
            }
            _ => {
                p.fields.insert(key.to_owned(), value.clone());
            }
        });
    }

    /// A copy of the published fields.
    pub fn published(&self) -> JsonMap {
        self.published.lock().clone()
    }
}

/// How a finished long process ended.
#[derive(Debug, Clone, PartialEq)]
enum Finished {
    Completed(JsonMap),
    /// Returned `Ok` after its cancel flag was set.
    Cancelled(JsonMap),
    Failed(String),
}

impl Finished {
    /// How `get_command_status` reports it: a cancelled command is
    /// `completed`, as in the Python SDK.
    fn status(&self) -> CommandStatus {
        match self {
            Finished::Completed(_) | Finished::Cancelled(_) => CommandStatus::Completed,
            Finished::Failed(_) => CommandStatus::Failed,
        }
    }

    /// The final `get_command_status` reply for command `id`.
    fn status_reply(&self, id: &str, handle: &CommandHandle) -> JsonMap {
        match self {
            Finished::Completed(result) => status_reply::completed(id, result.clone(), false),
            Finished::Cancelled(result) => status_reply::completed(id, result.clone(), true),
            Finished::Failed(error) => status_reply::failed(id, handle.published(), error),
        }
    }
}

#[derive(Debug)]
struct Entry {
    handle: CommandHandle,
    /// `None` while running.
    finished: Option<Finished>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The latest command; at most one runs at a time.
    current: Option<Entry>,
    /// Earlier finished commands, newest last, at most [`FINISHED_KEPT`].
    history: VecDeque<Entry>,
}

/// What a `cancel_command` request found.
#[derive(Debug)]
pub(crate) enum CancelOutcome {
    /// The command was running; its flag is now set. The caller calls
    /// [`ModuleRunner::cancel`](crate::ModuleRunner::cancel) and replies.
    Cancelled(JsonMap, CommandHandle),
    /// Not running (finished, unknown or missing id): reply as is.
    Reply(JsonMap),
}

/// The registry of long commands.
#[derive(Debug, Default)]
pub(crate) struct LongCommands {
    // parking_lot: short critical sections from blocking threads only.
    inner: Mutex<Inner>,
    /// Signalled whenever a command finishes (for shutdown and tests).
    finished: Condvar,
}

impl LongCommands {
    /// Registers a new running command, or refuses with the running one's id.
    #[cfg(test)]
    pub(crate) fn try_start(&self, id: &str) -> Result<CommandHandle, String> {
        self.try_start_with(CommandHandle::new(id))
    }

    /// [`LongCommands::try_start`] with a handle made by the caller (one that
    /// pushes its progress).
    pub(crate) fn try_start_with(&self, handle: CommandHandle) -> Result<CommandHandle, String> {
        let mut inner = self.inner.lock();
        if let Some(cur) = &inner.current {
            if cur.finished.is_none() {
                return Err(cur.handle.id().to_owned());
            }
        }
        if let Some(done) = inner.current.take() {
            inner.history.push_back(done);
            while inner.history.len() > FINISHED_KEPT {
                inner.history.pop_front();
            }
        }
        inner.current = Some(Entry {
            handle: handle.clone(),
            finished: None,
        });
        Ok(handle)
    }

    /// Records how the command `id` ended: `Ok` is `completed`, or
    /// `cancelled` if its flag was set; `Err` is `failed`.
    pub(crate) fn finish(&self, id: &str, result: Result<JsonMap, String>) {
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.current.as_mut().filter(|e| e.handle.id() == id) {
            entry.finished = Some(match result {
                Ok(map) if entry.handle.is_cancelled() => Finished::Cancelled(map),
                Ok(map) => Finished::Completed(map),
                Err(msg) => Finished::Failed(msg),
            });
        }
        drop(inner);
        self.finished.notify_all();
    }

    /// The id of the running command, if one runs.
    pub(crate) fn running(&self) -> Option<CommandHandle> {
        let inner = self.inner.lock();
        inner
            .current
            .as_ref()
            .filter(|e| e.finished.is_none())
            .map(|e| e.handle.clone())
    }

    /// Blocks until no command runs or `timeout` passes; true if idle.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.inner.lock();
        loop {
            let running = inner.current.as_ref().is_some_and(|e| e.finished.is_none());
            if !running {
                return true;
            }
            if self.finished.wait_until(&mut inner, deadline).timed_out() {
                return inner.current.as_ref().is_none_or(|e| e.finished.is_some());
            }
        }
    }

    /// The `get_command_status` reply for `command_id` (the request value
    /// `commandId`). `extra` supplies the module's fields for a running
    /// command ([`ModuleRunner::command_status`](crate::ModuleRunner::command_status));
    /// it is called without the registry lock held.
    pub(crate) fn status_reply(
        &self,
        command_id: Option<&str>,
        extra: impl FnOnce(&str) -> JsonMap,
    ) -> JsonMap {
        let Some(id) = command_id.filter(|id| !id.is_empty()) else {
            return status_reply::unknown(None);
        };
        let found = {
            let inner = self.inner.lock();
            if inner.current.is_none() {
                return status_reply::not_started(id);
            }
            inner
                .current
                .iter()
                .chain(inner.history.iter().rev())
                .find(|e| e.handle.id() == id)
                .map(|e| (e.handle.clone(), e.finished.clone()))
        };
        let Some((handle, finished)) = found else {
            return status_reply::unknown(Some(id));
        };
        match finished {
            None => {
                let mut fields = handle.published();
                fields.extend(extra(id));
                status_reply::running(id, fields)
            }
            Some(finished) => finished.status_reply(id, &handle),
        }
    }

    /// Handles `cancel_command` for `command_id`: sets the flag of the
    /// running command with that id.
    pub(crate) fn cancel(&self, command_id: Option<&str>) -> CancelOutcome {
        let Some(id) = command_id.filter(|id| !id.is_empty()) else {
            return CancelOutcome::Reply(cancel_reply::unknown(None));
        };
        let inner = self.inner.lock();
        let found = inner
            .current
            .iter()
            .chain(inner.history.iter().rev())
            .find(|e| e.handle.id() == id);
        match found {
            Some(Entry {
                handle,
                finished: None,
            }) => {
                handle.cancel();
                CancelOutcome::Cancelled(cancel_reply::cancelled(id), handle.clone())
            }
            Some(Entry {
                finished: Some(done),
                ..
            }) => CancelOutcome::Reply(cancel_reply::already_finished(id, done.status())),
            None => CancelOutcome::Reply(cancel_reply::unknown(Some(id))),
        }
    }
}

/// Unwraps a `json!` object literal.
pub(crate) fn obj(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        // Only called with object literals in this crate.
        other => unreachable!("obj() called with a non-object: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_extra(_: &str) -> JsonMap {
        JsonMap::new()
    }

    #[test]
    fn handle_publishes_and_cancels() {
        let h = CommandHandle::new("c1");
        assert_eq!(h.id(), "c1");
        assert!(!h.is_cancelled());
        h.publish(obj(json!({"reply": "The", "tokens": 1})));
        h.update("reply", json!("The solar"));
        assert_eq!(
            h.published(),
            obj(json!({"reply": "The solar", "tokens": 1}))
        );
        h.publish(obj(json!({"reply": "x"})));
        assert_eq!(h.published(), obj(json!({"reply": "x"})));
        let clone = h.clone();
        clone.cancel();
        assert!(h.is_cancelled());
    }

    #[test]
    fn a_pushing_handle_queues_deltas_and_changed_fields() {
        let sink = Arc::new(ProgressSink::default());
        let h = CommandHandle::pushing("c1", Arc::clone(&sink));
        h.append_reply("The");
        h.append_reply(" sun");
        h.update("tokens", json!(2));
        h.update("tokens", json!(2)); // unchanged: nothing to push
        h.update("reply", json!("The sun is"));
        let update = std::mem::take(&mut *sink.pending.lock());
        assert_eq!(update.delta, "The sun is");
        assert_eq!(update.fields, obj(json!({"tokens": 2})));
        assert!(update.produced_at_us.is_some());
        assert_eq!(h.published()["reply"], "The sun is");
        // A rewritten reply is a field, not a delta.
        h.update("reply", json!("Other"));
        let update = std::mem::take(&mut *sink.pending.lock());
        assert_eq!(update.delta, "");
        assert_eq!(update.fields, obj(json!({"reply": "Other"})));
    }

    #[test]
    fn nothing_started_reports_not_started() {
        let reg = LongCommands::default();
        let r = reg.status_reply(Some("c1"), no_extra);
        assert_eq!(r["success"], false);
        assert_eq!(r["commandStatus"], "not started");
        let r = reg.status_reply(None, no_extra);
        assert_eq!(r["commandStatus"], "unknown");
        assert_eq!(r["error"], "No command ID provided");
    }

    #[test]
    fn running_reply_merges_published_and_module_fields() {
        let reg = LongCommands::default();
        let h = reg.try_start("c1").expect("starts");
        h.update("reply", json!("The"));
        let r = reg.status_reply(Some("c1"), |id| {
            assert_eq!(id, "c1");
            obj(json!({"tokens": 3, "commandStatus": "bogus"}))
        });
        assert_eq!(
            Value::Object(r),
            json!({
                "success": true,
                "message": "The long running command is still in progress",
                "commandId": "c1",
                "commandStatus": "running",
                "reply": "The",
                "tokens": 3,
            })
        );
    }

    #[test]
    fn completed_result_is_cached_and_repeatable() {
        let reg = LongCommands::default();
        reg.try_start("c1").expect("starts");
        reg.finish(
            "c1",
            Ok(obj(json!({"reply": "done", "stop_reason": "completed"}))),
        );
        let want = json!({
            "success": true,
            "message": "Command has completed",
            "error": null,
            "commandId": "c1",
            "commandStatus": "completed",
            "reply": "done",
            "stop_reason": "completed",
        });
        let extra_must_not_run = |_: &str| -> JsonMap { panic!("only for running commands") };
        assert_eq!(
            Value::Object(reg.status_reply(Some("c1"), extra_must_not_run)),
            want
        );
        assert_eq!(Value::Object(reg.status_reply(Some("c1"), no_extra)), want);
    }

    #[test]
    fn cancelled_command_reports_its_partial_result() {
        let reg = LongCommands::default();
        let h = reg.try_start("c1").expect("starts");
        let CancelOutcome::Cancelled(reply, _) = reg.cancel(Some("c1")) else {
            panic!("running command should be cancellable");
        };
        assert_eq!(
            Value::Object(reply),
            json!({"success": true, "message": "The command has been cancelled",
                   "commandId": "c1", "commandStatus": "cancelled"})
        );
        assert!(h.is_cancelled());
        reg.finish("c1", Ok(obj(json!({"reply": "partial"}))));
        let r = reg.status_reply(Some("c1"), no_extra);
        assert_eq!(
            r["commandStatus"], "completed",
            "as the Python SDK reports it"
        );
        assert_eq!(r["message"], "The command was cancelled");
        assert_eq!(r["success"], true);
        assert_eq!(r["reply"], "partial");
        // Cancelling again reports the final state.
        let CancelOutcome::Reply(again) = reg.cancel(Some("c1")) else {
            panic!("finished command is not cancelled again");
        };
        assert_eq!(again["commandStatus"], "completed");
        assert_eq!(again["message"], "The command had already finished");
    }

    #[test]
    fn failed_command_reports_error_and_published_fields() {
        let reg = LongCommands::default();
        let h = reg.try_start("c1").expect("starts");
        h.update("reply", json!("half"));
        reg.finish("c1", Err("model went away".into()));
        let r = reg.status_reply(Some("c1"), no_extra);
        assert_eq!(
            Value::Object(r),
            json!({"success": false, "message": "Command has failed", "commandId": "c1",
                   "commandStatus": "failed", "error": "model went away", "reply": "half"})
        );
    }

    #[test]
    fn second_long_command_is_refused_while_one_runs() {
        let reg = LongCommands::default();
        reg.try_start("c1").expect("starts");
        assert_eq!(reg.try_start("c2").unwrap_err(), "c1");
        assert_eq!(
            reg.running().map(|h| h.id().to_owned()).as_deref(),
            Some("c1")
        );
        reg.finish("c1", Ok(JsonMap::new()));
        assert!(reg.running().is_none());
        reg.try_start("c2")
            .expect("starts after the first finished");
        // The earlier result is still available.
        assert_eq!(
            reg.status_reply(Some("c1"), no_extra)["commandStatus"],
            "completed"
        );
        assert_eq!(
            reg.status_reply(Some("c2"), no_extra)["commandStatus"],
            "running"
        );
    }

    #[test]
    fn unknown_ids_are_reported() {
        let reg = LongCommands::default();
        reg.try_start("c1").expect("starts");
        let r = reg.status_reply(Some("nope"), no_extra);
        assert_eq!(r["success"], false);
        assert_eq!(r["commandStatus"], "unknown");
        let CancelOutcome::Reply(r) = reg.cancel(Some("nope")) else {
            panic!("unknown id must not cancel");
        };
        assert_eq!(r["success"], false);
        assert_eq!(r["error"], "Unknown command ID 'nope'");
        let CancelOutcome::Reply(r) = reg.cancel(None) else {
            panic!("missing id must not cancel");
        };
        assert_eq!(r["error"], "No command ID provided");
        assert!(!reg.running().expect("still running").is_cancelled());
    }

    #[test]
    fn history_is_bounded() {
        let reg = LongCommands::default();
        for i in 0..(FINISHED_KEPT + 2) {
            let id = format!("c{i}");
            reg.try_start(&id).expect("starts");
            reg.finish(&id, Ok(JsonMap::new()));
        }
        assert_eq!(
            reg.status_reply(Some("c0"), no_extra)["commandStatus"],
            "unknown"
        );
        assert_eq!(
            reg.status_reply(Some("c1"), no_extra)["commandStatus"],
            "completed"
        );
    }

    #[test]
    fn wait_idle_returns_when_the_command_finishes() {
        let reg = Arc::new(LongCommands::default());
        assert!(reg.wait_idle(Duration::ZERO));
        reg.try_start("c1").expect("starts");
        assert!(!reg.wait_idle(Duration::from_millis(1)));
        let finisher = {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || reg.finish("c1", Ok(JsonMap::new())))
        };
        assert!(reg.wait_idle(Duration::from_secs(30)));
        finisher.join().expect("finisher thread");
    }
}
