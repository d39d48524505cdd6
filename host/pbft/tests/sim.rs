//! Seeded simulation runs. Sizes are small so `cargo test` stays quick;
//! set `PBFT_SIM_SEEDS` to run more seeds here, or use the `pbft-sim`
//! example for thousands:
//! `cargo run --release -p voidbox-pbft --example pbft-sim -- --seeds 1000`.
//!
//! Unoptimized ed25519 is a few hundred times slower than optimized, so a
//! debug build runs one seed of each test with fewer requests (unless
//! `PBFT_SIM_SEEDS` says otherwise); `cargo test --release` runs more.

use voidbox_pbft::sim::{run, run_seeds, Byzantine, ByzantineMode, SimConfig};

const DEBUG: bool = cfg!(debug_assertions);

fn seeds(release: u64) -> u64 {
    let default = if DEBUG { 1 } else { release };
    std::env::var("PBFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Requests per client: fewer in debug builds.
fn requests(release: u32) -> u32 {
    if DEBUG {
        2
    } else {
        release
    }
}

/// The default settings, with a shorter fault window in debug builds.
fn base() -> SimConfig {
    let cfg = SimConfig::default();
    if DEBUG {
        SimConfig {
            fault_duration_us: 600_000,
            ..cfg
        }
    } else {
        cfg
    }
}

fn assert_clean(cfg: &SimConfig, count: u64) {
    let s = run_seeds(cfg, 0, count);
    assert_eq!(s.seeds_run, count);
    assert!(
        s.first_failure.is_none(),
        "seed failed: {:?} (replay: pbft-sim --start SEED --seeds 1 --replicas {})",
        s.first_failure,
        cfg.replicas
    );
    // Every request of every seed completed (liveness), so the runs did work.
    assert_eq!(
        s.requests_completed,
        count * u64::from(cfg.clients * cfg.requests_per_client)
    );
}

#[test]
fn four_replicas_under_faults_and_random_byzantine_replicas() {
    let cfg = SimConfig {
        requests_per_client: requests(8),
        ..base()
    };
    assert_clean(&cfg, seeds(20));
}

#[test]
fn seven_replicas_under_faults_and_random_byzantine_replicas() {
    let cfg = SimConfig {
        replicas: 7,
        requests_per_client: requests(6),
        ..base()
    };
    assert_clean(&cfg, seeds(8));
}

#[test]
fn each_byzantine_behaviour_is_survived() {
    for b in Byzantine::ALL {
        let cfg = SimConfig {
            byzantine: ByzantineMode::Fixed(vec![b]),
            requests_per_client: requests(6),
            ..base()
        };
        for seed in 0..seeds(4) {
            let r = run(&SimConfig {
                seed,
                ..cfg.clone()
            });
            assert_eq!(r.violation, None, "{} seed {seed}", b.name());
            assert_eq!(r.byzantine.len(), 1);
            assert_eq!(r.byzantine[0].1, b);
        }
    }
}

#[test]
fn heavy_faults_with_crashes_that_lose_unsynced_records() {
    let cfg = SimConfig {
        drop: 0.2,
        duplicate: 0.1,
        crash: 0.15,
        lose_unsynced: 1.0,
        partition: 0.3,
        requests_per_client: requests(6),
        ..base()
    };
    let s = run_seeds(&cfg, 100, seeds(20));
    assert!(s.first_failure.is_none(), "{:?}", s.first_failure);
    assert!(s.crashes > 0, "the fault plan injected crashes");
}

#[test]
fn same_seed_same_trace_and_different_seeds_differ() {
    let cfg = SimConfig {
        seed: 11,
        requests_per_client: requests(4),
        ..base()
    };
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a, b);
    let c = run(&SimConfig { seed: 12, ..cfg });
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn liveness_checker_fires_when_the_bound_is_too_short() {
    // A control for the checker itself: with 1 ms to finish after the
    // faults stop, requests are still in flight and the run must fail.
    let cfg = SimConfig {
        seed: 1,
        fault_duration_us: 100_000,
        liveness_bound_us: 1_000,
        requests_per_client: requests(4),
        ..base()
    };
    let r = run(&cfg);
    let v = r.violation.expect("the liveness invariant fires");
    assert_eq!(v.invariant, "liveness");
    assert!(r.requests_completed < u64::from(cfg.clients * cfg.requests_per_client));
}
