//! The dashboard and the explorer in headless Chromium (Debian's `chromium`
//! and `chromium-driver`), driven over WebDriver with `fantoccini`, against
//! the real server and the real LlamaChat module on a generated demo model.
//! Screenshots of the dashboard and of a finished chat are saved under
//! `target/screenshots/` for review.
//!
//! Tests take turns (one browser at a time: the machine has few cores).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use modhost_tests::{profile_dir, workspace_root, ModuleDir, Server};
use serde_json::{json, Value};

/// One browser test at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chromedriver process and a headless Chromium session on it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = find_program(&["chromedriver", "chromium-driver"]).expect(
            "chromedriver is missing: the browser tests need Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver); .ci/run installs them",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        // As root Chromium needs --no-sandbox; the networking flags keep it
        // from calling out to Google's services on a closed network.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        let mut options = json!({ "args": args });
        if let Some(chromium) = find_program(&["chromium", "chromium-browser"]) {
            options["binary"] = json!(chromium);
        }
        caps.insert("goog:chromeOptions".into(), options);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The text of the first element matching `css`, or None if there is none.
    async fn text(&self, css: &str) -> Option<String> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.ok(),
            Err(_) => None,
        }
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css).await;
            if let Some(text) = text.as_deref().filter(|t| ok(t)) {
                return text.to_owned();
            }
            if Instant::now() > deadline {
                self.screenshot("failure").await;
                panic!("{css} never got the expected text; last: {text:?} (screenshot: target/screenshots/failure.png)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Replaces the value of the input `css` with `text`.
    async fn fill(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Saves a PNG of the page as `target/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 1000,
            "screenshot {name} is not a PNG of a page ({} bytes)",
            png.len()
        );
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("target dir")
        .join("screenshots")
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// modhost with the real LlamaChat module on the `small` demo model (slow
/// enough to watch a reply grow and to stop it midway).
async fn llama_server() -> Server {
    let root = Server::root().unwrap();
    ModuleDir::llama_chat(&root.path().join("modules"), "small").unwrap();
    let server = Server::start(root, &["--no-install"]).await.unwrap();
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    server
}

/// Opens the explorer and waits until LlamaChat's UI is injected.
async fn open_chat(browser: &Browser, server: &Server) {
    browser
        .client
        .goto(&server.url("/explorer.html"))
        .await
        .unwrap();
    browser
        .wait_text(
            "button[data-category=\"Generative AI\"]",
            Duration::from_secs(20),
            |_| true,
        )
        .await;
    browser
        .click("button[data-category=\"Generative AI\"]")
        .await;
    browser
        .wait_text("#LlamaChat_status", Duration::from_secs(20), |t| {
            !t.is_empty()
        })
        .await;
}

/// What the chat UI's status says once a reply has ended.
const FINAL: &[&str] = &["done", "cancelled", "failed"];

#[tokio::test]
async fn the_dashboard_shows_llamachat_started_its_log_and_restart_brings_it_back() {
    let _turn = TURN.lock().await;
    let server = llama_server().await;
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
async fn a_chat_reply_grows_in_the_explorer_and_ends_with_statistics() {
    let _turn = TURN.lock().await;
    let server = llama_server().await;
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
    let server = llama_server().await;
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

#[tokio::test]
async fn the_dashboard_lists_a_running_chat_and_cancels_it() {
    let _turn = TURN.lock().await;
    let server = llama_server().await;
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

/// modhost with a LlamaChat stand-in on the official Python SDK that answers
/// with the prompt (`tests/modules/scripted_chat`) behind the real
/// explore.html, started.
async fn scripted_chat_server() -> Server {
    let root = Server::root().unwrap();
    let module = ModuleDir::python_module(
        &root.path().join("modules"),
        "LlamaChat",
        &workspace_root().join("tests/modules/scripted_chat"),
    )
    .unwrap();
    std::fs::copy(
        workspace_root().join("modules/llama_chat/explore.html"),
        module.path.join("explore.html"),
    )
    .unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    server
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

/// With an API key set, the dashboard asks for it once, keeps it for the
/// tab, and works from then on.
#[tokio::test]
async fn the_dashboard_asks_for_the_api_key_once_and_keeps_it() {
    let _turn = TURN.lock().await;
    let root = Server::root().unwrap();
    let dir = root.path().join("modules/Fake");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("modulesettings.json"),
        r#"{ "Modules": { "Fake": { "Name": "Fake", "Version": "1.0.0",
            "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": true },
            "RouteMaps": [ { "Name": "w", "Route": "fake/w", "Method": "POST", "Command": "w" } ] } } }"#,
    )
    .unwrap();
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

/// Serves `page` to every GET on a port of its own, from a thread that
/// lives as long as the test process; returns its URL.
fn serve_page(page: String) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                page.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(page.as_bytes());
        }
    });
    url
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
