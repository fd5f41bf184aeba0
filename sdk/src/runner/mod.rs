//! The module's main loop: [`run`] / [`run_with`], command dispatch and the
//! long-process threads.
//!
//! Lifecycle of the CodeProject.AI Python SDK (docs/protocol.md §1.7):
//!
//! 1. `initialise` (on the calling thread, before anything is polled);
//! 2. poll workers (`parallelism`, or the long-command slots when there are
//!    more, see `Engine::poll_workers`) plus a 2-second status loop on a small
//!    tokio runtime; every command is handled on the blocking pool, a long
//!    process on its own thread;
//! 3. on `quit`, SIGTERM or SIGINT: stop polling, let in-flight commands
//!    post their replies (up to [`DRAIN_GRACE`]), cancel a running long
//!    command and wait for it (up to [`LONG_GRACE`]), then `cleanup`.
//!
//! The parts: `engine` dispatches one command and runs the long ones;
//! `serve` is the async side (poll workers, status loop, progress pushes,
//! shutdown).

mod engine;
mod serve;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use crate::client::ServerClient;
use crate::context::ModuleContext;
use crate::error::ModuleError;
use crate::ModuleRunner;
use engine::Engine;
use serve::serve;

/// Interval between status updates (the Python SDK's 2 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How long shutdown waits for in-flight commands to post their replies.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long `cancel_command` waits for the cancelled command to return
/// before it answers.
pub const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long shutdown waits for a cancelled long command to return.
pub const LONG_GRACE: Duration = Duration::from_secs(5);

/// How [`run_with`] runs the module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Run `initialise`, `selftest` and `cleanup`, then exit 0 if the
    /// self-test passed, else 1, without contacting the server (what
    /// `--selftest` on the command line does; installers run it).
    pub selftest: bool,
}

/// Runs a module as launched by the server: reads `--selftest` from the
/// command line and the `CPAI_*` environment ([`ModuleContext::from_env`]),
/// installs logging ([`init_logging`](crate::init_logging)) and calls
/// [`run_with`].
///
/// Returns the process exit code: success after `quit`, SIGTERM or SIGINT
/// (or a passed self-test); failure if the environment is malformed,
/// `initialise` fails, or the self-test fails.
pub fn run<R: ModuleRunner>(runner: R) -> ExitCode {
    crate::init_logging();
    let selftest = std::env::args().skip(1).any(|a| a == "--selftest");
    let ctx = match ModuleContext::from_env() {
        Ok(ctx) => ctx,
        Err(e) => {
            error!("cannot start the module: {e}");
            return ExitCode::FAILURE;
        }
    };
    run_with(runner, ctx, RunOptions { selftest })
}

/// Runs a module with an explicit context, until `quit`, SIGTERM or SIGINT.
///
/// Blocks the calling thread; builds its own tokio runtime, so it must not
/// be called from inside one. Exit codes as for [`run`]. Does not install a
/// logging subscriber.
pub fn run_with<R: ModuleRunner>(
    mut runner: R,
    ctx: ModuleContext,
    options: RunOptions,
) -> ExitCode {
    if options.selftest {
        return run_selftest(runner, &ctx);
    }
    let client = match ServerClient::new(&ctx) {
        Ok(client) => client,
        Err(e) => {
            error!(module = %ctx.module_id, "cannot start the module: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = guarded(|| runner.initialise(&ctx)).and_then(|r| r) {
        error!(module = %ctx.module_id, "initialise failed: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("modhost-sdk")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(module = %ctx.module_id, "cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = Arc::new(Engine::with_client(runner, ctx, &client));
    info!(
        module = %engine.ctx.module_id,
        // The queue name carries the launch token: log the queue alone.
        queue = %modhost_protocol::split_queue_token(&engine.ctx.queue_name).0,
        server = %engine.ctx.server_url,
        parallelism = engine.ctx.parallelism,
        poll_workers = engine.poll_workers(),
        "module started"
    );
    runtime.block_on(serve(Arc::clone(&engine), client));
    // A `process` call stuck in the blocking pool must not keep the module
    // alive: give it a moment, then leave it behind.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if guarded(|| engine.runner.cleanup()).is_err() {
        error!(module = %engine.ctx.module_id, "cleanup panicked");
    }
    info!(module = %engine.ctx.module_id, "module stopped");
    ExitCode::SUCCESS
}

fn run_selftest<R: ModuleRunner>(mut runner: R, ctx: &ModuleContext) -> ExitCode {
    if let Err(e) = guarded(|| runner.initialise(ctx)).and_then(|r| r) {
        error!(module = %ctx.module_id, "self-test failed: initialise: {e}");
        return ExitCode::FAILURE;
    }
    let result = guarded(|| runner.selftest()).and_then(|r| r);
    if guarded(|| runner.cleanup()).is_err() {
        error!(module = %ctx.module_id, "cleanup panicked");
    }
    match result {
        Ok(()) => {
            info!(module = %ctx.module_id, "self-test passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(module = %ctx.module_id, "self-test failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f`, turning a panic into an error (the panic hook has already
/// printed it to stderr, which the server logs as an error).
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, ModuleError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        ModuleError(format!("panicked: {text}"))
    })
}

#[cfg(test)]
mod tests;
