//! A chat's generation as its reader sees it: the [`Generator`] trait (the
//! engine, real or fake), the [`Generation`] a launched chat streams through,
//! its events, errors, and final [`Summary`].
//!
//! A chat is prepared first ([`Generator::prepare`]: template, tokens, fit
//! in the context, all checked without touching the model's context) and
//! launched later ([`Generator::launch`]), so that a module can refuse or
//! queue it in between without wasted work. Events go through an unbounded
//! channel: the engine's decode loop serves several chats and must never
//! wait for one slow reader; a reply is bounded by its `max_tokens`.
//!
//! How a reply ends (its reason, statistics, events and errors) is in
//! `outcome.rs`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::request::ChatRequest;
use crate::sampling::SamplingParams;

mod outcome;

pub use outcome::{decode_rate, ChatError, FinishReason, GenerationEvent, Summary};

/// A shared cancel flag. It may wrap a flag owned by someone else, such as
/// the SDK's command handle ([`CancelToken::from_flag`]), so that one flag
/// serves both.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that reads and sets `flag`.
    #[must_use]
    pub fn from_flag(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }

    /// Asks the generation to stop; the engine stops it before its next step.
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

/// A chat checked and tokenized by [`Generator::prepare`], ready to launch.
/// Dropping it costs nothing: no engine resource is held yet.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    /// The rendered prompt, tokenized.
    pub(crate) tokens: Vec<llama_cpp_2::token::LlamaToken>,
    /// Already checked: `tokens.len() + max_tokens <= ` the slot's context.
    pub(crate) max_tokens: u32,
    pub(crate) sampling: SamplingParams,
    pub(crate) stop: Vec<String>,
    /// Counts this chat as on its way to the engine until it is launched
    /// or dropped.
    pub(crate) on_its_way: OnItsWay,
}

/// One chat on its way to an engine: it adds one to a shared count while it
/// lives (clones too), so that the engine can wait for a burst of chats that
/// were prepared together before it decodes their prompts.
#[derive(Debug)]
pub struct OnItsWay(Option<Arc<AtomicU32>>);

impl OnItsWay {
    /// Counts one more chat on its way in `count`.
    #[must_use]
    pub fn new(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Some(Arc::clone(count)))
    }

    /// The chat has arrived: it is no longer counted.
    pub fn arrived(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Clone for OnItsWay {
    fn clone(&self) -> Self {
        match &self.0 {
            Some(count) => Self::new(count),
            None => Self(None),
        }
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        self.arrived();
    }
}

impl PreparedChat {
    /// Tokens of the rendered prompt.
    #[must_use]
    pub fn prompt_tokens(&self) -> u32 {
        self.tokens.len() as u32
    }
}

/// A chat's generation: read its events, cancel it. Dropping it stops it.
pub struct Generation {
    events: Receiver<GenerationEvent>,
    cancel: CancelToken,
    /// Set when the reader drops the generation: the engine stops it
    /// without touching `cancel`, which may be somebody else's flag.
    gone: Arc<AtomicBool>,
    /// Tokens produced so far, for [`Self::tokens_generated`].
    tokens: TokenCount,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("tokens", &self.tokens.get())
            .finish_non_exhaustive()
    }
}

/// The producing end of a [`Generation`], for engines (real or fake).
#[derive(Debug)]
pub struct GenerationSink {
    events: Sender<GenerationEvent>,
    cancel: CancelToken,
    gone: Arc<AtomicBool>,
    /// Shared with the [`Generation`]: what [`Self::count_token`] counts.
    tokens: TokenCount,
}

impl GenerationSink {
    /// Whether the reader cancelled (or dropped) the generation.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.gone.load(Ordering::SeqCst)
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

    /// Sends reply text; never blocks. Returns false when the reader is gone
    /// (the generation should stop).
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
    /// A connected sink/generation pair, cancelled through `cancel`.
    #[must_use]
    pub fn channel(cancel: CancelToken) -> (GenerationSink, Generation) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let tokens = TokenCount::default();
        let gone = Arc::new(AtomicBool::new(false));
        (
            GenerationSink {
                events: tx,
                cancel: cancel.clone(),
                gone: Arc::clone(&gone),
                tokens: tokens.clone(),
            },
            Generation {
                events: rx,
                cancel,
                gone,
                tokens,
            },
        )
    }

    /// Asks the generation to stop before its next step. Events already produced
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
    /// may run ahead of the pieces read; after the final event it equals the
    /// summary's `completion_tokens`. Read right after [`Self::cancel`], it
    /// bounds the reply: at most one more token follows. 0 for a producer that
    /// does not call [`GenerationSink::count_token`].
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
        self.events
            .recv()
            .unwrap_or(GenerationEvent::Failed(ChatError::Disconnected))
    }

    /// The next event if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<GenerationEvent> {
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
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// How busy a generator is, for the module's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorLoad {
    /// Sequences decoded together at most (llama.cpp's `n_seq_max`).
    pub slots: u32,
    /// Slots generating or processing a prompt now.
    pub busy_slots: u32,
    /// Chats launched and waiting for a slot inside the engine.
    pub waiting: u32,
    /// Tokens generated per second, averaged over the last minute.
    pub tokens_per_second: f64,
}

/// Something that generates chat replies. The module talks to this trait so that its
/// logic can be tested with a fake; [`crate::engine::LlamaEngine`] is the real one.
pub trait Generator: Send + Sync {
    /// Checks and prepares a reply (template, tokens, fit) without starting it.
    ///
    /// # Errors
    /// Problems found before generating: an invalid request, a template that
    /// fails, a prompt too long or `max_tokens` beyond the context.
    fn prepare(&self, request: ChatRequest) -> Result<PreparedChat, ChatError>;

    /// Starts a prepared chat: it joins the engine's decode loop at its next
    /// step, or waits for a free slot. `cancel` stops it; so does dropping
    /// the [`Generation`]. Later failures arrive as
    /// [`GenerationEvent::Failed`].
    fn launch(&self, chat: PreparedChat, cancel: CancelToken) -> Generation;

    /// [`Self::prepare`] then [`Self::launch`] with a cancel token of its own.
    ///
    /// # Errors
    /// As [`Self::prepare`].
    fn start(&self, request: ChatRequest) -> Result<Generation, ChatError> {
        let chat = self.prepare(request)?;
        Ok(self.launch(chat, CancelToken::default()))
    }

    /// Name of the model, for the `model` output.
    fn model_name(&self) -> String;

    /// `CPU` or `GPU`, for CodeProject's `inferenceDevice`.
    fn inference_device(&self) -> String {
        "CPU".to_owned()
    }

    /// How busy it is now.
    fn load(&self) -> GeneratorLoad {
        GeneratorLoad::default()
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

    /// The byte offsets in `text` where the model's tokens of it start,
    /// ascending (no BOS, special-token text read as text).
    ///
    /// # Errors
    /// [`ChatError::Engine`] when this generator has no tokenizer.
    fn token_starts(&self, text: &str) -> Result<Vec<usize>, ChatError> {
        let _ = text;
        Err(ChatError::Engine("this generator has no tokenizer".into()))
    }
}
