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

use sha2::digest::generic_array::GenericArray;

const KEY_GENERATOR: &[u8; 32] = b"macaroons-key-generator\0\0\0\0\0\0\0\0\0";

/// SHA-256's initial state.
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// Finishes a SHA-256 whose first `prefix_bytes` (whole blocks) are already
/// in `state`, over `data`.
fn finish(mut state: [u32; 8], prefix_bytes: u64, data: &[u8]) -> [u8; 32] {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        compress(&mut state, block.try_into().expect("chunks of 64"));
    }
    let rest = blocks.remainder();
    let bits = (prefix_bytes + data.len() as u64) * 8;
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    // One block if the length still fits after the 0x80 byte, else two.
    let tail_len = if rest.len() < 56 { 64 } else { 128 };
    tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
    for block in tail[..tail_len].chunks_exact(64) {
        compress(&mut state, block.try_into().expect("chunks of 64"));
    }
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// HMAC-SHA256 with a 32-byte key (every key in a macaroon chain is one),
/// built on the compression function: the generic `hmac` crate spends about
/// as long on buffering as on hashing for these short messages.
pub(crate) fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = IV;
    compress(&mut inner, &ipad);
    let inner_hash = finish(inner, 64, data);
    let mut outer = IV;
    compress(&mut outer, &opad);
    finish(outer, 64, &inner_hash)
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
    fn hmac_matches_the_hmac_crate_for_every_length() {
        use hmac::Mac;
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = (i * 7 + 3) as u8;
        }
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in 0..data.len() {
            let mut reference = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            reference.update(&data[..len]);
            let expected: [u8; 32] = reference.finalize().into_bytes().into();
            assert_eq!(hmac(&key, &data[..len]), expected, "length {len}");
            key[len % 32] ^= data[len];
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys shorter
        // than a block with zeros, so the same key padded to 32 bytes gives
        // the same tag.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = hmac(&key, b"what do ya want for nothing?");
        assert_eq!(
            crate::digest::encode_hex(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
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
