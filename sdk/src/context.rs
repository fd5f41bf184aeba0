//! [`ModuleContext`]: who the module is and where the server is, read once
//! from the environment the server passes to the child process.

use std::path::PathBuf;

use crate::error::ModuleError;

/// The server port when `CPAI_PORT` is not set (CodeProject.AI's default).
pub const DEFAULT_PORT: u16 = 32168;

/// The module's identity and settings, as the server passed them.
///
/// Environment of CodeProject.AI Server 2.9, see
/// docs/protocol.md §1.1, plus modhost's `MODHOST_MODULE_TOKEN` (§4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleContext {
    /// `CPAI_MODULE_ID`, e.g. `"LlamaChat"`; sent as `moduleId` on every call.
    pub module_id: String,
    /// `CPAI_MODULE_NAME` (default: the module id); sent as `moduleName`.
    pub module_name: String,
    /// `CPAI_MODULE_PATH` (default: the working directory, which the server
    /// sets to the module directory).
    pub module_path: PathBuf,
    /// `CPAI_MODULE_QUEUENAME` (default `<module id lowercased>_queue`),
    /// always lowercase like the server's queue names.
    pub queue_name: String,
    /// `http://localhost:{CPAI_PORT}/v1/`, with the trailing slash; all
    /// server calls are relative to it.
    pub server_url: String,
    /// `CPAI_MODULE_PARALLELISM`: how many commands are taken from the queue
    /// at once. Zero, negative or unset means half the CPUs (at least 1).
    pub parallelism: usize,
    /// `CPAI_LOG_VERBOSITY`: `Quiet`, `Info` (default) or `Loud`.
    pub log_verbosity: String,
    /// `CPAI_MODULE_ENABLE_GPU` (`True`/`False`, default true, as in the
    /// Python SDK): whether the module may use an accelerator.
    pub enable_gpu: bool,
    /// `CPAI_HALF_PRECISION` (`enable`, `disable` or `force`), if set.
    pub half_precision: Option<String>,
    /// `CPAI_ACCEL_DEVICE_NAME` (e.g. `CUDA:0`), if set.
    pub accel_device_name: Option<String>,
    /// `MODHOST_MODULE_TOKEN`: this launch's token, which modhost sets (and
    /// CodeProject.AI Server does not). When present the SDK sends it on
    /// every call and pushes long-process progress (docs/protocol.md §4).
    pub token: Option<String>,
}

impl ModuleContext {
    /// A context with defaults for everything but the id and the server URL,
    /// for tests and for modules run by hand. `server_url` gets a trailing
    /// `/` if it lacks one; parallelism is 1.
    pub fn new(module_id: &str, server_url: &str) -> Self {
        let mut server_url = server_url.to_owned();
        if !server_url.ends_with('/') {
            server_url.push('/');
        }
        Self {
            module_id: module_id.to_owned(),
            module_name: module_id.to_owned(),
            module_path: std::env::current_dir().unwrap_or_default(),
            queue_name: default_queue(module_id),
            server_url,
            parallelism: 1,
            log_verbosity: "Info".to_owned(),
            enable_gpu: true,
            half_precision: None,
            accel_device_name: None,
            token: None,
        }
    }

    /// Reads the `CPAI_*` variables the server sets when it launches a module.
    ///
    /// Without `CPAI_MODULE_ID` (a module run by hand, e.g. `--selftest`
    /// from an installer) the id is the module directory's name, as in the
    /// Python SDK.
    ///
    /// # Errors
    /// `CPAI_PORT` is not a port number, or `CPAI_MODULE_PARALLELISM` is not
    /// an integer.
    pub fn from_env() -> Result<Self, ModuleError> {
        Self::from_lookup(
            |name| std::env::var(name).ok(),
            || std::env::current_dir().unwrap_or_default(),
        )
    }

    /// `from_env` with the environment and working directory injected, so
    /// tests don't mutate the process environment.
    fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
        cwd: impl FnOnce() -> PathBuf,
    ) -> Result<Self, ModuleError> {
        // Empty values count as unset, like the Python SDK's `_get_env_var`.
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());

        let module_path = var("CPAI_MODULE_PATH").map_or_else(cwd, PathBuf::from);
        let module_id = var("CPAI_MODULE_ID").unwrap_or_else(|| {
            module_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "module".to_owned())
        });
        let module_name = var("CPAI_MODULE_NAME").unwrap_or_else(|| module_id.clone());
        let queue_name = var("CPAI_MODULE_QUEUENAME")
            .map(|q| q.to_lowercase())
            .unwrap_or_else(|| default_queue(&module_id));
        let port = match var("CPAI_PORT") {
            None => DEFAULT_PORT,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| ModuleError(format!("CPAI_PORT is '{p}': expected a port number")))?,
        };
        let parallelism = match var("CPAI_MODULE_PARALLELISM") {
            None => 0,
            Some(p) => p.trim().parse::<i64>().map_err(|_| {
                ModuleError(format!(
                    "CPAI_MODULE_PARALLELISM is '{p}': expected an integer"
                ))
            })?,
        };
        let parallelism = if parallelism <= 0 {
            default_parallelism()
        } else {
            usize::try_from(parallelism).unwrap_or(usize::MAX)
        };
        Ok(Self {
            module_name,
            module_path,
            queue_name,
            server_url: format!("http://localhost:{port}/v1/"),
            parallelism,
            log_verbosity: var("CPAI_LOG_VERBOSITY").unwrap_or_else(|| "Info".to_owned()),
            enable_gpu: var("CPAI_MODULE_ENABLE_GPU")
                .is_none_or(|v| v.trim().eq_ignore_ascii_case("true")),
            half_precision: var("CPAI_HALF_PRECISION"),
            accel_device_name: var("CPAI_ACCEL_DEVICE_NAME"),
            token: var(modhost_protocol::TOKEN_ENV),
            module_id,
        })
    }

    /// A module-specific environment variable (from the manifest's
    /// `EnvironmentVariables`, whose names the server upper-cases), read from
    /// the process environment now. Empty values read as `None`.
    pub fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

fn default_queue(module_id: &str) -> String {
    format!("{}_queue", module_id.to_lowercase())
}

/// Half the CPUs, at least one: the Python SDK's default parallelism.
fn default_parallelism() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ctx_from(pairs: &[(&str, &str)]) -> Result<ModuleContext, ModuleError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ModuleContext::from_lookup(|n| vars.get(n).cloned(), || PathBuf::from("/m/echo_dir"))
    }

    #[test]
    fn reads_the_server_supplied_variables() {
        let ctx = ctx_from(&[
            ("CPAI_MODULE_ID", "LlamaChat"),
            ("CPAI_MODULE_NAME", "Llama Chat"),
            ("CPAI_MODULE_PATH", "/srv/modules/LlamaChat"),
            ("CPAI_MODULE_QUEUENAME", "LlamaChat_Queue"),
            ("CPAI_PORT", "5000"),
            ("CPAI_MODULE_PARALLELISM", "3"),
            ("CPAI_LOG_VERBOSITY", "Loud"),
            ("CPAI_MODULE_ENABLE_GPU", "False"),
            ("CPAI_HALF_PRECISION", "force"),
            ("CPAI_ACCEL_DEVICE_NAME", "CUDA:1"),
            ("MODHOST_MODULE_TOKEN", "t0k3n"),
        ])
        .expect("valid");
        assert_eq!(ctx.token.as_deref(), Some("t0k3n"));
        assert_eq!(ctx.module_id, "LlamaChat");
        assert_eq!(ctx.module_name, "Llama Chat");
        assert_eq!(ctx.module_path, PathBuf::from("/srv/modules/LlamaChat"));
        assert_eq!(ctx.queue_name, "llamachat_queue");
        assert_eq!(ctx.server_url, "http://localhost:5000/v1/");
        assert_eq!(ctx.parallelism, 3);
        assert_eq!(ctx.log_verbosity, "Loud");
        assert!(!ctx.enable_gpu);
        assert_eq!(ctx.half_precision.as_deref(), Some("force"));
        assert_eq!(ctx.accel_device_name.as_deref(), Some("CUDA:1"));
    }

    #[test]
    fn defaults_follow_the_python_sdk() {
        let ctx = ctx_from(&[("CPAI_MODULE_ID", "Echo"), ("CPAI_MODULE_PARALLELISM", "0")])
            .expect("valid");
        assert_eq!(ctx.module_name, "Echo");
        assert_eq!(ctx.queue_name, "echo_queue");
        assert_eq!(ctx.server_url, "http://localhost:32168/v1/");
        assert_eq!(ctx.parallelism, default_parallelism());
        assert!(ctx.parallelism >= 1);
        assert_eq!(ctx.log_verbosity, "Info");
        assert!(ctx.enable_gpu);
        assert_eq!(ctx.half_precision, None);
        assert_eq!(ctx.token, None);
        assert_eq!(ctx.module_path, PathBuf::from("/m/echo_dir"));

        let negative = ctx_from(&[("CPAI_MODULE_PARALLELISM", "-2")]).expect("valid");
        assert_eq!(negative.parallelism, default_parallelism());
    }

    #[test]
    fn module_id_falls_back_to_the_directory_name() {
        let ctx = ctx_from(&[("CPAI_MODULE_ID", "")]).expect("valid");
        assert_eq!(ctx.module_id, "echo_dir");
        assert_eq!(ctx.queue_name, "echo_dir_queue");
    }

    #[test]
    fn malformed_numbers_are_errors() {
        let err = ctx_from(&[("CPAI_PORT", "http")]).unwrap_err();
        assert_eq!(err.message(), "CPAI_PORT is 'http': expected a port number");
        let err = ctx_from(&[("CPAI_MODULE_PARALLELISM", "many")]).unwrap_err();
        assert_eq!(
            err.message(),
            "CPAI_MODULE_PARALLELISM is 'many': expected an integer"
        );
    }

    #[test]
    fn new_adds_the_trailing_slash() {
        let ctx = ModuleContext::new("Echo", "http://127.0.0.1:9/v1");
        assert_eq!(ctx.server_url, "http://127.0.0.1:9/v1/");
        assert_eq!(ctx.queue_name, "echo_queue");
        assert_eq!(ctx.parallelism, 1);
    }
}
