//! End-to-end test harness: starts the real `modhost` binary on a free port
//! with a temporary modules directory, and talks to it over HTTP.
//!
//! Binaries come from the workspace's target directory (`cargo test
//! --workspace` builds them: the packages that own them have integration
//! tests). Layout:
//! - [`Server`]: a running `modhost` process, stopped with SIGTERM on drop;
//! - [`InProcess`]: the server run in this test process through
//!   `modhost::run`, for tests of HTTP behaviour;
//! - [`ModuleDir`]: a module directory assembled for a test;
//! - [`python_venv`]: the virtual environment with the official CodeProject.AI
//!   Python SDK, created on first use;
//! - [`compat`]: the scenarios every module SDK passes under the server;
//! - [`skills`]: the example WebAssembly skills, built once per source hash.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod compat;
pub mod skills;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The profile directory the running test was built into (`target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable sits in target/<profile>/deps")
        .to_owned()
}

/// Path of a workspace binary or example, e.g. `binary("modhost")`,
/// `binary("examples/echo")`.
///
/// # Panics
/// When it has not been built, saying how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A module directory under a server's modules dir.
pub struct ModuleDir {
    /// `<root>/modules/<name>`.
    pub path: PathBuf,
}

impl ModuleDir {
    /// Copies every file of `source` (non-recursive) into `modules/<name>`.
    pub fn copy_from(modules: &Path, name: &str, source: &Path) -> Result<ModuleDir> {
        let path = modules.join(name);
        std::fs::create_dir_all(&path)?;
        for entry in
            std::fs::read_dir(source).with_context(|| format!("reading {}", source.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), path.join(entry.file_name()))?;
            }
        }
        Ok(ModuleDir { path })
    }

    /// `tests/modules/python_demo`, the module on the official Python SDK,
    /// as `modules/PythonDemo`.
    pub fn python_demo(modules: &Path) -> Result<ModuleDir> {
        Self::python_module(
            modules,
            "PythonDemo",
            &workspace_root().join("tests/modules/python_demo"),
        )
    }

    /// A module on the official Python SDK, copied from `source` into
    /// `modules/<name>`, its Local python3.11 runtime pointing at [`python_venv`].
    pub fn python_module(modules: &Path, name: &str, source: &Path) -> Result<ModuleDir> {
        let venv = python_venv()?;
        let module = Self::copy_from(modules, name, source)?;
        // RuntimeLocation Local: <module>/bin/linux/python311/venv/bin/python3.
        let local = module.path.join("bin/linux/python311");
        std::fs::create_dir_all(&local)?;
        std::os::unix::fs::symlink(&venv, local.join("venv"))?;
        Ok(module)
    }

    /// The SDK's example module `examples/echo` as `modules/Echo`.
    pub fn echo(modules: &Path) -> Result<ModuleDir> {
        let module = Self::copy_from(modules, "Echo", &workspace_root().join("sdk/examples/echo"))?;
        copy_executable(&binary("examples/echo"), &module.path.join("echo"))?;
        Ok(module)
    }

    /// The LlamaChat module as `modules/LlamaChat`, installed from this
    /// profile's build, with the demo model `preset` (`tiny` or `small`)
    /// written into its `models/`. Its module process uses one thread per
    /// chat (the tests share the cores).
    pub fn llama_chat(modules: &Path, preset: &str) -> Result<ModuleDir> {
        let scratch = tempfile::tempdir()?;
        let model = write_demo_model(
            preset,
            &scratch.path().join(format!("modhost-demo-{preset}.gguf")),
        )?;
        Self::llama_chat_with_model(modules, &model, 1)
    }

    /// The LlamaChat module as `modules/LlamaChat` with `model` moved (or, if
    /// it is kept elsewhere, linked) into its `models/` and named in its
    /// manifest, generating with `threads` threads.
    pub fn llama_chat_with_model(modules: &Path, model: &Path, threads: u32) -> Result<ModuleDir> {
        let source = workspace_root().join("modules/llama_chat");
        let module = Self::copy_from(modules, "LlamaChat", &source)?;
        std::fs::create_dir_all(module.path.join("bin"))?;
        copy_executable(&binary("llama_chat"), &module.path.join("bin/llama_chat"))?;
        let filename = model
            .file_name()
            .context("a model file name")?
            .to_string_lossy()
            .into_owned();
        let target = module.path.join("models").join(&filename);
        std::fs::create_dir_all(module.path.join("models"))?;
        if std::fs::rename(model, &target).is_err() {
            std::os::unix::fs::symlink(model, &target)?;
        }
        module.set_env("CPAI_MODULE_LLAMA_MODEL_FILENAME", &filename)?;
        module.set_env("CPAI_MODULE_LLAMA_THREADS", &threads.to_string())?;
        Ok(module)
    }

    /// Sets `name` in the manifest's `EnvironmentVariables` (which the server
    /// passes to the module, above its own environment): replaces the string
    /// value it has there, or adds it. Edits the text, so comments survive.
    pub fn set_env(&self, name: &str, value: &str) -> Result<()> {
        let file = self.path.join("modulesettings.json");
        let text = std::fs::read_to_string(&file)?;
        let value = serde_json::json!(value).to_string();
        let key = format!("\"{name}\":");
        let text = if let Some(at) = text.find(&key) {
            // The old value: the next string literal after the key.
            let open = at + key.len() + text[at + key.len()..].find('"').context("no value")?;
            let close = open + 1 + text[open + 1..].find('"').context("unterminated value")?;
            format!("{}{}{}", &text[..open], value, &text[close + 1..])
        } else {
            let marker = "\"EnvironmentVariables\": {";
            let at = text
                .find(marker)
                .with_context(|| format!("no EnvironmentVariables in {}", file.display()))?
                + marker.len();
            format!("{}\n        {key} {value},{}", &text[..at], &text[at..])
        };
        std::fs::write(&file, text)?;
        Ok(())
    }
}

/// Writes `dir/run.sh`, a module program that writes the environment the
/// server gave it to `dir/env.txt` (whole, by rename) and sleeps; returns
/// the path of `env.txt`. A manifest launches it with `"FilePath": "run.sh",
/// "Runtime": "execute"`.
pub fn write_env_recorder(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("run.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nenv > env.partial && mv env.partial env.txt\nexec sleep 600\n",
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir.join("env.txt"))
}

/// Writes the random-weight demo model `preset` (`tiny`, `small`, `bench`)
/// to `path` with `llama_chat demo-model`; returns `path`.
pub fn write_demo_model(preset: &str, path: &Path) -> Result<PathBuf> {
    let out = Command::new(binary("llama_chat"))
        .args(["demo-model", "--preset", preset])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "writing the {preset} demo model: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(path.to_owned())
}

/// The Python packages the tests use, pinned: the official CodeProject.AI
/// SDK (modules), and `httpx` with `httpx-sse` (a stream client from PyPI).
const PYTHON_PACKAGES: &[&str] = &[
    "codeproject-ai-sdk==0.0.21",
    "httpx==0.28.1",
    "httpx-sse==0.4.1",
    // The official clients of the OpenAI and Ollama APIs, and a tool on top.
    "openai==3.57.0",
    "ollama==0.6.3",
    "langchain-openai==1.8.1",
];

/// The Python virtual environment holding the pinned `PYTHON_PACKAGES`, made on
/// first use under `target/pyvenv` (shared by test runs; needs PyPI once).
pub fn python_venv() -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let venv = profile_dir().parent().expect("target dir").join("pyvenv");
    // The marker names the package list, so a changed list reinstalls.
    let marker = venv.join(format!(
        ".installed-{}",
        PYTHON_PACKAGES.join("+").replace(['=', '.'], "_")
    ));
    if marker.exists() {
        return Ok(venv);
    }
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    if !venv.join("bin/pip").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    std::fs::write(&marker, "")?;
    Ok(venv)
}

/// The server run inside the test process (`modhost::run` on its own thread
/// and actix system), on a free port, with a temporary modules and log
/// directory: for tests of HTTP behaviour. Modules it launches are still
/// real processes (they die with that thread).
pub struct InProcess {
    api: Api,
    /// Holds `modules/` and `logs/`.
    pub root: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Starts the server over `root` (made by [`Server::root`]) with `args`
    /// as on the command line (after `--port 0`, `--modules-dir`,
    /// `--log-dir` and `--data-dir`, so they may override nothing of those).
    pub fn start(root: tempfile::TempDir, args: &[&str]) -> Result<InProcess> {
        use clap::Parser as _;
        let modules = root.path().join("modules").display().to_string();
        let logs = root.path().join("logs").display().to_string();
        let data = root.path().join("data").display().to_string();
        let mut argv = vec![
            "modhost",
            "--modules-dir",
            &modules,
            "--log-dir",
            &logs,
            "--data-dir",
            &data,
        ];
        argv.extend_from_slice(args);
        let config = modhost::Config::from_cli(modhost::Cli::try_parse_from(argv)?)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("modhost-in-process".into())
            .spawn(move || {
                let served =
                    actix_web::rt::System::new().block_on(modhost::run(listener, config, stop));
                if let Err(err) = served {
                    eprintln!("in-process modhost failed: {err:#}");
                }
            })?;
        // A server with a key gets a client that sends it.
        let key = args
            .iter()
            .position(|a| *a == "--api-key")
            .and_then(|at| args.get(at + 1));
        let mut api = Api::new(port)?;
        if let Some(key) = key {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("X-API-Key", key.parse()?);
            api.http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .default_headers(headers)
                .build()?;
        }
        Ok(InProcess {
            api,
            root,
            shutdown,
            thread: Some(thread),
        })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running `modhost` with its own temporary root directory.
pub struct Server {
    child: Option<Child>,
    api: Api,
    /// The server's root (its current directory): `modules/`, `logs/`.
    pub root: tempfile::TempDir,
    output: Arc<Mutex<Vec<String>>>,
}

/// An HTTP client of one server, with the requests tests make often; both
/// [`Server`] and [`InProcess`] dereference to it.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for requests to `base`.
    pub http: reqwest::Client,
}

impl std::ops::Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl std::ops::Deref for InProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Server {
    /// A fresh root with an empty `modules/` directory, not yet started.
    pub fn root() -> Result<tempfile::TempDir> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("modules"))?;
        Ok(root)
    }

    /// Starts `modhost` in `root` on a free port with `args` added, and waits
    /// until it listens.
    pub async fn start(root: tempfile::TempDir, args: &[&str]) -> Result<Server> {
        Self::start_with(root, args, &[], None).await
    }

    /// [`Server::start`] with these variables added to the server's
    /// environment.
    pub async fn start_with_env(
        root: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server> {
        Self::start_with(root, args, env, None).await
    }

    /// [`Server::start`] with the server's open-file limit set to
    /// `(soft, hard)` first.
    pub async fn start_with_limits(
        root: tempfile::TempDir,
        args: &[&str],
        open_files: Option<(u64, u64)>,
    ) -> Result<Server> {
        Self::start_with(root, args, &[], open_files).await
    }

    async fn start_with(
        root: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        open_files: Option<(u64, u64)>,
    ) -> Result<Server> {
        let mut command = Command::new(binary("modhost"));
        if let Some((soft, hard)) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .envs(env.iter().copied())
            .current_dir(root.path())
            .args(["--port", "0"])
            .args(args)
            // Below the test's own flags, which may set it again.
            .env("MODHOST_REQUEST_TIMEOUT_SECS", "20")
            // MODHOST_TEST_LOG, e.g. `debug`, shows more when a test fails.
            .env(
                "MODHOST_LOG",
                std::env::var("MODHOST_TEST_LOG")
                    .unwrap_or_else(|_| "info,actix_server=warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting modhost")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let output = Arc::clone(&output);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    output.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(status) = child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100)); // let the readers catch up
                bail!(
                    "modhost exited at start-up ({status}):\n{}",
                    output.lock().unwrap().join("\n")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("modhost did not report its address within 30 s");
            }
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split(',').next().unwrap_or("");
                break addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .with_context(|| format!("no port in {line:?}"))?;
            }
        };
        Ok(Server {
            child: Some(child),
            api: Api::new(port)?,
            root,
            output,
        })
    }

    /// Process id of the server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Api {
    /// A client of the server on `port` of this machine.
    pub fn new(port: u16) -> Result<Api> {
        Ok(Api {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let response = self.http.get(self.url(path)).send().await?;
        Ok(response.json().await?)
    }

    /// POST a urlencoded form, returning status and JSON body.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Result<(u16, Value)> {
        let response = self.http.post(self.url(path)).form(form).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// The `/v1/module/list/status` entry of `module_id`.
    pub async fn module_status(&self, module_id: &str) -> Result<Value> {
        let list = self.get_json("/v1/module/list/status").await?;
        list["statuses"]
            .as_array()
            .and_then(|s| s.iter().find(|m| m["moduleId"] == module_id))
            .cloned()
            .with_context(|| format!("{module_id} not in {list}"))
    }

    /// The pid of `module_id`'s process, from its status entry.
    pub async fn module_pid(&self, module_id: &str) -> Result<u32> {
        let entry = self.module_status(module_id).await?;
        let pid = entry["pid"]
            .as_u64()
            .with_context(|| format!("{module_id} has no process: {entry}"))?;
        Ok(pid as u32)
    }

    /// The environment `module_id`'s process was started with, read from
    /// `/proc/<pid>/environ`: what the server passed it.
    pub async fn module_env(
        &self,
        module_id: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let pid = self.module_pid(module_id).await?;
        let raw = std::fs::read(format!("/proc/{pid}/environ"))
            .with_context(|| format!("reading the environment of {module_id} (pid {pid})"))?;
        Ok(raw
            .split(|&b| b == 0)
            .filter_map(|var| {
                let var = String::from_utf8_lossy(var);
                var.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect())
    }

    /// How `module_id`'s process reaches the server, from the environment the
    /// server gave it: the test can then play that module.
    pub async fn module_side(&self, module_id: &str) -> Result<ModuleSide> {
        let env = self.module_env(module_id).await?;
        let var = |name: &str| {
            env.get(name)
                .cloned()
                .with_context(|| format!("{module_id} has no {name}"))
        };
        Ok(ModuleSide {
            base: format!("http://127.0.0.1:{}/v1", var("CPAI_PORT")?),
            module_id: module_id.to_owned(),
            queue: var("CPAI_MODULE_QUEUENAME")?,
            token: var("MODHOST_MODULE_TOKEN")?,
        })
    }

    /// Sets `module_id`'s AutoStart, as the dashboard's Start and Stop do:
    /// `POST /v1/server/settings/{id}`; the HTTP status and the JSON body.
    pub async fn set_autostart(&self, module_id: &str, on: bool) -> Result<(u16, Value)> {
        let value = if on { "true" } else { "false" };
        self.post_form(
            &format!("/v1/server/settings/{module_id}"),
            &[("name", "AutoStart"), ("value", value)],
        )
        .await
    }

    /// Polls until `module_id` reports `status`, up to `timeout`.
    pub async fn wait_for_status(
        &self,
        module_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let entry = self.module_status(module_id).await?;
            if entry["status"] == status {
                return Ok(entry);
            }
            if Instant::now() > deadline {
                bail!("{module_id} did not reach {status} within {timeout:?}; last: {entry}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Server {
    /// Stops the server (SIGTERM) and hands back its root, to start another
    /// server over what this one left (settings, logs, modules).
    pub fn into_root(mut self) -> Result<tempfile::TempDir> {
        self.stop()?;
        Ok(std::mem::replace(&mut self.root, tempfile::tempdir()?))
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, or SIGINT as Ctrl-C does) and waits for the
    /// process to exit; returns its status.
    pub fn stop_with(&mut self, signal: libc::c_int) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("modhost did not exit within 20 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The module end of the protocol for a module the server launched, as its
/// environment says: its listener, queue name (with the launch token) and
/// token.
#[derive(Debug, Clone)]
pub struct ModuleSide {
    /// `http://127.0.0.1:<CPAI_PORT>/v1`.
    pub base: String,
    pub module_id: String,
    /// `CPAI_MODULE_QUEUENAME`: `<queue>~<token>`.
    pub queue: String,
    /// `MODHOST_MODULE_TOKEN`.
    pub token: String,
}

impl ModuleSide {
    /// The long-poll URL, as the CodeProject Python SDK builds it.
    pub fn poll_url(&self) -> String {
        format!(
            "{}/queue/{}?moduleId={}",
            self.base, self.queue, self.module_id
        )
    }

    /// The URL a reply to `reqid` is posted to.
    pub fn reply_url(&self, reqid: &str) -> String {
        format!("{}/queue/{reqid}?moduleId={}", self.base, self.module_id)
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Asserts that `body` is a failure answer (`success: false`) whose `error`
/// contains `needle`; the panic shows the whole body.
#[track_caller]
pub fn assert_error(body: &Value, needle: &str) {
    assert_eq!(body["success"], false, "not a failure: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(needle),
        "expected an error containing {needle:?}: {body}"
    );
}

/// [`assert_error`] on a raw response, after checking its HTTP `status`.
pub async fn assert_error_response(response: reqwest::Response, status: u16, needle: &str) {
    let code = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(code, status, "{body}");
    assert_error(&body, needle);
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- modhost output ----\n{}", self.output());
        }
    }
}

/// One Server-Sent Event of a job stream (docs/protocol.md §4.4).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The event id: 1, 2, 3 … within the job.
    pub id: u64,
    /// `delta`, `status`, `done` or `error`.
    pub event: String,
    pub data: Value,
}

/// Reads `response` as Server-Sent Events (with `eventsource-stream`) until
/// the server ends the stream, or `stop` says so after an event; comment
/// pings are skipped.
pub async fn read_sse(
    response: reqwest::Response,
    mut stop: impl FnMut(&SseEvent) -> bool,
) -> Result<Vec<SseEvent>> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| anyhow::anyhow!("reading the event stream: {e}"))?;
        let parsed = SseEvent {
            id: event
                .id
                .parse()
                .with_context(|| format!("event id {:?}", event.id))?,
            event: event.event,
            data: serde_json::from_str(&event.data)
                .with_context(|| format!("event data {:?}", event.data))?,
        };
        let done = stop(&parsed);
        events.push(parsed);
        if done {
            break;
        }
    }
    Ok(events)
}

/// The text of a stream's `delta` events, joined.
pub fn joined_deltas(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| e.data["text"].as_str())
        .collect()
}

/// Runs `tests/clients/sse_client.py` (httpx with httpx-sse, from PyPI) in
/// the test venv with `args`; its JSON output.
pub fn python_sse_client(args: &[&str]) -> Result<Value> {
    let venv = python_venv()?;
    let out = Command::new(venv.join("bin/python3"))
        .arg(workspace_root().join("tests/clients/sse_client.py"))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "sse_client.py {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Copies the executable `from` to `to` with `cp`, in a process of its own.
///
/// A copy made in this process holds `to` open for writing while it runs,
/// and a child that another test's thread forks meanwhile inherits that
/// descriptor until it execs: running `to` then fails with "Text file busy"
/// (ETXTBSY). `cp`'s descriptor is in `cp` alone, and closed when it exits.
///
/// # Errors
/// `cp` cannot be run, or fails (its exit status is named).
pub fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp").arg("--").arg(from).arg(to).status()?;
    anyhow::ensure!(
        status.success(),
        "cp {} {}: {status}",
        from.display(),
        to.display()
    );
    Ok(())
}
