//! The error a tool reports on purpose.

use std::fmt;

use crate::bindings;

/// An error the tool reports on purpose: the invocation ends with the
/// outcome "tool error", this code and this message (as opposed to a trap,
/// which the host reports by itself).
///
/// Codes are short, stable and machine-readable (`bad-input`, `bad-arg`,
/// `missing-arg`, `not-found`...); messages are sentences for people that
/// say what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    code: String,
    message: String,
}

impl ToolError {
    /// An error with any code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// `bad-input`: the input is not what the tool reads.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new("bad-input", message)
    }

    /// `bad-arg`: the argument `key` has a value the tool cannot use. The
    /// message is prefixed with the argument's name.
    pub fn bad_arg(key: &str, message: impl fmt::Display) -> Self {
        Self::new("bad-arg", format!("argument `{key}`: {message}"))
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The sentence for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ToolError {}

impl From<ToolError> for bindings::ToolError {
    fn from(err: ToolError) -> Self {
        bindings::ToolError {
            code: err.code,
            message: err.message,
        }
    }
}
