//! Sampling, per sequence: the sampler chain a chat's settings make, and the
//! text its tokens become (UTF-8 assembled across pieces, stop strings cut).
//! Each sequence in the batch has its own of both, with its own seed.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::text::{StopFilter, Utf8Stream};

/// A chat's sampling settings, checked by [`crate::request::ChatRequest::validate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// `0..=2`; 0 = greedy.
    pub temperature: f32,
    /// `(0, 1]`; 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    /// The seed of the final draw.
    pub seed: u32,
}

impl SamplingParams {
    /// A fresh sampler chain in llama.cpp's own order: truncate (top-k,
    /// top-p), then temperature, then a seeded draw; greedy at temperature 0.
    #[must_use]
    pub fn sampler(&self) -> LlamaSampler {
        if self.temperature <= 0.0 {
            return LlamaSampler::greedy();
        }
        let mut chain = Vec::with_capacity(4);
        if self.top_k > 0 {
            chain.push(LlamaSampler::top_k(self.top_k.min(i32::MAX as u32) as i32));
        }
        if self.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.top_p, 1));
        }
        chain.push(LlamaSampler::temp(self.temperature));
        chain.push(LlamaSampler::dist(self.seed));
        LlamaSampler::chain_simple(chain)
    }
}

/// A fresh random seed, different per call and per process.
#[must_use]
pub fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process and per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// The text of one sequence's tokens as it grows.
#[derive(Debug)]
pub struct ReplyText {
    utf8: Utf8Stream,
    stops: StopFilter,
    piece: Vec<u8>,
}

/// What one token added to a [`ReplyText`].
#[derive(Debug, PartialEq, Eq)]
pub struct TextStep {
    /// Text to send now (may be empty while a character or a possible stop
    /// string is incomplete).
    pub emit: String,
    /// A stop string appeared: `emit` ends right before it, and the reply is over.
    pub stopped: bool,
}

impl ReplyText {
    /// Text for a reply that ends before any of `stop`.
    #[must_use]
    pub fn new(stop: &[String]) -> Self {
        Self {
            utf8: Utf8Stream::new(),
            stops: StopFilter::new(stop),
            piece: Vec::with_capacity(32),
        }
    }

    /// Adds `token`'s piece; control tokens render as nothing.
    pub fn push(&mut self, model: &LlamaModel, token: LlamaToken) -> TextStep {
        self.piece.clear();
        model
            .vocab()
            .token_to_piece_into(token, &mut self.piece, false, None);
        let step = self.stops.push(&self.utf8.push(&self.piece));
        TextStep {
            emit: step.emit,
            stopped: step.stopped,
        }
    }

    /// Ends the reply (not after a stop string): an incomplete character and
    /// text held back as a possible stop are released.
    pub fn finish(&mut self) -> String {
        let tail = self.stops.push(&self.utf8.finish());
        let mut rest = tail.emit;
        if !tail.stopped {
            rest.push_str(&self.stops.finish());
        }
        rest
    }
}
