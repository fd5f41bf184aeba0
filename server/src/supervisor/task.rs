//! One module's task: launches its process, watches it, restarts it after
//! a crash, stops it on request or at shutdown.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modhost_protocol::{FailureKind, QueueItem};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::launch::Launched;
use super::process::kill_group;
use super::{Control, LaunchContext};
use crate::jobs::Jobs;
use crate::logs::{LogLevel, LogService};
use crate::queue::{Origin, Queues};
use crate::registry::{Module, ModuleStatus};

/// Time a module gets to act on `quit` before it is signalled.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Time between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// First restart delay after a crash; doubles per crash, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a running module is checked for silence and stability.
const WATCH_TICK: Duration = Duration::from_secs(1);
/// Longest wait, after a module exits, for its last output lines to reach the log.
const OUTPUT_DRAIN: Duration = Duration::from_millis(250);
/// How far back before its exit an error a module logged is taken as the
/// cause of the exit.
const CAUSE_WINDOW: Duration = Duration::from_secs(10);
/// How a running process stopped being watched.
enum Ended {
    /// It exited, or stopped making contact while commands waited for it:
    /// its work fails with `kind` and `why`, and it is launched again.
    Failed {
        kind: FailureKind,
        why: String,
    },
    Stop,
    Restart,
    Shutdown,
}

impl Ended {
    fn exited(module_id: &str, exit: std::io::Result<ExitStatus>) -> Self {
        let how = match exit {
            Ok(status) => status.to_string(),
            Err(err) => format!("wait failed: {err}"),
        };
        Ended::Failed {
            kind: FailureKind::ModuleCrashed,
            why: format!("module {module_id} exited unexpectedly ({how})"),
        }
    }

    fn unresponsive(module_id: &str, silence: Duration) -> Self {
        Ended::Failed {
            kind: FailureKind::ModuleUnresponsive,
            why: format!(
                "module {module_id} stopped responding: no contact for {:.0} s while commands waited for it",
                silence.as_secs_f64()
            ),
        }
    }
}

/// One module's task (see [`super::Supervisor::start`]).
pub(super) struct ModuleTask {
    pub(super) module: Arc<Module>,
    pub(super) ctx: Arc<LaunchContext>,
    pub(super) queues: Arc<Queues>,
    pub(super) jobs: Arc<Jobs>,
    pub(super) logs: Arc<LogService>,
    pub(super) controls: mpsc::Receiver<Control>,
    pub(super) shutdown: CancellationToken,
}

impl ModuleTask {
    /// Logs under the module's name; returns the entry's id.
    pub(super) fn log(&self, level: LogLevel, message: &str) -> u64 {
        self.logs.add(level, self.module.name(), "", message)
    }

    /// Runs until shutdown: waits while the module is not wanted, launches
    /// it, watches it, and after a crash or a hang relaunches it once its
    /// backoff is over. `crashes` counts the crashes in a row, each one
    /// doubling the backoff; a run of [`LaunchContext::stable_run`] or a
    /// Restart resets it.
    pub(super) async fn run(mut self) {
        let mut crashes: u32 = 0;
        loop {
            if !self.module.state().wanted {
                if !self.wait_until_wanted(&mut crashes).await {
                    return;
                }
                continue;
            }
            let mut launched = match self.launch().await {
                Ok(launched) => launched,
                Err(problem) => {
                    self.failed_start(problem);
                    continue;
                }
            };
            let since = Instant::now();
            let pid = launched.child.id();
            match self.watch(&mut launched.child, since, &mut crashes).await {
                Ended::Failed { kind, why } => {
                    if !self
                        .recover(launched, pid, since, kind, why, &mut crashes)
                        .await
                    {
                        return;
                    }
                }
                Ended::Stop => {
                    self.stop(&mut launched.child, pid).await;
                    self.mark_stopped();
                }
                Ended::Restart => {
                    self.stop(&mut launched.child, pid).await;
                    self.reset_crashes(&mut crashes);
                    self.log(
                        LogLevel::Information,
                        &format!("restarting module {}", self.module.id()),
                    );
                }
                Ended::Shutdown => {
                    self.stop(&mut launched.child, pid).await;
                    self.module.update(|s| s.status = ModuleStatus::Stopped);
                    return;
                }
            }
        }
    }

    /// While the module is not wanted (NoAutoStart, or stopped): waits for
    /// a Start or Restart, which makes it wanted. `false` at shutdown.
    async fn wait_until_wanted(&mut self, crashes: &mut u32) -> bool {
        self.module.update(|s| {
            if matches!(s.status, ModuleStatus::NotStarted) {
                s.status = ModuleStatus::NoAutoStart;
            }
        });
        tokio::select! {
            control = self.controls.recv() => match control {
                Some(Control::Start | Control::Restart) => {
                    self.module.update(|s| s.wanted = true);
                    *crashes = 0;
                    true
                }
                Some(Control::Stop) => true,
                None => false,
            },
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// The launch failed (`problem` says why): the module is FailedStart
    /// and stays down until started again.
    fn failed_start(&self, problem: String) {
        self.log(
            LogLevel::Error,
            &format!("cannot start module {}: {problem}", self.module.id()),
        );
        self.module.update(|s| {
            s.status = ModuleStatus::FailedStart;
            s.wanted = false;
            s.token = None;
            s.last_error = Some(problem);
        });
    }

    /// Watches the running `child`, launched at `since`, until it exits,
    /// falls silent while commands wait for it, or is asked to stop. Once
    /// it has run for [`LaunchContext::stable_run`], its crash count is
    /// reset.
    async fn watch(&mut self, child: &mut Child, since: Instant, crashes: &mut u32) -> Ended {
        let mut tick = tokio::time::interval(WATCH_TICK);
        loop {
            tokio::select! {
                exit = child.wait() => return Ended::exited(self.module.id(), exit),
                control = self.controls.recv() => match control {
                    Some(Control::Start) => {}
                    Some(Control::Stop) => return Ended::Stop,
                    Some(Control::Restart) => return Ended::Restart,
                    None => return Ended::Shutdown,
                },
                _ = self.shutdown.cancelled() => return Ended::Shutdown,
                _ = tick.tick() => {
                    if *crashes > 0 && since.elapsed() >= self.ctx.stable_run {
                        self.reset_crashes(crashes);
                    }
                    if let Some(silence) = self.silence() {
                        return Ended::unresponsive(self.module.id(), silence);
                    }
                }
            }
        }
    }

    /// After a crash or a hang (`kind`, `why`): kills what is left of the
    /// process group `pid`, fails its work with the reason and the last error it
    /// logged, and waits out the backoff. `false` at shutdown.
    async fn recover(
        &mut self,
        launched: Launched,
        pid: Option<u32>,
        since: Instant,
        kind: FailureKind,
        why: String,
        crashes: &mut u32,
    ) -> bool {
        let Launched {
            mut child,
            log_id,
            output,
        } = launched;
        // The pid taken at launch: an exited child has none any more.
        kill_group(pid, libc::SIGKILL);
        if kind == FailureKind::ModuleUnresponsive {
            let _ = child.wait().await;
        }
        // First, so that no new request is queued for the dead process
        // after its commands are failed below.
        self.module.update(|s| {
            s.status = ModuleStatus::Crashed;
            s.pid = None;
            s.token = None;
        });
        let ran = since.elapsed();
        // The last lines it printed say why; they may still be in the
        // pipes, which close with the process group.
        let _ = tokio::time::timeout(OUTPUT_DRAIN, futures_util::future::join_all(output)).await;
        let mut message = why;
        if let Some(cause) = self
            .logs
            .last_error_since(self.module.name(), log_id, CAUSE_WINDOW)
        {
            message.push_str("; the last error it logged: ");
            message.push_str(&cause);
        }
        let failed = self.fail_work(kind, &message);
        *crashes = if ran >= self.ctx.stable_run {
            1
        } else {
            *crashes + 1
        };
        let backoff = backoff(*crashes);
        self.log(
            LogLevel::Error,
            &format!(
                "{message} after {:.1} s; {failed} request(s) failed; restarting in {:.1} s (crash {crashes} in a row)",
                ran.as_secs_f64(),
                backoff.as_secs_f64()
            ),
        );
        self.module.update(|s| {
            s.status = ModuleStatus::Restarting;
            s.last_error = Some(message.clone());
            s.crashes = *crashes;
            s.next_start = Some(std::time::SystemTime::now() + backoff);
        });
        let going_on = self.wait_out(backoff, crashes).await;
        self.module.update(|s| s.next_start = None);
        going_on
    }

    /// Waits `backoff` before the next launch; a Stop or Start ends the
    /// wait early, a Restart too and resets the crash count. `false` at
    /// shutdown.
    async fn wait_out(&mut self, backoff: Duration, crashes: &mut u32) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => true,
            control = self.controls.recv() => match control {
                Some(Control::Stop) => {
                    self.mark_stopped();
                    true
                }
                Some(Control::Start) => true,
                // Restart asks for a fresh start: the crash count too.
                Some(Control::Restart) => {
                    self.reset_crashes(crashes);
                    true
                }
                None => false,
            },
            _ = self.shutdown.cancelled() => {
                self.mark_stopped();
                false
            }
        }
    }

    fn reset_crashes(&self, crashes: &mut u32) {
        *crashes = 0;
        self.module.update(|s| s.crashes = 0);
    }

    /// How long a started module has been silent, if that is longer than
    /// the unresponsive limit while commands wait for it.
    fn silence(&self) -> Option<Duration> {
        let state = self.module.state();
        if state.status != ModuleStatus::Started {
            return None;
        }
        let silence = state.last_seen?.elapsed().ok()?;
        (silence >= self.ctx.unresponsive_after
            && self
                .queues
                .waiting_for(self.module.id(), &self.module.queue)
                > 0)
        .then_some(silence)
    }

    /// Fails the module's queued and in-flight commands and its running
    /// jobs; returns how many requests were failed.
    fn fail_work(&self, kind: FailureKind, message: &str) -> usize {
        let jobs = self.jobs.fail_module(self.module.id(), kind, message);
        if jobs > 0 {
            tracing::info!(
                module = self.module.id(),
                jobs,
                "running jobs failed: {message}"
            );
        }
        self.queues
            .fail_module(self.module.id(), Some(&self.module.queue), kind, message)
    }

    /// Marks the module Stopped and fails whatever is still queued for it
    /// (a request that slipped in while it was restarting).
    fn mark_stopped(&self) {
        self.module.update(|s| {
            s.status = ModuleStatus::Stopped;
            s.wanted = false;
            s.pid = None;
            s.token = None;
            s.next_start = None;
        });
        let message = format!("module {} was stopped", self.module.id());
        self.fail_work(FailureKind::ModuleStopped, &message);
    }

    /// Asks the module to quit, then signals its process group.
    async fn stop(&mut self, child: &mut Child, pid: Option<u32>) {
        self.module.update(|s| s.status = ModuleStatus::Stopping);
        // CodeProject's quit: a command with value moduleId; modules post no
        // reply. The ticket is held so the command stays live until we are done.
        let quit = QueueItem::quit(uuid::Uuid::new_v4().to_string(), self.module.id());
        let origin = Origin {
            module_id: self.module.id().to_owned(),
            route: String::new(),
            command: modhost_protocol::QUIT_COMMAND.to_owned(),
        };
        // The control lane: quit goes ahead of queued commands.
        let ticket = self
            .queues
            .enqueue_control(&self.module.queue, quit, origin)
            .ok();
        let exited = tokio::time::timeout(QUIT_GRACE, child.wait()).await.is_ok();
        drop(ticket);
        if !exited {
            kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(TERM_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
        kill_group(pid, libc::SIGKILL);
        self.module.update(|s| s.token = None);
        let message = format!("module {} was stopped", self.module.id());
        self.fail_work(FailureKind::ModuleStopped, &message);
        self.log(LogLevel::Information, &message);
    }
}

/// Capped exponential backoff for the n-th crash in a row (n ≥ 1).
fn backoff(crashes: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << crashes.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
