//! Hardening: no request can freeze, exhaust or impersonate; modules never
//! outlive the server; API keys and origins (docs/security.md).
//!
//! HTTP behaviour runs the server in-process ([`InProcess`]); what concerns
//! processes, signals and sockets runs the real binary ([`Server`]). Modules
//! are `sleep` processes the test plays, through the port, queue name and
//! token the server gave them, or the Rust SDK's echo example.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use modhost_tests::{
    assert_error, assert_error_response, process_alive, Api, InProcess, ModuleDir, Server,
};
use serde_json::{json, Value};

/// A module whose process only sleeps; the test answers its queue.
const FAKE: &str = r#"{ "Modules": { "Fake": {
    "Name": "Fake", "Version": "1.0.0",
    "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": true },
    "RouteMaps": [
      { "Name": "Work", "Route": "fake/work", "Method": "POST", "Command": "work",
        "Inputs": [ { "Name": "n", "Type": "Integer", "MinValue": 1, "MaxValue": 10 } ] },
      { "Name": "Plain", "Route": "fake/plain", "Method": "POST", "Command": "plain" }
    ] } } }"#;

fn root_with_fake() -> tempfile::TempDir {
    let root = Server::root().unwrap();
    let dir = root.path().join("modules/Fake");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modulesettings.json"), FAKE).unwrap();
    root
}

/// Waits until the Fake process runs and returns how it reaches the server.
async fn fake_side(api: &Api) -> modhost_tests::ModuleSide {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(side) = api.module_side("Fake").await {
            return side;
        }
        assert!(Instant::now() < deadline, "Fake never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls once as the Fake module; the status and, for a 200, the item.
async fn poll_once(api: &Api, url: &str) -> (u16, Option<Value>) {
    let response = api.http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = (status == 200).then_some(response.json().await.unwrap());
    (status, body)
}

/// Polls as the Fake module until a command arrives (the first poll marks
/// Fake Started).
async fn next_command(api: &Api) -> Value {
    let url = fake_side(api).await.poll_url();
    loop {
        if let (200, Some(item)) = poll_once(api, &url).await {
            return item;
        }
    }
}

/// A raw HTTP/1.1 exchange: sends `request`, reads until the server closes
/// or `limit` passes; returns what came back.
fn raw_exchange(base: &str, request: &[u8], limit: Duration) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

// ------------------------------------------------------------ request bodies

#[tokio::test]
async fn too_many_fields_are_refused_naming_the_limit_and_many_are_parsed_whole() {
    let server = InProcess::start(root_with_fake(), &["--max-form-fields", "200000"]).unwrap();
    // 160,000 fields, 1.5 MB: what froze every endpoint for minutes when each
    // name was looked up among the earlier ones. The last field is invalid:
    // the 400 naming it shows the whole body was parsed.
    let mut body: String = (0..160_000).map(|i| format!("f{i}=v&")).collect();
    body.push_str("n=abc");
    let sent = Instant::now();
    let r = server
        .http
        .post(server.url("/v1/fake/work"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    println!("160,000 fields parsed and checked in {:?}", sent.elapsed());
    assert_error_response(r, 400, "input 'n' of route fake/work is 'abc'").await;

    // The default limit, 10,000 values, refuses the same body at once.
    drop(server);
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let r = server
        .http
        .post(server.url("/v1/fake/work"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error_response(r, 413, "more than 10000 values (setting max_form_fields)").await;
    let ping = server.get_json("/v1/server/status/ping").await.unwrap();
    assert_eq!(ping["success"], true);
}

#[tokio::test]
async fn an_unterminated_multipart_body_is_answered_at_once_and_an_empty_one_is_a_form() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let r = server
        .http
        .post(server.url("/v1/fake/plain"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue")
        .send()
        .await
        .unwrap();
    assert_error_response(r, 400, "closing boundary").await;

    // What a browser sends for an empty FormData: only the closing boundary.
    let client = {
        let request = server
            .http
            .post(server.url("/v1/fake/plain"))
            .header("Content-Type", "multipart/form-data; boundary=----empty")
            .body("------empty--\r\n");
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let item = next_command(&server).await;
    assert_eq!(item["payload"]["command"], "plain");
    assert_eq!(item["payload"]["values"], serde_json::json!([]));
    let side = fake_side(&server).await;
    server
        .http
        .post(side.reply_url(item["reqid"].as_str().unwrap()))
        .body(r#"{"success":true,"empty":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap()["empty"], true);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_its_connection_is_closed() {
    let server = InProcess::start(root_with_fake(), &["--body-read-timeout-secs", "1"]).unwrap();
    let base = server.base.clone();
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            &base,
            b"POST /v1/fake/plain HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\na=1",
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_secs"), "{answer}");
}

#[test]
fn unterminated_multipart_bodies_leave_no_connection_behind() {
    // The real binary with a low open-file limit: 1,100 unterminated
    // multipart bodies once left it accepting nothing.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(Server::start_with_limits(
            root_with_fake(),
            &[],
            Some((256, 4096)),
        ))
        .unwrap();
    let pid = server.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some("4096"),
        "the server raises its soft limit to the hard one: {open_files}"
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let request = || {
        raw_exchange(
            &server.base,
            b"POST /v1/fake/plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 50\r\n\r\n\
              --B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv",
            Duration::from_secs(10),
        )
    };
    // Settled first: the module runs and the workers have served requests.
    runtime.block_on(fake_side(&server));
    for _ in 0..20 {
        request();
    }
    let before = fds();
    for _ in 0..600 {
        let answer = request();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let after = fds();
    println!("open files of the server: {before} before, {after} after 600 requests");
    assert!(
        after <= before + 2,
        "{before} open files before, {after} after"
    );
    let ping = runtime
        .block_on(server.get_json("/v1/server/status/ping"))
        .unwrap();
    assert_eq!(ping["success"], true);
}

// ---------------------------------------------------------- memory and disk

#[tokio::test]
async fn log_entries_are_capped_and_cannot_forge_lines() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let side = fake_side(&server).await;
    let post = |entry: String| {
        server
            .http
            .post(side.url("/log/"))
            .form(&[
                ("entry", entry.as_str()),
                ("category", "Fake"),
                ("log_level", "info"),
            ])
            .send()
    };
    let r = post("x".repeat(2 * 1024 * 1024)).await.unwrap();
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
    let r = post(format!("{}{}", "y".repeat(20_000), "END"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post("ok\n2026-01-01T00:00:00.000Z [Critical] Server: forged".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let log = server
        .get_json("/v1/log/list?count=50&moduleId=Fake")
        .await
        .unwrap();
    let entries: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["entry"].as_str())
        .collect();
    let long = entries.iter().find(|e| e.contains("yyyy")).unwrap();
    assert!(long.len() < 8 * 1024 + 100, "{}", long.len());
    assert!(
        long.ends_with("(11811 more bytes not kept)"),
        "{}",
        &long[long.len() - 40..]
    );
    // The log file has one line per entry, whatever the entry held.
    let day = chrono_day();
    let deadline = Instant::now() + Duration::from_secs(10);
    let file = server.root.path().join(format!("logs/log-{day}.txt"));
    let text = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("forged") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the entry never reached {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000Z")),
        "{text}"
    );
    assert!(text.contains("Fake: ok\\n2026-01-01T00:00:00.000Z [Critical] Server: forged"));
}

/// Today's date as the log files name it.
fn chrono_day() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_queue_is_bounded_by_bytes_and_refuses_with_the_queue_full_answer() {
    let server = InProcess::start(root_with_fake(), &["--queue-bytes", "1000000"]).unwrap();
    fake_side(&server).await;
    let send = |bytes: usize| {
        server
            .http
            .post(server.url("/v1/fake/plain"))
            .form(&[("blob", "z".repeat(bytes))])
            .send()
    };
    // Nobody polls: two 400 KB commands wait, a third would pass 1 MB.
    let first = tokio::spawn(send(400_000));
    let second = tokio::spawn(send(400_000));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 2 {
        assert!(Instant::now() < deadline, "the commands were never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = send(400_000).await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_error(&body, "Request queue 'fake_queue' is full");
    assert_eq!(body["errorCode"], "queue_full");
    // A small one still fits.
    let small = tokio::spawn(send(100));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 3 {
        assert!(Instant::now() < deadline, "the small command was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    second.abort();
    small.abort();
}

// --------------------------------------------------------------- modules

#[tokio::test]
async fn polls_need_the_current_launch_token() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let side = fake_side(&server).await;
    let no_token = format!("{}/queue/fake_queue?moduleId=Fake", side.base);
    let r = server.http.get(&no_token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("must present its launch token"));
    // The main port refuses it too.
    let r = server
        .http
        .get(server.url("/v1/queue/fake_queue?moduleId=Fake"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The header form of the token works.
    let client = tokio::spawn(server.http.post(server.url("/v1/fake/plain")).send());
    let r = server
        .http
        .get(&no_token)
        .header("X-Modhost-Token", &side.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let item: Value = r.json().await.unwrap();
    server
        .http
        .post(side.reply_url(item["reqid"].as_str().unwrap()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap().unwrap().status(), 200);
    // A token of an earlier launch does not.
    let (code, body) = server
        .post_form("/v1/server/settings/Fake", &[("name", "Restart")])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        if let Ok(fresh) = server.module_side("Fake").await {
            if fresh.token != side.token {
                break fresh;
            }
        }
        assert!(Instant::now() < deadline, "Fake was not relaunched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = server.http.get(side.poll_url()).send().await.unwrap();
    assert_eq!(r.status(), 403, "the earlier launch's token");
    assert!(r.text().await.unwrap().contains("stale or foreign"));
    let client = tokio::spawn(server.http.post(server.url("/v1/fake/plain")).send());
    let (status, _) = poll_once(&server, &fresh.poll_url()).await;
    assert_eq!(status, 200, "the new launch's token");
    client.abort();
}

#[tokio::test]
async fn a_batch_of_progress_pushes_reaches_each_job_and_names_unknown_ones() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let side = fake_side(&server).await;
    // Two long commands of Fake, each answered "running" with progressPush.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let client = tokio::spawn(server.http.post(server.url("/v1/fake/plain")).send());
        let item = next_command(&server).await;
        let reqid = item["reqid"].as_str().unwrap().to_owned();
        let running = json!({"success": true, "commandId": reqid, "commandStatus": "running",
                             "progressPush": true});
        server
            .http
            .post(side.reply_url(&reqid))
            .header("X-Modhost-Token", &side.token)
            .json(&running)
            .send()
            .await
            .unwrap();
        assert_eq!(client.await.unwrap().unwrap().status(), 200);
        ids.push(reqid);
    }
    let push = |batch: Value| {
        server
            .http
            .post(side.url("/queue/progress?moduleId=Fake"))
            .header("X-Modhost-Token", &side.token)
            .json(&batch)
            .send()
    };
    let r = push(json!({&ids[0]: {"delta": "one"}, &ids[1]: {"delta": "two"},
                        "nope": {"delta": "lost"}}))
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains("has no job 'nope'"), "{text}");
    for (id, text) in ids.iter().zip(["one", "two"]) {
        let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
        assert_eq!(job["job"]["reply"], text, "{job}");
    }
    let r = push(json!({&ids[0]: {"delta": " more"}})).await.unwrap();
    assert_eq!(r.status(), 200);
    // Without the token, nothing is taken.
    let r = server
        .http
        .post(side.url("/queue/progress?moduleId=Fake"))
        .json(&json!({&ids[1]: {"delta": "forged"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let job = server
        .get_json(&format!("/v1/jobs/{}", ids[1]))
        .await
        .unwrap();
    assert_eq!(job["job"]["reply"], "two");
}

#[tokio::test]
async fn modules_started_by_hand_need_allow_external_modules() {
    let server = InProcess::start(root_with_fake(), &["--allow-external-modules"]).unwrap();
    fake_side(&server).await;
    let client = {
        let request = server
            .http
            .post(server.url("/v1/fake/plain"))
            .form(&[("a", "1")]);
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    // Polls without a token, on the main port, as a module run by hand does.
    let url = server.url("/v1/queue/fake_queue?moduleId=Fake");
    let item = loop {
        if let (200, Some(item)) = poll_once(&server, &url).await {
            break item;
        }
    };
    server
        .http
        .post(server.url(&format!("/v1/queue/{}", item["reqid"].as_str().unwrap())))
        .body(r#"{"success":true,"by":"hand"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap()["by"], "hand");
}

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
    let dir = root.path().join("modules/Crashy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("modulesettings.json"),
        r#"{ "Modules": { "Crashy": { "Name": "Crashy", "Version": "1.0.0",
            "LaunchSettings": { "Command": "sh run.sh", "Runtime": "execute", "AutoStart": true },
            "RouteMaps": [ { "Name": "w", "Route": "crashy/w", "Method": "POST", "Command": "w" } ] } } }"#,
    )
    .unwrap();
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

// ------------------------------------------------------------- security

#[tokio::test]
async fn an_api_key_guards_client_and_admin_routes_but_not_modules_or_pages() {
    let server = InProcess::start(root_with_fake(), &["--api-key", "test-key-0123456789"]).unwrap();
    // `server.http` sends the key; this client sends none unless told.
    let bare = reqwest::Client::new();
    let r = bare
        .get(server.url("/v1/server/status/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_error_response(r, 401, "needs an API key").await;
    let r = bare
        .get(server.url("/v1/server/status/ping"))
        .header("Authorization", "Bearer wrong-key-000000")
        .send()
        .await
        .unwrap();
    assert_error_response(r, 401, "not valid").await;
    for (header, value) in [
        ("Authorization", "Bearer test-key-0123456789"),
        ("X-API-Key", "test-key-0123456789"),
    ] {
        let r = bare
            .get(server.url("/v1/module/list/status"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{header}");
    }
    let r = bare
        .post(server.url("/v1/server/settings/Fake"))
        .form(&[("name", "Restart")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The pages load without it (they ask for it); modules never need it.
    let r = bare.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let side = fake_side(&server).await;
    let r = bare
        .post(side.url("/queue/updatemodulestatus/Fake"))
        .form(&[("statusData", "{}")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a module's status needs no client key");
    // An event stream may carry it in the URL, for EventSource.
    let r = bare
        .get(server.url("/v1/jobs/nope/events?api_key=test-key-0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn pages_of_other_origins_cannot_stop_modules() {
    let server = InProcess::start(
        root_with_fake(),
        &["--allowed-origin", "http://dashboard.lan:8080"],
    )
    .unwrap();
    fake_side(&server).await;
    let stop = |origin: Option<&str>| {
        let mut request = server
            .http
            .post(server.url("/v1/server/settings/Fake"))
            .form(&[("name", "AutoStart"), ("value", "true")]);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send()
    };
    let r = stop(Some("http://evil.example")).await.unwrap();
    assert_error_response(r, 403, "http://evil.example may not change").await;
    let own = server.base.clone();
    for origin in [None, Some(own.as_str()), Some("http://dashboard.lan:8080")] {
        let r = stop(origin).await.unwrap();
        assert_eq!(r.status(), 200, "{origin:?}");
    }
    // Client routes keep permissive CORS, and answer pre-flights.
    let r = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/v1/fake/plain"))
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = server
        .http
        .request(
            reqwest::Method::OPTIONS,
            server.url("/v1/server/settings/Fake"),
        )
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
