//! `voidbox bench`'s CAS figures (deferred put and get of 16 MiB blobs
//! versus blake3), reproduced without the voidbox binary:
//!
//! ```text
//! cargo run --release -p voidbox-cas --example bench_loop [-- --rounds 8 --window 0.5 --dir DIR]
//! ```
//!
//! The same loop as `cas_figures` in the voidbox crate's `bench.rs`, with
//! deferred durability: 16 MiB of blake3 XOF output; the hashing rate is
//! `blake3::hash` on one thread for `--window` seconds; then, for twice
//! that, `DiskStore::put` of a distinct blob each time (its first 8 bytes
//! change), only the put timed, back to back, and between puts, untimed,
//! all but the last four blobs removed (before they are synced, so their
//! dirty pages go with them and nothing waits on the disk; see `cas_figures`
//! for why the puts must not wait between them); then `get` of the last blob,
//! over and over for `--window` seconds. This runs `--rounds` times (after
//! one untimed warm-up round), so that the rates of a round see about the
//! same load on a shared machine.
//!
//! Prints per round: put and hash MiB/s, their ratio (the figure with the
//! goal of 0.7), wall and CPU milliseconds per put (CPU of the whole
//! process: the calling thread and the helper), get MiB/s and its ratio,
//! and the load average; then the median ratios and the ratios of the rates
//! over all rounds.

mod support;
use support::median;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use voidbox_cas::{DiskStore, Durability, OpenOptions, Store};

const SIZE: usize = 16 << 20;

fn process_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "bench_loop: {problem}\nusage: bench_loop [--rounds N] [--window SECONDS] [--dir DIR]"
    );
    std::process::exit(2)
}

fn main() {
    let (mut rounds, mut window, mut dir) = (8usize, 0.5f64, None::<PathBuf>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--rounds" => {
                rounds = value
                    .parse()
                    .unwrap_or_else(|_| usage("--rounds takes a number"))
            }
            "--window" => {
                window = value
                    .parse()
                    .unwrap_or_else(|_| usage("--window takes seconds"))
            }
            "--dir" => dir = Some(PathBuf::from(value)),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if rounds == 0 || window.is_nan() || window <= 0.0 {
        usage("--rounds and --window must be positive");
    }
    let window = Duration::from_secs_f64(window);
    let scratch = match &dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("create a temp directory");
    let store = DiskStore::open_with(
        scratch.path().join("cas"),
        OpenOptions {
            durability: Durability::Deferred,
            read_only: false,
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("bench_loop: {e}");
        std::process::exit(1)
    });
    let mut data = vec![0u8; SIZE];
    blake3::Hasher::new_derive_key("voidbox bench data")
        .finalize_xof()
        .fill(&mut data);
    let mib = (SIZE >> 20) as f64;
    let mut stored = Vec::new();
    let mut counter = 0u64;
    let (mut ratios, mut put_total, mut hash_total) = (Vec::new(), (0.0, 0u64), (0.0, 0u64));
    let (mut get_ratios, mut get_total) = (Vec::new(), (0.0, 0u64));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "round  put MiB/s  hash MiB/s  ratio  wall ms/put  cpu ms/put  get MiB/s  ratio  load"
    )
    .expect("stdout");
    for round in 0..=rounds {
        let started = Instant::now();
        let mut hashes = 0u64;
        while started.elapsed() < window {
            for _ in 0..8 {
                counter += 1;
                data[..8].copy_from_slice(&counter.to_le_bytes());
                std::hint::black_box(blake3::hash(&data));
                hashes += 1;
            }
        }
        let hash_seconds = started.elapsed().as_secs_f64();
        let (mut put_seconds, mut puts, mut cpu) = (0.0, 0u64, 0.0);
        let started = Instant::now();
        while started.elapsed() < window * 2 {
            counter += 1;
            data[..8].copy_from_slice(&(counter + (1 << 40)).to_le_bytes());
            let cpu0 = process_cpu();
            let t = Instant::now();
            let digest = store.put(&data).expect("put");
            put_seconds += t.elapsed().as_secs_f64();
            cpu += process_cpu() - cpu0;
            puts += 1;
            stored.push(digest);
            if stored.len() > 4 {
                store.remove(&stored.remove(0)).expect("remove");
            }
        }
        let last = *stored.last().expect("at least one put");
        let started = Instant::now();
        let mut gets = 0u64;
        while started.elapsed() < window {
            std::hint::black_box(store.get(&last).expect("get"));
            gets += 1;
        }
        let get_seconds = started.elapsed().as_secs_f64();
        if round == 0 {
            continue;
        }
        let get_rate = gets as f64 * mib / get_seconds;
        get_total = (get_total.0 + get_seconds, get_total.1 + gets);
        let put_rate = puts as f64 * mib / put_seconds;
        let hash_rate = hashes as f64 * mib / hash_seconds;
        ratios.push(put_rate / hash_rate);
        get_ratios.push(get_rate / hash_rate);
        put_total = (put_total.0 + put_seconds, put_total.1 + puts);
        hash_total = (hash_total.0 + hash_seconds, hash_total.1 + hashes);
        writeln!(
            out,
            "{round:>5} {put_rate:>10.0} {hash_rate:>11.0} {:>6.2} {:>12.2} {:>11.2} {get_rate:>10.0} {:>6.2}  {}",
            put_rate / hash_rate,
            put_seconds * 1e3 / puts as f64,
            cpu * 1e3 / puts as f64,
            get_rate / hash_rate,
            loadavg()
        )
        .expect("stdout");
    }
    store.sync().expect("sync");
    let hash_rate = hash_total.1 as f64 * mib / hash_total.0;
    let put_rate = put_total.1 as f64 * mib / put_total.0;
    let get_rate = get_total.1 as f64 * mib / get_total.0;
    writeln!(
        out,
        "put: median ratio {:.2}, over all rounds {:.2} ({put_rate:.0} MiB/s)\n\
         get: median ratio {:.2}, over all rounds {:.2} ({get_rate:.0} MiB/s)\n\
         blake3 one thread: {hash_rate:.0} MiB/s",
        median(ratios),
        put_rate / hash_rate,
        median(get_ratios),
        get_rate / hash_rate,
    )
    .expect("stdout");
}
