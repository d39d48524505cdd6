//! Placement quality and speed, printed as one JSON object:
//!
//! 1. against the exact optimum (enumeration) on small random instances;
//! 2. against greedy least-loaded on locality-heavy instances;
//! 3. the time to place 256 invocations on 16 executors.
//!
//! `cargo run --release -p voidbox-ising --example placement_bench [-- --instances N] [--sweeps N]`

// A benchmark measures time: the crate's clock ban is for the core.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use serde_json::json;
use voidbox_ising::placement::{
    exact_optimum, greedy, greedy_least_loaded, place, Executor, Invocation, Location,
    PlacementOutcome, PlacementParams, PlacementProblem, Weights,
};
use voidbox_ising::rng::Rng;

const MIB: u64 = 1 << 20;

fn executor(r: &mut Rng, e: usize, slots: u32, tools: usize, blobs: usize) -> Executor {
    let rack = e / 4;
    let mut x = Executor {
        id: format!("e{e}"),
        slots,
        memory_bytes: u64::from(slots) * 512 * MIB,
        load_slots: r.below(u64::from(slots / 4 + 1)) as u32,
        location: Location::new(
            format!("dc{}", rack / 4),
            format!("rack{rack}"),
            format!("server{e}"),
        ),
        failure_domain: format!("rack{rack}"),
        ..Executor::default()
    };
    for _ in 0..2 {
        x.warm_tools
            .insert(format!("tool{}", r.below(tools as u64)));
    }
    for _ in 0..3 {
        x.blobs.insert(format!("blob{}", r.below(blobs as u64)));
    }
    x
}

fn invocation(
    r: &mut Rng,
    t: usize,
    tools: usize,
    blobs: usize,
    replica_chance: u64,
) -> Invocation {
    Invocation {
        id: format!("t{t}"),
        slots: 1 + r.below(3) as u32,
        memory_bytes: (64 + 64 * r.below(4)) * MIB,
        replicas: if r.below(100) < replica_chance { 2 } else { 1 },
        tool: format!("tool{}", r.below(tools as u64)),
        blobs: (0..1 + r.below(2))
            .map(|_| format!("blob{}", r.below(blobs as u64)))
            .collect(),
        origin: None,
    }
}

/// Small instances: 5 to 7 invocations on 4 executors in 2 to 4 racks.
fn small(seed: u64) -> Option<PlacementProblem> {
    let mut r = Rng::new(seed);
    let n_exec = 4;
    let execs: Vec<Executor> = (0..n_exec)
        .map(|e| {
            let slots = 4 + r.below(4) as u32;
            let mut x = executor(&mut r, e * (1 + seed as usize % 4), slots, 4, 6);
            x.failure_domain = format!("fd{}", e % 3);
            x
        })
        .collect();
    let invs: Vec<Invocation> = (0..5 + r.below(3) as usize)
        .map(|t| invocation(&mut r, t, 4, 6, 20))
        .collect();
    PlacementProblem::new(invs, execs, Weights::default()).ok()
}

/// Locality-heavy: 16 executors, 128 invocations whose tools and blobs are
/// each warm or held on a few executors, with loads that differ.
fn locality_heavy(seed: u64) -> PlacementProblem {
    let mut r = Rng::new(seed);
    let execs: Vec<Executor> = (0..16).map(|e| executor(&mut r, e, 24, 12, 24)).collect();
    let invs: Vec<Invocation> = (0..128)
        .map(|t| invocation(&mut r, t, 12, 24, 10))
        .collect();
    PlacementProblem::new(invs, execs, Weights::default()).expect("the locality instance fits")
}

fn batch_256(seed: u64) -> (Vec<Invocation>, Vec<Executor>) {
    let mut r = Rng::new(seed);
    let execs: Vec<Executor> = (0..16).map(|e| executor(&mut r, e, 48, 16, 32)).collect();
    let invs: Vec<Invocation> = (0..256).map(|t| invocation(&mut r, t, 16, 32, 5)).collect();
    (invs, execs)
}

/// CPU time of this thread in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`), so
/// that the timing means something on a machine shared with other work.
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let instances: u64 = args
        .iter()
        .position(|a| a == "--instances")
        .and_then(|k| args.get(k + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut params = PlacementParams::default();
    if let Some(sweeps) = args
        .iter()
        .position(|a| a == "--sweeps")
        .and_then(|k| args.get(k + 1))
        .and_then(|v| v.parse().ok())
    {
        params.sweeps = sweeps;
    }

    // 1. Exact optimum.
    let mut gaps = Vec::new();
    let mut optimal = 0;
    let mut outcomes = [0usize; 3];
    let mut seed = 0;
    while (gaps.len() as u64) < instances {
        seed += 1;
        let Some(p) = small(seed) else { continue };
        let Some((_, opt)) = exact_optimum(&p, 5_000_000) else {
            continue;
        };
        let placed = place(
            &p,
            &PlacementParams {
                seed,
                ..params.clone()
            },
        )
        .expect("a feasible instance places");
        let gap = (placed.energy.objective - opt) / opt.abs().max(1e-12);
        if gap <= 1e-9 {
            optimal += 1;
        }
        outcomes[match placed.outcome {
            PlacementOutcome::Annealed => 0,
            PlacementOutcome::Repaired => 1,
            PlacementOutcome::Greedy => 2,
        }] += 1;
        gaps.push(gap);
    }
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);

    // 2. Locality-heavy vs greedy least-loaded.
    let mut reductions = Vec::new();
    let mut ours_total = 0.0;
    let mut least_loaded_total = 0.0;
    let mut own_greedy_total = 0.0;
    for s in 0..10 {
        let p = locality_heavy(1000 + s);
        let ours = place(
            &p,
            &PlacementParams {
                seed: s,
                ..params.clone()
            },
        )
        .expect("places");
        let ll = greedy_least_loaded(&p).expect("least-loaded places");
        let g = greedy(&p).expect("greedy places");
        let ll_cost = p.breakdown(&ll).objective;
        ours_total += ours.energy.objective;
        least_loaded_total += ll_cost;
        own_greedy_total += p.breakdown(&g).objective;
        reductions.push(1.0 - ours.energy.objective / ll_cost);
    }

    // 3. Time: 256 invocations on 16 executors (building the problem included).
    let mut times_ms = Vec::new();
    let mut solve_only_ms = Vec::new();
    let mut cpu_ms = Vec::new();
    for s in 0..30 {
        let (invs, execs) = batch_256(7);
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let p = PlacementProblem::new(invs, execs, Weights::default()).expect("the 256 batch fits");
        let t1 = Instant::now();
        let placed = place(
            &p,
            &PlacementParams {
                seed: s,
                ..params.clone()
            },
        )
        .expect("places");
        let t2 = Instant::now();
        if let (Some(a), Some(b)) = (c0, thread_cpu_ns()) {
            cpu_ms.push((b - a) as f64 / 1e6);
        }
        assert!(p.check(&placed.assignment).is_ok());
        times_ms.push((t2 - t0).as_secs_f64() * 1e3);
        solve_only_ms.push((t2 - t1).as_secs_f64() * 1e3);
    }

    let report = json!({
        "params": { "sweeps": params.sweeps, "reads": params.reads, "solver": "structured" },
        "exact": {
            "instances": gaps.len(),
            "optimal": optimal,
            "mean_gap": mean_gap,
            "max_gap": max_gap,
            "outcomes": { "annealed": outcomes[0], "repaired": outcomes[1], "greedy": outcomes[2] },
            "goal": "within 1% of the optimum",
        },
        "locality_heavy": {
            "instances": reductions.len(),
            "invocations": 128,
            "executors": 16,
            "annealed_cost": ours_total,
            "greedy_least_loaded_cost": least_loaded_total,
            "greedy_marginal_cost": own_greedy_total,
            "cost_reduction_vs_least_loaded": 1.0 - ours_total / least_loaded_total,
            "min_reduction": reductions.iter().copied().fold(f64::INFINITY, f64::min),
            "goal": "at least 15% lower total cost than greedy least-loaded",
        },
        "time_256_on_16": {
            "runs": times_ms.len(),
            "median_ms": median(times_ms.clone()),
            "max_ms": times_ms.iter().copied().fold(0.0, f64::max),
            "median_place_only_ms": median(solve_only_ms),
            "median_cpu_ms": (!cpu_ms.is_empty()).then(|| median(cpu_ms.clone())),
            "goal_ms": 5.0,
        },
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("serializes")
    );
}
