//! `POST /api/chat` and `POST /api/generate`: the request and its options,
//! and the answer whole or as newline-delimited JSON.

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use modulesettings::GenerationApi;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{now_rfc3339, parse, OllamaError};
use crate::generation::{self, Outcome, Sampling, Served, Started, Step};
use crate::AppState;

/// Ollama's `options` that modhost passes on.
#[derive(Deserialize, Default)]
struct Options {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    seed: Option<u64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
}

impl Options {
    fn sampling(&self) -> Sampling {
        Sampling {
            // Ollama's -1 (and -2) mean "no limit": the module's 0.
            max_tokens: self.num_predict.map(|n| u64::try_from(n).unwrap_or(0)),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone().unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct GenerateRequest {
    model: Option<String>,
    messages: Option<Value>,
    prompt: Option<String>,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    #[serde(default)]
    options: Options,
    // Refused rather than ignored, until modhost does them.
    format: Option<Value>,
    images: Option<Vec<Value>>,
    tools: Option<Vec<Value>>,
}

impl GenerateRequest {
    /// # Errors
    /// 400 naming a field modhost does not do yet (`format`, `images`,
    /// `tools`, and images inside messages).
    fn check_supported(&self) -> Result<(), OllamaError> {
        if self
            .format
            .as_ref()
            .is_some_and(|f| !f.is_null() && f.as_str() != Some(""))
        {
            return Err(OllamaError::bad(
                "format (structured output) is not supported yet: send the request without it",
            ));
        }
        let images_in_messages = self
            .messages
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|m| {
                m.iter().any(|m| {
                    m.get("images")
                        .and_then(Value::as_array)
                        .is_some_and(|i| !i.is_empty())
                })
            });
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) || images_in_messages {
            return Err(OllamaError::bad(
                "images are not supported: modhost's chat models read text",
            ));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(OllamaError::bad(
                "tool calling is not supported yet: send the request without tools",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

/// `POST /api/chat`.
pub(super) async fn chat(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, OllamaError> {
    let request: GenerateRequest = parse(&body)?;
    request.check_supported()?;
    let messages = match &request.messages {
        Some(Value::Array(m)) if !m.is_empty() => Value::Array(m.clone()),
        Some(Value::Array(_)) | None => {
            // Ollama loads the model for an empty chat and answers done.
            let served = generation::resolve(
                &state.registry,
                GenerationApi::Chat,
                request.model.as_deref(),
            )?;
            return Ok(HttpResponse::Ok().json(json!({
                "model": served.model, "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": ""}, "done_reason": "load", "done": true,
            })));
        }
        Some(_) => {
            return Err(OllamaError::bad(
                "messages must be an array of {\"role\", \"content\"}",
            ))
        }
    };
    let served = generation::resolve(
        &state.registry,
        GenerationApi::Chat,
        request.model.as_deref(),
    )?;
    let values = generation::values(
        &[("messages", messages.to_string())],
        &request.options.sampling(),
    );
    run(
        &state,
        &req,
        &served,
        values,
        request.stream.unwrap_or(true),
        Kind::Chat,
    )
    .await
}

/// `POST /api/generate`: through the module's completion route when `raw`,
/// else its chat route (with `system` as the system message).
pub(super) async fn generate(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, OllamaError> {
    let request: GenerateRequest = parse(&body)?;
    request.check_supported()?;
    let api = if request.raw {
        GenerationApi::Completion
    } else {
        GenerationApi::Chat
    };
    let served = generation::resolve(&state.registry, api, request.model.as_deref())?;
    let prompt = request.prompt.clone().unwrap_or_default();
    if prompt.is_empty() {
        return Ok(HttpResponse::Ok().json(json!({
            "model": served.model, "created_at": now_rfc3339(), "response": "",
            "done_reason": "load", "done": true,
        })));
    }
    let content = if request.raw {
        ("prompt", prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = request.system.as_deref().filter(|s| !s.is_empty()) {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        ("messages", Value::Array(messages).to_string())
    };
    let values = generation::values(&[content], &request.options.sampling());
    run(
        &state,
        &req,
        &served,
        values,
        request.stream.unwrap_or(true),
        Kind::Generate,
    )
    .await
}

/// One answer object: a piece of text, or (with `outcome`) the last one.
fn piece(kind: Kind, model: &str, text: &str, outcome: Option<(&Outcome, u128)>) -> Value {
    let mut body = match kind {
        Kind::Chat => json!({"model": model, "created_at": now_rfc3339(),
                             "message": {"role": "assistant", "content": text}, "done": false}),
        Kind::Generate => json!({"model": model, "created_at": now_rfc3339(),
                                 "response": text, "done": false}),
    };
    if let Some((outcome, total_ns)) = outcome {
        let inference_ns = u128::from(outcome.inference_ms) * 1_000_000;
        let prompt_ns = (outcome.first_token_ms * 1e6) as u128;
        body["done"] = json!(true);
        body["done_reason"] = json!(outcome.finish_reason);
        body["total_duration"] = json!(total_ns.max(inference_ns) as u64);
        body["load_duration"] = json!(0);
        body["prompt_eval_count"] = json!(outcome.prompt_tokens);
        body["prompt_eval_duration"] = json!(prompt_ns as u64);
        body["eval_count"] = json!(outcome.completion_tokens);
        body["eval_duration"] = json!(inference_ns.saturating_sub(prompt_ns) as u64);
    }
    body
}

async fn run(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    served: &Served,
    values: crate::payload::RequestValues,
    stream: bool,
    kind: Kind,
) -> Result<HttpResponse, OllamaError> {
    let begun = std::time::Instant::now();
    let started = generation::start(state, req, served, values).await?;
    let model = served.model.clone();
    if !stream {
        let outcome = generation::finish(started).await?;
        return Ok(HttpResponse::Ok().json(piece(
            kind,
            &model,
            &outcome.text,
            Some((&outcome, begun.elapsed().as_nanos())),
        )));
    }
    let line = |value: Value| Bytes::from(format!("{value}\n"));
    let lines = futures_util::stream::unfold(Some(started), move |state| {
        let model = model.clone();
        async move {
            let bytes = match state? {
                Started::Done(result) => {
                    let outcome = generation::finish(Started::Done(result)).await.ok()?;
                    let mut out = line(piece(kind, &model, &outcome.text, None)).to_vec();
                    out.extend_from_slice(&line(piece(
                        kind,
                        &model,
                        "",
                        Some((&outcome, begun.elapsed().as_nanos())),
                    )));
                    return Some((Ok::<_, actix_web::Error>(Bytes::from(out)), None));
                }
                Started::Job { job, mut watcher } => {
                    match generation::next_step(&mut watcher).await {
                        Ok(Step::Text(text)) => {
                            let bytes = line(piece(kind, &model, &text, None));
                            return Some((Ok(bytes), Some(Started::Job { job, watcher })));
                        }
                        Ok(Step::Done(outcome)) => line(piece(
                            kind,
                            &model,
                            "",
                            Some((&outcome, begun.elapsed().as_nanos())),
                        )),
                        Err(failure) => line(OllamaError::from(failure).json()),
                    }
                }
            };
            Some((Ok(bytes), None))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(lines))
}
