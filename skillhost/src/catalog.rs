//! The skills on disk: `{folder}/{namespace}/{name}.wasm` in each skill
//! folder, compiled once and cached.
//!
//! A skill is looked up on disk at every call: a new file is found, a
//! changed one (size or modification time) is compiled again, a removed one
//! is gone, all without a restart. Compiled components are kept in memory
//! and, with a cache folder, on disk by a hash of the file's bytes and of
//! the engine's settings, so a restart or a second server does not compile
//! the same bytes again. Where two folders hold the same skill, the first
//! folder wins.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::bindings::SkillPre;
use crate::error::SkillError;
use crate::sandbox::{Sandbox, StoreState};

/// The WIT package version skills must be built for.
pub const WIT_VERSION: &str = "0.3.0";
const HANDLER: &str = "pharia:skill/skill-handler";

/// A skill's name: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SkillName {
    /// `^[a-z0-9]+(-[a-z0-9]+)*$`, 1–64 characters.
    pub namespace: String,
    /// The file stem: letters, digits, `-` and `_`, 1–64 characters.
    pub name: String,
}

impl SkillName {
    /// Checks both parts.
    ///
    /// # Errors
    /// [`SkillError::InvalidInput`] naming the part and its rule.
    pub fn parse(namespace: &str, name: &str) -> Result<SkillName, SkillError> {
        if !valid_namespace(namespace) {
            return Err(SkillError::InvalidInput(format!(
                "the namespace '{namespace}' is not valid: 1–64 lowercase letters and digits, \
                 in words joined by single '-'"
            )));
        }
        if !valid_name(name) {
            return Err(SkillError::InvalidInput(format!(
                "the skill name '{name}' is not valid: 1–64 letters, digits, '-' or '_'"
            )));
        }
        Ok(SkillName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for SkillName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn valid_namespace(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A skill file found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub name: SkillName,
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// A compiled skill, ready to instantiate.
pub struct Loaded {
    pub found: Found,
    pub pre: SkillPre<StoreState>,
    /// How long compiling (or loading from the disk cache) took.
    pub load_time: Duration,
    /// Whether it came from the disk cache.
    pub from_cache: bool,
}

/// The skill folders and the compiled skills.
pub struct Catalog {
    folders: Vec<PathBuf>,
    cache_dir: Option<PathBuf>,
    loaded: Mutex<HashMap<SkillName, Arc<Loaded>>>,
    /// One compile at a time per skill: callers racing for a new file wait
    /// for the first one's compile.
    compiling: Mutex<HashMap<SkillName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Catalog {
    /// The skills in `folders`, with compiled components cached in
    /// `cache_dir` where given.
    pub fn new(folders: Vec<PathBuf>, cache_dir: Option<PathBuf>) -> Catalog {
        Catalog {
            folders,
            cache_dir,
            loaded: Mutex::default(),
            compiling: Mutex::default(),
        }
    }

    /// The folders searched, in order.
    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// Every skill on disk now, sorted by name; forgets compiled skills
    /// whose file went.
    pub fn list(&self) -> Vec<Found> {
        let mut all: Vec<Found> = Vec::new();
        for folder in &self.folders {
            let Ok(namespaces) = std::fs::read_dir(folder) else {
                continue;
            };
            for namespace in namespaces.flatten() {
                let ns = namespace.file_name().to_string_lossy().into_owned();
                if !valid_namespace(&ns) || !namespace.path().is_dir() {
                    continue;
                }
                let Ok(files) = std::fs::read_dir(namespace.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let path = file.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                        continue;
                    }
                    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                        continue;
                    };
                    let Ok(name) = SkillName::parse(&ns, stem) else {
                        continue;
                    };
                    if all.iter().any(|f| f.name == name) {
                        continue;
                    }
                    if let Some(found) = stat(name, path) {
                        all.push(found);
                    }
                }
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        self.loaded
            .lock()
            .retain(|name, _| all.iter().any(|f| &f.name == name));
        all
    }

    /// The skill's file now, if any.
    pub fn find(&self, name: &SkillName) -> Option<Found> {
        self.folders.iter().find_map(|folder| {
            let path = folder
                .join(&name.namespace)
                .join(format!("{}.wasm", name.name));
            stat(name.clone(), path)
        })
    }

    /// The skill compiled, compiling it when new or changed on disk.
    ///
    /// # Errors
    /// [`SkillError::NotFound`] when no folder holds it;
    /// [`SkillError::Broken`] when it does not compile, is built for
    /// another WIT version, or imports what modhost does not serve.
    pub async fn get(
        &self,
        sandbox: &Sandbox,
        name: &SkillName,
    ) -> Result<Arc<Loaded>, SkillError> {
        let Some(found) = self.find(name) else {
            self.loaded.lock().remove(name);
            return Err(SkillError::NotFound(format!(
                "no skill '{name}': no {}/{}.wasm in the skill folders ({})",
                name.namespace,
                name.name,
                self.folders
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if let Some(loaded) = self.current(name, &found) {
            return Ok(loaded);
        }
        let gate = Arc::clone(self.compiling.lock().entry(name.clone()).or_default());
        let _compiling = gate.lock().await;
        if let Some(loaded) = self.current(name, &found) {
            return Ok(loaded);
        }
        let started = Instant::now();
        let engine = sandbox.engine.clone();
        let cache_dir = self.cache_dir.clone();
        let path = found.path.clone();
        let (component, from_cache) =
            tokio::task::spawn_blocking(move || compile(&engine, &path, cache_dir.as_deref()))
                .await
                .map_err(|e| SkillError::Broken(format!("compiling {name} stopped: {e}")))??;
        check_versions(&sandbox.engine, &component, &found.path)?;
        let pre = sandbox.linker.instantiate_pre(&component).map_err(|e| {
            SkillError::Broken(format!(
                "{} imports something modhost does not serve: {e:#}",
                found.path.display()
            ))
        })?;
        let pre = SkillPre::new(pre).map_err(|e| {
            SkillError::Broken(format!(
                "{} does not export the pharia:skill@{WIT_VERSION} skill-handler: {e:#}",
                found.path.display()
            ))
        })?;
        let loaded = Arc::new(Loaded {
            found,
            pre,
            load_time: started.elapsed(),
            from_cache,
        });
        tracing::info!(
            skill = %name,
            ms = loaded.load_time.as_millis() as u64,
            from_cache,
            "skill loaded"
        );
        self.loaded.lock().insert(name.clone(), Arc::clone(&loaded));
        Ok(loaded)
    }

    /// The compiled skill if it was compiled from the file as it is now.
    fn current(&self, name: &SkillName, found: &Found) -> Option<Arc<Loaded>> {
        self.loaded
            .lock()
            .get(name)
            .filter(|l| {
                l.found.bytes == found.bytes
                    && l.found.modified == found.modified
                    && l.found.path == found.path
            })
            .cloned()
    }
}

fn stat(name: SkillName, path: PathBuf) -> Option<Found> {
    let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
    Some(Found {
        name,
        bytes: meta.len(),
        modified: meta.modified().ok()?,
        path,
    })
}

/// Compiles the component at `path`, or loads it from `cache_dir`; whether
/// it came from the cache.
fn compile(
    engine: &Engine,
    path: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Component, bool), SkillError> {
    let bytes = std::fs::read(path)
        .map_err(|e| SkillError::Broken(format!("reading {}: {e}", path.display())))?;
    let cached = cache_dir.map(|dir| dir.join(format!("{}.cwasm", cache_key(engine, &bytes))));
    if let Some(file) = cached.as_deref().filter(|f| f.is_file()) {
        // SAFETY: the file was written by `Component::serialize` of an
        // engine with the same settings (its name hashes them), in a
        // folder only this server writes.
        match unsafe { Component::deserialize_file(engine, file) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(file = %file.display(), "dropping an unreadable compiled skill: {e:#}");
                let _ = std::fs::remove_file(file);
            }
        }
    }
    let component = Component::new(engine, &bytes).map_err(|e| {
        SkillError::Broken(format!(
            "{} is not a WebAssembly component modhost can compile: {e:#}",
            path.display()
        ))
    })?;
    if let Some(file) = cached {
        let saved = component
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|data| {
                let dir = file.parent().expect("a file in the cache folder");
                std::fs::create_dir_all(dir)?;
                let temp = dir.join(format!(".{}.tmp", std::process::id()));
                std::fs::write(&temp, data)?;
                std::fs::rename(&temp, &file)
            });
        if let Err(e) = saved {
            tracing::warn!(file = %file.display(), "cannot cache a compiled skill: {e}");
        }
    }
    Ok((component, false))
}

/// A hash of the bytes and of the engine settings that compiled code
/// depends on.
fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut settings = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut settings);
    let mut digest = Sha256::new();
    digest.update(bytes);
    digest.update(settings.finish().to_le_bytes());
    digest.update(env!("CARGO_PKG_VERSION").as_bytes());
    digest
        .finalize()
        .iter()
        .take(20)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Refuses a component built against another version of the WIT, naming
/// the version it was built for.
fn check_versions(engine: &Engine, component: &Component, path: &Path) -> Result<(), SkillError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let Some(handler) = exports.iter().find(|n| n.starts_with(HANDLER)) else {
        return Err(SkillError::Broken(format!(
            "{} is not a skill: it does not export {HANDLER} (it exports: {})",
            path.display(),
            exports.join(", ")
        )));
    };
    let imports = ty
        .imports(engine)
        .map(|(n, _)| n.to_owned())
        .collect::<Vec<_>>();
    let wanted = format!("@{WIT_VERSION}");
    let other = std::iter::once(handler)
        .chain(imports.iter().filter(|n| n.starts_with("pharia:skill/")))
        .find(|n| !n.ends_with(&wanted));
    if let Some(name) = other {
        let version = name.split('@').nth(1).unwrap_or("no version");
        return Err(SkillError::Broken(format!(
            "{} was built for pharia:skill {version} ({name}); modhost serves pharia:skill@{WIT_VERSION} \
             only: rebuild it against skillhost/wit/skill.wit",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(SkillName::parse("my-team", "summarize_v2").is_ok());
        for bad in ["", "My", "a--b", "-a", "a-", "a_b", &"a".repeat(65)] {
            assert!(SkillName::parse(bad, "x").is_err(), "{bad}");
        }
        for bad in ["", "a.b", "a/b", &"a".repeat(65)] {
            assert!(SkillName::parse("ns", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listing_finds_skill_files_and_the_first_folder_wins() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        for (root, ns, file) in [
            (&one, "team", "a.wasm"),
            (&one, "team", "notes.txt"),
            (&one, "Bad_NS", "x.wasm"),
            (&two, "team", "a.wasm"),
            (&two, "other", "b.wasm"),
        ] {
            std::fs::create_dir_all(root.path().join(ns)).unwrap();
            std::fs::write(root.path().join(ns).join(file), b"x").unwrap();
        }
        let catalog = Catalog::new(vec![one.path().into(), two.path().into()], None);
        let names: Vec<String> = catalog.list().iter().map(|f| f.name.to_string()).collect();
        assert_eq!(names, ["other/b", "team/a"]);
        let a = catalog
            .find(&SkillName::parse("team", "a").unwrap())
            .unwrap();
        assert!(a.path.starts_with(one.path()));
    }
}
