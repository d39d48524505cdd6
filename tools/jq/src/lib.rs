//! `jq`: queries JSON with a jq-like path expression.
//!
//! Input: one JSON value. Arguments: `query` (required), `raw` (switch).
//! Output: every result of the query as compact JSON, one per line, each
//! line ending in `\n` (like `jq -c`); with `raw=true`, string results are
//! written without quotes (like `jq -r`). No result gives empty output.
//!
//! The query language is the path subset of jq:
//!
//! - `.` the input; `.name`, `."any key"`, `.["any key"]` an object field
//!   (`null` when absent);
//! - `.[N]` an array element, negative from the end (`null` when out of
//!   range); `.[A:B]` a slice of an array or string (either bound may be
//!   left out or negative);
//! - `.[]` every element of an array or every value of an object;
//! - a `?` after a step drops the errors of that step;
//! - steps chain (`.items[0].name`, `.items[].id`) and `|` pipes results
//!   into a further query; `length` and `keys` are the two built-ins.
//!
//! As in jq, indexing `null` gives `null`, while indexing a value of the
//! wrong type (`.a` on an array) is the tool error `query-failed`. A query
//! that does not parse is `bad-arg`, an input that is not JSON `bad-input`.

use serde_json::Value;
use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    Iterate,
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// A path: steps, each with its `?` flag.
    Path(Vec<(Step, bool)>),
    Length,
    Keys,
}

/// A parsed query: stages joined by `|`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    stages: Vec<Stage>,
}

/// Why a query did not parse or could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn error(&self, what: &str) -> QueryError {
        QueryError(format!(
            "query `{}`: {what} at byte {}",
            self.text, self.pos
        ))
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), QueryError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{c}`")))
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok =
                c == '_' || c.is_ascii_alphabetic() || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        (self.pos > start).then(|| self.text[start..self.pos].to_string())
    }

    /// A JSON string literal, escapes included.
    fn string(&mut self) -> Result<String, QueryError> {
        let start = self.pos;
        self.expect('"')?;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        None => return Err(self.error("unterminated string")),
                        Some(c) => self.pos += c.len_utf8(),
                    }
                }
                Some('"') => {
                    self.pos += 1;
                    break;
                }
                Some(c) => self.pos += c.len_utf8(),
            }
        }
        serde_json::from_str(&self.text[start..self.pos])
            .map_err(|err| self.error(&format!("bad string literal ({err})")))
    }

    fn int(&mut self) -> Result<Option<i64>, QueryError> {
        self.skip_ws();
        let start = self.pos;
        self.eat('-');
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.pos += 1;
        }
        match &self.text[start..self.pos] {
            "" => Ok(None),
            "-" => Err(self.error("expected a number after `-`")),
            digits => digits
                .parse()
                .map(Some)
                .map_err(|_| self.error("index out of range")),
        }
    }

    /// The inside of `[...]`, after the `[`.
    fn bracket(&mut self) -> Result<Step, QueryError> {
        self.skip_ws();
        let step = if self.peek() == Some(']') {
            Step::Iterate
        } else if self.peek() == Some('"') {
            Step::Field(self.string()?)
        } else {
            let first = self.int()?;
            self.skip_ws();
            if self.eat(':') {
                let second = self.int()?;
                Step::Slice(first, second)
            } else {
                match first {
                    Some(i) => Step::Index(i),
                    None => return Err(self.error("expected a number, a string, `:` or `]`")),
                }
            }
        };
        self.skip_ws();
        self.expect(']')?;
        Ok(step)
    }

    fn path(&mut self) -> Result<Vec<(Step, bool)>, QueryError> {
        let mut steps = Vec::new();
        self.expect('.')?;
        // Right after the leading dot: a name, a string or nothing.
        if let Some(name) = self.ident() {
            steps.push((Step::Field(name), self.eat('?')));
        } else if self.peek() == Some('"') {
            let name = self.string()?;
            steps.push((Step::Field(name), self.eat('?')));
        }
        loop {
            if self.eat('[') {
                let step = self.bracket()?;
                steps.push((step, self.eat('?')));
            } else if self.eat('.') {
                if self.eat('[') {
                    let step = self.bracket()?;
                    steps.push((step, self.eat('?')));
                } else if let Some(name) = self.ident() {
                    steps.push((Step::Field(name), self.eat('?')));
                } else if self.peek() == Some('"') {
                    let name = self.string()?;
                    steps.push((Step::Field(name), self.eat('?')));
                } else {
                    return Err(self.error("expected a field name after `.`"));
                }
            } else {
                return Ok(steps);
            }
        }
    }

    fn stage(&mut self) -> Result<Stage, QueryError> {
        self.skip_ws();
        if self.peek() == Some('.') {
            return Ok(Stage::Path(self.path()?));
        }
        match self.ident().as_deref() {
            Some("length") => Ok(Stage::Length),
            Some("keys") => Ok(Stage::Keys),
            Some(other) => Err(self.error(&format!(
                "unknown function `{other}` (this jq knows paths, `length` and `keys`)"
            ))),
            None => Err(self.error("expected a path starting with `.`")),
        }
    }
}

impl Query {
    /// Parses a query.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let mut parser = Parser { text, pos: 0 };
        let mut stages = vec![parser.stage()?];
        loop {
            parser.skip_ws();
            if parser.pos == text.len() {
                return Ok(Query { stages });
            }
            parser.expect('|')?;
            stages.push(parser.stage()?);
        }
    }

    /// Applies the query to `input`, giving every result in order.
    pub fn run(&self, input: Value) -> Result<Vec<Value>, QueryError> {
        let mut values = vec![input];
        for stage in &self.stages {
            let mut next = Vec::new();
            for value in values {
                apply_stage(stage, value, &mut next)?;
            }
            values = next;
        }
        Ok(values)
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn apply_stage(stage: &Stage, value: Value, out: &mut Vec<Value>) -> Result<(), QueryError> {
    match stage {
        Stage::Path(steps) => apply_steps(steps, value, out),
        Stage::Length => {
            let length = match &value {
                Value::Null => Value::from(0),
                Value::Bool(_) => {
                    return Err(QueryError("boolean has no length".to_string()));
                }
                Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => Value::from(i.unsigned_abs()),
                    (None, Some(f)) => Value::from(f.abs()),
                    (None, None) => value.clone(),
                },
                Value::String(s) => Value::from(s.chars().count()),
                Value::Array(a) => Value::from(a.len()),
                Value::Object(o) => Value::from(o.len()),
            };
            out.push(length);
            Ok(())
        }
        Stage::Keys => match value {
            Value::Object(map) => {
                // jq sorts keys by their code points.
                let mut keys: Vec<String> = map.keys().cloned().collect();
                keys.sort();
                out.push(Value::from(keys));
                Ok(())
            }
            Value::Array(items) => {
                out.push(Value::from((0..items.len()).collect::<Vec<_>>()));
                Ok(())
            }
            other => Err(QueryError(format!("{} has no keys", type_name(&other)))),
        },
    }
}

fn apply_steps(
    steps: &[(Step, bool)],
    value: Value,
    out: &mut Vec<Value>,
) -> Result<(), QueryError> {
    let Some(((step, optional), rest)) = steps.split_first() else {
        out.push(value);
        return Ok(());
    };
    let produced = match apply_step(step, value) {
        Ok(produced) => produced,
        Err(_) if *optional => return Ok(()),
        Err(err) => return Err(err),
    };
    for value in produced {
        apply_steps(rest, value, out)?;
    }
    Ok(())
}

/// Resolves a possibly negative index against a length.
fn resolve(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let i = if index < 0 { len + index } else { index };
    (0..len).contains(&i).then_some(i as usize)
}

/// Clamps a possibly negative, possibly absent slice bound to `0..=len`.
fn bound(index: Option<i64>, len: usize, default: usize) -> usize {
    match index {
        None => default,
        Some(i) if i < 0 => len.saturating_sub(i.unsigned_abs() as usize),
        Some(i) => (i as u64).min(len as u64) as usize,
    }
}

fn apply_step(step: &Step, value: Value) -> Result<Vec<Value>, QueryError> {
    match (step, value) {
        (Step::Field(_) | Step::Index(_) | Step::Slice(..), Value::Null) => Ok(vec![Value::Null]),
        (Step::Field(name), Value::Object(mut map)) => {
            Ok(vec![map.remove(name.as_str()).unwrap_or(Value::Null)])
        }
        (Step::Index(i), Value::Array(mut items)) => Ok(vec![match resolve(*i, items.len()) {
            Some(i) => items.swap_remove(i),
            None => Value::Null,
        }]),
        (Step::Slice(a, b), Value::Array(items)) => {
            let (start, end) = (
                bound(*a, items.len(), 0),
                bound(*b, items.len(), items.len()),
            );
            let slice = if start < end {
                items[start..end].to_vec()
            } else {
                Vec::new()
            };
            Ok(vec![Value::Array(slice)])
        }
        (Step::Slice(a, b), Value::String(s)) => {
            let chars: Vec<char> = s.chars().collect();
            let (start, end) = (
                bound(*a, chars.len(), 0),
                bound(*b, chars.len(), chars.len()),
            );
            let slice: String = if start < end {
                chars[start..end].iter().collect()
            } else {
                String::new()
            };
            Ok(vec![Value::String(slice)])
        }
        (Step::Iterate, Value::Array(items)) => Ok(items),
        (Step::Iterate, Value::Object(map)) => Ok(map.into_iter().map(|(_, v)| v).collect()),
        (Step::Field(name), other) => Err(QueryError(format!(
            "cannot index {} with \"{name}\"",
            type_name(&other)
        ))),
        (Step::Index(_), other) => Err(QueryError(format!(
            "cannot index {} with a number",
            type_name(&other)
        ))),
        (Step::Slice(..), other) => Err(QueryError(format!("cannot slice {}", type_name(&other)))),
        (Step::Iterate, other) => Err(QueryError(format!(
            "cannot iterate over {}",
            type_name(&other)
        ))),
    }
}

/// Writes results one per line, compact JSON or (with `raw`) bare strings.
pub fn render(results: &[Value], raw: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for value in results {
        match value {
            Value::String(s) if raw => out.extend_from_slice(s.as_bytes()),
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
        out.push(b'\n');
    }
    out
}

struct Jq;

impl Tool for Jq {
    type Input = Json<Value>;
    type Output = Vec<u8>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().input_schema("{}")
    }

    fn invoke(Json(input): Json<Value>, args: &Args) -> Result<Vec<u8>, ToolError> {
        args.reject_unknown(&["query", "raw"])?;
        let query = Query::parse(args.require("query")?)
            .map_err(|err| ToolError::bad_arg("query", err.0))?;
        let raw = args.flag("raw")?;
        let results = query.run(input).map_err(|err| {
            ToolError::new(
                "query-failed",
                format!("{}; check the query against the input's shape", err.0),
            )
        })?;
        Ok(render(&results, raw))
    }
}

voidbox_guest::export_tool!(Jq);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &str, input: &str, expected: &str) {
        let input: Value = serde_json::from_str(input).unwrap();
        let results = Query::parse(query).unwrap().run(input).unwrap();
        let text = String::from_utf8(render(&results, false)).unwrap();
        assert_eq!(text, expected, "query {query}");
    }

    const DOC: &str = r#"{"items":[{"id":1,"name":"a"},{"id":2,"name":"b"}],"a":{"b":"deep"},"z":0,"k e y":true}"#;

    #[test]
    fn paths() {
        check(".", "[1, 2]", "[1,2]\n");
        check(".items[0].name", DOC, "\"a\"\n");
        check(".a.b", DOC, "\"deep\"\n");
        check(".items[].id", DOC, "1\n2\n");
        check(".[]", "[1,[2],{}]", "1\n[2]\n{}\n");
        check(".[]", r#"{"x":1,"y":2}"#, "1\n2\n");
        check(".items[-1].id", DOC, "2\n");
        check(".items[5]", DOC, "null\n");
        check(".missing.deeper", DOC, "null\n");
        check(r#"."k e y""#, DOC, "true\n");
        check(r#".["k e y"]"#, DOC, "true\n");
        check(".[1:3]", "[0,1,2,3]", "[1,2]\n");
        check(".[-2:]", "[0,1,2,3]", "[2,3]\n");
        check(".[:1]", r#""hello""#, "\"h\"\n");
        check(".items | length", DOC, "2\n");
        check("keys", DOC, "[\"a\",\"items\",\"k e y\",\"z\"]\n");
        check(".items[] | .name", DOC, "\"a\"\n\"b\"\n");
        check(".[] | .a?", r#"[{"a":1},[2]]"#, "1\n");
        check(".[]?", "3", "");
    }

    #[test]
    fn key_order_is_the_input_order() {
        check(".", r#"{"b":1,"a":2}"#, "{\"b\":1,\"a\":2}\n");
    }

    #[test]
    fn raw_strings() {
        let results = Query::parse(".[]")
            .unwrap()
            .run(serde_json::json!(["x", 1]))
            .unwrap();
        assert_eq!(render(&results, true), b"x\n1\n");
    }

    #[test]
    fn wrong_types_fail_like_jq() {
        let run = |q: &str, input: Value| Query::parse(q).unwrap().run(input).unwrap_err().0;
        assert_eq!(
            run(".a", serde_json::json!([1])),
            "cannot index array with \"a\""
        );
        assert_eq!(run(".[]", Value::Null), "cannot iterate over null");
        assert_eq!(
            run(".[0]", serde_json::json!({})),
            "cannot index object with a number"
        );
    }

    #[test]
    fn bad_queries_say_where() {
        for bad in ["", "items", ".a..b", ".[", ".[x]", ".a |", "foo", ".a b"] {
            let err = Query::parse(bad).unwrap_err().0;
            assert!(err.contains("at byte"), "{bad}: {err}");
        }
    }
}
