//! Decoding the input bytes and encoding the output bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ToolError;

/// A value that travels as JSON: as [`crate::Tool::Input`] it is parsed
/// from the input bytes, as [`crate::Tool::Output`] it is written as compact
/// JSON (no trailing newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

/// How a tool's input type is decoded from the invocation's input bytes.
pub trait FromInput: Sized {
    /// Decodes the input, or fails with a tool error (`bad-input`).
    fn from_input(bytes: Vec<u8>) -> Result<Self, ToolError>;
}

/// How a tool's output type is encoded into the invocation's output bytes.
pub trait IntoOutput {
    /// Encodes the output, or fails with a tool error.
    fn into_output(self) -> Result<Vec<u8>, ToolError>;
}

/// The input bytes as they are.
impl FromInput for Vec<u8> {
    fn from_input(bytes: Vec<u8>) -> Result<Self, ToolError> {
        Ok(bytes)
    }
}

/// The input as UTF-8 text; anything else is `bad-input`.
impl FromInput for String {
    fn from_input(bytes: Vec<u8>) -> Result<Self, ToolError> {
        String::from_utf8(bytes).map_err(|err| {
            ToolError::bad_input(format!(
                "the input is not UTF-8 text (invalid byte at offset {}); this tool reads text",
                err.utf8_error().valid_up_to()
            ))
        })
    }
}

/// The input parsed as JSON into `T`; anything else is `bad-input` with
/// serde's line and column.
impl<T: DeserializeOwned> FromInput for Json<T> {
    fn from_input(bytes: Vec<u8>) -> Result<Self, ToolError> {
        serde_json::from_slice(&bytes).map(Json).map_err(|err| {
            ToolError::bad_input(format!("the input is not the JSON this tool reads: {err}"))
        })
    }
}

impl IntoOutput for Vec<u8> {
    fn into_output(self) -> Result<Vec<u8>, ToolError> {
        Ok(self)
    }
}

impl IntoOutput for String {
    fn into_output(self) -> Result<Vec<u8>, ToolError> {
        Ok(self.into_bytes())
    }
}

impl<T: Serialize> IntoOutput for Json<T> {
    fn into_output(self) -> Result<Vec<u8>, ToolError> {
        serde_json::to_vec(&self.0).map_err(|err| {
            ToolError::new(
                "internal",
                format!("the tool could not encode its output as JSON: {err}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Point {
        x: i32,
    }

    #[test]
    fn json_round_trips_and_bad_json_is_bad_input() {
        let Json(p) = Json::<Point>::from_input(br#"{"x": 3}"#.to_vec()).unwrap();
        assert_eq!(p, Point { x: 3 });
        assert_eq!(Json(p).into_output().unwrap(), br#"{"x":3}"#);
        let err = Json::<Point>::from_input(b"{x".to_vec()).unwrap_err();
        assert_eq!(err.code(), "bad-input");
        assert!(err.message().contains("line 1"), "{}", err.message());
    }

    #[test]
    fn text_input_must_be_utf8() {
        assert_eq!(String::from_input(b"hi".to_vec()).unwrap(), "hi");
        let err = String::from_input(vec![b'a', 0xff]).unwrap_err();
        assert_eq!(err.code(), "bad-input");
        assert!(err.message().contains("offset 1"), "{}", err.message());
    }
}
