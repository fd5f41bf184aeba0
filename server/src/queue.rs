//! Command queues and the requests waiting on them.
//!
//! A client request becomes a [`QueueItem`] on its module's queue plus a
//! *pending* entry holding the channel its reply will come back on. A module's
//! long poll takes the oldest item whose client is still waiting and marks the
//! pending entry as in flight in that module, so that a crash of the module can
//! fail exactly its commands at once ([`Queues::fail_module`]). Queues are
//! bounded; a full one refuses at once. Wire format of CodeProject.AI Server
//! 2.9, see reference/codeproject-protocol.md §1.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

/// One command as a module receives it from `GET /v1/queue/{queue}`:
/// `{"reqid","reqtype","payload":{"command","values":[{"key","value":[..]}],"files":[..],"urlSegments":[..]}}`.
#[derive(Debug, Clone, Serialize)]
pub struct QueueItem {
    pub reqid: String,
    pub reqtype: String,
    pub payload: serde_json::Value,
}

/// How a command ended for the client waiting on it.
pub type CommandResult = Result<serde_json::Value, String>;

/// Why a command could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds its maximum number of commands.
    #[error("Request queue '{queue}' is full (#reqid {reqid})")]
    Full { queue: String, reqid: String },
}

/// Why a module's reply could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    /// No client waits for this reqid: unknown, timed out, or answered already.
    #[error("no request with reqid '{0}' is waiting for a reply")]
    NotPending(String),
}

struct Pending {
    queue: String,
    /// The module that took the command, once a poll handed it out.
    module_id: Option<String>,
    reply: oneshot::Sender<CommandResult>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<QueueItem>,
    /// Wakes one waiting poll per pushed item.
    ready: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    pending: HashMap<String, Pending>,
}

/// All module queues and pending requests.
pub struct Queues {
    // parking_lot: every critical section is a few map operations, never an
    // .await; waiting happens on the Notify outside the lock.
    inner: Mutex<Inner>,
    capacity: usize,
}

/// A queued command's reply channel; dropping it withdraws the request, so a
/// later poll skips the command.
pub struct Ticket {
    reqid: String,
    rx: oneshot::Receiver<CommandResult>,
    queues: Arc<Queues>,
}

impl Ticket {
    /// Waits up to `timeout` for the reply. `None` on timeout; the request is
    /// then withdrawn.
    pub async fn wait(mut self, timeout: Duration) -> Option<CommandResult> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(result)) => Some(result),
            // The sender went away without answering: only possible if the
            // pending entry was dropped, which we never do without answering.
            Ok(Err(_)) => Some(Err(format!(
                "the request was dropped without a reply (#reqid {})",
                self.reqid
            ))),
            Err(_) => None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queues.inner.lock().pending.remove(&self.reqid);
    }
}

impl Queues {
    /// Queues that each hold at most `capacity` commands.
    pub fn new(capacity: usize) -> Arc<Queues> {
        Arc::new(Queues {
            inner: Mutex::new(Inner::default()),
            capacity,
        })
    }

    /// Puts `item` on `queue` (created if new) and returns the ticket its reply
    /// arrives on.
    ///
    /// # Errors
    /// [`QueueError::Full`] when the queue holds `capacity` live commands.
    pub fn enqueue(self: &Arc<Self>, queue: &str, item: QueueItem) -> Result<Ticket, QueueError> {
        let (tx, rx) = oneshot::channel();
        let reqid = item.reqid.clone();
        let mut inner = self.inner.lock();
        let Inner { queues, pending } = &mut *inner;
        let q = queues.entry(queue.to_owned()).or_default();
        // Items whose client gave up still sit in the deque; they do not count.
        q.items.retain(|i| pending.contains_key(&i.reqid));
        if q.items.len() >= self.capacity {
            return Err(QueueError::Full {
                queue: queue.to_owned(),
                reqid,
            });
        }
        q.items.push_back(item);
        q.ready.notify_one();
        pending.insert(
            reqid.clone(),
            Pending {
                queue: queue.to_owned(),
                module_id: None,
                reply: tx,
            },
        );
        Ok(Ticket {
            reqid,
            rx,
            queues: Arc::clone(self),
        })
    }

    /// Takes the oldest live command of `queue` for `module_id`, waiting up to
    /// `wait` for one. Creates the queue on first poll.
    ///
    /// `poller_alive` is asked just before a command is handed out: a poll
    /// whose HTTP client has gone (a module that crashed with a poll
    /// outstanding) takes nothing and passes its wake-up on to the next
    /// waiting poll. Cancellation-safe: if the returned future is dropped no
    /// command has been taken.
    pub async fn dequeue(
        &self,
        queue: &str,
        module_id: &str,
        wait: Duration,
        poller_alive: impl Fn() -> bool,
    ) -> Option<QueueItem> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ready = {
                let mut inner = self.inner.lock();
                let Inner { queues, pending } = &mut *inner;
                let q = queues.entry(queue.to_owned()).or_default();
                q.items.retain(|i| pending.contains_key(&i.reqid));
                if !q.items.is_empty() && !poller_alive() {
                    // Hand the wake-up this poll may have consumed to another.
                    q.ready.notify_one();
                    return None;
                }
                if let Some(item) = q.items.pop_front() {
                    if let Some(p) = pending.get_mut(&item.reqid) {
                        p.module_id = Some(module_id.to_owned());
                    }
                    return Some(item);
                }
                Arc::clone(&q.ready)
            };
            // A permit stored by notify_one between the unlock and here is kept,
            // so no wake-up is lost.
            if tokio::time::timeout_at(deadline, ready.notified())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Delivers a module's reply to the waiting client.
    ///
    /// # Errors
    /// [`ReplyError::NotPending`] when nobody waits for `reqid`.
    pub fn complete(&self, reqid: &str, result: CommandResult) -> Result<(), ReplyError> {
        let pending = self.inner.lock().pending.remove(reqid);
        match pending {
            // A send error means the client left in the same instant; nothing to do.
            Some(p) => {
                let _ = p.reply.send(result);
                Ok(())
            }
            None => Err(ReplyError::NotPending(reqid.to_owned())),
        }
    }

    /// Fails every command in flight in `module_id`, and when `queue` is given,
    /// every command still waiting in it, with `message` (plus the reqid).
    /// Returns how many requests were failed.
    pub fn fail_module(&self, module_id: &str, queue: Option<&str>, message: &str) -> usize {
        let mut inner = self.inner.lock();
        let Inner { queues, pending } = &mut *inner;
        let mut doomed: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.module_id.as_deref() == Some(module_id))
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(queue) = queue {
            if let Some(q) = queues.get_mut(queue) {
                doomed.extend(q.items.drain(..).map(|i| i.reqid));
            }
        }
        let mut failed = 0;
        for reqid in doomed {
            if let Some(p) = pending.remove(&reqid) {
                debug_assert!(p.module_id.is_some() || Some(p.queue.as_str()) == queue);
                let _ = p.reply.send(Err(format!("{message} (#reqid {reqid})")));
                failed += 1;
            }
        }
        failed
    }

    /// Number of live commands waiting in `queue`.
    pub fn len(&self, queue: &str) -> usize {
        let inner = self.inner.lock();
        inner.queues.get(queue).map_or(0, |q| {
            q.items
                .iter()
                .filter(|i| inner.pending.contains_key(&i.reqid))
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(reqid: &str) -> QueueItem {
        QueueItem {
            reqid: reqid.into(),
            reqtype: "echo".into(),
            payload: json!({"command": "echo"}),
        }
    }

    #[tokio::test]
    async fn reply_reaches_the_waiting_client() {
        let queues = Queues::new(4);
        let ticket = queues.enqueue("echo_queue", item("r1")).unwrap();
        let got = queues
            .dequeue("echo_queue", "Echo", Duration::from_secs(1), || true)
            .await
            .unwrap();
        assert_eq!(got.reqid, "r1");
        queues.complete("r1", Ok(json!({"ok": 1}))).unwrap();
        assert_eq!(
            ticket.wait(Duration::from_secs(1)).await,
            Some(Ok(json!({"ok": 1})))
        );
    }

    #[tokio::test]
    async fn a_waiting_poll_is_woken_by_a_new_command() {
        let queues = Queues::new(4);
        let q2 = Arc::clone(&queues);
        let poll =
            tokio::spawn(
                async move { q2.dequeue("q", "M", Duration::from_secs(5), || true).await },
            );
        tokio::task::yield_now().await;
        let _ticket = queues.enqueue("q", item("r1")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), poll)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap().reqid, "r1");
    }

    #[tokio::test]
    async fn empty_poll_returns_none_after_the_wait() {
        let queues = Queues::new(4);
        assert!(queues
            .dequeue("q", "M", Duration::from_millis(30), || true)
            .await
            .is_none());
    }

    #[tokio::test]
    async fn full_queue_refuses_with_the_queue_name() {
        let queues = Queues::new(2);
        let _a = queues.enqueue("q", item("a")).unwrap();
        let _b = queues.enqueue("q", item("b")).unwrap();
        let err = queues.enqueue("q", item("c")).err().unwrap();
        assert_eq!(err.to_string(), "Request queue 'q' is full (#reqid c)");
    }

    #[tokio::test]
    async fn withdrawn_requests_are_skipped_and_free_their_slot() {
        let queues = Queues::new(1);
        let gone = queues.enqueue("q", item("gone")).unwrap();
        drop(gone); // the client timed out
        let _live = queues.enqueue("q", item("live")).unwrap();
        let got = queues
            .dequeue("q", "M", Duration::from_millis(50), || true)
            .await
            .unwrap();
        assert_eq!(got.reqid, "live");
        assert_eq!(
            queues.complete("gone", Ok(json!({}))),
            Err(ReplyError::NotPending("gone".into()))
        );
    }

    #[tokio::test]
    async fn a_dropped_poll_takes_nothing() {
        let queues = Queues::new(4);
        let poll = queues.dequeue("q", "M", Duration::from_secs(5), || true);
        // Dropped before the command exists: like a client that disconnected.
        drop(poll);
        let _ticket = queues.enqueue("q", item("r1")).unwrap();
        let got = queues
            .dequeue("q", "M", Duration::from_millis(50), || true)
            .await;
        assert_eq!(got.unwrap().reqid, "r1");
    }

    #[tokio::test]
    async fn a_poll_whose_client_is_gone_passes_the_command_to_a_live_one() {
        let queues = Queues::new(4);
        let (q1, q2) = (Arc::clone(&queues), Arc::clone(&queues));
        // The dead poll waits first, so it is the one a new command wakes.
        let dead =
            tokio::spawn(
                async move { q1.dequeue("q", "M", Duration::from_secs(5), || false).await },
            );
        tokio::task::yield_now().await;
        let live =
            tokio::spawn(
                async move { q2.dequeue("q", "M", Duration::from_secs(5), || true).await },
            );
        tokio::task::yield_now().await;
        let _ticket = queues.enqueue("q", item("r1")).unwrap();
        let dead = tokio::time::timeout(Duration::from_secs(2), dead)
            .await
            .unwrap()
            .unwrap();
        assert!(dead.is_none(), "a dead poll took {dead:?}");
        let live = tokio::time::timeout(Duration::from_secs(2), live)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(live.unwrap().reqid, "r1");
    }

    #[tokio::test]
    async fn fail_module_fails_in_flight_and_queued_commands_at_once() {
        let queues = Queues::new(4);
        let in_flight = queues.enqueue("q", item("a")).unwrap();
        queues
            .dequeue("q", "M", Duration::from_millis(10), || true)
            .await
            .unwrap();
        let queued = queues.enqueue("q", item("b")).unwrap();
        let other = queues.enqueue("other", item("c")).unwrap();
        assert_eq!(queues.fail_module("M", Some("q"), "module M crashed"), 2);
        let a = in_flight.wait(Duration::from_millis(10)).await.unwrap();
        assert_eq!(a, Err("module M crashed (#reqid a)".into()));
        assert!(queued
            .wait(Duration::from_millis(10))
            .await
            .unwrap()
            .is_err());
        assert!(
            other.wait(Duration::from_millis(10)).await.is_none(),
            "other queues untouched"
        );
    }

    #[tokio::test]
    async fn timeout_withdraws_the_request() {
        let queues = Queues::new(4);
        let ticket = queues.enqueue("q", item("slow")).unwrap();
        assert!(ticket.wait(Duration::from_millis(10)).await.is_none());
        assert_eq!(queues.len("q"), 0);
        assert!(queues.complete("slow", Ok(json!({}))).is_err());
    }
}
