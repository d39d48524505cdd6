//! A blob far larger than anything the store should buffer goes in through
//! `put_reader` and out through `copy_to` with bounded memory.
//!
//! Its own test binary (one process, one test) so that the peak resident
//! memory measured is this test's alone. The size is 256 MiB by default;
//! `VOIDBOX_CAS_LARGE_STREAM_MIB` sets another (e.g. 4096 for several GiB).

mod common;

use std::io::{self, Write};

use common::PatternReader;
use voidbox_cas::{Digest, DiskStore, Store};

/// Peak resident set size of this process so far, from /proc.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

/// A writer that only hashes and counts, so the output is not held either.
struct HashingSink {
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_blob_larger_than_any_buffer_streams_in_and_out_with_bounded_memory() {
    let mib: u64 = std::env::var("VOIDBOX_CAS_LARGE_STREAM_MIB")
        .ok()
        .map(|v| {
            v.parse()
                .expect("VOIDBOX_CAS_LARGE_STREAM_MIB is a number of MiB")
        })
        .unwrap_or(256);
    let len = mib << 20;
    // Odd read sizes, as from a pipe.
    let mut reader = PatternReader::new(42, len);
    reader.read_max = 65_537;

    let mut expected = HashingSink {
        hasher: blake3::Hasher::new(),
        bytes: 0,
    };
    io::copy(&mut PatternReader::new(42, len), &mut expected).unwrap();
    let expected_digest = Digest::from(expected.hasher.finalize());

    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let before = peak_rss_bytes();

    let (digest, stored) = store.put_reader(&mut reader).unwrap();
    assert_eq!(stored, len);
    assert_eq!(digest, expected_digest);
    assert_eq!(store.size(&digest).unwrap(), Some(len));

    let mut sink = HashingSink {
        hasher: blake3::Hasher::new(),
        bytes: 0,
    };
    assert_eq!(store.copy_to(&digest, &mut sink).unwrap(), len);
    assert_eq!(sink.bytes, len);
    assert_eq!(Digest::from(sink.hasher.finalize()), digest);

    let grown = peak_rss_bytes().saturating_sub(before);
    // A handful of 1 MiB chunk buffers, whatever the blob's size.
    assert!(
        grown < 32 << 20,
        "streaming {mib} MiB grew the peak resident memory by {} MiB",
        grown >> 20
    );
}
