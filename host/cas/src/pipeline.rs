//! Hashing overlapped with I/O.
//!
//! blake3 on one core and a page-cache copy run at comparable rates, so doing
//! them one after the other would roughly halve throughput. For blobs above
//! [`PIPELINE_MIN_BYTES`] a helper thread shares the work with the calling
//! thread. A put from memory ([`write_and_hash`]), a read into memory
//! ([`read_and_hash`]) and a verification ([`hash_file_range`]) split the I/O
//! and the hashing into units that either thread takes (the calling thread
//! and a long-lived helper, see [`helper`]), so they finish when the work is
//! done, not when the slower of two fixed halves is. A read hashes each unit
//! right after reading it, while it is in that core's cache, and with a
//! second core free takes less time than hashing alone; a put takes about 1.4
//! times as long as hashing: a file system such as ext4 lets one thread at a
//! time copy into a file's page cache, and that copy is slower than blake3,
//! so in practice one thread writes every unit while the other hashes them
//! from the caller's buffer, ahead of the writes, and the put lasts as long
//! as its writes (BENCHMARKS.md, issue #2, session 34). A streamed put
//! ([`read_hash_write`]) shares the writing and hashing of the chunks the
//! calling thread reads in the same way. Streams out ([`for_each_chunk`]),
//! whose bytes must pass in order, use a scoped thread for the reads while
//! the other hashes, chunk by chunk. Memory stays bounded by a few chunk
//! buffers, except where the caller asked for the whole blob in memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard};
use std::thread;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::{helper, CasError, Result};

/// Below this size a helper thread costs more than the overlap saves.
pub(crate) const PIPELINE_MIN_BYTES: usize = 1 << 20;

/// Size of one chunk of a stream (read ahead for a reader, or read from an
/// input and written). Large enough that blake3 uses its widest SIMD and
/// syscalls are few; at least [`PIPELINE_MIN_BYTES`], so that a stream's
/// first chunk, if full, tells that the blob takes the pipeline (and its
/// header in the file format, see `layout`) before the length is known.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(CHUNK_BYTES >= PIPELINE_MIN_BYTES && CHUNK_BYTES.is_power_of_two());

/// Buffers in flight in the streaming pipelines: one being filled, one being
/// consumed, one spare so neither side waits on the other's jitter.
const BUFFERS: usize = 3;

/// Failure of [`for_each_chunk`]: reading the file, or the consumer.
#[derive(Debug)]
pub(crate) enum ChunkError<E> {
    Read(io::Error),
    Consume(E),
}

/// Reads `len` bytes of `file` from `offset` and hands them, in order and in
/// chunks, to `consume`, reading ahead on a helper thread for large ranges.
/// A file shorter than `offset + len` gives `Read` with `UnexpectedEof`.
pub(crate) fn for_each_chunk<E>(
    file: &File,
    offset: u64,
    len: u64,
    consume: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), ChunkError<E>> {
    if len <= PIPELINE_MIN_BYTES as u64 {
        // Bounded by PIPELINE_MIN_BYTES, so the cast is exact.
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(ChunkError::Read)?;
        return consume(&buf).map_err(ChunkError::Consume);
    }
    thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            free_tx
                .send(vec![0u8; CHUNK_BYTES])
                .expect("the receiver is alive");
        }
        let reader = scope.spawn(move || -> io::Result<()> {
            let mut done = 0u64;
            while done < len {
                // A closed channel means the consumer stopped early.
                let Ok(mut buf) = free_rx.recv() else {
                    return Ok(());
                };
                let n = (len - done).min(CHUNK_BYTES as u64) as usize;
                file.read_exact_at(&mut buf[..n], offset + done)?;
                done += n as u64;
                if full_tx.send((buf, n)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut consumed = Ok(());
        for (buf, n) in full_rx.iter() {
            if let Err(err) = consume(&buf[..n]) {
                consumed = Err(ChunkError::Consume(err));
                break;
            }
            // The reader may already have finished; then the buffer is freed.
            let _ = free_tx.send(buf);
        }
        // Unblocks a reader waiting for a free buffer after an early stop.
        drop(full_rx);
        drop(free_tx);
        let read = join(reader);
        consumed?;
        read.map_err(ChunkError::Read)
    })
}

/// Reads `len` bytes of `file` from `offset` into a new vector and hashes
/// them; a large range is shared with a helper (see [`hash_units_shared`]).
pub(crate) fn read_and_hash(
    file: &File,
    offset: u64,
    len: usize,
) -> io::Result<(Vec<u8>, blake3::Hash)> {
    // The bytes are read straight into the vector's uninitialized capacity:
    // zero-filling 16 MiB first would cost a sixth of the hashing time, on
    // the critical path.
    let mut data: Vec<u8> = Vec::with_capacity(len);
    let target = &mut data.spare_capacity_mut()[..len];
    let hash = if len <= PIPELINE_MIN_BYTES {
        let mut hasher = blake3::Hasher::new();
        read_exact_uninit_at(file, target, offset, &mut |part| {
            hasher.update(part);
        })?;
        hasher.finalize()
    } else {
        read_and_hash_shared(file, target, offset)?
    };
    // SAFETY: `read_exact_uninit_at` returned Ok, so it initialized every
    // byte of `target`, which is exactly the first `len` bytes of the
    // capacity.
    unsafe { data.set_len(len) };
    Ok((data, hash))
}

/// Fills `target` from `file` at `offset` and hashes it, sharing the units
/// with a helper (see [`hash_units_shared`]). `UnexpectedEof` if the file
/// ends first.
fn read_and_hash_shared(
    file: &File,
    target: &mut [MaybeUninit<u8>],
    offset: u64,
) -> io::Result<blake3::Hash> {
    let len = target.len();
    // Each unit's part of `target`, taken by the thread that reads it.
    let parts: Vec<Mutex<Option<&mut [MaybeUninit<u8>]>>> = target
        .chunks_mut(UNIT_BYTES)
        .map(|part| Mutex::new(Some(part)))
        .collect();
    hash_units_shared(len, &|unit, _| {
        let part = parts[unit]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each unit is taken once");
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset((unit * UNIT_BYTES) as u64);
        read_exact_uninit_at(
            file,
            part,
            offset + (unit * UNIT_BYTES) as u64,
            &mut |read| {
                hasher.update(read);
            },
        )?;
        Ok(hasher.finalize_non_root())
    })
}

/// The blake3 hash of `len` bytes of `file` from `offset`, read in units
/// shared with a helper (see [`hash_units_shared`]). Memory: one unit
/// buffer per thread, and 32 bytes of chaining value per unit (1/16384 of
/// `len`). `UnexpectedEof` if the file ends first.
pub(crate) fn hash_file_range(file: &File, offset: u64, len: u64) -> io::Result<blake3::Hash> {
    let Ok(len) = usize::try_from(len) else {
        // Beyond the address space (32-bit targets): one thread, streaming.
        return hash_file_range_alone(file, offset, len);
    };
    if len <= PIPELINE_MIN_BYTES {
        return hash_file_range_alone(file, offset, len as u64);
    }
    hash_units_shared(len, &|unit, buf| {
        let start = unit * UNIT_BYTES;
        let n = (len - start).min(UNIT_BYTES);
        buf.resize(n, 0);
        file.read_exact_at(buf, offset + start as u64)?;
        Ok(blake3::Hasher::new()
            .set_input_offset(start as u64)
            .update(buf)
            .finalize_non_root())
    })
}

fn hash_file_range_alone(file: &File, offset: u64, len: u64) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; len.min(CHUNK_BYTES as u64) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK_BYTES as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(hasher.finalize())
}

/// The blake3 hash of `len` bytes made of units of `UNIT_BYTES`, where
/// `unit_cv(k, buf)` reads unit k and returns its chaining value as a
/// subtree (`buf` is a scratch buffer of the calling thread).
///
/// The calling thread and a helper (see [`helper`]) each take the next
/// unit nobody took, read it and hash it while it is in that core's cache;
/// the chaining values are merged at the end. Reads of one file run in
/// parallel (the page cache takes no file-wide lock for them), so with a
/// second core free the two halves of the work overlap; when the helper is
/// busy or late the calling thread does it all, still reading each byte
/// once. The first error stops both threads and is returned.
fn hash_units_shared(
    len: usize,
    unit_cv: &(dyn Fn(usize, &mut Vec<u8>) -> io::Result<ChainingValue> + Sync),
) -> io::Result<blake3::Hash> {
    assert!(len > UNIT_BYTES, "a single unit needs no sharing");
    let units = len.div_ceil(UNIT_BYTES);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> io::Result<Vec<(usize, ChainingValue)>> {
        let (mut cvs, mut buf) = (Vec::new(), Vec::new());
        while !failed.load(Ordering::Relaxed) {
            let unit = next.fetch_add(1, Ordering::Relaxed);
            if unit >= units {
                break;
            }
            match unit_cv(unit, &mut buf) {
                Ok(cv) => cvs.push((unit, cv)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(cvs)
    };
    hash_on_two_threads(units, len as u64, work)
}

/// Runs `work` on the calling thread and, if a helper takes the offer in
/// time, on a helper thread too; each run returns the chaining values of
/// the hash units it took (every unit by exactly one of them). Merges them
/// into the root hash of the `len` bytes those `units` cover.
fn hash_on_two_threads(
    units: usize,
    len: u64,
    work: impl Fn() -> io::Result<Vec<(usize, ChainingValue)>> + Sync,
) -> io::Result<blake3::Hash> {
    // The helper's share, if a helper took the job; else the calling thread
    // did everything.
    let theirs = Mutex::new(None);
    let help = || {
        let done = work();
        *theirs.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
    };
    let mine = helper::with_helper(&help, &work);
    let theirs = theirs
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(Ok(Vec::new()));
    let mut cvs: Vec<Option<ChainingValue>> = vec![None; units];
    for (unit, cv) in mine?.into_iter().chain(theirs?) {
        cvs[unit] = Some(cv);
    }
    let cvs: Vec<ChainingValue> = cvs
        .into_iter()
        .map(|cv| cv.expect("every hash unit was taken by one thread"))
        .collect();
    Ok(root_hash(&cvs, len, UNIT_BYTES))
}

/// Fills `target` from `file` at `offset`, in chunks of at most
/// `CHUNK_BYTES`, handing each part to `filled` as soon as it is read.
/// `UnexpectedEof` if the file ends first.
fn read_exact_uninit_at<'a>(
    file: &File,
    target: &'a mut [MaybeUninit<u8>],
    offset: u64,
    filled: &mut dyn FnMut(&'a [u8]),
) -> io::Result<()> {
    let mut rest = target;
    let mut pos = offset;
    while !rest.is_empty() {
        let take = rest.len().min(CHUNK_BYTES);
        let (head, tail) = rest.split_at_mut(take);
        rest = tail;
        let mut head = head;
        while !head.is_empty() {
            // Each read moves the unread remainder back out, so the filled
            // parts keep the lifetime of `target` and can cross threads.
            let (part, unread) = rustix::io::pread(file, head, pos)?;
            if part.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            pos += part.len() as u64;
            filled(part);
            head = unread;
        }
    }
    Ok(())
}

/// Bytes per unit of work in [`write_and_hash`] and [`hash_units_shared`]:
/// write unit k is the file bytes from k units on (so writes start at
/// aligned file offsets and the page cache gets large folios), hash unit k
/// the content bytes from k units on, as one blake3 subtree (a power of
/// two, so every unit but the last is a complete subtree). Large enough for
/// few syscalls and blake3's widest SIMD, small enough to stay in a core's
/// cache between a read and its hash, and that a thread preempted in the
/// middle of one holds up the other only briefly. Measured with the helper
/// (bench's put loop, one process alternating unit sizes, under varying
/// load): put at 0.72-0.95 of blake3 with 1 MiB units against 0.50-0.67
/// with 2 MiB and 0.40 with 4 MiB; later, builds alternated, 0.724 with
/// 512 KiB against 0.697 with 1 MiB (mean of 9 pairs, 7 won) and about 0.71
/// with 256 KiB. Counted inside the put, that gain is in the writes (2.8-3.0
/// ms of a 16 MiB put against 2.9-3.1), not in the hashing: the thread that
/// writes a unit almost never hashes it, the other having hashed it already.
const UNIT_BYTES: usize = 1 << 19;

// Blobs that reach the shared path span several units, so their hash is
// always a merge of subtrees (see `root_hash`).
const _: () = assert!(PIPELINE_MIN_BYTES >= UNIT_BYTES);
const _: () = assert!(UNIT_BYTES.is_power_of_two() && UNIT_BYTES >= blake3::CHUNK_LEN);

/// Writes `header` at offset 0 and `data` right after it, and hashes `data`,
/// on the calling thread and one of the process's long-lived helper threads
/// (see [`helper`]), which share the work.
///
/// Writes to one file are serialised (ext4 holds the inode lock for each
/// `write`; here the units are taken in order under `next_write`), so one
/// thread writes at a time. A thread that wrote unit k hashes it next,
/// while its bytes are still in that core's cache, unless the other thread
/// already did; a thread that finds the other one writing hashes the lowest
/// unit nobody took. The subtrees' chaining values are merged into the root
/// hash at the end. So neither thread waits for the other while there is
/// work: when the helper starts late, is preempted (the machine is shared)
/// or is busy with another put, the calling thread writes and hashes alone,
/// still reading each unit once; with two cores the work splits between
/// them. Where the copy into the page cache is slower than hashing, as on
/// the machines measured, the split settles into one thread writing every
/// unit and the other hashing each one before it is written (counted in a
/// 16 MiB put: the writer hashed 0-0.4 of 32 units), and the writes set
/// the put's time. Measured with the `write_methods` example against a
/// fixed split (one thread writes everything while the other hashes
/// everything, which lasts as long as the slower side and stalls whenever
/// its thread does): 1.05-1.2x per put.
///
/// The writes are the put's critical path and hashing is the shorter part,
/// so the thread that has hashed everything there is to hash usually waits
/// for the other's last writes. It runs `idle` then instead (at most once
/// per call, and never when no thread waits): work of the caller's that
/// would otherwise be on the critical path of a later call, such as
/// creating its file.
pub(crate) fn write_and_hash(
    file: &File,
    header: &[u8],
    data: &[u8],
    idle: &(dyn Fn() + Sync),
) -> io::Result<blake3::Hash> {
    if data.len() <= PIPELINE_MIN_BYTES {
        write_header_and_data(file, header, data, 0, header.len() + data.len())?;
        return Ok(blake3::hash(data));
    }
    let hash_units = data.len().div_ceil(UNIT_BYTES);
    let shared = SharedPut {
        file,
        header,
        data,
        write_units: (header.len() + data.len()).div_ceil(UNIT_BYTES),
        next_write: Mutex::new(0),
        hashed: (0..hash_units).map(|_| AtomicBool::new(false)).collect(),
        lowest_unhashed: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        idle,
        idle_done: AtomicBool::new(false),
    };
    hash_on_two_threads(hash_units, data.len() as u64, || shared.work())
}

/// The work of one [`write_and_hash`] call, shared by its two threads.
struct SharedPut<'a> {
    file: &'a File,
    header: &'a [u8],
    data: &'a [u8],
    write_units: usize,
    /// The next write unit; holding the lock is the right to write.
    next_write: Mutex<usize>,
    /// Per hash unit: claimed by a thread (which then hashes it).
    hashed: Vec<AtomicBool>,
    /// Every hash unit below this one is claimed.
    lowest_unhashed: AtomicUsize,
    /// Set by a thread whose write failed, so the other stops.
    failed: AtomicBool,
    /// Work for a thread that would wait for the other's writes.
    idle: &'a (dyn Fn() + Sync),
    /// Whether a thread took `idle`.
    idle_done: AtomicBool,
}

impl SharedPut<'_> {
    /// Takes units until none is left. Returns the chaining values of the
    /// hash units this thread took, with their indices.
    fn work(&self) -> io::Result<Vec<(usize, ChainingValue)>> {
        let mut cvs = Vec::new();
        while !self.failed.load(Ordering::Relaxed) {
            // Writing whenever nobody else is: the writes are the part that
            // cannot run in parallel, so they should never idle.
            let wrote = match self.next_write.try_lock() {
                Ok(mut next) if *next < self.write_units => {
                    let unit = *next;
                    self.write_unit(unit)?;
                    *next += 1;
                    Some(unit)
                }
                _ => None,
            };
            if let Some(unit) = wrote {
                if self.claim(unit) {
                    cvs.push((unit, self.hash_unit(unit)));
                }
                continue;
            }
            if let Some(unit) = self.claim_lowest() {
                cvs.push((unit, self.hash_unit(unit)));
                continue;
            }
            // Everything is hashed or being hashed: write what is left, or
            // wait for the other thread's last write, first doing the
            // caller's spare work if this thread would otherwise wait.
            let mut next = match self.next_write.try_lock() {
                Ok(next) => next,
                Err(_) => {
                    if !self.idle_done.swap(true, Ordering::Relaxed) {
                        (self.idle)();
                    }
                    self.next_write.lock().unwrap_or_else(|e| e.into_inner())
                }
            };
            if *next >= self.write_units || self.failed.load(Ordering::Relaxed) {
                break;
            }
            self.write_unit(*next)?;
            *next += 1;
        }
        Ok(cvs)
    }

    /// Claims hash unit `unit` for this thread; false if it does not exist
    /// or the other thread has it.
    fn claim(&self, unit: usize) -> bool {
        self.hashed
            .get(unit)
            .is_some_and(|claimed| !claimed.swap(true, Ordering::Relaxed))
    }

    /// Claims the lowest hash unit nobody has, if any.
    fn claim_lowest(&self) -> Option<usize> {
        let mut unit = self.lowest_unhashed.load(Ordering::Relaxed);
        while unit < self.hashed.len() {
            if self.claim(unit) {
                return Some(unit);
            }
            unit += 1;
            self.lowest_unhashed.fetch_max(unit, Ordering::Relaxed);
        }
        None
    }

    /// Writes the file bytes of write unit `unit`: the header and content
    /// that fall there.
    fn write_unit(&self, unit: usize) -> io::Result<()> {
        let total = self.header.len() + self.data.len();
        let start = unit * UNIT_BYTES;
        let end = (start + UNIT_BYTES).min(total);
        if unit == 0 {
            reserve(self.file, 0, total as u64);
        }
        let written = write_header_and_data(self.file, self.header, self.data, start, end);
        if written.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        written
    }

    /// The chaining value of hash unit `unit` as a blake3 subtree.
    fn hash_unit(&self, unit: usize) -> ChainingValue {
        let start = unit * UNIT_BYTES;
        let end = (start + UNIT_BYTES).min(self.data.len());
        blake3::Hasher::new()
            .set_input_offset(start as u64)
            .update(&self.data[start..end])
            .finalize_non_root()
    }
}

/// Writes the bytes `[start, end)` of the file `header ++ data`; a range
/// that starts in the header ends past it.
fn write_header_and_data(
    file: &File,
    header: &[u8],
    data: &[u8],
    start: usize,
    end: usize,
) -> io::Result<()> {
    if start < header.len() {
        debug_assert!(end >= header.len(), "a range inside the header");
        file.write_all_at(&header[start..], start as u64)?;
        file.write_all_at(&data[..end - header.len()], header.len() as u64)
    } else {
        let range = start - header.len()..end - header.len();
        file.write_all_at(&data[range], start as u64)
    }
}

/// The blake3 hash of `len` bytes from the chaining values of its
/// consecutive subtrees of `unit` bytes (a power of two; the last subtree
/// possibly short), merged in the shape of blake3's tree: every left
/// subtree is the largest power of two of bytes smaller than its parent.
fn root_hash(cvs: &[ChainingValue], len: u64, unit: usize) -> blake3::Hash {
    assert!(
        cvs.len() > 1 && len > unit as u64,
        "a single unit's hash is its root hash, not a merge"
    );
    let left = left_subtree_len(len);
    // A power of two at least `unit` (since len exceeds it), so the left
    // subtree is a whole number of units.
    let split = (left / unit as u64) as usize;
    merge_subtrees_root(
        &subtree_cv(&cvs[..split], left, unit),
        &subtree_cv(&cvs[split..], len - left, unit),
        Mode::Hash,
    )
}

/// The chaining value of a non-root subtree of `len` bytes made of `cvs`,
/// subtrees of `unit` bytes.
fn subtree_cv(cvs: &[ChainingValue], len: u64, unit: usize) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let split = (left / unit as u64) as usize;
    merge_subtrees_non_root(
        &subtree_cv(&cvs[..split], left, unit),
        &subtree_cv(&cvs[split..], len - left, unit),
        Mode::Hash,
    )
}

/// Smallest and largest steps by which a stream's file is grown ahead of
/// its writes.
const RESERVE_STEP_BYTES_MIN: u64 = 8 << 20;
const RESERVE_STEP_BYTES_MAX: u64 = 256 << 20;

/// Allocates `len` bytes of `file` from `offset` before they are written.
/// Writing into allocated blocks costs the file system far less per page
/// than allocating on the fly (measured on ext4: about three times faster
/// for a 16 MiB blob). Best effort: where `fallocate` is not supported the
/// file is extended instead, which gets part of the gain; any real problem,
/// such as a full disk, is reported by the write that follows.
fn reserve(file: &File, offset: u64, len: u64) {
    let allocated = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len);
    if allocated.is_err() {
        let _ = file.set_len(offset + len);
    }
}

/// Failure of [`read_hash_write`]: the input or the output.
#[derive(Debug)]
pub(crate) enum StreamError {
    Input(io::Error),
    Output(io::Error),
}

/// Streams `reader` into `file` from `offset` and hashes it. `first` is a
/// full chunk already read from `reader`. Returns the hash and the byte
/// count.
///
/// The calling thread reads (the reader need not be `Send`), one chunk of
/// `CHUNK_BYTES` at a time into one of a few buffers, and queues it; the
/// calling thread and a helper (see [`helper`]) each take the oldest queued
/// chunk, write it at its offset (writes need not be in order) and hash it
/// as a blake3 subtree while it is in that core's cache; the chaining
/// values are merged at the end. The caller takes a queued chunk whenever
/// it has no free buffer to read into, and drains the queue at the end of
/// the input, so without a helper it does everything alone. Memory:
/// `STREAM_BUFFERS` chunks, and 32 bytes of chaining value per chunk.
pub(crate) fn read_hash_write(
    first: Vec<u8>,
    reader: &mut dyn Read,
    file: &File,
    offset: u64,
) -> Result<(blake3::Hash, u64), StreamError> {
    assert_eq!(first.len(), CHUNK_BYTES, "the first chunk is full");
    let mut second = Vec::with_capacity(CHUNK_BYTES);
    fill(reader, &mut second).map_err(StreamError::Input)?;
    if second.is_empty() {
        // A single chunk is the root of blake3's tree, not a subtree.
        reserve(file, offset, first.len() as u64);
        file.write_all_at(&first, offset)
            .map_err(StreamError::Output)?;
        return Ok((blake3::hash(&first), first.len() as u64));
    }
    let shared = SharedStream {
        file,
        offset,
        queue: Mutex::new(StreamQueue {
            chunks: VecDeque::new(),
            free: Vec::new(),
            reading: true,
        }),
        changed: Condvar::new(),
        failed: AtomicBool::new(false),
    };
    let theirs = Mutex::new(None);
    let help = || {
        let done = shared.work(false);
        *theirs.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
    };
    let (input, mine, total, reserved) =
        helper::with_helper(&help, || shared.read_all(first, second, reader));
    let theirs = theirs
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(Ok(Vec::new()));
    input.map_err(StreamError::Input)?;
    let (mine, theirs) = (
        mine.map_err(StreamError::Output)?,
        theirs.map_err(StreamError::Output)?,
    );
    if reserved > total {
        // Give back what was reserved beyond the end of the stream.
        file.set_len(offset + total).map_err(StreamError::Output)?;
    }
    let chunks = usize::try_from(total.div_ceil(CHUNK_BYTES as u64))
        .expect("a chunk count fits in memory, as the chaining values do");
    let mut cvs: Vec<Option<ChainingValue>> = vec![None; chunks];
    for (unit, cv) in mine.into_iter().chain(theirs) {
        cvs[unit] = Some(cv);
    }
    let cvs: Vec<ChainingValue> = cvs
        .into_iter()
        .map(|cv| cv.expect("every chunk was written and hashed by one thread"))
        .collect();
    Ok((root_hash(&cvs, total, CHUNK_BYTES), total))
}

/// Chunk buffers of a stream: one being read into, one being written and
/// hashed by each thread, one queued so that neither waits on the other's
/// jitter.
const STREAM_BUFFERS: usize = 4;

/// The state of one [`read_hash_write`] call, shared by its two threads.
struct SharedStream<'a> {
    file: &'a File,
    offset: u64,
    queue: Mutex<StreamQueue>,
    /// Signalled when a chunk is queued, a buffer freed or reading ends.
    changed: Condvar,
    /// Set by a thread whose write failed, so that the other stops.
    failed: AtomicBool,
}

struct StreamQueue {
    /// Chunks read and not yet taken, with their index, oldest first.
    chunks: VecDeque<(usize, Vec<u8>)>,
    /// Buffers written and hashed, ready to be read into again.
    free: Vec<Vec<u8>>,
    /// The caller is still reading the input.
    reading: bool,
}

impl SharedStream<'_> {
    fn lock(&self) -> MutexGuard<'_, StreamQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes and hashes chunk number `index`; returns its chaining value.
    fn write_and_hash_chunk(&self, index: usize, chunk: &[u8]) -> io::Result<ChainingValue> {
        let start = (index * CHUNK_BYTES) as u64;
        let written = self.file.write_all_at(chunk, self.offset + start);
        if let Err(e) = written {
            // Under the lock, so that a thread about to wait sees it.
            let queue = self.lock();
            self.failed.store(true, Ordering::Relaxed);
            drop(queue);
            self.changed.notify_all();
            return Err(e);
        }
        Ok(blake3::Hasher::new()
            .set_input_offset(start)
            .update(chunk)
            .finalize_non_root())
    }

    /// Takes queued chunks until reading has ended and none is left (or a
    /// write failed); with `once`, returns after one chunk. Returns the
    /// chaining values of the chunks this thread took, with their indices.
    fn work(&self, once: bool) -> io::Result<Vec<(usize, ChainingValue)>> {
        let mut cvs = Vec::new();
        loop {
            let (index, chunk) = {
                let mut queue = self.lock();
                loop {
                    if self.failed.load(Ordering::Relaxed) {
                        return Ok(cvs);
                    }
                    if let Some(next) = queue.chunks.pop_front() {
                        break next;
                    }
                    if !queue.reading || once {
                        return Ok(cvs);
                    }
                    queue = self.changed.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            let cv = self.write_and_hash_chunk(index, &chunk)?;
            cvs.push((index, cv));
            self.lock().free.push(chunk);
            self.changed.notify_all();
            if once {
                return Ok(cvs);
            }
        }
    }

    /// The calling thread's part: reads the input chunk by chunk and queues
    /// it, taking queued chunks itself when it has no free buffer, then the
    /// rest. Returns the input's result, the chaining values of the chunks
    /// it took (or the write error), the byte count and the bytes reserved.
    #[allow(clippy::type_complexity)]
    fn read_all(
        &self,
        first: Vec<u8>,
        second: Vec<u8>,
        reader: &mut dyn Read,
    ) -> (
        io::Result<()>,
        io::Result<Vec<(usize, ChainingValue)>>,
        u64,
        u64,
    ) {
        let mut cvs = Vec::new();
        let (mut total, mut reserved, mut allocated) = (0u64, 0u64, 2usize);
        let mut input = Ok(());
        let mut next = Some(first);
        let mut pending = Some(second);
        let mut index = 0usize;
        while let Some(chunk) = next.take() {
            if self.failed.load(Ordering::Relaxed) {
                break;
            }
            let end = total + chunk.len() as u64;
            if end > reserved {
                // Doubling keeps the number of reservations logarithmic.
                let want = end.max(reserved * 2).max(RESERVE_STEP_BYTES_MIN);
                let want = want.min(end + RESERVE_STEP_BYTES_MAX);
                reserve(self.file, self.offset + reserved, want - reserved);
                reserved = want;
            }
            let last = chunk.len() < CHUNK_BYTES;
            total = end;
            self.lock().chunks.push_back((index, chunk));
            self.changed.notify_all();
            index += 1;
            if last {
                break;
            }
            next = match pending.take() {
                Some(chunk) => Some(chunk),
                None => {
                    // A buffer to read into: a free one, a new one while
                    // there are fewer than STREAM_BUFFERS, or one freed by
                    // writing and hashing a queued chunk here.
                    let mut buf = loop {
                        if let Some(buf) = self.lock().free.pop() {
                            break buf;
                        }
                        if allocated < STREAM_BUFFERS {
                            allocated += 1;
                            break Vec::with_capacity(CHUNK_BYTES);
                        }
                        match self.work(true) {
                            Ok(mut done) => cvs.append(&mut done),
                            Err(e) => return (input, Err(e), total, reserved),
                        }
                        let queue = self.lock();
                        if self.failed.load(Ordering::Relaxed) {
                            break Vec::new();
                        }
                        if queue.free.is_empty() && queue.chunks.is_empty() {
                            // The helper holds the last buffers: wait for one.
                            drop(self.changed.wait(queue));
                        }
                    };
                    if self.failed.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = fill(reader, &mut buf) {
                        input = Err(e);
                        break;
                    }
                    (!buf.is_empty()).then_some(buf)
                }
            };
        }
        self.lock().reading = false;
        self.changed.notify_all();
        if input.is_ok() {
            match self.work(false) {
                Ok(mut done) => cvs.append(&mut done),
                Err(e) => return (input, Err(e), total, reserved),
            }
        }
        (input, Ok(cvs), total, reserved)
    }
}

/// Replaces `buf`'s content with up to `CHUNK_BYTES` bytes from `reader`;
/// fewer only at the end of the input.
pub(crate) fn fill(reader: &mut dyn Read, buf: &mut Vec<u8>) -> io::Result<()> {
    // Zero-filled once; a reused full buffer is not zeroed again.
    buf.resize(CHUNK_BYTES, 0);
    let mut filled = 0;
    while filled < CHUNK_BYTES {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.clear();
                return Err(e);
            }
        }
    }
    buf.truncate(filled);
    Ok(())
}

/// Joins a scoped thread, re-raising its panic: a panic there is a bug.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `write` on a new temp file next to `path`, then renames it over
/// `path`; on any error the temp file is removed and `path` is untouched.
pub(crate) fn write_file_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<u64>,
) -> Result<u64> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        CasError::io(
            "write to",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".voidbox-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp_path = path.with_file_name(tmp_name);
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| CasError::io("create a temp file for", path, e))?;
    let result = write(&mut file).and_then(|len| {
        file.flush()
            .map_err(|e| CasError::io("write to", &tmp_path, e))?;
        drop(file);
        std::fs::rename(&tmp_path, path)
            .map_err(|e| CasError::io("rename the finished temp file to", path, e))?;
        Ok(len)
    });
    if result.is_err() {
        // Best effort: the temp file's name says what it is if this fails.
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file to write (and read back) in a test.
    fn new_file(path: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    fn content(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Lengths around unit and tree boundaries: just past the pipeline
    /// threshold, whole and ragged unit counts, powers of two and one past,
    /// a header and content that fill their last write unit exactly.
    const LENS: &[usize] = &[
        PIPELINE_MIN_BYTES + 1,
        (3 << 19) - 1,
        (3 << 20) - 16,
        2 << 20,
        (2 << 20) + 1,
        (2 << 20) + 1024,
        (3 << 20) + 7,
        (4 << 20) - 1,
        (5 << 20) + (300 << 10),
        (8 << 20) + 1,
    ];

    #[test]
    fn write_and_hash_writes_header_and_data_and_hashes_as_blake3() {
        let dir = tempfile::tempdir().unwrap();
        for (seed, &len) in LENS.iter().enumerate() {
            let data = content(seed as u64, len);
            let header = [0xAB; 16];
            let path = dir.path().join(format!("blob-{len}"));
            let file = new_file(&path);
            let hash = write_and_hash(&file, &header, &data, &|| ()).unwrap();
            assert_eq!(hash, blake3::hash(&data), "len {len}");
            let written = std::fs::read(&path).unwrap();
            assert_eq!(written.len(), header.len() + len, "len {len}");
            assert!(
                written[..16] == header && written[16..] == data[..],
                "len {len}"
            );
        }
    }

    #[test]
    fn the_idle_work_runs_at_most_once_and_only_where_a_thread_waits() {
        let dir = tempfile::tempdir().unwrap();
        let data = content(300, 8 << 20);
        for alone in [true, false] {
            helper::ALONE.with(|a| a.set(alone));
            for round in 0..20 {
                let runs = AtomicUsize::new(0);
                let path = dir.path().join(format!("idle-{alone}-{round}"));
                let file = new_file(&path);
                let idle = || {
                    runs.fetch_add(1, Ordering::Relaxed);
                };
                let hash = write_and_hash(&file, &[0; 16], &data, &idle).unwrap();
                assert_eq!(hash, blake3::hash(&data));
                let runs = runs.into_inner();
                // Alone, the calling thread never waits for another.
                assert!(runs <= usize::from(!alone), "alone {alone}: {runs} runs");
            }
        }
        helper::ALONE.with(|a| a.set(false));
    }

    #[test]
    fn write_and_hash_is_right_when_no_helper_takes_part() {
        let dir = tempfile::tempdir().unwrap();
        helper::ALONE.with(|alone| alone.set(true));
        for (seed, &len) in LENS.iter().enumerate() {
            let data = content(seed as u64 + 100, len);
            let path = dir.path().join(format!("alone-{len}"));
            let file = new_file(&path);
            let hash = write_and_hash(&file, &[0xCD; 16], &data, &|| ()).unwrap();
            assert_eq!(hash, blake3::hash(&data), "len {len}");
            let written = std::fs::read(&path).unwrap();
            assert!(
                written[..16] == [0xCD; 16] && written[16..] == data[..],
                "len {len}"
            );
        }
        helper::ALONE.with(|alone| alone.set(false));
    }

    #[test]
    fn reads_and_verifications_hash_as_blake3_with_or_without_a_helper() {
        let dir = tempfile::tempdir().unwrap();
        for alone in [false, true] {
            helper::ALONE.with(|a| a.set(alone));
            for (seed, &len) in LENS.iter().enumerate() {
                let data = content(seed as u64 + 200, len);
                let path = dir.path().join(format!("read-{len}-{alone}"));
                let mut bytes = vec![0xEE; 16];
                bytes.extend_from_slice(&data);
                std::fs::write(&path, &bytes).unwrap();
                let file = File::open(&path).unwrap();
                let (read, hash) = read_and_hash(&file, 16, len).unwrap();
                assert_eq!(hash, blake3::hash(&data), "len {len}, alone {alone}");
                assert!(read == data, "len {len}, alone {alone}");
                let hash = hash_file_range(&file, 16, len as u64).unwrap();
                assert_eq!(hash, blake3::hash(&data), "len {len}, alone {alone}");
            }
        }
        helper::ALONE.with(|a| a.set(false));
    }

    #[test]
    fn a_file_shorter_than_the_range_is_unexpected_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, content(9, (5 << 20) + 3)).unwrap();
        let file = File::open(&path).unwrap();
        for len in [(5 << 20) + 4, 8 << 20] {
            let err = read_and_hash(&file, 0, len).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "len {len}");
            let err = hash_file_range(&file, 0, len as u64).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "len {len}");
        }
    }

    /// Yields `data` in reads of at most `read_max` bytes, then fails with
    /// `fail` if set instead of ending.
    struct Chunky<'a> {
        data: &'a [u8],
        read_max: usize,
        fail: Option<io::ErrorKind>,
    }

    impl Read for Chunky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return match self.fail {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(self.read_max).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Streams `data` as `put_reader` does: a first full chunk, then the
    /// rest through `read_hash_write`, after a 16-byte gap for the header.
    fn stream(path: &Path, data: &[u8], read_max: usize) -> (blake3::Hash, u64) {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        let mut reader = Chunky {
            data,
            read_max,
            fail: None,
        };
        let mut first = Vec::new();
        fill(&mut reader, &mut first).unwrap();
        read_hash_write(first, &mut reader, &file, 16).unwrap()
    }

    #[test]
    fn streams_write_and_hash_as_blake3_with_or_without_a_helper() {
        let dir = tempfile::tempdir().unwrap();
        let mut lens = LENS.to_vec();
        lens.extend([CHUNK_BYTES, 9 << 20, (13 << 20) + 5]);
        for alone in [false, true] {
            helper::ALONE.with(|a| a.set(alone));
            for (seed, &len) in lens.iter().enumerate() {
                let data = content(seed as u64 + 300, len);
                for read_max in [usize::MAX, 65_537] {
                    let path = dir.path().join(format!("stream-{len}-{alone}-{read_max}"));
                    let (hash, n) = stream(&path, &data, read_max);
                    assert_eq!(n, len as u64, "len {len}, alone {alone}");
                    assert_eq!(hash, blake3::hash(&data), "len {len}, alone {alone}");
                    let written = std::fs::read(&path).unwrap();
                    // Nothing reserved is left past the end.
                    assert_eq!(written.len(), 16 + len, "len {len}, alone {alone}");
                    assert!(written[16..] == data[..], "len {len}, alone {alone}");
                }
            }
        }
        helper::ALONE.with(|a| a.set(false));
    }

    #[test]
    fn a_stream_reports_input_and_output_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data = content(11, 6 << 20);
        for alone in [false, true] {
            helper::ALONE.with(|a| a.set(alone));
            let path = dir.path().join(format!("input-{alone}"));
            let file = new_file(&path);
            let mut reader = Chunky {
                data: &data,
                read_max: 100_000,
                fail: Some(io::ErrorKind::ConnectionReset),
            };
            let mut first = Vec::new();
            fill(&mut reader, &mut first).unwrap();
            match read_hash_write(first, &mut reader, &file, 16) {
                Err(StreamError::Input(e)) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset)
                }
                other => panic!("expected an input error, got {other:?}"),
            }
            // Opened for reading only: every write fails with EBADF.
            let file = File::open(&path).unwrap();
            let mut reader = Chunky {
                data: &data,
                read_max: usize::MAX,
                fail: None,
            };
            let mut first = Vec::new();
            fill(&mut reader, &mut first).unwrap();
            match read_hash_write(first, &mut reader, &file, 16) {
                Err(StreamError::Output(e)) => assert_eq!(
                    e.raw_os_error(),
                    Some(rustix::io::Errno::BADF.raw_os_error())
                ),
                other => panic!("expected an output error, got {other:?}"),
            }
        }
        helper::ALONE.with(|a| a.set(false));
    }

    #[test]
    fn a_failing_write_is_reported_and_stops_both_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails with EBADF.
        let file = File::open(&path).unwrap();
        let err = write_and_hash(&file, &[0; 16], &content(7, 3 << 20), &|| ()).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::BADF.raw_os_error())
        );
    }

    #[test]
    fn root_hash_matches_blake3_for_unit_counts_that_are_not_powers_of_two() {
        // Without the file: every unit count from 2 to 9, whole and ragged,
        // for the units of a put and for a stream's chunks.
        for unit_bytes in [UNIT_BYTES, CHUNK_BYTES, blake3::CHUNK_LEN] {
            for units in 2..=9usize {
                for len in [units * unit_bytes, (units - 1) * unit_bytes + 1] {
                    let data = content(units as u64, len);
                    let cvs: Vec<ChainingValue> = data
                        .chunks(unit_bytes)
                        .enumerate()
                        .map(|(i, unit)| {
                            blake3::Hasher::new()
                                .set_input_offset((i * unit_bytes) as u64)
                                .update(unit)
                                .finalize_non_root()
                        })
                        .collect();
                    assert_eq!(
                        root_hash(&cvs, len as u64, unit_bytes),
                        blake3::hash(&data),
                        "len {len}, unit {unit_bytes}"
                    );
                }
            }
        }
    }
}
