//! A chat in a slot: its prompt, sampler, reply text, progress and timings.

use std::time::Instant;

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::Admission;
use crate::generation::{decode_rate, FinishReason, GenerationSink, PreparedChat, Summary};
use crate::sampling::ReplyText;

/// A chat in a slot.
pub(super) struct Sequence {
    pub chat: PreparedChat,
    pub sink: GenerationSink,
    pub sampler: LlamaSampler,
    pub text: ReplyText,
    /// Prompt tokens whose KV is in the cache (reused or decoded).
    pub prompt_done: usize,
    /// Of those, the ones reused from the slot's last conversation.
    pub cached_tokens: u32,
    /// The token sampled last, decoded at the next step.
    pub next: Option<LlamaToken>,
    /// Where this step's logits for it are in the batch.
    pub logits_at: Option<i32>,
    pub started: Instant,
    /// When the first token was sampled (the prompt's logits).
    pub first_token: Option<Instant>,
    /// When the last token counted into the reply was sampled.
    pub last_token: Option<Instant>,
}

impl Sequence {
    pub fn new(admission: Admission, reused: usize) -> Self {
        let Admission { chat, sink } = admission;
        Self {
            sampler: chat.sampling.sampler(),
            text: ReplyText::new(&chat.stop),
            chat,
            sink,
            prompt_done: reused,
            cached_tokens: reused as u32,
            next: None,
            logits_at: None,
            started: Instant::now(),
            first_token: None,
            last_token: None,
        }
    }

    pub fn summary(&self, finish_reason: FinishReason) -> Summary {
        let completion_tokens = self.sink.tokens_generated();
        let end = Instant::now();
        let rate = decode_rate(completion_tokens, self.first_token, self.last_token);
        let tokens_per_second = (rate * 10.0).round() / 10.0;
        let ttft = self.first_token.map_or(0.0, |t| {
            (t.duration_since(self.started).as_secs_f64() * 100_000.0).round() / 100.0
        });
        Summary {
            finish_reason,
            prompt_tokens: self.chat.prompt_tokens(),
            cached_tokens: self.cached_tokens,
            completion_tokens,
            inference_ms: end.duration_since(self.started).as_millis() as u64,
            tokens_per_second,
            time_to_first_token_ms: ttft,
            seed: self.chat.sampling.seed,
        }
    }
}
