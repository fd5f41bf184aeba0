//! The async side of a module: its poll workers, status loop and progress
//! pushes, the reconnect backoff, and shutdown on `quit` or a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modhost_protocol::ProgressBatch;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument as _};

use super::engine::{Engine, Handled};
use super::{DRAIN_GRACE, STATUS_INTERVAL};
use crate::client::{ClientError, Polled, ServerClient};
use crate::error::ModuleError;
use crate::progress::ProgressHub;
use crate::reply::{envelope, error_body};
use crate::request::RequestData;
use crate::ModuleRunner;

/// First reconnect delay after a failed poll; doubles per failure.
pub(super) const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest reconnect delay (the Python SDK goes up to 60 s; modhost
/// restarts faster than that).
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Reconnect delays: 1, 2, 4, 8, 10, 10 … seconds.
#[derive(Debug)]
pub(super) struct Backoff {
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
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    pub(super) fn reset(&mut self) {
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
pub(super) async fn serve<R: ModuleRunner>(engine: Arc<Engine<R>>, client: ServerClient) {
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
