//! What a test assembles before it starts a server: module directories,
//! demo models, the Python environment with the official SDK.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::{binary, profile_dir, workspace_root};

/// A module directory under a server's modules dir.
pub struct ModuleDir {
    /// `<root>/modules/<name>`.
    pub path: PathBuf,
}

impl ModuleDir {
    /// `modules/<name>` holding `manifest` as its `modulesettings.json`, and
    /// nothing else: a module the test plays, or one whose program the test
    /// writes next to it.
    pub fn with_manifest(modules: &Path, name: &str, manifest: &str) -> Result<ModuleDir> {
        let path = modules.join(name);
        std::fs::create_dir_all(&path)?;
        std::fs::write(path.join("modulesettings.json"), manifest)?;
        Ok(ModuleDir { path })
    }

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
