//! A module written with the official CodeProject.AI Python SDK (PyPI
//! `codeproject-ai-sdk` 0.0.21, installed into a virtual environment by the
//! harness) runs unmodified under the real `modhost` binary: the shared
//! compatibility scenarios of `modhost_tests::compat`.

use std::time::Duration;

use modhost_tests::compat::{self, TestModule};
use modhost_tests::{ModuleDir, Server};
use serde_json::{json, Value};

/// `tests/modules/python_demo`.
const PYTHON_DEMO: TestModule = TestModule {
    id: "PythonDemo",
    echo_route: "demo/echo",
    long_route: "demo/count",
    long_short: &[("n", "15"), ("step_ms", "40")],
    long_endless: &[("n", "100000"), ("step_ms", "20")],
    progress_field: "count",
    cancelled_marker: ("stop_reason", || json!("cancelled")),
    crash_route: "demo/crash",
};

async fn server() -> Server {
    let root = Server::root().unwrap();
    ModuleDir::python_demo(&root.path().join("modules")).expect("the Python SDK module");
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("PythonDemo", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    server
}

#[tokio::test]
async fn plain_command_round_trip_returns_the_reply_with_the_envelope() {
    compat::plain_round_trip(&server().await, &PYTHON_DEMO).await;
}

#[tokio::test]
async fn long_process_is_polled_with_get_command_status_until_completed() {
    compat::long_process_completes(&server().await, &PYTHON_DEMO).await;
}

#[tokio::test]
async fn cancel_command_stops_a_long_process() {
    compat::cancel_stops_a_long_process(&server().await, &PYTHON_DEMO).await;
}

#[tokio::test]
async fn status_updates_every_two_seconds_show_in_module_list_status() {
    let server = server().await;
    compat::status_updates_are_visible(&server, &PYTHON_DEMO).await;
    // The module's own status fields (module_status()) come along.
    let entry: Value = server.module_status("PythonDemo").await.unwrap();
    assert!(entry["statusData"]["demoCounter"].is_number(), "{entry}");
}

#[tokio::test]
async fn module_exiting_mid_command_fails_the_client_at_once_and_is_restarted() {
    compat::crash_fails_the_client_at_once_and_restarts(&server().await, &PYTHON_DEMO).await;
}

#[tokio::test]
async fn sigterm_stops_the_module_and_leaves_no_orphans() {
    compat::shutdown_leaves_no_orphans(server().await, &PYTHON_DEMO, libc::SIGTERM).await;
}
