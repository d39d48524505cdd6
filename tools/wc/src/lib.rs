//! `wc`: counts the lines, words, characters and bytes of the input.
//!
//! Input: any bytes. Output: JSON `{"lines":L,"words":W,"chars":C,"bytes":B}`
//! where `lines` counts `\n` bytes (as `wc -l`), `words` counts maximal runs
//! of non-whitespace characters, `chars` counts Unicode scalar values and
//! `bytes` counts bytes. Bytes that are not valid UTF-8 count as one
//! character each run of invalid bytes (they decode as U+FFFD). No arguments.

use serde::Serialize;
use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

/// The counts of one input.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub words: u64,
    pub chars: u64,
    pub bytes: u64,
}

/// Counts `input` in one pass over its (lossily decoded) text.
pub fn count(input: &[u8]) -> Counts {
    // Valid UTF-8 is borrowed, not copied.
    let text = String::from_utf8_lossy(input);
    let mut counts = Counts {
        lines: 0,
        words: 0,
        chars: 0,
        bytes: input.len() as u64,
    };
    let mut in_word = false;
    for c in text.chars() {
        counts.chars += 1;
        if c == '\n' {
            counts.lines += 1;
        }
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            in_word = true;
            counts.words += 1;
        }
    }
    counts
}

const OUTPUT_SCHEMA: &str = r#"{"type":"object","properties":{"lines":{"type":"integer","minimum":0},"words":{"type":"integer","minimum":0},"chars":{"type":"integer","minimum":0},"bytes":{"type":"integer","minimum":0}},"required":["lines","words","chars","bytes"],"additionalProperties":false}"#;

struct Wc;

impl Tool for Wc {
    type Input = Vec<u8>;
    type Output = Json<Counts>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!()
            .output_schema(OUTPUT_SCHEMA)
            .contract("fuel <= 400 * input_bytes + 2_000_000")
    }

    fn invoke(input: Vec<u8>, args: &Args) -> Result<Json<Counts>, ToolError> {
        args.reject_unknown(&[])?;
        Ok(Json(count(&input)))
    }
}

voidbox_guest::export_tool!(Wc);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], lines: u64, words: u64, chars: u64) {
        let bytes = input.len() as u64;
        assert_eq!(
            count(input),
            Counts {
                lines,
                words,
                chars,
                bytes
            },
            "input {input:?}"
        );
    }

    #[test]
    fn counts_like_wc() {
        check(b"", 0, 0, 0);
        check(b"hello world\n", 1, 2, 12);
        check(b"  a\tb\n\nc", 2, 3, 8);
        check("h\u{e9}llo w\u{f6}rld\n".as_bytes(), 1, 2, 12);
        check(b"no newline at end", 0, 4, 17);
    }

    #[test]
    fn invalid_utf8_counts_as_replacement_characters() {
        // 0xff is one invalid sequence: one character, a word on its own.
        check(b"a \xff b\n", 1, 3, 6);
    }

    #[test]
    fn output_is_the_documented_json() {
        let out = serde_json::to_string(&count(b"one two\n")).unwrap();
        assert_eq!(out, r#"{"lines":1,"words":2,"chars":8,"bytes":8}"#);
    }
}
