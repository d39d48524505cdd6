//! The write-ahead journal: the hot path's storage format.
//!
//! Every invocation writes a few small records (its input and output when
//! they are small, its receipt, its action-cache entry). Inserting those
//! into B-trees keyed by digests scatters each commit over the whole tree,
//! so the hot path appends them to one file instead, and the B-trees are
//! updated later, in large sorted batches (a *checkpoint*, see `storage`).
//!
//! The file is a sequence of frames, one per group commit:
//!
//! ```text
//! frame   = magic "VBJ1" | payload length u32 | blake3(payload)[..16] | payload
//! payload = record*
//! record  = 1 | digest[32] | length u32 | bytes                  a small blob
//!         | 2 | invocation digest[32] | cacheable u8
//!             | length u32 | invocation | length u32 | receipt   an outcome
//! ```
//!
//! All integers are little-endian. A frame is checked as a whole, so a
//! group commit is the unit of durability: replay stops at the first frame
//! that is short or does not match its hash (a write torn by a crash) and
//! the file is cut there. Because records are replayed strictly in order,
//! a receipt that survives always comes with the blobs appended before it.
//!
//! This module knows the byte formats only; it does no I/O of its own
//! besides reading a whole journal for replay.

use voidbox_cas::Digest;

use crate::codec::{
    decode_invocation, decode_receipt_fields, encode_invocation, encode_receipt, patch_len,
    put_len, Reader,
};
use crate::invocation::{Invocation, Receipt};

const MAGIC: &[u8; 4] = b"VBJ1";
/// Bytes before a frame's payload.
pub(crate) const FRAME_HEADER_BYTES: usize = 4 + 4 + 16;
/// The largest payload one frame may carry; a length above this is a torn
/// or foreign frame, not a reason to allocate.
pub(crate) const FRAME_PAYLOAD_BYTES_MAX: usize = 1 << 30;

const TAG_BLOB: u8 = 1;
const TAG_OUTCOME: u8 = 2;

/// One decoded record.
#[derive(Debug)]
pub(crate) enum Record {
    Blob(Digest, Vec<u8>),
    Outcome {
        invocation_digest: Digest,
        cacheable: bool,
        invocation: Box<Invocation>,
        receipt: Box<Receipt>,
    },
}

/// Appends a small blob record.
pub(crate) fn put_blob(out: &mut Vec<u8>, digest: &Digest, bytes: &[u8]) {
    out.push(TAG_BLOB);
    out.extend_from_slice(digest.as_bytes());
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// The digest of the blob record ([`put_blob`]) at the start of `bytes`.
/// Only for bytes this process encoded.
pub(crate) fn blob_digest_at(bytes: &[u8]) -> Digest {
    debug_assert_eq!(bytes[0], TAG_BLOB);
    Digest(
        bytes[1..33]
            .try_into()
            .expect("a blob record this process encoded"),
    )
}

/// The content of the blob record ([`put_blob`]) at the start of `bytes`.
/// Only for bytes this process encoded: anything else panics.
pub(crate) fn blob_at(bytes: &[u8]) -> &[u8] {
    let parse = || -> Result<&[u8], String> {
        let mut r = Reader(bytes);
        if r.u8()? != TAG_BLOB {
            return Err("not a blob record".into());
        }
        r.digest()?;
        let n = r.len()?;
        r.take(n)
    };
    parse().expect("a blob record this process encoded")
}

/// Appends an outcome record.
pub(crate) fn put_outcome(
    out: &mut Vec<u8>,
    invocation_digest: &Digest,
    cacheable: bool,
    invocation: &Invocation,
    receipt: &Receipt,
) {
    out.push(TAG_OUTCOME);
    out.extend_from_slice(invocation_digest.as_bytes());
    out.push(u8::from(cacheable));
    let at = out.len();
    put_len(out, 0);
    encode_invocation(out, invocation);
    patch_len(out, at);
    let at = out.len();
    put_len(out, 0);
    encode_receipt(out, receipt);
    patch_len(out, at);
}

/// Sets the timestamp of the outcome record that `encoded` ends with
/// ([`put_outcome`]): the receipt is the record's last part, and its last
/// fields are the timestamp, the cache flag and the duration
/// ([`encode_receipt`]).
pub(crate) fn set_outcome_timestamp(encoded: &mut [u8], timestamp: u64) {
    const AFTER: usize = 1 + 8; // cached, duration_us
    let end = encoded.len() - AFTER;
    encoded[end - 8..end].copy_from_slice(&timestamp.to_le_bytes());
}

/// The first byte of a receipt or invocation stored in redb in this
/// module's binary encoding (JSON, the older format, starts with `{`).
const VALUE_V1: u8 = 1;

/// A receipt as a redb value, as the first versions wrote it (tests write
/// such databases; values are now written with their invocation).
#[cfg(test)]
pub(crate) fn put_receipt_value(out: &mut Vec<u8>, r: &Receipt) {
    out.push(VALUE_V1);
    encode_receipt(out, r);
}

/// An invocation as a redb value, as the first versions wrote it.
#[cfg(test)]
pub(crate) fn put_invocation_value(out: &mut Vec<u8>, i: &Invocation) {
    out.push(VALUE_V1);
    encode_invocation(out, i);
}

/// The first byte of a receipt stored together with its invocation.
const VALUE_WITH_INVOCATION: u8 = 2;

/// A receipt and its invocation as one redb value, encoded from the
/// objects. The checkpoint copies the same bytes from a tail's records
/// ([`OutcomeRecord::put_value`]); this is what tests compare them with.
#[cfg(test)]
pub(crate) fn put_receipt_with_invocation(out: &mut Vec<u8>, r: &Receipt, i: &Invocation) {
    out.push(VALUE_WITH_INVOCATION);
    let at = out.len();
    put_len(out, 0);
    encode_receipt(out, r);
    patch_len(out, at);
    encode_invocation(out, i);
}

/// An outcome record ([`put_outcome`]) that this process encoded and keeps
/// in memory (a journal tail), read back without decoding it whole.
#[derive(Clone, Copy)]
pub(crate) struct OutcomeRecord<'a> {
    pub invocation_digest: Digest,
    invocation: &'a [u8],
    receipt: &'a [u8],
}

impl<'a> OutcomeRecord<'a> {
    /// The record at the start of `bytes`, and how long it is. Only for
    /// bytes [`put_outcome`] wrote in this process: anything else panics.
    pub(crate) fn at(bytes: &'a [u8]) -> (OutcomeRecord<'a>, usize) {
        let parse = || -> Result<(OutcomeRecord<'a>, usize), String> {
            let mut r = Reader(bytes);
            if r.u8()? != TAG_OUTCOME {
                return Err("not an outcome record".into());
            }
            let invocation_digest = r.digest()?;
            r.u8()?;
            let n = r.len()?;
            let invocation = r.take(n)?;
            let n = r.len()?;
            let receipt = r.take(n)?;
            let len = bytes.len() - r.0.len();
            Ok((
                OutcomeRecord {
                    invocation_digest,
                    invocation,
                    receipt,
                },
                len,
            ))
        };
        parse().expect("an outcome record this process encoded")
    }

    /// The receipt, without checking its digest (it was computed here).
    pub(crate) fn receipt(&self) -> Receipt {
        decode_receipt_fields(self.receipt).expect("a receipt this process encoded")
    }

    pub(crate) fn invocation(&self) -> Invocation {
        decode_invocation(self.invocation).expect("an invocation this process encoded")
    }

    /// Appends the receipt log's value for this record: the bytes
    /// `put_receipt_with_invocation` (in tests) writes, copied rather than encoded
    /// again.
    pub(crate) fn put_value(&self, out: &mut Vec<u8>) {
        out.push(VALUE_WITH_INVOCATION);
        put_len(out, self.receipt.len());
        out.extend_from_slice(self.receipt);
        out.extend_from_slice(self.invocation);
    }
}

/// Reads a receipt value of either form (checks the receipt's digest),
/// with the invocation when the value holds it.
pub(crate) fn decode_receipt_value(bytes: &[u8]) -> Result<(Receipt, Option<Invocation>), String> {
    match bytes.split_first() {
        Some((&VALUE_V1, rest)) => Ok((decode_receipt(rest)?, None)),
        Some((&VALUE_WITH_INVOCATION, rest)) => {
            let mut r = Reader(rest);
            let n = r.len()?;
            let receipt = decode_receipt(r.take(n)?)?;
            Ok((receipt, Some(decode_invocation(r.0)?)))
        }
        _ => Err("unknown receipt encoding".into()),
    }
}

/// Reads an invocation as the first versions stored it in redb (the
/// encoding `put_invocation_value` writes in tests).
pub(crate) fn decode_invocation_value(bytes: &[u8]) -> Result<Invocation, String> {
    match bytes.split_first() {
        Some((&VALUE_V1, rest)) => decode_invocation(rest),
        _ => Err("unknown invocation encoding".into()),
    }
}

/// Wraps a payload in a frame header (written before the payload).
pub(crate) fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER_BYTES] {
    assert!(payload.len() <= FRAME_PAYLOAD_BYTES_MAX, "frame too large");
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..].copy_from_slice(&blake3::hash(payload).as_bytes()[..16]);
    h
}

/// Replays a journal's bytes: every record of every intact frame, in order,
/// and the length of the intact prefix (where the file must be cut).
pub(crate) fn replay(bytes: &[u8]) -> Result<(Vec<Record>, usize), String> {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER_BYTES {
        let h = &bytes[at..at + FRAME_HEADER_BYTES];
        if &h[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
        let start = at + FRAME_HEADER_BYTES;
        if len > FRAME_PAYLOAD_BYTES_MAX || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if blake3::hash(payload).as_bytes()[..16] != h[8..] {
            break;
        }
        // The hash matched, so the frame is what this host wrote: a record
        // that does not decode is a bug or corruption, not a torn write.
        decode_payload(payload, &mut records)?;
        at = start + len;
    }
    Ok((records, at))
}

fn decode_payload(payload: &[u8], records: &mut Vec<Record>) -> Result<(), String> {
    let mut r = Reader(payload);
    while !r.0.is_empty() {
        match r.u8()? {
            TAG_BLOB => {
                let digest = r.digest()?;
                let len = r.len()?;
                records.push(Record::Blob(digest, r.take(len)?.to_vec()));
            }
            TAG_OUTCOME => {
                let invocation_digest = r.digest()?;
                let cacheable = r.u8()? != 0;
                let len = r.len()?;
                let invocation = Box::new(decode_invocation(r.take(len)?)?);
                let len = r.len()?;
                let receipt = Box::new(decode_receipt(r.take(len)?)?);
                records.push(Record::Outcome {
                    invocation_digest,
                    cacheable,
                    invocation,
                    receipt,
                });
            }
            tag => return Err(format!("unknown record tag {tag}")),
        }
    }
    Ok(())
}

fn decode_receipt(bytes: &[u8]) -> Result<Receipt, String> {
    let out = decode_receipt_fields(bytes)?;
    if !out.is_consistent() {
        return Err(format!(
            "receipt {} does not match its content",
            out.receipt
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use voidbox_sandbox::Outcome;

    fn receipt(outcome: Outcome) -> (Invocation, Receipt) {
        let inv = Invocation::new(Digest::of(b"tool"), Digest::of(b"in"))
            .arg("k", "v")
            .grant(Digest::of(b"g"));
        let mut r = Receipt {
            receipt: Digest([0; 32]),
            invocation: inv.digest(),
            tool: inv.tool,
            input: inv.input,
            output: Some(Digest::of(b"out")),
            output_bytes: 3,
            outcome,
            fuel_used: 7,
            memory_peak_bytes: 65536,
            diagnostics: None,
            timestamp: 42,
            cached: false,
            duration_us: 9,
        };
        r.receipt = r.compute_digest();
        (inv, r)
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut f = frame_header(payload).to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn an_outcome_record_read_in_place_gives_what_was_encoded() {
        for outcome in [
            Outcome::Ok,
            Outcome::Trap {
                code: "unreachable".into(),
            },
        ] {
            let (inv, r) = receipt(outcome);
            let mut bytes = b"before".to_vec();
            let start = bytes.len();
            put_outcome(&mut bytes, &inv.digest(), true, &inv, &r);
            let end = bytes.len();
            bytes.extend_from_slice(b"after");
            let (record, len) = OutcomeRecord::at(&bytes[start..]);
            assert_eq!(len, end - start);
            assert_eq!(record.invocation_digest, inv.digest());
            assert_eq!(record.receipt(), r);
            assert_eq!(record.invocation(), inv);
            // The receipt log's value, copied, is what encoding writes.
            let (mut copied, mut encoded) = (Vec::new(), Vec::new());
            record.put_value(&mut copied);
            put_receipt_with_invocation(&mut encoded, &r, &inv);
            assert_eq!(copied, encoded);
            assert_eq!(
                decode_receipt_value(&copied).unwrap(),
                (r.clone(), Some(inv.clone()))
            );
        }
    }

    #[test]
    fn an_outcome_records_timestamp_is_set_in_place() {
        let (inv, mut r) = receipt(Outcome::Ok);
        let mut bytes = Vec::new();
        put_outcome(&mut bytes, &inv.digest(), true, &inv, &r);
        set_outcome_timestamp(&mut bytes, 1_234_567);
        r.timestamp = 1_234_567;
        // Every other field as encoded, the timestamp the new one.
        assert_eq!(OutcomeRecord::at(&bytes).0.receipt(), r);
    }

    #[test]
    fn records_round_trip() {
        let (inv, ok) = receipt(Outcome::Ok);
        let (_, trap) = receipt(Outcome::Trap {
            code: "unreachable".into(),
        });
        let mut p = Vec::new();
        put_blob(&mut p, &Digest::of(b"in"), b"in");
        put_outcome(&mut p, &inv.digest(), true, &inv, &ok);
        put_outcome(&mut p, &inv.digest(), false, &inv, &trap);
        let bytes = framed(&p);
        let (records, end) = replay(&bytes).unwrap();
        assert_eq!(end, bytes.len());
        assert_eq!(records.len(), 3);
        assert!(matches!(&records[0], Record::Blob(d, b) if *d == Digest::of(b"in") && b == b"in"));
        match &records[1] {
            Record::Outcome {
                invocation_digest,
                cacheable,
                invocation,
                receipt,
            } => {
                assert_eq!(*invocation_digest, inv.digest());
                assert!(*cacheable);
                assert_eq!(**invocation, inv);
                assert_eq!(**receipt, ok);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&records[2], Record::Outcome { receipt, cacheable: false, .. } if **receipt == trap)
        );
    }

    #[test]
    fn a_torn_frame_ends_the_replay_at_the_last_whole_one() {
        let mut a = Vec::new();
        put_blob(&mut a, &Digest::of(b"a"), b"a");
        let mut b = Vec::new();
        put_blob(&mut b, &Digest::of(b"b"), b"b");
        let first = framed(&a);
        let mut bytes = first.clone();
        bytes.extend_from_slice(&framed(&b));
        for cut in first.len()..bytes.len() {
            let (records, end) = replay(&bytes[..cut]).unwrap();
            assert_eq!((records.len(), end), (1, first.len()), "cut at {cut}");
        }
        // A flipped bit in the second frame drops that frame only.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let (records, end) = replay(&bytes).unwrap();
        assert_eq!((records.len(), end), (1, first.len()));
    }
}
