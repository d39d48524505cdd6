//! The macaroon V2 binary format (libmacaroons `doc/format.txt`) and its
//! base64url text form.
//!
//! ```text
//! 0x02
//! [LOCATION(1) len bytes] IDENTIFIER(2) len bytes EOS(0)
//! per caveat: [LOCATION(1) ..] IDENTIFIER(2) .. [VID(4) ..] EOS(0)
//! EOS(0)
//! SIGNATURE(6) 32 bytes
//! ```
//!
//! Lengths are unsigned LEB128 varints. Text is written base64url without
//! padding; reading accepts url-safe or standard alphabets, with or without
//! padding, as the format asks.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

/// Largest token (binary bytes) accepted: caveats are short, and this bounds
/// the work an attacker can make a verifier do.
pub const TOKEN_BYTES_MAX: usize = 64 * 1024;
/// Most caveats accepted in one macaroon.
pub const CAVEATS_MAX: usize = 256;

const EOS: u8 = 0;
const LOCATION: u8 = 1;
const IDENTIFIER: u8 = 2;
const VID: u8 = 4;
const SIGNATURE: u8 = 6;

/// One caveat, borrowed from a [`RawMacaroon`]'s bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawCaveat<'a> {
    pub location: Option<&'a [u8]>,
    pub id: &'a [u8],
    /// Present exactly for third-party caveats.
    pub vid: Option<&'a [u8]>,
}

/// A byte range of [`RawMacaroon::bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CaveatSpans {
    location: Option<Span>,
    id: Span,
    vid: Option<Span>,
}

/// A decoded V2 macaroon. It keeps the binary form it was read from and
/// points into it, so decoding copies nothing and encoding gives back
/// exactly the bytes that were read (verification is the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawMacaroon {
    bytes: Vec<u8>,
    location: Option<Span>,
    identifier: Span,
    caveats: Vec<CaveatSpans>,
    pub signature: [u8; 32],
}

impl RawMacaroon {
    fn slice(&self, span: Span) -> &[u8] {
        &self.bytes[span.start..span.end]
    }

    /// The V2 binary form.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn location(&self) -> Option<&[u8]> {
        self.location.map(|s| self.slice(s))
    }

    pub fn identifier(&self) -> &[u8] {
        self.slice(self.identifier)
    }

    pub fn caveat_count(&self) -> usize {
        self.caveats.len()
    }

    pub fn caveats(&self) -> impl ExactSizeIterator<Item = RawCaveat<'_>> + '_ {
        self.caveats.iter().map(|c| RawCaveat {
            location: c.location.map(|s| self.slice(s)),
            id: self.slice(c.id),
            vid: c.vid.map(|s| self.slice(s)),
        })
    }
}

/// Why token bytes or text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the token is empty")]
    Empty,
    #[error("the token is not base64 (url-safe or standard)")]
    Base64,
    #[error("the token is {len} bytes; at most {TOKEN_BYTES_MAX} are accepted")]
    TooLong { len: usize },
    #[error("the token is not in the macaroon V2 format (first byte {0:#04x}, expected 0x02)")]
    Version(u8),
    #[error("the token is truncated ({0})")]
    Truncated(&'static str),
    #[error("the token has an unexpected field {tag} ({context})")]
    UnexpectedField { tag: u8, context: &'static str },
    #[error("the token has more than {CAVEATS_MAX} caveats")]
    TooManyCaveats,
    #[error("the token's signature is {0} bytes, not 32")]
    SignatureLength(usize),
    #[error("the token has {0} bytes after its signature")]
    TrailingBytes(usize),
    #[error("the token has an empty identifier")]
    EmptyIdentifier,
}

const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    URL_SAFE.encode(bytes)
}

pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, WireError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(WireError::Empty);
    }
    // Base64 grows by 4/3; refuse before decoding anything huge.
    if text.len() > TOKEN_BYTES_MAX / 3 * 4 + 4 {
        return Err(WireError::TooLong {
            len: text.len() / 4 * 3,
        });
    }
    let standard = text.bytes().any(|b| b == b'+' || b == b'/');
    let engine = if standard { &STANDARD } else { &URL_SAFE };
    engine.decode(text).map_err(|_| WireError::Base64)
}

#[cfg(test)]
fn put_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let mut len = value.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(value);
}

/// Writes the V2 binary form of a macaroon given by its parts.
#[cfg(test)]
pub(crate) fn encode_parts(
    location: Option<&[u8]>,
    identifier: &[u8],
    caveats: &[RawCaveat<'_>],
    signature: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(2);
    if let Some(location) = location {
        put_field(&mut out, LOCATION, location);
    }
    put_field(&mut out, IDENTIFIER, identifier);
    out.push(EOS);
    for c in caveats {
        if let Some(location) = c.location {
            put_field(&mut out, LOCATION, location);
        }
        put_field(&mut out, IDENTIFIER, c.id);
        if let Some(vid) = c.vid {
            put_field(&mut out, VID, vid);
        }
        out.push(EOS);
    }
    out.push(EOS);
    put_field(&mut out, SIGNATURE, signature);
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, WireError> {
        let b = self.peek().ok_or(WireError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn value(&mut self, what: &'static str) -> Result<Span, WireError> {
        let mut len: usize = 0;
        let mut shift = 0;
        loop {
            let b = self.byte(what)?;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                // No field can be longer than the whole token anyway.
                return Err(WireError::TooLong { len: usize::MAX });
            }
        }
        let start = self.pos;
        let end = start.checked_add(len).ok_or(WireError::Truncated(what))?;
        if end > self.data.len() {
            return Err(WireError::Truncated(what));
        }
        self.pos = end;
        Ok(Span { start, end })
    }

    /// Reads an optional field with `tag`.
    fn optional(&mut self, tag: u8, what: &'static str) -> Result<Option<Span>, WireError> {
        if self.peek() == Some(tag) {
            self.pos += 1;
            Ok(Some(self.value(what)?))
        } else {
            Ok(None)
        }
    }

    fn required(&mut self, tag: u8, what: &'static str) -> Result<Span, WireError> {
        match self.byte(what)? {
            t if t == tag => self.value(what),
            t => Err(WireError::UnexpectedField {
                tag: t,
                context: what,
            }),
        }
    }

    fn eos(&mut self, what: &'static str) -> Result<(), WireError> {
        match self.byte(what)? {
            EOS => Ok(()),
            t => Err(WireError::UnexpectedField {
                tag: t,
                context: what,
            }),
        }
    }
}

/// Reads the V2 binary form, keeping `bytes` as the macaroon's storage.
pub(crate) fn decode_binary(bytes: Vec<u8>) -> Result<RawMacaroon, WireError> {
    if bytes.len() > TOKEN_BYTES_MAX {
        return Err(WireError::TooLong { len: bytes.len() });
    }
    let mut r = Reader {
        data: &bytes,
        pos: 0,
    };
    match r.byte("version")? {
        2 => {}
        v => return Err(WireError::Version(v)),
    }
    let location = r.optional(LOCATION, "location")?;
    let identifier = r.required(IDENTIFIER, "identifier")?;
    if identifier.start == identifier.end {
        return Err(WireError::EmptyIdentifier);
    }
    r.eos("end of header")?;
    // Most tokens have a handful of caveats: one allocation, not four.
    let mut caveats = Vec::with_capacity(8);
    loop {
        if r.peek() == Some(EOS) {
            r.pos += 1;
            break;
        }
        if caveats.len() == CAVEATS_MAX {
            return Err(WireError::TooManyCaveats);
        }
        let location = r.optional(LOCATION, "caveat location")?;
        let id = r.required(IDENTIFIER, "caveat identifier")?;
        let vid = r.optional(VID, "caveat verification id")?;
        r.eos("end of caveat")?;
        caveats.push(CaveatSpans { location, id, vid });
    }
    let sig = r.required(SIGNATURE, "signature")?;
    let signature: [u8; 32] = bytes[sig.start..sig.end]
        .try_into()
        .map_err(|_| WireError::SignatureLength(sig.end - sig.start))?;
    if r.pos != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - r.pos));
    }
    Ok(RawMacaroon {
        bytes,
        location,
        identifier,
        caveats,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_ID: [u8; 300] = [7; 300];
    const VID_BYTES: [u8; 72] = [9; 72];

    fn sample_caveats() -> [RawCaveat<'static>; 2] {
        [
            RawCaveat {
                location: None,
                id: b"fuel <= 10",
                vid: None,
            },
            RawCaveat {
                location: Some(b"approver"),
                id: &LONG_ID,
                vid: Some(&VID_BYTES),
            },
        ]
    }

    fn sample() -> Vec<u8> {
        encode_parts(Some(b"voidbox"), b"id", &sample_caveats(), &[5; 32])
    }

    #[test]
    fn round_trip_binary_and_text() {
        let bin = sample();
        let m = decode_binary(bin.clone()).unwrap();
        assert_eq!(m.location(), Some(&b"voidbox"[..]));
        assert_eq!(m.identifier(), b"id");
        assert_eq!(m.caveats().collect::<Vec<_>>(), sample_caveats());
        assert_eq!(m.signature, [5; 32]);
        assert_eq!(m.bytes(), bin);
        let text = encode_base64(&bin);
        assert!(!text.contains(['=', '+', '/']));
        assert_eq!(decode_base64(&text).unwrap(), bin);
        let standard = base64::engine::general_purpose::STANDARD.encode(&bin);
        assert_eq!(decode_base64(&standard).unwrap(), bin);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bin = sample();
        for len in 0..bin.len() {
            assert!(
                decode_binary(bin[..len].to_vec()).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bin.clone();
        longer.push(0);
        assert_eq!(decode_binary(longer), Err(WireError::TrailingBytes(1)));
        assert!(matches!(
            decode_binary(b"\x01abc".to_vec()),
            Err(WireError::Version(1))
        ));
        assert_eq!(decode_base64("!!"), Err(WireError::Base64));
        assert_eq!(decode_base64("  "), Err(WireError::Empty));
    }
}
