//! Progress pushes (docs/protocol.md §4.2): what the module's long commands
//! publish, waiting to be pushed to the server.
//!
//! One [`ProgressHub`] per module gathers the pending updates of all its
//! commands, and one task pushes them: everything pending, of every command,
//! in one request, one request at a time. Several chats decoded together thus
//! cost one push per step, not one per chat. What arrives while a push is in
//! flight is merged (deltas joined, fields merged) into the next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use modhost_protocol::{ProgressBatch, ProgressUpdate};
use parking_lot::{Condvar, Mutex};

use crate::command::JsonMap;

/// The module's pending progress, and the wake-up of the task that pushes it.
#[derive(Debug, Default)]
pub(crate) struct ProgressHub {
    // parking_lot: a merge or a take, never across an await.
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Pending {
    updates: ProgressBatch,
    /// Commands whose final status is pending or in flight, to be told once
    /// it has left.
    finals: HashMap<String, Arc<ProgressSink>>,
    /// No more updates will come; the pusher ends once all are sent.
    closed: bool,
}

impl ProgressHub {
    /// A sink for command `id`'s progress.
    pub(crate) fn sink(self: &Arc<Self>, id: &str) -> Arc<ProgressSink> {
        Arc::new(ProgressSink {
            id: id.to_owned(),
            hub: Arc::clone(self),
            delivered: Mutex::new(false),
            delivered_now: Condvar::new(),
        })
    }

    fn change(&self, id: &str, f: impl FnOnce(&mut ProgressUpdate)) {
        let mut pending = self.pending.lock();
        f(pending.updates.entry(id.to_owned()).or_default());
        drop(pending);
        self.wake.notify_one();
    }

    /// Waits for something to push, then takes all of it; `None` once closed
    /// and empty.
    pub(crate) async fn next(&self) -> Option<ProgressBatch> {
        loop {
            {
                let mut pending = self.pending.lock();
                if !pending.updates.is_empty() {
                    return Some(std::mem::take(&mut pending.updates));
                }
                if pending.closed {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Tells the commands whose final status was in `sent` that it has left
    /// (pushed, or given up on).
    pub(crate) fn sent(&self, sent: &ProgressBatch) {
        let delivered: Vec<Arc<ProgressSink>> = {
            let mut pending = self.pending.lock();
            sent.iter()
                .filter(|(_, update)| update.done.is_some())
                .filter_map(|(id, _)| pending.finals.remove(id))
                .collect()
        };
        for sink in delivered {
            sink.mark_delivered();
        }
    }

    /// No more updates: the pusher ends once what is pending is sent.
    pub(crate) fn close(&self) {
        self.pending.lock().closed = true;
        self.wake.notify_one();
    }

    /// What is pending, taken without pushing (tests).
    #[cfg(test)]
    pub(crate) fn take(&self) -> ProgressBatch {
        std::mem::take(&mut self.pending.lock().updates)
    }
}

/// One command's way into the hub.
#[derive(Debug)]
pub(crate) struct ProgressSink {
    id: String,
    hub: Arc<ProgressHub>,
    /// Set once the final status has been pushed (or given up on).
    delivered: Mutex<bool>,
    delivered_now: Condvar,
}

impl ProgressSink {
    /// Changes the command's pending update.
    pub(crate) fn change(&self, f: impl FnOnce(&mut ProgressUpdate)) {
        self.hub.change(&self.id, f);
    }

    /// Queues word that the command left the queue and runs.
    pub(crate) fn started(&self) {
        self.change(|p| p.started = true);
    }

    /// Queues the final status reply; it is the command's last update.
    pub(crate) fn finish(self: &Arc<Self>, done: JsonMap) {
        self.hub
            .pending
            .lock()
            .finals
            .insert(self.id.clone(), Arc::clone(self));
        self.change(|p| p.done = Some(done));
    }

    fn mark_delivered(&self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn updates_of_several_commands_go_out_together_and_finals_are_told() {
        let hub = Arc::new(ProgressHub::default());
        let (a, b) = (hub.sink("a"), hub.sink("b"));
        a.change(|p| p.delta.push_str("The"));
        b.change(|p| p.delta.push_str("A planet"));
        a.change(|p| p.delta.push_str(" sun"));
        b.finish(JsonMap::new());
        let batch = hub.next().await.unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch["a"].delta, "The sun");
        assert!(batch["b"].done.is_some());
        assert!(!b.wait_delivered(Duration::ZERO));
        hub.sent(&batch);
        assert!(b.wait_delivered(Duration::ZERO));
        assert!(!a.wait_delivered(Duration::ZERO));
        hub.close();
        assert!(hub.next().await.is_none());
    }
}
