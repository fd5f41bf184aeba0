//! A client following one job's events (docs/protocol.md §4.4): the SSE
//! streams of the jobs API and the streamed answers of the OpenAI and Ollama
//! APIs read a job through a [`Watcher`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest};

use crate::jobs::{Event, Job, WatchGuard};
use crate::registry::Module;
use crate::AppState;

/// How often a quiet watcher checks that its client is still there.
const DISCONNECT_CHECK: Duration = Duration::from_millis(200);

/// One client of a job: hands out the job's events in order, waiting for
/// them, until the job ends, the client goes, or the server shuts down.
/// With a module to cancel on, a client that goes before the end cancels
/// the job.
pub struct Watcher {
    job: Arc<Job>,
    /// Keeps the job counted as watched (its poller polls faster).
    #[allow(dead_code)]
    guard: WatchGuard,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The id of the last event sent.
    cursor: u64,
    pending: VecDeque<Event>,
    /// No event will follow those pending.
    ended: bool,
    req: HttpRequest,
    shutdown: tokio_util::sync::CancellationToken,
    /// The one-call form: cancel the job if this client goes early.
    cancel: Option<(Arc<crate::commands::Commands>, Arc<Module>)>,
}

impl Watcher {
    /// A watcher of `job` from after event `after` (0: all), for the client
    /// of `req`.
    pub fn new(
        state: &web::Data<AppState>,
        req: HttpRequest,
        job: Arc<Job>,
        after: u64,
        cancel_on_disconnect: Option<Arc<Module>>,
    ) -> Watcher {
        Watcher {
            guard: job.watch(),
            changes: job.subscribe(),
            job,
            cursor: after,
            pending: VecDeque::new(),
            ended: false,
            req,
            shutdown: state.shutdown.clone(),
            cancel: cancel_on_disconnect.map(|module| (Arc::clone(&state.commands), module)),
        }
    }

    /// The next event, waiting for it; `None` once the stream is over (the
    /// job ended and its events were read, the client went, or the server
    /// is shutting down).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.cursor = event.id;
                return Some(event);
            }
            if self.ended {
                return None;
            }
            // Marks the current version seen before reading, so a change
            // made while reading wakes the wait below.
            self.changes.borrow_and_update();
            let (events, ended) = self.job.events_after(self.cursor);
            self.pending.extend(events);
            self.ended = ended;
            if !self.pending.is_empty() || ended {
                continue;
            }
            tokio::select! {
                changed = self.changes.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep(DISCONNECT_CHECK) => {
                    if !crate::conn::client_connected(&self.req) {
                        return None;
                    }
                }
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let Some((commands, module)) = self.cancel.take() else {
            return;
        };
        if self.ended || self.job.status().is_final() {
            return;
        }
        let id = self.job.id.clone();
        tracing::info!(job = %id, "the streaming client left: cancelling its job");
        tokio::spawn(async move {
            if let Err(failure) = commands.cancel(&module, Some(&id)).await {
                tracing::warn!(job = %id, "cancelling a left client's job failed: {failure}");
            }
        });
    }
}
