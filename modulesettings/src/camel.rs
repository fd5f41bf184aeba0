//! PascalCase → camelCase for the JSON the server emits.
//!
//! CodeProject.AI Server serialises its module descriptions with
//! System.Text.Json's camelCase policy (docs/protocol.md §2.4,
//! `/v1/module/list/running`), which lowercases a leading run of
//! capitals, not just the first letter: `UIElements` → `uiElements`,
//! `IconURL` → `iconURL`, `GPU` → `gpu`. The explorer page looks up
//! `uiElements.explorerUI`, so the difference matters.

use serde_json::{Map, Value};

/// Object keys whose values are user data, copied without renaming keys
/// inside them (environment-variable names, a parameter's default value).
const VERBATIM_VALUES: &[&str] = &["environmentVariables", "defaultValue"];

/// Converts one key the way System.Text.Json's `JsonNamingPolicy.CamelCase`
/// does: a key that starts with a capital has its leading run of capitals
/// lowercased, except the capital that begins the next word (`UIElements`
/// → `uiElements`).
pub(crate) fn camel_case_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if !chars.first().is_some_and(|first| first.is_uppercase()) {
        return key.to_owned();
    }
    let mut lowered = 0;
    for (index, &current) in chars.iter().enumerate() {
        if index == 1 && !current.is_uppercase() {
            break;
        }
        if index > 0 {
            if let Some(&next) = chars.get(index + 1) {
                if !next.is_uppercase() {
                    // `current` starts the next word and stays a capital,
                    // unless it is a word on its own (followed by a space).
                    if next == ' ' {
                        lowered += 1;
                    }
                    break;
                }
            }
        }
        lowered += 1;
    }
    let mut out: String = chars[..lowered]
        .iter()
        .flat_map(|c| c.to_lowercase())
        .collect();
    out.extend(&chars[lowered..]);
    out
}

/// Renames every object key in `value` with [`camel_case_key`], except
/// inside the values listed in [`VERBATIM_VALUES`].
pub(crate) fn camel_case_keys(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut renamed = Map::with_capacity(object.len());
            for (key, child) in object {
                let key = camel_case_key(&key);
                let child = if VERBATIM_VALUES.contains(&key.as_str()) {
                    child
                } else {
                    camel_case_keys(child)
                };
                renamed.insert(key, child);
            }
            Value::Object(renamed)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_follow_dotnet_camel_case_rules() {
        let cases = [
            ("Name", "name"),
            ("RouteMaps", "routeMaps"),
            ("UIElements", "uiElements"),
            ("ExplorerUI", "explorerUI"),
            ("IconURL", "iconURL"),
            ("InstallGPU", "installGPU"),
            ("GPU", "gpu"),
            ("URLValue", "urlValue"),
            ("name", "name"),
            ("1ABC", "1ABC"),
            ("A B", "a B"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(camel_case_key(input), expected, "converting {input:?}");
        }
    }

    #[test]
    fn nested_keys_are_renamed_but_user_maps_are_not() {
        let value = json!({
            "LaunchSettings": {"FilePath": "a.py"},
            "EnvironmentVariables": {"CPAI_MODULE_X": "1"},
            "RouteMaps": [{"Inputs": [{"Name": "p", "DefaultValue": {"Keep": 1}}]}]
        });
        assert_eq!(
            camel_case_keys(value),
            json!({
                "launchSettings": {"filePath": "a.py"},
                "environmentVariables": {"CPAI_MODULE_X": "1"},
                "routeMaps": [{"inputs": [{"name": "p", "defaultValue": {"Keep": 1}}]}]
            })
        );
    }
}
