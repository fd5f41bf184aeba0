//! The OpenAI API side by side with llama-server's own (BENCHMARKS.md):
//! figures printed, nothing asserted.
//!
//! `cargo bench -p modhost-tests --bench openai_api` builds the release
//! binaries, then streams `POST /v1/chat/completions` (temperature 0, a
//! ~140-token prompt, a fixed `max_tokens`) alternately through modhost
//! (LlamaChat) and through llama.cpp's `llama-server`, on the same GGUF (the
//! generated `bench` model), threads and context, and prints for each the
//! time to the first streamed token and the decode rate between the first and
//! the last, with modhost's ratio to llama-server.
//!
//! llama-server: `$LLAMA_SERVER`, else `target/anchors/llama.cpp-*/build/bin/llama-server`,
//! else built there with `../shared/tools/build-llama-server.sh` when that
//! script exists (see BENCHMARKS.md). Its prompt cache is turned off per
//! request (`cache_prompt: false`) and `ignore_eos` set, so that both engines
//! process the whole prompt and generate exactly `max_tokens` every time.
//!
//! Flags: `--quick` (2 rounds instead of 5), `--threads N` (default all
//! cores), `--model tiny|bench` (default bench), `--tokens N` (default 96).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{bench_model, build_release_binaries, llama_chat_server, machine, median, num_cpus};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use modhost_tests::workspace_root;
use serde_json::{json, Value};

/// One streamed reply: time to the first token, decode tokens/s after it.
struct Run {
    first_token_ms: f64,
    decode_tps: f64,
    tokens: usize,
}

/// Streams one chat from `base` and times its content chunks.
async fn stream_chat(http: &reqwest::Client, base: &str, body: &Value) -> Result<Run> {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "{base}: HTTP {}: {}",
            response.status(),
            response.text().await?
        );
    }
    let mut events = response.bytes_stream().eventsource();
    let mut times = Vec::new();
    while let Some(event) = events.next().await {
        let event = event?;
        if event.data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data)?;
        let text = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("");
        if !text.is_empty() {
            times.push(started.elapsed());
        }
    }
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        bail!("{base}: no content streamed");
    };
    let span = (*last - *first).as_secs_f64();
    Ok(Run {
        first_token_ms: first.as_secs_f64() * 1000.0,
        decode_tps: if span > 0.0 {
            (times.len() - 1) as f64 / span
        } else {
            0.0
        },
        tokens: times.len(),
    })
}

/// The llama-server binary, built when missing and the build script is at hand.
fn llama_server() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LLAMA_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let anchors = workspace_root().join("target/anchors");
    let found = || -> Option<PathBuf> {
        std::fs::read_dir(&anchors)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("build/bin/llama-server"))
            .find(|p| p.is_file())
    };
    if let Some(path) = found() {
        return Ok(path);
    }
    let script = workspace_root().join("../shared/tools/build-llama-server.sh");
    if !script.is_file() {
        bail!(
            "no llama-server: set LLAMA_SERVER to its binary, or build one into target/anchors \
             (llama.cpp's tools/server, e.g. with ../shared/tools/build-llama-server.sh)"
        );
    }
    println!(
        "(building llama-server with {}: several minutes)",
        script.display()
    );
    let status = Command::new("bash").arg(&script).arg(&anchors).status()?;
    if !status.success() {
        bail!("{} failed", script.display());
    }
    found().context("the build script made no llama-server")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let threads: usize = value("--threads").map_or(Ok(num_cpus()), |t| t.parse())?;
    let preset = value("--model").unwrap_or_else(|| "bench".into());
    let max_tokens: u64 = value("--tokens").map_or(Ok(96), |t| t.parse())?;
    let rounds = if quick { 2 } else { 5 };

    build_release_binaries()?;
    let model = bench_model(&preset)?;
    let server_bin = llama_server()?;
    let version = Command::new(&server_bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    println!("# OpenAI API: modhost against llama-server");
    println!(
        "{} ({} cores), model {preset} ({} MiB), {threads} threads, {max_tokens} tokens, temperature 0",
        machine(),
        num_cpus(),
        std::fs::metadata(&model)?.len() >> 20
    );
    println!("llama-server: {version}; modhost's llama.cpp: llama-cpp-sys-2 0.1.161");

    // llama-server, one slot, the same context as LlamaChat gets.
    let port = free_port()?;
    let log = std::fs::File::create("/tmp/llama-server-bench.log")?;
    let mut anchor = Command::new(&server_bin)
        .args(["-m", &model.display().to_string()])
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args([
            "-c",
            "2048",
            "-np",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--no-webui")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting llama-server")?;
    let anchor_base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = http.get(format!("{anchor_base}/health")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            let _ = anchor.kill();
            bail!("llama-server did not get ready (log: /tmp/llama-server-bench.log)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let server = llama_chat_server(
        &model,
        threads as u32,
        &[("CPAI_MODULE_LLAMA_CONTEXT_SIZE", "2048")],
    )
    .await?;

    let prompt =
        "Here is a long question about the planets of the solar system, asked twice. ".repeat(9);
    let body = |anchor: bool| {
        let mut body = json!({
            "max_tokens": max_tokens, "temperature": 0, "seed": 1, "stream": true,
            "messages": [{"role": "user", "content": prompt}],
        });
        if anchor {
            body["cache_prompt"] = json!(false);
            body["ignore_eos"] = json!(true);
        }
        body
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    // Alternating rounds, after a warm-up one, so that both see the same
    // machine conditions.
    for round in 0..=rounds {
        let a = stream_chat(&http, &anchor_base, &body(true)).await?;
        let m = stream_chat(&http, &server.base, &body(false)).await?;
        if round > 0 {
            theirs.push(a);
            ours.push(m);
        }
    }
    let _ = anchor.kill();
    let _ = anchor.wait();

    let tps = |runs: &[Run]| median(runs.iter().map(|r| r.decode_tps).collect());
    let ttft = |runs: &[Run]| median(runs.iter().map(|r| r.first_token_ms).collect());
    let tokens = |runs: &[Run]| runs.iter().map(|r| r.tokens).min().unwrap_or(0);
    println!("\n| engine | decode tokens/s | time to first token ms | tokens streamed (least) |");
    println!("|---|---|---|---|");
    println!(
        "| llama-server `/v1/chat/completions` | {:.2} | {:.1} | {} |",
        tps(&theirs),
        ttft(&theirs),
        tokens(&theirs)
    );
    println!(
        "| modhost `/v1/chat/completions` (LlamaChat) | {:.2} | {:.1} | {} |",
        tps(&ours),
        ttft(&ours),
        tokens(&ours)
    );
    println!(
        "\nmodhost / llama-server: decode {:.1} % (target ≥ 99 %), first token {:+.1} ms (target ≤ +2 ms)",
        100.0 * tps(&ours) / tps(&theirs),
        ttft(&ours) - ttft(&theirs)
    );
    println!(
        "(medians of {rounds} alternating rounds after a warm-up; streamed with temperature 0)"
    );
    Ok(())
}
