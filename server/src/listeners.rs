//! The server's two HTTP servers and their listeners: the clients' (the
//! address the server was given, and Ollama's port when configured), with
//! access checks, every route and the web UI; and the modules' (loopback
//! only, one worker), with the module-side routes alone, so that polls and
//! replies are served however many clients crowd the first.

use std::net::{IpAddr, TcpListener};

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::error::ApiError;
use crate::logs::{LogLevel, LogService};
use crate::{access, api, conn, static_files, AppState, Config};

/// Where launched modules reach the server: `127.0.0.1:port` and, where the
/// machine has IPv6, `[::1]:port`. Both SDKs call `localhost`, which
/// resolves to `::1` first on many systems; serving it too spares each
/// connection a refused first try.
pub(crate) struct ModuleListeners {
    v4: TcpListener,
    v6: Option<TcpListener>,
    /// The port both listen on (the one asked for, or the one given for 0).
    pub(crate) port: u16,
}

impl ModuleListeners {
    /// Binds `127.0.0.1:port` (0: any free port), then `[::1]` on the same
    /// port if it can.
    ///
    /// # Errors
    /// The IPv4 listener cannot be bound.
    pub(crate) fn bind(port: u16) -> anyhow::Result<Self> {
        let v4 = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen for modules on 127.0.0.1:{port}"))?;
        let port = v4.local_addr()?.port();
        let v6 = TcpListener::bind(("::1", port)).ok();
        Ok(Self { v4, v6, port })
    }
}

/// The listener on `config.ollama_port` at `ip`, when one is configured,
/// announced in the log.
///
/// # Errors
/// The port cannot be bound.
pub(crate) fn bind_ollama(
    config: &Config,
    ip: IpAddr,
    logs: &LogService,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(port) = config.ollama_port else {
        return Ok(None);
    };
    let listener = TcpListener::bind((ip, port))
        .with_context(|| format!("cannot listen for Ollama clients on {ip}:{port}"))?;
    logs.add(
        LogLevel::Information,
        "Server",
        "",
        &format!(
            "also serving on {} for clients that assume Ollama's port",
            listener.local_addr()?
        ),
    );
    Ok(Some(listener))
}

/// The clients' server on `listener` (and `ollama`): one worker per core,
/// at most `max_connections` connections served at once (the rest wait in
/// the listen backlog), every route behind the access guard.
///
/// # Errors
/// A listener cannot be served.
pub(crate) fn client_server(
    state: &web::Data<AppState>,
    listener: TcpListener,
    ollama: Option<TcpListener>,
    max_connections: usize,
) -> anyhow::Result<Server> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(configure_extractors)
            .wrap(actix_web::middleware::from_fn(access::guard))
            .configure(api::configure)
            .configure(static_files::configure)
    })
    .workers(workers)
    .max_connections(max_connections.div_ceil(workers))
    .on_connect(conn::on_connect)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)
    .context("serving the listener")?;
    let server = match ollama {
        Some(ollama) => server
            .listen(ollama)
            .context("serving the Ollama listener")?,
        None => server,
    };
    Ok(server.run())
}

/// The modules' server on `listeners`: one worker, the module-side routes.
///
/// # Errors
/// A listener cannot be served.
pub(crate) fn module_server(
    state: &web::Data<AppState>,
    listeners: ModuleListeners,
) -> anyhow::Result<Server> {
    let state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(configure_extractors)
            .configure(api::configure_module_side)
    })
    .workers(1)
    .on_connect(conn::on_connect)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listeners.v4)
    .context("serving the module listener")?;
    let server = match listeners.v6 {
        Some(v6) => server
            .listen(v6)
            .context("serving the module listener on ::1")?,
        None => server,
    };
    Ok(server.run())
}

/// The extractor settings both listeners share: body limits and JSON
/// errors for malformed forms, queries and paths.
fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::FormConfig::default()
            .limit(64 * 1024)
            .error_handler(|err, _| {
                ApiError::BadRequest(format!("malformed form body: {err}")).into()
            }),
    )
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("malformed query string: {err}")).into()
    }))
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::BadRequest(format!("malformed path: {err}")).into()),
    );
}
