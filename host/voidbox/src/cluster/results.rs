//! The journal of a replica's results, by number, in its `results.redb`.
//!
//! Every executed request leaves an entry: the invocation as it ran, the
//! result bytes the replicas signed, and the hash chain after it. A peer
//! that catches up after a state transfer fetches entries from here,
//! checks them against the checkpoint's chain and re-runs them.
//!
//! Entries appended without `sync` wait in memory and reach the database
//! with the next synced append (every checkpoint): they would not survive a
//! crash in the database either (they are written without durability), and
//! a write transaction per batch cost more than the batch's signatures. A
//! synced append stores its entries as rows of up to [`ROW_ENTRIES`]
//! consecutive entries, keyed by the first one's number: one insert per
//! row instead of one per entry, which (with an entry about a kilobyte)
//! cost a replica more than a microsecond per request in the tree's page
//! splits. Readers see stored and waiting entries alike.
//!
//! Without fsync a synced append only asks for that write: a thread of the
//! journal's own does it, so the replica's protocol thread never waits for
//! redb. Measured at 40 clients (BENCHMARKS.md, PBFT cluster, session 27;
//! run by run in that file's history), about one checkpoint write in
//! twenty took 1.3-4.8 ms of CPU, and the slowest requests waited over 100
//! ms; every replica made the write at the same sequence number, so the
//! whole cluster stalled with it. With fsync the append stays
//! synchronous: the checkpoint's journal must be on disk before the
//! checkpoint can become stable.
//!
//! This module knows redb and postcard; it knows nothing of the protocol.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One executed request in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultEntry {
    /// Its number: requests executed since genesis, this one included.
    pub number: u64,
    /// The invocation as it ran (effective budget, consensus time), when
    /// the tool ran, in `wire::encode_invocation_entry`'s form (JSON in
    /// earlier versions); a re-run yields the same receipt.
    #[serde(with = "serde_bytes")]
    pub invocation: Option<Vec<u8>>,
    /// The result bytes the replicas signed.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    /// The chain value after this result.
    pub chain: [u8; 32],
}

/// Most journal entries asked for, or served, at once (each holds at most
/// 64 KiB of inline output and a receipt, so a response stays far below the
/// frame limit).
pub const RESULTS_CHUNK: u64 = 128;

/// Most entries in one row: a reader of a few entries decodes at most two
/// rows of this many.
pub const ROW_ENTRIES: usize = 256;

/// Most entries waiting in memory for the writer thread (without fsync)
/// before an append waits for it to take them: about 16 MiB, well over a
/// second of a loaded cluster's results.
const WAITING_ENTRIES_MAX: usize = 16_384;

/// Rows of consecutive entries, keyed by the first entry's number: the last
/// entry's number (8 bytes, little-endian), then postcard's
/// `Vec<ResultEntry>`. Rows never overlap.
const ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("result_rows");

/// Earlier versions kept one entry per row here; [`Results::open_with`]
/// moves them into [`ROWS`].
const ENTRIES_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("results");

/// A row's bytes (see [`ROWS`]); `entries` is not empty.
fn encode_row(entries: &[ResultEntry]) -> Vec<u8> {
    let last = entries.last().map_or(0, |e| e.number);
    postcard::to_extend(entries, last.to_le_bytes().to_vec()).expect("entries serialize")
}

/// The last entry's number in a row's bytes (0 for a malformed row, which
/// decoding then refuses).
fn row_last(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// The journal (see the module doc).
#[derive(Debug, Clone)]
pub struct Results {
    db: Arc<Database>,
    path: PathBuf,
    /// Entries not in the database yet, and the writer's wake-up.
    waiting: Arc<(Mutex<Waiting>, Condvar)>,
    /// Held across a write, from taking the entries to the commit: writes
    /// happen one at a time and in order (the newest of equal numbers wins).
    write_lock: Arc<Mutex<()>>,
    /// Whether a synced append reaches the disk (off only in clusters
    /// measured without fsync).
    fsync: bool,
    /// Without fsync: the thread that does synced appends' writes. Only the
    /// handles callers hold have it; the thread's own has none.
    writer: Option<Arc<Writer>>,
}

/// Entries on their way into the database.
#[derive(Debug, Default)]
struct Waiting {
    /// Appended and not yet taken by a write.
    unsynced: Vec<ResultEntry>,
    /// Taken by the write under way; read from here until it commits.
    writing: Arc<Vec<ResultEntry>>,
    /// A synced append asked for a write that has not started.
    wanted: bool,
    /// The writer thread is to stop (after a wanted write).
    stop: bool,
    /// Why the writer thread's last write failed; the next append or
    /// persist reports it.
    failed: Option<String>,
}

/// The writer thread; dropping the last handle stops and joins it.
#[derive(Debug)]
struct Writer {
    waiting: Arc<(Mutex<Waiting>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.waiting;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Results {
    /// Opens (or creates) the journal.
    pub fn open(path: &Path) -> crate::Result<Results> {
        Results::open_with(path, true)
    }

    /// Opens (or creates) the journal; without `fsync`, a synced append
    /// is written but not synced, as the cluster's `fsync = false` asks.
    pub fn open_with(path: &Path, fsync: bool) -> crate::Result<Results> {
        let err = |e: &dyn std::fmt::Display| Error::Db {
            path: path.to_path_buf(),
            detail: format!("{e}; check the replica's data directory"),
        };
        let db = redb::Builder::new()
            .set_cache_size(crate::storage::LOG_DB_CACHE_BYTES)
            .create(path)
            .map_err(|e| err(&e))?;
        let mut results = Results {
            db: Arc::new(db),
            path: path.to_path_buf(),
            waiting: Arc::default(),
            write_lock: Arc::default(),
            fsync,
            writer: None,
        };
        results.upgrade()?;
        if !fsync {
            let own = results.clone();
            let thread = std::thread::Builder::new()
                .name("voidbox-results".into())
                .spawn(move || {
                    // At each checkpoint every replica's writer wakes at
                    // about the same moment, like the storage checkpoints
                    // that stalled the cluster at the protocol threads'
                    // priority (see `CheckpointPriority::Low`).
                    crate::storage::run_when_idle("results journal writer");
                    own.write_when_asked()
                })
                .map_err(|e| err(&format!("cannot start the journal's writer: {e}")))?;
            results.writer = Some(Arc::new(Writer {
                waiting: results.waiting.clone(),
                thread: Some(thread),
            }));
        }
        Ok(results)
    }

    /// The writer thread: each synced append's write, until stopped.
    fn write_when_asked(&self) {
        let (lock, wake) = &*self.waiting;
        loop {
            {
                let mut w = lock.lock().unwrap_or_else(|e| e.into_inner());
                while !w.wanted && !w.stop {
                    w = wake.wait(w).unwrap_or_else(|e| e.into_inner());
                }
                if !w.wanted {
                    return;
                }
            }
            if let Err(e) = self.write(Durability::None) {
                tracing::error!("the results journal could not be written: {e}");
                self.lock_waiting().failed = Some(e.to_string());
                // An appender waiting for room learns of it.
                wake.notify_all();
            }
        }
    }

    fn lock_waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.0.lock().expect("journal buffer poisoned")
    }

    /// The writer thread's failure, if any, as this call's error.
    fn check_writer(&self, w: &Waiting) -> crate::Result<()> {
        match &w.failed {
            Some(e) => Err(self.err(format!("an earlier write failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Moves every waiting entry into the database in one transaction.
    fn write(&self, durability: Durability) -> crate::Result<()> {
        let _one_at_a_time = self.write_lock.lock().expect("journal writer poisoned");
        let entries = {
            let mut w = self.lock_waiting();
            w.wanted = false;
            let taken = Arc::new(std::mem::take(&mut w.unsynced));
            w.writing = taken.clone();
            // Room for an appender waiting on `WAITING_ENTRIES_MAX`.
            self.waiting.1.notify_all();
            taken
        };
        let written = (|| {
            let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
            txn.set_durability(durability).map_err(|e| self.err(e))?;
            if !entries.is_empty() {
                self.replace(&txn, &entries)?;
            }
            txn.commit().map_err(|e| self.err(e))
        })();
        let mut w = self.lock_waiting();
        if written.is_err() {
            // Not lost: back in front of what came since, to be written by
            // the next synced append or a clean stop.
            let later = std::mem::take(&mut w.unsynced);
            w.unsynced = entries.as_ref().clone();
            w.unsynced.extend(later);
        }
        w.writing = Arc::default();
        written
    }

    /// Whether a synced append waits for the disk.
    pub fn fsync(&self) -> bool {
        self.fsync
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Db {
            path: self.path.clone(),
            detail: format!("{e}; check the replica's data directory"),
        }
    }

    fn decode_err(&self, e: impl std::fmt::Display) -> Error {
        self.err(format!("a journal row does not decode: {e}"))
    }

    /// A row's entries.
    fn decode_row(&self, bytes: &[u8]) -> crate::Result<Vec<ResultEntry>> {
        let body = bytes
            .get(8..)
            .ok_or_else(|| self.decode_err("it is too short"))?;
        postcard::from_bytes(body).map_err(|e| self.decode_err(e))
    }

    /// Creates the table, and moves entries an earlier version stored one
    /// per row into rows.
    fn upgrade(&self) -> crate::Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.open_table(ROWS).map_err(|e| self.err(e))?;
        let old_exists = txn
            .list_tables()
            .map_err(|e| self.err(e))?
            .any(|t| t.name() == ENTRIES_V1.name());
        if old_exists {
            let mut old = Vec::new();
            {
                let table = txn.open_table(ENTRIES_V1).map_err(|e| self.err(e))?;
                for row in table.iter().map_err(|e| self.err(e))? {
                    let (_, v) = row.map_err(|e| self.err(e))?;
                    old.push(
                        postcard::from_bytes::<ResultEntry>(v.value())
                            .map_err(|e| self.decode_err(e))?,
                    );
                }
            }
            if !old.is_empty() {
                self.replace(&txn, &old)?;
            }
            txn.delete_table(ENTRIES_V1).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Appends entries (in order of number); durable at once when `sync`,
    /// otherwise with the next synced append (a lost unsynced entry is
    /// re-executed after a restart, because it is above the stable
    /// checkpoint). A synced append replaces the stored entries numbered
    /// within the range it writes (a re-run after a divergence).
    ///
    /// Without fsync a synced append returns at once and the journal's
    /// thread writes the entries; readers see them meanwhile, and
    /// [`Results::persist`] waits for the write.
    pub fn append(&self, entries: Vec<ResultEntry>, sync: bool) -> crate::Result<()> {
        {
            let mut w = self.lock_waiting();
            self.check_writer(&w)?;
            w.unsynced.extend(entries);
            if self.writer.is_some() && w.unsynced.len() >= WAITING_ENTRIES_MAX {
                // The writer runs in the idle class: one starved on a busy
                // machine holds the appender back here instead of letting
                // entries pile up in memory. What it takes is written as a
                // synced append's entries are, only sooner.
                w.wanted = true;
                self.waiting.1.notify_all();
                while w.unsynced.len() >= WAITING_ENTRIES_MAX && w.failed.is_none() {
                    w = self.waiting.1.wait(w).unwrap_or_else(|e| e.into_inner());
                }
                self.check_writer(&w)?;
            }
            if !sync {
                return Ok(());
            }
            if self.writer.is_some() {
                w.wanted = true;
                self.waiting.1.notify_all();
                return Ok(());
            }
        }
        self.write(if self.fsync {
            Durability::Immediate
        } else {
            Durability::None
        })
    }

    /// Makes every synced append so far durable, with or without `fsync`
    /// (see [`crate::cluster::log::ProtocolLog::persist`]), after the
    /// writer's write under way; entries that wait in memory for a synced
    /// append stay there.
    pub fn persist(&self) -> crate::Result<()> {
        let wanted = {
            let w = self.lock_waiting();
            self.check_writer(&w)?;
            w.wanted
        };
        if wanted {
            return self.write(Durability::Immediate);
        }
        let _after_the_writer = self.write_lock.lock().expect("journal writer poisoned");
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Writes `entries` as rows, first removing the stored entries numbered
    /// within their range (a row that straddles it keeps its parts
    /// outside, as rows of their own).
    fn replace(&self, txn: &WriteTransaction, entries: &[ResultEntry]) -> crate::Result<()> {
        // The newest of equal numbers wins (a re-run waited behind the
        // first run of the same number). Usually they come in order, and
        // are written as they are, uncopied.
        let entries: Cow<'_, [ResultEntry]> =
            if entries.windows(2).all(|w| w[0].number < w[1].number) {
                Cow::Borrowed(entries)
            } else {
                let mut sorted = entries.to_vec();
                sorted.reverse();
                sorted.sort_by_key(|e| e.number);
                sorted.dedup_by_key(|e| e.number);
                Cow::Owned(sorted)
            };
        let (Some(lo), Some(hi)) = (
            entries.first().map(|e| e.number),
            entries.last().map(|e| e.number),
        ) else {
            return Ok(());
        };
        let mut table = txn.open_table(ROWS).map_err(|e| self.err(e))?;
        // Rows that may hold numbers in lo..=hi: the last one starting at
        // or before lo, and every one starting within the range.
        let mut keys: Vec<u64> = Vec::new();
        if let Some(row) = table.range(..=lo).map_err(|e| self.err(e))?.next_back() {
            let (k, v) = row.map_err(|e| self.err(e))?;
            if row_last(v.value()) >= lo {
                keys.push(k.value());
            }
        }
        for row in table.range(lo + 1..=hi).map_err(|e| self.err(e))? {
            keys.push(row.map_err(|e| self.err(e))?.0.value());
        }
        let mut kept: Vec<ResultEntry> = Vec::new();
        for key in keys {
            let Some(bytes) = table.remove(key).map_err(|e| self.err(e))? else {
                continue;
            };
            let row = self.decode_row(bytes.value())?;
            drop(bytes);
            kept.extend(row.into_iter().filter(|e| e.number < lo || e.number > hi));
        }
        let kept = if kept.is_empty() {
            entries
        } else {
            kept.extend(entries.iter().cloned());
            kept.sort_by_key(|e| e.number);
            Cow::Owned(kept)
        };
        // Rows of consecutive numbers, at most ROW_ENTRIES each, so that
        // no row's span takes in an entry of another.
        let mut start = 0;
        while start < kept.len() {
            let mut end = start + 1;
            while end < kept.len()
                && end - start < ROW_ENTRIES
                && kept[end].number == kept[end - 1].number + 1
            {
                end += 1;
            }
            table
                .insert(kept[start].number, encode_row(&kept[start..end]).as_slice())
                .map_err(|e| self.err(e))?;
            start = end;
        }
        Ok(())
    }

    /// Entries not in the database (waiting, or being written) numbered
    /// within `range`, in order of number (the newest of equal numbers).
    ///
    /// Readers ask this before the database: an entry a write takes stays
    /// here until its commit, so it is in one place or the other whenever
    /// they look, never in neither.
    fn unsynced_in(&self, range: impl RangeBounds<u64>) -> Vec<ResultEntry> {
        let w = self.lock_waiting();
        let mut by_number = BTreeMap::new();
        for e in w
            .writing
            .iter()
            .chain(&w.unsynced)
            .filter(|e| range.contains(&e.number))
        {
            by_number.insert(e.number, e.clone());
        }
        by_number.into_values().collect()
    }

    /// Stored entries numbered within `lo..=hi`, by number.
    fn stored(&self, lo: u64, hi: u64) -> crate::Result<BTreeMap<u64, ResultEntry>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(ROWS).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        let mut take = |bytes: &[u8]| -> crate::Result<()> {
            if row_last(bytes) < lo {
                return Ok(());
            }
            for e in self.decode_row(bytes)? {
                if (lo..=hi).contains(&e.number) {
                    out.insert(e.number, e);
                }
            }
            Ok(())
        };
        if let Some(row) = table.range(..=lo).map_err(|e| self.err(e))?.next_back() {
            take(row.map_err(|e| self.err(e))?.1.value())?;
        }
        if lo < hi {
            for row in table.range(lo + 1..=hi).map_err(|e| self.err(e))? {
                take(row.map_err(|e| self.err(e))?.1.value())?;
            }
        }
        Ok(out)
    }

    /// Entries numbered `from..from + count` that are present, in order.
    pub fn range(&self, from: u64, count: u64) -> crate::Result<Vec<ResultEntry>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let hi = from.saturating_add(count - 1);
        let waiting = self.unsynced_in(from..=hi);
        let mut out = self.stored(from, hi)?;
        // A waiting entry is newer than a stored one of the same number
        // (one re-executed after a divergence).
        out.extend(waiting.into_iter().map(|e| (e.number, e)));
        Ok(out.into_values().collect())
    }

    /// The entry with the highest number at most `n`.
    pub fn last_at_most(&self, n: u64) -> crate::Result<Option<ResultEntry>> {
        let pending = self.unsynced_in(..=n).pop();
        let stored = {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let table = txn.open_table(ROWS).map_err(|e| self.err(e))?;
            let last = table
                .range(..=n)
                .map_err(|e| self.err(e))?
                .next_back()
                .transpose()
                .map_err(|e| self.err(e))?;
            match last {
                Some((_, v)) => self
                    .decode_row(v.value())?
                    .into_iter()
                    .rfind(|e| e.number <= n),
                None => None,
            }
        };
        Ok(match (stored, pending) {
            (Some(s), Some(p)) if s.number > p.number => Some(s),
            (stored, pending) => pending.or(stored),
        })
    }

    /// Rows stored, for tests of the layout.
    #[cfg(test)]
    fn rows(&self) -> Vec<(u64, usize)> {
        let txn = self.db.begin_read().unwrap();
        let table = txn.open_table(ROWS).unwrap();
        table
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let row = self.decode_row(v.value()).unwrap();
                assert_eq!(row_last(v.value()), row.last().unwrap().number);
                (k.value(), row.len())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries `from..=to` whose results say `tag`.
    fn entries(tag: &str, from: u64, to: u64) -> Vec<ResultEntry> {
        (from..=to)
            .map(|number| ResultEntry {
                number,
                invocation: (number % 3 == 0).then(|| format!("inv {number}").into_bytes()),
                result: format!("{tag} {number}").into_bytes(),
                chain: [number as u8; 32],
            })
            .collect()
    }

    #[test]
    fn unsynced_results_are_read_from_memory_and_written_with_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.redb");
        let all = entries("h", 1, 30);
        let results = Results::open(&path).unwrap();
        results.append(all[..10].to_vec(), true).unwrap();
        results.append(all[10..20].to_vec(), false).unwrap();
        results.append(all[20..25].to_vec(), false).unwrap();
        // Readers see synced and unsynced entries alike, in order.
        assert_eq!(results.range(1, 100).unwrap(), all[..25]);
        assert_eq!(results.range(8, 5).unwrap(), all[7..12]);
        assert_eq!(results.last_at_most(17).unwrap().as_ref(), Some(&all[16]));
        assert_eq!(results.last_at_most(9).unwrap().as_ref(), Some(&all[8]));
        assert_eq!(results.last_at_most(1000).unwrap().as_ref(), Some(&all[24]));
        // The unsynced ones are not on disk yet: a restart loses them (the
        // replica re-executes what is above its stable checkpoint).
        drop(results);
        let reopened = Results::open(&path).unwrap();
        assert_eq!(reopened.range(1, 100).unwrap(), all[..10]);
        // The next synced append writes what waited and what it brings.
        reopened.append(all[10..20].to_vec(), false).unwrap();
        reopened.append(all[20..30].to_vec(), true).unwrap();
        drop(reopened);
        assert_eq!(Results::open(&path).unwrap().range(1, 100).unwrap(), all);
    }

    #[test]
    fn without_fsync_the_writer_runs_when_idle_and_bounds_what_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.redb");
        let all = entries("w", 1, WAITING_ENTRIES_MAX as u64 + 10);
        let results = Results::open_with(&path, false).unwrap();
        crate::storage::tests::wait_for_an_idle_thread("voidbox-results");
        // Past the bound an append waits until the writer has taken what
        // waited, though no append asked for a sync.
        results.append(all[..10].to_vec(), false).unwrap();
        results.append(all[10..].to_vec(), false).unwrap();
        assert!(results.lock_waiting().unsynced.len() < WAITING_ENTRIES_MAX);
        assert_eq!(results.range(1, all.len() as u64).unwrap(), all);
        // And what the writer took is in the database after a clean stop.
        results.persist().unwrap();
        drop(results);
        assert_eq!(
            Results::open(&path)
                .unwrap()
                .range(1, all.len() as u64)
                .unwrap(),
            all
        );
    }

    #[test]
    fn without_fsync_a_synced_append_still_moves_entries_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries("n", 1, 20);
        let results = Results::open_with(&dir.path().join("results.redb"), false).unwrap();
        results.append(all[..5].to_vec(), false).unwrap();
        results.append(all[5..12].to_vec(), true).unwrap();
        // The journal's thread writes it; persist waits for that write.
        results.persist().unwrap();
        assert!(
            results.unsynced_in(..).is_empty(),
            "the synced append took what waited in memory"
        );
        results.append(all[12..].to_vec(), false).unwrap();
        assert_eq!(results.range(1, 100).unwrap(), all);
        assert_eq!(results.last_at_most(12).unwrap().as_ref(), Some(&all[11]));
    }

    #[test]
    fn without_fsync_a_synced_append_does_not_wait_for_the_write() {
        use std::sync::mpsc;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let all = entries("w", 1, 30);
        let results = Results::open_with(&dir.path().join("results.redb"), false).unwrap();
        results.append(all[..10].to_vec(), true).unwrap();
        // A slow write: another thread holds the write lock until told.
        let (locked_tx, locked) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let lock = results.write_lock.clone();
        let holder = std::thread::spawn(move || {
            let _held = lock.lock().unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        locked.recv().unwrap();
        // The protocol thread's synced append returns while it lasts.
        let (done_tx, done) = mpsc::channel();
        let appender = {
            let results = results.clone();
            let more = all[10..].to_vec();
            std::thread::spawn(move || done_tx.send(results.append(more, true)).unwrap())
        };
        let returned = done.recv_timeout(Duration::from_secs(10));
        release.send(()).unwrap();
        holder.join().unwrap();
        appender.join().unwrap();
        assert!(
            matches!(returned, Ok(Ok(()))),
            "a synced append without fsync waited for the write: {returned:?}"
        );
        // Written since: everything is in rows, nothing waits in memory.
        results.persist().unwrap();
        assert!(results.unsynced_in(..).is_empty());
        assert_eq!(results.rows().iter().map(|r| r.1).sum::<usize>(), 30);
        assert_eq!(results.range(1, 100).unwrap(), all);
    }

    #[test]
    fn readers_see_every_entry_while_the_writer_moves_them() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let all = entries("m", 1, 12_000);
        let results = Results::open_with(&dir.path().join("results.redb"), false).unwrap();
        let appended = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let reader = {
            let (results, appended, finished, all) = (
                results.clone(),
                appended.clone(),
                finished.clone(),
                all.clone(),
            );
            std::thread::spawn(move || {
                let mut reads = 0;
                while !finished.load(Ordering::Acquire) || reads == 0 {
                    let before = appended.load(Ordering::Acquire);
                    let got = results.range(1, 20_000).unwrap();
                    assert!(
                        got.len() >= before,
                        "read {} of {before} appended",
                        got.len()
                    );
                    assert_eq!(got, all[..got.len()]);
                    if let Some(last) = results.last_at_most(before as u64).unwrap() {
                        assert_eq!(last.number, before as u64);
                    }
                    reads += 1;
                }
                reads
            })
        };
        for (i, chunk) in all.chunks(10).enumerate() {
            results.append(chunk.to_vec(), i % 4 == 3).unwrap();
            appended.fetch_add(chunk.len(), Ordering::Release);
        }
        finished.store(true, Ordering::Release);
        assert!(reader.join().unwrap() > 0);
        results.persist().unwrap();
        assert_eq!(results.range(1, 20_000).unwrap(), all);
    }

    #[test]
    fn entries_are_stored_in_rows_and_read_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results::open(&dir.path().join("results.redb")).unwrap();
        let n = 2 * ROW_ENTRIES as u64 + 10;
        let all = entries("r", 1, n);
        results.append(all[..7].to_vec(), true).unwrap();
        results.append(all[7..].to_vec(), true).unwrap();
        // Two synced appends: a row of 7, then rows of at most ROW_ENTRIES.
        let rows = results.rows();
        assert_eq!(rows[0], (1, 7));
        assert!(rows.iter().all(|&(_, len)| len <= ROW_ENTRIES), "{rows:?}");
        assert_eq!(rows.iter().map(|r| r.1).sum::<usize>(), n as usize);
        // Any window reads the same as the entries themselves.
        for (from, count) in [
            (1, 1),
            (5, 5),
            (7, 2),
            (250, 20),
            (260, 300),
            (n, 5),
            (n + 1, 3),
        ] {
            let want: Vec<ResultEntry> = all
                .iter()
                .filter(|e| e.number >= from && e.number < from + count)
                .cloned()
                .collect();
            assert_eq!(results.range(from, count).unwrap(), want, "{from}+{count}");
        }
        assert!(results.range(3, 0).unwrap().is_empty());
        assert_eq!(results.last_at_most(300).unwrap().unwrap().number, 300);
        assert_eq!(results.last_at_most(0).unwrap(), None);
    }

    #[test]
    fn a_synced_append_replaces_the_entries_of_its_range_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.redb");
        let results = Results::open(&path).unwrap();
        let old = entries("old", 1, 40);
        results.append(old.clone(), true).unwrap();
        // A re-run of 11..=20 (a divergence repaired): the row 1..=40 keeps
        // 1..=10 and 21..=40 around the new entries.
        let new = entries("new", 11, 20);
        results.append(new.clone(), true).unwrap();
        let want: Vec<ResultEntry> = old[..10]
            .iter()
            .chain(&new)
            .chain(&old[20..])
            .cloned()
            .collect();
        assert_eq!(results.range(1, 100).unwrap(), want);
        assert_eq!(results.last_at_most(15).unwrap().as_ref(), Some(&new[4]));
        // A waiting entry of the same number is newer than a stored one,
        // and the newest of two waiting ones wins when they are written.
        let again = entries("again", 30, 30);
        let last = entries("last", 30, 30);
        results.append(again, false).unwrap();
        results.append(last.clone(), false).unwrap();
        assert_eq!(results.range(30, 1).unwrap(), last);
        results.append(Vec::new(), true).unwrap();
        drop(results);
        let reopened = Results::open(&path).unwrap();
        assert_eq!(reopened.range(30, 1).unwrap(), last);
        assert_eq!(reopened.range(29, 1).unwrap(), old[28..29]);
        assert_eq!(reopened.range(31, 1).unwrap(), old[30..31]);
        assert_eq!(reopened.range(1, 100).unwrap().len(), 40);
    }

    #[test]
    fn a_journal_of_one_entry_per_row_is_moved_into_rows_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.redb");
        let old = entries("v1", 1, 12);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(ENTRIES_V1).unwrap();
                for e in &old {
                    t.insert(e.number, postcard::to_allocvec(e).unwrap().as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let results = Results::open(&path).unwrap();
        assert_eq!(results.range(1, 100).unwrap(), old);
        assert_eq!(results.rows(), vec![(1, 12)]);
        drop(results);
        // Moved once: the old table is gone.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn
            .list_tables()
            .unwrap()
            .all(|t| t.name() != ENTRIES_V1.name()));
    }
}
