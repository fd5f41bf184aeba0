//! Command queues and the requests waiting on them.
//!
//! A client request becomes a [`QueueItem`] on its module's queue plus a
//! *pending* entry holding the channel its reply will come back on. A module's
//! long poll takes the oldest item whose client is still waiting and marks the
//! pending entry as in flight in that module, so that a crash of the module can
//! fail exactly its commands at once ([`Queues::fail_module`]).
//!
//! Each queue has two lanes: the FIFO of commands, and a short *control lane*
//! for `get_command_status` and `cancel_command`, which a poll takes first so
//! that following or stopping a long process never waits behind queued
//! prompts. Queues are bounded by count and by bytes; a full one refuses at
//! once, in O(1): live counts are kept up to date as requests are queued,
//! taken and withdrawn, never recounted. Wire format: docs/protocol.md §1.2
//! and §1.3.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use modhost_protocol::{Failure, FailureKind, JsonMap, QueueItem};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

/// How a command ended for the client waiting on it: the module's reply
/// object, or why there is none.
pub type CommandResult = Result<JsonMap, Failure>;

/// Most commands waiting in one queue's control lane.
const CONTROL_CAPACITY: usize = 256;

/// Why a command could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds its maximum number or bytes of commands.
    #[error("Request queue '{queue}' is full (#reqid {reqid})")]
    Full { queue: String, reqid: String },
}

impl From<QueueError> for Failure {
    fn from(err: QueueError) -> Failure {
        Failure::new(FailureKind::QueueFull, err.to_string())
    }
}

/// Who sent a command, and for what: kept with the pending request so that
/// the reply can be turned into a job (see `jobs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The module the command was sent to.
    pub module_id: String,
    /// The route map's route, e.g. `text/chat` (empty for built-in commands).
    pub route: String,
    /// The command, e.g. `prompt`.
    pub command: String,
}

struct Pending {
    queue: String,
    /// The bytes it counts against its queue while queued.
    size: usize,
    /// True while it waits in the control lane rather than the FIFO.
    control: bool,
    /// The module that took the command, once a poll handed it out.
    taker: Option<String>,
    origin: Origin,
    queued_at: std::time::SystemTime,
    reply: oneshot::Sender<CommandResult>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<QueueItem>,
    control: VecDeque<QueueItem>,
    /// Items in `items` whose client still waits (the rest are tombstones,
    /// skipped at dequeue).
    live: usize,
    /// Bytes of the live items in `items`.
    bytes: usize,
    /// Wakes one waiting poll per pushed item.
    ready: Arc<Notify>,
}

impl Queue {
    /// Drops tombstones once they outnumber the live items, so that a queue
    /// nobody polls does not grow with withdrawn requests; amortised O(1).
    fn compact(&mut self, pending: &HashMap<String, Pending>) {
        if self.items.len() > 2 * self.live + 64 {
            self.items.retain(|i| pending.contains_key(&i.reqid));
        }
        if self.control.len() > CONTROL_CAPACITY {
            self.control.retain(|i| pending.contains_key(&i.reqid));
        }
    }
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    pending: HashMap<String, Pending>,
}

impl Inner {
    /// Removes `reqid`'s pending entry, and if it was still queued, its
    /// count and bytes from its queue.
    fn remove(&mut self, reqid: &str) -> Option<Pending> {
        let p = self.pending.remove(reqid)?;
        if p.taker.is_none() && !p.control {
            if let Some(q) = self.queues.get_mut(&p.queue) {
                q.live -= 1;
                q.bytes -= p.size;
            }
        }
        Some(p)
    }
}

/// All module queues and pending requests.
pub struct Queues {
    // parking_lot: every critical section is a few map operations, never an
    // .await; waiting happens on the Notify outside the lock.
    inner: Mutex<Inner>,
    /// Most live commands in one queue.
    capacity: usize,
    /// Most bytes of values and files in one queue.
    max_bytes: usize,
}

/// A queued command's reply channel; dropping it withdraws the request, so a
/// later poll skips the command.
pub struct Ticket {
    reqid: String,
    rx: oneshot::Receiver<CommandResult>,
    queues: Arc<Queues>,
}

impl Ticket {
    /// Waits up to `timeout` for the reply. On timeout the request is
    /// withdrawn and the failure says so.
    pub async fn wait(mut self, timeout: Duration) -> CommandResult {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(result)) => result,
            // The sender went away without answering: only possible if the
            // pending entry was dropped, which we never do without answering.
            Ok(Err(_)) => Err(Failure::new(
                FailureKind::InvalidReply,
                format!(
                    "the request was dropped without a reply (#reqid {})",
                    self.reqid
                ),
            )),
            Err(_) => Err(Failure::new(
                FailureKind::Timeout,
                format!("The request timed out (#reqid {})", self.reqid),
            )),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queues.inner.lock().remove(&self.reqid);
    }
}

/// A reply channel taken out of the pending table: the module's answer goes
/// into [`Delivery::send`].
pub struct Delivery {
    pub origin: Origin,
    /// When the command was queued.
    pub queued_at: std::time::SystemTime,
    reply: oneshot::Sender<CommandResult>,
}

impl Delivery {
    /// Hands the result to the waiting client. A client that left in the
    /// same instant is not an error.
    pub fn send(self, result: CommandResult) {
        let _ = self.reply.send(result);
    }
}

impl Queues {
    /// Queues that each hold at most `capacity` commands and `max_bytes`
    /// bytes of values and files.
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Queues> {
        Arc::new(Queues {
            inner: Mutex::new(Inner::default()),
            capacity,
            max_bytes,
        })
    }

    /// Puts `item` on `queue` (created if new) and returns the ticket its reply
    /// arrives on.
    ///
    /// # Errors
    /// [`QueueError::Full`] when the queue holds `capacity` live commands, or
    /// the item would take it over `max_bytes` (an item alone over the
    /// byte limit is still taken by an empty queue, so nothing is refused
    /// that `max_body_bytes` let in).
    pub fn enqueue(
        self: &Arc<Self>,
        queue: &str,
        item: QueueItem,
        origin: Origin,
    ) -> Result<Ticket, QueueError> {
        self.push(queue, item, origin, false)
    }

    /// Puts a `get_command_status` or `cancel_command` on `queue`'s control
    /// lane, which polls take before the FIFO.
    ///
    /// # Errors
    /// [`QueueError::Full`] when the control lane is full.
    pub fn enqueue_control(
        self: &Arc<Self>,
        queue: &str,
        item: QueueItem,
        origin: Origin,
    ) -> Result<Ticket, QueueError> {
        self.push(queue, item, origin, true)
    }

    fn push(
        self: &Arc<Self>,
        queue: &str,
        item: QueueItem,
        origin: Origin,
        control: bool,
    ) -> Result<Ticket, QueueError> {
        let (tx, rx) = oneshot::channel();
        let reqid = item.reqid.clone();
        let size = item.size();
        let mut inner = self.inner.lock();
        let Inner { queues, pending } = &mut *inner;
        let q = queues.entry(queue.to_owned()).or_default();
        q.compact(pending);
        let full = if control {
            if q.control.len() >= CONTROL_CAPACITY {
                // Withdrawn items count until they are dropped: drop them first.
                q.control.retain(|i| pending.contains_key(&i.reqid));
            }
            q.control.len() >= CONTROL_CAPACITY
        } else {
            q.live >= self.capacity || (q.live > 0 && q.bytes + size > self.max_bytes)
        };
        if full {
            return Err(QueueError::Full {
                queue: queue.to_owned(),
                reqid,
            });
        }
        if control {
            q.control.push_back(item);
        } else {
            q.items.push_back(item);
            q.live += 1;
            q.bytes += size;
        }
        q.ready.notify_one();
        pending.insert(
            reqid.clone(),
            Pending {
                queue: queue.to_owned(),
                size,
                control,
                taker: None,
                origin,
                queued_at: std::time::SystemTime::now(),
                reply: tx,
            },
        );
        Ok(Ticket {
            reqid,
            rx,
            queues: Arc::clone(self),
        })
    }

    /// Takes the oldest live command of `queue` for `taker`, control lane
    /// first, waiting up to `wait` for one. Creates the queue on first poll.
    ///
    /// `poller_alive` is asked just before a command is handed out: a poll
    /// whose HTTP client has gone (a module that crashed with a poll
    /// outstanding) takes nothing and passes its wake-up on to the next
    /// waiting poll. Cancellation-safe: if the returned future is dropped no
    /// command has been taken.
    pub async fn dequeue(
        &self,
        queue: &str,
        taker: &str,
        wait: Duration,
        poller_alive: impl Fn() -> bool,
    ) -> Option<QueueItem> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ready = {
                let mut inner = self.inner.lock();
                let Inner { queues, pending } = &mut *inner;
                let q = queues.entry(queue.to_owned()).or_default();
                while q
                    .control
                    .front()
                    .is_some_and(|i| !pending.contains_key(&i.reqid))
                {
                    q.control.pop_front();
                }
                while q
                    .items
                    .front()
                    .is_some_and(|i| !pending.contains_key(&i.reqid))
                {
                    q.items.pop_front();
                }
                let has_work = !q.control.is_empty() || !q.items.is_empty();
                if has_work && !poller_alive() {
                    // Hand the wake-up this poll may have consumed to another.
                    q.ready.notify_one();
                    return None;
                }
                let item = q.control.pop_front().or_else(|| q.items.pop_front());
                if let Some(item) = item {
                    if let Some(p) = pending.get_mut(&item.reqid) {
                        if !p.control {
                            q.live -= 1;
                            q.bytes -= p.size;
                        }
                        p.taker = Some(taker.to_owned());
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

    /// Takes the reply channel of `reqid` out of the pending table; `None`
    /// when nobody waits for it (unknown, timed out, or answered already).
    pub fn take(&self, reqid: &str) -> Option<Delivery> {
        let p = self.inner.lock().remove(reqid)?;
        Some(Delivery {
            origin: p.origin,
            queued_at: p.queued_at,
            reply: p.reply,
        })
    }

    /// Who took `reqid`, while it is pending.
    pub fn taker(&self, reqid: &str) -> Option<String> {
        self.inner
            .lock()
            .pending
            .get(reqid)
            .and_then(|p| p.taker.clone())
    }

    /// Fails every command in flight in `module_id`, and when `queue` is given,
    /// every command still waiting in it, with a failure of `kind` whose
    /// message is `message` plus the reqid. Returns how many requests were
    /// failed.
    pub fn fail_module(
        &self,
        module_id: &str,
        queue: Option<&str>,
        kind: FailureKind,
        message: &str,
    ) -> usize {
        let mut inner = self.inner.lock();
        let mut doomed: Vec<String> = inner
            .pending
            .iter()
            .filter(|(_, p)| p.taker.as_deref() == Some(module_id))
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(queue) = queue {
            if let Some(q) = inner.queues.get_mut(queue) {
                doomed.extend(q.items.drain(..).map(|i| i.reqid));
                doomed.extend(q.control.drain(..).map(|i| i.reqid));
            }
        }
        let mut failed = 0;
        for reqid in doomed {
            if let Some(p) = inner.remove(&reqid) {
                let _ = p.reply.send(Err(Failure::new(
                    kind,
                    format!("{message} (#reqid {reqid})"),
                )));
                failed += 1;
            }
        }
        failed
    }

    /// Number of live commands waiting in `queue` (both lanes).
    pub fn len(&self, queue: &str) -> usize {
        let inner = self.inner.lock();
        inner.queues.get(queue).map_or(0, |q| {
            q.live
                + q.control
                    .iter()
                    .filter(|i| inner.pending.contains_key(&i.reqid))
                    .count()
        })
    }

    /// Commands waiting for `module_id`: live in `queue`, or taken by it and
    /// not yet answered.
    pub fn waiting_for(&self, module_id: &str, queue: &str) -> usize {
        let in_flight = {
            let inner = self.inner.lock();
            inner
                .pending
                .values()
                .filter(|p| p.taker.as_deref() == Some(module_id))
                .count()
        };
        in_flight + self.len(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modhost_protocol::Payload;
    use serde_json::json;

    fn item(reqid: &str) -> QueueItem {
        QueueItem::new(reqid.into(), "echo", Payload::default())
    }

    fn sized(reqid: &str, bytes: usize) -> QueueItem {
        let mut item = item(reqid);
        item.payload.values.push(modhost_protocol::KeyValue {
            key: String::new(),
            value: vec!["x".repeat(bytes)],
        });
        item
    }

    /// The module the tests' polls are from.
    const M: &str = "M";

    fn reply(value: serde_json::Value) -> CommandResult {
        Ok(value.as_object().cloned().unwrap())
    }

    #[tokio::test]
    async fn reply_reaches_the_waiting_client() {
        let queues = Queues::new(4, 1 << 20);
        let ticket = queues
            .enqueue("echo_queue", item("r1"), Origin::default())
            .unwrap();
        let got = queues
            .dequeue("echo_queue", M, Duration::from_secs(1), || true)
            .await
            .unwrap();
        assert_eq!(got.reqid, "r1");
        assert_eq!(queues.taker("r1"), Some(M.to_owned()));
        queues.take("r1").unwrap().send(reply(json!({"ok": 1})));
        assert_eq!(
            ticket.wait(Duration::from_secs(1)).await,
            reply(json!({"ok": 1}))
        );
    }

    #[tokio::test]
    async fn a_waiting_poll_is_woken_by_a_new_command() {
        let queues = Queues::new(4, 1 << 20);
        let q2 = Arc::clone(&queues);
        let poll =
            tokio::spawn(async move { q2.dequeue("q", M, Duration::from_secs(5), || true).await });
        tokio::task::yield_now().await;
        let _ticket = queues.enqueue("q", item("r1"), Origin::default()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), poll)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.unwrap().reqid, "r1");
    }

    #[tokio::test]
    async fn empty_poll_returns_none_after_the_wait() {
        let queues = Queues::new(4, 1 << 20);
        assert!(queues
            .dequeue("q", M, Duration::from_millis(30), || true)
            .await
            .is_none());
    }

    #[tokio::test]
    async fn full_queue_refuses_with_the_queue_name() {
        let queues = Queues::new(2, 1 << 20);
        let _a = queues.enqueue("q", item("a"), Origin::default()).unwrap();
        let _b = queues.enqueue("q", item("b"), Origin::default()).unwrap();
        let err = queues
            .enqueue("q", item("c"), Origin::default())
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "Request queue 'q' is full (#reqid c)");
        assert_eq!(Failure::from(err).kind, FailureKind::QueueFull);
    }

    #[tokio::test]
    async fn a_queue_is_bounded_by_bytes_too() {
        let queues = Queues::new(100, 1000);
        let _a = queues
            .enqueue("q", sized("a", 600), Origin::default())
            .unwrap();
        assert!(queues
            .enqueue("q", sized("b", 600), Origin::default())
            .is_err());
        let _c = queues
            .enqueue("q", sized("c", 300), Origin::default())
            .unwrap();
        // Taking a command frees its bytes.
        queues
            .dequeue("q", M, Duration::from_millis(10), || true)
            .await
            .unwrap();
        let _b = queues
            .enqueue("q", sized("b", 600), Origin::default())
            .unwrap();
        // An empty queue takes one item over the bound rather than refuse it
        // for ever.
        let queues = Queues::new(100, 1000);
        let _big = queues
            .enqueue("q", sized("big", 5000), Origin::default())
            .unwrap();
    }

    #[tokio::test]
    async fn withdrawn_requests_are_skipped_and_free_their_slot() {
        let queues = Queues::new(1, 1 << 20);
        let gone = queues
            .enqueue("q", item("gone"), Origin::default())
            .unwrap();
        drop(gone); // the client timed out
        let _live = queues
            .enqueue("q", item("live"), Origin::default())
            .unwrap();
        let got = queues
            .dequeue("q", M, Duration::from_millis(50), || true)
            .await
            .unwrap();
        assert_eq!(got.reqid, "live");
        assert!(queues.take("gone").is_none());
    }

    #[tokio::test]
    async fn withdrawn_requests_do_not_pile_up_in_a_queue_nobody_polls() {
        let queues = Queues::new(4, 1 << 20);
        for i in 0..10_000 {
            drop(
                queues
                    .enqueue("q", item(&format!("r{i}")), Origin::default())
                    .unwrap(),
            );
        }
        let inner = queues.inner.lock();
        assert!(inner.queues["q"].items.len() <= 2 * 4 + 64 + 1);
        assert_eq!(inner.queues["q"].live, 0);
        assert_eq!(inner.queues["q"].bytes, 0);
    }

    #[tokio::test]
    async fn the_control_lane_is_served_before_queued_commands() {
        let queues = Queues::new(4, 1 << 20);
        let _a = queues
            .enqueue("q", item("prompt"), Origin::default())
            .unwrap();
        let _s = queues
            .enqueue_control("q", item("status"), Origin::default())
            .unwrap();
        let first = queues
            .dequeue("q", M, Duration::from_millis(10), || true)
            .await
            .unwrap();
        assert_eq!(first.reqid, "status");
        assert_eq!(queues.len("q"), 1);
    }

    #[tokio::test]
    async fn withdrawn_control_items_never_fill_the_control_lane() {
        let queues = Queues::new(4, 1 << 20);
        for i in 0..3 * CONTROL_CAPACITY {
            let ticket = queues
                .enqueue_control("q", item(&format!("s{i}")), Origin::default())
                .expect("the lane has room once withdrawn items go");
            drop(ticket);
        }
    }

    #[tokio::test]
    async fn a_dropped_poll_takes_nothing() {
        let queues = Queues::new(4, 1 << 20);
        let poll = queues.dequeue("q", M, Duration::from_secs(5), || true);
        // Dropped before the command exists: like a client that disconnected.
        drop(poll);
        let _ticket = queues.enqueue("q", item("r1"), Origin::default()).unwrap();
        let got = queues
            .dequeue("q", M, Duration::from_millis(50), || true)
            .await;
        assert_eq!(got.unwrap().reqid, "r1");
    }

    #[tokio::test]
    async fn a_poll_whose_client_is_gone_passes_the_command_to_a_live_one() {
        let queues = Queues::new(4, 1 << 20);
        let (q1, q2) = (Arc::clone(&queues), Arc::clone(&queues));
        // The dead poll waits first, so it is the one a new command wakes.
        let dead =
            tokio::spawn(async move { q1.dequeue("q", M, Duration::from_secs(5), || false).await });
        tokio::task::yield_now().await;
        let live =
            tokio::spawn(async move { q2.dequeue("q", M, Duration::from_secs(5), || true).await });
        tokio::task::yield_now().await;
        let _ticket = queues.enqueue("q", item("r1"), Origin::default()).unwrap();
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
        let queues = Queues::new(4, 1 << 20);
        let in_flight = queues.enqueue("q", item("a"), Origin::default()).unwrap();
        queues
            .dequeue("q", M, Duration::from_millis(10), || true)
            .await
            .unwrap();
        let queued = queues.enqueue("q", item("b"), Origin::default()).unwrap();
        let other = queues
            .enqueue("other", item("c"), Origin::default())
            .unwrap();
        assert_eq!(queues.waiting_for("M", "q"), 2);
        assert_eq!(
            queues.fail_module(
                "M",
                Some("q"),
                FailureKind::ModuleCrashed,
                "module M crashed"
            ),
            2
        );
        let a = in_flight.wait(Duration::from_millis(10)).await.unwrap_err();
        assert_eq!(a.message, "module M crashed (#reqid a)");
        assert_eq!(a.kind, FailureKind::ModuleCrashed);
        assert!(queued.wait(Duration::from_millis(10)).await.is_err());
        assert_eq!(
            other
                .wait(Duration::from_millis(10))
                .await
                .unwrap_err()
                .kind,
            FailureKind::Timeout,
            "other queues untouched"
        );
        assert_eq!(queues.waiting_for("M", "q"), 0);
    }

    #[tokio::test]
    async fn timeout_withdraws_the_request() {
        let queues = Queues::new(4, 1 << 20);
        let ticket = queues
            .enqueue("q", item("slow"), Origin::default())
            .unwrap();
        let err = ticket.wait(Duration::from_millis(10)).await.unwrap_err();
        assert_eq!(err.message, "The request timed out (#reqid slow)");
        assert_eq!(queues.len("q"), 0);
        assert!(queues.take("slow").is_none());
    }
}
