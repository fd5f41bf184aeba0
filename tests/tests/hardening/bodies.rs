//! Request bodies: too many fields, unterminated or stalled bodies, and
//! the connections they hold.

use std::time::{Duration, Instant};

use modhost_tests::{assert_error_response, InProcess, Server};
use serde_json::Value;

use crate::fake::{fake_side, next_command, raw_exchange, root_with_fake};

#[tokio::test]
async fn too_many_fields_are_refused_naming_the_limit_and_many_are_parsed_whole() {
    let server = InProcess::start(root_with_fake(), &["--max-form-fields", "200000"]).unwrap();
    // 160,000 fields, 1.5 MB: what froze every endpoint for minutes when each
    // name was looked up among the earlier ones. The last field is invalid:
    // the 400 naming it shows the whole body was parsed.
    let mut body: String = (0..160_000).map(|i| format!("f{i}=v&")).collect();
    body.push_str("n=abc");
    let sent = Instant::now();
    let r = server
        .http
        .post(server.url("/v1/fake/work"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    println!("160,000 fields parsed and checked in {:?}", sent.elapsed());
    assert_error_response(r, 400, "input 'n' of route fake/work is 'abc'").await;

    // The default limit, 10,000 values, refuses the same body at once.
    drop(server);
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let r = server
        .http
        .post(server.url("/v1/fake/work"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error_response(r, 413, "more than 10000 values (setting max_form_fields)").await;
    let ping = server.get_json("/v1/server/status/ping").await.unwrap();
    assert_eq!(ping["success"], true);
}

#[tokio::test]
async fn an_unterminated_multipart_body_is_answered_at_once_and_an_empty_one_is_a_form() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let r = server
        .http
        .post(server.url("/v1/fake/plain"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue")
        .send()
        .await
        .unwrap();
    assert_error_response(r, 400, "closing boundary").await;

    // What a browser sends for an empty FormData: only the closing boundary.
    let client = {
        let request = server
            .http
            .post(server.url("/v1/fake/plain"))
            .header("Content-Type", "multipart/form-data; boundary=----empty")
            .body("------empty--\r\n");
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let item = next_command(&server).await;
    assert_eq!(item["payload"]["command"], "plain");
    assert_eq!(item["payload"]["values"], serde_json::json!([]));
    let side = fake_side(&server).await;
    server
        .http
        .post(side.reply_url(item["reqid"].as_str().unwrap()))
        .body(r#"{"success":true,"empty":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap()["empty"], true);
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_its_connection_is_closed() {
    let server = InProcess::start(root_with_fake(), &["--body-read-timeout-secs", "1"]).unwrap();
    let base = server.base.clone();
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            &base,
            b"POST /v1/fake/plain HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\na=1",
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_secs"), "{answer}");
}

#[test]
fn unterminated_multipart_bodies_leave_no_connection_behind() {
    // The real binary with a low open-file limit: 1,100 unterminated
    // multipart bodies once left it accepting nothing.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(Server::start_with_limits(
            root_with_fake(),
            &[],
            Some((256, 4096)),
        ))
        .unwrap();
    let pid = server.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some("4096"),
        "the server raises its soft limit to the hard one: {open_files}"
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let request = || {
        raw_exchange(
            &server.base,
            b"POST /v1/fake/plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 50\r\n\r\n\
              --B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv",
            Duration::from_secs(10),
        )
    };
    // Settled first: the module runs and the workers have served requests.
    runtime.block_on(fake_side(&server));
    for _ in 0..20 {
        request();
    }
    let before = fds();
    for _ in 0..600 {
        let answer = request();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let after = fds();
    println!("open files of the server: {before} before, {after} after 600 requests");
    assert!(
        after <= before + 2,
        "{before} open files before, {after} after"
    );
    let ping = runtime
        .block_on(server.get_json("/v1/server/status/ping"))
        .unwrap();
    assert_eq!(ping["success"], true);
}
