//! The model: [`LlamaEngine`] loads a GGUF once, renders and tokenizes
//! prompts (the model's chat template, through llama.cpp's built-ins,
//! minijinja, or ChatML: `prompt.rs`), prepares chats (checked against the slot's context
//! before anything is decoded) and launches them into its
//! [`Scheduler`], whose one decode loop serves every slot with continuous
//! batching.
//!
//! The backend is initialised once per process ([`backend`]); the model is
//! shared (`Arc<LlamaModel>`) by the decode loop and the embedding contexts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parking_lot::Mutex;

use crate::generation::{
    CancelToken, ChatError, Generation, Generator, GeneratorLoad, PreparedChat,
};
use crate::prompt::PromptFormat;
use crate::request::ChatRequest;
use crate::sampling::{random_seed, SamplingParams};
use crate::scheduler::{Scheduler, SchedulerSpec};
use crate::template::{self, Message};

/// Context size per slot when the configuration does not set one: the
/// model's training context, capped here so a 128k-token model does not
/// allocate a huge KV cache.
pub const DEFAULT_MAX_CONTEXT: u32 = 4096;

/// Slots (chats decoded together) when the configuration does not say.
pub const DEFAULT_PARALLEL: u32 = 4;

/// The llama.cpp backend, initialised on first use, once per process.
///
/// llama.cpp's logs are routed into `tracing` (target `llama-cpp-2`) before the
/// backend starts, so model loading is logged like the rest of the module.
///
/// # Panics
/// If llama.cpp's backend was initialised outside this function (nothing in this
/// crate does that), since `LlamaBackend::init` then refuses a second call.
pub fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().expect("llama.cpp backend is initialised only here, once")
    })
}

/// Serialises context creation: llama-cpp-2 warns that creating contexts from
/// one model concurrently is unsound (llama.cpp mutates the model while
/// creating one). A blocking mutex is right here: callers are plain threads.
static NEW_CONTEXT: Mutex<()> = Mutex::new(());

/// Runs `create` (a llama.cpp context creation) under the lock that keeps
/// two from running at once.
pub(crate) fn with_new_context_lock<T>(create: impl FnOnce() -> T) -> T {
    let _guard = NEW_CONTEXT.lock();
    create()
}

/// Settings of [`LlamaEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// CPU threads of the decode loop (llama.cpp `n_threads` and `n_threads_batch`).
    pub threads: u32,
    /// Context size of each slot in tokens; `None` = the model's training
    /// context capped at [`DEFAULT_MAX_CONTEXT`]; `Some(0)` = the model's
    /// training context.
    pub context_size: Option<u32>,
    /// Most tokens per decode call (prompt chunks share it with the
    /// generating slots' tokens).
    pub batch_size: u32,
    /// Layers to offload to a GPU; `None` = all when llama.cpp was built with GPU
    /// support, else none.
    pub gpu_layers: Option<u32>,
    /// Slots: chats decoded together, each with its own KV of `context_size`.
    pub parallel: u32,
    /// The longest the decode loop, woken from idle, waits for chats that
    /// are on their way before it decodes a burst's prompts
    /// ([`crate::scheduler::GATHER_MAX`] by default).
    pub gather_max: Duration,
    /// Put the model file in the page cache in 2 MiB pages before loading
    /// it, when its weights stay on the CPU ([`crate::hugepages`]).
    pub huge_pages: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            context_size: None,
            batch_size: 512,
            gpu_layers: None,
            parallel: DEFAULT_PARALLEL,
            gather_max: crate::scheduler::GATHER_MAX,
            huge_pages: true,
        }
    }
}

/// [`crate::hugepages::warm`] on the model file, logging what it did: the
/// model loads either way.
fn warm_pages(path: &Path) {
    match crate::hugepages::warm(path) {
        Ok(w) => tracing::info!(
            before = format!("{:.0} %", 100.0 * w.before),
            after = format!("{:.0} %", 100.0 * w.after),
            reread = w.reread,
            took_ms = w.took.as_millis() as u64,
            "model file in 2 MiB pages"
        ),
        Err(e) => tracing::warn!("cannot put the model file in 2 MiB pages: {e}"),
    }
}

/// The number of available cores (at least 1).
#[must_use]
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Errors of [`LlamaEngine::load`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// There is no file at the path.
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    /// llama.cpp could not load the file, or make its context.
    #[error("llama.cpp could not load the model {path}: {reason} (is it a GGUF model file?)")]
    Load {
        /// The model file.
        path: PathBuf,
        /// llama.cpp's error.
        reason: String,
    },
}

/// A GGUF model loaded with llama.cpp, generating in its [`Scheduler`].
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    format: PromptFormat,
    config: EngineConfig,
    /// Context size of each slot, in tokens.
    n_ctx: u32,
    name: String,
    on_gpu: bool,
    scheduler: Scheduler,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("name", &self.name)
            .field("n_ctx", &self.n_ctx)
            .field("format", &self.format.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LlamaEngine {
    /// Loads a GGUF model, picks its prompt format and starts its decode
    /// loop with `config.parallel` slots.
    ///
    /// # Errors
    /// [`LoadError::Missing`] when there is no file, [`LoadError::Load`] when llama.cpp
    /// rejects it or cannot make the context.
    pub fn load(path: &Path, config: EngineConfig) -> Result<Self, LoadError> {
        if !path.is_file() {
            return Err(LoadError::Missing(path.to_path_buf()));
        }
        let backend = backend();
        let gpu_layers = config
            .gpu_layers
            .unwrap_or(if backend.supports_gpu_offload() {
                999
            } else {
                0
            });
        let on_gpu = gpu_layers > 0 && backend.supports_gpu_offload();
        if config.huge_pages && !on_gpu {
            warm_pages(path);
        }
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let failed = |reason: String| LoadError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let model = LlamaModel::load_from_file(backend, path, &params)
            .map_err(|e| failed(e.to_string()))?;
        let train = model.n_ctx_train().max(1);
        let n_ctx = match config.context_size {
            Some(0) => train,
            Some(n) => n,
            None => train.min(DEFAULT_MAX_CONTEXT),
        };
        let name = model
            .meta_val_str("general.name")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_owned());
        let format = PromptFormat::pick(&model);
        let model = Arc::new(model);
        let spec = SchedulerSpec {
            n_ctx_slot: n_ctx,
            slots: config.parallel.max(1),
            n_batch: config.batch_size.clamp(1, n_ctx),
            threads: config.threads.max(1) as i32,
            gather_max: config.gather_max,
        };
        let scheduler = Scheduler::start(Arc::clone(&model), spec).map_err(failed)?;
        tracing::info!(
            model = %name,
            path = %path.display(),
            n_ctx_per_slot = n_ctx,
            slots = spec.slots,
            kv_cache_tokens = spec.kv_tokens(),
            n_ctx_train = train,
            threads = config.threads,
            gpu_layers,
            prompt_format = format.name(),
            "model loaded"
        );
        Ok(Self {
            model,
            format,
            n_ctx,
            name,
            on_gpu,
            config,
            scheduler,
        })
    }

    /// Context size of each slot (one chat's prompt plus reply), in tokens.
    #[must_use]
    pub fn context_size(&self) -> u32 {
        self.n_ctx
    }

    /// Which prompt format the model got: `llama.cpp built-in`, `jinja (minijinja)`
    /// or `ChatML fallback`.
    #[must_use]
    pub fn prompt_format(&self) -> &'static str {
        self.format.name()
    }

    /// The shared model.
    #[must_use]
    pub fn model(&self) -> &Arc<LlamaModel> {
        &self.model
    }

    /// Renders the chat (system prompt, user prompt) into the model's prompt text,
    /// ending with the assistant's opening tag.
    ///
    /// # Errors
    /// [`ChatError::Template`] when the template fails on these messages.
    pub fn render_prompt(&self, system_prompt: &str, prompt: &str) -> Result<String, ChatError> {
        self.render_messages(&template::chat_messages(system_prompt, prompt))
    }

    /// The prompt text of `request`: its `prompt` as it is when `raw`, else
    /// its `messages`, or its system prompt and prompt, rendered.
    ///
    /// # Errors
    /// [`ChatError::Template`] when the template fails on these messages.
    pub fn request_text(&self, request: &ChatRequest) -> Result<String, ChatError> {
        if request.raw {
            Ok(request.prompt.clone())
        } else if request.messages.is_empty() {
            self.render_prompt(&request.system_prompt, &request.prompt)
        } else {
            self.render_messages(&request.messages)
        }
    }

    /// Renders a conversation, ending with the assistant's opening tag.
    ///
    /// # Errors
    /// [`ChatError::Template`] when the template fails on these messages.
    pub fn render_messages(&self, messages: &[Message]) -> Result<String, ChatError> {
        self.format.render(&self.model, messages)
    }

    /// Tokenizes rendered prompt text: special tokens in it are parsed, and BOS is
    /// prepended when the model wants one and the template did not write it.
    #[must_use]
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut tokens = vocab.tokenize(text.as_bytes(), false, true);
        let bos = vocab.bos();
        if vocab.should_add_bos() && tokens.first() != Some(&bos) {
            tokens.insert(0, bos);
        }
        tokens
    }
}

impl Generator for LlamaEngine {
    fn prepare(&self, request: ChatRequest) -> Result<PreparedChat, ChatError> {
        // Counted from here, not once tokenized: the decode loop, woken by
        // another chat of the same burst, then waits for this one too.
        let on_its_way = self.scheduler.on_its_way();
        request.validate()?;
        let text = self.request_text(&request)?;
        let tokens = self.tokenize(&text);
        let prompt_tokens = tokens.len() as u32;
        let context = self.n_ctx;
        if prompt_tokens >= context {
            return Err(ChatError::PromptTooLong {
                prompt_tokens,
                context,
            });
        }
        let room = context - prompt_tokens;
        let max_tokens = match request.max_tokens {
            0 => room,
            n if n > room => {
                return Err(ChatError::MaxTokensBeyondContext {
                    max_tokens: n,
                    prompt_tokens,
                    context,
                })
            }
            n => n,
        };
        Ok(PreparedChat {
            tokens,
            max_tokens,
            sampling: SamplingParams {
                temperature: request.temperature,
                top_p: request.top_p,
                top_k: request.top_k,
                seed: request.seed.unwrap_or_else(random_seed),
            },
            stop: request.stop,
            on_its_way,
        })
    }

    fn launch(&self, chat: PreparedChat, cancel: CancelToken) -> Generation {
        let (sink, generation) = Generation::channel(cancel);
        self.scheduler.submit(chat, sink);
        generation
    }

    fn model_name(&self) -> String {
        self.name.clone()
    }

    fn inference_device(&self) -> String {
        if self.on_gpu { "GPU" } else { "CPU" }.to_owned()
    }

    fn load(&self) -> GeneratorLoad {
        self.scheduler.load()
    }

    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u32), ChatError> {
        crate::embed::embed(&self.model, texts, self.n_ctx, self.config.threads)
    }

    fn token_starts(&self, text: &str) -> Result<Vec<usize>, ChatError> {
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(text.as_bytes(), false, false);
        let pieces: Vec<Vec<u8>> = tokens
            .iter()
            .map(|&t| vocab.token_to_piece(t, false, None))
            .collect();
        Ok(piece_starts(text, &pieces))
    }
}

/// Where each piece starts in `text`, the pieces being the detokenized
/// tokens of it in order. SentencePiece vocabularies add a space before the
/// first word that the text does not have; the offsets are shifted back by
/// it, and clamped to the text.
fn piece_starts(text: &str, pieces: &[Vec<u8>]) -> Vec<usize> {
    let total: usize = pieces.iter().map(Vec::len).sum();
    let added = total.saturating_sub(text.len()).min(usize::from(
        pieces.first().is_some_and(|p| p.first() == Some(&b' ')) && !text.starts_with(' '),
    ));
    let mut at = 0usize;
    pieces
        .iter()
        .map(|piece| {
            let start = at.saturating_sub(added).min(text.len());
            at += piece.len();
            start
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
