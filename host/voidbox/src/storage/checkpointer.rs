//! The checkpoint thread: writes taken tails into redb's logs and index
//! runs, merges runs, then deletes the journal segments they cover.

use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use voidbox_cas::{DiskStore, Store};

use super::flusher::{fail, segments, Handover, Segment};
use super::tail::{blob_key, Tail};
use super::{
    chunks, journal, run_corrupt, runs, thread_cpu_time, RunCache, Shared, BLOB_CHUNKS,
    RECEIPT_CHUNKS, RUN_BLOCKS, RUN_FENCES, RUN_SIZES,
};

/// The checkpoint thread: writes taken tails into redb, then deletes the
/// journal segments they cover.
pub(super) struct Checkpointer {
    /// The key of the next chunk of receipts.
    pub(super) next_receipt_chunk: u64,
    /// The key of the next chunk of small blobs.
    pub(super) next_blob_chunk: u64,
    /// The id of the next index run.
    pub(super) next_run: u64,
    pub(super) runs: Arc<RunCache>,
    pub(super) db: Arc<Database>,
    pub(super) disk: Arc<DiskStore>,
    pub(super) shared: Arc<Shared>,
    pub(super) journal_dir: PathBuf,
}

impl Checkpointer {
    pub(super) fn run(
        mut self,
        handovers: crossbeam_channel::Receiver<Handover>,
        recycle: crossbeam_channel::Sender<Tail>,
    ) {
        for h in handovers {
            let cpu = thread_cpu_time();
            if let Err(e) = self.checkpoint(&h) {
                fail(&self.shared, e);
                return;
            }
            let cpu = thread_cpu_time().saturating_sub(cpu);
            let mut st = self.shared.lock();
            st.stats.checkpoint_cpu_us += cpu.as_micros() as u64;
            st.sealed.retain(|t| !Arc::ptr_eq(t, &h.tail));
            st.checkpoints_done = st.checkpoints_done.max(h.ticket);
            st.stats.checkpoints += 1;
            st.stats.checkpointed_records += h.tail.records() as u64;
            drop(st);
            self.shared.done.notify_all();
            // Emptied outside the lock and handed back for reuse (readers
            // only borrow sealed tails under the lock, so this is the last
            // reference).
            if let Ok(mut tail) = Arc::try_unwrap(h.tail) {
                tail.clear();
                let _ = recycle.try_send(tail);
            }
        }
    }

    /// Writes the tail into redb in one transaction, then deletes the
    /// segments it covers. The tail may hold records of a generation not
    /// yet written: they reach redb early and the journal again later,
    /// which is harmless because every table is keyed by content. A crash
    /// between the commit and the deletion only replays records that redb
    /// already has.
    pub(super) fn checkpoint(&mut self, h: &Handover) -> std::result::Result<(), String> {
        let taken = &h.tail;
        let s = |e: &dyn std::fmt::Display| e.to_string();
        if taken.records() > 0 {
            // The tail may name large blobs of the open generation, which
            // the next frame would have synced: sync them now, before redb
            // makes their receipts durable.
            self.disk.sync().map_err(|e| e.to_string())?;
            let mut entries = Vec::with_capacity(taken.records());
            let mut txn = self.db.begin_write().map_err(|e| s(&e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| s(&e))?;
            {
                // Records go to the two logs in any order (their keys only
                // grow, so each chunk appends); the index entries that find
                // them are sorted once, into one new run.
                let mut blob_chunks = txn.open_table(BLOB_CHUNKS).map_err(|e| s(&e))?;
                let mut full = |key: u64, chunk: &[u8]| {
                    blob_chunks.insert(key, chunk).map(drop).map_err(|e| s(&e))
                };
                let mut chunk = chunks::Builder::new(self.next_blob_chunk);
                for at in taken.blobs.places() {
                    let d = blob_key(&taken.records, at);
                    let b = journal::blob_at(&taken.records[at..]);
                    let at = chunk.push(
                        |out| {
                            out.extend_from_slice(d.as_bytes());
                            out.extend_from_slice(b);
                        },
                        &mut full,
                    )?;
                    entries.push(runs::Entry {
                        key: d.0,
                        kind: runs::Kind::Blob,
                        position: at,
                    });
                }
                self.next_blob_chunk = chunk.finish(&mut full)?;
                // A receipt goes with its invocation in one record, and the
                // index finds the record by either digest; the entry by
                // invocation says whether the receipt answers it. (Not asked
                // of `cache`: a lookup per receipt in a table of megabytes
                // was a cache miss each.)
                let mut receipt_chunks = txn.open_table(RECEIPT_CHUNKS).map_err(|e| s(&e))?;
                let mut full = |key: u64, chunk: &[u8]| {
                    receipt_chunks
                        .insert(key, chunk)
                        .map(drop)
                        .map_err(|e| s(&e))
                };
                let mut chunk = chunks::Builder::new(self.next_receipt_chunk);
                for rec in &taken.recorded {
                    let outcome = taken.outcome(rec);
                    let at = chunk.push(|out| outcome.put_value(out), &mut full)?;
                    entries.push(runs::Entry {
                        key: rec.digest.0,
                        kind: runs::Kind::Receipt,
                        position: at,
                    });
                    entries.push(runs::Entry {
                        key: outcome.invocation_digest.0,
                        kind: if rec.cacheable {
                            runs::Kind::Cache
                        } else {
                            runs::Kind::Invocation
                        },
                        position: at,
                    });
                }
                self.next_receipt_chunk = chunk.finish(&mut full)?;
            }
            runs::sort_dedup(&mut entries);
            let id = self.next_run;
            self.next_run += 1;
            let meta = write_run(&txn, id, |push| {
                entries.iter().try_for_each(|e| push(&e.encoded()))
            })?;
            txn.commit().map_err(|e| s(&e))?;
            self.runs.insert(id, meta);
            self.merge_runs()?;
        }
        for sequence in segments(&self.journal_dir).map_err(|e| e.to_string())? {
            if sequence <= h.last_segment {
                let path = Segment::path(&self.journal_dir, sequence);
                std::fs::remove_file(&path)
                    .map_err(|e| format!("journal {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}

impl Checkpointer {
    /// Merges the newest index runs while a tier of them is due
    /// ([`runs::merge_due`]), each merge in its own transaction: it reads
    /// the runs from a snapshot, writes the merged run under a new id (the
    /// newest, as the runs it replaces were) and deletes them. Readers see
    /// either the runs or the merged one, which hold the same answers.
    fn merge_runs(&mut self) -> std::result::Result<(), String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        loop {
            let read = self.db.begin_read().map_err(|e| s(&e))?;
            let sizes = read.open_table(RUN_SIZES).map_err(|e| s(&e))?;
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for r in sizes.iter().map_err(|e| s(&e))? {
                let (id, n) = r.map_err(|e| s(&e))?;
                runs.push((id.value(), n.value()));
            }
            let counts: Vec<u64> = runs.iter().map(|r| r.1).collect();
            let k = runs::merge_due(&counts);
            if k == 0 {
                return Ok(());
            }
            // The newest k runs, newest first.
            let merging: Vec<u64> = runs[runs.len() - k..].iter().rev().map(|r| r.0).collect();
            let fences = read.open_table(RUN_FENCES).map_err(|e| s(&e))?;
            let blocks = read.open_table(RUN_BLOCKS).map_err(|e| s(&e))?;
            // The fences are usually cached already (this thread wrote the
            // runs); read from the snapshot otherwise.
            let meta = |id: u64| {
                self.runs
                    .get(id, || {
                        let v = fences
                            .get(id)
                            .map_err(|e| {
                                run_corrupt(id, format!("its fences cannot be read: {e}"))
                            })?
                            .ok_or_else(|| run_corrupt(id, "its fences are missing".into()))?;
                        runs::RunMeta::decode(v.value()).map_err(|d| run_corrupt(id, d))
                    })
                    .map_err(|e| e.to_string())
            };
            let metas = merging
                .iter()
                .map(|&id| meta(id))
                .collect::<std::result::Result<Vec<_>, String>>()?;
            // Block by block, so a merge never holds a whole run in memory.
            let mut cursors = merging
                .iter()
                .zip(&metas)
                .map(|(&id, m)| {
                    let blocks = &blocks;
                    runs::Cursor::new(m.blocks(), move |b, out: &mut Vec<u8>| {
                        let v = blocks
                            .get((id, b))
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| format!("index run {id}: block {b} is missing"))?;
                        out.extend_from_slice(v.value());
                        Ok(())
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            let id = self.next_run;
            self.next_run += 1;
            let mut txn = self.db.begin_write().map_err(|e| s(&e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| s(&e))?;
            let merged = write_run(&txn, id, |push| runs::merge(&mut cursors, push))?;
            {
                let mut blocks = txn.open_table(RUN_BLOCKS).map_err(|e| s(&e))?;
                let mut sizes = txn.open_table(RUN_SIZES).map_err(|e| s(&e))?;
                let mut fences = txn.open_table(RUN_FENCES).map_err(|e| s(&e))?;
                for (&old, m) in merging.iter().zip(&metas) {
                    for b in 0..m.blocks() {
                        blocks.remove((old, b)).map_err(|e| s(&e))?;
                    }
                    sizes.remove(old).map_err(|e| s(&e))?;
                    fences.remove(old).map_err(|e| s(&e))?;
                }
            }
            txn.commit().map_err(|e| s(&e))?;
            self.runs.insert(id, merged);
            self.runs.forget(&merging);
        }
    }
}

/// Writes a run as blocks under `id`, with its size and fences, in `txn`:
/// `fill` hands every entry, encoded and in order, to the function it is
/// given (a checkpoint's sorted entries, or a merge's output).
pub(super) fn write_run(
    txn: &redb::WriteTransaction,
    id: u64,
    fill: impl FnOnce(
        &mut dyn FnMut(&runs::Encoded) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), String>,
) -> std::result::Result<runs::RunMeta, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let mut blocks = txn.open_table(RUN_BLOCKS).map_err(|e| s(&e))?;
    let mut builder = runs::Builder::default();
    let mut write = |(n, block): (u32, Vec<u8>)| {
        blocks
            .insert((id, n), &block[..])
            .map(drop)
            .map_err(|e| s(&e))
    };
    fill(&mut |e| builder.push(e).map_or(Ok(()), &mut write))?;
    let (last, meta) = builder.finish();
    last.map_or(Ok(()), write)?;
    txn.open_table(RUN_SIZES)
        .map_err(|e| s(&e))?
        .insert(id, meta.entries)
        .map_err(|e| s(&e))?;
    txn.open_table(RUN_FENCES)
        .map_err(|e| s(&e))?
        .insert(id, &meta.encode()[..])
        .map_err(|e| s(&e))?;
    Ok(meta)
}
