use super::solve::{cheapest_ignoring_capacity, Walk};
use super::*;
use crate::rng::Rng;

const MIB: u64 = 1 << 20;

fn exec(id: &str, slots: u32, mem_mib: u64, rack: &str, server: &str) -> Executor {
    Executor {
        id: id.into(),
        slots,
        memory_bytes: mem_mib * MIB,
        location: Location::new("dc1", rack, server),
        failure_domain: format!("{rack}/{server}"),
        ..Executor::default()
    }
}

fn inv(id: &str, slots: u32, mem_mib: u64, replicas: u32, tool: &str) -> Invocation {
    Invocation {
        id: id.into(),
        slots,
        memory_bytes: mem_mib * MIB,
        replicas,
        tool: tool.into(),
        ..Invocation::default()
    }
}

/// A small random instance whose QUBO has at most `max_vars` variables.
fn small_instance(seed: u64, max_vars: usize) -> PlacementProblem {
    let mut r = Rng::new(seed);
    loop {
        let n_exec = 2 + r.below(2) as usize;
        let n_inv = 2 + r.below(2) as usize;
        let mut execs: Vec<Executor> = (0..n_exec)
            .map(|e| {
                let mut x = exec(
                    &format!("e{e}"),
                    1 + r.below(3) as u32,
                    2 + r.below(4),
                    &format!("r{}", e % 2),
                    &format!("s{e}"),
                );
                if r.below(2) == 0 {
                    x.warm_tools.insert("toolA".into());
                }
                if r.below(2) == 0 {
                    x.blobs.insert("blob1".into());
                }
                x
            })
            .collect();
        execs[0].load_slots = u32::from(execs[0].slots > 1);
        let invs: Vec<Invocation> = (0..n_inv)
            .map(|t| {
                let mut i = inv(
                    &format!("t{t}"),
                    1 + r.below(2) as u32,
                    1 + r.below(2),
                    1 + u32::from(t == 0 && r.below(2) == 0),
                    if t % 2 == 0 { "toolA" } else { "toolB" },
                );
                i.blobs = vec!["blob1".into()];
                if r.below(2) == 0 {
                    i.origin = Some(Location::new("dc1", "r0", "s0"));
                }
                i
            })
            .collect();
        let Ok(p) = PlacementProblem::new(invs, execs, Weights::default()) else {
            continue;
        };
        let Ok((_, layout)) = p.to_qubo() else {
            continue;
        };
        if layout.variables <= max_vars && exact_optimum(&p, 1_000_000).is_some() {
            return p;
        }
    }
}

#[test]
fn distances_follow_the_topology() {
    let a = Location::new("d", "r", "s");
    assert_eq!(a.distance(&Location::new("d", "r", "s")), 0);
    assert_eq!(a.distance(&Location::new("d", "r", "t")), 1);
    assert_eq!(a.distance(&Location::new("d", "q", "s")), 10);
    assert_eq!(a.distance(&Location::new("e", "r", "s")), 100);
}

/// The penalty test of the issue: on small instances, enumerate every
/// state of the QUBO (slack included) and check that the most expensive
/// feasible state still costs less than the cheapest infeasible one, and
/// that feasible states cost exactly their placement's objective.
#[test]
fn every_feasible_state_beats_every_infeasible_one() {
    let mut checked = 0;
    for seed in 0..12 {
        let p = small_instance(seed, 16);
        let (qubo, layout) = p.to_qubo().unwrap();
        let n = layout.variables;
        let mut max_feasible = f64::NEG_INFINITY;
        let mut min_infeasible = f64::INFINITY;
        let mut min_feasible = f64::INFINITY;
        for mask in 0u32..(1 << n) {
            let bits: Vec<u8> = (0..n).map(|i| ((mask >> i) & 1) as u8).collect();
            let e = qubo.energy(&bits);
            if layout.is_feasible(&bits) {
                let a = layout.decode(&bits, p.invocations().len());
                assert!(
                    p.check(&a).is_ok(),
                    "seed {seed}: a feasible QUBO state decodes to an infeasible placement"
                );
                let b = p.breakdown(&a);
                assert!(
                    (b.total - e).abs() < 1e-9 * (1.0 + e.abs()),
                    "seed {seed}: {} vs {e}",
                    b.total
                );
                max_feasible = max_feasible.max(e);
                min_feasible = min_feasible.min(e);
            } else {
                min_infeasible = min_infeasible.min(e);
            }
        }
        assert!(
            max_feasible < min_infeasible,
            "seed {seed}: feasible up to {max_feasible}, infeasible from {min_infeasible}"
        );
        let (_, opt) = exact_optimum(&p, 1_000_000).unwrap();
        assert!(
            (min_feasible - opt).abs() < 1e-9 * (1.0 + opt.abs()),
            "seed {seed}: QUBO optimum {min_feasible} vs enumeration {opt}"
        );
        checked += 1;
    }
    assert_eq!(checked, 12);
}

#[test]
fn structured_annealer_finds_the_exact_optimum_on_small_instances() {
    for seed in 0..20 {
        let p = small_instance(seed + 100, 40);
        let placed = place(
            &p,
            &PlacementParams {
                seed,
                ..PlacementParams::default()
            },
        )
        .unwrap();
        assert!(p.check(&placed.assignment).is_ok());
        let (_, opt) = exact_optimum(&p, 1_000_000).unwrap();
        assert!(
            (placed.energy.objective - opt).abs() < 1e-9 * (1.0 + opt),
            "seed {seed}: {} vs {opt}",
            placed.energy.objective
        );
    }
}

#[test]
fn qubo_solver_gives_feasible_placements() {
    for seed in 0..6 {
        let p = small_instance(seed + 200, 40);
        let placed = place(
            &p,
            &PlacementParams {
                solver: Solver::Qubo,
                sweeps: 300,
                reads: 4,
                seed,
                ..PlacementParams::default()
            },
        )
        .unwrap();
        assert!(p.check(&placed.assignment).is_ok());
        assert_eq!(placed.energy.total, placed.energy.objective);
    }
}

#[test]
fn incremental_state_energy_matches_recomputed() {
    let p = small_instance(7, 40);
    let mut start = Vec::new();
    cheapest_ignoring_capacity(&p, &mut start);
    let mut st = Walk::default();
    st.reset(&p, &start);
    let mut r = Rng::new(3);
    let mut swaps = 0;
    let n = st.exec.len() as u64;
    for _ in 0..400 {
        let c = r.below(n) as usize;
        let (t, from) = (p.copy_invocation[c] as usize, st.exec[c] as usize);
        if r.below(2) == 0 {
            let c2 = r.below(n) as usize;
            let (t2, to) = (p.copy_invocation[c2] as usize, st.exec[c2] as usize);
            if t == t2
                || to == from
                || !p.eligible(t).contains(&to)
                || !p.eligible(t2).contains(&from)
                || st.has_copy_on(&p, t, to, c)
                || st.has_copy_on(&p, t2, from, c2)
            {
                continue;
            }
            let d = st.swap_delta(&p, c, c2);
            st.shift(&p, c, to);
            st.shift(&p, c2, from);
            st.violations += d.1;
            st.energy += d.0 + p.penalty * d.1 as f64;
            swaps += 1;
        } else {
            let el = p.eligible(t);
            let to = el[r.below(el.len() as u64) as usize];
            if to == from || st.has_copy_on(&p, t, to, c) {
                continue;
            }
            let d = st.move_delta(&p, c, to);
            st.relocate(&p, c, to, d);
        }
        let incremental = st.energy;
        let b = p.breakdown(&st.assignment(&p));
        st.recompute(&p);
        assert!(
            (incremental - st.energy).abs() < 1e-6,
            "{incremental} vs {}",
            st.energy
        );
        assert!(
            (b.total - st.energy).abs() < 1e-6,
            "{} vs {}",
            b.total,
            st.energy
        );
    }
    assert!(swaps > 10, "the walk made only {swaps} swaps");
}

#[test]
fn explanation_adds_up() {
    let p = small_instance(3, 40);
    let placed = place(&p, &PlacementParams::default()).unwrap();
    let x = placed.explain(&p);
    let sum = |f: fn(&InvocationLine) -> f64| x.invocations.iter().map(f).sum::<f64>();
    assert!((sum(|l| l.cold_start) - x.energy.cold_start).abs() < 1e-9);
    assert!((sum(|l| l.data) - x.energy.data).abs() < 1e-9);
    assert!((sum(|l| l.topology) - x.energy.topology).abs() < 1e-9);
    let balance: f64 = x.executors.iter().map(|l| l.balance).sum();
    assert!((balance - x.energy.balance).abs() < 1e-9);
    let copies: usize = x.executors.iter().map(|l| l.copies).sum();
    assert_eq!(
        copies,
        p.invocations()
            .iter()
            .map(|t| t.replicas as usize)
            .sum::<usize>()
    );
    assert_eq!(x.energy.total, x.energy.objective);
    let text = x.to_string();
    assert!(text.starts_with("placement: "), "{text}");
    assert!(x.invocations.iter().all(|l| text.contains(&l.id)));
    assert_eq!(
        text.lines().count(),
        4 + x.invocations.len() + x.executors.len()
    );
}

/// A random batch on one to six executors, tight or impossible ones
/// included, with tools, blobs and origins to exercise every cost term.
fn random_batch(r: &mut Rng) -> Result<PlacementProblem, PlacementError> {
    let n_exec = 1 + r.below(6) as usize;
    let execs: Vec<Executor> = (0..n_exec)
        .map(|e| {
            let mut x = exec(
                &format!("e{e}"),
                r.below(6) as u32,
                r.below(8),
                &format!("r{}", r.below(3)),
                &format!("s{}", r.below(4)),
            );
            x.location.datacenter = format!("dc{}", r.below(2));
            x.load_slots = r.below(4) as u32;
            x.load_memory_bytes = r.below(3) * MIB;
            x.failure_domain = format!("fd{}", r.below(3));
            if r.below(2) == 0 {
                x.warm_tools.insert("a".into());
            }
            for _ in 0..r.below(3) {
                x.blobs.insert(format!("b{}", r.below(4)));
            }
            x
        })
        .collect();
    let invs: Vec<Invocation> = (0..r.below(9) as usize)
        .map(|t| {
            let mut i = inv(
                &format!("t{t}"),
                r.below(3) as u32,
                r.below(3),
                1 + r.below(2) as u32,
                if r.below(3) == 0 { "z" } else { "a" },
            );
            i.blobs = (0..r.below(3))
                .map(|_| format!("b{}", r.below(5)))
                .collect();
            if r.below(2) == 0 {
                i.origin = Some(Location::new(
                    format!("dc{}", r.below(3)),
                    format!("r{}", r.below(3)),
                    format!("s{}", r.below(4)),
                ));
            }
            i
        })
        .collect();
    let w = Weights {
        cold_start: r.below(20) as f64,
        data: r.below(3) as f64,
        topology: 0.5,
        balance: r.below(3) as f64,
    };
    PlacementProblem::new(invs, execs, w)
}

/// Random batches, tight or impossible ones included: every answer is a
/// feasible placement or an error, never a panic.
#[test]
fn random_batches_get_feasible_placements_or_errors() {
    let mut r = Rng::new(77);
    let (mut placed, mut refused) = (0, 0);
    for round in 0..150 {
        let Ok(p) = random_batch(&mut r) else {
            refused += 1;
            continue;
        };
        let solver = if round % 5 == 0 {
            Solver::Qubo
        } else {
            Solver::Structured
        };
        match place(
            &p,
            &PlacementParams {
                solver,
                sweeps: 50,
                seed: round,
                ..PlacementParams::default()
            },
        ) {
            Ok(pl) => {
                assert!(
                    p.check(&pl.assignment).is_ok(),
                    "round {round}: {:?}",
                    p.check(&pl.assignment)
                );
                assert_eq!(pl.energy.total, pl.energy.objective, "round {round}");
                placed += 1;
            }
            Err(e) => {
                assert_eq!(e, PlacementError::NoFeasiblePlacement, "round {round}");
                refused += 1;
            }
        }
    }
    // The generator makes both kinds; make sure the test saw both.
    assert!(
        placed > 30 && refused > 10,
        "placed {placed}, refused {refused}"
    );
}

/// The costs, built from interned ids, equal their definition by name:
/// cold start unless the tool is warm, the distance to the nearest holder
/// of each blob the executor lacks (100 if none), the distance from the
/// origin.
#[test]
fn costs_match_their_definition_by_name() {
    let mut r = Rng::new(31);
    let mut pairs = 0;
    for _ in 0..300 {
        let Ok(p) = random_batch(&mut r) else {
            continue;
        };
        let w = &p.weights;
        for (t, i) in p.invocations().iter().enumerate() {
            for &e in p.eligible(t) {
                let x = &p.executors()[e];
                let cold = if x.warm_tools.contains(&i.tool) {
                    0.0
                } else {
                    w.cold_start
                };
                let data: f64 = i
                    .blobs
                    .iter()
                    .filter(|b| !x.blobs.contains(*b))
                    .map(|b| {
                        p.executors()
                            .iter()
                            .filter(|h| h.blobs.contains(b))
                            .map(|h| x.location.distance(&h.location))
                            .min()
                            .map_or(100.0, f64::from)
                    })
                    .sum::<f64>()
                    * w.data;
                let topo = i
                    .origin
                    .as_ref()
                    .map_or(0.0, |o| f64::from(o.distance(&x.location)))
                    * w.topology;
                assert_eq!(p.cost(t, e), cold + data + topo, "{i:?} on {x:?}");
                let (c, d, tp) = p.cost_parts(t, e);
                assert_eq!((c, tp), (cold, topo));
                assert!((d - data).abs() < 1e-9);
                pairs += 1;
            }
        }
    }
    assert!(pairs > 300, "only {pairs} pairs checked");
}

/// A placer reused across batches of different shapes answers exactly as a
/// fresh one: nothing leaks from one batch into the next.
#[test]
fn a_reused_placer_answers_like_a_fresh_one() {
    let params = PlacementParams {
        measure_time: false,
        ..PlacementParams::default()
    };
    let mut placer = Placer::new(params.clone()).unwrap();
    let mut r = Rng::new(8);
    let mut compared = 0;
    for round in 0..200 {
        let p = if round % 10 == 0 {
            // Now and then a large batch, so buffers shrink back afterwards.
            big_batch(round)
        } else {
            match random_batch(&mut r) {
                Ok(p) => p,
                Err(_) => continue,
            }
        };
        let fresh = Placer::new(params.clone())
            .unwrap()
            .place_with_seed(&p, round);
        let reused = placer.place_with_seed(&p, round);
        assert_eq!(fresh, reused, "round {round}");
        compared += 1;
    }
    assert!(compared > 60, "only {compared} batches compared");
}

/// The work of one call is bounded by `move_attempts_max`, whatever the
/// sweeps, with one sweep per read at least.
#[test]
fn the_work_of_one_call_is_bounded() {
    let p = big_batch(3);
    let copies = p.copies() as u64;
    for (budget, reads) in [(1_000, 1), (50_000, 1), (50_000, 3), (0, 2)] {
        let placed = place(
            &p,
            &PlacementParams {
                sweeps: 1_000_000,
                reads,
                move_attempts_max: budget,
                ..PlacementParams::default()
            },
        )
        .unwrap();
        assert!(p.check(&placed.assignment).is_ok());
        let bound = (budget as u64).max(reads as u64 * copies);
        assert!(
            placed.move_attempts > 0 && placed.move_attempts <= bound,
            "budget {budget}, reads {reads}: {} attempts",
            placed.move_attempts
        );
    }
    // The default bound holds for the default parameters too.
    let placed = place(&p, &PlacementParams::default()).unwrap();
    assert!(placed.move_attempts <= MOVE_ATTEMPTS_MAX_DEFAULT as u64);
}

/// Without the small-batch boost a small batch makes at most one attempt
/// per copy per sweep in one read; with it, 8 reads of 64 attempts a sweep.
/// Both place it as well here: one warm executor, room for all.
#[test]
fn a_small_batch_without_the_boost_costs_its_size() {
    let mut execs = vec![
        exec("cold", 8, 64, "r0", "s0"),
        exec("warm", 8, 64, "r0", "s1"),
    ];
    execs[1].warm_tools.insert("t".into());
    let jobs = (0..4)
        .map(|k| inv(&format!("j{k}"), 1, 1, 1, "t"))
        .collect();
    let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
    let sweeps = 10;
    let mut attempts = Vec::new();
    for boost in [false, true] {
        let placed = place(
            &p,
            &PlacementParams {
                sweeps,
                small_batch_boost: boost,
                ..PlacementParams::default()
            },
        )
        .unwrap();
        assert_eq!(placed.assignment, vec![vec![1]; 4], "boost {boost}");
        attempts.push(placed.move_attempts);
    }
    assert!(attempts[0] <= (sweeps * 4) as u64, "{attempts:?}");
    assert!(attempts[1] > (8 * 64) as u64, "{attempts:?}");
}

/// Errors say what failed and what to do about it.
#[test]
fn error_messages_say_what_to_do() {
    let e = || vec![exec("e", 2, 8, "r", "s")];
    let errors = [
        PlacementProblem::new(vec![inv("x", 1, 1, 1, "t")], vec![], Weights::default())
            .unwrap_err(),
        PlacementProblem::new(
            vec![],
            e(),
            Weights {
                balance: f64::NAN,
                ..Weights::default()
            },
        )
        .unwrap_err(),
        PlacementProblem::new(
            (0..3)
                .map(|k| inv(&format!("j{k}"), 1, 1, 1, "t"))
                .collect(),
            e(),
            Weights::default(),
        )
        .unwrap_err(),
        PlacementProblem::new(
            vec![inv("x", 1, 1, 1, "t")],
            vec![exec("zero", 0, 8, "r", "s")],
            Weights::default(),
        )
        .unwrap_err(),
        Placer::new(PlacementParams {
            reads: 0,
            ..PlacementParams::default()
        })
        .unwrap_err(),
    ];
    let expected = [
        "no executors: add at least one executor",
        "weight `balance` is NaN: weights must be finite and non-negative",
        "the batch needs 3 slots but the executors have 2 free: split the batch or add executors",
        "the batch needs 1 slots but the executors have 0 free: split the batch or add executors",
        "reads must be at least 1",
    ];
    for (e, want) in errors.iter().zip(expected) {
        let text = e.to_string();
        assert!(text.contains(want), "`{text}` lacks `{want}`");
    }
}

#[test]
fn warm_tools_and_blobs_attract_invocations() {
    let mut execs = vec![
        exec("cold", 4, 64, "r0", "s0"),
        exec("warm", 4, 64, "r0", "s1"),
    ];
    execs[1].warm_tools.insert("t".into());
    execs[1].blobs.insert("b".into());
    let mut i = inv("x", 1, 1, 1, "t");
    i.blobs = vec!["b".into()];
    let p = PlacementProblem::new(vec![i], execs, Weights::default()).unwrap();
    let placed = place(&p, &PlacementParams::default()).unwrap();
    assert_eq!(placed.assignment, vec![vec![1]]);
    assert_eq!(placed.energy.cold_start, 0.0);
    assert_eq!(placed.energy.data, 0.0);
}

#[test]
fn replicas_go_to_distinct_failure_domains() {
    let mut execs: Vec<Executor> = (0..4)
        .map(|e| exec(&format!("e{e}"), 8, 64, "r0", &format!("s{e}")))
        .collect();
    // Two domains only: {e0, e1} and {e2, e3}; e0 and e1 are warm.
    for (e, x) in execs.iter_mut().enumerate() {
        x.failure_domain = if e < 2 { "A".into() } else { "B".into() };
    }
    execs[0].warm_tools.insert("t".into());
    execs[1].warm_tools.insert("t".into());
    let p = PlacementProblem::new(vec![inv("x", 1, 1, 2, "t")], execs, Weights::default()).unwrap();
    let placed = place(&p, &PlacementParams::default()).unwrap();
    let a = &placed.assignment[0];
    assert_eq!(a.len(), 2);
    assert!(a[0] < 2 && a[1] >= 2, "{a:?}");
}

#[test]
fn bad_inputs_get_errors_not_panics() {
    let e = || vec![exec("e", 2, 8, "r", "s")];
    // Too many pairs is refused before anything is allocated per pair.
    assert!(matches!(
        check_size(PAIRS_MAX / 2 + 1, 2),
        Err(PlacementError::TooLarge { .. })
    ));
    assert!(check_size(PAIRS_MAX / 2, 2).is_ok());
    assert!(matches!(
        check_size(usize::MAX, usize::MAX),
        Err(PlacementError::TooLarge { .. })
    ));
    assert_eq!(
        PlacementProblem::new(vec![inv("x", 1, 1, 1, "t")], vec![], Weights::default())
            .unwrap_err(),
        PlacementError::NoExecutors
    );
    for bad in [f64::NAN, f64::INFINITY, -1.0] {
        let w = Weights {
            data: bad,
            ..Weights::default()
        };
        assert!(matches!(
            PlacementProblem::new(vec![], e(), w),
            Err(PlacementError::BadWeight { name: "data", .. })
        ));
    }
    assert_eq!(
        PlacementProblem::new(vec![inv("x", 1, 1, 0, "t")], e(), Weights::default()).unwrap_err(),
        PlacementError::ZeroReplicas("x".into())
    );
    assert!(matches!(
        PlacementProblem::new(vec![inv("x", 3, 1, 1, "t")], e(), Weights::default()),
        Err(PlacementError::Overcommitted {
            resource: "slots",
            ..
        })
    ));
    assert!(matches!(
        PlacementProblem::new(vec![inv("x", 1, 9, 1, "t")], e(), Weights::default()),
        Err(PlacementError::Overcommitted {
            resource: "memory bytes",
            ..
        })
    ));
    // Fits in total, but not on one executor.
    let two = vec![exec("a", 2, 8, "r", "s"), exec("b", 2, 8, "r", "t")];
    assert!(matches!(
        PlacementProblem::new(
            vec![inv("x", 3, 1, 1, "t")],
            two.clone(),
            Weights::default()
        ),
        Err(PlacementError::Unplaceable { .. })
    ));
    // Two replicas but one failure domain.
    let mut same = two.clone();
    for x in &mut same {
        x.failure_domain = "one".into();
    }
    assert!(matches!(
        PlacementProblem::new(vec![inv("x", 1, 1, 2, "t")], same, Weights::default()),
        Err(PlacementError::Unplaceable { .. })
    ));
    // Total slots suffice (6 of 6) but 2-slot jobs cannot pack into 3+3.
    let three = vec![exec("a", 3, 64, "r", "s"), exec("b", 3, 64, "r", "t")];
    let jobs: Vec<Invocation> = (0..3)
        .map(|k| inv(&format!("j{k}"), 2, 1, 1, "t"))
        .collect();
    let p = PlacementProblem::new(jobs, three, Weights::default()).unwrap();
    for solver in [Solver::Structured, Solver::Qubo] {
        assert_eq!(
            place(
                &p,
                &PlacementParams {
                    solver,
                    ..PlacementParams::default()
                }
            )
            .unwrap_err(),
            PlacementError::NoFeasiblePlacement
        );
    }
    assert!(matches!(
        place(
            &p,
            &PlacementParams {
                reads: 0,
                ..PlacementParams::default()
            }
        ),
        Err(PlacementError::Params(_))
    ));
}

#[test]
fn empty_batch_and_zero_capacity_executors_are_well_defined() {
    let execs = vec![exec("zero", 0, 0, "r", "s"), exec("ok", 4, 64, "r", "t")];
    let p = PlacementProblem::new(vec![], execs.clone(), Weights::default()).unwrap();
    let placed = place(&p, &PlacementParams::default()).unwrap();
    assert!(placed.assignment.is_empty());
    assert_eq!(placed.outcome, PlacementOutcome::Greedy);
    let jobs: Vec<Invocation> = (0..4)
        .map(|k| inv(&format!("j{k}"), 1, 1, 1, "t"))
        .collect();
    let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
    assert!(p.eligible(0) == [1]);
    let placed = place(&p, &PlacementParams::default()).unwrap();
    assert!(placed.assignment.iter().all(|a| a == &[1]));
    assert!(PlacementProblem::new(
        vec![inv("x", 1, 1, 1, "t")],
        vec![exec("zero", 0, 8, "r", "s")],
        Weights::default()
    )
    .is_err());
}

#[test]
fn repair_fixes_an_overloaded_assignment() {
    let execs: Vec<Executor> = (0..3)
        .map(|e| exec(&format!("e{e}"), 2, 64, "r0", &format!("s{e}")))
        .collect();
    let jobs: Vec<Invocation> = (0..5)
        .map(|k| inv(&format!("j{k}"), 1, 1, 1, "t"))
        .collect();
    let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
    let crowded = vec![vec![0]; 5];
    assert!(p.check(&crowded).is_err());
    let fixed = repair(&p, &crowded).unwrap();
    assert!(p.check(&fixed).is_ok(), "{fixed:?}");
    // Missing and duplicated copies are fixed too.
    let odd = vec![vec![], vec![0, 1], vec![2], vec![2], vec![1]];
    assert!(p.check(&repair(&p, &odd).unwrap()).is_ok());
}

#[test]
fn memory_units_are_conservative() {
    // Capacities that are not multiples of a small unit: 10 GiB + 1 byte.
    let mut execs = vec![exec("a", 64, 0, "r", "s"), exec("b", 64, 0, "r", "t")];
    execs[0].memory_bytes = (10 << 30) + 1;
    execs[1].memory_bytes = (10 << 30) + 7;
    let jobs: Vec<Invocation> = (0..20)
        .map(|k| Invocation {
            memory_bytes: (1 << 30) - 3,
            ..inv(&format!("j{k}"), 1, 0, 1, "t")
        })
        .collect();
    let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
    assert!(p.memory_unit_bytes() > 1);
    let placed = place(&p, &PlacementParams::default()).unwrap();
    assert!(p.check(&placed.assignment).is_ok());
}

/// 256 invocations (one in sixteen with two replicas) on 16 executors;
/// `seed` shifts the executors' loads and warm tools.
fn big_batch(seed: u64) -> PlacementProblem {
    let shift = seed as usize;
    let execs: Vec<Executor> = (0..16)
        .map(|e| {
            let mut x = exec(
                &format!("e{e}"),
                40,
                4096,
                &format!("r{}", e / 4),
                &format!("s{e}"),
            );
            x.warm_tools.insert(format!("tool{}", (e + shift) % 5));
            x.load_slots = ((e + shift) % 3) as u32;
            x
        })
        .collect();
    let jobs: Vec<Invocation> = (0..256)
        .map(|k| {
            let mut i = inv(
                &format!("j{k}"),
                1 + (k % 3) as u32,
                64,
                1 + u32::from(k % 16 == 0),
                &format!("tool{}", k % 7),
            );
            i.blobs = vec![format!("blob{}", k % 11)];
            i
        })
        .collect();
    PlacementProblem::new(jobs, execs, Weights::default()).unwrap()
}

#[test]
fn same_seed_same_placement_and_big_batches_are_feasible() {
    let p = big_batch(0);
    let params = PlacementParams {
        seed: 5,
        ..PlacementParams::default()
    };
    let a = place(&p, &params).unwrap();
    let b = place(&p, &params).unwrap();
    assert_eq!(a.assignment, b.assignment);
    assert!(p.check(&a.assignment).is_ok());
    let g = greedy(&p).unwrap();
    assert!(a.energy.objective <= p.breakdown(&g).objective);
}
