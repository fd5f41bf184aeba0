//! The Rust SDK's example module (`sdk/examples/echo.rs`) under the real
//! `modhost` binary passes the same compatibility scenarios as the module on
//! the official Python SDK (`modhost_tests::compat`).

use std::time::Duration;

use modhost_tests::compat::{self, TestModule};
use modhost_tests::{ModuleDir, Server};
use serde_json::json;

/// `sdk/examples/echo.rs` with `sdk/examples/echo/modulesettings.json`.
const ECHO: TestModule = TestModule {
    id: "Echo",
    echo_route: "echo/echo",
    long_route: "echo/sleep",
    long_short: &[("ms", "600")],
    long_endless: &[("ms", "600000")],
    progress_field: "elapsedMs",
    cancelled_marker: ("cancelled", || json!(true)),
    crash_route: "echo/crash",
};

async fn server() -> Server {
    let root = Server::root().unwrap();
    ModuleDir::echo(&root.path().join("modules")).unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    server
}

#[tokio::test]
async fn plain_command_round_trip_returns_the_reply_with_the_envelope() {
    compat::plain_round_trip(&server().await, &ECHO).await;
}

#[tokio::test]
async fn long_process_is_polled_with_get_command_status_until_completed() {
    compat::long_process_completes(&server().await, &ECHO).await;
}

#[tokio::test]
async fn cancel_command_stops_a_long_process() {
    compat::cancel_stops_a_long_process(&server().await, &ECHO).await;
}

#[tokio::test]
async fn status_updates_every_two_seconds_show_in_module_list_status() {
    compat::status_updates_are_visible(&server().await, &ECHO).await;
}

#[tokio::test]
async fn module_exiting_mid_command_fails_the_client_at_once_and_is_restarted() {
    compat::crash_fails_the_client_at_once_and_restarts(&server().await, &ECHO).await;
}

#[tokio::test]
async fn ctrl_c_stops_the_module_and_leaves_no_orphans() {
    compat::shutdown_leaves_no_orphans(server().await, &ECHO, libc::SIGINT).await;
}
