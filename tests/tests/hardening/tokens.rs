//! Who may act as a module: launch tokens on polls and pushes, and modules
//! started by hand.

use std::time::{Duration, Instant};

use modhost_tests::InProcess;
use serde_json::{json, Value};

use crate::fake::{fake_side, next_command, poll_once, root_with_fake};

#[tokio::test]
async fn polls_need_the_current_launch_token() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let side = fake_side(&server).await;
    let no_token = format!("{}/queue/fake_queue?moduleId=Fake", side.base);
    let r = server.http.get(&no_token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("must present its launch token"));
    // The main port refuses it too.
    let r = server
        .http
        .get(server.url("/v1/queue/fake_queue?moduleId=Fake"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The header form of the token works.
    let client = tokio::spawn(server.http.post(server.url("/v1/fake/plain")).send());
    let r = server
        .http
        .get(&no_token)
        .header("X-Modhost-Token", &side.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let item: Value = r.json().await.unwrap();
    server
        .http
        .post(side.reply_url(item["reqid"].as_str().unwrap()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap().unwrap().status(), 200);
    // A token of an earlier launch does not.
    let (code, body) = server
        .post_form("/v1/server/settings/Fake", &[("name", "Restart")])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh = loop {
        if let Ok(fresh) = server.module_side("Fake").await {
            if fresh.token != side.token {
                break fresh;
            }
        }
        assert!(Instant::now() < deadline, "Fake was not relaunched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = server.http.get(side.poll_url()).send().await.unwrap();
    assert_eq!(r.status(), 403, "the earlier launch's token");
    assert!(r.text().await.unwrap().contains("stale or foreign"));
    let client = tokio::spawn(server.http.post(server.url("/v1/fake/plain")).send());
    let (status, _) = poll_once(&server, &fresh.poll_url()).await;
    assert_eq!(status, 200, "the new launch's token");
    client.abort();
}

#[tokio::test]
async fn a_batch_of_progress_pushes_reaches_each_job_and_names_unknown_ones() {
    let server = InProcess::start(root_with_fake(), &[]).unwrap();
    let side = fake_side(&server).await;
    // Two long commands of Fake, each answered "running" with progressPush.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let client = tokio::spawn(server.http.post(server.url("/v1/fake/plain")).send());
        let item = next_command(&server).await;
        let reqid = item["reqid"].as_str().unwrap().to_owned();
        let running = json!({"success": true, "commandId": reqid, "commandStatus": "running",
                             "progressPush": true});
        server
            .http
            .post(side.reply_url(&reqid))
            .header("X-Modhost-Token", &side.token)
            .json(&running)
            .send()
            .await
            .unwrap();
        assert_eq!(client.await.unwrap().unwrap().status(), 200);
        ids.push(reqid);
    }
    let push = |batch: Value| {
        server
            .http
            .post(side.url("/queue/progress?moduleId=Fake"))
            .header("X-Modhost-Token", &side.token)
            .json(&batch)
            .send()
    };
    let r = push(json!({&ids[0]: {"delta": "one"}, &ids[1]: {"delta": "two"},
                        "nope": {"delta": "lost"}}))
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains("has no job 'nope'"), "{text}");
    for (id, text) in ids.iter().zip(["one", "two"]) {
        let job = server.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
        assert_eq!(job["job"]["reply"], text, "{job}");
    }
    let r = push(json!({&ids[0]: {"delta": " more"}})).await.unwrap();
    assert_eq!(r.status(), 200);
    // Without the token, nothing is taken.
    let r = server
        .http
        .post(side.url("/queue/progress?moduleId=Fake"))
        .json(&json!({&ids[1]: {"delta": "forged"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let job = server
        .get_json(&format!("/v1/jobs/{}", ids[1]))
        .await
        .unwrap();
    assert_eq!(job["job"]["reply"], "two");
}

#[tokio::test]
async fn modules_started_by_hand_need_allow_external_modules() {
    let server = InProcess::start(root_with_fake(), &["--allow-external-modules"]).unwrap();
    fake_side(&server).await;
    let client = {
        let request = server
            .http
            .post(server.url("/v1/fake/plain"))
            .form(&[("a", "1")]);
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    // Polls without a token, on the main port, as a module run by hand does.
    let url = server.url("/v1/queue/fake_queue?moduleId=Fake");
    let item = loop {
        if let (200, Some(item)) = poll_once(&server, &url).await {
            break item;
        }
    };
    server
        .http
        .post(server.url(&format!("/v1/queue/{}", item["reqid"].as_str().unwrap())))
        .body(r#"{"success":true,"by":"hand"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(client.await.unwrap()["by"], "hand");
}
