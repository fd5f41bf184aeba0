//! `complete`: one text completion through the host's `inference` interface.
//!
//! Input `{"model": str, "prompt": str, "max_tokens": int}`; output
//! `{"text": str, "finish_reason": "stop"|"length"|"content-filter",
//! "prompt_tokens": int, "completion_tokens": int}`. Temperature is 0.

wit_bindgen::generate!({
    path: "../../../../skillhost/wit",
    world: "pharia:skill/skill",
});

use exports::pharia::skill::skill_handler::{Error, Guest, SkillMetadata};
use pharia::skill::inference::{self, CompletionParams, CompletionRequest, FinishReason, Logprobs};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    model: String,
    prompt: String,
    max_tokens: u32,
}

struct Skill;

impl Guest for Skill {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, Error> {
        let input: Input = serde_json::from_slice(&input).map_err(|e| {
            Error::InvalidInput(format!(
                "expected {{\"model\": str, \"prompt\": str, \"max_tokens\": int}}: {e}"
            ))
        })?;
        let request = CompletionRequest {
            model: input.model,
            prompt: input.prompt,
            params: CompletionParams {
                max_tokens: Some(input.max_tokens),
                temperature: Some(0.0),
                top_k: None,
                top_p: None,
                stop: Vec::new(),
                return_special_tokens: false,
                frequency_penalty: None,
                presence_penalty: None,
                logprobs: Logprobs::No,
            },
        };
        let completion = inference::complete(&[request])
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("complete returned no completion".to_owned()))?;
        let output = json!({
            "text": completion.text,
            "finish_reason": finish_reason(completion.finish_reason),
            "prompt_tokens": completion.usage.prompt,
            "completion_tokens": completion.usage.completion,
        });
        Ok(output.to_string().into_bytes())
    }

    fn metadata() -> SkillMetadata {
        SkillMetadata {
            description: Some("Completes a prompt".to_owned()),
            input_schema: br#"{"type":"object","properties":{"model":{"type":"string"},"prompt":{"type":"string"},"max_tokens":{"type":"integer","minimum":0}},"required":["model","prompt","max_tokens"]}"#.to_vec(),
            output_schema: br#"{"type":"object","properties":{"text":{"type":"string"},"finish_reason":{"enum":["stop","length","content-filter"]},"prompt_tokens":{"type":"integer"},"completion_tokens":{"type":"integer"}},"required":["text","finish_reason","prompt_tokens","completion_tokens"]}"#.to_vec(),
        }
    }
}

/// The WIT name of `reason`.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content-filter",
    }
}

export!(Skill);
