//! The explorer: LlamaChat's chat UI (a growing reply, stop, markup shown
//! as text, a page without modhost's client) and a module UI written for
//! CodeProject's explorer. LlamaChat runs on the `small` demo model, slow
//! enough to watch a reply grow and to stop it midway.

use std::time::{Duration, Instant};

use modhost_tests::{workspace_root, ModuleDir, Server};
use serde_json::{json, Value};

use crate::harness::{open_chat, scripted_chat_server, serve_page, Browser, FINAL, TURN};

#[tokio::test]
async fn a_chat_reply_grows_in_the_explorer_and_ends_with_statistics() {
    let _turn = TURN.lock().await;
    let server = Server::with_llama_chat("small").await.unwrap();
    let browser = Browser::start().await;
    open_chat(&browser, &server).await;

    browser
        .fill("#LlamaChat_prompt", "Tell me about the stars.")
        .await;
    browser.fill("#LlamaChat_max_tokens", "250").await;
    browser.click("#LlamaChat_send").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lengths = Vec::new();
    let status = loop {
        let reply = browser.text("#LlamaChat_reply").await.unwrap_or_default();
        if lengths.last() != Some(&reply.len()) {
            lengths.push(reply.len());
        }
        let status = browser.text("#LlamaChat_status").await.unwrap_or_default();
        if FINAL.contains(&status.as_str()) {
            break status;
        }
        assert!(Instant::now() < deadline, "the chat never finished");
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    // Done, as CodeProject shows it; why it ended is in the statistics.
    assert_eq!(status, "done");
    let growing: Vec<&usize> = lengths.iter().filter(|&&l| l > 0).collect();
    assert!(
        growing.len() >= 3,
        "the reply appeared at once rather than growing: {lengths:?}"
    );
    assert!(growing.windows(2).all(|w| w[0] < w[1]), "{lengths:?}");
    let stats = browser
        .wait_text("#LlamaChat_stats", Duration::from_secs(5), |t| {
            !t.is_empty()
        })
        .await;
    assert!(stats.contains("250"), "token count missing from {stats:?}");
    assert!(stats.contains("tokens/s"), "{stats:?}");
    assert!(stats.contains("ended at max tokens"), "{stats:?}");
    // The reply came over the job's event stream, not by polling.
    let transport = browser
        .client
        .execute(
            "return document.getElementById('LlamaChat_status').dataset.transport",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(transport, "stream");
    let shot = browser.screenshot("chat").await;
    println!("chat screenshot: {}; stats: {stats}", shot.display());
}

#[tokio::test]
async fn stop_mid_generation_shows_the_chat_cancelled() {
    let _turn = TURN.lock().await;
    let server = Server::with_llama_chat("small").await.unwrap();
    let browser = Browser::start().await;
    open_chat(&browser, &server).await;

    browser
        .fill("#LlamaChat_prompt", "Write a long story.")
        .await;
    browser.fill("#LlamaChat_max_tokens", "0").await;
    browser.click("#LlamaChat_send").await;
    browser
        .wait_text("#LlamaChat_reply", Duration::from_secs(30), |t| {
            t.len() > 10
        })
        .await;
    browser.click("#LlamaChat_stop").await;
    let status = browser
        .wait_text("#LlamaChat_status", Duration::from_secs(20), |t| {
            FINAL.contains(&t)
        })
        .await;
    assert_eq!(status, "cancelled");
    let stats = browser.text("#LlamaChat_stats").await.unwrap_or_default();
    assert!(stats.contains("cancelled"), "{stats:?}");
    browser.screenshot("chat-cancelled").await;
}

/// A reply carrying markup, from a LlamaChat stand-in on the official Python
/// SDK that answers with the prompt (`tests/modules/scripted_chat`) behind
/// the real explore.html.
#[tokio::test]
async fn markup_in_a_reply_is_shown_as_text_and_never_runs() {
    let _turn = TURN.lock().await;
    let server = scripted_chat_server().await;
    let browser = Browser::start().await;
    open_chat(&browser, &server).await;

    let payload =
        r#"<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>"#;
    browser.fill("#LlamaChat_prompt", payload).await;
    browser.click("#LlamaChat_send").await;
    browser
        .wait_text("#LlamaChat_status", Duration::from_secs(30), |t| {
            FINAL.contains(&t)
        })
        .await;
    let shown = browser.text("#LlamaChat_reply").await.unwrap();
    assert_eq!(shown, payload, "the reply must appear literally");
    let probe: Value = browser
        .client
        .execute(
            "return {pwned: window.pwned ?? null, children: document.getElementById('LlamaChat_reply').children.length}",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        probe,
        json!({"pwned": null, "children": 0}),
        "markup in the reply was interpreted"
    );
    browser.screenshot("chat-markup").await;
}

/// A module UI written for CodeProject's explorer (inline handlers, its
/// helper API, the shared `#results`) works in modhost's explorer: a plain
/// command, a long process and its cancel; a refused request and a script
/// error show on the page. The UI is modhost's own fixture,
/// `tests/modules/cpai_ui/explore.html`, on the Python demo module.
#[tokio::test]
async fn a_module_ui_written_for_codeproject_runs_in_the_explorer() {
    let _turn = TURN.lock().await;
    let root = Server::root().unwrap();
    let module = ModuleDir::python_demo(&root.path().join("modules")).unwrap();
    std::fs::copy(
        workspace_root().join("tests/modules/cpai_ui/explore.html"),
        module.path.join("explore.html"),
    )
    .unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("PythonDemo", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    let browser = Browser::start().await;
    browser
        .client
        .goto(&server.url("/explorer.html#Testing"))
        .await
        .unwrap();
    browser
        .wait_text(
            "section[data-module-id=\"PythonDemo\"] h2",
            Duration::from_secs(20),
            |t| !t.is_empty(),
        )
        .await;
    let long = Duration::from_secs(30);

    // A plain command: the reply and the processing table in #results.
    browser.click("#PythonDemo_echoBtn").await;
    let results = browser
        .wait_text("#results", long, |t| t.starts_with("Echo:"))
        .await;
    assert!(results.contains("hello from a CodeProject UI"), "{results}");
    assert!(results.contains("Processed by"), "{results}");

    // A long process, followed by polling get_command_status.
    browser.click("#PythonDemo_countBtn").await;
    browser
        .wait_text("#results", long, |t| t.starts_with("Counting:"))
        .await;
    let done = browser
        .wait_text("#results", long, |t| t.starts_with("Done:"))
        .await;
    assert!(done.ends_with("29 30 (completed)"), "{done}");
    // Again, cancelled midway.
    browser.click("#PythonDemo_countBtn").await;
    browser
        .wait_text("#results", long, |t| t.starts_with("Counting: 1"))
        .await;
    browser.click("#PythonDemo_cancelBtn").await;
    let cancelled = browser
        .wait_text("#results", long, |t| t.starts_with("Done:"))
        .await;
    assert!(cancelled.ends_with("(cancelled)"), "{cancelled}");
    assert!(!cancelled.contains(" 30 "), "not cancelled: {cancelled}");

    // Bad input refused by the server: its error on the page.
    browser.click("#PythonDemo_badBtn").await;
    let status = browser
        .wait_text("#status", long, |t| t.contains("'n'"))
        .await;
    assert!(status.contains("at least 1"), "{status}");
    // A script error in the module UI: on the page, naming the module.
    browser.click("#PythonDemo_brokenBtn").await;
    let errors = browser
        .wait_text("#ui-errors-list", long, |t| !t.is_empty())
        .await;
    assert!(
        errors.contains("PythonDemo") && errors.contains("helperThatDoesNotExist"),
        "{errors}"
    );
    browser.screenshot("codeproject-module-ui").await;
}

/// LlamaChat's explorer UI in a page without modhost's client (as in
/// CodeProject's explorer, whose server.js defines `apiServiceUrl`): it
/// falls back to plain fetch and polling, and chats.
#[tokio::test]
async fn the_chat_ui_works_in_a_page_without_the_modhost_client() {
    let _turn = TURN.lock().await;
    let server = scripted_chat_server().await;
    let running = server.get_json("/v1/module/list/running").await.unwrap();
    let ui = &running["modules"][0]["uiElements"]["explorerUI"];
    let part = |name: &str| ui[name].as_str().unwrap().replace("_MID_", "LlamaChat_");
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <script>const apiServiceUrl = '{base}';</script><style>{css}</style></head>\
         <body>{html}<script>{script}</script></body></html>",
        base = server.base,
        css = part("css"),
        html = part("html"),
        script = part("script"),
    );
    // Served from another origin, as CodeProject's explorer would be.
    let page_url = serve_page(page);
    let browser = Browser::start().await;
    browser.client.goto(&page_url).await.unwrap();
    browser
        .fill("#LlamaChat_prompt", "Hello from elsewhere")
        .await;
    browser.click("#LlamaChat_send").await;
    let status = browser
        .wait_text("#LlamaChat_status", Duration::from_secs(30), |t| {
            FINAL.contains(&t)
        })
        .await;
    let error = browser.text("#LlamaChat_error").await;
    assert_eq!(status, "done", "{error:?}");
    assert_eq!(
        browser.text("#LlamaChat_reply").await.unwrap(),
        "Hello from elsewhere"
    );
    let probe: Value = browser
        .client
        .execute(
            "return {modhost: typeof window.modhost, transport: \
             document.getElementById('LlamaChat_status').dataset.transport}",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(probe, json!({"modhost": "undefined", "transport": "poll"}));
    browser.screenshot("chat-without-modhost-client").await;
}
