//! The LlamaChat module on `modhost-sdk`: the `prompt` command of route
//! `text/chat` (and `complete` of `text/complete`) as long-running commands,
//! `embed` of `text/embed` and `tokenize` of `text/tokenize` as plain ones.
//!
//! A chat is read ([`crate::request`]) and prepared at once (bad values, a
//! prompt longer than the context or `max_tokens` beyond it are answered
//! immediately as errors); it then runs as the SDK's long process, which
//! the SDK starts when one of the module's slots is free (up to
//! `CPAI_MODULE_LLAMA_PARALLEL` chats at once, decoded together; more wait in
//! the SDK's queue as `queued`, and past `CPAI_MODULE_LLAMA_QUEUE` they are
//! refused as `queue_full`). Its pieces are appended to the reply that
//! `get_command_status` returns (and that modhost streams) until the model
//! ends it, `max_tokens` or a stop string is reached, or `cancel_command`
//! stops it: the SDK's cancel flag is the generation's, seen at the next
//! decode step. Behaviour of CodeProject.AI's LlamaChat (see
//! modules/llama_chat/README.md), plus `messages`, `top_p`, `top_k`, `seed`,
//! `stop` and token statistics.

use std::sync::Arc;

use modhost_sdk::{
    json_object, CommandHandle, LongCapacity, ModuleContext, ModuleError, ModuleRunner, Outcome,
    RequestData,
};
use serde_json::{json, Map, Value};

use crate::engine::{default_threads, EngineConfig, LlamaEngine, DEFAULT_PARALLEL};
use crate::generation::{CancelToken, Generation, GenerationEvent, Generator, Summary};
use crate::model::ModelSource;
use crate::request::{chat_request, ChatRequest, COMPLETE_COMMAND};

/// The command of route `text/chat`.
pub const CHAT_COMMAND: &str = "prompt";

/// The command of route `text/embed`: `input`, a JSON array of texts, to
/// unit-length pooled embeddings.
pub const EMBED_COMMAND: &str = "embed";

/// The command of route `text/tokenize`: `text` to the byte offsets where
/// the model's tokens of it start (skills' chunking counts tokens with it).
pub const TOKENIZE_COMMAND: &str = "tokenize";

/// Chats that may wait for a slot when `CPAI_MODULE_LLAMA_QUEUE` is not set.
pub const DEFAULT_QUEUE: u32 = 16;

/// The LlamaChat module: a [`Generator`] (the real [`LlamaEngine`], loaded in
/// `initialise`, or one given by a test) behind CodeProject's chat protocol.
pub struct LlamaChat {
    generator: Option<Arc<dyn Generator>>,
    /// Fields added to the 2-second status (model, context size, threads).
    info: Map<String, Value>,
    /// Chats at once, and waiting, as the SDK admits them.
    capacity: LongCapacity,
}

impl Default for LlamaChat {
    fn default() -> Self {
        Self::new()
    }
}

impl LlamaChat {
    /// A module that loads its model in `initialise`, from the environment
    /// ([`ModelSource`], [`engine_config_from_env`]).
    #[must_use]
    pub fn new() -> Self {
        Self {
            generator: None,
            info: Map::new(),
            capacity: LongCapacity::default(),
        }
    }

    /// A module around an existing generator (tests, benchmarks), with as
    /// many slots as the generator has and the default queue.
    #[must_use]
    pub fn with_generator(generator: Arc<dyn Generator>) -> Self {
        let info = json_object(json!({ "model": generator.model_name() }));
        let slots = generator.load().slots.max(1);
        Self {
            generator: Some(generator),
            info,
            capacity: LongCapacity {
                slots: slots as usize,
                queue: DEFAULT_QUEUE as usize,
            },
        }
    }

    fn generator(&self) -> Result<&Arc<dyn Generator>, ModuleError> {
        self.generator
            .as_ref()
            .ok_or_else(|| ModuleError::new("the model is not loaded"))
    }

    /// Prepares a chat and returns the long process that launches and
    /// follows it once the SDK gives it a slot.
    fn chat(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        let generator = Arc::clone(self.generator()?);
        let chat = generator
            .prepare(chat_request(request)?)
            .map_err(|e| ModuleError::new(e.to_string()))?;
        Ok(Outcome::Long(Box::new(move |cmd: &CommandHandle| {
            let cancel = CancelToken::from_flag(cmd.cancel_flag());
            let generation = generator.launch(chat, cancel);
            let summary = follow(cmd, &generation)?;
            let text = match cmd.published().remove("reply") {
                Some(Value::String(text)) => text,
                _ => String::new(),
            };
            Ok(final_result(text, &summary, &generator.model_name()))
        })))
    }
}

impl LlamaChat {
    /// `{"embeddings": [[f32]], "prompt_tokens", "model"}` for the texts of
    /// `input` (a JSON array of strings, or one string).
    fn embed(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        let input = request.string("input")?;
        let texts: Vec<String> = match serde_json::from_str::<Value>(&input) {
            Ok(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ModuleError::new(format!("input[{i}] is not a string")))
                })
                .collect::<Result<_, _>>()?,
            Ok(Value::Array(_)) => return Err(ModuleError::new("value 'input' is an empty array")),
            _ => vec![input],
        };
        let generator = self.generator()?;
        let (vectors, tokens) = generator
            .embed(&texts)
            .map_err(|e| ModuleError::new(e.to_string()))?;
        Ok(Outcome::Done(json_object(json!({
            "success": true,
            "embeddings": vectors,
            "prompt_tokens": tokens,
            "model": generator.model_name(),
        }))))
    }
}

impl LlamaChat {
    /// `{"offsets": [byte offset of each token], "tokens", "model"}` for
    /// `text`.
    fn tokenize(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        let text = request.string("text")?;
        let generator = self.generator()?;
        let offsets = generator
            .token_starts(&text)
            .map_err(|e| ModuleError::new(e.to_string()))?;
        Ok(Outcome::Done(json_object(json!({
            "success": true,
            "tokens": offsets.len(),
            "offsets": offsets,
            "model": generator.model_name(),
        }))))
    }
}

/// Publishes the generation's pieces and token count on `cmd` until it ends.
fn follow(cmd: &CommandHandle, generation: &Generation) -> Result<Summary, ModuleError> {
    loop {
        match generation.recv() {
            GenerationEvent::Piece(piece) => {
                let mut count = Map::new();
                count.insert(
                    "completion_tokens".into(),
                    generation.tokens_generated().into(),
                );
                cmd.append_reply_with(&piece, count);
            }
            GenerationEvent::Done(summary) => return Ok(summary),
            GenerationEvent::Failed(e) => return Err(ModuleError::new(e.to_string())),
        }
    }
}

/// The final `get_command_status` fields of a chat.
fn final_result(reply: String, s: &Summary, model: &str) -> Map<String, Value> {
    json_object(json!({
        "success": true,
        "reply": reply,
        "stop_reason": s.finish_reason.stop_reason(),
        "finish_reason": s.finish_reason,
        "prompt_tokens": s.prompt_tokens,
        "cached_tokens": s.cached_tokens,
        "completion_tokens": s.completion_tokens,
        "tokens_per_second": s.tokens_per_second,
        "time_to_first_token_ms": s.time_to_first_token_ms,
        "inferenceMs": s.inference_ms,
        "processMs": s.inference_ms,
        "seed": s.seed,
        "model": model,
    }))
}

/// Engine settings from `CPAI_MODULE_LLAMA_THREADS` (default: the machine's
/// cores), `CPAI_MODULE_LLAMA_CONTEXT_SIZE` (tokens per slot; default the
/// model's, capped at 4096; 0 = the model's), `CPAI_MODULE_LLAMA_BATCH_SIZE`
/// (default 512), `CPAI_MODULE_LLAMA_GPU_LAYERS` (default: all when llama.cpp
/// was built with GPU support), `CPAI_MODULE_LLAMA_PARALLEL` (slots: chats
/// decoded together; default [`DEFAULT_PARALLEL`]) and
/// `CPAI_MODULE_LLAMA_HUGE_PAGES` (`true` or `false`, default `true`: see
/// [`crate::hugepages`]).
///
/// # Errors
/// A number that is not a non-negative integer, or a switch that is not
/// `true` or `false`, naming the variable.
pub fn engine_config_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<EngineConfig, ModuleError> {
    let number = |name: &str| env_number(&var, name);
    let defaults = EngineConfig::default();
    Ok(EngineConfig {
        threads: number("CPAI_MODULE_LLAMA_THREADS")?
            .filter(|&n| n > 0)
            .unwrap_or_else(default_threads),
        context_size: number("CPAI_MODULE_LLAMA_CONTEXT_SIZE")?,
        batch_size: number("CPAI_MODULE_LLAMA_BATCH_SIZE")?
            .filter(|&n| n > 0)
            .unwrap_or(defaults.batch_size),
        gpu_layers: number("CPAI_MODULE_LLAMA_GPU_LAYERS")?,
        parallel: number("CPAI_MODULE_LLAMA_PARALLEL")?
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_PARALLEL),
        huge_pages: env_switch(&var, "CPAI_MODULE_LLAMA_HUGE_PAGES")?
            .unwrap_or(defaults.huge_pages),
        ..defaults
    })
}

fn env_switch(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<bool>, ModuleError> {
    let Some(v) = env_value(var, name) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(ModuleError::new(format!(
            "{name} is '{v}': expected true or false"
        ))),
    }
}

/// Chats that may wait for a slot: `CPAI_MODULE_LLAMA_QUEUE`, default
/// [`DEFAULT_QUEUE`]; 0 refuses a chat as soon as every slot is busy.
///
/// # Errors
/// A value that is not a non-negative integer, naming the variable.
pub fn queue_from_env(var: impl Fn(&str) -> Option<String>) -> Result<u32, ModuleError> {
    Ok(env_number(&var, "CPAI_MODULE_LLAMA_QUEUE")?.unwrap_or(DEFAULT_QUEUE))
}

fn env_number(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<u32>, ModuleError> {
    match env_value(var, name) {
        None => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .map(Some)
            .map_err(|_| ModuleError::new(format!("{name} is '{v}': expected a whole number"))),
    }
}

/// Variable `name`, trimmed; `None` when unset or blank.
fn env_value(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl ModuleRunner for LlamaChat {
    fn initialise(&mut self, ctx: &ModuleContext) -> Result<(), ModuleError> {
        if self.generator.is_some() {
            return Ok(());
        }
        let source = ModelSource::from_env(&ctx.module_path);
        let path = source
            .ensure()
            .map_err(|e| ModuleError::new(e.to_string()))?;
        let env = |name: &str| std::env::var(name).ok();
        let config = engine_config_from_env(env)?;
        let queue = queue_from_env(env)?;
        let engine = LlamaEngine::load(&path, config.clone())
            .map_err(|e| ModuleError::new(e.to_string()))?;
        self.info = json_object(json!({
            "model": engine.model_name(),
            "modelPath": path.display().to_string(),
            "contextSize": engine.context_size(),
            "parallel": config.parallel,
            "threads": config.threads,
            "promptFormat": engine.prompt_format(),
        }));
        self.capacity = LongCapacity {
            slots: config.parallel as usize,
            queue: queue as usize,
        };
        tracing::info!(model = %engine.model_name(), path = %path.display(), "LlamaChat ready");
        self.generator = Some(Arc::new(engine));
        Ok(())
    }

    fn process(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        match request.command() {
            CHAT_COMMAND | COMPLETE_COMMAND => self.chat(request),
            EMBED_COMMAND => self.embed(request),
            TOKENIZE_COMMAND => self.tokenize(request),
            other => Err(ModuleError::new(format!(
                "unknown command '{other}': LlamaChat handles '{CHAT_COMMAND}' (route text/chat), \
                 '{COMPLETE_COMMAND}' (route text/complete), '{EMBED_COMMAND}' (route text/embed) \
                 and '{TOKENIZE_COMMAND}' (route text/tokenize)"
            ))),
        }
    }

    fn long_capacity(&self) -> LongCapacity {
        self.capacity
    }

    fn selftest(&self) -> Result<(), ModuleError> {
        let chat = ChatRequest {
            max_tokens: 16,
            temperature: 0.0,
            ..ChatRequest::new("How many planets are there in the solar system?")
        };
        let (reply, summary) = self
            .generator()?
            .start(chat)
            .and_then(Generation::wait)
            .map_err(|e| ModuleError::new(format!("chat failed: {e}")))?;
        if summary.completion_tokens == 0 {
            return Err(ModuleError::new("the model generated nothing"));
        }
        tracing::info!(
            tokens = summary.completion_tokens,
            tokens_per_second = summary.tokens_per_second,
            "self-test chat: {reply:?}"
        );
        Ok(())
    }

    /// The model's figures, and tokens generated per second over the last
    /// minute, all chats together (the SDK adds the slots in use and the
    /// chats waiting, as `longCommands`).
    fn status(&self) -> Map<String, Value> {
        let mut status = self.info.clone();
        if let Some(generator) = &self.generator {
            status.insert(
                "tokensPerSecond".into(),
                generator.load().tokens_per_second.into(),
            );
        }
        status
    }

    fn inference_device(&self) -> String {
        self.generator
            .as_ref()
            .map_or_else(|| "CPU".to_owned(), |g| g.inference_device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::TINY;
    use crate::generation::{ChatError, PreparedChat, TokenCount};
    use parking_lot::Mutex;

    /// The shared tiny engine; remembers the token count of the last chat
    /// launched, which the module's long process otherwise keeps to itself.
    #[derive(Default)]
    struct Shared {
        last: Mutex<Option<TokenCount>>,
    }

    impl Generator for Shared {
        fn prepare(&self, r: ChatRequest) -> Result<PreparedChat, ChatError> {
            TINY.engine.prepare(r)
        }
        fn launch(&self, chat: PreparedChat, cancel: CancelToken) -> Generation {
            let generation = TINY.engine.launch(chat, cancel);
            *self.last.lock() = Some(generation.token_count());
            generation
        }
        fn model_name(&self) -> String {
            TINY.engine.model_name()
        }
    }

    fn module() -> LlamaChat {
        module_and_generator().0
    }

    /// A fresh module on the shared tiny engine, and its generator.
    fn module_and_generator() -> (LlamaChat, Arc<Shared>) {
        let generator = Arc::new(Shared::default());
        let module = LlamaChat::with_generator(Arc::clone(&generator) as Arc<dyn Generator>);
        (module, generator)
    }

    fn chat(values: &[(&str, &str)]) -> RequestData {
        values.iter().fold(
            RequestData::new("prompt").with_request_id("c1"),
            |r, (k, v)| r.with_value(k, v),
        )
    }

    fn run_long(outcome: Outcome, cmd: &CommandHandle) -> Map<String, Value> {
        match outcome {
            Outcome::Long(job) => job(cmd).unwrap(),
            Outcome::Done(map) => panic!("expected a long process, got {map:?}"),
        }
    }

    #[test]
    fn a_chat_streams_into_command_status_and_ends_with_statistics() {
        let m = module();
        let outcome = m
            .process(&chat(&[
                ("prompt", "Hi"),
                ("max_tokens", "12"),
                ("seed", "3"),
            ]))
            .unwrap();
        let cmd = CommandHandle::new("c1");
        let result = run_long(outcome, &cmd);
        // What get_command_status showed is what the chat ended with.
        assert_eq!(cmd.published()["reply"], result["reply"]);
        assert_eq!(cmd.published()["completion_tokens"], 12);
        assert_eq!(result["stop_reason"], "completed");
        assert_eq!(result["finish_reason"], "length");
        assert_eq!(result["completion_tokens"], 12);
        assert!(!result["reply"].as_str().unwrap().is_empty());
        assert!(result["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(result["cached_tokens"].is_u64());
        assert!(result["tokens_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(result["model"], TINY.engine.model_name());
    }

    #[test]
    fn errors_found_before_generating_are_answered_at_once() {
        let m = module();
        let err = m
            .process(&chat(&[("prompt", "Hi"), ("max_tokens", "100000")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("max_tokens 100000 does not fit"),
            "{err}"
        );
        let err = m.process(&RequestData::new("summarise")).unwrap_err();
        assert!(
            err.to_string().contains("unknown command 'summarise'"),
            "{err}"
        );
    }

    #[test]
    fn the_sdk_cancel_flag_stops_the_chat_within_one_token_and_keeps_the_partial_reply() {
        let (m, generator) = module_and_generator();
        let outcome = m
            .process(&chat(&[("prompt", "Hi"), ("temperature", "1")]))
            .unwrap();
        let cmd = CommandHandle::new("c1");
        // Cancel as soon as the reply is under way, from another thread, as
        // the SDK's cancel_command does: it sets the flag and nothing else.
        let (result, n0) = std::thread::scope(|scope| {
            let job = scope.spawn(|| run_long(outcome, &cmd));
            wait_for_tokens(&cmd, 2, &job);
            cmd.cancel();
            let n0 = generator.last.lock().clone().unwrap().get();
            (job.join().unwrap(), u64::from(n0))
        });
        assert_eq!(result["stop_reason"], "cancelled");
        let tokens = result["completion_tokens"].as_u64().unwrap();
        assert!(
            tokens <= n0 + 1,
            "{tokens} tokens, {n0} when cancelled: the cancel landed late"
        );
        assert!(!result["reply"].as_str().unwrap().is_empty());
    }

    #[test]
    fn a_chat_refused_after_prepare_costs_nothing() {
        let (m, generator) = module_and_generator();
        // As the SDK does with a chat beyond its queue: prepared, dropped unrun.
        for _ in 0..20 {
            drop(m.process(&chat(&[("prompt", "Hi")])).unwrap());
        }
        assert!(generator.last.lock().is_none(), "nothing was launched");
        let cmd = CommandHandle::new("c2");
        let outcome = m
            .process(&chat(&[("prompt", "Hi"), ("max_tokens", "3")]))
            .unwrap();
        assert_eq!(run_long(outcome, &cmd)["completion_tokens"], 3);
    }

    #[test]
    fn capacity_and_queue_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let config = engine_config_from_env(env(&[("CPAI_MODULE_LLAMA_PARALLEL", "8")])).unwrap();
        assert_eq!(config.parallel, 8);
        assert_eq!(
            engine_config_from_env(env(&[])).unwrap().parallel,
            DEFAULT_PARALLEL
        );
        assert_eq!(queue_from_env(env(&[])).unwrap(), DEFAULT_QUEUE);
        assert_eq!(
            queue_from_env(env(&[("CPAI_MODULE_LLAMA_QUEUE", "0")])).unwrap(),
            0
        );
        let err = queue_from_env(env(&[("CPAI_MODULE_LLAMA_QUEUE", "lots")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CPAI_MODULE_LLAMA_QUEUE is 'lots': expected a whole number"
        );
        assert!(engine_config_from_env(env(&[])).unwrap().huge_pages);
        let off = env(&[("CPAI_MODULE_LLAMA_HUGE_PAGES", " False ")]);
        assert!(!engine_config_from_env(off).unwrap().huge_pages);
        let err =
            engine_config_from_env(env(&[("CPAI_MODULE_LLAMA_HUGE_PAGES", "maybe")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CPAI_MODULE_LLAMA_HUGE_PAGES is 'maybe': expected true or false"
        );
    }

    /// Waits until the chat behind `cmd` has published `n` tokens; panics
    /// if its job ends first or a minute passes.
    fn wait_for_tokens(
        cmd: &CommandHandle,
        n: u64,
        job: &std::thread::ScopedJoinHandle<'_, Map<String, Value>>,
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = cmd.published();
            let tokens = status.get("completion_tokens").and_then(Value::as_u64);
            if tokens.unwrap_or(0) >= n {
                return;
            }
            assert!(
                !job.is_finished(),
                "the chat ended before {n} tokens: {status:?}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {n} tokens in a minute: {status:?}"
            );
            std::thread::yield_now();
        }
    }
}
