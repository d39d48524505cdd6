//! voidbox-cas: the blake3 content-addressed store (CAS) of Voidbox.
//!
//! Tools, inputs and outputs are stored as *blobs* named by the blake3 hash
//! of their content, a [`Digest`] written `blake3:<64 lowercase hex>`.
//!
//! - [`Store`] is the trait the rest of Voidbox codes against: put (from a
//!   slice or streamed from a reader), verified get (to memory, to a writer,
//!   to a file), pins, `verify_all` and a mark-and-sweep [`Store::gc`].
//! - [`DiskStore`] keeps blobs in a directory. A put writes a temp file,
//!   hashes it in the same pass, fsyncs and renames, so a crash never leaves
//!   a half blob under a digest; [`Durability::Deferred`] batches the fsyncs
//!   until [`Store::sync`]. Every read is verified: a corrupt blob is an
//!   error naming its digest and its bytes are never handed out.
//! - [`MemStore`] implements the same trait in memory, for tests.
//!
//! ```
//! use voidbox_cas::{DiskStore, Store};
//! # fn main() -> Result<(), voidbox_cas::CasError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = DiskStore::open(dir.path().join("cas"))?;
//! let digest = store.put(b"hello, voidbox")?;
//! assert_eq!(store.get(&digest)?, b"hello, voidbox");
//! store.pin(&digest)?;
//! let report = store.gc(&Default::default())?; // pins are roots
//! assert_eq!(report.removed, 0);
//! # Ok(()) }
//! ```
//!
//! `DiskStore` runs on Unix (Linux in practice: it uses `flock`, `pwritev`
//! and `fallocate`).
//!
//! This crate knows blake3, files and fsync. It must not know wasmtime,
//! macaroons, consensus, the host's database or the CLI: callers pass plain
//! digests and bytes, and decide which digests are GC roots.

mod digest;
mod disk;
mod error;
mod helper;
mod layout;
mod mem;
mod pipeline;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;

pub use digest::{Digest, DigestParseError, DIGEST_HEX_LEN, DIGEST_PREFIX};
pub use disk::{DiskStore, Durability, OpenOptions};
pub use error::{CasError, Corruption, Result};
pub use mem::MemStore;

/// A content-addressed blob store. Object safe and shareable (`Arc<dyn
/// Store>`): every method takes `&self`.
///
/// Every read verifies the content against its digest. A corrupt blob is
/// reported as [`CasError::Corrupt`] and its bytes are never returned; the
/// only exception is documented on [`Store::copy_to`].
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores `data` and returns its digest. Storing content that is already
    /// present does not rewrite it.
    fn put(&self, data: &[u8]) -> Result<Digest>;

    /// Stores everything `reader` yields, streaming: memory use is bounded
    /// whatever the size. Returns the digest and the number of bytes.
    fn put_reader(&self, reader: &mut dyn Read) -> Result<(Digest, u64)>;

    /// The verified content of a blob.
    fn get(&self, digest: &Digest) -> Result<Vec<u8>>;

    /// Writes a blob's verified content to `out`, returning its length.
    ///
    /// The content is verified before the first byte is written, so a blob
    /// found corrupt yields [`CasError::Corrupt`] with nothing written. Large
    /// blobs are verified in a first pass and then streamed while being
    /// hashed again; only if the stored file changes between the two passes
    /// (something the store itself never does) is the corruption detected
    /// mid-stream: then `Corrupt` is returned after some bytes were written,
    /// and the caller must discard what `out` received. Use
    /// [`Store::get_to_file`] when the destination is a file: it never leaves
    /// bad bytes in it.
    fn copy_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<u64>;

    /// Writes a blob's verified content to the file `path`, returning its
    /// length. The content goes to a temp file next to `path`, which is
    /// renamed over `path` only after verification: a corrupt blob never
    /// lands in `path`, and an existing `path` is left untouched on error.
    /// The output file is not fsynced; that is the caller's choice.
    fn get_to_file(&self, digest: &Digest, path: &Path) -> Result<u64> {
        pipeline::write_file_atomically(path, |file| self.copy_to(digest, file))
    }

    /// Whether a blob is stored (its content is not verified).
    fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.size(digest)?.is_some())
    }

    /// The content length of a blob, `None` if it is not stored.
    fn size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Every stored blob with its content length, sorted by digest.
    fn list(&self) -> Result<Vec<(Digest, u64)>>;

    /// Removes a blob; `Ok(false)` if it was not stored. A pinned blob is
    /// refused with [`CasError::Pinned`].
    fn remove(&self, digest: &Digest) -> Result<bool>;

    /// Pins a stored blob so that GC keeps it. Pinning twice is harmless.
    /// Pins are made durable before this returns.
    fn pin(&self, digest: &Digest) -> Result<()>;

    /// Removes a pin; `Ok(false)` if the blob was not pinned.
    fn unpin(&self, digest: &Digest) -> Result<bool>;

    /// Every pinned digest, sorted.
    fn pins(&self) -> Result<Vec<Digest>>;

    /// Re-hashes every blob and reports the corrupt ones.
    fn verify_all(&self) -> Result<VerifyReport>;

    /// Mark and sweep: keeps pinned blobs and `roots` (the digests the caller
    /// still references), removes every other blob.
    ///
    /// A blob stored concurrently with `gc` by another thread or process and
    /// not yet in `roots` may be removed: callers serialize GC with the
    /// writes whose digests they have not recorded yet.
    fn gc(&self, roots: &BTreeSet<Digest>) -> Result<GcReport>;

    /// Makes every earlier put durable (see [`Durability`]). A no-op for
    /// stores that have nothing pending.
    fn sync(&self) -> Result<()>;
}

/// What [`Store::verify_all`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub checked: u64,
    /// Content bytes re-hashed.
    pub bytes: u64,
    /// The blobs that failed, by digest, with what is wrong.
    pub corrupt: Vec<(Digest, Corruption)>,
    /// Files in the store's blob directories whose names are not blobs
    /// (left alone; listed so that an operator can look at them).
    pub stray_files: Vec<std::path::PathBuf>,
}

impl VerifyReport {
    /// Whether every blob verified.
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty()
    }
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs kept (pinned or rooted).
    pub kept: u64,
    /// Blobs removed.
    pub removed: u64,
    /// Content bytes of the removed blobs.
    pub bytes_freed: u64,
}
