//! Hashing overlapped with I/O.
//!
//! blake3 on one core and a page-cache copy run at comparable rates, so doing
//! them one after the other would roughly halve throughput. For blobs above
//! [`PIPELINE_MIN_BYTES`] the I/O runs on a scoped helper thread while the
//! calling thread hashes, chunk by chunk, so with a second core free a put
//! or a get takes about as long as hashing alone (it still costs the CPU time
//! of both). Memory stays bounded by a few chunk buffers, except where the
//! caller asked for the whole blob in memory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

use crate::{CasError, Result};

/// Below this size a helper thread costs more than the overlap saves.
pub(crate) const PIPELINE_MIN_BYTES: usize = 1 << 20;

/// Size of one chunk handed between the I/O thread and the hashing thread.
/// Large enough that blake3 uses its widest SIMD and syscalls are few.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

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

/// Reads `len` bytes of `file` from `offset` into a new vector, hashing them
/// as they arrive.
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
        thread::scope(|scope| -> io::Result<blake3::Hash> {
            let (tx, rx) = mpsc::channel::<&[u8]>();
            // The reader fills `target` in order and passes each filled part
            // (now initialized and read-only) to the hashing thread.
            let reader = scope.spawn(move || {
                read_exact_uninit_at(file, target, offset, &mut |part| {
                    // A closed channel means the hasher is gone: a panic
                    // there, re-raised by the scope.
                    let _ = tx.send(part);
                })
            });
            let mut hasher = blake3::Hasher::new();
            for part in rx {
                hasher.update(part);
            }
            join(reader)?;
            Ok(hasher.finalize())
        })?
    };
    // SAFETY: `read_exact_uninit_at` returned Ok, so it initialized every
    // byte of `target`, which is exactly the first `len` bytes of the
    // capacity.
    unsafe { data.set_len(len) };
    Ok((data, hash))
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

/// Writes `header` at offset 0 and `data` right after it, hashing `data`
/// on the calling thread while a helper thread writes.
pub(crate) fn write_and_hash(file: &File, header: &[u8], data: &[u8]) -> io::Result<blake3::Hash> {
    let write = || -> io::Result<()> {
        file.write_all_at(header, 0)?;
        file.write_all_at(data, header.len() as u64)
    };
    if data.len() <= PIPELINE_MIN_BYTES {
        write()?;
        return Ok(blake3::hash(data));
    }
    thread::scope(|scope| {
        let writer = scope.spawn(|| {
            reserve(file, 0, (header.len() + data.len()) as u64);
            write()
        });
        let hash = blake3::hash(data);
        join(writer)?;
        Ok(hash)
    })
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

/// Streams `reader` into `file` from `offset`, hashing on the calling thread
/// (the reader need not be `Send`) while a helper thread writes. `first` is
/// data already read from `reader`. Returns the hash and the byte count.
pub(crate) fn read_hash_write(
    first: Vec<u8>,
    reader: &mut dyn Read,
    file: &File,
    offset: u64,
) -> Result<(blake3::Hash, u64), StreamError> {
    thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let writer = scope.spawn(move || -> io::Result<()> {
            let mut pos = offset;
            let mut reserved = 0u64;
            for buf in full_rx {
                let end = pos + buf.len() as u64;
                if end > reserved {
                    // Doubling keeps the number of reservations logarithmic.
                    let want = end.max(reserved * 2).max(RESERVE_STEP_BYTES_MIN);
                    let want = want.min(end + RESERVE_STEP_BYTES_MAX);
                    reserve(file, reserved, want - reserved);
                    reserved = want;
                }
                file.write_all_at(&buf, pos)?;
                pos = end;
                // The producer may have finished; then the buffer is dropped.
                let _ = free_tx.send(buf);
            }
            if reserved > pos {
                // Give back what was reserved beyond the end of the stream.
                file.set_len(pos)?;
            }
            Ok(())
        });
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        let mut allocated = 1;
        let mut buf = first;
        let mut input = Ok(());
        loop {
            hasher.update(&buf);
            total += buf.len() as u64;
            let last = buf.len() < CHUNK_BYTES;
            if buf.is_empty() || full_tx.send(buf).is_err() || last {
                // Empty, writer gone (its error is reported by join), or EOF.
                break;
            }
            buf = if allocated < BUFFERS {
                allocated += 1;
                Vec::with_capacity(CHUNK_BYTES)
            } else {
                match free_rx.recv() {
                    Ok(buf) => buf,
                    Err(_) => break,
                }
            };
            if let Err(err) = fill(reader, &mut buf) {
                input = Err(err);
                break;
            }
        }
        drop(full_tx);
        let written = join(writer);
        input.map_err(StreamError::Input)?;
        written.map_err(StreamError::Output)?;
        Ok((hasher.finalize(), total))
    })
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
