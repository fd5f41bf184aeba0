//! How a chat's reply ends, as its reader sees it: the reason, the
//! statistics, the events on the way, and the errors.

use std::time::Instant;

/// Why a reply ended, in detail; the result's `finish_reason`. (Its
/// `stop_reason` keeps CodeProject's two values: see [`FinishReason::stop_reason`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` (or the end of the context) was reached.
    Length,
    /// A stop string appeared; it is not part of the reply.
    StopString,
    /// The caller cancelled.
    Cancelled,
}

impl FinishReason {
    /// The wire name: `stop`, `length`, `stop_string` or `cancelled`, as
    /// OpenAI's `finish_reason` names the first two.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::StopString => "stop_string",
            Self::Cancelled => "cancelled",
        }
    }

    /// CodeProject LlamaChat's `stop_reason`: `cancelled` when the caller
    /// stopped the reply, else `completed`, whatever ended it; clients test
    /// `stop_reason == "completed"`.
    #[must_use]
    pub const fn stop_reason(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            _ => "completed",
        }
    }
}

/// Statistics of a finished (or cancelled) reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Why the reply ended.
    pub finish_reason: FinishReason,
    /// Tokens of the rendered prompt (template included).
    pub prompt_tokens: u32,
    /// Of those, tokens whose KV came from the prompt cache (not decoded).
    pub cached_tokens: u32,
    /// Tokens generated into the reply (an end-of-generation token is not counted).
    pub completion_tokens: u32,
    /// Milliseconds from getting a slot to the end: prompt processing plus
    /// generation (not the wait for a slot).
    pub inference_ms: u64,
    /// [`decode_rate`], to 0.1.
    pub tokens_per_second: f64,
    /// Milliseconds from getting a slot to the first sampled token; 0 when
    /// none was sampled.
    pub time_to_first_token_ms: f64,
    /// The sampler seed used (the request's, or the random one picked).
    pub seed: u32,
}

/// Decode rate, tokens per second: the `tokens` after the first, over the
/// time from the `first` token's sampling to the `last` one's (the first
/// comes from the prompt's logits, each later one from a decode step of its
/// own), as llama-server's `predicted_per_second` counts. 0 with fewer than
/// 2 tokens or no time between them.
#[must_use]
pub fn decode_rate(tokens: u32, first: Option<Instant>, last: Option<Instant>) -> f64 {
    let secs = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    if tokens > 1 && secs > 0.0 {
        f64::from(tokens - 1) / secs
    } else {
        0.0
    }
}

/// What a generation streams to its reader.
#[derive(Debug)]
pub enum GenerationEvent {
    /// More reply text (complete UTF-8 characters, stop strings already removed).
    Piece(String),
    /// The reply ended normally or by cancel; this is the last event.
    Done(Summary),
    /// The generation failed; this is the last event.
    Failed(ChatError),
}

/// Errors of chat generation. Messages are written for the person who sent the chat.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// A request field is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The rendered prompt does not fit the context.
    #[error("prompt is {prompt_tokens} tokens but the context holds {context} (a reply needs at least one more)")]
    PromptTooLong {
        /// Tokens of the rendered prompt.
        prompt_tokens: u32,
        /// Context size in tokens.
        context: u32,
    },
    /// Prompt plus `max_tokens` does not fit the context.
    #[error("max_tokens {max_tokens} does not fit: the prompt is {prompt_tokens} tokens and the context holds {context}, so at most {} tokens can be generated (or send max_tokens 0 for as many as fit)", .context - .prompt_tokens)]
    MaxTokensBeyondContext {
        /// Requested reply length.
        max_tokens: u32,
        /// Tokens of the rendered prompt.
        prompt_tokens: u32,
        /// Context size in tokens.
        context: u32,
    },
    /// The chat template could not be applied.
    #[error("{0}")]
    Template(String),
    /// llama.cpp failed (context creation, decoding).
    #[error("llama.cpp: {0}")]
    Engine(String),
    /// The engine's decode loop ended without reporting a result.
    #[error("the generation stopped unexpectedly")]
    Disconnected,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn decode_rate_counts_the_steps_after_the_first_token() {
        let first = Instant::now();
        let last = first + Duration::from_secs(2);
        // 5 tokens: the first from the prompt, 4 decode steps in 2 s.
        assert_eq!(decode_rate(5, Some(first), Some(last)), 2.0);
        assert_eq!(decode_rate(1, Some(first), Some(first)), 0.0);
        assert_eq!(decode_rate(0, None, None), 0.0);
        assert_eq!(decode_rate(3, Some(first), None), 0.0);
    }
}
