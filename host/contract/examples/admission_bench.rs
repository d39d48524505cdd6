//! Admission benchmark: Z3 admission cold (a fresh Z3 context each time)
//! and cached (a `ProofCache` hit), printed as one JSON object.
//!
//! Run: `cargo run --release -p voidbox-contract --example admission_bench`
//! Sizes: `ADMISSION_BENCH_COLD` (default 200) and `ADMISSION_BENCH_CACHED`
//! (default 1_000_000) iterations.

use std::hint::black_box;
use std::time::{Duration, Instant};

use voidbox_contract::{admit, z3_version, Budget, Contract, ProofCache};

/// The contract the issue uses as its example, plus a precondition and a
/// memory bound with a branch, so that every kind of clause is exercised.
const CONTRACT: &str = "\
small: input_bytes <= 16_777_216
cost:  fuel <= 400 * input_bytes + 2_000_000
out:   output_bytes <= input_bytes + 64
mem:   memory_bytes <= if input_bytes < 1_048_576 then 16_777_216 else 67_108_864
";

fn iterations(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Stats {
    mean: f64,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn stats(samples: &mut [Duration], unit: f64) -> Stats {
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * unit;
    let total: f64 = samples.iter().map(|d| d.as_secs_f64()).sum();
    Stats {
        mean: total / samples.len() as f64 * unit,
        p50: at(0.5),
        p99: at(0.99),
        min: at(0.0),
        max: at(1.0),
    }
}

fn json(name: &str, unit: &str, n: usize, s: &Stats, goal: f64) -> String {
    format!(
        "\"{name}\": {{\"iterations\": {n}, \"unit\": \"{unit}\", \"mean\": {:.3}, \"p50\": {:.3}, \"p99\": {:.3}, \"min\": {:.3}, \"max\": {:.3}, \"goal_mean_at_most\": {goal}, \"meets_goal\": {}}}",
        s.mean,
        s.p50,
        s.p99,
        s.min,
        s.max,
        s.mean <= goal
    )
}

fn main() {
    let cold_n = iterations("ADMISSION_BENCH_COLD", 200).max(1);
    let cached_n = iterations("ADMISSION_BENCH_CACHED", 1_000_000).max(1);
    let contract = Contract::parse(CONTRACT).expect("the benchmark contract parses");
    let fits = Budget {
        max_input_bytes: Some(200_000),
        max_args_bytes: None,
        fuel: 100_000_000,
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
    };
    let denied = Budget {
        max_input_bytes: Some(1_048_576),
        ..fits
    };
    assert!(
        admit(&contract, &fits).is_ok(),
        "the fitting budget must be admitted"
    );
    assert!(
        admit(&contract, &denied).is_err(),
        "the tight budget must be denied"
    );

    // Cold: every call builds a Z3 context, encodes and solves.
    let mut proof = Vec::with_capacity(cold_n);
    let mut counterexample = Vec::with_capacity(cold_n);
    for _ in 0..cold_n {
        let start = Instant::now();
        black_box(admit(black_box(&contract), black_box(&fits))).ok();
        proof.push(start.elapsed());
        let start = Instant::now();
        black_box(admit(black_box(&contract), black_box(&denied))).ok();
        counterexample.push(start.elapsed());
    }

    // Cached: the answer is in the cache; the cost is hashing the key and
    // cloning the stored proof. Timed in batches so the clock's own cost
    // does not dominate.
    let mut cache = ProofCache::new(1024);
    cache.admit(&contract, &fits).expect("fits");
    const BATCH: usize = 1_000;
    let batches = cached_n.div_ceil(BATCH);
    let mut cached = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(cache.admit(black_box(&contract), black_box(&fits))).ok();
        }
        cached.push(start.elapsed() / BATCH as u32);
    }
    let (hits, misses) = cache.stats();
    assert_eq!(misses, 1, "every timed call must be a hit");

    println!(
        "{{\"benchmark\": \"admission\", \"z3\": \"{}\", {}, {}, {}, \"cache_hits\": {hits}}}",
        z3_version(),
        json("cold_proof_ms", "ms", cold_n, &stats(&mut proof, 1e3), 20.0),
        json(
            "cold_counterexample_ms",
            "ms",
            cold_n,
            &stats(&mut counterexample, 1e3),
            20.0
        ),
        json(
            "cached_us",
            "us",
            batches * BATCH,
            &stats(&mut cached, 1e6),
            10.0
        ),
    );
}
