//! Module processes: launch, watch, restart, stop.
//!
//! One task per module owns its child process. The task launches the module
//! when it is wanted (AutoStart, or Start from the dashboard), logs each output
//! line, and on an unexpected exit fails the module's queued and in-flight
//! commands at once, then relaunches it after a capped exponential backoff.
//! Stop queues CodeProject's `quit` command, waits a short grace period, then
//! signals the whole process group, so a module's own children go too.
//!
//! Each launch gets a fresh token (docs/protocol.md §4.1): the module's polls
//! must carry it, so a process from an earlier launch, or from an earlier
//! server, can never take a command. A module dies with the server
//! (`PR_SET_PDEATHSIG`), even when the server is killed outright. A started
//! module that stops making contact while commands wait for it is declared
//! unresponsive, its commands failed at once, and it is restarted. Modules
//! get a clean environment: a base set of the server's variables, an
//! allow-list, the `CPAI_*` variables and the manifest's.
//! Launch rules of CodeProject.AI Server 2.9, docs/protocol.md §1.1 and §1.8.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modhost_protocol::{FailureKind, QueueItem, QUEUE_TOKEN_SEPARATOR, TOKEN_ENV};
use modulesettings::{Macros, RuntimeLocation};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::logs::{LogLevel, LogService};
use crate::overrides::{self, Overrides};
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
/// Longest module output line kept in the log, in bytes.
const MAX_LINE: usize = 8 * 1024;

/// What the dashboard can ask of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Launch it if it is not running (and keep it running).
    Start,
    /// Quit it and leave it stopped.
    Stop,
    /// Quit it and launch it again.
    Restart,
}

/// Why a start, stop or restart was not passed on.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The module cannot run here (unsupported platform): retrying won't help.
    #[error("module '{0}' cannot be started here: it does not support this platform")]
    NotHere(String),
    /// Earlier requests for the module still wait to be acted on.
    #[error("module '{0}' is busy with earlier requests; try again")]
    Busy(String),
}

/// What every module launch needs from the server.
pub struct LaunchContext {
    /// The port modules reach the server on (`CPAI_PORT`).
    pub port: u16,
    /// Values for the manifest macros (`%ROOT_PATH%`, `%OS%`, ...).
    pub macros: Macros,
    /// The server's root directory (`CPAI_APPROOTPATH`, `MODHOST_ROOT`).
    pub root_path: PathBuf,
    /// Skip install scripts.
    pub no_install: bool,
    /// Variables passed from the server's environment beyond the base set
    /// (`config::MODULE_ENV_BASE`); a trailing `*` matches a prefix.
    pub module_env: Vec<String>,
    /// Silence, while commands wait, after which a module is unresponsive.
    pub unresponsive_after: Duration,
    /// Run time after which a relaunched module's crash count resets.
    pub stable_run: Duration,
    /// Settings changed from the dashboard, passed as environment.
    pub overrides: Arc<Overrides>,
    /// Largest progress batch a module may push on its progress stream, in
    /// bytes (the server's `max_body_bytes`, as for an HTTP push).
    pub max_push_bytes: usize,
}

/// Sends start, stop and restart requests to the per-module tasks.
pub struct Supervisor {
    controls: HashMap<String, mpsc::Sender<Control>>,
}

/// The per-module tasks, owned by whoever waits for them at shutdown.
pub struct SupervisorTasks(Vec<JoinHandle<()>>);

impl SupervisorTasks {
    /// Waits for every module task to finish (after shutdown was cancelled):
    /// by then every module process has exited.
    pub async fn join(self) {
        for task in self.0 {
            let _ = task.await;
        }
    }
}

impl Supervisor {
    /// Starts one task per module; they run until `shutdown` is cancelled,
    /// then stop their processes.
    pub fn start(
        modules: &[Arc<Module>],
        ctx: Arc<LaunchContext>,
        queues: Arc<Queues>,
        jobs: Arc<Jobs>,
        logs: Arc<crate::logs::LogService>,
        shutdown: CancellationToken,
    ) -> (Supervisor, SupervisorTasks) {
        let mut controls = HashMap::new();
        let mut tasks = Vec::new();
        for module in modules {
            if module.state().status == ModuleStatus::NotAvailable {
                continue;
            }
            let (tx, rx) = mpsc::channel(8);
            controls.insert(module.id().to_ascii_lowercase(), tx);
            let task = ModuleTask {
                module: Arc::clone(module),
                ctx: Arc::clone(&ctx),
                queues: Arc::clone(&queues),
                jobs: Arc::clone(&jobs),
                logs: Arc::clone(&logs),
                controls: rx,
                shutdown: shutdown.clone(),
            };
            tasks.push(tokio::spawn(task.run()));
        }
        (Supervisor { controls }, SupervisorTasks(tasks))
    }

    /// Sends `control` to a module's task.
    ///
    /// # Errors
    /// [`ControlError::NotHere`] when the module has no task (NotAvailable on
    /// this platform); [`ControlError::Busy`] when earlier requests are still
    /// waiting.
    pub fn control(&self, module_id: &str, control: Control) -> Result<(), ControlError> {
        let tx = self
            .controls
            .get(&module_id.to_ascii_lowercase())
            .ok_or_else(|| ControlError::NotHere(module_id.to_owned()))?;
        tx.try_send(control)
            .map_err(|_| ControlError::Busy(module_id.to_owned()))
    }
}

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

struct ModuleTask {
    module: Arc<Module>,
    ctx: Arc<LaunchContext>,
    queues: Arc<Queues>,
    jobs: Arc<Jobs>,
    logs: Arc<LogService>,
    controls: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
}

impl ModuleTask {
    /// Logs under the module's name; returns the entry's id.
    fn log(&self, level: LogLevel, message: &str) -> u64 {
        self.logs.add(level, self.module.name(), "", message)
    }

    async fn run(mut self) {
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
        let dir = module.dir().clone();

        if let Some(file) = launch_file(&module) {
            if !file.exists() {
                self.install(&file).await?;
            }
        }
        let (program, args) = resolve_command(&module, &self.ctx)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut command = Command::new(&program);
        command
            .args(&args)
            .current_dir(&dir)
            .env_clear()
            .envs(inherited_environment(&self.ctx.module_env))
            .envs(module_environment(&module, &self.ctx))
            .env(TOKEN_ENV, &token)
            // The unmodified CodeProject SDK polls `queue/<CPAI_MODULE_QUEUENAME>`:
            // the token travels in the name (docs/protocol.md §4.1).
            .env(
                "CPAI_MODULE_QUEUENAME",
                format!("{}{QUEUE_TOKEN_SEPARATOR}{token}", module.queue),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so stop and shutdown reach the module's children.
            .process_group(0);
        die_with_server(&mut command);
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
        let mut command = Command::new("bash");
        command
            .arg(&script)
            .current_dir(&dir)
            .env_clear()
            .envs(inherited_environment(&self.ctx.module_env))
            .envs(module_environment(&self.module, &self.ctx))
            .env("MODHOST_ROOT", &self.ctx.root_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        die_with_server(&mut command);
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

/// Makes the child die with the server: `PR_SET_PDEATHSIG` delivers SIGKILL
/// to it when the server's thread that spawned it ends (the supervisor runs
/// on the main thread, so: when the server ends, killed or not). A server
/// that died between the fork and the `prctl` is caught by comparing the
/// parent's pid.
fn die_with_server(command: &mut Command) {
    // SAFETY: getpid is async-signal-safe; read before the fork.
    let server = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (prctl, getppid, raise).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != server {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// The variables of the server's own environment a module gets: the base
/// set (`config::MODULE_ENV_BASE`) and those `allowed` names (a trailing `*`
/// matches a prefix). Secrets in the server's environment stay there.
pub fn inherited_environment(allowed: &[String]) -> Vec<(String, String)> {
    let matches = |name: &str, pattern: &str| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    };
    std::env::vars()
        .filter(|(name, _)| {
            crate::config::MODULE_ENV_BASE
                .iter()
                .any(|p| matches(name, p))
                || allowed.iter().any(|p| matches(name, p))
        })
        .collect()
}

/// Signals the process group led by `pid` (children are spawned as group
/// leaders). The group outlives its leader, so this also reaches what a
/// module left behind after it exited.
fn kill_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.filter(|&p| p > 1) {
        // SAFETY: kill(2) has no memory effects; a stale group just gives ESRCH.
        unsafe {
            libc::kill(-(pid as libc::pid_t), signal);
        }
    }
}

/// The file whose absence means "not installed": `FilePath` under the module
/// directory, when the manifest has one.
fn launch_file(module: &Module) -> Option<PathBuf> {
    let launch = &module.manifest.settings.launch_settings;
    let file = launch.file_path.as_deref()?;
    let path = Path::new(file);
    Some(if path.is_absolute() {
        path.to_owned()
    } else {
        module.dir().join(path)
    })
}

/// The program and arguments that start `module`.
fn resolve_command(module: &Module, ctx: &LaunchContext) -> Result<(PathBuf, Vec<String>), String> {
    let launch = &module.manifest.settings.launch_settings;
    if let Some(command) = launch.command.as_deref().filter(|c| !c.trim().is_empty()) {
        let expanded = ctx.macros.expand(command, module.dir());
        return Ok((
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), format!("exec {expanded}")],
        ));
    }
    let file = launch_file(module)
        .ok_or("the manifest has neither LaunchSettings.FilePath nor Command")?;
    let file_arg = file.display().to_string();
    let runtime = launch
        .runtime
        .as_deref()
        .unwrap_or("execute")
        .trim()
        .to_ascii_lowercase();
    match runtime.as_str() {
        "" | "execute" | "exec" => Ok((file, Vec::new())),
        "dotnet" => Ok(("dotnet".into(), vec![file_arg])),
        python if python.starts_with("python") => {
            let version = python.trim_start_matches("python");
            let compact = version.replace('.', "");
            let venv_python = |base: &Path| {
                base.join("bin")
                    .join(&ctx.macros.platform.os)
                    .join(format!("python{compact}"))
                    .join("venv/bin/python3")
            };
            let local = venv_python(module.dir());
            let shared = venv_python(&ctx.root_path.join("runtimes"));
            let system = || match version {
                "" => PathBuf::from("python3"),
                version => PathBuf::from(format!("python{version}")),
            };
            // The venv the manifest names, else the module's own, else the
            // interpreter on the PATH.
            let interpreter = match launch.runtime_location {
                RuntimeLocation::System => system(),
                RuntimeLocation::Shared if shared.exists() => shared,
                _ if local.exists() => local,
                _ => system(),
            };
            Ok((interpreter, vec![file_arg]))
        }
        other => Ok((PathBuf::from(other), vec![file_arg])),
    }
}

/// The child's environment: server variables, the manifest's
/// EnvironmentVariables (upper-cased keys, macros expanded), the settings
/// overridden from the dashboard (`overrides`), then the CPAI_* module
/// variables where not already set (docs/protocol.md §1.1, §2.5).
pub fn module_environment(module: &Module, ctx: &LaunchContext) -> Vec<(String, String)> {
    let settings = &module.manifest.settings;
    let launch = &settings.launch_settings;
    let mut env: Vec<(String, String)> = vec![
        ("CPAI_PORT".into(), ctx.port.to_string()),
        (
            "CPAI_APPROOTPATH".into(),
            ctx.root_path.display().to_string(),
        ),
    ];
    for (key, value) in &settings.environment_variables {
        let key = key.to_ascii_uppercase();
        env.retain(|(k, _)| k != &key);
        env.push((key, ctx.macros.expand(value, module.dir())));
    }
    for (name, value) in ctx.overrides.get(module.id()) {
        if let Some(key) = overrides::env_name(&name) {
            env.retain(|(k, _)| k != &key);
            let value = overrides::env_value(&key, &value);
            env.push((key, value));
        }
    }
    let parallelism = match launch.parallelism {
        n if n > 0 => n as usize,
        _ => (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1),
    };
    let gpu = &settings.gpu_options;
    let defaults = [
        ("CPAI_MODULE_SERVER_LAUNCHED", Some("true".to_owned())),
        ("CPAI_MODULE_ID", Some(module.id().to_owned())),
        ("CPAI_MODULE_NAME", Some(module.name().to_owned())),
        ("CPAI_MODULE_PATH", Some(module.dir().display().to_string())),
        ("CPAI_MODULE_QUEUENAME", Some(module.queue.clone())),
        (
            "CPAI_MODULE_REQUIRED_MB",
            launch
                .required_mb
                .filter(|&mb| mb > 0)
                .map(|mb| mb.to_string()),
        ),
        (
            "CPAI_LOG_VERBOSITY",
            Some(format!("{:?}", launch.log_verbosity)),
        ),
        ("CPAI_MODULE_PARALLELISM", Some(parallelism.to_string())),
        (
            "CPAI_MODULE_ENABLE_GPU",
            Some(if gpu.enable_gpu { "True" } else { "False" }.to_owned()),
        ),
        (
            "CPAI_ACCEL_DEVICE_NAME",
            gpu.accelerator_device_name.clone(),
        ),
        ("CPAI_HALF_PRECISION", gpu.half_precision.clone()),
    ];
    for (key, value) in defaults {
        if let Some(value) = value {
            if !env.iter().any(|(k, _)| k == key) {
                env.push((key.to_owned(), value));
            }
        }
    }
    env
}

/// Logs each line a module prints, its level taken from a prefix. A line is
/// kept up to [`MAX_LINE`] bytes (cut at a character boundary, saying how
/// much was left out); the rest of it is read and dropped, so a module that
/// prints without newlines cannot grow the server's memory.
async fn pipe_lines(
    stream: impl AsyncRead + Unpin,
    logs: Arc<LogService>,
    name: String,
    default: LogLevel,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    let mut dropped = 0usize;
    loop {
        let (consumed, ended) = {
            let Ok(buf) = reader.fill_buf().await else {
                return;
            };
            if buf.is_empty() {
                // End of output: a last line without a newline still counts.
                if !line.is_empty() {
                    log_line(&logs, &name, default, &line, dropped);
                }
                return;
            }
            let (take, ended) = match buf.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            let body = &buf[..if ended { take - 1 } else { take }];
            let keep = body.len().min(room);
            line.extend_from_slice(&body[..keep]);
            dropped += body.len() - keep;
            (take, ended)
        };
        reader.consume(consumed);
        if ended {
            log_line(&logs, &name, default, &line, dropped);
            line.clear();
            dropped = 0;
        }
    }
}

/// Logs one output line of a module; `dropped` bytes of it were not kept.
fn log_line(logs: &LogService, name: &str, default: LogLevel, bytes: &[u8], dropped: usize) {
    // A cut may have split a character: keep the valid part.
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    let (level, message) = LogLevel::from_line(text, default);
    logs.add_cut(level, name, "", message, dropped);
}

/// Copies an install script's output into `install.log` and the server log.
async fn pipe_install(
    stream: impl AsyncRead + Unpin,
    logs: Arc<LogService>,
    name: String,
    log_path: PathBuf,
) {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .await
        .ok();
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(file) = file.as_mut() {
            let _ = file.write_all(format!("{line}\n").as_bytes()).await;
        }
        logs.add(LogLevel::Information, &name, "install", &line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A module `Py` in `dir` run by `runtime` from `location`.
    fn python_module(dir: &Path, runtime: &str, location: &str) -> Module {
        let text = json!({"Modules": {"Py": {
            "Name": "Py", "Version": "1.0.0",
            "LaunchSettings": {"FilePath": "m.py", "Runtime": runtime, "RuntimeLocation": location},
            "RouteMaps": [{"Name": "r", "Route": "py/r", "Method": "POST", "Command": "r"}],
        }}});
        std::fs::write(dir.join("modulesettings.json"), text.to_string()).unwrap();
        let platform = modulesettings::Platform::current();
        let manifest = modulesettings::load_module_dir(dir, &platform).unwrap();
        Module::new(manifest, ModuleStatus::NotStarted)
    }

    #[test]
    fn python_modules_run_from_their_venv_else_the_system_interpreter() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("modules/Py");
        std::fs::create_dir_all(&dir).unwrap();
        let platform = modulesettings::Platform::current();
        let ctx = LaunchContext {
            port: 1,
            macros: Macros::new(root.path(), platform.clone()),
            root_path: root.path().to_owned(),
            no_install: true,
            module_env: Vec::new(),
            unresponsive_after: Duration::from_secs(30),
            stable_run: Duration::from_secs(30),
            overrides: Arc::new(Overrides::load(root.path()).0),
            max_push_bytes: 1 << 20,
        };
        let interpreter = |runtime: &str, location: &str| {
            let (program, args) =
                resolve_command(&python_module(&dir, runtime, location), &ctx).unwrap();
            assert_eq!(args, [dir.join("m.py").display().to_string()]);
            program
        };
        // No venv anywhere: the interpreter on the PATH, of the named version.
        assert_eq!(interpreter("python3.11", "Local"), Path::new("python3.11"));
        assert_eq!(interpreter("python", "Shared"), Path::new("python3"));

        let venv = |base: &Path| {
            let python = base.join(format!("bin/{}/python311/venv/bin/python3", platform.os));
            std::fs::create_dir_all(python.parent().unwrap()).unwrap();
            std::fs::write(&python, "").unwrap();
            python
        };
        let local = venv(&dir);
        assert_eq!(interpreter("python3.11", "Local"), local);
        // A shared runtime that is missing falls back to the module's own.
        assert_eq!(interpreter("python3.11", "Shared"), local);
        let shared = venv(&root.path().join("runtimes"));
        assert_eq!(interpreter("python3.11", "Shared"), shared);
        assert_eq!(interpreter("python3.11", "System"), Path::new("python3.11"));
    }

    #[test]
    fn only_allowed_variables_of_the_server_reach_a_module() {
        // PATH is in every test environment; the rest are made up here and
        // read by no other test.
        std::env::set_var("MODHOST_TEST_SECRET_TOKEN", "s3cret");
        std::env::set_var("MODHOST_TEST_ALLOWED_A", "a");
        let env = inherited_environment(&["MODHOST_TEST_ALLOWED_*".into()]);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"PATH"), "{names:?}");
        assert!(names.contains(&"MODHOST_TEST_ALLOWED_A"), "{names:?}");
        assert!(!names.contains(&"MODHOST_TEST_SECRET_TOKEN"), "{names:?}");
        std::env::remove_var("MODHOST_TEST_SECRET_TOKEN");
        std::env::remove_var("MODHOST_TEST_ALLOWED_A");
    }

    #[tokio::test]
    async fn a_huge_line_is_cut_and_the_next_one_kept() {
        let logs = Arc::new(LogService::new(None));
        let mut output = "é".repeat(MAX_LINE).into_bytes(); // 2 × MAX_LINE bytes
        output.extend_from_slice(b"\nwarn: next line\nno newline at the end");
        pipe_lines(
            &output[..],
            Arc::clone(&logs),
            "M".into(),
            LogLevel::Information,
        )
        .await;
        let entries = logs.list(0, 10);
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert!(entries[0]
            .entry
            .ends_with(&format!("… ({MAX_LINE} more bytes not kept)")));
        assert!(entries[0].entry.len() < MAX_LINE + 64);
        assert_eq!(entries[1].entry, "M: next line");
        assert_eq!(entries[1].level, LogLevel::Warning);
        assert_eq!(entries[2].entry, "M: no newline at the end");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
