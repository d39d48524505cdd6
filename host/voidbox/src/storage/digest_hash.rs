//! Hashing for in-memory maps keyed by blake3 digests.
//!
//! A digest is already uniformly distributed, so hashing it again with
//! SipHash (the standard library's default, about 20 ns for 32 bytes) is
//! wasted work on the invocation's hot path, several times per invocation
//! and under the storage lock. Keys still come from people (an input's
//! digest is chosen by whoever chooses the input, and a brute-forced digest
//! prefix is cheap), so the hash is keyed by per-map random words and mixes
//! the whole digest with a folded 64×64→128-bit multiply: without the keys,
//! an attacker cannot aim many digests at one bucket.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A map keyed by digests (or digest prefixes), with [`DigestHash`].
pub(crate) type DigestMap<K, V> = HashMap<K, V, DigestHash>;
/// A set of digests (or digest prefixes), with [`DigestHash`].
pub(crate) type DigestSet<K> = HashSet<K, DigestHash>;

/// Builds [`DigestHasher`]s with random keys chosen when the map is made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DigestHash {
    k0: u64,
    k1: u64,
}

impl Default for DigestHash {
    fn default() -> Self {
        // The standard library's per-map random keys, drawn once per map.
        let r = RandomState::new();
        DigestHash {
            k0: r.hash_one(0x5eed_u64),
            k1: r.hash_one(0xd1_9e57_u64) | 1,
        }
    }
}

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            k0: self.k0,
            k1: self.k1,
            h: self.k0,
        }
    }
}

/// The hasher: every 16 bytes written are folded into the state.
pub(crate) struct DigestHasher {
    k0: u64,
    k1: u64,
    h: u64,
}

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(16);
        for c in &mut chunks {
            let a = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let b = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            self.h = fold(self.h ^ a ^ self.k0, b ^ self.k1);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 16];
            word[..rest.len()].copy_from_slice(rest);
            let a = u64::from_le_bytes(word[..8].try_into().expect("8 bytes"));
            let b = u64::from_le_bytes(word[8..].try_into().expect("8 bytes"));
            self.h = fold(self.h ^ a ^ self.k0, b ^ self.k1 ^ rest.len() as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.h = fold(self.h ^ n ^ self.k0, self.k1);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voidbox_cas::Digest;

    #[test]
    fn equal_digests_hash_alike_and_different_ones_apart() {
        let s = DigestHash::default();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(s.hash_one(a), s.hash_one(Digest(a.0)));
        assert_ne!(s.hash_one(a), s.hash_one(b));
        // Digests that share their first 16 bytes still land apart.
        let mut c = a;
        c.0[31] ^= 1;
        assert_ne!(s.hash_one(a), s.hash_one(c));
    }

    #[test]
    fn maps_with_different_keys_order_digests_differently() {
        // The keys are per map: the low bits (the bucket) of the same
        // digests differ between two maps' hashers.
        let digests: Vec<Digest> = (0u32..64).map(|i| Digest::of(&i.to_le_bytes())).collect();
        let (s, t) = (DigestHash::default(), DigestHash::default());
        let low =
            |h: &DigestHash| -> Vec<u64> { digests.iter().map(|d| h.hash_one(d) & 0xff).collect() };
        assert_ne!(low(&s), low(&t));
    }

    #[test]
    fn a_map_works_as_a_map() {
        let mut m: DigestMap<Digest, u32> = DigestMap::default();
        for i in 0u32..1000 {
            m.insert(Digest::of(&i.to_le_bytes()), i);
        }
        for i in 0u32..1000 {
            assert_eq!(m.get(&Digest::of(&i.to_le_bytes())), Some(&i));
        }
        assert_eq!(m.get(&Digest::of(b"absent")), None);
        let mut set: DigestSet<u64> = DigestSet::default();
        assert!(set.insert(7) && !set.insert(7) && set.contains(&7));
        let mut small: DigestSet<u32> = DigestSet::default();
        assert!(small.insert(7) && !small.insert(7) && small.contains(&7));
        assert!(!small.contains(&8));
    }
}
