//! The Ollama-compatible API over the modules' generation routes
//! (docs/protocol.md §4.7, `crate::generation`), under `/api` as Ollama
//! serves it: `POST /api/chat` and `/api/generate` (newline-delimited JSON
//! while generating unless `"stream": false`), `GET /api/tags`,
//! `POST /api/show`, `GET /api/ps`, `GET /api/version`, `POST /api/embed`.
//! Durations are in nanoseconds, as Ollama gives them. Errors are
//! `{"error": "<message>"}`. Ollama's model management routes (`pull`,
//! `push`, `create`, `copy`, `delete`, blobs) answer 501 naming what modhost
//! serves instead.

use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use modhost_protocol::Failure;
use modulesettings::GenerationApi;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::generation::{self, ModelError, Outcome, Sampling, Served, Started, Step};
use crate::AppState;

/// The Ollama API version modhost answers `/api/version` with: the one whose
/// shapes it follows.
pub const OLLAMA_API_VERSION: &str = "0.6.0";

/// Largest request body, in bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What modhost serves of Ollama's API, for the answer to the rest.
const SUPPORTED: &str =
    "modhost serves /api/chat, /api/generate, /api/embed, /api/tags, /api/show, \
     /api/ps and /api/version; models are modules: put a GGUF in a module's models folder \
     (modules/llama_chat/README.md)";

pub fn configure(cfg: &mut web::ServiceConfig) {
    let post = |path: &str| web::resource(path).app_data(web::PayloadConfig::new(MAX_BODY));
    cfg.service(post("/api/chat").route(web::post().to(chat)))
        .service(post("/api/generate").route(web::post().to(generate)))
        .service(post("/api/embed").route(web::post().to(embed)))
        .service(post("/api/show").route(web::post().to(show)))
        .route("/api/tags", web::get().to(tags))
        .route("/api/ps", web::get().to(ps))
        .route("/api/version", web::get().to(version))
        .route("/api/{rest:.*}", web::route().to(unsupported));
}

/// An error in Ollama's shape.
#[derive(Debug)]
pub struct OllamaError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl OllamaError {
    fn bad(message: impl Into<String>) -> OllamaError {
        OllamaError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A refused API key (the access check), in Ollama's shape.
    pub fn unauthorized(message: String) -> OllamaError {
        OllamaError {
            status: StatusCode::UNAUTHORIZED,
            message,
            retry_after: None,
        }
    }

    fn json(&self) -> Value {
        json!({"error": self.message})
    }
}

impl std::fmt::Display for OllamaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for OllamaError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.json(self.json())
    }
}

impl From<ModelError> for OllamaError {
    fn from(err: ModelError) -> OllamaError {
        OllamaError {
            status: StatusCode::NOT_FOUND,
            message: err.to_string(),
            retry_after: None,
        }
    }
}

impl From<Failure> for OllamaError {
    fn from(failure: Failure) -> OllamaError {
        let (status, retry_after) = generation::failure_status(failure.kind);
        OllamaError {
            status,
            message: failure.message,
            retry_after,
        }
    }
}

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

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, OllamaError> {
    serde_json::from_slice(body)
        .map_err(|e| OllamaError::bad(format!("the request body is not the expected JSON: {e}")))
}

fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

/// `POST /api/chat`.
async fn chat(
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
async fn generate(
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

/// `POST /api/embed`: `input` a string or an array of strings.
async fn embed(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, OllamaError> {
    #[derive(Deserialize)]
    struct EmbedRequest {
        model: Option<String>,
        input: Option<Value>,
    }
    let request: EmbedRequest = parse(&body)?;
    let input = generation::embedding_input(request.input).map_err(OllamaError::bad)?;
    let begun = std::time::Instant::now();
    let served = generation::resolve(
        &state.registry,
        GenerationApi::Embedding,
        request.model.as_deref(),
    )?;
    let values = generation::values(&[("input", input)], &Sampling::default());
    let outcome =
        generation::finish(generation::start(&state, &req, &served, values).await?).await?;
    Ok(HttpResponse::Ok().json(json!({
        "model": served.model, "embeddings": outcome.embeddings,
        "total_duration": begun.elapsed().as_nanos() as u64, "load_duration": 0,
        "prompt_eval_count": outcome.prompt_tokens,
    })))
}

/// A model as `/api/tags`, `/api/ps` and `/api/show` describe it.
fn details(served: &Served) -> Value {
    let data = served.module.state().status_data.unwrap_or(Value::Null);
    json!({"parent_model": "", "format": "gguf",
           "family": data.get("family").cloned().unwrap_or(json!("")),
           "families": null,
           "parameter_size": data.get("parameterSize").cloned().unwrap_or(json!("")),
           "quantization_level": data.get("quantization").cloned().unwrap_or(json!(""))})
}

/// One entry per model name.
fn unique(state: &AppState) -> Vec<Served> {
    let mut seen = std::collections::HashSet::new();
    generation::served(state)
        .into_iter()
        .filter(|s| seen.insert(s.model.to_ascii_lowercase()))
        .collect()
}

fn modified(served: &Served) -> String {
    let started = served
        .module
        .state()
        .started
        .unwrap_or_else(SystemTime::now);
    chrono::DateTime::<chrono::Utc>::from(started)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `GET /api/tags`.
async fn tags(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<Value> = unique(&state)
        .iter()
        .map(|s| {
            json!({"name": s.model, "model": s.model, "modified_at": modified(s),
                        "size": 0, "digest": "", "details": details(s)})
        })
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

/// `GET /api/ps`: the models whose modules run now (modhost keeps them
/// loaded while their module runs).
async fn ps(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<Value> = unique(&state)
        .iter()
        .filter(|s| s.module.state().status == crate::registry::ModuleStatus::Started)
        .map(|s| json!({"name": s.model, "model": s.model, "size": 0, "digest": "",
                        "details": details(s), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0}))
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

/// `POST /api/show`: `model` (or the older `name`).
async fn show(state: web::Data<AppState>, body: Bytes) -> Result<HttpResponse, OllamaError> {
    #[derive(Deserialize)]
    struct ShowRequest {
        model: Option<String>,
        name: Option<String>,
    }
    let request: ShowRequest = parse(&body)?;
    let name = request
        .model
        .or(request.name)
        .ok_or_else(|| OllamaError::bad("model is required"))?;
    let all = generation::served(&state);
    let mine: Vec<&Served> = all
        .iter()
        .filter(|s| {
            s.model.eq_ignore_ascii_case(&name)
                || name
                    .strip_suffix(":latest")
                    .is_some_and(|n| s.model.eq_ignore_ascii_case(n))
                || s.module.id().eq_ignore_ascii_case(&name)
        })
        .collect();
    let Some(first) = mine.first() else {
        return Err(ModelError::NotFound {
            model: name,
            api: "any API",
        }
        .into());
    };
    let capabilities: Vec<&str> = mine
        .iter()
        .filter_map(|s| match s.api {
            GenerationApi::Chat | GenerationApi::Completion => Some("completion"),
            GenerationApi::Embedding => Some("embedding"),
            GenerationApi::Tokenize => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let info = first.module.state().status_data.unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(json!({
        "modelfile": "", "parameters": "", "template": "", "license": "",
        "details": details(first), "model_info": info, "capabilities": capabilities,
        "modified_at": modified(first),
    })))
}

/// `GET /api/version`.
async fn version() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"version": OLLAMA_API_VERSION, "modhost": env!("CARGO_PKG_VERSION")}))
}

/// Ollama's other routes: 501, naming what modhost serves.
async fn unsupported(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotImplemented().json(json!({
        "error": format!("{} {} is not supported: {SUPPORTED}", req.method(), req.path()),
    }))
}
