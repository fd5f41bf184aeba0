//! Launching a module's process: its install script first when its launch
//! file is missing, then the process itself with a fresh token, its
//! progress stream and its output piped into the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use modhost_protocol::{QUEUE_TOKEN_SEPARATOR, TOKEN_ENV};
use tokio::process::Child;
use tokio::task::JoinHandle;

use super::output::{pipe_install, pipe_lines};
use super::process::{kill_group, launch_file, module_command, resolve_command};
use super::task::ModuleTask;
use crate::logs::LogLevel;
use crate::progress_stream;
use crate::registry::ModuleStatus;

/// Longest an install script may run.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// A module process just spawned.
pub(super) struct Launched {
    pub(super) child: Child,
    /// Id of the "started module" log entry: later entries are this process's.
    pub(super) log_id: u64,
    /// The tasks copying its stdout and stderr into the log; they end at EOF.
    pub(super) output: Vec<JoinHandle<()>>,
}

impl ModuleTask {
    /// Installs the module if needed, then spawns it with its output piped
    /// into the log.
    pub(super) async fn launch(&mut self) -> Result<Launched, String> {
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
}
