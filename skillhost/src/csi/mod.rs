//! The Cognitive System Interface (CSI): what a skill may ask of the host
//! through the `pharia:skill` imports.
//!
//! - `inference` (chat, complete) and the token offsets `chunking` needs go
//!   to a [`Backend`] the server implements with its modules;
//! - `chunking` cuts with `text-splitter` ([`chunking`]);
//! - `language` detects with `whatlang` ([`language`]);
//! - `document-index` searches the built-in [`DocumentIndex`].
//!
//! A skill's batched call (a list of requests) is answered concurrently,
//! in order. A call that cannot be answered returns a [`CsiError`], which
//! traps the skill: the run fails with that error.

pub mod chunking;
mod host;
pub mod language;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::CsiError;
use crate::index::DocumentIndex;

/// What the host's modules answer for skills: generation, and the model's
/// tokenizer.
pub trait Backend: Send + Sync + 'static {
    /// Generates for one request: a chat (`Prompt::Chat`) or a completion
    /// (`Prompt::Text`) with `request.model`.
    ///
    /// # Errors
    /// [`CsiError::Request`] for an unknown model or a refused request;
    /// [`CsiError::Unavailable`] when the serving module cannot answer.
    fn generate(&self, request: Generate) -> BoxFuture<'static, Result<Generated, CsiError>>;

    /// The byte offsets in `text` at which `model`'s tokens of it start,
    /// ascending.
    ///
    /// # Errors
    /// As [`Backend::generate`].
    fn token_starts(
        &self,
        model: String,
        text: String,
    ) -> BoxFuture<'static, Result<Vec<usize>, CsiError>>;
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    /// The model's name (empty: the first model that serves the API).
    pub model: String,
    pub prompt: Prompt,
    pub sampling: Sampling,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// `(role, content)` messages, rendered with the model's chat template.
    Chat(Vec<(String, String)>),
    /// Text continued as it is.
    Text(String),
}

/// The sampling parameters of the WIT's `chat-params` and
/// `completion-params`, each `None` for the module's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended, or a stop string was met.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
}

/// The CSI services one skill run uses.
pub struct Csi {
    pub backend: Arc<dyn Backend>,
    pub index: Arc<DocumentIndex>,
}
