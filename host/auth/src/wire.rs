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

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawCaveat {
    pub location: Option<Vec<u8>>,
    pub id: Vec<u8>,
    /// Present exactly for third-party caveats.
    pub vid: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawMacaroon {
    pub location: Option<Vec<u8>>,
    pub identifier: Vec<u8>,
    pub caveats: Vec<RawCaveat>,
    pub signature: [u8; 32],
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

pub(crate) fn encode_binary(m: &RawMacaroon) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(2);
    if let Some(location) = &m.location {
        put_field(&mut out, LOCATION, location);
    }
    put_field(&mut out, IDENTIFIER, &m.identifier);
    out.push(EOS);
    for c in &m.caveats {
        if let Some(location) = &c.location {
            put_field(&mut out, LOCATION, location);
        }
        put_field(&mut out, IDENTIFIER, &c.id);
        if let Some(vid) = &c.vid {
            put_field(&mut out, VID, vid);
        }
        out.push(EOS);
    }
    out.push(EOS);
    put_field(&mut out, SIGNATURE, &m.signature);
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, WireError> {
        let b = self.peek().ok_or(WireError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn value(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
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
        let end = self
            .pos
            .checked_add(len)
            .ok_or(WireError::Truncated(what))?;
        let v = self
            .data
            .get(self.pos..end)
            .ok_or(WireError::Truncated(what))?;
        self.pos = end;
        Ok(v)
    }

    /// Reads an optional field with `tag`.
    fn optional(&mut self, tag: u8, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        if self.peek() == Some(tag) {
            self.pos += 1;
            Ok(Some(self.value(what)?))
        } else {
            Ok(None)
        }
    }

    fn required(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], WireError> {
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

pub(crate) fn decode_binary(data: &[u8]) -> Result<RawMacaroon, WireError> {
    if data.len() > TOKEN_BYTES_MAX {
        return Err(WireError::TooLong { len: data.len() });
    }
    let mut r = Reader { data, pos: 0 };
    match r.byte("version")? {
        2 => {}
        v => return Err(WireError::Version(v)),
    }
    let location = r.optional(LOCATION, "location")?.map(<[u8]>::to_vec);
    let identifier = r.required(IDENTIFIER, "identifier")?.to_vec();
    if identifier.is_empty() {
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
        let location = r.optional(LOCATION, "caveat location")?.map(<[u8]>::to_vec);
        let id = r.required(IDENTIFIER, "caveat identifier")?.to_vec();
        let vid = r
            .optional(VID, "caveat verification id")?
            .map(<[u8]>::to_vec);
        r.eos("end of caveat")?;
        caveats.push(RawCaveat { location, id, vid });
    }
    let sig = r.required(SIGNATURE, "signature")?;
    let signature: [u8; 32] = sig
        .try_into()
        .map_err(|_| WireError::SignatureLength(sig.len()))?;
    if r.pos != data.len() {
        return Err(WireError::TrailingBytes(data.len() - r.pos));
    }
    Ok(RawMacaroon {
        location,
        identifier,
        caveats,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawMacaroon {
        RawMacaroon {
            location: Some(b"voidbox".to_vec()),
            identifier: b"id".to_vec(),
            caveats: vec![
                RawCaveat {
                    location: None,
                    id: b"fuel <= 10".to_vec(),
                    vid: None,
                },
                RawCaveat {
                    location: Some(b"approver".to_vec()),
                    id: vec![7; 300],
                    vid: Some(vec![9; 72]),
                },
            ],
            signature: [5; 32],
        }
    }

    #[test]
    fn round_trip_binary_and_text() {
        let m = sample();
        let bin = encode_binary(&m);
        assert_eq!(decode_binary(&bin).unwrap(), m);
        let text = encode_base64(&bin);
        assert!(!text.contains(['=', '+', '/']));
        assert_eq!(decode_binary(&decode_base64(&text).unwrap()).unwrap(), m);
        let standard = base64::engine::general_purpose::STANDARD.encode(&bin);
        assert_eq!(decode_base64(&standard).unwrap(), bin);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bin = encode_binary(&sample());
        for len in 0..bin.len() {
            assert!(decode_binary(&bin[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut longer = bin.clone();
        longer.push(0);
        assert_eq!(decode_binary(&longer), Err(WireError::TrailingBytes(1)));
        assert!(matches!(
            decode_binary(b"\x01abc"),
            Err(WireError::Version(1))
        ));
        assert_eq!(decode_base64("!!"), Err(WireError::Base64));
        assert_eq!(decode_base64("  "), Err(WireError::Empty));
    }
}
