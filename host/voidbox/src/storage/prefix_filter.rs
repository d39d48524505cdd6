//! The action cache's filter: a set of 4-byte invocation-digest prefixes,
//! probed by every fresh invocation.
//!
//! A fresh invocation's probe is a miss, and the set holds a prefix of every
//! cached invocation (millions on a busy host), so the probe is a trip to
//! memory. A general hash set (hashbrown) keeps its control bytes and its
//! slots in two arrays, and a probe reads both: two cache misses, one after
//! the other. Here a prefix sits in a flat array of `u32`, found by linear
//! probing from a keyed hash of it, so a probe reads one cache line (a
//! chain reaches a second only at the line's end) and a miss costs one trip.
//!
//! The set never shrinks and cannot remove: the filter it serves only grows
//! (see `State::cache_filter`).

use std::hash::BuildHasher;

use super::digest_hash::DigestHash;

/// A growable set of `u32` prefixes with one memory access per probe.
pub(crate) struct PrefixFilter {
    /// `EMPTY` or a stored prefix; the length is a power of two.
    slots: Vec<u32>,
    len: usize,
    /// Keyed: prefixes come from digests that people can grind, and linear
    /// probing is only fast while nobody can aim many keys at one run.
    hash: DigestHash,
}

/// A free slot. The prefix 0 is stored as [`ZERO_AS`], so it and that prefix
/// are one member: the filter may then answer "maybe" for an absent
/// invocation, which only costs a database lookup (never a wrong answer).
const EMPTY: u32 = 0;
const ZERO_AS: u32 = 1;

impl Default for PrefixFilter {
    fn default() -> Self {
        PrefixFilter {
            slots: vec![EMPTY; 16],
            len: 0,
            hash: DigestHash::default(),
        }
    }
}

impl PrefixFilter {
    fn stored(key: u32) -> u32 {
        if key == EMPTY {
            ZERO_AS
        } else {
            key
        }
    }

    fn start(&self, key: u32) -> usize {
        self.hash.hash_one(key) as usize & (self.slots.len() - 1)
    }

    /// Whether `key` (or the key it shares a slot value with) is a member.
    pub(crate) fn contains(&self, key: u32) -> bool {
        let key = Self::stored(key);
        let mask = self.slots.len() - 1;
        let mut i = self.start(key);
        loop {
            match self.slots[i] {
                EMPTY => return false,
                s if s == key => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds `key`.
    pub(crate) fn insert(&mut self, key: u32) {
        self.reserve(1);
        let key = Self::stored(key);
        let mask = self.slots.len() - 1;
        let mut i = self.start(key);
        loop {
            match self.slots[i] {
                EMPTY => {
                    self.slots[i] = key;
                    self.len += 1;
                    return;
                }
                s if s == key => return,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Makes room for `more` members without growing again: at most half
    /// the slots are taken, which keeps linear probing's chains short.
    pub(crate) fn reserve(&mut self, more: usize) {
        let wanted = (self.len + more).saturating_mul(2);
        if wanted <= self.slots.len() {
            return;
        }
        let old = std::mem::replace(
            &mut self.slots,
            vec![EMPTY; wanted.next_power_of_two().max(16)],
        );
        self.len = 0;
        for key in old.into_iter().filter(|&k| k != EMPTY) {
            // Stored values are members already mapped away from EMPTY.
            let mask = self.slots.len() - 1;
            let mut i = self.start(key);
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = key;
            self.len += 1;
        }
    }

    /// Members (slot values: the prefix 0 counts as [`ZERO_AS`]).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Extend<u32> for PrefixFilter {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, keys: I) {
        for key in keys {
            self.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_and_nothing_else() {
        let mut f = PrefixFilter::default();
        // Enough to grow many times, with neighbours and spread-out keys.
        let members: Vec<u32> = (0..50_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for &k in &members {
            f.insert(k);
        }
        f.extend(members.iter().copied().take(100)); // repeats change nothing
        assert_eq!(f.len(), members.len());
        assert!(members.iter().all(|&k| f.contains(k)));
        let absent = (0..50_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(1))
            .filter(|k| !members.contains(k) && *k != ZERO_AS && *k != EMPTY);
        for k in absent.take(5_000) {
            assert!(!f.contains(k), "{k} was never inserted");
        }
    }

    #[test]
    fn zero_is_a_member_like_any_prefix() {
        let mut f = PrefixFilter::default();
        assert!(!f.contains(0));
        f.insert(0);
        assert!(f.contains(0));
        // It shares its slot value with ZERO_AS: a false "maybe", never a
        // lost member.
        assert!(f.contains(ZERO_AS));
    }

    #[test]
    fn reserve_keeps_members_and_leaves_half_the_slots_free() {
        let mut f = PrefixFilter::default();
        for k in 1..=1_000 {
            f.insert(k);
        }
        f.reserve(100_000);
        assert!(f.slots.len() >= 2 * 101_000);
        assert!((1..=1_000).all(|k| f.contains(k)));
        assert!(!f.contains(1_001));
    }
}
