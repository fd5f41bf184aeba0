//! Layering of `modulesettings*.json` files with .NET configuration rules.
//!
//! CodeProject.AI Server reads the variant files through .NET's
//! configuration system, which flattens every file into `Key:Sub:0:Leaf`
//! paths and lets later files set paths again. Seen from JSON that means:
//! objects merge by key (keys compare case-insensitively), arrays merge
//! index by index, and nothing is ever deleted
//! (docs/protocol.md §3.5).

use serde_json::Value;

/// Overlays `overlay` onto `base` in place.
///
/// - object + object: each overlay key is merged into the base key that
///   matches it ignoring ASCII case (the base spelling is kept), or added;
/// - array + array: element `i` of the overlay is merged into element `i` of
///   the base, extra overlay elements are appended, extra base elements are
///   kept, so `[a, b, c]` + `[x]` = `[x, b, c]`;
/// - `null` over an object or array leaves it as is, since a .NET
///   configuration value cannot remove the keys below it;
/// - anything else: the overlay value replaces the base value.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                let existing = base
                    .keys()
                    .find(|existing| existing.eq_ignore_ascii_case(&key))
                    .cloned();
                match existing.and_then(|existing| base.get_mut(&existing)) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(overlay)) => {
            for (index, value) in overlay.into_iter().enumerate() {
                match base.get_mut(index) {
                    Some(slot) => merge(slot, value),
                    None => base.push(value),
                }
            }
        }
        (Value::Object(_) | Value::Array(_), Value::Null) => {}
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(mut base: Value, overlay: Value) -> Value {
        merge(&mut base, overlay);
        base
    }

    #[test]
    fn objects_merge_by_key_keeping_unmentioned_keys() {
        let result = merged(
            json!({"LaunchSettings": {"Runtime": "python3.11", "Parallelism": 1}, "Name": "Echo"}),
            json!({"LaunchSettings": {"Runtime": "python3.10"}}),
        );
        assert_eq!(
            result,
            json!({"LaunchSettings": {"Runtime": "python3.10", "Parallelism": 1}, "Name": "Echo"})
        );
    }

    #[test]
    fn arrays_merge_index_by_index() {
        assert_eq!(
            merged(json!(["a", "b", "c"]), json!(["x"])),
            json!(["x", "b", "c"])
        );
        assert_eq!(merged(json!(["a"]), json!(["x", "y"])), json!(["x", "y"]));
    }

    #[test]
    fn objects_inside_arrays_merge_by_key() {
        let result = merged(
            json!({"RouteMaps": [{"Route": "text/echo", "Command": "echo"}]}),
            json!({"RouteMaps": [{"MeshEnabled": false}]}),
        );
        assert_eq!(
            result,
            json!({"RouteMaps": [{"Route": "text/echo", "Command": "echo", "MeshEnabled": false}]})
        );
    }

    #[test]
    fn null_never_deletes_objects_or_arrays_but_clears_scalars() {
        let result = merged(
            json!({"GpuOptions": {"InstallGPU": true}, "Platforms": ["all"], "Queue": "q"}),
            json!({"GpuOptions": null, "Platforms": null, "Queue": null}),
        );
        assert_eq!(
            result,
            json!({"GpuOptions": {"InstallGPU": true}, "Platforms": ["all"], "Queue": null})
        );
    }

    #[test]
    fn keys_match_ignoring_case_and_keep_the_base_spelling() {
        let result = merged(
            json!({"LaunchSettings": {"FilePath": "a.py"}}),
            json!({"launchsettings": {"filepath": "b.py"}}),
        );
        assert_eq!(result, json!({"LaunchSettings": {"FilePath": "b.py"}}));
    }

    #[test]
    fn differing_kinds_are_replaced_by_the_overlay() {
        assert_eq!(
            merged(json!({"A": 1}), json!({"A": {"B": 2}})),
            json!({"A": {"B": 2}})
        );
        assert_eq!(
            merged(json!({"A": [1]}), json!({"A": "x"})),
            json!({"A": "x"})
        );
    }
}
