//! `modhost`: parse the configuration, set up logging, serve until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::net::TcpListener;

use anyhow::Context;
use clap::Parser;
use modhost::{Cli, Config};
use tokio_util::sync::CancellationToken;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    // Colour only on a terminal: a log written to a file or a pipe carries
    // no escape codes. NO_COLOR (https://no-color.org) turns it off anyway.
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
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
