//! A client of the OpenAI chat API that both modhost and llama-server speak,
//! timing what it streams.

use std::time::Instant;

use anyhow::{bail, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;

/// One streamed reply: time to the first token, decode tokens/s after it.
pub struct Run {
    pub first_token_ms: f64,
    pub decode_tps: f64,
    /// Content chunks streamed.
    pub tokens: usize,
    /// The reply.
    pub text: String,
    /// `usage.prompt_tokens`, when the request asked for usage.
    pub prompt_tokens: Option<u64>,
}

/// Streams one chat from `base` and times its content chunks.
pub async fn stream_chat(http: &reqwest::Client, base: &str, body: &Value) -> Result<Run> {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "{base}: HTTP {}: {}",
            response.status(),
            response.text().await?
        );
    }
    let mut events = response.bytes_stream().eventsource();
    let mut times = Vec::new();
    let mut reply = String::new();
    let mut prompt_tokens = None;
    while let Some(event) = events.next().await {
        let event = event?;
        if event.data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data)?;
        let text = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("");
        if !text.is_empty() {
            times.push(started.elapsed());
            reply.push_str(text);
        }
        prompt_tokens = prompt_tokens.or(chunk["usage"]["prompt_tokens"].as_u64());
    }
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("{base}: no content streamed");
    };
    let span = (*last - *first).as_secs_f64();
    Ok(Run {
        first_token_ms: first.as_secs_f64() * 1000.0,
        decode_tps: if span > 0.0 {
            (times.len() - 1) as f64 / span
        } else {
            0.0
        },
        tokens: times.len(),
        text: reply,
        prompt_tokens,
    })
}
