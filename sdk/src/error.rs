//! The one error type a module returns to the SDK.

use crate::request::ValueError;

/// An error a module reports for a command, shown to the client.
///
/// The message becomes the `error` field of the reply, which CodeProject.AI
/// Server 2.9 forwards to the HTTP client unchanged (see
/// docs/protocol.md §1.4): write it for the
/// person calling the API, e.g. `"missing value 'prompt'"`, and keep internal
/// details (paths, stack traces) in the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModuleError(pub String);

impl ModuleError {
    /// An error with this client-facing message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<String> for ModuleError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for ModuleError {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

impl From<ValueError> for ModuleError {
    fn from(err: ValueError) -> Self {
        Self(err.to_string())
    }
}

impl From<std::io::Error> for ModuleError {
    fn from(err: std::io::Error) -> Self {
        Self(err.to_string())
    }
}

impl From<serde_json::Error> for ModuleError {
    fn from(err: serde_json::Error) -> Self {
        Self(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_message() {
        assert_eq!(ModuleError::from("boom").message(), "boom");
        assert_eq!(ModuleError::from(String::from("bang")).to_string(), "bang");
        let missing = ValueError::Missing {
            key: "prompt".into(),
        };
        assert_eq!(
            ModuleError::from(missing).message(),
            "missing value 'prompt'"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no model file");
        assert_eq!(ModuleError::from(io).message(), "no model file");
    }
}
