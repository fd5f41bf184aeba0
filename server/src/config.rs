//! Server configuration: one struct read from three sources.
//!
//! Precedence is file < environment < command line: a TOML file (`--config`,
//! sample in `modhost.sample.toml`) gives the base, `MODHOST_*` environment
//! variables override it, and command-line flags override both. Unknown keys in
//! the file are rejected so a typo is an error, not a silently ignored setting.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Default HTTP port, the one CodeProject.AI Server uses.
pub const DEFAULT_PORT: u16 = 32168;

/// Command line and environment of `modhost`. Every field is optional here so
/// that an unset flag falls through to the config file, then to the default.
#[derive(Debug, Default, Parser)]
#[command(
    name = "modhost",
    version,
    about = "AI module host, wire-compatible with CodeProject.AI Server"
)]
pub struct Cli {
    /// TOML config file; its values sit below environment variables and flags.
    #[arg(long, env = "MODHOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP port [default: 32168].
    #[arg(long, env = "MODHOST_PORT")]
    pub port: Option<u16>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long, env = "MODHOST_BIND")]
    pub bind: Option<IpAddr>,
    /// Directories holding one sub-directory per module [default: modules];
    /// repeat the flag, or separate with ':' in the environment variable.
    #[arg(
        long = "modules-dir",
        env = "MODHOST_MODULES_DIRS",
        value_delimiter = ':'
    )]
    pub modules_dirs: Vec<PathBuf>,
    /// Seconds a client request may wait for its module's reply, queue time
    /// included [default: 60].
    #[arg(long, env = "MODHOST_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Commands a module queue holds before new ones are refused [default: 1024].
    #[arg(long, env = "MODHOST_QUEUE_LENGTH")]
    pub queue_length: Option<usize>,
    /// Largest accepted request body, in bytes [default: 52428800 = 50 MiB].
    #[arg(long, env = "MODHOST_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Directory for the daily `log-YYYY-MM-DD.txt` files [default: logs].
    #[arg(long, env = "MODHOST_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Run no module install scripts; a module that is not installed is
    /// marked FailedStart, with the reason in its status [default: false].
    #[arg(long, env = "MODHOST_NO_INSTALL", num_args = 0..=1, default_missing_value = "true")]
    pub no_install: Option<bool>,
    /// Development mode: also merge each module's
    /// `modulesettings.development.json` variants, as CodeProject.AI Server
    /// does when it runs in development [default: false].
    #[arg(long, env = "MODHOST_DEVELOPMENT", num_args = 0..=1, default_missing_value = "true")]
    pub development: Option<bool>,
}

/// The `[server]`-less flat TOML file; see `modhost.sample.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// As `--port`.
    pub port: Option<u16>,
    /// As `--bind`.
    pub bind: Option<IpAddr>,
    /// As `--modules-dir`, a list; relative paths are from the current directory.
    pub modules_dirs: Option<Vec<PathBuf>>,
    /// As `--request-timeout-secs`, in seconds.
    pub request_timeout_secs: Option<u64>,
    /// As `--queue-length`, in commands.
    pub queue_length: Option<usize>,
    /// As `--max-body-bytes`, in bytes.
    pub max_body_bytes: Option<usize>,
    /// As `--log-dir`.
    pub log_dir: Option<PathBuf>,
    /// As `--no-install`.
    pub no_install: Option<bool>,
    /// As `--development`.
    pub development: Option<bool>,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port to listen on; 0 picks a free one (tests).
    pub port: u16,
    /// Address to bind.
    pub bind: IpAddr,
    /// Directories scanned for `*/modulesettings.json`, first id wins.
    pub modules_dirs: Vec<PathBuf>,
    /// Longest a client waits for a reply, queue time included.
    pub request_timeout: Duration,
    /// Bound of each module queue.
    pub queue_length: usize,
    /// Bound of request bodies, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Directory for daily log files.
    pub log_dir: PathBuf,
    /// Skip install scripts of modules that are not installed.
    pub no_install: bool,
    /// Development mode: the `*.development.json` manifest variants apply.
    pub development: bool,
    /// Root of the installation (`%ROOT_PATH%`): the current directory.
    pub root_path: PathBuf,
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named by `--config` / `MODHOST_CONFIG` cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or has an unknown key or a value
    /// of the wrong type; `source` names the line.
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A setting out of range (e.g. a zero queue length); `name` is its
    /// config-file key.
    #[error("invalid setting {name}: {problem}")]
    Invalid { name: &'static str, problem: String },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: DEFAULT_PORT,
            bind: IpAddr::from([127, 0, 0, 1]),
            modules_dirs: vec![PathBuf::from("modules")],
            request_timeout: Duration::from_secs(60),
            queue_length: 1024,
            max_body_bytes: 50 * 1024 * 1024,
            log_dir: PathBuf::from("logs"),
            no_install: false,
            development: false,
            root_path: PathBuf::from("."),
        }
    }
}

impl Config {
    /// Builds the configuration from the parsed command line (which already
    /// holds the environment variables) and the optional file it names.
    ///
    /// # Errors
    /// An unreadable or invalid file, unknown keys in it, or a zero timeout or
    /// queue length.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let modules_dirs = if !cli.modules_dirs.is_empty() {
            cli.modules_dirs
        } else {
            file.modules_dirs.unwrap_or(defaults.modules_dirs)
        };
        let root_path = std::env::current_dir().unwrap_or(defaults.root_path);
        let absolute = |p: PathBuf| {
            if p.is_absolute() {
                p
            } else {
                root_path.join(p)
            }
        };
        let config = Config {
            port: cli.port.or(file.port).unwrap_or(defaults.port),
            bind: cli.bind.or(file.bind).unwrap_or(defaults.bind),
            modules_dirs: modules_dirs.into_iter().map(absolute).collect(),
            request_timeout: cli
                .request_timeout_secs
                .or(file.request_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(defaults.request_timeout),
            queue_length: cli
                .queue_length
                .or(file.queue_length)
                .unwrap_or(defaults.queue_length),
            max_body_bytes: cli
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            log_dir: absolute(cli.log_dir.or(file.log_dir).unwrap_or(defaults.log_dir)),
            no_install: cli.no_install.or(file.no_install).unwrap_or(false),
            development: cli.development.or(file.development).unwrap_or(false),
            root_path: root_path.clone(),
        };
        config.validate()?;
        Ok(config)
    }

    fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.request_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                name: "request_timeout_secs",
                problem: "must be at least 1".into(),
            });
        }
        if self.queue_length == 0 {
            return Err(ConfigError::Invalid {
                name: "queue_length",
                problem: "must be at least 1".into(),
            });
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                name: "max_body_bytes",
                problem: "must be at least 1024".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        let config =
            Config::from_cli(Cli::parse_from(["modhost", "--no-install", "false"])).unwrap();
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
    fn sample_config_in_the_repo_parses() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../modhost.sample.toml");
        let cli = Cli::parse_from(["modhost", "--config", sample]);
        let config = Config::from_cli(cli).unwrap();
        assert_eq!(config.port, DEFAULT_PORT);
    }
}
