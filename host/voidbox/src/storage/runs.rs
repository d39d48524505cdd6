//! Sorted runs: the index from digests to positions in the storage's
//! append-only logs, kept the way a log-structured merge tree keeps it.
//!
//! Why: a checkpoint used to insert every invocation's digests into
//! random-keyed redb tables. Random keys spread over a B-tree's leaves, so
//! once a table outgrew a checkpoint, nearly every insert copied a whole
//! page, and every checkpoint rewrote a share of each table that grew with
//! the database. A checkpoint now sorts its entries once and writes them as
//! one new *run* of fixed-size blocks, appended; runs of similar size are
//! merged (eight at a time, [`MERGE_FANOUT`]), so an entry is rewritten
//! about log8(N) times in all, sequentially, at 41 bytes apiece.
//!
//! This module is the pure part: entries, blocks, fences and the merge.
//! It knows nothing of redb or the logs' contents; `storage` stores the
//! blocks and reads them back.

use std::cmp::Ordering;

/// What an entry's key names, and so which log its position is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A small blob: position in the blob log.
    Blob = 0,
    /// A receipt by its own digest: position in the receipt log.
    Receipt = 1,
    /// An invocation whose receipt answers it from the action cache:
    /// position of that receipt (and the invocation) in the receipt log.
    Cache = 2,
    /// An invocation whose receipt is not a cache answer (a timeout):
    /// position of the receipt that holds it in the receipt log.
    Invocation = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Blob,
            1 => Kind::Receipt,
            2 => Kind::Cache,
            3 => Kind::Invocation,
            _ => return None,
        })
    }
}

/// One index entry: a digest, what it names, and where that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: [u8; 32],
    pub(crate) kind: Kind,
    pub(crate) position: u64,
}

impl Entry {
    /// The entry as a block holds it.
    pub(crate) fn encoded(&self) -> Encoded {
        let mut out = [0; ENTRY_BYTES];
        out[..32].copy_from_slice(&self.key);
        out[32] = self.kind as u8;
        out[33..].copy_from_slice(&self.position.to_le_bytes());
        out
    }

    fn order(&self, other: &Entry) -> Ordering {
        (&self.key, self.kind).cmp(&(&other.key, other.kind))
    }
}

/// Bytes of one encoded entry: key, kind, little-endian position.
pub(crate) const ENTRY_BYTES: usize = 32 + 1 + 8;
/// Bytes of an entry that order it: key and kind.
const ORDER_BYTES: usize = 33;
/// Entries per block: with the 20 bytes a redb leaf adds, a block stays
/// just under four 4 KiB database pages. Larger blocks than one page: a
/// merge pays a B-tree insert for every block it writes and a delete for
/// every block it drops, about 7 and 5 us apiece, which with one-page
/// blocks was a third of its time; a lookup reads one block per run.
pub(crate) const BLOCK_ENTRIES: usize = 398;

/// One encoded entry.
pub(crate) type Encoded = [u8; ENTRY_BYTES];

/// Checks that `block` is a whole number of entries of known kinds.
fn check_block(block: &[u8]) -> Result<(), String> {
    if block.len() % ENTRY_BYTES != 0 {
        return Err(format!(
            "an index block of {} bytes is not a whole number of {ENTRY_BYTES}-byte entries",
            block.len()
        ));
    }
    match block
        .chunks_exact(ENTRY_BYTES)
        .find(|c| Kind::from_byte(c[32]).is_none())
    {
        Some(c) => Err(format!("an index entry has the unknown kind {}", c[32])),
        None => Ok(()),
    }
}

/// The entries of one block, in order. A block that is not a whole number
/// of entries, or holds an unknown kind, is corrupt.
pub(crate) fn decode_block(block: &[u8]) -> Result<Vec<Entry>, String> {
    check_block(block)?;
    Ok(block.chunks_exact(ENTRY_BYTES).map(decode).collect())
}

/// An entry of a checked block.
fn decode(c: &[u8]) -> Entry {
    Entry {
        key: c[..32].try_into().expect("32 bytes"),
        kind: Kind::from_byte(c[32]).expect("a checked block"),
        position: u64::from_le_bytes(c[33..].try_into().expect("8 bytes")),
    }
}

/// The entries of `block` whose key is `key` (at most one per kind),
/// found by binary search over the encoded entries.
pub(crate) fn search_block(block: &[u8], key: &[u8; 32]) -> Result<Vec<Entry>, String> {
    check_block(block)?;
    let n = block.len() / ENTRY_BYTES;
    let key_at = |i: usize| &block[i * ENTRY_BYTES..i * ENTRY_BYTES + 32];
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if key_at(mid) < &key[..] {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok((lo..n)
        .take_while(|&i| key_at(i) == key)
        .map(|i| decode(&block[i * ENTRY_BYTES..(i + 1) * ENTRY_BYTES]))
        .collect())
}

/// Sorts entries by key and kind; where one key and kind appear more than
/// once, the one with the highest position wins: the newest, since
/// positions in a log grow as records are added, and one key and kind
/// always point into one log.
pub(crate) fn sort_dedup(entries: &mut Vec<Entry>) {
    // Unstable (pdqsort) with the position as the last key, highest first,
    // and dedup keeps the first of equals: twice as fast as a stable sort
    // of the reversed list, which was a seventh of a checkpoint.
    // Prefixes first, as in the merge ([`key_prefix`]): 40,000 entries
    // sorted in 2.3 ms this way, in 4.1 with `memcmp` on whole keys.
    entries.sort_unstable_by(|a, b| {
        key_prefix(&a.key)
            .cmp(&key_prefix(&b.key))
            .then_with(|| a.order(b))
            .then(b.position.cmp(&a.position))
    });
    entries.dedup_by(|later, kept| later.order(kept) == Ordering::Equal);
}

/// What a run's reader must know without reading its blocks: how many
/// entries it has and the first key of each block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunMeta {
    pub(crate) entries: u64,
    pub(crate) fences: Vec<[u8; 32]>,
}

impl RunMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.fences.len());
        out.extend_from_slice(&self.entries.to_le_bytes());
        for f in &self.fences {
            out.extend_from_slice(f);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<RunMeta, String> {
        if bytes.len() < 8 || (bytes.len() - 8) % 32 != 0 {
            return Err(format!("index run metadata of {} bytes", bytes.len()));
        }
        Ok(RunMeta {
            entries: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            fences: bytes[8..]
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        })
    }

    pub(crate) fn blocks(&self) -> u32 {
        self.fences.len() as u32
    }

    /// The blocks that may hold entries with `key`: usually one, two when
    /// the key's entries straddle a block boundary.
    pub(crate) fn candidate_blocks(&self, key: &[u8; 32]) -> std::ops::Range<u32> {
        let end = self.fences.partition_point(|f| f <= key);
        let start = self.fences.partition_point(|f| f < key).saturating_sub(1);
        start as u32..(end as u32).max(start as u32)
    }
}

/// Builds a run from entries in order, one block at a time.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    block: Vec<u8>,
    in_block: usize,
    meta: RunMeta,
    last: Option<[u8; ORDER_BYTES]>,
}

impl Builder {
    /// Adds the next entry, encoded ([`Entry::encoded`], or as a merge
    /// hands it on); returns a block once it is full, with its number.
    /// Entries must come in (key, kind) order without repeats.
    pub(crate) fn push(&mut self, e: &Encoded) -> Option<(u32, Vec<u8>)> {
        let order: [u8; ORDER_BYTES] = e[..ORDER_BYTES].try_into().expect("33 bytes");
        if let Some(last) = &self.last {
            assert!(
                *last < order,
                "index entries must be pushed sorted and without repeats"
            );
        }
        self.last = Some(order);
        if self.in_block == 0 {
            self.meta.fences.push(e[..32].try_into().expect("32 bytes"));
            self.block.reserve(BLOCK_ENTRIES * ENTRY_BYTES);
        }
        self.block.extend_from_slice(e);
        self.in_block += 1;
        self.meta.entries += 1;
        if self.in_block == BLOCK_ENTRIES {
            return Some(self.take_block());
        }
        None
    }

    fn take_block(&mut self) -> (u32, Vec<u8>) {
        self.in_block = 0;
        (
            self.meta.fences.len() as u32 - 1,
            std::mem::take(&mut self.block),
        )
    }

    /// The last, partly filled block (if any) and the run's metadata.
    pub(crate) fn finish(mut self) -> (Option<(u32, Vec<u8>)>, RunMeta) {
        let last = (self.in_block > 0).then(|| self.take_block());
        (last, self.meta)
    }
}

/// One run being merged: its blocks, read one at a time through `read`
/// (block number, buffer to fill), so a merge never holds a whole run.
pub(crate) struct Cursor<R> {
    read: R,
    blocks: u32,
    next_block: u32,
    block: Vec<u8>,
    at: usize,
}

impl<R: FnMut(u32, &mut Vec<u8>) -> Result<(), String>> Cursor<R> {
    /// A cursor at the first entry of a run of `blocks` blocks.
    pub(crate) fn new(blocks: u32, read: R) -> Result<Cursor<R>, String> {
        let mut c = Cursor {
            read,
            blocks,
            next_block: 0,
            block: Vec::new(),
            at: 0,
        };
        c.load()?;
        Ok(c)
    }

    /// Reads blocks until one has an entry at `at`, or the run ends.
    fn load(&mut self) -> Result<(), String> {
        while self.at >= self.block.len() && self.next_block < self.blocks {
            self.block.clear();
            (self.read)(self.next_block, &mut self.block)?;
            check_block(&self.block)?;
            self.next_block += 1;
            self.at = 0;
        }
        Ok(())
    }

    fn head(&self) -> Option<&Encoded> {
        self.block
            .get(self.at..self.at + ENTRY_BYTES)
            .map(|e| e.try_into().expect("41 bytes"))
    }

    fn advance(&mut self) -> Result<(), String> {
        self.at += ENTRY_BYTES;
        self.load()
    }
}

/// The first eight bytes of a key (or of an encoded entry, which starts
/// with its key) as a number, which orders like them. Keys are digests,
/// uniform, so two nearly always differ there: comparing these first
/// settles most comparisons in one integer comparison instead of a call
/// to `memcmp` (a quarter of a merge's time).
fn key_prefix(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("8 bytes"))
}

/// Whether `a` comes before `b` by key and kind.
fn orders_before(a: &Encoded, b: &Encoded) -> bool {
    match key_prefix(a).cmp(&key_prefix(b)) {
        Ordering::Equal => a[8..ORDER_BYTES] < b[8..ORDER_BYTES],
        o => o == Ordering::Less,
    }
}

/// Merges runs given newest first, handing `out` each entry of the result
/// in order, still encoded; for each key and kind the newest run's entry
/// wins. A k-way merge over the encoded entries: it compares their first
/// 33 bytes in place, with no decoding and no allocation per entry (the
/// tree of two-way merges over decoded entries it replaced was 36% of a
/// merge's time).
pub(crate) fn merge<R: FnMut(u32, &mut Vec<u8>) -> Result<(), String>>(
    newest_first: &mut [Cursor<R>],
    mut out: impl FnMut(&Encoded) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        // The least head; among equals the first found, the newest run's.
        let mut least: Option<(usize, &Encoded)> = None;
        for (i, c) in newest_first.iter().enumerate() {
            if let Some(h) = c.head() {
                if least.is_none_or(|(_, l)| orders_before(h, l)) {
                    least = Some((i, h));
                }
            }
        }
        let Some((_, &entry)) = least else {
            return Ok(());
        };
        out(&entry)?;
        // Every run's copy of this key and kind is consumed; older ones lose.
        for c in newest_first.iter_mut() {
            if c.head()
                .is_some_and(|h| h[..ORDER_BYTES] == entry[..ORDER_BYTES])
            {
                c.advance()?;
            }
        }
    }
}

/// How many runs merge into one at a time: the newest runs of one size
/// tier merge once there are this many. A binary counter (2) rewrites an
/// entry about log2(N) times in its life; 8 makes that log8(N), a third of
/// it, for a lookup that may read up to seven runs per tier instead of one
/// (a block of each: digests are uniform, so every run's range covers
/// them). Merging was half of the checkpoint thread's CPU with 2 and a
/// third with 4 (frame-pointer profiles of `bare_threads ... host`); with
/// 8 that thread's CPU per invocation was lower in four of five 20-s runs
/// alternated with 4 (mean 6.32 → 5.84 µs), and more so the longer a host
/// runs, since the depth it saves grows with the database. Lookups of the
/// runs are rare: the journal's tail and the action-cache filter answer
/// most questions.
pub(crate) const MERGE_FANOUT: usize = 8;

/// How many of the newest runs to merge into one, given every run's size
/// from oldest to newest (0: none). The newest runs no larger than twice
/// the newest one form its tier; once it holds [`MERGE_FANOUT`] runs, the
/// whole tier merges. With checkpoints of similar size this counts in base
/// [`MERGE_FANOUT`]: an entry is rewritten about log8(N) times.
pub(crate) fn merge_due(sizes: &[u64]) -> usize {
    let Some(&newest) = sizes.last() else {
        return 0;
    };
    let tier = sizes
        .iter()
        .rev()
        .take_while(|&&n| n <= newest.saturating_mul(2))
        .count();
    if tier >= MERGE_FANOUT {
        tier
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: u8, kind: Kind, position: u64) -> Entry {
        let mut key = [0u8; 32];
        key[0] = k;
        Entry {
            key,
            kind,
            position,
        }
    }

    fn build(entries: &[Entry]) -> (Vec<Vec<u8>>, RunMeta) {
        let mut b = Builder::default();
        let mut blocks = Vec::new();
        for &x in entries {
            if let Some((n, block)) = b.push(&x.encoded()) {
                assert_eq!(n as usize, blocks.len());
                blocks.push(block);
            }
        }
        let (last, meta) = b.finish();
        if let Some((n, block)) = last {
            assert_eq!(n as usize, blocks.len());
            blocks.push(block);
        }
        (blocks, meta)
    }

    fn find(blocks: &[Vec<u8>], meta: &RunMeta, key: &[u8; 32]) -> Vec<Entry> {
        meta.candidate_blocks(key)
            .flat_map(|b| search_block(&blocks[b as usize], key).unwrap())
            .collect()
    }

    #[test]
    fn the_newest_of_a_key_and_kind_wins() {
        let mut v = vec![
            e(5, Kind::Blob, 1),
            e(3, Kind::Receipt, 2),
            e(5, Kind::Blob, 3),
            e(5, Kind::Cache, 4),
            e(5, Kind::Blob, 2),
            e(3, Kind::Receipt, 9),
            e(3, Kind::Receipt, 7),
        ];
        sort_dedup(&mut v);
        assert_eq!(
            v,
            vec![
                e(3, Kind::Receipt, 9),
                e(5, Kind::Blob, 3),
                e(5, Kind::Cache, 4)
            ]
        );
    }

    #[test]
    fn keys_that_share_their_first_eight_bytes_are_ordered_by_the_rest() {
        // The sort compares the first eight bytes as a number before the
        // whole key: keys alike there must still come out in byte order,
        // and keys that differ there must not be reordered by later bytes.
        let mut v = Vec::new();
        for (i, (head, tail)) in [(7u8, 200u8), (7, 3), (7, 3), (9, 0), (1, 255), (7, 100)]
            .into_iter()
            .enumerate()
        {
            let mut key = [0u8; 32];
            key[7] = head;
            key[31] = tail;
            v.push(Entry {
                key,
                kind: Kind::Blob,
                position: i as u64,
            });
        }
        let mut want = v.clone();
        want.sort_by(|a, b| a.key.cmp(&b.key).then(b.position.cmp(&a.position)));
        want.dedup_by(|later, kept| later.key == kept.key);
        sort_dedup(&mut v);
        assert_eq!(v, want);
        let tails: Vec<(u8, u8, u64)> = v
            .iter()
            .map(|e| (e.key[7], e.key[31], e.position))
            .collect();
        assert_eq!(
            tails,
            [(1, 255, 4), (7, 3, 2), (7, 100, 5), (7, 200, 0), (9, 0, 3)]
        );
    }

    #[test]
    fn the_order_of_encoded_entries_is_that_of_key_then_kind() {
        // Keys that differ in their first byte, past their first 8 bytes,
        // only in their last byte, and not at all (then the kind decides).
        let mut keys: Vec<[u8; 32]> = vec![[0; 32], [1; 32], [0xff; 32]];
        for at in [0, 7, 8, 20, 31] {
            let mut k = [0x40; 32];
            keys.push(k);
            k[at] = 0x41;
            keys.push(k);
        }
        let entries: Vec<Entry> = keys
            .iter()
            .flat_map(|&key| {
                [Kind::Blob, Kind::Cache].map(|kind| Entry {
                    key,
                    kind,
                    position: 0,
                })
            })
            .collect();
        for a in &entries {
            for b in &entries {
                assert_eq!(
                    orders_before(&a.encoded(), &b.encoded()),
                    a.order(b) == Ordering::Less,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    /// A key made of a 16-bit number, for runs of several blocks.
    fn key16(k: u16) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..2].copy_from_slice(&k.to_be_bytes());
        key
    }

    fn e16(k: u16, kind: Kind, position: u64) -> Entry {
        Entry {
            key: key16(k),
            kind,
            position,
        }
    }

    #[test]
    fn every_entry_is_found_across_many_blocks_and_absent_keys_are_not() {
        // A lone first entry, then keys 2, 4, 6, ... with two kinds each,
        // so some keys straddle a block boundary.
        let mut v = vec![e16(0, Kind::Blob, 0)];
        for k in 1..=500u16 {
            v.push(e16(k * 2, Kind::Receipt, k as u64));
            v.push(e16(k * 2, Kind::Cache, 1000 + k as u64));
        }
        sort_dedup(&mut v);
        let (blocks, meta) = build(&v);
        assert_eq!(meta.entries, 1001);
        assert_eq!(blocks.len(), 1001usize.div_ceil(BLOCK_ENTRIES));
        const { assert!(BLOCK_ENTRIES % 2 == 0, "a pair straddles a boundary") };
        assert_eq!(find(&blocks, &meta, &key16(0)), vec![e16(0, Kind::Blob, 0)]);
        for k in 1..=500u16 {
            let found = find(&blocks, &meta, &key16(k * 2));
            assert_eq!(
                found,
                vec![
                    e16(k * 2, Kind::Receipt, k as u64),
                    e16(k * 2, Kind::Cache, 1000 + k as u64)
                ],
                "key {}",
                k * 2
            );
            assert!(find(&blocks, &meta, &key16(k * 2 + 1)).is_empty());
        }
        let mut above = [0xffu8; 32];
        assert!(find(&blocks, &meta, &above).is_empty());
        above = [0u8; 32];
        above[31] = 1;
        assert!(find(&blocks, &meta, &above).is_empty());
    }

    #[test]
    fn merging_keeps_everything_once_and_the_newer_entry_of_a_clash() {
        let older = vec![
            e(1, Kind::Blob, 1),
            e(3, Kind::Blob, 2),
            e(5, Kind::Blob, 3),
        ];
        let newer = vec![
            e(2, Kind::Blob, 10),
            e(3, Kind::Blob, 11),
            e(6, Kind::Blob, 12),
        ];
        assert_eq!(
            merge_oldest_first(&[older, newer]),
            vec![
                e(1, Kind::Blob, 1),
                e(2, Kind::Blob, 10),
                e(3, Kind::Blob, 11),
                e(5, Kind::Blob, 3),
                e(6, Kind::Blob, 12)
            ]
        );
    }

    #[test]
    fn read_errors_and_damaged_blocks_in_a_merge_are_passed_on() {
        let (blocks, meta) = build(&(0..200u8).map(|k| e(k, Kind::Blob, 1)).collect::<Vec<_>>());
        assert!(meta.blocks() >= 1);
        let fail_at = |bad: u32, damage: bool| {
            let blocks = blocks.clone();
            Cursor::new(meta.blocks() + 1, move |b, out: &mut Vec<u8>| {
                if b == bad && !damage {
                    return Err("disk".to_string());
                }
                match blocks.get(b as usize) {
                    Some(block) => out.extend_from_slice(block),
                    None => out.extend_from_slice(&[7; ENTRY_BYTES]),
                }
                if b == bad {
                    out.pop();
                }
                Ok(())
            })
        };
        // An error reading the first block, or a later one, and a block
        // cut short or holding an unknown kind.
        assert_eq!(fail_at(0, false).err(), Some("disk".to_string()));
        let bad = meta.blocks();
        for (damage, needle) in [(false, "disk"), (true, "whole number")] {
            let mut cursors = vec![fail_at(bad, damage).unwrap()];
            let mut seen = 0;
            let err = merge(&mut cursors, |_| {
                seen += 1;
                Ok(())
            })
            .unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(seen > 0 && seen <= 200, "{seen}");
        }
        let mut cursors = vec![fail_at(u32::MAX, false).unwrap()];
        let err = merge(&mut cursors, |_| Ok(())).unwrap_err();
        assert!(err.contains("unknown kind 7"), "{err}");
        // And an error from the consumer stops the merge.
        let mut cursors = vec![fail_at(u32::MAX, false).unwrap()];
        assert_eq!(
            merge(&mut cursors, |_| Err("full".to_string())),
            Err("full".to_string())
        );
    }

    #[test]
    fn blocks_and_metadata_reject_damage() {
        let (blocks, meta) = build(&[e(1, Kind::Blob, 1)]);
        assert!(decode_block(&blocks[0][..40]).is_err());
        let mut bad_kind = blocks[0].clone();
        bad_kind[32] = 9;
        assert!(decode_block(&bad_kind).is_err());
        assert_eq!(RunMeta::decode(&meta.encode()).unwrap(), meta);
        assert!(RunMeta::decode(&meta.encode()[..20]).is_err());
    }

    #[test]
    fn a_tier_of_fanout_runs_of_about_one_size_merges() {
        let f = MERGE_FANOUT;
        // Checkpoints of slightly different sizes.
        let varied =
            |n: usize| -> Vec<u64> { [12, 9, 11, 10].into_iter().cycle().take(n).collect() };
        let with = |head: &[u64], tail: Vec<u64>| -> Vec<u64> { [head, &tail[..]].concat() };
        assert_eq!(merge_due(&[]), 0);
        assert_eq!(merge_due(&[10]), 0);
        assert_eq!(merge_due(&vec![10; f - 1]), 0);
        assert_eq!(merge_due(&vec![10; f]), f);
        // Sizes vary between checkpoints; twice the newest is one tier.
        assert_eq!(merge_due(&varied(f)), f);
        assert_eq!(merge_due(&with(&[40], varied(f))), f);
        assert_eq!(merge_due(&with(&[40], vec![10; f - 1])), 0);
        // A small newest run (a checkpoint at close) waits for its tier.
        assert_eq!(merge_due(&with(&vec![10; f - 1], vec![3])), 0);
        assert_eq!(merge_due(&with(&vec![10; f - 1], vec![3, 10])), f + 1);
        // Repeated merges count in base MERGE_FANOUT and stop.
        let mut sizes: Vec<u64> = Vec::new();
        for checkpoint in 0..73 {
            sizes.push(1 + checkpoint % 2);
            loop {
                let k = merge_due(&sizes);
                if k == 0 {
                    break;
                }
                let merged = sizes.split_off(sizes.len() - k).iter().sum();
                sizes.push(merged);
            }
        }
        // Checkpoints of 1 and 2 entries alternate: 73 of them, 109
        // entries; in base 8, 73 = 64 + 8 + 1 checkpoints.
        assert_eq!(f, 8, "the expected runs below are counted in base 8");
        assert_eq!(sizes, [96, 12, 1]);
    }

    /// Merges runs given oldest first: builds each into blocks, and hands
    /// their cursors to `merge` newest first as storage does.
    fn merge_oldest_first(runs: &[Vec<Entry>]) -> Vec<Entry> {
        let built: Vec<(Vec<Vec<u8>>, RunMeta)> = runs.iter().map(|r| build(r)).collect();
        let mut cursors: Vec<_> = built
            .iter()
            .rev()
            .map(|(blocks, meta)| {
                Cursor::new(meta.blocks(), move |b, out: &mut Vec<u8>| {
                    out.extend_from_slice(&blocks[b as usize]);
                    Ok(())
                })
                .unwrap()
            })
            .collect();
        let mut merged = Builder::default();
        let mut out = Vec::new();
        merge(&mut cursors, |x| {
            out.push(decode(x));
            merged.push(x);
            Ok(())
        })
        .unwrap();
        assert_eq!(merged.finish().1.entries, out.len() as u64);
        out
    }

    #[test]
    fn merging_many_runs_keeps_the_newest_entry_of_each_key() {
        let runs = [
            vec![e(1, Kind::Blob, 1), e(3, Kind::Blob, 1)],
            vec![e(1, Kind::Blob, 2), e(2, Kind::Receipt, 2)],
            vec![e(2, Kind::Receipt, 3), e(4, Kind::Cache, 3)],
        ];
        assert_eq!(
            merge_oldest_first(&runs),
            vec![
                e(1, Kind::Blob, 2),
                e(2, Kind::Receipt, 3),
                e(3, Kind::Blob, 1),
                e(4, Kind::Cache, 3)
            ]
        );
    }

    #[test]
    fn merging_every_run_count_up_to_the_fanout_matches_newest_wins() {
        // Run r (0 = oldest) holds key k when k % (r + 2) == 0 or k == r,
        // with its own number as the position, so keys overlap across runs
        // in every pattern, and the larger runs span several blocks.
        for count in 1..=MERGE_FANOUT + 1 {
            let runs: Vec<Vec<Entry>> = (0..count as u16)
                .map(|r| {
                    (0..1500u16)
                        .filter(|&k| k % (r + 2) == 0 || k == r)
                        .map(|k| e16(k, Kind::Blob, r as u64))
                        .collect()
                })
                .collect();
            let mut expected = std::collections::BTreeMap::new();
            for run in &runs {
                for entry in run {
                    expected.insert(entry.key, *entry);
                }
            }
            assert_eq!(
                merge_oldest_first(&runs),
                expected.into_values().collect::<Vec<_>>(),
                "{count} runs"
            );
        }
    }

    #[test]
    #[should_panic(expected = "sorted")]
    fn unsorted_entries_are_a_bug() {
        let mut b = Builder::default();
        b.push(&e(2, Kind::Blob, 1).encoded());
        b.push(&e(1, Kind::Blob, 1).encoded());
    }
}
