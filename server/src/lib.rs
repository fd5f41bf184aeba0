//! modhost: a host for AI modules, wire-compatible with CodeProject.AI Server 2.9.
//!
//! It reads each module's `modulesettings.json`, launches the module as a
//! child process, and serves the module's routes over HTTP. Client requests
//! become commands on per-module queues; modules long-poll those queues and
//! post replies back (reference/codeproject-protocol.md).
//!
//! Layout:
//! - [`config`]: the one configuration struct (file < env < CLI);
//! - `queue`: bounded command queues and the requests waiting on them;
//! - `registry`: modules, their live state and the route table;
//! - `supervisor`: module processes: launch, restart with backoff, stop;
//! - `api`: the `/v1` endpoints; `payload`: request values and validation;
//! - `conn`: whether a long poll's client is still connected;
//! - `logs`, `system`, `explorer_ui`, `static_files`: log buffer, machine
//!   figures, explorer UI cutting, the embedded web UI;
//! - `error`: the one mapping from errors to HTTP answers.
//!
//! [`run`] serves until a shutdown token is cancelled; tests call it on
//! `127.0.0.1:0`.

mod api;
pub mod config;
mod conn;
mod error;
mod explorer_ui;
mod logs;
mod payload;
mod queue;
mod registry;
mod static_files;
mod supervisor;
mod system;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config};

use error::ApiError;
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
    pub(crate) registry: Arc<Registry>,
    pub(crate) logs: Arc<LogService>,
    pub(crate) supervisor: Supervisor,
    pub(crate) system: Arc<SystemMonitor>,
    pub(crate) started: Instant,
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
/// `shutdown` is cancelled; then stops every module process and returns.
///
/// # Errors
/// When the listener cannot be served.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let port = listener
        .local_addr()
        .context("reading the listener's address")?
        .port();
    let logs = Arc::new(LogService::new(Some(config.log_dir.clone())));
    let platform = modulesettings::Platform {
        development: config.development,
        ..modulesettings::Platform::current()
    };

    let discovery = modulesettings::discover(&config.modules_dirs, &platform);
    for error in &discovery.errors {
        logs.add(
            LogLevel::Error,
            "Server",
            "",
            &format!("module skipped: {error}"),
        );
    }
    let modules: Vec<Arc<Module>> = discovery
        .modules
        .into_iter()
        .map(|manifest| {
            let status = if manifest.settings.is_platform_supported(&platform) {
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
            Arc::new(Module::new(manifest, status))
        })
        .collect();
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        &format!(
            "modhost {} listening on {}, {} module(s) found",
            env!("CARGO_PKG_VERSION"),
            listener.local_addr()?,
            modules.len()
        ),
    );
    let local = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        &format!("dashboard: http://{host}:{port}/  explorer: http://{host}:{port}/explorer.html"),
    );

    let queues = Queues::new(config.queue_length);
    let modules_stop = CancellationToken::new();
    let launch = Arc::new(LaunchContext {
        port,
        macros: modulesettings::Macros::new(&config.root_path, platform.clone()),
        root_path: config.root_path.clone(),
        no_install: config.no_install,
    });
    let (supervisor, module_tasks) = Supervisor::start(
        &modules,
        launch,
        Arc::clone(&queues),
        Arc::clone(&logs),
        modules_stop.clone(),
    );
    let state = web::Data::new(AppState {
        queues,
        registry: Arc::new(Registry::new(modules)),
        logs: Arc::clone(&logs),
        supervisor,
        system: SystemMonitor::start(shutdown.clone()),
        started: Instant::now(),
        config: config.clone(),
    });

    let app_state = state.clone();
    let max_body = config.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(
                web::FormConfig::default()
                    .limit(max_body)
                    .error_handler(|err, _| {
                        ApiError::BadRequest(format!("malformed form body: {err}")).into()
                    }),
            )
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("malformed query string: {err}")).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::BadRequest(format!("malformed path: {err}")).into()
            }))
            .app_data(web::PayloadConfig::default().limit(max_body))
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Access-Control-Allow-Origin", "*")),
            )
            .configure(api::configure)
            .configure(static_files::configure)
    })
    .on_connect(conn::on_connect)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)
    .context("serving the listener")?
    .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);

    shutdown.cancelled().await;
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        "shutting down: stopping modules",
    );
    // Modules are stopped while HTTP still serves: their quit command travels
    // over the queue.
    modules_stop.cancel();
    module_tasks.join().await;
    handle.stop(false).await;
    let _ = serving.await;
    logs.add(LogLevel::Information, "Server", "", "stopped");
    Ok(())
}
