//! Content digests as they appear in caveats: `blake3:<64 lowercase hex>`.
//!
//! This crate never hashes anything with blake3; it only carries digests that
//! the caller computed (the CAS and the tool registry own hashing), so this is
//! a plain 32-byte newtype with a canonical text form.

use std::fmt;
use std::str::FromStr;

/// A 32-byte blake3 digest, written `blake3:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest `{0}` does not start with `blake3:`; write it as blake3:<64 hex digits>")]
    Prefix(String),
    #[error("digest `{0}` must have exactly 64 hex digits after `blake3:`")]
    Length(String),
    #[error("digest `{0}` has a character that is not a hex digit")]
    NotHex(String),
}

impl Digest {
    /// The text prefix of every digest.
    pub const PREFIX: &'static str = "blake3:";

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

pub(crate) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `out.len() * 2` hex digits; `None` on any other input.
pub(crate) fn decode_hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(())
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| DigestError::Prefix(s.to_owned()))?;
        if hex.len() != 64 {
            return Err(DigestError::Length(s.to_owned()));
        }
        let mut out = [0u8; 32];
        decode_hex_into(hex, &mut out).ok_or_else(|| DigestError::NotHex(s.to_owned()))?;
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        f.write_str(&encode_hex(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_and_is_lowercase() {
        let text = format!("blake3:{}", "AB".repeat(32));
        let d: Digest = text.parse().unwrap();
        assert_eq!(d.0, [0xab; 32]);
        assert_eq!(d.to_string(), format!("blake3:{}", "ab".repeat(32)));
    }

    #[test]
    fn digest_errors_name_the_problem() {
        assert!(matches!(
            "sha256:00".parse::<Digest>(),
            Err(DigestError::Prefix(_))
        ));
        assert!(matches!(
            "blake3:00".parse::<Digest>(),
            Err(DigestError::Length(_))
        ));
        let bad = format!("blake3:{}", "g".repeat(64));
        assert!(matches!(bad.parse::<Digest>(), Err(DigestError::NotHex(_))));
    }
}
