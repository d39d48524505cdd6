//! Durable state of a host: the embedded database (redb), the blob store,
//! and the journal that keeps both off the invocation's hot path.
//!
//! Layout of a data directory:
//!
//! ```text
//! voidbox.toml        configuration (optional)
//! voidbox.redb        tools, names, receipts, the action cache, small blobs
//! journal/            records not yet checkpointed into voidbox.redb
//! cas/                blobs larger than `inline_blob_bytes_max` (voidbox-cas)
//! compiled/           compiled tool artifacts (a cache; safe to delete)
//! ```
//!
//! The hot path: an invocation's small input and output, its receipt and
//! its action-cache entry are appended as records to an in-memory buffer
//! (and to an in-memory index, the *tail*, that readers consult before the
//! database). A flusher thread writes the buffer to the journal as one
//! frame per group commit (every `BATCH_WINDOW`, or at once when someone
//! waits in [`Storage::flush`]), after syncing any large blobs the frame's
//! receipts name, and fsyncs it. The journal is a sequence of segment
//! files; when the open one passes `CHECKPOINT_BYTES` (and when the host
//! closes, or GC asks), the flusher takes the tail (a pointer swap) and
//! starts a new segment, and a checkpointer thread appends the taken tail
//! to redb's two logs (receipts with their invocations, small blobs) and
//! their index entries as one sorted run ([`runs`]) in one transaction,
//! then deletes the segments it covers. Group commits go on meanwhile. Opening a host
//! replays the segments' intact frames into the tail; a frame torn by a
//! crash is cut off, with everything after it.
//!
//! What is durable when: a tool is durable when `add_tool` returns. An
//! invocation's records are durable once the frame holding them is fsynced
//! (within `BATCH_WINDOW`, or when [`Storage::flush`] returns). Records are
//! replayed strictly in order and a receipt's record is appended after the
//! blobs it names (large blobs are synced before the frame is written), so
//! a crash can lose the newest receipts and cache entries (the next
//! identical invocation recomputes them) but never leaves a receipt or a
//! cache entry that points at a missing or wrong blob.
//!
//! Where the parts live: this module holds [`Storage`] (the lock, the
//! reads, opening and closing); [`tail`] the in-memory tail; [`flusher`]
//! the segment files, their replay and the flusher thread;
//! [`checkpointer`] the checkpoint thread; [`blobs`] the [`Blobs`] store.
//! The pure parts: [`journal`] (record encodings), [`runs`] (sorted index
//! runs and their merges), [`chunks`], [`prefix_filter`], [`tail_index`].

mod blobs;
mod checkpointer;
mod chunks;
mod digest_hash;
mod flusher;
mod journal;
mod prefix_filter;
mod runs;
mod tail;
mod tail_index;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use voidbox_cas::{Digest, DiskStore, Store};

use crate::config::{CheckpointPriority, StorageSettings};
use crate::error::{Error, Result};
use crate::invocation::{Invocation, Receipt};
pub use blobs::Blobs;
use checkpointer::Checkpointer;
pub(crate) use digest_hash::{DigestMap, DigestSet};
use flusher::{replay_journal, Flusher, Segment};
use prefix_filter::PrefixFilter;
use tail::{cache_key, Tail};

/// Tool digest → tool record (JSON).
pub(crate) const TOOLS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tools");
/// Tool name → tool digest.
pub(crate) const NAMES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("names");
/// Receipt digest → receipt: what databases written before the receipt
/// log hold (JSON, or the journal's encoding); read, never written.
const RECEIPTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("receipts");
/// Chunk key → a chunk ([`chunks`]) of receipts, each with its invocation
/// (the journal's encoding), in checkpoint order. Keys only grow, so a
/// checkpoint appends to the right edge of this B-tree instead of
/// rewriting pages all over it: with receipts keyed by their (random)
/// digests, every checkpoint rewrote most of the receipts table, and the
/// CPU each invocation cost grew with the database (16.8 us on a fresh
/// one, 24 us averaged over 12 s of invocations on one thread).
const RECEIPT_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipt_chunks");
/// Sequence number → one receipt with its invocation: the receipt log of
/// databases written before [`RECEIPT_CHUNKS`]; read, never written.
const RECEIPT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("receipt_log");
/// Receipt digest → its sequence number in [`RECEIPT_LOG`]: what
/// databases written before the index runs hold; read, never written.
const RECEIPT_INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("receipt_index");
/// Chunk key → a chunk ([`chunks`]) of small blobs (each its digest, then
/// its bytes), in checkpoint order: found through the index runs.
const BLOB_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blob_chunks");
/// Sequence number → one small blob: the blob log of databases written
/// before [`BLOB_CHUNKS`]; read, and its rows removed by `cas rm` and GC,
/// never written.
const BLOB_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("blob_log");
/// Index run id → its number of entries. Ids only grow: the highest is the
/// newest run, whose entries win over older ones with the same key.
const RUN_SIZES: TableDefinition<u64, u64> = TableDefinition::new("index_run_sizes");
/// Index run id → its fences ([`runs::RunMeta`]).
const RUN_FENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("index_run_fences");
/// (Index run id, block number) → a block of sorted index entries
/// ([`runs`]): digests of blobs, receipts and invocations → positions in
/// [`BLOB_LOG`] and [`RECEIPT_LOG`].
const RUN_BLOCKS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("index_run_blocks");
/// Invocation digest → invocation (JSON), for invocations recorded
/// without their receipt (none is, today) and those of older databases.
const INVOCATIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("invocations");
/// Invocation digest → receipt digest: the action cache of databases
/// written before the index runs, and entries whose receipt a checkpoint
/// does not hold.
const ACTION_CACHE: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("action_cache");
/// Small blobs stored at once by `cas put` and `tool add` (and every small
/// blob of databases written before the blob log): digest → content.
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
/// Pins of inline blobs (the disk store keeps its own).
const PINS: TableDefinition<&[u8; 32], ()> = TableDefinition::new("pins");

/// The journal's directory in the data directory: segment files
/// `<sequence number>.log`, replayed in order.
const JOURNAL_DIR: &str = "journal";
/// How long the flusher gathers records before it writes and fsyncs a
/// frame, unless someone waits for durability. One fsync per window, not
/// per invocation.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Segment size past which the flusher starts a new segment and hands the
/// tail to the checkpointer.
/// Many invocations per checkpoint amortize its fixed costs (an fsynced
/// commit, a run merge now and then); the tail (which mirrors the journal
/// in memory) and the replay time at open are bounded by it. (8 MiB was
/// measured too: the same checkpoint CPU per record, 20% less peak
/// memory, no change on the invoking thread.)
const CHECKPOINT_BYTES: u64 = 32 << 20;
/// The page cache of the cluster's own databases (the protocol log and the
/// result journal): both are written at their end and read back only at
/// open or by a peer catching up, so a small cache holds what is hot.
/// redb's default (1 GiB) fills as the files grow, and every page it
/// takes is fresh memory the kernel zeroes on first touch.
pub(crate) const LOG_DB_CACHE_BYTES: usize = 16 << 20;
/// Most taken tails waiting for (or in) a checkpoint; the flusher waits
/// before taking another.
const SEALED_TAILS_MAX: usize = 2;
/// Most bytes of records waiting for the flusher; past this, appenders wait,
/// so a slow disk slows callers instead of growing memory without bound.
const BUFFER_BYTES_MAX: usize = 64 << 20;

/// What the invoking threads and the flusher share, under one lock: the
/// record buffer and the tail change together, so a record is readable
/// exactly when it is queued for the journal, in the same order.
struct State {
    /// Encoded records of the open generation.
    buffer: Vec<u8>,
    /// The last timestamp [`Storage::record`] gave a receipt.
    last_timestamp: u64,
    /// The generation now being appended to (starts at 1; 0 is what a
    /// replay at open found).
    generation: u64,
    /// Every generation up to this one is durable in the journal.
    durable: u64,
    flush_wanted: bool,
    /// [`Storage::prefault`] asked the flusher to ready the next tail now.
    prepare_wanted: bool,
    checkpoints_asked: u64,
    checkpoints_done: u64,
    shutdown: bool,
    failed: Option<String>,
    /// Where new records go.
    tail: Tail,
    /// The first 4 bytes of every invocation digest that may have an
    /// action-cache entry (in redb or a tail): loaded from redb and the
    /// replayed journal at open, added to when an entry is recorded, never
    /// emptied (a stale member only costs a lookup). Readers rely on it
    /// covering every tail's `cache`: a key it lacks is in no tail. A miss,
    /// the common case for fresh inputs, is answered here without a redb
    /// read transaction (about 0.7 us, and a lock that every reader shares).
    /// Four bytes, not more: the set grows with every cached invocation
    /// and is probed and written by every fresh one, so its size decides
    /// how often that costs a trip to memory; a fresh invocation that
    /// shares a prefix with one of n entries (n / 2^32, 0.02% for a
    /// million) only asks the database for nothing.
    cache_filter: PrefixFilter,
    /// Tails taken by a checkpoint that is still writing them into redb:
    /// still read, until the checkpoint's commit is visible. Taking the tail
    /// is a pointer swap, so a checkpoint never holds the lock for long.
    sealed: Vec<Arc<Tail>>,
    /// Counters for `voidbox bench`.
    stats: StorageStats,
}

/// What the storage did so far (for benchmarks and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Frames written to the journal (group commits).
    pub frames: u64,
    /// Frames fsynced: every one, unless the storage runs without fsync
    /// (`storage.fsync = false`).
    pub synced_frames: u64,
    /// Bytes written to the journal.
    pub journal_bytes: u64,
    /// Checkpoints into redb.
    pub checkpoints: u64,
    /// Rotations that swapped in a tail the flusher had ready (its memory
    /// mapped, or recycled) rather than one made at the rotation.
    pub prepared_tails: u64,
    /// Records moved into redb by checkpoints.
    pub checkpointed_records: u64,
    /// CPU time the checkpoint thread spent on checkpoints, in
    /// microseconds: the part of each invocation's cost that runs in the
    /// background, on another core when there is one.
    pub checkpoint_cpu_us: u64,
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime only writes the struct it is given.
    let t = unsafe {
        let mut t = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher: work arrived, or a flush, checkpoint or shutdown.
    wake: Condvar,
    /// Wakes waiters: a frame became durable, a checkpoint ended, the buffer
    /// drained, or the flusher failed.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("storage state poisoned")
    }
}

impl State {
    /// The current tail, then the sealed ones, newest first.
    fn tails(&self) -> impl Iterator<Item = &Tail> {
        std::iter::once(&self.tail).chain(self.sealed.iter().rev().map(|t| &**t))
    }

    fn blob(&self, d: &Digest) -> Option<&[u8]> {
        self.tails().find_map(|t| t.blob(d))
    }

    /// Journals a small blob and adds it to the tail, unless a tail holds
    /// it already: a blob queued once need not be queued again.
    fn queue_blob(&mut self, digest: Digest, bytes: &[u8]) {
        if self.sealed.iter().any(|t| t.has_blob(&digest)) {
            return;
        }
        if let Some(record) = self.tail.push_blob(digest, bytes) {
            self.buffer.extend_from_slice(record);
        }
    }

    fn receipt(&self, d: &Digest) -> Option<journal::OutcomeRecord<'_>> {
        self.tails().find_map(|t| t.receipt(d))
    }

    fn invocation(&self, d: &Digest) -> Option<Invocation> {
        self.tails().find_map(|t| t.invocation(d))
    }

    fn cached(&self, invocation: &Digest) -> Option<Receipt> {
        self.tails().find_map(|t| t.cached(invocation))
    }

    /// What memory alone says of an invocation's action-cache entry (see
    /// [`Storage::cached_in_memory`]).
    fn in_memory(&self, invocation: &Digest) -> InMemory {
        // The filter first: it holds every key of every tail's cache too,
        // so a fresh invocation costs one probe, not one per tail (each a
        // likely cache miss in a table of tens of thousands of entries).
        if !self.cache_filter.contains(filter_key(invocation)) {
            return InMemory::Absent;
        }
        match self.cached(invocation) {
            Some(receipt) => InMemory::Found(receipt),
            None => InMemory::Stored,
        }
    }
}

/// The key of [`State::cache_filter`].
fn filter_key(invocation: &Digest) -> u32 {
    u32::from_le_bytes(invocation.0[..4].try_into().expect("4 bytes"))
}

thread_local! {
    /// Where a record is encoded before the storage lock is taken, so the
    /// lock is held for a copy, not for the encoding.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Decoded fences of the index runs by id, shared by readers and the
/// checkpointer. A run never changes once written, so an entry is never
/// stale; a reader whose snapshot still has a run merged away since reads
/// its fences from that snapshot.
#[derive(Default)]
struct RunCache(Mutex<std::collections::HashMap<u64, Arc<runs::RunMeta>>>);

impl RunCache {
    fn insert(&self, id: u64, meta: runs::RunMeta) {
        self.0
            .lock()
            .expect("run cache poisoned")
            .insert(id, Arc::new(meta));
    }

    /// Drops runs merged away (a reader still holding a snapshot with one
    /// reads its fences again from that snapshot).
    fn forget(&self, ids: &[u64]) {
        let mut m = self.0.lock().expect("run cache poisoned");
        for id in ids {
            m.remove(id);
        }
    }

    fn get(
        &self,
        id: u64,
        read: impl FnOnce() -> Result<runs::RunMeta>,
    ) -> Result<Arc<runs::RunMeta>> {
        if let Some(m) = self.0.lock().expect("run cache poisoned").get(&id) {
            return Ok(m.clone());
        }
        let meta = Arc::new(read()?);
        self.0
            .lock()
            .expect("run cache poisoned")
            .insert(id, meta.clone());
        Ok(meta)
    }
}

/// A blob readied by [`Storage::prepare_blob`] for [`Storage::record`].
pub(crate) struct PendingBlob<'a> {
    digest: Digest,
    /// The bytes of a small blob, which `record` appends; `None` for a
    /// large one, already in the disk store.
    inline: Option<&'a [u8]>,
}

impl PendingBlob<'_> {
    /// The blob's digest.
    pub(crate) fn digest(&self) -> Digest {
        self.digest
    }
}

/// The answer of [`Storage::cached_in_memory`].
// Returned and matched at once, never stored: boxing the receipt would add
// an allocation to every hit.
#[allow(clippy::large_enum_variant)]
pub(crate) enum InMemory {
    /// The journal's tail holds the invocation's receipt.
    Found(Receipt),
    /// No action-cache entry exists for the invocation.
    Absent,
    /// The database may hold one.
    Stored,
}

/// The database, the blob store, the journal and its flusher thread.
pub(crate) struct Storage {
    pub(crate) db: Arc<Database>,
    runs: Arc<RunCache>,
    db_path: PathBuf,
    disk: Arc<DiskStore>,
    inline_max: u64,
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("db", &self.db_path)
            .finish_non_exhaustive()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // The flusher writes what it has, hands the tail over, and ends;
        // the checkpointer ends once it has written what it was handed.
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        if let Some(c) = self.checkpointer.take() {
            let _ = c.join();
        }
    }
}

pub(crate) fn db_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |detail| Error::Db {
        path: path.to_path_buf(),
        detail,
    }
}

macro_rules! dbtry {
    ($path:expr, $e:expr) => {
        $e.map_err(|e| db_err($path)(e.to_string()))
    };
}

impl Storage {
    /// [`Storage::open_with`] with fsync.
    #[cfg(test)]
    pub(crate) fn open(home: &Path, inline_max: u64, db_cache_bytes: usize) -> Result<Storage> {
        Storage::open_with(
            home,
            &StorageSettings {
                inline_blob_bytes_max: inline_max,
                db_cache_bytes: db_cache_bytes as u64,
                ..StorageSettings::default()
            },
        )
    }

    /// Opens the storage of `home` with `settings`. Without `fsync` the
    /// journal's frames (and the large blobs before them) are written but
    /// not fsynced: records then survive a crash of the process, not of the
    /// machine. For measurements, as a cluster's `fsync = false` is;
    /// checkpoints into redb stay durable either way.
    pub(crate) fn open_with(home: &Path, settings: &StorageSettings) -> Result<Storage> {
        let inline_max = settings.inline_blob_bytes_max;
        let db_cache_bytes = usize::try_from(settings.db_cache_bytes).unwrap_or(usize::MAX);
        let fsync = settings.fsync;
        let low_priority = settings.checkpoint_priority == CheckpointPriority::Low;
        // How long to wait for another process (a second CLI, say) to let
        // go of the database's lock before giving up.
        const LOCK_WAIT: Duration = Duration::from_secs(5);
        const LOCK_POLL: Duration = Duration::from_millis(50);
        let db_path = home.join("voidbox.redb");
        let started = Instant::now();
        let mut told = false;
        let db = loop {
            match redb::Builder::new()
                .set_cache_size(db_cache_bytes)
                .create(&db_path)
            {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < LOCK_WAIT => {
                    if !told {
                        tracing::warn!(
                            "{} is in use by another voidbox process; waiting up to {} s for it",
                            db_path.display(),
                            LOCK_WAIT.as_secs()
                        );
                        told = true;
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(e) => return Err(Error::db_open(&db_path, e, started.elapsed())),
            }
        };
        if told {
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "got the database"
            );
        }
        {
            // Create every table once so readers never meet a missing one.
            let txn = dbtry!(&db_path, db.begin_write())?;
            dbtry!(&db_path, txn.open_table(TOOLS))?;
            dbtry!(&db_path, txn.open_table(NAMES))?;
            dbtry!(&db_path, txn.open_table(RECEIPTS))?;
            dbtry!(&db_path, txn.open_table(RECEIPT_LOG))?;
            dbtry!(&db_path, txn.open_table(RECEIPT_INDEX))?;
            dbtry!(&db_path, txn.open_table(INVOCATIONS))?;
            dbtry!(&db_path, txn.open_table(ACTION_CACHE))?;
            dbtry!(&db_path, txn.open_table(BLOBS))?;
            dbtry!(&db_path, txn.open_table(PINS))?;
            dbtry!(&db_path, txn.open_table(BLOB_LOG))?;
            dbtry!(&db_path, txn.open_table(RECEIPT_CHUNKS))?;
            dbtry!(&db_path, txn.open_table(BLOB_CHUNKS))?;
            dbtry!(&db_path, txn.open_table(RUN_SIZES))?;
            dbtry!(&db_path, txn.open_table(RUN_FENCES))?;
            dbtry!(&db_path, txn.open_table(RUN_BLOCKS))?;
            dbtry!(&db_path, txn.commit())?;
        }
        let disk = DiskStore::open_with(
            home.join("cas"),
            voidbox_cas::OpenOptions {
                durability: voidbox_cas::Durability::Deferred,
                read_only: false,
            },
        )?;
        let journal_dir = home.join(JOURNAL_DIR);
        let (tail, next_segment) = replay_journal(&journal_dir)?;
        let mut cache_filter = PrefixFilter::default();
        // One snapshot for the logs' next keys and the cache filter.
        let txn = dbtry!(&db_path, db.begin_read())?;
        let next_receipt_chunk = next_key(&txn, RECEIPT_CHUNKS, &db_path)?;
        let next_blob_chunk = next_key(&txn, BLOB_CHUNKS, &db_path)?;
        let next_run = next_key(&txn, RUN_SIZES, &db_path)?;
        {
            let table = dbtry!(&db_path, txn.open_table(ACTION_CACHE))?;
            cache_filter.reserve(dbtry!(&db_path, table.len())? as usize + tail.cache.len());
            for entry in dbtry!(&db_path, table.iter())? {
                let (k, _) = dbtry!(&db_path, entry)?;
                cache_filter.insert(filter_key(&Digest(*k.value())));
            }
            let blocks = dbtry!(&db_path, txn.open_table(RUN_BLOCKS))?;
            for entry in dbtry!(&db_path, blocks.iter())? {
                let (k, v) = dbtry!(&db_path, entry)?;
                let entries = runs::decode_block(v.value()).map_err(|detail| Error::Corrupt {
                    what: format!("block {:?} of the index", k.value()),
                    detail,
                })?;
                cache_filter.extend(
                    entries
                        .iter()
                        .filter(|e| e.kind == runs::Kind::Cache)
                        .map(|e| filter_key(&Digest(e.key))),
                );
            }
        }
        drop(txn);
        cache_filter.extend(
            tail.cache
                .places()
                .map(|i| filter_key(&cache_key(&tail.records, &tail.recorded, i))),
        );
        let segment = Segment::create(&journal_dir, next_segment)?;
        let db = Arc::new(db);
        let disk = Arc::new(disk);
        let run_cache = Arc::new(RunCache::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buffer: Vec::with_capacity(1 << 20),
                last_timestamp: 0,
                generation: 1,
                durable: 0,
                flush_wanted: false,
                prepare_wanted: false,
                checkpoints_asked: 0,
                checkpoints_done: 0,
                shutdown: false,
                failed: None,
                tail,
                cache_filter,
                sealed: Vec::new(),
                stats: StorageStats::default(),
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let (to_checkpointer, checkpoints) = crossbeam_channel::unbounded();
        let (recycle, recycled) = crossbeam_channel::bounded(2);
        let checkpointer = {
            let checkpointer = Checkpointer {
                next_receipt_chunk,
                next_blob_chunk,
                next_run,
                runs: run_cache.clone(),
                db: db.clone(),
                disk: disk.clone(),
                shared: shared.clone(),
                journal_dir: journal_dir.clone(),
            };
            std::thread::Builder::new()
                .name("voidbox-checkpoint".into())
                .spawn(move || {
                    if low_priority {
                        run_when_idle("storage checkpoint");
                    }
                    checkpointer.run(checkpoints, recycle)
                })
                .map_err(Error::io(
                    home,
                    "could not start the storage checkpoint thread",
                ))?
        };
        let flusher = {
            let flusher = Flusher {
                fsync,
                disk: disk.clone(),
                shared: shared.clone(),
                journal_dir,
                segment,
                to_checkpointer,
                recycled,
            };
            std::thread::Builder::new()
                .name("voidbox-flusher".into())
                .spawn(move || flusher.run())
                .map_err(Error::io(
                    home,
                    "could not start the storage flusher thread",
                ))?
        };
        Ok(Storage {
            db,
            runs: run_cache,
            db_path,
            disk,
            inline_max,
            shared,
            flusher: Some(flusher),
            checkpointer: Some(checkpointer),
        })
    }

    pub(crate) fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// What the storage did so far.
    pub(crate) fn stats(&self) -> StorageStats {
        self.shared.lock().stats
    }

    /// Appends records to the buffer and updates the tail, both in `f`,
    /// under one lock, so that readers and the journal see them together
    /// and in the same order. `f` may append nothing (a blob already
    /// queued).
    fn append(&self, f: impl FnOnce(&mut State)) -> Result<()> {
        let mut st = self.shared.lock();
        while st.buffer.len() > BUFFER_BYTES_MAX && st.failed.is_none() {
            st.flush_wanted = true;
            self.shared.wake.notify_one();
            st = self.shared.done.wait(st).expect("storage state poisoned");
        }
        if let Some(e) = &st.failed {
            return Err(Error::WriterStopped(e.clone()));
        }
        let was_empty = st.buffer.is_empty();
        f(&mut st);
        let started_batch = was_empty && !st.buffer.is_empty();
        drop(st);
        if started_batch {
            // Starts the flusher's batch window.
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Readies the journal for a steady load before it comes: maps the
    /// current tail's memory now, and has the flusher ready the next one
    /// at once instead of when the current one is a quarter full. Each
    /// tail is about 45 MiB the kernel otherwise maps page by page under
    /// the invocations that fill it (the current one) or in one burst of
    /// the flusher (the next one). Replicas of a cluster fill their tails
    /// in step, so those bursts came on all of them at once, mid-load.
    /// Holds the storage's lock while it maps the current tail (about a
    /// tenth of a second here): call it before serving.
    pub(crate) fn prefault(&self) {
        let mut st = self.shared.lock();
        st.tail.fault_in();
        st.prepare_wanted = true;
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Waits until everything appended so far is durable.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut st = self.shared.lock();
        let target = if st.buffer.is_empty() {
            st.generation - 1
        } else {
            st.generation
        };
        if st.durable < target {
            st.flush_wanted = true;
            self.shared.wake.notify_one();
        }
        while st.durable < target && st.failed.is_none() {
            st = self.shared.done.wait(st).expect("storage state poisoned");
        }
        match &st.failed {
            Some(e) => Err(Error::WriterStopped(e.clone())),
            None => Ok(()),
        }
    }

    /// Waits until everything appended so far is in redb and out of the
    /// journal. Operations that scan or delete from the tables (GC, `cas
    /// rm`, listings) call this first, so the tables are the whole truth
    /// and a journal replay cannot bring back what they removed.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut st = self.shared.lock();
        st.checkpoints_asked += 1;
        let ticket = st.checkpoints_asked;
        self.shared.wake.notify_one();
        while st.checkpoints_done < ticket && st.failed.is_none() {
            st = self.shared.done.wait(st).expect("storage state poisoned");
        }
        match &st.failed {
            Some(e) => Err(Error::WriterStopped(e.clone())),
            None => Ok(()),
        }
    }

    /// Stores a blob through the journal (small blobs) or the disk store
    /// with deferred durability (large ones). Durable after the next group
    /// commit or [`Storage::flush`].
    pub(crate) fn put_blob_deferred(&self, bytes: &[u8]) -> Result<Digest> {
        if bytes.len() as u64 > self.inline_max {
            return Ok(self.disk.put(bytes)?);
        }
        let digest = Digest::of(bytes);
        self.put_blob_known(digest, bytes)?;
        Ok(digest)
    }

    /// [`Storage::put_blob_deferred`] for a small blob whose digest the
    /// caller already computed (saves hashing it twice).
    fn put_blob_known(&self, digest: Digest, bytes: &[u8]) -> Result<()> {
        // One lock both checks and appends.
        self.append(|st| st.queue_blob(digest, bytes))
    }

    /// Hashes a blob that a receipt will name and readies it for
    /// [`Storage::record`]. A large blob goes to the disk store now
    /// (deferred durability, synced before the frame holding the receipt);
    /// a small one is appended by `record`, under the same lock as the
    /// receipt (one lock for a run's records, not one per blob: with two
    /// invoking threads each lock moves the lock's cache line between the
    /// cores).
    pub(crate) fn prepare_blob<'a>(&self, bytes: &'a [u8]) -> Result<PendingBlob<'a>> {
        if bytes.len() as u64 > self.inline_max {
            return Ok(PendingBlob {
                digest: self.disk.put(bytes)?,
                inline: None,
            });
        }
        Ok(PendingBlob {
            digest: Digest::of(bytes),
            inline: Some(bytes),
        })
    }

    /// [`Storage::prepare_blob`] for a blob whose digest the caller
    /// computed: a small one is not hashed again.
    pub(crate) fn prepare_known<'a>(
        &self,
        digest: Digest,
        bytes: &'a [u8],
    ) -> Result<PendingBlob<'a>> {
        if bytes.len() as u64 > self.inline_max {
            return self.prepare_blob(bytes);
        }
        Ok(PendingBlob {
            digest,
            inline: Some(bytes),
        })
    }

    /// Stores a blob readied by [`Storage::prepare_blob`] on its own, for
    /// when no receipt will be recorded with it.
    pub(crate) fn put_pending(&self, blob: &PendingBlob<'_>) -> Result<()> {
        match blob.inline {
            Some(bytes) => self.put_blob_known(blob.digest, bytes),
            // A large blob is in the disk store already.
            None => Ok(()),
        }
    }

    /// Records an invocation's receipt (and, for deterministic outcomes, its
    /// action-cache entry) through the journal, after the small blobs it
    /// names (`blobs`, from [`Storage::prepare_blob`]): replay then never
    /// meets a receipt before its blobs.
    ///
    /// With `stamp_at` (physical time, Unix nanoseconds), the receipt gets
    /// its timestamp here: a hybrid-logical-clock reading, that time made
    /// strictly greater than every timestamp recorded before it since the
    /// storage opened. Without, it keeps the one it has (an adopted
    /// receipt's).
    pub(crate) fn record<'a>(
        &self,
        invocation: &Invocation,
        invocation_digest: Digest,
        receipt: &mut Receipt,
        cache: bool,
        blobs: impl IntoIterator<Item = PendingBlob<'a>>,
        stamp_at: Option<u64>,
    ) -> Result<()> {
        SCRATCH.with(|scratch| {
            let mut encoded = scratch.borrow_mut();
            encoded.clear();
            journal::put_outcome(&mut encoded, &invocation_digest, cache, invocation, receipt);
            self.append(|st| {
                if let Some(physical) = stamp_at {
                    // Under the lock that orders the journal, so timestamps
                    // increase in journal order, and no other shared word
                    // is written per invocation (an atomic clock both
                    // invoking threads updated moved a cache line between
                    // the cores on every run).
                    let stamp = physical.max(st.last_timestamp + 1);
                    st.last_timestamp = stamp;
                    receipt.timestamp = stamp;
                    journal::set_outcome_timestamp(&mut encoded, stamp);
                }
                for blob in blobs {
                    if let Some(bytes) = blob.inline {
                        st.queue_blob(blob.digest, bytes);
                    }
                }
                st.buffer.extend_from_slice(&encoded);
                st.tail
                    .push_outcome(&encoded, receipt.receipt, &invocation_digest, cache);
                if cache {
                    st.cache_filter.insert(filter_key(&invocation_digest));
                }
            })
        })
    }

    /// The receipt the action cache holds for an invocation, if any.
    pub(crate) fn cached_receipt(&self, invocation: &Digest) -> Result<Option<Receipt>> {
        match self.cached_in_memory(invocation) {
            InMemory::Found(r) => Ok(Some(r)),
            InMemory::Absent => Ok(None),
            InMemory::Stored => self.cached_receipt_stored(invocation),
        }
    }

    /// What memory alone says of an invocation's action-cache entry: the
    /// receipt, if the journal's tail holds it; that there is none (the
    /// common case for a fresh invocation); or that the database may hold
    /// one ([`Storage::cached_receipt_stored`]). One lock.
    pub(crate) fn cached_in_memory(&self, invocation: &Digest) -> InMemory {
        self.shared.lock().in_memory(invocation)
    }

    /// [`Storage::cached_in_memory`] for an invocation whose input is
    /// not stored yet: when it is about to run, prefetches what recording
    /// it will write (see [`Tail::prefetch_record`]).
    pub(crate) fn cached_in_memory_fresh(&self, invocation: &Digest, input: &Digest) -> InMemory {
        let st = self.shared.lock();
        let memory = st.in_memory(invocation);
        if let InMemory::Absent = memory {
            st.tail.prefetch_record(invocation, input);
        }
        memory
    }

    /// [`Storage::cached_in_memory`] and, when that says there is no entry
    /// (the invocation is about to run), the input blob if the journal's
    /// tail holds it: one lock for both.
    pub(crate) fn probe(
        &self,
        invocation: &Digest,
        input: &Digest,
    ) -> (InMemory, Option<Arc<[u8]>>) {
        let st = self.shared.lock();
        match st.in_memory(invocation) {
            InMemory::Absent => (InMemory::Absent, st.blob(input).map(Arc::from)),
            memory => (memory, None),
        }
    }

    /// The action-cache entry of an invocation from the database, for one
    /// that [`Storage::cached_in_memory`] called `Stored`.
    pub(crate) fn cached_receipt_stored(&self, invocation: &Digest) -> Result<Option<Receipt>> {
        let p = &self.db_path;
        let txn = dbtry!(p, self.db.begin_read())?;
        let indexed = self.index_find(&txn, invocation, |e| {
            if e.kind != runs::Kind::Cache {
                return Ok(None);
            }
            let (r, _) = self.logged_receipt(&txn, e.position)?;
            if r.invocation != *invocation {
                return Err(index_corrupt(
                    invocation,
                    "names a receipt of another invocation",
                ));
            }
            Ok(Some(r))
        })?;
        if indexed.is_some() {
            return Ok(indexed);
        }
        let cache = dbtry!(p, txn.open_table(ACTION_CACHE))?;
        let Some(r) = dbtry!(p, cache.get(invocation.as_bytes()))? else {
            return Ok(None);
        };
        let receipt_digest = Digest(*r.value());
        if let Some((r, _)) = self.stored_receipt(&txn, &receipt_digest)? {
            return Ok(Some(r));
        }
        // Written by a version that checkpointed a cache entry apart from
        // its receipt: the receipt may still be in a tail.
        let st = self.shared.lock();
        Ok(st.receipt(&receipt_digest).map(|r| r.receipt()))
    }

    /// Calls `f` with each index entry whose key is `key`, newest run
    /// first, until it returns something. An entry may point at a blob
    /// that `cas rm` or GC removed since: `f` then returns `None` and the
    /// search goes on.
    fn index_find<T>(
        &self,
        txn: &redb::ReadTransaction,
        key: &Digest,
        mut f: impl FnMut(runs::Entry) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let p = &self.db_path;
        let sizes = dbtry!(p, txn.open_table(RUN_SIZES))?;
        if dbtry!(p, sizes.is_empty())? {
            return Ok(None);
        }
        let fences = dbtry!(p, txn.open_table(RUN_FENCES))?;
        let blocks = dbtry!(p, txn.open_table(RUN_BLOCKS))?;
        for run in dbtry!(p, sizes.iter())?.rev() {
            let id = dbtry!(p, run)?.0.value();
            let meta = self.runs.get(id, || {
                let bytes = dbtry!(p, fences.get(id))?
                    .ok_or_else(|| run_corrupt(id, "its fences are missing".into()))?;
                runs::RunMeta::decode(bytes.value()).map_err(|d| run_corrupt(id, d))
            })?;
            for b in meta.candidate_blocks(&key.0) {
                let block = dbtry!(p, blocks.get((id, b)))?
                    .ok_or_else(|| run_corrupt(id, format!("block {b} is missing")))?;
                for e in
                    runs::search_block(block.value(), &key.0).map_err(|d| run_corrupt(id, d))?
                {
                    if let Some(t) = f(e)? {
                        return Ok(Some(t));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The receipt at `position` in the receipt log, which an index entry
    /// names.
    fn logged_receipt(
        &self,
        txn: &redb::ReadTransaction,
        position: u64,
    ) -> Result<(Receipt, Option<Invocation>)> {
        let p = &self.db_path;
        let missing = |detail: String| Error::Corrupt {
            what: format!("{} of the receipt log", chunks::describe(position)),
            detail,
        };
        let Some((key, slot)) = chunks::split(position) else {
            let log = dbtry!(p, txn.open_table(RECEIPT_LOG))?;
            return match dbtry!(p, log.get(position))? {
                Some(v) => decode_logged_receipt(position, v.value()),
                None => Err(missing("the index names it, but it is missing".into())),
            };
        };
        let table = dbtry!(p, txn.open_table(RECEIPT_CHUNKS))?;
        let chunk = dbtry!(p, table.get(key))?
            .ok_or_else(|| missing("the index names it, but its chunk is missing".into()))?;
        match chunks::get(chunk.value(), slot).map_err(missing)? {
            Some(bytes) => decode_logged_receipt(position, bytes),
            None => Err(missing("the index names it, but it was removed".into())),
        }
    }

    /// A receipt in redb by its digest: through the index into the receipt
    /// log, or in the tables of older databases.
    fn stored_receipt(
        &self,
        txn: &redb::ReadTransaction,
        digest: &Digest,
    ) -> Result<Option<(Receipt, Option<Invocation>)>> {
        let p = &self.db_path;
        let indexed = self.index_find(txn, digest, |e| {
            if e.kind != runs::Kind::Receipt {
                return Ok(None);
            }
            let (r, i) = self.logged_receipt(txn, e.position)?;
            if r.receipt != *digest {
                return Err(index_corrupt(digest, "names another receipt"));
            }
            Ok(Some((r, i)))
        })?;
        if indexed.is_some() {
            return Ok(indexed);
        }
        let index = dbtry!(p, txn.open_table(RECEIPT_INDEX))?;
        if let Some(seq) = dbtry!(p, index.get(digest.as_bytes()))? {
            let log = dbtry!(p, txn.open_table(RECEIPT_LOG))?;
            let seq = seq.value();
            return match dbtry!(p, log.get(seq))? {
                Some(v) => Ok(Some(decode_receipt_value(digest, v.value())?)),
                None => Err(Error::Corrupt {
                    what: format!("receipt {digest}"),
                    detail: format!(
                        "the receipt index names entry {seq} of the receipt log, which is missing"
                    ),
                }),
            };
        }
        let receipts = dbtry!(p, txn.open_table(RECEIPTS))?;
        match dbtry!(p, receipts.get(digest.as_bytes()))? {
            Some(v) => Ok(Some(decode_receipt_value(digest, v.value())?)),
            None => Ok(None),
        }
    }

    /// A receipt by its own digest, or by its invocation's digest.
    pub(crate) fn receipt(&self, digest: &Digest) -> Result<Option<(Receipt, Option<Invocation>)>> {
        let in_tail = self
            .shared
            .lock()
            .receipt(digest)
            .map(|r| (r.receipt(), r.invocation()));
        if let Some((r, i)) = in_tail {
            return Ok(Some((r, Some(i))));
        }
        let p = &self.db_path;
        let txn = dbtry!(p, self.db.begin_read())?;
        let receipt = match self.stored_receipt(&txn, digest)? {
            Some((r, Some(i))) => return Ok(Some((r, Some(i)))),
            Some((r, None)) => Some(r),
            None => self.cached_receipt(digest)?,
        };
        let Some(receipt) = receipt else {
            return Ok(None);
        };
        let in_tail = self.shared.lock().invocation(&receipt.invocation);
        if let Some(i) = in_tail {
            return Ok(Some((receipt, Some(i))));
        }
        let indexed = self.index_find(&txn, &receipt.invocation, |e| {
            if !matches!(e.kind, runs::Kind::Cache | runs::Kind::Invocation) {
                return Ok(None);
            }
            Ok(self.logged_receipt(&txn, e.position)?.1)
        })?;
        if let Some(i) = indexed {
            return Ok(Some((receipt, Some(i))));
        }
        let invocations = dbtry!(p, txn.open_table(INVOCATIONS))?;
        let invocation = match dbtry!(p, invocations.get(receipt.invocation.as_bytes()))? {
            Some(v) => Some(decode_invocation(&receipt.invocation, v.value())?),
            None => None,
        };
        Ok(Some((receipt, invocation)))
    }

    /// Every digest that something still refers to: tools, and the blobs
    /// named by receipts and invocations. GC keeps these.
    pub(crate) fn roots(&self) -> Result<BTreeSet<Digest>> {
        self.checkpoint()?;
        let p = &self.db_path;
        let txn = dbtry!(p, self.db.begin_read())?;
        let mut roots = BTreeSet::new();
        for entry in dbtry!(p, dbtry!(p, txn.open_table(TOOLS))?.iter())? {
            let (k, _) = dbtry!(p, entry)?;
            roots.insert(Digest(*k.value()));
        }
        let mut add = |r: Receipt, invocation: Option<Invocation>| {
            roots.insert(r.input);
            roots.extend(r.output);
            roots.extend(r.diagnostics);
            roots.extend(invocation.into_iter().flat_map(|i| i.grants));
        };
        for entry in dbtry!(p, dbtry!(p, txn.open_table(RECEIPTS))?.iter())? {
            let (k, v) = dbtry!(p, entry)?;
            let (r, invocation) = decode_receipt_value(&Digest(*k.value()), v.value())?;
            add(r, invocation);
        }
        for entry in dbtry!(p, dbtry!(p, txn.open_table(RECEIPT_LOG))?.iter())? {
            let (k, v) = dbtry!(p, entry)?;
            let (r, invocation) = decode_logged_receipt(k.value(), v.value())?;
            add(r, invocation);
        }
        for entry in dbtry!(p, dbtry!(p, txn.open_table(RECEIPT_CHUNKS))?.iter())? {
            let (k, v) = dbtry!(p, entry)?;
            for (slot, record) in chunks::records(v.value()).enumerate() {
                let position = chunks::position(k.value(), slot);
                let record = record.map_err(|detail| Error::Corrupt {
                    what: format!("{} of the receipt log", chunks::describe(position)),
                    detail,
                })?;
                if let Some(bytes) = record {
                    let (r, invocation) = decode_logged_receipt(position, bytes)?;
                    add(r, invocation);
                }
            }
        }
        for entry in dbtry!(p, dbtry!(p, txn.open_table(INVOCATIONS))?.iter())? {
            let (k, v) = dbtry!(p, entry)?;
            let inv = decode_invocation(&Digest(*k.value()), v.value())?;
            roots.extend(inv.grants);
        }
        // Whatever ran since the checkpoint is referenced too.
        let st = self.shared.lock();
        for tail in st.tails() {
            for rec in &tail.recorded {
                let outcome = tail.outcome(rec);
                let (r, i) = (outcome.receipt(), outcome.invocation());
                roots.insert(r.input);
                roots.extend(r.output);
                roots.extend(r.diagnostics);
                roots.extend(i.grants.iter().copied());
            }
        }
        Ok(roots)
    }

    /// A small blob in the blob log, through the index: the newest entry
    /// whose log row is still there.
    fn logged_blob(
        &self,
        txn: &redb::ReadTransaction,
        digest: &Digest,
    ) -> Result<Option<Arc<[u8]>>> {
        let p = &self.db_path;
        let log = dbtry!(p, txn.open_table(BLOB_LOG))?;
        let chunked = dbtry!(p, txn.open_table(BLOB_CHUNKS))?;
        self.index_find(txn, digest, |e| {
            if e.kind != runs::Kind::Blob {
                return Ok(None);
            }
            let check = |row: &[u8]| match split_logged_blob(row) {
                Some((d, bytes)) if d == *digest => Ok(Some(Arc::from(bytes))),
                _ => Err(index_corrupt(
                    digest,
                    &format!(
                        "names {} of the blob log, which holds another blob",
                        chunks::describe(e.position)
                    ),
                )),
            };
            let Some((key, slot)) = chunks::split(e.position) else {
                return match dbtry!(p, log.get(e.position))? {
                    Some(v) => check(v.value()),
                    None => Ok(None),
                };
            };
            // A record that `cas rm` or GC removed is not an error.
            let Some(chunk) = dbtry!(p, chunked.get(key))? else {
                return Ok(None);
            };
            match chunks::get(chunk.value(), slot) {
                Ok(Some(row)) => check(row),
                Ok(None) => Ok(None),
                Err(detail) => Err(Error::Corrupt {
                    what: format!("chunk {key} of the blob log"),
                    detail,
                }),
            }
        })
    }

    /// Every position in the blob log that holds `digest` (a blob recorded
    /// again after an earlier checkpoint has more than one).
    fn logged_blob_positions(
        &self,
        txn: &redb::ReadTransaction,
        digest: &Digest,
    ) -> Result<Vec<u64>> {
        let mut rows = Vec::new();
        self.index_find(txn, digest, |e| {
            if e.kind == runs::Kind::Blob {
                rows.push(e.position);
            }
            Ok(None::<()>)
        })?;
        Ok(rows)
    }

    fn tail_blob(&self, digest: &Digest) -> Option<Arc<[u8]>> {
        self.shared.lock().blob(digest).map(Arc::from)
    }
}

/// A row of the blob log: the blob's digest and its bytes.
fn split_logged_blob(row: &[u8]) -> Option<(Digest, &[u8])> {
    let (d, bytes) = row.split_first_chunk::<32>()?;
    Some((Digest(*d), bytes))
}

/// The key after the last of a table keyed by sequence (0 when empty).
fn next_key<V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<u64, V>,
    path: &Path,
) -> Result<u64> {
    let t = dbtry!(path, txn.open_table(table))?;
    let last = dbtry!(path, t.last())?;
    Ok(last.map_or(0, |(k, _)| k.value() + 1))
}

fn run_corrupt(id: u64, detail: String) -> Error {
    Error::Corrupt {
        what: format!("index run {id}"),
        detail,
    }
}

fn index_corrupt(key: &Digest, detail: &str) -> Error {
    Error::Corrupt {
        what: format!("the index entry of {key}"),
        detail: detail.into(),
    }
}

/// Receipts in redb are the journal's binary encoding, usually with the
/// invocation in the same value; older databases hold JSON (which always
/// starts with `{`) and the invocation in its own table.
fn decode_receipt_value(digest: &Digest, bytes: &[u8]) -> Result<(Receipt, Option<Invocation>)> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("receipt {digest}"),
        detail,
    };
    let (r, invocation): (Receipt, Option<Invocation>) = if bytes.first() == Some(&b'{') {
        (
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?,
            None,
        )
    } else {
        journal::decode_receipt_value(bytes).map_err(corrupt)?
    };
    if !r.is_consistent() || r.receipt != *digest {
        return Err(corrupt("its content does not match its digest".into()));
    }
    if invocation
        .as_ref()
        .is_some_and(|i| i.digest() != r.invocation)
    {
        return Err(corrupt("its invocation does not match the receipt".into()));
    }
    Ok((r, invocation))
}

/// An entry of the receipt log, which is not keyed by the receipt's digest:
/// checked against the digest it carries.
fn decode_logged_receipt(position: u64, bytes: &[u8]) -> Result<(Receipt, Option<Invocation>)> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("{} of the receipt log", chunks::describe(position)),
        detail,
    };
    let (r, invocation) = journal::decode_receipt_value(bytes).map_err(corrupt)?;
    decode_receipt_value(&r.receipt, bytes)
        .map_err(|_| corrupt("its content does not match its digest or its invocation".into()))?;
    Ok((r, invocation))
}

/// Invocations in redb: binary, or JSON in older databases.
fn decode_invocation(digest: &Digest, bytes: &[u8]) -> Result<Invocation> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("invocation {digest}"),
        detail,
    };
    if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    } else {
        journal::decode_invocation_value(bytes).map_err(corrupt)
    }
}

/// Puts the calling thread in the idle scheduling class (`SCHED_IDLE`, for
/// this thread only): it runs on CPU time no other thread wants, and any
/// other thread that wakes takes its CPU at once. Under full load it gets a
/// sliver (its weight is 3, against 1,024 at nice 0), so whatever it does
/// must hold its producers back when it falls behind, and hold a lock that
/// a busier thread waits on only briefly (preempted while holding one, it
/// would keep that thread waiting until a CPU is free).
pub(crate) fn run_when_idle(thread: &str) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; pid 0 is the calling thread, and
    // the call changes only its scheduling.
    let failed = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 };
    if failed {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not move the {thread} thread to idle priority; it runs at the process's"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use voidbox_cas::CasError;

    use super::checkpointer::write_run;
    use super::flusher::segments;
    use super::tail::touch_spare;
    use super::*;

    const TEST_DB_CACHE_BYTES: usize = 4 << 20;

    #[test]
    fn a_faulted_tail_is_an_empty_presized_one() {
        let (mut faulted, presized) = (Tail::presized(), Tail::presized());
        faulted.fault_in();
        assert_eq!(faulted.records(), 0);
        assert!(faulted.records.is_empty() && faulted.blobs.len() == 0);
        assert_eq!(faulted.records.capacity(), presized.records.capacity());
        assert_eq!(faulted.recorded.capacity(), presized.recorded.capacity());
        assert_eq!(faulted.blobs.capacity(), presized.blobs.capacity());
        assert_eq!(faulted.cache.capacity(), presized.cache.capacity());
        assert!(!faulted.quarter_full());
        // Touching only writes past the end: what a list holds stays.
        let mut v: Vec<u8> = Vec::with_capacity(3 * 4096);
        v.extend_from_slice(b"kept");
        touch_spare(&mut v);
        assert_eq!(v, b"kept");
    }

    #[test]
    fn a_prefaulted_storage_has_its_next_tail_ready_at_once() {
        let home = tempfile::tempdir().unwrap();
        let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        let kept = storage.put_blob_deferred(b"kept").unwrap();
        storage.prefault();
        // Far from a quarter full, the rotation still takes a readied tail.
        let later = storage.put_blob_deferred(b"later").unwrap();
        storage.checkpoint().unwrap();
        assert_eq!(storage.stats().prepared_tails, 1, "{:?}", storage.stats());
        let blobs = Blobs::new(Arc::new(storage));
        assert_eq!(blobs.get(&kept).unwrap(), b"kept");
        assert_eq!(blobs.get(&later).unwrap(), b"later");
    }

    #[test]
    fn the_flusher_readies_the_next_tail_once_a_quarter_is_used() {
        let home = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap());
        // A checkpoint of a nearly empty tail swaps in one made on the spot.
        let first = storage.put_blob_deferred(b"first").unwrap();
        storage.checkpoint().unwrap();
        assert_eq!(storage.stats().prepared_tails, 0);
        // Past a quarter of a tail's room (10 MiB of 40), a group commit
        // has the flusher ready the next one, and the rotation takes it.
        let blob = vec![7u8; 60 << 10];
        let mut digests = Vec::new();
        for i in 0..180u32 {
            let mut b = blob.clone();
            b[..4].copy_from_slice(&i.to_le_bytes());
            digests.push(storage.put_blob_deferred(&b).unwrap());
        }
        storage.flush().unwrap();
        storage.checkpoint().unwrap();
        assert_eq!(storage.stats().prepared_tails, 1, "{:?}", storage.stats());
        // Everything reads back, from redb now.
        let blobs = Blobs::new(storage.clone());
        assert_eq!(blobs.get(&first).unwrap(), b"first");
        for (i, d) in digests.iter().enumerate() {
            assert_eq!(&blobs.get(d).unwrap()[..4], &(i as u32).to_le_bytes());
        }
    }

    fn receipt_for(input: &[u8]) -> (Invocation, Receipt) {
        let inv = Invocation::new(Digest::of(b"tool"), Digest::of(input));
        let mut r = Receipt {
            receipt: Digest([0; 32]),
            invocation: inv.digest(),
            tool: inv.tool,
            input: inv.input,
            output: Some(Digest::of(input)),
            output_bytes: input.len() as u64,
            outcome: voidbox_sandbox::Outcome::Ok,
            fuel_used: 1,
            memory_peak_bytes: 0,
            diagnostics: None,
            timestamp: 1,
            cached: false,
            duration_us: 1,
        };
        r.receipt = r.compute_digest();
        (inv, r)
    }

    fn frame(records: &[u8]) -> Vec<u8> {
        let mut f = journal::frame_header(records).to_vec();
        f.extend_from_slice(records);
        f
    }

    #[test]
    fn replay_keeps_the_prefix_before_a_torn_frame() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let (inv, r) = receipt_for(b"one");
        let mut a = Vec::new();
        journal::put_blob(&mut a, &Digest::of(b"one"), b"one");
        journal::put_outcome(&mut a, &inv.digest(), true, &inv, &r);
        let (inv2, r2) = receipt_for(b"two");
        let mut b = Vec::new();
        journal::put_blob(&mut b, &Digest::of(b"two"), b"two");
        journal::put_outcome(&mut b, &inv2.digest(), true, &inv2, &r2);
        // Segment 1: a whole frame, then half of the next one (a crash
        // during its write). Segment 2 must not be replayed after that.
        let mut seg1 = frame(&a);
        let whole = seg1.len();
        let torn = frame(&b);
        seg1.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(Segment::path(&dir, 1), &seg1).unwrap();
        std::fs::write(Segment::path(&dir, 2), frame(&b)).unwrap();

        let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        assert_eq!(
            storage.cached_receipt(&inv.digest()).unwrap(),
            Some(r.clone())
        );
        assert_eq!(storage.cached_receipt(&inv2.digest()).unwrap(), None);
        assert_eq!(storage.tail_blob(&Digest::of(b"two")), None);
        // The torn segment was cut at its last whole frame.
        assert_eq!(
            std::fs::metadata(Segment::path(&dir, 1)).unwrap().len(),
            whole as u64
        );
        assert!(!Segment::path(&dir, 2).exists());
        drop(storage);
        // A clean close moved everything into redb and emptied the journal.
        assert!(segments(&dir).unwrap().is_empty());
        let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        assert_eq!(
            storage.cached_receipt(&inv.digest()).unwrap(),
            Some(r.clone())
        );
        let (again, invocation) = storage.receipt(&r.receipt).unwrap().unwrap();
        assert_eq!((again, invocation), (r, Some(inv)));
    }

    #[test]
    fn receipts_of_older_databases_and_of_the_receipt_log_are_both_read() {
        let home = tempfile::tempdir().unwrap();
        let (old_inv, old) = receipt_for(b"written by an older version");
        let (first_inv, first) = receipt_for(b"written by the first version");
        let (row_inv, row) = receipt_for(b"written before the logs were chunked");
        let row_blob = b"a blob of the unchunked blob log";
        {
            // What a database from before the receipt log holds.
            let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
            let txn = storage.db.begin_write().unwrap();
            {
                let mut value = Vec::new();
                journal::put_receipt_with_invocation(&mut value, &old, &old_inv);
                let mut t = txn.open_table(RECEIPTS).unwrap();
                t.insert(old.receipt.as_bytes(), &value[..]).unwrap();
                let mut c = txn.open_table(ACTION_CACHE).unwrap();
                c.insert(old_inv.digest().as_bytes(), old.receipt.as_bytes())
                    .unwrap();
                // The first versions kept receipts and invocations apart.
                value.clear();
                journal::put_receipt_value(&mut value, &first);
                t.insert(first.receipt.as_bytes(), &value[..]).unwrap();
                c.insert(first_inv.digest().as_bytes(), first.receipt.as_bytes())
                    .unwrap();
                value.clear();
                journal::put_invocation_value(&mut value, &first_inv);
                let mut i = txn.open_table(INVOCATIONS).unwrap();
                i.insert(first_inv.digest().as_bytes(), &value[..]).unwrap();
                // Later ones logged a receipt or a blob per row, and an
                // index run named the rows by their keys.
                value.clear();
                journal::put_receipt_with_invocation(&mut value, &row, &row_inv);
                let mut log = txn.open_table(RECEIPT_LOG).unwrap();
                log.insert(0, &value[..]).unwrap();
                value.clear();
                value.extend_from_slice(Digest::of(row_blob).as_bytes());
                value.extend_from_slice(row_blob);
                let mut blobs = txn.open_table(BLOB_LOG).unwrap();
                blobs.insert(0, &value[..]).unwrap();
            }
            let mut entries = vec![
                runs::Entry {
                    key: row.receipt.0,
                    kind: runs::Kind::Receipt,
                    position: 0,
                },
                runs::Entry {
                    key: row_inv.digest().0,
                    kind: runs::Kind::Cache,
                    position: 0,
                },
                runs::Entry {
                    key: Digest::of(row_blob).0,
                    kind: runs::Kind::Blob,
                    position: 0,
                },
            ];
            runs::sort_dedup(&mut entries);
            write_run(&txn, 0, |push| {
                entries.iter().try_for_each(|e| push(&e.encoded()))
            })
            .unwrap();
            txn.commit().unwrap();
        }
        let (inv, new) = receipt_for(b"written now");
        {
            let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
            storage
                .record(&inv, inv.digest(), &mut new.clone(), true, Vec::new(), None)
                .unwrap();
        }
        // Both reopened from redb alone (a clean close checkpoints).
        let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        for (i, r) in [
            (&first_inv, &first),
            (&old_inv, &old),
            (&row_inv, &row),
            (&inv, &new),
        ] {
            assert_eq!(
                storage.cached_receipt(&i.digest()).unwrap().as_ref(),
                Some(r)
            );
            let (again, invocation) = storage.receipt(&r.receipt).unwrap().unwrap();
            assert_eq!((&again, invocation.as_ref()), (r, Some(i)));
        }
        let roots = storage.roots().unwrap();
        assert!([&first, &old, &row, &new]
            .iter()
            .all(|r| roots.contains(&r.input)));
        let txn = storage.db.begin_read().unwrap();
        assert_eq!(
            storage
                .logged_blob(&txn, &Digest::of(row_blob))
                .unwrap()
                .as_deref(),
            Some(&row_blob[..])
        );
        drop(txn);
        // New records go to chunks, after the last one; the row logs are
        // only read.
        let (inv2, r2) = receipt_for(b"after reopening");
        storage
            .record(
                &inv2,
                inv2.digest(),
                &mut r2.clone(),
                true,
                Vec::new(),
                None,
            )
            .unwrap();
        storage.checkpoint().unwrap();
        let txn = storage.db.begin_read().unwrap();
        assert_eq!(txn.open_table(RECEIPT_LOG).unwrap().len().unwrap(), 1);
        assert_eq!(txn.open_table(RECEIPT_CHUNKS).unwrap().len().unwrap(), 2);
        assert_eq!(storage.receipt(&r2.receipt).unwrap().unwrap().0, r2);
        assert_eq!(storage.receipt(&row.receipt).unwrap().unwrap().0, row);
        assert_eq!(storage.receipt(&new.receipt).unwrap().unwrap().0, new);
    }

    /// Stores `input` as a blob and records a cacheable receipt for it.
    fn record_input(storage: &Storage, input: &str) -> (Digest, Invocation, Receipt) {
        // The input is the receipt's output too (see `receipt_for`), stored
        // with the receipt as a run's output is.
        let blob = storage.prepare_blob(input.as_bytes()).unwrap();
        let d = blob.digest();
        let (inv, r) = receipt_for(input.as_bytes());
        storage
            .record(&inv, inv.digest(), &mut r.clone(), true, vec![blob], None)
            .unwrap();
        (d, inv, r)
    }

    #[test]
    fn records_are_readable_before_during_and_after_a_checkpoint() {
        let home = tempfile::tempdir().unwrap();
        let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let (d, inv, r) = record_input(&storage, &format!("input {i}"));
            expected.push((d, inv, r));
            if i == 100 {
                storage.checkpoint().unwrap();
                assert!(storage.shared.lock().tail.records() == 0);
            }
        }
        storage.flush().unwrap();
        for (d, inv, r) in &expected {
            assert!(
                storage.tail_blob(d).is_some() || {
                    let txn = storage.db.begin_read().unwrap();
                    storage.logged_blob(&txn, d).unwrap().is_some()
                }
            );
            assert_eq!(
                storage.cached_receipt(&inv.digest()).unwrap().as_ref(),
                Some(r)
            );
        }
        // A miss is answered by the filter, a non-cacheable outcome is never
        // an answer, before and after a checkpoint.
        assert_eq!(storage.cached_receipt(&Digest::of(b"never")).unwrap(), None);
        let (inv, r) = receipt_for(b"timed out");
        storage
            .record(&inv, inv.digest(), &mut r.clone(), false, Vec::new(), None)
            .unwrap();
        assert_eq!(storage.cached_receipt(&inv.digest()).unwrap(), None);
        storage.checkpoint().unwrap();
        assert_eq!(storage.cached_receipt(&inv.digest()).unwrap(), None);
        let stats = storage.stats();
        assert!(stats.checkpoints >= 1 && stats.frames >= 1, "{stats:?}");
    }

    #[test]
    fn recorded_timestamps_increase_in_journal_order_and_survive_a_reopen() {
        let home = tempfile::tempdir().unwrap();
        let storage = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        let mut stamped = Vec::new();
        // The physical time goes back and stands still; the stamps never do.
        for (i, physical) in [1_000, 500, 500, 2_000].into_iter().enumerate() {
            let (inv, mut r) = receipt_for(format!("stamp {i}").as_bytes());
            storage
                .record(&inv, inv.digest(), &mut r, true, Vec::new(), Some(physical))
                .unwrap();
            stamped.push((inv, r));
        }
        let stamps: Vec<u64> = stamped.iter().map(|(_, r)| r.timestamp).collect();
        assert_eq!(stamps, [1_000, 1_001, 1_002, 2_000]);
        // Without a time to stamp with, a receipt keeps its own.
        let (inv, mut kept) = receipt_for(b"adopted");
        kept.timestamp = 77;
        storage
            .record(&inv, inv.digest(), &mut kept, true, Vec::new(), None)
            .unwrap();
        assert_eq!(kept.timestamp, 77);
        stamped.push((inv, kept));
        // What was journaled is what the receipts say, before and after a
        // restart replays the journal.
        for (inv, r) in &stamped {
            assert_eq!(
                storage.cached_receipt(&inv.digest()).unwrap().as_ref(),
                Some(r)
            );
        }
        drop(storage);
        let reopened = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
        for (inv, r) in &stamped {
            assert_eq!(
                reopened.cached_receipt(&inv.digest()).unwrap().as_ref(),
                Some(r)
            );
        }
    }

    /// The scheduling policies of this process's threads named `name`
    /// (the kernel keeps 15 bytes of a thread's name).
    fn thread_policies(name: &str) -> Vec<i64> {
        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            // Fields after the name: state is field 3, policy field 41.
            let after_name = stat.rsplit_once(')').unwrap().1;
            let policy = after_name.split_whitespace().nth(38).unwrap();
            policies.push(policy.parse().unwrap());
        }
        policies
    }

    /// Waits up to 10 s for a thread named `name` in the idle class (a
    /// thread moves itself there as it starts).
    pub(crate) fn wait_for_an_idle_thread(name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let policies = thread_policies(name);
            if policies.contains(&i64::from(libc::SCHED_IDLE)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {name} thread at idle priority (policies: {policies:?})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_low_priority_checkpoint_thread_runs_when_idle() {
        let home = tempfile::tempdir().unwrap();
        let _storage = Storage::open_with(
            home.path(),
            &StorageSettings {
                db_cache_bytes: TEST_DB_CACHE_BYTES as u64,
                checkpoint_priority: CheckpointPriority::Low,
                ..StorageSettings::default()
            },
        )
        .unwrap();
        // Other tests' storages run checkpoint threads at the process's
        // priority meanwhile; only this one asked for the lowest.
        wait_for_an_idle_thread("voidbox-checkpo");
    }

    #[test]
    fn without_fsync_frames_are_written_but_not_synced() {
        for fsync in [true, false] {
            let home = tempfile::tempdir().unwrap();
            let storage = Storage::open_with(
                home.path(),
                &StorageSettings {
                    inline_blob_bytes_max: 1 << 16,
                    db_cache_bytes: TEST_DB_CACHE_BYTES as u64,
                    fsync,
                    ..StorageSettings::default()
                },
            )
            .unwrap();
            let (inv, r) = receipt_for(b"kept");
            storage
                .record(&inv, inv.digest(), &mut r.clone(), true, Vec::new(), None)
                .unwrap();
            storage.flush().unwrap();
            let stats = storage.stats();
            assert!(stats.frames >= 1, "{stats:?}");
            let synced = if fsync { stats.frames } else { 0 };
            assert_eq!(stats.synced_frames, synced, "fsync {fsync}: {stats:?}");
            // Written either way: a restart of the process finds it.
            drop(storage);
            let reopened = Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap();
            assert_eq!(reopened.cached_receipt(&inv.digest()).unwrap(), Some(r));
        }
    }

    #[test]
    fn index_runs_merge_and_answer_across_checkpoints_removal_and_reopening() {
        let home = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        let orphan = {
            let storage =
                Arc::new(Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap());
            for round in 0..10u32 {
                for i in 0..150u32 {
                    let input = format!("round {round} input {i}");
                    let (d, inv, r) = record_input(&storage, &input);
                    expected.push((d, input, inv, r));
                }
                storage.checkpoint().unwrap();
            }
            // Ten checkpoints of equal size leave runs of 8, 1 and 1
            // checkpoints' entries: eight merged, not one per checkpoint.
            let txn = storage.db.begin_read().unwrap();
            let sizes: Vec<u64> = txn
                .open_table(RUN_SIZES)
                .unwrap()
                .iter()
                .unwrap()
                .map(|e| e.unwrap().1.value())
                .collect();
            assert_eq!(sizes, [8 * 450, 450, 450]);
            // Three entries per invocation: its input, its receipt, its cache
            // entry.
            assert_eq!(sizes.iter().sum::<u64>(), 10 * 150 * 3);
            drop(txn);
            // A removed blob is gone, and comes back when recorded again.
            let blobs = Blobs::new(storage.clone());
            let (gone, gone_bytes) = (expected[3].0, expected[3].1.clone());
            assert!(blobs.remove(&gone).unwrap());
            assert!(matches!(blobs.get(&gone), Err(CasError::NotFound(_))));
            assert!(!blobs.list().unwrap().iter().any(|(d, _)| *d == gone));
            storage.put_blob_deferred(gone_bytes.as_bytes()).unwrap();
            storage.checkpoint().unwrap();
            assert_eq!(blobs.get(&gone).unwrap(), gone_bytes.as_bytes());
            // GC keeps what the receipts name and removes the rest.
            let orphan = storage.put_blob_deferred(b"nobody names me").unwrap();
            storage.checkpoint().unwrap();
            let roots = storage.roots().unwrap();
            assert!(!roots.contains(&orphan));
            let report = blobs.gc(&roots).unwrap();
            assert_eq!(report.removed, 1, "{report:?}");
            assert!(matches!(blobs.get(&orphan), Err(CasError::NotFound(_))));
            let verify = blobs.verify_all().unwrap();
            assert!(verify.corrupt.is_empty());
            assert_eq!(verify.checked, 10 * 150);
            orphan
        };
        // Reopened: every answer comes from the runs, the cache filter
        // included.
        let storage = Arc::new(Storage::open(home.path(), 1 << 16, TEST_DB_CACHE_BYTES).unwrap());
        let blobs = Blobs::new(storage.clone());
        for (d, input, inv, r) in &expected {
            assert_eq!(blobs.get(d).unwrap(), input.as_bytes());
            assert_eq!(
                storage.cached_receipt(&inv.digest()).unwrap().as_ref(),
                Some(r)
            );
            let (again, invocation) = storage.receipt(&r.receipt).unwrap().unwrap();
            assert_eq!((&again, invocation.as_ref()), (r, Some(inv)));
        }
        assert_eq!(
            storage.cached_receipt(&Digest::of(b"never ran")).unwrap(),
            None
        );
        // The collected blob was alone in the newest chunk. Blobs stored
        // now go to new chunks, so its stale index entry finds nothing, not
        // a newer blob in a reused chunk (which read as corruption).
        let newer = storage.put_blob_deferred(b"stored after the GC").unwrap();
        storage.checkpoint().unwrap();
        assert!(matches!(blobs.get(&orphan), Err(CasError::NotFound(_))));
        assert_eq!(blobs.get(&newer).unwrap(), b"stored after the GC");
    }

    #[test]
    fn a_tail_table_near_its_capacity_asks_for_rotation() {
        let mut tail = Tail::presized();
        assert!(!tail.nearly_full());
        let cap = tail.cache.capacity();
        let threshold = cap - cap / 8;
        // The digests the index's places stand for.
        let keys: Vec<Digest> = (0..threshold as u64)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect();
        for (i, d) in keys.iter().enumerate().take(threshold - 1) {
            tail.cache.insert(d, i, |p| keys[p]);
        }
        assert!(!tail.nearly_full());
        tail.cache
            .insert(&keys[threshold - 1], threshold - 1, |p| keys[p]);
        assert!(tail.nearly_full());
        // Still within capacity: no rehash happened on the way.
        assert_eq!(tail.cache.capacity(), cap);
    }
}
