//! The skills host: WebAssembly components of the `pharia:skill` WIT
//! (version 0.3.0, `wit/skill.wit`; the Cognitive System Interface of Aleph
//! Alpha's Pharia Kernel), run sandboxed beside modhost's process modules.
//!
//! Layout:
//! - [`catalog`]: skill files in their folders, compiled once and cached;
//! - [`sandbox`]: the engine, one store per call, and the limits;
//! - [`grants`]: what a namespace grants its skills (folders, network);
//! - [`csi`]: the imports a skill may call, answered by a [`csi::Backend`]
//!   (the server's modules), `text-splitter`, `whatlang` and the
//!   [`index`];
//! - [`index`]: the built-in document index;
//! - [`error`]: why a call failed, and who should act.
//!
//! [`Skills`] puts them together: the server holds one.

pub mod catalog;
pub mod csi;
pub mod error;
pub mod grants;
pub mod index;
pub mod sandbox;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "pharia:skill/skill",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use catalog::{Found, SkillName, WIT_VERSION};
pub use error::{CsiError, SkillError};
pub use sandbox::Limits;

use catalog::Catalog;
use csi::{Backend, Csi};
use grants::Grants;
use index::DocumentIndex;
use sandbox::Sandbox;

/// Where skills are and how they run.
#[derive(Debug, Clone)]
pub struct SkillsConfig {
    /// Folders of `{namespace}/{name}.wasm`, searched in order.
    pub folders: Vec<PathBuf>,
    /// Where compiled components are cached; `None` keeps them in memory
    /// only.
    pub cache_dir: Option<PathBuf>,
    pub limits: Limits,
}

/// A skill's metadata, as `GET /v1/skills/{namespace}/{name}/metadata`
/// answers it (Pharia Kernel's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    pub description: Option<String>,
    /// The WIT version the skill was built for: `0.3`.
    pub version: &'static str,
    /// `programmable`: a skill with code (as opposed to a configured one).
    pub skill_type: &'static str,
    /// JSON Schema, or `null` when the skill gives none.
    pub input_schema: Value,
    pub output_schema: Value,
}

/// The skills host.
pub struct Skills {
    catalog: Catalog,
    limits: Limits,
    /// Made at the first call, so that a server without skills does not
    /// carry the engine (its compiler, the WASI linker, the epoch thread).
    sandbox: OnceLock<Result<Sandbox, String>>,
    csi: Arc<Csi>,
}

impl Skills {
    /// A host for the skills in `config.folders`, answering CSI calls with
    /// `backend` and `index`. The engine starts at the first call.
    pub fn new(
        config: SkillsConfig,
        backend: Arc<dyn Backend>,
        index: Arc<DocumentIndex>,
    ) -> Skills {
        Skills {
            catalog: Catalog::new(config.folders, config.cache_dir),
            limits: config.limits,
            sandbox: OnceLock::new(),
            csi: Arc::new(Csi { backend, index }),
        }
    }

    /// The sandbox, started on first use.
    ///
    /// # Errors
    /// [`SkillError::Broken`] when the engine cannot start on this machine.
    fn sandbox(&self) -> Result<&Sandbox, SkillError> {
        self.sandbox
            .get_or_init(|| Sandbox::new(self.limits).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| SkillError::Broken(format!("the WebAssembly engine cannot start: {e}")))
    }

    /// Every skill on disk, sorted by name.
    pub fn list(&self) -> Vec<Found> {
        self.catalog.list()
    }

    /// The folders searched for skills.
    pub fn folders(&self) -> &[PathBuf] {
        self.catalog.folders()
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The document index skills search.
    pub fn index(&self) -> &Arc<DocumentIndex> {
        &self.csi.index
    }

    /// Runs `name` with `input` (JSON bytes) until it ends or `cancel`;
    /// its output, which must be JSON.
    ///
    /// # Errors
    /// [`SkillError`]: not found, broken, the skill's own error, a trap, a
    /// limit, a CSI failure, cancelled; [`SkillError::Broken`] when the
    /// output is not JSON.
    pub async fn run(
        &self,
        name: &SkillName,
        input: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<Value, SkillError> {
        let sandbox = self.sandbox()?;
        let loaded = self.catalog.get(sandbox, name).await?;
        let grants = namespace_grants(&loaded.found)?;
        let output = sandbox
            .run(&loaded.pre, Arc::clone(&self.csi), &grants, input, cancel)
            .await?;
        serde_json::from_slice(&output).map_err(|e| {
            SkillError::Broken(format!(
                "the skill's output is not JSON ({e}): {}",
                String::from_utf8_lossy(&output[..output.len().min(200)])
            ))
        })
    }

    /// The skill's metadata.
    ///
    /// # Errors
    /// As [`Skills::run`]; [`SkillError::Broken`] when a schema is not
    /// JSON.
    pub async fn metadata(&self, name: &SkillName) -> Result<Metadata, SkillError> {
        let sandbox = self.sandbox()?;
        let loaded = self.catalog.get(sandbox, name).await?;
        let grants = namespace_grants(&loaded.found)?;
        let meta = sandbox
            .metadata(&loaded.pre, Arc::clone(&self.csi), &grants)
            .await?;
        let schema = |what: &str, bytes: &[u8]| -> Result<Value, SkillError> {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(bytes).map_err(|e| {
                SkillError::Broken(format!("the skill's {what} schema is not JSON: {e}"))
            })
        };
        Ok(Metadata {
            description: meta.description,
            version: "0.3",
            skill_type: "programmable",
            input_schema: schema("input", &meta.input_schema)?,
            output_schema: schema("output", &meta.output_schema)?,
        })
    }
}

/// The grants of the namespace folder holding the skill.
fn namespace_grants(found: &Found) -> Result<Grants, SkillError> {
    match found.path.parent() {
        Some(folder) => Grants::load(folder),
        None => Ok(Grants::default()),
    }
}
