//! Finding module directories and loading their manifests: read, merge the
//! per-platform variants, validate, deserialize
//! (docs/protocol.md §3).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use jsonc_parser::ParseOptions;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ManifestError;
use crate::merge::merge;
use crate::platform::Platform;
use crate::schema;
use crate::types::{ModuleManifest, ModuleSettings};

/// The base manifest's file name.
pub const MANIFEST_FILE: &str = "modulesettings.json";

/// At most this many further violations are appended to a schema error's
/// problem text after the first.
const MAX_EXTRA_VIOLATIONS: usize = 4;

/// What [`discover`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    /// Valid modules, in scan order (directories in the order given,
    /// subdirectories by name).
    pub modules: Vec<ModuleManifest>,
    /// One entry per module that was skipped, for the caller to log.
    pub errors: Vec<ManifestError>,
}

/// The manifest file names merged for `platform`, in merge order (later
/// files override earlier ones), for CodeProject.AI Server's order:
/// `modulesettings.json`, `.development`, `.{os}`, `.{os}.development`,
/// `.{os}.{arch}`, `.{os}.{arch}.development`, then `.docker` and
/// `.docker.development` in Docker. `.development` files are included only
/// when `platform.development` is set. Device variants (`.raspberrypi`,
/// `.jetson`, …) are not used.
pub fn settings_file_names(platform: &Platform) -> Vec<String> {
    let os = &platform.os;
    let arch = &platform.arch;
    let mut layers = vec![String::new(), format!(".{os}"), format!(".{os}.{arch}")];
    if platform.docker {
        layers.push(".docker".to_owned());
    }
    let mut names = Vec::new();
    for layer in layers {
        names.push(format!("modulesettings{layer}.json"));
        if platform.development {
            names.push(format!("modulesettings{layer}.development.json"));
        }
    }
    names
}

/// Loads the module in `dir`: reads `modulesettings.json` and the variant
/// files that exist for `platform` (see [`settings_file_names`]), merges
/// them with [`merge`], validates the result against the embedded JSON
/// Schema and deserializes the first module under `Modules`.
///
/// # Errors
/// A [`ManifestError`] for the first failure: an unreadable file, a syntax
/// error (with line and column), a schema violation or a type error (with
/// the JSON path of the offending value).
pub fn load_module_dir(dir: &Path, platform: &Platform) -> Result<ModuleManifest, ManifestError> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let base_file = dir.join(MANIFEST_FILE);

    let mut document = read_jsonc(&base_file)?
        .ok_or_else(|| ManifestError::new(&base_file, "", "the file contains no JSON value"))?;
    let mut files = vec![base_file.clone()];
    for name in settings_file_names(platform).into_iter().skip(1) {
        let file = dir.join(name);
        if !file.is_file() {
            continue;
        }
        // A variant holding only comments changes nothing.
        if let Some(overlay) = read_jsonc(&file)? {
            merge(&mut document, overlay);
        }
        files.push(file);
    }

    let id = keep_first_module(&mut document, &base_file);
    let merged_from = if files.len() > 1 {
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        format!(" (merged from {})", names.join(", "))
    } else {
        String::new()
    };

    let violations = schema::validate(&document);
    if let Some((first, rest)) = violations.split_first() {
        let mut problem = first.problem.clone();
        for more in rest.iter().take(MAX_EXTRA_VIOLATIONS) {
            problem.push_str(&format!("; also {}: {}", more.json_path, more.problem));
        }
        if rest.len() > MAX_EXTRA_VIOLATIONS {
            problem.push_str(&format!("; and {} more", rest.len() - MAX_EXTRA_VIOLATIONS));
        }
        problem.push_str(&merged_from);
        return Err(ManifestError::new(
            &base_file,
            first.json_path.clone(),
            problem,
        ));
    }

    // The schema guarantees `Modules` holds at least one module, and
    // `keep_first_module` left exactly that one.
    let id = id.ok_or_else(|| ManifestError::new(&base_file, "/Modules", "no module entry"))?;
    let module = &document["Modules"][&id];
    let settings = ModuleSettings::from_value(module).map_err(|error| {
        let json_path = format!(
            "/Modules/{}{}",
            escape_pointer(&id),
            pointer_of(error.path())
        );
        ManifestError::new(
            &base_file,
            json_path,
            format!("{}{merged_from}", error.inner()),
        )
    })?;

    tracing::debug!(module_id = %id, dir = %dir.display(), files = files.len(), "loaded module manifest");
    Ok(ModuleManifest {
        id,
        dir,
        files,
        settings,
    })
}

/// Scans each of `dirs` for subdirectories holding a `modulesettings.json`
/// and loads them with [`load_module_dir`].
///
/// Directories are scanned in the order given and subdirectories by name.
/// The first module with a given id wins; a later one with the same id
/// (ignoring letter case, since ids become lowercase queue names) becomes an
/// error entry naming both files. A directory in `dirs` that does not exist
/// is skipped silently (CodeProject.AI Server probes several optional
/// locations); one that cannot be read is an error entry. Every invalid
/// module becomes an error entry and is skipped; its siblings still load.
pub fn discover(dirs: &[PathBuf], platform: &Platform) -> Discovery {
    let mut discovery = Discovery::default();
    // Lowercased id → the manifest file that defined it first.
    let mut seen: HashMap<String, PathBuf> = HashMap::new();

    for root in dirs {
        let mut module_dirs: Vec<PathBuf> = match fs::read_dir(root) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.join(MANIFEST_FILE).is_file())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(dir = %root.display(), "modules directory does not exist; skipped");
                continue;
            }
            Err(error) => {
                discovery.errors.push(ManifestError::new(
                    root,
                    "",
                    format!("cannot list the directory: {error}"),
                ));
                continue;
            }
        };
        module_dirs.sort();

        for module_dir in module_dirs {
            match load_module_dir(&module_dir, platform) {
                Ok(manifest) => match seen.get(&manifest.id.to_lowercase()) {
                    Some(first) => discovery.errors.push(ManifestError::new(
                        &manifest.files[0],
                        "",
                        format!(
                            "module id {:?} is already defined by {}; this module is ignored",
                            manifest.id,
                            first.display()
                        ),
                    )),
                    None => {
                        seen.insert(manifest.id.to_lowercase(), manifest.files[0].clone());
                        discovery.modules.push(manifest);
                    }
                },
                Err(error) => discovery.errors.push(error),
            }
        }
    }
    discovery
}

/// Reads a JSON-with-comments file; `Ok(None)` when it holds no value.
fn read_jsonc(file: &Path) -> Result<Option<Value>, ManifestError> {
    let text = fs::read_to_string(file)
        .map_err(|error| ManifestError::new(file, "", format!("cannot read the file: {error}")))?;
    // Files saved by Windows editors often start with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let options = ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
    };
    jsonc_parser::parse_to_serde_value(text, &options)
        .map_err(|error| ManifestError::new(file, "", format!("invalid JSON: {error}")))
}

/// Removes every module but the first from `document["Modules"]` and
/// returns the first one's id; `None` (document untouched) when there is no
/// `Modules` object or it is empty, which the schema then reports.
///
/// "First" is in key order: serde_json keeps object keys sorted.
fn keep_first_module(document: &mut Value, file: &Path) -> Option<String> {
    let modules: &mut Map<String, Value> = document.get_mut("Modules")?.as_object_mut()?;
    let id = modules.keys().next()?.clone();
    let ignored: Vec<String> = modules.keys().skip(1).cloned().collect();
    if !ignored.is_empty() {
        tracing::warn!(
            file = %file.display(),
            module_id = %id,
            ignored = ?ignored,
            "manifest defines several modules; only the first is loaded"
        );
        modules.retain(|key, _| *key == id);
    }
    Some(id)
}

/// Escapes one JSON Pointer reference token (RFC 6901).
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A serde_path_to_error path as a JSON Pointer suffix (`/A/0/B`).
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&escape_pointer(key)),
            Segment::Enum { variant } => pointer.push_str(&escape_pointer(variant)),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::{LogVerbosity, ParamType, RuntimeLocation};
    use serde_json::json;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/modules")
    }

    fn linux() -> Platform {
        Platform::new("linux", "x64")
    }

    /// A module directory in a temporary folder, built from file name and
    /// content pairs.
    fn module_dir(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            fs::write(dir.join(file), text).unwrap();
        }
        dir
    }

    /// A valid manifest for module `id` with `patch` applied to its entry as
    /// a JSON merge patch (RFC 7386: objects merge, `null` removes a key,
    /// anything else, arrays included, replaces), so tests can empty an array
    /// or drop a field. Not the .NET layering `merge` implements.
    fn manifest(id: &str, patch: Value) -> String {
        fn merge_patch(target: &mut Value, patch: Value) {
            match (target, patch) {
                (Value::Object(target), Value::Object(patch)) => {
                    for (key, value) in patch {
                        if value.is_null() {
                            target.remove(&key);
                        } else {
                            merge_patch(target.entry(key).or_insert(Value::Null), value);
                        }
                    }
                }
                (target, patch) => *target = patch,
            }
        }
        let mut module = json!({
            "Name": id,
            "LaunchSettings": {"FilePath": "run.py", "Runtime": "python3.11"},
            "RouteMaps": [{"Route": format!("{}/run", id.to_lowercase()), "Command": "run"}]
        });
        merge_patch(&mut module, patch);
        json!({"Modules": {id: module}}).to_string()
    }

    fn load_error(text: &str) -> (ManifestError, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let dir = module_dir(temp.path(), "Echo", &[(MANIFEST_FILE, text)]);
        let error = load_module_dir(&dir, &linux()).unwrap_err();
        (error, dir.join(MANIFEST_FILE))
    }

    // ---- valid manifests ----

    #[test]
    fn loads_a_manifest_with_comments_and_trailing_commas() {
        let manifest = load_module_dir(&fixtures().join("Echo"), &linux()).unwrap();
        assert_eq!(manifest.id, "Echo");
        assert!(manifest.dir.is_absolute());
        assert_eq!(
            manifest.files,
            vec![fixtures().join("Echo").join(MANIFEST_FILE)]
        );
        let launch = &manifest.settings.launch_settings;
        assert_eq!(launch.file_path.as_deref(), Some("echo_adapter.py"));
        assert_eq!(launch.runtime_location, RuntimeLocation::Shared);
        assert_eq!(launch.log_verbosity, LogVerbosity::Loud);
        assert_eq!(launch.parallelism, 2);
        assert_eq!(launch.post_start_pause_secs, 0.0);
        assert_eq!(manifest.settings.route_maps[0].inputs[0].name, "text");
        assert_eq!(manifest.settings.queue_name(&manifest.id), "echo_queue");
    }

    #[test]
    fn loads_a_llamachat_manifest_with_default_alias_and_linux_variant() {
        let manifest = load_module_dir(&fixtures().join("LlamaChat"), &linux()).unwrap();
        let settings = &manifest.settings;
        assert_eq!(manifest.id, "LlamaChat");
        assert_eq!(
            manifest.files.len(),
            2,
            "base + .linux: {:?}",
            manifest.files
        );
        assert_eq!(
            settings.launch_settings.runtime.as_deref(),
            Some("python3.10")
        );
        assert!(!settings.launch_settings.auto_start);
        assert_eq!(settings.queue_name(&manifest.id), "llamachat_queue");
        assert!(settings.gpu_options.enable_gpu);
        assert_eq!(
            settings.gpu_options.half_precision.as_deref(),
            Some("enable")
        );
        assert_eq!(
            settings.install_options.module_releases[1].server_version_range,
            vec!["2.8.0", ""]
        );
        assert!(!settings.is_platform_supported(&Platform::new("windows", "arm64")));
        assert!(settings.is_platform_supported(&linux()));

        let route = &settings.route_maps[0];
        assert_eq!(
            (route.route.as_str(), route.command.as_str()),
            ("text/chat", "prompt")
        );
        assert!(!route.mesh_enabled);
        let temperature = &route.inputs[3];
        assert_eq!(temperature.param_type, ParamType::Float);
        assert_eq!(temperature.default_value, Some(json!(0.4)));
        assert_eq!(
            route.inputs[2].default_value,
            Some(json!("0 (model default)"))
        );
        assert_eq!(
            settings.extra["ModelRequirements"][0]["Architecture"],
            "GGUF"
        );
        assert_eq!(
            settings.environment_variables["CPAI_MODULE_LLAMA_MODEL_REPO"],
            "@microsoft/Phi-3-mini-4k-instruct-gguf"
        );
    }

    #[test]
    fn at_escaped_environment_values_survive_loading_and_expand_raw() {
        let manifest = load_module_dir(&fixtures().join("ModelFetcher"), &linux()).unwrap();
        let env = &manifest.settings.environment_variables;
        assert_eq!(env["HF_REPO"], "@TheOrg/%MODEL%-GGUF", "stored unexpanded");
        assert_eq!(env["RETRIES"], "3");
        assert_eq!(env["VERBOSE"], "True");

        let mut macros = crate::Macros::new("/srv/ai", linux());
        macros.data_dir = "/var/lib/ai".into();
        let expanded = manifest.expanded_environment(&macros);
        assert_eq!(expanded["HF_REPO"], "TheOrg/%MODEL%-GGUF");
        assert_eq!(expanded["LITERAL_PERCENT"], "%ROOT_PATH%");
        assert_eq!(
            expanded["MODELS_DIR"],
            format!("{}/models", manifest.dir.display())
        );
        assert_eq!(
            manifest.expanded_command(&macros),
            Some(format!(
                "{}/fetcher --data /var/lib/ai",
                manifest.dir.display()
            ))
        );
    }

    // ---- invalid manifests ----

    #[test]
    fn malformed_json_reports_line_and_column() {
        let (error, file) =
            load_error("{\n  \"Modules\": {\n    \"Echo\": { \"Name\" \"Echo\" }\n  }\n}\n");
        assert_eq!(error.file, file);
        assert_eq!(error.json_path, "");
        assert!(
            error.problem.starts_with("invalid JSON: "),
            "{}",
            error.problem
        );
        assert!(
            // Column of the token where the colon was expected.
            error.problem.contains("line 3 column 22"),
            "{}",
            error.problem
        );
    }

    #[test]
    fn empty_file_is_rejected() {
        let (error, _) = load_error("// nothing here yet\n");
        assert_eq!(error.problem, "the file contains no JSON value");
    }

    #[test]
    fn missing_name_is_reported_at_the_module() {
        let mut text: Value = serde_json::from_str(&manifest("Echo", json!({}))).unwrap();
        text["Modules"]["Echo"]
            .as_object_mut()
            .unwrap()
            .remove("Name");
        let (error, file) = load_error(&text.to_string());
        assert_eq!(error.file, file);
        assert_eq!(error.json_path, "/Modules/Echo");
        assert_eq!(error.problem, r#""Name" is a required property"#);
    }

    #[test]
    fn wrong_type_names_the_json_path() {
        let (error, file) = load_error(&manifest(
            "Echo",
            json!({"LaunchSettings": {"Parallelism": "two"}}),
        ));
        assert_eq!(error.file, file);
        assert_eq!(error.json_path, "/Modules/Echo/LaunchSettings/Parallelism");
        assert_eq!(error.problem, r#""two" is not of types "null", "integer""#);
        assert_eq!(
            error.to_string(),
            format!(
                r#"{}: /Modules/Echo/LaunchSettings/Parallelism: "two" is not of types "null", "integer""#,
                file.display()
            )
        );
    }

    #[test]
    fn route_maps_are_required_and_not_empty() {
        let (error, _) = load_error(&manifest("Echo", json!({"RouteMaps": []})));
        assert_eq!(error.json_path, "/Modules/Echo/RouteMaps");
        assert_eq!(error.problem, "[] has less than 1 item");

        let mut text: Value = serde_json::from_str(&manifest("Echo", json!({}))).unwrap();
        text["Modules"]["Echo"]
            .as_object_mut()
            .unwrap()
            .remove("RouteMaps");
        let (error, _) = load_error(&text.to_string());
        assert_eq!(error.json_path, "/Modules/Echo");
        assert_eq!(error.problem, r#""RouteMaps" is a required property"#);
    }

    #[test]
    fn route_map_needs_route_and_command() {
        let (error, _) = load_error(&manifest(
            "Echo",
            json!({"RouteMaps": [{"Route": "x", "Command": null}]}),
        ));
        assert_eq!(error.json_path, "/Modules/Echo/RouteMaps/0/Command");
        assert_eq!(error.problem, r#"null is not of type "string""#);
    }

    #[test]
    fn bad_enum_value_lists_the_accepted_values() {
        let (error, _) = load_error(&manifest(
            "Echo",
            json!({"LaunchSettings": {"RuntimeLocation": "Cloud"}}),
        ));
        assert_eq!(
            error.json_path,
            "/Modules/Echo/LaunchSettings/RuntimeLocation"
        );
        assert_eq!(
            error.problem,
            r#""Cloud" is not a valid RuntimeLocation; expected one of Local, Shared, System (any letter case)"#
        );
    }

    #[test]
    fn empty_modules_object_is_rejected() {
        let (error, _) = load_error(r#"{"Modules": {}}"#);
        assert_eq!(error.json_path, "/Modules");
        assert_eq!(error.problem, "{} has less than 1 property");
    }

    #[test]
    fn launch_settings_need_a_file_and_runtime_or_a_command() {
        let (error, _) = load_error(&manifest(
            "Echo",
            json!({"LaunchSettings": {"FilePath": "", "Runtime": null}}),
        ));
        assert_eq!(error.json_path, "/Modules/Echo/LaunchSettings");
        assert!(
            error
                .problem
                .starts_with(r#"one of "FilePath" or "Command" is required"#),
            "{}",
            error.problem
        );
        assert!(
            error
                .problem
                .contains(r#"one of "Runtime" or "Command" is required"#),
            "{}",
            error.problem
        );
    }

    #[test]
    fn several_problems_are_reported_together() {
        let (error, _) = load_error(&manifest(
            "Echo",
            json!({"Name": 5, "LaunchSettings": {"AutoStart": "yes"}}),
        ));
        assert_eq!(error.json_path, "/Modules/Echo/LaunchSettings/AutoStart");
        assert!(
            error
                .problem
                .contains(r#"; also /Modules/Echo/Name: 5 is not of type "string""#),
            "{}",
            error.problem
        );
    }

    #[test]
    fn type_errors_past_the_schema_still_name_the_path() {
        // The schema allows any integer; serde's i64 does not.
        let (error, _) = load_error(&manifest(
            "Echo",
            json!({"LaunchSettings": {"Parallelism": 18_446_744_073_709_551_615_u64}}),
        ));
        assert_eq!(error.json_path, "/Modules/Echo/LaunchSettings/Parallelism");
        assert!(error.problem.contains("expected i64"), "{}", error.problem);
    }

    // ---- per-platform merging ----

    fn variant_module(root: &Path) -> PathBuf {
        let base = manifest("Echo", json!({"EnvironmentVariables": {"LAYERS": "base"}}));
        let layer = |name: &str| {
            json!({"Modules": {"Echo": {"EnvironmentVariables": {"LAYERS": name}}}}).to_string()
        };
        module_dir(
            root,
            "Echo",
            &[
                (MANIFEST_FILE, base.as_str()),
                ("modulesettings.development.json", &layer("development")),
                ("modulesettings.linux.json", &layer("linux")),
                ("modulesettings.windows.json", &layer("windows")),
                ("modulesettings.linux.arm64.json", &layer("linux.arm64")),
                ("modulesettings.docker.json", &layer("docker")),
            ],
        )
    }

    fn layers(dir: &Path, platform: &Platform) -> (String, Vec<String>) {
        let manifest = load_module_dir(dir, platform).unwrap();
        let names = manifest
            .files
            .iter()
            .map(|file| file.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        (
            manifest.settings.environment_variables["LAYERS"].clone(),
            names,
        )
    }

    #[test]
    fn settings_file_names_follow_codeproject_order() {
        let mut platform = Platform::new("linux", "arm64");
        platform.development = true;
        platform.docker = true;
        assert_eq!(
            settings_file_names(&platform),
            vec![
                "modulesettings.json",
                "modulesettings.development.json",
                "modulesettings.linux.json",
                "modulesettings.linux.development.json",
                "modulesettings.linux.arm64.json",
                "modulesettings.linux.arm64.development.json",
                "modulesettings.docker.json",
                "modulesettings.docker.development.json",
            ]
        );
        assert_eq!(
            settings_file_names(&linux()),
            vec![
                "modulesettings.json",
                "modulesettings.linux.json",
                "modulesettings.linux.x64.json"
            ]
        );
    }

    #[test]
    fn os_variant_applies_on_that_os_only() {
        let temp = tempfile::tempdir().unwrap();
        let dir = variant_module(temp.path());
        assert_eq!(
            layers(&dir, &linux()),
            (
                "linux".into(),
                vec![
                    "modulesettings.json".into(),
                    "modulesettings.linux.json".into()
                ]
            )
        );
        assert_eq!(layers(&dir, &Platform::new("windows", "x64")).0, "windows");
        assert_eq!(layers(&dir, &Platform::new("macos", "arm64")).0, "base");
    }

    #[test]
    fn arch_variant_overrides_the_os_variant() {
        let temp = tempfile::tempdir().unwrap();
        let dir = variant_module(temp.path());
        let (value, files) = layers(&dir, &Platform::new("linux", "arm64"));
        assert_eq!(value, "linux.arm64");
        assert_eq!(files.len(), 3);
    }

    #[test]
    fn development_variants_apply_only_in_development() {
        let temp = tempfile::tempdir().unwrap();
        let dir = variant_module(temp.path());
        let mut mac = Platform::new("macos", "x64");
        assert_eq!(layers(&dir, &mac).0, "base");
        mac.development = true;
        assert_eq!(layers(&dir, &mac).0, "development");
    }

    #[test]
    fn docker_variants_apply_only_in_docker_and_last() {
        let temp = tempfile::tempdir().unwrap();
        let dir = variant_module(temp.path());
        let mut arm = Platform::new("linux", "arm64");
        assert_eq!(layers(&dir, &arm).0, "linux.arm64");
        arm.docker = true;
        assert_eq!(layers(&dir, &arm).0, "docker");
    }

    #[test]
    fn variant_arrays_merge_index_by_index() {
        let temp = tempfile::tempdir().unwrap();
        let base = manifest(
            "Echo",
            json!({"RouteMaps": [
                {"Route": "a/one", "Command": "one"},
                {"Route": "a/two", "Command": "two"}
            ]}),
        );
        let overlay = r#"{"Modules": {"Echo": {"RouteMaps": [{"MeshEnabled": false}]}}}"#;
        let dir = module_dir(
            temp.path(),
            "Echo",
            &[
                (MANIFEST_FILE, base.as_str()),
                ("modulesettings.linux.json", overlay),
            ],
        );
        let routes = load_module_dir(&dir, &linux()).unwrap().settings.route_maps;
        // One and two in the base; the overlay only touched index 0.
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].route, "a/one");
        assert!(!routes[0].mesh_enabled);
        assert!(routes[1].mesh_enabled);
    }

    #[test]
    fn a_broken_variant_file_is_named_in_the_error() {
        let temp = tempfile::tempdir().unwrap();
        let base = manifest("Echo", json!({}));
        let dir = module_dir(
            temp.path(),
            "Echo",
            &[
                (MANIFEST_FILE, base.as_str()),
                ("modulesettings.linux.json", "{ \"Modules\": "),
            ],
        );
        let error = load_module_dir(&dir, &linux()).unwrap_err();
        assert_eq!(error.file, dir.join("modulesettings.linux.json"));
        assert!(
            error.problem.starts_with("invalid JSON: "),
            "{}",
            error.problem
        );
    }

    #[test]
    fn an_error_after_merging_names_the_merged_files() {
        let temp = tempfile::tempdir().unwrap();
        let base = manifest("Echo", json!({}));
        let overlay = r#"{"Modules": {"Echo": {"LaunchSettings": {"Parallelism": "two"}}}}"#;
        let dir = module_dir(
            temp.path(),
            "Echo",
            &[
                (MANIFEST_FILE, base.as_str()),
                ("modulesettings.linux.json", overlay),
            ],
        );
        let error = load_module_dir(&dir, &linux()).unwrap_err();
        assert_eq!(error.file, dir.join(MANIFEST_FILE));
        assert_eq!(error.json_path, "/Modules/Echo/LaunchSettings/Parallelism");
        assert!(
            error
                .problem
                .ends_with("(merged from modulesettings.json, modulesettings.linux.json)"),
            "{}",
            error.problem
        );
    }

    #[test]
    fn only_the_first_module_of_a_file_is_loaded() {
        let temp = tempfile::tempdir().unwrap();
        let mut two: Value = serde_json::from_str(&manifest("Alpha", json!({}))).unwrap();
        // The second module is invalid, and must not block the first.
        two["Modules"]["Beta"] = json!({"Name": 1});
        let dir = module_dir(temp.path(), "Pair", &[(MANIFEST_FILE, &two.to_string())]);
        assert_eq!(load_module_dir(&dir, &linux()).unwrap().id, "Alpha");
    }

    // ---- discovery ----

    #[test]
    fn discover_skips_an_invalid_module_and_loads_its_siblings() {
        let temp = tempfile::tempdir().unwrap();
        module_dir(
            temp.path(),
            "Broken",
            &[(
                MANIFEST_FILE,
                r#"{"Modules": {"Broken": {"Name": "Broken"}}}"#,
            )],
        );
        module_dir(
            temp.path(),
            "Good",
            &[(MANIFEST_FILE, &manifest("Good", json!({})))],
        );
        module_dir(temp.path(), "NotAModule", &[("README.md", "hello")]);

        let discovery = discover(&[temp.path().to_path_buf()], &linux());
        let ids: Vec<&str> = discovery.modules.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["Good"]);
        assert_eq!(discovery.errors.len(), 1);
        assert_eq!(
            discovery.errors[0].file,
            temp.path().join("Broken").join(MANIFEST_FILE)
        );
        assert_eq!(discovery.errors[0].json_path, "/Modules/Broken");
    }

    #[test]
    fn discover_keeps_the_first_of_two_modules_with_one_id() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        module_dir(
            first.path(),
            "Echo",
            &[(MANIFEST_FILE, &manifest("Echo", json!({})))],
        );
        module_dir(
            second.path(),
            "EchoCopy",
            &[(MANIFEST_FILE, &manifest("ECHO", json!({})))],
        );

        let dirs = [first.path().to_path_buf(), second.path().to_path_buf()];
        let discovery = discover(&dirs, &linux());
        assert_eq!(discovery.modules.len(), 1);
        assert_eq!(discovery.modules[0].dir, first.path().join("Echo"));
        let error = &discovery.errors[0];
        assert_eq!(
            error.file,
            second.path().join("EchoCopy").join(MANIFEST_FILE)
        );
        assert_eq!(error.json_path, "");
        assert!(
            error.problem.contains(
                &first
                    .path()
                    .join("Echo")
                    .join(MANIFEST_FILE)
                    .display()
                    .to_string()
            ),
            "{}",
            error.problem
        );
        assert!(
            error.problem.contains("\"ECHO\" is already defined"),
            "{}",
            error.problem
        );
    }

    #[test]
    fn discover_skips_missing_directories_and_reads_fixtures_in_name_order() {
        let dirs = [PathBuf::from("/nonexistent/modhost/modules"), fixtures()];
        let discovery = discover(&dirs, &linux());
        assert_eq!(discovery.errors, vec![]);
        let ids: Vec<&str> = discovery.modules.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["Echo", "LlamaChat", "ModelFetcher"]);
    }
}
