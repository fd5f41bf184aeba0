//! The real loop against a hand-rolled HTTP server speaking the queue
//! protocol: polls, replies, status posts, backoff, reconnects.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Once};
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::serve::BACKOFF_START;
use super::*;

/// One request the fake server received.
#[derive(Debug)]
struct Captured {
    target: String,
    content_type: String,
    body: String,
}

/// A minimal stand-in for the server's queue endpoints: polls take items
/// pushed by the test (or wait for one), replies and status posts are
/// captured in order. One request per connection (`Connection: close`).
struct FakeServer {
    url: String,
    items: mpsc::UnboundedSender<String>,
    replies: mpsc::UnboundedReceiver<Captured>,
    statuses: mpsc::UnboundedReceiver<Captured>,
    polls: watch::Receiver<Polls>,
}

/// The long polls the fake server holds open, waiting for an item.
#[derive(Debug, Clone, Copy, Default)]
struct Polls {
    /// Open now.
    outstanding: usize,
    /// The most that were open at once.
    peak: usize,
}

/// Counts a poll as outstanding while it lives.
struct Outstanding(watch::Sender<Polls>);

impl Outstanding {
    fn new(polls: &watch::Sender<Polls>) -> Self {
        polls.send_modify(|p| {
            p.outstanding += 1;
            p.peak = p.peak.max(p.outstanding);
        });
        Self(polls.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.send_modify(|p| p.outstanding -= 1);
    }
}

#[derive(Clone)]
struct FakeState {
    items: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    replies: mpsc::UnboundedSender<Captured>,
    statuses: mpsc::UnboundedSender<Captured>,
    /// Statuses to answer the next polls with before serving items.
    poll_failures: Arc<Mutex<VecDeque<u16>>>,
    /// Counts the polls waiting for an item, for [`FakeServer::wait_for_polls`].
    polls: watch::Sender<Polls>,
}

impl FakeServer {
    async fn start(poll_failures: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve_on(listener, poll_failures)
    }

    /// Serves on a listener the test bound.
    fn serve_on(listener: TcpListener, poll_failures: &[u16]) -> Self {
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let (items_tx, items_rx) = mpsc::unbounded_channel();
        let (replies_tx, replies_rx) = mpsc::unbounded_channel();
        let (statuses_tx, statuses_rx) = mpsc::unbounded_channel();
        let (polls_tx, polls_rx) = watch::channel(Polls::default());
        let state = FakeState {
            items: Arc::new(tokio::sync::Mutex::new(items_rx)),
            replies: replies_tx,
            statuses: statuses_tx,
            poll_failures: Arc::new(Mutex::new(poll_failures.iter().copied().collect())),
            polls: polls_tx,
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, state.clone()));
            }
        });
        Self {
            url: format!("http://{addr}/v1/"),
            items: items_tx,
            replies: replies_rx,
            statuses: statuses_rx,
            polls: polls_rx,
        }
    }

    /// Waits until exactly `n` polls are outstanding; returns the counts.
    async fn wait_for_polls(&mut self, n: usize) -> Polls {
        let polls = within(self.polls.wait_for(|p| p.outstanding == n)).await;
        *polls.expect("server alive")
    }

    fn push(&self, item: Value) {
        self.items.send(item.to_string()).expect("server alive");
    }

    async fn next_reply(&mut self) -> (Captured, Value) {
        let captured = within(self.replies.recv())
            .await
            .expect("reply channel open");
        let body = serde_json::from_str(&captured.body).expect("reply is JSON");
        (captured, body)
    }

    /// Pushes `item` and returns the reply posted for it.
    async fn call(&mut self, item: Value) -> Value {
        self.push(item);
        self.next_reply().await.1
    }
}

/// Fails the test instead of hanging when something never happens.
async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("timed out waiting for the module")
}

async fn serve_connection(mut stream: TcpStream, state: FakeState) {
    let Some((method, target, headers, body)) = read_request(&mut stream).await else {
        return;
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let captured = Captured {
        target: target.clone(),
        content_type: header("content-type"),
        body,
    };
    let (status, reply) = if method == "GET" && target.starts_with("/v1/queue/") {
        let failure = state.poll_failures.lock().pop_front();
        match failure {
            Some(code) => (code, String::from("scripted failure")),
            None => {
                let _outstanding = Outstanding::new(&state.polls);
                let item = async { state.items.lock().await.recv().await };
                tokio::select! {
                    item = item => match item {
                        Some(item) => (200, item),
                        None => (204, String::new()),
                    },
                    // The module gave up on this poll (its client timed out):
                    // the next item is for a poll that is still there.
                    () = closed(&mut stream) => return,
                }
            }
        }
    } else if method == "POST" && target.starts_with("/v1/queue/updatemodulestatus/") {
        let _ = state.statuses.send(captured);
        (200, "Module status updated".into())
    } else if method == "POST" && target.starts_with("/v1/queue/") {
        let _ = state.replies.send(captured);
        (200, "Response saved.".into())
    } else {
        (404, "not found".into())
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Resolves when the peer has closed the connection.
async fn closed(stream: &mut TcpStream) {
    let mut chunk = [0u8; 64];
    while let Ok(1..) = stream.read(&mut chunk).await {}
}

type RawRequest = (String, String, Vec<(String, String)>, String);

async fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((method, target, headers, String::from_utf8(body).ok()?))
}

/// Decodes an `application/x-www-form-urlencoded` value.
fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != key {
            return None;
        }
        let bytes = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    })
}

/// Starts `run_with` on its own thread (it builds its own runtime).
fn start_module(
    url: &str,
    parallelism: usize,
) -> (
    tokio::sync::oneshot::Receiver<ExitCode>,
    Arc<Probe>,
    std_mpsc::Sender<()>,
) {
    start_module_with_slots(url, parallelism, 1)
}

/// [`start_module`] for a module that runs `long_slots` long commands at once.
fn start_module_with_slots(
    url: &str,
    parallelism: usize,
    long_slots: usize,
) -> (
    tokio::sync::oneshot::Receiver<ExitCode>,
    Arc<Probe>,
    std_mpsc::Sender<()>,
) {
    let (mut module, probe, gate) = TestModule::new();
    module.long_slots = long_slots;
    let mut ctx = ModuleContext::new("Echo", url);
    ctx.parallelism = parallelism;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(run_with(module, ctx, RunOptions::default()));
    });
    (done_rx, probe, gate)
}

/// Warnings and errors logged in this test process: how a test sees what a
/// module reports only in its log. Tests running at the same time log here
/// too, so each looks for something unique to it (its server's port).
static LOG: Mutex<String> = Mutex::new(String::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock().push_str(&String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends warnings and errors to [`LOG`] from now on. A global subscriber,
/// not a scoped one: the module logs from its own runtime's threads.
fn capture_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(|| LogSink)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test installs a global subscriber");
    });
}

/// How many logged lines (since [`capture_log`]) contain `text`.
fn logged(text: &str) -> usize {
    LOG.lock().lines().filter(|l| l.contains(text)).count()
}

/// Waits until a line containing `text` is logged.
async fn wait_logged(text: &str) {
    within(async {
        while logged(text) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn queue_item(reqid: &str, command: &str, values: &[(&str, &str)]) -> Value {
    let values: Vec<Value> = values
        .iter()
        .map(|(k, v)| json!({"key": k, "value": [v]}))
        .collect();
    json!({"reqid": reqid, "reqtype": command,
           "payload": {"command": command, "values": values, "files": [], "urlSegments": []}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_command_posts_status_and_stops_on_quit() {
    let mut server = FakeServer::start(&[]).await;
    let (done, probe, _gate) = start_module(&server.url, 2);

    server.push(queue_item("r1", "echo", &[("text", "hello")]));
    let (captured, body) = server.next_reply().await;
    assert_eq!(captured.target, "/v1/queue/r1?moduleId=Echo");
    assert!(
        captured.content_type.starts_with("application/json"),
        "{captured:?}"
    );
    assert_eq!(
        body,
        json!({"message": "hello", "success": true, "moduleId": "Echo", "moduleName": "Echo",
               "code": 200, "command": "echo", "requestId": "r1", "inferenceDevice": "GPU",
               "processMs": body["processMs"]})
    );
    assert!(body["processMs"].is_u64());

    let status = within(server.statuses.recv()).await.expect("status posted");
    assert_eq!(status.target, "/v1/queue/updatemodulestatus/Echo");
    assert_eq!(status.content_type, "application/x-www-form-urlencoded");
    let data: Value = serde_json::from_str(&form_value(&status.body, "statusData").expect("field"))
        .expect("statusData is a JSON string");
    assert_eq!(data["canUseGPU"], "true");
    assert_eq!(data["inferenceDevice"], "GPU");
    assert_eq!(data["custom"], 1);
    for key in [
        "inferenceLibrary",
        "successfulInferences",
        "failedInferences",
        "numInferences",
        "averageInferenceMs",
    ] {
        assert!(data.get(key).is_some(), "statusData lacks {key}: {data}");
    }

    // A malformed item with a reqid is answered with the parse error.
    let body = server
        .call(json!({"reqid": "bad", "payload": {"command": "echo",
                     "files": [{"name": "image1", "data": "%%%"}]}}))
        .await;
    assert_eq!(body["success"], false);
    assert_eq!(body["requestId"], "bad");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("image1")),
        "{body}"
    );

    server.push(queue_item("q", "quit", &[("moduleId", "Echo")]));
    let code = within(done).await.expect("module thread reports");
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(probe.cleaned_up.load(Ordering::SeqCst));
    assert!(
        server.replies.try_recv().is_err(),
        "quit must not be answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_command_is_followed_and_cancelled_over_http() {
    let mut server = FakeServer::start(&[]).await;
    let (done, probe, gate) = start_module(&server.url, 1);

    let body = server.call(queue_item("c1", "long", &[])).await;
    assert_eq!(body["commandStatus"], "running");
    assert_eq!(body["commandId"], "c1");

    let status_item = queue_item("s", "get_command_status", &[("commandId", "c1")]);
    let body = server.call(status_item.clone()).await;
    assert_eq!(body["commandStatus"], "running");
    assert_eq!(body["success"], true);

    gate.send(()).expect("long process is waiting");
    let mut body = server.call(status_item.clone()).await;
    while body["commandStatus"] == "running" {
        body = server.call(status_item.clone()).await;
    }
    assert_eq!(body["commandStatus"], "completed");
    assert_eq!(body["reply"], "full");

    // A second long command, cancelled while it runs.
    server.call(queue_item("c2", "long", &[])).await;
    let body = server
        .call(queue_item("x", "cancel_command", &[("commandId", "c2")]))
        .await;
    assert_eq!(body["commandStatus"], "cancelled");
    assert_eq!(*probe.cancelled.lock(), ["c2"]);
    let status_item = queue_item("s2", "get_command_status", &[("commandId", "c2")]);
    let mut body = server.call(status_item.clone()).await;
    while body["commandStatus"] == "running" {
        body = server.call(status_item.clone()).await;
    }
    assert_eq!(body["commandStatus"], "completed");
    assert_eq!(body["stop_reason"], "cancelled");

    server.push(queue_item("q", "quit", &[]));
    assert_eq!(
        within(done).await.expect("module thread reports"),
        ExitCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_poll_backs_off_then_recovers() {
    let mut server = FakeServer::start(&[500]).await;
    let started = Instant::now();
    let (done, _, _) = start_module(&server.url, 1);
    let body = server
        .call(queue_item("r1", "echo", &[("text", "again")]))
        .await;
    assert_eq!(body["message"], "again");
    assert!(
        started.elapsed() >= BACKOFF_START,
        "the 500 must be followed by a pause before the next poll"
    );
    server.push(queue_item("q", "quit", &[]));
    assert_eq!(
        within(done).await.expect("module thread reports"),
        ExitCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_a_poll_outstanding_per_worker_and_serves_them_at_once() {
    const PARALLELISM: usize = 3;
    let mut server = FakeServer::start(&[]).await;
    let (done, _, _) = start_module(&server.url, PARALLELISM);
    server.wait_for_polls(PARALLELISM).await;

    // Each command waits until all of them have started: they are answered
    // only if the workers handle them at the same time.
    let parties = PARALLELISM.to_string();
    for i in 0..PARALLELISM {
        server.push(queue_item(
            &format!("r{i}"),
            "rendezvous",
            &[("parties", &parties)],
        ));
    }
    let mut answered = Vec::new();
    for _ in 0..PARALLELISM {
        let (_, body) = server.next_reply().await;
        assert_eq!(body["met"], true, "commands ran one after another: {body}");
        answered.push(body["requestId"].as_str().unwrap_or_default().to_owned());
    }
    answered.sort();
    assert_eq!(answered, ["r0", "r1", "r2"]);

    // Idle again: each worker polls again, and none holds two polls.
    let polls = server.wait_for_polls(PARALLELISM).await;
    assert_eq!(polls.peak, PARALLELISM, "{polls:?}");

    server.push(queue_item("q", "quit", &[]));
    assert_eq!(
        within(done).await.expect("module thread reports"),
        ExitCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_a_poll_outstanding_per_long_slot_when_there_are_more_slots() {
    let mut server = FakeServer::start(&[]).await;
    let (done, _, gate) = start_module_with_slots(&server.url, 1, 3);
    server.wait_for_polls(3).await;

    // Three long commands pushed at once are all taken before any finishes.
    for i in 0..3 {
        server.push(queue_item(&format!("l{i}"), "long", &[]));
    }
    for _ in 0..3 {
        let (_, body) = server.next_reply().await;
        assert_eq!(body["commandStatus"], "running", "{body}");
    }
    let polls = server.wait_for_polls(3).await;
    assert_eq!(polls.peak, 3, "{polls:?}");

    for _ in 0..3 {
        gate.send(()).expect("module alive");
    }
    server.push(queue_item("q", "quit", &[]));
    assert_eq!(
        within(done).await.expect("module thread reports"),
        ExitCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_with_backoff_when_the_server_is_away() {
    capture_log();
    // A port nothing listens on, until the server below binds it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let url = format!("http://{addr}/v1/");
    let (done, _, _) = start_module(&url, 1);

    // The poll was refused (and said so) before the server came up.
    let refused = format!("cannot reach the server at {url}queue/");
    wait_logged(&refused).await;
    let listener = TcpListener::bind(addr).await.expect("bind the freed port");
    let mut server = FakeServer::serve_on(listener, &[]);

    let body = server
        .call(queue_item("r1", "echo", &[("text", "back")]))
        .await;
    assert_eq!(body["message"], "back");
    assert_eq!(logged(&refused), 1, "an outage is logged once");
    server.push(queue_item("q", "quit", &[]));
    assert_eq!(
        within(done).await.expect("module thread reports"),
        ExitCode::SUCCESS
    );
}
