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
//! script exists (see BENCHMARKS.md). Each round's prompt starts with words
//! of its own, so that neither prompt cache reuses more than the chat
//! template's first tokens, and llama-server gets `ignore_eos`, so that both
//! generate exactly `max_tokens` every time.
//!
//! Flags: `--quick` (2 rounds), `--rounds N` (default 5), `--threads N` (default all
//! cores), `--model tiny|bench` (default bench), `--tokens N` (default 96).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::anchor::{llama_server_binary, llama_server_version, LlamaServer};
use common::openai::{stream_chat, Run};
use common::{
    bench_model, build_release_binaries, cpu_by_thread, llama_chat_server, machine, median,
    num_cpus, round_ratios, Args, CpuTally,
};
use serde_json::json;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::from_env();
    let quick = args.flag("--quick");
    let threads: usize = args.parsed("--threads", num_cpus())?;
    let preset = args.value("--model").unwrap_or_else(|| "bench".into());
    let max_tokens: u64 = args.parsed("--tokens", 96)?;
    let rounds = if quick {
        2
    } else {
        args.parsed("--rounds", 5)?
    };

    build_release_binaries()?;
    let model = bench_model(&preset)?;
    let server_bin = llama_server_binary()?;
    let version = llama_server_version(&server_bin);
    println!("# OpenAI API: modhost against llama-server");
    println!(
        "{} ({} cores), model {preset} ({} MiB), {threads} threads, {max_tokens} tokens, temperature 0",
        machine(),
        num_cpus(),
        std::fs::metadata(&model)?.len() >> 20
    );
    println!("llama-server: {version}; modhost's llama.cpp: llama-cpp-sys-2 0.1.161");

    // llama-server, one slot, the same context as LlamaChat gets.
    let anchor = LlamaServer::start(&server_bin, &model, threads, 1, 2048).await?;
    let anchor_base = anchor.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;

    let server = llama_chat_server(
        &model,
        threads as u32,
        &[
            ("CPAI_MODULE_LLAMA_CONTEXT_SIZE", "2048"),
            ("CPAI_MODULE_LLAMA_PARALLEL", "1"),
        ],
    )
    .await?;

    // Each round's prompt starts with its own words, so that both prompt
    // caches (on, as by default) reuse only the chat template's first tokens.
    let body = |anchor: bool, round: usize| {
        let prompt = format!("Round {round}. ")
            + &"Here is a long question about the planets of the solar system, asked twice. "
                .repeat(9);
        let mut body = json!({
            "max_tokens": max_tokens, "temperature": 0, "seed": 1, "stream": true,
            "messages": [{"role": "user", "content": prompt}],
        });
        if anchor {
            body["ignore_eos"] = json!(true);
        }
        body
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    // CPU time per thread name of each server (modhost with its module),
    // summed over the measured rounds.
    let (mut our_cpu, mut their_cpu) = (CpuTally::default(), CpuTally::default());
    let server_pid = server.pid().context("modhost's pid")?;
    // Alternating rounds, after a warm-up one, so that both see the same
    // machine conditions.
    for round in 0..=rounds {
        let before = cpu_by_thread(anchor.pid());
        let a = stream_chat(&http, &anchor_base, &body(true, round)).await?;
        let after = cpu_by_thread(anchor.pid());
        if round > 0 {
            their_cpu.add(&before, &after, a.tokens);
        }
        let before = cpu_by_thread(server_pid);
        let m = stream_chat(&http, &server.base, &body(false, round)).await?;
        let after = cpu_by_thread(server_pid);
        if round > 0 {
            our_cpu.add(&before, &after, m.tokens);
            theirs.push(a);
            ours.push(m);
        }
    }
    drop(anchor);

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
    // A model that reaches its end-of-text token early (the tiny one) ends
    // modhost's chats there, while llama-server is told to ignore it: a
    // decode rate over a few tokens is no match for one over all of them.
    let comparable = tokens(&ours) >= tokens(&theirs);
    let decode = if comparable {
        format!("{:.1} %", 100.0 * tps(&ours) / tps(&theirs))
    } else {
        format!(
            "not comparable (modhost's chats ended at {} tokens, at the model's end of text; \
             llama-server's ran to {})",
            tokens(&ours),
            tokens(&theirs)
        )
    };
    println!(
        "\nmodhost / llama-server: decode {decode} (target ≥ 99 %), first token {:+.1} ms (target ≤ +2 ms)",
        ttft(&ours) - ttft(&theirs)
    );
    println!(
        "(medians of {rounds} alternating rounds after a warm-up; streamed with temperature 0)"
    );
    if comparable {
        println!(
            "decode ratio round by round: {}",
            round_ratios(
                ours.iter()
                    .zip(&theirs)
                    .map(|(m, a)| (m.decode_tps, a.decode_tps))
            )
        );
    }
    println!(
        "\nCPU time per streamed token, by process/thread (prompt included; /proc, 10 ms ticks):"
    );
    their_cpu.print("llama-server");
    our_cpu.print("modhost + LlamaChat");
    Ok(())
}
