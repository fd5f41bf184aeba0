//! The machine a manifest is loaded for: it picks the per-platform variant
//! files and decides `InstallOptions.Platforms` support.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Operating system, CPU architecture and run mode, in CodeProject.AI
/// Server's vocabulary (docs/protocol.md §3.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `"linux"`, `"windows"` or `"macos"` (other Rust OS names pass through
    /// unchanged). Selects `modulesettings.{os}.json`.
    pub os: String,
    /// `"x64"` or `"arm64"` (other Rust arch names pass through unchanged).
    /// Selects `modulesettings.{os}.{arch}.json`.
    pub arch: String,
    /// Running inside a Docker container: enables `modulesettings.docker*.json`.
    pub docker: bool,
    /// Development mode: enables the `*.development.json` variants.
    pub development: bool,
}

impl Platform {
    /// A platform with CodeProject's names, e.g. `Platform::new("linux",
    /// "arm64")`, outside Docker and development mode.
    pub fn new(os: &str, arch: &str) -> Platform {
        Platform {
            os: os.to_owned(),
            arch: arch.to_owned(),
            docker: false,
            development: false,
        }
    }

    /// The platform this process runs on, from `std::env::consts`; `docker`
    /// is true when `/.dockerenv` exists; `development` is false (modhost sets
    /// it from its `--development` setting).
    pub fn current() -> Platform {
        Platform {
            // Rust's OS names for the three supported systems are already
            // CodeProject's: "linux", "windows", "macos".
            os: std::env::consts::OS.to_owned(),
            arch: arch_from_rust(std::env::consts::ARCH).to_owned(),
            docker: Path::new("/.dockerenv").exists(),
            development: false,
        }
    }

    /// The platform name CodeProject.AI Server uses for `%PLATFORM%` and in
    /// `InstallOptions.Platforms`: the OS alone on x64 (`"linux"`,
    /// `"windows"`, `"macos"`), otherwise `"{os}-{arch}"` (`"linux-arm64"`,
    /// `"macos-arm64"`).
    pub fn platform_name(&self) -> String {
        if self.arch == "x64" {
            self.os.clone()
        } else {
            format!("{}-{}", self.os, self.arch)
        }
    }

    /// The OS as people write it (`"Linux"`, `"Windows"`, `"macOS"`), used
    /// for `%OS_NAME%`; other OS names are returned unchanged.
    pub fn os_display_name(&self) -> &str {
        match self.os.as_str() {
            "linux" => "Linux",
            "windows" => "Windows",
            "macos" => "macOS",
            other => other,
        }
    }

    /// Whether a name from `InstallOptions.Platforms` (without any leading
    /// `!`) denotes this platform: the OS (`"linux"`), `"{os}-{arch}"`
    /// (`"linux-x64"`) or [`Platform::platform_name`]. Letter case is
    /// ignored. Device names (`raspberrypi`, `jetson`, …) never match since
    /// device detection is not implemented.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim();
        name.eq_ignore_ascii_case(&self.os)
            || name.eq_ignore_ascii_case(&format!("{}-{}", self.os, self.arch))
            || name.eq_ignore_ascii_case(&self.platform_name())
    }
}

/// Maps `std::env::consts::ARCH` to CodeProject's architecture names.
fn arch_from_rust(arch: &str) -> &str {
    match arch {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_name_omits_x64_and_appends_other_architectures() {
        assert_eq!(Platform::new("linux", "x64").platform_name(), "linux");
        assert_eq!(Platform::new("windows", "x64").platform_name(), "windows");
        assert_eq!(
            Platform::new("linux", "arm64").platform_name(),
            "linux-arm64"
        );
        assert_eq!(
            Platform::new("macos", "arm64").platform_name(),
            "macos-arm64"
        );
    }

    #[test]
    fn current_platform_uses_codeproject_names() {
        let current = Platform::current();
        if cfg!(target_os = "linux") {
            assert_eq!(current.os, "linux");
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(current.arch, "x64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(current.arch, "arm64");
        }
        assert!(!current.development);
    }

    #[test]
    fn matches_os_os_arch_and_platform_name_ignoring_case() {
        let arm = Platform::new("linux", "arm64");
        assert!(arm.matches_name("linux"));
        assert!(arm.matches_name("Linux-ARM64"));
        assert!(!arm.matches_name("linux-x64"));
        assert!(!arm.matches_name("windows"));
        let x64 = Platform::new("windows", "x64");
        assert!(x64.matches_name("windows-x64"));
        assert!(!x64.matches_name("windows-arm64"));
    }
}
