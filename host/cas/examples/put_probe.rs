//! Where the time of a 16 MiB `DiskStore::put` goes, and how two cores
//! interfere, in one run:
//!
//! ```text
//! cargo run --release -p voidbox-cas --example put_probe [-- --rounds 10 --dir DIR]
//! ```
//!
//! Per round (each interleaved, so machine load hits all alike), wall time
//! and per-thread CPU time of: blake3 on one thread; two threads hashing two
//! different buffers at once; a file write (fallocate + 1 MiB pwrites) alone;
//! a file write on one thread while another hashes a different buffer; and
//! `DiskStore::put` in `voidbox bench`'s loop (distinct blob each time, only
//! the put timed, older blobs synced and removed untimed); and the plain
//! write again from a page-aligned copy of the bytes (as mimalloc hands out
//! large buffers), with the content at file offset 16 (a format-1 blob) and
//! at 4096 (a large format-2 blob): see the `layout` module for why. Then
//! two threads, pinned to two CPUs and started together (so that neither
//! waits for the other's CPU), each writing half of the blob: into one
//! file, and each into a file of its own (what a store that split large
//! blobs in two files would do; BENCHMARKS.md, issue #2, session 32); the
//! rows give each thread's wall and CPU time, so the pair's wall time is the
//! larger of the two.

mod support;
use support::median;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use voidbox_cas::{DiskStore, Durability, OpenOptions, Store};

fn thread_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Wall and thread-CPU seconds of `f` on the calling thread.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (t0, c0) = (Instant::now(), thread_cpu());
    let out = f();
    (out, t0.elapsed().as_secs_f64(), thread_cpu() - c0)
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    write_file_at(path, data, 16)
}

/// A header of `at` bytes, then `data` in 1 MiB writes.
fn write_file_at(path: &Path, data: &[u8], at: u64) -> io::Result<()> {
    let file = File::options().write(true).create_new(true).open(path)?;
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        data.len() as u64 + at,
    )?;
    file.write_all_at(&vec![7; at as usize], 0)?;
    for (i, part) in data.chunks(1 << 20).enumerate() {
        file.write_all_at(part, at + (i << 20) as u64)?;
    }
    Ok(())
}

/// Pins the calling thread to the `nth` CPU it may run on (or leaves it
/// where it is if there is none).
fn pin_to(nth: usize) -> Option<rustix::thread::CpuSet> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(None).ok()?;
    let cpu = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .nth(nth)?;
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one).ok()?;
    Some(allowed)
}

/// Two threads on two CPUs, released together, each write half of `data`
/// in 1 MiB pwrites: into `path` at its offset, or the second half into
/// `other` if given. Returns each thread's wall and CPU seconds.
fn write_halves(path: &Path, other: Option<&PathBuf>, data: &[u8]) -> ((f64, f64), (f64, f64)) {
    let half = data.len() / 2;
    let open = |path: &Path, len: usize| {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .expect("create");
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, len as u64)
            .expect("fallocate");
        file
    };
    let first = open(path, if other.is_some() { half } else { data.len() });
    let (second, base) = match other {
        Some(other) => (open(other, data.len() - half), half),
        None => (first.try_clone().expect("dup"), 0),
    };
    let write = |file: &File, part: &[u8], at: usize| {
        for (i, unit) in part.chunks(1 << 20).enumerate() {
            file.write_all_at(unit, (at + (i << 20)) as u64)
                .expect("write");
        }
    };
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let helper = s.spawn(|| {
            pin_to(1);
            start.wait();
            let (_, w, c) = timed(|| write(&second, &data[half..], half - base));
            (w, c)
        });
        let allowed = pin_to(0);
        start.wait();
        let (_, w, c) = timed(|| write(&first, &data[..half], 0));
        if let Some(allowed) = allowed {
            let _ = rustix::thread::sched_setaffinity(None, &allowed);
        }
        ((w, c), helper.join().expect("no panic"))
    })
}

fn main() {
    let mut rounds = 10;
    let mut dir_arg: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--dir" => dir_arg = it.next().map(PathBuf::from),
            other => panic!("unknown argument {other}"),
        }
    }
    let scratch = match &dir_arg {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let len = 16 << 20;
    let mib = 16.0;
    let mut data = vec![0u8; len];
    blake3::Hasher::new_derive_key("voidbox bench data")
        .finalize_xof()
        .fill(&mut data);
    let mut other = data.clone();
    other[100] ^= 1;
    let store = DiskStore::open_with(
        scratch.path().join("cas"),
        OpenOptions {
            durability: Durability::Deferred,
            read_only: false,
        },
    )
    .expect("open store");
    let mut stored = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut counter = 0u64;
    let names = [
        "hash_1t",
        "hash_2t(a)",
        "hash_2t(b)",
        "write_alone",
        "write_while_hash(w)",
        "write_while_hash(h)",
        "store_put",
        "page_src_at16",
        "page_src_at4096",
        "halves_one_file(a)",
        "halves_one_file(b)",
        "halves_two_files(a)",
        "halves_two_files(b)",
    ];
    // The system allocator puts a large buffer 16 bytes into a page; this
    // copy starts on a page boundary.
    let mut page_buf = vec![0u8; len + 4096];
    let skip = page_buf.as_ptr().align_offset(4096);
    let page_src = &mut page_buf[skip..skip + len];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut record = |i: usize, w: f64, c: f64| {
        wall[i].push(w);
        cpu[i].push(c);
    };
    for _ in 0..rounds + 2 {
        counter += 1;
        data[..8].copy_from_slice(&counter.to_le_bytes());
        let (_, w, c) = timed(|| std::hint::black_box(blake3::hash(&data)));
        record(0, w, c);
        let (a, b) = std::thread::scope(|s| {
            let other = &other;
            let helper = s.spawn(move || timed(|| std::hint::black_box(blake3::hash(other))));
            let mine = timed(|| std::hint::black_box(blake3::hash(&data)));
            (mine, helper.join().expect("no panic"))
        });
        record(1, a.1, a.2);
        record(2, b.1, b.2);
        let path = scratch.path().join(format!("w{counter}"));
        let (r, w, c) = timed(|| write_file(&path, &data));
        r.expect("write");
        record(3, w, c);
        File::open(&path).and_then(|f| f.sync_data()).expect("sync");
        files.push(path);
        counter += 1;
        data[..8].copy_from_slice(&counter.to_le_bytes());
        let path = scratch.path().join(format!("w{counter}"));
        let (wr, hr) = std::thread::scope(|s| {
            let other = &other;
            let helper = s.spawn(move || timed(|| std::hint::black_box(blake3::hash(other))));
            let mine = timed(|| write_file(&path, &data));
            (mine, helper.join().expect("no panic"))
        });
        wr.0.expect("write");
        record(4, wr.1, wr.2);
        record(5, hr.1, hr.2);
        File::open(&path).and_then(|f| f.sync_data()).expect("sync");
        files.push(path);
        while files.len() > 4 {
            std::fs::remove_file(files.remove(0)).expect("remove");
        }
        counter += 1;
        data[..8].copy_from_slice(&counter.to_le_bytes());
        let (d, w, c) = timed(|| store.put(&data).expect("put"));
        record(6, w, c);
        for (i, at) in [(7, 16), (8, 4096)] {
            counter += 1;
            page_src.copy_from_slice(&data);
            page_src[..8].copy_from_slice(&counter.to_le_bytes());
            let path = scratch.path().join(format!("w{counter}"));
            let (r, w, c) = timed(|| write_file_at(&path, page_src, at));
            r.expect("write");
            record(i, w, c);
            File::open(&path).and_then(|f| f.sync_data()).expect("sync");
            files.push(path);
        }
        for (i, files_of_their_own) in [(9, false), (11, true)] {
            counter += 1;
            data[..8].copy_from_slice(&counter.to_le_bytes());
            let path = scratch.path().join(format!("w{counter}"));
            let other = scratch.path().join(format!("w{counter}.second"));
            let (a, b) = write_halves(&path, files_of_their_own.then_some(&other), &data);
            record(i, a.0, a.1);
            record(i + 1, b.0, b.1);
            for path in [path, other] {
                if path.exists() {
                    File::open(&path).and_then(|f| f.sync_data()).expect("sync");
                    files.push(path);
                }
            }
        }
        while files.len() > 8 {
            std::fs::remove_file(files.remove(0)).expect("remove");
        }
        stored.push(d);
        if stored.len() > 4 {
            store.sync().expect("sync");
            store.remove(&stored.remove(0)).expect("remove");
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<22} {:>10} {:>10} {:>10}   (16 MiB, median of {rounds}, load {})",
        "what",
        "MiB/s wall",
        "ms wall",
        "ms cpu(thr)",
        load.trim()
    )
    .expect("stdout");
    for (i, name) in names.iter().enumerate() {
        let w = median(wall[i][2..].to_vec());
        let c = median(cpu[i][2..].to_vec());
        writeln!(
            out,
            "{name:<22} {:>10.0} {:>10.2} {:>10.2}",
            mib / w,
            w * 1e3,
            c * 1e3
        )
        .expect("stdout");
    }
}
