//! The macaroon signature chain (HMAC-SHA256), as libmacaroons defines it:
//!
//! - key derivation: `k = HMAC(b"macaroons-key-generator" padded to 32, secret)`
//! - start: `sig = HMAC(k, identifier)`
//! - first-party caveat: `sig = HMAC(sig, predicate)`
//! - third-party caveat: `sig = HMAC(sig, HMAC(sig, vid) || HMAC(sig, cid))`
//! - binding a discharge: `HMAC(0^32, HMAC(0^32, root_sig) || HMAC(0^32, discharge_sig))`
//! - the vid is `nonce(24) || secretbox(caveat key, nonce, key = sig)`
//!
//! Verification uses this module directly (it is the hot path); minting goes
//! through the `macaroon` crate, and tests check that both agree.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const KEY_GENERATOR: &[u8; 32] = b"macaroons-key-generator\0\0\0\0\0\0\0\0\0";

pub(crate) fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub(crate) fn hmac2(key: &[u8; 32], first: &[u8], second: &[u8]) -> [u8; 32] {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&hmac(key, first));
    both[32..].copy_from_slice(&hmac(key, second));
    hmac(key, &both)
}

/// The HMAC key libmacaroons derives from a secret of any length.
pub(crate) fn derive_key(secret: &[u8]) -> [u8; 32] {
    hmac(KEY_GENERATOR, secret)
}

/// The signature a discharge must carry once bound to a token whose
/// signature is `root_sig`.
pub(crate) fn bind(root_sig: &[u8; 32], discharge_sig: &[u8; 32]) -> [u8; 32] {
    hmac2(&[0u8; 32], root_sig, discharge_sig)
}

/// Compares signatures without an early exit, so timing does not reveal how
/// many leading bytes of a forged signature were right.
pub(crate) fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Recovers a third-party caveat key from its vid, given the chain signature
/// just before that caveat. `None` if the vid was not made with that
/// signature (a tampered token).
pub(crate) fn open_vid(sig: &[u8; 32], vid: &[u8]) -> Option<[u8; 32]> {
    use sodiumoxide::crypto::secretbox;
    const NONCE: usize = secretbox::NONCEBYTES;
    if vid.len() != NONCE + secretbox::MACBYTES + 32 {
        return None;
    }
    let nonce = secretbox::Nonce::from_slice(&vid[..NONCE])?;
    let plain = secretbox::open(&vid[NONCE..], &nonce, &secretbox::Key(*sig)).ok()?;
    plain.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_macaroon_crate_example_signature() {
        // The macaroon crate's own test vector: key bytes used directly,
        // identifier "identifier", then caveat "predicate".
        let key = *b"this is a super duper secret key";
        let sig = hmac(&hmac(&key, b"identifier"), b"predicate");
        assert_eq!(
            sig,
            [
                14, 23, 21, 148, 48, 224, 4, 143, 81, 137, 60, 25, 201, 198, 245, 250, 249, 62,
                233, 94, 93, 65, 247, 88, 25, 39, 170, 203, 8, 4, 167, 187
            ]
        );
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(&[1; 32], &[1; 32]));
        let mut other = [1; 32];
        other[31] = 2;
        assert!(!ct_eq(&[1; 32], &other));
    }
}
