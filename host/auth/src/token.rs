//! Tokens (macaroons carrying a [`TokenId`]), discharges, minting, offline
//! attenuation, third-party caveats and binding.
//!
//! Construction goes through the `macaroon` crate; this module is, with
//! `chain.rs`, the only place that knows it, so it can be replaced.

use std::fmt;
use std::str::FromStr;
use std::sync::Once;

use macaroon::{Format, Macaroon, MacaroonKey};

use crate::caveat::{Caveat, CaveatError};
use crate::chain;
use crate::digest::{decode_hex_into, encode_hex};
use crate::keys::{Entropy, KeyId, RootKey};
use crate::wire::{self, RawMacaroon, WireError};

/// The location written into every token this crate mints. Informational
/// only: nothing is decided by it.
pub const TOKEN_LOCATION: &str = "voidbox";

/// Prefix of every token identifier; the `v1` names this identifier layout.
pub const IDENTIFIER_PREFIX: &str = "voidbox/v1/";

/// The identity of a token and of every token attenuated from it (they share
/// the identifier). Revocation and use counts are keyed by it.
///
/// Canonical text (also the macaroon identifier bytes, ASCII):
/// `voidbox/v1/<key id>/<nonce: 32 lowercase hex digits>`, where the nonce is
/// 16 random bytes chosen at minting.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId {
    key_id: KeyId,
    nonce: [u8; 16],
}

/// Why a token identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token identifier `{0}` is not of the form voidbox/v1/<key id>/<32 hex digits>")]
pub struct TokenIdError(pub String);

impl TokenId {
    /// A token id from its parts.
    pub fn new(key_id: KeyId, nonce: [u8; 16]) -> TokenId {
        TokenId { key_id, nonce }
    }

    /// The root key this token was minted with.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// The random nonce that makes this token unique.
    pub fn nonce(&self) -> &[u8; 16] {
        &self.nonce
    }

    /// Parses identifier bytes from a macaroon.
    pub fn from_identifier(bytes: &[u8]) -> Result<TokenId, TokenIdError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| TokenIdError(String::from_utf8_lossy(bytes).into_owned()))?;
        text.parse()
    }
}

impl FromStr for TokenId {
    type Err = TokenIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TokenIdError(s.to_owned());
        let rest = s.strip_prefix(IDENTIFIER_PREFIX).ok_or_else(bad)?;
        let (key, nonce_hex) = rest.split_once('/').ok_or_else(bad)?;
        let key_id = KeyId::new(key).map_err(|_| bad())?;
        let mut nonce = [0u8; 16];
        // Only lowercase hex, so that one token has exactly one identifier.
        if nonce_hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        decode_hex_into(nonce_hex, &mut nonce).ok_or_else(bad)?;
        Ok(TokenId { key_id, nonce })
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{IDENTIFIER_PREFIX}{}/{}",
            self.key_id,
            encode_hex(&self.nonce)
        )
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

/// Why a token or discharge could not be read or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Wire(#[from] WireError),
    #[error("malformed token: {0}")]
    Identifier(#[from] TokenIdError),
    #[error("the token has a form the macaroon library cannot extend ({0}); mint a new one")]
    Unsupported(String),
    #[error("third-party location `{0}` must be non-empty UTF-8 without control characters")]
    Location(String),
    #[error("a token bundle must start with a token; got nothing")]
    EmptyBundle,
}

fn init_crypto() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // libsodium's random source is thread-safe only after init; the
        // macaroon crate uses it for third-party caveat nonces.
        macaroon::initialize().expect("libsodium failed to initialize");
    });
}

fn to_crate(raw: &RawMacaroon) -> Result<Macaroon, TokenError> {
    Macaroon::deserialize_binary(raw.bytes()).map_err(|e| TokenError::Unsupported(format!("{e:?}")))
}

/// Reads back what the crate made. The only expected failure is a token
/// over this crate's limits ([`TOKEN_BYTES_MAX`](crate::TOKEN_BYTES_MAX),
/// [`CAVEATS_MAX`](crate::CAVEATS_MAX)), e.g. after adding many caveats;
/// anything else is a bug here or in the crate.
fn from_crate(m: &Macaroon) -> Result<RawMacaroon, TokenError> {
    let text = m
        .serialize(Format::V2)
        .expect("the macaroon crate serializes V2");
    let bytes = wire::decode_base64(&text).expect("the macaroon crate writes base64");
    Ok(wire::decode_binary(bytes)?)
}

/// A capability: a macaroon whose identifier is a [`TokenId`].
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub(crate) raw: RawMacaroon,
    pub(crate) id: TokenId,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signature is a bearer secret for further attenuation; keep it
        // out of logs.
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("caveats", &self.raw.caveat_count())
            .finish_non_exhaustive()
    }
}

/// One caveat of a token as written, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaveatEntry {
    /// A first-party caveat, parsed (or why it does not parse: it will deny).
    FirstParty(Result<Caveat, CaveatError>),
    /// A third-party caveat: a discharge from `location` for `caveat_id` is
    /// needed.
    ThirdParty { location: String, caveat_id: String },
}

fn entries(raw: &RawMacaroon) -> Vec<CaveatEntry> {
    raw.caveats()
        .map(|c| match c.vid {
            None => CaveatEntry::FirstParty(Caveat::parse_bytes(c.id)),
            Some(_) => CaveatEntry::ThirdParty {
                location: String::from_utf8_lossy(c.location.unwrap_or_default()).into_owned(),
                caveat_id: String::from_utf8_lossy(c.id).into_owned(),
            },
        })
        .collect()
}

impl Token {
    /// Mints a token with key `root` (named `key_id`) and the given caveats;
    /// the nonce comes from `entropy`. Fails only past the size limits.
    pub fn mint(
        key_id: &KeyId,
        root: &RootKey,
        caveats: &[Caveat],
        entropy: &mut dyn Entropy,
    ) -> Result<Token, TokenError> {
        let mut nonce = [0u8; 16];
        entropy.fill(&mut nonce);
        let id = TokenId::new(key_id.clone(), nonce);
        let mut m = Macaroon::create(
            Some(TOKEN_LOCATION.to_owned()),
            &MacaroonKey::generate(root.as_bytes()),
            id.to_string().into(),
        )
        .expect("a token identifier is never empty");
        for c in caveats {
            m.add_first_party_caveat(c.to_string().into());
        }
        Ok(Token {
            raw: from_crate(&m)?,
            id,
        })
    }

    /// The token's id (shared with every token attenuated from it).
    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The location hint written at minting (not signed: decide nothing by it).
    pub fn location(&self) -> Option<String> {
        self.raw
            .location()
            .map(|l| String::from_utf8_lossy(l).into_owned())
    }

    /// A narrower token: this one plus `caveats`. Needs no key, so anyone
    /// holding a token can do it offline.
    pub fn attenuate(&self, caveats: &[Caveat]) -> Result<Token, TokenError> {
        let mut m = to_crate(&self.raw)?;
        for c in caveats {
            m.add_first_party_caveat(c.to_string().into());
        }
        Ok(Token {
            raw: from_crate(&m)?,
            id: self.id.clone(),
        })
    }

    /// Adds a first-party caveat given as text, exactly as written (for
    /// tests of fail-closed behaviour and for caveats from other tools).
    /// Prefer [`Token::attenuate`], which writes the canonical form.
    pub fn attenuate_raw(&self, predicate: &str) -> Result<Token, TokenError> {
        let mut m = to_crate(&self.raw)?;
        m.add_first_party_caveat(predicate.into());
        Ok(Token {
            raw: from_crate(&m)?,
            id: self.id.clone(),
        })
    }

    /// A narrower token that also needs a discharge from the third party at
    /// `location`, which must know `caveat_key` (e.g. through
    /// [`ThirdPartyKey::caveat_key`]) and is told `caveat_id`.
    pub fn add_third_party_caveat(
        &self,
        location: &str,
        caveat_key: &CaveatKey,
        caveat_id: &str,
    ) -> Result<Token, TokenError> {
        if location.is_empty() || location.chars().any(char::is_control) {
            return Err(TokenError::Location(location.to_owned()));
        }
        init_crypto();
        let mut m = to_crate(&self.raw)?;
        m.add_third_party_caveat(
            location,
            &MacaroonKey::generate(&caveat_key.0),
            caveat_id.into(),
        );
        Ok(Token {
            raw: from_crate(&m)?,
            id: self.id.clone(),
        })
    }

    /// Binds a discharge to this token (libmacaroons "prepare for request"),
    /// so it is accepted with this token and no other. Bind to the final
    /// token: attenuating afterwards changes the signature and unbinds.
    pub fn bind(&self, discharge: &Discharge) -> Result<Discharge, TokenError> {
        let parent = to_crate(&self.raw)?;
        let mut d = to_crate(&discharge.raw)?;
        parent.bind(&mut d);
        Ok(Discharge {
            raw: from_crate(&d)?,
        })
    }

    /// The caveats as written, in order.
    pub fn caveats(&self) -> Vec<CaveatEntry> {
        entries(&self.raw)
    }

    /// The V2 binary form, base64url without padding.
    pub fn encode(&self) -> String {
        wire::encode_base64(self.raw.bytes())
    }

    /// Reads a token written by [`Token::encode`] or another macaroon
    /// implementation (V2, base64 url-safe or standard, padded or not).
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let raw = wire::decode_binary(wire::decode_base64(text)?)?;
        let id = TokenId::from_identifier(raw.identifier())?;
        Ok(Token { raw, id })
    }
}

impl FromStr for Token {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::decode(s)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The secret shared by a token's minter and one third party for one
/// third-party caveat.
#[derive(Clone, PartialEq, Eq)]
pub struct CaveatKey(pub(crate) [u8; 32]);

impl CaveatKey {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> CaveatKey {
        CaveatKey(bytes)
    }

    /// A fresh random key.
    pub fn generate(entropy: &mut dyn Entropy) -> CaveatKey {
        let mut bytes = [0u8; 32];
        entropy.fill(&mut bytes);
        CaveatKey(bytes)
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for CaveatKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CaveatKey(<secret>)")
    }
}

/// A long-lived secret shared with a third party (an approval or quota
/// service) from which the key for any caveat id is derived:
/// `caveat_key = HMAC-SHA256(secret, "voidbox/third-party/v1\0" || caveat_id)`.
/// So the minter needs no round trip to add a caveat, and the service needs
/// no state to discharge it.
#[derive(Clone, PartialEq, Eq)]
pub struct ThirdPartyKey([u8; 32]);

impl ThirdPartyKey {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> ThirdPartyKey {
        ThirdPartyKey(bytes)
    }

    /// A fresh random key.
    pub fn generate(entropy: &mut dyn Entropy) -> ThirdPartyKey {
        let mut bytes = [0u8; 32];
        entropy.fill(&mut bytes);
        ThirdPartyKey(bytes)
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key for the caveat with this id.
    pub fn caveat_key(&self, caveat_id: &str) -> CaveatKey {
        let mut data = Vec::with_capacity(32 + caveat_id.len());
        data.extend_from_slice(b"voidbox/third-party/v1\0");
        data.extend_from_slice(caveat_id.as_bytes());
        CaveatKey(chain::hmac(&self.0, &data))
    }
}

impl fmt::Debug for ThirdPartyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ThirdPartyKey(<secret>)")
    }
}

/// A discharge macaroon: a third party's statement that a third-party caveat
/// holds, possibly with its own first-party caveats (same language; e.g.
/// `expires < ...`). Its identifier is the caveat id.
#[derive(Clone, PartialEq, Eq)]
pub struct Discharge {
    pub(crate) raw: RawMacaroon,
}

impl fmt::Debug for Discharge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discharge")
            .field("caveat_id", &self.caveat_id())
            .field("caveats", &self.raw.caveat_count())
            .finish_non_exhaustive()
    }
}

impl Discharge {
    /// What the third party at `location` issues for `caveat_id`, given the
    /// caveat's key; `caveats` restrict the discharge further.
    pub fn create(
        location: &str,
        caveat_key: &CaveatKey,
        caveat_id: &str,
        caveats: &[Caveat],
    ) -> Result<Discharge, TokenError> {
        if caveat_id.is_empty() {
            return Err(TokenError::Wire(WireError::EmptyIdentifier));
        }
        let mut m = Macaroon::create(
            Some(location.to_owned()),
            &MacaroonKey::generate(&caveat_key.0),
            caveat_id.into(),
        )
        .map_err(|e| TokenError::Unsupported(format!("{e:?}")))?;
        for c in caveats {
            m.add_first_party_caveat(c.to_string().into());
        }
        Ok(Discharge {
            raw: from_crate(&m)?,
        })
    }

    /// The third party's location hint (not signed).
    pub fn location(&self) -> Option<String> {
        self.raw
            .location()
            .map(|l| String::from_utf8_lossy(l).into_owned())
    }

    /// The caveat id this discharges.
    pub fn caveat_id(&self) -> String {
        String::from_utf8_lossy(self.raw.identifier()).into_owned()
    }

    /// The discharge's own caveats.
    pub fn caveats(&self) -> Vec<CaveatEntry> {
        entries(&self.raw)
    }

    /// V2, base64url without padding.
    pub fn encode(&self) -> String {
        wire::encode_base64(self.raw.bytes())
    }

    /// Reads a discharge (V2, any base64 variant).
    pub fn decode(text: &str) -> Result<Discharge, TokenError> {
        Ok(Discharge {
            raw: wire::decode_binary(wire::decode_base64(text)?)?,
        })
    }
}

/// Writes a token with its bound discharges as one string:
/// `<token>,<discharge>,...` (the comma is outside the base64url alphabet).
pub fn encode_bundle(token: &Token, discharges: &[Discharge]) -> String {
    let mut s = token.encode();
    for d in discharges {
        s.push(',');
        s.push_str(&d.encode());
    }
    s
}

/// Reads what [`encode_bundle`] wrote; a plain token is a bundle without
/// discharges.
pub fn decode_bundle(text: &str) -> Result<(Token, Vec<Discharge>), TokenError> {
    let mut parts = text.trim().split(',');
    let first = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or(TokenError::EmptyBundle)?;
    let token = Token::decode(first)?;
    let discharges = parts.map(Discharge::decode).collect::<Result<_, _>>()?;
    Ok((token, discharges))
}

/// The token's caveats in plain words, one line each, first the token id.
pub fn inspect(token: &Token) -> Vec<String> {
    let mut lines = vec![format!(
        "token {} (root key `{}`)",
        token.id(),
        token.id().key_id()
    )];
    let caveats = token.caveats();
    if caveats.is_empty() {
        lines.push("no caveats: any tool, any budget, any number of uses, no expiry".to_owned());
    }
    for entry in caveats {
        lines.push(match entry {
            CaveatEntry::FirstParty(Ok(c)) => format!("{c}: {}", c.describe()),
            CaveatEntry::FirstParty(Err(e)) => format!("DENIES EVERYTHING: {e}"),
            CaveatEntry::ThirdParty {
                location,
                caveat_id,
            } => format!("needs a discharge from `{location}` for caveat id `{caveat_id}`"),
        });
    }
    lines
}
