//! A server under test: the real binary ([`Server`]) or run in this
//! process ([`InProcess`]); both hand out an [`Api`].

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binary;

use crate::{Api, ModuleDir};

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

    /// `modhost` (`--no-install`) with the real LlamaChat module on the
    /// demo model `preset` (`tiny`, `small`, `bench`), once LlamaChat is
    /// Started.
    pub async fn with_llama_chat(preset: &str) -> Result<Server> {
        let root = Self::root()?;
        ModuleDir::llama_chat(&root.path().join("modules"), preset)?;
        let server = Self::start(root, &["--no-install"]).await?;
        server
            .wait_for_status("LlamaChat", "Started", Duration::from_secs(60))
            .await?;
        Ok(server)
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
