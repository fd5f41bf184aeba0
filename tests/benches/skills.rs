//! WebAssembly skills (BENCHMARKS.md): figures printed, nothing asserted.
//!
//! `cargo bench -p modhost-tests --bench skills` builds the release
//! binaries and the test skills, starts modhost with LlamaChat on the
//! `tiny` demo model, and measures over HTTP:
//! - a no-op skill run (the Rust `noop` skill echoing `{}`): warm (compiled,
//!   run again and again), cold from the disk cache (the first call of a
//!   newly deployed file whose compiled code is cached) and cold with a
//!   compile (the cache emptied first); p50 and p99;
//! - the same for the Python `assistant` skill's cold compile, once (an
//!   18 MB component);
//! - one CSI call against calling the module directly: the `complete` skill
//!   asking LlamaChat for one token through CSI `inference.complete`, against
//!   `POST /v1/completions` for the same token; the difference of the
//!   medians is what the skill and its CSI call add.
//!
//! Flags: `--quick` (fewer rounds).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::{bench_model, build_release_binaries, machine, ms, num_cpus, percentile, Args};
use modhost_tests::skills::test_skills;
use modhost_tests::{ModuleDir, Server};
use serde_json::{json, Value};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::from_env();
    let quick = args.flag("--quick");
    let (warm_runs, cold_runs, csi_runs) = if quick { (200, 5, 20) } else { (1000, 20, 100) };

    build_release_binaries()?;
    let built = test_skills()?;
    let model = bench_model("tiny")?;
    println!("# Skills");
    println!("{} ({} cores)", machine(), num_cpus());

    let root = Server::root()?;
    let skills = root.path().join("skills");
    std::fs::create_dir_all(skills.join("bench"))?;
    for name in ["noop", "complete"] {
        std::fs::copy(
            built.join(format!("{name}.wasm")),
            skills.join(format!("bench/{name}.wasm")),
        )?;
    }
    let link = root.path().join("tiny.gguf");
    std::os::unix::fs::symlink(&model, &link)?;
    ModuleDir::llama_chat_with_model(&root.path().join("modules"), &link, 1)?;
    let cache = root.path().join("data/skill-cache");
    let server = Server::start(
        root,
        &["--no-install", "--log-dir", "/tmp/modhost-bench-logs"],
    )
    .await?;
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(120))
        .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let run = |skill: String, input: Value| {
        let request = http
            .post(server.url(&format!("/v1/skills/{skill}/run")))
            .json(&input);
        async move {
            let started = Instant::now();
            let response = request.send().await?;
            let status = response.status();
            let body = response.text().await?;
            ensure!(status.is_success(), "{skill}: {status} {body}");
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    };

    // Warm: the compiled skill, a fresh instance per call.
    run("bench/noop".into(), json!({})).await?;
    let mut warm = Vec::new();
    for _ in 0..warm_runs {
        warm.push(run("bench/noop".into(), json!({})).await?);
    }
    report("no-op skill, warm", &mut warm);

    // Cold: a newly deployed file, its compiled code in the disk cache, or
    // compiled first.
    let mut from_cache = Vec::new();
    let mut compiled = Vec::new();
    for i in 0..cold_runs {
        for (compile, into) in [(false, &mut from_cache), (true, &mut compiled)] {
            if compile {
                let _ = std::fs::remove_dir_all(&cache);
            }
            let name = format!("noop{i}{}", if compile { "c" } else { "" });
            deploy(
                &built.join("noop.wasm"),
                &skills.join(format!("bench/{name}.wasm")),
            )?;
            into.push(run(format!("bench/{name}"), json!({})).await?);
        }
    }
    report("no-op skill, cold from the compiled cache", &mut from_cache);
    report("no-op skill, cold with a compile", &mut compiled);

    let _ = std::fs::remove_dir_all(&cache);
    deploy(
        &built.join("assistant.wasm"),
        &skills.join("bench/assistant.wasm"),
    )?;
    let python = http
        .get(server.url("/v1/skills/bench/assistant/metadata"))
        .send();
    let started = Instant::now();
    python.await?.error_for_status()?;
    println!(
        "Python skill (componentize-py, {} MiB), first call with a compile: {:.0} ms",
        std::fs::metadata(built.join("assistant.wasm"))?.len() >> 20,
        ms(started.elapsed())
    );

    // One CSI call against the module called directly, alternating.
    let direct = |()| {
        let request = http
            .post(server.url("/v1/completions"))
            .json(&json!({"prompt": "Hello there", "max_tokens": 1, "temperature": 0}));
        async move {
            let started = Instant::now();
            request.send().await?.error_for_status()?.bytes().await?;
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    };
    let input = json!({"model": "", "prompt": "Hello there", "max_tokens": 1});
    run("bench/complete".into(), input.clone()).await?;
    direct(()).await?;
    let (mut through_skill, mut directly) = (Vec::new(), Vec::new());
    for _ in 0..csi_runs {
        through_skill.push(run("bench/complete".into(), input.clone()).await?);
        directly.push(direct(()).await?);
    }
    report(
        "one-token completion through a skill's CSI call",
        &mut through_skill,
    );
    report("one-token completion, POST /v1/completions", &mut directly);
    let overhead = ms(percentile(&through_skill, 0.5)) - ms(percentile(&directly, 0.5));
    println!("CSI call overhead (difference of the medians): {overhead:.2} ms");
    Ok(())
}

/// Copies a skill into place under a new name, as a deployment does.
fn deploy(from: &Path, to: &Path) -> Result<()> {
    let temp = to.with_extension("partial");
    std::fs::copy(from, &temp)?;
    std::fs::rename(&temp, to)?;
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms ({} runs)",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.99)),
        samples.len()
    );
}
