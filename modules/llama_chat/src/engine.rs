//! The chat engine: a [`Generator`] trait and its llama.cpp implementation.
//!
//! The loop follows llama-cpp-rs's `examples/simple`: the backend is initialised once
//! per process ([`backend`]), the model is loaded once and shared (`Arc<LlamaModel>`),
//! and each chat runs on its own thread that owns a fresh context and sampler (neither
//! is `Send`). The prompt is rendered with the model's chat template, tokenized and
//! checked against the context before anything is decoded; it is decoded in chunks of
//! `n_batch` tokens and the reply one token at a time, with a cancel flag checked
//! between chunks and tokens. Pieces go through a stateful UTF-8 decoder and a
//! stop-string filter and are streamed to the caller over a bounded channel as
//! [`GenerationEvent`]s.
//!
//! Each engine has one generation thread, started with it, which owns the llama.cpp
//! context and runs chats one after another: threads × contexts never exceed the
//! configured threads, the context (and its KV cache) is allocated once and cleared
//! between chats, and llama.cpp's worker threads are reused. A chat started while
//! another finishes (for example right after a cancel, which lands within one token)
//! waits in the thread's bounded queue and then runs.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use parking_lot::Mutex;

use crate::template::{self, JinjaTemplate, Message};
use crate::text::{StopFilter, Utf8Stream};

/// Capacity of a generation's event channel. Small, so that a cancel is not hidden
/// behind many already-produced pieces, and the generator runs at most this far ahead
/// of a slow reader.
pub const EVENT_CHANNEL_CAPACITY: usize = 16;

/// Context size used when the configuration does not set one: the model's training
/// context, capped here so a 128k-token model does not allocate a huge KV cache.
pub const DEFAULT_MAX_CONTEXT: u32 = 4096;

/// Largest accepted temperature.
pub const MAX_TEMPERATURE: f32 = 2.0;

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

/// Serialises `new_context`: llama-cpp-2 warns that creating contexts from one model
/// concurrently is unsound (llama.cpp mutates the model while creating one). A
/// std-style blocking mutex is right here: this is a plain thread, not async code.
static NEW_CONTEXT: Mutex<()> = Mutex::new(());

/// Why a reply ended, in detail; the result's `finish_reason`. (Its
/// `stop_reason` keeps CodeProject's two values: see [`FinishReason::stop_reason`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` (or the end of the context) was reached.
    Length,
    /// A stop string appeared; it is not part of the reply.
    StopString,
    /// The caller cancelled.
    Cancelled,
}

impl FinishReason {
    /// The wire name: `stop`, `length`, `stop_string` or `cancelled`, as
    /// OpenAI's `finish_reason` names the first two.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::StopString => "stop_string",
            Self::Cancelled => "cancelled",
        }
    }

    /// CodeProject LlamaChat's `stop_reason`: `cancelled` when the caller
    /// stopped the reply, else `completed`, whatever ended it; clients test
    /// `stop_reason == "completed"`.
    #[must_use]
    pub const fn stop_reason(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            _ => "completed",
        }
    }
}

/// One chat turn (or raw completion) to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The user's message; must not be empty unless `messages` are given.
    /// With `raw`, the whole prompt text.
    pub prompt: String,
    /// System prompt; left out of the chat when empty. Not used with
    /// `messages` or `raw`.
    pub system_prompt: String,
    /// A whole conversation (roles `system`, `user`, `assistant`) to render
    /// with the chat template instead of `system_prompt` and `prompt`.
    pub messages: Vec<Message>,
    /// `prompt` is sent to the model as it is, without the chat template
    /// (a completion).
    pub raw: bool,
    /// Most tokens to generate; 0 = as many as the context has room for.
    pub max_tokens: u32,
    /// Sampling temperature, `0..=2`; 0 = greedy (deterministic).
    pub temperature: f32,
    /// Nucleus sampling, `(0, 1]`; 1 = off.
    pub top_p: f32,
    /// Top-k sampling; 0 = off.
    pub top_k: u32,
    /// Sampler seed; `None` = a fresh random seed. The same seed, model and request
    /// give the same reply.
    pub seed: Option<u32>,
    /// Stop strings: the reply ends before the first one that appears.
    pub stop: Vec<String>,
}

impl Default for ChatRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            system_prompt: String::new(),
            messages: Vec::new(),
            raw: false,
            max_tokens: 0,
            temperature: 0.4,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            stop: Vec::new(),
        }
    }
}

impl ChatRequest {
    /// A request for `prompt` with the other fields at their defaults.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// Checks the ranges documented on the fields.
    ///
    /// # Errors
    /// [`ChatError::InvalidRequest`] naming the field and the accepted range.
    pub fn validate(&self) -> Result<(), ChatError> {
        let invalid = |m: String| Err(ChatError::InvalidRequest(m));
        if self.messages.is_empty() && self.prompt.trim().is_empty() {
            return invalid("prompt is empty".into());
        }
        if !(0.0..=MAX_TEMPERATURE).contains(&self.temperature) {
            return invalid(format!(
                "temperature {} is outside 0..={MAX_TEMPERATURE}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p {} is outside (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// Statistics of a finished (or cancelled) reply.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Why the reply ended.
    pub finish_reason: FinishReason,
    /// Tokens of the rendered prompt (template included).
    pub prompt_tokens: u32,
    /// Tokens generated into the reply (an end-of-generation token is not counted).
    pub completion_tokens: u32,
    /// Milliseconds from getting the engine to the end: prompt processing plus
    /// generation (not the wait for a previous chat to finish).
    pub inference_ms: u64,
    /// Generated tokens per second after the prompt was processed; 0 with no tokens.
    pub tokens_per_second: f64,
    /// Milliseconds from getting the engine to the first sampled token; 0 when none
    /// was sampled.
    pub time_to_first_token_ms: f64,
    /// The sampler seed used (the request's, or the random one picked).
    pub seed: u32,
}

/// What a generation streams to its reader.
#[derive(Debug)]
pub enum GenerationEvent {
    /// More reply text (complete UTF-8 characters, stop strings already removed).
    Piece(String),
    /// The reply ended normally or by cancel; this is the last event.
    Done(Summary),
    /// The generation failed; this is the last event.
    Failed(ChatError),
}

/// Errors of chat generation. Messages are written for the person who sent the chat.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// A request field is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The rendered prompt does not fit the context.
    #[error("prompt is {prompt_tokens} tokens but the context holds {context} (a reply needs at least one more)")]
    PromptTooLong {
        /// Tokens of the rendered prompt.
        prompt_tokens: u32,
        /// Context size in tokens.
        context: u32,
    },
    /// Prompt plus `max_tokens` does not fit the context.
    #[error("max_tokens {max_tokens} does not fit: the prompt is {prompt_tokens} tokens and the context holds {context}, so at most {} tokens can be generated (or send max_tokens 0 for as many as fit)", .context - .prompt_tokens)]
    MaxTokensBeyondContext {
        /// Requested reply length.
        max_tokens: u32,
        /// Tokens of the rendered prompt.
        prompt_tokens: u32,
        /// Context size in tokens.
        context: u32,
    },
    /// Too many chats are already waiting for the engine.
    #[error("the engine is busy: {0} chats are already waiting")]
    Busy(usize),
    /// The chat template could not be applied.
    #[error("{0}")]
    Template(String),
    /// llama.cpp failed (context creation, decoding).
    #[error("llama.cpp: {0}")]
    Engine(String),
    /// The generation thread ended without reporting a result.
    #[error("the generation stopped unexpectedly")]
    Disconnected,
}

/// A shared cancel flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks the generation to stop; it does so before the next token.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::cancel`] was called.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How many tokens a generation has produced so far, shared between its producer
/// ([`GenerationSink::count_token`]) and its readers. Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct TokenCount(Arc<AtomicU32>);

impl TokenCount {
    /// The tokens counted so far.
    #[must_use]
    pub fn get(&self) -> u32 {
        // SeqCst, like the cancel flag: a count read after a cancel covers every
        // token produced before the producer could see that cancel.
        self.0.load(Ordering::SeqCst)
    }
}

/// A chat's generation: read its events, cancel it. Dropping it cancels it.
///
/// An engine may hand the chat to its generation thread only when the
/// generation is first read (or [`Generation::begin`] is called), so that the
/// caller can answer its own client first without competing with the
/// generation for the cores.
pub struct Generation {
    events: Receiver<GenerationEvent>,
    cancel: CancelToken,
    /// Tokens produced so far, for [`Self::tokens_generated`].
    tokens: TokenCount,
    /// Starts the chat; taken on the first read, `begin` or drop.
    // parking_lot: taken once, never held while waiting.
    launch: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("begun", &self.launch.lock().is_none())
            .finish_non_exhaustive()
    }
}

/// The producing end of a [`Generation`], for engines (real or fake).
#[derive(Debug)]
pub struct GenerationSink {
    events: Sender<GenerationEvent>,
    cancel: CancelToken,
    /// Shared with the [`Generation`]: what [`Self::count_token`] counts.
    tokens: TokenCount,
}

impl GenerationSink {
    /// Whether the reader cancelled (or dropped) the generation.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Counts one generated token and returns the total so far. Call it as soon as
    /// the token is sampled, before its piece is sent, so that
    /// [`Generation::tokens_generated`] never lags behind the pieces.
    pub fn count_token(&self) -> u32 {
        self.tokens.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The tokens counted so far with [`Self::count_token`].
    #[must_use]
    pub fn tokens_generated(&self) -> u32 {
        self.tokens.get()
    }

    /// Sends reply text, blocking while the channel is full. Returns false when the
    /// reader is gone (the generation should stop).
    pub fn piece(&self, text: String) -> bool {
        text.is_empty() || self.events.send(GenerationEvent::Piece(text)).is_ok()
    }

    /// Ends the generation with a summary.
    pub fn done(self, summary: Summary) {
        // The reader may be gone; then nobody needs the summary.
        let _ = self.events.send(GenerationEvent::Done(summary));
    }

    /// Ends the generation with an error.
    pub fn fail(self, error: ChatError) {
        let _ = self.events.send(GenerationEvent::Failed(error));
    }
}

impl Generation {
    /// A connected sink/generation pair with a [`EVENT_CHANNEL_CAPACITY`] channel.
    #[must_use]
    pub fn channel() -> (GenerationSink, Generation) {
        let (tx, rx) = crossbeam_channel::bounded(EVENT_CHANNEL_CAPACITY);
        let cancel = CancelToken::default();
        let tokens = TokenCount::default();
        (
            GenerationSink {
                events: tx,
                cancel: cancel.clone(),
                tokens: tokens.clone(),
            },
            Generation {
                events: rx,
                cancel,
                tokens,
                launch: Mutex::new(None),
            },
        )
    }

    /// Makes `launch` run on the first read, [`Self::begin`] or drop, instead
    /// of the generation running already.
    pub fn launch_on_first_read(&self, launch: impl FnOnce() + Send + 'static) {
        *self.launch.lock() = Some(Box::new(launch));
    }

    /// Starts the generation if it waits for its first read.
    pub fn begin(&self) {
        let launch = self.launch.lock().take();
        if let Some(launch) = launch {
            launch();
        }
    }

    /// Asks the generation to stop before its next token. Events already produced
    /// stay readable and a final [`GenerationEvent::Done`] with
    /// [`FinishReason::Cancelled`] follows.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that cancels this generation from elsewhere.
    #[must_use]
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Tokens generated so far (an end-of-generation token is not counted). The
    /// engine counts a token when it samples it, before the piece is sent, so this
    /// runs ahead of the pieces read by up to [`EVENT_CHANNEL_CAPACITY`] + 1; after
    /// the final event it equals the summary's `completion_tokens`. Read right after
    /// [`Self::cancel`], it bounds the reply: at most one more token follows. 0 for
    /// a producer that does not call [`GenerationSink::count_token`].
    #[must_use]
    pub fn tokens_generated(&self) -> u32 {
        self.tokens.get()
    }

    /// A handle that reads [`Self::tokens_generated`] from elsewhere.
    #[must_use]
    pub fn token_count(&self) -> TokenCount {
        self.tokens.clone()
    }

    /// The next event, waiting for it. A producer that vanished without a final
    /// event yields `Failed(Disconnected)`.
    pub fn recv(&self) -> GenerationEvent {
        self.begin();
        self.events
            .recv()
            .unwrap_or(GenerationEvent::Failed(ChatError::Disconnected))
    }

    /// The next event if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<GenerationEvent> {
        self.begin();
        match self.events.recv_timeout(timeout) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                Some(GenerationEvent::Failed(ChatError::Disconnected))
            }
        }
    }

    /// Reads everything: the whole reply and its summary.
    ///
    /// # Errors
    /// The generation's [`ChatError`].
    pub fn wait(self) -> Result<(String, Summary), ChatError> {
        let mut reply = String::new();
        loop {
            match self.recv() {
                GenerationEvent::Piece(p) => reply.push_str(&p),
                GenerationEvent::Done(summary) => return Ok((reply, summary)),
                GenerationEvent::Failed(e) => return Err(e),
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.cancel();
        // An unstarted chat is still launched, already cancelled, so that the
        // engine finishes it and counts it out (at once: it is not queued).
        self.begin();
    }
}

/// Something that generates chat replies. The module talks to this trait so that its
/// logic can be tested with a fake; [`LlamaEngine`] is the real one.
pub trait Generator: Send + Sync {
    /// Checks and prepares a reply (template, tokens, fit) and returns at once;
    /// the reply streams through the [`Generation`], and may begin only when it
    /// is first read.
    ///
    /// # Errors
    /// Problems found before generating (invalid request, prompt too long, busy) are
    /// returned here; later ones arrive as [`GenerationEvent::Failed`].
    fn start(&self, request: ChatRequest) -> Result<Generation, ChatError>;

    /// Name of the model, for the `model` output.
    fn model_name(&self) -> String;

    /// `CPU` or `GPU`, for CodeProject's `inferenceDevice`.
    fn inference_device(&self) -> String {
        "CPU".to_owned()
    }

    /// Unit-length pooled embeddings of `texts`, one per text, and the
    /// number of tokens read ([`crate::embed`]).
    ///
    /// # Errors
    /// [`ChatError::InvalidRequest`] for a text that cannot be embedded;
    /// [`ChatError::Engine`] when this generator has no embeddings or
    /// llama.cpp fails.
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u32), ChatError> {
        let _ = texts;
        Err(ChatError::Engine(
            "this generator makes no embeddings".into(),
        ))
    }
}

/// Runs `create` (a llama.cpp context creation) under the lock that keeps
/// two from running at once.
pub(crate) fn with_new_context_lock<T>(create: impl FnOnce() -> T) -> T {
    let _guard = NEW_CONTEXT.lock();
    create()
}

/// Settings of [`LlamaEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// CPU threads per chat (llama.cpp `n_threads` and `n_threads_batch`).
    pub threads: u32,
    /// Context size in tokens; `None` = the model's training context capped at
    /// [`DEFAULT_MAX_CONTEXT`]; `Some(0)` = the model's training context.
    pub context_size: Option<u32>,
    /// Prompt tokens decoded per llama.cpp call (a cancel is seen between calls).
    pub batch_size: u32,
    /// Layers to offload to a GPU; `None` = all when llama.cpp was built with GPU
    /// support, else none.
    pub gpu_layers: Option<u32>,
    /// Chats that may wait for the engine behind the running one before
    /// [`ChatError::Busy`].
    pub max_waiting: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            context_size: None,
            batch_size: 512,
            gpu_layers: None,
            max_waiting: 4,
        }
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
    /// llama.cpp could not load the file.
    #[error("llama.cpp could not load the model {path}: {reason} (is it a GGUF model file?)")]
    Load {
        /// The model file.
        path: PathBuf,
        /// llama.cpp's error.
        reason: String,
    },
}

/// How prompts are rendered, decided once per model.
enum PromptFormat {
    /// llama.cpp's built-in implementation of the model's template family.
    Builtin(LlamaChatTemplate),
    /// The model's Jinja template rendered by minijinja.
    Jinja(Box<JinjaTemplate>),
    /// No usable template: ChatML.
    ChatMl,
}

impl PromptFormat {
    const fn name(&self) -> &'static str {
        match self {
            Self::Builtin(_) => "llama.cpp built-in",
            Self::Jinja(_) => "jinja (minijinja)",
            Self::ChatMl => "ChatML fallback",
        }
    }
}

/// A GGUF model loaded with llama.cpp, generating on dedicated threads.
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    format: PromptFormat,
    config: EngineConfig,
    /// Context size every chat gets, in tokens.
    n_ctx: u32,
    name: String,
    on_gpu: bool,
    /// Chats for the generation thread; closing it ends the thread.
    jobs: Sender<(Job, GenerationSink)>,
    /// Chats started and not yet finished (running, queued, or not yet begun),
    /// each counted by its [`InFlight`].
    in_flight: Arc<AtomicUsize>,
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
    /// Loads a GGUF model and picks its prompt format.
    ///
    /// # Errors
    /// [`LoadError::Missing`] when there is no file, [`LoadError::Load`] when llama.cpp
    /// rejects it.
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
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);
        let model =
            LlamaModel::load_from_file(backend, path, &params).map_err(|e| LoadError::Load {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
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
        let format = pick_format(&model);
        let model = Arc::new(model);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let spec = ContextSpec {
            n_ctx,
            n_batch: config.batch_size.clamp(1, n_ctx),
            threads: config.threads.max(1) as i32,
        };
        // Chats queue here beyond the running one; `start` refuses more than
        // `max_waiting`, so the bound is never what blocks.
        let (jobs, queued) = crossbeam_channel::bounded(config.max_waiting + 1);
        let worker_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name("llama-generate".into())
            .spawn(move || generation_thread(&worker_model, spec, &queued))
            .map_err(|e| LoadError::Load {
                path: path.to_path_buf(),
                reason: format!("cannot start the generation thread: {e}"),
            })?;
        tracing::info!(
            model = %name,
            path = %path.display(),
            n_ctx,
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
            on_gpu: gpu_layers > 0 && backend.supports_gpu_offload(),
            config,
            jobs,
            in_flight,
        })
    }

    /// Context size of each chat, in tokens.
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
        let messages = messages.to_vec();
        match &self.format {
            PromptFormat::Builtin(tmpl) => {
                let chat = to_llama_messages(&messages)?;
                self.model
                    .apply_chat_template(tmpl, &chat, true)
                    .map_err(|e| ChatError::Template(format!("chat template: {e}")))
            }
            PromptFormat::Jinja(tmpl) => tmpl
                .render(&messages, true)
                .map_err(|e| ChatError::Template(e.to_string())),
            PromptFormat::ChatMl => Ok(template::chatml(&messages)),
        }
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

fn to_llama_messages(messages: &[Message]) -> Result<Vec<LlamaChatMessage>, ChatError> {
    messages
        .iter()
        .map(|m| {
            LlamaChatMessage::new(m.role.clone(), m.content.clone())
                .map_err(|e| ChatError::InvalidRequest(format!("message text: {e}")))
        })
        .collect()
}

/// Built-in if llama.cpp recognises the template, else Jinja if minijinja can render
/// it, else ChatML.
fn pick_format(model: &LlamaModel) -> PromptFormat {
    let Ok(tmpl) = model.chat_template(None) else {
        tracing::info!("the model has no chat template; using ChatML");
        return PromptFormat::ChatMl;
    };
    let probe = template::chat_messages("You are helpful.", "Hello");
    if let Ok(chat) = to_llama_messages(&probe) {
        if model.apply_chat_template(&tmpl, &chat, true).is_ok() {
            return PromptFormat::Builtin(tmpl);
        }
    }
    let source = tmpl.to_string().unwrap_or_default();
    let token_text = |t: LlamaToken| {
        let vocab = model.vocab();
        String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
    };
    let vocab = model.vocab();
    let (bos, eos) = (token_text(vocab.bos()), token_text(vocab.eos()));
    match JinjaTemplate::new(&source, bos, eos).and_then(|t| t.render(&probe, true).map(|_| t)) {
        Ok(t) => PromptFormat::Jinja(Box::new(t)),
        Err(e) => {
            tracing::warn!(error = %e, "the model's chat template cannot be rendered; using ChatML");
            PromptFormat::ChatMl
        }
    }
}

impl Generator for LlamaEngine {
    fn start(&self, request: ChatRequest) -> Result<Generation, ChatError> {
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
        // Count this chat in before launching; dropping `in_flight` (here when
        // busy, else once the chat has finished) counts it out.
        let (in_flight, waiting) = InFlight::enter(&self.in_flight);
        if waiting > self.config.max_waiting {
            return Err(ChatError::Busy(waiting));
        }

        let seed = request.seed.unwrap_or_else(random_seed);
        let job = Job {
            tokens,
            max_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            top_k: request.top_k,
            seed,
            stop: request.stop,
            in_flight,
        };
        let (sink, generation) = Generation::channel();
        let jobs = self.jobs.clone();
        generation.launch_on_first_read(move || {
            if sink.is_cancelled() {
                // Cancelled or dropped before it began (such as a chat the SDK
                // refused as a second long command): finish it here, as the
                // thread would, instead of queueing it behind the running chat,
                // where it would count as waiting until that chat ended.
                job.finish(Ok(FinishReason::Cancelled), &Progress::new(), sink);
                return;
            }
            // Fails only when the generation thread died (a panic in
            // llama.cpp code); the dropped job counts itself out and the
            // dropped sink ends the generation with `Disconnected`.
            let _ = jobs.try_send((job, sink));
        });
        Ok(generation)
    }

    fn model_name(&self) -> String {
        self.name.clone()
    }

    fn inference_device(&self) -> String {
        if self.on_gpu { "GPU" } else { "CPU" }.to_owned()
    }

    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u32), ChatError> {
        crate::embed::embed(&self.model, texts, self.n_ctx, self.config.threads)
    }
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process and per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// The context every chat of an engine gets.
#[derive(Debug, Clone, Copy)]
struct ContextSpec {
    /// Context size, tokens.
    n_ctx: u32,
    /// Prompt tokens per decode call (and llama.cpp's n_batch/n_ubatch).
    n_batch: u32,
    /// llama.cpp threads for generation and prompt processing.
    threads: i32,
}

/// The engine's generation thread: runs queued chats in order on one context,
/// created on first use and kept (its KV cache cleared) between chats. Ends when
/// the engine is dropped.
fn generation_thread(
    model: &LlamaModel,
    spec: ContextSpec,
    jobs: &Receiver<(Job, GenerationSink)>,
) {
    let mut ctx: Option<LlamaContext<'_>> = None;
    for (job, sink) in jobs {
        job.run(model, spec, &mut ctx, sink);
    }
}

/// One chat counted in its engine's `in_flight` total; dropping it counts the
/// chat out, on every path (refused as busy, finished, never delivered).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts a chat in; also returns how many were in flight before it.
    fn enter(count: &Arc<AtomicUsize>) -> (Self, usize) {
        let before = count.fetch_add(1, Ordering::SeqCst);
        (Self(Arc::clone(count)), before)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A context of `spec` on `model`.
fn new_context(model: &LlamaModel, spec: ContextSpec) -> Result<LlamaContext<'_>, ChatError> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(spec.n_ctx))
        .with_n_batch(spec.n_batch)
        .with_n_ubatch(spec.n_batch)
        .with_n_threads(spec.threads)
        .with_n_threads_batch(spec.threads);
    with_new_context_lock(|| model.new_context(backend(), params)).map_err(|e| {
        ChatError::Engine(format!(
            "cannot create a context of {} tokens: {e}",
            spec.n_ctx
        ))
    })
}

/// One chat, checked and moved to the generation thread.
struct Job {
    tokens: Vec<LlamaToken>,
    /// Already checked: `tokens.len() + max_tokens <= n_ctx`.
    max_tokens: u32,
    temperature: f32,
    top_p: f32,
    top_k: u32,
    seed: u32,
    stop: Vec<String>,
    /// Counts this chat in the engine's total until the job is dropped.
    in_flight: InFlight,
}

/// Timings of one generation (its token count is the sink's).
struct Progress {
    started: Instant,
    prompt_done: Option<Instant>,
    first_token: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            prompt_done: None,
            first_token: None,
        }
    }
}

impl Job {
    /// Generates into `sink` on `ctx` (created if `None`; dropped after a failure so
    /// that the next chat starts from a fresh one).
    fn run<'m>(
        self,
        model: &'m LlamaModel,
        spec: ContextSpec,
        ctx: &mut Option<LlamaContext<'m>>,
        sink: GenerationSink,
    ) {
        let mut progress = Progress::new();
        let result = self.generate(model, spec, ctx, &sink, &mut progress);
        if result.is_err() {
            *ctx = None;
        }
        self.finish(result, &progress, sink);
    }

    /// Counts the chat out of the engine, then sends its last event: a reader
    /// who has seen the end finds the chat no longer in flight.
    fn finish(self, result: Result<FinishReason, ChatError>, p: &Progress, sink: GenerationSink) {
        let result = result.map(|finish_reason| self.summary(finish_reason, p, &sink));
        drop(self.in_flight);
        match result {
            Ok(summary) => {
                tracing::debug!(?summary, "generation finished");
                sink.done(summary);
            }
            Err(e) => {
                tracing::warn!(error = %e, "generation failed");
                sink.fail(e);
            }
        }
    }

    fn summary(&self, finish_reason: FinishReason, p: &Progress, sink: &GenerationSink) -> Summary {
        let completion_tokens = sink.tokens_generated();
        let end = Instant::now();
        let gen_secs = p
            .prompt_done
            .map_or(0.0, |t| end.duration_since(t).as_secs_f64());
        let tokens_per_second = if completion_tokens > 0 && gen_secs > 0.0 {
            (f64::from(completion_tokens) / gen_secs * 10.0).round() / 10.0
        } else {
            0.0
        };
        let ttft = p.first_token.map_or(0.0, |t| {
            (t.duration_since(p.started).as_secs_f64() * 100_000.0).round() / 100.0
        });
        Summary {
            finish_reason,
            prompt_tokens: self.tokens.len() as u32,
            completion_tokens,
            inference_ms: end.duration_since(p.started).as_millis() as u64,
            tokens_per_second,
            time_to_first_token_ms: ttft,
            seed: self.seed,
        }
    }

    fn sampler(&self) -> LlamaSampler {
        if self.temperature <= 0.0 {
            return LlamaSampler::greedy();
        }
        // llama.cpp's own order: truncate (top-k, top-p), then temperature, then draw.
        let mut chain = Vec::with_capacity(4);
        if self.top_k > 0 {
            chain.push(LlamaSampler::top_k(self.top_k.min(i32::MAX as u32) as i32));
        }
        if self.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.top_p, 1));
        }
        chain.push(LlamaSampler::temp(self.temperature));
        chain.push(LlamaSampler::dist(self.seed));
        LlamaSampler::chain_simple(chain)
    }

    fn generate<'m>(
        &self,
        model: &'m LlamaModel,
        spec: ContextSpec,
        ctx: &mut Option<LlamaContext<'m>>,
        sink: &GenerationSink,
        p: &mut Progress,
    ) -> Result<FinishReason, ChatError> {
        if sink.is_cancelled() {
            return Ok(FinishReason::Cancelled);
        }
        let ctx = match ctx {
            Some(ctx) => {
                // The previous chat's tokens; positions start again at 0.
                ctx.clear_kv_cache();
                ctx
            }
            None => ctx.insert(new_context(model, spec)?),
        };
        let decode_err = |e: llama_cpp_2::DecodeError| ChatError::Engine(format!("decode: {e}"));
        let n_batch = spec.n_batch as usize;
        let mut batch = LlamaBatch::new(n_batch, 1);

        // The prompt, in chunks of n_batch; logits only for its last token.
        let n_prompt = self.tokens.len();
        let mut last_index = 0;
        for (chunk_no, chunk) in self.tokens.chunks(n_batch).enumerate() {
            if sink.is_cancelled() {
                return Ok(FinishReason::Cancelled);
            }
            batch.clear();
            let base = chunk_no * n_batch;
            for (i, token) in chunk.iter().enumerate() {
                let pos = base + i;
                let is_last = pos + 1 == n_prompt;
                batch
                    .add(*token, pos as i32, &[0], is_last)
                    .map_err(|e| ChatError::Engine(format!("batch: {e}")))?;
            }
            ctx.decode(&mut batch).map_err(decode_err)?;
            last_index = batch.n_tokens() - 1;
        }
        p.prompt_done = Some(Instant::now());

        let vocab = model.vocab();
        let mut sampler = self.sampler();
        let mut utf8 = Utf8Stream::new();
        let mut stops = StopFilter::new(&self.stop);
        let mut piece = Vec::with_capacity(32);
        let mut pos = n_prompt as i32;

        let reason = loop {
            if sink.is_cancelled() {
                break FinishReason::Cancelled;
            }
            // `sample` also accepts the token into the sampler state.
            let token = sampler.sample(ctx, last_index);
            p.first_token.get_or_insert_with(Instant::now);
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            let completion_tokens = sink.count_token();

            piece.clear();
            // Control tokens render as nothing; normal pieces and bytes as text.
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let step = stops.push(&utf8.push(&piece));
            if !sink.piece(step.emit) {
                break FinishReason::Cancelled;
            }
            if step.stopped {
                break FinishReason::StopString;
            }
            if completion_tokens >= self.max_tokens {
                break FinishReason::Length;
            }
            if sink.is_cancelled() {
                break FinishReason::Cancelled;
            }

            batch.clear();
            batch
                .add(token, pos, &[0], true)
                .map_err(|e| ChatError::Engine(format!("batch: {e}")))?;
            pos += 1;
            ctx.decode(&mut batch).map_err(decode_err)?;
            last_index = 0;
        };

        if reason != FinishReason::StopString {
            // Release an incomplete character and text held back as a possible stop.
            let tail = stops.push(&utf8.finish());
            let mut rest = tail.emit;
            if !tail.stopped {
                rest.push_str(&stops.finish());
            }
            sink.piece(rest);
        }
        Ok(reason)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gguf::{write_demo_model, DemoModelSpec};
    use std::sync::LazyLock;

    /// Threads per test generation: tests run in parallel on few shared cores.
    const TEST_THREADS: u32 = 1;

    pub(crate) struct TestModel {
        _dir: tempfile::TempDir,
        pub engine: LlamaEngine,
    }

    pub(crate) fn load_demo(spec: &DemoModelSpec, context_size: Option<u32>) -> TestModel {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.gguf");
        write_demo_model(&path, spec).unwrap();
        let engine = LlamaEngine::load(
            &path,
            EngineConfig {
                threads: TEST_THREADS,
                context_size,
                batch_size: 64,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        TestModel { _dir: dir, engine }
    }

    /// One tiny model shared by the tests that only need *a* model.
    pub(crate) static TINY: LazyLock<TestModel> =
        LazyLock::new(|| load_demo(&DemoModelSpec::tiny(), None));

    fn req(max_tokens: u32, temperature: f32, seed: u32) -> ChatRequest {
        ChatRequest {
            prompt: "Tell me about the stars.".into(),
            system_prompt: "You are a helpful assistant.".into(),
            max_tokens,
            temperature,
            seed: Some(seed),
            ..ChatRequest::default()
        }
    }

    fn run(request: ChatRequest) -> (String, Summary) {
        TINY.engine.start(request).unwrap().wait().unwrap()
    }

    #[test]
    fn a_chat_produces_a_non_empty_reply_and_a_summary() {
        let (reply, s) = run(req(48, 0.8, 1));
        assert!(!reply.trim().is_empty(), "empty reply");
        assert_eq!(s.finish_reason, FinishReason::Length);
        assert_eq!(s.completion_tokens, 48);
        assert!(s.prompt_tokens > 10, "prompt_tokens {}", s.prompt_tokens);
        assert!(s.tokens_per_second > 0.0);
        assert!(s.time_to_first_token_ms > 0.0);
        assert_eq!(s.seed, 1);
        eprintln!(
            "tiny model: {:.0} tokens/s, first token after {:.2} ms, reply {reply:?}",
            s.tokens_per_second, s.time_to_first_token_ms
        );
    }

    #[test]
    fn max_tokens_is_honoured_exactly() {
        for n in [1, 7, 100] {
            let (_, s) = run(req(n, 1.0, 3));
            assert_eq!(s.completion_tokens, n);
            assert_eq!(s.finish_reason, FinishReason::Length);
        }
    }

    #[test]
    fn max_tokens_zero_fills_the_context() {
        let m = load_demo(&DemoModelSpec::tiny(), Some(128));
        let (_, s) = m.engine.start(req(0, 1.0, 3)).unwrap().wait().unwrap();
        assert_eq!(s.finish_reason, FinishReason::Length);
        assert_eq!(s.prompt_tokens + s.completion_tokens, 128);
    }

    #[test]
    fn the_same_seed_gives_the_same_reply_and_another_seed_another() {
        let (a, _) = run(req(40, 1.0, 11));
        let (b, _) = run(req(40, 1.0, 11));
        let (c, _) = run(req(40, 1.0, 12));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn temperature_zero_is_greedy_and_ignores_the_seed() {
        let (a, _) = run(req(30, 0.0, 1));
        let (b, _) = run(req(30, 0.0, 999));
        assert_eq!(a, b);
        assert!(!a.is_empty());
    }

    #[test]
    fn cancel_stops_generation_within_one_token_and_the_next_chat_works() {
        let generation = TINY.engine.start(req(0, 1.0, 5)).unwrap();
        // Wait for the reply to be under way.
        let mut received = 0u32;
        while received < 3 {
            match generation.recv() {
                GenerationEvent::Piece(_) => received += 1,
                other => panic!("ended early: {other:?}"),
            }
        }
        generation.cancel();
        // Every token counted by now was produced before the cancel; at most the
        // one being sampled when the flag was set can follow.
        let n0 = generation.tokens_generated();
        assert!(
            n0 >= received,
            "{n0} tokens counted, {received} pieces read"
        );
        let summary = loop {
            match generation.recv() {
                GenerationEvent::Piece(_) => {}
                GenerationEvent::Done(s) => break s,
                GenerationEvent::Failed(e) => panic!("{e}"),
            }
        };
        assert_eq!(summary.finish_reason, FinishReason::Cancelled);
        assert!(
            summary.completion_tokens <= n0 + 1,
            "{} tokens, {n0} when cancelled",
            summary.completion_tokens
        );
        assert_eq!(generation.tokens_generated(), summary.completion_tokens);

        let (reply, s) = run(req(10, 1.0, 5));
        assert_eq!(s.completion_tokens, 10);
        assert!(!reply.is_empty());
    }

    #[test]
    fn top_k_1_and_a_tiny_top_p_leave_only_the_greedy_token() {
        let greedy = run(req(24, 0.0, 1)).0;
        let truncated = |seed: u32, top_k: u32, top_p: f32| {
            run(ChatRequest {
                top_k,
                top_p,
                ..req(24, 1.0, seed)
            })
            .0
        };
        // The control: without truncation these seeds sample something else,
        // so an ignored top_k or top_p would fail the asserts below.
        for seed in [2, 3] {
            assert_ne!(truncated(seed, 0, 1.0), greedy, "seed {seed} untruncated");
        }
        for seed in [2, 3] {
            // One candidate is left, so the draw has no choice.
            assert_eq!(truncated(seed, 1, 1.0), greedy, "top_k 1, seed {seed}");
            // Below 1 / n_vocab, so the most likely token alone reaches it
            // (llama.cpp's top_p keeps at least min_keep = 1 token).
            assert_eq!(truncated(seed, 0, 1e-4), greedy, "top_p 1e-4, seed {seed}");
        }
        // Both in the chain at once, with room to choose: a full, seeded reply.
        let both = ChatRequest {
            top_k: 40,
            top_p: 0.9,
            ..req(24, 1.0, 7)
        };
        let (a, s) = run(both.clone());
        assert_eq!(s.completion_tokens, 24);
        assert_eq!(run(both).0, a);
    }

    #[test]
    fn a_chat_dropped_before_it_begins_frees_its_place_at_once() {
        let m = load_demo(&DemoModelSpec::tiny(), None);
        // A long chat under way; unread, it soon blocks on its full channel.
        let running = m.engine.start(req(0, 1.0, 5)).unwrap();
        assert!(matches!(running.recv(), GenerationEvent::Piece(_)));
        // As the module's refused second chats: started, then dropped unread.
        // More than `max_waiting` of them must not make the engine busy.
        let max_waiting = EngineConfig::default().max_waiting;
        for i in 0..2 * max_waiting + 2 {
            let refused = m.engine.start(req(0, 1.0, 5));
            assert!(refused.is_ok(), "chat {i}: {refused:?}");
            drop(refused);
            assert_eq!(m.engine.in_flight.load(Ordering::SeqCst), 1, "chat {i}");
        }
        // Cancelled before its first read: ends at once, without generating.
        let early = m.engine.start(req(0, 1.0, 5)).unwrap();
        early.cancel();
        let (reply, s) = early.wait().unwrap();
        assert_eq!(
            (reply.as_str(), s.finish_reason),
            ("", FinishReason::Cancelled)
        );
        assert_eq!(s.completion_tokens, 0);

        running.cancel();
        let (_, s) = running.wait().unwrap();
        assert_eq!(s.finish_reason, FinishReason::Cancelled);
        assert_eq!(m.engine.in_flight.load(Ordering::SeqCst), 0);
        let (_, s) = m.engine.start(req(5, 1.0, 5)).unwrap().wait().unwrap();
        assert_eq!(s.completion_tokens, 5);
    }

    #[test]
    fn dropping_a_generation_cancels_it_and_frees_the_engine() {
        let (sink, generation) = Generation::channel();
        drop(generation);
        assert!(sink.is_cancelled());
        assert!(
            !sink.piece("x".into()),
            "the producer learns the reader is gone"
        );

        let m = load_demo(&DemoModelSpec::tiny(), None);
        // Dropped unread (never begun) and dropped mid-reply.
        drop(m.engine.start(req(0, 1.0, 5)).unwrap());
        let g = m.engine.start(req(0, 1.0, 5)).unwrap();
        assert!(matches!(g.recv(), GenerationEvent::Piece(_)));
        let cancel = g.cancel_token();
        drop(g);
        assert!(cancel.is_cancelled());
        let (_, s) = m.engine.start(req(5, 1.0, 5)).unwrap().wait().unwrap();
        assert_eq!(s.completion_tokens, 5);
        assert_eq!(m.engine.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_chat_begins_only_when_its_generation_is_first_read() {
        let generation = TINY.engine.start(req(3, 1.0, 9)).unwrap();
        // Three tokens take well under a millisecond once begun.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            generation.events.is_empty(),
            "the chat ran before it was read"
        );
        let (_, s) = generation.wait().unwrap();
        assert_eq!(s.completion_tokens, 3);
    }

    #[test]
    fn a_prompt_longer_than_the_context_is_refused_before_decoding() {
        let prompt = "the quick brown fox ".repeat(400);
        let err = TINY.engine.start(ChatRequest::new(prompt)).unwrap_err();
        match &err {
            ChatError::PromptTooLong {
                prompt_tokens,
                context,
            } => {
                assert_eq!(*context, 1024);
                assert!(*prompt_tokens > 1024);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with("prompt is ") && msg.contains("but the context holds 1024"),
            "{msg}"
        );
    }

    #[test]
    fn max_tokens_beyond_the_context_is_refused() {
        let err = TINY.engine.start(req(5000, 0.5, 1)).unwrap_err();
        assert!(
            matches!(
                err,
                ChatError::MaxTokensBeyondContext {
                    max_tokens: 5000,
                    context: 1024,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("context holds 1024"), "{err}");
    }

    #[test]
    fn stop_strings_end_the_reply_before_them() {
        let (full, _) = run(req(60, 1.0, 21));
        // Pick a stop string from the middle of the reply.
        let chars: Vec<char> = full.chars().collect();
        assert!(chars.len() > 30, "reply too short: {full:?}");
        let stop: String = chars[20..24].iter().collect();
        let expected = &full[..full.find(&stop).unwrap()];

        let mut r = req(60, 1.0, 21);
        r.stop = vec!["never appears \u{1}".into(), stop.clone()];
        let (reply, s) = run(r);
        assert_eq!(s.finish_reason, FinishReason::StopString);
        assert_eq!(reply, expected, "stop {stop:?}");
        assert!(!reply.contains(&stop));
        assert!(s.completion_tokens < 60);
    }

    #[test]
    fn an_end_of_generation_token_completes_the_reply() {
        let spec = DemoModelSpec {
            eog_bias: 20.0,
            ..DemoModelSpec::tiny()
        };
        let m = load_demo(&spec, None);
        let (reply, s) = m.engine.start(req(50, 0.8, 1)).unwrap().wait().unwrap();
        assert_eq!(s.finish_reason, FinishReason::Stop);
        assert_eq!(s.completion_tokens, 0);
        assert_eq!(reply, "");
    }

    #[test]
    fn invalid_requests_are_refused() {
        let mut r = req(5, -1.0, 1);
        assert!(
            matches!(TINY.engine.start(r.clone()), Err(ChatError::InvalidRequest(m)) if m.contains("temperature"))
        );
        r.temperature = 0.5;
        r.prompt = " ".into();
        assert!(
            matches!(TINY.engine.start(r), Err(ChatError::InvalidRequest(m)) if m.contains("prompt"))
        );
    }

    #[test]
    fn the_demo_model_uses_its_chatml_template_through_llama_cpp() {
        assert_eq!(TINY.engine.prompt_format(), "llama.cpp built-in");
        let text = TINY.engine.render_prompt("Sys", "Hi").unwrap();
        assert_eq!(
            text,
            template::chatml(&template::chat_messages("Sys", "Hi"))
        );
        // Control tokens are parsed as single tokens, and BOS is prepended.
        let tokens = TINY.engine.tokenize(&text);
        let vocab = TINY.engine.model().vocab();
        assert_eq!(tokens[0], vocab.bos());
        let im_start = tokens.iter().filter(|t| vocab.is_control(**t)).count();
        assert_eq!(im_start, 1 + 5, "BOS + 3 <|im_start|> + 2 <|im_end|>");
    }

    #[test]
    fn a_model_without_a_template_falls_back_to_chatml() {
        let spec = DemoModelSpec {
            chat_template: None,
            ..DemoModelSpec::tiny()
        };
        let m = load_demo(&spec, None);
        assert_eq!(m.engine.prompt_format(), "ChatML fallback");
        let text = m.engine.render_prompt("", "x").unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
        let (_, s) = m.engine.start(req(5, 0.5, 1)).unwrap().wait().unwrap();
        assert_eq!(s.completion_tokens, 5);
    }

    #[test]
    fn a_template_llama_cpp_does_not_know_is_rendered_with_minijinja() {
        let spec = DemoModelSpec {
            chat_template: Some(
                "{{ bos_token }}{% for m in messages %}<<{{ m['role'] | upper }}>> {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}<<ASSISTANT>> {% endif %}".into(),
            ),
            ..DemoModelSpec::tiny()
        };
        let m = load_demo(&spec, None);
        assert_eq!(m.engine.prompt_format(), "jinja (minijinja)");
        let text = m.engine.render_prompt("Sys ", " Hi").unwrap();
        assert_eq!(text, "<s><<SYSTEM>> Sys\n<<USER>> Hi\n<<ASSISTANT>> ");
        // The template wrote BOS, so it is not added a second time.
        let tokens = m.engine.tokenize(&text);
        let bos = m.engine.model().vocab().bos();
        assert_eq!(tokens.iter().filter(|t| **t == bos).count(), 1);
    }
}
