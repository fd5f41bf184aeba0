//! modhost-sdk: write modules for modhost (and CodeProject.AI Server 2.9)
//! in Rust.
//!
//! A module is a child process the server launches. It long-polls the
//! server for commands, answers each with a JSON reply, posts a status
//! update every 2 s, and logs through its stdout. This crate implements
//! that side of the protocol, mirroring the lifecycle of the official
//! Python SDK (wire format of CodeProject.AI Server 2.9, docs/protocol.md
//! §1 and §2.3), and on modhost it speaks the extensions of §4: the launch
//! token, and long-process progress pushed as it happens. A module implements
//! [`ModuleRunner`] and calls [`run`] from `main`.
//!
//! # Layout
//!
//! - `lib.rs`: the [`ModuleRunner`] trait and [`Outcome`]. The wire types
//!   themselves are in the `modhost-protocol` crate, shared with the server.
//! - `runner/`: [`run`] / [`run_with`] (`mod.rs`); dispatch of the built-in
//!   commands and the long-process threads (`engine.rs`); poll workers,
//!   status loop, progress pushes and shutdown (`serve.rs`).
//! - `request.rs`: [`RequestData`], the parsed queue item, and its typed
//!   getters.
//! - `command.rs`: [`CommandHandle`], what a long process publishes.
//! - `progress.rs`: the module's pending progress pushes, all commands'
//!   together in one push; `progress_stream.rs`: the socket they go out on
//!   when the server launched the module (else HTTP, `client.rs`).
//! - `registry.rs`: the long commands behind `get_command_status` /
//!   `cancel_command`: slots, queue ([`LongCapacity`]) and recent results.
//! - `reply.rs`: reply envelopes, inference counts, `statusData`.
//! - `client.rs`: the HTTP calls to the server.
//! - `context.rs`: [`ModuleContext`], read from the `CPAI_*` environment.
//! - `logging.rs`: [`init_logging`], stdout with the level prefixes the
//!   server parses.
//! - `error.rs`: [`ModuleError`].
//! - `examples/echo.rs`: a complete module, with its `modulesettings.json`.
//!
//! # Example
//!
//! ```no_run
//! use modhost_sdk::{ModuleError, ModuleRunner, Outcome, RequestData};
//! use serde_json::json;
//!
//! struct Shout;
//!
//! impl ModuleRunner for Shout {
//!     fn process(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
//!         match request.command() {
//!             "shout" => {
//!                 let text = request.string("text")?; // "missing value 'text'"
//!                 Ok(Outcome::done(json!({ "message": text.to_uppercase() })))
//!             }
//!             other => Err(format!("unknown command '{other}'").into()),
//!         }
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     modhost_sdk::run(Shout)
//! }
//! ```
//!
//! A command that takes long returns [`Outcome::Long`]: the SDK replies
//! `{"commandStatus":"running","commandId":<request id>}` at once and runs
//! the closure on its own thread; clients follow it with
//! `get_command_status` and may stop it with `cancel_command`.
//!
//! ```
//! use modhost_sdk::{CommandHandle, Outcome};
//! use serde_json::json;
//!
//! let outcome = Outcome::Long(Box::new(|cmd: &CommandHandle| {
//!     let mut text = String::new();
//!     for word in ["The", " solar", " system"] {
//!         if cmd.is_cancelled() {
//!             break;
//!         }
//!         text.push_str(word);
//!         cmd.update("reply", json!(text)); // seen by get_command_status
//!     }
//!     let reason = if cmd.is_cancelled() { "cancelled" } else { "completed" };
//!     Ok(modhost_sdk::json_object(json!({ "reply": text, "stop_reason": reason })))
//! }));
//! # drop(outcome);
//! ```

mod client;
mod command;
mod context;
mod error;
mod logging;
mod progress;
#[cfg(unix)]
mod progress_stream;
mod registry;
mod reply;
mod request;
mod runner;

pub use command::CommandHandle;
pub use context::{ModuleContext, DEFAULT_PORT};
pub use error::ModuleError;
pub use logging::{init_logging, init_logging_with, log, LogSetup};
pub use registry::LongCapacity;
pub use request::{FileData, RequestData, ValueError};
pub use runner::{
    run, run_with, RunOptions, CANCEL_WAIT, DRAIN_GRACE, LONG_GRACE, STATUS_INTERVAL,
};

use serde_json::{Map, Value};

/// A long process: runs on its own thread with the command's handle and
/// returns the final result (merged into the `completed` or `cancelled`
/// status reply) or an error (the `failed` status).
///
/// It may block (e.g. FFI generation loops); it should check
/// [`CommandHandle::is_cancelled`] regularly and return its partial result
/// once set. A panic is reported as `failed`.
pub type LongProcess =
    Box<dyn FnOnce(&CommandHandle) -> Result<Map<String, Value>, ModuleError> + Send>;

/// What [`ModuleRunner::process`] made of a command.
pub enum Outcome {
    /// The reply, sent at once. The SDK adds the envelope fields
    /// (`moduleId`, `code`, `requestId`, …) and `"success": true` unless the
    /// module set `success` itself.
    Done(Map<String, Value>),
    /// Start a long-running command (one at a time per module unless
    /// [`ModuleRunner::long_capacity`] says more); see [`LongProcess`].
    Long(LongProcess),
}

impl Outcome {
    /// [`Outcome::Done`] from a `json!` object; a non-object value becomes
    /// `{"result": value}`.
    pub fn done(value: Value) -> Self {
        Self::Done(json_object(value))
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done(map) => f.debug_tuple("Done").field(map).finish(),
            Self::Long(_) => f.write_str("Long(..)"),
        }
    }
}

/// The object inside a `json!` value; a non-object value becomes
/// `{"result": value}`.
pub fn json_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => {
            let mut map = Map::new();
            map.insert("result".to_owned(), other);
            map
        }
    }
}

/// A module: the server-facing behaviour is the SDK's, the work is yours.
///
/// `process` and the hooks run on blocking threads, never on the async
/// reactor, so they may block; they take `&self` and may run concurrently
/// (up to `CPAI_MODULE_PARALLELISM` commands at once, plus the status and
/// long-process threads), hence `Send + Sync`. Panics in any of them are
/// caught and reported, not fatal.
pub trait ModuleRunner: Send + Sync + 'static {
    /// Called once, before polling starts (and before `selftest` under
    /// `--selftest`), e.g. to load a model.
    ///
    /// # Errors
    /// Any error stops the module with exit code 1.
    fn initialise(&mut self, ctx: &ModuleContext) -> Result<(), ModuleError> {
        let _ = ctx;
        Ok(())
    }

    /// Handles a queued command: anything except the built-ins `quit`,
    /// `get_command_status`, `cancel_command` and `selftest`. The command
    /// name is [`RequestData::command`] (lowercased).
    ///
    /// # Errors
    /// The error's message is sent to the client as
    /// `{"success":false,"error":<message>}` (HTTP code field 500).
    fn process(&self, request: &RequestData) -> Result<Outcome, ModuleError>;

    /// Extra fields for `get_command_status` while the long command
    /// `command_id` runs, on top of what its [`CommandHandle`] published.
    fn command_status(&self, command_id: &str) -> Map<String, Value> {
        let _ = command_id;
        Map::new()
    }

    /// How many long commands the module runs at once and how many may wait
    /// for a slot; asked once, after `initialise`. The default is the Python
    /// SDK's one at a time, none waiting. The SDK checks it before a long
    /// process runs: a command beyond the slots waits (`commandStatus:
    /// queued`), and one beyond the queue is refused with `errorCode:
    /// "queue_full"` (docs/protocol.md §4.8).
    fn long_capacity(&self) -> LongCapacity {
        LongCapacity::default()
    }

    /// Called after the SDK set `command_id`'s cancel flag (on
    /// `cancel_command`, and at shutdown), e.g. to interrupt a blocking
    /// call. The SDK never kills the long process's thread.
    fn cancel(&self, command_id: &str) {
        let _ = command_id;
    }

    /// Checks that the module works (`--selftest`, or the `selftest`
    /// command).
    ///
    /// # Errors
    /// A failed check; the message is logged or sent to the client.
    fn selftest(&self) -> Result<(), ModuleError> {
        Ok(())
    }

    /// Called once when the module stops (after `quit`, SIGTERM or SIGINT,
    /// and after the self-test); not called if `initialise` failed.
    fn cleanup(&self) {}

    /// Extra fields for the status update every 2 s (`statusData`); they
    /// override the SDK's, e.g. `{"inferenceLibrary":"CUDA"}` (keep
    /// `canUseGPU` a string if you set it).
    fn status(&self) -> Map<String, Value> {
        Map::new()
    }

    /// The device reported as `inferenceDevice` in replies and status,
    /// e.g. `"CPU"` or `"GPU"`; anything but `CPU` makes `canUseGPU`
    /// `"true"` when the server enabled the GPU.
    fn inference_device(&self) -> String {
        "CPU".into()
    }
}
