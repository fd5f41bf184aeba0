//! Jobs: long processes the server owns, and their event streams
//! (docs/protocol.md §4.4).
//!
//! Streams from real modules (LlamaChat and the echo example on the Rust SDK,
//! which push their progress; a module on the official Python SDK, which the
//! server polls) run the real binary; the jobs API's own behaviour (resume,
//! many watchers, retention, the control lane) runs the server in-process.

use std::time::{Duration, Instant};

use modhost_tests::{
    joined_deltas, python_sse_client, read_sse, Api, InProcess, ModuleDir, Server, SseEvent,
};
use serde_json::Value;

/// Starts a long command with `values` on `route`; its command id.
async fn start(api: &Api, route: &str, values: &[(&str, &str)]) -> String {
    let (status, body) = api.post_form(route, values).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["commandStatus"], "running", "{body}");
    body["commandId"].as_str().unwrap().to_owned()
}

/// The whole event stream of job `id` after event `after`, read to its end.
async fn events(api: &Api, id: &str, after: Option<u64>) -> Vec<SseEvent> {
    let mut request = api.http.get(api.url(&format!("/v1/jobs/{id}/events")));
    if let Some(after) = after {
        request = request.header("Last-Event-ID", after.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    read_sse(response, |_| false).await.unwrap()
}

/// Checks what every complete stream must be: ids 1, 2, 3 … without gaps,
/// and exactly one final event, last.
fn assert_whole(events: &[SseEvent]) {
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    let finals = events
        .iter()
        .filter(|e| e.event == "done" || e.event == "error")
        .count();
    assert_eq!(finals, 1, "{events:?}");
    assert!(matches!(
        events.last().unwrap().event.as_str(),
        "done" | "error"
    ));
}

async fn echo_in_process(args: &[&str]) -> InProcess {
    let root = Server::root().unwrap();
    ModuleDir::echo(&root.path().join("modules")).unwrap();
    let server = InProcess::start(root, args).unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    server
}

// --------------------------------------------------- streams from real modules

#[tokio::test]
async fn llama_chat_streams_deltas_that_join_to_its_final_reply_for_an_httpx_sse_client() {
    let server = Server::with_llama_chat("tiny").await.unwrap();
    // One call starts the chat and streams it (Accept: text/event-stream).
    let url = server.url("/v1/text/chat");
    let got = tokio::task::spawn_blocking(move || {
        python_sse_client(&[
            "post",
            &url,
            r#"{"prompt": "Tell me about the sun", "max_tokens": "40", "seed": "7"}"#,
        ])
    })
    .await
    .unwrap()
    .unwrap();
    let events: Vec<&Value> = got["events"].as_array().unwrap().iter().collect();
    assert_eq!(events[0]["event"], "status", "{got}");
    assert_eq!(events[0]["data"]["commandStatus"], "running", "{got}");
    let id = events[0]["data"]["commandId"].as_str().unwrap().to_owned();
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{got}");
    let reply = done["data"]["reply"].as_str().unwrap();
    assert!(!reply.is_empty());
    assert_eq!(
        got["deltas"], reply,
        "the deltas join to exactly the final reply"
    );
    assert_eq!(done["data"]["completion_tokens"], 40, "{done}");
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());

    // The job stays, and get_command_status is answered from it.
    let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
    assert_eq!(job["job"]["status"], "completed", "{job}");
    assert_eq!(job["job"]["reply"], reply);
    assert_eq!(job["job"]["pushesProgress"], true);
    let (_, status) = server
        .post_form("/v1/LlamaChat/get_command_status", &[("commandId", &id)])
        .await
        .unwrap();
    assert_eq!(status["commandStatus"], "completed", "{status}");
    assert_eq!(status["reply"], reply);
    assert_eq!(status["moduleId"], "LlamaChat");

    // Its progress went over the progress stream the server opened at
    // launch, not over HTTP (docs/protocol.md §4.2).
    let log = server
        .get_json("/v1/log/list?count=200&moduleId=LlamaChat")
        .await
        .unwrap();
    let entries = log["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["entry"]
            .as_str()
            .is_some_and(|t| t.contains("progress pushes go over the progress stream"))),
        "{log}"
    );
}

#[tokio::test]
async fn a_python_sdk_module_is_streamed_by_the_server_polling_it() {
    let root = Server::root().unwrap();
    ModuleDir::python_demo(&root.path().join("modules")).unwrap();
    let server = Server::start(root, &["--job-poll-ms", "100"])
        .await
        .unwrap();
    server
        .wait_for_status("PythonDemo", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    let id = start(&server, "/v1/demo/count", &[("n", "30"), ("step_ms", "50")]).await;
    let url = server.url(&format!("/v1/jobs/{id}/events"));
    let got = tokio::task::spawn_blocking(move || python_sse_client(&["get", &url]))
        .await
        .unwrap()
        .unwrap();
    let events = got["events"].as_array().unwrap();
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{got}");
    assert_eq!(done["data"]["stop_reason"], "completed", "{done}");
    let expected: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
    assert_eq!(done["data"]["reply"], expected.join(" "));
    assert_eq!(got["deltas"], done["data"]["reply"]);
    let deltas = events.iter().filter(|e| e["event"] == "delta").count();
    assert!(
        deltas > 3,
        "the text arrived in pieces as it grew: {deltas} deltas"
    );
    let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
    assert_eq!(job["job"]["pushesProgress"], false, "{job}");
}

#[tokio::test]
async fn a_module_killed_mid_stream_ends_the_stream_with_an_error_at_once() {
    let root = Server::root().unwrap();
    ModuleDir::echo(&root.path().join("modules")).unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await
        .unwrap();
    let id = start(
        &server,
        "/v1/echo/count",
        &[("n", "100000"), ("step_ms", "10")],
    )
    .await;
    let response = server
        .http
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let pid = server.module_pid("Echo").await.unwrap();
    let mut killed = None;
    let events = read_sse(response, |event| {
        if killed.is_none() && event.event == "delta" {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            killed = Some(Instant::now());
        }
        false
    })
    .await
    .unwrap();
    let waited = killed.unwrap().elapsed();
    println!("error event {waited:?} after SIGKILL");
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["code"], "module_crashed", "{last:?}");
    assert!(
        waited < Duration::from_secs(1),
        "the error came {waited:?} after the kill"
    );
    // The job is failed, and says so to get_command_status.
    let (_, status) = server
        .post_form("/v1/Echo/get_command_status", &[("commandId", &id)])
        .await
        .unwrap();
    assert_eq!(status["commandStatus"], "failed", "{status}");
    assert_eq!(status["errorCode"], "module_crashed", "{status}");
    assert!(
        status["reply"].as_str().unwrap().starts_with('1'),
        "what it had said stays: {status}"
    );
    // Only ids never seen are unknown.
    let (_, unknown) = server
        .post_form(
            "/v1/Echo/get_command_status",
            &[("commandId", "never-seen")],
        )
        .await
        .unwrap();
    assert_eq!(unknown["commandStatus"], "unknown", "{unknown}");
}

// ------------------------------------------------------------- the jobs API

#[tokio::test]
async fn a_resume_with_last_event_id_loses_and_repeats_nothing() {
    let server = echo_in_process(&[]).await;
    let id = start(&server, "/v1/echo/count", &[("n", "60"), ("step_ms", "15")]).await;
    // A client reads ten events, drops, and comes back with the last id.
    let response = server
        .http
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let first = read_sse(response, |e| e.id == 10).await.unwrap();
    assert_eq!(first.len(), 10);
    let rest = events(&server, &id, Some(10)).await;
    let mut joined = first.clone();
    joined.extend(rest);
    assert_whole(&joined);
    // The same as one uninterrupted read, replayed after the end.
    let whole = events(&server, &id, None).await;
    assert_eq!(joined, whole);
    let expected: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    assert_eq!(joined_deltas(&whole), expected.join(" "));
    assert_eq!(whole.last().unwrap().data["reply"], expected.join(" "));
    // The query form of the resume, for clients that cannot set the header.
    let response = server
        .http
        .get(server.url(&format!("/v1/jobs/{id}/events?lastEventId=10")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read_sse(response, |_| false).await.unwrap(),
        whole[10..].to_vec()
    );
}

#[tokio::test]
async fn a_hundred_watchers_of_one_job_all_get_the_whole_stream() {
    let server = echo_in_process(&[]).await;
    let id = start(
        &server,
        "/v1/echo/count",
        &[("n", "100"), ("step_ms", "10")],
    )
    .await;
    let watchers: Vec<_> = (0..100)
        .map(|_| {
            let request = server
                .http
                .get(server.url(&format!("/v1/jobs/{id}/events")));
            tokio::spawn(async move {
                read_sse(request.send().await.unwrap(), |_| false)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut streams = Vec::new();
    for watcher in watchers {
        streams.push(watcher.await.unwrap());
    }
    let expected: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    for stream in &streams {
        assert_whole(stream);
        assert_eq!(joined_deltas(stream), expected.join(" "));
        assert_eq!(stream, &streams[0]);
    }
}

#[tokio::test]
async fn finished_jobs_are_kept_up_to_the_bound_oldest_out_first() {
    let server = echo_in_process(&["--max-finished-jobs", "3"]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = start(&server, "/v1/echo/count", &[("n", "2"), ("step_ms", "1")]).await;
        events(&server, &id, None).await; // until it is done
        ids.push(id);
    }
    let running = start(
        &server,
        "/v1/echo/count",
        &[("n", "100000"), ("step_ms", "50")],
    )
    .await;
    let listed = server
        .get_json("/v1/jobs?module=echo&status=completed")
        .await
        .unwrap();
    let listed: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    for gone in &ids[..2] {
        let r = server
            .http
            .get(server.url(&format!("/v1/jobs/{gone}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let all = server.get_json("/v1/jobs").await.unwrap();
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        4,
        "three finished and the running one: {all}"
    );
    let r = server
        .http
        .get(server.url("/v1/jobs?status=sleeping"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Cancelled from the jobs API, as the dashboard does.
    let (code, cancel) = server
        .post_form(&format!("/v1/jobs/{running}/cancel"), &[])
        .await
        .unwrap();
    assert_eq!(code, 200, "{cancel}");
    assert_eq!(cancel["commandStatus"], "cancelled", "{cancel}");
    let stream = events(&server, &running, None).await;
    assert_eq!(stream.last().unwrap().event, "done");
    let job = server
        .get_json(&format!("/v1/jobs/{running}"))
        .await
        .unwrap();
    assert_eq!(job["job"]["status"], "cancelled", "{job}");
}

#[tokio::test]
async fn a_one_call_stream_cancels_its_job_when_its_client_leaves() {
    let server = echo_in_process(&[]).await;
    let response = server
        .http
        .post(server.url("/v1/echo/count"))
        .form(&[("n", "100000"), ("step_ms", "20"), ("stream", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = read_sse(response, |e| e.event == "delta").await.unwrap();
    let id = first[0].data["commandId"].as_str().unwrap().to_owned();
    // read_sse returned: the response, and its connection, are dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
        if job["job"]["status"] == "cancelled" {
            assert_eq!(job["job"]["result"]["cancelled"], true, "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "still {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Plain commands stream their reply as one `done` event.
    let response = server
        .http
        .post(server.url("/v1/echo/echo"))
        .header("Accept", "text/event-stream")
        .form(&[("text", "once")])
        .send()
        .await
        .unwrap();
    let events = read_sse(response, |_| false).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "done");
    assert_eq!(events[0].data["message"], "once");
}

#[tokio::test]
async fn status_and_cancel_go_ahead_of_queued_commands_and_watched_jobs_are_polled() {
    // The test plays a module that does not push: it answers one command as a
    // long process, then sees what the server sends it.
    let root = Server::root().unwrap();
    let manifest = r#"{ "Modules": { "Fake": { "Name": "Fake", "Version": "1.0.0",
            "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": true },
            "RouteMaps": [ { "Name": "w", "Route": "fake/work", "Method": "POST", "Command": "work" } ] } } }"#;
    ModuleDir::with_manifest(&root.path().join("modules"), "Fake", manifest).unwrap();
    let server = InProcess::start(root, &["--job-poll-ms", "50"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let side = loop {
        if let Ok(side) = server.module_side("Fake").await {
            break side;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let poll = || async {
        loop {
            let response = server.http.get(side.poll_url()).send().await.unwrap();
            if response.status() == 200 {
                return response.json::<Value>().await.unwrap();
            }
        }
    };
    let reply =
        |reqid: String, body: Value| server.http.post(side.reply_url(&reqid)).json(&body).send();
    let client = tokio::spawn(server.http.post(server.url("/v1/fake/work")).send());
    let item = poll().await;
    let id = item["reqid"].as_str().unwrap().to_owned();
    reply(
        id.clone(),
        serde_json::json!({"success": true, "commandId": id, "commandStatus": "running"}),
    )
    .await
    .unwrap();
    client.await.unwrap().unwrap();
    // Three prompts wait in the queue; then a cancel is sent.
    let queued: Vec<_> = (0..3)
        .map(|_| tokio::spawn(server.http.post(server.url("/v1/fake/work")).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel = tokio::spawn(
        server
            .http
            .post(server.url("/v1/Fake/cancel_command"))
            .form(&[("commandId", id.as_str())])
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 4 {
        assert!(Instant::now() < deadline, "the cancel was never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = poll().await;
    assert_eq!(next["payload"]["command"], "cancel_command", "{next}");
    assert_eq!(next["payload"]["values"][0]["value"][0], id.as_str());
    reply(
        next["reqid"].as_str().unwrap().to_owned(),
        serde_json::json!({"success": true, "commandStatus": "cancelled", "commandId": id}),
    )
    .await
    .unwrap();
    assert_eq!(cancel.await.unwrap().unwrap().status(), 200);
    // Someone watches the job: the server asks the module for its status.
    let watch = tokio::spawn({
        let request = server
            .http
            .get(server.url(&format!("/v1/jobs/{id}/events")));
        async move {
            read_sse(request.send().await.unwrap(), |_| false)
                .await
                .unwrap()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 4 {
        assert!(
            Instant::now() < deadline,
            "the server never asked for the status"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = poll().await;
    assert_eq!(asked["payload"]["command"], "get_command_status", "{asked}");
    reply(
        asked["reqid"].as_str().unwrap().to_owned(),
        serde_json::json!({"success": true, "commandId": id, "commandStatus": "completed", "reply": "bye", "message": "The command was cancelled"}),
    )
    .await
    .unwrap();
    let stream = watch.await.unwrap();
    assert_eq!(joined_deltas(&stream), "bye");
    assert_eq!(stream.last().unwrap().event, "done");
    let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
    assert_eq!(job["job"]["status"], "cancelled", "{job}");
    for q in queued {
        q.abort();
    }
}
