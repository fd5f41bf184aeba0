//! The LlamaChat module on `modhost-sdk`: the `prompt` command of route
//! `text/chat` as a long-running command.
//!
//! A chat is validated and started at once (bad values, a prompt longer than
//! the context or `max_tokens` beyond it are answered immediately as errors);
//! it then runs as the SDK's long process, appending each piece to the reply
//! that `get_command_status` returns (and that modhost streams), until the
//! model ends it, `max_tokens` or a stop string is reached, or
//! `cancel_command` stops it before the next token. Behaviour of
//! CodeProject.AI's LlamaChat (see modules/llama_chat/README.md), plus
//! `top_p`, `top_k`, `seed`, `stop` and token statistics.

use std::sync::Arc;

use modhost_sdk::{
    json_object, CommandHandle, ModuleContext, ModuleError, ModuleRunner, Outcome, RequestData,
};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::engine::{
    default_threads, CancelToken, ChatRequest, EngineConfig, Generation, GenerationEvent,
    Generator, LlamaEngine, Summary, MAX_TEMPERATURE,
};
use crate::model::ModelSource;
use crate::template::Message;

/// The system prompt when the request gives none (CodeProject's LlamaChat's).
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You're a helpful assistant who answers questions the user asks of you concisely and accurately.";

/// The temperature when the request gives none (CodeProject's LlamaChat's).
pub const DEFAULT_TEMPERATURE: f64 = 0.4;

/// The command of route `text/chat`.
pub const CHAT_COMMAND: &str = "prompt";

/// The command of route `text/complete`: `prompt` continued as it is,
/// without the chat template.
pub const COMPLETE_COMMAND: &str = "complete";

/// The command of route `text/embed`: `input`, a JSON array of texts, to
/// unit-length pooled embeddings.
pub const EMBED_COMMAND: &str = "embed";

/// The chat that is running: what `cancel_command` needs while the long
/// process owns the [`Generation`]. The reply so far and the token count
/// live in the SDK's [`CommandHandle`], which serves `get_command_status`
/// and pushes them to the server.
struct Running {
    command_id: String,
    cancel: CancelToken,
}

/// The LlamaChat module: a [`Generator`] (the real [`LlamaEngine`], loaded in
/// `initialise`, or one given by a test) behind CodeProject's chat protocol.
pub struct LlamaChat {
    generator: Option<Arc<dyn Generator>>,
    /// Fields added to the 2-second status (model, context size, threads).
    info: Map<String, Value>,
    /// Shared with the chat's long process, which sets and clears it.
    // parking_lot: held for a field copy or swap, never while generating.
    running: Arc<Mutex<Option<Running>>>,
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
            running: Arc::default(),
        }
    }

    /// A module around an existing generator (tests, benchmarks).
    #[must_use]
    pub fn with_generator(generator: Arc<dyn Generator>) -> Self {
        let info = json_object(json!({ "model": generator.model_name() }));
        Self {
            generator: Some(generator),
            info,
            running: Arc::default(),
        }
    }

    fn generator(&self) -> Result<&Arc<dyn Generator>, ModuleError> {
        self.generator
            .as_ref()
            .ok_or_else(|| ModuleError::new("the model is not loaded"))
    }

    /// Starts a chat and returns the long process that follows it.
    ///
    /// The chat becomes the [`Running`] one only when its long process runs:
    /// the SDK drops the process unrun when it refuses a second long command,
    /// and that refused chat must not hide the one in progress from
    /// `get_command_status` and `cancel_command`.
    fn chat(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        let chat = chat_request(request)?;
        let generation = self
            .generator()?
            .start(chat)
            .map_err(|e| ModuleError::new(e.to_string()))?;
        let model = self.generator()?.model_name();
        let command_id = request.request_id().to_owned();
        let running = Arc::clone(&self.running);
        Ok(Outcome::Long(Box::new(move |cmd: &CommandHandle| {
            *running.lock() = Some(Running {
                command_id: command_id.clone(),
                cancel: generation.cancel_token(),
            });
            let result = follow(cmd, &generation).map(|summary| {
                let text = match cmd.published().remove("reply") {
                    Some(Value::String(text)) => text,
                    _ => String::new(),
                };
                final_result(text, &summary, &model)
            });
            let mut running = running.lock();
            if running.as_ref().is_some_and(|r| r.command_id == command_id) {
                *running = None;
            }
            result
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

/// Publishes the generation's pieces on `cmd` until it ends.
fn follow(cmd: &CommandHandle, generation: &Generation) -> Result<Summary, ModuleError> {
    let mut tokens: u32 = 0;
    loop {
        match generation.recv() {
            GenerationEvent::Piece(piece) => {
                cmd.append_reply(&piece);
                tokens += 1;
                cmd.update("completion_tokens", tokens.into());
                // The cancel hook already stopped the generation; this covers
                // a cancel that came before the hook could see the chat.
                if cmd.is_cancelled() {
                    generation.cancel();
                }
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
        "completion_tokens": s.completion_tokens,
        "tokens_per_second": s.tokens_per_second,
        "time_to_first_token_ms": s.time_to_first_token_ms,
        "inferenceMs": s.inference_ms,
        "processMs": s.inference_ms,
        "seed": s.seed,
        "model": model,
    }))
}

/// The chat a request asks for, with CodeProject's defaults.
///
/// # Errors
/// A missing `prompt`, or a value of the wrong type or out of range, naming it.
pub fn chat_request(request: &RequestData) -> Result<ChatRequest, ModuleError> {
    let messages = match request.get("messages").filter(|m| !m.trim().is_empty()) {
        Some(text) => parse_messages(text)?,
        None => Vec::new(),
    };
    let prompt = if messages.is_empty() {
        let prompt = request.string("prompt")?;
        if prompt.trim().is_empty() {
            return Err(ModuleError::new("value 'prompt' is empty"));
        }
        prompt
    } else {
        String::new()
    };
    let out_of_range = |key: &str, value: String, expected: &str| {
        ModuleError::new(format!("value '{key}' is {value}: expected {expected}"))
    };
    let max_tokens = request.int_or("max_tokens", 0)?;
    let max_tokens = u32::try_from(max_tokens).map_err(|_| {
        out_of_range(
            "max_tokens",
            max_tokens.to_string(),
            "0 (as many as fit) or more",
        )
    })?;
    let temperature = request.float_or("temperature", DEFAULT_TEMPERATURE)?;
    if !(0.0..=f64::from(MAX_TEMPERATURE)).contains(&temperature) {
        return Err(out_of_range(
            "temperature",
            temperature.to_string(),
            "0 to 2",
        ));
    }
    let top_p = request.float_or("top_p", 1.0)?;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(out_of_range(
            "top_p",
            top_p.to_string(),
            "more than 0 and at most 1",
        ));
    }
    let top_k = request.int_or("top_k", 0)?;
    let top_k = u32::try_from(top_k)
        .map_err(|_| out_of_range("top_k", top_k.to_string(), "0 (off) or more"))?;
    let seed = match request.get("seed").filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(_) => {
            let seed = request.int("seed")?;
            Some(
                u32::try_from(seed)
                    .map_err(|_| out_of_range("seed", seed.to_string(), "0 to 4294967295"))?,
            )
        }
    };
    Ok(ChatRequest {
        prompt,
        system_prompt: request.string_or("system_prompt", DEFAULT_SYSTEM_PROMPT),
        messages,
        raw: request.command() == COMPLETE_COMMAND,
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k,
        seed,
        stop: request
            .values("stop")
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
    })
}

/// The roles a chat message may have.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// The `messages` value: a JSON array of `{"role", "content"}`, roles
/// `system`, `user` and `assistant`; `content` a string, or an array of
/// parts of which the `{"type": "text", "text"}` ones are joined (OpenAI's
/// other shape).
///
/// # Errors
/// Not JSON, not an array, empty, or a message of the wrong shape or role,
/// naming its index.
pub fn parse_messages(text: &str) -> Result<Vec<Message>, ModuleError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ModuleError::new(format!("value 'messages' is not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ModuleError::new(
            "value 'messages' must be a JSON array of {\"role\", \"content\"}",
        ));
    };
    if items.is_empty() {
        return Err(ModuleError::new("value 'messages' is an empty array"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |why: String| ModuleError::new(format!("messages[{i}]: {why}"));
            let Value::Object(fields) = item else {
                return Err(bad("not an object with role and content".into()));
            };
            let role = match fields.get("role") {
                Some(Value::String(role)) if ROLES.contains(&role.as_str()) => role.clone(),
                Some(Value::String(role)) => {
                    return Err(bad(format!(
                        "role '{role}' is not one of system, user, assistant"
                    )))
                }
                _ => return Err(bad("'role' is missing or not a string".into())),
            };
            let content = match fields.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|part| match (part.get("type"), part.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(text))) if t == "text" => {
                            Ok(text.as_str())
                        }
                        _ => Err(bad(
                            "only text content parts ({\"type\": \"text\", \"text\"}) are supported".into(),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
                Some(Value::Null) | None => return Err(bad("'content' is missing".into())),
                Some(_) => return Err(bad("'content' is not a string".into())),
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// Engine settings from `CPAI_MODULE_LLAMA_THREADS` (default: the machine's
/// cores), `CPAI_MODULE_LLAMA_CONTEXT_SIZE` (tokens; default the model's,
/// capped at 4096; 0 = the model's), `CPAI_MODULE_LLAMA_BATCH_SIZE` (default
/// 512) and `CPAI_MODULE_LLAMA_GPU_LAYERS` (default: all when llama.cpp was
/// built with GPU support).
///
/// # Errors
/// A variable that is not a non-negative integer, naming it.
pub fn engine_config_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<EngineConfig, ModuleError> {
    let number = |name: &str| -> Result<Option<u32>, ModuleError> {
        match var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
        {
            None => Ok(None),
            Some(v) => v
                .parse::<u32>()
                .map(Some)
                .map_err(|_| ModuleError::new(format!("{name} is '{v}': expected a whole number"))),
        }
    };
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
        ..defaults
    })
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
        let config = engine_config_from_env(|name| std::env::var(name).ok())?;
        let engine = LlamaEngine::load(&path, config.clone())
            .map_err(|e| ModuleError::new(e.to_string()))?;
        self.info = json_object(json!({
            "model": engine.model_name(),
            "modelPath": path.display().to_string(),
            "contextSize": engine.context_size(),
            "threads": config.threads,
            "promptFormat": engine.prompt_format(),
        }));
        tracing::info!(model = %engine.model_name(), path = %path.display(), "LlamaChat ready");
        self.generator = Some(Arc::new(engine));
        Ok(())
    }

    fn process(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        match request.command() {
            CHAT_COMMAND | COMPLETE_COMMAND => self.chat(request),
            EMBED_COMMAND => self.embed(request),
            other => Err(ModuleError::new(format!(
                "unknown command '{other}': LlamaChat handles '{CHAT_COMMAND}' (route text/chat) \
                 '{COMPLETE_COMMAND}' (route text/complete) and '{EMBED_COMMAND}' (route text/embed)"
            ))),
        }
    }

    fn cancel(&self, command_id: &str) {
        if let Some(r) = self
            .running
            .lock()
            .as_ref()
            .filter(|r| r.command_id == command_id)
        {
            r.cancel.cancel();
        }
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

    fn status(&self) -> Map<String, Value> {
        self.info.clone()
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

    #[test]
    fn messages_are_read_and_bad_ones_named_by_index() {
        let messages = parse_messages(
            r#"[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]},
                {"role":"assistant","content":"Hello."}]"#,
        )
        .unwrap();
        assert_eq!(messages[1], Message::new("user", "Hi there"));
        assert_eq!(messages.len(), 3);
        for (text, needle) in [
            ("not json", "not JSON"),
            ("{}", "must be a JSON array"),
            ("[]", "empty array"),
            (
                r#"[{"role":"user","content":"a"},{"role":"tool","content":"b"}]"#,
                "messages[1]: role 'tool'",
            ),
            (r#"[{"role":"user"}]"#, "messages[0]: 'content' is missing"),
            (r#"[{"content":"x"}]"#, "messages[0]: 'role' is missing"),
            (r#"["hi"]"#, "messages[0]: not an object"),
            (
                r#"[{"role":"user","content":[{"type":"image_url"}]}]"#,
                "only text content parts",
            ),
        ] {
            let err = parse_messages(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
    use crate::engine::tests::TINY;
    use crate::engine::TokenCount;

    /// The shared tiny engine; remembers the token count of the last chat
    /// started, which the module's long process otherwise keeps to itself.
    #[derive(Default)]
    struct Shared {
        last: Mutex<Option<TokenCount>>,
    }

    impl Generator for Shared {
        fn start(&self, r: ChatRequest) -> Result<Generation, crate::engine::ChatError> {
            let generation = TINY.engine.start(r)?;
            *self.last.lock() = Some(generation.token_count());
            Ok(generation)
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
    fn request_values_are_read_with_codeproject_defaults() {
        let r = chat_request(&chat(&[
            ("prompt", "Hi"),
            ("stop", "A"),
            ("stop", "B"),
            ("seed", "7"),
        ]))
        .unwrap();
        assert_eq!(r.system_prompt, DEFAULT_SYSTEM_PROMPT);
        assert_eq!(r.max_tokens, 0);
        assert!((f64::from(r.temperature) - DEFAULT_TEMPERATURE).abs() < 1e-6);
        assert_eq!(r.stop, ["A", "B"]);
        assert_eq!(r.seed, Some(7));
        // Unfilled form fields arrive as empty strings and mean "default".
        let r = chat_request(&chat(&[("prompt", "Hi"), ("seed", ""), ("max_tokens", "")])).unwrap();
        assert_eq!((r.seed, r.max_tokens), (None, 0));
    }

    #[test]
    fn bad_values_are_named() {
        for (values, expected) in [
            (&[][..], "missing value 'prompt'"),
            (&[("prompt", "  ")][..], "value 'prompt' is empty"),
            (
                &[("prompt", "x"), ("temperature", "-1")][..],
                "value 'temperature' is -1: expected 0 to 2",
            ),
            (
                &[("prompt", "x"), ("max_tokens", "-5")][..],
                "value 'max_tokens' is -5",
            ),
            (
                &[("prompt", "x"), ("max_tokens", "many")][..],
                "value 'max_tokens' is 'many'",
            ),
            (&[("prompt", "x"), ("top_p", "0")][..], "value 'top_p' is 0"),
            (&[("prompt", "x"), ("seed", "-1")][..], "value 'seed' is -1"),
        ] {
            let err = chat_request(&chat(values)).unwrap_err().to_string();
            assert!(err.contains(expected), "{values:?}: {err}");
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
    fn cancel_stops_the_chat_within_one_token_and_keeps_the_partial_reply() {
        let (m, generator) = module_and_generator();
        let outcome = m
            .process(&chat(&[("prompt", "Hi"), ("temperature", "1")]))
            .unwrap();
        let count = generator.last.lock().clone().unwrap();
        let cmd = CommandHandle::new("c1");
        // Cancel as soon as the reply is under way, from another thread, as
        // the SDK's cancel_command does.
        let (result, n0) = std::thread::scope(|scope| {
            let job = scope.spawn(|| run_long(outcome, &cmd));
            wait_for_tokens(&cmd, 2, &job);
            cmd.cancel();
            m.cancel("c1");
            let n0 = count.get();
            (job.join().unwrap(), u64::from(n0))
        });
        assert_eq!(result["stop_reason"], "cancelled");
        let tokens = result["completion_tokens"].as_u64().unwrap();
        assert!(
            tokens <= n0 + 1,
            "{tokens} tokens, {n0} when cancelled: the cancel hook landed late"
        );
        assert!(!result["reply"].as_str().unwrap().is_empty());
    }

    #[test]
    fn a_refused_second_chat_leaves_the_running_one_in_view() {
        let m = module();
        let first = m
            .process(&chat(&[("prompt", "Hi"), ("temperature", "1")]))
            .unwrap();
        let cmd = CommandHandle::new("c1");
        let result = std::thread::scope(|scope| {
            let job = scope.spawn(|| run_long(first, &cmd));
            wait_for_tokens(&cmd, 2, &job);
            // The SDK refuses a second long command while one runs and drops
            // its process unrun.
            let second = m
                .process(
                    &RequestData::new("prompt")
                        .with_request_id("c2")
                        .with_value("prompt", "Hey"),
                )
                .unwrap();
            drop(second);
            // Only the module's cancel hook: it must still reach c1's chat.
            m.cancel("c1");
            job.join().unwrap()
        });
        assert_eq!(result["stop_reason"], "cancelled", "{result:?}");
        assert!(m.running.lock().is_none(), "a finished chat is cleared");
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
