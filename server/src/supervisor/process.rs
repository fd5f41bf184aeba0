//! How a module's process is made: its program, arguments and environment,
//! and the process-group and parent-death rules it runs under.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use modulesettings::RuntimeLocation;
use tokio::process::Command;

use super::LaunchContext;
use crate::overrides;
use crate::registry::Module;

/// A command for `program` in the module's folder, with the module's
/// environment only ([`inherited_environment`], then [`module_environment`]),
/// no stdin, stdout and stderr piped, in a process group of its own (so that
/// stop and shutdown reach the module's children too), dying with the server
/// ([`die_with_server`]).
pub(super) fn module_command(
    program: impl AsRef<OsStr>,
    module: &Module,
    ctx: &LaunchContext,
) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(module.dir())
        .env_clear()
        .envs(inherited_environment(&ctx.module_env))
        .envs(module_environment(module, ctx))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    die_with_server(&mut command);
    command
}

/// Makes the child die with the server: `PR_SET_PDEATHSIG` delivers SIGKILL
/// to it when the server's thread that spawned it ends (the supervisor runs
/// on the main thread, so: when the server ends, killed or not). A server
/// that died between the fork and the `prctl` is caught by comparing the
/// parent's pid.
fn die_with_server(command: &mut Command) {
    // SAFETY: getpid is async-signal-safe; read before the fork.
    let server = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (prctl, getppid, raise).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != server {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

/// The variables of the server's own environment a module gets: the base
/// set (`config::MODULE_ENV_BASE`) and those `allowed` names (a trailing `*`
/// matches a prefix). Secrets in the server's environment stay there.
pub fn inherited_environment(allowed: &[String]) -> Vec<(String, String)> {
    let matches = |name: &str, pattern: &str| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    };
    std::env::vars()
        .filter(|(name, _)| {
            crate::config::MODULE_ENV_BASE
                .iter()
                .any(|p| matches(name, p))
                || allowed.iter().any(|p| matches(name, p))
        })
        .collect()
}

/// Signals the process group led by `pid` (children are spawned as group
/// leaders). The group outlives its leader, so this also reaches what a
/// module left behind after it exited.
pub(super) fn kill_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid.filter(|&p| p > 1) {
        // SAFETY: kill(2) has no memory effects; a stale group just gives ESRCH.
        unsafe {
            libc::kill(-(pid as libc::pid_t), signal);
        }
    }
}

/// The file whose absence means "not installed": `FilePath` under the module
/// directory, when the manifest has one.
pub(super) fn launch_file(module: &Module) -> Option<PathBuf> {
    let launch = &module.manifest.settings.launch_settings;
    let file = launch.file_path.as_deref()?;
    let path = Path::new(file);
    Some(if path.is_absolute() {
        path.to_owned()
    } else {
        module.dir().join(path)
    })
}

/// The program and arguments that start `module`.
pub(super) fn resolve_command(
    module: &Module,
    ctx: &LaunchContext,
) -> Result<(PathBuf, Vec<String>), String> {
    let launch = &module.manifest.settings.launch_settings;
    if let Some(command) = launch.command.as_deref().filter(|c| !c.trim().is_empty()) {
        let expanded = ctx.macros.expand(command, module.dir());
        return Ok((
            PathBuf::from("/bin/sh"),
            vec!["-c".into(), format!("exec {expanded}")],
        ));
    }
    let file = launch_file(module)
        .ok_or("the manifest has neither LaunchSettings.FilePath nor Command")?;
    let file_arg = file.display().to_string();
    let runtime = launch
        .runtime
        .as_deref()
        .unwrap_or("execute")
        .trim()
        .to_ascii_lowercase();
    match runtime.as_str() {
        "" | "execute" | "exec" => Ok((file, Vec::new())),
        "dotnet" => Ok(("dotnet".into(), vec![file_arg])),
        python if python.starts_with("python") => {
            let version = python.trim_start_matches("python");
            let compact = version.replace('.', "");
            let venv_python = |base: &Path| {
                base.join("bin")
                    .join(&ctx.macros.platform.os)
                    .join(format!("python{compact}"))
                    .join("venv/bin/python3")
            };
            let local = venv_python(module.dir());
            let shared = venv_python(&ctx.root_path.join("runtimes"));
            let system = || match version {
                "" => PathBuf::from("python3"),
                version => PathBuf::from(format!("python{version}")),
            };
            // The venv the manifest names, else the module's own, else the
            // interpreter on the PATH.
            let interpreter = match launch.runtime_location {
                RuntimeLocation::System => system(),
                RuntimeLocation::Shared if shared.exists() => shared,
                _ if local.exists() => local,
                _ => system(),
            };
            Ok((interpreter, vec![file_arg]))
        }
        other => Ok((PathBuf::from(other), vec![file_arg])),
    }
}

/// The child's environment: server variables, the manifest's
/// EnvironmentVariables (upper-cased keys, macros expanded), the settings
/// overridden from the dashboard (`overrides`), then the CPAI_* module
/// variables where not already set (docs/protocol.md §1.1, §2.5).
pub fn module_environment(module: &Module, ctx: &LaunchContext) -> Vec<(String, String)> {
    let settings = &module.manifest.settings;
    let launch = &settings.launch_settings;
    let mut env: Vec<(String, String)> = vec![
        ("CPAI_PORT".into(), ctx.port.to_string()),
        (
            "CPAI_APPROOTPATH".into(),
            ctx.root_path.display().to_string(),
        ),
    ];
    for (key, value) in &settings.environment_variables {
        let key = key.to_ascii_uppercase();
        env.retain(|(k, _)| k != &key);
        env.push((key, ctx.macros.expand(value, module.dir())));
    }
    for (name, value) in ctx.overrides.get(module.id()) {
        if let Some(key) = overrides::env_name(&name) {
            env.retain(|(k, _)| k != &key);
            let value = overrides::env_value(&key, &value);
            env.push((key, value));
        }
    }
    let parallelism = match launch.parallelism {
        n if n > 0 => n as usize,
        _ => (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1),
    };
    let gpu = &settings.gpu_options;
    let defaults = [
        ("CPAI_MODULE_SERVER_LAUNCHED", Some("true".to_owned())),
        ("CPAI_MODULE_ID", Some(module.id().to_owned())),
        ("CPAI_MODULE_NAME", Some(module.name().to_owned())),
        ("CPAI_MODULE_PATH", Some(module.dir().display().to_string())),
        ("CPAI_MODULE_QUEUENAME", Some(module.queue.clone())),
        (
            "CPAI_MODULE_REQUIRED_MB",
            launch
                .required_mb
                .filter(|&mb| mb > 0)
                .map(|mb| mb.to_string()),
        ),
        (
            "CPAI_LOG_VERBOSITY",
            Some(format!("{:?}", launch.log_verbosity)),
        ),
        ("CPAI_MODULE_PARALLELISM", Some(parallelism.to_string())),
        (
            "CPAI_MODULE_ENABLE_GPU",
            Some(if gpu.enable_gpu { "True" } else { "False" }.to_owned()),
        ),
        (
            "CPAI_ACCEL_DEVICE_NAME",
            gpu.accelerator_device_name.clone(),
        ),
        ("CPAI_HALF_PRECISION", gpu.half_precision.clone()),
    ];
    for (key, value) in defaults {
        if let Some(value) = value {
            if !env.iter().any(|(k, _)| k == key) {
                env.push((key.to_owned(), value));
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use modulesettings::Macros;
    use serde_json::json;

    use super::*;
    use crate::overrides::Overrides;
    use crate::registry::ModuleStatus;

    /// A module `Py` in `dir` run by `runtime` from `location`.
    fn python_module(dir: &Path, runtime: &str, location: &str) -> Module {
        let text = json!({"Modules": {"Py": {
            "Name": "Py", "Version": "1.0.0",
            "LaunchSettings": {"FilePath": "m.py", "Runtime": runtime, "RuntimeLocation": location},
            "RouteMaps": [{"Name": "r", "Route": "py/r", "Method": "POST", "Command": "r"}],
        }}});
        std::fs::write(dir.join("modulesettings.json"), text.to_string()).unwrap();
        let platform = modulesettings::Platform::current();
        let manifest = modulesettings::load_module_dir(dir, &platform).unwrap();
        Module::new(manifest, ModuleStatus::NotStarted)
    }

    #[test]
    fn python_modules_run_from_their_venv_else_the_system_interpreter() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("modules/Py");
        std::fs::create_dir_all(&dir).unwrap();
        let platform = modulesettings::Platform::current();
        let ctx = LaunchContext {
            port: 1,
            macros: Macros::new(root.path(), platform.clone()),
            root_path: root.path().to_owned(),
            no_install: true,
            module_env: Vec::new(),
            unresponsive_after: Duration::from_secs(30),
            stable_run: Duration::from_secs(30),
            overrides: Arc::new(Overrides::load(root.path()).0),
            max_push_bytes: 1 << 20,
        };
        let interpreter = |runtime: &str, location: &str| {
            let (program, args) =
                resolve_command(&python_module(&dir, runtime, location), &ctx).unwrap();
            assert_eq!(args, [dir.join("m.py").display().to_string()]);
            program
        };
        // No venv anywhere: the interpreter on the PATH, of the named version.
        assert_eq!(interpreter("python3.11", "Local"), Path::new("python3.11"));
        assert_eq!(interpreter("python", "Shared"), Path::new("python3"));

        let venv = |base: &Path| {
            let python = base.join(format!("bin/{}/python311/venv/bin/python3", platform.os));
            std::fs::create_dir_all(python.parent().unwrap()).unwrap();
            std::fs::write(&python, "").unwrap();
            python
        };
        let local = venv(&dir);
        assert_eq!(interpreter("python3.11", "Local"), local);
        // A shared runtime that is missing falls back to the module's own.
        assert_eq!(interpreter("python3.11", "Shared"), local);
        let shared = venv(&root.path().join("runtimes"));
        assert_eq!(interpreter("python3.11", "Shared"), shared);
        assert_eq!(interpreter("python3.11", "System"), Path::new("python3.11"));
    }

    #[test]
    fn only_allowed_variables_of_the_server_reach_a_module() {
        // PATH is in every test environment; the rest are made up here and
        // read by no other test.
        std::env::set_var("MODHOST_TEST_SECRET_TOKEN", "s3cret");
        std::env::set_var("MODHOST_TEST_ALLOWED_A", "a");
        let env = inherited_environment(&["MODHOST_TEST_ALLOWED_*".into()]);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"PATH"), "{names:?}");
        assert!(names.contains(&"MODHOST_TEST_ALLOWED_A"), "{names:?}");
        assert!(!names.contains(&"MODHOST_TEST_SECRET_TOKEN"), "{names:?}");
        std::env::remove_var("MODHOST_TEST_SECRET_TOKEN");
        std::env::remove_var("MODHOST_TEST_ALLOWED_A");
    }
}
