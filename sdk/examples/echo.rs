//! A minimal modhost module, and the test double for the server's
//! integration tests.
//!
//! Commands (see `examples/echo/modulesettings.json` for the routes):
//!
//! - `echo` (`POST /v1/echo/echo`, value `text`): replies
//!   `{"message": <text>, "values": {<key>: <first value>, …}}`.
//! - `sleep` (`POST /v1/echo/sleep`, value `ms`, default 1000): a long
//!   process. Replies at once with `commandStatus: "running"`; while it runs,
//!   `get_command_status` shows `{"progress": <0–100>, "elapsedMs": <n>}`;
//!   it ends with `{"message": "slept", "sleptMs": <n>, "cancelled": <bool>}`
//!   and stops early on `cancel_command`.
//! - `count` (`POST /v1/echo/count`, values `n`, default 10, and `step_ms`,
//!   default 20): a long process that writes "1 2 3 … n" into its `reply`,
//!   a number every `step_ms` (on modhost each one is pushed, and streamed to
//!   clients); ends with `{"reply": <text>, "count": <n>, "cancelled": <bool>}`.
//! - `crash` (`POST /v1/echo/crash`): exits the process with code 3 at once,
//!   without replying (for crash handling tests).
//! - `slow` (`POST /v1/echo/slow`, value `ms`, default 1000): blocks for
//!   `ms` then replies `{"message": "done", "sleptMs": <ms>}` (for timeout
//!   and parallelism tests).
//!
//! Run by the server (or by hand with `CPAI_PORT`, `CPAI_MODULE_ID=Echo`):
//! `cargo build -p modhost-sdk --example echo`, then copy
//! `target/debug/examples/echo` next to `examples/echo/modulesettings.json`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use modhost_sdk::{json_object, CommandHandle, ModuleError, ModuleRunner, Outcome, RequestData};
use serde_json::{json, Map, Value};

/// How often the `sleep` command checks for cancellation and publishes
/// progress.
const SLEEP_STEP: Duration = Duration::from_millis(20);

/// The largest `ms` accepted, so a typo cannot park a thread for days.
const MAX_MS: i64 = 10 * 60 * 1000;

struct Echo;

impl ModuleRunner for Echo {
    fn process(&self, request: &RequestData) -> Result<Outcome, ModuleError> {
        match request.command() {
            "echo" => {
                let values: Map<String, Value> = request
                    .all_values()
                    .iter()
                    .filter_map(|(key, list)| Some((key.clone(), json!(list.first()?))))
                    .collect();
                Ok(Outcome::done(json!({
                    "message": request.string_or("text", ""),
                    "values": values,
                })))
            }
            "sleep" => {
                let ms = duration_ms(request)?;
                Ok(Outcome::Long(Box::new(move |cmd: &CommandHandle| {
                    sleep_in_steps(cmd, ms)
                })))
            }
            "count" => {
                let n = request.int_or("n", 10)?.clamp(0, 1_000_000);
                let step = Duration::from_millis(duration_ms_named(request, "step_ms", 20)?);
                Ok(Outcome::Long(Box::new(move |cmd: &CommandHandle| {
                    count_in_steps(cmd, n, step)
                })))
            }
            "crash" => {
                tracing::error!("crash requested: exiting with code 3");
                std::process::exit(3);
            }
            "slow" => {
                let ms = duration_ms(request)?;
                std::thread::sleep(Duration::from_millis(ms));
                Ok(Outcome::done(json!({"message": "done", "sleptMs": ms})))
            }
            other => Err(format!("unknown command '{other}'").into()),
        }
    }
}

/// The `ms` value (default 1000), checked to be in 0..=MAX_MS.
fn duration_ms(request: &RequestData) -> Result<u64, ModuleError> {
    duration_ms_named(request, "ms", 1000)
}

/// The milliseconds value `key` (default `default`), checked to be in
/// 0..=MAX_MS.
fn duration_ms_named(request: &RequestData, key: &str, default: i64) -> Result<u64, ModuleError> {
    let ms = request.int_or(key, default)?;
    u64::try_from(ms)
        .ok()
        .filter(|_| ms <= MAX_MS)
        .ok_or_else(|| ModuleError(format!("value '{key}' is {ms}: expected 0 to {MAX_MS}")))
}

/// The `count` long process: appends the numbers 1 to `n` to its reply, one
/// every `step`, stopping early when cancelled.
fn count_in_steps(
    cmd: &CommandHandle,
    n: i64,
    step: Duration,
) -> Result<Map<String, Value>, ModuleError> {
    let mut count = 0;
    while count < n && !cmd.is_cancelled() {
        std::thread::sleep(step);
        count += 1;
        cmd.append_reply(&if count == 1 {
            "1".to_owned()
        } else {
            format!(" {count}")
        });
        cmd.update("count", json!(count));
    }
    let reply = cmd.published().remove("reply").unwrap_or_else(|| json!(""));
    Ok(json_object(json!({
        "reply": reply,
        "count": count,
        "cancelled": cmd.is_cancelled(),
    })))
}

/// The `sleep` long process: sleeps `ms` in small steps, publishing progress
/// and stopping early when cancelled.
fn sleep_in_steps(cmd: &CommandHandle, ms: u64) -> Result<Map<String, Value>, ModuleError> {
    let total = Duration::from_millis(ms);
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let progress = (elapsed_ms.min(ms) * 100).checked_div(ms).unwrap_or(100);
        cmd.publish(json_object(
            json!({"progress": progress, "elapsedMs": elapsed_ms}),
        ));
        if cmd.is_cancelled() || elapsed >= total {
            return Ok(json_object(json!({
                "message": "slept",
                "sleptMs": elapsed_ms,
                "cancelled": cmd.is_cancelled(),
            })));
        }
        std::thread::sleep(SLEEP_STEP.min(total - elapsed));
    }
}

fn main() -> ExitCode {
    modhost_sdk::run(Echo)
}
