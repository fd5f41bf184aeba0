//! The batch scheduler: continuous batching over one llama.cpp context.
//!
//! The context has one sequence per *slot* (`n_seq_max` = slots, each with
//! its own KV stream of the per-slot context size, as llama-server's
//! `-np`). One thread runs one decode loop; each step puts into one
//! `llama_batch` the next token of every generating sequence and, in the
//! room left of `n_batch`, the next chunk of every prompt still being
//! processed, decodes it once, and samples every sequence whose logits came
//! out. A chat launched meanwhile joins at the next step (or waits, in order,
//! for a free slot); a finished or cancelled one leaves at once, and a cancel
//! touches no other sequence.
//!
//! Prompt cache: a slot keeps the KV of its last conversation (prompt and
//! reply, as far as decoded). A new chat takes the free slot whose cached
//! tokens share the longest prefix with its prompt; the KV past that prefix
//! is removed (`llama_memory_seq_rm`) and only the rest is decoded. The next
//! turn of a conversation thus pays for its new message only.
//!
//! The parts: the scheduler that chats are handed to (this file), the loop
//! on its thread (`decode_loop.rs`), one chat's sequence (`sequence.rs`),
//! the load figures (`figures.rs`).

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;

use crate::engine::{backend, with_new_context_lock};
use crate::generation::{ChatError, GenerationSink, GeneratorLoad, OnItsWay, PreparedChat};

mod decode_loop;
mod figures;
mod sequence;

use decode_loop::DecodeLoop;
use figures::Figures;

/// How long the decode loop, woken from idle by a chat, waits for the next
/// one before it starts when no other chat is on its way (see
/// `DecodeLoop::gather`): the most a lone chat's first token is delayed.
pub const GATHER_GAP: Duration = Duration::from_millis(1);

/// The longest the decode loop gathers a burst of chats, waiting for those
/// prepared and on their way, by default ([`SchedulerSpec::gather_max`]).
pub const GATHER_MAX: Duration = Duration::from_millis(20);

/// How often the gathering looks again for chats on their way.
const GATHER_POLL: Duration = Duration::from_millis(1);

/// The shape of the scheduler's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerSpec {
    /// Context of each slot, tokens: prompt plus reply of one chat.
    pub n_ctx_slot: u32,
    /// Sequences decoded together (llama.cpp's `n_seq_max`), at least 1.
    pub slots: u32,
    /// Most tokens per decode call (llama.cpp's `n_batch` and `n_ubatch`).
    pub n_batch: u32,
    /// llama.cpp threads for decoding.
    pub threads: i32,
    /// The longest a burst of chats is gathered (see `DecodeLoop::gather`).
    pub gather_max: Duration,
}

impl SchedulerSpec {
    /// KV cache cells in all: slots × per-slot context.
    #[must_use]
    pub fn kv_tokens(&self) -> u32 {
        self.n_ctx_slot.saturating_mul(self.slots)
    }
}

/// A chat handed to the decode loop.
pub(crate) struct Admission {
    chat: PreparedChat,
    sink: GenerationSink,
}

/// The decode loop's thread, seen from the engine.
pub struct Scheduler {
    chats: Sender<Admission>,
    figures: Arc<Figures>,
    slots: u32,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Creates the context and starts the decode loop's thread; ends when
    /// the scheduler is dropped and the last chat has finished.
    ///
    /// # Errors
    /// The context could not be created (llama.cpp's message), or the thread
    /// could not start.
    pub fn start(model: Arc<LlamaModel>, spec: SchedulerSpec) -> Result<Self, String> {
        let (chats, incoming) = crossbeam_channel::unbounded();
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let figures = Arc::new(Figures::new());
        let loop_figures = Arc::clone(&figures);
        std::thread::Builder::new()
            .name("llama-decode".into())
            .spawn(move || {
                let ctx = match new_context(&model, spec) {
                    Ok(ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        ctx
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                DecodeLoop::new(&model, ctx, spec, loop_figures).run(&incoming);
            })
            .map_err(|e| format!("cannot start the decode thread: {e}"))?;
        ready
            .recv()
            .map_err(|_| "the decode thread ended before its context was made".to_owned())??;
        Ok(Self {
            chats,
            figures,
            slots: spec.slots,
        })
    }

    /// A count of one more chat on its way to this loop, for
    /// [`PreparedChat::on_its_way`]: the loop waits for such chats when it
    /// gathers a burst.
    pub(crate) fn on_its_way(&self) -> OnItsWay {
        OnItsWay::new(&self.figures.on_its_way)
    }

    /// Hands `chat` to the decode loop; its events go to `sink`.
    pub fn submit(&self, mut chat: PreparedChat, sink: GenerationSink) {
        self.figures.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted as waiting now; in the channel, the loop's gathering sees it.
        chat.on_its_way.arrived();
        if let Err(returned) = self.chats.send(Admission { chat, sink }) {
            // Only when the loop died (a panic in llama.cpp code).
            self.figures.waiting.fetch_sub(1, Ordering::SeqCst);
            returned
                .into_inner()
                .sink
                .fail(ChatError::Engine("the decode loop has stopped".into()));
        }
    }

    /// Slots, busy slots, chats waiting and recent throughput.
    pub fn load(&self) -> GeneratorLoad {
        GeneratorLoad {
            slots: self.slots,
            busy_slots: self.figures.busy.load(Ordering::SeqCst),
            waiting: self.figures.waiting.load(Ordering::SeqCst),
            tokens_per_second: self.figures.throughput.lock().per_second(Instant::now()),
        }
    }
}

/// The context of `spec` on `model`.
fn new_context(model: &LlamaModel, spec: SchedulerSpec) -> Result<LlamaContext<'_>, String> {
    let n_batch = spec.n_batch.max(spec.slots);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(spec.kv_tokens()))
        .with_n_seq_max(spec.slots)
        .with_kv_unified(false)
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_threads(spec.threads)
        .with_n_threads_batch(spec.threads);
    with_new_context_lock(|| model.new_context(backend(), params)).map_err(|e| {
        format!(
            "cannot create a context of {} slots × {} tokens: {e}",
            spec.slots, spec.n_ctx_slot
        )
    })
}
