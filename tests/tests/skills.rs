//! WebAssembly skills, built with the real toolchains (componentize-py for
//! Python, wit-bindgen for `wasm32-wasip2` for Rust; `modhost_tests::skills`
//! builds them once per source hash), run by the server in-process; CSI
//! inference and tokens come from a real LlamaChat process on a
//! random-weight model.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modhost_tests::{skills::test_skills, Api, InProcess, ModuleDir, Server};
use serde_json::{json, Value};

/// A root whose `skills/demo/` holds `names` from the built test skills.
fn root_with_skills(names: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let built = test_skills().expect("the test skills build");
    let root = Server::root().unwrap();
    let folder = root.path().join("skills");
    std::fs::create_dir_all(folder.join("demo")).unwrap();
    for name in names {
        std::fs::copy(
            built.join(format!("{name}.wasm")),
            folder.join(format!("demo/{name}.wasm")),
        )
        .unwrap();
    }
    (root, folder)
}

/// The flags that point the server at `folder` for skills, with compiled
/// skills cached beside the built ones (so each test does not compile them
/// again), then `args`.
fn skill_args(folder: &Path, args: &[&str]) -> Vec<String> {
    let cache = test_skills().unwrap().join("compiled");
    let mut argv: Vec<String> = ["--no-install", "--skills-dir"].map(String::from).into();
    argv.push(folder.display().to_string());
    argv.push("--skill-cache-dir".into());
    argv.push(cache.display().to_string());
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// The server in-process over `root`, its skills in `folder`.
fn start(root: tempfile::TempDir, folder: &Path, args: &[&str]) -> InProcess {
    let argv = skill_args(folder, args);
    InProcess::start(root, &argv.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
}

/// POSTs `input` to the skill; status, body and job id.
async fn run(server: &Api, skill: &str, input: impl Into<String>) -> (u16, Value, Option<String>) {
    let response = server
        .http
        .post(server.url(&format!("/v1/skills/{skill}/run")))
        .header("Content-Type", "application/json")
        .body(input.into())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let job = response
        .headers()
        .get("X-Job-Id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body, job)
}

/// How long the server takes to answer its status route.
async fn ping(server: &Api) -> Duration {
    let started = Instant::now();
    let status = server.get_json("/v1/server/status/ping").await.unwrap();
    assert_eq!(status["success"], true, "{status}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_skill_gets_inference_chunking_and_language_from_the_host() {
    let (root, folder) = root_with_skills(&["assistant"]);
    ModuleDir::llama_chat(&root.path().join("modules"), "tiny").unwrap();
    // The real binary: LlamaChat is a module process of its own.
    let argv = skill_args(&folder, &[]);
    let server = Server::start(root, &argv.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap();
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(60))
        .await
        .unwrap();
    let text = "Der Fuchs läuft schnell über die Wiese. Die Kinder spielen im Garten, \
                und die Sonne scheint den ganzen Tag. Am Abend gehen alle nach Hause.";
    let input = json!({"text": text, "max_tokens": 6, "chunk_tokens": 12, "overlap": 3});
    let (status, out, job) = run(&server, "demo/assistant", input.to_string()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["language"], "deu", "{out}");
    // Chunks of at most 12 of the model's tokens cover the text in order.
    let chunks: Vec<&str> = out["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(chunks.len() >= 3, "{out}");
    assert!(chunks[0].starts_with("Der Fuchs"), "{out}");
    assert!(chunks.last().unwrap().ends_with("Hause."), "{out}");
    for chunk in &chunks {
        assert!(
            chunk.len() < text.len() / 2,
            "a chunk holds too much: {chunk}"
        );
    }
    // The chat ran on LlamaChat: 6 tokens at most, and usage counted.
    assert!(out["reply"].is_string(), "{out}");
    let completion = out["usage"]["completion"].as_u64().unwrap();
    assert!((1..=6).contains(&completion), "{out}");
    assert!(out["usage"]["prompt"].as_u64().unwrap() > 10, "{out}");
    assert!(
        ["stop", "length"].contains(&out["finish_reason"].as_str().unwrap()),
        "{out}"
    );
    assert!(
        out["completion_usage"]["completion"].as_u64().unwrap() <= 6,
        "{out}"
    );
    // The run is a job of its own, finished with the output.
    let job = server
        .get_json(&format!("/v1/jobs/{}", job.unwrap()))
        .await
        .unwrap();
    assert_eq!(job["job"]["moduleId"], "skill:demo/assistant", "{job}");
    assert_eq!(job["job"]["status"], "completed", "{job}");
    assert_eq!(job["job"]["result"]["output"]["language"], "deu", "{job}");
    // A chunk request the host refuses is the skill's to fix: 400, named.
    let bad = json!({"text": text, "chunk_tokens": 4, "overlap": 4});
    let (status, body, _) = run(&server, "demo/assistant", bad.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("overlap (4)"),
        "{body}"
    );
    // Bad input is refused by the skill itself.
    let (status, body, _) = run(&server, "demo/assistant", r#"{"txt": 1}"#).await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("invalid_input")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_skill_searches_documents_added_through_the_api() {
    let (root, folder) = root_with_skills(&["search"]);
    let server = start(root, &folder, &[]);
    let put = |name: &'static str, doc: Value| {
        let request = server
            .http
            .put(server.url(&format!("/v1/documents/team/animals/{name}")))
            .json(&doc);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }
    };
    put("cats", json!({"text": "Cats purr and sleep all day. A cat hunts mice at dawn.", "metadata": {"year": 2021, "kind": "mammal"}})).await;
    put("frogs", json!({"text": "Frogs croak in the pond. A frog eats flies.", "metadata": {"year": 1999, "kind": "amphibian"}})).await;
    put("owls", json!({"contents": [{"modality": "image"}, {"modality": "text", "text": "Owls hunt mice at night."}], "metadata": {"year": 2010, "kind": "bird"}})).await;

    let search = |query: Value| run(&server, "demo/search", query.to_string());
    let (status, out, _) =
        search(json!({"namespace": "team", "collection": "animals", "query": "frog pond"})).await;
    assert_eq!(status, 200, "{out}");
    let first = &out["results"][0];
    assert_eq!(first["name"], "frogs", "{out}");
    assert_eq!(first["start"], json!({"item": 0, "position": 0}), "{out}");
    assert_eq!(
        first["end"]["position"],
        "Frogs croak in the pond. A frog eats flies."
            .chars()
            .count()
            - 1
    );
    assert!(first["score"].as_f64().unwrap() > 0.0, "{out}");
    assert_eq!(
        out["first_metadata"],
        json!({"year": 1999, "kind": "amphibian"}),
        "{out}"
    );
    assert_eq!(
        out["first_document"]["contents"][0],
        "Frogs croak in the pond. A frog eats flies."
    );

    // Two documents mention mice; filters pick among them.
    let mice = |filters: Value| {
        search(
            json!({"namespace": "team", "collection": "animals", "query": "mice", "filters": filters}),
        )
    };
    let names = |out: &Value| -> Vec<String> {
        out["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, out, _) = mice(json!([])).await;
    let mut all = names(&out);
    all.sort();
    assert_eq!(all, ["cats", "owls"], "{out}");
    let (_, out, _) =
        mice(json!([{"with_all": [{"field": "year", "greater_than": 2015.0}]}])).await;
    assert_eq!(names(&out), ["cats"], "{out}");
    let (_, out, _) = mice(json!([{"without": [{"field": "kind", "equal_to": "mammal"}]}])).await;
    assert_eq!(names(&out), ["owls"], "{out}");
    assert_eq!(
        out["results"][0]["start"]["item"], 1,
        "the owls' text is their second item: {out}"
    );
    let (_, out, _) = mice(json!([{"with_one_of": [{"field": "kind", "equal_to": "fish"}, {"field": "year", "less_than": 2000.0}]}])).await;
    assert!(names(&out).is_empty(), "{out}");

    // An unknown collection is the skill's request to fix.
    let (status, body, _) =
        search(json!({"namespace": "team", "collection": "plants", "query": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no collection 'plants'"),
        "{body}"
    );

    // The API lists, shows and deletes what it stored.
    let list = server.get_json("/v1/documents/team/animals").await.unwrap();
    assert_eq!(list["documents"], json!(["cats", "frogs", "owls"]));
    let deleted = server
        .http
        .delete(server.url("/v1/documents/team/animals/frogs"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let (_, out, _) =
        search(json!({"namespace": "team", "collection": "animals", "query": "frog pond"})).await;
    assert!(names(&out).is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_and_allocating_skills_are_stopped_and_the_server_keeps_serving() {
    let (root, folder) = root_with_skills(&["spin", "balloon", "noop"]);
    let server = start(
        root,
        &folder,
        &["--skill-cpu-secs", "2", "--skill-memory-mib", "64"],
    );
    // Compiled before the clocks start.
    assert_eq!(run(&server, "demo/noop", "{}").await.0, 200);

    let spinning = run(&server, "demo/spin", "{}");
    let pings = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ping(&server).await
    };
    let started = Instant::now();
    let ((status, body, _), during) = tokio::join!(spinning, pings);
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], "limit", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("CPU time limit of 2s"),
        "{body}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        during < Duration::from_secs(1),
        "a ping waited {during:?} behind a spinning skill"
    );

    let started = Instant::now();
    let (status, body, _) = run(&server, "demo/balloon", "{}").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], "limit", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("memory limit of 64 MiB"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(ping(&server).await < Duration::from_secs(1));
    // And skills still run.
    let (status, out, _) = run(&server, "demo/noop", r#"{"still": "here"}"#).await;
    assert_eq!((status, out), (200, json!({"still": "here"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_skill_is_a_job_that_can_be_cancelled() {
    let (root, folder) = root_with_skills(&["spin"]);
    let server = start(root, &folder, &["--skill-cpu-secs", "600"]);
    let spinning = run(&server, "demo/spin", "{}");
    let cancel = async {
        let job = loop {
            let jobs = server
                .get_json("/v1/jobs?module=skill:demo/spin&status=running")
                .await
                .unwrap();
            if let Some(job) = jobs["jobs"].get(0) {
                break job["id"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = server
            .http
            .post(server.url(&format!("/v1/jobs/{job}/cancel")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        (job, Instant::now())
    };
    let ((status, body, ran), (job, cancelled_at)) = tokio::join!(spinning, cancel);
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], "cancelled", "{body}");
    assert_eq!(ran.as_deref(), Some(job.as_str()));
    let view = server.get_json(&format!("/v1/jobs/{job}")).await.unwrap();
    assert_eq!(view["job"]["status"], "cancelled", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skills_come_change_and_go_without_a_restart_and_errors_say_who_acts() {
    let (root, folder) = root_with_skills(&[]);
    let built = test_skills().unwrap();
    let server = start(root, &folder, &[]);
    let skills = || async { server.get_json("/v1/skills").await.unwrap() };
    assert_eq!(skills().await, json!([]));
    let (status, body, _) = run(&server, "demo/tool", "{}").await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // A new file is a new skill.
    let tool = folder.join("demo/tool.wasm");
    std::fs::copy(built.join("noop.wasm"), &tool).unwrap();
    assert_eq!(skills().await, json!(["demo/tool"]));
    assert_eq!(run(&server, "demo/tool", "[1, 2]").await.1, json!([1, 2]));
    let meta = server
        .get_json("/v1/skills/demo/tool/metadata")
        .await
        .unwrap();
    assert_eq!(meta["description"], "Returns its input", "{meta}");
    assert_eq!(meta["version"], "0.3");

    // A changed file is compiled again.
    std::fs::copy(built.join("fsprobe.wasm"), &tool).unwrap();
    let (status, out, _) = run(&server, "demo/tool", r#"{"path": "/etc/hostname"}"#).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["ok"], false,
        "no folder is granted, so nothing can be read: {out}"
    );

    // A namespace may grant a folder.
    let shared = folder.join("demo/shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note.txt"), "granted").unwrap();
    std::fs::write(
        folder.join("demo/namespace.toml"),
        "[[dirs]]\nhost = \"shared\"\nguest = \"/shared\"\n",
    )
    .unwrap();
    let (_, out, _) = run(&server, "demo/tool", r#"{"path": "/shared/note.txt"}"#).await;
    assert_eq!(out, json!({"ok": true, "text": "granted"}));

    // A removed file is gone.
    std::fs::remove_file(&tool).unwrap();
    assert_eq!(skills().await, json!([]));
    assert_eq!(run(&server, "demo/tool", "{}").await.0, 404);

    // Broken components are their author's to fix: 500, named.
    std::fs::write(folder.join("demo/junk.wasm"), b"not wasm at all").unwrap();
    let (status, body, _) = run(&server, "demo/junk", "{}").await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (500, Some("broken_component")),
        "{body}"
    );
    std::fs::copy(built.join("oldskill.wasm"), folder.join("demo/old.wasm")).unwrap();
    let (status, body, _) = run(&server, "demo/old", "{}").await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("pharia:skill 0.2.0") && error.contains("@0.3.0"),
        "{body}"
    );

    // Bad requests are the caller's: 400.
    std::fs::copy(built.join("noop.wasm"), &tool).unwrap();
    let (status, body, _) = run(&server, "demo/tool", "{not json").await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("invalid_input")),
        "{body}"
    );
    let (status, body, _) = run(&server, "Demo/tool", "{}").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("namespace 'Demo'"),
        "{body}"
    );
}
