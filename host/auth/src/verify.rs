//! Verification: signature chain, discharges, revocation, caveat evaluation,
//! and the effective budget. Pure: a denial changes nothing anywhere; taking a
//! use is a separate, explicit step ([`Authorized::take_use`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, RwLock};

use crate::caveat::{Caveat, CaveatError};
use crate::chain;
use crate::digest::Digest;
use crate::keys::{KeyStore, StoreError};
use crate::time::format_rfc3339;
use crate::token::{decode_bundle, Discharge, Token, TokenId};
use crate::wire::{RawCaveat, RawMacaroon};

/// How deep discharges may themselves need discharges.
pub const DISCHARGE_DEPTH_MAX: usize = 4;

/// Resource limits of one invocation. In a [`Request`] it is what the caller
/// asks for (use `u64::MAX` for "as much as the token allows"); in
/// [`Authorized`] it is the effective budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
}

impl Budget {
    /// Asks for as much as the token allows.
    pub const UNLIMITED: Budget = Budget {
        fuel: u64::MAX,
        memory_bytes: u64::MAX,
        output_bytes: u64::MAX,
    };
}

/// What an invocation wants to do, as the host knows it before running.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The digest of the tool's component.
    pub tool_digest: Digest,
    /// The name the tool was invoked by.
    pub tool_name: &'a str,
    /// The current time, injected.
    pub now_unix: u64,
    /// The budget asked for.
    pub budget: Budget,
    /// The size of the input.
    pub input_bytes: u64,
    /// Blobs the invocation will let the tool read.
    pub reads: &'a [Digest],
}

/// Which blobs a tool may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    /// No `grant` caveat: no restriction from the token.
    Any,
    /// Only these (the intersection of every `grant` caveat; may be empty).
    Only(BTreeSet<Digest>),
}

impl Grants {
    /// Whether reading `blob` is allowed.
    pub fn allows(&self, blob: &Digest) -> bool {
        match self {
            Grants::Any => true,
            Grants::Only(set) => set.contains(blob),
        }
    }

    fn intersect(&mut self, other: &BTreeSet<Digest>) {
        *self = match self {
            Grants::Any => Grants::Only(other.clone()),
            Grants::Only(set) => Grants::Only(set.intersection(other).copied().collect()),
        };
    }
}

/// All caveats of a token folded together: the tightest of each limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Every `tool =` digest; a request must match all (so two different
    /// ones allow no tool).
    pub tools: BTreeSet<Digest>,
    /// Every `tool-name =`; likewise.
    pub tool_names: BTreeSet<String>,
    /// The earliest `expires <`.
    pub expires: Option<u64>,
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub input_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
    pub uses: Option<u64>,
    pub grants: Grants,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tools: BTreeSet::new(),
            tool_names: BTreeSet::new(),
            expires: None,
            fuel: None,
            memory_bytes: None,
            input_bytes: None,
            output_bytes: None,
            uses: None,
            grants: Grants::Any,
        }
    }
}

fn tighten(slot: &mut Option<u64>, value: u64) {
    *slot = Some(slot.map_or(value, |old| old.min(value)));
}

impl Limits {
    /// Folds caveats together.
    pub fn of<'c>(caveats: impl IntoIterator<Item = &'c Caveat>) -> Limits {
        let mut limits = Limits::default();
        for c in caveats {
            limits.add(c);
        }
        limits
    }

    /// Adds one caveat.
    pub fn add(&mut self, caveat: &Caveat) {
        match caveat {
            Caveat::Tool(d) => {
                self.tools.insert(*d);
            }
            Caveat::ToolName(n) => {
                self.tool_names.insert(n.clone());
            }
            Caveat::Expires(t) => tighten(&mut self.expires, *t),
            Caveat::Fuel(n) => tighten(&mut self.fuel, *n),
            Caveat::Memory(n) => tighten(&mut self.memory_bytes, *n),
            Caveat::InputBytes(n) => tighten(&mut self.input_bytes, *n),
            Caveat::OutputBytes(n) => tighten(&mut self.output_bytes, *n),
            Caveat::Uses(n) => tighten(&mut self.uses, *n),
            Caveat::Grant(set) => self.grants.intersect(set),
        }
    }

    /// The budget a request gets: the minimum of what it asks and every limit.
    pub fn clamp(&self, asked: Budget) -> Budget {
        let min = |asked: u64, limit: Option<u64>| limit.map_or(asked, |l| asked.min(l));
        Budget {
            fuel: min(asked.fuel, self.fuel),
            memory_bytes: min(asked.memory_bytes, self.memory_bytes),
            output_bytes: min(asked.output_bytes, self.output_bytes),
        }
    }
}

impl Token {
    /// The token's first-party caveats folded together (discharges not
    /// included). An unknown or malformed caveat is an error, since such a
    /// token denies everything.
    pub fn limits(&self) -> Result<Limits, CaveatError> {
        let mut limits = Limits::default();
        for c in self.raw.caveats().filter(|c| c.vid.is_none()) {
            limits.add(&Caveat::parse_bytes(c.id)?);
        }
        Ok(limits)
    }
}

/// A verified invocation may go ahead with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// The token's id (for use counting and the audit log).
    pub token_id: TokenId,
    /// The effective budget: the minimum of what was asked and every caveat.
    pub budget: Budget,
    /// Which blobs the tool may read.
    pub grants: Grants,
    /// The tightest `uses <=`, if any: the caller must take a use with
    /// [`Authorized::take_use`] atomically with the invocation.
    pub uses_limit: Option<u64>,
    /// Every caveat folded (token and discharges), e.g. `input_bytes` for the
    /// admission proof.
    pub limits: Limits,
}

/// Why verification denied, with a stable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeniedKind {
    /// The token or a discharge could not be read.
    Malformed,
    /// No root key with the token's key id.
    UnknownKey,
    /// The signature chain does not verify (tampered, or another key).
    BadSignature,
    Revoked,
    Expired,
    /// `tool =` or `tool-name =` does not match.
    WrongTool,
    /// `input-bytes <=` is exceeded.
    InputTooLarge,
    /// A blob to read is not in every `grant`.
    NotGranted,
    /// A caveat this crate does not know (fail closed).
    UnknownCaveat,
    /// A known caveat with a bad operator or value.
    InvalidCaveat,
    /// `uses <=` reached.
    UsesExhausted,
    /// A third-party caveat has no discharge.
    DischargeMissing,
    /// A discharge is not bound to this token.
    DischargeUnbound,
    /// A discharge does not verify.
    DischargeBadSignature,
    /// A key, revocation or use-count store failed: denied, fail closed.
    Unavailable,
}

impl DeniedKind {
    /// Every kind, in exit-code order.
    pub const ALL: [DeniedKind; 15] = [
        DeniedKind::Malformed,
        DeniedKind::UnknownKey,
        DeniedKind::BadSignature,
        DeniedKind::Revoked,
        DeniedKind::Expired,
        DeniedKind::WrongTool,
        DeniedKind::InputTooLarge,
        DeniedKind::NotGranted,
        DeniedKind::UnknownCaveat,
        DeniedKind::InvalidCaveat,
        DeniedKind::UsesExhausted,
        DeniedKind::DischargeMissing,
        DeniedKind::DischargeUnbound,
        DeniedKind::DischargeBadSignature,
        DeniedKind::Unavailable,
    ];

    /// A stable name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DeniedKind::Malformed => "malformed-token",
            DeniedKind::UnknownKey => "unknown-key",
            DeniedKind::BadSignature => "bad-signature",
            DeniedKind::Revoked => "revoked",
            DeniedKind::Expired => "expired",
            DeniedKind::WrongTool => "wrong-tool",
            DeniedKind::InputTooLarge => "input-too-large",
            DeniedKind::NotGranted => "not-granted",
            DeniedKind::UnknownCaveat => "unknown-caveat",
            DeniedKind::InvalidCaveat => "invalid-caveat",
            DeniedKind::UsesExhausted => "uses-exhausted",
            DeniedKind::DischargeMissing => "discharge-missing",
            DeniedKind::DischargeUnbound => "discharge-unbound",
            DeniedKind::DischargeBadSignature => "discharge-bad-signature",
            DeniedKind::Unavailable => "auth-store-unavailable",
        }
    }

    /// A stable, distinct process exit code (20 to 34) the CLI may use.
    pub fn exit_code(self) -> u8 {
        let index = DeniedKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("ALL lists every kind");
        20 + index as u8
    }
}

impl fmt::Display for DeniedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial: what kind, which caveat failed (if one did), and a message that
/// says why and never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied ({kind}): {message}")]
pub struct Denied {
    pub kind: DeniedKind,
    /// The failing caveat as written in the token, if a caveat failed.
    pub caveat: Option<String>,
    pub message: String,
}

impl Denied {
    fn new(kind: DeniedKind, caveat: Option<String>, message: String) -> Denied {
        Denied {
            kind,
            caveat,
            message,
        }
    }

    fn caveat(kind: DeniedKind, caveat: &Caveat, why: String) -> Denied {
        let text = caveat.to_string();
        let message = format!("caveat `{text}` failed: {why}");
        Denied::new(kind, Some(text), message)
    }

    fn store(e: StoreError) -> Denied {
        Denied::new(
            DeniedKind::Unavailable,
            None,
            format!("cannot check the token: {e}"),
        )
    }

    fn bad_caveat(e: CaveatError) -> Denied {
        let kind = match e {
            CaveatError::Unknown { .. } => DeniedKind::UnknownCaveat,
            _ => DeniedKind::InvalidCaveat,
        };
        Denied::new(kind, e.caveat().map(str::to_owned), e.to_string())
    }
}

/// Revoked token ids. The host persists them; [`MemoryRevocations`] is
/// provided.
pub trait Revocations {
    fn is_revoked(&self, id: &TokenId) -> Result<bool, StoreError>;
}

/// No token is revoked.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRevocations;

impl Revocations for NoRevocations {
    fn is_revoked(&self, _: &TokenId) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// Revocations in memory.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    ids: RwLock<HashSet<TokenId>>,
}

impl MemoryRevocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes `id` and so every token attenuated from it.
    pub fn revoke(&self, id: TokenId) {
        self.ids
            .write()
            .expect("revocations lock poisoned")
            .insert(id);
    }
}

impl Revocations for MemoryRevocations {
    fn is_revoked(&self, id: &TokenId) -> Result<bool, StoreError> {
        Ok(self
            .ids
            .read()
            .expect("revocations lock poisoned")
            .contains(id))
    }
}

/// Why a use could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("all {limit} uses of the token have been taken")]
    Exhausted { used: u64, limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Use counts per token id for `uses <= N`. `try_take` must be atomic: of
/// any number of concurrent calls on a token with one use left, exactly one
/// succeeds. The host backs it by a database transaction (in the cluster:
/// replicated state).
pub trait UseCounter {
    /// Takes one use if fewer than `limit` were taken; returns the number of
    /// uses taken so far, this one included.
    fn try_take(&self, id: &TokenId, limit: u64) -> Result<u64, TakeError>;
    /// Uses taken so far (for inspection; not for deciding).
    fn used(&self, id: &TokenId) -> Result<u64, StoreError>;
}

/// Use counts in memory.
#[derive(Debug, Default)]
pub struct MemoryUseCounter {
    counts: Mutex<HashMap<TokenId, u64>>,
}

impl MemoryUseCounter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl UseCounter for MemoryUseCounter {
    fn try_take(&self, id: &TokenId, limit: u64) -> Result<u64, TakeError> {
        let mut counts = self.counts.lock().expect("use counter lock poisoned");
        let used = counts.get(id).copied().unwrap_or(0);
        if used >= limit {
            return Err(TakeError::Exhausted { used, limit });
        }
        counts.insert(id.clone(), used + 1);
        Ok(used + 1)
    }

    fn used(&self, id: &TokenId) -> Result<u64, StoreError> {
        Ok(self
            .counts
            .lock()
            .expect("use counter lock poisoned")
            .get(id)
            .copied()
            .unwrap_or(0))
    }
}

impl Authorized {
    /// How many uses are left, without taking one (for `token verify`);
    /// `None` for a token without a limit, a denial when none is left.
    pub fn uses_left(&self, counter: &dyn UseCounter) -> Result<Option<u64>, Denied> {
        let Some(limit) = self.uses_limit else {
            return Ok(None);
        };
        let used = counter.used(&self.token_id).map_err(Denied::store)?;
        if used >= limit {
            return Err(Denied::caveat(
                DeniedKind::UsesExhausted,
                &Caveat::Uses(limit),
                format!("the token has been used {used} time(s)"),
            ));
        }
        Ok(Some(limit - used))
    }

    /// Takes one use if the token has a `uses <=` limit. Call it atomically
    /// with starting the invocation, after every other check (admission
    /// included) passed, so a denied invocation counts no use. Returns the
    /// uses taken so far, or `None` for a token without a limit.
    pub fn take_use(&self, counter: &dyn UseCounter) -> Result<Option<u64>, Denied> {
        let Some(limit) = self.uses_limit else {
            return Ok(None);
        };
        match counter.try_take(&self.token_id, limit) {
            Ok(n) => Ok(Some(n)),
            Err(TakeError::Exhausted { used, limit }) => Err(Denied::caveat(
                DeniedKind::UsesExhausted,
                &Caveat::Uses(limit),
                format!("the token has been used {used} time(s)"),
            )),
            Err(TakeError::Store(e)) => Err(Denied::store(e)),
        }
    }
}

/// A third-party caveat met while walking a chain, with the chain
/// signature just before it (the key its vid was sealed with).
struct Pending<'a> {
    caveat: RawCaveat<'a>,
    sig: [u8; 32],
}

/// Computes the signature of `m` from `key`, collecting its first-party
/// predicates and its third-party caveats. One pass: this is the hot path.
fn walk<'a>(
    m: &'a RawMacaroon,
    key: &[u8; 32],
    predicates: &mut Vec<&'a [u8]>,
    pending: &mut Vec<Pending<'a>>,
) -> [u8; 32] {
    let mut sig = chain::hmac(key, m.identifier());
    for c in m.caveats() {
        sig = match c.vid {
            None => {
                predicates.push(c.id);
                chain::hmac(&sig, c.id)
            }
            Some(vid) => {
                pending.push(Pending { caveat: c, sig });
                chain::hmac2(&sig, vid, c.id)
            }
        };
    }
    sig
}

/// Checks third-party caveats against the discharges, collecting the
/// discharges' predicates.
struct Discharges<'a> {
    root_sig: &'a [u8; 32],
    discharges: &'a [Discharge],
    used: Vec<bool>,
}

impl<'a> Discharges<'a> {
    fn check(
        &mut self,
        p: &Pending<'a>,
        depth: usize,
        predicates: &mut Vec<&'a [u8]>,
    ) -> Result<(), Denied> {
        let c = p.caveat;
        let cid = String::from_utf8_lossy(c.id).into_owned();
        let location = String::from_utf8_lossy(c.location.unwrap_or_default()).into_owned();
        let what = format!("third-party caveat `{cid}` (from `{location}`)");
        let vid = c.vid.unwrap_or_default();
        let Some(caveat_key) = chain::open_vid(&p.sig, vid) else {
            return Err(Denied::new(
                DeniedKind::BadSignature,
                Some(what.clone()),
                format!("{what} cannot be opened: the token was altered"),
            ));
        };
        if depth >= DISCHARGE_DEPTH_MAX {
            return Err(Denied::new(
                DeniedKind::DischargeMissing,
                Some(what.clone()),
                format!("{what} is nested deeper than {DISCHARGE_DEPTH_MAX} discharges"),
            ));
        }
        let found = self
            .discharges
            .iter()
            .enumerate()
            .find(|(i, d)| !self.used[*i] && d.raw.identifier() == c.id);
        let Some((index, d)) = found else {
            return Err(Denied::new(
                DeniedKind::DischargeMissing,
                Some(what.clone()),
                format!("{what} has no discharge: get one from `{location}` and attach it"),
            ));
        };
        self.used[index] = true;
        let mut pending = Vec::new();
        let dsig = walk(&d.raw, &caveat_key, predicates, &mut pending);
        if !chain::ct_eq(&chain::bind(self.root_sig, &dsig), &d.raw.signature) {
            let (kind, why) = if chain::ct_eq(&dsig, &d.raw.signature) {
                (
                    DeniedKind::DischargeUnbound,
                    "is not bound to this token: bind it to the final token before sending",
                )
            } else {
                (
                    DeniedKind::DischargeBadSignature,
                    "does not verify: it is bound to another token, was altered, or was made with another key",
                )
            };
            return Err(Denied::new(
                kind,
                Some(what.clone()),
                format!("the discharge for {what} {why}"),
            ));
        }
        for p in &pending {
            self.check(p, depth + 1, predicates)?;
        }
        Ok(())
    }
}

fn check(caveat: &Caveat, request: &Request<'_>) -> Result<(), Denied> {
    match caveat {
        Caveat::Tool(d) if *d != request.tool_digest => Err(Denied::caveat(
            DeniedKind::WrongTool,
            caveat,
            format!("the requested tool is {}", request.tool_digest),
        )),
        Caveat::ToolName(n) if n != request.tool_name => Err(Denied::caveat(
            DeniedKind::WrongTool,
            caveat,
            format!("the requested tool is named `{}`", request.tool_name),
        )),
        Caveat::Expires(t) if request.now_unix >= *t => Err(Denied::caveat(
            DeniedKind::Expired,
            caveat,
            format!(
                "the token expired at {} (now {})",
                format_rfc3339(*t),
                format_rfc3339(request.now_unix)
            ),
        )),
        Caveat::InputBytes(n) if request.input_bytes > *n => Err(Denied::caveat(
            DeniedKind::InputTooLarge,
            caveat,
            format!("the input has {} bytes", request.input_bytes),
        )),
        Caveat::Uses(0) => Err(Denied::caveat(
            DeniedKind::UsesExhausted,
            caveat,
            "the token allows no use".to_owned(),
        )),
        Caveat::Grant(set) => match request.reads.iter().find(|b| !set.contains(b)) {
            Some(blob) => Err(Denied::caveat(
                DeniedKind::NotGranted,
                caveat,
                format!("the invocation would read blob {blob}, which is not granted"),
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Verifies `token` (with `discharges` for its third-party caveats) for
/// `request`. Checks, in order: the root key exists, the signature chain,
/// every discharge (present, bound, valid), revocation, then every caveat of
/// the token and its discharges; the first failure is the denial. Extra
/// discharges that no caveat asks for are ignored (they grant nothing).
/// Changes nothing; see [`Authorized::take_use`] for `uses`.
pub fn verify(
    token: &Token,
    request: &Request<'_>,
    keys: &dyn KeyStore,
    revocations: &dyn Revocations,
    discharges: &[Discharge],
) -> Result<Authorized, Denied> {
    let key_id = token.id().key_id();
    let root = keys.get(key_id).map_err(Denied::store)?.ok_or_else(|| {
        Denied::new(
            DeniedKind::UnknownKey,
            None,
            format!(
                "no root key `{key_id}` here: the token was minted by another host or its key was removed"
            ),
        )
    })?;
    let key = *root.derived();
    let mut predicates = Vec::with_capacity(token.raw.caveat_count());
    let mut pending = Vec::new();
    let sig = walk(&token.raw, &key, &mut predicates, &mut pending);
    if !chain::ct_eq(&sig, &token.raw.signature) {
        return Err(Denied::new(
            DeniedKind::BadSignature,
            None,
            "the token's signature does not verify: it was altered (a caveat changed, reordered or removed) or minted with another key".to_owned(),
        ));
    }
    let mut checker = Discharges {
        root_sig: &token.raw.signature,
        discharges,
        used: vec![false; discharges.len()],
    };
    for p in &pending {
        checker.check(p, 0, &mut predicates)?;
    }
    evaluate(token.id(), predicates.iter().copied(), request, revocations)
}

/// Revocation and caveat evaluation, after every signature verified.
pub(crate) fn evaluate<'p>(
    token_id: &TokenId,
    predicates: impl Iterator<Item = &'p [u8]>,
    request: &Request<'_>,
    revocations: &dyn Revocations,
) -> Result<Authorized, Denied> {
    if revocations.is_revoked(token_id).map_err(Denied::store)? {
        return Err(Denied::new(
            DeniedKind::Revoked,
            None,
            format!("token {token_id} has been revoked"),
        ));
    }
    let mut limits = Limits::default();
    for predicate in predicates {
        let caveat = Caveat::parse_bytes(predicate).map_err(Denied::bad_caveat)?;
        check(&caveat, request)?;
        limits.add(&caveat);
    }
    Ok(Authorized {
        token_id: token_id.clone(),
        budget: limits.clamp(request.budget),
        grants: limits.grants.clone(),
        uses_limit: limits.uses,
        limits,
    })
}

/// Reads a bundle (`token[,discharge...]`, see [`crate::encode_bundle`]) and
/// verifies it; a token that cannot be read is denied as malformed.
pub fn verify_encoded(
    text: &str,
    request: &Request<'_>,
    keys: &dyn KeyStore,
    revocations: &dyn Revocations,
) -> Result<Authorized, Denied> {
    let (token, discharges) =
        decode_bundle(text).map_err(|e| Denied::new(DeniedKind::Malformed, None, e.to_string()))?;
    verify(&token, request, keys, revocations, &discharges)
}
