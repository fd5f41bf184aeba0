//! LlamaChat under the real `modhost` binary: real llama.cpp inference in the
//! module process, on random-weight demo models generated for each test (no
//! downloads). `tiny` answers in milliseconds; `small` runs a few hundred
//! tokens per second, so a reply can be watched growing and stopped midway.

use std::time::{Duration, Instant};

use modhost_tests::{assert_error, ModuleDir, Server};
use serde_json::{json, Value};

/// Starts a chat; returns its command id.
async fn start_chat(server: &Server, values: &[(&str, &str)]) -> String {
    let (status, body) = server.post_form("/v1/text/chat", values).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["commandStatus"], "running", "{body}");
    assert_eq!(body["moduleId"], "LlamaChat");
    body["commandId"].as_str().expect("a commandId").to_owned()
}

async fn status(server: &Server, id: &str) -> Value {
    let (code, body) = server
        .post_form("/v1/LlamaChat/get_command_status", &[("commandId", id)])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

/// Polls until the chat is no longer running; returns the replies seen while
/// it ran and the final status.
async fn finish(server: &Server, id: &str) -> (Vec<String>, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let s = status(server, id).await;
        if s["commandStatus"] != "running" && s["commandStatus"] != "queued" {
            return (seen, s);
        }
        seen.push(s["reply"].as_str().unwrap_or_default().to_owned());
        assert!(Instant::now() < deadline, "chat still running: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_chat_returns_a_command_id_and_its_reply_grows_until_it_completes() {
    let server = Server::with_llama_chat("small").await.unwrap();
    let id = start_chat(
        &server,
        &[
            ("prompt", "Tell me about the stars."),
            ("max_tokens", "300"),
        ],
    )
    .await;
    let (seen, done) = finish(&server, &id).await;

    assert_eq!(done["commandStatus"], "completed", "{done}");
    assert_eq!(done["success"], true);
    // CodeProject's stop_reason, and the detail in finish_reason.
    assert_eq!(done["stop_reason"], "completed");
    assert_eq!(done["finish_reason"], "length");
    assert_eq!(done["completion_tokens"], 300);
    assert!(done["prompt_tokens"].as_u64().unwrap() > 20, "{done}");
    assert!(done["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(done["inferenceMs"].as_u64().is_some(), "{done}");
    let reply = done["reply"].as_str().unwrap();
    assert!(!reply.trim().is_empty());
    // Each reply seen while running extends the one before and the final one.
    let distinct: Vec<&String> = seen.iter().filter(|r| !r.is_empty()).collect();
    assert!(
        distinct.windows(2).all(|w| w[1].starts_with(w[0].as_str())),
        "not a growing reply"
    );
    assert!(distinct.iter().all(|r| reply.starts_with(r.as_str())));
    let lengths: std::collections::BTreeSet<usize> = distinct.iter().map(|r| r.len()).collect();
    assert!(
        lengths.len() >= 3,
        "the reply was seen at only {} lengths",
        lengths.len()
    );
    println!(
        "reply seen at {} lengths while generating; {} tokens/s",
        lengths.len(),
        done["tokens_per_second"]
    );
}

#[tokio::test]
async fn cancel_stops_the_reply_within_a_token_and_the_next_chat_starts_at_once() {
    let server = Server::with_llama_chat("small").await.unwrap();
    let id = start_chat(
        &server,
        &[("prompt", "Write a long story."), ("max_tokens", "0")],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&server, &id).await["completion_tokens"]
        .as_u64()
        .unwrap_or(0)
        < 5
    {
        assert!(Instant::now() < deadline, "the reply never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Instant::now();
    let (_, cancelled) = server
        .post_form("/v1/LlamaChat/cancel_command", &[("commandId", &id)])
        .await
        .unwrap();
    let took = sent.elapsed();
    assert_eq!(cancelled["commandStatus"], "cancelled", "{cancelled}");
    // The cancel is answered once generation has stopped, so the status has
    // its final form at once: no further token can arrive.
    let done = status(&server, &id).await;
    assert_eq!(done["commandStatus"], "completed", "{done}");
    assert_eq!(done["stop_reason"], "cancelled", "{done}");
    let tokens = done["completion_tokens"].as_u64().unwrap();
    let context = 1024 - done["prompt_tokens"].as_u64().unwrap();
    assert!(
        tokens < context,
        "{tokens} tokens: generation ran to the end of the context"
    );
    let again = status(&server, &id).await;
    assert_eq!(
        again["completion_tokens"], tokens,
        "tokens after the cancel"
    );
    println!("cancel answered after {took:?}, with {tokens} tokens generated");

    let next = start_chat(&server, &[("prompt", "Hi"), ("max_tokens", "5")]).await;
    let (_, done) = finish(&server, &next).await;
    assert_eq!(done["completion_tokens"], 5, "{done}");
}

#[tokio::test]
async fn chats_beyond_the_slots_wait_in_order_and_beyond_the_queue_are_refused_as_queue_full() {
    let root = Server::root().unwrap();
    let module = ModuleDir::llama_chat(&root.path().join("modules"), "small").unwrap();
    module.set_env("CPAI_MODULE_LLAMA_PARALLEL", "2").unwrap();
    module.set_env("CPAI_MODULE_LLAMA_QUEUE", "1").unwrap();
    let server = Server::start(root, &["--no-install"]).await.unwrap();
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    let long = [("prompt", "Write a long story."), ("max_tokens", "0")];
    let first = start_chat(&server, &long).await;
    let second = start_chat(&server, &long).await;

    // Both slots are busy: the third waits, the fourth is refused.
    let short = [("prompt", "Hi"), ("max_tokens", "7")];
    let (_, third) = server.post_form("/v1/text/chat", &short).await.unwrap();
    assert_eq!(third["commandStatus"], "queued", "{third}");
    assert_eq!(third["queuePosition"], 1, "{third}");
    let third = third["commandId"].as_str().unwrap().to_owned();
    assert_eq!(status(&server, &third).await["commandStatus"], "queued");
    let (code, fourth) = server.post_form("/v1/text/chat", &short).await.unwrap();
    assert_eq!(code, 200, "CodeProject answers command failures with 200");
    assert_eq!(fourth["success"], false, "{fourth}");
    assert_eq!(fourth["errorCode"], "queue_full", "{fourth}");
    assert!(
        fourth["error"]
            .as_str()
            .unwrap()
            .contains("all 2 slots are in use and 1 commands wait"),
        "{fourth}"
    );

    // The module's status says so, within its 2-second interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = server.module_status("LlamaChat").await.unwrap();
        let load = &entry["statusData"]["longCommands"];
        if *load == json!({"slots": 2, "busy": 2, "queued": 1}) {
            assert!(entry["statusData"]["tokensPerSecond"].as_f64().is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the load: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A slot frees up: the waiting chat runs to its end.
    let (_, cancelled) = server
        .post_form("/v1/LlamaChat/cancel_command", &[("commandId", &first)])
        .await
        .unwrap();
    assert_eq!(cancelled["success"], true, "{cancelled}");
    let (_, done) = finish(&server, &third).await;
    assert_eq!(done["commandStatus"], "completed", "{done}");
    assert_eq!(done["completion_tokens"], 7, "{done}");
    assert_eq!(status(&server, &second).await["commandStatus"], "running");
    server
        .post_form("/v1/LlamaChat/cancel_command", &[("commandId", &second)])
        .await
        .unwrap();
}

#[tokio::test]
async fn max_tokens_is_exact_and_the_same_seed_gives_the_same_reply() {
    let server = Server::with_llama_chat("tiny").await.unwrap();
    let mut replies = Vec::new();
    for seed in ["7", "7", "8"] {
        let values = [
            ("prompt", "Hello"),
            ("max_tokens", "23"),
            ("temperature", "0.9"),
            ("seed", seed),
        ];
        let id = start_chat(&server, &values).await;
        let (_, done) = finish(&server, &id).await;
        assert_eq!(done["completion_tokens"], 23, "{done}");
        assert_eq!(done["finish_reason"], "length");
        assert_eq!(done["seed"], seed.parse::<u64>().unwrap());
        replies.push(done["reply"].as_str().unwrap().to_owned());
    }
    assert_eq!(replies[0], replies[1], "same seed, same reply");
    assert_ne!(replies[0], replies[2], "another seed, another reply");
}

#[tokio::test]
async fn bad_chat_input_gets_clear_errors_and_the_module_keeps_serving() {
    let server = Server::with_llama_chat("tiny").await.unwrap();
    // No prompt: the module answers at once.
    let (_, body) = server
        .post_form("/v1/text/chat", &[("max_tokens", "5")])
        .await
        .unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"], "missing value 'prompt'", "{body}");

    // A temperature outside the route map's range: refused before queueing.
    let (code, body) = server
        .post_form("/v1/text/chat", &[("prompt", "hi"), ("temperature", "-1")])
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_error(&body, "input 'temperature'");

    // max_tokens beyond the context.
    let (_, body) = server
        .post_form("/v1/text/chat", &[("prompt", "hi"), ("max_tokens", "5000")])
        .await
        .unwrap();
    assert_eq!(body["success"], false, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("max_tokens 5000 does not fit") && error.contains("context holds 1024"),
        "{error}"
    );

    // A prompt longer than the context.
    let long = "the quick brown fox ".repeat(400);
    let (_, body) = server
        .post_form("/v1/text/chat", &[("prompt", &long)])
        .await
        .unwrap();
    assert_error(&body, "but the context holds 1024");

    // Still serving, and a plain JSON body works as well as a form.
    let body: Value = server
        .http
        .post(server.url("/v1/text/chat"))
        .json(&json!({"prompt": "hi", "max_tokens": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, done) = finish(&server, body["commandId"].as_str().unwrap()).await;
    assert_eq!(done["completion_tokens"], 3, "{done}");
}

#[tokio::test]
async fn a_missing_model_file_is_one_clear_error() {
    let root = Server::root().unwrap();
    let module = ModuleDir::llama_chat(&root.path().join("modules"), "tiny").unwrap();
    module
        .set_env("CPAI_MODULE_LLAMA_MODEL_FILENAME", "no-such-model.gguf")
        .unwrap();
    let server = Server::start(root, &["--no-install"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let entry = loop {
        let log = server
            .get_json("/v1/log/list?count=200&moduleId=LlamaChat")
            .await
            .unwrap();
        let found = log["entries"].as_array().unwrap().iter().find(|e| {
            e["entry"]
                .as_str()
                .is_some_and(|t| t.contains("no-such-model.gguf does not exist"))
        });
        if let Some(entry) = found {
            break entry.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no clear error in the log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["level"], "error", "{entry}");
    assert!(
        entry["entry"]
            .as_str()
            .unwrap()
            .contains("CPAI_MODULE_LLAMA_MODEL_FILENAME"),
        "{entry}"
    );
    assert_ne!(
        server.module_status("LlamaChat").await.unwrap()["status"],
        "Started"
    );
    // Whether the chat finds the module between launches ("is not running")
    // or is queued just as a relaunch fails ("exited unexpectedly"), the
    // client is told the cause.
    let (_, body) = server
        .post_form("/v1/text/chat", &[("prompt", "hi")])
        .await
        .unwrap();
    assert_eq!(body["success"], false, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("LlamaChat") && error.contains("no-such-model.gguf does not exist"),
        "{body}"
    );
}
