//! A journal tail's index: digest to a place in the tail (where a record
//! starts, or which receipt), for the small blobs and the action-cache
//! entries recorded since the tail began.
//!
//! Every invocation inserts into it three times (its input, its output,
//! its cache entry), each at a random slot of a table of tens of thousands
//! of entries, so each insert is a trip to memory. A general hash map
//! (hashbrown) keeps its control bytes and its 40-byte slots (the digest,
//! the place) in two arrays, and an insert touches both. Here a slot is 8
//! bytes in one flat array, probed linearly from a keyed hash: a 32-bit tag
//! of the hash and the place. The digest is not stored; the record at the
//! place holds it, and the caller reads it (`key_at`) only when a tag
//! matches, so a fresh digest costs one cache line and no comparison.
//!
//! Places must fit in 32 bits: a tail rotates at a segment's size (32 MiB),
//! far below.

use std::hash::BuildHasher;

use voidbox_cas::Digest;

use super::digest_hash::DigestHash;

/// Digest to place, one memory access per probe (see the module docs).
pub(crate) struct TailIndex {
    /// `EMPTY`, or a tag (high half) and the place plus one (low half).
    /// The length is a power of two, at least twice `len`.
    slots: Vec<u64>,
    len: usize,
    /// Keyed: digests come from inputs people choose, and linear probing
    /// is only fast while nobody can aim many keys at one run.
    hash: DigestHash,
}

const EMPTY: u64 = 0;

/// How a probe for a digest ended.
enum Probe {
    /// The digest is at this slot.
    Found(usize),
    /// The digest is absent; this free slot is where it goes.
    Free(usize),
}

impl Default for TailIndex {
    fn default() -> Self {
        TailIndex::with_capacity(0)
    }
}

impl TailIndex {
    /// An index that holds `entries` without growing.
    pub(crate) fn with_capacity(entries: usize) -> TailIndex {
        TailIndex {
            slots: vec![EMPTY; (2 * entries).next_power_of_two().max(16)],
            len: 0,
            hash: DigestHash::default(),
        }
    }

    /// Writes a slot of every 4 KiB page of the table back as it is, so
    /// that the table's memory is mapped before inserts land on it at
    /// random (a fresh table is zeroed but unmapped, and a fault per page
    /// would otherwise fall on an insert). What the index holds is
    /// unchanged.
    pub(crate) fn touch(&mut self) {
        for s in self
            .slots
            .iter_mut()
            .step_by(4096 / std::mem::size_of::<u64>())
        {
            // A write, not a read (which maps the shared zero page), and
            // one the optimizer may not drop as a no-op.
            *s = std::hint::black_box(*s);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries it holds before it must grow (at most half its slots).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    fn slot(tag: u32, place: usize) -> u64 {
        let place = u32::try_from(place + 1).expect("a tail's places fit in 32 bits");
        (u64::from(tag) << 32) | u64::from(place)
    }

    fn place(slot: u64) -> usize {
        (slot as u32) as usize - 1
    }

    fn probe(&self, digest: &Digest, key_at: &impl Fn(usize) -> Digest) -> (u32, Probe) {
        let h = self.hash.hash_one(digest);
        let tag = (h >> 32) as u32;
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return (tag, Probe::Free(i));
            }
            if (s >> 32) as u32 == tag && key_at(Self::place(s)) == *digest {
                return (tag, Probe::Found(i));
            }
            i = (i + 1) & mask;
        }
    }

    /// The place of `digest`, if held. `key_at` gives the digest of the
    /// record at a place.
    pub(crate) fn get(&self, digest: &Digest, key_at: impl Fn(usize) -> Digest) -> Option<usize> {
        match self.probe(digest, &key_at).1 {
            Probe::Found(i) => Some(Self::place(self.slots[i])),
            Probe::Free(_) => None,
        }
    }

    /// Adds `digest` at `place` unless it is held: then returns its place
    /// and changes nothing.
    pub(crate) fn insert_new(
        &mut self,
        digest: &Digest,
        place: usize,
        key_at: impl Fn(usize) -> Digest,
    ) -> Option<usize> {
        self.reserve_one(&key_at);
        match self.probe(digest, &key_at) {
            (_, Probe::Found(i)) => Some(Self::place(self.slots[i])),
            (tag, Probe::Free(i)) => {
                self.slots[i] = Self::slot(tag, place);
                self.len += 1;
                None
            }
        }
    }

    /// Sets the place of `digest`, held or not.
    pub(crate) fn insert(
        &mut self,
        digest: &Digest,
        place: usize,
        key_at: impl Fn(usize) -> Digest,
    ) {
        self.reserve_one(&key_at);
        let (tag, Probe::Found(i) | Probe::Free(i)) = self.probe(digest, &key_at);
        if self.slots[i] == EMPTY {
            self.len += 1;
        }
        self.slots[i] = Self::slot(tag, place);
    }

    /// Hints the processor to fetch the slot where a probe for `digest`
    /// starts (a hint only: nothing is read or written).
    pub(crate) fn prefetch(&self, digest: &Digest) {
        let i = self.hash.hash_one(digest) as usize & (self.slots.len() - 1);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults and changes no memory; the
        // address is inside `slots` anyway.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.slots.as_ptr().add(i).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Every place held, in no particular order.
    pub(crate) fn places(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .filter(|&&s| s != EMPTY)
            .map(|&s| Self::place(s))
    }

    pub(crate) fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }

    /// Doubles the table when one more entry would fill over half of it
    /// (never on a presized tail's path: it rotates first).
    fn reserve_one(&mut self, key_at: &impl Fn(usize) -> Digest) {
        if self.len < self.capacity() {
            return;
        }
        let doubled = vec![EMPTY; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.slots.len() - 1;
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            let h = self.hash.hash_one(key_at(Self::place(s)));
            let mut i = h as usize & mask;
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(n: usize) -> Vec<Digest> {
        (0..n as u64)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect()
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else_through_growth() {
        let keys = digests(1000);
        let key_at = |p: usize| keys[p];
        // Small, so it grows several times on the way.
        let mut index = TailIndex::with_capacity(4);
        for (p, d) in keys.iter().enumerate().take(600) {
            assert_eq!(index.insert_new(d, p, key_at), None);
        }
        assert_eq!(index.len(), 600);
        assert!(index.capacity() >= 600);
        for (p, d) in keys.iter().enumerate() {
            let expect = (p < 600).then_some(p);
            assert_eq!(index.get(d, key_at), expect, "key {p}");
        }
        // Held already: its place stays.
        assert_eq!(index.insert_new(&keys[5], 999, key_at), Some(5));
        assert_eq!(index.get(&keys[5], key_at), Some(5));
        let mut places: Vec<usize> = index.places().collect();
        places.sort_unstable();
        assert_eq!(places, (0..600).collect::<Vec<_>>());
        index.clear();
        assert_eq!(index.len(), 0);
        assert_eq!(index.get(&keys[0], key_at), None);
    }

    #[test]
    fn touching_the_table_keeps_what_it_holds() {
        let keys = digests(3000);
        let key_at = |p: usize| keys[p];
        // Large enough for several pages of slots.
        let mut index = TailIndex::with_capacity(4096);
        index.touch();
        assert_eq!(index.len(), 0);
        assert_eq!(index.get(&keys[0], key_at), None);
        for (p, d) in keys.iter().enumerate() {
            index.insert_new(d, p, key_at);
        }
        index.touch();
        assert_eq!(index.len(), keys.len());
        for (p, d) in keys.iter().enumerate() {
            assert_eq!(index.get(d, key_at), Some(p), "key {p}");
        }
    }

    #[test]
    fn insert_replaces_the_place_of_a_held_digest() {
        // Two places whose records hold the same digest (a later receipt of
        // the same invocation), and another digest.
        let keys = [Digest::of(b"a"), Digest::of(b"a"), Digest::of(b"b")];
        let key_at = |p: usize| keys[p];
        let mut index = TailIndex::with_capacity(8);
        index.insert(&keys[0], 0, key_at);
        index.insert(&keys[2], 2, key_at);
        index.insert(&keys[1], 1, key_at);
        assert_eq!(index.len(), 2);
        assert_eq!(index.get(&keys[0], key_at), Some(1));
        assert_eq!(index.get(&keys[2], key_at), Some(2));
    }

    #[test]
    fn a_tag_match_is_confirmed_by_the_record() {
        // Every record claims to hold digest `a`: a lookup of `b` that
        // meets `a`'s slot (same tag only by chance) must not return it,
        // and here the tags differ anyway; the check is that `key_at`
        // decides, not the tag alone.
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let mut index = TailIndex::with_capacity(8);
        index.insert_new(&a, 0, |_| a);
        assert_eq!(index.get(&a, |_| a), Some(0));
        assert_eq!(index.get(&b, |_| a), None);
        // A record that no longer says `a` is not `a`'s.
        assert_eq!(index.get(&a, |_| b), None);
    }
}
