//! The document index's API (skills search it through CSI
//! `document-index`; skills/README.md):
//! - `GET /v1/documents`: the collections, `[{namespace, collection}]`;
//! - `GET /v1/documents/{namespace}/{collection}`: the document names;
//! - `PUT /v1/documents/{namespace}/{collection}/{name}`: adds or replaces a
//!   document: `{"contents": [{"modality": "text", "text": ...} |
//!   {"modality": "image"}], "metadata": any JSON}`, or `{"text": ...,
//!   "metadata": ...}` for one text item;
//! - `GET` and `DELETE` of the same path;
//! - `POST /v1/documents/{namespace}/{collection}/search`: `{"query",
//!   "index" (default "bm25"), "max_results" (default 10), "min_score"}`, the
//!   sections a skill's search would get.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use modhost_skills::index::{Document, DocumentPath, Item, Search, BM25_INDEX};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::payload::{read_body, BodyLimits};
use crate::{envelope, AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/documents", web::get().to(collections))
        .route("/documents/{namespace}/{collection}", web::get().to(names))
        .route(
            "/documents/{namespace}/{collection}/search",
            web::post().to(search),
        )
        .route(
            "/documents/{namespace}/{collection}/{name}",
            web::put().to(put),
        )
        .route(
            "/documents/{namespace}/{collection}/{name}",
            web::get().to(get),
        )
        .route(
            "/documents/{namespace}/{collection}/{name}",
            web::delete().to(delete),
        );
}

async fn collections(state: web::Data<AppState>) -> HttpResponse {
    let all: Vec<Value> = state
        .skills
        .index()
        .collections()
        .into_iter()
        .map(|(namespace, collection)| json!({"namespace": namespace, "collection": collection}))
        .collect();
    HttpResponse::Ok().json(envelope(json!({"collections": all})))
}

async fn names(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (namespace, collection) = path.into_inner();
    let names = state
        .skills
        .index()
        .names(&namespace, &collection)
        .ok_or_else(|| no_collection(&namespace, &collection))?;
    Ok(HttpResponse::Ok().json(envelope(json!({"documents": names}))))
}

/// A document as `PUT` accepts it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentBody {
    contents: Option<Vec<Item>>,
    text: Option<String>,
    metadata: Option<Value>,
}

async fn put(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let path = document_path(path.into_inner());
    let body: DocumentBody = read_json(&state, &req, body).await?;
    let contents = match (body.contents, body.text) {
        (Some(contents), None) => contents,
        (None, Some(text)) => vec![Item::Text { text }],
        _ => {
            return Err(ApiError::BadRequest(
                "a document needs either 'contents' (a list of {\"modality\": \"text\", \"text\": ...} \
                 or {\"modality\": \"image\"}) or 'text', not both"
                    .into(),
            ))
        }
    };
    let document = Document {
        contents,
        metadata: body.metadata,
    };
    // Saving writes the collection's file: off the async workers.
    let index = Arc::clone(state.skills.index());
    let name = path.name.clone();
    web::block(move || index.put(&path, document))
        .await
        .map_err(|e| ApiError::Internal(format!("storing the document: {e}")))?
        .map_err(|e| ApiError::BadRequest(e.0))?;
    Ok(HttpResponse::Ok().json(envelope(json!({"document": name}))))
}

async fn get(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let path = document_path(path.into_inner());
    let document = state
        .skills
        .index()
        .get(&path)
        .ok_or_else(|| no_document(&path))?;
    Ok(HttpResponse::Ok().json(envelope(json!({
        "contents": document.contents,
        "metadata": document.metadata,
    }))))
}

async fn delete(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let path = document_path(path.into_inner());
    let index = Arc::clone(state.skills.index());
    let target = path.clone();
    let removed = web::block(move || index.delete(&target))
        .await
        .map_err(|e| ApiError::Internal(format!("deleting the document: {e}")))?
        .map_err(|e| ApiError::Internal(e.0))?;
    if !removed {
        return Err(no_document(&path));
    }
    Ok(HttpResponse::Ok().json(envelope(json!({"deleted": path.name}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    query: String,
    index: Option<String>,
    max_results: Option<u32>,
    min_score: Option<f64>,
}

async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (namespace, collection) = path.into_inner();
    let body: SearchBody = read_json(&state, &req, body).await?;
    let search = Search {
        namespace,
        collection,
        index: body.index.unwrap_or_else(|| BM25_INDEX.into()),
        query: body.query,
        max_results: body.max_results.unwrap_or(10),
        min_score: body.min_score,
        filters: Vec::new(),
    };
    // The first search after a change indexes the collection: CPU work.
    let index = Arc::clone(state.skills.index());
    let hits = web::block(move || index.search(&search))
        .await
        .map_err(|e| ApiError::Internal(format!("searching: {e}")))?
        .map_err(|e| ApiError::NotFound(e.0))?;
    Ok(HttpResponse::Ok().json(envelope(json!({"results": hits}))))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<T, ApiError> {
    let limits = BodyLimits {
        max_bytes: state.config.max_body_bytes,
        max_fields: 0,
        read_timeout: state.config.body_read_timeout,
    };
    let bytes = read_body(req.headers(), body, limits).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

fn document_path((namespace, collection, name): (String, String, String)) -> DocumentPath {
    DocumentPath {
        namespace,
        collection,
        name,
    }
}

fn no_collection(namespace: &str, collection: &str) -> ApiError {
    ApiError::NotFound(format!(
        "there is no collection '{collection}' in namespace '{namespace}'"
    ))
}

fn no_document(path: &DocumentPath) -> ApiError {
    ApiError::NotFound(format!(
        "there is no document '{}' in collection '{}' of namespace '{}'",
        path.name, path.collection, path.namespace
    ))
}
