//! The JSON Schema that merged manifests are checked against, shipped in
//! `schema/modulesettings.schema.json` and compiled once.
//!
//! Besides standard draft-07 keywords the schema uses two of its own:
//! - `"x-enum": "<EnumName>"` accepts the strings that enum's `parse`
//!   accepts (any letter case, plus aliases), so the schema and serde agree;
//! - `"x-requiredAnyOf": [["A", "B"], …]` needs, for each group, at least one
//!   of the named properties present, non-null and non-empty. It words the
//!   error better than `anyOf`, which would only say "not valid under any
//!   of the schemas" and print the whole object.

use std::sync::LazyLock;

use jsonschema::paths::Location;
use jsonschema::{Keyword, ValidationError, Validator};
use serde_json::{Map, Value};

use crate::enums::check_enum_value;

/// The schema's text (JSON, draft-07), e.g. for the server to publish.
pub const SCHEMA: &str = include_str!("../schema/modulesettings.schema.json");

/// The longest problem text kept from one schema error; longer ones (which
/// quote large JSON values) are cut.
const MAX_PROBLEM_CHARS: usize = 300;

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(SCHEMA).expect("the embedded schema is valid JSON (tested)");
    jsonschema::options()
        .with_keyword("x-enum", enum_keyword)
        .with_keyword("x-requiredAnyOf", required_any_of_keyword)
        .build(&schema)
        .expect("the embedded schema compiles (tested)")
});

/// One schema violation: a JSON Pointer into the document and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) json_path: String,
    pub(crate) problem: String,
}

/// Checks a whole `modulesettings.json` document, returning every
/// violation, ordered by JSON path so that the report is stable and the
/// outermost problem comes first.
pub(crate) fn validate(document: &Value) -> Vec<Violation> {
    let mut violations: Vec<Violation> = VALIDATOR
        .iter_errors(document)
        .map(|error| Violation {
            json_path: error.instance_path().to_string(),
            problem: shorten(error.to_string()),
        })
        .collect();
    violations.sort_by(|a, b| (&a.json_path, &a.problem).cmp(&(&b.json_path, &b.problem)));
    violations.dedup();
    violations
}

fn shorten(mut problem: String) -> String {
    if let Some((cut, _)) = problem.char_indices().nth(MAX_PROBLEM_CHARS) {
        problem.truncate(cut);
        problem.push('…');
    }
    problem
}

/// `x-enum`: the value, when a string, must parse as the named enum.
struct EnumKeyword {
    type_name: String,
}

// The signature is jsonschema's keyword-factory type; its error type is not ours to box.
#[allow(clippy::result_large_err)]
fn enum_keyword<'a>(
    _parent: &'a Map<String, Value>,
    value: &'a Value,
    _schema_path: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let known = value
        .as_str()
        .filter(|name| check_enum_value(name, "").is_some());
    match known {
        Some(type_name) => Ok(Box::new(EnumKeyword {
            type_name: type_name.to_owned(),
        })),
        None => Err(ValidationError::schema(
            "x-enum must name RuntimeLocation, LogVerbosity or ParamType",
        )),
    }
}

impl<'i> Keyword<'i> for EnumKeyword {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        // Non-strings are left to the `type` keyword.
        let Some(text) = instance.as_str() else {
            return Ok(());
        };
        match check_enum_value(&self.type_name, text) {
            Some(Err(unknown)) => Err(ValidationError::custom(unknown.to_string())),
            _ => Ok(()),
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        instance
            .as_str()
            .is_none_or(|text| matches!(check_enum_value(&self.type_name, text), Some(Ok(()))))
    }
}

/// `x-requiredAnyOf`: each group of property names needs one that is set.
struct RequiredAnyOf {
    groups: Vec<Vec<String>>,
}

// The signature is jsonschema's keyword-factory type; its error type is not ours to box.
#[allow(clippy::result_large_err)]
fn required_any_of_keyword<'a>(
    _parent: &'a Map<String, Value>,
    value: &'a Value,
    _schema_path: Location,
) -> Result<Box<dyn for<'i> Keyword<'i>>, ValidationError<'a>> {
    let groups: Option<Vec<Vec<String>>> = value.as_array().and_then(|groups| {
        groups
            .iter()
            .map(|group| {
                group
                    .as_array()?
                    .iter()
                    .map(|name| name.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
            })
            .collect()
    });
    match groups {
        Some(groups) => Ok(Box::new(RequiredAnyOf { groups })),
        None => Err(ValidationError::schema(
            "x-requiredAnyOf must be an array of arrays of property names",
        )),
    }
}

impl RequiredAnyOf {
    /// The groups with no property set (none for a non-object).
    fn unmet_groups(&self, instance: &Value) -> Vec<&[String]> {
        let Some(object) = instance.as_object() else {
            return Vec::new();
        };
        let is_set = |name: &String| match object.get(name) {
            None | Some(Value::Null) => false,
            Some(Value::String(text)) => !text.trim().is_empty(),
            Some(_) => true,
        };
        self.groups
            .iter()
            .filter(|group| !group.iter().any(is_set))
            .map(Vec::as_slice)
            .collect()
    }
}

impl<'i> Keyword<'i> for RequiredAnyOf {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        let unmet = self.unmet_groups(instance);
        if unmet.is_empty() {
            return Ok(());
        }
        // Every unmet group in one message, so one log line says it all.
        let problems: Vec<String> = unmet
            .iter()
            .map(|group| {
                let names: Vec<String> = group.iter().map(|name| format!("{name:?}")).collect();
                format!("one of {} is required", names.join(" or "))
            })
            .collect();
        Err(ValidationError::custom(problems.join("; ")))
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        self.unmet_groups(instance).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document(module: Value) -> Value {
        json!({"Modules": {"Echo": module}})
    }

    fn valid_module() -> Value {
        json!({
            "Name": "Echo",
            "LaunchSettings": {"FilePath": "echo.py", "Runtime": "python3.11"},
            "RouteMaps": [{"Route": "text/echo", "Command": "echo"}]
        })
    }

    #[test]
    fn embedded_schema_compiles_and_accepts_a_minimal_module() {
        assert_eq!(validate(&document(valid_module())), vec![]);
    }

    #[test]
    fn enum_keyword_accepts_any_case_and_names_the_choices() {
        let mut module = valid_module();
        module["LaunchSettings"]["RuntimeLocation"] = json!("shared");
        module["LaunchSettings"]["LogVerbosity"] = json!("LOUD");
        module["RouteMaps"][0]["Outputs"] = json!([{"Name": "predictions", "Type": "Object[]"}]);
        assert_eq!(validate(&document(module.clone())), vec![]);

        module["RouteMaps"][0]["Inputs"] = json!([{"Name": "image", "Type": "Picture"}]);
        let violations = validate(&document(module));
        assert_eq!(
            violations,
            vec![Violation {
                json_path: "/Modules/Echo/RouteMaps/0/Inputs/0/Type".into(),
                problem: r#""Picture" is not a valid ParamType; expected one of Text, Integer, Float, Boolean, File, Object (any letter case)"#.into(),
            }]
        );
    }

    #[test]
    fn required_any_of_counts_null_and_empty_as_missing() {
        let mut module = valid_module();
        module["LaunchSettings"] = json!({"FilePath": "echo.py", "Runtime": "", "Command": null});
        let violations = validate(&document(module.clone()));
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].json_path, "/Modules/Echo/LaunchSettings");
        assert_eq!(
            violations[0].problem,
            r#"one of "Runtime" or "Command" is required"#
        );

        module["LaunchSettings"] = json!({"Command": "%CURRENT_MODULE_PATH%/echo"});
        assert_eq!(validate(&document(module)), vec![]);
    }

    #[test]
    fn long_problems_are_cut() {
        let long = shorten("x".repeat(1000));
        assert_eq!(long.chars().count(), MAX_PROBLEM_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(shorten("short".into()), "short");
    }
}
