//! modhost's benchmarks: figures printed, nothing asserted (BENCHMARKS.md).
//!
//! `cargo bench -p modhost-tests --bench system` builds the release binaries
//! it drives, then measures, on this machine:
//!
//! 1. **Host overhead.** A no-op command, HTTP → queue → Rust SDK module
//!    (`examples/echo`) → back, at 1, 16 and 64 concurrent clients: latency
//!    p50/p99 and throughput; beside it the same client against a bare
//!    actix-web handler (this binary re-run as `--bare-server`) returning the
//!    same JSON, and the ratio.
//! 2. **Server memory**: modhost's resident set idle, and its peak under the
//!    64-client load.
//! 3. **`get_command_status` latency** while a chat is generating.
//! 4. **Chat throughput**: LlamaChat's decode tokens/s and time to first
//!    token through modhost, against a direct in-process llama-cpp-2 loop on
//!    the same model, threads and sampling settings, on the tiny test model
//!    and on the ~0.5 B-parameter `bench` model (random weights, Q8_0).
//!
//! Flags: `--quick` (fewer requests and rounds), `--no-llm` (host figures
//! only), `--no-host` (chat figures only), `--models tiny,bench`, `--threads N` (llama.cpp threads; default
//! all cores), `--rounds N` (decode rounds per model; default 7 on tiny, 3 on
//! bench, 2 with `--quick`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{
    bench_model, build_release_binaries, llama_chat_server, machine, median, ms, num_cpus,
    percentile, round_ratios, rss_mib,
};
use llama_chat::engine::{backend, EngineConfig, LlamaEngine};
use llama_chat::generation::decode_rate;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use modhost_tests::{ModuleDir, Server};

mod common;
use serde_json::Value;

const PROMPT: &str = "Tell me about the planets of the solar system, one by one.";
const SYSTEM_PROMPT: &str = "You are a helpful assistant.";
const TEMPERATURE: f32 = 0.8;
const SEED: u32 = 1234;

struct Options {
    quick: bool,
    host: bool,
    llm: bool,
    models: Vec<String>,
    threads: u32,
    /// Decode rounds per model, when not the preset's.
    rounds: Option<usize>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-server") {
        let body = args
            .get(i + 1)
            .context("--bare-server needs the reply body")?
            .clone();
        return bare_server(body);
    }
    let flag_value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let options = Options {
        quick: args.iter().any(|a| a == "--quick"),
        host: !args.iter().any(|a| a == "--no-host"),
        llm: !args.iter().any(|a| a == "--no-llm"),
        models: flag_value("--models")
            .unwrap_or_else(|| "tiny,bench".into())
            .split(',')
            .map(str::to_owned)
            .collect(),
        threads: flag_value("--threads")
            .map(|t| t.parse())
            .transpose()?
            .unwrap_or_else(llama_chat::engine::default_threads),
        rounds: flag_value("--rounds").map(|n| n.parse()).transpose()?,
    };
    build_release_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> Result<()> {
    println!("modhost benchmarks: {} CPUs, {}", num_cpus(), machine());
    if options.host {
        host_overhead(&options).await?;
    }
    if options.llm {
        for preset in &options.models {
            chat_throughput(preset, &options).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- host overhead

/// Latency figures of one load run.
struct Load {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

/// `total` POSTs to `url` from `clients` concurrent clients (each waits for its
/// reply before sending again), after a warm-up.
async fn load(url: &str, clients: usize, total: usize) -> Result<Load> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    for _ in 0..200.min(total) {
        http.post(url).send().await?.bytes().await?;
    }
    let per_client = total.div_ceil(clients);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.spawn(async move {
            let mut times = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let sent = Instant::now();
                let body = http.post(&url).send().await?.bytes().await?;
                times.push(sent.elapsed());
                if !body.starts_with(b"{") {
                    bail!("unexpected reply {:?}", String::from_utf8_lossy(&body));
                }
            }
            Ok::<_, anyhow::Error>(times)
        });
    }
    let mut times = Vec::with_capacity(per_client * clients);
    while let Some(result) = tasks.join_next().await {
        times.extend(result??);
    }
    let elapsed = started.elapsed();
    times.sort();
    Ok(Load {
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
        per_second: times.len() as f64 / elapsed.as_secs_f64(),
    })
}

async fn host_overhead(options: &Options) -> Result<()> {
    let root = Server::root()?;
    ModuleDir::echo(&root.path().join("modules"))?;
    let server = Server::start(root, &["--log-dir", "/tmp/modhost-bench-logs"]).await?;
    server
        .wait_for_status("Echo", "Started", Duration::from_secs(30))
        .await?;
    let pid = server.pid().context("server pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mib(pid);

    let echo_url = server.url("/v1/echo/echo");
    let sample = reqwest::Client::new()
        .post(&echo_url)
        .send()
        .await?
        .text()
        .await?;
    let bare = BareServer::start(&sample)?;

    println!("\n## No-op command round trip (HTTP → queue → Rust SDK echo module → back) vs a bare actix-web handler");
    println!("| clients | modhost p50 ms | p99 ms | req/s | bare p50 ms | p99 ms | req/s | p50 overhead ms | p99 overhead ms | latency ratio (p50) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut peak_rss = idle_rss;
    for clients in [1usize, 16, 64] {
        let total = match (options.quick, clients) {
            (true, 1) => 1000,
            (true, _) => 3000,
            (false, 1) => 5000,
            (false, _) => 20000,
        };
        let sampler = (clients == 64).then(|| {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = Arc::new(MaxF64::new());
            let (s, m) = (Arc::clone(&stop), Arc::clone(&seen));
            let thread = std::thread::spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    m.record(rss_mib(pid));
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            (stop, seen, thread)
        });
        let host = load(&echo_url, clients, total).await?;
        if let Some((stop, seen, thread)) = sampler {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
            peak_rss = peak_rss.max(seen.get());
        }
        let plain = load(&bare.url, clients, total).await?;
        println!(
            "| {clients} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.1}× |",
            ms(host.p50),
            ms(host.p99),
            host.per_second,
            ms(plain.p50),
            ms(plain.p99),
            plain.per_second,
            ms(host.p50) - ms(plain.p50),
            ms(host.p99) - ms(plain.p99),
            ms(host.p50) / ms(plain.p50).max(1e-6),
        );
    }
    println!("\n## modhost server memory (resident set, the server process only)");
    println!("| idle, Echo module started | peak under 64 clients |");
    println!("|---|---|");
    println!("| {idle_rss:.1} MiB | {peak_rss:.1} MiB |");
    Ok(())
}

/// The largest f64 recorded, shared between threads without a lock.
struct MaxF64(std::sync::atomic::AtomicU64);

impl MaxF64 {
    fn new() -> Self {
        Self(std::sync::atomic::AtomicU64::new(0f64.to_bits()))
    }

    fn record(&self, v: f64) {
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |old| (v > f64::from_bits(old)).then_some(v.to_bits()),
        );
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// This benchmark binary re-run as a bare actix-web server in its own process
/// (as modhost is), answering every POST with `body`.
struct BareServer {
    child: std::process::Child,
    url: String,
}

impl BareServer {
    fn start(body: &str) -> Result<Self> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["--bare-server", body])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("piped")?).read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("bare server said {line:?}"))?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}/echo"),
        })
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bare_server(body: String) -> Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let body = actix_web::web::Bytes::from(body);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        println!("{}", listener.local_addr()?.port());
        actix_web::HttpServer::new(move || {
            let body = body.clone();
            actix_web::App::new().default_service(actix_web::web::to(move || {
                let body = body.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }))
        })
        .listen(listener)?
        .run()
        .await?;
        Ok(())
    })
}

// ---------------------------------------------------------------- chat throughput

/// One chat's figures.
#[derive(Clone, Copy)]
struct ChatRun {
    tokens_per_second: f64,
    ttft_ms: f64,
}

/// A context like the module's: the engine's size, batch 512, `threads`.
fn direct_context(engine: &LlamaEngine, threads: u32) -> Result<LlamaContext<'_>> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(engine.context_size()))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    Ok(engine.model().new_context(backend(), params)?)
}

/// A direct in-process llama-cpp-2 loop, as llama-cpp-rs's `examples/simple`:
/// on `kept` (its KV cache cleared, as modhost's generation thread does) or a
/// fresh context (as a program that chats once), the prompt decoded in one
/// batch, then one token at a time with the sampler chain the module builds
/// for these settings (temperature, then a seeded draw).
fn direct_chat<'m>(
    engine: &'m LlamaEngine,
    threads: u32,
    max_tokens: u32,
    system: &str,
    kept: Option<&mut LlamaContext<'m>>,
) -> Result<ChatRun> {
    let tokens = engine.tokenize(&engine.render_prompt(system, PROMPT)?);
    let model = engine.model();
    let started = Instant::now();
    let mut fresh;
    let ctx = match kept {
        Some(ctx) => {
            ctx.clear_kv_cache();
            ctx
        }
        None => {
            fresh = direct_context(engine, threads)?;
            &mut fresh
        }
    };
    let mut batch = LlamaBatch::new(512, 1);
    for (i, token) in tokens.iter().enumerate() {
        batch.add(*token, i as i32, &[0], i + 1 == tokens.len())?;
    }
    ctx.decode(&mut batch)?;
    let mut sampler =
        LlamaSampler::chain_simple([LlamaSampler::temp(TEMPERATURE), LlamaSampler::dist(SEED)]);
    let vocab = model.vocab();
    let mut piece = Vec::new();
    let mut first = None;
    let mut last_token = None;
    let mut last = batch.n_tokens() - 1;
    let mut generated = 0;
    let mut pos = tokens.len() as i32;
    while generated < max_tokens {
        let token = sampler.sample(ctx, last);
        let now = Instant::now();
        first.get_or_insert(now);
        if vocab.is_eog(token) {
            break;
        }
        last_token = Some(now);
        generated += 1;
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        if generated == max_tokens {
            break;
        }
        batch.clear();
        batch.add(token, pos, &[0], true)?;
        pos += 1;
        ctx.decode(&mut batch)?;
        last = 0;
    }
    Ok(ChatRun {
        // Counted as LlamaChat counts its own.
        tokens_per_second: decode_rate(generated, first, last_token),
        ttft_ms: ms(first.map_or(Duration::ZERO, |f| f.duration_since(started))),
    })
}

/// Figures of one chat through modhost: the module's own (it measures from
/// the moment its generation thread takes the chat) and the client's round
/// trip for the command that starts it (whose reply competes for the cores
/// with the generation it started).
struct ModhostRun {
    chat: ChatRun,
    start_rtt_ms: f64,
}

async fn modhost_chat(
    server: &Server,
    max_tokens: u32,
    system: &str,
    poll: Duration,
) -> Result<ModhostRun> {
    let values = [
        ("prompt", PROMPT.to_owned()),
        ("system_prompt", system.to_owned()),
        ("max_tokens", max_tokens.to_string()),
        ("temperature", TEMPERATURE.to_string()),
        ("seed", SEED.to_string()),
    ];
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sent = Instant::now();
    let (_, started) = server.post_form("/v1/text/chat", &values).await?;
    let start_rtt_ms = ms(sent.elapsed());
    let id = started["commandId"]
        .as_str()
        .with_context(|| format!("no commandId: {started}"))?
        .to_owned();
    loop {
        tokio::time::sleep(poll).await;
        let (_, status) = server
            .post_form("/v1/LlamaChat/get_command_status", &[("commandId", &id)])
            .await?;
        match status["commandStatus"].as_str() {
            Some("running") => continue,
            Some("completed") => {
                return Ok(ModhostRun {
                    chat: ChatRun {
                        tokens_per_second: status["tokens_per_second"].as_f64().unwrap_or(0.0),
                        ttft_ms: status["time_to_first_token_ms"].as_f64().unwrap_or(0.0),
                    },
                    start_rtt_ms,
                })
            }
            _ => bail!("chat failed: {status}"),
        }
    }
}

/// The p50 of `get_command_status` round trips to the idle LlamaChat module.
async fn idle_round_trip(server: &Server, samples: usize) -> Result<Duration> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let sent = Instant::now();
        server
            .post_form("/v1/LlamaChat/get_command_status", &[("commandId", "none")])
            .await?;
        times.push(sent.elapsed());
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

/// `get_command_status` round trips while a chat generates.
async fn status_latency(server: &Server, samples: usize) -> Result<(Duration, Duration, u64)> {
    let (_, started) = server
        .post_form(
            "/v1/text/chat",
            &[
                ("prompt", PROMPT),
                ("max_tokens", "0"),
                ("temperature", "0.8"),
            ],
        )
        .await?;
    let id = started["commandId"]
        .as_str()
        .context("commandId")?
        .to_owned();
    let mut times = Vec::with_capacity(samples);
    let mut last: Value = Value::Null;
    for _ in 0..samples {
        let sent = Instant::now();
        let (_, status) = server
            .post_form("/v1/LlamaChat/get_command_status", &[("commandId", &id)])
            .await?;
        times.push(sent.elapsed());
        last = status;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running = last["commandStatus"] == "running";
    server
        .post_form("/v1/LlamaChat/cancel_command", &[("commandId", &id)])
        .await?;
    if !running {
        bail!("the chat ended before the samples were taken; use a larger model: {last}");
    }
    times.sort();
    Ok((
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        last["completion_tokens"].as_u64().unwrap_or(0),
    ))
}

async fn chat_throughput(preset: &str, options: &Options) -> Result<()> {
    let path = bench_model(preset)?;
    // Decode rounds generate max_tokens; first-token rounds generate one token,
    // more of them, since a first token varies by a few percent run to run.
    let (max_tokens, rounds, first_token_rounds) = match (preset, options.quick) {
        ("tiny", true) => (256, 3, 10),
        ("tiny", false) => (512, 7, 40),
        (_, true) => (32, 2, 4),
        (_, false) => (64, 3, 15),
    };
    let rounds = options.rounds.unwrap_or(rounds);
    let threads = options.threads;
    println!("\n## LlamaChat on the {preset} model ({} MiB), {threads} threads, {max_tokens} tokens, temperature {TEMPERATURE}", std::fs::metadata(&path)?.len() >> 20);

    // The direct loop loads the model in this process; modhost's module in its own.
    let engine = tokio::task::block_in_place(|| {
        LlamaEngine::load(
            &path,
            EngineConfig {
                threads,
                parallel: 1,
                ..EngineConfig::default()
            },
        )
    })?;
    let server = llama_chat_server(&path, threads, &[]).await?;

    let hop_ms = ms(idle_round_trip(&server, 200).await?);
    // Alternate the three so that all see the same machine conditions.
    let mut kept = direct_context(&engine, threads)?;
    let (mut fresh, mut reused, mut hosted) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fresh_first, mut reused_first, mut hosted_first) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=rounds.max(first_token_rounds) {
        for (tokens, wanted, f_out, r_out, h_out) in [
            (max_tokens, rounds, &mut fresh, &mut reused, &mut hosted),
            (
                1,
                first_token_rounds,
                &mut fresh_first,
                &mut reused_first,
                &mut hosted_first,
            ),
        ] {
            if round > wanted {
                continue;
            }
            // A system prompt of its own per round and kind: LlamaChat's
            // prompt cache then reuses only the template's first few tokens.
            let system = format!("Round {round}, {tokens} tokens. {SYSTEM_PROMPT}");
            let f = tokio::task::block_in_place(|| {
                direct_chat(&engine, threads, tokens, &system, None)
            })?;
            let r = tokio::task::block_in_place(|| {
                direct_chat(&engine, threads, tokens, &system, Some(&mut kept))
            })?;
            let h = modhost_chat(&server, tokens, &system, Duration::from_millis(250)).await?;
            if round > 0 {
                // Round 0 warms caches and page-ins up.
                f_out.push(f);
                r_out.push(r);
                h_out.push(h);
            }
        }
    }
    let tps = |runs: &[ChatRun]| median(runs.iter().map(|r| r.tokens_per_second).collect());
    let ttft = |runs: &[ChatRun]| median(runs.iter().map(|r| r.ttft_ms).collect());
    let module: Vec<ChatRun> = hosted.iter().map(|h| h.chat).collect();
    let module_first: Vec<ChatRun> = hosted_first.iter().map(|h| h.chat).collect();
    let rtt = median(hosted.iter().map(|r| r.start_rtt_ms).collect());
    let (h_tps, h_ttft) = (tps(&module), ttft(&module_first));
    // What the host adds before the module's generation thread takes a chat:
    // the command's way in (HTTP, queue, long poll, dispatch), bounded by a
    // whole command round trip to the idle module.
    let ttft_hosted = h_ttft + hop_ms;
    println!("| | decode tokens/s | time to first token ms | modhost decode vs this | modhost first token vs this |");
    println!("|---|---|---|---|---|");
    for (name, runs, firsts) in [
        ("direct loop, fresh context per chat", &fresh, &fresh_first),
        (
            "direct loop, context kept between chats",
            &reused,
            &reused_first,
        ),
    ] {
        let (d_tps, d_ttft) = (tps(runs), ttft(firsts));
        println!(
            "| {name} | {d_tps:.1} | {d_ttft:.2} | {:.1} % | {:+.2} ms |",
            100.0 * h_tps / d_tps,
            ttft_hosted - d_ttft
        );
    }
    println!("| through modhost: the module's figures | {h_tps:.1} | {h_ttft:.2} | | |");
    let paired = |runs: &[ChatRun]| {
        round_ratios(
            module
                .iter()
                .zip(runs)
                .map(|(m, d)| (m.tokens_per_second, d.tokens_per_second)),
        )
    };
    println!(
        "(modhost's decode over the loop's, round by round: fresh context {}; kept context {})",
        paired(&fresh),
        paired(&reused)
    );
    println!(
        "| through modhost: module + command delivery ({hop_ms:.2} ms, an idle command round trip) | | {ttft_hosted:.2} | | |"
    );
    println!("(medians of alternating rounds after a warm-up: {rounds} of {max_tokens} tokens for decode, {first_token_rounds} of one token for the first token; the client polls get_command_status every 250 ms)");
    println!("(the reply to the start command itself took {rtt:.2} ms: it is sent while the generation it started holds the cores)");
    // Free this process's copy of the model before timing the server alone.
    drop(kept);
    drop(engine);

    // The tiny model fills its context in a fraction of a second: too quick
    // to poll while it generates.
    if preset != "tiny" {
        let samples = if options.quick { 200 } else { 1000 };
        let (p50, p99, tokens) = status_latency(&server, samples).await?;
        println!(
            "\nget_command_status while generating ({samples} sequential polls, reply up to {tokens} tokens): p50 {:.3} ms, p99 {:.3} ms",
            ms(p50),
            ms(p99)
        );
    }
    Ok(())
}
