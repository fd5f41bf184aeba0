//! The module's main loop: [`run`] / [`run_with`], command dispatch and the
//! long-process threads.
//!
//! Lifecycle of the CodeProject.AI Python SDK (docs/protocol.md §1.7):
//!
//! 1. `initialise` (on the calling thread, before anything is polled);
//! 2. poll workers (`parallelism`, or the long-command slots when there are
//!    more, see `Engine::poll_workers`) plus a 2-second status loop on a small
//!    tokio runtime; every command is handled on the blocking pool, a long
//!    process on its own thread;
//! 3. on `quit`, SIGTERM or SIGINT: stop polling, let in-flight commands
//!    post their replies (up to [`DRAIN_GRACE`]), cancel a running long
//!    command and wait for it (up to [`LONG_GRACE`]), then `cleanup`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modhost_protocol::ProgressBatch;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use crate::client::{ClientError, Polled, ServerClient};
use crate::command::{obj, CommandHandle, JsonMap};
use crate::context::ModuleContext;
use crate::error::ModuleError;
use crate::progress::{ProgressHub, ProgressSink};
use crate::registry::{Admitted, CancelOutcome, LongCommands, Turn};
use crate::reply::{envelope, error_body, Stats};
use crate::request::RequestData;
use crate::{LongProcess, ModuleRunner, Outcome};

/// Interval between status updates (the Python SDK's 2 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How long shutdown waits for in-flight commands to post their replies.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long `cancel_command` waits for the cancelled command to return
/// before it answers.
pub const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long shutdown waits for a cancelled long command to return.
pub const LONG_GRACE: Duration = Duration::from_secs(5);
/// First reconnect delay after a failed poll; doubles per failure.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest reconnect delay (the Python SDK goes up to 60 s; modhost
/// restarts faster than that).
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How [`run_with`] runs the module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Run `initialise`, `selftest` and `cleanup`, then exit 0 if the
    /// self-test passed, else 1, without contacting the server (what
    /// `--selftest` on the command line does; installers run it).
    pub selftest: bool,
}

/// Runs a module as launched by the server: reads `--selftest` from the
/// command line and the `CPAI_*` environment ([`ModuleContext::from_env`]),
/// installs logging ([`init_logging`](crate::init_logging)) and calls
/// [`run_with`].
///
/// Returns the process exit code: success after `quit`, SIGTERM or SIGINT
/// (or a passed self-test); failure if the environment is malformed,
/// `initialise` fails, or the self-test fails.
pub fn run<R: ModuleRunner>(runner: R) -> ExitCode {
    crate::init_logging();
    let selftest = std::env::args().skip(1).any(|a| a == "--selftest");
    let ctx = match ModuleContext::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            error!("cannot start the module: {e}");
            return ExitCode::FAILURE;
        }
    };
    run_with(runner, ctx, RunOptions { selftest })
}

/// Runs a module with an explicit context, until `quit`, SIGTERM or SIGINT.
///
/// Blocks the calling thread; builds its own tokio runtime, so it must not
/// be called from inside one. Exit codes as for [`run`]. Does not install a
/// logging subscriber.
pub fn run_with<R: ModuleRunner>(
    mut runner: R,
    ctx: ModuleContext,
    options: RunOptions,
) -> ExitCode {
    if options.selftest {
        return run_selftest(runner, &ctx);
    }
    let client = match ServerClient::new(&ctx) {
        Ok(client) => client,
        Err(e) => {
            error!(module = %ctx.module_id, "cannot start the module: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = guarded(|| runner.initialise(&ctx)).and_then(|r| r) {
        error!(module = %ctx.module_id, "initialise failed: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("modhost-sdk")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(module = %ctx.module_id, "cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = Arc::new(Engine::with_client(runner, ctx, &client));
    info!(
        module = %engine.ctx.module_id,
        // The queue name carries the launch token: log the queue alone.
        queue = %modhost_protocol::split_queue_token(&engine.ctx.queue_name).0,
        server = %engine.ctx.server_url,
        parallelism = engine.ctx.parallelism,
        poll_workers = engine.poll_workers(),
        "module started"
    );
    runtime.block_on(serve(Arc::clone(&engine), client));
    // A `process` call stuck in the blocking pool must not keep the module
    // alive: give it a moment, then leave it behind.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if guarded(|| engine.runner.cleanup()).is_err() {
        error!(module = %engine.ctx.module_id, "cleanup panicked");
    }
    info!(module = %engine.ctx.module_id, "module stopped");
    ExitCode::SUCCESS
}

fn run_selftest<R: ModuleRunner>(mut runner: R, ctx: &ModuleContext) -> ExitCode {
    if let Err(e) = guarded(|| runner.initialise(ctx)).and_then(|r| r) {
        error!(module = %ctx.module_id, "self-test failed: initialise: {e}");
        return ExitCode::FAILURE;
    }
    let result = guarded(|| runner.selftest()).and_then(|r| r);
    if guarded(|| runner.cleanup()).is_err() {
        error!(module = %ctx.module_id, "cleanup panicked");
    }
    match result {
        Ok(()) => {
            info!(module = %ctx.module_id, "self-test passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(module = %ctx.module_id, "self-test failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f`, turning a panic into an error (the panic hook has already
/// printed it to stderr, which the server logs as an error).
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, ModuleError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        ModuleError(format!("panicked: {text}"))
    })
}

/// What handling one command asks of the loop.
#[derive(Debug, PartialEq)]
enum Handled {
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
struct StartGate(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl PartialEq for StartGate {
    /// Gates carry no data; replies compare equal whatever gate they hold.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The module's shared state: the runner, its context, the long-command
/// registry and the inference counts. Methods are synchronous and may
/// block; the async loops call them on the blocking pool.
struct Engine<R> {
    runner: R,
    ctx: ModuleContext,
    commands: LongCommands,
    stats: Stats,
    /// Long-process progress waiting to be pushed, when the server takes
    /// pushes (modhost); one task pushes it ([`push_progress`]).
    progress: Option<Arc<ProgressHub>>,
}

impl<R: ModuleRunner> Engine<R> {
    fn new(runner: R, ctx: ModuleContext) -> Self {
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
    fn with_client(runner: R, ctx: ModuleContext, client: &ServerClient) -> Self {
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
    fn poll_workers(&self) -> usize {
        let (slots, _, _) = self.commands.load();
        self.ctx.parallelism.max(slots).max(1)
    }

    fn inference_device(&self) -> String {
        guarded(|| self.runner.inference_device()).unwrap_or_else(|_| "CPU".to_owned())
    }

    /// Dispatches one command and builds its reply envelope.
    fn handle(self: &Arc<Self>, request: &RequestData) -> Handled {
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
    fn status_data(&self) -> JsonMap {
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
    fn stop_long(&self) {
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

/// Reconnect delays: 1, 2, 4, 8, 10, 10 … seconds.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// Whether the server is reachable, so an outage is logged once, not once
/// per attempt and worker.
#[derive(Debug, Default)]
struct Connectivity {
    down: AtomicBool,
}

impl Connectivity {
    fn failed(&self, client: &ServerClient, err: &ClientError) {
        if !self.down.swap(true, Ordering::AcqRel) {
            warn!(
                "cannot reach the server at {}: {err}; retrying every {}–{} s",
                client.poll_url(),
                BACKOFF_START.as_secs(),
                BACKOFF_MAX.as_secs()
            );
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            info!("reconnected to the server");
        }
    }
}

/// The async part of the module: workers, status loop, shutdown.
async fn serve<R: ModuleRunner>(engine: Arc<Engine<R>>, client: ServerClient) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let connectivity = Arc::new(Connectivity::default());
    let mut tasks = JoinSet::new();
    for worker in 0..engine.poll_workers() {
        tasks.spawn(
            worker_loop(
                Arc::clone(&engine),
                client.clone(),
                stop_rx.clone(),
                Arc::clone(&stop_tx),
                Arc::clone(&connectivity),
            )
            .instrument(info_span!("worker", id = worker)),
        );
    }
    let pusher = engine
        .progress
        .as_ref()
        .map(|hub| tokio::spawn(push_progress(client.clone(), Arc::clone(hub))));
    tasks.spawn(status_loop(
        Arc::clone(&engine),
        client.clone(),
        stop_rx.clone(),
    ));

    let mut stopped = stop_rx.clone();
    tokio::select! {
        _ = stopped.wait_for(|stop| *stop) => info!(module = %engine.ctx.module_id, "quit received; stopping"),
        signal = shutdown_signal() => {
            info!(module = %engine.ctx.module_id, "{signal} received; stopping");
            stop_tx.send_replace(true);
        }
    }

    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        warn!("commands still in progress after {DRAIN_GRACE:?}; abandoning them");
        tasks.abort_all();
    }
    let stopper = Arc::clone(&engine);
    if tokio::task::spawn_blocking(move || stopper.stop_long())
        .await
        .is_err()
    {
        error!("stopping the long command panicked");
    }
    // The final progress of what just stopped reaches the server.
    if let (Some(hub), Some(pusher)) = (&engine.progress, pusher) {
        hub.close();
        if tokio::time::timeout(DRAIN_GRACE, pusher).await.is_err() {
            warn!("progress still unsent {DRAIN_GRACE:?} after stopping; leaving it");
        }
    }
}

/// Pushes the module's long-command progress as it comes: everything
/// pending, of every command, in one push, one push at a time, so each
/// command's updates arrive in order; what arrives while a push is in
/// flight goes in the next. A push goes on the progress stream when the
/// server gave this process one (docs/protocol.md §4.2), else over HTTP.
/// Ends when the hub is closed and empty. A batch the server cannot take is
/// logged and dropped (over HTTP after one retry when the connection
/// failed): the commands go on. A batch whose stream broke under it is
/// dropped too, since the server may have applied it, and later ones go
/// over HTTP.
async fn push_progress(client: ServerClient, hub: Arc<ProgressHub>) {
    #[cfg(unix)]
    let mut stream = crate::progress_stream::ProgressStream::from_env();
    #[cfg(unix)]
    if stream.is_some() {
        info!("progress pushes go over the progress stream the server opened");
    }
    while let Some(batch) = hub.next().await {
        #[cfg(unix)]
        let result = match stream.as_mut() {
            Some(s) => match s.push(&batch, PUSH_TIMEOUT).await {
                Ok(answer) => answer,
                Err(e) => {
                    warn!("the progress stream broke ({e}); pushing over HTTP from now on");
                    stream = None;
                    Err(format!("the progress stream broke: {e}"))
                }
            },
            None => post_progress(&client, &batch).await,
        };
        #[cfg(not(unix))]
        let result = post_progress(&client, &batch).await;
        if let Err(e) = result {
            debug!(commands = batch.len(), "cannot push progress: {e}");
        }
        hub.sent(&batch);
    }
}

/// The longest a push over the progress stream waits for its answer.
#[cfg(unix)]
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One push over HTTP, tried again once after 100 ms when it could not
/// connect.
async fn post_progress(client: &ServerClient, batch: &ProgressBatch) -> Result<(), String> {
    let mut result = client.post_progress(batch).await;
    if matches!(&result, Err(ClientError::Http(e)) if e.is_connect()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = client.post_progress(batch).await;
    }
    result.map_err(|e| e.to_string())
}

/// Resolves on SIGTERM or SIGINT with the signal's name; never resolves if
/// the handlers cannot be installed.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(e) => {
                warn!("cannot listen for SIGINT: {e}");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = async {
            match signal(SignalKind::terminate()) {
                Ok(mut sig) => {
                    sig.recv().await;
                    "SIGTERM"
                }
                Err(e) => {
                    warn!("cannot listen for SIGTERM: {e}");
                    std::future::pending().await
                }
            }
        };
        tokio::select! {
            name = ctrl_c => name,
            name = terminate => name,
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await
    }
}

/// One poll worker: keeps a poll outstanding whenever it is idle, handles
/// what arrives, posts the reply, polls again.
async fn worker_loop<R: ModuleRunner>(
    engine: Arc<Engine<R>>,
    client: ServerClient,
    mut stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
    connectivity: Arc<Connectivity>,
) {
    let mut backoff = Backoff::default();
    loop {
        let polled = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            polled = client.poll() => polled,
        };
        match polled {
            Ok(Polled::Nothing) => {
                connectivity.succeeded();
                backoff.reset();
            }
            Ok(Polled::Item(body)) => {
                connectivity.succeeded();
                backoff.reset();
                if handle_item(&engine, &client, body).await == Handled::Quit {
                    stop_tx.send_replace(true);
                    return;
                }
            }
            Err(e) => {
                connectivity.failed(&client, &e);
                let delay = backoff.next_delay();
                debug!("poll failed ({e}); retrying in {delay:?}");
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Parses, handles and answers one queue item. Returns [`Handled::Quit`]
/// for `quit`, else `Reply` with the reply that was posted.
async fn handle_item<R: ModuleRunner>(
    engine: &Arc<Engine<R>>,
    client: &ServerClient,
    body: String,
) -> Handled {
    let request = match RequestData::from_json(&body) {
        Ok(request) => Arc::new(request),
        Err(e) => return answer_malformed(engine, client, &body, e).await,
    };
    let span = info_span!(
        "command",
        command = request.command(),
        reqid = request.request_id()
    );
    debug!(parent: &span, "command received");
    let handled = {
        let (engine, request, span) = (Arc::clone(engine), Arc::clone(&request), span.clone());
        tokio::task::spawn_blocking(move || span.in_scope(|| engine.handle(&request))).await
    };
    let handled = handled.unwrap_or_else(|e| {
        // `handle` catches the module's panics; this is the SDK's own.
        error!(parent: &span, "handling the command failed: {e}");
        Handled::Reply(
            envelope(
                error_body(&format!(
                    "unable to process the request (#reqid {})",
                    request.request_id()
                )),
                &engine.ctx,
                &request,
                "CPU",
                0,
            ),
            None,
        )
    });
    match handled {
        Handled::Reply(reply, gate) => {
            if let Err(e) = client.post_reply(request.request_id(), &reply).await {
                warn!(parent: &span, "cannot post the reply: {e}");
            } else {
                debug!(parent: &span, success = %reply["success"], "reply posted");
            }
            // A long command starts now that its client can follow it.
            drop(gate);
            Handled::Reply(reply, None)
        }
        Handled::Quit => Handled::Quit,
    }
}

/// A queue item that does not parse: answer with the error if it has a
/// `reqid` to answer to, else just log it.
async fn answer_malformed<R: ModuleRunner>(
    engine: &Arc<Engine<R>>,
    client: &ServerClient,
    body: &str,
    err: ModuleError,
) -> Handled {
    let reqid = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reqid")?.as_str().map(str::to_owned));
    warn!(reqid = reqid.as_deref().unwrap_or(""), "{err}");
    let request = RequestData::new("").with_request_id(reqid.as_deref().unwrap_or(""));
    let reply = envelope(error_body(err.message()), &engine.ctx, &request, "CPU", 0);
    if let Some(reqid) = reqid {
        if let Err(e) = client.post_reply(&reqid, &reply).await {
            warn!(reqid, "cannot post the reply: {e}");
        }
    }
    Handled::Reply(reply, None)
}

/// Posts `statusData` every [`STATUS_INTERVAL`], starting at once.
async fn status_loop<R: ModuleRunner>(
    engine: Arc<Engine<R>>,
    client: ServerClient,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let source = Arc::clone(&engine);
        let Ok(data) = tokio::task::spawn_blocking(move || source.status_data()).await else {
            continue;
        };
        if let Err(e) = client.post_status(&data).await {
            // Outages are reported once by the poll workers.
            debug!("cannot post the module status: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
