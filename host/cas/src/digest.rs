//! [`Digest`]: the blake3 hash that names a blob, written `blake3:<64 lowercase hex>`.

use std::fmt;
use std::str::FromStr;

/// The prefix every written digest starts with. It names the hash function so
/// that a future hash can coexist without ambiguity.
pub const DIGEST_PREFIX: &str = "blake3:";

/// Number of hex digits after the prefix.
pub const DIGEST_HEX_LEN: usize = 64;

/// The blake3 hash of a blob's content; the blob's identity in the store.
///
/// Written (Display, `to_string`, serde) as `blake3:<64 lowercase hex>` and
/// parsed (`FromStr`, serde) from exactly that form.
///
/// ```
/// use voidbox_cas::Digest;
/// let d = Digest::of(b"hello");
/// let text = d.to_string();
/// assert!(text.starts_with("blake3:"));
/// assert_eq!(text.parse::<Digest>().unwrap(), d);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `blake3:` prefix.
    pub fn hex(&self) -> String {
        let mut out = String::with_capacity(DIGEST_HEX_LEN);
        for byte in self.0 {
            out.push(HEX_DIGITS[usize::from(byte >> 4)] as char);
            out.push(HEX_DIGITS[usize::from(byte & 0xf)] as char);
        }
        out
    }

    /// Parses 64 lowercase hex digits without the prefix (as used in file
    /// names). `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let bytes = hex.as_bytes();
        if bytes.len() != DIGEST_HEX_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Digest(out))
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Digest {
        Digest(*hash.as_bytes())
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Only lowercase: one digest has exactly one spelling, so digests can be
/// compared and used as file names as text.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DIGEST_PREFIX)?;
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a text is not a digest. Each message names the text and the form
/// expected, so a user who mistyped or truncated a digest sees what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    /// The text does not start with `blake3:`.
    #[error("`{text}` is not a digest: it must start with `blake3:` followed by 64 lowercase hex digits{hint}")]
    MissingPrefix {
        /// The offending text (shortened if very long).
        text: String,
        /// A suggestion when the text looks like a bare hex digest.
        hint: &'static str,
    },
    /// The part after `blake3:` is not 64 characters long.
    #[error("`{text}` is not a digest: after `blake3:` it has {len} characters, a digest has exactly 64 lowercase hex digits")]
    WrongLength {
        /// The offending text (shortened if very long).
        text: String,
        /// Number of characters after the prefix.
        len: usize,
    },
    /// A character after `blake3:` is not a lowercase hex digit.
    #[error("`{text}` is not a digest: character {} after `blake3:` is {found:?}, a digest has only lowercase hex digits (0-9, a-f){hint}", .position + 1)]
    NotHex {
        /// The offending text (shortened if very long).
        text: String,
        /// Zero-based position of the first bad character after the prefix.
        position: usize,
        /// The first bad character.
        found: char,
        /// A suggestion when the digest is merely uppercase.
        hint: &'static str,
    },
}

/// Keeps error messages readable when someone passes a whole file as a digest.
fn shorten(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 90;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head}…")
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(text: &str) -> Result<Digest, DigestParseError> {
        let Some(hex) = text.strip_prefix(DIGEST_PREFIX) else {
            let looks_bare =
                text.len() == DIGEST_HEX_LEN && text.bytes().all(|c| c.is_ascii_hexdigit());
            return Err(DigestParseError::MissingPrefix {
                text: shorten(text),
                hint: if looks_bare {
                    " (it looks like a bare hex digest: write `blake3:` in front)"
                } else {
                    ""
                },
            });
        };
        let len = hex.chars().count();
        if len != DIGEST_HEX_LEN {
            return Err(DigestParseError::WrongLength {
                text: shorten(text),
                len,
            });
        }
        if let Some((position, found)) = hex
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            let uppercase = hex.chars().all(|c| c.is_ascii_hexdigit());
            return Err(DigestParseError::NotHex {
                text: shorten(text),
                position,
                found,
                hint: if uppercase {
                    " (write the hex digits in lowercase)"
                } else {
                    ""
                },
            });
        }
        // All 64 characters are lowercase hex, so this cannot fail.
        Ok(Digest::from_hex(hex).expect("validated lowercase hex"))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        struct DigestVisitor;
        impl serde::de::Visitor<'_> for DigestVisitor {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest written `blake3:<64 lowercase hex>`")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Digest, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DigestVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "blake3:ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f";

    #[test]
    fn writes_and_parses_the_blake3_form() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string(), HELLO);
        assert_eq!(d.hex(), &HELLO[7..]);
        assert_eq!(HELLO.parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(format!("{d:?}"), format!("Digest({HELLO})"));
    }

    #[test]
    fn missing_prefix_is_named_and_a_bare_hex_gets_a_hint() {
        let err = HELLO[7..].parse::<Digest>().unwrap_err();
        assert!(
            matches!(err, DigestParseError::MissingPrefix { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&HELLO[7..]) && msg.contains("write `blake3:` in front"),
            "{msg}"
        );

        let err = "sha256:abcd".parse::<Digest>().unwrap_err();
        assert!(
            matches!(err, DigestParseError::MissingPrefix { hint: "", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("`sha256:abcd`"));
    }

    #[test]
    fn wrong_length_is_named() {
        let short = &HELLO[..HELLO.len() - 1];
        let err = short.parse::<Digest>().unwrap_err();
        assert_eq!(
            err,
            DigestParseError::WrongLength {
                text: short.to_owned(),
                len: 63
            }
        );
        assert!(err.to_string().contains("has 63 characters"), "{err}");
        let err = "blake3:".parse::<Digest>().unwrap_err();
        assert!(matches!(err, DigestParseError::WrongLength { len: 0, .. }));
    }

    #[test]
    fn non_hex_and_uppercase_are_named() {
        let bad = HELLO.replace("ea8f", "ez8f");
        let err = bad.parse::<Digest>().unwrap_err();
        assert!(
            matches!(
                err,
                DigestParseError::NotHex {
                    position: 1,
                    found: 'z',
                    hint: "",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(&bad));

        let upper = format!("blake3:{}", HELLO[7..].to_uppercase());
        let err = upper.parse::<Digest>().unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");

        // A multi-byte character must not make us slice inside it.
        let odd = format!("blake3:{}é", &HELLO[7..70]);
        assert!(matches!(
            odd.parse::<Digest>().unwrap_err(),
            DigestParseError::NotHex { found: 'é', .. }
        ));
    }

    #[test]
    fn very_long_text_is_shortened_in_messages() {
        let long = "x".repeat(10_000);
        let msg = long.parse::<Digest>().unwrap_err().to_string();
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn serde_uses_the_written_form() {
        let d = Digest::of(b"hello");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{HELLO}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let err = serde_json::from_str::<Digest>("\"blake3:00\"").unwrap_err();
        assert!(err.to_string().contains("has 2 characters"), "{err}");
    }
}
