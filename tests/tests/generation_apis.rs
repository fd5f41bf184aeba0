//! modhost's OpenAI- and Ollama-compatible APIs (docs/protocol.md §4.7)
//! over the real LlamaChat module on a generated demo model, driven by the
//! official Python clients (`tests/clients/generation_clients.py`), plus the
//! error shapes those clients read.

use std::process::Command;
use std::time::Duration;

use modhost_tests::{python_venv, workspace_root, InProcess, ModuleDir, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn the_official_openai_and_ollama_clients_chat_with_llamachat() {
    let server = Server::with_llama_chat("tiny").await.unwrap();
    let venv = python_venv().unwrap();
    let script = workspace_root().join("tests/clients/generation_clients.py");
    let base = server.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(venv.join("bin/python3"))
            .arg(script)
            .arg(base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "the client checks failed ({}):\n{stdout}\n{stderr}\n---- modhost ----\n{}",
        output.status,
        server.output()
    );
}

/// Requests the clients cannot make wrong, made wrong: answered in each
/// API's error shape, with the status its clients expect.
#[tokio::test]
async fn bad_requests_get_each_apis_error_shape() {
    let server = InProcess::start(Server::root().unwrap(), &[]).unwrap();
    let post = |path: &'static str, body: Value| {
        let request = server.http.post(server.url(path)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    // No module serves chat here.
    let (status, body) = post(
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no running module serves chat"));
    let (status, body) = post("/v1/chat/completions", json!({"model": "m"})).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("messages")),
        "{body}"
    );
    let (status, body) = post("/v1/completions", json!({"prompt": ["a", "b"]})).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("prompt")),
        "{body}"
    );
    let response = server
        .http
        .post(server.url("/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    // What modhost does not do yet is refused, naming the field, not ignored.
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (field, value, param) in [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
            "tools",
        ),
        (
            "response_format",
            json!({"type": "json_object"}),
            "response_format",
        ),
        ("logprobs", json!(true), "logprobs"),
        ("n", json!(3), "n"),
    ] {
        let mut body = json!({"messages": hi});
        body[field] = value;
        let (status, body) = post("/v1/chat/completions", body).await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &json!(param)),
            "{body}"
        );
    }
    for (field, value, needle) in [
        ("format", json!("json"), "format"),
        ("images", json!(["aGk="]), "images"),
        ("tools", json!([{"type": "function"}]), "tool calling"),
    ] {
        let mut body = json!({"model": "m", "messages": hi});
        body[field] = value;
        let (status, body) = post("/api/chat", body).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    let models = server.get_json("/v1/models").await.unwrap();
    assert_eq!(models, json!({"object": "list", "data": []}));

    let (status, body) = post(
        "/api/chat",
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no running module serves chat"),
        "{body}"
    );
    let (status, body) = post("/api/pull", json!({"model": "llama3"})).await;
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("/api/chat"),
        "{body}"
    );
    assert_eq!(
        server.get_json("/api/tags").await.unwrap(),
        json!({"models": []})
    );

    // A module that serves chat but is not running: 503 with Retry-After.
    let root = Server::root().unwrap();
    let manifest = r#"{ "Modules": { "Idle": { "Name": "Idle", "Version": "1.0.0",
            "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": false },
            "RouteMaps": [ { "Route": "idle/chat", "Command": "chat", "Implements": "chat" } ] } } }"#;
    ModuleDir::with_manifest(&root.path().join("modules"), "Idle", manifest).unwrap();
    let idle = InProcess::start(root, &[]).unwrap();
    let chat = json!({"model": "Idle", "messages": [{"role": "user", "content": "hi"}]});
    for path in ["/v1/chat/completions", "/api/chat"] {
        let response = idle
            .http
            .post(idle.url(path))
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap();
        assert!(message.contains("not running"), "{path}: {body}");
    }

    // With an API key: 401 in each API's shape (to a client without it;
    // the InProcess client sends the key).
    let anonymous = reqwest::Client::new();
    let keyed =
        InProcess::start(Server::root().unwrap(), &["--api-key", "k3y-for-the-tests"]).unwrap();
    let response = anonymous.get(keyed.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    let response = anonymous.get(keyed.url("/api/tags")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    let response = keyed
        .http
        .get(keyed.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A module on the official CodeProject Python SDK that declares a chat
/// route is reached through both APIs; `ollama_port` serves them on a
/// second port.
#[tokio::test]
async fn a_python_sdk_module_serves_the_apis_on_a_second_port_too() {
    let root = Server::root().unwrap();
    ModuleDir::python_module(
        &root.path().join("modules"),
        "ScriptedChat",
        &workspace_root().join("tests/modules/scripted_chat"),
    )
    .unwrap();
    let ollama_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let server = Server::start(root, &["--ollama-port", &ollama_port])
        .await
        .unwrap();
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    let models = server.get_json("/v1/models").await.unwrap();
    assert_eq!(models["data"][0]["id"], "LlamaChat", "{models}");
    let messages = json!([{"role": "user", "content": "first"},
                          {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": "Echo this back"}]);
    let reply: Value = server
        .http
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": "llamachat", "messages": messages}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"], "Echo this back",
        "{reply}"
    );
    assert_eq!(reply["usage"]["completion_tokens"], 14, "{reply}");

    // Ollama's port: the streamed chat, a line per piece.
    let ollama = format!("http://127.0.0.1:{ollama_port}");
    let version: Value = server
        .http
        .get(format!("{ollama}/api/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(version["version"].is_string(), "{version}");
    let text = server
        .http
        .post(format!("{ollama}/api/chat"))
        .json(&json!({"model": "LlamaChat", "messages": messages}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // At least a piece and the end (a module that does not push its
    // progress is polled every 250 ms: this short reply may come in one).
    assert!(lines.len() >= 2, "{text}");
    let joined: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "Echo this back");
    let last = lines.last().unwrap();
    assert_eq!(
        (&last["done"], &last["done_reason"]),
        (&json!(true), &json!("stop")),
        "{last}"
    );
}
