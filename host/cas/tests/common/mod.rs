//! Helpers shared by the integration tests: deterministic content, a reader
//! that generates it, and ways to damage a stored blob.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use voidbox_cas::{Digest, DiskStore, MemStore, Store};

/// Bytes of the short on-disk blob header (see `DiskStore`'s docs); blobs
/// of 1 MiB or more in a new store have a header of [`PAGE_BYTES`].
pub const HEADER_BYTES: u64 = 16;
/// The header of large blobs in a format-2 store.
pub const PAGE_BYTES: u64 = 4096;

/// `len` bytes of a deterministic pseudo-random pattern; different `seed`s
/// give different content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    PatternReader::new(seed, len as u64).fill_slice(&mut out);
    out
}

/// A reader that generates `content(seed, len)` without holding it, and can
/// return short reads to exercise callers' read loops.
pub struct PatternReader {
    seed: u64,
    pos: u64,
    len: u64,
    /// Largest number of bytes one `read` returns.
    pub read_max: usize,
}

impl PatternReader {
    pub fn new(seed: u64, len: u64) -> Self {
        PatternReader {
            seed,
            pos: 0,
            len,
            read_max: usize::MAX,
        }
    }

    /// Byte `i` of the stream is byte `i % 8` of splitmix64(seed, i / 8), so
    /// the content does not depend on how it is read.
    fn fill_slice(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            let pos = self.pos + i as u64;
            let word = splitmix64(self.seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let bytes = word.to_le_bytes();
            let from = (pos % 8) as usize;
            let n = (8 - from).min(out.len() - i);
            out[i..i + n].copy_from_slice(&bytes[from..from + n]);
            i += n;
        }
        self.pos += out.len() as u64;
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.read_max)
            .min((self.len - self.pos) as usize);
        self.fill_slice(&mut buf[..n]);
        Ok(n)
    }
}

/// A store under test plus ways to damage it, so one suite covers every
/// implementation.
pub trait Harness {
    fn store(&self) -> &dyn Store;
    /// Flips one bit of the content byte at `offset`.
    fn flip_byte(&self, digest: &Digest, offset: u64);
    /// Cuts `cut` bytes off the end of the content.
    fn truncate(&self, digest: &Digest, cut: u64);
    /// Whether the store records sizes (then truncation is reported as a
    /// size mismatch rather than changed content).
    fn records_sizes(&self) -> bool;
}

pub struct MemHarness(pub MemStore);

impl Harness for MemHarness {
    fn store(&self) -> &dyn Store {
        &self.0
    }
    fn flip_byte(&self, digest: &Digest, offset: u64) {
        assert!(self.0.tamper(digest, |b| b[offset as usize] ^= 1));
    }
    fn truncate(&self, digest: &Digest, cut: u64) {
        assert!(self
            .0
            .tamper(digest, |b| b.truncate(b.len() - cut as usize)));
    }
    fn records_sizes(&self) -> bool {
        false
    }
}

pub struct DiskHarness {
    pub store: DiskStore,
    pub dir: tempfile::TempDir,
}

impl DiskHarness {
    pub fn new(durability: voidbox_cas::Durability) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = DiskStore::open_with(
            dir.path().join("cas"),
            voidbox_cas::OpenOptions {
                durability,
                ..Default::default()
            },
        )
        .expect("open store");
        DiskHarness { store, dir }
    }

    /// The blob's file: in place, or (deferred, not yet synced) in the temp
    /// directory. Damage is applied after a sync so that it hits the file a
    /// later read opens.
    fn blob_file(&self, digest: &Digest) -> std::fs::File {
        self.store.sync().expect("sync");
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.store.blob_path(digest))
            .expect("open blob file")
    }
}

impl Harness for DiskHarness {
    fn store(&self) -> &dyn Store {
        &self.store
    }
    fn flip_byte(&self, digest: &Digest, offset: u64) {
        let file = self.blob_file(digest);
        // The content is the file's tail, after a header of either size.
        let len = self.store.size(digest).unwrap().expect("stored");
        let start = file.metadata().unwrap().len() - len;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, start + offset).unwrap();
        byte[0] ^= 1;
        file.write_all_at(&byte, start + offset).unwrap();
    }
    fn truncate(&self, digest: &Digest, cut: u64) {
        let file = self.blob_file(digest);
        let len = file.metadata().unwrap().len();
        file.set_len(len - cut).unwrap();
    }
    fn records_sizes(&self) -> bool {
        true
    }
}
