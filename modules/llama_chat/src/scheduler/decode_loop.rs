//! The decode loop: the thread that owns the context, seats chats in slots,
//! fills and decodes each step's batch, and samples the sequences.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::figures::Figures;
use super::sequence::Sequence;
use super::{Admission, SchedulerSpec, GATHER_GAP, GATHER_POLL};
use crate::generation::{ChatError, FinishReason};

/// One sequence of the context.
struct Slot {
    seq: i32,
    /// The tokens whose KV this sequence holds, in position order.
    cached: Vec<LlamaToken>,
    /// When it last took a chat (the least recently used is reused first).
    used: Instant,
    active: Option<Sequence>,
}

/// What a step added for one slot, committed to its cache once decoded:
/// the token it generated last, or its next `prompt` prompt tokens.
struct Added {
    slot: usize,
    generated: Option<LlamaToken>,
    prompt: usize,
}

/// The loop's state; lives on its thread (the context is not `Send`).
pub(super) struct DecodeLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    slots: Vec<Slot>,
    pending: VecDeque<Admission>,
    figures: Arc<Figures>,
    gather_max: Duration,
}

impl<'m> DecodeLoop<'m> {
    pub(super) fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        spec: SchedulerSpec,
        figures: Arc<Figures>,
    ) -> Self {
        let n_batch = spec.n_batch.max(spec.slots) as usize;
        let now = Instant::now();
        Self {
            model,
            ctx,
            batch: LlamaBatch::new(n_batch, 1),
            n_batch,
            slots: (0..spec.slots as i32)
                .map(|seq| Slot {
                    seq,
                    cached: Vec::new(),
                    used: now,
                    active: None,
                })
                .collect(),
            pending: VecDeque::new(),
            figures,
            gather_max: spec.gather_max,
        }
    }

    fn idle(&self) -> bool {
        self.pending.is_empty() && self.slots.iter().all(|s| s.active.is_none())
    }

    /// Steps until the engine is gone and nothing is left to do.
    pub(super) fn run(mut self, incoming: &Receiver<Admission>) {
        loop {
            if self.idle() {
                match incoming.recv() {
                    Ok(admission) => self.pending.push_back(admission),
                    Err(_) => return,
                }
                self.gather(incoming);
            }
            while let Ok(admission) = incoming.try_recv() {
                self.pending.push_back(admission);
            }
            self.step();
        }
    }

    /// After waking from idle: takes the chats that arrive within
    /// [`GATHER_GAP`] of each other, and those being prepared or prepared
    /// and still on their way, including those that set out while it waited
    /// (up to [`SchedulerSpec::gather_max`] in all, or until every slot
    /// has one), so that a burst of chats has its prompts decoded in one
    /// batch. Chats reach the module a millisecond or two apart (its poll
    /// workers take them from the server's queue a few at a time); without
    /// this the first one's prompt is decoded alone and every later one's in
    /// the next step, while the first already waits for its tokens, and its
    /// decode rate counts the others' prompts.
    fn gather(&mut self, incoming: &Receiver<Admission>) {
        let deadline = Instant::now() + self.gather_max;
        let mut timed_out = false;
        while self.pending.len() < self.slots.len() {
            // Read again after each wait: a chat may have set out during it.
            let on_its_way = self.figures.on_its_way.load(Ordering::SeqCst) > 0;
            let Some(wait) = gather_wait(Instant::now(), deadline, on_its_way, timed_out) else {
                return;
            };
            match incoming.recv_timeout(wait) {
                Ok(admission) => {
                    self.pending.push_back(admission);
                    timed_out = false;
                }
                Err(RecvTimeoutError::Timeout) => timed_out = true,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One step: drop what was cancelled, seat waiting chats, decode one
    /// batch, sample.
    fn step(&mut self) {
        self.drop_cancelled();
        self.seat_pending();
        let added = self.fill_batch();
        if added.is_empty() {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            let error = ChatError::Engine(format!("decode: {e}"));
            for a in &added {
                self.fail(a.slot, error.clone());
            }
            return;
        }
        let now = Instant::now();
        for a in added {
            let slot = &mut self.slots[a.slot];
            let Some(seq) = slot.active.as_mut() else {
                continue;
            };
            if let Some(token) = a.generated {
                slot.cached.push(token);
            } else {
                let done = seq.prompt_done;
                slot.cached
                    .extend_from_slice(&seq.chat.tokens[done..done + a.prompt]);
                seq.prompt_done += a.prompt;
            }
        }
        let mut generated = 0;
        for i in 0..self.slots.len() {
            generated += self.sample(i);
        }
        if generated > 0 {
            self.figures.throughput.lock().add(now, generated);
        }
    }

    /// Ends cancelled chats, seated or waiting, before they cost a step.
    fn drop_cancelled(&mut self) {
        for i in 0..self.slots.len() {
            let cancelled = self.slots[i]
                .active
                .as_ref()
                .is_some_and(|s| s.sink.is_cancelled());
            if cancelled {
                self.finish(i, FinishReason::Cancelled);
            }
        }
        if !self.pending.iter().any(|a| a.sink.is_cancelled()) {
            return;
        }
        let (cancelled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|a| a.sink.is_cancelled());
        self.pending = waiting.into();
        for admission in cancelled {
            self.figures.waiting.fetch_sub(1, Ordering::SeqCst);
            let seq = Sequence::new(admission, 0);
            let summary = seq.summary(FinishReason::Cancelled);
            seq.sink.done(summary);
        }
    }

    /// Seats waiting chats, oldest first, in free slots: each in the one
    /// whose cache shares the longest prefix with its prompt (the least
    /// recently used among equals), reusing that prefix.
    fn seat_pending(&mut self) {
        while !self.pending.is_empty() {
            let tokens = &self.pending[0].chat.tokens;
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active.is_none())
                .map(|(i, s)| {
                    (
                        common_prefix(&s.cached, tokens),
                        std::cmp::Reverse(s.used),
                        i,
                    )
                })
                .max();
            let Some((prefix, _, i)) = best else {
                return;
            };
            let admission = self.pending.pop_front().expect("not empty");
            self.figures.waiting.fetch_sub(1, Ordering::SeqCst);
            // At least one prompt token is decoded: its logits start the reply.
            let reuse = prefix.min(admission.chat.tokens.len().saturating_sub(1));
            let reuse = self.truncate_cache(i, reuse);
            let slot = &mut self.slots[i];
            slot.used = Instant::now();
            slot.active = Some(Sequence::new(admission, reuse));
            self.figures.busy.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Keeps the first `keep` cached tokens of slot `i` and removes the rest
    /// of its KV; returns how many were kept (0 when llama.cpp cannot remove
    /// part of a sequence, e.g. for recurrent models, and so all went).
    fn truncate_cache(&mut self, i: usize, keep: usize) -> usize {
        let slot = &mut self.slots[i];
        if keep == slot.cached.len() {
            return keep;
        }
        let seq = Some(slot.seq as u32);
        let partial = self
            .ctx
            .clear_kv_cache_seq(seq, Some(keep as u32), None)
            .unwrap_or(false);
        let keep = if partial {
            keep
        } else {
            let _ = self.ctx.clear_kv_cache_seq(seq, None, None);
            0
        };
        slot.cached.truncate(keep);
        keep
    }

    /// Builds this step's batch: the next token of each generating sequence,
    /// then prompt chunks in the room left. Returns what each slot added.
    fn fill_batch(&mut self) -> Vec<Added> {
        self.batch.clear();
        let mut added = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot.active.as_mut() else {
                continue;
            };
            seq.logits_at = None;
            let Some(token) = seq.next.take() else {
                continue;
            };
            let pos = slot.cached.len() as i32;
            // The batch holds n_batch ≥ slots tokens: one per slot fits.
            self.batch
                .add(token, pos, &[slot.seq], true)
                .expect("one token per slot fits the batch");
            seq.logits_at = Some(self.batch.n_tokens() - 1);
            added.push(Added {
                slot: i,
                generated: Some(token),
                prompt: 0,
            });
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let room = self.n_batch - self.batch.n_tokens() as usize;
            let Some(seq) = slot.active.as_mut() else {
                continue;
            };
            let rest = &seq.chat.tokens[seq.prompt_done..];
            if rest.is_empty() || room == 0 {
                continue;
            }
            let chunk = &rest[..rest.len().min(room)];
            let last = chunk.len() == rest.len();
            let base = slot.cached.len();
            for (k, token) in chunk.iter().enumerate() {
                let logits = last && k + 1 == chunk.len();
                self.batch
                    .add(*token, (base + k) as i32, &[slot.seq], logits)
                    .expect("the chunk fits the room left");
            }
            if last {
                seq.logits_at = Some(self.batch.n_tokens() - 1);
            }
            added.push(Added {
                slot: i,
                generated: None,
                prompt: chunk.len(),
            });
        }
        added
    }

    /// Samples slot `i` if its logits came out this step; returns 1 if it
    /// generated a token.
    fn sample(&mut self, i: usize) -> u32 {
        let Some(seq) = self.slots[i].active.as_mut() else {
            return 0;
        };
        let Some(at) = seq.logits_at.take() else {
            return 0;
        };
        let token = seq.sampler.sample(&self.ctx, at);
        let now = Instant::now();
        seq.first_token.get_or_insert(now);
        if self.model.vocab().is_eog(token) {
            self.finish(i, FinishReason::Stop);
            return 0;
        }
        seq.last_token = Some(now);
        let count = seq.sink.count_token();
        let step = seq.text.push(self.model, token);
        let end = if !seq.sink.piece(step.emit) {
            Some(FinishReason::Cancelled)
        } else if step.stopped {
            Some(FinishReason::StopString)
        } else if count >= seq.chat.max_tokens {
            Some(FinishReason::Length)
        } else {
            seq.next = Some(token);
            None
        };
        if let Some(reason) = end {
            self.finish(i, reason);
        }
        1
    }

    /// Ends slot `i`'s chat. Its KV stays as the slot's cache.
    fn finish(&mut self, i: usize, reason: FinishReason) {
        let Some(mut seq) = self.slots[i].active.take() else {
            return;
        };
        if reason != FinishReason::StopString {
            let rest = seq.text.finish();
            seq.sink.piece(rest);
        }
        let summary = seq.summary(reason);
        self.figures.busy.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!(slot = i, ?summary, "generation finished");
        seq.sink.done(summary);
    }

    /// Fails slot `i`'s chat and forgets its KV.
    fn fail(&mut self, i: usize, error: ChatError) {
        let slot = &mut self.slots[i];
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        slot.cached.clear();
        if let Some(seq) = slot.active.take() {
            self.figures.busy.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(slot = i, error = %error, "generation failed");
            seq.sink.fail(error);
        }
    }
}

/// The gathering's next wait for a chat, or `None` when it is over: at
/// `deadline`, or when a wait ran out (`timed_out`) and no chat is on its
/// way. While one is, it is looked for every [`GATHER_POLL`]; with none, the
/// next chat gets one [`GATHER_GAP`] to come.
fn gather_wait(
    now: Instant,
    deadline: Instant,
    on_its_way: bool,
    timed_out: bool,
) -> Option<Duration> {
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() || (timed_out && !on_its_way) {
        return None;
    }
    Some(if on_its_way { GATHER_POLL } else { GATHER_GAP }.min(left))
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_shared_leading_tokens() {
        let t = |v: &[i32]| v.iter().map(|&i| LlamaToken(i)).collect::<Vec<_>>();
        assert_eq!(common_prefix(&t(&[1, 2, 3]), &t(&[1, 2, 4, 5])), 2);
        assert_eq!(common_prefix(&t(&[]), &t(&[1])), 0);
        assert_eq!(common_prefix(&t(&[1, 2]), &t(&[1, 2])), 2);
    }

    #[test]
    fn gathering_goes_on_while_a_chat_is_on_its_way_even_one_that_set_out_during_a_wait() {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(20);
        // Nothing on its way: one gap for the next chat, then it is over.
        assert_eq!(gather_wait(now, deadline, false, false), Some(GATHER_GAP));
        assert_eq!(gather_wait(now, deadline, false, true), None);
        // A chat that set out while the gap ran is waited for, a poll at a
        // time (a burst used to be split here: the wait that ran out had
        // been chosen with nothing on its way, and ended the gathering).
        assert_eq!(gather_wait(now, deadline, true, true), Some(GATHER_POLL));
        assert_eq!(gather_wait(now, deadline, true, false), Some(GATHER_POLL));
        // Never past the deadline.
        let close = deadline - Duration::from_micros(300);
        assert_eq!(
            gather_wait(close, deadline, true, true),
            Some(Duration::from_micros(300))
        );
        assert_eq!(gather_wait(deadline, deadline, true, false), None);
    }
}
