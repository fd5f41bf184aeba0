//! What the benchmark binaries share: building the release binaries they
//! drive, machine facts, percentiles, and the demo models written once.

#![allow(dead_code)] // each benchmark binary uses its own part

pub mod anchor;
pub mod openai;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use modhost_tests::{workspace_root, write_demo_model, ModuleDir, Server};

/// `cargo build --release` of what the benchmarks launch: this file only
/// drives them, so they are rebuilt to match the source.
pub fn build_release_binaries() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--bins",
            "--examples",
            "-p",
            "modhost",
            "-p",
            "llama_chat",
            "-p",
            "modhost-sdk",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}

/// The benchmark's command line: `--flag` switches and `--name value` pairs.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().collect())
    }

    /// Whether `--flag` was given.
    pub fn flag(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }

    /// The value after `name`, if given.
    pub fn value(&self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).cloned()
    }

    /// The value after `name` parsed, or `default` when it is not given.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.value(name)
            .map_or(Ok(default), |v| v.parse())
            .with_context(|| format!("{name} takes a value of another form"))
    }
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Resident set of a process, in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The demo model `preset`, written once into `target/bench-models/`.
pub fn bench_model(preset: &str) -> Result<PathBuf> {
    let dir = modhost_tests::profile_dir()
        .parent()
        .context("target dir")?
        .join("bench-models");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("modhost-demo-{preset}.gguf"));
    if !path.exists() {
        println!("(writing the {preset} demo model to {})", path.display());
        let tmp = dir.join(format!("writing-{preset}.gguf"));
        write_demo_model(preset, &tmp)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// Raises this process's soft open-file limit to its hard limit, for
/// benchmarks that open thousands of connections.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// modhost (the release binary) with LlamaChat on `model` (linked into a
/// fresh root), generating with `threads` threads, its manifest's
/// environment changed by `env`; once LlamaChat is Started.
pub async fn llama_chat_server(
    model: &std::path::Path,
    threads: u32,
    env: &[(&str, &str)],
) -> Result<Server> {
    let root = Server::root()?;
    let link = root.path().join(model.file_name().context("file name")?);
    std::os::unix::fs::symlink(model, &link)?;
    let module = ModuleDir::llama_chat_with_model(&root.path().join("modules"), &link, threads)?;
    for (name, value) in env {
        module.set_env(name, value)?;
    }
    let server = Server::start(
        root,
        &["--no-install", "--log-dir", "/tmp/modhost-bench-logs"],
    )
    .await?;
    server
        .wait_for_status("LlamaChat", "Started", Duration::from_secs(300))
        .await?;
    Ok(server)
}

/// CPU time (user + system) used so far by each thread of process `pid` and
/// of its descendants, summed per `process/thread` name (`/proc/*/task/*/stat`,
/// clock ticks of 10 ms on Linux: sum over a run of seconds, not a token).
pub fn cpu_by_thread(pid: u32) -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    for pid in process_tree(pid) {
        let process = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        // The process's own stat counts its exited threads too (a long
        // command's thread, say): what its live threads do not account for.
        let mut live = Duration::ZERO;
        let whole = cpu_ticks(&format!("/proc/{pid}/stat")).map(|(_, d)| d);
        for task in tasks.flatten() {
            let Some((name, used)) = cpu_ticks(&task.path().join("stat").display().to_string())
            else {
                continue;
            };
            live += used;
            *out.entry(format!("{}/{}", process.trim(), name))
                .or_insert(Duration::ZERO) += used;
        }
        if let Some(whole) = whole {
            *out.entry(format!("{}/(exited threads)", process.trim()))
                .or_insert(Duration::ZERO) += whole.saturating_sub(live);
        }
    }
    out
}

/// Process `pid` and its descendants (`/proc/<pid>/task/*/children`).
fn process_tree(pid: u32) -> Vec<u32> {
    let (mut todo, mut all) = (vec![pid], Vec::new());
    while let Some(pid) = todo.pop() {
        all.push(pid);
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    all
}

/// The share of `model`'s mappings in process `pid` and its descendants
/// that is mapped in 2 MiB pages (`FilePmdMapped` over `Size` in their
/// smaps; see `llama_chat::hugepages`), `0.0..=1.0`; `None` when none of
/// them maps it.
pub fn model_in_huge_pages(pid: u32, model: &std::path::Path) -> Option<f64> {
    let model = model.canonicalize().ok()?;
    let suffix = format!(" {}", model.display());
    let (mut size, mut pmd) = (0, 0);
    for pid in process_tree(pid) {
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
            continue;
        };
        if let Some(m) = llama_chat::hugepages::mapped_bytes(&smaps, |h| h.ends_with(&suffix)) {
            size += m.size;
            pmd += m.pmd;
        }
    }
    (size > 0).then(|| pmd as f64 / size as f64)
}

/// Seconds per clock tick, the unit of `/proc`'s CPU times.
fn clock_tick() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    1.0 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0)
}

/// The name and CPU time (user + system) in a `/proc/.../stat` file.
fn cpu_ticks(path: &str) -> Option<(String, Duration)> {
    let tick = clock_tick();
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
    let (name, rest) = stat
        .split_once(" (")
        .and_then(|(_, r)| r.rsplit_once(") "))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Some((
        name.to_owned(),
        Duration::from_secs_f64(ticks as f64 * tick),
    ))
}

/// What each `process/thread` name used between two [`cpu_by_thread`] readings.
pub fn cpu_used(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> Vec<(String, Duration)> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or_default()),
            )
        })
        .filter(|(_, d)| !d.is_zero())
        .collect()
}

/// modhost's decode rate over the other's (llama-server's, or a direct
/// loop's) in each round, in %, sorted and
/// written `a, b, c % (median m %, mean g % ± e %)` (to 0.1): each round's
/// two runs, seconds apart, see the same machine, so their spread says how
/// far the medians can be trusted, and the median of these paired ratios is
/// less moved by the machine's drift over the run than the ratio of the two
/// medians. The mean is geometric and `e` its standard error (from the
/// logarithms' spread; both left out below two rounds): a mean two standard
/// errors from 100 % is a difference the rounds' noise does not explain.
pub fn round_ratios(pairs: impl Iterator<Item = (f64, f64)>) -> String {
    let mut ratios: Vec<f64> = pairs.map(|(ours, theirs)| 100.0 * ours / theirs).collect();
    ratios.sort_by(f64::total_cmp);
    let listed = ratios
        .iter()
        .map(|r| format!("{r:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mean = match geometric_mean_and_error(&ratios) {
        Some((mean, error)) => format!(", mean {mean:.1} % ± {error:.1} %"),
        None => String::new(),
    };
    format!("{listed} % (median {:.1} %{mean})", median(ratios))
}

/// The geometric mean of `values` (all positive) and its standard error, in
/// their unit; `None` for fewer than two.
fn geometric_mean_and_error(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let logs: Vec<f64> = values.iter().map(|v| v.ln()).collect();
    let mean = logs.iter().sum::<f64>() / n as f64;
    let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let error = (variance / n as f64).sqrt();
    // The error of the logarithm, as a relative error of the mean.
    Some((mean.exp(), mean.exp() * error))
}

/// CPU time beside a server's, so far: the machine's cores idle or stolen
/// by its hypervisor (`/proc/stat`: idle, iowait and steal, all cores
/// summed) and this bench client's threads (`/proc/self/stat`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Beside {
    idle: Duration,
    client: Duration,
}

impl Beside {
    /// A reading now; zeros where `/proc` cannot be read.
    pub fn now() -> Self {
        let tick = clock_tick();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // "cpu  user nice system idle iowait irq softirq steal ...", in ticks.
        let idle: u64 = stat
            .lines()
            .next()
            .filter(|l| l.starts_with("cpu "))
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .map(|v| v.parse().unwrap_or(0))
                    .collect();
                [3, 4, 7].iter().filter_map(|&i| f.get(i)).sum()
            })
            .unwrap_or(0);
        Self {
            idle: Duration::from_secs_f64(idle as f64 * tick),
            client: cpu_ticks("/proc/self/stat").map_or(Duration::ZERO, |(_, d)| d),
        }
    }
}

/// CPU time per thread name over several rounds, what the machine did
/// beside them, and the tokens streamed.
#[derive(Default)]
pub struct CpuTally {
    used: BTreeMap<String, Duration>,
    beside: Beside,
    tokens: usize,
}

impl CpuTally {
    /// Adds what was used between two [`cpu_by_thread`] readings, for `tokens` tokens.
    pub fn add(
        &mut self,
        before: &BTreeMap<String, Duration>,
        after: &BTreeMap<String, Duration>,
        tokens: usize,
    ) {
        for (name, d) in cpu_used(before, after) {
            *self.used.entry(name).or_default() += d;
        }
        self.tokens += tokens;
    }

    /// Adds what the machine did beside the server between two [`Beside`]
    /// readings (taken around the same rounds as [`CpuTally::add`]'s).
    pub fn add_beside(&mut self, before: Beside, after: Beside) {
        self.beside.idle += after.idle.saturating_sub(before.idle);
        self.beside.client += after.client.saturating_sub(before.client);
    }

    /// Prints the CPU time per token, in all and by `process/thread`.
    pub fn print(&self, what: &str) {
        let per_token = |d: Duration| d.as_secs_f64() * 1000.0 / self.tokens.max(1) as f64;
        let total: Duration = self.used.values().sum();
        println!("- {what}: {:.2} ms in all", per_token(total));
        for (name, d) in &self.used {
            println!("  - {name}: {:.3} ms", per_token(*d));
        }
        if self.beside.idle + self.beside.client > Duration::ZERO {
            println!(
                "  - beside it: the machine's cores idle {:.2} ms, this bench client {:.2} ms",
                per_token(self.beside.idle),
                per_token(self.beside.client)
            );
        }
    }
}
