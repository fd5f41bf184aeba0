//! End-to-end test harness: starts the real `modhost` binary on a free port
//! with a temporary modules directory, and talks to it over HTTP.
//!
//! Binaries come from the workspace's target directory (`cargo test
//! --workspace` builds them: the packages that own them have integration
//! tests). Layout:
//! - [`Server`]: a running `modhost` process, stopped with SIGTERM on drop;
//! - [`InProcess`]: the server run in this test process through
//!   `modhost::run`, for tests of HTTP behaviour;
//! - [`ModuleDir`]: a module directory assembled for a test;
//! - [`python_venv`]: the virtual environment with the official CodeProject.AI
//!   Python SDK, created on first use;
//! - [`compat`]: the scenarios every module SDK passes under the server;
//! - [`read_sse`] and [`python_sse_client`]: job streams read in Rust and in Python;
//! - [`skills`]: the example WebAssembly skills, built once per source hash.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod api;
pub mod compat;
mod fixtures;
mod server;
pub mod skills;
mod sse;

pub use api::{Api, ModuleSide};
pub use fixtures::{copy_executable, python_venv, write_demo_model, write_env_recorder, ModuleDir};
pub use server::{InProcess, Server};
pub use sse::{joined_deltas, python_sse_client, read_sse, SseEvent};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The profile directory the running test was built into (`target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable sits in target/<profile>/deps")
        .to_owned()
}

/// Path of a workspace binary or example, e.g. `binary("modhost")`,
/// `binary("examples/echo")`.
///
/// # Panics
/// When it has not been built, saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// Asserts that `body` is a failure answer (`success: false`) whose `error`
/// contains `needle`; the panic shows the whole body.
#[track_caller]
pub fn assert_error(body: &Value, needle: &str) {
    assert_eq!(body["success"], false, "not a failure: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(needle),
        "expected an error containing {needle:?}: {body}"
    );
}

/// [`assert_error`] on a raw response, after checking its HTTP `status`.
pub async fn assert_error_response(response: reqwest::Response, status: u16, needle: &str) {
    let code = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(code, status, "{body}");
    assert_error(&body, needle);
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
