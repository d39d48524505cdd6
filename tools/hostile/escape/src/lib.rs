//! `hostile-escape`: tries to reach what the invocation does not grant and
//! reports what each attempt got. Input ignored.
//!
//! Arguments (all optional and repeatable): `digest`, more digests to try
//! with `read-blob` besides the built-in ungranted one; `read` and `write`,
//! more paths to try to read and to write (a test uses them on a granted
//! file, which must be readable and stay read-only).
//!
//! Output: compact JSON
//! `{"all_refused":BOOL,"attempts":[{"name":"…","target":"…","refused":BOOL,"result":"…"}]}`
//! in this order of attempts:
//!
//! | name | target | refused when |
//! |---|---|---|
//! | `read-blob` | the blake3 digest of `voidbox-escape-probe` (never granted), then each `digest` arg | `read-blob` returns an error |
//! | `read-blob-bad-digest` | `../../etc/passwd` | `read-blob` returns an error |
//! | `fs-read` | `/etc/passwd`, `../etc/passwd`, `../../../../etc/passwd`, `/proc/self/environ`, `.` | `std::fs::read` fails |
//! | `fs-read-dir` | `/`, `.`, `..` | `std::fs::read_dir` fails |
//! | `fs-write` | `/tmp/voidbox-escape`, `escape.txt` | `std::fs::write` fails |
//! | `env` | `vars` | there is no environment variable |
//! | `net-connect` | `127.0.0.1:80` | the connection fails |
//!
//! `result` is `ok: …` (what was obtained, e.g. `ok: 1234 bytes`) or
//! `error: …` (the error as the guest saw it). `all_refused` is true when
//! every attempt was refused: what a correct sandbox must give.

use serde::Serialize;
use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

/// One attempt and what it got.
#[derive(Debug, Serialize)]
pub struct Attempt {
    pub name: &'static str,
    pub target: String,
    pub refused: bool,
    pub result: String,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub all_refused: bool,
    pub attempts: Vec<Attempt>,
}

fn attempt<T, E: std::fmt::Display>(
    name: &'static str,
    target: &str,
    got: Result<T, E>,
    describe: impl FnOnce(T) -> String,
) -> Attempt {
    let (refused, result) = match got {
        Ok(value) => (false, format!("ok: {}", describe(value))),
        Err(err) => (true, format!("error: {err}")),
    };
    Attempt {
        name,
        target: target.to_string(),
        refused,
        result,
    }
}

/// The blake3 digest of the bytes `voidbox-escape-probe`: a blob no test
/// grants.
pub const UNGRANTED_DIGEST: &str =
    "blake3:6c07b1cd153d567c8452d7f38393ce91abdeb2c5a476d947b96caa32455c0122";

fn probe(
    extra_digests: Vec<String>,
    extra_reads: Vec<String>,
    extra_writes: Vec<String>,
) -> Report {
    let mut attempts = Vec::new();
    let digests = std::iter::once(UNGRANTED_DIGEST.to_string()).chain(extra_digests);
    for digest in digests {
        let got = voidbox_guest::read_blob(&digest);
        attempts.push(attempt("read-blob", &digest, got, |b| {
            format!("{} bytes", b.len())
        }));
    }
    let bad = "../../etc/passwd";
    attempts.push(attempt(
        "read-blob-bad-digest",
        bad,
        voidbox_guest::read_blob(bad),
        |b| format!("{} bytes", b.len()),
    ));
    for path in [
        "/etc/passwd",
        "../etc/passwd",
        "../../../../etc/passwd",
        "/proc/self/environ",
        ".",
    ] {
        attempts.push(attempt("fs-read", path, std::fs::read(path), |b| {
            format!("{} bytes", b.len())
        }));
    }
    for path in &extra_reads {
        attempts.push(attempt("fs-read", path, std::fs::read(path), |b| {
            format!("{} bytes", b.len())
        }));
    }
    for path in ["/", ".", ".."] {
        let got = std::fs::read_dir(path);
        attempts.push(attempt("fs-read-dir", path, got, |entries| {
            format!("{} entries", entries.count())
        }));
    }
    for path in ["/tmp/voidbox-escape", "escape.txt"] {
        let got = std::fs::write(path, b"escaped");
        attempts.push(attempt("fs-write", path, got, |()| "written".to_string()));
    }
    for path in &extra_writes {
        let got = std::fs::write(path, b"escaped");
        attempts.push(attempt("fs-write", path, got, |()| "written".to_string()));
    }
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let env: Result<Vec<String>, &str> = if vars.is_empty() {
        Err("no environment")
    } else {
        Ok(vars)
    };
    attempts.push(attempt("env", "vars", env, |names| names.join(",")));
    let connect = std::net::TcpStream::connect("127.0.0.1:80");
    attempts.push(attempt("net-connect", "127.0.0.1:80", connect, |_| {
        "connected".to_string()
    }));
    Report {
        all_refused: attempts.iter().all(|a| a.refused),
        attempts,
    }
}

const OUTPUT_SCHEMA: &str = r#"{"type":"object","properties":{"all_refused":{"type":"boolean"},"attempts":{"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},"target":{"type":"string"},"refused":{"type":"boolean"},"result":{"type":"string"}},"required":["name","target","refused","result"]}}},"required":["all_refused","attempts"]}"#;

struct Escape;

impl Tool for Escape {
    type Input = Vec<u8>;
    type Output = Json<Report>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().output_schema(OUTPUT_SCHEMA)
    }

    fn invoke(_input: Vec<u8>, args: &Args) -> Result<Json<Report>, ToolError> {
        args.reject_unknown(&["digest", "read", "write"])?;
        let all = |key| args.get_all(key).map(str::to_string).collect();
        Ok(Json(probe(all("digest"), all("read"), all("write"))))
    }
}

voidbox_guest::export_tool!(Escape);

#[cfg(test)]
mod tests {
    #[test]
    fn the_ungranted_digest_is_what_the_docs_say() {
        let expected = format!("blake3:{}", blake3::hash(b"voidbox-escape-probe").to_hex());
        assert_eq!(super::UNGRANTED_DIGEST, expected);
    }
}
