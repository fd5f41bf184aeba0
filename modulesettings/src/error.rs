//! The error of loading one module's manifest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why a module's manifest was rejected; the module is skipped.
///
/// Displays as `"{file}: {json_path}: {problem}"`, or `"{file}: {problem}"`
/// when the problem concerns the whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {}{problem}", .file.display(), path_prefix(.json_path))]
pub struct ManifestError {
    /// The file at fault: the variant file that failed to parse, or the base
    /// `modulesettings.json` for problems found after merging.
    pub file: PathBuf,
    /// JSON Pointer (RFC 6901) to the offending value in the merged
    /// document, e.g. `/Modules/Echo/LaunchSettings/Parallelism`; `""` when
    /// the problem is not about one value (unreadable file, syntax error,
    /// duplicate module id).
    pub json_path: String,
    /// What is wrong, for people: a syntax error with its line and column,
    /// a schema or type error, or a duplicate id.
    pub problem: String,
}

impl ManifestError {
    pub(crate) fn new(
        file: impl Into<PathBuf>,
        json_path: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ManifestError {
            file: file.into(),
            json_path: json_path.into(),
            problem: problem.into(),
        }
    }
}

/// `"{json_path}: "`, or nothing for an empty path.
fn path_prefix(json_path: &str) -> String {
    if json_path.is_empty() {
        String::new()
    } else {
        format!("{json_path}: ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_path_and_problem() {
        let error = ManifestError::new(
            "/m/Echo/modulesettings.json",
            "/Modules/Echo/Name",
            "missing",
        );
        assert_eq!(
            error.to_string(),
            "/m/Echo/modulesettings.json: /Modules/Echo/Name: missing"
        );
    }

    #[test]
    fn display_omits_an_empty_path() {
        let error = ManifestError::new("/m/Echo/modulesettings.json", "", "cannot read file");
        assert_eq!(
            error.to_string(),
            "/m/Echo/modulesettings.json: cannot read file"
        );
    }
}
