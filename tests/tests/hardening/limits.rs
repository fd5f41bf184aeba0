//! Memory and disk: capped log entries that cannot forge lines, and queues
//! bounded by bytes.

use std::time::{Duration, Instant};

use modhost_tests::{assert_error, InProcess};
use serde_json::Value;

use crate::fake::{fake_side, root_with_fake};

#[tokio::test]
async fn log_entries_are_capped_and_cannot_forge_lines() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let side = fake_side(&server).await;
    let post = |entry: String| {
        server
            .http
            .post(side.url("/log/"))
            .form(&[
                ("entry", entry.as_str()),
                ("category", "Fake"),
                ("log_level", "info"),
            ])
            .send()
    };
    let r = post("x".repeat(2 * 1024 * 1024)).await.unwrap();
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
    let r = post(format!("{}{}", "y".repeat(20_000), "END"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post("ok\n2026-01-01T00:00:00.000Z [Critical] Server: forged".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let log = server
        .get_json("/v1/log/list?count=50&moduleId=Fake")
        .await
        .unwrap();
    let entries: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["entry"].as_str())
        .collect();
    let long = entries.iter().find(|e| e.contains("yyyy")).unwrap();
    assert!(long.len() < 8 * 1024 + 100, "{}", long.len());
    assert!(
        long.ends_with("(11811 more bytes not kept)"),
        "{}",
        &long[long.len() - 40..]
    );
    // The log file has one line per entry, whatever the entry held.
    let day = chrono_day();
    let deadline = Instant::now() + Duration::from_secs(10);
    let file = server.root.path().join(format!("logs/log-{day}.txt"));
    let text = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("forged") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the entry never reached {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000Z")),
        "{text}"
    );
    assert!(text.contains("Fake: ok\\n2026-01-01T00:00:00.000Z [Critical] Server: forged"));
}

/// Today's date as the log files name it.
fn chrono_day() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_queue_is_bounded_by_bytes_and_refuses_with_the_queue_full_answer() {
    let server = InProcess::start(root_with_fake(), &["--queue-bytes", "1000000"]).unwrap();
    fake_side(&server).await;
    let send = |bytes: usize| {
        server
            .http
            .post(server.url("/v1/fake/plain"))
            .form(&[("blob", "z".repeat(bytes))])
            .send()
    };
    // Nobody polls: two 400 KB commands wait, a third would pass 1 MB.
    let first = tokio::spawn(send(400_000));
    let second = tokio::spawn(send(400_000));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 2 {
        assert!(Instant::now() < deadline, "the commands were never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = send(400_000).await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_error(&body, "Request queue 'fake_queue' is full");
    assert_eq!(body["errorCode"], "queue_full");
    // A small one still fits.
    let small = tokio::spawn(send(100));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.module_status("Fake").await.unwrap()["queued"] != 3 {
        assert!(Instant::now() < deadline, "the small command was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    second.abort();
    small.abort();
}
