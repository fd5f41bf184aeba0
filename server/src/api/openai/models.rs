//! `GET /v1/models`, `GET /v1/models/{id}` and `POST /v1/embeddings`.

use std::time::UNIX_EPOCH;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use modulesettings::GenerationApi;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, OpenAiError};
use crate::generation::{self, ModelError, Sampling};
use crate::AppState;

/// `POST /v1/embeddings`: `input` a string or an array of strings.
pub(super) async fn embeddings(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, OpenAiError> {
    #[derive(Deserialize)]
    struct EmbeddingRequest {
        model: Option<String>,
        input: Option<Value>,
    }
    let request: EmbeddingRequest = parse(&body)?;
    let input = generation::embedding_input(request.input)
        .map_err(|why| OpenAiError::invalid(why, Some("input")))?;
    let served = generation::resolve(
        &state.registry,
        GenerationApi::Embedding,
        request.model.as_deref(),
    )?;
    let values = generation::values(&[("input", input)], &Sampling::default());
    let started = generation::start(&state, &req, &served, values).await?;
    let outcome = generation::finish(started).await?;
    let data: Vec<Value> = outcome
        .embeddings
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list", "data": data, "model": served.model,
        "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens},
    })))
}

/// The models clients can name, one entry per model.
fn model_list(state: &AppState) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    generation::served(state)
        .into_iter()
        .filter(|s| seen.insert(s.model.to_ascii_lowercase()))
        .map(|s| {
            let created = s
                .module
                .state()
                .started
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            json!({"id": s.model, "object": "model", "created": created, "owned_by": s.module.id()})
        })
        .collect()
}

/// `GET /v1/models`.
pub(super) async fn models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": model_list(&state)}))
}

/// `GET /v1/models/{id}`.
pub(super) async fn model(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, OpenAiError> {
    let id = path.into_inner();
    model_list(&state)
        .into_iter()
        .find(|m| {
            m["id"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&id))
        })
        .map(|m| HttpResponse::Ok().json(m))
        .ok_or_else(|| {
            OpenAiError::from(ModelError::NotFound {
                model: id,
                api: "any API",
            })
        })
}
