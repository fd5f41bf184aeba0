//! Commands: the one way a request reaches a module and comes back.
//!
//! Every API in front (CodeProject's `/v1/{route}`, the jobs API, and later
//! the OpenAI and Ollama APIs) sends work through [`Commands`]: it checks
//! that the module runs, queues the command, waits for the reply within the
//! request timeout, and turns a long process into a [`Job`]. It also answers
//! `get_command_status` and `cancel_command` for jobs it owns, and follows
//! the jobs of modules that do not push their progress by asking them for
//! `get_command_status` on the control lane (docs/protocol.md §4.4).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use modhost_protocol::{
    cancel_reply, status_reply, EnvelopeFields, Failure, FailureKind, JsonMap, KeyValue, Payload,
    QueueItem, ReplyMeta, CANCEL_COMMAND, GET_COMMAND_STATUS_COMMAND,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::jobs::{Job, JobStatus, Jobs};
use crate::payload::RequestValues;
use crate::queue::{Delivery, Origin, Queues};
use crate::registry::{Module, RouteMatch};

/// How often an unwatched job of a module that does not push is asked for
/// its status, so that it still finishes in the jobs list.
const UNWATCHED_POLL: Duration = Duration::from_secs(2);

/// Longest wait for a module's answer to a status or cancel the server
/// sends on its own behalf.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends commands to modules and owns the jobs they start.
pub struct Commands {
    pub queues: Arc<Queues>,
    pub jobs: Arc<Jobs>,
    /// Longest a client waits for a reply, queue time included.
    timeout: Duration,
    /// How often a watched job of a module that does not push is asked for
    /// its status.
    poll_interval: Duration,
    /// Ends the job pollers at shutdown.
    shutdown: CancellationToken,
}

impl Commands {
    pub fn new(
        queues: Arc<Queues>,
        jobs: Arc<Jobs>,
        timeout: Duration,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Commands> {
        Arc::new(Commands {
            queues,
            jobs,
            timeout,
            poll_interval,
            shutdown,
        })
    }

    /// Runs the command `target` names with `values` and returns the
    /// module's reply: `get_command_status` and `cancel_command` go through
    /// [`Commands::status`] and [`Commands::cancel`].
    ///
    /// # Errors
    /// A [`Failure`]: module not running, queue full, timeout, module crashed
    /// or stopped meanwhile, invalid reply.
    pub async fn run(&self, target: RouteMatch, values: RequestValues) -> Result<JsonMap, Failure> {
        let module = &target.module;
        if target.route.is_none() {
            let id = values.get("commandId").map(str::to_owned);
            if target.command == GET_COMMAND_STATUS_COMMAND {
                return self.status(module, id.as_deref()).await;
            }
            if target.command == CANCEL_COMMAND {
                return self.cancel(module, id.as_deref()).await;
            }
        }
        ensure_running(module)?;
        let reqid = uuid::Uuid::new_v4().to_string();
        tracing::debug!(%reqid, module = module.id(), command = %target.command, "queueing command");
        let item = QueueItem::new(
            reqid,
            &target.command,
            values.into_payload(target.url_segments),
        );
        let origin = Origin {
            module_id: module.id().to_owned(),
            route: target
                .route
                .as_ref()
                .map(|r| r.route.clone())
                .unwrap_or_default(),
            command: target.command.clone(),
        };
        let ticket = self.queues.enqueue(&module.queue, item, origin)?;
        let reply = ticket.wait(self.timeout).await?;
        module_refusal(&reply).map_or(Ok(reply), Err)
    }

    /// `get_command_status` for `command_id` in `module`: a job that has
    /// finished, or whose module pushes its progress, is answered from the
    /// job; a running job of a module that does not push is asked of the
    /// module on the control lane (and the answer updates the job); an id the
    /// server never saw, or that expired, is `unknown`.
    ///
    /// # Errors
    /// As for [`Commands::run`], when the module must be asked.
    pub async fn status(
        &self,
        module: &Arc<Module>,
        command_id: Option<&str>,
    ) -> Result<JsonMap, Failure> {
        let (id, job) = match self.find_job(module, command_id) {
            Ok(found) => found,
            Err(id) => {
                let reply = status_reply::unknown(id);
                return Ok(server_reply(module, GET_COMMAND_STATUS_COMMAND, reply));
            }
        };
        if job.pushes || job.status().is_final() {
            return Ok(server_reply(
                module,
                GET_COMMAND_STATUS_COMMAND,
                job.status_reply(),
            ));
        }
        let reply = self.control(module, GET_COMMAND_STATUS_COMMAND, id).await?;
        self.jobs.observe(module.id(), id, &reply);
        Ok(reply)
    }

    /// `cancel_command` for `command_id` in `module`: a running job is told
    /// to stop on the control lane, ahead of queued commands, and the
    /// module's answer returned; a finished job says so; an unknown id is
    /// `unknown`.
    ///
    /// # Errors
    /// As for [`Commands::run`].
    pub async fn cancel(
        &self,
        module: &Arc<Module>,
        command_id: Option<&str>,
    ) -> Result<JsonMap, Failure> {
        let (id, job) = match self.find_job(module, command_id) {
            Ok(found) => found,
            Err(id) => {
                let reply = cancel_reply::unknown(id);
                return Ok(server_reply(module, CANCEL_COMMAND, reply));
            }
        };
        if job.status().is_final() {
            let status = match job.status() {
                JobStatus::Failed => modhost_protocol::CommandStatus::Failed,
                _ => modhost_protocol::CommandStatus::Completed,
            };
            return Ok(server_reply(
                module,
                CANCEL_COMMAND,
                cancel_reply::already_finished(id, status),
            ));
        }
        job.cancel_requested();
        self.control(module, CANCEL_COMMAND, id).await
    }

    /// `module`'s job `command_id`, with its id; `Err` with the id (`None`
    /// when none was given) when the server knows no such job.
    fn find_job<'a>(
        &self,
        module: &Module,
        command_id: Option<&'a str>,
    ) -> Result<(&'a str, Arc<Job>), Option<&'a str>> {
        let id = command_id.filter(|id| !id.is_empty()).ok_or(None)?;
        self.jobs
            .get(id)
            .filter(|j| j.origin.module_id == module.id())
            .map(|job| (id, job))
            .ok_or(Some(id))
    }

    /// Sends `command` (`get_command_status` or `cancel_command`) for
    /// `command_id` on `module`'s control lane and waits for the answer.
    async fn control(
        &self,
        module: &Arc<Module>,
        command: &str,
        command_id: &str,
    ) -> Result<JsonMap, Failure> {
        ensure_running(module)?;
        let item = QueueItem::new(
            uuid::Uuid::new_v4().to_string(),
            command,
            Payload {
                values: vec![
                    KeyValue {
                        key: "commandId".into(),
                        value: vec![command_id.to_owned()],
                    },
                    KeyValue {
                        key: "moduleId".into(),
                        value: vec![module.id().to_owned()],
                    },
                ],
                ..Payload::default()
            },
        );
        let origin = Origin {
            module_id: module.id().to_owned(),
            route: String::new(),
            command: command.to_owned(),
        };
        let ticket = self.queues.enqueue_control(&module.queue, item, origin)?;
        ticket.wait(self.timeout.min(CONTROL_TIMEOUT)).await
    }

    /// Called with each module reply before it reaches its client: a reply
    /// that starts a long process makes a job, followed by a poller when the
    /// module does not push. Done here, before the client hears, so that the
    /// module's first push always finds its job.
    pub fn on_reply(self: &Arc<Self>, module: &Arc<Module>, delivery: &Delivery, reply: &JsonMap) {
        let meta = ReplyMeta::read(reply);
        if !meta.starts_long_process() || !delivery.origin.route_command() {
            return;
        }
        let Some(id) = meta.command_id.as_deref() else {
            return;
        };
        let job = self.jobs.start(
            id,
            delivery.origin.clone(),
            meta.pushes_progress,
            delivery.queued_at,
            reply,
        );
        tracing::debug!(
            job = id,
            module = module.id(),
            pushes = job.pushes,
            "job started"
        );
        if !job.pushes {
            let this = Arc::clone(self);
            let module = Arc::clone(module);
            tokio::spawn(async move { this.follow(module, job).await });
        }
    }

    /// Asks a module that does not push for its job's status until the job
    /// ends: every `poll_interval` while someone watches, else every 2 s.
    async fn follow(self: Arc<Self>, module: Arc<Module>, job: Arc<Job>) {
        let mut changes = job.subscribe();
        while !job.status().is_final() {
            let interval = if job.is_watched() {
                self.poll_interval
            } else {
                UNWATCHED_POLL
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                // A watcher arriving, or another path finishing the job.
                _ = changes.changed() => continue,
            }
            if job.status().is_final() || !module.state().status.accepts_commands() {
                continue;
            }
            match self
                .control(&module, GET_COMMAND_STATUS_COMMAND, &job.id)
                .await
            {
                Ok(reply) => self.jobs.observe(module.id(), &job.id, &reply),
                Err(failure) => tracing::debug!(job = %job.id, "status poll failed: {failure}"),
            }
        }
    }
}

impl Origin {
    /// True for a command of a route map (not a built-in one).
    fn route_command(&self) -> bool {
        self.command != GET_COMMAND_STATUS_COMMAND && self.command != CANCEL_COMMAND
    }
}

/// A reply the server gives in a module's name: the module's envelope.
fn server_reply(module: &Module, command: &str, body: JsonMap) -> JsonMap {
    let device = module
        .state()
        .inference_device
        .unwrap_or_else(|| "CPU".into());
    modhost_protocol::envelope(
        body,
        &EnvelopeFields {
            module_id: module.id(),
            module_name: module.name(),
            command,
            request_id: "",
            inference_device: &device,
            process_ms: 0,
        },
    )
}

/// The failure for a module that cannot take commands now.
///
/// # Errors
/// [`FailureKind::ModuleNotRunning`] naming the status and its reason.
fn ensure_running(module: &Module) -> Result<(), Failure> {
    let state = module.state();
    if state.status.accepts_commands() {
        return Ok(());
    }
    let mut message = format!(
        "module '{}' is not running (status: {:?})",
        module.id(),
        state.status
    );
    if let Some(why) = &state.last_error {
        message.push_str(": ");
        message.push_str(why);
    }
    if let Some(next) = state.next_start {
        if let Ok(wait) = next.duration_since(SystemTime::now()) {
            message.push_str(&format!(
                "; next start in {:.0} s",
                wait.as_secs_f64().ceil()
            ));
        }
    }
    Err(Failure::new(FailureKind::ModuleNotRunning, message))
}

/// A module's refusal that is a failure of the server's kinds: a reply with
/// `success: false` and `errorCode: "queue_full"` (its long-command slots
/// and queue are full, docs/protocol.md §4.8) is answered like the server's
/// own full queue, so that clients get one answer for "busy, try again".
fn module_refusal(reply: &JsonMap) -> Option<Failure> {
    let refused = reply.get("success").and_then(Value::as_bool) == Some(false);
    let code = reply.get("errorCode").and_then(Value::as_str)?;
    (refused && code == FailureKind::QueueFull.code()).then(|| {
        let message = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the module is busy");
        Failure::new(FailureKind::QueueFull, message)
    })
}
