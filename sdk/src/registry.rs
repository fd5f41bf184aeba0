//! The registry of long commands behind `get_command_status` and
//! `cancel_command`: which run, which wait for a slot, how recent ones ended.
//!
//! Protocol of CodeProject.AI Server 2.9, docs/protocol.md §1.7; the reply
//! shapes are `modhost_protocol`'s. By default one long command runs at a
//! time, as in the Python SDK; a module may declare more slots and a queue
//! ([`LongCapacity`], §4.8). A command's id is the request id of the command
//! that started it. modhost adds the `failed` status (the Python SDK reports
//! a failure as `completed` with an error) and remembers the last few
//! finished commands, not just the latest. A cancelled command ends
//! `completed`, as in the Python SDK, so that clients polling until
//! `completed` stop; its message and the module's result (e.g. LlamaChat's
//! `stop_reason`) say it was cancelled.

use std::collections::VecDeque;
use std::time::Duration;

use modhost_protocol::{cancel_reply, status_reply, CommandStatus};
use parking_lot::{Condvar, Mutex};

use crate::command::{CommandHandle, JsonMap};

/// How many finished commands keep their result for `get_command_status`.
const FINISHED_KEPT: usize = 16;

/// How a finished long process ended.
#[derive(Debug, Clone, PartialEq)]
enum Finished {
    Completed(JsonMap),
    /// Returned `Ok` after its cancel flag was set, or was cancelled while
    /// it waited for a slot (with an empty result).
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

/// How many long commands a module runs at once, and how many more may
/// wait for a slot, in order of arrival, before a new one is refused with
/// `errorCode: "queue_full"` (docs/protocol.md §4.8). The default is the
/// Python SDK's: one at a time, none waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongCapacity {
    /// Long commands running at once; at least 1.
    pub slots: usize,
    /// Long commands that may wait for a slot (`commandStatus: queued`).
    pub queue: usize,
}

impl Default for LongCapacity {
    fn default() -> Self {
        Self { slots: 1, queue: 0 }
    }
}

/// Where a command is in its life.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for a slot.
    Queued,
    Running,
    Finished(Finished),
}

#[derive(Debug)]
struct Entry {
    handle: CommandHandle,
    phase: Phase,
    /// It was queued when admitted (so its start is news to the server).
    was_queued: bool,
}

#[derive(Debug, Default)]
struct Inner {
    capacity: LongCapacity,
    /// Running and queued commands, oldest first.
    live: Vec<Entry>,
    /// Finished commands, newest last, at most [`FINISHED_KEPT`].
    history: VecDeque<Entry>,
}

impl Inner {
    fn running(&self) -> usize {
        self.live
            .iter()
            .filter(|e| e.phase == Phase::Running)
            .count()
    }

    fn find(&self, id: &str) -> Option<&Entry> {
        self.live
            .iter()
            .chain(self.history.iter().rev())
            .find(|e| e.handle.id() == id)
    }

    /// Moves `id` from the live commands to the history as `finished`, then
    /// starts queued commands while slots are free.
    fn retire(&mut self, id: &str, finished: Finished) {
        let Some(at) = self.live.iter().position(|e| e.handle.id() == id) else {
            return;
        };
        let mut entry = self.live.remove(at);
        entry.phase = Phase::Finished(finished);
        self.history.push_back(entry);
        while self.history.len() > FINISHED_KEPT {
            self.history.pop_front();
        }
        let free = self.capacity.slots.saturating_sub(self.running());
        for entry in self
            .live
            .iter_mut()
            .filter(|e| e.phase == Phase::Queued)
            .take(free)
        {
            entry.phase = Phase::Running;
        }
    }
}

/// Why a long command was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The oldest running command, for the Python SDK's reply shape.
    pub running: String,
    /// The message for the client.
    pub message: String,
}

/// How a long command was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// A slot was free: it runs at once.
    Running,
    /// It waits for a slot, behind this many others.
    Queued { ahead: usize },
}

/// What a long command's thread learns when it may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It had a slot from the start.
    Ran,
    /// It waited in the queue and now has a slot.
    AfterWaiting,
    /// It was cancelled (or the module stopped) while it waited: it must
    /// not run; it is already recorded as finished.
    CancelledWhileQueued,
}

/// What a `cancel_command` request found.
#[derive(Debug)]
pub(crate) enum CancelOutcome {
    /// The command was running; its flag is now set. The caller calls
    /// [`ModuleRunner::cancel`](crate::ModuleRunner::cancel), waits for it
    /// and replies.
    Cancelled(JsonMap, CommandHandle),
    /// Not running (finished, unknown or missing id; or queued, and now
    /// finished as cancelled without running): reply as is.
    Reply(JsonMap),
}

/// The registry of long commands: which run, which wait for a slot, and
/// how recent ones ended.
#[derive(Debug, Default)]
pub(crate) struct LongCommands {
    // parking_lot: short critical sections from blocking threads only.
    inner: Mutex<Inner>,
    /// Signalled whenever a command finishes or gets a slot.
    changed: Condvar,
}

impl LongCommands {
    /// A registry admitting commands up to `capacity`.
    pub(crate) fn with_capacity(capacity: LongCapacity) -> Self {
        let registry = Self::default();
        registry.inner.lock().capacity = LongCapacity {
            slots: capacity.slots.max(1),
            queue: capacity.queue,
        };
        registry
    }

    /// Registers a new command with a handle of that id, or refuses.
    #[cfg(test)]
    pub(crate) fn try_start(&self, id: &str) -> Result<CommandHandle, Refused> {
        let handle = CommandHandle::new(id);
        self.try_start_with(handle.clone()).map(|_| handle)
    }

    /// Registers `handle`'s command: running when a slot is free, else
    /// queued when the queue has room, else refused.
    pub(crate) fn try_start_with(&self, handle: CommandHandle) -> Result<Admitted, Refused> {
        let mut inner = self.inner.lock();
        let running = inner.running();
        let queued = inner.live.len() - running;
        let LongCapacity { slots, queue } = inner.capacity;
        let admitted = if running < slots && queued == 0 {
            Admitted::Running
        } else if queued < queue {
            Admitted::Queued { ahead: queued }
        } else {
            let oldest = inner.live.first().map(|e| e.handle.id().to_owned());
            return Err(Refused {
                running: oldest.unwrap_or_default(),
                message: if slots == 1 && queue == 0 {
                    // The Python SDK's words, which its clients know.
                    "A long running command is already in progress".to_owned()
                } else {
                    format!(
                        "the module is busy: all {slots} slots are in use and {queued} commands wait for one (at most {queue}); try again later"
                    )
                },
            });
        };
        let was_queued = admitted != Admitted::Running;
        inner.live.push(Entry {
            handle,
            phase: if was_queued {
                Phase::Queued
            } else {
                Phase::Running
            },
            was_queued,
        });
        Ok(admitted)
    }

    /// Blocks the thread of command `id` until it has a slot, or until it
    /// was cancelled while it waited.
    pub(crate) fn wait_turn(&self, id: &str) -> Turn {
        let mut inner = self.inner.lock();
        loop {
            match inner.live.iter().find(|e| e.handle.id() == id) {
                Some(Entry {
                    phase: Phase::Running,
                    was_queued,
                    ..
                }) => {
                    return if *was_queued {
                        Turn::AfterWaiting
                    } else {
                        Turn::Ran
                    }
                }
                Some(_) => self.changed.wait(&mut inner),
                None => return Turn::CancelledWhileQueued,
            }
        }
    }

    /// Records how the command `id` ended: `Ok` is `completed`, or
    /// `cancelled` if its flag was set; `Err` is `failed`. Its slot goes to
    /// the oldest queued command.
    pub(crate) fn finish(&self, id: &str, result: Result<JsonMap, String>) {
        let mut inner = self.inner.lock();
        let cancelled = inner
            .live
            .iter()
            .find(|e| e.handle.id() == id)
            .is_some_and(|e| e.handle.is_cancelled());
        let finished = match result {
            Ok(map) if cancelled => Finished::Cancelled(map),
            Ok(map) => Finished::Completed(map),
            Err(msg) => Finished::Failed(msg),
        };
        inner.retire(id, finished);
        drop(inner);
        self.changed.notify_all();
    }

    /// The commands running or waiting, oldest first.
    #[cfg(test)]
    pub(crate) fn live(&self) -> Vec<CommandHandle> {
        let inner = self.inner.lock();
        inner.live.iter().map(|e| e.handle.clone()).collect()
    }

    /// Slots, running commands and queued commands, for `statusData`.
    pub(crate) fn load(&self) -> (usize, usize, usize) {
        let inner = self.inner.lock();
        let running = inner.running();
        (inner.capacity.slots, running, inner.live.len() - running)
    }

    /// Blocks until command `id` is no longer live, or `timeout` passes;
    /// true if it has finished (or was never live).
    pub(crate) fn wait_finished(&self, id: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| {
            inner.live.iter().all(|e| e.handle.id() != id)
        })
    }

    /// Blocks until no command runs or waits, or `timeout` passes; true if
    /// idle.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |inner| inner.live.is_empty())
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Inner) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut inner = self.inner.lock();
        while !done(&inner) {
            if self.changed.wait_until(&mut inner, deadline).timed_out() {
                return done(&inner);
            }
        }
        true
    }

    /// The `get_command_status` reply for `command_id` (the request value
    /// `commandId`). `extra` supplies the module's fields for a running
    /// command ([`ModuleRunner::command_status`](crate::ModuleRunner::command_status));
    /// it is called without the registry lock held. A queued command says
    /// `queued`, with its `queuePosition` (1 = next).
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
            if inner.live.is_empty() && inner.history.is_empty() {
                return status_reply::not_started(id);
            }
            let position = inner
                .live
                .iter()
                .filter(|e| e.phase == Phase::Queued)
                .position(|e| e.handle.id() == id);
            inner
                .find(id)
                .map(|e| (e.handle.clone(), e.phase.clone(), position))
        };
        let Some((handle, phase, position)) = found else {
            return status_reply::unknown(Some(id));
        };
        match phase {
            Phase::Running => {
                let mut fields = handle.published();
                fields.extend(extra(id));
                status_reply::running(id, fields)
            }
            Phase::Queued => {
                let mut fields = handle.published();
                fields.insert("queuePosition".into(), (position.unwrap_or(0) + 1).into());
                status_reply::running_as(id, fields, CommandStatus::Queued)
            }
            Phase::Finished(finished) => finished.status_reply(id, &handle),
        }
    }

    /// Handles `cancel_command` for `command_id`: sets the flag of the
    /// running command with that id; a queued one is finished as cancelled
    /// at once, without running.
    pub(crate) fn cancel(&self, command_id: Option<&str>) -> CancelOutcome {
        let Some(id) = command_id.filter(|id| !id.is_empty()) else {
            return CancelOutcome::Reply(cancel_reply::unknown(None));
        };
        let mut inner = self.inner.lock();
        let outcome = match inner.find(id) {
            Some(Entry {
                handle,
                phase: Phase::Running,
                ..
            }) => {
                handle.cancel();
                return CancelOutcome::Cancelled(cancel_reply::cancelled(id), handle.clone());
            }
            Some(Entry {
                handle,
                phase: Phase::Queued,
                ..
            }) => {
                handle.cancel();
                None
            }
            Some(Entry {
                phase: Phase::Finished(done),
                ..
            }) => Some(cancel_reply::already_finished(id, done.status())),
            None => Some(cancel_reply::unknown(Some(id))),
        };
        if let Some(reply) = outcome {
            return CancelOutcome::Reply(reply);
        }
        inner.retire(id, Finished::Cancelled(JsonMap::new()));
        drop(inner);
        self.changed.notify_all();
        CancelOutcome::Reply(cancel_reply::cancelled(id))
    }

    /// Cancels every live command (at shutdown): running ones get their flag
    /// set and are returned, for the module's cancel hook; queued ones end
    /// cancelled without running.
    pub(crate) fn cancel_all(&self) -> Vec<CommandHandle> {
        let mut inner = self.inner.lock();
        let queued: Vec<String> = inner
            .live
            .iter()
            .filter(|e| e.phase == Phase::Queued)
            .map(|e| e.handle.id().to_owned())
            .collect();
        for id in &queued {
            if let Some(e) = inner.live.iter().find(|e| e.handle.id() == id) {
                e.handle.cancel();
            }
            inner.retire(id, Finished::Cancelled(JsonMap::new()));
        }
        let running: Vec<CommandHandle> = inner.live.iter().map(|e| e.handle.clone()).collect();
        for handle in &running {
            handle.cancel();
        }
        drop(inner);
        self.changed.notify_all();
        running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn obj(value: Value) -> JsonMap {
        crate::command::obj(value)
    }

    fn no_extra(_: &str) -> JsonMap {
        JsonMap::new()
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
        let refused = reg.try_start("c2").unwrap_err();
        assert_eq!(refused.running, "c1");
        assert_eq!(
            refused.message,
            "A long running command is already in progress"
        );
        assert_eq!(reg.live().len(), 1);
        reg.finish("c1", Ok(JsonMap::new()));
        assert!(reg.live().is_empty());
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
    fn commands_beyond_the_slots_queue_in_order_and_beyond_the_queue_are_refused() {
        let reg = Arc::new(LongCommands::with_capacity(LongCapacity {
            slots: 2,
            queue: 2,
        }));
        let admit = |id: &str| reg.try_start_with(CommandHandle::new(id));
        assert_eq!(admit("a"), Ok(Admitted::Running));
        assert_eq!(admit("b"), Ok(Admitted::Running));
        assert_eq!(admit("c"), Ok(Admitted::Queued { ahead: 0 }));
        assert_eq!(admit("d"), Ok(Admitted::Queued { ahead: 1 }));
        let refused = admit("e").unwrap_err();
        assert!(
            refused
                .message
                .contains("all 2 slots are in use and 2 commands wait"),
            "{}",
            refused.message
        );
        assert_eq!(reg.load(), (2, 2, 2));
        let d = reg.status_reply(Some("d"), no_extra);
        assert_eq!(d["commandStatus"], "queued");
        assert_eq!(d["queuePosition"], 2);
        assert_eq!(d["success"], true);

        // c waits for a slot; a's end gives it one, and d stays queued.
        let waiter = {
            let reg = Arc::clone(&reg);
            std::thread::spawn(move || reg.wait_turn("c"))
        };
        assert_eq!(reg.wait_turn("a"), Turn::Ran);
        reg.finish("a", Ok(JsonMap::new()));
        assert_eq!(waiter.join().unwrap(), Turn::AfterWaiting);
        assert_eq!(reg.load(), (2, 2, 1));
        assert_eq!(reg.status_reply(Some("d"), no_extra)["queuePosition"], 1);

        // A queued command cancelled ends at once without running.
        let CancelOutcome::Reply(r) = reg.cancel(Some("d")) else {
            panic!("a queued command needs no hook");
        };
        assert_eq!(r["commandStatus"], "cancelled");
        assert_eq!(reg.wait_turn("d"), Turn::CancelledWhileQueued);
        let d = reg.status_reply(Some("d"), no_extra);
        assert_eq!(d["commandStatus"], "completed");
        assert_eq!(d["message"], "The command was cancelled");
        assert_eq!(reg.load(), (2, 2, 0));
        assert!(reg.wait_finished("d", Duration::ZERO));
        assert!(!reg.wait_finished("b", Duration::from_millis(1)));
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
        assert!(!reg.live()[0].is_cancelled());
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
            reg.status_reply(Some("c1"), no_extra)["commandStatus"],
            "unknown"
        );
        assert_eq!(
            reg.status_reply(Some("c2"), no_extra)["commandStatus"],
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
