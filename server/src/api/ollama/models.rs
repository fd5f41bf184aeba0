//! `GET /api/tags`, `GET /api/ps`, `POST /api/show` and `POST /api/embed`.

use std::time::SystemTime;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use modulesettings::GenerationApi;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, OllamaError};
use crate::generation::{self, ModelError, Sampling, Served};
use crate::AppState;

/// `POST /api/embed`: `input` a string or an array of strings.
pub(super) async fn embed(
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
pub(super) async fn tags(state: web::Data<AppState>) -> HttpResponse {
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
pub(super) async fn ps(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<Value> = unique(&state)
        .iter()
        .filter(|s| s.module.state().status == crate::registry::ModuleStatus::Started)
        .map(|s| json!({"name": s.model, "model": s.model, "size": 0, "digest": "",
                        "details": details(s), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0}))
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

/// `POST /api/show`: `model` (or the older `name`).
pub(super) async fn show(
    state: web::Data<AppState>,
    body: Bytes,
) -> Result<HttpResponse, OllamaError> {
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
