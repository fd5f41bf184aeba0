//! The module's shared state and what it does with one command: dispatch
//! (`quit`, status, cancel, self-test, the module's own commands), the long
//! commands' threads, and the `statusData` it reports.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tracing::{debug, error, info, warn};

use super::{guarded, CANCEL_WAIT, LONG_GRACE};
use crate::client::ServerClient;
use crate::command::{obj, CommandHandle, JsonMap};
use crate::context::ModuleContext;
use crate::progress::{ProgressHub, ProgressSink};
use crate::registry::{Admitted, CancelOutcome, LongCommands, Turn};
use crate::reply::{envelope, error_body, Stats};
use crate::request::RequestData;
use crate::{LongProcess, ModuleRunner, Outcome};

/// What handling one command asks of the loop.
#[derive(Debug, PartialEq)]
pub(super) enum Handled {
    /// Post this (already enveloped) reply; then, for a long command, drop
    /// the gate so its process starts.
    Reply(JsonMap, Option<StartGate>),
    /// `quit` for this module: stop, post nothing.
    Quit,
}

/// Holds a long process back until the reply that announces it is posted:
/// the process starts when this is dropped. A process that starts at once
/// competes for the cores with that reply (a chat's first token came
/// several milliseconds late on two cores), and the client cannot follow or
/// cancel the command before it has the commandId anyway.
#[derive(Debug)]
pub(super) struct StartGate(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl PartialEq for StartGate {
    /// Gates carry no data; replies compare equal whatever gate they hold.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The module's shared state: the runner, its context, the long-command
/// registry and the inference counts. Methods are synchronous and may
/// block; the async loops call them on the blocking pool.
pub(super) struct Engine<R> {
    pub(super) runner: R,
    pub(super) ctx: ModuleContext,
    pub(super) commands: LongCommands,
    stats: Stats,
    /// Long-process progress waiting to be pushed, when the server takes
    /// pushes (modhost); one task pushes it (`serve::push_progress`).
    pub(super) progress: Option<Arc<ProgressHub>>,
}

impl<R: ModuleRunner> Engine<R> {
    pub(super) fn new(runner: R, ctx: ModuleContext) -> Self {
        let capacity = guarded(|| runner.long_capacity()).unwrap_or_default();
        Self {
            runner,
            ctx,
            commands: LongCommands::with_capacity(capacity),
            stats: Stats::default(),
            progress: None,
        }
    }

    /// An engine that gathers long-process progress for pushing when
    /// `client`'s server takes pushes.
    pub(super) fn with_client(runner: R, ctx: ModuleContext, client: &ServerClient) -> Self {
        Self {
            progress: client.pushes_progress().then(Arc::default),
            ..Self::new(runner, ctx)
        }
    }

    /// How many polls the module keeps outstanding: its `parallelism`, or
    /// its long-command slots when there are more. A module that runs N long
    /// commands at once takes a burst of N from the server's queue at once,
    /// so they start together (LlamaChat decodes their prompts in one batch)
    /// instead of in waves of `parallelism`, each a poll round trip later.
    pub(super) fn poll_workers(&self) -> usize {
        let (slots, _, _) = self.commands.load();
        self.ctx.parallelism.max(slots).max(1)
    }

    pub(super) fn inference_device(&self) -> String {
        guarded(|| self.runner.inference_device()).unwrap_or_else(|_| "CPU".to_owned())
    }

    /// Dispatches one command and builds its reply envelope.
    pub(super) fn handle(self: &Arc<Self>, request: &RequestData) -> Handled {
        let started = Instant::now();
        let mut gate = None;
        let body = match request.command() {
            "quit" => match request.get("moduleId") {
                Some(id) if !id.eq_ignore_ascii_case(&self.ctx.module_id) => error_body(&format!(
                    "quit was addressed to module '{id}', not '{}'",
                    self.ctx.module_id
                )),
                _ => return Handled::Quit,
            },
            "get_command_status" => self.commands.status_reply(request.get("commandId"), |id| {
                guarded(|| self.runner.command_status(id)).unwrap_or_else(|e| {
                    warn!(command_id = id, "command_status {e}");
                    JsonMap::new()
                })
            }),
            "cancel_command" => match self.commands.cancel(request.get("commandId")) {
                CancelOutcome::Cancelled(reply, handle) => {
                    let id = request.get("commandId").unwrap_or_default();
                    info!(command_id = id, "long command cancelled");
                    if let Err(e) = guarded(|| self.runner.cancel(id)) {
                        warn!(command_id = id, "cancel hook {e}");
                    }
                    // Answer once the command has stopped, so that the
                    // client's next long command is not refused as "already
                    // in progress".
                    if !self.commands.wait_finished(id, CANCEL_WAIT) {
                        warn!(
                            command_id = id,
                            "long command still running {CANCEL_WAIT:?} after cancel"
                        );
                    } else if !handle.wait_pushed(CANCEL_WAIT) {
                        // The server answers status from what was pushed:
                        // it has the final status before the cancel reply.
                        warn!(
                            command_id = id,
                            "final status still unsent {CANCEL_WAIT:?} after cancel"
                        );
                    }
                    reply
                }
                CancelOutcome::Reply(reply) => reply,
            },
            "selftest" => match guarded(|| self.runner.selftest()).and_then(|r| r) {
                Ok(()) => obj(json!({"success": true, "message": "Self-test passed"})),
                Err(e) => error_body(&format!("Self-test failed: {e}")),
            },
            _ => {
                let (body, start) = self.process(request);
                gate = start;
                body
            }
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Handled::Reply(
            envelope(
                body,
                &self.ctx,
                request,
                &self.inference_device(),
                elapsed_ms,
            ),
            gate,
        )
    }

    /// Calls the module's `process` and counts the inference; a long command
    /// comes with the gate that starts it.
    fn process(self: &Arc<Self>, request: &RequestData) -> (JsonMap, Option<StartGate>) {
        let started = Instant::now();
        let outcome = guarded(|| self.runner.process(request));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reply = match outcome {
            Ok(Ok(Outcome::Done(reply))) => reply,
            Ok(Ok(Outcome::Long(job))) => return self.start_long(request, job),
            Ok(Err(e)) => {
                info!("command returned an error: {e}");
                error_body(e.message())
            }
            Err(panic) => {
                error!("process {panic}");
                error_body(&format!(
                    "unable to process the request (#reqid {})",
                    request.request_id()
                ))
            }
        };
        self.stats.record(&reply, elapsed_ms);
        (reply, None)
    }

    /// Registers a long command and starts its thread, held by the returned
    /// gate; replies "running" (or "queued" when it waits for a slot), or
    /// refuses with `errorCode: "queue_full"` when the slots and the queue
    /// are full.
    fn start_long(
        self: &Arc<Self>,
        request: &RequestData,
        job: LongProcess,
    ) -> (JsonMap, Option<StartGate>) {
        // The request id is the command id; a hand-made request may lack one.
        let id = match request.request_id() {
            "" => uuid::Uuid::new_v4().to_string(),
            id => id.to_owned(),
        };
        // On modhost, progress is pushed, all commands' together.
        let sink = self.progress.as_ref().map(|hub| hub.sink(&id));
        let handle = match &sink {
            Some(sink) => CommandHandle::pushing(&id, Arc::clone(sink)),
            None => CommandHandle::new(&id),
        };
        let admitted = match self.commands.try_start_with(handle.clone()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                let reply = obj(json!({
                    "success": false,
                    "commandId": refused.running,
                    "error": refused.message,
                    "errorCode": modhost_protocol::FailureKind::QueueFull.code(),
                }));
                self.stats.record(&reply, 0);
                return (reply, None);
            }
        };
        let engine = Arc::clone(self);
        let span = tracing::Span::current();
        let (gate, opened) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("long-command-{id}"))
            .spawn(move || {
                // Returns (with an error) once the gate is dropped.
                let _ = opened.recv();
                span.in_scope(|| engine.run_long(handle, job, sink));
            });
        if let Err(e) = spawned {
            let message = format!("cannot start the long running command: {e}");
            error!("{message}");
            self.commands.finish(&id, Err(message.clone()));
            return (error_body(&message), None);
        }
        let mut reply = match admitted {
            Admitted::Running => obj(json!({
                "success": true,
                "message": "Command is running in the background",
                "commandId": id,
                "commandStatus": "running",
            })),
            Admitted::Queued { ahead } => obj(json!({
                "success": true,
                "message": "Command is waiting for a free slot",
                "commandId": id,
                "commandStatus": "queued",
                "queuePosition": ahead + 1,
            })),
        };
        if self.progress.is_some() {
            reply.insert(modhost_protocol::PROGRESS_PUSH_FIELD.into(), true.into());
        }
        (reply, Some(StartGate(gate)))
    }

    /// Body of a long command's thread: waits for a slot, runs the process,
    /// pushes the final status to `sink`. A command cancelled while it
    /// waited never runs.
    fn run_long(&self, handle: CommandHandle, job: LongProcess, sink: Option<Arc<ProgressSink>>) {
        match self.commands.wait_turn(handle.id()) {
            Turn::Ran => {}
            Turn::AfterWaiting => {
                if let Some(sink) = &sink {
                    sink.started();
                }
            }
            Turn::CancelledWhileQueued => {
                drop(job);
                debug!(command_id = handle.id(), "cancelled while queued");
                self.push_final(&handle, sink);
                return;
            }
        }
        let started = Instant::now();
        let result = match guarded(|| job(&handle)) {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(e.0),
            Err(panic) => {
                error!(command_id = handle.id(), "long process {panic}");
                Err(format!(
                    "the long running command failed unexpectedly (#reqid {})",
                    handle.id()
                ))
            }
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(reply) => self.stats.record(reply, elapsed_ms),
            Err(e) => {
                info!(command_id = handle.id(), "long command failed: {e}");
                self.stats.record(&error_body(e), elapsed_ms);
            }
        }
        debug!(
            command_id = handle.id(),
            elapsed_ms, "long command finished"
        );
        self.commands.finish(handle.id(), result);
        self.push_final(&handle, sink);
    }

    /// Queues the final status of a finished command for pushing.
    fn push_final(&self, handle: &CommandHandle, sink: Option<Arc<ProgressSink>>) {
        if let Some(sink) = sink {
            sink.finish(
                self.commands
                    .status_reply(Some(handle.id()), |_| JsonMap::new()),
            );
        }
    }

    /// The `statusData` object for the status loop.
    pub(super) fn status_data(&self) -> JsonMap {
        let device = self.inference_device();
        let can_use_gpu = self.ctx.enable_gpu && !device.eq_ignore_ascii_case("CPU");
        let mut fields = JsonMap::new();
        let (slots, busy, queued) = self.commands.load();
        fields.insert(
            "longCommands".into(),
            json!({"slots": slots, "busy": busy, "queued": queued}),
        );
        fields.extend(guarded(|| self.runner.status()).unwrap_or_else(|e| {
            warn!("status {e}");
            JsonMap::new()
        }));
        self.stats.status_data(&device, can_use_gpu, fields)
    }

    /// At shutdown: cancels the running and queued long commands and waits
    /// for them.
    pub(super) fn stop_long(&self) {
        let running = self.commands.cancel_all();
        for handle in &running {
            if let Err(e) = guarded(|| self.runner.cancel(handle.id())) {
                warn!(command_id = handle.id(), "cancel hook {e}");
            }
        }
        if !self.commands.wait_idle(LONG_GRACE) {
            warn!(
                commands = running.len(),
                "long commands still running {LONG_GRACE:?} after cancel; stopping anyway"
            );
        }
    }
}
