//! `POST /v1/chat/completions` and `POST /v1/completions`: the request, its
//! sampling settings, and the answer whole or as Server-Sent Events chunks.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use modulesettings::GenerationApi;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{now_secs, parse, OpenAiError};
use crate::generation::{self, Outcome, Sampling, Served, Started, Step};
use crate::AppState;

/// `stop`: a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of a chat or completion request modhost reads; others are
/// accepted and ignored.
#[derive(Deserialize)]
struct GenerateRequest {
    model: Option<String>,
    messages: Option<Value>,
    prompt: Option<Value>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    // Fields that change what the answer is or holds: refused rather than
    // ignored, until modhost does them (tool calling, structured output,
    // log probabilities).
    tools: Option<Value>,
    functions: Option<Value>,
    response_format: Option<Value>,
    logprobs: Option<Value>,
}

impl GenerateRequest {
    fn sampling(&self) -> Result<Sampling, OpenAiError> {
        let given = |v: &Option<Value>| {
            v.as_ref().is_some_and(|v| match v {
                Value::Null | Value::Bool(false) => false,
                Value::Array(items) => !items.is_empty(),
                _ => true,
            })
        };
        if given(&self.tools) || given(&self.functions) {
            return Err(OpenAiError::invalid(
                "tool calling is not supported yet: send the request without tools",
                Some("tools"),
            ));
        }
        if given(&self.response_format)
            && self.response_format.as_ref().and_then(|f| f.get("type")) != Some(&json!("text"))
        {
            return Err(OpenAiError::invalid(
                "structured output is not supported yet: response_format may only be {\"type\": \"text\"}",
                Some("response_format"),
            ));
        }
        if given(&self.logprobs) {
            return Err(OpenAiError::invalid(
                "log probabilities are not supported yet: send logprobs false or leave it out",
                Some("logprobs"),
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(OpenAiError::invalid(
                format!(
                    "n is {}: modhost generates one choice per request (n = 1)",
                    self.n.unwrap_or(0)
                ),
                Some("n"),
            ));
        }
        Ok(Sampling {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: None,
            seed: self.seed,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
        })
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, OpenAiError> {
    let request: GenerateRequest = parse(&body)?;
    let messages = match &request.messages {
        Some(Value::Array(m)) if !m.is_empty() => Value::Array(m.clone()),
        Some(Value::Array(_)) => {
            return Err(OpenAiError::invalid("messages is empty", Some("messages")))
        }
        _ => {
            return Err(OpenAiError::invalid(
                "messages is required: an array of {\"role\", \"content\"}",
                Some("messages"),
            ))
        }
    };
    let sampling = request.sampling()?;
    let served = generation::resolve(
        &state.registry,
        GenerationApi::Chat,
        request.model.as_deref(),
    )?;
    let values = generation::values(&[("messages", messages.to_string())], &sampling);
    generate(&state, &req, &served, values, &request, Kind::Chat).await
}

/// `POST /v1/completions`.
pub(super) async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, OpenAiError> {
    let request: GenerateRequest = parse(&body)?;
    let prompt = match &request.prompt {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => {
            return Err(OpenAiError::invalid(
                "prompt must be one string: modhost completes one prompt per request",
                Some("prompt"),
            ))
        }
        _ => {
            return Err(OpenAiError::invalid(
                "prompt is required: a string",
                Some("prompt"),
            ))
        }
    };
    let sampling = request.sampling()?;
    let served = generation::resolve(
        &state.registry,
        GenerationApi::Completion,
        request.model.as_deref(),
    )?;
    let values = generation::values(&[("prompt", prompt)], &sampling);
    generate(&state, &req, &served, values, &request, Kind::Completion).await
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// One choice carrying `text` (a delta when streaming).
    fn choice(self, text: Option<&str>, finish: Option<&str>, stream: bool) -> Value {
        match self {
            Kind::Chat if stream => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Chat => json!({"index": 0, "logprobs": null, "finish_reason": finish,
                                 "message": {"role": "assistant", "content": text.unwrap_or("")}}),
            Kind::Completion => json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null,
                                       "finish_reason": finish}),
        }
    }
}

fn usage(outcome: &Outcome) -> Value {
    json!({
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
    })
}

/// Runs the generation and answers in one piece or as a stream.
async fn generate(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    served: &Served,
    values: crate::payload::RequestValues,
    request: &GenerateRequest,
    kind: Kind,
) -> Result<HttpResponse, OpenAiError> {
    let started = generation::start(state, req, served, values).await?;
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    let id = match &started {
        Started::Job { job, .. } => format!("{prefix}-{}", job.id),
        Started::Done(_) => format!("{prefix}-{}", uuid::Uuid::new_v4()),
    };
    let created = now_secs();
    let model = served.model.clone();
    if !request.stream {
        let outcome = generation::finish(started).await?;
        return Ok(HttpResponse::Ok().json(json!({
            "id": id, "object": kind.object(false), "created": created,
            "model": model, "system_fingerprint": null,
            "choices": [kind.choice(Some(&outcome.text), Some(outcome.finish_reason), false)],
            "usage": usage(&outcome),
        })));
    }
    let chunk = move |choices: Value, usage: Value| -> Bytes {
        let mut body = json!({"id": id, "object": kind.object(true), "created": created,
                              "model": model, "system_fingerprint": null, "choices": choices});
        if !usage.is_null() {
            body["usage"] = usage;
        }
        Bytes::from(format!("data: {body}\n\n"))
    };
    let include_usage = request.include_usage();
    let stream = async_stream(started, kind, include_usage, chunk);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// The SSE chunks of a streamed generation: the role first (chat), a chunk
/// per delta, the finish reason, the usage when asked for, `[DONE]`. A
/// failure midway is a `data: {"error": ...}` chunk, then the end.
fn async_stream(
    started: Started,
    kind: Kind,
    include_usage: bool,
    chunk: impl Fn(Value, Value) -> Bytes + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    enum State {
        First(Started),
        Reading(Started),
        Finished,
    }
    let first = match kind {
        Kind::Chat => Some(chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}]),
            Value::Null,
        )),
        Kind::Completion => None,
    };
    futures_util::stream::unfold(
        (State::First(started), first, chunk),
        move |(state, first, chunk)| async move {
            match state {
                State::First(started) => {
                    let bytes = first.clone().unwrap_or_else(Bytes::new);
                    Some((Ok(bytes), (State::Reading(started), None, chunk)))
                }
                State::Reading(Started::Done(result)) => {
                    // A plain command: its whole text, then the end.
                    let outcome = generation::finish(Started::Done(result)).await.ok()?;
                    let bytes =
                        end_chunks(&chunk, kind, &outcome, include_usage, Some(&outcome.text));
                    Some((Ok(bytes), (State::Finished, None, chunk)))
                }
                State::Reading(Started::Job { job, mut watcher }) => {
                    let bytes = match generation::next_step(&mut watcher).await {
                        Ok(Step::Text(text)) => {
                            let bytes =
                                chunk(json!([kind.choice(Some(&text), None, true)]), Value::Null);
                            return Some((
                                Ok(bytes),
                                (State::Reading(Started::Job { job, watcher }), None, chunk),
                            ));
                        }
                        Ok(Step::Done(outcome)) => {
                            end_chunks(&chunk, kind, &outcome, include_usage, None)
                        }
                        Err(failure) => {
                            let body = OpenAiError::from(failure).body();
                            Bytes::from(format!("data: {body}\n\n"))
                        }
                    };
                    Some((Ok(bytes), (State::Finished, None, chunk)))
                }
                State::Finished => None,
            }
        },
    )
}

/// The last chunks: the finish reason (with `text` for a plain command),
/// the usage chunk when asked for, and `[DONE]`.
fn end_chunks(
    chunk: &impl Fn(Value, Value) -> Bytes,
    kind: Kind,
    outcome: &Outcome,
    include_usage: bool,
    text: Option<&str>,
) -> Bytes {
    let mut out = Vec::new();
    if let Some(text) = text.filter(|t| !t.is_empty()) {
        out.extend_from_slice(&chunk(
            json!([kind.choice(Some(text), None, true)]),
            Value::Null,
        ));
    }
    out.extend_from_slice(&chunk(
        json!([kind.choice(None, Some(outcome.finish_reason), true)]),
        Value::Null,
    ));
    if include_usage {
        out.extend_from_slice(&chunk(json!([]), usage(outcome)));
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(out)
}
