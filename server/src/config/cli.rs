//! `modhost`'s command line, each flag with its `MODHOST_*` environment
//! variable (clap reads both).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

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
    /// Where compiled skills are cached [default: skill-cache in the data dir].
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
