//! The Fake module, a process that only sleeps, whose side of the protocol
//! the tests play; and a raw HTTP exchange.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use modhost_tests::{Api, ModuleDir, Server};
use serde_json::Value;

/// A module whose process only sleeps; the test answers its queue.
const FAKE: &str = r#"{ "Modules": { "Fake": {
    "Name": "Fake", "Version": "1.0.0",
    "LaunchSettings": { "Command": "sleep 600", "Runtime": "execute", "AutoStart": true },
    "RouteMaps": [
      { "Name": "Work", "Route": "fake/work", "Method": "POST", "Command": "work",
        "Inputs": [ { "Name": "n", "Type": "Integer", "MinValue": 1, "MaxValue": 10 } ] },
      { "Name": "Plain", "Route": "fake/plain", "Method": "POST", "Command": "plain" }
    ] } } }"#;

pub(crate) fn root_with_fake() -> tempfile::TempDir {
    let root = Server::root().unwrap();
    ModuleDir::with_manifest(&root.path().join("modules"), "Fake", FAKE).unwrap();
    root
}

/// Waits until the Fake process runs and returns how it reaches the server.
pub(crate) async fn fake_side(api: &Api) -> modhost_tests::ModuleSide {
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
pub(crate) async fn poll_once(api: &Api, url: &str) -> (u16, Option<Value>) {
    let response = api.http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = (status == 200).then_some(response.json().await.unwrap());
    (status, body)
}

/// Polls as the Fake module until a command arrives (the first poll marks
/// Fake Started).
pub(crate) async fn next_command(api: &Api) -> Value {
    let url = fake_side(api).await.poll_url();
    loop {
        if let (200, Some(item)) = poll_once(api, &url).await {
            return item;
        }
    }
}

/// A raw HTTP/1.1 exchange: sends `request`, reads until the server closes
/// or `limit` passes; returns what came back.
pub(crate) fn raw_exchange(base: &str, request: &[u8], limit: Duration) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}
