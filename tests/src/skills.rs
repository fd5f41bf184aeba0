//! The example skills of `skills/examples`, built to WebAssembly components
//! for the tests, once per version of their sources.
//!
//! [`test_skills`] hashes the sources, builds into
//! `target/test-skills/<hash>/` when that folder is not complete yet, and
//! returns it. Building needs:
//! - the `wasm32-wasip2` Rust target (`rustup target add wasm32-wasip2`), for
//!   the Rust skills of `skills/examples/rust` (their own Cargo workspace,
//!   built into `target/skill-build`);
//! - `python3` with `venv`, for componentize-py (installed from PyPI into
//!   `target/skill-tools` on first use), for the Python skills of
//!   `skills/examples/python`.
//!
//! Several test binaries may ask at once: one builds, under an exclusive lock
//! on `target/test-skills/.lock`, and the others wait, then find it built.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::workspace_root;

/// The componentize-py release the Python skills are built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The Rust skills: crates of the `skills/examples/rust` workspace, each
/// built to `<crate>.wasm`.
pub const RUST_SKILLS: &[&str] = &[
    "noop", "search", "complete", "spin", "balloon", "fsprobe", "oldskill",
];

/// The Python skills: `(name, folder under skills/examples)`; each folder
/// holds `app.py` with `class SkillHandler`.
pub const PYTHON_SKILLS: &[(&str, &str)] = &[("assistant", "python/assistant")];

/// The WebAssembly Rust target the skills are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Variables an outer `cargo test` (or coverage tool) may have set that must
/// not reach the skills' build: flags for the host, another target dir or
/// target.
const LEAKING_CARGO_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
];

/// Builds the example skills (skills/examples) once per source hash and
/// returns the folder holding `{name}.wasm` for every skill: assistant, noop,
/// search, complete, spin, balloon, fsprobe, oldskill.
///
/// The folder is `target/test-skills/<first 16 hex digits of the hash>/`;
/// the hash covers every file under `skills/examples` (less `target/` and
/// `__pycache__/` folders), the WIT of `skillhost/wit`, and
/// [`COMPONENTIZE_PY_VERSION`]. A `.complete` marker, written last, says the
/// folder is whole.
///
/// # Errors
/// When a source cannot be read, or a step of the build fails: the error
/// names the command and carries what it printed. A missing Rust target says
/// to run `rustup target add wasm32-wasip2`.
pub fn test_skills() -> Result<PathBuf> {
    let root = workspace_root();
    let cache = root.join("target/test-skills");
    let hash = source_hash(&root)?;
    let out = cache.join(&hash[..16]);
    let marker = out.join(".complete");
    if marker.exists() {
        return Ok(out);
    }

    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let lock_path = cache.join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // Another process may have built it while this one waited.
    if marker.exists() {
        return Ok(out);
    }

    let started = Instant::now();
    if out.exists() {
        // Left by a build that died half-way.
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    build_rust_skills(&root, &out)?;
    build_python_skills(&root, &out)?;
    for name in all_skills() {
        check_component(&out.join(format!("{name}.wasm")))?;
    }
    fs::write(&marker, &hash).with_context(|| format!("writing {}", marker.display()))?;
    eprintln!(
        "built the example skills into {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    drop(lock);
    Ok(out)
}

/// The names of every skill [`test_skills`] builds.
pub fn all_skills() -> impl Iterator<Item = &'static str> {
    PYTHON_SKILLS
        .iter()
        .map(|(name, _)| *name)
        .chain(RUST_SKILLS.iter().copied())
}

/// SHA-256, in hex, of the skills' sources, the WIT and the componentize-py
/// version: each file as its path relative to `root`, its length and its
/// bytes, in path order.
fn source_hash(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(&root.join("skills/examples"), &mut files)?;
    collect_files(&root.join("skillhost/wit"), &mut files)?;
    let mut files: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            (relative.to_string_lossy().into_owned(), path)
        })
        .collect();
    files.sort();

    let mut hasher = Sha256::new();
    hasher.update(b"componentize-py ");
    hasher.update(COMPONENTIZE_PY_VERSION.as_bytes());
    for (relative, path) in files {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update([0u8]);
        hasher.update(relative.as_bytes());
        hasher.update([0u8]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Adds every file under `dir` to `files`, skipping build outputs (`target/`)
/// and Python's byte-code caches (`__pycache__/`, which componentize-py
/// writes beside the sources).
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            let name = path.file_name().unwrap_or_default();
            if name != "target" && name != "__pycache__" {
                collect_files(&path, files)?;
            }
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// `cargo build --release --target wasm32-wasip2` of the Rust skills'
/// workspace into `target/skill-build`, then each `<crate>.wasm` copied to
/// `out`.
fn build_rust_skills(root: &Path, out: &Path) -> Result<()> {
    let target_dir = root.join("target/skill-build");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(root.join("skills/examples/rust/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for var in LEAKING_CARGO_VARS {
        cargo.env_remove(var);
    }
    if let Err(error) = run(&mut cargo) {
        let text = format!("{error:#}");
        if text.contains("may not be installed")
            || text.contains("can't find crate for `core`")
            || text.contains("can't find crate for `std`")
        {
            return Err(error.context(format!(
                "the {WASM_TARGET} target is missing: run `rustup target add {WASM_TARGET}`"
            )));
        }
        return Err(error);
    }
    let built = target_dir.join(WASM_TARGET).join("release");
    for name in RUST_SKILLS {
        let from = built.join(format!("{name}.wasm"));
        let to = out.join(format!("{name}.wasm"));
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Each Python skill built by `componentize-py componentize app` in its own
/// folder, against the WIT of `skillhost/wit`, to `out/<name>.wasm`.
fn build_python_skills(root: &Path, out: &Path) -> Result<()> {
    let componentize_py = componentize_py(root)?;
    for (name, folder) in PYTHON_SKILLS {
        run(Command::new(&componentize_py)
            .arg("-d")
            .arg(root.join("skillhost/wit"))
            .args(["-w", "skill", "componentize", "app", "-o"])
            .arg(out.join(format!("{name}.wasm")))
            .current_dir(root.join("skills/examples").join(folder)))?;
    }
    Ok(())
}

/// `target/skill-tools/bin/componentize-py` at [`COMPONENTIZE_PY_VERSION`],
/// creating the virtual environment and installing it from PyPI when it is
/// missing or another version.
fn componentize_py(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/skill-tools");
    let exe = venv.join("bin/componentize-py");
    if exe.exists() {
        let version = run(Command::new(&exe).arg("--version"))?;
        if String::from_utf8_lossy(&version.stdout).contains(COMPONENTIZE_PY_VERSION) {
            return Ok(exe);
        }
    } else {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let requirement = format!("componentize-py=={COMPONENTIZE_PY_VERSION}");
    run(Command::new(venv.join("bin/python3")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        requirement.as_str(),
    ]))?;
    Ok(exe)
}

/// Fails unless `path` starts like a WebAssembly component (magic `\0asm`,
/// version 0x0d, layer 1), not a core module.
fn check_component(path: &Path) -> Result<()> {
    const HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(&HEADER) {
        bail!("{} is not a WebAssembly component", path.display());
    }
    Ok(())
}

/// Runs `command` to its end, capturing its output.
///
/// # Errors
/// When it cannot start or exits unsuccessfully: the error names the command
/// (and its folder) and carries its stderr and stdout.
fn run(command: &mut Command) -> Result<Output> {
    let mut described = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        described.push(' ');
        described.push_str(&arg.to_string_lossy());
    }
    if let Some(dir) = command.get_current_dir() {
        described.push_str(&format!(" (in {})", dir.display()));
    }
    let output = command
        .output()
        .with_context(|| format!("could not run `{described}`"))?;
    if !output.status.success() {
        bail!(
            "`{described}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        );
    }
    Ok(output)
}
