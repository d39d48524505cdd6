//! What a tool says about itself.

use crate::bindings;

/// What a tool says about itself: returned by [`crate::Tool::describe`],
/// recorded by the host when the tool is added.
///
/// ```
/// use voidbox_guest::ToolInfo;
///
/// let info = ToolInfo::new("wc", "1.0.0", "Counts bytes, words and lines")
///     .output_schema(r#"{"type":"object"}"#)
///     .contract("fuel <= 400 * input_bytes + 2_000_000");
/// assert_eq!(info.name(), "wc");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInfo {
    name: String,
    version: String,
    description: String,
    input_schema: Option<String>,
    output_schema: Option<String>,
    contract: Option<String>,
}

impl ToolInfo {
    /// A short machine name (letters, digits, `-`, `_`), a semantic version
    /// and one line for people.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            input_schema: None,
            output_schema: None,
            contract: None,
        }
    }

    /// The JSON Schema (as text) of a JSON input.
    pub fn input_schema(mut self, schema: impl Into<String>) -> Self {
        self.input_schema = Some(schema.into());
        self
    }

    /// The JSON Schema (as text) of a JSON output.
    pub fn output_schema(mut self, schema: impl Into<String>) -> Self {
        self.output_schema = Some(schema.into());
        self
    }

    /// The resource contract in Voidbox's contract language, e.g.
    /// `fuel <= 400 * input_bytes + 2_000_000`.
    pub fn contract(mut self, contract: impl Into<String>) -> Self {
        self.contract = Some(contract.into());
        self
    }

    /// The tool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tool's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The tool's one-line description.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl From<ToolInfo> for bindings::ToolInfo {
    fn from(info: ToolInfo) -> Self {
        bindings::ToolInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            input_schema: info.input_schema,
            output_schema: info.output_schema,
            contract: info.contract,
        }
    }
}
