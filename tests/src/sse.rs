//! Reading job streams: Server-Sent Events parsed in Rust, or read by a
//! Python client from PyPI (httpx-sse).

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{python_venv, workspace_root};

/// One Server-Sent Event of a job stream (docs/protocol.md §4.4).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The event id: 1, 2, 3 … within the job.
    pub id: u64,
    /// `delta`, `status`, `done` or `error`.
    pub event: String,
    pub data: Value,
}

/// Reads `response` as Server-Sent Events (with `eventsource-stream`) until
/// the server ends the stream, or `stop` says so after an event; comment
/// pings are skipped.
pub async fn read_sse(
    response: reqwest::Response,
    mut stop: impl FnMut(&SseEvent) -> bool,
) -> Result<Vec<SseEvent>> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| anyhow::anyhow!("reading the event stream: {e}"))?;
        let parsed = SseEvent {
            id: event
                .id
                .parse()
                .with_context(|| format!("event id {:?}", event.id))?,
            event: event.event,
            data: serde_json::from_str(&event.data)
                .with_context(|| format!("event data {:?}", event.data))?,
        };
        let done = stop(&parsed);
        events.push(parsed);
        if done {
            break;
        }
    }
    Ok(events)
}

/// The text of a stream's `delta` events, joined.
pub fn joined_deltas(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| e.data["text"].as_str())
        .collect()
}

/// Runs `tests/clients/sse_client.py` (httpx with httpx-sse, from PyPI) in
/// the test venv with `args`; its JSON output.
pub fn python_sse_client(args: &[&str]) -> Result<Value> {
    let venv = python_venv()?;
    let out = Command::new(venv.join("bin/python3"))
        .arg(workspace_root().join("tests/clients/sse_client.py"))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "sse_client.py {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
