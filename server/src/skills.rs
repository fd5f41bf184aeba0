//! WebAssembly skills beside the process modules (crate `modhost-skills`,
//! skills/README.md): the CSI backend that answers a skill's inference and
//! tokenizer calls with the modules' generation routes, and skill runs as
//! jobs the server owns.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use modhost_protocol::{Failure, FailureKind, JsonMap};
use modhost_skills::csi::{Backend, Finish, Generate, Generated, Prompt};
use modhost_skills::{CsiError, SkillError, SkillName, Skills};
use modulesettings::GenerationApi;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::commands::Commands;
use crate::generation::{self, Launched, Outcome, Sampling};
use crate::jobs::{JobStatus, Jobs};
use crate::queue::Origin;
use crate::registry::Registry;

/// The prefix of a skill run's job `moduleId`: `skill:{namespace}/{name}`.
pub const JOB_MODULE_PREFIX: &str = "skill:";

/// Answers CSI inference and tokenizer calls with the modules' routes that
/// implement `chat`, `completion` and `tokenize` (docs/protocol.md §4.7).
pub struct ModuleBackend {
    pub registry: Arc<Registry>,
    pub commands: Arc<Commands>,
    pub jobs: Arc<Jobs>,
}

impl Backend for ModuleBackend {
    fn generate(&self, request: Generate) -> BoxFuture<'static, Result<Generated, CsiError>> {
        let (api, content) = match &request.prompt {
            Prompt::Chat(messages) => {
                let messages: Vec<Value> = messages
                    .iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect();
                (
                    GenerationApi::Chat,
                    ("messages", Value::from(messages).to_string()),
                )
            }
            Prompt::Text(text) => (GenerationApi::Completion, ("prompt", text.clone())),
        };
        let mut sampling = Sampling {
            max_tokens: request.sampling.max_tokens.map(u64::from),
            temperature: request.sampling.temperature,
            top_p: request.sampling.top_p,
            top_k: request.sampling.top_k.map(u64::from),
            seed: None,
            stop: request.sampling.stop.clone(),
        };
        // LlamaChat's 0 means "as many as the context holds"; the WIT's 0
        // means none: one is the least it can generate.
        if sampling.max_tokens == Some(0) {
            sampling.max_tokens = Some(1);
        }
        // Refused rather than ignored: the models here have no penalties.
        let penalties = [
            ("frequency-penalty", request.sampling.frequency_penalty),
            ("presence-penalty", request.sampling.presence_penalty),
        ];
        if let Some((name, _)) = penalties.iter().find(|(_, p)| p.is_some_and(|p| p != 0.0)) {
            let refusal = CsiError::Request(format!(
                "inference: {name} is not supported by modhost's models; leave it unset"
            ));
            return Box::pin(async move { Err(refusal) });
        }
        let values = generation::values(&[content], &sampling);
        let call = self.call(api, request.model, values);
        Box::pin(async move {
            let outcome = Outcome::from_result(call.await?);
            Ok(Generated {
                text: outcome.text,
                finish: if outcome.finish_reason == "length" {
                    Finish::Length
                } else {
                    Finish::Stop
                },
                prompt_tokens: u32::try_from(outcome.prompt_tokens).unwrap_or(u32::MAX),
                completion_tokens: u32::try_from(outcome.completion_tokens).unwrap_or(u32::MAX),
            })
        })
    }

    fn token_starts(
        &self,
        model: String,
        text: String,
    ) -> BoxFuture<'static, Result<Vec<usize>, CsiError>> {
        let values = generation::values(&[("text", text)], &Sampling::default());
        let call = self.call(GenerationApi::Tokenize, model, values);
        Box::pin(async move {
            let result = call.await?;
            result
                .get("offsets")
                .and_then(Value::as_array)
                .map(|offsets| {
                    offsets
                        .iter()
                        .filter_map(Value::as_u64)
                        .map(|o| o as usize)
                        .collect()
                })
                .ok_or_else(|| {
                    CsiError::Unavailable("chunking: the tokenizer answered without offsets".into())
                })
        })
    }
}

impl ModuleBackend {
    /// Runs `api`'s route for `model` with `values` and waits for its final
    /// result, following the job when the module answers with one.
    fn call(
        &self,
        api: GenerationApi,
        model: String,
        values: crate::payload::RequestValues,
    ) -> BoxFuture<'static, Result<JsonMap, CsiError>> {
        let what = generation::api_name(api);
        let served = generation::resolve(&self.registry, api, Some(&model))
            .map_err(|e| CsiError::Request(format!("{what}: {e}")));
        let (commands, jobs) = (Arc::clone(&self.commands), Arc::clone(&self.jobs));
        Box::pin(async move {
            let served = served?;
            let job = match generation::launch(&commands, &jobs, &served, values).await {
                Ok(Launched::Done(result)) => return Ok(result),
                Ok(Launched::Job(job)) => job,
                Err(failure) => return Err(csi_failure(what, &failure)),
            };
            job.until_final().await;
            let view = job.view();
            match (view.status, view.result) {
                (JobStatus::Completed, Some(result)) => Ok(result),
                _ => Err(CsiError::Unavailable(format!(
                    "{what}: the generation {} ({})",
                    serde_json::to_value(view.status).unwrap_or_default(),
                    view.error.unwrap_or_default()
                ))),
            }
        })
    }
}

/// A failed command as the CSI error it is: the module's refusal is the
/// skill's to fix; anything else is the backend's.
fn csi_failure(what: &str, failure: &Failure) -> CsiError {
    let message = format!("{what}: {failure}");
    match failure.kind {
        FailureKind::CommandFailed => CsiError::Request(message),
        _ => CsiError::Unavailable(message),
    }
}

/// Runs the skill `name` with `input` as a job (`moduleId`
/// `skill:{namespace}/{name}`, route `skills/{namespace}/{name}/run`), visible
/// in the jobs API and cancellable through it; returns the job id with the
/// skill's output. The job's result is `{"output": ...}`.
///
/// # Errors
/// The skill's [`SkillError`], with the job id.
pub async fn run(
    skills: &Skills,
    jobs: &Arc<Jobs>,
    name: &SkillName,
    input: Vec<u8>,
) -> (String, Result<Value, SkillError>) {
    let id = uuid::Uuid::new_v4().to_string();
    let cancel = CancellationToken::new();
    let origin = Origin {
        module_id: format!("{JOB_MODULE_PREFIX}{name}"),
        route: format!("skills/{name}/run"),
        command: "run".into(),
    };
    let job = jobs.start_local(&id, origin, cancel.clone());
    // Ends the job when the run is dropped unfinished (its client went).
    let mut guard = LeftRun(Some((Arc::clone(jobs), Arc::clone(&job))));
    let result = skills.run(name, input, &cancel).await;
    guard.0 = None;
    let ended = match &result {
        Ok(output) => {
            let mut done = JsonMap::new();
            done.insert("success".into(), true.into());
            done.insert("commandId".into(), id.clone().into());
            done.insert("commandStatus".into(), "completed".into());
            done.insert("output".into(), output.clone());
            Ok(done)
        }
        Err(SkillError::Cancelled(m)) => Err(Failure::new(FailureKind::Cancelled, m.clone())),
        Err(e) => Err(Failure::new(
            FailureKind::CommandFailed,
            format!("{} ({})", e, e.code()),
        )),
    };
    jobs.end_local(&job, ended);
    (id, result)
}

/// A skill run's job, failed as cancelled when dropped while still set.
struct LeftRun(Option<(Arc<Jobs>, Arc<crate::jobs::Job>)>);

impl Drop for LeftRun {
    fn drop(&mut self) {
        if let Some((jobs, job)) = self.0.take() {
            let failure = Failure::new(
                FailureKind::Cancelled,
                "the client went before the skill finished",
            );
            jobs.end_local(&job, Err(failure));
        }
    }
}
