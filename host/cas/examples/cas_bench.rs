//! CAS throughput against bare blake3, in one run:
//!
//! ```text
//! cargo run --release -p voidbox-cas --example cas_bench [-- --mib 16 --rounds 12 --warmup 3 --dir DIR]
//! ```
//!
//! Each round makes a fresh blob (so dedup never answers), then times, one
//! after the other on the same bytes: single-threaded `blake3::hash`, `put`,
//! `get`, `put_reader` (of other fresh content) and `copy_to` into a sink.
//! Rates are medians over the rounds, so a busy neighbour on the machine
//! skews one round, not the figure. It runs once with `Deferred` durability
//! (no fsync in the timed path: the page-cache rate) and once with
//! `Immediate` (fdatasync + directory fsync per put: the disk's rate).
//! Each round's blobs are removed after it, untimed, so the store stays
//! small and the dirty page cache never reaches the kernel's writeback
//! throttle (past it, any put runs at the disk's speed). A last part,
//! `small`, times 256-byte blobs (see `small`). The store lives in a temp
//! directory unless `--dir` names one (on the file system to measure).
//!
//! Prints one JSON object: per operation the median MiB/s (wall time), its
//! ratio to hashing, and the same by CPU time (MiB per CPU-second of the
//! whole process, all threads), which a busy machine distorts less.

mod support;
use support::median;

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use voidbox_cas::{DiskStore, Durability, OpenOptions, Store};

struct Args {
    mib: usize,
    rounds: usize,
    dir: Option<PathBuf>,
    /// Untimed rounds before the measured ones.
    warmup: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        mib: 16,
        rounds: 12,
        dir: None,
        warmup: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--mib" => {
                args.mib = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--mib takes a number"))
            }
            "--rounds" => {
                args.rounds = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--rounds takes a number"))
            }
            "--dir" => args.dir = Some(PathBuf::from(value())),
            "--warmup" => {
                args.warmup = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--warmup takes a number"))
            }
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
        "cas_bench: {problem}\nusage: cas_bench [--mib N] [--rounds N] [--warmup N] [--dir DIR]"
    );
    std::process::exit(2)
}

/// Fast deterministic filler: the content only has to differ per round.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Wall-clock and whole-process CPU seconds of `f`. CPU time counts every
/// thread, so it shows what an operation costs apart from how much of the
/// machine it got; wall time is what a caller waits.
fn measure<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    };
    let (cpu_start, start) = (cpu(), Instant::now());
    let out = f();
    (out, start.elapsed().as_secs_f64(), cpu() - cpu_start)
}

/// Per operation: MiB/s by wall time and MiB per CPU-second.
#[derive(Default)]
struct Rates {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Rates {
    fn push(&mut self, mib: f64, wall: f64, cpu: f64) {
        self.wall.push(mib / wall);
        self.cpu.push(mib / cpu.max(1e-9));
    }
}

const OPS: [&str; 5] = ["hash", "put", "get", "put_reader", "copy_to"];

fn run(args: &Args, durability: Durability, seed: &mut u64) -> serde_json::Value {
    let scratch;
    let dir = match &args.dir {
        Some(dir) => dir.join(format!("{durability:?}").to_lowercase()),
        None => {
            scratch = tempfile::tempdir().expect("temp dir");
            scratch.path().join("cas")
        }
    };
    let store = DiskStore::open_with(
        &dir,
        OpenOptions {
            durability,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("cas_bench: {e}");
        std::process::exit(1)
    });
    let len = args.mib << 20;
    let mib = args.mib as f64;
    let mut data = vec![0u8; len];
    let mut other = vec![0u8; len];
    let mut rates: Vec<Rates> = OPS.iter().map(|_| Rates::default()).collect();
    // Untimed warm-up rounds, then the measured ones.
    for round in 0..args.warmup + args.rounds {
        *seed += 2;
        fill(&mut data, *seed);
        fill(&mut other, *seed + 1);
        let mut times = Vec::with_capacity(OPS.len());

        let (hash, wall, cpu) = measure(|| blake3::hash(std::hint::black_box(&data)));
        times.push((wall, cpu));
        let (digest, wall, cpu) = measure(|| store.put(&data).expect("put"));
        times.push((wall, cpu));
        assert_eq!(digest.as_bytes(), hash.as_bytes());
        let (back, wall, cpu) = measure(|| store.get(&digest).expect("get"));
        times.push((wall, cpu));
        assert!(back == data);
        drop(back);
        let ((other_digest, _), wall, cpu) =
            measure(|| store.put_reader(&mut &other[..]).expect("put_reader"));
        times.push((wall, cpu));
        let (_, wall, cpu) = measure(|| {
            store
                .copy_to(&other_digest, &mut io::sink())
                .expect("copy_to")
        });
        times.push((wall, cpu));

        store.remove(&digest).expect("remove");
        store.remove(&other_digest).expect("remove");
        store.sync().expect("sync");
        if round >= args.warmup {
            for (rate, (wall, cpu)) in rates.iter_mut().zip(times) {
                rate.push(mib, wall, cpu);
            }
        }
    }
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let wall: Vec<f64> = rates.iter().map(|r| median(r.wall.clone())).collect();
    let cpu: Vec<f64> = rates.iter().map(|r| median(r.cpu.clone())).collect();
    let mut out = serde_json::Map::new();
    for (i, op) in OPS.iter().enumerate() {
        out.insert(format!("{op}_mib_s"), wall[i].round().into());
    }
    for (i, op) in OPS.iter().enumerate().skip(1) {
        out.insert(format!("{op}_ratio"), round2(wall[i] / wall[0]).into());
    }
    for (i, op) in OPS.iter().enumerate() {
        out.insert(format!("{op}_mib_per_cpu_s"), cpu[i].round().into());
    }
    for (i, op) in OPS.iter().enumerate().skip(1) {
        out.insert(format!("{op}_cpu_ratio"), round2(cpu[i] / cpu[0]).into());
    }
    out.into()
}

/// Small blobs, as an invocation stores its input and output: puts and
/// verified gets per second with deferred durability, the cost of making the
/// whole batch durable with one `sync`, and the latency of an immediate put.
fn small(args: &Args, seed: &mut u64) -> serde_json::Value {
    const COUNT: usize = 2000;
    const IMMEDIATE_COUNT: usize = 20;
    const BYTES: usize = 256;
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = match &args.dir {
        Some(dir) => dir.join("small"),
        None => scratch.path().join("cas"),
    };
    let open = |durability| {
        DiskStore::open_with(
            &dir,
            OpenOptions {
                durability,
                ..Default::default()
            },
        )
        .expect("open store")
    };
    let blobs: Vec<Vec<u8>> = (0..COUNT)
        .map(|i| {
            let mut blob = vec![0u8; BYTES];
            fill(&mut blob, *seed + i as u64);
            blob
        })
        .collect();
    *seed += COUNT as u64;
    let store = open(Durability::Deferred);
    let start = Instant::now();
    let digests: Vec<_> = blobs.iter().map(|b| store.put(b).expect("put")).collect();
    let put_per_s = COUNT as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for digest in &digests {
        store.get(digest).expect("get");
    }
    let get_pending_per_s = COUNT as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    store.sync().expect("sync");
    let sync_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    for digest in &digests {
        store.get(digest).expect("get");
    }
    let get_per_s = COUNT as f64 / start.elapsed().as_secs_f64();
    drop(store);
    let store = open(Durability::Immediate);
    let start = Instant::now();
    for i in 0..IMMEDIATE_COUNT {
        let mut blob = vec![0u8; BYTES];
        fill(&mut blob, *seed + i as u64);
        store.put(&blob).expect("put");
    }
    *seed += IMMEDIATE_COUNT as u64;
    let immediate_put_ms = start.elapsed().as_secs_f64() * 1e3 / IMMEDIATE_COUNT as f64;
    serde_json::json!({
        "blob_bytes": BYTES,
        "count": COUNT,
        "deferred_put_per_s": put_per_s.round(),
        "get_pending_per_s": get_pending_per_s.round(),
        "sync_all_ms": (sync_ms * 10.0).round() / 10.0,
        "get_per_s": get_per_s.round(),
        "immediate_put_ms": (immediate_put_ms * 100.0).round() / 100.0,
    })
}

fn main() {
    let args = parse_args();
    let mut seed = 1;
    let deferred = run(&args, Durability::Deferred, &mut seed);
    let immediate = run(&args, Durability::Immediate, &mut seed);
    let small = small(&args, &mut seed);
    let report = serde_json::json!({
        "blob_mib": args.mib,
        "rounds": args.rounds,
        "statistic": "median",
        "goal_ratio_min": 0.7,
        "deferred": deferred,
        "immediate": immediate,
        "small": small,
    });
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report).expect("write stdout");
    writeln!(out).expect("write stdout");
}
