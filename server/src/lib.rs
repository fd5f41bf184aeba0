//! modhost: a host for AI modules, wire-compatible with CodeProject.AI Server 2.9.
//!
//! It reads each module's `modulesettings.json`, launches the module as a
//! child process, and serves the module's routes over HTTP. Client requests
//! become commands on per-module queues; modules long-poll those queues and
//! post replies back (docs/protocol.md). Long processes become jobs the
//! server owns, streamed to clients as Server-Sent Events.
//!
//! Layout:
//! - [`config`]: the one configuration struct (file < env < CLI);
//! - `queue`: bounded command queues, their control lanes, and the requests
//!   waiting on them;
//! - `commands`: the one way a request reaches a module: run, status,
//!   cancel, and the jobs long processes become;
//! - `generation`: model names, generation routes and their results, for
//!   the OpenAI and Ollama APIs; `watcher`: a client following a job;
//! - `jobs`: jobs, their events and retention;
//! - `registry`: modules, their live state and launch tokens, the route table;
//! - `supervisor`: module processes: launch, watch, restart with backoff, stop;
//!   `progress_stream`: the socket a launched module pushes its progress on;
//! - `access`: API key, origin checks and CORS, in front of every route;
//! - `api`: the `/v1` endpoints; `payload`: request values and validation;
//! - `listeners`: the clients' and the modules' HTTP servers and their
//!   listeners; `conn`: whether a request's client is still connected;
//! - `overrides`: module settings changed from the dashboard, kept on disk;
//! - `logs`, `system`, `explorer_ui`, `static_files`: log buffer, machine
//!   figures, explorer UI cutting, the embedded web UI;
//! - `error`: the one mapping from errors to HTTP answers.
//!
//! [`run`] serves until a shutdown token is cancelled; tests call it on
//! `127.0.0.1:0`.

mod access;
mod api;
mod commands;
pub mod config;
mod conn;
mod error;
mod explorer_ui;
mod generation;
mod jobs;
mod listeners;
mod logs;
mod overrides;
mod payload;
mod progress_stream;
mod queue;
mod registry;
mod skills;
mod static_files;
mod supervisor;
mod system;
mod watcher;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::web;
use anyhow::Context;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config};

use commands::Commands;
use jobs::{Jobs, Retention};
use logs::{LogLevel, LogService};
use queue::Queues;
use registry::{Module, ModuleStatus, Registry};
use supervisor::{LaunchContext, Supervisor};
use system::SystemMonitor;

/// The CodeProject.AI Server API version modhost implements; modules compare
/// it with their `ServerVersionRange`.
pub const COMPATIBLE_VERSION: &str = "2.9.6";

/// The services handlers share, one `web::Data` for the whole app.
pub struct AppState {
    pub(crate) config: Config,
    pub(crate) queues: Arc<Queues>,
    pub(crate) jobs: Arc<Jobs>,
    pub(crate) commands: Arc<Commands>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) logs: Arc<LogService>,
    pub(crate) supervisor: Supervisor,
    pub(crate) system: Arc<SystemMonitor>,
    pub(crate) overrides: Arc<overrides::Overrides>,
    /// WebAssembly skills and the document index they search.
    pub(crate) skills: Arc<modhost_skills::Skills>,
    pub(crate) started: Instant,
    /// Cancelled once the modules have stopped at shutdown: ends event
    /// streams and job pollers.
    pub(crate) shutdown: CancellationToken,
}

/// This machine's name, as CodeProject puts it in every envelope.
pub(crate) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()))
}

/// `fields` plus the success envelope `{"success":true,"code":200,"hostname":..}`.
pub(crate) fn envelope(mut fields: Value) -> Value {
    if let Value::Object(map) = &mut fields {
        map.insert("success".into(), json!(true));
        map.insert("code".into(), json!(200));
        map.insert("hostname".into(), json!(hostname()));
    }
    fields
}

/// Loads the modules, starts them and serves HTTP on `listener` until
/// `shutdown` is cancelled; then stops every module process, answers every
/// waiting client, and returns.
///
/// Modules launched by the server talk to a second, loopback-only listener
/// (their `CPAI_PORT`) with its own worker, so that however many clients
/// crowd the main port, polls and replies are served.
///
/// # Errors
/// When a listener cannot be served.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    raise_open_file_limit();
    let logs = Arc::new(LogService::new(Some(config.log_dir.clone())));
    let platform = modulesettings::Platform {
        development: config.development,
        ..modulesettings::Platform::current()
    };

    let (modules, overrides) = load_modules(&config, &platform, &logs);
    let local = listener
        .local_addr()
        .context("reading the listener's address")?;
    let module_listeners = listeners::ModuleListeners::bind(config.module_port)?;
    let module_port = module_listeners.port;
    announce(&logs, &config, local, module_port, modules.len());

    let queues = Queues::new(config.queue_length, config.queue_bytes);
    let jobs = Jobs::new(Retention {
        age: config.job_retention,
        count: config.max_finished_jobs,
    });
    let streams_end = CancellationToken::new();
    let commands = Commands::new(
        Arc::clone(&queues),
        Arc::clone(&jobs),
        config.request_timeout,
        config.job_poll_interval,
        streams_end.clone(),
    );
    let modules_stop = CancellationToken::new();
    let launch = Arc::new(LaunchContext {
        port: module_port,
        macros: modulesettings::Macros::new(&config.root_path, platform.clone()),
        root_path: config.root_path.clone(),
        no_install: config.no_install,
        module_env: config.module_env.clone(),
        unresponsive_after: config.unresponsive_after,
        stable_run: config.stable_run,
        overrides: Arc::clone(&overrides),
        max_push_bytes: config.max_body_bytes,
    });
    let (supervisor, module_tasks) = Supervisor::start(
        &modules,
        launch,
        Arc::clone(&queues),
        Arc::clone(&jobs),
        Arc::clone(&logs),
        modules_stop.clone(),
    );
    let registry = Arc::new(Registry::new(modules));
    let skills = start_skills(&config, &registry, &commands, &jobs)?;
    let state = web::Data::new(AppState {
        queues,
        jobs,
        commands,
        skills,
        registry,
        logs: Arc::clone(&logs),
        supervisor,
        system: SystemMonitor::start(shutdown.clone()),
        overrides,
        started: Instant::now(),
        config: config.clone(),
        shutdown: streams_end.clone(),
    });

    let ollama_listener = listeners::bind_ollama(&config, local.ip(), &logs)?;
    let server =
        listeners::client_server(&state, listener, ollama_listener, config.max_connections)?;
    let module_server = listeners::module_server(&state, module_listeners)?;
    let handles = [server.handle(), module_server.handle()];
    let serving = [tokio::spawn(server), tokio::spawn(module_server)];

    shutdown.cancelled().await;
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        "shutting down: stopping modules",
    );
    // Modules are stopped while HTTP still serves: their quit command travels
    // over the queue, and the clients they leave waiting are answered.
    modules_stop.cancel();
    module_tasks.join().await;
    streams_end.cancel();
    // Graceful: requests in progress (every one of them answered by now, or
    // about to be) finish before the listeners close.
    for handle in handles {
        handle.stop(true).await;
    }
    for task in serving {
        let _ = task.await;
    }
    logs.add(LogLevel::Information, "Server", "", "stopped");
    Ok(())
}

/// The modules found in `config.modules_dirs` for `platform`, with the
/// saved overrides applied (auto-start). A manifest that cannot be read, a
/// module for another platform and unreadable overrides are logged, never
/// fatal.
fn load_modules(
    config: &Config,
    platform: &modulesettings::Platform,
    logs: &LogService,
) -> (Vec<Arc<Module>>, Arc<overrides::Overrides>) {
    let discovery = modulesettings::discover(&config.modules_dirs, platform);
    for error in &discovery.errors {
        logs.add(
            LogLevel::Error,
            "Server",
            "",
            &format!("module skipped: {error}"),
        );
    }
    let (overrides, problem) = overrides::Overrides::load(&config.data_dir);
    if let Some(problem) = problem {
        logs.add(LogLevel::Error, "Server", "", &problem);
    }
    let overrides = Arc::new(overrides);
    let modules = discovery
        .modules
        .into_iter()
        .map(|manifest| {
            let status = if manifest.settings.is_platform_supported(platform) {
                ModuleStatus::NotStarted
            } else {
                ModuleStatus::NotAvailable
            };
            if status == ModuleStatus::NotAvailable {
                logs.add(
                    LogLevel::Warning,
                    "Server",
                    "",
                    &format!(
                        "module {} does not support platform {}",
                        manifest.id,
                        platform.platform_name()
                    ),
                );
            }
            let module = Module::new(manifest, status);
            if let Some(on) = overrides.auto_start(module.id()) {
                module.update(|s| s.wanted = on);
            }
            Arc::new(module)
        })
        .collect();
    (modules, overrides)
}

/// Logs where the server listens (clients and modules), the dashboard's
/// address, and a warning when the network is served without an API key.
fn announce(
    logs: &LogService,
    config: &Config,
    local: std::net::SocketAddr,
    module_port: u16,
    module_count: usize,
) {
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        &format!(
            "modhost {} listening on {local}, {} module(s) found; modules connect to 127.0.0.1:{module_port}",
            env!("CARGO_PKG_VERSION"),
            module_count
        ),
    );
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        &format!(
            "dashboard: http://{host}:{port}/  explorer: http://{host}:{port}/explorer.html",
            port = local.port()
        ),
    );
    if config.api_key.is_none() && !local.ip().is_loopback() {
        logs.add(
            LogLevel::Warning,
            "Server",
            "",
            "serving the network without an API key: anyone who can reach this port can run \
             commands (see docs/security.md); modules can only be started and stopped from this machine",
        );
    }
}

/// The skills host over `config.skills_dirs`, its CSI answered by the
/// modules, its document index kept in `{data_dir}/documents`.
///
/// # Errors
/// When the document index cannot be read.
fn start_skills(
    config: &Config,
    registry: &Arc<Registry>,
    commands: &Arc<Commands>,
    jobs: &Arc<Jobs>,
) -> anyhow::Result<Arc<modhost_skills::Skills>> {
    let index = modhost_skills::index::DocumentIndex::open(&config.data_dir.join("documents"))
        .context("opening the document index")?;
    let backend = skills::ModuleBackend {
        registry: Arc::clone(registry),
        commands: Arc::clone(commands),
        jobs: Arc::clone(jobs),
    };
    let skills = modhost_skills::Skills::new(
        modhost_skills::SkillsConfig {
            folders: config.skills_dirs.clone(),
            cache_dir: Some(
                config
                    .skill_cache_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("skill-cache")),
            ),
            limits: config.skill_limits,
        },
        Arc::new(backend),
        Arc::new(index),
    );
    Ok(Arc::new(skills))
}

/// Raises this process's soft limit of open files to its hard limit, so
/// that many client connections do not exhaust it (the common default soft
/// limit is 1,024).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(before, after = limit.rlim_max, "raised the open-file limit");
            }
        }
    }
}
