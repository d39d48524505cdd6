//! The tail: records appended since the last checkpoint, in the journal's
//! encoding, with the indexes that readers consult before the database.

use voidbox_cas::Digest;

use super::tail_index::TailIndex;
use super::{journal, CHECKPOINT_BYTES};
use crate::invocation::{Invocation, Receipt};

/// Records not yet checkpointed into redb, by key. Readers look here
/// before the database.
#[derive(Default)]
pub(super) struct Tail {
    /// The records appended since the tail began (small blobs, and
    /// receipts with their invocations), encoded as the journal holds
    /// them, back to back. Bytes rather than objects: recording copies a
    /// few hundred bytes to the end of this buffer instead of allocating
    /// four objects per invocation that the checkpoint thread would free
    /// (a free from another thread is slow, and so is the fresh memory
    /// that replaces them: about 0.3 us per invocation, measured). The
    /// checkpoint copies records into the logs as they are; readers decode
    /// the one they ask for.
    pub(super) records: Vec<u8>,
    /// Small blobs: digest to where its record starts in `records`.
    pub(super) blobs: TailIndex,
    /// Every receipt recorded, in order. A list, not a table: recording
    /// appends to it, where two table inserts (by receipt and by
    /// invocation digest) each cost a cache miss on a random bucket of a
    /// table of tens of thousands of entries (about 0.3 us per invocation
    /// in all, measured). Only `receipt show` looks a receipt up by its
    /// digest: it scans, under the storage's lock, 48 bytes per entry
    /// (about 2.6 MiB for a full tail), which is cheap for a command and
    /// would want a table again if lookups by digest ever became hot.
    pub(super) recorded: Vec<Recorded>,
    /// Action-cache entries: invocation digest to its receipt's place in
    /// `recorded`.
    pub(super) cache: TailIndex,
}

/// Writes one element per 4 KiB page of `v`'s unused capacity, so that its
/// pages are mapped now (see [`Tail::fault_in`]); `v` stays as it was.
pub(super) fn touch_spare<T>(v: &mut Vec<T>) {
    let stride = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for slot in v.spare_capacity_mut().iter_mut().step_by(stride) {
        *slot = std::mem::MaybeUninit::zeroed();
    }
    // The writes must happen although nothing reads them.
    std::hint::black_box(v.spare_capacity_mut().as_ptr());
}

/// The digest of the blob record at `at` in `records` (a [`Tail::blobs`]
/// place).
pub(super) fn blob_key(records: &[u8], at: usize) -> Digest {
    journal::blob_digest_at(&records[at..])
}

/// The invocation digest of the receipt `i` of `recorded` (a
/// [`Tail::cache`] place).
pub(super) fn cache_key(records: &[u8], recorded: &[Recorded], i: usize) -> Digest {
    journal::OutcomeRecord::at(&records[recorded[i].at..])
        .0
        .invocation_digest
}

/// A receipt in a [`Tail`]. Its digest is kept inline so that a scan for
/// it reads the list in order instead of following a pointer per entry.
pub(super) struct Recorded {
    pub(super) digest: Digest,
    /// Where its outcome record starts in [`Tail::records`].
    pub(super) at: usize,
    /// Whether the receipt answers its invocation from the action cache
    /// (then `cache` maps the invocation to it, unless a later receipt of
    /// the same invocation in this tail took its place, which the index
    /// resolves the same way: the newest entry wins).
    pub(super) cacheable: bool,
}

impl Tail {
    /// A tail sized for a segment's worth of records, so that inserting
    /// under the lock never rehashes a large table.
    pub(super) fn presized() -> Tail {
        // About 600 bytes of journal per invocation (input, output, receipt).
        let n = (CHECKPOINT_BYTES / 600) as usize;
        Tail {
            // The journal's segment, and room for the records appended
            // while it is written and rotated.
            records: Vec::with_capacity((CHECKPOINT_BYTES + CHECKPOINT_BYTES / 4) as usize),
            blobs: TailIndex::with_capacity(2 * n),
            recorded: Vec::with_capacity(n),
            cache: TailIndex::with_capacity(n),
        }
    }

    /// Maps whatever of this tail's memory is not mapped yet; what it holds
    /// stays as it is, and on memory mapped already it is a write a page.
    /// About 45 MiB for a [`Tail::presized`] one, which the kernel would
    /// otherwise fault in page by page under the invocations that fill it
    /// (and where it backs them with 2 MiB pages, each first touch zeroes
    /// one, a millisecond or more on a slow machine, in the middle of an
    /// invocation). The flusher does this to the next tail, off the
    /// invoking threads; tails are recycled, so only the first few are
    /// fresh memory at all.
    pub(super) fn fault_in(&mut self) {
        touch_spare(&mut self.records);
        touch_spare(&mut self.recorded);
        self.blobs.touch();
        self.cache.touch();
    }

    /// Whether a quarter of the records' room is used: time for the
    /// flusher to have the next tail ready.
    pub(super) fn quarter_full(&self) -> bool {
        self.records.len() >= self.records.capacity() / 4
    }

    /// Appends an encoded outcome record ([`journal::put_outcome`]) of
    /// the receipt `digest`, for the invocation `invocation`.
    pub(super) fn push_outcome(
        &mut self,
        encoded: &[u8],
        digest: Digest,
        invocation: &Digest,
        cacheable: bool,
    ) {
        debug_assert_eq!(
            journal::OutcomeRecord::at(encoded).0.invocation_digest,
            *invocation
        );
        let at = self.records.len();
        self.records.extend_from_slice(encoded);
        self.recorded.push(Recorded {
            digest,
            at,
            cacheable,
        });
        if cacheable {
            let (records, recorded) = (&self.records, &self.recorded);
            self.cache.insert(invocation, recorded.len() - 1, |i| {
                cache_key(records, recorded, i)
            });
        }
    }

    /// Asks the processor to fetch the index slots that recording a run
    /// of `invocation` on the small blob `input` will write, so that the
    /// run overlaps their trips to memory.
    pub(super) fn prefetch_record(&self, invocation: &Digest, input: &Digest) {
        self.cache.prefetch(invocation);
        self.blobs.prefetch(input);
    }

    /// The outcome record of a receipt recorded here.
    pub(super) fn outcome(&self, r: &Recorded) -> journal::OutcomeRecord<'_> {
        journal::OutcomeRecord::at(&self.records[r.at..]).0
    }

    /// Appends a small blob's record unless this tail holds the blob, and
    /// returns the record if it was appended. One probe of the table (an
    /// entry), not a lookup and an insert.
    pub(super) fn push_blob(&mut self, digest: Digest, bytes: &[u8]) -> Option<&[u8]> {
        let at = self.records.len();
        let records = &self.records;
        // The place is taken before the record is written there: the
        // index reads only places it held before this call.
        if self
            .blobs
            .insert_new(&digest, at, |p| blob_key(records, p))
            .is_some()
        {
            return None;
        }
        journal::put_blob(&mut self.records, &digest, bytes);
        Some(&self.records[at..])
    }

    /// A small blob held here.
    pub(super) fn blob(&self, d: &Digest) -> Option<&[u8]> {
        let at = self.blobs.get(d, |p| blob_key(&self.records, p))?;
        Some(journal::blob_at(&self.records[at..]))
    }

    /// Whether a small blob is held here.
    pub(super) fn has_blob(&self, d: &Digest) -> bool {
        self.blobs.get(d, |p| blob_key(&self.records, p)).is_some()
    }

    /// Records held: blobs, receipts, invocations and cache entries.
    pub(super) fn records(&self) -> usize {
        self.blobs.len() + 2 * self.recorded.len() + self.cache.len()
    }

    /// A receipt recorded here, by its digest (a scan, newest first).
    pub(super) fn receipt(&self, d: &Digest) -> Option<journal::OutcomeRecord<'_>> {
        let r = self.recorded.iter().rev().find(|r| r.digest == *d)?;
        Some(self.outcome(r))
    }

    /// An invocation recorded here (a scan, newest first).
    pub(super) fn invocation(&self, d: &Digest) -> Option<Invocation> {
        self.recorded
            .iter()
            .rev()
            .map(|r| self.outcome(r))
            .find(|o| o.invocation_digest == *d)
            .map(|o| o.invocation())
    }

    /// The receipt that answers an invocation from the action cache.
    pub(super) fn cached(&self, invocation: &Digest) -> Option<Receipt> {
        let i = self
            .cache
            .get(invocation, |i| cache_key(&self.records, &self.recorded, i))?;
        Some(self.outcome(&self.recorded[i]).receipt())
    }

    pub(super) fn clear(&mut self) {
        self.blobs.clear();
        self.records.clear();
        self.recorded.clear();
        self.cache.clear();
    }

    /// Whether a table (or the list) is within an eighth of its capacity.
    /// The flusher then rotates, whatever the segment's size: a table that
    /// grows past its capacity is rehashed (the list copied) by the
    /// invoking thread that overflows it,
    /// under the storage lock (measured: 2.6% of the invoking thread's
    /// CPU in `invoke_loop`, where small records filled a 32 MiB segment
    /// with more invocations than the tail was sized for).
    pub(super) fn nearly_full(&self) -> bool {
        fn near(m: &TailIndex) -> bool {
            m.len() > 0 && m.len() >= m.capacity() - m.capacity() / 8
        }
        fn near_vec<T>(v: &Vec<T>) -> bool {
            !v.is_empty() && v.len() >= v.capacity() - v.capacity() / 8
        }
        near(&self.blobs)
            || near(&self.cache)
            || near_vec(&self.recorded)
            || near_vec(&self.records)
    }
}
