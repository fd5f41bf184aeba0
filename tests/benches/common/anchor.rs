//! llama.cpp's own `llama-server`, the anchor the LLM benchmarks compare
//! modhost with (`../shared/reference/anchors.md`): found or built, started on
//! a model, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use modhost_tests::workspace_root;

/// The llama-server binary: `$LLAMA_SERVER`, else
/// `target/anchors/llama.cpp-*/build/bin/llama-server`, else built there with
/// `../shared/tools/build-llama-server.sh` when that script exists.
pub fn llama_server_binary() -> Result<PathBuf> {
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

/// The first line of `llama-server --version`, e.g. `version: 11434 (...)`.
pub fn llama_server_version(binary: &std::path::Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running llama-server; killed when dropped.
pub struct LlamaServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl LlamaServer {
    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `binary` on `model` with `threads` threads and `slots` slots of
    /// `ctx_per_slot` tokens each (`-c` is the total, split per slot), and
    /// waits until `/health` answers. Its log goes to
    /// `/tmp/llama-server-bench.log`.
    pub async fn start(
        binary: &std::path::Path,
        model: &std::path::Path,
        threads: usize,
        slots: usize,
        ctx_per_slot: usize,
    ) -> Result<Self> {
        let port = free_port()?;
        let log = std::fs::File::create("/tmp/llama-server-bench.log")?;
        let child = Command::new(binary)
            .args(["-m", &model.display().to_string()])
            .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
            .args(["-c", &(ctx_per_slot * slots).to_string()])
            .args(["-np", &slots.to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--no-webui")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting llama-server")?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ready = http.get(format!("{}/health", server.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("llama-server did not get ready (log: /tmp/llama-server-bench.log)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
