//! The modules the server knows: their manifests, live state and routes.
//!
//! Built once at start-up from the discovered manifests. The route table maps
//! request paths to modules by the longest case-insensitive route prefix, as
//! CodeProject.AI Server 2.9 does (docs/protocol.md §2.1), and adds
//! `{moduleId}/get_command_status` and `{moduleId}/cancel_command` to every module.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use modulesettings::{ModuleManifest, RouteMap};
use parking_lot::Mutex;
use serde::Serialize;

/// Lifecycle state of a module, named as CodeProject's `status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ModuleStatus {
    /// Installed, AutoStart false, never started.
    NoAutoStart,
    /// Not runnable here: unsupported platform, or not installed.
    NotAvailable,
    /// The install script is running.
    Installing,
    /// AutoStart, not launched yet (the server is starting).
    NotStarted,
    /// Process launched; waiting for its first poll.
    Starting,
    /// Crashed; a new process starts after the backoff.
    Restarting,
    /// Polling for commands.
    Started,
    /// Could not be launched (missing file, failed install, exec error).
    FailedStart,
    /// Exited unexpectedly.
    Crashed,
    /// Asked to quit; signalled if it does not exit in time.
    Stopping,
    /// Stopped from the dashboard or at server shutdown.
    Stopped,
}

impl ModuleStatus {
    /// True when commands sent now can be served eventually: the module is up
    /// or on its way up.
    pub fn accepts_commands(self) -> bool {
        matches!(self, ModuleStatus::Started | ModuleStatus::Starting)
    }
}

/// Live state of one module, changed by the supervisor and the queue endpoints.
#[derive(Debug, Clone)]
pub struct ModuleState {
    pub status: ModuleStatus,
    /// When the current process was launched.
    pub started: Option<SystemTime>,
    /// Last poll, reply or status update from the module.
    pub last_seen: Option<SystemTime>,
    /// The module's last `statusData`, replaced wholesale on each update.
    pub status_data: Option<serde_json::Value>,
    /// Replies received, not counting status messages.
    pub request_count: u64,
    /// `CPU`/`GPU` as the module reports it.
    pub inference_device: Option<String>,
    /// Whether the module should be running (AutoStart, or the dashboard's Start).
    pub wanted: bool,
    /// Process id of the running process.
    pub pid: Option<u32>,
    /// Launches since the server started.
    pub launches: u32,
    /// Why the last process ended or could not start.
    pub last_error: Option<String>,
    /// Number of the current launch (1, 2, …; 0 before the first); commands
    /// taken by a poll are tagged with it.
    pub launch: u64,
    /// The current launch's token (docs/protocol.md §4.1): polls and
    /// module-side calls must carry it. `None` while no process of ours runs.
    pub token: Option<String>,
    /// Crashes in a row; reset once a launch has run for a while.
    pub crashes: u32,
    /// When the supervisor will launch the module again after a crash.
    pub next_start: Option<SystemTime>,
}

/// How a module-side call identified itself against a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// It carried the current launch's token: this launch.
    Launch(u64),
    /// It carried no token: a module started outside the server (allowed only
    /// with `allow_external_modules`, or for calls that need no token).
    Untokened,
}

/// Why a module-side call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The call carried a token that is not the current launch's: a process
    /// from an earlier launch, or from an earlier server.
    #[error("the launch token is not module {0}'s current one: this process is stale or foreign")]
    Stale(String),
}

/// A module: its manifest and live state.
pub struct Module {
    pub manifest: ModuleManifest,
    /// Lowercase queue name.
    pub queue: String,
    /// The explorer UI cut from `explore.html`, if the module has one.
    pub explorer_ui: Option<serde_json::Value>,
    /// Its `UIElements.Menus` in camelCase (`[{"label", "options": [{"label",
    /// "setting", "value"}]}]`), `[]` when it declares none; read once here
    /// for the status list the dashboard polls.
    pub menus: serde_json::Value,
    // parking_lot: short, non-async critical sections only.
    state: Mutex<ModuleState>,
}

impl Module {
    /// A module in `initial` status, wanted running when AutoStart is set.
    pub fn new(manifest: ModuleManifest, initial: ModuleStatus) -> Module {
        let queue = manifest.settings.queue_name(&manifest.id);
        let wanted = manifest.settings.launch_settings.auto_start;
        let explorer_ui = crate::explorer_ui::load(&manifest.dir);
        let menus = match manifest.settings.to_camel_case_json()["uiElements"].get("menus") {
            Some(menus @ serde_json::Value::Array(_)) => menus.clone(),
            _ => serde_json::json!([]),
        };
        Module {
            manifest,
            queue,
            explorer_ui,
            menus,
            state: Mutex::new(ModuleState {
                status: initial,
                started: None,
                last_seen: None,
                status_data: None,
                request_count: 0,
                inference_device: None,
                wanted,
                pid: None,
                launches: 0,
                last_error: None,
                launch: 0,
                token: None,
                crashes: 0,
                next_start: None,
            }),
        }
    }

    /// The module id (`LlamaChat`), as in URLs and `moduleId`.
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// The display name (`Name` in the manifest); the log's category.
    pub fn name(&self) -> &str {
        &self.manifest.settings.name
    }

    /// The module's directory (`%CURRENT_MODULE_PATH%`).
    pub fn dir(&self) -> &PathBuf {
        &self.manifest.dir
    }

    /// A copy of the live state.
    pub fn state(&self) -> ModuleState {
        self.state.lock().clone()
    }

    /// Changes the live state under the lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut ModuleState) -> T) -> T {
        f(&mut self.state.lock())
    }

    /// Checks the launch token a module-side call carried (from the header
    /// or the queue name).
    ///
    /// # Errors
    /// [`TokenError::Stale`] for a token that is not the current launch's.
    pub fn caller(&self, token: Option<&str>) -> Result<Caller, TokenError> {
        let state = self.state.lock();
        match (token, state.token.as_deref()) {
            (None, _) => Ok(Caller::Untokened),
            (Some(given), Some(current)) if constant_time_eq(given, current) => {
                Ok(Caller::Launch(state.launch))
            }
            (Some(_), _) => Err(TokenError::Stale(self.id().to_owned())),
        }
    }

    /// Records contact from the module (poll, reply, status update). A
    /// Starting module that polls is Started.
    pub fn seen(&self) {
        let mut state = self.state.lock();
        state.last_seen = Some(SystemTime::now());
        if state.status == ModuleStatus::Starting {
            state.status = ModuleStatus::Started;
        }
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Which module serves a path, and how.
#[derive(Clone)]
pub struct RouteMatch {
    pub module: Arc<Module>,
    /// The route map entry; None for the built-in long-process routes.
    pub route: Option<RouteMap>,
    /// The command the module receives.
    pub command: String,
    /// The path after the matched route, split on `/`.
    pub url_segments: Vec<String>,
}

struct RouteEntry {
    /// Lowercase, without leading or trailing slashes.
    route: String,
    method: String,
    module: Arc<Module>,
    map: Option<RouteMap>,
    command: String,
}

/// All modules and the route table.
pub struct Registry {
    modules: Vec<Arc<Module>>,
    /// Longest route first, so the first prefix match is the longest.
    routes: Vec<RouteEntry>,
}

impl Registry {
    /// Builds the route table over `modules`.
    pub fn new(modules: Vec<Arc<Module>>) -> Registry {
        let mut routes = Vec::new();
        for module in &modules {
            for map in &module.manifest.settings.route_maps {
                routes.push(RouteEntry {
                    route: normalise(&map.route),
                    method: map.method.to_ascii_uppercase(),
                    module: Arc::clone(module),
                    map: Some(map.clone()),
                    command: map.command.clone(),
                });
            }
            for command in ["get_command_status", "cancel_command"] {
                routes.push(RouteEntry {
                    route: format!("{}/{command}", module.id().to_ascii_lowercase()),
                    method: "POST".into(),
                    module: Arc::clone(module),
                    map: None,
                    command: command.into(),
                });
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.route.len()));
        Registry { modules, routes }
    }

    /// Every module found, in discovery order.
    pub fn modules(&self) -> &[Arc<Module>] {
        &self.modules
    }

    /// The module with this id, case-insensitively.
    pub fn get(&self, id: &str) -> Option<&Arc<Module>> {
        self.modules
            .iter()
            .find(|m| m.id().eq_ignore_ascii_case(id))
    }

    /// The route serving `method path` (path after `/v1/`): the longest route
    /// that is a case-insensitive string prefix of the path. Not segment-aware,
    /// like CodeProject: route `text/chat` also matches `text/chatty`.
    pub fn route(&self, method: &str, path: &str) -> Option<RouteMatch> {
        let path = normalise(path);
        let lower = path.to_ascii_lowercase();
        let entry = self
            .routes
            .iter()
            .find(|r| r.method.eq_ignore_ascii_case(method) && lower.starts_with(&r.route))?;
        let rest = path[entry.route.len()..].trim_matches('/');
        Some(RouteMatch {
            module: Arc::clone(&entry.module),
            route: entry.map.clone(),
            command: entry.command.clone(),
            url_segments: if rest.is_empty() {
                Vec::new()
            } else {
                rest.split('/').map(str::to_owned).collect()
            },
        })
    }
}

fn normalise(route: &str) -> String {
    route
        .trim()
        .trim_matches('/')
        .trim_start_matches("v1/")
        .to_ascii_lowercase()
}

/// A manifest for tests: module `id` with one POST route map per
/// `(route, command)`.
#[cfg(test)]
pub(crate) fn test_manifest(id: &str, routes: &[(&str, &str)]) -> ModuleManifest {
    let route_maps: Vec<_> = routes
        .iter()
        .map(|(route, command)| {
            serde_json::json!({"Name": "r", "Route": route, "Method": "POST", "Command": command})
        })
        .collect();
    let text = serde_json::json!({"Modules": {id: {
        "Name": id, "Version": "1.0.0",
        "LaunchSettings": {"FilePath": "m", "Runtime": "execute"},
        "RouteMaps": route_maps,
    }}});
    // The manifest is read at once; routing never looks at the directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("modulesettings.json"), text.to_string()).unwrap();
    modulesettings::load_module_dir(dir.path(), &modulesettings::Platform::current()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(vec![
            Arc::new(Module::new(
                test_manifest("A", &[("text/chat", "prompt")]),
                ModuleStatus::Started,
            )),
            Arc::new(Module::new(
                test_manifest(
                    "B",
                    &[("text/chat/long", "long"), ("vision/detect", "detect")],
                ),
                ModuleStatus::Started,
            )),
        ])
    }

    #[test]
    fn longest_case_insensitive_prefix_wins() {
        let r = registry();
        let m = r.route("POST", "Text/Chat/Long/x/y").unwrap();
        assert_eq!(m.module.id(), "B");
        assert_eq!(m.command, "long");
        assert_eq!(m.url_segments, vec!["x", "y"]);
        let m = r.route("POST", "text/chat").unwrap();
        assert_eq!(m.module.id(), "A");
        assert!(m.url_segments.is_empty());
    }

    #[test]
    fn prefix_matching_is_not_segment_aware_like_codeproject() {
        let m = registry().route("POST", "text/chatty").unwrap();
        assert_eq!(m.module.id(), "A");
        assert_eq!(m.url_segments, vec!["ty"]);
    }

    #[test]
    fn every_module_gets_long_process_routes() {
        let r = registry();
        let m = r.route("POST", "a/get_command_status").unwrap();
        assert_eq!(
            (m.module.id(), m.command.as_str()),
            ("A", "get_command_status")
        );
        assert!(m.route.is_none());
        let m = r.route("POST", "B/cancel_command").unwrap();
        assert_eq!((m.module.id(), m.command.as_str()), ("B", "cancel_command"));
    }

    #[test]
    fn unknown_path_or_method_matches_nothing() {
        let r = registry();
        assert!(r.route("POST", "audio/x").is_none());
        assert!(r.route("GET", "text/chat").is_none());
    }
}
