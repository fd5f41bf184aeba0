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
    /// Directory for what the server keeps between runs: the module
    /// settings changed from the dashboard (`module-settings.json`)
    /// [default: data].
    #[arg(long, env = "MODHOST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run no module install scripts; a module that is not installed is
    /// marked FailedStart, with the reason in its status [default: false].
    #[arg(long, env = "MODHOST_NO_INSTALL", num_args = 0..=1, default_missing_value = "true")]
    pub no_install: Option<bool>,
    /// Development mode: also merge each module's
    /// `modulesettings.development.json` variants, as CodeProject.AI Server
    /// does when it runs in development [default: false].
    #[arg(long, env = "MODHOST_DEVELOPMENT", num_args = 0..=1, default_missing_value = "true")]
    pub development: Option<bool>,
    /// Most values and files one request may carry, query string included;
    /// more get 413 [default: 10000].
    #[arg(long, env = "MODHOST_MAX_FORM_FIELDS")]
    pub max_form_fields: Option<usize>,
    /// Seconds a client may take to send a request body; a slower or
    /// incomplete body gets 408 [default: 30].
    #[arg(long, env = "MODHOST_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Bytes of values and files one module queue holds before new commands
    /// are refused as a full queue [default: 268435456 = 256 MiB].
    #[arg(long, env = "MODHOST_QUEUE_BYTES")]
    pub queue_bytes: Option<usize>,
    /// Seconds without any contact from a started module, while commands
    /// wait for it, before it is declared unresponsive, its commands failed
    /// and it is restarted [default: 30].
    #[arg(long, env = "MODHOST_UNRESPONSIVE_SECS")]
    pub unresponsive_secs: Option<u64>,
    /// API key that clients must send (`Authorization: Bearer <key>` or
    /// `X-API-Key`) on client and admin routes [default: none, no key
    /// needed]. Prefer `--api-key-file` or the environment over the command
    /// line, which other local users can read.
    #[arg(long, env = "MODHOST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// File holding the API key (its first line); instead of `--api-key`.
    #[arg(long, env = "MODHOST_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Origins (e.g. `http://dashboard.lan:8080`) whose pages may change
    /// settings and start, stop or restart modules, besides the server's own
    /// pages; repeat, or separate with ',' in the environment variable.
    #[arg(
        long = "allowed-origin",
        env = "MODHOST_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Environment variables modules get from the server's environment,
    /// beyond the base set (PATH, HOME, LANG, ...); a trailing `*` matches a
    /// prefix; repeat, or separate with ',' [default: see docs/security.md].
    #[arg(long = "module-env", env = "MODHOST_MODULE_ENV", value_delimiter = ',')]
    pub module_env: Vec<String>,
    /// Let modules started outside the server poll queues without a launch
    /// token [default: false].
    #[arg(long, env = "MODHOST_ALLOW_EXTERNAL_MODULES", num_args = 0..=1, default_missing_value = "true")]
    pub allow_external_modules: Option<bool>,
    /// Port of the loopback listener that modules launched by the server
    /// talk to (their `CPAI_PORT`), so that module traffic is served however
    /// busy the client port is; 0 picks a free port [default: 0].
    #[arg(long, env = "MODHOST_MODULE_PORT")]
    pub module_port: Option<u16>,
    /// Most client connections served at once; more wait to be accepted
    /// [default: 1024].
    #[arg(long, env = "MODHOST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a relaunched module must run to count as recovered: its
    /// crash count and restart backoff go back to the start [default: 30].
    #[arg(long, env = "MODHOST_STABLE_RUN_SECS")]
    pub stable_run_secs: Option<u64>,
    /// Seconds finished jobs are kept [default: 600].
    #[arg(long, env = "MODHOST_JOB_RETENTION_SECS")]
    pub job_retention_secs: Option<u64>,
    /// Most finished jobs kept; the oldest go first [default: 500].
    #[arg(long, env = "MODHOST_MAX_FINISHED_JOBS")]
    pub max_finished_jobs: Option<usize>,
    /// Milliseconds between the server's status requests for a watched job
    /// of a module that does not push its progress [default: 250].
    #[arg(long, env = "MODHOST_JOB_POLL_MS")]
    pub job_poll_ms: Option<u64>,
    /// Keep a job running when the client that started and streamed it in
    /// one call disconnects [default: false: cancel it].
    #[arg(long, env = "MODHOST_KEEP_JOBS_ON_DISCONNECT", num_args = 0..=1, default_missing_value = "true")]
    pub keep_jobs_on_disconnect: Option<bool>,
    /// A second port, on the same address, for clients that assume
    /// Ollama's (11434); it serves the same routes [default: none].
    #[arg(long, env = "MODHOST_OLLAMA_PORT")]
    pub ollama_port: Option<u16>,
    /// Directories of WebAssembly skills, `{namespace}/{name}.wasm`
    /// [default: skills]; repeat the flag, or separate with ':' in the
    /// environment variable.
    #[arg(
        long = "skills-dir",
        env = "MODHOST_SKILLS_DIRS",
        value_delimiter = ':'
    )]
    pub skills_dirs: Vec<PathBuf>,
    /// Where compiled skills are cached [default: <data-dir>/skill-cache].
    #[arg(long, env = "MODHOST_SKILL_CACHE_DIR")]
    pub skill_cache_dir: Option<PathBuf>,
    /// CPU seconds a skill call may run [default: 60].
    #[arg(long, env = "MODHOST_SKILL_CPU_SECS")]
    pub skill_cpu_secs: Option<u64>,
    /// Memory a skill instance may use, in MiB [default: 256].
    #[arg(long, env = "MODHOST_SKILL_MEMORY_MIB")]
    pub skill_memory_mib: Option<usize>,
    /// Skill instances alive at once, over all skills [default: 16].
    #[arg(long, env = "MODHOST_SKILL_INSTANCES")]
    pub skill_instances: Option<usize>,
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
    /// As `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// As `--no-install`.
    pub no_install: Option<bool>,
    /// As `--development`.
    pub development: Option<bool>,
    /// As `--max-form-fields`.
    pub max_form_fields: Option<usize>,
    /// As `--body-read-timeout-secs`, in seconds.
    pub body_read_timeout_secs: Option<u64>,
    /// As `--queue-bytes`, in bytes.
    pub queue_bytes: Option<usize>,
    /// As `--unresponsive-secs`, in seconds.
    pub unresponsive_secs: Option<u64>,
    /// As `--api-key`.
    pub api_key: Option<String>,
    /// As `--api-key-file`.
    pub api_key_file: Option<PathBuf>,
    /// As `--allowed-origin`, a list.
    pub allowed_origins: Option<Vec<String>>,
    /// As `--module-env`, a list.
    pub module_env: Option<Vec<String>>,
    /// As `--allow-external-modules`.
    pub allow_external_modules: Option<bool>,
    /// As `--module-port`.
    pub module_port: Option<u16>,
    /// As `--max-connections`.
    pub max_connections: Option<usize>,
    /// As `--stable-run-secs`, in seconds.
    pub stable_run_secs: Option<u64>,
    /// As `--job-retention-secs`, in seconds.
    pub job_retention_secs: Option<u64>,
    /// As `--max-finished-jobs`.
    pub max_finished_jobs: Option<usize>,
    /// As `--job-poll-ms`, in milliseconds.
    pub job_poll_ms: Option<u64>,
    /// As `--keep-jobs-on-disconnect`.
    pub keep_jobs_on_disconnect: Option<bool>,
    /// As `--ollama-port`.
    pub ollama_port: Option<u16>,
    /// As `--skills-dir`, a list.
    pub skills_dirs: Option<Vec<PathBuf>>,
    /// As `--skill-cache-dir`.
    pub skill_cache_dir: Option<PathBuf>,
    /// As `--skill-cpu-secs`.
    pub skill_cpu_secs: Option<u64>,
    /// As `--skill-memory-mib`.
    pub skill_memory_mib: Option<usize>,
    /// As `--skill-instances`.
    pub skill_instances: Option<usize>,
}

/// Environment variables modules get from the server's environment whatever
/// the settings: what a program needs to run and to find its tools.
pub const MODULE_ENV_BASE: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM",
];

/// The default of `module_env`: variables that select devices or tune native
/// libraries, and Rust's logging; secrets are never among them.
pub const MODULE_ENV_DEFAULT: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "OMP_*",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

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
    /// Directory for state kept between runs (module setting overrides).
    pub data_dir: PathBuf,
    /// Skip install scripts of modules that are not installed.
    pub no_install: bool,
    /// Development mode: the `*.development.json` manifest variants apply.
    pub development: bool,
    /// Root of the installation (`%ROOT_PATH%`): the current directory.
    pub root_path: PathBuf,
    /// Most values and files in one request.
    pub max_form_fields: usize,
    /// Longest time to receive a request body.
    pub body_read_timeout: Duration,
    /// Bound of each module queue, in bytes of values and files.
    pub queue_bytes: usize,
    /// Silence after which a started module with waiting commands is
    /// declared unresponsive.
    pub unresponsive_after: Duration,
    /// The API key clients must send; `None`: no key.
    pub api_key: Option<String>,
    /// Origins besides the server's own that may use admin routes.
    pub allowed_origins: Vec<String>,
    /// Variables passed from the server's environment to modules beyond
    /// [`MODULE_ENV_BASE`]; a trailing `*` matches a prefix.
    pub module_env: Vec<String>,
    /// Modules without a launch token may poll.
    pub allow_external_modules: bool,
    /// Port of the modules' loopback listener; 0: any free one.
    pub module_port: u16,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// Run time after which a relaunched module's crash count resets.
    pub stable_run: Duration,
    /// How long and how many finished jobs are kept.
    pub job_retention: Duration,
    pub max_finished_jobs: usize,
    /// Status polling interval for watched jobs of modules that don't push.
    pub job_poll_interval: Duration,
    /// Keep a one-call streamed job running after its client disconnects.
    pub keep_jobs_on_disconnect: bool,
    /// A second client port, for clients that assume Ollama's.
    pub ollama_port: Option<u16>,
    /// Directories of WebAssembly skills, searched in order.
    pub skills_dirs: Vec<PathBuf>,
    /// Where compiled skills are cached; `None`: `{data_dir}/skill-cache`.
    pub skill_cache_dir: Option<PathBuf>,
    /// Per-call limits of skills.
    pub skill_limits: modhost_skills::Limits,
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
            data_dir: PathBuf::from("data"),
            no_install: false,
            development: false,
            root_path: PathBuf::from("."),
            max_form_fields: 10_000,
            body_read_timeout: Duration::from_secs(30),
            queue_bytes: 256 * 1024 * 1024,
            unresponsive_after: Duration::from_secs(30),
            api_key: None,
            allowed_origins: Vec::new(),
            module_env: MODULE_ENV_DEFAULT.iter().map(|s| s.to_string()).collect(),
            allow_external_modules: false,
            module_port: 0,
            max_connections: 1024,
            stable_run: Duration::from_secs(30),
            job_retention: Duration::from_secs(600),
            max_finished_jobs: 500,
            job_poll_interval: Duration::from_millis(250),
            keep_jobs_on_disconnect: false,
            ollama_port: None,
            skills_dirs: vec![PathBuf::from("skills")],
            skill_cache_dir: None,
            skill_limits: modhost_skills::Limits::default(),
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
            data_dir: absolute(cli.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir)),
            no_install: cli.no_install.or(file.no_install).unwrap_or(false),
            development: cli.development.or(file.development).unwrap_or(false),
            root_path: root_path.clone(),
            max_form_fields: cli
                .max_form_fields
                .or(file.max_form_fields)
                .unwrap_or(defaults.max_form_fields),
            body_read_timeout: cli
                .body_read_timeout_secs
                .or(file.body_read_timeout_secs)
                .map_or(defaults.body_read_timeout, Duration::from_secs),
            queue_bytes: cli
                .queue_bytes
                .or(file.queue_bytes)
                .unwrap_or(defaults.queue_bytes),
            unresponsive_after: cli
                .unresponsive_secs
                .or(file.unresponsive_secs)
                .map_or(defaults.unresponsive_after, Duration::from_secs),
            api_key: match (
                cli.api_key.or(file.api_key),
                cli.api_key_file.or(file.api_key_file),
            ) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid {
                        name: "api_key",
                        problem: "give api_key or api_key_file, not both".into(),
                    })
                }
                (Some(key), None) => Some(key),
                (None, Some(path)) => Some(Self::read_key_file(&absolute(path))?),
                (None, None) => None,
            },
            allowed_origins: if cli.allowed_origins.is_empty() {
                file.allowed_origins.unwrap_or_default()
            } else {
                cli.allowed_origins
            },
            module_env: if cli.module_env.is_empty() {
                file.module_env.unwrap_or(defaults.module_env)
            } else {
                cli.module_env
            },
            allow_external_modules: cli
                .allow_external_modules
                .or(file.allow_external_modules)
                .unwrap_or(false),
            module_port: cli.module_port.or(file.module_port).unwrap_or(0),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            stable_run: cli
                .stable_run_secs
                .or(file.stable_run_secs)
                .map_or(defaults.stable_run, Duration::from_secs),
            job_retention: cli
                .job_retention_secs
                .or(file.job_retention_secs)
                .map_or(defaults.job_retention, Duration::from_secs),
            max_finished_jobs: cli
                .max_finished_jobs
                .or(file.max_finished_jobs)
                .unwrap_or(defaults.max_finished_jobs),
            job_poll_interval: cli
                .job_poll_ms
                .or(file.job_poll_ms)
                .map_or(defaults.job_poll_interval, Duration::from_millis),
            keep_jobs_on_disconnect: cli
                .keep_jobs_on_disconnect
                .or(file.keep_jobs_on_disconnect)
                .unwrap_or(false),
            ollama_port: cli.ollama_port.or(file.ollama_port),
            skills_dirs: if cli.skills_dirs.is_empty() {
                file.skills_dirs.unwrap_or(defaults.skills_dirs)
            } else {
                cli.skills_dirs
            }
            .into_iter()
            .map(absolute)
            .collect(),
            skill_cache_dir: cli.skill_cache_dir.or(file.skill_cache_dir).map(absolute),
            skill_limits: modhost_skills::Limits {
                cpu_time: cli
                    .skill_cpu_secs
                    .or(file.skill_cpu_secs)
                    .map_or(defaults.skill_limits.cpu_time, Duration::from_secs),
                memory_bytes: cli
                    .skill_memory_mib
                    .or(file.skill_memory_mib)
                    .map_or(defaults.skill_limits.memory_bytes, |mib| mib << 20),
                instances: cli
                    .skill_instances
                    .or(file.skill_instances)
                    .unwrap_or(defaults.skill_limits.instances),
            },
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

    /// The first line of the key file, trimmed.
    fn read_key_file(path: &Path) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(text.lines().next().unwrap_or("").trim().to_owned())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.api_key.as_deref().is_some_and(|k| k.trim().len() < 8) {
            return Err(ConfigError::Invalid {
                name: "api_key",
                problem: "must be at least 8 characters".into(),
            });
        }
        for (name, zero) in [
            ("max_form_fields", self.max_form_fields == 0),
            ("body_read_timeout_secs", self.body_read_timeout.is_zero()),
            ("queue_bytes", self.queue_bytes == 0),
            ("unresponsive_secs", self.unresponsive_after.is_zero()),
            ("max_connections", self.max_connections == 0),
            ("job_poll_ms", self.job_poll_interval.is_zero()),
            ("skill_cpu_secs", self.skill_limits.cpu_time.is_zero()),
            ("skill_memory_mib", self.skill_limits.memory_bytes == 0),
            ("skill_instances", self.skill_limits.instances == 0),
        ] {
            if zero {
                return Err(ConfigError::Invalid {
                    name,
                    problem: "must be at least 1".into(),
                });
            }
        }
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
}
