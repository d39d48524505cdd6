//! `csv2json`: turns CSV with a header row into a JSON array of objects.
//!
//! Input: UTF-8 CSV (RFC 4180 quoting) whose first record names the columns.
//! Output: compact JSON, an array with one object per record, keys in column
//! order, every value a string: `[{"name":"a","n":"1"}]`. Arguments:
//! `delimiter` (one ASCII character, or `tab`; default `,`). A record with a
//! different number of fields than the header, a duplicate or empty column
//! name, or text that is not UTF-8 is the tool error `bad-input` naming the
//! line.

use serde_json::{Map, Value};
use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

/// Parses the `delimiter` argument.
pub fn delimiter(arg: Option<&str>) -> Result<u8, ToolError> {
    match arg {
        None => Ok(b','),
        Some("tab" | "\\t" | "\t") => Ok(b'\t'),
        Some(text) if text.len() == 1 && text.is_ascii() => Ok(text.as_bytes()[0]),
        Some(text) => Err(ToolError::bad_arg(
            "delimiter",
            format!("`{text}` is not one ASCII character; use e.g. `;` or `tab`"),
        )),
    }
}

/// Converts CSV to the JSON array of objects.
pub fn convert(input: &[u8], delimiter: u8) -> Result<Value, ToolError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(input);
    let bad = |err: csv::Error| ToolError::bad_input(format!("the input is not valid CSV: {err}"));
    let headers: Vec<String> = reader
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_string)
        .collect();
    for (i, name) in headers.iter().enumerate() {
        if name.is_empty() {
            return Err(ToolError::bad_input(format!(
                "column {} of the header row has no name; every column needs one",
                i + 1
            )));
        }
        if headers[..i].contains(name) {
            return Err(ToolError::bad_input(format!(
                "the header row names column `{name}` twice; column names must be unique"
            )));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(bad)?;
        let object: Map<String, Value> = headers
            .iter()
            .zip(record.iter())
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(Value::Object(object));
    }
    Ok(Value::Array(rows))
}

const OUTPUT_SCHEMA: &str =
    r#"{"type":"array","items":{"type":"object","additionalProperties":{"type":"string"}}}"#;

struct Csv2Json;

impl Tool for Csv2Json {
    type Input = Vec<u8>;
    type Output = voidbox_guest::Json<Value>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().output_schema(OUTPUT_SCHEMA)
    }

    fn invoke(input: Vec<u8>, args: &Args) -> Result<Self::Output, ToolError> {
        args.reject_unknown(&["delimiter"])?;
        let delimiter = delimiter(args.get("delimiter"))?;
        convert(&input, delimiter).map(voidbox_guest::Json)
    }
}

voidbox_guest::export_tool!(Csv2Json);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, delimiter: u8, expected: &str) {
        assert_eq!(
            convert(input.as_bytes(), delimiter).unwrap().to_string(),
            expected
        );
    }

    #[test]
    fn converts_with_header_order_and_quoting() {
        check(
            "name,n\na,1\nb,2\n",
            b',',
            r#"[{"name":"a","n":"1"},{"name":"b","n":"2"}]"#,
        );
        check(
            "z;a\n\"x;y\";\"say \"\"hi\"\"\"\n",
            b';',
            r#"[{"z":"x;y","a":"say \"hi\""}]"#,
        );
        check("only,header\n", b',', "[]");
        check("", b',', "[]");
    }

    #[test]
    fn ragged_rows_and_bad_headers_are_bad_input() {
        let ragged = convert(b"a,b\n1,2,3\n", b',').unwrap_err();
        assert_eq!(ragged.code(), "bad-input");
        assert!(ragged.message().contains("line: 2"), "{}", ragged.message());
        assert_eq!(
            convert(b"a,a\n1,2\n", b',').unwrap_err().code(),
            "bad-input"
        );
        assert_eq!(convert(b"a,\n1,2\n", b',').unwrap_err().code(), "bad-input");
    }

    #[test]
    fn delimiter_argument() {
        assert_eq!(delimiter(None).unwrap(), b',');
        assert_eq!(delimiter(Some(";")).unwrap(), b';');
        assert_eq!(delimiter(Some("tab")).unwrap(), b'\t');
        assert_eq!(delimiter(Some(";;")).unwrap_err().code(), "bad-arg");
    }
}
