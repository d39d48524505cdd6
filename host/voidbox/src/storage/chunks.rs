//! Chunks: many small log records in one database value.
//!
//! Why: a checkpoint appends every receipt and every small blob of its
//! tail to a log in redb. As one row each, those inserts were a third of
//! the checkpoint thread's CPU (frame-pointer profile of `bare_threads ...
//! host` pinned to one CPU): a B-tree insert per few hundred bytes, a leaf
//! split every few inserts and the branch page above it rebuilt each time.
//! Packed into chunks of about [`CHUNK_BYTES`], a checkpoint inserts one
//! value per few dozen records.
//!
//! A record is found by its *position*: its chunk's key and its slot in
//! that chunk. Positions of chunked records have [`CHUNKED`] set, so an
//! index entry tells them apart from the one-row-per-record logs that
//! older databases hold (whose keys are small).
//!
//! ```text
//! chunk  = record*
//! record = header u32 (little-endian) | bytes
//! header = length of bytes, or REMOVED (no bytes follow)
//! ```
//!
//! A removed record (a blob that `cas rm` or GC took) keeps its slot as a
//! bare header, so the positions of the others do not move; a chunk whose
//! records are all removed stays as headers only, so its key is never
//! given to another chunk (index entries that named its records must find
//! nothing there, not another blob).
//!
//! This module is the pure part: positions and the byte format. It knows
//! nothing of redb or of what a record holds.

/// Set in every position of a chunked record.
pub(crate) const CHUNKED: u64 = 1 << 63;
/// Bits of a position that name the slot within the chunk.
const SLOT_BITS: u32 = 16;
/// Most records in one chunk: every slot must fit in [`SLOT_BITS`].
const SLOTS_MAX: usize = 1 << SLOT_BITS;
/// A chunk takes no more records once it holds this many bytes (a single
/// record larger than that has a chunk of its own). Small enough that a
/// lookup of one receipt reads little more than a few database pages;
/// large enough that the B-tree sees one insert per few dozen receipts.
pub(crate) const CHUNK_BYTES: usize = 16 << 10;
/// The header of a removed record.
const REMOVED: u32 = u32::MAX;

/// The position of `slot` in chunk `chunk`.
pub(crate) fn position(chunk: u64, slot: usize) -> u64 {
    debug_assert!(slot < SLOTS_MAX && chunk < (CHUNKED >> SLOT_BITS));
    CHUNKED | chunk << SLOT_BITS | slot as u64
}

/// A position's chunk and slot, or `None` for a row of an unchunked log.
pub(crate) fn split(position: u64) -> Option<(u64, usize)> {
    (position & CHUNKED != 0).then(|| {
        (
            (position & !CHUNKED) >> SLOT_BITS,
            (position & (SLOTS_MAX as u64 - 1)) as usize,
        )
    })
}

/// A position as people read it, for error messages.
pub(crate) fn describe(position: u64) -> String {
    match split(position) {
        Some((chunk, slot)) => format!("record {slot} of chunk {chunk}"),
        None => format!("row {position}"),
    }
}

/// Builds one chunk after another from records appended in order.
#[derive(Debug)]
pub(crate) struct Builder {
    next_chunk: u64,
    bytes: Vec<u8>,
    slots: usize,
}

impl Builder {
    /// A builder whose first chunk gets key `next_chunk`.
    pub(crate) fn new(next_chunk: u64) -> Builder {
        Builder {
            next_chunk,
            bytes: Vec::with_capacity(CHUNK_BYTES + 1024),
            slots: 0,
        }
    }

    /// Appends the record that `write` puts in the buffer it is given, and
    /// returns its position. When the record does not fit the open chunk,
    /// that chunk is closed first and handed to `full` with its key.
    pub(crate) fn push<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>),
        full: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        write(&mut self.bytes);
        let len = self.bytes.len() - start - 4;
        debug_assert!(len < REMOVED as usize);
        self.bytes[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        if self.slots > 0 && (self.bytes.len() > CHUNK_BYTES || self.slots == SLOTS_MAX) {
            // Close the chunk without the new record, then start the next
            // one with it.
            full(self.next_chunk, &self.bytes[..start])?;
            self.next_chunk += 1;
            self.bytes.drain(..start);
            self.slots = 0;
        }
        let at = position(self.next_chunk, self.slots);
        self.slots += 1;
        Ok(at)
    }

    /// Hands the open chunk, if it holds any record, to `full`, and returns
    /// the key the next chunk would get.
    pub(crate) fn finish<E>(
        mut self,
        full: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        if self.slots > 0 {
            full(self.next_chunk, &self.bytes)?;
            self.next_chunk += 1;
            self.bytes.clear();
        }
        Ok(self.next_chunk)
    }
}

/// Every record of a chunk in slot order: its bytes, or `None` where the
/// record was removed. A chunk that ends inside a record is corrupt.
pub(crate) fn records(chunk: &[u8]) -> impl Iterator<Item = Result<Option<&[u8]>, String>> {
    let mut rest = chunk;
    let mut slot = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((header, after)) = rest.split_first_chunk::<4>() else {
            rest = &[];
            return Some(Err(format!("record {slot} is cut off in its header")));
        };
        slot += 1;
        let len = u32::from_le_bytes(*header);
        if len == REMOVED {
            rest = after;
            return Some(Ok(None));
        }
        match after.split_at_checked(len as usize) {
            Some((bytes, after)) => {
                rest = after;
                Some(Ok(Some(bytes)))
            }
            None => {
                rest = &[];
                Some(Err(format!(
                    "record {} claims {len} bytes and only {} follow",
                    slot - 1,
                    after.len()
                )))
            }
        }
    })
}

/// The record in `slot`: its bytes, `None` if it was removed, an error if
/// the chunk has no such slot or is damaged before it.
pub(crate) fn get(chunk: &[u8], slot: usize) -> Result<Option<&[u8]>, String> {
    records(chunk)
        .nth(slot)
        .unwrap_or_else(|| Err(format!("it has no record {slot}")))
}

/// The chunk with the records in `slots` removed (a bare header each);
/// `removed` is shown each record that was there to remove.
pub(crate) fn without(
    chunk: &[u8],
    slots: &[usize],
    mut removed: impl FnMut(&[u8]),
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(chunk.len());
    for (slot, record) in records(chunk).enumerate() {
        match record? {
            Some(bytes) if !slots.contains(&slot) => {
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            gone => {
                gone.map(&mut removed);
                out.extend_from_slice(&REMOVED.to_le_bytes());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks by key.
    type Chunks = Vec<(u64, Vec<u8>)>;

    /// Builds chunks from `records` and returns them with every record's
    /// position and the next chunk's key.
    fn build(records: &[Vec<u8>]) -> (Chunks, Vec<u64>, u64) {
        let mut chunks = Vec::new();
        let mut full = |k: u64, b: &[u8]| {
            chunks.push((k, b.to_vec()));
            Ok::<(), ()>(())
        };
        let mut builder = Builder::new(7);
        let positions: Vec<u64> = records
            .iter()
            .map(|r| {
                builder
                    .push(|out| out.extend_from_slice(r), &mut full)
                    .unwrap()
            })
            .collect();
        let next = builder.finish(&mut full).unwrap();
        (chunks, positions, next)
    }

    fn lookup(chunks: &Chunks, position: u64) -> Option<Vec<u8>> {
        let (chunk, slot) = split(position).expect("a chunked position");
        let (_, bytes) = chunks.iter().find(|(k, _)| *k == chunk).expect("chunk");
        get(bytes, slot).unwrap().map(<[u8]>::to_vec)
    }

    #[test]
    fn every_record_is_found_at_its_position_across_chunks() {
        // Sizes around the chunk size, empty records and one larger than a
        // chunk, which gets a chunk of its own.
        let records: Vec<Vec<u8>> = (0..400usize)
            .map(|i| vec![i as u8; (i * 37) % 700])
            .chain([vec![9; CHUNK_BYTES * 2], vec![], vec![1, 2, 3]])
            .collect();
        let (chunks, positions, next) = build(&records);
        assert!(chunks.len() > 5, "several chunks: {}", chunks.len());
        assert_eq!(chunks.first().unwrap().0, 7);
        assert_eq!(next, 7 + chunks.len() as u64);
        for (k, bytes) in &chunks {
            let n = records_of(bytes);
            assert!(
                bytes.len() <= CHUNK_BYTES || n == 1,
                "chunk {k}: {} bytes in {n} records",
                bytes.len()
            );
        }
        for (r, &p) in records.iter().zip(&positions) {
            assert_eq!(lookup(&chunks, p).as_ref(), Some(r));
        }
        let mut distinct = positions.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), positions.len());
    }

    fn records_of(chunk: &[u8]) -> usize {
        records(chunk).count()
    }

    #[test]
    fn positions_tell_chunked_records_from_rows_of_older_logs() {
        assert_eq!(split(0), None);
        assert_eq!(split(123_456), None);
        assert_eq!(split(position(0, 0)), Some((0, 0)));
        assert_eq!(split(position(99, 65_535)), Some((99, 65_535)));
        assert_eq!(describe(5), "row 5");
        assert_eq!(describe(position(3, 4)), "record 4 of chunk 3");
    }

    #[test]
    fn removed_records_keep_the_slots_of_the_others() {
        let records: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; i as usize + 1]).collect();
        let (chunks, positions, _) = build(&records);
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0].1;
        let mut gone = Vec::new();
        let thinned = without(chunk, &[0, 4, 9], |r| gone.push(r.to_vec())).unwrap();
        assert_eq!(
            gone,
            [records[0].clone(), records[4].clone(), records[9].clone()]
        );
        for (i, (r, p)) in records.iter().zip(&positions).enumerate() {
            let (_, slot) = split(*p).unwrap();
            let got = get(&thinned, slot).unwrap();
            if [0, 4, 9].contains(&i) {
                assert_eq!(got, None, "record {i} removed");
            } else {
                assert_eq!(got, Some(&r[..]), "record {i} kept");
            }
        }
        // Removing again is harmless; removing the rest leaves every slot,
        // each empty.
        let again = without(&thinned, &[4], |_| panic!("nothing left to remove")).unwrap();
        assert_eq!(again, thinned);
        let empty = without(&thinned, &(0..10).collect::<Vec<_>>(), |_| {}).unwrap();
        assert_eq!(empty.len(), 10 * 4);
        assert!(super::records(&empty).all(|r| r == Ok(None)));
    }

    #[test]
    fn damaged_chunks_and_missing_slots_are_errors() {
        let (chunks, _, _) = build(&[b"abc".to_vec(), b"defg".to_vec()]);
        let chunk = &chunks[0].1;
        assert!(get(chunk, 2).unwrap_err().contains("no record 2"));
        // Cut inside the second record's bytes, then inside its header.
        let cut = &chunk[..chunk.len() - 1];
        assert_eq!(get(cut, 0).unwrap(), Some(&b"abc"[..]));
        assert!(get(cut, 1).unwrap_err().contains("claims 4 bytes"));
        assert!(get(&chunk[..9], 1).unwrap_err().contains("cut off"));
        assert!(without(cut, &[0], |_| {}).is_err());
    }
}
