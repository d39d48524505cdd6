//! Placement quality and speed, printed as one JSON object:
//!
//! 1. against the exact optimum (enumeration) on small random instances;
//! 2. against greedy least-loaded on locality-heavy instances, and against
//!    a long anneal (a hundred times the work) as a near-optimal yardstick;
//! 3. the time to place batches of several sizes, 256 invocations on 16
//!    executors among them, with one reused [`Placer`] as the host runs it:
//!    p50, p99 and max of the wall time (building the problem included),
//!    of the placement alone, and of the thread's CPU time; and how many
//!    allocations each step makes. Each size runs twice: back to back, and
//!    with a 2 ms sleep before each run (as the host's scheduling thread
//!    waits for a batch); on a loaded machine the wall-time tail of the
//!    first is the scheduler's preemption, not the placement's work.
//!
//! `cargo run --release -p voidbox-ising --example placement_bench [-- --instances N] [--runs N] [--sweeps N] [--reads N] [--attempts N]`

// A benchmark measures time: the crate's clock ban is for the core.
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{json, Value};
use voidbox_ising::placement::{
    exact_optimum, greedy, greedy_least_loaded, Executor, Invocation, Location, PlacementOutcome,
    PlacementParams, PlacementProblem, Placer, Weights,
};
use voidbox_ising::rng::Rng;

/// Counts allocations, to tell allocation from compute.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocation_counters() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    )
}

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

/// A batch of `n` invocations on `executors` executors with room to spare
/// (about two thirds of the slots used), 5% of them with two replicas.
fn batch(seed: u64, n: usize, executors: usize) -> (Vec<Invocation>, Vec<Executor>) {
    let mut r = Rng::new(seed);
    let slots = (3 * n / executors).max(8) as u32;
    let tools = n.div_ceil(16).max(4);
    let blobs = 2 * tools;
    let execs: Vec<Executor> = (0..executors)
        .map(|e| executor(&mut r, e, slots, tools, blobs))
        .collect();
    let invs: Vec<Invocation> = (0..n)
        .map(|t| invocation(&mut r, t, tools, blobs, 5))
        .collect();
    (invs, execs)
}

/// CPU time of this thread in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`), so
/// that the timing means something on a machine shared with other work.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// p50, p99 and max of a sample, in the sample's unit.
fn percentiles(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({ "p50": at(0.5), "p99": at(0.99), "max": at(1.0) })
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|k| args.get(k + 1))
        .and_then(|v| v.parse().ok())
}

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The near-optimal yardstick: a hundred times the default work, 4 reads.
fn long_params(seed: u64) -> PlacementParams {
    let d = PlacementParams::default();
    PlacementParams {
        sweeps: 100 * d.sweeps,
        reads: 4,
        seed,
        move_attempts_max: 100 * d.move_attempts_max,
        ..d
    }
}

/// Wall, placement-only and CPU times of `runs` placements, and their
/// allocations. With `pause`, the thread sleeps before each run, as the
/// host's scheduling thread does while it waits for the next batch (a
/// thread that has slept is less likely to be preempted mid-run than one
/// that has been spinning, so the two modes differ on a loaded machine).
fn timed_runs(
    placer: &mut Placer,
    batches: &[(Vec<Invocation>, Vec<Executor>)],
    runs: usize,
    pause: Option<std::time::Duration>,
) -> Value {
    let mut wall_ms = Vec::new();
    let mut place_ms = Vec::new();
    let mut cpu_ms = Vec::new();
    let (mut build_allocs, mut place_allocs, mut place_bytes) = (0u64, 0u64, 0u64);
    let mut outcomes = [0usize; 3];
    let mut attempts = 0u64;
    for run in 0..runs {
        let (invs, execs) = batches[run % batches.len()].clone();
        if let Some(d) = pause {
            std::thread::sleep(d);
        }
        let (a0, _) = allocation_counters();
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let p = PlacementProblem::new(invs, execs, Weights::default()).expect("the batch fits");
        let t1 = Instant::now();
        let (a1, b1) = allocation_counters();
        let placed = placer
            .place_with_seed(&p, run as u64)
            .expect("a feasible batch places");
        let t2 = Instant::now();
        let c2 = thread_cpu_ns();
        let (a2, b2) = allocation_counters();
        build_allocs += a1 - a0;
        place_allocs += a2 - a1;
        place_bytes += b2 - b1;
        wall_ms.push((t2 - t0).as_secs_f64() * 1e3);
        place_ms.push((t2 - t1).as_secs_f64() * 1e3);
        cpu_ms.push((c2 - c0) as f64 / 1e6);
        attempts += placed.move_attempts;
        assert!(p.check(&placed.assignment).is_ok());
        outcomes[match placed.outcome {
            PlacementOutcome::Annealed => 0,
            PlacementOutcome::Repaired => 1,
            PlacementOutcome::Greedy => 2,
        }] += 1;
    }
    let runs_f = runs as f64;
    let over_5ms = wall_ms.iter().filter(|&&t| t > 5.0).count();
    json!({
        "runs": runs,
        "wall_ms_build_and_place": percentiles(wall_ms),
        "runs_over_5_ms": over_5ms,
        "wall_ms_place_only": percentiles(place_ms),
        "cpu_ms_build_and_place": percentiles(cpu_ms),
        "allocations_per_build": build_allocs as f64 / runs_f,
        "allocations_per_place": place_allocs as f64 / runs_f,
        "allocated_bytes_per_place": place_bytes as f64 / runs_f,
        "move_attempts_per_place": attempts as f64 / runs_f,
        "outcomes": { "annealed": outcomes[0], "repaired": outcomes[1], "greedy": outcomes[2] },
    })
}

fn timing(n: usize, executors: usize, runs: usize, params: &PlacementParams) -> Value {
    const INSTANCES: u64 = 10;
    let mut placer = Placer::new(params.clone()).expect("valid parameters");
    let batches: Vec<_> = (0..INSTANCES)
        .map(|i| batch(100 + i, n, executors))
        .collect();
    // Warm-up: page in the code and grow the placer's scratch space.
    for (invs, execs) in batches.iter().take(3) {
        let p = PlacementProblem::new(invs.clone(), execs.clone(), Weights::default())
            .expect("the batch fits");
        placer.place(&p).expect("places");
    }
    let back_to_back = timed_runs(&mut placer, &batches, runs, None);
    let woken = timed_runs(
        &mut placer,
        &batches,
        runs,
        Some(std::time::Duration::from_millis(2)),
    );
    // Quality on this size: each instance against greedy and a long anneal.
    let mut ours = 0.0;
    let mut greedy_total = 0.0;
    let mut long = 0.0;
    for (i, (invs, execs)) in batches.iter().enumerate() {
        let p = PlacementProblem::new(invs.clone(), execs.clone(), Weights::default())
            .expect("the batch fits");
        ours += placer
            .place_with_seed(&p, i as u64)
            .expect("places")
            .energy
            .objective;
        greedy_total += p.breakdown(&greedy(&p).expect("greedy places")).objective;
        long += Placer::new(long_params(i as u64))
            .expect("valid")
            .place(&p)
            .expect("places")
            .energy
            .objective;
    }
    json!({
        "invocations": n,
        "executors": executors,
        "back_to_back": back_to_back,
        "woken_after_2_ms_sleep": woken,
        "objective_below_greedy": 1.0 - ours / greedy_total,
        "objective_above_long_anneal": ours / long - 1.0,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let instances: u64 = arg(&args, "--instances").unwrap_or(100);
    let runs: usize = arg(&args, "--runs").unwrap_or(200);
    let mut params = PlacementParams::default();
    if let Some(sweeps) = arg(&args, "--sweeps") {
        params.sweeps = sweeps;
    }
    if let Some(attempts) = arg(&args, "--attempts") {
        params.move_attempts_max = attempts;
    }
    if let Some(reads) = arg(&args, "--reads") {
        params.reads = reads;
    }
    let load_before = load_average();
    let started = Instant::now();

    // 1. Exact optimum.
    let mut placer = Placer::new(params.clone()).expect("valid parameters");
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
        let placed = placer
            .place_with_seed(&p, seed)
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

    // 2. Locality-heavy vs greedy least-loaded, and vs a long anneal.
    let mut reductions = Vec::new();
    let mut ours_total = 0.0;
    let mut least_loaded_total = 0.0;
    let mut own_greedy_total = 0.0;
    let mut long_total = 0.0;
    for s in 0..10 {
        let p = locality_heavy(1000 + s);
        let ours = placer.place_with_seed(&p, s).expect("places");
        let ll = greedy_least_loaded(&p).expect("least-loaded places");
        let g = greedy(&p).expect("greedy places");
        let ll_cost = p.breakdown(&ll).objective;
        ours_total += ours.energy.objective;
        least_loaded_total += ll_cost;
        own_greedy_total += p.breakdown(&g).objective;
        long_total += Placer::new(long_params(s))
            .expect("valid")
            .place(&p)
            .expect("places")
            .energy
            .objective;
        reductions.push(1.0 - ours.energy.objective / ll_cost);
    }

    // 3. Time, several sizes (the goal is on 256 × 16).
    let sizes = [(64, 8), (256, 16), (256, 64), (1024, 32)];
    let times: Vec<Value> = sizes
        .iter()
        .map(|&(n, e)| timing(n, e, runs, &params))
        .collect();

    let report = json!({
        "command": "cargo run --release -p voidbox-ising --example placement_bench",
        "params": {
            "sweeps": params.sweeps,
            "reads": params.reads,
            "move_attempts_max": params.move_attempts_max,
            "solver": "structured",
        },
        "load_average_before": load_before,
        "load_average_after": load_average(),
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
            "long_anneal_cost": long_total,
            "cost_reduction_vs_least_loaded": 1.0 - ours_total / least_loaded_total,
            "min_reduction": reductions.iter().copied().fold(f64::INFINITY, f64::min),
            "above_long_anneal": ours_total / long_total - 1.0,
            "goal": "at least 15% lower total cost than greedy least-loaded",
        },
        "time": times,
        "time_goal": "256 invocations on 16 executors in at most 5 ms (wall, build and place, max)",
        "bench_seconds": started.elapsed().as_secs_f64(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("serializes")
    );
}
