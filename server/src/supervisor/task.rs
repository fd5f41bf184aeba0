//! One module's task: launches its process, watches it, restarts it after
//! a crash, stops it on request or at shutdown.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modhost_protocol::{FailureKind, QueueItem, QUEUE_TOKEN_SEPARATOR, TOKEN_ENV};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::output::{pipe_install, pipe_lines};
use super::process::{kill_group, launch_file, module_command, resolve_command};
use super::{Control, LaunchContext};
use crate::jobs::Jobs;
use crate::logs::{LogLevel, LogService};
use crate::progress_stream;
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
/// Longest an install script may run.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Longest wait, after a module exits, for its last output lines to reach the log.
const OUTPUT_DRAIN: Duration = Duration::from_millis(250);
/// How far back before its exit an error a module logged is taken as the
/// cause of the exit.
const CAUSE_WINDOW: Duration = Duration::from_secs(10);
/// A module process just spawned.
struct Launched {
    child: Child,
    /// Id of the "started module" log entry: later entries are this process's.
    log_id: u64,
    /// The tasks copying its stdout and stderr into the log; they end at EOF.
    output: Vec<JoinHandle<()>>,
}

/// How a running process stopped being watched.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    /// No contact for this long while commands waited for it.
    Unresponsive(Duration),
    Stop,
    Restart,
    Shutdown,
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
    fn log(&self, level: LogLevel, message: &str) -> u64 {
        self.logs.add(level, self.module.name(), "", message)
    }

    pub(super) async fn run(mut self) {
        let mut crashes: u32 = 0;
        loop {
            if !self.module.state().wanted {
                self.module.update(|s| {
                    if matches!(s.status, ModuleStatus::NotStarted) {
                        s.status = ModuleStatus::NoAutoStart;
                    }
                });
                tokio::select! {
                    control = self.controls.recv() => match control {
                        Some(Control::Start | Control::Restart) => {
                            self.module.update(|s| s.wanted = true);
                            crashes = 0;
                        }
                        Some(Control::Stop) => {}
                        None => return,
                    },
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            }

            let Launched {
                mut child,
                log_id,
                output,
            } = match self.launch().await {
                Ok(launched) => launched,
                Err(problem) => {
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
                    continue;
                }
            };
            let launched = Instant::now();
            let pid = child.id();

            let mut tick = tokio::time::interval(WATCH_TICK);
            let ended = loop {
                tokio::select! {
                    exit = child.wait() => break Ended::Exited(exit),
                    control = self.controls.recv() => match control {
                        Some(Control::Start) => continue,
                        Some(Control::Stop) => break Ended::Stop,
                        Some(Control::Restart) => break Ended::Restart,
                        None => break Ended::Shutdown,
                    },
                    _ = self.shutdown.cancelled() => break Ended::Shutdown,
                    _ = tick.tick() => {
                        if crashes > 0 && launched.elapsed() >= self.ctx.stable_run {
                            crashes = 0;
                            self.module.update(|s| s.crashes = 0);
                        }
                        if let Some(silence) = self.silence() {
                            break Ended::Unresponsive(silence);
                        }
                    }
                }
            };

            let (kind, why) = match ended {
                Ended::Exited(exit) => {
                    let how = match exit {
                        Ok(status) => status.to_string(),
                        Err(err) => format!("wait failed: {err}"),
                    };
                    (
                        FailureKind::ModuleCrashed,
                        format!("module {} exited unexpectedly ({how})", self.module.id()),
                    )
                }
                Ended::Unresponsive(silence) => (
                    FailureKind::ModuleUnresponsive,
                    format!(
                        "module {} stopped responding: no contact for {:.0} s while commands waited for it",
                        self.module.id(),
                        silence.as_secs_f64()
                    ),
                ),
                Ended::Stop => {
                    self.stop(&mut child, pid).await;
                    self.mark_stopped();
                    continue;
                }
                Ended::Restart => {
                    self.stop(&mut child, pid).await;
                    crashes = 0;
                    self.module.update(|s| s.crashes = 0);
                    self.log(
                        LogLevel::Information,
                        &format!("restarting module {}", self.module.id()),
                    );
                    continue;
                }
                Ended::Shutdown => {
                    self.stop(&mut child, pid).await;
                    self.module.update(|s| s.status = ModuleStatus::Stopped);
                    return;
                }
            };

            // The process crashed or hung: kill what is left of it, fail its
            // work, and relaunch after the backoff.
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
            let ran = launched.elapsed();
            // The last lines it printed say why; they may still be in the
            // pipes, which close with the process group.
            let _ =
                tokio::time::timeout(OUTPUT_DRAIN, futures_util::future::join_all(output)).await;
            let mut message = why;
            if let Some(cause) =
                self.logs
                    .last_error_since(self.module.name(), log_id, CAUSE_WINDOW)
            {
                message.push_str("; the last error it logged: ");
                message.push_str(&cause);
            }
            let failed = self.fail_work(kind, &message);
            crashes = if ran >= self.ctx.stable_run {
                1
            } else {
                crashes + 1
            };
            let backoff = backoff(crashes);
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
                s.crashes = crashes;
                s.next_start = Some(std::time::SystemTime::now() + backoff);
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                control = self.controls.recv() => match control {
                    Some(Control::Stop) => self.mark_stopped(),
                    Some(Control::Start) => {}
                    // Restart asks for a fresh start: the crash count too.
                    Some(Control::Restart) => {
                        crashes = 0;
                        self.module.update(|s| s.crashes = 0);
                    }
                    None => return,
                },
                _ = self.shutdown.cancelled() => { self.mark_stopped(); return; }
            }
            self.module.update(|s| s.next_start = None);
        }
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

    /// Installs the module if needed, then spawns it with its output piped
    /// into the log.
    async fn launch(&mut self) -> Result<Launched, String> {
        let module = Arc::clone(&self.module);
        if let Some(file) = launch_file(&module) {
            if !file.exists() {
                self.install(&file).await?;
            }
        }
        let (program, args) = resolve_command(&module, &self.ctx)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut command = module_command(&program, &module, &self.ctx);
        command
            .args(&args)
            .env(TOKEN_ENV, &token)
            // The unmodified CodeProject SDK polls `queue/<CPAI_MODULE_QUEUENAME>`:
            // the token travels in the name (docs/protocol.md §4.1).
            .env(
                "CPAI_MODULE_QUEUENAME",
                format!("{}{QUEUE_TOKEN_SEPARATOR}{token}", module.queue),
            );
        let (progress, progress_end) =
            progress_stream::pair().map_err(|e| format!("cannot make the progress stream: {e}"))?;
        progress_stream::give_to_child(&mut command, &progress_end);
        // Starting, with the new launch's token, before the spawn: the
        // module's first poll, which makes it Started, may come before this
        // task runs again.
        module.update(|s| {
            s.status = ModuleStatus::Starting;
            s.launch += 1;
            s.token = Some(token);
        });
        let mut child = command.spawn().map_err(|err| {
            module.update(|s| s.token = None);
            format!("cannot run {}: {err}", program.display())
        })?;
        // The child has its copy; the stream ends when the module's ends.
        drop(progress_end);
        let pid = child.id();
        let log_id = self.log(
            LogLevel::Information,
            &format!(
                "started module {} (pid {}): {} {}",
                module.id(),
                pid.unwrap_or(0),
                program.display(),
                args.join(" ")
            ),
        );
        let name = module.name().to_owned();
        let mut output = vec![tokio::spawn(progress_stream::serve(
            progress,
            Arc::clone(&module),
            Arc::clone(&self.jobs),
            self.ctx.max_push_bytes,
        ))];
        if let Some(out) = child.stdout.take() {
            output.push(tokio::spawn(pipe_lines(
                out,
                Arc::clone(&self.logs),
                name.clone(),
                LogLevel::Information,
            )));
        }
        if let Some(err) = child.stderr.take() {
            output.push(tokio::spawn(pipe_lines(
                err,
                Arc::clone(&self.logs),
                name,
                LogLevel::Error,
            )));
        }
        module.update(|s| {
            s.started = Some(std::time::SystemTime::now());
            s.pid = pid;
            s.launches += 1;
            s.last_error = None;
        });
        Ok(Launched {
            child,
            log_id,
            output,
        })
    }

    /// Runs the module's `install.sh` because `missing` does not exist yet.
    async fn install(&mut self, missing: &Path) -> Result<(), String> {
        let dir = self.module.dir().clone();
        let script = dir.join("install.sh");
        if !script.exists() {
            return Err(format!(
                "launch file {} does not exist and the module has no install.sh",
                missing.display()
            ));
        }
        if self.ctx.no_install {
            return Err(format!(
                "module is not installed ({} is missing) and install scripts are disabled",
                missing.display()
            ));
        }
        self.module.update(|s| s.status = ModuleStatus::Installing);
        self.log(
            LogLevel::Information,
            &format!(
                "installing module {}: bash {}",
                self.module.id(),
                script.display()
            ),
        );
        let log_path = dir.join("install.log");
        let mut command = module_command("bash", &self.module, &self.ctx);
        command
            .arg(&script)
            .env("MODHOST_ROOT", &self.ctx.root_path);
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        let name = self.module.name().to_owned();
        let out = child.stdout.take().map(|o| {
            tokio::spawn(pipe_install(
                o,
                Arc::clone(&self.logs),
                name.clone(),
                log_path.clone(),
            ))
        });
        let err = child.stderr.take().map(|e| {
            tokio::spawn(pipe_install(
                e,
                Arc::clone(&self.logs),
                name,
                log_path.clone(),
            ))
        });
        let pid = child.id();
        let status = tokio::select! {
            status = tokio::time::timeout(INSTALL_TIMEOUT, child.wait()) => status,
            _ = self.shutdown.cancelled() => {
                kill_group(pid, libc::SIGKILL);
                return Err("install interrupted by shutdown".into());
            }
        };
        for task in [out, err].into_iter().flatten() {
            let _ = task.await;
        }
        match status {
            Ok(Ok(status)) if status.success() => {
                self.log(
                    LogLevel::Information,
                    &format!("installed module {}", self.module.id()),
                );
                if missing.exists() {
                    Ok(())
                } else {
                    Err(format!(
                        "install.sh succeeded but {} still does not exist",
                        missing.display()
                    ))
                }
            }
            Ok(Ok(status)) => Err(format!(
                "install.sh failed ({status}); see {}",
                log_path.display()
            )),
            Ok(Err(err)) => Err(format!("install.sh could not be waited for: {err}")),
            Err(_) => {
                kill_group(pid, libc::SIGKILL);
                Err(format!(
                    "install.sh ran longer than {} minutes and was stopped",
                    INSTALL_TIMEOUT.as_secs() / 60
                ))
            }
        }
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
