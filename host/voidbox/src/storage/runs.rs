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
    fn order(&self, other: &Entry) -> Ordering {
        (&self.key, self.kind).cmp(&(&other.key, other.kind))
    }
}

/// Bytes of one encoded entry: key, kind, little-endian position.
pub(crate) const ENTRY_BYTES: usize = 32 + 1 + 8;
/// Entries per block: a block stays just under a 4 KiB database page.
pub(crate) const BLOCK_ENTRIES: usize = 99;

fn encode(e: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.key);
    out.push(e.kind as u8);
    out.extend_from_slice(&e.position.to_le_bytes());
}

/// The entries of one block, in order. A block that is not a whole number
/// of entries, or holds an unknown kind, is corrupt.
pub(crate) fn decode_block(block: &[u8]) -> Result<Vec<Entry>, String> {
    if block.len() % ENTRY_BYTES != 0 {
        return Err(format!(
            "an index block of {} bytes is not a whole number of {ENTRY_BYTES}-byte entries",
            block.len()
        ));
    }
    block
        .chunks_exact(ENTRY_BYTES)
        .map(|c| {
            let kind = Kind::from_byte(c[32])
                .ok_or_else(|| format!("an index entry has the unknown kind {}", c[32]))?;
            Ok(Entry {
                key: c[..32].try_into().expect("32 bytes"),
                kind,
                position: u64::from_le_bytes(c[33..].try_into().expect("8 bytes")),
            })
        })
        .collect()
}

/// The entries of `block` whose key is `key` (at most one per kind).
pub(crate) fn search_block(block: &[u8], key: &[u8; 32]) -> Result<Vec<Entry>, String> {
    let entries = decode_block(block)?;
    let start = entries.partition_point(|e| e.key < *key);
    Ok(entries[start..]
        .iter()
        .take_while(|e| e.key == *key)
        .copied()
        .collect())
}

/// Sorts entries by key and kind; where one key and kind appear more than
/// once, the one added last wins.
pub(crate) fn sort_dedup(entries: &mut Vec<Entry>) {
    // Reversed, a stable sort puts the last-added first among equals, and
    // dedup keeps the first.
    entries.reverse();
    entries.sort_by(Entry::order);
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
    last: Option<Entry>,
}

impl Builder {
    /// Adds the next entry; returns a block once it is full, with its
    /// number. Entries must come in (key, kind) order without repeats.
    pub(crate) fn push(&mut self, e: Entry) -> Option<(u32, Vec<u8>)> {
        if let Some(last) = &self.last {
            assert_eq!(
                last.order(&e),
                Ordering::Less,
                "index entries must be pushed sorted and without repeats"
            );
        }
        self.last = Some(e);
        if self.in_block == 0 {
            self.meta.fences.push(e.key);
            self.block.reserve(BLOCK_ENTRIES * ENTRY_BYTES);
        }
        encode(&e, &mut self.block);
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

/// Merges two sorted entry streams into one; where both hold the same key
/// and kind, the newer stream's entry wins.
pub(crate) struct Merge<A: Iterator, B: Iterator> {
    newer: std::iter::Peekable<A>,
    older: std::iter::Peekable<B>,
}

impl<A, B> Merge<A, B>
where
    A: Iterator<Item = Result<Entry, String>>,
    B: Iterator<Item = Result<Entry, String>>,
{
    pub(crate) fn new(newer: A, older: B) -> Merge<A, B> {
        Merge {
            newer: newer.peekable(),
            older: older.peekable(),
        }
    }
}

impl<A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = Result<Entry, String>>,
    B: Iterator<Item = Result<Entry, String>>,
{
    type Item = Result<Entry, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.newer.peek(), self.older.peek()) {
            (None, None) => return None,
            (Some(Err(_)), _) | (Some(_), None) => Ordering::Less,
            (_, Some(Err(_))) | (None, Some(_)) => Ordering::Greater,
            (Some(Ok(n)), Some(Ok(o))) => n.order(o),
        };
        match order {
            Ordering::Less => self.newer.next(),
            Ordering::Greater => self.older.next(),
            Ordering::Equal => {
                self.older.next();
                self.newer.next()
            }
        }
    }
}

/// A stream of entries of one run, in order.
pub(crate) type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, String>> + 'a>;

/// Merges runs given newest first into one sorted stream in which, for
/// each key and kind, the newest run's entry wins.
///
/// The two-way merges form a balanced tree, so every entry passes through
/// log2(k) of them; a chain would pass the oldest run's entries through
/// k - 1 (4.4 on average for eight runs of one size, against 3).
pub(crate) fn merge_all(mut newest_first: Vec<Entries<'_>>) -> Entries<'_> {
    match newest_first.len() {
        0 => Box::new(std::iter::empty()),
        1 => newest_first.pop().expect("one run"),
        n => {
            let older = newest_first.split_off(n / 2);
            Box::new(Merge::new(merge_all(newest_first), merge_all(older)))
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
            if let Some((n, block)) = b.push(x) {
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
    fn the_last_added_of_a_key_and_kind_wins() {
        let mut v = vec![
            e(5, Kind::Blob, 1),
            e(3, Kind::Receipt, 2),
            e(5, Kind::Blob, 3),
            e(5, Kind::Cache, 4),
        ];
        sort_dedup(&mut v);
        assert_eq!(
            v,
            vec![
                e(3, Kind::Receipt, 2),
                e(5, Kind::Blob, 3),
                e(5, Kind::Cache, 4)
            ]
        );
    }

    #[test]
    fn every_entry_is_found_across_many_blocks_and_absent_keys_are_not() {
        // Keys 0, 2, 4, ... with two kinds each, so some keys straddle a
        // block boundary (99 entries per block is odd).
        let mut v = Vec::new();
        for k in 0..120u8 {
            v.push(e(k * 2, Kind::Receipt, k as u64));
            v.push(e(k * 2, Kind::Cache, 1000 + k as u64));
        }
        sort_dedup(&mut v);
        let (blocks, meta) = build(&v);
        assert_eq!(meta.entries, 240);
        assert_eq!(blocks.len(), 3);
        for k in 0..120u8 {
            let found = find(&blocks, &meta, &e(k * 2, Kind::Blob, 0).key);
            assert_eq!(
                found,
                vec![
                    e(k * 2, Kind::Receipt, k as u64),
                    e(k * 2, Kind::Cache, 1000 + k as u64)
                ],
                "key {}",
                k * 2
            );
            assert!(find(&blocks, &meta, &e(k * 2 + 1, Kind::Blob, 0).key).is_empty());
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
        let merged: Vec<Entry> = Merge::new(newer.into_iter().map(Ok), older.into_iter().map(Ok))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            merged,
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
    fn a_read_error_in_a_merge_is_passed_on() {
        let older = vec![Ok(e(1, Kind::Blob, 1)), Err("disk".to_string())];
        let newer = vec![Ok(e(2, Kind::Blob, 2))];
        let merged: Result<Vec<Entry>, String> =
            Merge::new(newer.into_iter(), older.into_iter()).collect();
        assert_eq!(merged, Err("disk".to_string()));
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

    /// Merges runs given oldest first, handing them to `merge_all` newest
    /// first as storage does.
    fn merge_oldest_first(runs: &[Vec<Entry>]) -> Vec<Entry> {
        merge_all(
            runs.iter()
                .rev()
                .map(|r| Box::new(r.clone().into_iter().map(Ok)) as Entries<'_>)
                .collect(),
        )
        .map(Result::unwrap)
        .collect()
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
        // with its own number as the sequence, so keys overlap across runs
        // in every pattern the merge tree's shape could get wrong.
        for count in 1..=MERGE_FANOUT + 1 {
            let runs: Vec<Vec<Entry>> = (0..count)
                .map(|r| {
                    (0..40u8)
                        .filter(|&k| k % (r as u8 + 2) == 0 || k == r as u8)
                        .map(|k| e(k, Kind::Blob, r as u64))
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
        b.push(e(2, Kind::Blob, 1));
        b.push(e(1, Kind::Blob, 1));
    }
}
