//! The `modhost` binary's command line: configuration errors are reported
//! clearly and stop the server before it listens.
//!
//! (Being an integration test of this package also makes `cargo test
//! --workspace` build the `modhost` binary that the end-to-end tests in
//! `tests/` start.)

use std::process::Command;

fn modhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modhost"))
}

#[test]
fn help_lists_every_setting() {
    let out = modhost().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--port",
        "--bind",
        "--modules-dir",
        "--request-timeout-secs",
        "--queue-length",
        "--max-body-bytes",
        "--log-dir",
        "--no-install",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn an_unknown_key_in_the_config_file_stops_the_server_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("modhost.toml");
    std::fs::write(&file, "prot = 1\n").unwrap();
    let out = modhost()
        .current_dir(dir.path())
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `prot`"), "{stderr}");
    assert!(stderr.contains("modhost.toml"), "{stderr}");
}

#[test]
fn an_invalid_environment_value_names_the_variable() {
    let out = modhost().env("MODHOST_PORT", "seventy").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--port"), "{stderr}");
    assert!(stderr.contains("seventy"), "{stderr}");
}
