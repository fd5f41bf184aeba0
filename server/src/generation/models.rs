//! The models clients can name: every module route that implements a
//! generation API (`Implements` in its manifest), named by the module's
//! `model` status field, and how a request's model name picks one.

use std::sync::Arc;

use modulesettings::{GenerationApi, RouteMap};
use serde_json::Value;

use crate::registry::{Module, Registry};
use crate::AppState;

/// A model clients can name: a module route that implements an API.
#[derive(Clone)]
pub struct Served {
    /// The name clients see and send: the module's `model` status field
    /// (LlamaChat: the GGUF's name), else the module id.
    pub model: String,
    pub module: Arc<Module>,
    pub route: RouteMap,
    pub api: GenerationApi,
}

/// Why a request names no model that can serve it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No module serves this model with this API.
    #[error("the model '{model}' does not exist or does not serve {api}; GET /v1/models lists the models")]
    NotFound { model: String, api: &'static str },
    /// No module implements the API at all.
    #[error("no running module serves {0}: a module declares it with \"Implements\" on a route (docs/protocol.md §4.7)")]
    NoModule(&'static str),
}

/// The API's name in messages.
pub fn api_name(api: GenerationApi) -> &'static str {
    match api {
        GenerationApi::Chat => "chat",
        GenerationApi::Completion => "completions",
        GenerationApi::Embedding => "embeddings",
        GenerationApi::Tokenize => "tokenize",
    }
}

/// The model name of a module: its `model` status field, else its id.
pub fn model_name(module: &Module) -> String {
    module
        .state()
        .status_data
        .as_ref()
        .and_then(|d| d.get("model"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(|| module.id().to_owned(), str::to_owned)
}

/// Every route of a module that accepts commands and implements an API, in
/// module order: the models clients can use now.
pub fn served(state: &AppState) -> Vec<Served> {
    routes(&state.registry, true)
}

/// Every route that implements an API, of running modules only or of all.
fn routes(registry: &Registry, running_only: bool) -> Vec<Served> {
    registry
        .modules()
        .iter()
        .filter(|m| !running_only || m.state().status.accepts_commands())
        .flat_map(|module| {
            let model = model_name(module);
            module
                .manifest
                .settings
                .route_maps
                .iter()
                .filter_map(move |route| {
                    route.implements.map(|api| Served {
                        model: model.clone(),
                        module: Arc::clone(module),
                        route: route.clone(),
                        api,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The route serving `api` for `model` (its name or its module's id, any
/// letter case); without a model, the first one. Running modules come
/// first; a module that is not running is found too, so that the command
/// fails with `module_not_running` (503) rather than an unknown model.
///
/// # Errors
/// [`ModelError`] when none serves it.
pub fn resolve(
    registry: &Registry,
    api: GenerationApi,
    model: Option<&str>,
) -> Result<Served, ModelError> {
    let mut candidates: Vec<Served> = routes(registry, false)
        .into_iter()
        .filter(|s| s.api == api)
        .collect();
    candidates.sort_by_key(|s| !s.module.state().status.accepts_commands());
    let model = model.map(str::trim).filter(|m| !m.is_empty());
    let found = match model {
        None => candidates.into_iter().next(),
        Some(name) => {
            let empty = candidates.is_empty();
            let found = candidates.into_iter().find(|s| {
                s.model.eq_ignore_ascii_case(name)
                    || s.module.id().eq_ignore_ascii_case(name)
                    // Ollama clients add a tag: "name:latest".
                    || name
                        .strip_suffix(":latest")
                        .is_some_and(|n| s.model.eq_ignore_ascii_case(n))
            });
            if found.is_none() && !empty {
                return Err(ModelError::NotFound {
                    model: name.to_owned(),
                    api: api_name(api),
                });
            }
            found
        }
    };
    found.ok_or(ModelError::NoModule(api_name(api)))
}
