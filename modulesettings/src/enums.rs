//! The closed vocabularies of a manifest: `RuntimeLocation`, `LogVerbosity`
//! and a route parameter's `Type`.
//!
//! CodeProject.AI Server binds these with .NET's case-insensitive enum
//! parsing, so `"shared"` and `"Shared"` are the same value here too. Each
//! enum also lists a few aliases seen in real manifests (for example
//! `"String"` and `"Object[]"` as parameter types). The same `parse` function
//! backs both serde and the JSON Schema keyword `x-enum` (see `schema.rs`), so
//! the two can never disagree about what is accepted.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// The error of parsing one of this crate's enums from a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {type_name}; expected one of {expected} (any letter case)")]
pub struct UnknownVariant {
    /// The enum's name as the manifest documentation spells it, e.g. `RuntimeLocation`.
    pub type_name: &'static str,
    /// The rejected text.
    pub value: String,
    /// The canonical names, comma-separated.
    pub expected: String,
}

/// Declares a string enum with canonical names (the variant identifiers),
/// extra accepted aliases, case-insensitive parsing and string serde.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident $(= [$($alias:literal),* $(,)?])?
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical spelling, as CodeProject.AI Server writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }

            /// Parses a manifest value, ignoring letter case and accepting
            /// the aliases listed on the variants.
            ///
            /// # Errors
            /// [`UnknownVariant`] naming the accepted canonical values.
            pub fn parse(text: &str) -> Result<$name, UnknownVariant> {
                let text = text.trim();
                $(
                    if text.eq_ignore_ascii_case(stringify!($variant))
                        $($(|| text.eq_ignore_ascii_case($alias))*)?
                    {
                        return Ok($name::$variant);
                    }
                )+
                Err(UnknownVariant {
                    type_name: stringify!($name),
                    value: text.to_owned(),
                    expected: [$(stringify!($variant)),+].join(", "),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                $name::parse(text)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $name::parse(&text).map_err(de::Error::custom)
            }
        }
    };
}

string_enum! {
    /// Where a module's runtime (its Python virtual environment) lives:
    /// `LaunchSettings.RuntimeLocation` (docs/protocol.md §1.1).
    #[derive(Default)]
    pub enum RuntimeLocation {
        /// `<moduleDir>/bin/<os>/pythonXY/venv`: private to the module (the default).
        #[default]
        Local,
        /// `<root>/runtimes/bin/<os>/pythonXY/venv`: shared by modules.
        Shared,
        /// The interpreter on the `PATH`, e.g. `python3.11`.
        System,
    }
}

string_enum! {
    /// How much a module logs: `LaunchSettings.LogVerbosity`, passed to the
    /// child as `CPAI_LOG_VERBOSITY` (docs/protocol.md §1.1).
    #[derive(Default)]
    pub enum LogVerbosity {
        /// Errors and warnings only.
        Quiet,
        /// Normal logging (the default).
        #[default]
        Info,
        /// Everything, for debugging.
        Loud,
    }
}

string_enum! {
    /// The `Type` of a route's input or output parameter
    /// (docs/protocol.md §3.3). Documentation only: the
    /// server forwards every value to the module as a string.
    #[derive(Default)]
    pub enum ParamType {
        /// A string (the default). Real manifests also write `String`.
        #[default]
        Text = ["String", "Str"],
        /// A whole number.
        Integer = ["Int", "Long"],
        /// A number.
        Float = ["Number", "Double", "Decimal"],
        /// `true` or `false`.
        Boolean = ["Bool"],
        /// An uploaded file (multipart form field).
        File,
        /// A JSON value. Real manifests also write array types such as
        /// `Object[]`, which are read as `Object`.
        Object = [
            "Json", "Array", "Object[]", "String[]", "Text[]", "Integer[]", "Float[]",
            "Number[]", "Boolean[]",
        ],
    }
}

/// Parses `text` as the enum named `type_name`; `None` when no enum has
/// that name. Used by the schema keyword `x-enum`.
pub(crate) fn check_enum_value(type_name: &str, text: &str) -> Option<Result<(), UnknownVariant>> {
    let result = match type_name {
        "RuntimeLocation" => RuntimeLocation::parse(text).map(drop),
        "LogVerbosity" => LogVerbosity::parse(text).map(drop),
        "ParamType" => ParamType::parse(text).map(drop),
        _ => return None,
    };
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_ignores_letter_case_and_surrounding_space() {
        assert_eq!(
            RuntimeLocation::parse("shared"),
            Ok(RuntimeLocation::Shared)
        );
        assert_eq!(
            RuntimeLocation::parse(" SYSTEM "),
            Ok(RuntimeLocation::System)
        );
        assert_eq!(LogVerbosity::parse("loud"), Ok(LogVerbosity::Loud));
        assert_eq!(ParamType::parse("boolean"), Ok(ParamType::Boolean));
    }

    #[test]
    fn param_type_accepts_the_aliases_real_manifests_use() {
        assert_eq!(ParamType::parse("String"), Ok(ParamType::Text));
        assert_eq!(ParamType::parse("Object[]"), Ok(ParamType::Object));
        assert_eq!(ParamType::parse("number"), Ok(ParamType::Float));
    }

    #[test]
    fn unknown_value_names_the_type_and_the_canonical_choices() {
        let error = RuntimeLocation::parse("Cloud").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#""Cloud" is not a valid RuntimeLocation; expected one of Local, Shared, System (any letter case)"#
        );
    }

    #[test]
    fn serializes_with_the_canonical_spelling() {
        let json = serde_json::to_value(ParamType::parse("string").unwrap()).unwrap();
        assert_eq!(json, serde_json::json!("Text"));
        let back: LogVerbosity = serde_json::from_value(serde_json::json!("quiet")).unwrap();
        assert_eq!(back, LogVerbosity::Quiet);
    }

    #[test]
    fn check_enum_value_knows_exactly_the_three_enums() {
        assert_eq!(check_enum_value("RuntimeLocation", "local"), Some(Ok(())));
        assert!(matches!(
            check_enum_value("ParamType", "Picture"),
            Some(Err(_))
        ));
        assert_eq!(check_enum_value("Colour", "red"), None);
    }
}
