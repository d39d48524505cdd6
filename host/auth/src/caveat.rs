//! Typed first-party caveats and their canonical text form `name op value`.
//!
//! | caveat | meaning |
//! |---|---|
//! | `tool = blake3:<hex>` | only the tool with this digest |
//! | `tool-name = <name>` | only the tool registered under this name |
//! | `expires < <unix seconds>` | valid while `now < t` (input may be RFC 3339) |
//! | `fuel <= N` | fuel budget at most N |
//! | `memory <= BYTES` | memory budget at most BYTES |
//! | `input-bytes <= N` | input at most N bytes |
//! | `output-bytes <= N` | output budget at most N bytes |
//! | `uses <= N` | at most N invocations with this token id (N = 1: single use) |
//! | `grant = blob:<digest>[,blob:<digest>...]` | the tool may read only these blobs |
//!
//! Numbers accept `_` separators and, for byte sizes, the suffixes `KiB`, `MiB`
//! and `GiB`; the canonical form is plain decimal. Every caveat must hold, so
//! several caveats on one limit give the tightest, and several `grant` caveats
//! *intersect* (a blob must be listed in every one): adding a caveat can only
//! narrow what a token allows. A caveat this crate does not know denies.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::time;

/// Longest caveat text accepted; anything longer is not a caveat we wrote.
pub const CAVEAT_BYTES_MAX: usize = 16 * 1024;
/// Longest tool name accepted in `tool-name = ...`.
pub const TOOL_NAME_BYTES_MAX: usize = 128;

/// One first-party caveat, already parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caveat {
    /// `tool = blake3:<hex>`
    Tool(Digest),
    /// `tool-name = <name>`
    ToolName(String),
    /// `expires < <unix seconds>`: valid while `now_unix < t`.
    Expires(u64),
    /// `fuel <= N`
    Fuel(u64),
    /// `memory <= BYTES`
    Memory(u64),
    /// `input-bytes <= N`
    InputBytes(u64),
    /// `output-bytes <= N`
    OutputBytes(u64),
    /// `uses <= N`
    Uses(u64),
    /// `grant = blob:<d1>,blob:<d2>`: the set of blobs the tool may read
    /// (never empty).
    Grant(BTreeSet<Digest>),
}

/// Why a caveat's text was rejected. Each variant keeps the offending text so
/// a denial can name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaveatError {
    #[error("unknown caveat `{caveat}` (known: tool, tool-name, expires, fuel, memory, input-bytes, output-bytes, uses, grant); unknown caveats deny")]
    Unknown { caveat: String },
    #[error("caveat `{caveat}` is not of the form `name op value`")]
    Shape { caveat: String },
    #[error("caveat `{caveat}`: `{name}` takes the operator `{expected}`")]
    Operator {
        caveat: String,
        name: &'static str,
        expected: &'static str,
    },
    #[error("caveat `{caveat}`: {reason}")]
    Value { caveat: String, reason: String },
    #[error("a caveat of {len} bytes is longer than the {CAVEAT_BYTES_MAX} bytes allowed")]
    TooLong { len: usize },
    #[error("a caveat is not UTF-8 text")]
    NotUtf8,
}

impl CaveatError {
    /// The caveat text this error is about, as far as it is printable.
    pub fn caveat(&self) -> Option<&str> {
        match self {
            CaveatError::Unknown { caveat }
            | CaveatError::Shape { caveat }
            | CaveatError::Operator { caveat, .. }
            | CaveatError::Value { caveat, .. } => Some(caveat),
            CaveatError::TooLong { .. } | CaveatError::NotUtf8 => None,
        }
    }
}

fn parse_count(text: &str, allow_size_suffix: bool) -> Option<u64> {
    let (number, multiplier) = if allow_size_suffix {
        if let Some(n) = text.strip_suffix("KiB") {
            (n, 1u64 << 10)
        } else if let Some(n) = text.strip_suffix("MiB") {
            (n, 1 << 20)
        } else if let Some(n) = text.strip_suffix("GiB") {
            (n, 1 << 30)
        } else {
            (text, 1)
        }
    } else {
        (text, 1)
    };
    let bytes = number.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_digit()
        || !bytes.iter().all(|b| b.is_ascii_digit() || *b == b'_')
    {
        return None;
    }
    let mut value: u64 = 0;
    for b in bytes.iter().filter(|b| **b != b'_') {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    value.checked_mul(multiplier)
}

fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOOL_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b'@'))
}

impl Caveat {
    /// Parses caveat bytes as found in a token.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Caveat, CaveatError> {
        if bytes.len() > CAVEAT_BYTES_MAX {
            return Err(CaveatError::TooLong { len: bytes.len() });
        }
        std::str::from_utf8(bytes)
            .map_err(|_| CaveatError::NotUtf8)?
            .parse()
    }

    /// The caveat's name, as written before the operator.
    pub fn name(&self) -> &'static str {
        match self {
            Caveat::Tool(_) => "tool",
            Caveat::ToolName(_) => "tool-name",
            Caveat::Expires(_) => "expires",
            Caveat::Fuel(_) => "fuel",
            Caveat::Memory(_) => "memory",
            Caveat::InputBytes(_) => "input-bytes",
            Caveat::OutputBytes(_) => "output-bytes",
            Caveat::Uses(_) => "uses",
            Caveat::Grant(_) => "grant",
        }
    }

    /// What the caveat means, in plain words (for `token inspect`).
    pub fn describe(&self) -> String {
        match self {
            Caveat::Tool(d) => format!("only the tool with digest {d}"),
            Caveat::ToolName(n) => format!("only the tool named `{n}`"),
            Caveat::Expires(t) => {
                format!("valid until {} (Unix time {t})", time::format_rfc3339(*t))
            }
            Caveat::Fuel(n) => format!("at most {n} units of fuel per invocation"),
            Caveat::Memory(n) => format!("at most {n} bytes of memory per invocation"),
            Caveat::InputBytes(n) => format!("input of at most {n} bytes"),
            Caveat::OutputBytes(n) => format!("output of at most {n} bytes"),
            Caveat::Uses(1) => "single use: one invocation in total".to_owned(),
            Caveat::Uses(n) => format!("at most {n} invocations in total"),
            Caveat::Grant(set) => {
                let list: Vec<String> = set.iter().map(Digest::to_string).collect();
                format!("the tool may read only the blob(s) {}", list.join(", "))
            }
        }
    }
}

impl FromStr for Caveat {
    type Err = CaveatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > CAVEAT_BYTES_MAX {
            return Err(CaveatError::TooLong { len: s.len() });
        }
        let mut parts = s.split_ascii_whitespace();
        let (Some(name), Some(op), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            // A known name with the wrong shape is a malformed caveat; anything
            // else is simply unknown.
            let first = s.split_ascii_whitespace().next().unwrap_or("");
            return Err(if KNOWN.iter().any(|(n, _)| *n == first) {
                CaveatError::Shape {
                    caveat: s.to_owned(),
                }
            } else {
                CaveatError::Unknown {
                    caveat: s.to_owned(),
                }
            });
        };
        let Some(&(name, expected)) = KNOWN.iter().find(|(n, _)| *n == name) else {
            return Err(CaveatError::Unknown {
                caveat: s.to_owned(),
            });
        };
        if op != expected {
            return Err(CaveatError::Operator {
                caveat: s.to_owned(),
                name,
                expected,
            });
        }
        let bad = |reason: String| CaveatError::Value {
            caveat: s.to_owned(),
            reason,
        };
        let count = |sizes: bool| {
            parse_count(value, sizes).ok_or_else(|| {
                bad(format!(
                    "`{value}` is not a whole number{} that fits in 64 bits",
                    if sizes {
                        " of bytes (suffixes KiB, MiB, GiB allowed)"
                    } else {
                        ""
                    }
                ))
            })
        };
        Ok(match name {
            "tool" => Caveat::Tool(value.parse().map_err(|e| bad(format!("{e}")))?),
            "tool-name" => {
                if !valid_tool_name(value) {
                    return Err(bad(format!(
                        "`{value}` is not a tool name (1 to {TOOL_NAME_BYTES_MAX} of A-Z a-z 0-9 . _ - / @)"
                    )));
                }
                Caveat::ToolName(value.to_owned())
            }
            "expires" => {
                let t = if value.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
                    parse_count(value, false)
                } else {
                    time::parse_rfc3339(value)
                };
                Caveat::Expires(t.ok_or_else(|| {
                    bad(format!(
                        "`{value}` is neither Unix seconds nor an RFC 3339 time like 2026-12-31T23:59:59Z"
                    ))
                })?)
            }
            "fuel" => Caveat::Fuel(count(false)?),
            "memory" => Caveat::Memory(count(true)?),
            "input-bytes" => Caveat::InputBytes(count(true)?),
            "output-bytes" => Caveat::OutputBytes(count(true)?),
            "uses" => Caveat::Uses(count(false)?),
            "grant" => {
                let mut set = BTreeSet::new();
                for item in value.split(',') {
                    let digest = item.strip_prefix("blob:").ok_or_else(|| {
                        bad(format!(
                            "`{item}` should be written blob:blake3:<64 hex digits>"
                        ))
                    })?;
                    set.insert(digest.parse().map_err(|e| bad(format!("{e}")))?);
                }
                Caveat::Grant(set)
            }
            _ => unreachable!("every name in KNOWN is handled above"),
        })
    }
}

/// Every caveat name with its only operator.
const KNOWN: &[(&str, &str)] = &[
    ("tool", "="),
    ("tool-name", "="),
    ("expires", "<"),
    ("fuel", "<="),
    ("memory", "<="),
    ("input-bytes", "<="),
    ("output-bytes", "<="),
    ("uses", "<="),
    ("grant", "="),
];

impl fmt::Display for Caveat {
    /// The canonical form: single spaces, plain decimal numbers, Unix seconds,
    /// lowercase hex, grant digests sorted and without duplicates.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caveat::Tool(d) => write!(f, "tool = {d}"),
            Caveat::ToolName(n) => write!(f, "tool-name = {n}"),
            Caveat::Expires(t) => write!(f, "expires < {t}"),
            Caveat::Fuel(n) => write!(f, "fuel <= {n}"),
            Caveat::Memory(n) => write!(f, "memory <= {n}"),
            Caveat::InputBytes(n) => write!(f, "input-bytes <= {n}"),
            Caveat::OutputBytes(n) => write!(f, "output-bytes <= {n}"),
            Caveat::Uses(n) => write!(f, "uses <= {n}"),
            Caveat::Grant(set) => {
                f.write_str("grant = ")?;
                for (i, d) in set.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "blob:{d}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, canonical: &str) {
        let c: Caveat = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(c.to_string(), canonical);
        assert_eq!(
            canonical.parse::<Caveat>().unwrap(),
            c,
            "canonical form re-parses"
        );
    }

    #[test]
    fn every_kind_parses_to_its_canonical_form() {
        let d = format!("blake3:{}", "0f".repeat(32));
        let e = format!("blake3:{}", "a0".repeat(32));
        check(&format!("tool = {d}"), &format!("tool = {d}"));
        check("tool-name  =  wc", "tool-name = wc");
        check("expires < 2026-11-21T12:00:00Z", "expires < 1795262400");
        check("expires < 1_795_262_400", "expires < 1795262400");
        check("fuel <= 100_000_000", "fuel <= 100000000");
        check("memory <= 64MiB", "memory <= 67108864");
        check("input-bytes <= 1KiB", "input-bytes <= 1024");
        check("output-bytes <= 65536", "output-bytes <= 65536");
        check("uses <= 1", "uses <= 1");
        check(
            &format!("grant = blob:{e},blob:{d},blob:{e}"),
            &format!("grant = blob:{d},blob:{e}"),
        );
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(
            "colour = blue".parse::<Caveat>(),
            Err(CaveatError::Unknown { .. })
        ));
        assert!(matches!(
            "".parse::<Caveat>(),
            Err(CaveatError::Unknown { .. })
        ));
        assert!(matches!(
            "fuel <=".parse::<Caveat>(),
            Err(CaveatError::Shape { .. })
        ));
        assert!(matches!(
            "fuel < 10".parse::<Caveat>(),
            Err(CaveatError::Operator { expected: "<=", .. })
        ));
        for bad in [
            "fuel <= -1",
            "fuel <= 1MiB",
            "fuel <= 99999999999999999999",
            "memory <= 20000000000GiB",
            "expires < tomorrow",
            "tool = blake3:00",
            "tool-name = a;b",
            "grant = blake3:00",
            "uses <= _1",
        ] {
            assert!(
                matches!(bad.parse::<Caveat>(), Err(CaveatError::Value { .. })),
                "{bad}"
            );
        }
        let long = "x".repeat(CAVEAT_BYTES_MAX + 1);
        assert!(matches!(
            long.parse::<Caveat>(),
            Err(CaveatError::TooLong { .. })
        ));
        assert_eq!(
            Caveat::parse_bytes(&[0xff, 0xfe]),
            Err(CaveatError::NotUtf8)
        );
    }

    #[test]
    fn descriptions_are_plain_words() {
        assert_eq!(
            "uses <= 1".parse::<Caveat>().unwrap().describe(),
            "single use: one invocation in total"
        );
        assert_eq!(
            "expires < 1795262400".parse::<Caveat>().unwrap().describe(),
            "valid until 2026-11-21T12:00:00Z (Unix time 1795262400)"
        );
    }
}
