//! Per-module setting overrides: what CodeProject's dashboard, or a module's
//! `UIElements.Menus`, set through `POST /v1/server/settings/{moduleId}`
//! (docs/protocol.md §2.5).
//!
//! A setting is a name and a text value, e.g. `EnableGPU=false`,
//! `CPAI_HALF_PRECISION=disable`, `MODEL_SIZE=large`. They are kept in one
//! JSON file, `<data_dir>/module-settings.json`, shaped
//! `{"<moduleId>": {"<name>": "<value>", ...}, ...}`, so that they survive a
//! restart of the server, and each reaches its module as an environment
//! variable ([`env_name`]) at its next launch. `AutoStart` is kept there too:
//! a module started from the dashboard starts again with the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// The setting that says whether a module runs; it is not passed as
/// environment.
pub const AUTO_START: &str = "AutoStart";

/// Why a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// The name is not usable as an environment variable, or names one the
    /// server sets itself or that would change what the module runs.
    #[error("setting name '{name}' {why}")]
    Name { name: String, why: &'static str },
    /// The value is too long or holds a NUL byte.
    #[error("the value of setting '{name}' {why}")]
    Value { name: String, why: &'static str },
    /// The settings file could not be written: the change is not kept.
    #[error("cannot save {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Longest setting value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;

/// The settings file and its contents.
pub struct Overrides {
    path: PathBuf,
    // module id (lower case) -> setting name (as first given) -> value
    modules: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Overrides {
    /// Reads `<data_dir>/module-settings.json`; a missing file is no
    /// overrides. A file that cannot be parsed is moved aside to
    /// `module-settings.json.bad` (so that nothing overwrites it) and the
    /// returned message says so, for the log.
    pub fn load(data_dir: &Path) -> (Overrides, Option<String>) {
        let path = data_dir.join("module-settings.json");
        let mut problem = None;
        let modules = match std::fs::read(&path) {
            Ok(bytes) => {
                match serde_json::from_slice::<BTreeMap<String, BTreeMap<String, String>>>(&bytes) {
                    Ok(map) => map
                        .into_iter()
                        .map(|(id, settings)| (id.to_ascii_lowercase(), settings))
                        .collect(),
                    Err(err) => {
                        let aside = path.with_extension("json.bad");
                        let moved = std::fs::rename(&path, &aside).is_ok();
                        problem = Some(format!(
                        "module settings file {} is not valid ({err}); {}, starting without overrides",
                        path.display(),
                        if moved {
                            format!("moved to {}", aside.display())
                        } else {
                            "left in place".to_owned()
                        }
                    ));
                        BTreeMap::new()
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => {
                problem = Some(format!(
                    "cannot read module settings file {}: {err}; starting without overrides",
                    path.display()
                ));
                BTreeMap::new()
            }
        };
        (
            Overrides {
                path,
                modules: Mutex::new(modules),
            },
            problem,
        )
    }

    /// The module's overrides, name to value.
    pub fn get(&self, module_id: &str) -> BTreeMap<String, String> {
        self.modules
            .lock()
            .get(&module_id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// The module's `AutoStart` override, if one was saved.
    pub fn auto_start(&self, module_id: &str) -> Option<bool> {
        self.get(module_id)
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(AUTO_START))
            .map(|(_, value)| value.eq_ignore_ascii_case("true"))
    }

    /// Sets one setting of a module and saves the file. A name differing
    /// only in letter case replaces the earlier one.
    ///
    /// # Errors
    /// [`SettingError`] for a refused name or value, or a file that cannot
    /// be written (then nothing is changed).
    pub fn set(&self, module_id: &str, name: &str, value: &str) -> Result<(), SettingError> {
        if !name.eq_ignore_ascii_case(AUTO_START) {
            check_name(name)?;
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(SettingError::Value {
                name: name.to_owned(),
                why: "is longer than 4096 bytes",
            });
        }
        if value.contains('\0') {
            return Err(SettingError::Value {
                name: name.to_owned(),
                why: "contains a NUL byte",
            });
        }
        let mut modules = self.modules.lock();
        let mut next = modules.clone();
        let settings = next.entry(module_id.to_ascii_lowercase()).or_default();
        settings.retain(|k, _| !k.eq_ignore_ascii_case(name));
        settings.insert(name.to_owned(), value.to_owned());
        self.save(&next)?;
        *modules = next;
        Ok(())
    }

    fn save(
        &self,
        modules: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), SettingError> {
        let failed = |source| SettingError::Save {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        // Written aside, then renamed: a crash never leaves half a file.
        let temp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(modules).expect("string maps serialize");
        std::fs::write(&temp, text).map_err(failed)?;
        std::fs::rename(&temp, &self.path).map_err(failed)
    }
}

/// The environment variable a setting reaches its module as: CodeProject's
/// names for the module's launch and GPU options (`EnableGPU` →
/// `CPAI_MODULE_ENABLE_GPU`, `HalfPrecision` → `CPAI_HALF_PRECISION`, ...),
/// else the name upper-cased, as manifest `EnvironmentVariables` are.
/// `None` for `AutoStart`, which is no variable.
pub fn env_name(name: &str) -> Option<String> {
    let known = [
        ("EnableGPU", "CPAI_MODULE_ENABLE_GPU"),
        ("UseGPU", "CPAI_MODULE_ENABLE_GPU"),
        ("HalfPrecision", "CPAI_HALF_PRECISION"),
        ("AcceleratorDeviceName", "CPAI_ACCEL_DEVICE_NAME"),
        ("Parallelism", "CPAI_MODULE_PARALLELISM"),
        ("LogVerbosity", "CPAI_LOG_VERBOSITY"),
    ];
    if name.eq_ignore_ascii_case(AUTO_START) {
        return None;
    }
    Some(
        known
            .iter()
            .find(|(setting, _)| setting.eq_ignore_ascii_case(name))
            .map_or_else(|| name.to_ascii_uppercase(), |(_, env)| (*env).to_owned()),
    )
}

/// The value as its variable carries it: `True`/`False` for
/// `CPAI_MODULE_ENABLE_GPU`, as the CodeProject SDKs read it.
pub fn env_value(env: &str, value: &str) -> String {
    if env == "CPAI_MODULE_ENABLE_GPU" {
        let on = matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes"
        );
        return if on { "True" } else { "False" }.to_owned();
    }
    value.to_owned()
}

/// Names a setting may not have: ones the server sets for every module
/// (its identity, port and token), and ones that change which program or
/// libraries the module runs.
fn check_name(name: &str) -> Result<(), SettingError> {
    let refuse = |why| {
        Err(SettingError::Name {
            name: name.to_owned(),
            why,
        })
    };
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        return refuse("is not a valid environment variable name (letters, digits and '_', not starting with a digit, at most 128)");
    }
    let env = env_name(name).unwrap_or_default();
    let reserved = [
        "CPAI_PORT",
        "CPAI_APPROOTPATH",
        "CPAI_MODULE_ID",
        "CPAI_MODULE_NAME",
        "CPAI_MODULE_PATH",
        "CPAI_MODULE_QUEUENAME",
        "CPAI_MODULE_SERVER_LAUNCHED",
        "PATH",
        "HOME",
    ];
    let prefixes = ["LD_", "DYLD_", "PYTHON", "MODHOST_", "RUST_"];
    if reserved.contains(&env.as_str()) || prefixes.iter().any(|p| env.starts_with(p)) {
        return refuse("is set by the server or changes which program the module runs; it cannot be overridden");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_reload_and_replace_by_name_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let (overrides, problem) = Overrides::load(dir.path());
        assert!(problem.is_none());
        overrides.set("LlamaChat", "MODEL_SIZE", "small").unwrap();
        overrides.set("llamachat", "model_size", "large").unwrap();
        overrides.set("LlamaChat", "AutoStart", "true").unwrap();
        let (again, _) = Overrides::load(dir.path());
        let settings = again.get("LLAMACHAT");
        assert_eq!(settings.len(), 2, "{settings:?}");
        assert_eq!(settings["model_size"], "large");
        assert_eq!(again.auto_start("LlamaChat"), Some(true));
        assert_eq!(again.auto_start("Other"), None);
    }

    #[test]
    fn a_broken_file_is_moved_aside_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("module-settings.json"), "{not json").unwrap();
        let (overrides, problem) = Overrides::load(dir.path());
        let problem = problem.expect("a problem is reported");
        assert!(problem.contains("module-settings.json.bad"), "{problem}");
        assert!(overrides.get("x").is_empty());
        assert!(dir.path().join("module-settings.json.bad").exists());
    }

    #[test]
    fn names_map_to_codeproject_variables() {
        assert_eq!(env_name("EnableGPU").unwrap(), "CPAI_MODULE_ENABLE_GPU");
        assert_eq!(env_name("enablegpu").unwrap(), "CPAI_MODULE_ENABLE_GPU");
        assert_eq!(
            env_name("CPAI_HALF_PRECISION").unwrap(),
            "CPAI_HALF_PRECISION"
        );
        assert_eq!(env_name("model_size").unwrap(), "MODEL_SIZE");
        assert_eq!(env_name("AutoStart"), None);
        assert_eq!(env_value("CPAI_MODULE_ENABLE_GPU", "false"), "False");
        assert_eq!(env_value("CPAI_MODULE_ENABLE_GPU", "TRUE"), "True");
        assert_eq!(env_value("MODEL_SIZE", "Large"), "Large");
    }

    #[test]
    fn dangerous_or_malformed_names_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (overrides, _) = Overrides::load(dir.path());
        for name in [
            "LD_PRELOAD",
            "PATH",
            "PYTHONPATH",
            "CPAI_PORT",
            "MODHOST_MODULE_TOKEN",
        ] {
            let err = overrides.set("m", name, "x").unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains("cannot be overridden"),
                "{err}"
            );
        }
        for name in ["", "1ABC", "A-B", "A B"] {
            let err = overrides.set("m", name, "x").unwrap_err().to_string();
            assert!(
                err.contains("not a valid environment variable name"),
                "{err}"
            );
        }
        let err = overrides.set("m", "X", "a\0b").unwrap_err().to_string();
        assert!(err.contains("NUL"), "{err}");
        assert!(overrides.get("m").is_empty(), "nothing refused was kept");
    }
}
