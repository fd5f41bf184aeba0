//! What CodeProject.AI's own dashboard and explorer pages, and the module
//! pages written for them, need from the server (docs/protocol.md §2.5,
//! §2.6): settings sent as they send them and kept as overrides, numbers
//! where their scripts do arithmetic, the list and status endpoints they
//! call, and the assets they load.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modhost_tests::{assert_error, InProcess, Server};
use serde_json::{json, Value};

/// A module whose process writes its environment to `env.txt` and sleeps,
/// with a menu of settings as CodeProject's vision modules declare one.
const MENU_MODULE: &str = r#"{ "Modules": { "Menu": {
    "Name": "Menu Module", "Version": "1.0.0",
    "LaunchSettings": { "FilePath": "run.sh", "Runtime": "execute", "AutoStart": true },
    "EnvironmentVariables": { "MODEL_SIZE": "small" },
    "GpuOptions": { "InstallGPU": true, "EnableGPU": true },
    "UIElements": { "Menus": [ { "Label": "Model Size", "Options": [
        { "Label": "Small", "Setting": "MODEL_SIZE", "Value": "small" },
        { "Label": "Large", "Setting": "MODEL_SIZE", "Value": "large" } ] } ] },
    "RouteMaps": [ { "Name": "w", "Route": "menu/w", "Method": "POST", "Command": "w" } ]
} } }"#;

fn menu_module(modules: &Path) -> PathBuf {
    let dir = modules.join("Menu");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("modulesettings.json"), MENU_MODULE).unwrap();
    modhost_tests::write_env_recorder(&dir).unwrap()
}

/// Waits for the module to write `env.txt` and returns its variables; the
/// file is removed, so that the next launch writes a new one.
async fn next_launch_env(env_file: &Path) -> std::collections::HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env_file.exists() {
        assert!(Instant::now() < deadline, "the module was not (re)started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(env_file).unwrap();
    std::fs::remove_file(env_file).unwrap();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// POST /v1/server/settings/Menu as CodeProject's dashboard sends it: multipart.
async fn set_multipart(server: &Server, name: &str, value: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("name", name.to_owned())
        .text("value", value.to_owned());
    let response = server
        .http
        .post(server.url("/v1/server/settings/Menu"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Settings sent multipart or urlencoded are kept per module, reach it as
/// environment, restart it, and outlive the server, AutoStart included.
#[tokio::test]
async fn settings_are_kept_reach_the_module_restart_it_and_outlive_the_server() {
    let root = Server::root().unwrap();
    let env_file = menu_module(&root.path().join("modules"));
    let server = Server::start(root, &[]).await.unwrap();
    let env = next_launch_env(&env_file).await;
    assert_eq!(env["MODEL_SIZE"], "small");
    assert_eq!(env["CPAI_MODULE_ENABLE_GPU"], "True");

    // The menu a module declares, in the status list the dashboard reads.
    let status = server.module_status("Menu").await.unwrap();
    assert_eq!(
        status["menus"][0]["options"][1],
        json!({"label": "Large", "setting": "MODEL_SIZE", "value": "large"}),
        "{status}"
    );
    let summary = status["startupSummary"].as_str().unwrap();
    assert!(summary.contains("launch 1"), "{summary}");

    // A menu choice, multipart: kept, in the environment, module restarted.
    let pid = server.module_pid("Menu").await.unwrap();
    let (code, body) = set_multipart(&server, "MODEL_SIZE", "large").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("restarting"),
        "{body}"
    );
    let env = next_launch_env(&env_file).await;
    assert_eq!(env["MODEL_SIZE"], "large");
    assert!(
        !modhost_tests::process_alive(pid),
        "the old process is gone"
    );
    // CodeProject's own names: EnableGPU, and a CPAI_ variable, urlencoded.
    let (code, body) = set_multipart(&server, "EnableGPU", "false").await;
    assert_eq!(code, 200, "{body}");
    next_launch_env(&env_file).await;
    let (code, body) = server
        .post_form(
            "/v1/server/settings/Menu",
            &[("name", "CPAI_HALF_PRECISION"), ("value", "disable")],
        )
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let env = next_launch_env(&env_file).await;
    assert_eq!(env["CPAI_MODULE_ENABLE_GPU"], "False");
    assert_eq!(env["CPAI_HALF_PRECISION"], "disable");
    assert_eq!(env["MODEL_SIZE"], "large");
    let settings = server.get_json("/v1/server/settings/Menu").await.unwrap();
    assert_eq!(
        settings["settings"]["overrides"]["MODEL_SIZE"], "large",
        "{settings}"
    );
    assert_eq!(
        settings["environmentVariables"]["CPAI_MODULE_ENABLE_GPU"],
        "False"
    );

    // Stop, multipart, as CodeProject's Stop button sends it.
    let (code, body) = set_multipart(&server, "AutoStart", "false").await;
    assert_eq!(code, 200, "{body}");
    server
        .wait_for_status("Menu", "Stopped", Duration::from_secs(20))
        .await
        .unwrap();
    // A log written to a pipe carries no colour codes.
    let output = server.output();
    assert!(!output.contains('\u{1b}'), "ANSI codes in:\n{output}");

    // A new server over the same root: the module stays stopped, as it was
    // left, though its manifest says AutoStart.
    let root = server.into_root().unwrap();
    let server = Server::start(root, &[]).await.unwrap();
    server
        .wait_for_status("Menu", "NoAutoStart", Duration::from_secs(20))
        .await
        .unwrap();
    let status = server.module_status("Menu").await.unwrap();
    assert!(
        status["startupSummary"]
            .as_str()
            .unwrap()
            .contains("AutoStart is off"),
        "{status}"
    );
    // Started again: with every override of the last server.
    let (code, body) = set_multipart(&server, "AutoStart", "true").await;
    assert_eq!(code, 200, "{body}");
    let env = next_launch_env(&env_file).await;
    assert_eq!(env["MODEL_SIZE"], "large");
    assert_eq!(env["CPAI_MODULE_ENABLE_GPU"], "False");
    assert_eq!(env["CPAI_HALF_PRECISION"], "disable");
    let kept: Value = serde_json::from_slice(
        &std::fs::read(server.root.path().join("data/module-settings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["menu"]["AutoStart"], "true", "{kept}");
}

/// The endpoints CodeProject's dashboard and explorer call, with the shapes
/// their scripts read, and the assets module pages load.
#[tokio::test]
async fn codeproject_pages_get_numbers_lists_and_their_assets() {
    let root = Server::root().unwrap();
    menu_module(&root.path().join("modules"));
    let server = InProcess::start(root, &[]).unwrap();

    let data = server
        .get_json("/v1/server/status/system-status")
        .await
        .unwrap()["data"]
        .clone();
    // Numbers, never null, with or without a GPU: the page calls toFixed.
    for key in ["gpuUsage", "gpuMemUsage", "cpuUsage", "systemMemUsage"] {
        assert!(data[key].is_number(), "{key} in {data}");
    }

    for path in [
        "/v1/module/list/",
        "/v1/module/list",
        "/v1/module/list/status/",
    ] {
        let body = server.get_json(path).await.unwrap();
        assert_eq!(body["success"], true, "{path}: {body}");
    }
    let available = server.get_json("/v1/module/list/available").await.unwrap();
    assert_eq!(available["modules"][0]["moduleId"], "Menu", "{available}");
    assert_eq!(available["modules"][0]["isDownloadable"], false);

    let update = server
        .get_json("/v1/server/status/updateavailable")
        .await
        .unwrap();
    assert_eq!(update["updateAvailable"], false, "{update}");
    assert_eq!(update["current"]["version"], "2.9.6");
    assert!(update["message"]
        .as_str()
        .unwrap()
        .contains("does not check for updates"));
    let mesh = server.get_json("/v1/server/mesh/summary").await.unwrap();
    assert_eq!(
        (&mesh["enabled"], &mesh["hosts"]),
        (&json!(false), &json!([]))
    );

    // The assets: CodeProject's names, modhost's files.
    let get = |path: &'static str| {
        let request = server.http.get(server.url(path));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let kind = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, kind, response.bytes().await.unwrap())
        }
    };
    for (path, kind, needle) in [
        ("/assets/server.js", "javascript", "apiServiceUrl"),
        ("/assets/explorer.js", "javascript", "submitRequest"),
        ("/assets/server.css", "css", "modhost.css"),
        ("/assets/bootstrap-dark.min.css", "css", "modhost.css"),
        ("/assets/server.css?v=2.6.1.0", "css", "modhost.css"),
    ] {
        let (status, content_type, body) = get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(content_type.contains(kind), "{path}: {content_type}");
        assert!(
            String::from_utf8_lossy(&body).contains(needle),
            "{path} lacks {needle}"
        );
    }
    let (status, content_type, body) = get("/favicon.ico").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("image/"), "{content_type}");
    assert_eq!(&body[..4], &[0, 0, 1, 0], "an ICO file");

    // A page of another origin (CodeProject's explorer served elsewhere)
    // may read the answers to its requests, failures included.
    for (post, path) in [
        (true, "/v1/no/such/route"),
        (false, "/v1/module/list/status"),
    ] {
        let request = if post {
            let form = reqwest::multipart::Form::new().text("x", "1");
            server.http.post(server.url(path)).multipart(form)
        } else {
            server.http.get(server.url(path))
        };
        let response = request
            .header("Origin", "http://127.0.0.1:5555")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("*"),
            "{path}"
        );
    }

    // Settings of a module that is not there, or without a name.
    let (code, body) = server
        .post_form("/v1/server/settings/Nope", &[("name", "X"), ("value", "1")])
        .await
        .unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, body) = server
        .post_form(
            "/v1/server/settings/Menu",
            &[("name", "1BAD"), ("value", "1")],
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert_error(&body, "not a valid environment variable name");
}
