//! LlamaChat serving several chats at once, side by side with llama-server
//! (BENCHMARKS.md, issue 13): figures printed, nothing asserted.
//!
//! `cargo bench -p modhost-tests --bench batching` builds the release
//! binaries, then for 1, 2, 4 and 8 concurrent chats starts modhost with
//! LlamaChat at `CPAI_MODULE_LLAMA_PARALLEL` = chats and llama-server with
//! `-np` = chats, on the same GGUF (the generated `bench` model), threads and
//! per-slot context, and runs the chats at once on each, alternating rounds,
//! greedy, a fixed `max_tokens`, each chat a conversation of its own, given
//! to both servers as the same `messages` JSON (so both decode the same
//! prompt tokens; the bench says so if they differ). It prints:
//!
//! - *aggregate decode tokens/s*: the sum over the chats of each one's decode
//!   rate as its server measures it (llama-server's
//!   `timings.predicted_per_second`, LlamaChat's `tokens_per_second`), from
//!   its first token to its last;
//! - *end to end tokens/s*: all chats' tokens over the wall-clock time from
//!   sending them to the last answer, prompts included, measured here;
//!
//! and modhost's ratio to llama-server for both. Then the time to the first
//! token of a follow-up turn whose conversation shares a ~500-token start
//! with the turn before, against the same turn cold, on both servers with
//! their prompt caches on.
//!
//! Both stream their replies, as chat clients do: modhost through its
//! one-call SSE form of `POST /v1/text/chat` (its final `done` event carries
//! the statistics), llama-server through `POST /v1/chat/completions` with
//! `stream` (its last chunk carries `timings`) and `ignore_eos`, so both
//! generate exactly `max_tokens`.
//!
//! Each round's pair of runs, seconds apart, sees the same machine; their
//! decode ratios, round by round, show how far the medians can be trusted.
//! The CPU time per token of each server's processes and threads follows,
//! and what the machine did beside it (its cores idle, this client's work).
//!
//! Flags: `--quick` (1 round), `--rounds N` (default 3), `--threads N`
//! (default all cores), `--tokens N` (default 64), `--chats 1,2,4,8`,
//! `--model tiny|bench`, `--no-follow-up` (the concurrent chats only),
//! `--first-tokens` (print when each chat's first text came, from the start
//! of its round: chats whose prompts shared a batch have the same time).

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::anchor::{llama_server_binary, llama_server_version, LlamaServer};
use common::openai::stream_chat;
use common::{
    bench_model, build_release_binaries, cpu_by_thread, llama_chat_server, machine, median,
    model_in_huge_pages, num_cpus, round_ratios, Args, Beside, CpuTally,
};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Context of each slot, tokens, on both servers.
const CTX_PER_SLOT: usize = 2048;

/// What one chat reported.
struct Chat {
    tokens: u64,
    /// Tokens of its rendered prompt, cached ones included.
    prompt_tokens: u64,
    decode_tps: f64,
    /// When its first text arrived, from the start of its round.
    first: Duration,
}

/// The conversation of chat `i` of round `round`, the same JSON for both
/// servers (so that both decode the same tokens; LlamaChat would otherwise
/// add its default system prompt): one user message of its own, so that no
/// prompt cache helps either server beyond the template's first tokens.
fn conversation(round: usize, i: usize) -> Value {
    json!([{
        "role": "user",
        "content": format!("Round {round}, chat {i}: tell me a long story about the planets and their moons."),
    }])
}

/// One chat through modhost's one-call SSE form; its final statistics.
async fn modhost_chat(
    http: &reqwest::Client,
    base: &str,
    messages: &Value,
    tokens: u64,
    started: Instant,
) -> Result<Chat> {
    let response = http
        .post(format!("{base}/v1/text/chat"))
        .header("Accept", "text/event-stream")
        .form(&[
            ("messages", messages.to_string().as_str()),
            ("max_tokens", &tokens.to_string()),
            ("temperature", "0"),
        ])
        .send()
        .await?;
    let mut events = response.bytes_stream().eventsource();
    let mut first = None;
    while let Some(event) = events.next().await {
        let event = event?;
        match event.event.as_str() {
            "delta" => {
                first.get_or_insert_with(|| started.elapsed());
            }
            "done" => {
                let done: Value = serde_json::from_str(&event.data)?;
                return Ok(Chat {
                    tokens: done["completion_tokens"]
                        .as_u64()
                        .context("completion_tokens")?,
                    prompt_tokens: done["prompt_tokens"].as_u64().context("prompt_tokens")?,
                    decode_tps: done["tokens_per_second"]
                        .as_f64()
                        .context("tokens_per_second")?,
                    first: first.context("no text before the end")?,
                });
            }
            "error" => bail!("modhost: {}", event.data),
            _ => {}
        }
    }
    bail!("modhost: the stream ended without a result")
}

/// One chat through llama-server's OpenAI API, streamed as modhost's is;
/// its timings (from the last chunk).
async fn anchor_chat(
    http: &reqwest::Client,
    base: &str,
    messages: &Value,
    tokens: u64,
    started: Instant,
) -> Result<Chat> {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "messages": messages,
            "max_tokens": tokens, "temperature": 0, "ignore_eos": true, "stream": true,
        }))
        .send()
        .await?;
    let mut events = response.bytes_stream().eventsource();
    let mut first = None;
    while let Some(event) = events.next().await {
        let event = event?;
        if event.data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data)?;
        if chunk["choices"][0]["delta"]["content"].is_string() {
            first.get_or_insert_with(|| started.elapsed());
        }
        let timings = &chunk["timings"];
        if let Some(decode_tps) = timings["predicted_per_second"].as_f64() {
            return Ok(Chat {
                tokens: timings["predicted_n"].as_u64().context("predicted_n")?,
                prompt_tokens: timings["prompt_n"].as_u64().context("prompt_n")?
                    + timings["cache_n"].as_u64().unwrap_or(0),
                decode_tps,
                first: first.context("no text before the end")?,
            });
        }
    }
    bail!("llama-server: no timings in the stream")
}

/// What `n` chats at once gave.
struct Round {
    /// Aggregate decode tokens/s.
    decode: f64,
    /// All tokens over the round's wall-clock time, per second.
    end_to_end: f64,
    /// Tokens in all.
    tokens: u64,
    /// Prompt tokens of each chat, in order (the same on both servers when
    /// both rendered the same conversation).
    prompts: Vec<u64>,
    /// When each chat's first text came, ms from the start, in order.
    firsts: Vec<f64>,
}

/// A server under test.
struct Target<'a> {
    base: &'a str,
    /// Its process, whose threads' CPU time is read around each round.
    pid: u32,
    /// modhost (LlamaChat's SSE form), or else llama-server.
    modhost: bool,
}

/// A [`round`] on `target`, whose CPU time is added to `tally` unless it is
/// the warm-up (round 0).
async fn measured_round(
    http: &reqwest::Client,
    target: &Target<'_>,
    n: usize,
    r: usize,
    tokens: u64,
    tally: &mut CpuTally,
) -> Result<Round> {
    let (before, beside) = (cpu_by_thread(target.pid), Beside::now());
    let got = round(http, target.base, target.modhost, n, r, tokens).await?;
    let (after, beside_after) = (cpu_by_thread(target.pid), Beside::now());
    if r > 0 {
        tally.add(&before, &after, got.tokens as usize);
        tally.add_beside(beside, beside_after);
    }
    Ok(got)
}

/// `n` chats at once.
async fn round(
    http: &reqwest::Client,
    base: &str,
    modhost: bool,
    n: usize,
    round: usize,
    tokens: u64,
) -> Result<Round> {
    let started = Instant::now();
    let chats = futures_util::future::try_join_all((0..n).map(|i| {
        let messages = conversation(round, i);
        async move {
            if modhost {
                modhost_chat(http, base, &messages, tokens, started).await
            } else {
                anchor_chat(http, base, &messages, tokens, started).await
            }
        }
    }))
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let total: u64 = chats.iter().map(|c| c.tokens).sum();
    let decode: f64 = chats.iter().map(|c| c.decode_tps).sum();
    let mut firsts: Vec<f64> = chats.iter().map(|c| common::ms(c.first)).collect();
    firsts.sort_by(f64::total_cmp);
    Ok(Round {
        decode,
        end_to_end: total as f64 / wall,
        tokens: total,
        prompts: chats.iter().map(|c| c.prompt_tokens).collect(),
        firsts,
    })
}

/// A ~500-token text of its own for `round`.
fn long_text(round: usize) -> String {
    let mut text = format!("Notes {round}. ");
    for i in 0..24 {
        text.push_str(&format!("Planet {i} has moons and rings. "));
    }
    text
}

/// Time to first token of a cold turn and of its follow-up, ms.
async fn follow_up(http: &reqwest::Client, base: &str, round: usize) -> Result<(f64, f64, u64)> {
    let first = json!({"role": "user", "content": long_text(round) + "Summarise."});
    let body = |messages: Value| {
        json!({
            "messages": messages, "max_tokens": 16, "temperature": 0, "stream": true,
            "stream_options": {"include_usage": true},
        })
    };
    let cold = stream_chat(http, base, &body(json!([first]))).await?;
    let next = json!([first, {"role": "assistant", "content": cold.text},
                      {"role": "user", "content": "And the moons?"}]);
    let warm = stream_chat(http, base, &body(next)).await?;
    Ok((
        cold.first_token_ms,
        warm.first_token_ms,
        cold.prompt_tokens.unwrap_or(0),
    ))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::from_env();
    let quick = args.flag("--quick");
    let threads: usize = args.parsed("--threads", num_cpus())?;
    let tokens: u64 = args.parsed("--tokens", 64)?;
    let preset = args.value("--model").unwrap_or_else(|| "bench".into());
    let counts: Vec<usize> = args
        .value("--chats")
        .unwrap_or_else(|| "1,2,4,8".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rounds = if quick {
        1
    } else {
        args.parsed("--rounds", 3)?
    };
    let show_firsts = args.flag("--first-tokens");
    let follow_ups = !args.flag("--no-follow-up");

    build_release_binaries()?;
    let model = bench_model(&preset)?;
    let server_bin = llama_server_binary()?;
    println!("# Several chats at once: modhost (LlamaChat) against llama-server");
    println!(
        "{} ({} cores), model {preset} ({} MiB), {threads} threads, {tokens} tokens per chat, greedy, {CTX_PER_SLOT}-token context per slot",
        machine(),
        num_cpus(),
        std::fs::metadata(&model)?.len() >> 20
    );
    println!(
        "llama-server: {}; modhost's llama.cpp: llama-cpp-sys-2 0.1.161",
        llama_server_version(&server_bin)
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(900))
        .build()?;

    println!("\n| chats | modhost decode tok/s | llama-server decode tok/s | decode ratio | modhost end to end tok/s | llama-server end to end tok/s | end to end ratio |");
    println!("|---|---|---|---|---|---|---|");
    let mut cpu = Vec::new();
    let mut pages = Vec::new();
    let mut prompts = Vec::new();
    for &n in &counts {
        let ctx = CTX_PER_SLOT.to_string();
        let slots = n.to_string();
        // modhost first: LlamaChat puts the model file in the page cache in
        // 2 MiB pages, which llama-server's map of the same file then gets
        // too, so both decode from the same pages.
        let server = llama_chat_server(
            &model,
            threads as u32,
            &[
                ("CPAI_MODULE_LLAMA_CONTEXT_SIZE", &ctx),
                ("CPAI_MODULE_LLAMA_PARALLEL", &slots),
            ],
        )
        .await?;
        let anchor = LlamaServer::start(&server_bin, &model, threads, n, CTX_PER_SLOT).await?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut our_cpu, mut their_cpu) = (CpuTally::default(), CpuTally::default());
        let server_pid = server.pid().context("modhost's pid")?;
        pages.push((
            n,
            model_in_huge_pages(anchor.pid(), &model),
            model_in_huge_pages(server_pid, &model),
        ));
        // A warm-up round, then alternating ones: llama-server first in even
        // rounds, modhost first in odd ones, so that neither always runs on
        // a machine the other has just warmed (or heated).
        let theirs_on = Target {
            base: &anchor.base,
            pid: anchor.pid(),
            modhost: false,
        };
        let ours_on = Target {
            base: &server.base,
            pid: server_pid,
            modhost: true,
        };
        for r in 0..=rounds {
            let (a, m);
            if r % 2 == 0 {
                a = measured_round(&http, &theirs_on, n, r, tokens, &mut their_cpu).await?;
                m = measured_round(&http, &ours_on, n, r, tokens, &mut our_cpu).await?;
            } else {
                m = measured_round(&http, &ours_on, n, r, tokens, &mut our_cpu).await?;
                a = measured_round(&http, &theirs_on, n, r, tokens, &mut their_cpu).await?;
            }
            if a.tokens != m.tokens {
                println!(
                    "(round {r}: llama-server generated {} tokens, modhost {})",
                    a.tokens, m.tokens
                );
            }
            if a.prompts != m.prompts {
                println!(
                    "(round {r}: prompt tokens differ: llama-server {:?}, modhost {:?})",
                    a.prompts, m.prompts
                );
            }
            if show_firsts {
                println!(
                    "(round {r}, first text at ms: llama-server {:.0?}, modhost {:.0?})",
                    a.firsts, m.firsts
                );
            }
            if r > 0 {
                theirs.push(a);
                ours.push(m);
            }
        }
        drop(server);
        drop(anchor);
        if let Some(last) = ours.last() {
            prompts.push((n, last.prompts.clone()));
        }
        let decode = |v: &[Round]| median(v.iter().map(|r| r.decode).collect());
        let e2e = |v: &[Round]| median(v.iter().map(|r| r.end_to_end).collect());
        println!(
            "| {n} | {:.1} | {:.1} | {:.0} % | {:.1} | {:.1} | {:.0} % |",
            decode(&ours),
            decode(&theirs),
            100.0 * decode(&ours) / decode(&theirs),
            e2e(&ours),
            e2e(&theirs),
            100.0 * e2e(&ours) / e2e(&theirs),
        );
        let ratios = round_ratios(ours.iter().zip(&theirs).map(|(m, a)| (m.decode, a.decode)));
        cpu.push((n, ratios, their_cpu, our_cpu));
    }
    println!("(medians of {rounds} alternating rounds after a warm-up; targets: ratio ≥ 100 % at 4 and 8 chats)");
    let share = |s: Option<f64>| s.map_or("?".to_owned(), |s| format!("{:.0} %", 100.0 * s));
    for (n, theirs, ours) in &pages {
        println!(
            "(model in 2 MiB pages at {n} chats: llama-server {}, modhost {})",
            share(*theirs),
            share(*ours)
        );
    }
    for (n, tokens) in &prompts {
        println!("(prompt tokens of the {n} chats in the last round, the same on both unless said above: {tokens:?})");
    }
    println!(
        "\nCPU time per generated token, by process/thread (prompts included; /proc, 10 ms ticks):"
    );
    for (n, ratios, theirs, ours) in &cpu {
        println!("{n} chats (decode ratio round by round: {ratios}):");
        theirs.print("llama-server");
        ours.print("modhost + LlamaChat");
    }

    if !follow_ups {
        return Ok(());
    }
    // The follow-up turn, one chat at a time.
    let ctx = CTX_PER_SLOT.to_string();
    let server = llama_chat_server(
        &model,
        threads as u32,
        &[("CPAI_MODULE_LLAMA_CONTEXT_SIZE", &ctx)],
    )
    .await?;
    let anchor = LlamaServer::start(&server_bin, &model, threads, 1, CTX_PER_SLOT).await?;
    let (mut ours, mut theirs, mut prompt_tokens) = (Vec::new(), Vec::new(), 0);
    for r in 0..rounds {
        theirs.push(follow_up(&http, &anchor.base, 100 + r).await?);
        let m = follow_up(&http, &server.base, 100 + r).await?;
        prompt_tokens = m.2;
        ours.push(m);
    }
    drop(server);
    drop(anchor);
    println!("\n| first token | cold ms | follow-up ms | follow-up / cold |");
    println!("|---|---|---|---|");
    for (name, runs) in [("modhost", &ours), ("llama-server", &theirs)] {
        let cold = median(runs.iter().map(|r| r.0).collect());
        let warm = median(runs.iter().map(|r| r.1).collect());
        println!(
            "| {name} | {cold:.0} | {warm:.0} | {:.1} % |",
            100.0 * warm / cold
        );
    }
    println!(
        "(the first turn's prompt: {prompt_tokens} tokens on modhost; the follow-up adds a 16-token reply and a question; medians of {rounds}; target: follow-up ≤ 20 % of cold)"
    );
    Ok(())
}
