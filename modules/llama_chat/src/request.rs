//! What a chat asks for: [`ChatRequest`], its defaults and ranges, and how it
//! is read from a command's values ([`chat_request`]). The one place where
//! they are stated in code; the manifest's `Inputs` repeat them for clients,
//! and a test checks that the two agree.

use modhost_sdk::{ModuleError, RequestData};
use serde_json::Value;

use crate::generation::ChatError;
use crate::template::Message;

/// The system prompt when the request gives none (CodeProject's LlamaChat's).
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You're a helpful assistant who answers questions the user asks of you concisely and accurately.";

/// The temperature when the request gives none (CodeProject's LlamaChat's).
pub const DEFAULT_TEMPERATURE: f32 = 0.4;

/// Largest accepted temperature.
pub const MAX_TEMPERATURE: f32 = 2.0;

/// The command of route `text/complete`: `prompt` continued as it is,
/// without the chat template.
pub const COMPLETE_COMMAND: &str = "complete";

/// The roles a chat message may have.
const ROLES: [&str; 3] = ["system", "user", "assistant"];

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
            temperature: DEFAULT_TEMPERATURE,
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

/// The chat a command's values ask for, with CodeProject's defaults: `prompt`
/// or `messages`, `system_prompt`, `max_tokens`, `temperature`, `top_p`,
/// `top_k`, `seed` and `stop` (repeated); command `complete` makes it raw.
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
    let temperature = request.float_or("temperature", f64::from(DEFAULT_TEMPERATURE))?;
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
        .map(|(i, item)| parse_message(i, item))
        .collect()
}

fn parse_message(i: usize, item: &Value) -> Result<Message, ModuleError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(values: &[(&str, &str)]) -> RequestData {
        values.iter().fold(
            RequestData::new("prompt").with_request_id("c1"),
            |r, (k, v)| r.with_value(k, v),
        )
    }

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
        assert!((r.temperature - DEFAULT_TEMPERATURE).abs() < 1e-6);
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

    /// The manifest tells clients the defaults and ranges; they must be
    /// the ones stated here.
    #[test]
    fn the_manifest_states_the_same_defaults_and_ranges() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest =
            modulesettings::load_module_dir(dir, &modulesettings::Platform::current()).unwrap();
        let chat = manifest
            .settings
            .route_maps
            .iter()
            .find(|r| r.route == "text/chat")
            .unwrap();
        let input = |name: &str| chat.inputs.iter().find(|i| i.name == name).unwrap();
        let num = |v: &Option<Value>| v.as_ref().and_then(Value::as_f64);
        assert_eq!(
            input("system_prompt").default_value,
            Some(Value::from(DEFAULT_SYSTEM_PROMPT))
        );
        let t = input("temperature");
        let default = num(&t.default_value).unwrap();
        assert!(
            (default - f64::from(DEFAULT_TEMPERATURE)).abs() < 1e-6,
            "{default}"
        );
        assert_eq!(t.max_value, Some(f64::from(MAX_TEMPERATURE)));
        assert_eq!(t.min_value, Some(0.0));
        let m = input("max_tokens");
        assert_eq!(num(&m.default_value), Some(0.0));
        assert_eq!(m.min_value, Some(0.0));
    }
}
