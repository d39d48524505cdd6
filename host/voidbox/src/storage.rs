//! Durable state of a host: the embedded database (redb), the blob store,
//! and the write-behind path that keeps both off the invocation's hot path.
//!
//! Layout of a data directory:
//!
//! ```text
//! voidbox.toml        configuration (optional)
//! voidbox.redb        tools, names, receipts, the action cache, small blobs
//! cas/                blobs larger than `inline_blob_bytes_max` (voidbox-cas)
//! compiled/           compiled tool artifacts (a cache; safe to delete)
//! ```
//!
//! What is durable when: a tool is durable when `add_tool` returns. An
//! invocation's input, output and receipt are handed to a writer thread
//! that commits them in batches, one redb transaction (with fsync) per batch,
//! after making any large blobs of the batch durable. A receipt and its
//! action-cache entry are written in the same transaction as the blobs they
//! name, so a crash can lose the newest receipts (they are recomputed on the
//! next identical invocation) but never leaves a cache entry that points at
//! a missing or wrong output. [`Storage::flush`] waits until everything
//! handed over so far is durable; the CLI calls it before it exits.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use voidbox_cas::{CasError, Digest, DiskStore, GcReport, Store, VerifyReport};

use crate::error::{Error, Result};
use crate::invocation::{Invocation, Receipt};

/// Tool digest → tool record (JSON).
pub(crate) const TOOLS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tools");
/// Tool name → tool digest.
pub(crate) const NAMES: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("names");
/// Receipt digest → receipt (JSON).
const RECEIPTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("receipts");
/// Invocation digest → invocation (JSON).
const INVOCATIONS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("invocations");
/// Invocation digest → receipt digest: the action cache.
const ACTION_CACHE: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("action_cache");
/// Small blobs, stored inline: digest → content.
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
/// Pins of inline blobs (the disk store keeps its own).
const PINS: TableDefinition<&[u8; 32], ()> = TableDefinition::new("pins");

/// Most operations committed in one batch.
const BATCH_OPS_MAX: usize = 32_768;
/// How long the writer gathers operations before it commits, unless a
/// flush is waiting. Each commit rewrites every B-tree page it touched, and
/// digests as keys scatter inserts over the whole tree, so many invocations
/// per commit cut the bytes written per invocation.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Most operations waiting for the writer; past this `invoke` waits, so a
/// slow disk slows callers instead of growing memory without bound.
const QUEUE_OPS_MAX: usize = 65_536;

enum Op {
    Blob(Digest, Arc<[u8]>),
    Outcome {
        invocation: Arc<Invocation>,
        invocation_digest: Digest,
        receipt: Arc<Receipt>,
        cache: bool,
    },
    Flush(Sender<Result<(), String>>),
}

/// Written but not yet committed: readers look here before the database.
#[derive(Default)]
struct Pending {
    blobs: HashMap<Digest, Arc<[u8]>>,
    receipts: HashMap<Digest, Arc<Receipt>>,
}

/// The database, the blob store and the writer thread.
pub(crate) struct Storage {
    pub(crate) db: Arc<Database>,
    db_path: PathBuf,
    disk: Arc<DiskStore>,
    inline_max: u64,
    pending: Arc<Mutex<Pending>>,
    tx: Option<Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
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
        // Closing the channel ends the writer after it commits what it has.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
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
    pub(crate) fn open(home: &Path, inline_max: u64) -> Result<Storage> {
        let db_path = home.join("voidbox.redb");
        let db = Database::create(&db_path).map_err(|e| Error::Db {
            path: db_path.clone(),
            detail: format!(
                "{e}; if another voidbox process is using this data directory, stop it or use another --home"
            ),
        })?;
        {
            // Create every table once so readers never meet a missing one.
            let txn = dbtry!(&db_path, db.begin_write())?;
            dbtry!(&db_path, txn.open_table(TOOLS))?;
            dbtry!(&db_path, txn.open_table(NAMES))?;
            dbtry!(&db_path, txn.open_table(RECEIPTS))?;
            dbtry!(&db_path, txn.open_table(INVOCATIONS))?;
            dbtry!(&db_path, txn.open_table(ACTION_CACHE))?;
            dbtry!(&db_path, txn.open_table(BLOBS))?;
            dbtry!(&db_path, txn.open_table(PINS))?;
            dbtry!(&db_path, txn.commit())?;
        }
        let disk = DiskStore::open_with(
            home.join("cas"),
            voidbox_cas::OpenOptions {
                durability: voidbox_cas::Durability::Deferred,
                read_only: false,
            },
        )?;
        let db = Arc::new(db);
        let disk = Arc::new(disk);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let failed = Arc::new(Mutex::new(None));
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_OPS_MAX);
        let writer = {
            let writer = Writer {
                db: db.clone(),
                disk: disk.clone(),
                pending: pending.clone(),
                failed: failed.clone(),
            };
            std::thread::Builder::new()
                .name("voidbox-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(Error::io(home, "could not start the storage writer thread"))?
        };
        Ok(Storage {
            db,
            db_path,
            disk,
            inline_max,
            pending,
            tx: Some(tx),
            writer: Some(writer),
            failed,
        })
    }

    pub(crate) fn db_path(&self) -> &Path {
        &self.db_path
    }

    fn send(&self, op: Op) -> Result<()> {
        let tx = self.tx.as_ref().expect("sender lives as long as storage");
        tx.send(op).map_err(|_| {
            Error::WriterStopped(
                self.failed
                    .lock()
                    .expect("writer status poisoned")
                    .clone()
                    .unwrap_or_else(|| "the writer thread exited".into()),
            )
        })
    }

    /// Waits until everything handed to the writer so far is durable.
    pub(crate) fn flush(&self) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Op::Flush(tx))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::WriterStopped(e)),
            Err(_) => Err(Error::WriterStopped("the writer thread exited".into())),
        }
    }

    /// Stores a blob through the write-behind path (small blobs) or the
    /// disk store with deferred durability (large ones). Durable after the
    /// next batch commit or [`Storage::flush`].
    pub(crate) fn put_blob_deferred(&self, bytes: &[u8]) -> Result<Digest> {
        if bytes.len() as u64 > self.inline_max {
            return Ok(self.disk.put(bytes)?);
        }
        let digest = Digest::of(bytes);
        let blob: Arc<[u8]> = Arc::from(bytes);
        self.pending
            .lock()
            .expect("pending poisoned")
            .blobs
            .insert(digest, blob.clone());
        self.send(Op::Blob(digest, blob))?;
        Ok(digest)
    }

    /// Records an invocation's receipt (and, for deterministic outcomes, its
    /// action-cache entry) through the write-behind path.
    pub(crate) fn record(
        &self,
        invocation: Arc<Invocation>,
        invocation_digest: Digest,
        receipt: Arc<Receipt>,
        cache: bool,
    ) -> Result<()> {
        self.pending
            .lock()
            .expect("pending poisoned")
            .receipts
            .insert(receipt.receipt, receipt.clone());
        self.send(Op::Outcome {
            invocation,
            invocation_digest,
            receipt,
            cache,
        })
    }

    /// The receipt the action cache holds for an invocation, if any.
    pub(crate) fn cached_receipt(&self, invocation: &Digest) -> Result<Option<Receipt>> {
        let p = &self.db_path;
        let txn = dbtry!(p, self.db.begin_read())?;
        let cache = dbtry!(p, txn.open_table(ACTION_CACHE))?;
        let Some(r) = dbtry!(p, cache.get(invocation.as_bytes()))? else {
            return Ok(None);
        };
        let receipt_digest = Digest(*r.value());
        let receipts = dbtry!(p, txn.open_table(RECEIPTS))?;
        match dbtry!(p, receipts.get(receipt_digest.as_bytes()))? {
            Some(v) => Ok(Some(decode_receipt(&receipt_digest, v.value())?)),
            None => Ok(None),
        }
    }

    /// A receipt by its own digest, or by its invocation's digest.
    pub(crate) fn receipt(&self, digest: &Digest) -> Result<Option<(Receipt, Option<Invocation>)>> {
        let pending = self
            .pending
            .lock()
            .expect("pending poisoned")
            .receipts
            .get(digest)
            .cloned();
        let p = &self.db_path;
        let txn = dbtry!(p, self.db.begin_read())?;
        let receipts = dbtry!(p, txn.open_table(RECEIPTS))?;
        let receipt = match pending {
            Some(r) => Some((*r).clone()),
            None => match dbtry!(p, receipts.get(digest.as_bytes()))? {
                Some(v) => Some(decode_receipt(digest, v.value())?),
                None => self.cached_receipt(digest)?,
            },
        };
        let Some(receipt) = receipt else {
            return Ok(None);
        };
        let invocations = dbtry!(p, txn.open_table(INVOCATIONS))?;
        let invocation = match dbtry!(p, invocations.get(receipt.invocation.as_bytes()))? {
            Some(v) => Some(
                serde_json::from_slice(v.value()).map_err(|e| Error::Corrupt {
                    what: format!("invocation {}", receipt.invocation),
                    detail: e.to_string(),
                })?,
            ),
            None => None,
        };
        Ok(Some((receipt, invocation)))
    }

    /// Every digest that something still refers to: tools, and the blobs
    /// named by receipts and invocations. GC keeps these.
    pub(crate) fn roots(&self) -> Result<BTreeSet<Digest>> {
        self.flush()?;
        let p = &self.db_path;
        let txn = dbtry!(p, self.db.begin_read())?;
        let mut roots = BTreeSet::new();
        for entry in dbtry!(p, dbtry!(p, txn.open_table(TOOLS))?.iter())? {
            let (k, _) = dbtry!(p, entry)?;
            roots.insert(Digest(*k.value()));
        }
        for entry in dbtry!(p, dbtry!(p, txn.open_table(RECEIPTS))?.iter())? {
            let (k, v) = dbtry!(p, entry)?;
            let r = decode_receipt(&Digest(*k.value()), v.value())?;
            roots.insert(r.input);
            roots.extend(r.output);
            roots.extend(r.diagnostics);
        }
        for entry in dbtry!(p, dbtry!(p, txn.open_table(INVOCATIONS))?.iter())? {
            let (_, v) = dbtry!(p, entry)?;
            if let Ok(inv) = serde_json::from_slice::<Invocation>(v.value()) {
                roots.extend(inv.grants);
            }
        }
        Ok(roots)
    }
}

fn decode_receipt(digest: &Digest, bytes: &[u8]) -> Result<Receipt> {
    let r: Receipt = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        what: format!("receipt {digest}"),
        detail: e.to_string(),
    })?;
    if !r.is_consistent() {
        return Err(Error::Corrupt {
            what: format!("receipt {digest}"),
            detail: "its content does not match its digest".into(),
        });
    }
    Ok(r)
}

struct Writer {
    db: Arc<Database>,
    disk: Arc<DiskStore>,
    pending: Arc<Mutex<Pending>>,
    failed: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(self, rx: Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let deadline = Instant::now() + BATCH_WINDOW;
            let mut flush_waiting = matches!(first, Op::Flush(_));
            let mut batch = vec![first];
            while batch.len() < BATCH_OPS_MAX && !flush_waiting {
                match rx.recv_deadline(deadline) {
                    Ok(op) => {
                        flush_waiting = matches!(op, Op::Flush(_));
                        batch.push(op);
                    }
                    // The window closed, or the host is closing.
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "storage writer failed; later writes will be refused");
                *self.failed.lock().expect("writer status poisoned") = Some(e.clone());
            }
            let mut pending = self.pending.lock().expect("pending poisoned");
            for op in batch {
                match op {
                    Op::Blob(d, _) if result.is_ok() => {
                        pending.blobs.remove(&d);
                    }
                    Op::Outcome { receipt, .. } if result.is_ok() => {
                        pending.receipts.remove(&receipt.receipt);
                    }
                    Op::Flush(reply) => {
                        let _ = reply.send(result.clone());
                    }
                    _ => {}
                }
            }
            if result.is_err() {
                // Refuse everything from now on: later receipts could name
                // blobs that were never made durable.
                drop(pending);
                for op in rx.iter() {
                    if let Op::Flush(reply) = op {
                        let _ = reply.send(result.clone());
                    }
                }
                return;
            }
        }
    }

    fn commit(&self, batch: &[Op]) -> std::result::Result<(), String> {
        // Large blobs named by this batch's receipts must be durable before
        // the receipts are.
        self.disk.sync().map_err(|e| e.to_string())?;
        let s = |e: &dyn std::fmt::Display| e.to_string();
        let mut txn = self.db.begin_write().map_err(|e| s(&e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| s(&e))?;
        {
            let mut blobs = txn.open_table(BLOBS).map_err(|e| s(&e))?;
            let mut receipts = txn.open_table(RECEIPTS).map_err(|e| s(&e))?;
            let mut invocations = txn.open_table(INVOCATIONS).map_err(|e| s(&e))?;
            let mut cache = txn.open_table(ACTION_CACHE).map_err(|e| s(&e))?;
            for op in batch {
                match op {
                    Op::Blob(d, bytes) => {
                        blobs.insert(d.as_bytes(), &bytes[..]).map_err(|e| s(&e))?;
                    }
                    Op::Outcome {
                        invocation,
                        invocation_digest,
                        receipt,
                        cache: cacheable,
                    } => {
                        let r = serde_json::to_vec(&**receipt).map_err(|e| s(&e))?;
                        receipts
                            .insert(receipt.receipt.as_bytes(), &r[..])
                            .map_err(|e| s(&e))?;
                        let i = serde_json::to_vec(&**invocation).map_err(|e| s(&e))?;
                        invocations
                            .insert(invocation_digest.as_bytes(), &i[..])
                            .map_err(|e| s(&e))?;
                        if *cacheable {
                            cache
                                .insert(invocation_digest.as_bytes(), receipt.receipt.as_bytes())
                                .map_err(|e| s(&e))?;
                        }
                    }
                    Op::Flush(_) => {}
                }
            }
        }
        txn.commit().map_err(|e| s(&e))
    }
}

/// The host's content-addressed store: small blobs inline in the database,
/// large ones in a [`DiskStore`]. Implements [`Store`], so the CLI and
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
        if let Some(b) = self
            .storage
            .pending
            .lock()
            .expect("pending poisoned")
            .blobs
            .get(digest)
        {
            return Ok(Some(b.clone()));
        }
        let txn = self.storage.db.begin_read().map_err(cas_db)?;
        let table = txn.open_table(BLOBS).map_err(cas_db)?;
        Ok(table
            .get(digest.as_bytes())
            .map_err(cas_db)?
            .map(|v| Arc::from(v.value())))
    }

    fn inline_verified(&self, digest: &Digest) -> Result<Option<Arc<[u8]>>, CasError> {
        match self.inline(digest)? {
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
        self.storage.flush().map_err(|e| cas_db(e.to_string()))?;
        let txn = self.storage.db.begin_read().map_err(cas_db)?;
        let table = txn.open_table(BLOBS).map_err(cas_db)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(cas_db)? {
            let (k, v) = entry.map_err(cas_db)?;
            out.push((Digest(*k.value()), v.value().to_vec()));
        }
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
        self.storage.flush().map_err(|e| cas_db(e.to_string()))?;
        let txn = self.storage.db.begin_write().map_err(cas_db)?;
        let removed_inline = {
            let mut t = txn.open_table(BLOBS).map_err(cas_db)?;
            let removed = t.remove(digest.as_bytes()).map_err(cas_db)?.is_some();
            removed
        };
        txn.commit().map_err(cas_db)?;
        let removed_disk = self.storage.disk.remove(digest)?;
        Ok(removed_inline || removed_disk)
    }

    fn pin(&self, digest: &Digest) -> Result<(), CasError> {
        if self.inline(digest)?.is_some() {
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
        }
        txn.commit().map_err(cas_db)?;
        Ok(report)
    }

    fn sync(&self) -> Result<(), CasError> {
        self.storage.flush().map_err(|e| cas_db(e.to_string()))
    }
}
