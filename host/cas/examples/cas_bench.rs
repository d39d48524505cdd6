//! CAS throughput against bare blake3, in one run:
//!
//! ```text
//! cargo run --release -p voidbox-cas --example cas_bench [-- --mib 16 --rounds 12]
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
//! small. Prints one JSON object: per operation the median MiB/s (wall
//! time), its ratio to hashing, and the same by CPU time (MiB per CPU-second
//! of the whole process, all threads), which a busy machine distorts less.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use voidbox_cas::{DiskStore, Durability, OpenOptions, Store};

struct Args {
    mib: usize,
    rounds: usize,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        mib: 16,
        rounds: 12,
        dir: None,
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
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if args.mib == 0 || args.rounds == 0 {
        usage("--mib and --rounds must be positive");
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!("cas_bench: {problem}\nusage: cas_bench [--mib N] [--rounds N] [--dir DIR]");
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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
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
    // One untimed warm-up round, then the measured ones.
    for round in 0..=args.rounds {
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
        if round > 0 {
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

fn main() {
    let args = parse_args();
    let mut seed = 1;
    let deferred = run(&args, Durability::Deferred, &mut seed);
    let immediate = run(&args, Durability::Immediate, &mut seed);
    let report = serde_json::json!({
        "blob_mib": args.mib,
        "rounds": args.rounds,
        "statistic": "median",
        "goal_ratio_min": 0.7,
        "deferred": deferred,
        "immediate": immediate,
    });
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report).expect("write stdout");
    writeln!(out).expect("write stdout");
}
