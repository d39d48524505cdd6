//! How fast a blob gets from a user buffer into a new file in the page
//! cache, by method, on the file system of `--dir`:
//!
//! ```text
//! cargo run --release -p voidbox-cas --example write_methods [-- --mib 16 --rounds 15 --dir DIR --hash --only NAME,...]
//! ```
//!
//! Each round makes fresh content, then runs every method once on it
//! (interleaved, so a busy neighbour skews a round of all methods, not one
//! method); each creates a new file (`create_new`, as a put's temp file),
//! writes the blob and closes it. Only that is timed. Afterwards, untimed,
//! the file is fdatasync'd (so dirty pages never pile up to the kernel's
//! writeback throttle) and the oldest files beyond the last four are
//! removed, as `voidbox bench`'s CAS figure does between puts. With `--hash`
//! the calling thread hashes the blob with blake3 while the method runs on a
//! second thread, as `DiskStore::put` did before it shared the work.
//!
//! The methods, by name:
//! - `write_*`, `falloc_write_*`, `trunc_write_1m`: `pwrite` in chunks of
//!   the named size (`all`: one call), into a plain, `fallocate`d or
//!   `ftruncate`d file; `_at16` etc.: after a header of that many bytes.
//! - `pwrite2_*`: two threads, each writing its half.
//! - `mmap_*`: `memcpy` into a shared writable mapping, from one or two
//!   threads, after `MADV_POPULATE_WRITE`, `MAP_POPULATE` or
//!   `MADV_HUGEPAGE`.
//! - `vmsplice_splice`, `odirect_falloc` (from an aligned copy).
//! - Whole puts, which hash too (compare them without `--hash`):
//!   `store_put` is `DiskStore::put` (deferred durability, synced and
//!   removed untimed as `voidbox bench` does); `put_current` is the fixed
//!   split it replaced (one thread writes everything, one hashes);
//!   `single_*` are one thread writing then hashing, or per unit of the
//!   named size writing and hashing while the unit is in the cache.
//! - `ref_*` are not ways to store a blob, only yardsticks: memory copies,
//!   an overwrite of pages already cached.
//!
//! Prints one line per method: MiB/s over all rounds (total bytes over
//! total time, as `voidbox bench` computes its figures) and its ratio to
//! hashing's over the same rounds; median and best MiB/s by wall time, the
//! median MiB per CPU-second of the whole process, and the median over
//! rounds of the method's rate over that of `blake3::hash` alone on one
//! thread, timed right before it (with `--hash`, the figure `voidbox bench`
//! compares with its goal of 0.7). With `--hash` also: the MiB per
//! CPU-second of everything but the hashing thread (`write/cpu`), and the
//! ratio the same work would give on two idle cores (`idle est`): hashing
//! alone over the longer of the two sides, by CPU time, which time spent
//! waiting for a core does not inflate (a shared machine rarely has two
//! idle cores for long). `vs first`: per round, the first listed method's
//! time over this one's, median over rounds (a paired comparison).

mod support;
use support::median;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use rustix::fs::FallocateFlags;
use rustix::mm::{Advice, MapFlags, ProtFlags};

struct Args {
    mib: usize,
    rounds: usize,
    dir: Option<PathBuf>,
    hash: bool,
    only: Option<Vec<String>>,
}

fn parse_args() -> Args {
    let mut args = Args {
        mib: 16,
        rounds: 15,
        dir: None,
        hash: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--mib" => args.mib = value().parse().unwrap_or_else(|_| usage("--mib: a number")),
            "--rounds" => {
                args.rounds = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--rounds: a number"))
            }
            "--dir" => args.dir = Some(PathBuf::from(value())),
            "--hash" => args.hash = true,
            "--only" => args.only = Some(value().split(',').map(str::to_owned).collect()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.mib == 0 || args.rounds == 0 {
        usage("--mib and --rounds must be positive");
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "write_methods: {problem}\nusage: write_methods [--mib N] [--rounds N] [--dir DIR] [--hash] [--only A,B]"
    );
    std::process::exit(2)
}

type Method = fn(&Path, &[u8]) -> io::Result<()>;

fn create(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

fn falloc(file: &File, len: usize) -> io::Result<()> {
    rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len as u64)?;
    Ok(())
}

fn write_chunks(file: &File, data: &[u8], chunk: usize, offset: u64) -> io::Result<()> {
    let mut pos = offset;
    for part in data.chunks(chunk) {
        file.write_all_at(part, pos)?;
        pos += part.len() as u64;
    }
    Ok(())
}

fn write_plain(path: &Path, data: &[u8], chunk: usize) -> io::Result<()> {
    write_chunks(&create(path)?, data, chunk, 0)
}

fn write_falloc(path: &Path, data: &[u8], chunk: usize) -> io::Result<()> {
    let file = create(path)?;
    falloc(&file, data.len())?;
    write_chunks(&file, data, chunk, 0)
}

/// `threads` writers, each `pwrite`s its contiguous share in 1 MiB chunks.
fn pwrite_threads(path: &Path, data: &[u8], threads: usize, allocate: bool) -> io::Result<()> {
    let file = create(path)?;
    if allocate {
        falloc(&file, data.len())?;
    } else {
        file.set_len(data.len() as u64)?;
    }
    let share = data.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = data
            .chunks(share)
            .enumerate()
            .map(|(i, part)| {
                let file = &file;
                s.spawn(move || write_chunks(file, part, 1 << 20, (i * share) as u64))
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("writer panicked"))
    })
}

#[derive(Clone, Copy)]
struct MapSetup {
    allocate: bool,
    populate: bool,
    populate_write: bool,
    hugepage: bool,
    threads: usize,
}

/// Copies `data` into a shared writable mapping of the new file.
fn mmap_copy(path: &Path, data: &[u8], setup: MapSetup) -> io::Result<()> {
    let file = create(path)?;
    if setup.allocate {
        falloc(&file, data.len())?;
    } else {
        file.set_len(data.len() as u64)?;
    }
    let mut flags = MapFlags::SHARED;
    if setup.populate {
        flags |= MapFlags::POPULATE;
    }
    // SAFETY: a fresh file of exactly this length that nothing else maps.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            data.len(),
            ProtFlags::READ | ProtFlags::WRITE,
            flags,
            &file,
            0,
        )?
    };
    // SAFETY: the range is the mapping made above.
    unsafe {
        if setup.hugepage {
            rustix::mm::madvise(ptr, data.len(), Advice::LinuxHugepage)?;
        }
        if setup.populate_write {
            rustix::mm::madvise(ptr, data.len(), Advice::LinuxPopulateWrite)?;
        }
    }
    let target = ptr as usize;
    let share = data.len().div_ceil(setup.threads);
    std::thread::scope(|s| {
        for (i, part) in data.chunks(share).enumerate() {
            s.spawn(move || {
                // SAFETY: each thread writes its own disjoint range of the
                // mapping, which lives until after the scope.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        part.as_ptr(),
                        (target as *mut u8).add(i * share),
                        part.len(),
                    )
                };
            });
        }
    });
    // SAFETY: unmapping the mapping made above; no reference into it remains.
    unsafe { rustix::mm::munmap(ptr, data.len())? };
    Ok(())
}

/// `vmsplice` the user pages into a pipe, then `splice` the pipe to the file.
fn vmsplice_splice(path: &Path, data: &[u8]) -> io::Result<()> {
    let file = create(path)?;
    let (rd, wr) = rustix::pipe::pipe()?;
    let pipe_bytes = rustix::pipe::fcntl_setpipe_size(&wr, 1 << 20).unwrap_or(64 << 10);
    let mut pos = 0u64;
    for part in data.chunks(pipe_bytes) {
        let mut sent = 0;
        while sent < part.len() {
            let iov = [rustix::pipe::IoSliceRaw::from_slice(&part[sent..])];
            // SAFETY: without SPLICE_F_GIFT the pages are only read, and they
            // are consumed by the splice below before `data` can change.
            let n =
                unsafe { rustix::pipe::vmsplice(&wr, &iov, rustix::pipe::SpliceFlags::empty())? };
            let mut left = n;
            while left > 0 {
                let mut off = pos;
                let m = rustix::pipe::splice(
                    &rd,
                    None,
                    &file,
                    Some(&mut off),
                    left,
                    rustix::pipe::SpliceFlags::empty(),
                )?;
                pos = off;
                left -= m;
            }
            sent += n;
        }
    }
    Ok(())
}

/// `O_DIRECT` from a page-aligned copy of the data (aligned buffers are a
/// precondition a CAS caller cannot be asked for, so the copy is timed).
fn odirect(path: &Path, data: &[u8]) -> io::Result<()> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    falloc(&file, data.len())?;
    let chunk = 4 << 20;
    let mut aligned = AlignedBuf::new(chunk);
    let mut pos = 0u64;
    for part in data.chunks(chunk) {
        let buf = aligned.as_mut();
        buf[..part.len()].copy_from_slice(part);
        let len = part.len().next_multiple_of(4096);
        file.write_all_at(&buf[..len], pos)?;
        pos += part.len() as u64;
    }
    Ok(())
}

struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: allocated with this length and owned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// What `DiskStore::put` did before: a helper thread allocates the file and
/// writes header and content in one call while the calling thread hashes.
fn put_current(path: &Path, data: &[u8]) -> io::Result<()> {
    let file = create(path)?;
    let hash = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            falloc(&file, data.len() + 16)?;
            file.write_all_at(&[7u8; 16], 0)?;
            file.write_all_at(data, 16)
        });
        let hash = blake3::hash(data);
        writer.join().expect("writer panicked").map(|()| hash)
    })?;
    std::hint::black_box(hash);
    Ok(())
}

/// One thread, per unit: hash it, then write it from the cache.
fn single_hash_then_write(path: &Path, data: &[u8], unit: usize) -> io::Result<()> {
    let file = create(path)?;
    falloc(&file, data.len() + 16)?;
    file.write_all_at(&[7u8; 16], 0)?;
    let mut hasher = blake3::Hasher::new();
    for (i, part) in data.chunks(unit).enumerate() {
        hasher.update(part);
        file.write_all_at(part, (16 + i * unit) as u64)?;
    }
    std::hint::black_box(hasher.finalize());
    Ok(())
}

/// One thread: write everything, then hash (`unit` None), or per unit
/// write it and hash it while it is still in the cache.
fn single_thread_put(path: &Path, data: &[u8], unit: Option<usize>) -> io::Result<()> {
    let file = create(path)?;
    falloc(&file, data.len() + 16)?;
    file.write_all_at(&[7u8; 16], 0)?;
    let hash = if let Some(unit) = unit {
        let mut hasher = blake3::Hasher::new();
        for (i, part) in data.chunks(unit).enumerate() {
            file.write_all_at(part, (16 + i * unit) as u64)?;
            hasher.update(part);
        }
        hasher.finalize()
    } else {
        write_chunks(&file, data, 1 << 20, 16)?;
        blake3::hash(data)
    };
    std::hint::black_box(hash);
    Ok(())
}

static STORE: OnceLock<voidbox_cas::DiskStore> = OnceLock::new();
static STORED: Mutex<Vec<voidbox_cas::Digest>> = Mutex::new(Vec::new());

/// `DiskStore::put` with deferred durability, which hashes too: compare it
/// with the other methods run with `--hash`. The harness then syncs and
/// removes blobs, untimed, with `store_cleanup`; it gets an empty file
/// of its own to sync and remove.
fn store_put(path: &Path, data: &[u8]) -> io::Result<()> {
    use voidbox_cas::{DiskStore, Durability, OpenOptions, Store};
    let store = STORE.get_or_init(|| {
        let options = OpenOptions {
            durability: Durability::Deferred,
            read_only: false,
        };
        DiskStore::open_with(path.with_file_name("store"), options).expect("open the store")
    });
    let digest = store.put(data).map_err(io::Error::other)?;
    STORED.lock().expect("not poisoned").push(digest);
    create(path).map(drop)
}

/// As `voidbox bench` does between puts: sync, and keep the last four.
fn store_cleanup() {
    use voidbox_cas::Store;
    let mut stored = STORED.lock().expect("not poisoned");
    if stored.len() > 4 {
        let store = STORE.get().expect("a put opened it");
        store.sync().expect("sync the store");
        store
            .remove(&stored.remove(0))
            .expect("remove from the store");
    }
}

/// Yardstick: copy into fresh anonymous memory (page faults + copy).
fn ref_copy_fresh(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut v: Vec<u8> = Vec::with_capacity(data.len());
    v.extend_from_slice(data);
    std::hint::black_box(&v);
    // An empty file, so that the harness has one to sync and remove.
    create(path).map(drop)
}

/// Yardstick: copy into memory already faulted in, with the destination
/// `shift` bytes past a page boundary: the copy alone.
fn ref_copy_warm(path: &Path, data: &[u8], shift: usize) -> io::Result<()> {
    static BUF: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut buf = BUF.lock().expect("not poisoned");
    if buf.len() < data.len() + 8192 {
        *buf = vec![1u8; data.len() + 8192];
    }
    let start = buf.as_ptr().align_offset(4096) + shift;
    buf[start..start + data.len()].copy_from_slice(data);
    std::hint::black_box(buf.as_ptr());
    create(path).map(drop)
}

/// Yardstick: overwrite a file whose pages are already cached (no page
/// allocation, no block allocation): what is left is copy + bookkeeping.
fn ref_overwrite_cached(path: &Path, data: &[u8]) -> io::Result<()> {
    static FILE: OnceLock<File> = OnceLock::new();
    let file = match FILE.get() {
        Some(file) => file,
        None => {
            let file = create(&path.with_file_name("overwrite-target"))?;
            write_chunks(&file, data, 1 << 20, 0)?;
            file.sync_data()?;
            FILE.get_or_init(|| file)
        }
    };
    write_chunks(file, data, 1 << 20, 0)?;
    // Still creates a file so that the harness has one to sync and remove.
    create(path).map(drop)
}

fn methods() -> Vec<(&'static str, Method)> {
    vec![
        ("write_64k", |p, d| write_plain(p, d, 64 << 10)),
        ("write_256k", |p, d| write_plain(p, d, 256 << 10)),
        ("write_1m", |p, d| write_plain(p, d, 1 << 20)),
        ("write_4m", |p, d| write_plain(p, d, 4 << 20)),
        ("write_all", |p, d| write_plain(p, d, d.len())),
        ("falloc_write_1m_at16", |p, d| {
            let file = create(p)?;
            falloc(&file, d.len() + 16)?;
            file.write_all_at(&[0u8; 16], 0)?;
            write_chunks(&file, d, 1 << 20, 16)
        }),
        ("falloc_write_all_at16", |p, d| {
            let file = create(p)?;
            falloc(&file, d.len() + 16)?;
            file.write_all_at(&[0u8; 16], 0)?;
            write_chunks(&file, d, d.len(), 16)
        }),
        ("falloc_write_1m_at64", |p, d| {
            let file = create(p)?;
            falloc(&file, d.len() + 64)?;
            file.write_all_at(&[0u8; 64], 0)?;
            write_chunks(&file, d, 1 << 20, 64)
        }),
        ("falloc_write_1m_at4096", |p, d| {
            let file = create(p)?;
            falloc(&file, d.len() + 4096)?;
            file.write_all_at(&[0u8; 4096], 0)?;
            write_chunks(&file, d, 1 << 20, 4096)
        }),
        ("trunc_write_1m", |p, d| {
            let file = create(p)?;
            file.set_len(d.len() as u64)?;
            write_chunks(&file, d, 1 << 20, 0)
        }),
        ("falloc_write_64k", |p, d| write_falloc(p, d, 64 << 10)),
        ("falloc_write_128k", |p, d| write_falloc(p, d, 128 << 10)),
        ("falloc_write_256k", |p, d| write_falloc(p, d, 256 << 10)),
        ("falloc_write_512k", |p, d| write_falloc(p, d, 512 << 10)),
        ("falloc_write_1m", |p, d| write_falloc(p, d, 1 << 20)),
        ("falloc_write_2m", |p, d| write_falloc(p, d, 2 << 20)),
        ("falloc_write_4m", |p, d| write_falloc(p, d, 4 << 20)),
        ("falloc_write_all", |p, d| write_falloc(p, d, d.len())),
        ("pwrite2_trunc", |p, d| pwrite_threads(p, d, 2, false)),
        ("pwrite2_falloc", |p, d| pwrite_threads(p, d, 2, true)),
        ("mmap_trunc_1t", |p, d| mmap_copy(p, d, MapSetup { ..MAP })),
        ("mmap_falloc_1t", |p, d| {
            mmap_copy(
                p,
                d,
                MapSetup {
                    allocate: true,
                    ..MAP
                },
            )
        }),
        ("mmap_falloc_2t", |p, d| {
            mmap_copy(
                p,
                d,
                MapSetup {
                    allocate: true,
                    threads: 2,
                    ..MAP
                },
            )
        }),
        ("mmap_trunc_2t", |p, d| {
            mmap_copy(p, d, MapSetup { threads: 2, ..MAP })
        }),
        ("mmap_falloc_popwrite_1t", |p, d| {
            mmap_copy(
                p,
                d,
                MapSetup {
                    allocate: true,
                    populate_write: true,
                    ..MAP
                },
            )
        }),
        ("mmap_trunc_popwrite_1t", |p, d| {
            mmap_copy(
                p,
                d,
                MapSetup {
                    populate_write: true,
                    ..MAP
                },
            )
        }),
        ("mmap_falloc_populate_1t", |p, d| {
            mmap_copy(
                p,
                d,
                MapSetup {
                    allocate: true,
                    populate: true,
                    ..MAP
                },
            )
        }),
        ("mmap_falloc_huge_1t", |p, d| {
            mmap_copy(
                p,
                d,
                MapSetup {
                    allocate: true,
                    hugepage: true,
                    ..MAP
                },
            )
        }),
        ("vmsplice_splice", vmsplice_splice),
        ("odirect_falloc", odirect),
        ("store_put", store_put),
        ("put_current", put_current),
        ("single_write_then_hash", |p, d| {
            single_thread_put(p, d, None)
        }),
        ("single_fused_256k", |p, d| {
            single_thread_put(p, d, Some(256 << 10))
        }),
        ("single_fused_512k", |p, d| {
            single_thread_put(p, d, Some(512 << 10))
        }),
        ("single_fused_1m", |p, d| {
            single_thread_put(p, d, Some(1 << 20))
        }),
        ("single_hash_then_write_1m", |p, d| {
            single_hash_then_write(p, d, 1 << 20)
        }),
        ("ref_copy_fresh", ref_copy_fresh),
        ("ref_copy_warm_at0", |p, d| ref_copy_warm(p, d, 0)),
        ("ref_copy_warm_at16", |p, d| ref_copy_warm(p, d, 16)),
        ("ref_copy_warm_at64", |p, d| ref_copy_warm(p, d, 64)),
        ("ref_overwrite_cached", ref_overwrite_cached),
    ]
}

const MAP: MapSetup = MapSetup {
    allocate: false,
    populate: false,
    populate_write: false,
    hugepage: false,
    threads: 1,
};

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn process_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn main() {
    let args = parse_args();
    let scratch;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).expect("create --dir");
            tempfile::tempdir_in(dir).expect("temp dir in --dir")
        }
        None => {
            scratch = tempfile::tempdir().expect("temp dir");
            tempfile::tempdir_in(scratch.path()).expect("temp dir")
        }
    };
    let mut all = methods();
    if let Some(only) = &args.only {
        all.retain(|(name, _)| only.iter().any(|o| o == name));
    }
    let len = args.mib << 20;
    let mib = args.mib as f64;
    let mut data = vec![0u8; len];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut ratio: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    // Totals, for the rate over all rounds as `voidbox bench` computes it
    // (so a few slow rounds weigh in).
    let mut seconds = vec![0.0; all.len()];
    // Per round, the first method's time over each method's: a paired
    // comparison that cancels most of the load both saw.
    let mut round_times = vec![0.0; all.len()];
    let mut vs_first: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut hash_seconds = vec![0.0; all.len()];
    // CPU time of everything but the hashing thread, and the ratio this
    // run would have on two idle cores: hashing alone over the longer of the
    // two sides (by CPU time, which waiting for a core does not inflate).
    let mut writer: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut idle: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut kept: Vec<PathBuf> = Vec::new();
    let mut counter = 0u64;
    let warmup = 2;
    for round in 0..warmup + args.rounds {
        for (m, (name, method)) in all.iter().enumerate() {
            counter += 1;
            fill(&mut data, counter);
            let path = dir.path().join(format!("{name}-{counter}"));
            // The yardstick right before each method, so that both see about
            // the same load on the machine.
            let (t0, tc0) = (Instant::now(), thread_cpu());
            std::hint::black_box(blake3::hash(&data));
            let (hash_elapsed, hash_cpu) = (t0.elapsed().as_secs_f64(), thread_cpu() - tc0);
            let (cpu0, t0) = (process_cpu(), Instant::now());
            let mut hasher_cpu = 0.0;
            if args.hash {
                std::thread::scope(|s| {
                    let writer = s.spawn(|| method(&path, &data));
                    let tc0 = thread_cpu();
                    std::hint::black_box(blake3::hash(&data));
                    hasher_cpu = thread_cpu() - tc0;
                    writer.join().expect("method panicked")
                })
            } else {
                method(&path, &data)
            }
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let (elapsed, used) = (t0.elapsed().as_secs_f64(), process_cpu() - cpu0);
            let writer_cpu = used - hasher_cpu;
            File::open(&path).and_then(|f| f.sync_data()).expect("sync");
            store_cleanup();
            kept.push(path);
            while kept.len() > 4 {
                std::fs::remove_file(kept.remove(0)).expect("remove");
            }
            if round >= warmup {
                wall[m].push(mib / elapsed);
                round_times[m] = elapsed;
                seconds[m] += elapsed;
                hash_seconds[m] += hash_elapsed;
                cpu[m].push(mib / used.max(1e-9));
                ratio[m].push(hash_elapsed / elapsed);
                writer[m].push(mib / writer_cpu.max(1e-9));
                idle[m].push(hash_cpu / writer_cpu.max(hasher_cpu));
            }
        }
        if round >= warmup {
            for (m, list) in vs_first.iter_mut().enumerate() {
                list.push(round_times[0] / round_times[m]);
            }
        }
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<26} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}   ({} MiB, {} rounds, hash alongside: {})",
        "method",
        "overall",
        "ratio",
        "median",
        "best",
        "MiB/cpu-s",
        "write/cpu",
        "vs blake3",
        "idle est",
        "vs first",
        args.mib,
        args.rounds,
        args.hash
    )
    .expect("stdout");
    for (m, (name, _)) in all.iter().enumerate() {
        let best = wall[m].iter().copied().fold(0.0, f64::max);
        writeln!(
            out,
            "{:<26} {:>8.0} {:>8.2} {:>8.0} {:>8.0} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            name,
            mib * wall[m].len() as f64 / seconds[m],
            hash_seconds[m] / seconds[m],
            median(wall[m].clone()),
            best,
            median(cpu[m].clone()),
            median(writer[m].clone()),
            median(ratio[m].clone()),
            median(idle[m].clone()),
            median(vs_first[m].clone())
        )
        .expect("stdout");
    }
}
