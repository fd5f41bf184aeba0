//! The [`CommandHandle`] a long process works with (docs/protocol.md §1.7):
//! its id, its cancel flag and the status fields it publishes, pushed to the
//! server as they change (§4.2). The registry of long commands is in
//! `registry.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modhost_protocol::REPLY_FIELD;
use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::progress::ProgressSink;

/// A JSON object, the shape of every reply.
pub(crate) type JsonMap = Map<String, Value>;

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

    /// The cancel flag itself, shared: for a worker on another thread that
    /// checks it often (a generation loop checks it once per step), so that
    /// a cancel reaches it without a hook. Only the SDK should set it.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancelled)
    }

    /// Appends `piece` to the published `reply` text (LlamaChat's growing
    /// answer), in O(piece): the way to publish generated text.
    pub fn append_reply(&self, piece: &str) {
        self.append_reply_with(piece, JsonMap::new());
    }

    /// Appends `piece` to the published `reply` text and sets `fields` (a
    /// token count, say) as one update: a client streaming the command gets
    /// both in the same push, and the module pushes once, not twice.
    pub fn append_reply_with(&self, piece: &str, fields: JsonMap) {
        let mut changed = JsonMap::new();
        {
            let mut published = self.published.lock();
            match published.get_mut(REPLY_FIELD) {
                Some(Value::String(text)) => text.push_str(piece),
                _ => {
                    published.insert(REPLY_FIELD.into(), piece.into());
                }
            }
            for (key, value) in fields {
                if published.get(&key) != Some(&value) {
                    published.insert(key.clone(), value.clone());
                    changed.insert(key, value);
                }
            }
        }
        if let Some(sink) = &self.progress {
            sink.change(|p| {
                p.delta.push_str(piece);
                p.produced_at_us = Some(now_us());
                p.fields.extend(changed);
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
        let hub = Arc::new(crate::progress::ProgressHub::default());
        let h = CommandHandle::pushing("c1", hub.sink("c1"));
        h.append_reply("The");
        h.append_reply(" sun");
        h.update("tokens", json!(2));
        h.update("tokens", json!(2)); // unchanged: nothing to push
        h.update("reply", json!("The sun is"));
        let update = hub.take().remove("c1").unwrap();
        assert_eq!(update.delta, "The sun is");
        assert_eq!(update.fields, obj(json!({"tokens": 2})));
        assert!(update.produced_at_us.is_some());
        assert_eq!(h.published()["reply"], "The sun is");
        // Text and fields in one update.
        h.append_reply_with("!", obj(json!({"tokens": 3})));
        let update = hub.take().remove("c1").unwrap();
        assert_eq!(update.delta, "!");
        assert_eq!(update.fields, obj(json!({"tokens": 3})));
        assert_eq!(h.published()["reply"], "The sun is!");
        assert_eq!(h.published()["tokens"], 3);
        // A rewritten reply is a field, not a delta.
        h.update("reply", json!("Other"));
        let update = hub.take().remove("c1").unwrap();
        assert_eq!(update.delta, "");
        assert_eq!(update.fields, obj(json!({"reply": "Other"})));
    }
}
