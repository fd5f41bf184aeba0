//! How a model's prompts are rendered: llama.cpp's built-in template of
//! the model's family when it knows it, the model's Jinja template through
//! minijinja when it does not, ChatML when the model has no usable template.

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::generation::ChatError;
use crate::template::{self, JinjaTemplate, Message};

/// How prompts are rendered, decided once per model.
pub(crate) enum PromptFormat {
    /// llama.cpp's built-in implementation of the model's template family.
    Builtin(LlamaChatTemplate),
    /// The model's Jinja template rendered by minijinja.
    Jinja(Box<JinjaTemplate>),
    /// No usable template: ChatML.
    ChatMl,
}

impl PromptFormat {
    /// Built-in if llama.cpp recognises the model's template, else Jinja if
    /// minijinja can render it, else ChatML.
    pub(crate) fn pick(model: &LlamaModel) -> Self {
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
        match JinjaTemplate::new(&source, bos, eos).and_then(|t| t.render(&probe, true).map(|_| t))
        {
            Ok(t) => PromptFormat::Jinja(Box::new(t)),
            Err(e) => {
                tracing::warn!(error = %e, "the model's chat template cannot be rendered; using ChatML");
                PromptFormat::ChatMl
            }
        }
    }

    /// Renders a conversation with `model`'s template, ending with the
    /// assistant's opening tag.
    ///
    /// # Errors
    /// [`ChatError::Template`] when the template fails on these messages,
    /// [`ChatError::InvalidRequest`] for a message llama.cpp cannot take
    /// (an interior NUL).
    pub(crate) fn render(
        &self,
        model: &LlamaModel,
        messages: &[Message],
    ) -> Result<String, ChatError> {
        match self {
            PromptFormat::Builtin(tmpl) => {
                let chat = to_llama_messages(messages)?;
                model
                    .apply_chat_template(tmpl, &chat, true)
                    .map_err(|e| ChatError::Template(format!("chat template: {e}")))
            }
            PromptFormat::Jinja(tmpl) => tmpl
                .render(messages, true)
                .map_err(|e| ChatError::Template(e.to_string())),
            PromptFormat::ChatMl => Ok(template::chatml(messages)),
        }
    }

    /// `llama.cpp built-in`, `jinja (minijinja)` or `ChatML fallback`.
    pub(crate) const fn name(&self) -> &'static str {
        match self {
            Self::Builtin(_) => "llama.cpp built-in",
            Self::Jinja(_) => "jinja (minijinja)",
            Self::ChatMl => "ChatML fallback",
        }
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
