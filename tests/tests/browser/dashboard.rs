//! The dashboard: module status, logs, running jobs, the API key prompt, a
//! phone-sized window, and skills.

use std::time::{Duration, Instant};

use fantoccini::Locator;
use modhost_tests::{workspace_root, ModuleDir, Server};
use serde_json::{json, Value};

use crate::harness::{Browser, TURN};

#[tokio::test]
async fn the_dashboard_shows_llamachat_started_its_log_and_restart_brings_it_back() {
    let _turn = TURN.lock().await;
    let server = Server::with_llama_chat("small").await.unwrap();
    let browser = Browser::start().await;
    browser.client.goto(&server.url("/")).await.unwrap();

    let row = "tr[data-module-id=\"LlamaChat\"]";
    browser
        .wait_text(&format!("{row} .status"), Duration::from_secs(20), |t| {
            t == "Started"
        })
        .await;
    browser
        .wait_text("#server-version", Duration::from_secs(10), |t| {
            t.contains("0.1.0")
        })
        .await;
    browser
        .wait_text("#cpu", Duration::from_secs(10), |t| t.contains('%'))
        .await;
    assert_eq!(
        browser.text(&format!("{row} .version")).await.as_deref(),
        Some("1.7.1")
    );
    assert_eq!(
        browser.text(&format!("{row} .device")).await.as_deref(),
        Some("CPU")
    );
    // LlamaChat's slots and throughput, from its status.
    browser
        .wait_text(&format!("{row} .load"), Duration::from_secs(10), |t| {
            t.starts_with("0/4 slots busy") && t.ends_with("tokens/s")
        })
        .await;
    // The live log tail has the module's start-up lines; filtered to LlamaChat
    // it shows nothing else.
    browser
        .wait_text("#log", Duration::from_secs(10), |t| t.contains("LlamaChat"))
        .await;
    browser
        .client
        .find(Locator::Css("#log-filter"))
        .await
        .unwrap()
        .select_by_value("LlamaChat")
        .await
        .unwrap();
    // The tail refreshes every 1-2 s; the filter applies by then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let categories = browser
            .client
            .execute(
                "return [...document.querySelectorAll('#log .log-entry')].map(e => e.dataset.category)",
                vec![],
            )
            .await
            .unwrap();
        let categories = categories.as_array().unwrap().clone();
        if !categories.is_empty() && categories.iter().all(|c| c == "LlamaChat") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log filtered to LlamaChat shows {categories:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shot = browser.screenshot("dashboard").await;
    println!("dashboard screenshot: {}", shot.display());

    let before = server.module_status("LlamaChat").await.unwrap();
    browser
        .click(&format!("{row} button[data-action=\"restart\"]"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_pid = loop {
        let now = server.module_status("LlamaChat").await.unwrap();
        if now["launches"].as_u64() > before["launches"].as_u64() && now["status"] == "Started" {
            assert_ne!(now["pid"], before["pid"]);
            break now["pid"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "Restart did not bring LlamaChat back: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    browser
        .wait_text(&format!("{row} .status"), Duration::from_secs(20), |t| {
            t == "Started"
        })
        .await;
    // The page followed the restart, not just kept its old row: its log tail
    // names the new process.
    let started = format!("started module LlamaChat (pid {new_pid})");
    browser
        .wait_text("#log", Duration::from_secs(20), |t| t.contains(&started))
        .await;
}

#[tokio::test]
async fn the_dashboard_lists_a_running_chat_and_cancels_it() {
    let _turn = TURN.lock().await;
    let server = Server::with_llama_chat("small").await.unwrap();
    let (_, started) = server
        .post_form(
            "/v1/text/chat",
            &[("prompt", "Write a long story."), ("max_tokens", "0")],
        )
        .await
        .unwrap();
    let id = started["commandId"].as_str().unwrap().to_owned();
    let browser = Browser::start().await;
    browser.client.goto(&server.url("/")).await.unwrap();
    let row = format!("tr[data-job-id=\"{id}\"]");
    browser
        .wait_text(&format!("{row} .progress"), Duration::from_secs(20), |t| {
            t.ends_with("tokens") && t != "0 tokens"
        })
        .await;
    browser.screenshot("dashboard-jobs").await;
    browser
        .click(&format!("{row} button[data-action=\"cancel-job\"]"))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
        if job["job"]["status"] == "cancelled" {
            assert_eq!(job["job"]["result"]["stop_reason"], "cancelled", "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dashboard refreshes every 2 s: the cancelled job leaves the list.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = browser
            .client
            .execute(
                &format!(
                    "return document.querySelector('{row}') === null \
                     && !document.getElementById('no-jobs').hidden"
                ),
                vec![],
            )
            .await
            .unwrap();
        if gone == true {
            break;
        }
        assert!(Instant::now() < deadline, "the cancelled job stayed listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With an API key set, the dashboard asks for it once, keeps it for the
/// tab, and works from then on.
#[tokio::test]
async fn the_dashboard_asks_for_the_api_key_once_and_keeps_it() {
    let _turn = TURN.lock().await;
    let root = Server::root().unwrap();
    let manifest = r#"{ "Modules": { "Fake": { "Name": "Fake", "Version": "1.0.0",
            "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": true },
            "RouteMaps": [ { "Name": "w", "Route": "fake/w", "Method": "POST", "Command": "w" } ] } } }"#;
    ModuleDir::with_manifest(&root.path().join("modules"), "Fake", manifest).unwrap();
    const KEY: &str = "browser-key-0123456789";
    let server = Server::start(root, &["--api-key", KEY]).await.unwrap();
    let browser = Browser::start().await;
    browser.client.goto(&server.url("/")).await.unwrap();
    // The first refused request asks; nothing else may touch the page while
    // the prompt is open (the driver would dismiss it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let question = loop {
        if let Ok(text) = browser.client.get_alert_text().await {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never asked for the key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(question.contains("API key"), "{question}");
    browser.client.send_alert_text(KEY).await.unwrap();
    browser.client.accept_alert().await.unwrap();
    let row = "tr[data-module-id=\"Fake\"] .status";
    browser
        .wait_text(row, Duration::from_secs(20), |t| !t.is_empty())
        .await;
    let stored = browser
        .client
        .execute("return sessionStorage.getItem('modhost.apiKey')", vec![])
        .await
        .unwrap();
    assert_eq!(stored, KEY);
    // A reload uses the kept key: no second question.
    browser.client.refresh().await.unwrap();
    browser
        .wait_text(row, Duration::from_secs(20), |t| !t.is_empty())
        .await;
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "asked for the key again"
    );
    browser.screenshot("dashboard-with-key").await;
}

/// At a phone's width (420 px) the dashboard's header stays on one line and
/// every module's Start, Stop and Restart buttons are on screen; a module
/// that does not start by itself reads "Ready"; the explorer opens on the
/// chat's tab.
#[tokio::test]
async fn the_dashboard_fits_a_phone_and_says_ready() {
    let _turn = TURN.lock().await;
    let root = Server::root().unwrap();
    let modules = root.path().join("modules");
    ModuleDir::python_module(
        &modules,
        "LlamaChat",
        &workspace_root().join("tests/modules/scripted_chat"),
    )
    .unwrap();
    let demo = ModuleDir::python_demo(&modules).unwrap();
    let manifest = demo.path.join("modulesettings.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"AutoStart\": true", "\"AutoStart\": false"),
    )
    .unwrap();
    // A running module whose tab comes before the chat's alphabetically.
    let vision = ModuleDir::python_module(
        &modules,
        "VisionDemo",
        &workspace_root().join("tests/modules/python_demo"),
    )
    .unwrap();
    let manifest = vision.path.join("modulesettings.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("PythonDemo", "VisionDemo")
            .replace("\"Testing\"", "\"Computer Vision\"")
            .replace("demo/", "vision-demo/"),
    )
    .unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    for id in ["LlamaChat", "VisionDemo"] {
        server
            .wait_for_status(id, "Started", Duration::from_secs(60))
            .await
            .unwrap();
    }
    let browser = Browser::start().await;
    browser.client.set_window_size(420, 900).await.unwrap();
    browser.client.goto(&server.url("/")).await.unwrap();
    let ready = browser
        .wait_text(
            "tr[data-module-id=\"PythonDemo\"] .status",
            Duration::from_secs(20),
            |t| !t.is_empty(),
        )
        .await;
    assert_eq!(ready, "Ready");
    browser
        .wait_text(
            "tr[data-module-id=\"LlamaChat\"] .status",
            Duration::from_secs(20),
            |t| t == "Started",
        )
        .await;
    let layout: Value = browser
        .client
        .execute(
            "const header = document.querySelector('.topbar').getBoundingClientRect();\
             const buttons = [...document.querySelectorAll('#modules button')]\
               .map(b => b.getBoundingClientRect());\
             return {header: header.height, width: document.documentElement.clientWidth,\
                     right: Math.max(...buttons.map(b => b.right)), buttons: buttons.length,\
                     scroll: document.documentElement.scrollWidth};",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("dashboard-420px").await;
    let width = layout["width"].as_f64().unwrap();
    assert!(
        layout["header"].as_f64().unwrap() < 56.0,
        "header wraps: {layout}"
    );
    assert_eq!(layout["buttons"], 9, "{layout}");
    assert!(
        layout["right"].as_f64().unwrap() <= width,
        "buttons off screen: {layout}"
    );
    assert!(
        layout["scroll"].as_f64().unwrap() <= width,
        "the page scrolls sideways: {layout}"
    );

    // The explorer, opened without a tab named, shows the chat's.
    browser
        .client
        .goto(&server.url("/explorer.html"))
        .await
        .unwrap();
    for category in ["Computer Vision", "Generative AI"] {
        browser
            .wait_text(
                &format!("button[data-category=\"{category}\"]"),
                Duration::from_secs(20),
                |t| !t.is_empty(),
            )
            .await;
    }
    let selected = browser
        .text("button[aria-selected=\"true\"]")
        .await
        .unwrap_or_default();
    assert_eq!(selected, "Generative AI");
    browser.screenshot("explorer-420px").await;
}

#[tokio::test]
async fn skills_show_on_the_dashboard_run_from_the_explorer_and_cancel_as_jobs() {
    let _turn = TURN.lock().await;
    let built = modhost_tests::skills::test_skills().unwrap();
    let root = Server::root().unwrap();
    let skills = root.path().join("skills/demo");
    std::fs::create_dir_all(&skills).unwrap();
    for name in ["noop", "spin"] {
        std::fs::copy(
            built.join(format!("{name}.wasm")),
            skills.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let server = Server::start(root, &["--no-install"]).await.unwrap();
    let browser = Browser::start().await;

    // The dashboard lists the skills and their limits.
    browser.client.goto(&server.url("/")).await.unwrap();
    browser
        .wait_text(
            "tr[data-skill=\"demo/noop\"]",
            Duration::from_secs(10),
            |t| t.contains("demo/noop"),
        )
        .await;
    let about = browser
        .wait_text("#skills-about", Duration::from_secs(5), |t| {
            t.contains("CPU")
        })
        .await;
    assert!(
        about.contains("60 s of CPU") && about.contains("256 MiB"),
        "{about}"
    );

    // A spinning skill's run is a running job there, with a Cancel button.
    let run = server
        .http
        .post(server.url("/v1/skills/demo/spin/run"))
        .body("{}")
        .send();
    let running = tokio::spawn(run);
    browser
        .wait_text("#jobs tr td:first-child", Duration::from_secs(10), |t| {
            t == "skill:demo/spin"
        })
        .await;
    browser.screenshot("dashboard-skills").await;
    browser
        .click("#jobs button[data-action=\"cancel-job\"]")
        .await;
    let answer = running.await.unwrap().unwrap();
    assert_eq!(answer.status(), 503);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["errorCode"], "cancelled", "{body}");

    // The explorer's Skills tab runs one with JSON input.
    browser
        .client
        .goto(&server.url("/explorer.html#Skills"))
        .await
        .unwrap();
    browser
        .wait_text("#skill-about", Duration::from_secs(15), |t| {
            t.contains("Returns its input")
        })
        .await;
    browser.fill("#skill-input", r#"{"hello": "skills"}"#).await;
    browser.click("#skill-run").await;
    let status = browser
        .wait_text("#skill-status", Duration::from_secs(15), |t| {
            t.starts_with("done")
        })
        .await;
    assert!(status.contains("job "), "{status}");
    let output = browser.text("#skill-output").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&output).unwrap(),
        json!({"hello": "skills"})
    );
    browser.screenshot("explorer-skills").await;
}
