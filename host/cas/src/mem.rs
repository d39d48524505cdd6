//! [`MemStore`]: the store in memory, for tests and ephemeral hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::pipeline::{self, CHUNK_BYTES};
use crate::{CasError, Corruption, Digest, GcReport, Result, Store, VerifyReport};

/// A [`Store`] in memory. It behaves like [`crate::DiskStore`] (reads are
/// verified, pins, GC) except that nothing survives the process and `sync`
/// has nothing to do.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Shared so that a read can verify a blob without holding the lock.
    blobs: BTreeMap<Digest, Arc<Vec<u8>>>,
    pins: BTreeSet<Digest>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Changes a stored blob's bytes in place, as disk corruption would: for
    /// tests of how corruption is detected and reported. Returns whether the
    /// blob was stored.
    pub fn tamper(&self, digest: &Digest, change: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut inner = self.write();
        match inner.blobs.get_mut(digest) {
            Some(blob) => {
                change(Arc::make_mut(blob));
                true
            }
            None => false,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Every update is a single map operation, so a panic elsewhere cannot
        // leave the maps inconsistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn verified(&self, digest: &Digest) -> Result<Arc<Vec<u8>>> {
        let blob = self
            .read()
            .blobs
            .get(digest)
            .cloned()
            .ok_or(CasError::NotFound(*digest))?;
        match problem(digest, &blob) {
            None => Ok(blob),
            Some(detail) => Err(CasError::Corrupt {
                digest: *digest,
                detail,
            }),
        }
    }
}

/// Without a header, a memory blob's only check is its hash.
fn problem(digest: &Digest, data: &[u8]) -> Option<Corruption> {
    let actual = Digest::of(data);
    (actual != *digest).then_some(Corruption::ContentChanged { actual })
}

impl Store for MemStore {
    fn put(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        let mut inner = self.write();
        // A blob that was tampered with is replaced, as on disk.
        let intact = inner
            .blobs
            .get(&digest)
            .is_some_and(|blob| blob.len() == data.len());
        if !intact {
            inner.blobs.insert(digest, Arc::new(data.to_vec()));
        }
        Ok(digest)
    }

    fn put_reader(&self, reader: &mut dyn Read) -> Result<(Digest, u64)> {
        // The content ends up in memory anyway; read it in chunks so that
        // input errors are reported the same way as on disk.
        let mut data = Vec::new();
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        loop {
            pipeline::fill(reader, &mut chunk).map_err(CasError::Input)?;
            data.extend_from_slice(&chunk);
            if chunk.len() < CHUNK_BYTES {
                break;
            }
        }
        let digest = self.put(&data)?;
        Ok((digest, data.len() as u64))
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        Ok(self.verified(digest)?.as_ref().clone())
    }

    fn copy_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<u64> {
        let blob = self.verified(digest)?;
        out.write_all(&blob)
            .and_then(|()| out.flush())
            .map_err(|source| CasError::Output {
                digest: *digest,
                source,
            })?;
        Ok(blob.len() as u64)
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.read().blobs.get(digest).map(|b| b.len() as u64))
    }

    fn list(&self) -> Result<Vec<(Digest, u64)>> {
        Ok(self
            .read()
            .blobs
            .iter()
            .map(|(d, b)| (*d, b.len() as u64))
            .collect())
    }

    fn remove(&self, digest: &Digest) -> Result<bool> {
        let mut inner = self.write();
        if inner.pins.contains(digest) {
            return Err(CasError::Pinned(*digest));
        }
        Ok(inner.blobs.remove(digest).is_some())
    }

    fn pin(&self, digest: &Digest) -> Result<()> {
        let mut inner = self.write();
        if !inner.blobs.contains_key(digest) {
            return Err(CasError::NotFound(*digest));
        }
        inner.pins.insert(*digest);
        Ok(())
    }

    fn unpin(&self, digest: &Digest) -> Result<bool> {
        Ok(self.write().pins.remove(digest))
    }

    fn pins(&self) -> Result<Vec<Digest>> {
        Ok(self.read().pins.iter().copied().collect())
    }

    fn verify_all(&self) -> Result<VerifyReport> {
        let blobs: Vec<(Digest, Arc<Vec<u8>>)> = self
            .read()
            .blobs
            .iter()
            .map(|(d, b)| (*d, Arc::clone(b)))
            .collect();
        let mut report = VerifyReport::default();
        for (digest, blob) in blobs {
            report.checked += 1;
            report.bytes += blob.len() as u64;
            if let Some(detail) = problem(&digest, &blob) {
                report.corrupt.push((digest, detail));
            }
        }
        Ok(report)
    }

    fn gc(&self, roots: &BTreeSet<Digest>) -> Result<GcReport> {
        let mut inner = self.write();
        let Inner { blobs, pins } = &mut *inner;
        let mut report = GcReport::default();
        blobs.retain(|digest, blob| {
            let keep = pins.contains(digest) || roots.contains(digest);
            if keep {
                report.kept += 1;
            } else {
                report.removed += 1;
                report.bytes_freed += blob.len() as u64;
            }
            keep
        });
        Ok(report)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}
