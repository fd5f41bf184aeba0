//! Module manifests (`modulesettings.json`) in the format of CodeProject.AI
//! Server 2.9 (docs/protocol.md §3): finding them, merging
//! their per-platform variants, checking them against a JSON Schema, reading
//! them into typed settings, and expanding `%NAME%` path macros.
//!
//! The server calls [`discover`] with its module directories, logs each
//! entry of [`Discovery::errors`] and skips those modules, then launches
//! from [`ModuleManifest::settings`], expanding macros with [`Macros`] at
//! launch time.
//!
//! ```text
//! <dir>/<Module>/modulesettings*.json ─ read (JSON with comments)
//!   ─ merge variants for the Platform ─ validate (schema) ─ deserialize
//!   ─ ModuleManifest { id, dir, files, settings }
//! ```
//!
//! # Layout
//! - `load.rs`: [`discover`], [`load_module_dir`], [`settings_file_names`]
//!   and [`Discovery`]: the pipeline above.
//! - `merge.rs`: [`merge`], .NET-configuration layering of JSON values.
//! - `schema.rs`: the embedded schema (`schema/modulesettings.schema.json`,
//!   [`SCHEMA`]) and its two custom keywords.
//! - `types.rs`: [`ModuleSettings`] and its parts, their defaults, and
//!   camelCase output for `/v1/module/list/running`.
//! - `enums.rs`: [`RuntimeLocation`], [`LogVerbosity`], [`ParamType`],
//!   parsed ignoring letter case.
//! - `platform.rs`: [`Platform`], which variants apply and which
//!   `InstallOptions.Platforms` names match.
//! - `macros.rs`: [`Macros`], `%ROOT_PATH%` and friends.
//! - `camel.rs`: .NET's camelCase naming rule.
//! - `error.rs`: [`ManifestError`].

mod camel;
mod enums;
mod error;
mod load;
mod macros;
mod merge;
mod platform;
mod schema;
mod types;

pub use enums::{LogVerbosity, ParamType, RuntimeLocation, UnknownVariant};
pub use error::ManifestError;
pub use load::{discover, load_module_dir, settings_file_names, Discovery, MANIFEST_FILE};
pub use macros::Macros;
pub use merge::merge;
pub use platform::Platform;
pub use schema::SCHEMA;
pub use types::{
    GenerationApi, GpuOptions, InstallOptions, LaunchSettings, ModuleManifest, ModuleRelease,
    ModuleSettings, PublishingInfo, RouteMap, RouteParam,
};
