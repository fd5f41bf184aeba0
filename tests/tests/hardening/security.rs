//! API keys and origins (docs/security.md).

use modhost_tests::{assert_error_response, InProcess};

use crate::fake::{fake_side, root_with_fake};

#[tokio::test]
async fn an_api_key_guards_client_and_admin_routes_but_not_modules_or_pages() {
    let server = InProcess::start(root_with_fake(), &["--api-key", "test-key-0123456789"]).unwrap();
    // `server.http` sends the key; this client sends none unless told.
    let bare = reqwest::Client::new();
    let r = bare
        .get(server.url("/v1/server/status/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_error_response(r, 401, "needs an API key").await;
    let r = bare
        .get(server.url("/v1/server/status/ping"))
        .header("Authorization", "Bearer wrong-key-000000")
        .send()
        .await
        .unwrap();
    assert_error_response(r, 401, "not valid").await;
    for (header, value) in [
        ("Authorization", "Bearer test-key-0123456789"),
        ("X-API-Key", "test-key-0123456789"),
    ] {
        let r = bare
            .get(server.url("/v1/module/list/status"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{header}");
    }
    let r = bare
        .post(server.url("/v1/server/settings/Fake"))
        .form(&[("name", "Restart")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The pages load without it (they ask for it); modules never need it.
    let r = bare.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let side = fake_side(&server).await;
    let r = bare
        .post(side.url("/queue/updatemodulestatus/Fake"))
        .form(&[("statusData", "{}")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a module's status needs no client key");
    // An event stream may carry it in the URL, for EventSource.
    let r = bare
        .get(server.url("/v1/jobs/nope/events?api_key=test-key-0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn pages_of_other_origins_cannot_stop_modules() {
    let server = InProcess::start(
        root_with_fake(),
        &["--allowed-origin", "http://dashboard.lan:8080"],
    )
    .unwrap();
    fake_side(&server).await;
    let stop = |origin: Option<&str>| {
        let mut request = server
            .http
            .post(server.url("/v1/server/settings/Fake"))
            .form(&[("name", "AutoStart"), ("value", "true")]);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send()
    };
    let r = stop(Some("http://evil.example")).await.unwrap();
    assert_error_response(r, 403, "http://evil.example may not change").await;
    let own = server.base.clone();
    for origin in [None, Some(own.as_str()), Some("http://dashboard.lan:8080")] {
        let r = stop(origin).await.unwrap();
        assert_eq!(r.status(), 200, "{origin:?}");
    }
    // Client routes keep permissive CORS, and answer pre-flights.
    let r = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/v1/fake/plain"))
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = server
        .http
        .request(
            reqwest::Method::OPTIONS,
            server.url("/v1/server/settings/Fake"),
        )
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
