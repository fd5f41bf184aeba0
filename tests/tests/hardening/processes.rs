//! Module processes: silent, stopped and crashing modules, their
//! environment, their death with the server, and the clients waiting on
//! them when connections run out or the server is stopped.

use std::io::Write;
use std::time::{Duration, Instant};

use modhost_tests::{assert_error, process_alive, InProcess, ModuleDir, Server};

use crate::fake::{fake_side, poll_once, root_with_fake};

#[tokio::test]
async fn a_silent_module_is_declared_unresponsive_and_restarted() {
    let server = InProcess::start(root_with_fake(), &["--unresponsive-secs", "2"]).unwrap();
    let side = fake_side(&server).await;
    // One poll makes it Started; then the "module" goes silent.
    let first = tokio::spawn(server.http.get(side.poll_url()).send());
    server
        .wait_for_status("Fake", "Started", Duration::from_secs(20))
        .await
        .unwrap();
    first.abort();
    let first_pid = server.module_pid("Fake").await.unwrap();
    let sent = Instant::now();
    let (_, body) = server.post_form("/v1/fake/plain", &[]).await.unwrap();
    println!(
        "a silent module's client was answered after {:?}",
        sent.elapsed()
    );
    assert_error(&body, "stopped responding: no contact for");
    assert_eq!(body["errorCode"], "module_unresponsive");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entry = server.module_status("Fake").await.unwrap();
        if entry["pid"].as_u64().is_some_and(|p| p as u32 != first_pid) {
            assert!(entry["launches"].as_u64().unwrap() >= 2, "{entry}");
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {entry}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!process_alive(first_pid), "the silent process was killed");
}

#[tokio::test]
async fn a_stopped_rust_module_is_restarted_and_its_clients_answered() {
    // SIGSTOP: the process exists but neither polls nor posts its status.
    let root = Server::root().unwrap();
    ModuleDir::echo(&root.path().join("modules")).unwrap();
    let server = InProcess::start(root, &["--unresponsive-secs", "3"]).unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    let pid = server.module_pid("Echo").await.unwrap();
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGSTOP);
    }
    let (_, body) = server
        .post_form("/v1/echo/echo", &[("text", "anyone?")])
        .await
        .unwrap();
    assert_eq!(body["errorCode"], "module_unresponsive", "{body}");
    let entry = server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(entry["pid"].as_u64().unwrap() as u32, pid);
    let (_, body) = server
        .post_form("/v1/echo/echo", &[("text", "back")])
        .await
        .unwrap();
    assert_eq!(body["message"], "back", "{body}");
}

#[tokio::test]
async fn repeated_crashes_show_the_backoff_and_a_stable_run_resets_it() {
    // Crashes on its first two launches, then stays up.
    let root = Server::root().unwrap();
    let manifest = r#"{ "Modules": { "Crashy": { "Name": "Crashy", "Version": "1.0.0",
            "LaunchSettings": { "Command": "sh run.sh", "Runtime": "execute", "AutoStart": true },
            "RouteMaps": [ { "Name": "w", "Route": "crashy/w", "Method": "POST", "Command": "w" } ] } } }"#;
    let dir = ModuleDir::with_manifest(&root.path().join("modules"), "Crashy", manifest)
        .unwrap()
        .path;
    std::fs::write(
        dir.join("run.sh"),
        "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count\n[ \"$n\" -ge 2 ] && exec sleep 600\necho 'error: not yet' >&2; exit 3\n",
    )
    .unwrap();
    let server = InProcess::start(root, &["--stable-run-secs", "2"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let restarting = loop {
        let entry = server.module_status("Crashy").await.unwrap();
        if entry["status"] == "Restarting" && entry["crashes"] == 2 {
            break entry;
        }
        assert!(
            Instant::now() < deadline,
            "never saw the second crash: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(restarting["nextStart"].is_string(), "{restarting}");
    assert!(
        restarting["lastError"]
            .as_str()
            .unwrap()
            .contains("not yet"),
        "{restarting}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entry = server.module_status("Crashy").await.unwrap();
        if entry["crashes"] == 0 && entry["pid"].is_u64() {
            assert!(entry["nextStart"].is_null(), "{entry}");
            break;
        }
        assert!(Instant::now() < deadline, "the count never reset: {entry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn modules_get_a_clean_environment() {
    let root = root_with_fake();
    let server = Server::start_with_env(
        root,
        &["--module-env", "MODHOST_TEST_PASSED"],
        &[
            ("AWS_SECRET_ACCESS_KEY", "do-not-leak"),
            ("HF_TOKEN", "hf_nope"),
            ("MODHOST_TEST_PASSED", "yes"),
        ],
    )
    .await
    .unwrap();
    fake_side(&server).await;
    let env = server.module_env("Fake").await.unwrap();
    assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"), "{env:?}");
    assert!(!env.contains_key("HF_TOKEN"), "{env:?}");
    assert!(
        !env.contains_key("MODHOST_LOG"),
        "the server's own settings stay: {env:?}"
    );
    assert_eq!(
        env.get("MODHOST_TEST_PASSED").map(String::as_str),
        Some("yes")
    );
    assert!(
        env.contains_key("PATH") && env.contains_key("CPAI_MODULE_ID"),
        "{env:?}"
    );
}

#[tokio::test]
async fn modules_die_with_a_killed_server() {
    let root = Server::root().unwrap();
    ModuleDir::echo(&root.path().join("modules")).unwrap();
    let mut server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    let module = server.module_pid("Echo").await.unwrap();
    let exit = server.stop_with(libc::SIGKILL).unwrap();
    assert!(!exit.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(module) {
        assert!(
            Instant::now() < deadline,
            "module {module} outlived the killed server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_rust_sdk_keeps_serving_when_its_log_pipe_is_gone() {
    // The server launched nothing: the echo module runs by hand (allowed),
    // logging every command at debug level into a pipe nobody reads any more.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let root = Server::root().unwrap();
    let module = ModuleDir::echo(&root.path().join("modules")).unwrap();
    let manifest = module.path.join("modulesettings.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"AutoStart\": true", "\"AutoStart\": false");
    std::fs::write(&manifest, text).unwrap();
    let server = InProcess::start(root, &["--allow-external-modules"]).unwrap();
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let mut child = std::process::Command::new(module.path.join("echo"))
        .env("CPAI_PORT", &port)
        .env("CPAI_MODULE_ID", "Echo")
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    runtime.block_on(async {
        for i in 0..20 {
            let text = format!("after the pipe closed {i}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, body) = server
                    .post_form("/v1/echo/echo", &[("text", &text)])
                    .await
                    .unwrap();
                if body["message"] == text.as_str() {
                    break;
                }
                // Until the module's first poll the route is not running.
                assert!(Instant::now() < deadline, "{body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    assert!(child.try_wait().unwrap().is_none(), "the module died");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn module_traffic_is_served_while_every_client_connection_is_taken() {
    let server = InProcess::start(root_with_fake(), &["--max-connections", "2"]).unwrap();
    let side = fake_side(&server).await;
    // Two clients that never finish their bodies hold every client slot.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"POST /v1/fake/plain HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The module still takes commands, posts its status and logs.
    let r = server
        .http
        .post(side.url("/queue/updatemodulestatus/Fake"))
        .form(&[("statusData", r#"{"inferenceDevice":"CPU"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .http
        .post(side.url("/log/"))
        .form(&[("entry", "still here"), ("category", "Fake")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .http
        .get(side.poll_url())
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        r.is_err_and(|e| e.is_timeout()),
        "a poll is taken and held, not refused"
    );
    drop(held);
}

#[test]
fn on_sigterm_every_waiting_client_gets_an_answer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for run in 0..3 {
        runtime.block_on(async {
            let mut server = Server::start(root_with_fake(), &[]).await.unwrap();
            let side = fake_side(&server).await;
            // Four commands in flight in the module, three queued.
            let clients: Vec<_> = (0..7)
                .map(|_| {
                    let request = server
                        .http
                        .post(server.url("/v1/fake/plain"))
                        .form(&[("a", "1")]);
                    tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
                })
                .collect();
            for _ in 0..4 {
                loop {
                    if let (200, Some(_)) = poll_once(&server, &side.poll_url()).await {
                        break;
                    }
                }
            }
            let stopper = tokio::task::spawn_blocking(move || server.stop());
            for client in clients {
                let answer = client.await.unwrap();
                assert!(
                    matches!(answer, Ok(200)),
                    "run {run}: a client got no answer: {answer:?}"
                );
            }
            assert!(stopper.await.unwrap().unwrap().success());
        });
    }
}
