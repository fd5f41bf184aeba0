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
//!
//! Here: the requests the dashboard sends and the tasks' start. The task
//! itself is `task.rs`; its launch, with the install script when needed,
//! `launch.rs`; how its process is made (program, arguments,
//! environment, process group) `process.rs`; its output into the log
//! `output.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use modulesettings::Macros;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;
use crate::overrides::Overrides;
use crate::queue::Queues;
use crate::registry::{Module, ModuleStatus};

mod launch;
mod output;
mod process;
mod task;

use task::ModuleTask;

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
