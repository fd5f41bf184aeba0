//! The typed form of one module's entry in `modulesettings.json`
//! (CodeProject.AI Server 2.9, docs/protocol.md §3).
//!
//! Field names are the manifest's PascalCase ones. Every optional field may
//! be absent or `null`; both mean "use the default", as with the .NET
//! configuration binder the format was designed for.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::camel::camel_case_keys;
use crate::enums::{LogVerbosity, ParamType, RuntimeLocation};
use crate::macros::Macros;
use crate::platform::Platform;

/// A module that [`crate::discover`] or [`crate::load_module_dir`] found and
/// validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleManifest {
    /// The module id: the key under `Modules` in `modulesettings.json`.
    pub id: String,
    /// The module's directory, absolute. Modules are launched with it as
    /// their working directory.
    pub dir: std::path::PathBuf,
    /// The files merged into [`ModuleManifest::settings`], base file first
    /// (see [`crate::settings_file_names`]).
    pub files: Vec<std::path::PathBuf>,
    /// The merged, validated settings. Values are as written: macros are
    /// expanded only when the module is launched (see
    /// [`ModuleManifest::expanded_environment`]).
    pub settings: ModuleSettings,
}

impl ModuleManifest {
    /// `EnvironmentVariables` with macros expanded for this module
    /// (an `@` prefix passes a value through unexpanded, see
    /// [`Macros::expand`]). Keys are as written; the server upper-cases them
    /// when building the child's environment.
    pub fn expanded_environment(&self, macros: &Macros) -> BTreeMap<String, String> {
        self.settings
            .environment_variables
            .iter()
            .map(|(key, value)| (key.clone(), macros.expand(value, &self.dir)))
            .collect()
    }

    /// `LaunchSettings.Command` with macros expanded for this module, if set.
    pub fn expanded_command(&self, macros: &Macros) -> Option<String> {
        let command = self.settings.launch_settings.command.as_deref()?;
        Some(macros.expand(command, &self.dir))
    }
}

/// One module's settings: the value of `Modules.<ModuleId>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModuleSettings {
    /// Display name (required, non-empty).
    pub name: String,
    /// Module version, e.g. `"1.7.1"`; `""` when absent.
    #[serde(default, deserialize_with = "or_default")]
    pub version: String,
    /// Descriptive fields shown by the dashboard and explorer.
    #[serde(default, deserialize_with = "or_default")]
    pub publishing_info: PublishingInfo,
    /// How to start the module's process (required).
    pub launch_settings: LaunchSettings,
    /// Extra environment for the child process, values unexpanded. JSON
    /// numbers and booleans are turned into text the way .NET configuration
    /// does (`1.5` → `"1.5"`, `true` → `"True"`); `null` entries are dropped.
    #[serde(default, deserialize_with = "environment")]
    pub environment_variables: BTreeMap<String, String>,
    /// GPU use.
    #[serde(default, deserialize_with = "or_default")]
    pub gpu_options: GpuOptions,
    /// Platforms, releases and downloadable models.
    #[serde(default, deserialize_with = "or_default")]
    pub install_options: InstallOptions,
    /// The HTTP routes the module serves (at least one).
    pub route_maps: Vec<RouteMap>,
    /// `UIElements` (`Menus`, and `ExplorerUI` once the server fills it in),
    /// kept as raw JSON; `{}` when absent.
    #[serde(
        default = "empty_object",
        deserialize_with = "object_or_empty",
        rename = "UIElements"
    )]
    pub ui_elements: Value,
    /// Every other field of the module entry (e.g. `ModelRequirements`),
    /// kept as written. Filled by [`ModuleSettings::from_value`]; plain
    /// `Deserialize` leaves it empty, because serde's `flatten` would hide
    /// the JSON path of type errors in the other fields.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

/// The keys of a module entry that have typed fields in [`ModuleSettings`];
/// all others go to [`ModuleSettings::extra`].
pub(crate) const TYPED_KEYS: &[&str] = &[
    "Name",
    "Version",
    "PublishingInfo",
    "LaunchSettings",
    "EnvironmentVariables",
    "GpuOptions",
    "InstallOptions",
    "RouteMaps",
    "UIElements",
];

impl ModuleSettings {
    /// Reads a module entry (the value of `Modules.<ModuleId>`), keeping
    /// unknown fields in [`ModuleSettings::extra`] and forcing
    /// `GpuOptions.EnableGPU` off when `InstallGPU` is off. Does not run the
    /// JSON Schema; [`crate::load_module_dir`] does both.
    ///
    /// # Errors
    /// The serde error, with the path to the offending value inside `value`.
    pub fn from_value(
        value: &Value,
    ) -> Result<ModuleSettings, serde_path_to_error::Error<serde_json::Error>> {
        let mut settings: ModuleSettings = serde_path_to_error::deserialize(value)?;
        if let Value::Object(fields) = value {
            settings.extra = fields
                .iter()
                .filter(|(key, _)| !TYPED_KEYS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
        }
        if !settings.gpu_options.install_gpu {
            settings.gpu_options.enable_gpu = false;
        }
        Ok(settings)
    }

    /// The name of the module's command queue: `LaunchSettings.Queue`
    /// lowercased, or `"<id lowercased>_queue"` when it is unset or empty
    /// (docs/protocol.md §1.1).
    pub fn queue_name(&self, id: &str) -> String {
        match self.launch_settings.queue.as_deref().map(str::trim) {
            Some(queue) if !queue.is_empty() => queue.to_lowercase(),
            _ => format!("{}_queue", id.to_lowercase()),
        }
    }

    /// Whether `InstallOptions.Platforms` allows `platform`: some entry is
    /// `"all"` or names the platform (see [`Platform::matches_name`]), and
    /// no `"!name"` entry names it. An empty list allows every platform.
    pub fn is_platform_supported(&self, platform: &Platform) -> bool {
        let platforms = &self.install_options.platforms;
        if platforms.is_empty() {
            return true;
        }
        let mut allowed = false;
        for entry in platforms {
            let entry = entry.trim();
            if let Some(excluded) = entry.strip_prefix('!') {
                if platform.matches_name(excluded) {
                    return false;
                }
            } else if entry.eq_ignore_ascii_case("all") || platform.matches_name(entry) {
                allowed = true;
            }
        }
        allowed
    }

    /// These settings as the camelCase JSON CodeProject.AI Server emits in
    /// `/v1/module/list/running` (docs/protocol.md §2.4):
    /// every key, including those in [`ModuleSettings::extra`], renamed with
    /// .NET's camelCase rules (`UIElements` → `uiElements`), except the
    /// names of environment variables and keys inside a parameter's
    /// `defaultValue`, which are user data.
    pub fn to_camel_case_json(&self) -> Value {
        // Serialising to a `Value` cannot fail: every map key is a string
        // and every value came from JSON.
        let pascal = serde_json::to_value(self).unwrap_or(Value::Null);
        camel_case_keys(pascal)
    }
}

/// `PublishingInfo`: descriptive text; every field is `""` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PublishingInfo {
    /// One-paragraph description.
    #[serde(deserialize_with = "or_default")]
    pub description: String,
    /// URL of an icon.
    #[serde(deserialize_with = "or_default", rename = "IconURL")]
    pub icon_url: String,
    /// Explorer tab the module's UI goes in, e.g. `"Generative AI"`.
    #[serde(deserialize_with = "or_default")]
    pub category: String,
    /// Technology summary, e.g. `"Python, Llama"`.
    #[serde(deserialize_with = "or_default")]
    pub stack: String,
    /// License name, e.g. `"MIT"`.
    #[serde(deserialize_with = "or_default")]
    pub license: String,
    /// URL of the license text.
    #[serde(deserialize_with = "or_default")]
    pub license_url: String,
    /// Module author.
    #[serde(deserialize_with = "or_default")]
    pub author: String,
    /// Project homepage URL.
    #[serde(deserialize_with = "or_default")]
    pub homepage: String,
    /// The upstream project the module wraps.
    #[serde(deserialize_with = "or_default")]
    pub based_on: String,
    /// URL of the upstream project.
    #[serde(deserialize_with = "or_default")]
    pub based_on_url: String,
}

/// `LaunchSettings`: how the server starts the module
/// (docs/protocol.md §1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LaunchSettings {
    /// Start the module when the server starts (default `true`).
    #[serde(default = "yes", deserialize_with = "yes_if_null")]
    pub auto_start: bool,
    /// The script or executable, relative to the module directory.
    #[serde(default)]
    pub file_path: Option<String>,
    /// `pythonX.Y`, `execute`, `dotnet`, …
    #[serde(default)]
    pub runtime: Option<String>,
    /// Where a Python runtime lives (default `Local`).
    #[serde(default, deserialize_with = "or_default")]
    pub runtime_location: RuntimeLocation,
    /// A full command line (macros allowed) that overrides
    /// `Runtime`/`FilePath`.
    #[serde(default)]
    pub command: Option<String>,
    /// Seconds to wait after starting the module before starting the next
    /// one (default 1; CodeProject.AI Server's own default is 3).
    #[serde(default = "pause_secs", deserialize_with = "pause_secs_if_null")]
    pub post_start_pause_secs: f64,
    /// Queue name; `None` means `<id>_queue` (see [`ModuleSettings::queue_name`]).
    #[serde(default)]
    pub queue: Option<String>,
    /// Number of concurrent polling loops in the module; 0 or less means
    /// half the CPUs (see [`LaunchSettings::effective_parallelism`]).
    #[serde(default, deserialize_with = "or_default")]
    pub parallelism: i64,
    /// Memory the module needs, in MiB, if stated.
    #[serde(default)]
    pub required_mb: Option<u64>,
    /// Logging level passed to the module (default `Info`).
    #[serde(default, deserialize_with = "or_default")]
    pub log_verbosity: LogVerbosity,
}

impl Default for LaunchSettings {
    fn default() -> Self {
        LaunchSettings {
            auto_start: true,
            file_path: None,
            runtime: None,
            runtime_location: RuntimeLocation::default(),
            command: None,
            post_start_pause_secs: pause_secs(),
            queue: None,
            parallelism: 0,
            required_mb: None,
            log_verbosity: LogVerbosity::default(),
        }
    }
}

impl LaunchSettings {
    /// `Parallelism` resolved as the Python SDK does: values ≤ 0 mean half
    /// the available CPUs, never less than 1.
    pub fn effective_parallelism(&self) -> usize {
        if self.parallelism > 0 {
            return usize::try_from(self.parallelism).unwrap_or(usize::MAX);
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus / 2).max(1)
    }
}

/// `GpuOptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuOptions {
    /// Whether the installer sets up GPU support (default `false`).
    #[serde(rename = "InstallGPU", deserialize_with = "or_default")]
    pub install_gpu: bool,
    /// Whether the module should use the GPU (default `true`); forced to
    /// `false` when `install_gpu` is `false`.
    #[serde(rename = "EnableGPU", deserialize_with = "yes_if_null")]
    pub enable_gpu: bool,
    /// Which accelerator to use; `None` = the module's default.
    #[serde(rename = "AcceleratorDeviceName")]
    pub accelerator_device_name: Option<String>,
    /// `"enable"`, `"disable"` or `"force"` in CodeProject's manifests.
    #[serde(rename = "HalfPrecision")]
    pub half_precision: Option<String>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            install_gpu: false,
            enable_gpu: true,
            accelerator_device_name: None,
            half_precision: None,
        }
    }
}

/// `InstallOptions`. Optional in a manifest (modhost is more lenient than
/// CodeProject.AI Server here); absent means every platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InstallOptions {
    /// Platform names, `"all"`, or `"!name"` to exclude (default `["all"]`);
    /// see [`ModuleSettings::is_platform_supported`].
    #[serde(deserialize_with = "platforms_if_null")]
    pub platforms: Vec<String>,
    /// Release history, with the server versions each release works with.
    #[serde(deserialize_with = "or_default")]
    pub module_releases: Vec<ModuleRelease>,
    /// Models the dashboard offers for download, kept as raw JSON
    /// (`{ModelId, Name, Description, Filename, Folder, FileSizeKb, PreInstall}`).
    #[serde(deserialize_with = "or_default")]
    pub downloadable_models: Vec<Value>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            platforms: platforms(),
            module_releases: Vec::new(),
            downloadable_models: Vec::new(),
        }
    }
}

/// One entry of `InstallOptions.ModuleReleases`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ModuleRelease {
    /// The module version this entry describes.
    #[serde(deserialize_with = "or_default")]
    pub module_version: String,
    /// `[min, max]` server versions; `""` means open-ended.
    #[serde(deserialize_with = "version_range")]
    pub server_version_range: Vec<String>,
    /// `YYYY-MM-DD`.
    #[serde(deserialize_with = "or_default")]
    pub release_date: String,
    /// Free text.
    #[serde(deserialize_with = "or_default")]
    pub release_notes: String,
    /// E.g. `"Minor"`, `"Major"`, `"Critical"`; `""` when absent.
    #[serde(deserialize_with = "or_default")]
    pub importance: String,
}

/// One entry of `RouteMaps`: an HTTP route and the command it queues
/// (docs/protocol.md §2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteMap {
    /// Display name.
    #[serde(default, deserialize_with = "or_default")]
    pub name: String,
    /// Path below `/v1/`, e.g. `"text/chat"` (required).
    pub route: String,
    /// HTTP method (default `"POST"`).
    #[serde(default = "method", deserialize_with = "method_if_null")]
    pub method: String,
    /// The `payload.command` sent to the module (required).
    pub command: String,
    /// Whether mesh peers may serve this route (default `true`).
    #[serde(default = "yes", deserialize_with = "yes_if_null")]
    pub mesh_enabled: bool,
    /// Free text.
    #[serde(default, deserialize_with = "or_default")]
    pub description: String,
    /// modhost extension `Implements`: the generation API this route
    /// implements, for the OpenAI- and Ollama-compatible APIs
    /// (docs/protocol.md §4.7); `None` for other routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implements: Option<GenerationApi>,
    /// Request parameters, for documentation.
    #[serde(default, deserialize_with = "or_default")]
    pub inputs: Vec<RouteParam>,
    /// Response fields, for documentation.
    #[serde(default, deserialize_with = "or_default")]
    pub outputs: Vec<RouteParam>,
}

/// A generation API a route implements (`RouteMap::implements`); the wire
/// names are `chat`, `completion`, `embedding` and `tokenize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationApi {
    /// A conversation (`messages`) in, a reply out.
    Chat,
    /// A prompt continued as it is, without a chat template.
    Completion,
    /// Texts in, one vector per text out.
    Embedding,
    /// A text in, the byte offsets where the model's tokens of it start out
    /// (`offsets`); skills' chunking counts tokens with it.
    Tokenize,
}

/// One input or output of a [`RouteMap`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteParam {
    /// Parameter name.
    #[serde(default, deserialize_with = "or_default")]
    pub name: String,
    /// `Type` (default `Text`).
    #[serde(default, deserialize_with = "or_default", rename = "Type")]
    pub param_type: ParamType,
    /// Free text.
    #[serde(default, deserialize_with = "or_default")]
    pub description: String,
    /// `DefaultValue`, any JSON. Also read from `Default`, which LlamaChat
    /// writes (CodeProject.AI Server itself ignores that spelling).
    #[serde(default, alias = "Default")]
    pub default_value: Option<Value>,
    /// Lower bound of a numeric parameter.
    #[serde(default)]
    pub min_value: Option<f64>,
    /// Upper bound of a numeric parameter.
    #[serde(default)]
    pub max_value: Option<f64>,
    /// Set by the server for parameters it adds itself.
    #[serde(default, deserialize_with = "or_default")]
    pub system: bool,
}

// ---- serde helpers: `null` means "not set" ----

/// Reads `null` as `T::default()`.
fn or_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Defines a default-value function and a deserializer that reads `null`
/// as that default, for fields whose default is not `T::default()`.
macro_rules! null_means {
    ($($default:ident / $if_null:ident: $ty:ty = $value:expr;)+) => {$(
        fn $default() -> $ty {
            $value
        }
        fn $if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
            Ok(Option::<$ty>::deserialize(deserializer)?.unwrap_or_else($default))
        }
    )+};
}

null_means! {
    yes / yes_if_null: bool = true;
    pause_secs / pause_secs_if_null: f64 = 1.0;
    method / method_if_null: String = "POST".to_owned();
    platforms / platforms_if_null: Vec<String> = vec!["all".to_owned()];
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `UIElements`: `null` reads as `{}`.
fn object_or_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => empty_object(),
        other => other,
    })
}

/// `ServerVersionRange`: `null` entries read as `""` (open-ended).
fn version_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let range = Option::<Vec<Option<String>>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(range.into_iter().map(Option::unwrap_or_default).collect())
}

/// `EnvironmentVariables`: values turned into text as .NET configuration
/// does; `null` values dropped.
fn environment<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, Value>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .filter_map(|(key, value)| {
            let text = match value {
                Value::Null => return None,
                Value::String(text) => text,
                Value::Bool(true) => "True".to_owned(),
                Value::Bool(false) => "False".to_owned(),
                other => other.to_string(),
            };
            Some((key, text))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "Name": "Echo",
            "LaunchSettings": {"FilePath": "echo.py", "Runtime": "python3.11"},
            "RouteMaps": [{"Route": "text/echo", "Command": "echo"}]
        })
    }

    fn with_platforms(platforms: &[&str]) -> ModuleSettings {
        let mut settings = ModuleSettings::from_value(&minimal()).unwrap();
        settings.install_options.platforms = platforms.iter().map(|p| p.to_string()).collect();
        settings
    }

    #[test]
    fn absent_fields_take_codeproject_defaults() {
        let settings = ModuleSettings::from_value(&minimal()).unwrap();
        let launch = &settings.launch_settings;
        assert!(launch.auto_start);
        assert_eq!(launch.post_start_pause_secs, 1.0);
        assert_eq!(launch.runtime_location, RuntimeLocation::Local);
        assert_eq!(launch.log_verbosity, LogVerbosity::Info);
        assert_eq!(settings.install_options.platforms, vec!["all"]);
        assert_eq!(settings.route_maps[0].method, "POST");
        assert!(settings.route_maps[0].mesh_enabled);
        assert_eq!(settings.ui_elements, json!({}));
        assert!(
            !settings.gpu_options.enable_gpu,
            "EnableGPU is forced off without InstallGPU"
        );
    }

    #[test]
    fn null_fields_read_as_their_defaults() {
        let mut value = minimal();
        value["PublishingInfo"] = json!({"IconURL": null, "Category": "Demo"});
        value["GpuOptions"] = json!(null);
        value["UIElements"] = json!(null);
        value["LaunchSettings"]["AutoStart"] = json!(null);
        value["LaunchSettings"]["Queue"] = json!(null);
        value["RouteMaps"][0]["Method"] = json!(null);
        let settings = ModuleSettings::from_value(&value).unwrap();
        assert_eq!(settings.publishing_info.icon_url, "");
        assert_eq!(settings.publishing_info.category, "Demo");
        assert!(settings.launch_settings.auto_start);
        assert_eq!(settings.launch_settings.queue, None);
        assert_eq!(settings.route_maps[0].method, "POST");
        assert_eq!(settings.ui_elements, json!({}));
    }

    #[test]
    fn enable_gpu_is_kept_only_when_install_gpu_is_set() {
        let mut value = minimal();
        value["GpuOptions"] = json!({"InstallGPU": true, "EnableGPU": true});
        assert!(
            ModuleSettings::from_value(&value)
                .unwrap()
                .gpu_options
                .enable_gpu
        );
        value["GpuOptions"] = json!({"InstallGPU": false, "EnableGPU": true});
        assert!(
            !ModuleSettings::from_value(&value)
                .unwrap()
                .gpu_options
                .enable_gpu
        );
    }

    #[test]
    fn environment_values_are_stringified_like_dotnet() {
        let mut value = minimal();
        value["EnvironmentVariables"] =
            json!({"TEXT": "a", "INT": 3, "FLOAT": 1.5, "ON": true, "OFF": false, "GONE": null});
        let env = ModuleSettings::from_value(&value)
            .unwrap()
            .environment_variables;
        let expected: BTreeMap<String, String> = [
            ("FLOAT", "1.5"),
            ("INT", "3"),
            ("OFF", "False"),
            ("ON", "True"),
            ("TEXT", "a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn unknown_fields_are_kept_in_extra() {
        let mut value = minimal();
        value["ModelRequirements"] = json!([{"Task": "Text Generation"}]);
        let settings = ModuleSettings::from_value(&value).unwrap();
        assert_eq!(settings.extra.len(), 1);
        assert_eq!(
            settings.extra["ModelRequirements"],
            json!([{"Task": "Text Generation"}])
        );
    }

    #[test]
    fn typed_keys_are_exactly_the_serialized_field_names() {
        let serialized = serde_json::to_value(ModuleSettings::default()).unwrap();
        let mut keys: Vec<&str> = serialized
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut typed = TYPED_KEYS.to_vec();
        keys.sort_unstable();
        typed.sort_unstable();
        assert_eq!(keys, typed);
    }

    #[test]
    fn serialized_settings_read_back_unchanged() {
        let mut value = minimal();
        value["ModelRequirements"] = json!([{"Task": "x"}]);
        value["GpuOptions"] = json!({"InstallGPU": true, "HalfPrecision": "enable"});
        let settings = ModuleSettings::from_value(&value).unwrap();
        let again = ModuleSettings::from_value(&serde_json::to_value(&settings).unwrap()).unwrap();
        assert_eq!(again, settings);
    }

    #[test]
    fn type_errors_carry_the_path_inside_the_module() {
        let mut value = minimal();
        value["LaunchSettings"]["RequiredMb"] = json!(-5);
        let error = ModuleSettings::from_value(&value).unwrap_err();
        assert_eq!(error.path().to_string(), "LaunchSettings.RequiredMb");
    }

    #[test]
    fn queue_name_is_lowercased_queue_or_derived_from_the_id() {
        let mut settings = ModuleSettings::from_value(&minimal()).unwrap();
        assert_eq!(settings.queue_name("LlamaChat"), "llamachat_queue");
        settings.launch_settings.queue = Some(" ".into());
        assert_eq!(settings.queue_name("LlamaChat"), "llamachat_queue");
        settings.launch_settings.queue = Some("ObjectDetection_Queue".into());
        assert_eq!(settings.queue_name("LlamaChat"), "objectdetection_queue");
    }

    #[test]
    fn platform_support_honours_all_names_and_exclusions() {
        let linux = Platform::new("linux", "x64");
        let linux_arm = Platform::new("linux", "arm64");
        let windows_arm = Platform::new("windows", "arm64");

        let all_but = with_platforms(&["all", "!windows-arm64", "!raspberrypi"]);
        assert!(all_but.is_platform_supported(&linux));
        assert!(!all_but.is_platform_supported(&windows_arm));

        let listed = with_platforms(&["linux-arm64", "macos"]);
        assert!(listed.is_platform_supported(&linux_arm));
        assert!(!listed.is_platform_supported(&linux));

        let os_wide = with_platforms(&["all", "!linux"]);
        assert!(!os_wide.is_platform_supported(&linux_arm));

        assert!(with_platforms(&[]).is_platform_supported(&linux));
        assert!(!with_platforms(&["windows"]).is_platform_supported(&linux));
    }

    #[test]
    fn effective_parallelism_resolves_zero_to_half_the_cpus() {
        let mut launch = LaunchSettings {
            parallelism: 3,
            ..LaunchSettings::default()
        };
        assert_eq!(launch.effective_parallelism(), 3);
        launch.parallelism = 0;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(launch.effective_parallelism(), (cpus / 2).max(1));
    }

    #[test]
    fn camel_case_json_matches_what_the_explorer_reads() {
        let mut value = minimal();
        value["PublishingInfo"] = json!({"Category": "Demo"});
        value["UIElements"] = json!({"Menus": [{"Label": "Size"}]});
        value["EnvironmentVariables"] = json!({"Model_Dir": "./models"});
        value["ModelRequirements"] = json!([{"Task": "x"}]);
        let json = ModuleSettings::from_value(&value)
            .unwrap()
            .to_camel_case_json();
        assert_eq!(json["publishingInfo"]["category"], "Demo");
        assert_eq!(json["uiElements"]["menus"][0]["label"], "Size");
        assert_eq!(json["environmentVariables"]["Model_Dir"], "./models");
        assert_eq!(json["modelRequirements"][0]["task"], "x");
        assert_eq!(json["routeMaps"][0]["route"], "text/echo");
        assert_eq!(json["launchSettings"]["filePath"], "echo.py");
        assert_eq!(json["gpuOptions"]["installGPU"], false);
        assert!(json.get("Name").is_none());
    }

    #[test]
    fn expanded_environment_and_command_use_the_module_dir() {
        let mut value = minimal();
        value["EnvironmentVariables"] =
            json!({"MODELS": "%CURRENT_MODULE_PATH%/models", "REPO": "@org/%repo%"});
        value["LaunchSettings"]["Command"] = json!("%CURRENT_MODULE_PATH%/run --os %OS%");
        let manifest = ModuleManifest {
            id: "Echo".into(),
            dir: "/srv/modules/Echo".into(),
            files: vec![],
            settings: ModuleSettings::from_value(&value).unwrap(),
        };
        let macros = Macros::new("/srv", Platform::new("linux", "x64"));
        let env = manifest.expanded_environment(&macros);
        assert_eq!(env["MODELS"], "/srv/modules/Echo/models");
        assert_eq!(env["REPO"], "org/%repo%");
        assert_eq!(
            manifest.expanded_command(&macros).as_deref(),
            Some("/srv/modules/Echo/run --os linux")
        );
    }
}
