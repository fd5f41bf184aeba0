//! Pooled embeddings from the loaded model: the `embed` command of route
//! `text/embed` (docs/protocol.md §4.7, the OpenAI and Ollama embedding APIs).
//!
//! Each text is tokenized and decoded whole in a context of its own with
//! embeddings on and mean pooling; its vector is the mean of its token
//! embeddings, scaled to unit length (L2), as OpenAI's embeddings are.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use crate::engine::backend;
use crate::generation::ChatError;

/// Most tokens one text may have.
pub const MAX_EMBED_TOKENS: u32 = 4096;

/// The vectors of `texts` (one per text, `n_embd` numbers each) and the
/// number of tokens read.
///
/// # Errors
/// [`ChatError::InvalidRequest`] for an empty text or one longer than the
/// context (naming its index); [`ChatError::Engine`] when llama.cpp fails.
pub fn embed(
    model: &LlamaModel,
    texts: &[String],
    n_ctx: u32,
    threads: u32,
) -> Result<(Vec<Vec<f32>>, u32), ChatError> {
    let n_ctx = n_ctx.min(MAX_EMBED_TOKENS);
    let threads = i32::try_from(threads).unwrap_or(1);
    // The whole of a text goes in one micro-batch: pooling needs every
    // token of the sequence at once.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_embeddings(true)
        .with_pooling_type(LlamaPoolingType::Mean);
    let mut ctx = crate::engine::with_new_context_lock(|| model.new_context(backend(), params))
        .map_err(|e| ChatError::Engine(format!("cannot create an embedding context: {e}")))?;
    let vocab = model.vocab();
    let mut vectors = Vec::with_capacity(texts.len());
    let mut total = 0u32;
    for (i, text) in texts.iter().enumerate() {
        if text.is_empty() {
            return Err(ChatError::InvalidRequest(format!("input[{i}] is empty")));
        }
        let tokens = vocab.tokenize(text.as_bytes(), true, false);
        let n = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if n > n_ctx {
            return Err(ChatError::InvalidRequest(format!(
                "input[{i}] is {n} tokens; an embedding takes at most {n_ctx}"
            )));
        }
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (pos, token) in tokens.iter().enumerate() {
            batch
                .add(*token, pos as i32, &[0], true)
                .map_err(|e| ChatError::Engine(format!("embedding batch: {e}")))?;
        }
        ctx.clear_kv_cache();
        ctx.decode(&mut batch)
            .map_err(|e| ChatError::Engine(format!("embedding decode: {e}")))?;
        let raw = ctx
            .embeddings_seq_ith(0)
            .map_err(|e| ChatError::Engine(format!("no pooled embedding: {e}")))?;
        let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        vectors.push(if norm > 0.0 {
            raw.iter().map(|x| x / norm).collect()
        } else {
            raw.to_vec()
        });
        total += n;
    }
    Ok((vectors, total))
}
