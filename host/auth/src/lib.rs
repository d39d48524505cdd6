//! voidbox-auth: capabilities as macaroons.
//!
//! A [`Token`] says which tool may run, with what budget, until when and how
//! many times. The host mints tokens with a tenant's [`RootKey`]; anyone
//! holding one can narrow it offline ([`Token::attenuate`]); before anything
//! runs, [`verify`] checks the signature chain, discharges and revocation and
//! evaluates every [`Caveat`] against a [`Request`], giving an [`Authorized`]
//! with the effective [`Budget`] or a [`Denied`] that names the failing
//! caveat (never the key) and has a stable [`DeniedKind`].
//!
//! ```
//! use voidbox_auth::*;
//!
//! let keys = MemoryKeyStore::new();
//! let key_id = KeyId::new("tenant-a").unwrap();
//! let root = RootKey::generate(&mut OsEntropy);
//! keys.insert(key_id.clone(), root.clone());
//!
//! let token = Token::mint(&key_id, &root, &["fuel <= 1000".parse().unwrap()], &mut OsEntropy)
//!     .unwrap();
//! let narrower = token.attenuate(&["uses <= 1".parse().unwrap()]).unwrap();
//! let text = narrower.encode(); // V2, base64url
//!
//! let tool: Digest = format!("blake3:{}", "00".repeat(32)).parse().unwrap();
//! let request = Request {
//!     tool_digest: tool, tool_name: "wc", now_unix: 1_800_000_000,
//!     budget: Budget::UNLIMITED, input_bytes: 10, reads: &[],
//! };
//! let ok = verify(&Token::decode(&text).unwrap(), &request, &keys, &NoRevocations, &[]).unwrap();
//! assert_eq!(ok.budget.fuel, 1000);
//! let uses = MemoryUseCounter::new();
//! assert_eq!(ok.take_use(&uses).unwrap(), Some(1));
//! assert_eq!(ok.take_use(&uses).unwrap_err().kind, DeniedKind::UsesExhausted);
//! ```
//!
//! Storage is behind small traits the host implements: [`KeyStore`],
//! [`Revocations`], [`UseCounter`] (in-memory versions and a directory-backed
//! key store are provided). Time and randomness are injected
//! ([`Request::now_unix`], [`Entropy`]).
//!
//! This crate knows macaroons, caveats and root keys. It must not know
//! wasmtime, Z3, the database or the CLI. The `macaroon` crate mints,
//! attenuates, adds third-party caveats and binds (inside `token.rs`, plus
//! the hidden `reference` verifier used by tests and the benchmark), so it
//! can be replaced; verification is this crate's own HMAC-SHA256 chain
//! (`chain.rs`, libmacaroons' construction) over its own V2 codec
//! (`wire.rs`), because the crate's verifier costs about 5 µs per token and
//! cannot see the request from its caveat callbacks.
//!
//! Note: the `macaroon` crate logs whole macaroons (signatures included) at
//! `debug` level through `log`; keep the `macaroon` log target above debug.

mod caveat;
mod chain;
mod digest;
mod keys;
mod time;
mod token;
mod verify;
mod wire;

#[doc(hidden)]
pub mod reference;

pub use caveat::{Caveat, CaveatError, CAVEAT_BYTES_MAX, TOOL_NAME_BYTES_MAX};
pub use digest::{Digest, DigestError};
pub use keys::{
    DirKeyStore, Entropy, KeyId, KeyIdError, KeyStore, MemoryKeyStore, OsEntropy, PinnedKeys,
    RootKey, StoreError, KEY_ID_BYTES_MAX,
};
pub use time::{format_rfc3339, parse_rfc3339};
pub use token::{
    decode_bundle, encode_bundle, inspect, CaveatEntry, CaveatKey, Discharge, ThirdPartyKey, Token,
    TokenError, TokenId, TokenIdError, IDENTIFIER_PREFIX, TOKEN_LOCATION,
};
pub use verify::{
    verify, verify_encoded, Authorized, Budget, Denied, DeniedKind, Grants, Limits,
    MemoryRevocations, MemoryUseCounter, NoRevocations, Request, Revocations, TakeError,
    UseCounter, DISCHARGE_DEPTH_MAX,
};
pub use wire::{WireError, CAVEATS_MAX, TOKEN_BYTES_MAX};
