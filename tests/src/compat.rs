//! The compatibility scenarios every module SDK must pass under the real
//! server: the official CodeProject.AI Python SDK (`tests/python_sdk.rs`) and
//! modhost's Rust SDK (`tests/rust_sdk.rs`) run the same ones, each on a
//! module with an echo command, a cancellable long process and a crash
//! command, described by a [`TestModule`].

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{process_alive, Server};

/// A module under test: its id and how to drive its commands.
pub struct TestModule {
    /// Module id, e.g. `PythonDemo`.
    pub id: &'static str,
    /// Route that replies `{"message": <text>}` for the value `text`.
    pub echo_route: &'static str,
    /// Route that starts a long process.
    pub long_route: &'static str,
    /// Values for a long process that ends by itself within a second or two.
    pub long_short: &'static [(&'static str, &'static str)],
    /// Values for a long process that runs until cancelled.
    pub long_endless: &'static [(&'static str, &'static str)],
    /// Numeric field `get_command_status` shows growing while it runs.
    pub progress_field: &'static str,
    /// Field and value of the final result that says it was cancelled.
    pub cancelled_marker: (&'static str, fn() -> Value),
    /// Route whose command makes the module print an error line starting
    /// "crash requested" and exit with status 3.
    pub crash_route: &'static str,
}

async fn command_status(server: &Server, m: &TestModule, command_id: &str) -> Value {
    let (status, body) = server
        .post_form(
            &format!("/v1/{}/get_command_status", m.id),
            &[("commandId", command_id)],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `get_command_status` until the command is no longer running;
/// returns the progress values seen while it ran, and the final status.
async fn follow(server: &Server, m: &TestModule, id: &str, limit: Duration) -> (Vec<u64>, Value) {
    let deadline = Instant::now() + limit;
    let mut progress = Vec::new();
    loop {
        let status = command_status(server, m, id).await;
        if status["commandStatus"] != "running" {
            return (progress, status);
        }
        progress.push(status[m.progress_field].as_u64().unwrap_or(0));
        assert!(
            Instant::now() < deadline,
            "still running after {limit:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_long(server: &Server, m: &TestModule, values: &[(&str, &str)]) -> String {
    let (status, started) = server
        .post_form(&format!("/v1/{}", m.long_route), values)
        .await
        .unwrap();
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["success"], true, "{started}");
    assert_eq!(started["commandStatus"], "running", "{started}");
    started["commandId"]
        .as_str()
        .expect("a commandId")
        .to_owned()
}

/// A plain command: the reply carries the module's fields and the server's
/// envelope, from a form and from a plain JSON object.
pub async fn plain_round_trip(server: &Server, m: &TestModule) {
    let route = format!("/v1/{}", m.echo_route);
    let (status, body) = server
        .post_form(&route, &[("text", "héllo wörld")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["message"], "héllo wörld");
    assert_eq!(body["moduleId"], m.id);
    assert!(body["analysisRoundTripMs"].is_u64(), "{body}");
    assert_eq!(body["processedBy"], "localhost");
    assert!(
        body["timestampUTC"].as_str().unwrap().ends_with("GMT"),
        "{body}"
    );

    let body: Value = server
        .http
        .post(server.url(&route))
        .json(&serde_json::json!({"text": "from json"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["message"], "from json", "{body}");
}

/// A long process followed with `get_command_status` until `completed`,
/// its progress visible and never going backwards.
pub async fn long_process_completes(server: &Server, m: &TestModule) {
    let id = start_long(server, m, m.long_short).await;
    let (progress, finished) = follow(server, m, &id, Duration::from_secs(30)).await;
    assert_eq!(finished["commandStatus"], "completed", "{finished}");
    assert_eq!(finished["success"], true, "{finished}");
    assert_eq!(finished["commandId"], id.as_str());
    let (field, value) = m.cancelled_marker;
    assert_ne!(finished[field], value(), "not cancelled: {finished}");
    assert!(!progress.is_empty(), "never saw it running");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {progress:?}"
    );
}

/// `cancel_command` stops a long process that would run forever; it then
/// completes with its partial result, marked cancelled.
pub async fn cancel_stops_a_long_process(server: &Server, m: &TestModule) {
    let id = start_long(server, m, m.long_endless).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while command_status(server, m, &id).await[m.progress_field]
        .as_u64()
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "never made progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, cancelled) = server
        .post_form(
            &format!("/v1/{}/cancel_command", m.id),
            &[("commandId", &id)],
        )
        .await
        .unwrap();
    assert_eq!(cancelled["success"], true, "{cancelled}");
    assert_eq!(cancelled["commandStatus"], "cancelled", "{cancelled}");
    let (_, last) = follow(server, m, &id, Duration::from_secs(10)).await;
    assert_eq!(last["commandStatus"], "completed", "{last}");
    let (field, value) = m.cancelled_marker;
    assert_eq!(last[field], value(), "{last}");
}

/// The module's 2-second status updates show in `/v1/module/list/status`,
/// and keep coming: a command served later is counted in a later update.
pub async fn status_updates_are_visible(server: &Server, m: &TestModule) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let entry = loop {
        let entry = server.module_status(m.id).await.unwrap();
        if entry["statusData"]["successfulInferences"].is_number() {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "no status update arrived: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(entry["statusData"]["inferenceDevice"], "CPU", "{entry}");
    assert_eq!(
        entry["statusData"]["canUseGPU"], "false",
        "canUseGPU is a string in the SDKs"
    );
    assert!(entry["lastSeen"].is_string(), "{entry}");

    // The updates keep coming: a command served now shows in a later one.
    let before = entry["statusData"]["successfulInferences"]
        .as_u64()
        .unwrap();
    let (_, body) = server
        .post_form(&format!("/v1/{}", m.echo_route), &[("text", "count me")])
        .await
        .unwrap();
    assert_eq!(body["message"], "count me", "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = server.module_status(m.id).await.unwrap();
        let now = entry["statusData"]["successfulInferences"]
            .as_u64()
            .unwrap_or(0);
        if now > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no later status update counted the command: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A module that exits mid-command: the client gets a clear error at once
/// (not at the request timeout) with the last error line the module printed,
/// the module is restarted, and the next request succeeds.
pub async fn crash_fails_the_client_at_once_and_restarts(server: &Server, m: &TestModule) {
    let first_pid = server.module_status(m.id).await.unwrap()["pid"]
        .as_u64()
        .unwrap();
    let sent = Instant::now();
    let (status, body) = server
        .post_form(&format!("/v1/{}", m.crash_route), &[])
        .await
        .unwrap();
    let waited = sent.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["success"], false, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{} exited unexpectedly", m.id)),
        "{error}"
    );
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(
        error.contains("the last error it logged: ") && error.contains("crash requested"),
        "the error names the cause the module printed: {error}"
    );
    // The figure (a few ms here) is printed; the bound is the one the server
    // promises ("a clear error within 1 s"), far from the request timeout (20 s).
    println!("{}: crash reported to the client after {waited:?}", m.id);
    assert!(
        waited < Duration::from_secs(1),
        "the client waited {waited:?}"
    );

    let entry = server
        .wait_for_status(m.id, "Started", Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(
        entry["pid"].as_u64().unwrap(),
        first_pid,
        "a new process runs"
    );
    assert!(entry["launches"].as_u64().unwrap() >= 2);
    let (_, body) = server
        .post_form(&format!("/v1/{}", m.echo_route), &[("text", "again")])
        .await
        .unwrap();
    assert_eq!(body["message"], "again", "{body}");
}

/// `signal` (SIGTERM, or SIGINT as Ctrl-C sends it) stops the server and
/// its module cleanly: exit status 0, and no process outlives it.
pub async fn shutdown_leaves_no_orphans(mut server: Server, m: &TestModule, signal: libc::c_int) {
    let pid = server.module_pid(m.id).await.unwrap();
    assert!(process_alive(pid));
    let exit = server.stop_with(signal).unwrap();
    assert!(exit.success(), "modhost exit: {exit}");
    assert!(
        !process_alive(pid),
        "module process {pid} outlived the server"
    );
}
