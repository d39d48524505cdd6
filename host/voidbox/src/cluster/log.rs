//! The replica's protocol log: the PBFT core's [`Record`]s in a redb table,
//! in the order they were written, synced before any message that depends
//! on them leaves (the driver calls [`ProtocolLog::append`] before sending).
//! After a stable checkpoint the records recovery no longer needs are
//! deleted, with the same rule as [`voidbox_pbft::compact_records`].
//!
//! Without fsync (a cluster for measurements) nothing is synced, and redb
//! keeps a commit made without durability in memory until a durable one:
//! a transaction per append cost every replica two commits a batch and
//! kept nothing a crash would not lose. Such a log gathers its records in
//! memory and writes them in one transaction when a stable checkpoint
//! compacts it (or [`PENDING_MAX`] wait), and durably at
//! [`ProtocolLog::persist`], which a clean stop calls: what survives a
//! crash or a stop is exactly what it was with a commit per append. It
//! holds them decoded and encodes only those the compaction keeps: most
//! are about sequence numbers the checkpoint that triggers the write has
//! made stable, so they are never written, and encoding each as it came
//! was about 3% of a backup's CPU under load (a profile at 56 clients).

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use voidbox_pbft::Record;

use crate::{Error, Result};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("pbft_records");

/// Records a log without fsync holds in memory before it writes them even
/// without a stable checkpoint (say, while view changes keep checkpoints
/// from becoming stable), so that memory stays bounded.
const PENDING_MAX: usize = 4096;

/// What compaction needs to know of a record without reading it again.
#[derive(Debug, Clone, Copy)]
struct Meta {
    key: u64,
    stable: bool,
    view: bool,
    seq: Option<u64>,
}

impl Meta {
    fn of(key: u64, r: &Record) -> Meta {
        Meta {
            key,
            stable: matches!(r, Record::Stable(_)),
            view: matches!(r, Record::View { .. } | Record::NewView(_)),
            seq: r.seq(),
        }
    }
}

/// The log.
#[derive(Debug)]
pub struct ProtocolLog {
    db: Database,
    path: PathBuf,
    fsync: bool,
    metas: Vec<Meta>,
    next_key: u64,
    /// Without fsync: records appended and not yet written, with their
    /// keys, in order.
    pending: Vec<(u64, Record)>,
}

impl ProtocolLog {
    /// Opens (or creates) the log at `path` and returns it with the records
    /// it holds, in order. A record that does not decode (a torn write is
    /// impossible in redb; this is a different version's file) is an error,
    /// never skipped: skipping could forget a promise the replica made.
    pub fn open(path: &Path, fsync: bool) -> Result<(ProtocolLog, Vec<Record>)> {
        let db = redb::Builder::new()
            .set_cache_size(crate::storage::LOG_DB_CACHE_BYTES)
            .create(path)
            .map_err(|e| db_err(path, e))?;
        let mut records = Vec::new();
        let mut metas = Vec::new();
        {
            let txn = db.begin_write().map_err(|e| db_err(path, e))?;
            txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
            txn.commit().map_err(|e| db_err(path, e))?;
        }
        let txn = db.begin_read().map_err(|e| db_err(path, e))?;
        let table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
        let mut next_key = 0;
        for row in table.iter().map_err(|e| db_err(path, e))? {
            let (k, v) = row.map_err(|e| db_err(path, e))?;
            let record = Record::decode(v.value()).ok_or_else(|| Error::Cluster(format!(
                "{}: protocol record {} does not decode; this log was written by another version of voidbox",
                path.display(),
                k.value()
            )))?;
            metas.push(Meta::of(k.value(), &record));
            next_key = k.value() + 1;
            records.push(record);
        }
        drop(table);
        drop(txn);
        Ok((
            ProtocolLog {
                db,
                path: path.to_path_buf(),
                fsync,
                metas,
                next_key,
                pending: Vec::new(),
            },
            records,
        ))
    }

    /// Appends records: in one synced transaction when the cluster runs
    /// with fsync; otherwise in memory, written with the next compaction
    /// (see the module's doc). Compacts after a stable checkpoint.
    pub fn append(&mut self, records: Vec<Record>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut stable = false;
        for r in records {
            let key = self.next_key;
            self.next_key += 1;
            let meta = Meta::of(key, &r);
            stable |= meta.stable;
            self.metas.push(meta);
            self.pending.push((key, r));
        }
        if self.fsync || stable || self.pending.len() >= PENDING_MAX {
            let durability = if self.fsync {
                Durability::Immediate
            } else {
                Durability::None
            };
            self.write(stable, durability)?;
        }
        Ok(())
    }

    /// Writes the pending records in one transaction, after compacting
    /// when `compact` (records compaction drops are not written at all).
    fn write(&mut self, compact: bool, durability: Durability) -> Result<()> {
        let dropped = if compact { self.compact() } else { Vec::new() };
        let pending = std::mem::take(&mut self.pending);
        let path = &self.path;
        let mut txn = self.db.begin_write().map_err(|e| db_err(path, e))?;
        txn.set_durability(durability)
            .map_err(|e| db_err(path, e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| db_err(path, e))?;
            let first_pending = pending.first().map_or(u64::MAX, |(k, _)| *k);
            for (key, record) in &pending {
                if dropped.binary_search(key).is_err() {
                    table
                        .insert(*key, record.encode().as_slice())
                        .map_err(|e| db_err(path, e))?;
                }
            }
            for key in dropped.iter().take_while(|k| **k < first_pending) {
                table.remove(*key).map_err(|e| db_err(path, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(path, e))
    }

    /// Makes every record appended so far durable, with or without
    /// `fsync`: a replica that stops cleanly calls this last, or it
    /// restarts from the log it had when it opened (redb keeps the commits
    /// of a log opened without fsync in memory until a durable commit, and
    /// such a log holds its newest records in memory itself).
    pub fn persist(&mut self) -> Result<()> {
        self.write(false, Durability::Immediate)
    }

    /// Records held (after compaction).
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Drops from `metas` what recovery no longer needs and returns their
    /// keys: keep the latest stable checkpoint, the latest view record, and
    /// every record about a sequence number above the stable checkpoint.
    fn compact(&mut self) -> Vec<u64> {
        let stable = self.metas.iter().rposition(|m| m.stable);
        let stable_seq = stable.and_then(|i| self.metas[i].seq).unwrap_or(0);
        let view = self.metas.iter().rposition(|m| m.view);
        let mut dropped = Vec::new();
        let mut i = 0;
        self.metas.retain(|m| {
            let keep = Some(i) == stable
                || Some(i) == view
                || (!m.stable && m.seq.is_some_and(|s| s > stable_seq));
            i += 1;
            if !keep {
                dropped.push(m.key);
            }
            keep
        });
        dropped
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Db {
        path: path.to_path_buf(),
        detail: format!("{e}; check the replica's data directory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voidbox_pbft::{compact_records, Digest};

    fn committed(seq: u64) -> Record {
        Record::Committed {
            view: 0,
            seq,
            digest: Digest::default(),
        }
    }

    #[test]
    fn records_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.redb");
        let written = vec![
            Record::View {
                view: 0,
                active: true,
            },
            committed(1),
            committed(2),
        ];
        {
            let (mut log, old) = ProtocolLog::open(&path, true).unwrap();
            assert!(old.is_empty());
            log.append(written[..1].to_vec()).unwrap();
            log.append(written[1..].to_vec()).unwrap();
        }
        let (log, read) = ProtocolLog::open(&path, true).unwrap();
        assert_eq!(read, written);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn without_fsync_records_wait_in_memory_and_a_clean_stop_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.redb");
        let written: Vec<Record> = (1..=5).map(committed).collect();
        {
            let (mut log, _) = ProtocolLog::open(&path, false).unwrap();
            log.append(written[..2].to_vec()).unwrap();
            log.append(written[2..].to_vec()).unwrap();
            assert_eq!(log.pending.len(), 5, "no transaction per append");
            log.persist().unwrap();
            assert!(log.pending.is_empty());
        }
        let (mut log, read) = ProtocolLog::open(&path, false).unwrap();
        assert_eq!(read, written);
        // Past the bound, records are written without waiting for a
        // checkpoint.
        let many: Vec<Record> = (6..6 + PENDING_MAX as u64).map(committed).collect();
        log.append(many).unwrap();
        assert!(log.pending.is_empty());
        assert_eq!(log.len(), 5 + PENDING_MAX);
    }

    #[test]
    fn compaction_keeps_what_the_core_would_keep() {
        // The same rule as the core's compact_records, checked on metadata.
        let mut records = vec![
            Record::View {
                view: 0,
                active: true,
            },
            committed(1),
            committed(2),
            committed(3),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut log = ProtocolLog {
            db: Database::create(dir.path().join("x.redb")).unwrap(),
            path: PathBuf::from("x"),
            fsync: false,
            metas: records
                .iter()
                .enumerate()
                .map(|(i, r)| Meta::of(i as u64, r))
                .collect(),
            next_key: records.len() as u64,
            pending: Vec::new(),
        };
        // A "stable" marker at seq 2, in metadata (building a real
        // StateTransfer record needs a whole signed proof).
        log.metas.push(Meta {
            key: 4,
            stable: true,
            view: false,
            seq: Some(2),
        });
        let dropped = log.compact();
        assert_eq!(dropped, vec![1, 2]);
        let kept: Vec<u64> = log.metas.iter().map(|m| m.key).collect();
        assert_eq!(kept, vec![0, 3, 4]);
        // The core's rule on the same records without the marker keeps all.
        compact_records(&mut records);
        assert_eq!(records.len(), 4);
    }
}
