//! Verification through the `macaroon` crate's own `Verifier`, kept as a
//! reference: tests check that it agrees with [`crate::verify`], and the
//! benchmark reports both. Not for production use (slower, and it cannot
//! tell an unbound discharge from a forged one).

use macaroon::{ByteString, Caveat as CrateCaveat, Macaroon, MacaroonKey, Verifier};

use crate::keys::KeyStore;
use crate::token::TokenId;
use crate::verify::{evaluate, Authorized, Denied, DeniedKind, Request, Revocations};

fn any_predicate(_: &ByteString) -> bool {
    // Signatures only: the predicates are evaluated by `evaluate` afterwards,
    // with the request as context (the crate's verifier takes plain fn
    // pointers, which cannot see a request).
    true
}

fn denied(kind: DeniedKind, message: String) -> Denied {
    Denied {
        kind,
        caveat: None,
        message,
    }
}

/// Decodes `token` and `discharges` (base64 V2) with the macaroon crate and
/// verifies them with its `Verifier`, then evaluates the caveats like
/// [`crate::verify`].
pub fn verify_with_macaroon_crate(
    token: &str,
    discharges: &[&str],
    request: &Request<'_>,
    keys: &dyn KeyStore,
    revocations: &dyn Revocations,
) -> Result<Authorized, Denied> {
    let malformed = |e: macaroon::MacaroonError| denied(DeniedKind::Malformed, format!("{e:?}"));
    let m = Macaroon::deserialize(token).map_err(malformed)?;
    let ds = discharges
        .iter()
        .map(|d| Macaroon::deserialize(d).map_err(malformed))
        .collect::<Result<Vec<_>, _>>()?;
    let id = TokenId::from_identifier(&m.identifier().0)
        .map_err(|e| denied(DeniedKind::Malformed, e.to_string()))?;
    let root = keys
        .get(id.key_id())
        .map_err(|e| denied(DeniedKind::Unavailable, e.to_string()))?
        .ok_or_else(|| {
            denied(
                DeniedKind::UnknownKey,
                format!("no root key `{}`", id.key_id()),
            )
        })?;
    let mut verifier = Verifier::default();
    verifier.satisfy_general(any_predicate);
    verifier
        .verify(&m, &MacaroonKey::generate(root.as_bytes()), ds.clone())
        .map_err(|e| denied(DeniedKind::BadSignature, format!("{e:?}")))?;
    let mut predicates: Vec<ByteString> = Vec::new();
    for mac in std::iter::once(&m).chain(ds.iter()) {
        for c in mac.first_party_caveats() {
            if let CrateCaveat::FirstParty(fp) = c {
                predicates.push(fp.predicate());
            }
        }
    }
    evaluate(
        &id,
        predicates.iter().map(|p| p.0.as_slice()),
        request,
        revocations,
    )
}
