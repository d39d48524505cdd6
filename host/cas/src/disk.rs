//! [`DiskStore`]: the content-addressed store in a directory; its layout,
//! crash safety and durability are documented on the type.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::layout::{self, Layout};
use crate::pipeline::{self, ChunkError, StreamError, CHUNK_BYTES};
use crate::{CasError, Corruption, Digest, GcReport, Result, Store, VerifyReport};

/// The file in a store's directory that names its format (see
/// [`crate::layout`]); a store without one predates it and has format 1.
const FORMAT_FILE: &str = "format";

/// Blobs up to this size are copied by `copy_to` from one verified read in
/// memory; larger ones are verified in one pass and streamed in a second, so
/// memory stays bounded.
const COPY_IN_MEMORY_BYTES_MAX: u64 = 32 << 20;

/// Threads `sync` flushes files with. Each fsync of a new file waits for a
/// journal commit (about 4 ms here); concurrent ones share commits, so a
/// batch costs a few commits instead of one per file. Measured on ext4 for
/// 2000 small files: 750 ms with 8 threads, 410 ms with 32, 230 ms for one
/// `syncfs`; one by one it would take seconds. Threads spend that time
/// blocked, not computing. Unlike `syncfs`, flushing only our own files
/// never waits for unrelated dirty data on the same file system.
const SYNC_THREADS_MAX: usize = 32;

/// Attempts at creating this instance's locked temp directory.
const INSTANCE_ATTEMPTS_MAX: usize = 100;

/// When a put becomes durable; see [`DiskStore`] for exactly what is
/// durable when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every put is fsynced before it returns.
    #[default]
    Immediate,
    /// Puts skip fsync; [`Store::sync`] makes all earlier puts durable.
    Deferred,
}

/// How to open a [`DiskStore`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// When puts become durable.
    pub durability: Durability,
    /// Open an existing store for reading only: it is not created, its temp
    /// files are not cleaned, and every write fails with
    /// [`CasError::ReadOnly`]. For read-only data directories.
    pub read_only: bool,
}

/// The content-addressed store in a directory.
///
/// # Layout
///
/// ```text
/// DIR/blobs/<first 2 hex>/<other 62 hex>   one file per blob
/// DIR/pins/<64 hex>                        one empty file per pin
/// DIR/tmp/<instance>.lock                  flock held by each open DiskStore
/// DIR/tmp/<instance>/                      that instance's temp files
/// DIR/format                               `voidbox-cas 2`: the blob format
/// ```
///
/// A blob file is a header, `VBXBLOB` with the format's number as a byte and
/// the content length as a little-endian u64, followed by the content. In
/// format 2 (stores made since it exists) the header of a blob of 1 MiB or
/// more is padded with zeros to 4096 bytes, so that its content starts on a
/// page boundary (why: the `layout` module); smaller blobs, and every blob
/// of a format-1 store (older ones, which keep their format), have the 16
/// bytes alone. The recorded length lets `verify_all` tell a truncated blob
/// from one whose bytes changed.
///
/// # Crash safety
///
/// A put writes a temp file in the instance's temp directory (the same file
/// system as `blobs/`), hashing while it writes, and renames it to its digest
/// only when complete: a blob's name never points at partial content. Temp
/// directories of instances that are gone (their flock is free) are removed
/// when a store is opened; those of live instances, in this process or
/// another, are left alone.
///
/// # Durability: what is on stable storage when
///
/// - [`Durability::Immediate`] (the default): when `put` returns, the content
///   was fdatasync'd before the rename and the blob's directory fsync'd after
///   it. The blob survives a crash or power loss.
/// - [`Durability::Deferred`]: `put` skips every fsync and leaves the
///   complete, hashed temp file in the instance's temp directory. The blob is
///   readable at once through this `DiskStore` (all threads sharing it), but
///   not yet by other processes. [`Store::sync`] makes every put that
///   returned before it was called durable: it flushes the temp files, renames
///   them into `blobs/` and fsyncs the directories; from then on the blobs
///   are visible to everyone and survive a crash. A crash before `sync` loses
///   those blobs entirely (their temp files are removed at the next open);
///   it never leaves a partial blob under a digest. Dropping the store calls
///   `sync` on a best-effort basis.
/// - Pins and unpins are always durable when they return. A pin of a
///   deferred blob is thus durable before the blob is: after a crash it may
///   name a blob that is gone, which `pins`, `gc` and later puts tolerate.
/// - Removals (`remove`, `gc`) are made durable in `Immediate` mode; in
///   `Deferred` mode a removed blob may reappear after a crash, which is
///   harmless: its content is still valid.
///
/// # Reads
///
/// Every read checks the header against the file size and re-hashes the
/// content; see [`Store::copy_to`] for how a stream reports corruption.
/// Putting content whose stored copy has the wrong size (e.g. truncated)
/// replaces that copy; a same-size damaged copy must be removed first.
///
/// # Sharing
///
/// One `DiskStore` is shared by threads (`Arc`). Several processes may open
/// the same directory: each gets its own temp directory, and blobs they put
/// (immediately, or deferred once synced) are visible to all. GC excludes
/// puts and removals of the same `DiskStore` while it runs, not those of
/// other processes.
#[derive(Debug)]
pub struct DiskStore {
    root: PathBuf,
    blobs: PathBuf,
    pins: PathBuf,
    durability: Durability,
    /// `None` when opened read-only.
    instance: Option<Instance>,
    /// Deferred puts not yet synced: their complete temp files.
    pending: Mutex<BTreeMap<Digest, Pending>>,
    /// Puts and removals share it; GC takes it exclusively, so a put in this
    /// process cannot dedup against a blob that GC is sweeping.
    gc_lock: RwLock<()>,
    tmp_counter: AtomicU64,
    /// A temp file made ahead for the next large put, off its critical
    /// path (see [`DiskStore::put`]'s large branch).
    spare: Mutex<Option<(File, PathBuf)>>,
    /// The store's blob format.
    layout: Layout,
}

/// This open store's temp directory and the lock that tells other openers
/// it is alive.
#[derive(Debug)]
struct Instance {
    dir: PathBuf,
    lock_path: PathBuf,
    /// Holds the flock for as long as the store is open.
    _lock: File,
}

#[derive(Debug, Clone)]
struct Pending {
    path: PathBuf,
    len: u64,
}

impl DiskStore {
    /// Opens (creating if needed) a writable store in `dir` with
    /// [`Durability::Immediate`].
    pub fn open(dir: impl AsRef<Path>) -> Result<DiskStore> {
        DiskStore::open_with(dir, OpenOptions::default())
    }

    /// Opens a store in `dir` with the given options.
    pub fn open_with(dir: impl AsRef<Path>, options: OpenOptions) -> Result<DiskStore> {
        let root = dir.as_ref().to_path_buf();
        let blobs = root.join("blobs");
        let pins = root.join("pins");
        let tmp = root.join("tmp");
        let layout = if options.read_only {
            read_format(&root)?
        } else {
            create_dir(&root)?;
            settle_format(&root, &blobs)?
        };
        let instance = if options.read_only {
            for path in [&root, &blobs, &pins] {
                let meta = fs::metadata(path).map_err(|e| {
                    let e = if e.kind() == io::ErrorKind::NotFound {
                        io::Error::new(
                            e.kind(),
                            "it does not exist, and a store opened read-only is not created (`voidbox init` creates one)",
                        )
                    } else {
                        e
                    };
                    CasError::io("open the content store at", path, e)
                })?;
                if !meta.is_dir() {
                    return Err(not_a_directory(path));
                }
            }
            None
        } else {
            // The root was created before its format was settled.
            for path in [&blobs, &pins, &tmp] {
                create_dir(path)?;
            }
            let instance = Instance::create(&tmp)?;
            clean_stale_temp_dirs(&tmp, &instance)?;
            Some(instance)
        };
        Ok(DiskStore {
            root,
            blobs,
            pins,
            durability: options.durability,
            instance,
            pending: Mutex::new(BTreeMap::new()),
            gc_lock: RwLock::new(()),
            tmp_counter: AtomicU64::new(0),
            spare: Mutex::new(None),
            layout,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The durability this store was opened with.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Number of deferred puts waiting for [`Store::sync`].
    pub fn pending_count(&self) -> usize {
        self.lock_pending().len()
    }

    /// Where the blob `digest` lives once it is durable.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs.join(&hex[..2]).join(&hex[2..])
    }

    fn pin_path(&self, digest: &Digest) -> PathBuf {
        self.pins.join(digest.hex())
    }

    fn lock_spare(&self) -> MutexGuard<'_, Option<(File, PathBuf)>> {
        // Every update is a single assignment, so poisoning is moot.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> MutexGuard<'_, BTreeMap<Digest, Pending>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so poisoning is moot.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance(&self, action: &'static str) -> Result<&Instance> {
        self.instance.as_ref().ok_or_else(|| CasError::ReadOnly {
            path: self.root.clone(),
            action,
        })
    }

    fn new_temp_file(&self, instance: &Instance) -> Result<(File, PathBuf)> {
        let path = instance
            .dir
            .join(self.tmp_counter.fetch_add(1, Ordering::Relaxed).to_string());
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CasError::io("create a temp file", &path, e))?;
        Ok((file, path))
    }

    /// Whether an intact-looking copy of the blob is already stored: pending,
    /// or in place with the right file size. A blob whose size is wrong (for
    /// example truncated) is not intact, so putting its content again
    /// repairs it.
    fn has_intact(&self, digest: &Digest, len: u64) -> Result<bool> {
        if self.lock_pending().contains_key(digest) {
            return Ok(true);
        }
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.len() == self.layout.file_len(len)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CasError::io("look up the blob", path, e)),
        }
    }

    /// Makes a complete temp file the blob `digest`, as the durability says.
    fn commit(&self, file: File, temp: PathBuf, digest: Digest, len: u64) -> Result<()> {
        match self.durability {
            Durability::Immediate => {
                file.sync_data()
                    .map_err(|e| CasError::io("flush to disk", &temp, e))?;
                drop(file);
                let dir = self.rename_into_place(&temp, &digest)?;
                sync_dir(&dir)
            }
            Durability::Deferred => {
                drop(file);
                let duplicate = match self.lock_pending().entry(digest) {
                    Entry::Occupied(_) => Some(temp),
                    Entry::Vacant(slot) => {
                        slot.insert(Pending { path: temp, len });
                        None
                    }
                };
                // Another thread stored the same content meanwhile.
                if let Some(temp) = duplicate {
                    remove_file_if_exists(&temp)?;
                }
                Ok(())
            }
        }
    }

    /// Renames `temp` to the blob's path, creating its shard directory on
    /// first use. Returns the shard directory (to fsync).
    fn rename_into_place(&self, temp: &Path, digest: &Digest) -> Result<PathBuf> {
        let target = self.blob_path(digest);
        let shard = target
            .parent()
            .expect("blob paths have a shard")
            .to_path_buf();
        match fs::rename(temp, &target) {
            Ok(()) => Ok(shard),
            // The shard directory is missing, or another thread is creating
            // it right now (checking `shard.exists()` here would race with
            // it): create it, tolerating that it exists, and retry once.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Made durable in both modes: in deferred mode this runs in
                // `sync`, whose promise covers the new directory too.
                create_dir(&shard)?;
                sync_dir(&self.blobs)?;
                fs::rename(temp, &target)
                    .map_err(|e| CasError::io("move a finished blob to", &target, e))?;
                Ok(shard)
            }
            Err(e) => Err(CasError::io("move a finished blob to", &target, e)),
        }
    }

    /// Opens the blob, pending or in place, and checks its header. Returns
    /// the file and the content length, `None` if the blob is not stored.
    fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64)>> {
        let pending = self.lock_pending().get(digest).cloned();
        let mut candidates = Vec::with_capacity(2);
        if let Some(pending) = pending {
            candidates.push(pending.path);
        }
        // A pending blob may be renamed into place by `sync` at any moment,
        // so its final path is always the fallback.
        candidates.push(self.blob_path(digest));
        for path in candidates {
            match File::open(&path) {
                Ok(file) => {
                    let len = read_header(&file, &path, digest, self.layout)?;
                    return Ok(Some((file, len)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CasError::io("open the blob", path, e)),
            }
        }
        Ok(None)
    }

    fn open_existing_blob(&self, digest: &Digest) -> Result<(File, u64)> {
        self.open_blob(digest)?.ok_or(CasError::NotFound(*digest))
    }

    /// Reads a whole blob into memory and verifies it.
    fn read_verified(&self, digest: &Digest, file: &File, len: u64) -> Result<Vec<u8>> {
        let size = usize::try_from(len).map_err(|_| {
            CasError::io(
                "read into memory",
                self.blob_path(digest),
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "the blob exceeds the address space; use copy_to",
                ),
            )
        })?;
        let (data, hash) = pipeline::read_and_hash(file, self.layout.header_bytes(len), size)
            .map_err(|e| self.read_error(digest, file, len, e))?;
        match content_problem(digest, hash) {
            None => Ok(data),
            Some(detail) => Err(CasError::Corrupt {
                digest: *digest,
                detail,
            }),
        }
    }

    /// Re-hashes one blob. `Ok(None)` if it is intact; `Err(NotFound)` if
    /// it is not stored.
    fn check_blob(&self, digest: &Digest) -> Result<Option<Corruption>> {
        let (file, len) = match self.open_existing_blob(digest) {
            Ok(found) => found,
            Err(CasError::Corrupt { detail, .. }) => return Ok(Some(detail)),
            Err(e) => return Err(e),
        };
        match hash_range(&file, self.layout.header_bytes(len), len) {
            Ok(hash) => Ok(content_problem(digest, hash)),
            Err(e) => Err(self.read_error(digest, &file, len, e)),
        }
    }

    /// Turns a read error into `Corrupt` when the file is shorter than its
    /// header says (it was truncated while we read it).
    fn read_error(&self, digest: &Digest, file: &File, len: u64, err: io::Error) -> CasError {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            let actual = file
                .metadata()
                .map(|m| m.len().saturating_sub(self.layout.header_bytes(len)))
                .unwrap_or(0);
            return CasError::Corrupt {
                digest: *digest,
                detail: Corruption::SizeMismatch {
                    expected: len,
                    actual,
                },
            };
        }
        CasError::io("read the blob", self.blob_path(digest), err)
    }

    /// Every blob in `blobs/` with its content length, plus the files there
    /// whose names are not blobs.
    fn scan(&self) -> Result<(BTreeMap<Digest, u64>, Vec<PathBuf>)> {
        let mut found = BTreeMap::new();
        let mut strays = Vec::new();
        for shard in read_dir(&self.blobs)? {
            let shard = shard.map_err(|e| CasError::io("list", &self.blobs, e))?;
            let shard_path = shard.path();
            let shard_name = shard.file_name();
            let shard_hex = shard_name.to_str().filter(|s| s.len() == 2);
            let is_dir = shard
                .file_type()
                .map_err(|e| CasError::io("inspect", &shard_path, e))?
                .is_dir();
            let Some(shard_hex) = shard_hex.filter(|_| is_dir) else {
                strays.push(shard_path);
                continue;
            };
            for entry in read_dir(&shard_path)? {
                let entry = entry.map_err(|e| CasError::io("list", &shard_path, e))?;
                let name = entry.file_name();
                let digest = name
                    .to_str()
                    .and_then(|rest| Digest::from_hex(&format!("{shard_hex}{rest}")));
                let Some(digest) = digest else {
                    strays.push(entry.path());
                    continue;
                };
                match entry.metadata() {
                    Ok(meta) if meta.is_file() => {
                        found.insert(digest, self.layout.listed_len(meta.len()));
                    }
                    Ok(_) => strays.push(entry.path()),
                    // Removed since the directory was read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CasError::io("inspect", entry.path(), e)),
                }
            }
        }
        for (digest, pending) in self.lock_pending().iter() {
            found.insert(*digest, pending.len);
        }
        Ok((found, strays))
    }

    fn is_pinned(&self, digest: &Digest) -> Result<bool> {
        let path = self.pin_path(digest);
        match fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CasError::io("look up the pin", path, e)),
        }
    }

    /// Removes a blob without looking at pins. Returns its content length if
    /// it was stored, and the directory to fsync if its file was removed.
    fn remove_unpinned(&self, digest: &Digest) -> Result<Option<(u64, Option<PathBuf>)>> {
        let pending = self.lock_pending().remove(digest);
        let path = self.blob_path(digest);
        let in_place = match fs::metadata(&path) {
            Ok(meta) => {
                remove_file_if_exists(&path)?;
                Some(self.layout.listed_len(meta.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(CasError::io("look up the blob", path, e)),
        };
        if let Some(pending) = &pending {
            remove_file_if_exists(&pending.path)?;
        }
        let dir = in_place.map(|_| path.parent().expect("shard").to_path_buf());
        Ok(in_place.or(pending.map(|p| p.len)).map(|len| (len, dir)))
    }

    fn sync_pending(&self) -> Result<()> {
        let batch: Vec<(Digest, Pending)> = self
            .lock_pending()
            .iter()
            .map(|(d, p)| (*d, p.clone()))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        self.instance("sync")?;
        // First the contents, so that no rename can reach the disk before
        // the data it names.
        let paths: Vec<&Path> = batch.iter().map(|(_, p)| p.path.as_path()).collect();
        sync_all_parallel(&paths, "flush to disk")?;
        let mut dirs = BTreeSet::new();
        for (digest, pending) in &batch {
            match self.rename_into_place(&pending.path, digest) {
                Ok(dir) => {
                    dirs.insert(dir);
                }
                // Removed meanwhile.
                Err(CasError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let mut map = self.lock_pending();
            if map.get(digest).is_some_and(|p| p.path == pending.path) {
                map.remove(digest);
            }
        }
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        sync_all_parallel(&dirs, "flush to disk the directory")
    }
}

impl Store for DiskStore {
    fn put(&self, data: &[u8]) -> Result<Digest> {
        let instance = self.instance("store a blob")?;
        let _guard = self.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let len = data.len() as u64;
        let header = self.layout.header(len);
        if data.len() <= pipeline::PIPELINE_MIN_BYTES {
            // Small: hashing first is cheap and spares a write when the
            // content is already stored.
            let digest = Digest::of(data);
            if self.has_intact(&digest, len)? {
                return Ok(digest);
            }
            let (file, temp) = self.new_temp_file(instance)?;
            let written = write_header_and_content(&file, &header, data);
            if let Err(e) = written {
                let _ = fs::remove_file(&temp);
                return Err(CasError::io("write", temp, e));
            }
            return self.commit(file, temp, digest, len).map(|()| digest);
        }
        // Large: write and hash at the same time; a duplicate costs a wasted
        // temp write, which is then dropped without touching the stored blob.
        // The temp file is one made ahead if there is one: creating a file
        // took 0.10-0.14 ms here (ext4 without a journal skips inodes freed
        // in the last seconds, and a store that removes blobs frees them),
        // 3-4% of a 16 MiB put, on its critical path (the writes). The
        // thread of the put that would wait for the other's last writes
        // makes the next one.
        let spare = self.lock_spare().take();
        let (file, temp) = match spare {
            Some(spare) => spare,
            None => self.new_temp_file(instance)?,
        };
        let make_spare = || {
            let mut spare = self.lock_spare();
            if spare.is_none() {
                // Best effort: the next put makes its own if this failed.
                *spare = self.new_temp_file(instance).ok();
            }
        };
        let digest = match pipeline::write_and_hash(&file, &header, data, &make_spare) {
            Ok(hash) => Digest::from(hash),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(CasError::io("write", temp, e));
            }
        };
        if self.has_intact(&digest, len)? {
            drop(file);
            remove_file_if_exists(&temp)?;
            return Ok(digest);
        }
        self.commit(file, temp, digest, len)?;
        Ok(digest)
    }

    fn put_reader(&self, reader: &mut dyn Read) -> Result<(Digest, u64)> {
        let instance = self.instance("store a blob")?;
        let mut first = Vec::new();
        pipeline::fill(reader, &mut first).map_err(CasError::Input)?;
        if first.len() < CHUNK_BYTES {
            // The whole input fit in one chunk.
            let digest = self.put(&first)?;
            return Ok((digest, first.len() as u64));
        }
        let _guard = self.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let (file, temp) = self.new_temp_file(instance)?;
        // The content is at least `first` long, so its header size is known
        // before its length is.
        let offset = self.layout.header_bytes(first.len() as u64);
        let streamed = pipeline::read_hash_write(first, reader, &file, offset)
            .map_err(|e| match e {
                StreamError::Input(e) => CasError::Input(e),
                StreamError::Output(e) => CasError::io("write", &temp, e),
            })
            .and_then(|(hash, len)| {
                let header = self.layout.header(len);
                debug_assert_eq!(header.len() as u64, offset);
                file.write_all_at(&header, 0)
                    .map_err(|e| CasError::io("write", &temp, e))?;
                Ok((Digest::from(hash), len))
            });
        let (digest, len) = match streamed {
            Ok(done) => done,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        if self.has_intact(&digest, len)? {
            drop(file);
            remove_file_if_exists(&temp)?;
        } else {
            self.commit(file, temp, digest, len)?;
        }
        Ok((digest, len))
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        let (file, len) = self.open_existing_blob(digest)?;
        self.read_verified(digest, &file, len)
    }

    fn copy_to(&self, digest: &Digest, out: &mut dyn Write) -> Result<u64> {
        let (file, len) = self.open_existing_blob(digest)?;
        if len <= COPY_IN_MEMORY_BYTES_MAX {
            let data = self.read_verified(digest, &file, len)?;
            out.write_all(&data).map_err(|source| CasError::Output {
                digest: *digest,
                source,
            })?;
            return Ok(data.len() as u64);
        }
        // Pass one: verify before the first byte goes out.
        let offset = self.layout.header_bytes(len);
        let hash =
            hash_range(&file, offset, len).map_err(|e| self.read_error(digest, &file, len, e))?;
        if let Some(detail) = content_problem(digest, hash) {
            return Err(CasError::Corrupt {
                digest: *digest,
                detail,
            });
        }
        // Pass two: stream, hashing again in case the file changed between
        // the passes.
        stream_verified(digest, &file, offset, len, out).map_err(|e| match e {
            ChunkError::Read(e) => self.read_error(digest, &file, len, e),
            ChunkError::Consume(e) => e,
        })
    }

    fn get_to_file(&self, digest: &Digest, path: &Path) -> Result<u64> {
        let (file, len) = self.open_existing_blob(digest)?;
        let offset = self.layout.header_bytes(len);
        // One pass is enough: the rename happens only after verification.
        pipeline::write_file_atomically(path, |out| {
            stream_verified(digest, &file, offset, len, out).map_err(|e| match e {
                ChunkError::Read(e) => self.read_error(digest, &file, len, e),
                ChunkError::Consume(e) => e,
            })
        })
    }

    fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.size(digest)?.is_some())
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(pending) = self.lock_pending().get(digest) {
            return Ok(Some(pending.len));
        }
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(self.layout.listed_len(meta.len()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CasError::io("look up the blob", path, e)),
        }
    }

    fn list(&self) -> Result<Vec<(Digest, u64)>> {
        Ok(self.scan()?.0.into_iter().collect())
    }

    fn remove(&self, digest: &Digest) -> Result<bool> {
        self.instance("remove a blob")?;
        let _guard = self.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        if self.is_pinned(digest)? {
            return Err(CasError::Pinned(*digest));
        }
        let Some((_, dir)) = self.remove_unpinned(digest)? else {
            return Ok(false);
        };
        if let (Durability::Immediate, Some(dir)) = (self.durability, dir) {
            sync_dir(&dir)?;
        }
        Ok(true)
    }

    fn pin(&self, digest: &Digest) -> Result<()> {
        self.instance("pin a blob")?;
        if !self.contains(digest)? {
            return Err(CasError::NotFound(*digest));
        }
        let path = self.pin_path(digest);
        File::create(&path).map_err(|e| CasError::io("create the pin", &path, e))?;
        sync_dir(&self.pins)
    }

    fn unpin(&self, digest: &Digest) -> Result<bool> {
        self.instance("unpin a blob")?;
        let path = self.pin_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.pins)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CasError::io("remove the pin", path, e)),
        }
    }

    fn pins(&self) -> Result<Vec<Digest>> {
        let mut pins = Vec::new();
        for entry in read_dir(&self.pins)? {
            let entry = entry.map_err(|e| CasError::io("list", &self.pins, e))?;
            // Files that are not named like a digest are not pins.
            if let Some(digest) = entry.file_name().to_str().and_then(Digest::from_hex) {
                pins.push(digest);
            }
        }
        pins.sort();
        Ok(pins)
    }

    fn verify_all(&self) -> Result<VerifyReport> {
        let (blobs, stray_files) = self.scan()?;
        let mut report = VerifyReport {
            stray_files,
            ..VerifyReport::default()
        };
        for (digest, len) in blobs {
            match self.check_blob(&digest) {
                Ok(None) => {}
                Ok(Some(problem)) => report.corrupt.push((digest, problem)),
                // Removed since the scan.
                Err(CasError::NotFound(_)) => continue,
                Err(CasError::Corrupt { detail, .. }) => report.corrupt.push((digest, detail)),
                Err(e) => return Err(e),
            }
            report.checked += 1;
            report.bytes += len;
        }
        Ok(report)
    }

    fn gc(&self, roots: &BTreeSet<Digest>) -> Result<GcReport> {
        self.instance("collect garbage")?;
        let _guard = self.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let pins: BTreeSet<Digest> = self.pins()?.into_iter().collect();
        let mut report = GcReport::default();
        let mut dirs = BTreeSet::new();
        for (digest, _) in self.scan()?.0 {
            if pins.contains(&digest) || roots.contains(&digest) {
                report.kept += 1;
                continue;
            }
            if let Some((len, dir)) = self.remove_unpinned(&digest)? {
                report.removed += 1;
                report.bytes_freed += len;
                dirs.extend(dir);
            }
        }
        if self.durability == Durability::Immediate {
            for dir in &dirs {
                sync_dir(dir)?;
            }
        }
        Ok(report)
    }

    fn sync(&self) -> Result<()> {
        self.sync_pending()
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Best effort: a failure leaves the temp files, which the next open
        // removes; those deferred blobs are then lost, as documented.
        let _ = self.sync_pending();
        if let Some((file, path)) = self.lock_spare().take() {
            drop(file);
            let _ = fs::remove_file(path);
        }
        if let Some(instance) = &self.instance {
            if self.lock_pending().is_empty() {
                let _ = fs::remove_dir_all(&instance.dir);
                let _ = fs::remove_file(&instance.lock_path);
            }
        }
    }
}

impl Instance {
    /// Creates and locks this store's temp directory under `tmp`.
    fn create(tmp: &Path) -> Result<Instance> {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Each retry follows a lost race with another opener; a few are
        // plenty, and a bound turns a surprise into an error, not a hang.
        for _ in 0..INSTANCE_ATTEMPTS_MAX {
            let id = format!(
                "{}-{nanos}-{}",
                std::process::id(),
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            );
            let lock_path = tmp.join(format!("{id}.lock"));
            let lock = match File::options()
                .write(true)
                .create_new(true)
                .open(&lock_path)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CasError::io("create a lock file in", tmp, e)),
            };
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .map_err(|e| CasError::io("lock", &lock_path, e.into()))?;
            // Another opener may have judged the file stale and removed it
            // between our create and our flock; then start over.
            let linked = fs::metadata(&lock_path).map(|m| m.ino());
            let ours = lock
                .metadata()
                .map_err(|e| CasError::io("inspect", &lock_path, e))?
                .ino();
            if linked.ok() != Some(ours) {
                continue;
            }
            let dir = tmp.join(&id);
            create_dir(&dir)?;
            return Ok(Instance {
                dir,
                lock_path,
                _lock: lock,
            });
        }
        Err(CasError::io(
            "create a temp directory in",
            tmp,
            io::Error::other("other processes kept removing it while it was created; retry"),
        ))
    }
}

/// Removes what crashed or killed instances left in `tmp`: the temp
/// directories whose lock nobody holds, and anything else that is not a live
/// instance's.
fn clean_stale_temp_dirs(tmp: &Path, ours: &Instance) -> Result<()> {
    for entry in read_dir(tmp)? {
        let entry = entry.map_err(|e| CasError::io("list", tmp, e))?;
        let path = entry.path();
        if path == ours.dir || path == ours.lock_path {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".lock") {
            let lock = match File::options().write(true).open(&path) {
                Ok(lock) => lock,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CasError::io("open", &path, e)),
            };
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                // Nobody holds it: its owner is gone. Directory first, so a
                // directory never outlives its lock file.
                Ok(()) => {
                    remove_dir_all_if_exists(&tmp.join(id))?;
                    remove_file_if_exists(&path)?;
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => return Err(CasError::io("lock", &path, e.into())),
            }
        } else {
            let lock_path = tmp.join(format!("{name}.lock"));
            // A live instance creates its lock before its directory, so a
            // directory without a lock file is stale.
            if !lock_path.exists() {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    remove_dir_all_if_exists(&path)?;
                } else {
                    remove_file_if_exists(&path)?;
                }
            }
        }
    }
    Ok(())
}

/// Checks a blob file's header against its size; returns the content length.
fn read_header(file: &File, path: &Path, digest: &Digest, layout: Layout) -> Result<u64> {
    let corrupt = |detail| CasError::Corrupt {
        digest: *digest,
        detail,
    };
    let file_len = file
        .metadata()
        .map_err(|e| CasError::io("inspect the blob", path, e))?
        .len();
    let mut raw = [0u8; 16];
    if file_len < raw.len() as u64 {
        return Err(corrupt(Corruption::BadHeader));
    }
    file.read_exact_at(&mut raw, 0)
        .map_err(|e| CasError::io("read the blob", path, e))?;
    let Some(expected) = layout.recorded_len(&raw) else {
        return Err(match layout::named_format(&raw) {
            Some(named) => format_mismatch(path, named, layout),
            None => corrupt(Corruption::BadHeader),
        });
    };
    let actual = file_len.saturating_sub(layout.header_bytes(expected));
    if layout.file_len(expected) != file_len {
        return Err(corrupt(Corruption::SizeMismatch { expected, actual }));
    }
    Ok(expected)
}

/// A blob of another known format than its store's: the store's format
/// file, not the blob, is what is wrong, so this is not a `Corrupt` (which
/// `verify_all` would list for every blob); it stops the read instead.
fn format_mismatch(path: &Path, named: Layout, store: Layout) -> CasError {
    let (named, store) = (named.format(), store.format());
    CasError::io(
        "read the blob",
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is a format-{named} blob in a store of format {store} (a store without a \
                 `{FORMAT_FILE}` file is format 1): the store's `{FORMAT_FILE}` file was \
                 removed or changed; restore it to `voidbox-cas {named}`"
            ),
        ),
    )
}

/// The format of the store at `root`, read-only: format 1 if it names none.
fn read_format(root: &Path) -> Result<Layout> {
    let path = root.join(FORMAT_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => parse_format(&path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Layout::V1),
        Err(e) => Err(CasError::io("read the store's format file", path, e)),
    }
}

/// The format of the store at `root`, which may be new: a store that names
/// a format has it; one with blobs but no format file predates format
/// files and stays format 1; a new one gets the current format, recorded
/// before any blob is written.
fn settle_format(root: &Path, blobs: &Path) -> Result<Layout> {
    let path = root.join(FORMAT_FILE);
    if path.exists() || blobs.exists() {
        return read_format(root);
    }
    let text = layout::format_file_text(Layout::CURRENT.format());
    match File::options().write(true).create_new(true).open(&path) {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| CasError::io("write the store's format file", &path, e))?;
            Ok(Layout::CURRENT)
        }
        // Another process made the store at the same moment.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_format(root),
        Err(e) => Err(CasError::io("write the store's format file", path, e)),
    }
}

fn parse_format(path: &Path, text: &str) -> Result<Layout> {
    let unknown = |what: String| {
        CasError::io(
            "read the store's format file",
            path,
            io::Error::new(io::ErrorKind::InvalidData, what),
        )
    };
    let format = layout::parse_format_file(text).ok_or_else(|| {
        unknown(format!(
            "it should read `voidbox-cas N` but reads {:?}; restore it (a store with 4096-byte \
             headers on blobs of 1 MiB or more is format 2, one without is format 1)",
            text.trim_end()
        ))
    })?;
    Layout::of_format(format).ok_or_else(|| {
        unknown(format!(
            "the store has format {format}, newer than this build reads (up to {}); use the \
             voidbox that made it, or a newer one",
            Layout::CURRENT.format()
        ))
    })
}

/// Writes a small blob's header and content with one `pwritev` in the usual
/// case: for small blobs the syscalls, not the bytes, are the cost.
fn write_header_and_content(file: &File, header: &[u8], data: &[u8]) -> io::Result<()> {
    let slices = [io::IoSlice::new(header), io::IoSlice::new(data)];
    let written = rustix::io::pwritev(file, &slices, 0)?;
    // A short write (rare for regular files) is finished piecewise.
    if written < header.len() {
        file.write_all_at(&header[written..], written as u64)?;
        file.write_all_at(data, header.len() as u64)
    } else {
        let done = written - header.len();
        file.write_all_at(&data[done..], written as u64)
    }
}

fn content_problem(digest: &Digest, hash: blake3::Hash) -> Option<Corruption> {
    let actual = Digest::from(hash);
    (actual != *digest).then_some(Corruption::ContentChanged { actual })
}

fn hash_range(file: &File, offset: u64, len: u64) -> io::Result<blake3::Hash> {
    pipeline::hash_file_range(file, offset, len)
}

/// Streams a blob's content to `out` while hashing it; `Corrupt` at the end
/// if the hash differs.
fn stream_verified(
    digest: &Digest,
    file: &File,
    offset: u64,
    len: u64,
    out: &mut dyn Write,
) -> Result<u64, ChunkError<CasError>> {
    let mut hasher = blake3::Hasher::new();
    pipeline::for_each_chunk(file, offset, len, &mut |chunk| {
        hasher.update(chunk);
        out.write_all(chunk).map_err(|source| CasError::Output {
            digest: *digest,
            source,
        })
    })?;
    out.flush().map_err(|source| {
        ChunkError::Consume(CasError::Output {
            digest: *digest,
            source,
        })
    })?;
    match content_problem(digest, hasher.finalize()) {
        None => Ok(len),
        Some(detail) => Err(ChunkError::Consume(CasError::Corrupt {
            digest: *digest,
            detail,
        })),
    }
}

fn not_a_directory(path: &Path) -> CasError {
    CasError::io(
        "open the content store at",
        path,
        io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory"),
    )
}

fn create_dir(path: &Path) -> Result<()> {
    match fs::create_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CasError::io("create the directory", path, e)),
    }
    let meta = fs::metadata(path).map_err(|e| CasError::io("inspect", path, e))?;
    if !meta.is_dir() {
        return Err(not_a_directory(path));
    }
    Ok(())
}

fn read_dir(path: &Path) -> Result<fs::ReadDir> {
    fs::read_dir(path).map_err(|e| CasError::io("list", path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| CasError::io("flush to disk the directory", path, e))
}

/// fsyncs every file or directory in `paths`, on up to `SYNC_THREADS_MAX`
/// threads. A path that no longer exists (removed meanwhile) is skipped.
fn sync_all_parallel(paths: &[&Path], action: &'static str) -> Result<()> {
    let sync_one = |path: &Path| -> Result<()> {
        match File::open(path) {
            Ok(file) => file.sync_all().map_err(|e| CasError::io(action, path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CasError::io(action, path, e)),
        }
    };
    if paths.len() <= 1 {
        return paths.iter().try_for_each(|path| sync_one(path));
    }
    let per_thread = paths.len().div_ceil(SYNC_THREADS_MAX);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|path| sync_one(path))))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
            .collect::<Result<Vec<()>>>()
            .map(|_| ())
    })
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CasError::io("remove", path, e)),
    }
}

fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CasError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn deferred(dir: &Path) -> DiskStore {
        let options = OpenOptions {
            durability: Durability::Deferred,
            read_only: false,
        };
        DiskStore::open_with(dir, options).unwrap()
    }

    #[test]
    fn a_large_put_takes_the_spare_temp_file_and_drop_removes_an_unused_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = deferred(dir.path());
        let instance = store.instance.as_ref().unwrap();
        let made = store.new_temp_file(instance).unwrap();
        let spare_path = made.1.clone();
        *store.lock_spare() = Some(made);
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        let digest = store.put(&data).unwrap();
        // The put wrote into the spare; the blob is pending there.
        assert_eq!(store.lock_pending()[&digest].path, spare_path);
        assert_eq!(store.get(&digest).unwrap(), data);
        // Whatever spare the put made for the next one, dropping the store
        // leaves no temp file behind.
        let made = store.new_temp_file(instance).unwrap();
        *store.lock_spare() = Some(made);
        let instance_dir = instance.dir.clone();
        drop(store);
        assert!(!instance_dir.exists());
        assert_eq!(
            DiskStore::open(dir.path()).unwrap().get(&digest).unwrap(),
            data
        );
    }

    #[test]
    fn a_duplicate_large_put_leaves_no_temp_file_but_the_spare() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 241) as u8).collect();
        for _ in 0..3 {
            store.put(&data).unwrap();
            let spare = store.lock_spare().as_ref().map(|(_, path)| path.clone());
            let instance = store.instance.as_ref().unwrap();
            assert_eq!(
                files_in(&instance.dir),
                spare.into_iter().collect::<Vec<_>>()
            );
        }
    }
}
