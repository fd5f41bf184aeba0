//! `modhost`: parse the configuration, set up logging, serve until Ctrl-C or SIGTERM.

use std::net::TcpListener;

use anyhow::Context;
use clap::Parser;
use modhost::{Cli, Config};
use tokio_util::sync::CancellationToken;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MODHOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn")),
        )
        .init();
    let config = Config::from_cli(Cli::parse())?;
    let address = (config.bind, config.port);
    let listener = TcpListener::bind(address)
        .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    modhost::run(listener, config, shutdown).await
}

/// Cancels `shutdown` on the first Ctrl-C or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}
