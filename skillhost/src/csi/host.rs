//! The `pharia:skill` imports, answered: WIT types in, [`Csi`] services
//! called, WIT types out.
//!
//! Logprobs are not produced (LlamaChat does not report them): every
//! `logprobs` list comes back empty, whatever the request asked for.
//! `return-special-tokens` is not honoured: special tokens are never
//! returned.

use std::sync::Arc;

use futures_util::future::try_join_all;

use super::{chunking, language, Csi, Finish, Generate, Generated, Prompt, Sampling};
use crate::bindings::pharia::skill::{
    chunking as wit_chunking, document_index as wit_index, inference as wit_inference,
    language as wit_language,
};
use crate::error::CsiError;
use crate::index::{
    Condition, DocumentIndex, DocumentPath, FieldFilter, Item, Search, SearchFilter,
};
use crate::sandbox::StoreState;

type Result<T> = wasmtime::Result<T>;

fn trap(e: CsiError) -> wasmtime::Error {
    wasmtime::Error::new(e)
}

impl wit_inference::Host for StoreState {
    async fn complete(
        &mut self,
        requests: Vec<wit_inference::CompletionRequest>,
    ) -> Result<Vec<wit_inference::Completion>> {
        let csi = Arc::clone(&self.csi);
        let calls = requests.into_iter().map(|r| Generate {
            model: r.model,
            prompt: Prompt::Text(r.prompt),
            sampling: Sampling {
                max_tokens: r.params.max_tokens,
                temperature: r.params.temperature,
                top_p: r.params.top_p,
                top_k: r.params.top_k,
                stop: r.params.stop,
                frequency_penalty: r.params.frequency_penalty,
                presence_penalty: r.params.presence_penalty,
            },
        });
        Ok(generate_all(&csi, calls)
            .await?
            .into_iter()
            .map(|g| wit_inference::Completion {
                finish_reason: finish_reason(g.finish),
                usage: usage(&g),
                text: g.text,
                logprobs: Vec::new(),
            })
            .collect())
    }

    async fn chat(
        &mut self,
        requests: Vec<wit_inference::ChatRequest>,
    ) -> Result<Vec<wit_inference::ChatResponse>> {
        let csi = Arc::clone(&self.csi);
        let calls = requests.into_iter().map(|r| {
            let messages = r
                .messages
                .into_iter()
                .map(|m| (m.role, m.content))
                .collect();
            Generate {
                model: r.model,
                prompt: Prompt::Chat(messages),
                sampling: Sampling {
                    max_tokens: r.params.max_tokens,
                    temperature: r.params.temperature,
                    top_p: r.params.top_p,
                    top_k: None,
                    stop: Vec::new(),
                    frequency_penalty: r.params.frequency_penalty,
                    presence_penalty: r.params.presence_penalty,
                },
            }
        });
        Ok(generate_all(&csi, calls)
            .await?
            .into_iter()
            .map(|g| wit_inference::ChatResponse {
                finish_reason: finish_reason(g.finish),
                usage: usage(&g),
                message: wit_inference::Message {
                    role: "assistant".into(),
                    content: g.text,
                },
                logprobs: Vec::new(),
            })
            .collect())
    }
}

/// Runs the requests of one batched call concurrently; the results in
/// their order.
async fn generate_all(
    csi: &Csi,
    requests: impl Iterator<Item = Generate>,
) -> Result<Vec<Generated>> {
    try_join_all(requests.map(|r| csi.backend.generate(r)))
        .await
        .map_err(trap)
}

fn finish_reason(finish: Finish) -> wit_inference::FinishReason {
    match finish {
        Finish::Stop => wit_inference::FinishReason::Stop,
        Finish::Length => wit_inference::FinishReason::Length,
    }
}

fn usage(g: &Generated) -> wit_inference::TokenUsage {
    wit_inference::TokenUsage {
        prompt: g.prompt_tokens,
        completion: g.completion_tokens,
    }
}

impl wit_chunking::Host for StoreState {
    async fn chunk(
        &mut self,
        request: Vec<wit_chunking::ChunkRequest>,
    ) -> Result<Vec<Vec<String>>> {
        let csi = Arc::clone(&self.csi);
        let calls = request.into_iter().map(|r| {
            let csi = Arc::clone(&csi);
            async move {
                let wit_chunking::ChunkParams {
                    model,
                    max_tokens,
                    overlap,
                } = r.params;
                // Parameters first: a bad request costs no tokenizer call.
                chunking::check(max_tokens, overlap)?;
                let starts = csi.backend.token_starts(model, r.text.clone()).await?;
                chunking::chunk(&r.text, &starts, max_tokens, overlap)
            }
        });
        try_join_all(calls).await.map_err(trap)
    }
}

impl wit_language::Host for StoreState {
    async fn select_language(
        &mut self,
        request: Vec<wit_language::SelectLanguageRequest>,
    ) -> Result<Vec<Option<String>>> {
        request
            .iter()
            .map(|r| language::select(&r.text, &r.languages).map_err(trap))
            .collect()
    }
}

impl wit_index::Host for StoreState {
    async fn search(
        &mut self,
        requests: Vec<wit_index::SearchRequest>,
    ) -> Result<Vec<Vec<wit_index::SearchResult>>> {
        // The first search after a change indexes the collection: CPU work,
        // off the async runtime.
        let index = Arc::clone(&self.csi.index);
        let searched = tokio::task::spawn_blocking(move || {
            requests
                .into_iter()
                .map(|r| search_one(&index, r))
                .collect()
        });
        searched.await.map_err(wasmtime::Error::new)?
    }

    async fn document_metadata(
        &mut self,
        requests: Vec<wit_index::DocumentPath>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(requests
            .into_iter()
            .map(|p| {
                self.csi
                    .index
                    .get(&path(p))
                    .and_then(|d| d.metadata)
                    .map(|m| m.to_string().into_bytes())
            })
            .collect())
    }

    async fn documents(
        &mut self,
        requests: Vec<wit_index::DocumentPath>,
    ) -> Result<Vec<wit_index::Document>> {
        requests
            .into_iter()
            .map(|p| {
                let document = self.csi.index.get(&path(p.clone())).ok_or_else(|| {
                    trap(CsiError::Request(format!(
                        "document-index: there is no document '{}' in collection '{}' of namespace '{}'",
                        p.name, p.collection, p.namespace
                    )))
                })?;
                Ok(wit_index::Document {
                    path: p,
                    contents: document
                        .contents
                        .into_iter()
                        .map(|item| match item {
                            Item::Text { text } => wit_index::Modality::Text(text),
                            Item::Image => wit_index::Modality::Image,
                        })
                        .collect(),
                    metadata: document.metadata.map(|m| m.to_string().into_bytes()),
                })
            })
            .collect()
    }
}

/// One search request, answered from `index`.
fn search_one(
    index: &DocumentIndex,
    r: wit_index::SearchRequest,
) -> Result<Vec<wit_index::SearchResult>> {
    let search = Search {
        namespace: r.index_path.namespace,
        collection: r.index_path.collection,
        index: r.index_path.index,
        query: r.query,
        max_results: r.max_results,
        min_score: r.min_score,
        filters: r.filters.into_iter().map(search_filter).collect(),
    };
    let hits = index
        .search(&search)
        .map_err(|e| trap(CsiError::Request(e.0)))?;
    Ok(hits
        .into_iter()
        .map(|h| wit_index::SearchResult {
            document_path: wit_index::DocumentPath {
                namespace: search.namespace.clone(),
                collection: search.collection.clone(),
                name: h.document,
            },
            content: h.content,
            score: h.score,
            start: cursor(h.start),
            end: cursor(h.end),
        })
        .collect())
}

fn path(p: wit_index::DocumentPath) -> DocumentPath {
    DocumentPath {
        namespace: p.namespace,
        collection: p.collection,
        name: p.name,
    }
}

fn cursor((item, position): (u32, u32)) -> wit_index::TextCursor {
    wit_index::TextCursor { item, position }
}

fn search_filter(filter: wit_index::SearchFilter) -> SearchFilter {
    let fields =
        |list: Vec<wit_index::MetadataFilter>| list.into_iter().map(field_filter).collect();
    match filter {
        wit_index::SearchFilter::Without(list) => SearchFilter::Without(fields(list)),
        wit_index::SearchFilter::WithOneOf(list) => SearchFilter::WithOneOf(fields(list)),
        wit_index::SearchFilter::WithAll(list) => SearchFilter::WithAll(fields(list)),
    }
}

fn field_filter(filter: wit_index::MetadataFilter) -> FieldFilter {
    use wit_index::MetadataFilterCondition as C;
    let condition = match filter.condition {
        C::GreaterThan(x) => Condition::GreaterThan(x),
        C::GreaterThanOrEqualTo(x) => Condition::GreaterThanOrEqualTo(x),
        C::LessThan(x) => Condition::LessThan(x),
        C::LessThanOrEqualTo(x) => Condition::LessThanOrEqualTo(x),
        C::After(t) => Condition::After(t),
        C::AtOrAfter(t) => Condition::AtOrAfter(t),
        C::Before(t) => Condition::Before(t),
        C::AtOrBefore(t) => Condition::AtOrBefore(t),
        C::EqualTo(value) => Condition::EqualTo(match value {
            wit_index::MetadataFieldValue::StringType(s) => s.into(),
            wit_index::MetadataFieldValue::IntegerType(i) => i.into(),
            wit_index::MetadataFieldValue::BooleanType(b) => b.into(),
        }),
        C::IsNull => Condition::IsNull,
    };
    FieldFilter {
        field: filter.field,
        condition,
    }
}
