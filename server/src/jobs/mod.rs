//! Jobs: the long processes the server owns.
//!
//! A command whose module answers `commandStatus: running` with a `commandId`
//! becomes a [`Job`]: who runs it, its status, the text it has produced (the
//! `reply` status field), its other status fields, timestamps, and how it
//! ended. Everything that happens to a job is an [`Event`] with an increasing
//! id, kept with the job so that a watcher that reconnects with
//! `Last-Event-ID` gets exactly what it missed (docs/protocol.md §4.4).
//!
//! Jobs learn their progress from the module: pushed by modules that speak
//! modhost's extension ([`Jobs::push`]), or observed from the
//! `get_command_status` replies the server asks for on behalf of modules that
//! don't ([`Jobs::observe`], driven by `commands`). Finished jobs are kept for a
//! retention time and up to a maximum count, oldest first out; running jobs
//! are never dropped.
//!
//! Here: the registry of jobs ([`Jobs`]) and its retention. A job itself is
//! `job.rs`; its status and events, as watchers receive them, `event.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use modhost_protocol::{Failure, FailureKind, JsonMap, ProgressBatch, ProgressUpdate};
use parking_lot::Mutex;

use crate::queue::Origin;

mod event;
mod job;
mod state;

pub use event::{Event, EventKind, JobStatus};
pub use job::{Job, WatchGuard};

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished jobs older than this are dropped.
    pub age: Duration,
    /// At most this many finished jobs are kept; the oldest go first.
    pub count: usize,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Arc<Job>>,
    /// Finished jobs, oldest first, with when they finished.
    finished: VecDeque<(String, Instant)>,
}

/// All jobs.
pub struct Jobs {
    // parking_lot: map operations only; each job has its own lock.
    inner: Mutex<Inner>,
    retention: Retention,
}

impl Jobs {
    pub fn new(retention: Retention) -> Arc<Jobs> {
        Arc::new(Jobs {
            inner: Mutex::new(Inner::default()),
            retention,
        })
    }

    /// Registers the job a module's `running` reply announced. A second
    /// announcement of a known id keeps the first job.
    pub fn start(
        &self,
        id: &str,
        origin: Origin,
        pushes: bool,
        queued_at: SystemTime,
        running: &JsonMap,
    ) -> Arc<Job> {
        let mut inner = self.inner.lock();
        Arc::clone(inner.jobs.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(Job::new(id.to_owned(), origin, pushes, queued_at, running))
        }))
    }

    /// Registers a job the server runs itself (a skill run), `running` from
    /// the start, cancelled through `canceller`.
    pub fn start_local(
        &self,
        id: &str,
        origin: Origin,
        canceller: tokio_util::sync::CancellationToken,
    ) -> Arc<Job> {
        let mut running = JsonMap::new();
        running.insert("commandId".into(), id.into());
        running.insert("commandStatus".into(), "running".into());
        let mut job = Job::new(id.to_owned(), origin, true, SystemTime::now(), &running);
        job.canceller = Some(canceller);
        let job = Arc::new(job);
        self.inner
            .lock()
            .jobs
            .insert(id.to_owned(), Arc::clone(&job));
        job
    }

    /// Ends a job the server runs itself with `result`, or fails it.
    pub fn end_local(&self, job: &Arc<Job>, result: Result<JsonMap, Failure>) {
        match result {
            Ok(done) => job.push(ProgressUpdate {
                done: Some(done),
                ..ProgressUpdate::default()
            }),
            Err(failure) => job.fail(failure),
        }
        self.note_if_finished(job);
    }

    /// The job with this id, if known and not expired.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.sweep();
        self.inner.lock().jobs.get(id).cloned()
    }

    /// Every job, oldest first, optionally only `module_id`'s (any letter
    /// case) and only those in `status`.
    pub fn list(&self, module_id: Option<&str>, status: Option<JobStatus>) -> Vec<Arc<Job>> {
        self.sweep();
        let mut jobs: Vec<Arc<Job>> = self
            .inner
            .lock()
            .jobs
            .values()
            .filter(|j| module_id.is_none_or(|m| j.origin.module_id.eq_ignore_ascii_case(m)))
            .cloned()
            .collect();
        jobs.retain(|j| status.is_none_or(|s| j.status() == s));
        jobs.sort_by_key(|j| j.created);
        jobs
    }

    /// Applies a push from `module_id` to its job `id`.
    ///
    /// # Errors
    /// [`FailureKind::UnknownCommand`] when `module_id` has no job `id`.
    pub fn push(&self, module_id: &str, id: &str, update: ProgressUpdate) -> Result<(), Failure> {
        let job = self.owned(module_id, id)?;
        job.push(update);
        self.note_if_finished(&job);
        Ok(())
    }

    /// Applies each update of a batch pushed by `module_id`, in order, over
    /// HTTP or on its progress stream (docs/protocol.md §4.2).
    ///
    /// # Errors
    /// The ids `module_id` has no job for, named in one message; the other
    /// updates are applied.
    pub fn push_batch(&self, module_id: &str, batch: ProgressBatch) -> Result<(), String> {
        let unknown: Vec<String> = batch
            .into_iter()
            .filter_map(|(id, update)| self.push(module_id, &id, update).err().map(|_| id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(format!(
            "module {module_id} has no job '{}' (the other updates were saved)",
            unknown.join("', '")
        ))
    }

    /// Applies a `get_command_status` reply of `module_id` for job `id`.
    pub fn observe(&self, module_id: &str, id: &str, reply: &JsonMap) {
        if let Ok(job) = self.owned(module_id, id) {
            job.observe(reply);
            self.note_if_finished(&job);
        }
    }

    /// Fails every unfinished job of `module_id`; returns how many.
    pub fn fail_module(&self, module_id: &str, kind: FailureKind, message: &str) -> usize {
        let jobs = self.list(Some(module_id), None);
        let mut failed = 0;
        for job in jobs.into_iter().filter(|j| !j.status().is_final()) {
            job.fail(Failure::new(kind, message));
            self.note_if_finished(&job);
            failed += 1;
        }
        failed
    }

    fn owned(&self, module_id: &str, id: &str) -> Result<Arc<Job>, Failure> {
        self.get(id)
            .filter(|j| j.origin.module_id.eq_ignore_ascii_case(module_id))
            .ok_or_else(|| {
                Failure::new(
                    FailureKind::UnknownCommand,
                    format!("module {module_id} has no job '{id}'"),
                )
            })
    }

    /// Puts a job that just finished on the retention list.
    fn note_if_finished(&self, job: &Arc<Job>) {
        if job.status().is_final() {
            let mut inner = self.inner.lock();
            if !inner.finished.iter().any(|(id, _)| id == &job.id) {
                inner.finished.push_back((job.id.clone(), Instant::now()));
            }
        }
        self.sweep();
    }

    /// Drops finished jobs past the retention age or beyond its count,
    /// oldest first. Running jobs are never on the list.
    fn sweep(&self) {
        let mut inner = self.inner.lock();
        while let Some((id, finished)) = inner.finished.front().cloned() {
            let over_count = inner.finished.len() > self.retention.count;
            if !over_count && finished.elapsed() < self.retention.age {
                break;
            }
            inner.finished.pop_front();
            inner.jobs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use modhost_protocol::status_reply;
    use serde_json::{json, Value};

    use super::*;

    fn obj(value: Value) -> JsonMap {
        value.as_object().cloned().unwrap()
    }

    fn jobs(count: usize) -> Arc<Jobs> {
        Jobs::new(Retention {
            age: Duration::from_secs(600),
            count,
        })
    }

    fn origin() -> Origin {
        Origin {
            module_id: "LlamaChat".into(),
            route: "text/chat".into(),
            command: "prompt".into(),
        }
    }

    fn running(id: &str) -> JsonMap {
        obj(json!({"success": true, "commandId": id, "commandStatus": "running"}))
    }

    fn start(jobs: &Jobs, id: &str, pushes: bool) -> Arc<Job> {
        jobs.start(id, origin(), pushes, SystemTime::now(), &running(id))
    }

    /// Pushes one piece of reply text for LlamaChat's command `id`.
    fn push_delta(jobs: &Jobs, id: &str, text: &str) {
        let update = ProgressUpdate {
            delta: text.into(),
            ..Default::default()
        };
        jobs.push("LlamaChat", id, update).unwrap();
    }

    fn texts(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Delta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pushed_deltas_join_to_the_reply_and_done_ends_the_job() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        for piece in ["The", " solar", " system"] {
            push_delta(&jobs, "c1", piece);
        }
        jobs.push(
            "llamachat",
            "c1",
            ProgressUpdate {
                fields: obj(json!({"tokens": 3})),
                done: Some(status_reply::completed(
                    "c1",
                    obj(json!({"reply": "The solar system", "stop_reason": "completed"})),
                    false,
                )),
                ..Default::default()
            },
        )
        .unwrap();
        let (events, ended) = job.events_after(0);
        assert!(ended);
        assert_eq!(texts(&events), "The solar system");
        assert_eq!(
            events.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=events.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(events.last().unwrap().kind.name(), "done");
        assert_eq!(job.status(), JobStatus::Completed);
        assert_eq!(job.status_reply()["stop_reason"], "completed");
        assert_eq!(job.view().fields["tokens"], 3);
    }

    #[test]
    fn a_running_job_answers_in_the_python_sdk_s_words() {
        let jobs = jobs(10);
        let running = obj(
            json!({"success": true, "commandId": "c1", "commandStatus": "running",
            "message": "Command is running in the background", "moduleId": "LlamaChat",
            "progressPush": true, "model": "tiny"}),
        );
        let job = jobs.start("c1", origin(), true, SystemTime::now(), &running);
        push_delta(&jobs, "c1", "Hi");
        assert_eq!(
            Value::Object(job.status_reply()),
            json!({"success": true, "message": "The long running command is still in progress",
                   "commandId": "c1", "commandStatus": "running", "reply": "Hi", "model": "tiny"})
        );
        let (events, _) = job.events_after(0);
        assert_eq!(
            events[0].kind.data()["commandId"],
            "c1",
            "the first event is the running reply"
        );
    }

    #[test]
    fn a_resume_after_an_event_gets_exactly_what_follows() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        for piece in ["a", "b", "c", "d"] {
            push_delta(&jobs, "c1", piece);
        }
        let (all, _) = job.events_after(0);
        for cut in 0..all.len() as u64 {
            let (rest, _) = job.events_after(cut);
            assert_eq!(rest, all[cut as usize..].to_vec());
        }
    }

    #[test]
    fn observed_status_replies_become_deltas() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", false);
        jobs.observe(
            "LlamaChat",
            "c1",
            &obj(json!({"commandStatus": "running", "reply": "The"})),
        );
        jobs.observe(
            "LlamaChat",
            "c1",
            &obj(json!({"commandStatus": "running", "reply": "The sun"})),
        );
        jobs.observe("LlamaChat", "c1", &obj(json!({"commandStatus": "completed", "reply": "The sun.", "message": "Command has completed"})));
        let (events, ended) = job.events_after(0);
        assert!(ended);
        assert_eq!(texts(&events), "The sun.");
        assert_eq!(job.status(), JobStatus::Completed);
    }

    #[test]
    fn a_rewritten_text_keeps_the_deltas_that_came_before() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", false);
        for text in ["abc", "xy", "xyz"] {
            jobs.observe(
                "LlamaChat",
                "c1",
                &obj(json!({"commandStatus": "running", "reply": text})),
            );
        }
        let (events, _) = job.events_after(0);
        let data: Vec<Value> = events.iter().map(|e| e.kind.data()).collect();
        assert_eq!(data[1], json!({"text": "abc"}));
        assert_eq!(data[2], json!({"reply": "xy"}));
        assert_eq!(data[3], json!({"text": "z"}));
        assert_eq!(job.view().reply, "xyz");
        assert_eq!(job.events_after(3).0[0].kind.data(), json!({"text": "z"}));
    }

    #[test]
    fn a_completed_after_a_cancel_is_cancelled() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", false);
        job.cancel_requested();
        jobs.observe(
            "LlamaChat",
            "c1",
            &obj(json!({"commandStatus": "completed", "reply": "x"})),
        );
        assert_eq!(job.status(), JobStatus::Cancelled);
    }

    #[test]
    fn a_crash_fails_running_jobs_with_the_reason() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        assert_eq!(
            jobs.fail_module(
                "LlamaChat",
                FailureKind::ModuleCrashed,
                "module LlamaChat exited"
            ),
            1
        );
        let (events, ended) = job.events_after(0);
        assert!(ended);
        assert_eq!(
            events.last().unwrap().kind.data(),
            json!({"code": "module_crashed", "message": "module LlamaChat exited"})
        );
        let reply = job.status_reply();
        assert_eq!(reply["commandStatus"], "failed");
        assert_eq!(reply["errorCode"], "module_crashed");
        // Nothing more happens to a finished job.
        push_delta(&jobs, "c1", "late");
        assert_eq!(job.events_after(0).0.len(), events.len());
    }

    #[test]
    fn a_job_being_cancelled_when_its_module_goes_is_cancelled() {
        let jobs = jobs(10);
        let job = start(&jobs, "c1", true);
        job.cancel_requested();
        jobs.fail_module(
            "LlamaChat",
            FailureKind::ModuleStopped,
            "module LlamaChat was stopped",
        );
        assert_eq!(job.status(), JobStatus::Cancelled);
        let (events, _) = job.events_after(0);
        assert_eq!(events.last().unwrap().kind.data()["code"], "cancelled");
    }

    #[test]
    fn pushes_for_another_module_s_job_are_refused() {
        let jobs = jobs(10);
        start(&jobs, "c1", true);
        let err = jobs
            .push("Echo", "c1", ProgressUpdate::default())
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::UnknownCommand);
    }

    #[test]
    fn finished_jobs_beyond_the_count_go_oldest_first_and_running_ones_stay() {
        let jobs = jobs(2);
        let running_job = start(&jobs, "running", true);
        for id in ["a", "b", "c"] {
            start(&jobs, id, true);
            jobs.push(
                "LlamaChat",
                id,
                ProgressUpdate {
                    done: Some(status_reply::completed(id, JsonMap::new(), false)),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        assert!(jobs.get("a").is_none(), "the oldest finished job went");
        assert!(jobs.get("b").is_some() && jobs.get("c").is_some());
        assert!(jobs.get("running").is_some());
        assert_eq!(running_job.status(), JobStatus::Running);
        assert_eq!(jobs.list(None, Some(JobStatus::Completed)).len(), 2);
    }

    #[test]
    fn finished_jobs_expire_after_the_retention_age() {
        let jobs = Jobs::new(Retention {
            age: Duration::from_millis(20),
            count: 100,
        });
        start(&jobs, "a", true);
        jobs.push(
            "LlamaChat",
            "a",
            ProgressUpdate {
                done: Some(status_reply::completed("a", JsonMap::new(), false)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(jobs.get("a").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(jobs.get("a").is_none());
    }
}
