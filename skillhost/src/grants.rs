//! What a namespace grants its skills beyond the empty sandbox: an optional
//! `namespace.toml` in the namespace's folder.
//!
//! ```toml
//! network = true            # sockets and name lookup (default false)
//! [[dirs]]
//! host = "data"             # relative to the namespace folder, or absolute
//! guest = "/data"           # where the skill sees it
//! writable = false          # default false: read only
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::SkillError;

/// The file a namespace folder may hold.
pub const GRANTS_FILE: &str = "namespace.toml";

/// A namespace's grants; the default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// A host folder a namespace's skills may open.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

impl Grants {
    /// The grants of the namespace in `folder`: none without a
    /// [`GRANTS_FILE`].
    ///
    /// # Errors
    /// [`SkillError::Broken`] naming the file and what is wrong in it.
    pub fn load(folder: &Path) -> Result<Grants, SkillError> {
        let file = folder.join(GRANTS_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Grants::default()),
            Err(e) => {
                return Err(SkillError::Broken(format!(
                    "reading {}: {e}",
                    file.display()
                )))
            }
        };
        let mut grants: Grants = toml::from_str(&text)
            .map_err(|e| SkillError::Broken(format!("{}: {e}", file.display())))?;
        for dir in &mut grants.dirs {
            if dir.host.is_relative() {
                dir.host = folder.join(&dir.host);
            }
        }
        Ok(grants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_grants_nothing_and_a_file_is_read_relative_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Grants::load(dir.path()).unwrap(), Grants::default());
        std::fs::write(
            dir.path().join(GRANTS_FILE),
            "network = true\n[[dirs]]\nhost = \"data\"\nguest = \"/data\"\n",
        )
        .unwrap();
        let grants = Grants::load(dir.path()).unwrap();
        assert!(grants.network);
        assert_eq!(grants.dirs[0].host, dir.path().join("data"));
        assert!(!grants.dirs[0].writable);
        std::fs::write(dir.path().join(GRANTS_FILE), "netwrk = true\n").unwrap();
        let err = Grants::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("netwrk"), "{err}");
    }
}
