//! The TOML config file named by `--config` / `MODHOST_CONFIG`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

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

impl FileConfig {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when it cannot be read, [`ConfigError::Parse`]
    /// when it is not TOML of this shape (an unknown key among them).
    pub(super) fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}
