//! [`Blobs`]: the host's content-addressed store, small blobs inline in the
//! database and large ones in the disk store, behind the CAS's `Store` trait.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use voidbox_cas::{CasError, Digest, GcReport, Store, VerifyReport};

use super::{chunks, split_logged_blob, DigestSet, Storage, BLOBS, BLOB_CHUNKS, BLOB_LOG, PINS};

/// Removes the records in the given slots of each blob chunk (by key).
/// A chunk left with no record stays (see [`chunks`]): deleting the last
/// one would give its key to the next checkpoint's first chunk. Returns
/// how many records were there to remove and their bytes.
fn remove_chunked(
    txn: &redb::WriteTransaction,
    doomed: &BTreeMap<u64, Vec<usize>>,
) -> std::result::Result<(u64, u64), CasError> {
    let mut table = txn.open_table(BLOB_CHUNKS).map_err(cas_db)?;
    let (mut records, mut bytes) = (0, 0);
    for (&key, slots) in doomed {
        let Some(chunk) = table.get(key).map_err(cas_db)?.map(|v| v.value().to_vec()) else {
            continue;
        };
        let thinned = chunks::without(&chunk, slots, |row| {
            records += 1;
            bytes += row.len().saturating_sub(32) as u64;
        })
        .map_err(|e| cas_db(format!("chunk {key} of the blob log: {e}")))?;
        table.insert(key, &thinned[..]).map_err(cas_db)?;
    }
    Ok((records, bytes))
}

/// The host's content-addressed store: small blobs inline in the database,
/// large ones in a [`DiskStore`](voidbox_cas::DiskStore). Implements [`Store`], so the CLI and
/// embedders see one CAS.
#[derive(Debug, Clone)]
pub struct Blobs {
    storage: Arc<Storage>,
}

impl Blobs {
    pub(crate) fn new(storage: Arc<Storage>) -> Blobs {
        Blobs { storage }
    }

    fn inline(&self, digest: &Digest) -> Result<Option<Arc<[u8]>>, CasError> {
        match self.storage.tail_blob(digest) {
            Some(b) => Ok(Some(b)),
            None => self.inline_stored(digest),
        }
    }

    /// A small blob from the database (the blob log, or the table of
    /// older databases), not from the journal's tail.
    fn inline_stored(&self, digest: &Digest) -> Result<Option<Arc<[u8]>>, CasError> {
        let txn = self.storage.db.begin_read().map_err(cas_db)?;
        if let Some(b) = self.storage.logged_blob(&txn, digest).map_err(cas_db)? {
            return Ok(Some(b));
        }
        let table = txn.open_table(BLOBS).map_err(cas_db)?;
        Ok(table
            .get(digest.as_bytes())
            .map_err(cas_db)?
            .map(|v| Arc::from(v.value())))
    }

    fn inline_verified(&self, digest: &Digest) -> Result<Option<Arc<[u8]>>, CasError> {
        // The journal's tail is memory this process hashed when the blob was
        // stored; what is read from the database or the disk is re-hashed.
        if let Some(b) = self.storage.tail_blob(digest) {
            return Ok(Some(b));
        }
        match self.inline_stored(digest)? {
            Some(b) => {
                let actual = Digest::of(&b);
                if actual != *digest {
                    return Err(CasError::Corrupt {
                        digest: *digest,
                        detail: voidbox_cas::Corruption::ContentChanged { actual },
                    });
                }
                Ok(Some(b))
            }
            None => Ok(None),
        }
    }

    /// Stores a blob durably (used by `cas put` and `tool add`): small ones
    /// inline in one committed transaction, large ones fsynced on disk.
    fn put_durable(&self, bytes: &[u8]) -> Result<Digest, CasError> {
        if bytes.len() as u64 > self.storage.inline_max {
            let d = self.storage.disk.put(bytes)?;
            self.storage.disk.sync()?;
            return Ok(d);
        }
        let digest = Digest::of(bytes);
        let txn = self.storage.db.begin_write().map_err(cas_db)?;
        {
            let mut t = txn.open_table(BLOBS).map_err(cas_db)?;
            t.insert(digest.as_bytes(), bytes).map_err(cas_db)?;
        }
        txn.commit().map_err(cas_db)?;
        Ok(digest)
    }

    /// The verified content as a shared buffer (no copy for small blobs).
    pub(crate) fn get_shared(&self, digest: &Digest) -> Result<Arc<[u8]>, CasError> {
        match self.inline_verified(digest)? {
            Some(b) => Ok(b),
            None => Ok(Arc::from(self.storage.disk.get(digest)?)),
        }
    }

    fn inline_entries(&self) -> Result<Vec<(Digest, Vec<u8>)>, CasError> {
        self.storage
            .checkpoint()
            .map_err(|e| cas_db(e.to_string()))?;
        let txn = self.storage.db.begin_read().map_err(cas_db)?;
        let table = txn.open_table(BLOBS).map_err(cas_db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(cas_db)? {
            let (k, v) = entry.map_err(cas_db)?;
            out.push((Digest(*k.value()), v.value().to_vec()));
        }
        // A row of the logs at `position` ([`chunks::describe`] names
        // both kinds).
        let mut add = |position: u64, row: &[u8]| {
            let (d, bytes) = split_logged_blob(row).ok_or_else(|| {
                cas_db(format!(
                    "{} of the blob log is shorter than a digest",
                    chunks::describe(position)
                ))
            })?;
            out.push((d, bytes.to_vec()));
            Ok::<(), CasError>(())
        };
        let log = txn.open_table(BLOB_LOG).map_err(cas_db)?;
        for entry in log.iter().map_err(cas_db)? {
            let (seq, v) = entry.map_err(cas_db)?;
            add(seq.value(), v.value())?;
        }
        let chunked = txn.open_table(BLOB_CHUNKS).map_err(cas_db)?;
        for entry in chunked.iter().map_err(cas_db)? {
            let (key, v) = entry.map_err(cas_db)?;
            for (slot, record) in chunks::records(v.value()).enumerate() {
                let record = record
                    .map_err(|e| cas_db(format!("chunk {} of the blob log: {e}", key.value())))?;
                if let Some(row) = record {
                    add(chunks::position(key.value(), slot), row)?;
                }
            }
        }
        // A blob recorded in two checkpoints has two records: both are
        // returned, so `cas verify` checks each (listings dedup).
        Ok(out)
    }

    fn inline_pins(&self) -> Result<Vec<Digest>, CasError> {
        let txn = self.storage.db.begin_read().map_err(cas_db)?;
        let table = txn.open_table(PINS).map_err(cas_db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(cas_db)? {
            let (k, _) = entry.map_err(cas_db)?;
            out.push(Digest(*k.value()));
        }
        Ok(out)
    }
}

fn cas_db(e: impl std::fmt::Display) -> CasError {
    CasError::Io {
        action: "use the database of",
        path: PathBuf::from("voidbox.redb"),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Store for Blobs {
    fn put(&self, data: &[u8]) -> Result<Digest, CasError> {
        self.put_durable(data)
    }

    fn put_reader(&self, reader: &mut dyn Read) -> Result<(Digest, u64), CasError> {
        // Read up to the inline limit; a reader that has more goes to disk,
        // streaming, with what was already read chained in front.
        let limit = self.storage.inline_max;
        let mut head = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut head)
            .map_err(CasError::Input)?;
        if head.len() as u64 <= limit {
            let d = self.put_durable(&head)?;
            return Ok((d, head.len() as u64));
        }
        let mut chained = std::io::Cursor::new(head).chain(reader);
        let r = self.storage.disk.put_reader(&mut chained)?;
        self.storage.disk.sync()?;
        Ok(r)
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, CasError> {
        match self.inline_verified(digest)? {
            Some(b) => Ok(b.to_vec()),
            None => self.storage.disk.get(digest),
        }
    }

    fn copy_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<u64, CasError> {
        match self.inline_verified(digest)? {
            Some(b) => {
                out.write_all(&b).map_err(|source| CasError::Output {
                    digest: *digest,
                    source,
                })?;
                Ok(b.len() as u64)
            }
            None => self.storage.disk.copy_to(digest, out),
        }
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>, CasError> {
        match self.inline(digest)? {
            Some(b) => Ok(Some(b.len() as u64)),
            None => self.storage.disk.size(digest),
        }
    }

    fn list(&self) -> Result<Vec<(Digest, u64)>, CasError> {
        let mut all: Vec<(Digest, u64)> = self
            .inline_entries()?
            .into_iter()
            .map(|(d, b)| (d, b.len() as u64))
            .collect();
        all.extend(self.storage.disk.list()?);
        all.sort();
        all.dedup_by_key(|(d, _)| *d);
        Ok(all)
    }

    fn remove(&self, digest: &Digest) -> Result<bool, CasError> {
        if self.inline_pins()?.contains(digest) {
            return Err(CasError::Pinned(*digest));
        }
        // After a checkpoint the blob is in the table only, so removing it
        // there is final (a journal replay cannot bring it back).
        self.storage
            .checkpoint()
            .map_err(|e| cas_db(e.to_string()))?;
        let positions = {
            let read = self.storage.db.begin_read().map_err(cas_db)?;
            self.storage
                .logged_blob_positions(&read, digest)
                .map_err(cas_db)?
        };
        let txn = self.storage.db.begin_write().map_err(cas_db)?;
        let removed_inline = {
            let mut t = txn.open_table(BLOBS).map_err(cas_db)?;
            let mut removed = t.remove(digest.as_bytes()).map_err(cas_db)?.is_some();
            // The index entries stay, naming records that are gone; readers
            // skip those.
            let mut log = txn.open_table(BLOB_LOG).map_err(cas_db)?;
            let mut doomed: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for position in positions {
                match chunks::split(position) {
                    Some((key, slot)) => doomed.entry(key).or_default().push(slot),
                    None => removed |= log.remove(position).map_err(cas_db)?.is_some(),
                }
            }
            removed |= remove_chunked(&txn, &doomed)?.0 > 0;
            removed
        };
        txn.commit().map_err(cas_db)?;
        let removed_disk = self.storage.disk.remove(digest)?;
        Ok(removed_inline || removed_disk)
    }

    fn pin(&self, digest: &Digest) -> Result<(), CasError> {
        if self.inline(digest)?.is_some() {
            // A pin must not outlive a crash that loses its blob.
            self.storage.flush().map_err(|e| cas_db(e.to_string()))?;
            let txn = self.storage.db.begin_write().map_err(cas_db)?;
            {
                let mut t = txn.open_table(PINS).map_err(cas_db)?;
                t.insert(digest.as_bytes(), ()).map_err(cas_db)?;
            }
            txn.commit().map_err(cas_db)?;
            return Ok(());
        }
        self.storage.disk.pin(digest)
    }

    fn unpin(&self, digest: &Digest) -> Result<bool, CasError> {
        let txn = self.storage.db.begin_write().map_err(cas_db)?;
        let inline = {
            let mut t = txn.open_table(PINS).map_err(cas_db)?;
            let removed = t.remove(digest.as_bytes()).map_err(cas_db)?.is_some();
            removed
        };
        txn.commit().map_err(cas_db)?;
        let disk = self.storage.disk.unpin(digest)?;
        Ok(inline || disk)
    }

    fn pins(&self) -> Result<Vec<Digest>, CasError> {
        let mut all = self.inline_pins()?;
        all.extend(self.storage.disk.pins()?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    fn verify_all(&self) -> Result<VerifyReport, CasError> {
        let mut report = self.storage.disk.verify_all()?;
        for (d, bytes) in self.inline_entries()? {
            report.checked += 1;
            report.bytes += bytes.len() as u64;
            let actual = Digest::of(&bytes);
            if actual != d {
                report
                    .corrupt
                    .push((d, voidbox_cas::Corruption::ContentChanged { actual }));
            }
        }
        Ok(report)
    }

    fn gc(&self, roots: &BTreeSet<Digest>) -> Result<GcReport, CasError> {
        self.storage
            .checkpoint()
            .map_err(|e| cas_db(e.to_string()))?;
        let mut keep = roots.clone();
        keep.extend(self.inline_pins()?);
        let mut report = self.storage.disk.gc(&keep)?;
        let txn = self.storage.db.begin_write().map_err(cas_db)?;
        {
            let mut t = txn.open_table(BLOBS).map_err(cas_db)?;
            let doomed: Vec<(Digest, u64)> = t
                .iter()
                .map_err(cas_db)?
                .filter_map(|e| e.ok())
                .map(|(k, v)| (Digest(*k.value()), v.value().len() as u64))
                .filter(|(d, _)| !keep.contains(d))
                .collect();
            for (d, len) in doomed {
                t.remove(d.as_bytes()).map_err(cas_db)?;
                report.removed += 1;
                report.bytes_freed += len;
            }
            report.kept += t.len().map_err(cas_db)?;
            let (mut kept, mut removed) = (DigestSet::default(), DigestSet::default());
            // Whether a row of the logs goes; one too short to name its
            // blob is garbage too.
            let mut goes = |row: &[u8]| match split_logged_blob(row) {
                Some((d, _)) if keep.contains(&d) => {
                    kept.insert(d);
                    false
                }
                named => {
                    removed.extend(named.map(|(d, _)| d));
                    true
                }
            };
            let mut log = txn.open_table(BLOB_LOG).map_err(cas_db)?;
            let mut doomed = Vec::new();
            for entry in log.iter().map_err(cas_db)? {
                let (seq, v) = entry.map_err(cas_db)?;
                if goes(v.value()) {
                    doomed.push((seq.value(), v.value().len().saturating_sub(32) as u64));
                }
            }
            for (seq, len) in doomed {
                log.remove(seq).map_err(cas_db)?;
                report.bytes_freed += len;
            }
            let mut doomed: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            let chunked = txn.open_table(BLOB_CHUNKS).map_err(cas_db)?;
            for entry in chunked.iter().map_err(cas_db)? {
                let (key, v) = entry.map_err(cas_db)?;
                for (slot, record) in chunks::records(v.value()).enumerate() {
                    // A damaged chunk is left for `cas verify` to report.
                    if let Ok(Some(row)) = record {
                        if goes(row) {
                            doomed.entry(key.value()).or_default().push(slot);
                        }
                    }
                }
            }
            drop(chunked);
            report.bytes_freed += remove_chunked(&txn, &doomed)?.1;
            report.removed += removed.len() as u64;
            report.kept += kept.len() as u64;
        }
        txn.commit().map_err(cas_db)?;
        Ok(report)
    }

    fn sync(&self) -> Result<(), CasError> {
        self.storage.flush().map_err(|e| cas_db(e.to_string()))
    }
}
