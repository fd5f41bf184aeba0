//! Generation: what the OpenAI- and Ollama-compatible APIs have in common
//! (docs/protocol.md §4.7). A module declares which of its routes implement
//! `chat`, `completion` or `embedding` (`Implements` in its manifest); a
//! request names a model; the model picks the module and route; the request
//! becomes that route's values and runs as a command like any other, a job
//! when the module answers with a long process; its deltas and final result
//! come back here for the API to shape.
//!
//! The values a generation route receives: `messages` (chat: a JSON array of
//! `{role, content}`), `prompt` (completion), `input` (embedding: a JSON
//! array of strings), and where given `max_tokens`, `temperature`, `top_p`,
//! `top_k`, `seed`, `stop` (repeated). The result fields read back:
//! `reply`, `finish_reason` (or `stop_reason`), `prompt_tokens`,
//! `completion_tokens`, `cached_tokens`, `model`, `inferenceMs`,
//! `time_to_first_token_ms`, and for embeddings `embeddings`.
//!
//! Which models there are and how a name picks one: `models.rs`. Here, a
//! request's run: its values, its start, its steps and its outcome.

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use modhost_protocol::{Failure, FailureKind, JsonMap, ReplyMeta};
use serde_json::Value;

use crate::commands::Commands;
use crate::jobs::{EventKind, Job, Jobs};
use crate::payload::RequestValues;
use crate::registry::RouteMatch;
use crate::watcher::Watcher;
use crate::AppState;

mod models;

pub use models::{api_name, resolve, served, ModelError, Served};

/// The sampling values a request may carry, as the route receives them.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// The request values for `served`'s route: `content` (the API's own
/// values, e.g. `messages`) and the sampling values.
pub fn values(content: &[(&str, String)], sampling: &Sampling) -> RequestValues {
    let mut values = RequestValues::with_limit(0);
    let mut add = |key: &str, value: String| {
        values.push(key, value).expect("no limit");
    };
    for (key, value) in content {
        add(key, value.clone());
    }
    if let Some(n) = sampling.max_tokens {
        add("max_tokens", n.to_string());
    }
    if let Some(t) = sampling.temperature {
        add("temperature", t.to_string());
    }
    if let Some(p) = sampling.top_p {
        add("top_p", p.to_string());
    }
    if let Some(k) = sampling.top_k {
        add("top_k", k.to_string());
    }
    if let Some(seed) = sampling.seed {
        add("seed", seed.to_string());
    }
    for stop in &sampling.stop {
        add("stop", stop.clone());
    }
    values
}

/// The `input` value of an embedding route (a JSON array of texts) from a
/// request's `input`: a string, or a non-empty array of strings.
///
/// # Errors
/// The message to answer with when `input` is neither.
pub fn embedding_input(input: Option<Value>) -> Result<String, &'static str> {
    match input {
        Some(Value::String(text)) => Ok(Value::from(vec![text]).to_string()),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            Ok(Value::Array(items).to_string())
        }
        _ => Err("input is required: a string or a non-empty array of strings"),
    }
}

/// The HTTP status both generation APIs answer a command failure with, and
/// its `Retry-After` in seconds where a retry may succeed: 400 for the
/// module's refusal of the request, 429 for a full queue, 503 for a module
/// that is not running or failed, 504 for a timeout, else 500.
pub fn failure_status(kind: FailureKind) -> (actix_web::http::StatusCode, Option<u32>) {
    use actix_web::http::StatusCode;
    let status = match kind {
        FailureKind::CommandFailed => StatusCode::BAD_REQUEST,
        FailureKind::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        FailureKind::ModuleNotRunning
        | FailureKind::ModuleCrashed
        | FailureKind::ModuleStopped
        | FailureKind::ModuleUnresponsive => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let retry = kind
        .retry_after_secs()
        .or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(5));
    (status, retry)
}

/// A generation under way.
pub enum Started {
    /// The module answered at once (a plain command): its whole result.
    Done(JsonMap),
    /// A job: follow it with the watcher.
    Job { job: Arc<Job>, watcher: Watcher },
}

/// Runs `served`'s route with `values` for the client of `req`. A job's
/// watcher cancels the job when the client goes before the end.
///
/// # Errors
/// As [`launch`].
pub async fn start(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    served: &Served,
    values: RequestValues,
) -> Result<Started, Failure> {
    Ok(
        match launch(&state.commands, &state.jobs, served, values).await? {
            Launched::Done(reply) => Started::Done(reply),
            Launched::Job(job) => {
                let watcher = Watcher::new(
                    state,
                    req.clone(),
                    Arc::clone(&job),
                    0,
                    Some(Arc::clone(&served.module)),
                );
                Started::Job { job, watcher }
            }
        },
    )
}

/// A generation command the module has taken.
pub enum Launched {
    /// The module answered at once (a plain command): its whole result.
    Done(JsonMap),
    /// The module started a long process: its job.
    Job(Arc<Job>),
}

/// Runs `served`'s route with `values`, for any caller (an API client, a
/// skill's CSI call).
///
/// # Errors
/// The command's [`Failure`], or the module's own error
/// ([`FailureKind::CommandFailed`]) when it answers `success: false`.
pub async fn launch(
    commands: &Commands,
    jobs: &Jobs,
    served: &Served,
    values: RequestValues,
) -> Result<Launched, Failure> {
    let target = RouteMatch {
        module: Arc::clone(&served.module),
        route: Some(served.route.clone()),
        command: served.route.command.clone(),
        url_segments: Vec::new(),
    };
    let reply = commands.run(target, values).await?;
    let meta = ReplyMeta::read(&reply);
    if !meta.success {
        return Err(module_error(&reply));
    }
    let job = meta
        .starts_long_process()
        .then(|| meta.command_id.as_deref().and_then(|id| jobs.get(id)))
        .flatten();
    Ok(job.map_or(Launched::Done(reply), Launched::Job))
}

/// The module's own error in a `success: false` result.
fn module_error(result: &JsonMap) -> Failure {
    let message = result
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("the module failed without saying why");
    Failure::new(FailureKind::CommandFailed, message)
}

/// What a job's next event means to a generation API.
pub enum Step {
    /// More text.
    Text(String),
    /// The end: the final result.
    Done(Outcome),
}

/// Reads the job to its next text or its end.
///
/// # Errors
/// The job's failure; [`FailureKind::Cancelled`] when the stream ended
/// without a result (the client went, or the server is stopping).
pub async fn next_step(watcher: &mut Watcher) -> Result<Step, Failure> {
    loop {
        let Some(event) = watcher.next().await else {
            return Err(Failure::new(
                FailureKind::Cancelled,
                "the generation ended without a result (the client went or the server is stopping)",
            ));
        };
        match event.kind {
            EventKind::Delta { text, .. } if !text.is_empty() => return Ok(Step::Text(text)),
            EventKind::Delta { .. } | EventKind::Status(_) => {}
            EventKind::Done(result) => {
                if !ReplyMeta::read(&result).success {
                    return Err(module_error(&result));
                }
                return Ok(Step::Done(Outcome::from_result(result)));
            }
            EventKind::Error(failure) => return Err(failure),
        }
    }
}

/// Reads a whole generation: its text and its outcome.
///
/// # Errors
/// As [`next_step`].
pub async fn finish(started: Started) -> Result<Outcome, Failure> {
    match started {
        Started::Done(result) => Ok(Outcome::from_result(result)),
        Started::Job { mut watcher, .. } => loop {
            if let Step::Done(outcome) = next_step(&mut watcher).await? {
                return Ok(outcome);
            }
        },
    }
}

/// A finished generation, read from the module's final result.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The whole reply.
    pub text: String,
    /// OpenAI's `finish_reason`: `stop` or `length` (a stop string and a
    /// cancel count as `stop`).
    pub finish_reason: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Milliseconds of prompt processing and generation.
    pub inference_ms: u64,
    /// Milliseconds to the first token.
    pub first_token_ms: f64,
    /// Embedding vectors (embedding routes).
    pub embeddings: Vec<Vec<f64>>,
}

impl Outcome {
    /// Reads a generation route's final result.
    pub fn from_result(result: JsonMap) -> Outcome {
        let number = |key: &str| result.get(key).and_then(Value::as_u64).unwrap_or(0);
        let reason = result
            .get("finish_reason")
            .or_else(|| result.get("stop_reason"))
            .and_then(Value::as_str)
            .unwrap_or("stop");
        let embeddings = result
            .get("embeddings")
            .and_then(Value::as_array)
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        row.as_array()
                            .map(|v| v.iter().filter_map(Value::as_f64).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Outcome {
            text: result
                .get("reply")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            finish_reason: if reason == "length" { "length" } else { "stop" },
            prompt_tokens: number("prompt_tokens"),
            completion_tokens: number("completion_tokens"),
            cached_tokens: number("cached_tokens"),
            inference_ms: number("inferenceMs"),
            first_token_ms: result
                .get("time_to_first_token_ms")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            embeddings,
        }
    }
}
