//! Chat templates: turning a system prompt and a user prompt into the model's prompt.
//!
//! A GGUF model carries its template in `tokenizer.chat_template` (a Hugging Face Jinja
//! template). [`crate::engine::LlamaEngine`] picks the format once, at load time:
//! llama.cpp's `llama_chat_apply_template` when its built-in detector recognises the
//! family (ChatML, Llama 2/3, Phi-3, Gemma, Mistral, ...), a real Jinja rendering with
//! `minijinja` ([`JinjaTemplate`]) for other templates, and ChatML ([`chatml`]) when the
//! model has no template or neither works.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

/// One chat message, as Hugging Face templates see it (`message['role']`,
/// `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The messages of one single-turn chat: the system prompt (left out when empty),
/// then the user's prompt.
#[must_use]
pub fn chat_messages(system_prompt: &str, prompt: &str) -> Vec<Message> {
    let mut messages = Vec::with_capacity(2);
    if !system_prompt.trim().is_empty() {
        messages.push(Message::new("system", system_prompt));
    }
    messages.push(Message::new("user", prompt));
    messages
}

/// Errors of Jinja template compilation and rendering.
#[derive(Debug, thiserror::Error)]
#[error("chat template: {0}")]
pub struct TemplateError(String);

impl From<Error> for TemplateError {
    fn from(e: Error) -> Self {
        // `{:#}` includes the template line that failed.
        Self(format!("{e:#}"))
    }
}

/// ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per message, then the assistant's
/// opening tag), the fallback format.
#[must_use]
pub fn chatml(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// A compiled Hugging Face chat template, rendered with `minijinja` the way the
/// `transformers` library does (`trim_blocks`, `lstrip_blocks`, `raise_exception`,
/// `bos_token`/`eos_token`, and the Python string methods templates commonly call).
pub struct JinjaTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat";

impl JinjaTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts of the model's
    /// BOS/EOS tokens, which templates insert themselves.
    ///
    /// # Errors
    /// [`TemplateError`] on a syntax error.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders the messages, ending with the assistant's opening tag when
    /// `add_generation_prompt` is true.
    ///
    /// # Errors
    /// [`TemplateError`] when the template fails (for example `raise_exception` about
    /// an unsupported role order).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template(TEMPLATE_NAME)?;
        Ok(tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })?)
    }
}

/// The Python `str`/`dict` methods chat templates use, which Jinja2 gets from Python
/// and minijinja does not have.
fn python_methods(
    state: &State<'_, '_>,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let arg_str = |i: usize| args.get(i).and_then(Value::as_str);
    match (value.kind(), method) {
        (ValueKind::String, _) => {
            let s = value.as_str().unwrap_or_default();
            let chars = arg_str(0);
            let trim_set = |c: char| chars.map_or(c.is_whitespace(), |set| set.contains(c));
            Ok(match method {
                "strip" => Value::from(s.trim_matches(trim_set)),
                "lstrip" => Value::from(s.trim_start_matches(trim_set)),
                "rstrip" => Value::from(s.trim_end_matches(trim_set)),
                "upper" => Value::from(s.to_uppercase()),
                "lower" => Value::from(s.to_lowercase()),
                "startswith" => Value::from(arg_str(0).is_some_and(|p| s.starts_with(p))),
                "endswith" => Value::from(arg_str(0).is_some_and(|p| s.ends_with(p))),
                "replace" => match (arg_str(0), arg_str(1)) {
                    (Some(from), Some(to)) => Value::from(s.replace(from, to)),
                    _ => return Err(Error::from(ErrorKind::MissingArgument)),
                },
                "split" => {
                    let parts: Vec<Value> = match arg_str(0) {
                        Some(sep) => s.split(sep).map(Value::from).collect(),
                        None => s.split_whitespace().map(Value::from).collect(),
                    };
                    Value::from(parts)
                }
                _ => return Err(Error::from(ErrorKind::UnknownMethod)),
            })
        }
        (ValueKind::Map, "items") => state.apply_filter("items", std::slice::from_ref(value)),
        (ValueKind::Map, "keys") => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
        (ValueKind::Map, "values") => Ok(Value::from(
            value
                .try_iter()?
                .map(|k| value.get_item(&k))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        (ValueKind::Map, "get") => {
            let key = args.first().cloned().unwrap_or_default();
            let found = value.get_item(&key)?;
            Ok(if found.is_undefined() {
                args.get(1).cloned().unwrap_or_default()
            } else {
                found
            })
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_wraps_each_message_and_opens_the_assistant_turn() {
        let out = chatml(&chat_messages("Be brief.", "Hi"));
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn an_empty_system_prompt_is_left_out() {
        let m = chat_messages("  ", "Hi");
        assert_eq!(m, vec![Message::new("user", "Hi")]);
    }

    #[test]
    fn the_demo_chatml_template_renders_like_the_fallback() {
        let t = JinjaTemplate::new(crate::gguf::CHATML_TEMPLATE, "<s>", "</s>").unwrap();
        let m = chat_messages("Be brief.", "Hi");
        assert_eq!(t.render(&m, true).unwrap(), chatml(&m));
    }

    /// A Llama-2-style template: system prompt folded into the first user turn,
    /// `bos_token`, `raise_exception`, `.strip()`, trim_blocks/lstrip_blocks.
    const LLAMA2_LIKE: &str = "{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}{% set rest = messages[1:] %}
{% else %}
    {% set system = '' %}{% set rest = messages %}
{% endif %}
{% for message in rest %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{- bos_token + '[INST] ' }}{% if loop.first and system %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}{{ message['content'].strip() + ' [/INST]' -}}
    {% else %}
        {{- ' ' + message['content'].strip() + ' ' + eos_token -}}
    {% endif %}
{% endfor %}";

    #[test]
    fn a_jinja_template_renders_with_python_methods_and_special_tokens() {
        let t = JinjaTemplate::new(LLAMA2_LIKE, "<s>", "</s>").unwrap();
        let out = t.render(&chat_messages("Sys", "  Hi  "), true).unwrap();
        assert_eq!(out, "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST]");
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let t = JinjaTemplate::new(LLAMA2_LIKE, "<s>", "</s>").unwrap();
        let bad = [Message::new("assistant", "x")];
        let err = t.render(&bad, true).unwrap_err();
        assert!(err.to_string().contains("must alternate"), "{err}");
    }

    #[test]
    fn a_syntax_error_is_reported_at_compile_time() {
        let err = JinjaTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(err.to_string().starts_with("chat template:"), "{err}");
    }

    #[test]
    fn dict_methods_work() {
        let t = JinjaTemplate::new(
            "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}{{ messages[0].get('x', 'none') }}",
            "",
            "",
        )
        .unwrap();
        let out = t.render(&[Message::new("user", "hi")], false).unwrap();
        assert!(
            out.contains("role=user;") && out.contains("content=hi;"),
            "{out}"
        );
        assert!(out.ends_with("none"), "{out}");
    }
}
