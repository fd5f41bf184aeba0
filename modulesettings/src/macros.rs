//! `%NAME%` path macros in environment-variable values and
//! `LaunchSettings.Command` (docs/protocol.md §3.6).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// The values that `%NAME%` macros expand to.
///
/// One `Macros` serves every module: [`Macros::expand`] takes the module's
/// directory for `%CURRENT_MODULE_PATH%`. The Python macros depend on the
/// module's runtime, so set `python_name`/`python_path` on a clone before
/// expanding for a Python module; while they are `None` their macros are
/// left unexpanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Macros {
    /// `%ROOT_PATH%`: the server's installation root.
    pub root_path: PathBuf,
    /// `%MODULES_PATH%`: where installed modules live (`<root>/modules`).
    pub modules_path: PathBuf,
    /// `%PREINSTALLED_MODULES_PATH%` (`<root>/preinstalled-modules`).
    pub preinstalled_modules_path: PathBuf,
    /// `%DEMO_MODULES_PATH%` (`<root>/src/demos/modules`).
    pub demo_modules_path: PathBuf,
    /// `%EXTERNAL_MODULES_PATH%` (`<root>/../CodeProject.AI-Modules`).
    pub external_modules_path: PathBuf,
    /// `%RUNTIMES_PATH%`: shared runtimes (`<root>/runtimes`).
    pub runtimes_path: PathBuf,
    /// `%DATA_DIR%`: the server's app-data directory (user overrides, logs).
    pub data_dir: PathBuf,
    /// `%PYTHON_NAME%`: the module's Python runtime name; `None` leaves the
    /// macro unexpanded.
    pub python_name: Option<String>,
    /// `%PYTHON_PATH%`: the module's Python interpreter; `None` leaves the
    /// macro unexpanded.
    pub python_path: Option<PathBuf>,
    /// `%PLATFORM%` ([`Platform::platform_name`]), `%OS%` ([`Platform::os`])
    /// and `%OS_NAME%` ([`Platform::os_display_name`]).
    pub platform: Platform,
}

impl Macros {
    /// Macros for a server installed at `root_path`, with CodeProject.AI
    /// Server's directory layout below it (see the field docs) and its
    /// app-data directory for `platform` as `data_dir`:
    /// `C:\ProgramData\CodeProject\AI`, `/Library/Application
    /// Support/CodeProject/AI` or `/etc/codeproject/ai`.
    pub fn new(root_path: impl Into<PathBuf>, platform: Platform) -> Macros {
        let root_path = root_path.into();
        let data_dir = match platform.os.as_str() {
            "windows" => PathBuf::from(r"C:\ProgramData\CodeProject\AI"),
            "macos" => PathBuf::from("/Library/Application Support/CodeProject/AI"),
            _ => PathBuf::from("/etc/codeproject/ai"),
        };
        Macros {
            modules_path: root_path.join("modules"),
            preinstalled_modules_path: root_path.join("preinstalled-modules"),
            demo_modules_path: root_path.join("src").join("demos").join("modules"),
            external_modules_path: root_path.join("..").join("CodeProject.AI-Modules"),
            runtimes_path: root_path.join("runtimes"),
            data_dir,
            python_name: None,
            python_path: None,
            platform,
            root_path,
        }
    }

    /// Expands the macros in `value` for the module in `module_dir`.
    ///
    /// A value starting with `@` is returned without the `@` and otherwise
    /// untouched (LlamaChat writes `@microsoft/Phi-3-mini-4k-instruct-gguf`
    /// so that nothing in it is read as a macro). An unknown `%NAME%`, or a
    /// Python macro while its field is `None`, is left as written. Expanded
    /// text is not scanned again.
    pub fn expand(&self, value: &str, module_dir: &Path) -> String {
        if let Some(raw) = value.strip_prefix('@') {
            return raw.to_owned();
        }
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(len) = after.find('%') else {
                rest = &rest[start..];
                break;
            };
            match self.lookup(&after[..len], module_dir) {
                Some(expansion) => {
                    out.push_str(&expansion);
                    rest = &after[len + 1..];
                }
                None => {
                    // Not a macro: keep the first `%` and let the second one
                    // start the next candidate, so "50% of %ROOT_PATH%" works.
                    out.push('%');
                    out.push_str(&after[..len]);
                    rest = &after[len..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The expansion of the macro called `name` (without the `%`s).
    fn lookup(&self, name: &str, module_dir: &Path) -> Option<String> {
        let path = |path: &Path| Some(path.to_string_lossy().into_owned());
        match name {
            "ROOT_PATH" => path(&self.root_path),
            "RUNTIMES_PATH" => path(&self.runtimes_path),
            "MODULES_PATH" => path(&self.modules_path),
            "PREINSTALLED_MODULES_PATH" => path(&self.preinstalled_modules_path),
            "DEMO_MODULES_PATH" => path(&self.demo_modules_path),
            "EXTERNAL_MODULES_PATH" => path(&self.external_modules_path),
            "CURRENT_MODULE_PATH" => path(module_dir),
            "DATA_DIR" => path(&self.data_dir),
            "PYTHON_PATH" => self.python_path.as_deref().and_then(path),
            "PYTHON_NAME" => self.python_name.clone(),
            "PLATFORM" => Some(self.platform.platform_name()),
            "OS" => Some(self.platform.os.clone()),
            "OS_NAME" => Some(self.platform.os_display_name().to_owned()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn macros() -> Macros {
        let platform = Platform {
            os: "linux".into(),
            arch: "arm64".into(),
            docker: false,
            development: false,
        };
        let mut macros = Macros::new("/srv/ai", platform);
        macros.data_dir = "/var/lib/ai".into();
        macros
    }

    #[test]
    fn expands_every_known_macro() {
        let mut macros = macros();
        macros.python_name = Some("python311".into());
        macros.python_path = Some("/srv/ai/runtimes/python311/bin/python3".into());
        let module = Path::new("/srv/ai/modules/Echo");
        let cases = [
            ("%ROOT_PATH%", "/srv/ai"),
            ("%RUNTIMES_PATH%", "/srv/ai/runtimes"),
            ("%MODULES_PATH%", "/srv/ai/modules"),
            (
                "%PREINSTALLED_MODULES_PATH%",
                "/srv/ai/preinstalled-modules",
            ),
            ("%DEMO_MODULES_PATH%", "/srv/ai/src/demos/modules"),
            (
                "%EXTERNAL_MODULES_PATH%",
                "/srv/ai/../CodeProject.AI-Modules",
            ),
            (
                "%CURRENT_MODULE_PATH%/assets",
                "/srv/ai/modules/Echo/assets",
            ),
            ("%DATA_DIR%", "/var/lib/ai"),
            ("%PYTHON_PATH%", "/srv/ai/runtimes/python311/bin/python3"),
            ("%PYTHON_NAME%", "python311"),
            ("%PLATFORM%", "linux-arm64"),
            ("bin/%OS%/", "bin/linux/"),
            ("%OS_NAME%", "Linux"),
        ];
        for (input, expected) in cases {
            assert_eq!(macros.expand(input, module), expected, "expanding {input}");
        }
    }

    #[test]
    fn at_prefix_passes_the_rest_through_unexpanded() {
        let module = Path::new("/m");
        assert_eq!(
            macros().expand("@microsoft/Phi-3-mini-4k-instruct-gguf", module),
            "microsoft/Phi-3-mini-4k-instruct-gguf"
        );
        assert_eq!(macros().expand("@%ROOT_PATH%", module), "%ROOT_PATH%");
        // Only a leading `@` escapes.
        assert_eq!(macros().expand("me@%OS%", module), "me@linux");
    }

    #[test]
    fn unknown_macros_and_stray_percent_signs_are_left_as_written() {
        let module = Path::new("/m");
        assert_eq!(
            macros().expand("%CURRENT_PATH%/x", module),
            "%CURRENT_PATH%/x"
        );
        assert_eq!(macros().expand("50% of %OS%", module), "50% of linux");
        assert_eq!(macros().expand("100%", module), "100%");
        assert_eq!(macros().expand("%%OS%%", module), "%linux%");
    }

    #[test]
    fn python_macros_stay_unexpanded_until_set() {
        assert_eq!(
            macros().expand("%PYTHON_PATH% -m %PYTHON_NAME%", Path::new("/m")),
            "%PYTHON_PATH% -m %PYTHON_NAME%"
        );
    }

    #[test]
    fn expansion_is_not_rescanned() {
        let mut macros = macros();
        macros.python_name = Some("%OS%".into());
        assert_eq!(macros.expand("%PYTHON_NAME%", Path::new("/m")), "%OS%");
    }
}
