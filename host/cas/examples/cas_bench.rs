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
//! small. Prints one JSON object.

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

fn mib_per_s(bytes: usize, start: Instant) -> f64 {
    bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Rates {
    hash: Vec<f64>,
    put: Vec<f64>,
    get: Vec<f64>,
    put_reader: Vec<f64>,
    copy_to: Vec<f64>,
}

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
    let mut data = vec![0u8; len];
    let mut other = vec![0u8; len];
    let mut rates = Rates::default();
    // One untimed warm-up round, then the measured ones.
    for round in 0..=args.rounds {
        *seed += 2;
        fill(&mut data, *seed);
        fill(&mut other, *seed + 1);

        let start = Instant::now();
        let hash = blake3::hash(std::hint::black_box(&data));
        let hash_rate = mib_per_s(len, start);

        let start = Instant::now();
        let digest = store.put(&data).expect("put");
        let put_rate = mib_per_s(len, start);
        assert_eq!(digest.as_bytes(), hash.as_bytes());

        let start = Instant::now();
        let back = store.get(&digest).expect("get");
        let get_rate = mib_per_s(len, start);
        assert!(back == data);
        drop(back);

        let start = Instant::now();
        let (other_digest, _) = store.put_reader(&mut &other[..]).expect("put_reader");
        let put_reader_rate = mib_per_s(len, start);

        let start = Instant::now();
        store
            .copy_to(&other_digest, &mut io::sink())
            .expect("copy_to");
        let copy_to_rate = mib_per_s(len, start);

        store.remove(&digest).expect("remove");
        store.remove(&other_digest).expect("remove");
        store.sync().expect("sync");
        if round > 0 {
            rates.hash.push(hash_rate);
            rates.put.push(put_rate);
            rates.get.push(get_rate);
            rates.put_reader.push(put_reader_rate);
            rates.copy_to.push(copy_to_rate);
        }
    }
    let hash = median(rates.hash);
    let put = median(rates.put);
    let get = median(rates.get);
    let put_reader = median(rates.put_reader);
    let copy_to = median(rates.copy_to);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    serde_json::json!({
        "hash_mib_s": hash.round(),
        "put_mib_s": put.round(),
        "get_mib_s": get.round(),
        "put_reader_mib_s": put_reader.round(),
        "copy_to_mib_s": copy_to.round(),
        "put_ratio": round2(put / hash),
        "get_ratio": round2(get / hash),
        "put_reader_ratio": round2(put_reader / hash),
        "copy_to_ratio": round2(copy_to / hash),
    })
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
