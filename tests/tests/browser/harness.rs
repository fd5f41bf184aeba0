//! The WebDriver session, and the servers and pages the tests open in it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use modhost_tests::{profile_dir, workspace_root, ModuleDir, Server};
use serde_json::json;

/// One browser test at a time.
pub(crate) static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chromedriver process and a headless Chromium session on it.
pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn start() -> Browser {
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
    pub(crate) async fn text(&self, css: &str) -> Option<String> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.ok(),
            Err(_) => None,
        }
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    pub(crate) async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
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

    pub(crate) async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Replaces the value of the input `css` with `text`.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Saves a PNG of the page as `target/screenshots/<name>.png`.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
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

/// Opens the explorer and waits until LlamaChat's UI is injected.
pub(crate) async fn open_chat(browser: &Browser, server: &Server) {
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
pub(crate) const FINAL: &[&str] = &["done", "cancelled", "failed"];

/// modhost with a LlamaChat stand-in on the official Python SDK that answers
/// with the prompt (`tests/modules/scripted_chat`) behind the real
/// explore.html, started.
pub(crate) async fn scripted_chat_server() -> Server {
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

/// Serves `page` to every GET on a port of its own, from a thread that
/// lives as long as the test process; returns its URL.
pub(crate) fn serve_page(page: String) -> String {
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
