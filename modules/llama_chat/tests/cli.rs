//! The `llama_chat` binary on its own: the demo-model tool, the self-test,
//! the missing-model error, and `install.sh` run twice with a prebuilt binary.
//!
//! (Being an integration test of this package also makes `cargo test
//! --workspace` build the `llama_chat` binary that the end-to-end tests in
//! `tests/` launch under the server.)

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llama_chat");

fn run(cmd: &mut Command) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

/// `llama_chat` with a model directory and file, one thread, and no server.
fn with_model(dir: &Path, filename: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CPAI_MODULE_LLAMA_MODEL_DIR", dir)
        .env("CPAI_MODULE_LLAMA_MODEL_FILENAME", filename)
        .env("CPAI_MODULE_LLAMA_THREADS", "1")
        .env_remove("CPAI_MODULE_LLAMA_MODEL_REPO");
    cmd
}

#[test]
fn a_written_demo_model_passes_the_selftest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    let (ok, text) = run(Command::new(BIN)
        .args(["demo-model", "--preset", "tiny"])
        .arg(&out));
    assert!(ok, "{text}");
    assert!(std::fs::metadata(&out).unwrap().len() > 100_000);
    let (ok, text) = run(with_model(dir.path(), "tiny.gguf").arg("--selftest"));
    assert!(ok, "{text}");
    assert!(text.contains("self-test passed"), "{text}");
}

#[test]
fn a_missing_model_fails_with_one_error_that_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = run(with_model(dir.path(), "phi-3.gguf").arg("--selftest"));
    assert!(!ok, "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("phi-3.gguf does not exist"), "{text}");
    assert!(
        errors[0].contains("CPAI_MODULE_LLAMA_MODEL_FILENAME"),
        "{text}"
    );
}

#[test]
fn an_unknown_preset_is_named() {
    let (ok, text) = run(Command::new(BIN).args(["demo-model", "--preset", "huge", "x.gguf"]));
    assert!(!ok);
    assert!(text.contains("unknown preset 'huge'"), "{text}");
}

#[test]
fn install_script_is_idempotent_and_ends_with_a_passing_selftest() {
    let root = tempfile::tempdir().unwrap();
    let module = root.path().join("modules/llama_chat");
    std::fs::create_dir_all(&module).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["install.sh", "modulesettings.json"] {
        std::fs::copy(source.join(file), module.join(file)).unwrap();
    }
    let install = || {
        run(Command::new("bash")
            .arg(module.join("install.sh"))
            .env("LLAMA_CHAT_PREBUILT", BIN)
            .env("CPAI_MODULE_LLAMA_THREADS", "1")
            .env_remove("CPAI_MODULE_LLAMA_MODEL_DIR")
            .env_remove("CPAI_MODULE_LLAMA_MODEL_FILENAME"))
    };
    let (ok, text) = install();
    assert!(ok, "{text}");
    assert!(text.contains("this is the demo model"), "{text}");
    assert!(text.contains("LlamaChat install: installed"), "{text}");
    let model = module.join("models/modhost-demo-tiny.gguf");
    let written = std::fs::metadata(&model).unwrap().modified().unwrap();
    assert!(module.join("bin/llama_chat").is_file());

    let (ok, text) = install();
    assert!(ok, "second run: {text}");
    assert_eq!(
        std::fs::metadata(&model).unwrap().modified().unwrap(),
        written,
        "the model was kept"
    );
}

#[test]
fn fetch_model_generates_the_demo_model_and_prints_only_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_model(dir.path(), "modhost-demo-tiny.gguf")
        .arg("fetch-model")
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.path().join("modhost-demo-tiny.gguf");
    // Logs go to stderr, so scripts can take stdout as the path.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", path.display())
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("writing the random-weight demo model"));
    assert!(path.is_file());
}
