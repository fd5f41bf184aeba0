//! The real `modhost` binary against bad input, with the test itself playing
//! the module: a manifest launches `sleep`, and the test long-polls the queue
//! and posts replies as a module would (docs/protocol.md §1), with the port,
//! queue name and token the server gave that process.

use std::time::{Duration, Instant};

use modhost_tests::{assert_error, assert_error_response, ModuleDir, Server};
use serde_json::{json, Value};

/// A module whose process only sleeps; the test answers its queue.
const FAKE_MODULE: &str = r#"{
  // comments and trailing commas are allowed
  "Modules": { "Fake": {
    "Name": "Fake", "Version": "1.0.0",
    "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": true, },
    "RouteMaps": [
      { "Name": "Work", "Route": "fake/work", "Method": "POST", "Command": "work",
        "Inputs": [ { "Name": "n", "Type": "Integer", "MinValue": 1, "MaxValue": 10 },
                    { "Name": "t", "Type": "Float", "MinValue": 0, "MaxValue": 2 } ] },
    ],
  } }
}"#;

async fn server_with(manifests: &[(&str, &str)], args: &[&str]) -> Server {
    let root = Server::root().unwrap();
    for (name, text) in manifests {
        ModuleDir::with_manifest(&root.path().join("modules"), name, text).unwrap();
    }
    Server::start(root, args).await.unwrap()
}

/// Polls the Fake module's queue once, as the module would.
async fn poll(server: &Server) -> Option<Value> {
    let side = server.module_side("Fake").await.unwrap();
    let response = server.http.get(side.poll_url()).send().await.unwrap();
    match response.status().as_u16() {
        200 => Some(response.json().await.unwrap()),
        204 => None,
        other => panic!("poll answered {other}"),
    }
}

/// Polls until a command arrives (the first poll also marks Fake Started).
async fn next_command(server: &Server) -> Value {
    loop {
        if let Some(item) = poll(server).await {
            return item;
        }
    }
}

/// A client request in the background, as a client waiting for its reply;
/// the task yields the reply's JSON.
fn send_work(server: &Server, path: &str, form: &[(&str, &str)]) -> tokio::task::JoinHandle<Value> {
    let request = server.http.post(server.url(path)).form(form);
    tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
}

/// The Fake module's end of the protocol, once its process runs.
async fn fake_side(server: &Server) -> modhost_tests::ModuleSide {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(side) = server.module_side("Fake").await {
            return side;
        }
        assert!(Instant::now() < deadline, "Fake never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn started_fake(args: &[&str]) -> Server {
    let server = server_with(&[("Fake", FAKE_MODULE)], args).await;
    // The first poll marks the module Started; it returns 204 after ≤10 s at
    // most, so run it in the background.
    let http = server.http.clone();
    let url = fake_side(&server).await.poll_url();
    let first = tokio::spawn(async move { http.get(url).send().await });
    server
        .wait_for_status("Fake", "Started", Duration::from_secs(20))
        .await
        .unwrap();
    first.abort();
    server
}

#[tokio::test]
async fn command_round_trip_through_a_module_that_polls() {
    let server = started_fake(&[]).await;
    let client = send_work(
        &server,
        "/v1/fake/work/extra/seg?n=3",
        &[("t", "1.5"), ("note", "x")],
    );
    let item = next_command(&server).await;
    assert_eq!(item["reqtype"], "work");
    let payload = &item["payload"];
    assert_eq!(payload["command"], "work");
    assert_eq!(payload["urlSegments"], json!(["extra", "seg"]));
    let values = payload["values"].as_array().unwrap();
    assert!(
        values.contains(&json!({"key": "n", "value": ["3"]})),
        "{values:?}"
    );
    assert!(
        values.contains(&json!({"key": "t", "value": ["1.5"]})),
        "{values:?}"
    );
    let reqid = item["reqid"].as_str().unwrap();
    // The Python SDK posts its reply as text/plain: any content type is fine.
    let saved = server
        .http
        .post(fake_side(&server).await.reply_url(reqid))
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(
            json!({"success": true, "answer": 42, "moduleId": "Fake", "command": "work"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    assert_eq!(saved.text().await.unwrap(), "Response saved.");
    let reply = client.await.unwrap();
    assert_eq!(reply["answer"], 42, "{reply}");
    assert!(reply["analysisRoundTripMs"].is_u64());
    assert_eq!(
        server.module_status("Fake").await.unwrap()["requestCount"],
        1
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let server = started_fake(&["--max-body-bytes", "1048576"]).await;
    let post = |path: &str| server.http.post(server.url(path));

    // Unknown route: 404 with a JSON body.
    let r = post("/v1/nothing/here")
        .form(&[("a", "b")])
        .send()
        .await
        .unwrap();
    assert_error_response(r, 404, "/v1/nothing/here").await;

    // Malformed JSON.
    let r = post("/v1/fake/work")
        .header("Content-Type", "application/json")
        .body(r#"{"n": 3"#)
        .send()
        .await
        .unwrap();
    assert_error_response(r, 400, "malformed JSON body").await;

    // Invalid UTF-8 in a form.
    let r = post("/v1/fake/work")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(b"n=\xff\xfe".to_vec())
        .send()
        .await
        .unwrap();
    assert_error_response(r, 400, "UTF-8").await;

    // A percent escape that decodes to invalid UTF-8, in the query string.
    let r = post("/v1/fake/work?n=%FF").send().await.unwrap();
    assert_error_response(
        r,
        400,
        "the value of 'n' in the query string is not valid UTF-8",
    )
    .await;

    // A method an endpoint does not take, under /v1 (no route) and on the web
    // UI (405): JSON bodies either way.
    let r = server
        .http
        .put(server.url("/v1/server/status/ping"))
        .send()
        .await
        .unwrap();
    assert_error_response(r, 404, "no route matches PUT /v1/server/status/ping").await;
    let r = post("/explorer.html").send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_error_response(r, 405, "POST is not allowed on /explorer.html").await;

    // Malformed multipart.
    let r = post("/v1/fake/work")
        .header("Content-Type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nnonsense")
        .send()
        .await
        .unwrap();
    assert_error_response(r, 400, "multipart").await;

    // Values checked against the route map before anything is queued.
    for (field, value, expected) in [
        ("n", "ten", "expected an integer"),
        ("n", "11", "expected at most 10"),
        ("t", "-1", "expected at least 0"),
    ] {
        let (status, body) = server
            .post_form("/v1/fake/work", &[(field, value)])
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("input '{field}'")) && error.contains(expected),
            "{error}"
        );
    }

    // Unsupported content type.
    let r = post("/v1/fake/work")
        .header("Content-Type", "image/png")
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // Oversized body: 413.
    let r = post("/v1/fake/work")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_error_response(r, 413, "1048576 bytes").await;

    // None of it was queued, and the server still answers. An empty long
    // poll is answered (204) after the protocol's 10 s wait, not held on.
    let polled = Instant::now();
    assert!(poll(&server).await.is_none());
    assert!(
        polled.elapsed() < Duration::from_secs(12),
        "an empty poll was held {:?}",
        polled.elapsed()
    );
    let ping = server.get_json("/v1/server/status/ping").await.unwrap();
    assert_eq!(ping["success"], true);
}

#[tokio::test]
async fn garbage_or_unknown_replies_from_a_module_are_refused_clearly() {
    let server = started_fake(&[]).await;
    // A reply for a reqid nobody waits for.
    let r = server
        .http
        .post(fake_side(&server).await.reply_url("no-such-reqid"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "failure to set response.");

    // A garbage reply: the waiting client gets an explicit failure.
    let client = send_work(&server, "/v1/fake/work", &[]);
    let item = next_command(&server).await;
    let r = server
        .http
        .post(server.url(&format!("/v1/queue/{}", item["reqid"].as_str().unwrap())))
        .body("this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let reply = client.await.unwrap();
    assert_eq!(reply["success"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON response from backend"),
        "{reply}"
    );
}

#[tokio::test]
async fn timeouts_and_full_queues_fail_explicitly() {
    let server = started_fake(&["--request-timeout-secs", "2", "--queue-length", "1"]).await;
    let sent = Instant::now();
    let first = send_work(&server, "/v1/fake/work", &[]);
    // Once the first command sits in the queue, the next one overflows it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.module_status("Fake").await.unwrap()["queued"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the first command was never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, full) = server.post_form("/v1/fake/work", &[]).await.unwrap();
    assert_eq!(full["success"], false);
    assert!(full["error"]
        .as_str()
        .unwrap()
        .starts_with("Request queue 'fake_queue' is full (#reqid "));

    let timed_out = first.await.unwrap();
    assert_eq!(timed_out["success"], false);
    assert!(
        timed_out["error"]
            .as_str()
            .unwrap()
            .starts_with("The request timed out (#reqid "),
        "{timed_out}"
    );
    assert!(sent.elapsed() < Duration::from_secs(10));
    // The timed-out command is not handed to the module afterwards.
    assert!(poll(&server).await.is_none());
}

/// The Fake module's `lastSeen` (which a poll sets as it starts waiting):
/// with `before`, waits until it differs from that, i.e. a new poll arrived.
async fn poll_seen(server: &Server, before: Option<String>) -> String {
    // lastSeen has millisecond resolution: let the next poll fall in a new one.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = server.module_status("Fake").await.unwrap();
        let seen = entry["lastSeen"].as_str().unwrap_or_default().to_owned();
        if before.as_ref() != Some(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "no new poll arrived: {entry}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_poll_whose_client_went_away_is_not_handed_a_command() {
    use tokio::io::AsyncWriteExt;
    let server = started_fake(&[]).await;
    let side = fake_side(&server).await;
    // A module poll whose process dies while it waits: the request is sent,
    // then the connection is closed, before any command exists.
    let addr = side
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let mut gone = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let seen = poll_seen(&server, None).await;
    gone.write_all(
        format!(
            "GET /v1/queue/{}?moduleId=Fake HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            side.queue
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let seen = poll_seen(&server, Some(seen)).await; // the server is now waiting on it
    drop(gone);
    // A live poll waits behind the dead one.
    let live = {
        let http = server.http.clone();
        let url = side.poll_url();
        tokio::spawn(async move { http.get(url).send().await.unwrap() })
    };
    poll_seen(&server, Some(seen)).await;
    let client = send_work(&server, "/v1/fake/work", &[]);
    let response = tokio::time::timeout(Duration::from_secs(5), live)
        .await
        .expect("the command went to the abandoned poll")
        .unwrap();
    assert_eq!(response.status(), 200);
    let item: Value = response.json().await.unwrap();
    let reqid = item["reqid"].as_str().unwrap().to_owned();
    server
        .http
        .post(side.reply_url(&reqid))
        .body(r#"{"success":true,"moduleId":"Fake"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap()["success"], true);
}

#[tokio::test]
async fn invalid_manifests_are_skipped_and_missing_files_reported() {
    let bad_type = FAKE_MODULE
        .replace("\"Fake\"", "\"BadType\"")
        .replace("\"AutoStart\": true", "\"AutoStart\": \"sometimes\"");
    let missing_file = r#"{"Modules":{"Missing":{"Name":"Missing","Version":"1.0.0",
        "LaunchSettings":{"FilePath":"no_such_binary","Runtime":"execute"},
        "RouteMaps":[{"Name":"x","Route":"missing/x","Method":"POST","Command":"x"}]}}}"#;
    let server = server_with(
        &[
            ("Fake", FAKE_MODULE),
            ("BadType", &bad_type),
            ("Broken", "{ \"Modules\": { "),
            ("Missing", missing_file),
        ],
        &[],
    )
    .await;
    let list = server.get_json("/v1/module/list/status").await.unwrap();
    let ids: Vec<&str> = list["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["moduleId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"Fake") && ids.contains(&"Missing"), "{ids:?}");
    assert!(!ids.contains(&"BadType") && ids.len() == 2, "{ids:?}");

    let missing = server
        .wait_for_status("Missing", "FailedStart", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        missing["lastError"]
            .as_str()
            .unwrap()
            .contains("no_such_binary"),
        "{missing}"
    );
    let (_, body) = server.post_form("/v1/missing/x", &[]).await.unwrap();
    assert_error(&body, "not running (status: FailedStart)");

    let log = server
        .get_json("/v1/log/list?count=100")
        .await
        .unwrap()
        .to_string();
    assert!(
        log.contains("BadType") && log.contains("/AutoStart"),
        "{log}"
    );
    assert!(log.contains("Broken"), "{log}");
}

/// The endpoints the explorer and dashboard use, against the Rust echo module
/// with an explore.html: version, system figures, module lists with the cut
/// explorer UI, module settings (stop, start), the log tail.
#[tokio::test]
async fn server_endpoints_serve_the_explorer_and_the_dashboard() {
    let root = Server::root().unwrap();
    let echo = ModuleDir::echo(&root.path().join("modules")).unwrap();
    std::fs::write(
        echo.path.join("explore.html"),
        "<html><style>/* START EXPLORER STYLE */.e{}/* END EXPLORER STYLE */</style>\
         <!-- START EXPLORER MARKUP --><div id=\"_MID_x\"></div><!-- END EXPLORER MARKUP -->\
         <script>// START EXPLORER SCRIPT\nlet x = 1;\n// END EXPLORER SCRIPT\n</script></html>",
    )
    .unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();

    let version = server.get_json("/v1/server/status/version").await.unwrap();
    assert_eq!(version["message"], "2.9.6", "{version}");
    assert_eq!(
        server.get_json("/v1/server/status/ping").await.unwrap()["success"],
        true
    );
    let system = server
        .get_json("/v1/server/status/system-status")
        .await
        .unwrap();
    let data = &system["data"];
    assert!(data["cpuUsage"].is_number(), "{system}");
    assert!(data["systemMemTotal"].as_u64().unwrap() > 0, "{system}");
    assert!(data["serverMemUsage"].as_u64().unwrap() > 0, "{system}");

    let running = server.get_json("/v1/module/list/running").await.unwrap();
    let module = &running["modules"][0];
    assert_eq!(module["moduleId"], "Echo", "{running}");
    assert_eq!(module["routeMaps"][0]["route"], "echo/echo", "{module}");
    assert_eq!(
        module["uiElements"]["explorerUI"],
        json!({"html": "<div id=\"_MID_x\"></div>", "script": "let x = 1;", "css": ".e{}"})
    );
    let installed = server.get_json("/v1/module/list").await.unwrap();
    assert_eq!(installed["modules"][0]["moduleId"], "Echo", "{installed}");

    // Stop, then start again, as the dashboard's buttons do.
    let pid = server.module_pid("Echo").await.unwrap();
    let (code, body) = server.set_autostart("Echo", false).await.unwrap();
    assert_eq!((code, &body["success"]), (200, &json!(true)), "{body}");
    server
        .wait_for_status("Echo", "Stopped", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !modhost_tests::process_alive(pid),
        "the stopped module's process is gone"
    );
    let running = server.get_json("/v1/module/list/running").await.unwrap();
    assert_eq!(
        running["modules"],
        json!([]),
        "a stopped module is not running"
    );
    let (_, body) = server
        .post_form("/v1/echo/echo", &[("text", "x")])
        .await
        .unwrap();
    assert_error(&body, "not running (status: Stopped)");
    server.set_autostart("Echo", true).await.unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(20))
        .await
        .unwrap();
    let (_, body) = server
        .post_form("/v1/echo/echo", &[("text", "back")])
        .await
        .unwrap();
    assert_eq!(body["message"], "back", "{body}");

    // Bad settings requests are named.
    let (code, body) = server
        .post_form(
            "/v1/server/settings/Echo",
            &[("name", "LD_PRELOAD"), ("value", "/tmp/x.so")],
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert_error(
        &body,
        "'LD_PRELOAD' is set by the server or changes which program",
    );
    let (code, body) = server
        .post_form("/v1/server/settings/Echo", &[("name", "MODEL_SIZE")])
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert_error(&body, "missing value 'value' for setting 'MODEL_SIZE'");
    let (code, body) = server
        .post_form("/v1/server/settings/Nope", &[("name", "Restart")])
        .await
        .unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, body) = server
        .post_form("/v1/server/settings/Echo", &[("value", "true")])
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_error(&body, "missing value 'name'");

    // A module's log entry, posted as the Python SDK does, shows in the tail.
    let (code, body) = server
        .post_form(
            "/v1/log/",
            &[
                ("entry", "hello from a module"),
                ("category", "Echo"),
                ("label", "test"),
                ("log_level", "warning"),
            ],
        )
        .await
        .unwrap();
    assert_eq!((code, &body["success"]), (200, &json!(true)), "{body}");
    let (code, body) = server
        .post_form("/v1/log/", &[("category", "Echo")])
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_error(&body, "field 'entry' is missing");

    // The log tail, filtered by module, then only what is new.
    let log = server
        .get_json("/v1/log/list?count=500&moduleId=Echo")
        .await
        .unwrap();
    let entries = log["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["entry"]
            .as_str()
            .unwrap()
            .contains("module Echo was stopped")),
        "{log}"
    );
    assert!(entries.iter().all(|e| e["category"] == "Echo"), "{log}");
    let posted = entries
        .iter()
        .find(|e| e["entry"] == "Echo: hello from a module")
        .expect("the posted entry is in the tail");
    assert_eq!(posted["label"], "test", "{posted}");
    assert_eq!(posted["level"], "warning", "{posted}");
    let last = entries.last().unwrap()["id"].as_u64().unwrap();
    let newer = server
        .get_json(&format!(
            "/v1/log/list?count=500&last_id={last}&moduleId=Echo"
        ))
        .await
        .unwrap();
    assert!(newer["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["id"].as_u64().unwrap() > last));
}

/// A module whose launch file is missing is installed first with its
/// `install.sh` (output in `install.log` and the server log), then started;
/// a failing install is reported, and the module is not started.
#[tokio::test]
async fn a_module_that_is_not_installed_is_installed_then_started() {
    let root = Server::root().unwrap();
    let modules = root.path().join("modules");
    let echo = ModuleDir::echo(&modules).unwrap();
    std::fs::rename(echo.path.join("echo"), echo.path.join("echo.built")).unwrap();
    std::fs::write(
        echo.path.join("install.sh"),
        "echo \"installing in $(basename \"$PWD\")\"\ncp echo.built echo\n",
    )
    .unwrap();
    let broken = modules.join("Broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("modulesettings.json"),
        FAKE_MODULE
            .replace("\"Fake\"", "\"Broken\"")
            .replace("\"Command\": \"sleep 600\"", "\"FilePath\": \"run\""),
    )
    .unwrap();
    std::fs::write(
        broken.join("install.sh"),
        "echo 'no compiler here' >&2\nexit 4\n",
    )
    .unwrap();

    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    let log = std::fs::read_to_string(echo.path.join("install.log")).unwrap();
    assert!(log.contains("installing in Echo"), "{log}");
    let (_, body) = server
        .post_form("/v1/echo/echo", &[("text", "installed")])
        .await
        .unwrap();
    assert_eq!(body["message"], "installed", "{body}");

    let entry = server
        .wait_for_status("Broken", "FailedStart", Duration::from_secs(30))
        .await
        .unwrap();
    let error = entry["lastError"].as_str().unwrap();
    assert!(
        error.contains("install.sh failed (exit status: 4)") && error.contains("install.log"),
        "{error}"
    );
    let log = server
        .get_json("/v1/log/list?count=200&moduleId=Broken")
        .await
        .unwrap()
        .to_string();
    assert!(log.contains("no compiler here"), "{log}");
}

/// What a module process is given: the CPAI_* variables and the manifest's
/// EnvironmentVariables (macros expanded, `@` kept literal), in its own
/// directory; and how it is stopped: a `quit` command on its queue, then,
/// as this one ignores it, a signal.
#[tokio::test]
async fn a_module_gets_its_environment_and_a_quit_command_when_stopped() {
    let root = Server::root().unwrap();
    let dir = ModuleDir::with_manifest(
        &root.path().join("modules"),
        "Envy",
        r#"{ "Modules": { "Envy": {
            "Name": "Envy Module", "Version": "1.2.3",
            "LaunchSettings": { "FilePath": "run.sh", "Runtime": "execute", "AutoStart": true,
                                "Queue": "envy_queue", "Parallelism": 3, "LogVerbosity": "Loud" },
            "EnvironmentVariables": { "Demo_Dir": "%CURRENT_MODULE_PATH%/models",
                                      "LITERAL": "@%OS%" },
            "GpuOptions": { "InstallGPU": true, "EnableGPU": true },
            "RouteMaps": [ { "Name": "w", "Route": "envy/w", "Method": "POST", "Command": "w" } ]
        } } }"#,
    )
    .unwrap()
    .path;
    let env_file = modhost_tests::write_env_recorder(&dir).unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env_file.exists() {
        assert!(Instant::now() < deadline, "the module never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&env_file).unwrap();
    let env: std::collections::HashMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let module_dir = dir.display().to_string();
    let models = format!("{module_dir}/models");
    // Modules talk to their own loopback listener, not the client port, and
    // poll with a queue name that carries this launch's token.
    let port = env["CPAI_PORT"];
    assert_ne!(port, server.base.rsplit(':').next().unwrap());
    let token = env["MODHOST_MODULE_TOKEN"];
    assert_eq!(token.len(), 32, "{token}");
    let queue = format!("envy_queue~{token}");
    for (key, expected) in [
        ("CPAI_MODULE_ID", "Envy"),
        ("CPAI_MODULE_NAME", "Envy Module"),
        ("CPAI_MODULE_PATH", &module_dir),
        ("CPAI_MODULE_QUEUENAME", &queue),
        ("CPAI_MODULE_PARALLELISM", "3"),
        ("CPAI_LOG_VERBOSITY", "Loud"),
        ("CPAI_MODULE_ENABLE_GPU", "True"),
        ("CPAI_MODULE_SERVER_LAUNCHED", "true"),
        ("DEMO_DIR", &models),
        ("LITERAL", "%OS%"),
        ("PWD", &module_dir),
    ] {
        assert_eq!(env.get(key).copied(), Some(expected), "{key} in\n{text}");
    }

    // Stopping it: the module's next poll gets `quit`.
    let pid = server.module_pid("Envy").await.unwrap();
    let poll = {
        let http = server.http.clone();
        let url = server.module_side("Envy").await.unwrap().poll_url();
        tokio::spawn(async move { http.get(url).send().await.unwrap() })
    };
    server
        .wait_for_status("Envy", "Started", Duration::from_secs(10))
        .await
        .unwrap();
    let (code, body) = server.set_autostart("Envy", false).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let response = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("no quit command reached the module's poll")
        .unwrap();
    assert_eq!(response.status(), 200);
    let quit: Value = response.json().await.unwrap();
    assert_eq!(quit["reqtype"], "quit", "{quit}");
    assert_eq!(quit["payload"]["command"], "quit", "{quit}");
    assert_eq!(
        quit["payload"]["values"],
        json!([{"key": "moduleId", "value": ["Envy"]}])
    );
    server
        .wait_for_status("Envy", "Stopped", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        !modhost_tests::process_alive(pid),
        "a module that ignores quit is killed"
    );
}
