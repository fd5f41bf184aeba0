use clap::Parser;

use super::*;

fn write(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn command_line_overrides_file_and_file_overrides_defaults() {
    let file = write("port = 9000\nqueue_length = 7\nrequest_timeout_secs = 5\n");
    let cli = Cli::parse_from([
        "modhost",
        "--config",
        file.path().to_str().unwrap(),
        "--port",
        "9100",
    ]);
    let config = Config::from_cli(cli).unwrap();
    assert_eq!(config.port, 9100, "flag beats file");
    assert_eq!(config.queue_length, 7, "file beats default");
    assert_eq!(config.request_timeout, Duration::from_secs(5));
    assert_eq!(config.max_body_bytes, 50 * 1024 * 1024, "default kept");
}

#[test]
fn environment_overrides_file_and_command_line_overrides_environment() {
    // MODHOST_LOG_DIR is read by clap here and by no other test, so setting
    // it cannot change what the tests running beside this one see.
    let file = write("log_dir = \"/from/file\"\n");
    let path = file.path().to_str().unwrap();
    std::env::set_var("MODHOST_LOG_DIR", "/from/env");
    let from_env = Config::from_cli(Cli::parse_from(["modhost", "--config", path]));
    let from_flag = Config::from_cli(Cli::parse_from([
        "modhost",
        "--config",
        path,
        "--log-dir",
        "/from/flag",
    ]));
    std::env::remove_var("MODHOST_LOG_DIR");
    let from_file = Config::from_cli(Cli::parse_from(["modhost", "--config", path]));
    assert_eq!(from_file.unwrap().log_dir, Path::new("/from/file"));
    assert_eq!(
        from_env.unwrap().log_dir,
        Path::new("/from/env"),
        "env beats file"
    );
    assert_eq!(
        from_flag.unwrap().log_dir,
        Path::new("/from/flag"),
        "flag beats env"
    );
}

#[test]
fn unknown_key_in_file_is_rejected_by_name() {
    let file = write("prot = 9000\n");
    let cli = Cli::parse_from(["modhost", "--config", file.path().to_str().unwrap()]);
    let err = Config::from_cli(cli).unwrap_err().to_string();
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn no_install_is_a_flag_that_also_takes_a_value() {
    let config = Config::from_cli(Cli::parse_from(["modhost", "--no-install"])).unwrap();
    assert!(config.no_install);
    let config = Config::from_cli(Cli::parse_from(["modhost", "--no-install", "false"])).unwrap();
    assert!(!config.no_install);
    assert!(
        !Config::from_cli(Cli::parse_from(["modhost"]))
            .unwrap()
            .no_install
    );
}

#[test]
fn development_mode_comes_from_the_file_or_a_flag() {
    assert!(
        !Config::from_cli(Cli::parse_from(["modhost"]))
            .unwrap()
            .development
    );
    let file = write("development = true\n");
    let cli = Cli::parse_from(["modhost", "--config", file.path().to_str().unwrap()]);
    assert!(Config::from_cli(cli).unwrap().development);
    let cli = Cli::parse_from(["modhost", "--development"]);
    assert!(Config::from_cli(cli).unwrap().development);
}

#[test]
fn zero_queue_length_is_rejected() {
    let cli = Cli::parse_from(["modhost", "--queue-length", "0"]);
    let err = Config::from_cli(cli).unwrap_err().to_string();
    assert!(err.contains("queue_length"), "{err}");
}

#[test]
fn an_api_key_comes_from_a_file_and_must_not_be_trivial() {
    let key = write("s3cret-key-1234\nignored\n");
    let cli = Cli::parse_from(["modhost", "--api-key-file", key.path().to_str().unwrap()]);
    assert_eq!(
        Config::from_cli(cli).unwrap().api_key.as_deref(),
        Some("s3cret-key-1234")
    );
    let err = Config::from_cli(Cli::parse_from(["modhost", "--api-key", "short"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("api_key"), "{err}");
    let both = Cli::parse_from([
        "modhost",
        "--api-key",
        "long-enough-key",
        "--api-key-file",
        key.path().to_str().unwrap(),
    ]);
    assert!(Config::from_cli(both).is_err());
}

#[test]
fn lists_come_from_repeated_flags_or_the_file() {
    let file = write("allowed_origins = [\"http://a.lan\"]\nmodule_env = [\"FOO\"]\n");
    let path = file.path().to_str().unwrap();
    let config = Config::from_cli(Cli::parse_from(["modhost", "--config", path])).unwrap();
    assert_eq!(config.allowed_origins, ["http://a.lan"]);
    assert_eq!(config.module_env, ["FOO"]);
    let config = Config::from_cli(Cli::parse_from([
        "modhost",
        "--config",
        path,
        "--allowed-origin",
        "http://b.lan",
        "--allowed-origin",
        "http://c.lan",
    ]))
    .unwrap();
    assert_eq!(config.allowed_origins, ["http://b.lan", "http://c.lan"]);
    let config = Config::from_cli(Cli::parse_from(["modhost"])).unwrap();
    assert!(config
        .module_env
        .iter()
        .any(|v| v == "CUDA_VISIBLE_DEVICES"));
}

#[test]
fn sample_config_in_the_repo_parses() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../modhost.sample.toml");
    let cli = Cli::parse_from(["modhost", "--config", sample]);
    let config = Config::from_cli(cli).unwrap();
    assert_eq!(config.port, DEFAULT_PORT);
}
