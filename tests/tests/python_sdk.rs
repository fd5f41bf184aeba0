//! A module written with the official CodeProject.AI Python SDK (PyPI
//! `codeproject-ai-sdk` 0.0.21, installed into a virtual environment by the
//! harness) runs unmodified under the real `modhost` binary.

use std::time::{Duration, Instant};

use modhost_tests::{process_alive, python_venv, workspace_root, ModuleDir, Server};
use serde_json::Value;

/// Starts modhost with the Python demo module (tests/modules/python_demo),
/// its Local runtime pointing at the shared SDK venv, and waits for Started.
async fn server_with_python_module() -> Server {
    let venv = python_venv().expect("creating the Python SDK venv");
    let root = Server::root().unwrap();
    let module = ModuleDir::copy_from(
        &root.path().join("modules"),
        "PythonDemo",
        &workspace_root().join("tests/modules/python_demo"),
    )
    .unwrap();
    // RuntimeLocation Local: <module>/bin/linux/python311/venv/bin/python3.
    let local = module.path.join("bin/linux/python311");
    std::fs::create_dir_all(&local).unwrap();
    std::os::unix::fs::symlink(&venv, local.join("venv")).unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("PythonDemo", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    server
}

async fn command_status(server: &Server, command_id: &str) -> Value {
    let (status, body) = server
        .post_form(
            "/v1/PythonDemo/get_command_status",
            &[("commandId", command_id)],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn plain_command_round_trip_returns_the_reply_with_the_envelope() {
    let server = server_with_python_module().await;
    let (status, body) = server
        .post_form("/v1/demo/echo", &[("text", "héllo wörld")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["message"], "héllo wörld");
    assert_eq!(body["moduleId"], "PythonDemo");
    assert_eq!(body["command"], "echo");
    assert!(body["analysisRoundTripMs"].is_u64(), "{body}");
    assert_eq!(body["processedBy"], "localhost");
    assert!(
        body["timestampUTC"].as_str().unwrap().ends_with("GMT"),
        "{body}"
    );

    // A plain JSON object works as well as a form (modhost extension).
    let body: Value = server
        .http
        .post(server.url("/v1/demo/echo"))
        .json(&serde_json::json!({"text": "from json"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["message"], "from json", "{body}");
}

#[tokio::test]
async fn long_process_is_polled_with_get_command_status_until_completed() {
    let server = server_with_python_module().await;
    let (_, started) = server
        .post_form("/v1/demo/count", &[("n", "15"), ("step_ms", "40")])
        .await
        .unwrap();
    assert_eq!(started["commandStatus"], "running", "{started}");
    let id = started["commandId"].as_str().unwrap().to_owned();

    let mut seen_running_counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let status = command_status(&server, &id).await;
        match status["commandStatus"].as_str() {
            Some("running") => seen_running_counts.push(status["count"].as_u64().unwrap()),
            Some("completed") => break status,
            other => panic!("unexpected commandStatus {other:?}: {status}"),
        }
        assert!(Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished["count"], 15, "{finished}");
    assert_eq!(finished["stop_reason"], "completed");
    assert!(!seen_running_counts.is_empty(), "never saw it running");
    assert!(
        seen_running_counts.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {seen_running_counts:?}"
    );
}

#[tokio::test]
async fn cancel_command_stops_a_long_process() {
    let server = server_with_python_module().await;
    let (_, started) = server
        .post_form("/v1/demo/count", &[("n", "100000"), ("step_ms", "20")])
        .await
        .unwrap();
    let id = started["commandId"].as_str().unwrap().to_owned();
    // Wait until it has really begun counting.
    let deadline = Instant::now() + Duration::from_secs(20);
    while command_status(&server, &id).await["count"]
        .as_u64()
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "never started counting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, cancelled) = server
        .post_form("/v1/PythonDemo/cancel_command", &[("commandId", &id)])
        .await
        .unwrap();
    assert_eq!(cancelled["success"], true, "{cancelled}");
    assert_eq!(cancelled["commandStatus"], "cancelled");

    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let status = command_status(&server, &id).await;
        if status["commandStatus"] == "completed" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "cancelled command never finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last["stop_reason"], "cancelled", "{last}");
    assert!(last["count"].as_u64().unwrap() < 100000);
}

#[tokio::test]
async fn status_updates_every_two_seconds_show_in_module_list_status() {
    let server = server_with_python_module().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let entry = loop {
        let entry = server.module_status("PythonDemo").await.unwrap();
        if entry["statusData"]["demoCounter"].is_number() {
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
        "canUseGPU is a string in the SDK"
    );
    assert!(entry["lastSeen"].is_string());
}

#[tokio::test]
async fn module_exiting_mid_command_fails_the_client_at_once_and_is_restarted() {
    let server = server_with_python_module().await;
    let first_pid = server.module_status("PythonDemo").await.unwrap()["pid"]
        .as_u64()
        .unwrap();

    let sent = Instant::now();
    let (status, body) = server.post_form("/v1/demo/crash", &[]).await.unwrap();
    let waited = sent.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["success"], false, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("PythonDemo exited unexpectedly"), "{error}");
    assert!(error.contains("exit status: 3"), "{error}");
    // Failed at once, not at the 20 s request timeout. The figure (well under
    // 1 s here) is printed rather than asserted tightly: CI machines are slow.
    println!("crash reported to the client after {waited:?}");
    assert!(
        waited < Duration::from_secs(5),
        "the client waited {waited:?}"
    );

    let entry = server
        .wait_for_status("PythonDemo", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(
        entry["pid"].as_u64().unwrap(),
        first_pid,
        "a new process runs"
    );
    assert!(entry["launches"].as_u64().unwrap() >= 2);
    let (_, body) = server
        .post_form("/v1/demo/echo", &[("text", "again")])
        .await
        .unwrap();
    assert_eq!(body["message"], "again", "{body}");
}

#[tokio::test]
async fn shutdown_stops_the_module_and_leaves_no_orphans() {
    let mut server = server_with_python_module().await;
    let pid = server.module_status("PythonDemo").await.unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    assert!(process_alive(pid));
    let exit = server.stop().unwrap();
    assert!(exit.success(), "modhost exit: {exit}");
    assert!(
        !process_alive(pid),
        "module process {pid} outlived the server"
    );
}
