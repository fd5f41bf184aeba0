//! Server configuration: one struct read from three sources.
//!
//! Precedence is file < environment < command line: a TOML file (`--config`,
//! sample in `modhost.sample.toml`) gives the base, `MODHOST_*` environment
//! variables override it, and command-line flags override both. Unknown keys in
//! the file are rejected so a typo is an error, not a silently ignored setting.//!
//! The sources, one file each: the command line and environment (`cli.rs`,
//! [`Cli`]) and the TOML file (`file.rs`, [`FileConfig`]); this file resolves
//! them into [`Config`], with the defaults and the range checks.

mod cli;
mod file;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::Cli;
pub use file::FileConfig;

/// Default HTTP port, the one CodeProject.AI Server uses.
pub const DEFAULT_PORT: u16 = 32168;

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
            Some(path) => FileConfig::read(path)?,
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
mod tests;
