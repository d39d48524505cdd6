//! `grep`: searches the lines of the input for a regular expression.
//!
//! Input: text (bytes that are not UTF-8 are read as U+FFFD). Lines are
//! split on `\n`; the `\n` is not part of a line, a `\r` before it is. A
//! final `\n` does not start an empty last line.
//!
//! Arguments: `pattern` (required; Rust `regex` syntax), `ignore-case`
//! (switch), `invert` (switch: select the lines that do not match), `format`
//! (`json`, the default, or `text`).
//!
//! Output with `format=json`: compact JSON
//! `{"count":N,"matches":[{"line":L,"text":"..."}]}`, `line` counted from 1.
//! With `format=text`: the selected lines, each followed by `\n`.
//! A pattern that does not compile is the tool error `bad-arg`.

use regex::RegexBuilder;
use serde::Serialize;
use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

/// A selected line.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Match {
    pub line: u64,
    pub text: String,
}

/// What a search found.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Found {
    pub count: u64,
    pub matches: Vec<Match>,
}

/// Longest pattern accepted; the regex crate bounds compiled size too, this
/// just keeps the error readable.
const PATTERN_BYTES_MAX: usize = 64 * 1024;

/// Searches `text` line by line.
pub fn search(
    text: &str,
    pattern: &str,
    ignore_case: bool,
    invert: bool,
) -> Result<Found, ToolError> {
    if pattern.len() > PATTERN_BYTES_MAX {
        return Err(ToolError::bad_arg(
            "pattern",
            format!("longer than {PATTERN_BYTES_MAX} bytes"),
        ));
    }
    let regex = RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .build()
        .map_err(|err| {
            ToolError::bad_arg("pattern", format!("not a valid regular expression: {err}"))
        })?;
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut matches = Vec::new();
    if !text.is_empty() {
        for (i, line) in body.split('\n').enumerate() {
            if regex.is_match(line) != invert {
                matches.push(Match {
                    line: i as u64 + 1,
                    text: line.to_string(),
                });
            }
        }
    }
    Ok(Found {
        count: matches.len() as u64,
        matches,
    })
}

const OUTPUT_SCHEMA: &str = r#"{"type":"object","properties":{"count":{"type":"integer","minimum":0},"matches":{"type":"array","items":{"type":"object","properties":{"line":{"type":"integer","minimum":1},"text":{"type":"string"}},"required":["line","text"]}}},"required":["count","matches"]}"#;

struct Grep;

impl Tool for Grep {
    type Input = Vec<u8>;
    type Output = Vec<u8>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().output_schema(OUTPUT_SCHEMA)
    }

    fn invoke(input: Vec<u8>, args: &Args) -> Result<Vec<u8>, ToolError> {
        args.reject_unknown(&["pattern", "ignore-case", "invert", "format"])?;
        let pattern = args.require("pattern")?;
        let json = match args.get("format").unwrap_or("json") {
            "json" => true,
            "text" => false,
            other => {
                return Err(ToolError::bad_arg(
                    "format",
                    format!("`{other}` is not json or text"),
                ))
            }
        };
        let text = String::from_utf8_lossy(&input);
        let found = search(
            &text,
            pattern,
            args.flag("ignore-case")?,
            args.flag("invert")?,
        )?;
        voidbox_guest::log::debug!("{} lines selected", found.count);
        if json {
            voidbox_guest::IntoOutput::into_output(voidbox_guest::Json(found))
        } else {
            let mut out = Vec::new();
            for m in found.matches {
                out.extend_from_slice(m.text.as_bytes());
                out.push(b'\n');
            }
            Ok(out)
        }
    }
}

voidbox_guest::export_tool!(Grep);

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(found: &Found) -> Vec<(u64, &str)> {
        found
            .matches
            .iter()
            .map(|m| (m.line, m.text.as_str()))
            .collect()
    }

    #[test]
    fn selects_matching_lines_with_numbers() {
        let text = "apple pie\nbanana\nApple juice\n";
        let found = search(text, "^[Aa]pple", false, false).unwrap();
        assert_eq!(lines(&found), [(1, "apple pie"), (3, "Apple juice")]);
        assert_eq!(found.count, 2);
        let ci = search(text, "APPLE", true, false).unwrap();
        assert_eq!(ci.count, 2);
        let inverted = search(text, "apple", false, true).unwrap();
        assert_eq!(lines(&inverted), [(2, "banana"), (3, "Apple juice")]);
    }

    #[test]
    fn line_splitting_edges() {
        assert_eq!(search("", ".*", false, false).unwrap().count, 0);
        assert_eq!(
            lines(&search("a\n\nb", "^$", false, false).unwrap()),
            [(2, "")]
        );
        assert_eq!(
            lines(&search("x\r\n", "x\r$", false, false).unwrap()),
            [(1, "x\r")]
        );
    }

    #[test]
    fn bad_pattern_is_bad_arg() {
        let err = search("x", "(", false, false).unwrap_err();
        assert_eq!(err.code(), "bad-arg");
        assert!(err.message().contains("pattern"));
    }

    #[test]
    fn json_shape() {
        let found = search("a\nb\n", "b", false, false).unwrap();
        assert_eq!(
            serde_json::to_string(&found).unwrap(),
            r#"{"count":1,"matches":[{"line":2,"text":"b"}]}"#
        );
    }
}
