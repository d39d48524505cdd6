//! Satisfiability, admission, pre/postconditions, attenuation and the
//! proof cache.

use voidbox_contract::{
    admit, check_attenuation, check_post, AdmissionError, AttenuationError, Budget, Contract,
    Figures, Limit, LimitOp, LimitRange, ProofCache, Resource, SatisfiabilityError, Var,
    ViolationReason,
};

fn contract(text: &str) -> Contract {
    Contract::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse:\n{e}"))
}

fn budget(max_input_bytes: Option<u64>, fuel: u64) -> Budget {
    Budget {
        max_input_bytes,
        max_args_bytes: None,
        fuel,
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
    }
}

const ISSUE_CONTRACT: &str =
    "cost: fuel <= 400 * input_bytes + 2_000_000\nout: output_bytes <= input_bytes + 64";

// ---- satisfiability -------------------------------------------------------

#[test]
fn a_satisfiable_contract_gives_an_example_run() {
    let c = contract("input_bytes >= 10\nfuel >= 3 * input_bytes + 1\nfuel <= 100");
    let run = c.check_satisfiable().expect("satisfiable");
    assert!(run.input_bytes >= 10);
    assert!(run.fuel > 3 * run.input_bytes && run.fuel <= 100);
    // The example run really meets the contract, by the evaluator too.
    c.check_pre(run.input_bytes, run.args_bytes).unwrap();
    c.check_post(&run).unwrap();
}

#[test]
fn an_unsatisfiable_contract_names_the_conflicting_clauses() {
    let c = contract("small: input_bytes <= 10\nok: memory_bytes <= 5\ncost: fuel >= 50 * input_bytes\ncap: fuel < 20\nbig: input_bytes >= 1");
    let err = c.check_satisfiable().expect_err("unsatisfiable");
    let SatisfiabilityError::Unsatisfiable { clauses } = &err else {
        panic!("{err}")
    };
    // `ok` and `small` are not part of the conflict.
    assert_eq!(
        clauses,
        &[
            "`cost` (fuel >= 50 * input_bytes)",
            "`cap` (fuel < 20)",
            "`big` (input_bytes >= 1)"
        ]
    );
    assert_eq!(
        err.to_string(),
        "no run can meet this contract: `cost` (fuel >= 50 * input_bytes), `cap` (fuel < 20), `big` (input_bytes >= 1) cannot all hold at once"
    );
}

#[test]
fn figures_outside_u64_do_not_make_a_contract_satisfiable() {
    // Only a negative fuel or one beyond u64::MAX would satisfy these.
    let err = contract("fuel < 0").check_satisfiable().unwrap_err();
    assert!(
        matches!(err, SatisfiabilityError::Unsatisfiable { .. }),
        "{err}"
    );
    let err = contract("fuel > 18_446_744_073_709_551_615")
        .check_satisfiable()
        .unwrap_err();
    assert!(
        matches!(err, SatisfiabilityError::Unsatisfiable { .. }),
        "{err}"
    );
    let err = contract("false").check_satisfiable().unwrap_err();
    assert_eq!(
        err.to_string(),
        "no run can meet this contract: clause 1 (line 1) (false) cannot all hold at once"
    );
}

// ---- admission ------------------------------------------------------------

#[test]
fn the_issue_counterexample() {
    let err = admit(
        &contract(ISSUE_CONTRACT),
        &budget(Some(1_048_576), 100_000_000),
    )
    .unwrap_err();
    let AdmissionError::Counterexample(cx) = &err else {
        panic!("{err}")
    };
    assert_eq!(cx.resource, Resource::Fuel);
    assert_eq!(cx.input_bytes, 1_048_576);
    assert_eq!(cx.needed, 421_430_400);
    assert!(cx.exact && !cx.unbounded);
    assert_eq!(cx.limit, 100_000_000);
    assert_eq!(cx.clauses, ["`cost` (fuel <= 400 * input_bytes + 2000000)"]);
    assert_eq!(
        err.to_string(),
        "input of 1048576 bytes may need fuel 421,430,400 > the budget's 100,000,000"
    );
    assert_eq!(
        cx.detail(),
        "input of 1048576 bytes may need fuel 421,430,400 > the budget's 100,000,000; bound by `cost` (fuel <= 400 * input_bytes + 2000000)"
    );
}

#[test]
fn a_contract_within_budget_is_proved() {
    let c = contract(ISSUE_CONTRACT);
    // 400 * 200_000 + 2_000_000 = 82_000_000 <= 100_000_000; output 200_064 <= 1 MiB.
    let proof = admit(&c, &budget(Some(200_000), 100_000_000)).expect("fits");
    assert_eq!(proof.checked, [Resource::Fuel, Resource::OutputBytes]);
    assert_eq!(proof.unchecked, [Resource::MemoryBytes]);
    assert_eq!(proof.contract_digest, c.digest());
    // The boundary: exactly the budget fits, one byte more of input does not.
    let exact = 245_000; // 400 * 245_000 + 2_000_000 = 100_000_000
    admit(&c, &budget(Some(exact), 100_000_000)).expect("the bound equals the budget");
    let err = admit(&c, &budget(Some(exact + 1), 100_000_000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input of 245001 bytes may need fuel 100,000,400 > the budget's 100,000,000"
    );
}

#[test]
fn output_and_memory_counterexamples() {
    let c = contract(ISSUE_CONTRACT);
    let mut b = budget(Some(2_000_000), u64::MAX);
    let err = admit(&c, &b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input of 2000000 bytes may need output_bytes 2,000,064 > the budget's 1,048,576"
    );
    b.output_bytes = 4 << 20;
    admit(&c, &b).expect("fits once output is large enough");

    let c = contract("memory_bytes <= if input_bytes < 1_000 then 65_536 else 16_777_216");
    let mut b = budget(Some(999), 0);
    b.memory_bytes = 65_536;
    admit(&c, &b).expect("small inputs take the small branch");
    b.max_input_bytes = Some(5_000);
    let err = admit(&c, &b).unwrap_err();
    // The worst case is reached first at input 1000.
    assert_eq!(
        err.to_string(),
        "input of 1000 bytes may need memory_bytes 16,777,216 > the budget's 65,536"
    );
}

#[test]
fn preconditions_narrow_the_inputs_admission_considers() {
    let c = contract("pre: input_bytes <= 1_000\ncost: fuel <= 1_000 * input_bytes");
    // Without any token limit on input, the precondition alone bounds it.
    admit(&c, &budget(None, 1_000_000)).expect("fits for every input meeting the precondition");
    let err = admit(&c, &budget(None, 999_999)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input of 1000 bytes may need fuel 1,000,000 > the budget's 999,999"
    );
}

#[test]
fn an_unlimited_input_meets_a_growing_bound() {
    let err = admit(&contract(ISSUE_CONTRACT), &budget(None, 100_000_000)).unwrap_err();
    let AdmissionError::Counterexample(cx) = &err else {
        panic!("{err}")
    };
    // The worst case is the largest input; the figure is what the contract
    // allows there, even beyond what a u64 fuel counter can hold.
    assert_eq!(cx.input_bytes, u64::MAX);
    assert_eq!(cx.needed, 400 * u128::from(u64::MAX) + 2_000_000);
    assert!(!cx.unbounded);
}

#[test]
fn a_resource_bounded_only_from_below_is_unbounded() {
    let err = admit(
        &contract("fuel >= 10 * input_bytes"),
        &budget(Some(10), 1_000),
    )
    .unwrap_err();
    let AdmissionError::Counterexample(cx) = &err else {
        panic!("{err}")
    };
    assert!(cx.unbounded && !cx.exact);
    // Still a concrete counterexample: a run the contract accepts, beyond
    // the budget.
    assert!(cx.input_bytes <= 10 && cx.needed > 1_000);
    assert!(cx.needed >= 10 * u128::from(cx.input_bytes));
    let message = err.to_string();
    assert!(message.starts_with("input of "), "{message}");
    assert!(
        message.ends_with(" > the budget's 1,000 (the contract sets no upper bound on fuel)"),
        "{message}"
    );
}

#[test]
fn unmentioned_resources_are_left_to_the_sandbox() {
    let proof =
        admit(&contract("input_bytes <= 10"), &budget(Some(5), 0)).expect("nothing to bound");
    assert!(proof.checked.is_empty());
    assert_eq!(proof.unchecked.len(), 3);
    assert_eq!(
        proof.to_string(),
        "the contract bounds no resource; fuel, output_bytes, memory_bytes not bounded by the contract (enforced at run time)"
    );
}

#[test]
fn arguments_appear_in_the_counterexample_when_the_contract_uses_them() {
    let c = contract("fuel <= 10 * input_bytes + 100 * args_bytes");
    let b = Budget {
        max_input_bytes: Some(100),
        max_args_bytes: Some(50),
        fuel: 5_000,
        memory_bytes: 0,
        output_bytes: 0,
    };
    let err = admit(&c, &b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input of 100 bytes and arguments of 50 bytes may need fuel 6,000 > the budget's 5,000"
    );
}

#[test]
fn no_allowed_input_meets_the_contract() {
    let c = contract("big: input_bytes >= 1_000\ncost: fuel <= input_bytes");
    let err = admit(&c, &budget(Some(10), 1_000_000)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no input the token allows can meet the contract: the token's input-bytes <= 10, `big` (input_bytes >= 1000) cannot all hold at once"
    );
    // Inputs the token allows, for which the contract allows no run.
    let c = contract("work: fuel >= 100 * input_bytes\ncap: fuel <= 500");
    let err = admit(&c, &budget(Some(1_000), 1_000_000));
    assert!(err.is_ok(), "inputs 0..=5 still have runs: {err:?}");
    let c = contract("work: fuel >= 100 * input_bytes\ncap: fuel <= 500\nbig: input_bytes >= 6");
    let err = admit(&c, &budget(Some(1_000), 1_000_000)).unwrap_err();
    assert!(
        matches!(err, AdmissionError::NoAdmissibleRun { .. }),
        "{err}"
    );
}

#[test]
fn admission_agrees_with_a_brute_force_maximum() {
    // For small input ranges, compute the largest fuel the contract allows
    // by enumerating inputs with the evaluator, and compare with Z3.
    let c = contract(
        "pre: input_bytes != 7\ncost: fuel <= if input_bytes < 5 then 3 * input_bytes + 40 else 100 - 2 * input_bytes",
    );
    let cost = &c.clauses()[1].formula;
    let max_fuel = |max_input: u64| -> u64 {
        (0..=max_input)
            .filter(|&i| c.check_pre(i, 0).is_ok())
            .map(|i| {
                // The largest fuel meeting `cost` for this input: scan down
                // from a value above every bound in this contract.
                (0..=200u64)
                    .rev()
                    .find(|&fuel| {
                        let figures = Figures {
                            input_bytes: i,
                            fuel,
                            ..Figures::default()
                        };
                        voidbox_contract::eval::eval_formula(cost, &figures).unwrap()
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap()
    };
    for max_input in 0..12 {
        let worst = max_fuel(max_input);
        admit(&c, &budget(Some(max_input), worst)).expect("the maximum fits");
        if worst > 0 {
            let err = admit(&c, &budget(Some(max_input), worst - 1)).unwrap_err();
            let AdmissionError::Counterexample(cx) = err else {
                panic!()
            };
            assert_eq!(cx.needed, u128::from(worst), "max_input {max_input}");
        }
    }
}

// ---- pre- and postconditions on real figures --------------------------------

#[test]
fn postcondition_violation_names_the_clause() {
    let c = contract(ISSUE_CONTRACT);
    let ok = Figures {
        input_bytes: 100,
        output_bytes: 164,
        fuel: 2_040_000,
        ..Figures::default()
    };
    check_post(&c, &ok).expect("within bounds");

    let over = Figures {
        output_bytes: 165,
        ..ok
    };
    let v = check_post(&c, &over).unwrap_err();
    assert_eq!(v.label.as_deref(), Some("out"));
    assert_eq!(v.text, "output_bytes <= input_bytes + 64");
    assert_eq!(v.reason, ViolationReason::DoesNotHold);
    assert_eq!(
        v.to_string(),
        "postcondition `out` (output_bytes <= input_bytes + 64) does not hold with input_bytes = 100, output_bytes = 165"
    );

    let hungry = Figures {
        fuel: 2_040_001,
        ..ok
    };
    let v = check_post(&c, &hungry).unwrap_err();
    assert_eq!(
        v.to_string(),
        "postcondition `cost` (fuel <= 400 * input_bytes + 2000000) does not hold with input_bytes = 100, fuel = 2,040,001"
    );
}

#[test]
fn unlabelled_violations_name_the_position() {
    let c = contract("fuel <= 10\n\nmemory_bytes < 5");
    let v = check_post(
        &c,
        &Figures {
            memory_bytes: 5,
            ..Figures::default()
        },
    )
    .unwrap_err();
    assert_eq!(v.label, None);
    assert_eq!(v.clause, "clause 2 (line 3)");
}

#[test]
fn preconditions_are_checked_before_the_run() {
    let c = contract("pre: input_bytes <= 1_000 and args_bytes < 10\ncost: fuel <= 5");
    c.check_pre(1_000, 9).unwrap();
    let v = c.check_pre(1_001, 0).unwrap_err();
    assert_eq!(
        v.to_string(),
        "precondition `pre` (input_bytes <= 1000 and args_bytes < 10) does not hold with input_bytes = 1,001, args_bytes = 0"
    );
    // check_post looks at postconditions only.
    check_post(
        &c,
        &Figures {
            input_bytes: 5_000,
            fuel: 5,
            ..Figures::default()
        },
    )
    .unwrap();
}

#[test]
fn extreme_figures_evaluate_without_overflow() {
    // Largest coefficients the parser accepts, on the largest figures.
    let c = contract(
        "fuel <= 9223372036854775807 * input_bytes - 9223372036854775807 * args_bytes + memory_bytes",
    );
    let max = Figures {
        input_bytes: u64::MAX,
        args_bytes: u64::MAX,
        output_bytes: u64::MAX,
        fuel: u64::MAX,
        memory_bytes: u64::MAX,
    };
    check_post(&c, &max).expect("u64::MAX <= u64::MAX");
    let v = check_post(
        &c,
        &Figures {
            input_bytes: 0,
            ..max
        },
    )
    .unwrap_err();
    assert_eq!(v.reason, ViolationReason::DoesNotHold);
}

// ---- attenuation ---------------------------------------------------------------

fn le(name: &str, value: u64) -> Limit {
    Limit::new(name, LimitOp::Le, value)
}

#[test]
fn a_narrower_child_is_accepted_with_its_ranges() {
    let parent = [le("fuel", 1_000_000), le("input-bytes", 4096)];
    let child = [
        le("fuel", 1_000_000),
        le("input-bytes", 4096),
        le("fuel", 50_000),
        Limit::new("uses", LimitOp::Eq, 1),
    ];
    let ok = check_attenuation(&parent, &child).expect("narrower");
    assert_eq!(
        ok.ranges,
        [
            LimitRange {
                name: "fuel".into(),
                min: 0,
                max: 50_000
            },
            LimitRange {
                name: "input-bytes".into(),
                min: 0,
                max: 4096
            },
            LimitRange {
                name: "uses".into(),
                min: 1,
                max: 1
            },
        ]
    );
}

#[test]
fn a_wider_child_is_refused_with_a_value_the_parent_denies() {
    let parent = [le("fuel", 1_000)];
    let child = [le("fuel", 5_000)];
    let err = check_attenuation(&parent, &child).unwrap_err();
    let AttenuationError::Widens {
        name,
        value,
        parent_limit,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(name, "fuel");
    assert!(*value > 1_000 && *value <= 5_000, "{value}");
    assert_eq!(parent_limit, "fuel <= 1000");
    // A child that drops a limit widens too.
    let err = check_attenuation(&[le("fuel", 10), le("uses", 1)], &[le("fuel", 10)]).unwrap_err();
    assert!(
        err.to_string().starts_with("the child allows uses = "),
        "{err}"
    );
    assert!(
        err.to_string().ends_with(
            ", which the parent's `uses <= 1` denies; a child can only narrow its parent"
        ),
        "{err}"
    );
}

#[test]
fn a_child_that_allows_nothing_is_refused() {
    let parent = [le("fuel", 1_000)];
    let child = [
        le("fuel", 1_000),
        Limit::new("fuel", LimitOp::Gt, 2_000),
        le("uses", 3),
    ];
    let err = check_attenuation(&parent, &child).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the child's limits allow nothing: `fuel <= 1000`, `fuel > 2000` cannot all hold at once"
    );
    let err = check_attenuation(&[], &[Limit::new("expires", LimitOp::Lt, 0)]).unwrap_err();
    assert!(
        matches!(err, AttenuationError::Unsatisfiable { .. }),
        "{err}"
    );
}

// ---- the proof cache -------------------------------------------------------------

#[test]
fn the_cache_answers_repeats_and_stays_bounded() {
    let c = contract(ISSUE_CONTRACT);
    let respelled = contract(
        "cost: fuel <= input_bytes * 400 + 2000000\nout: output_bytes <= input_bytes + 64",
    );
    let mut cache = ProofCache::new(2);
    let b1 = budget(Some(1_000), 100_000_000);
    let b2 = budget(Some(1_048_576), 100_000_000);
    let b3 = budget(Some(10), 100_000_000);
    let first = cache.admit(&c, &b1).expect("fits");
    assert_eq!(
        cache.admit(&respelled, &b1),
        Ok(first.clone()),
        "same digest, same budget"
    );
    assert_eq!(cache.stats(), (1, 1));
    let denied = cache.admit(&c, &b2).unwrap_err();
    assert_eq!(cache.admit(&c, &b2), Err(denied), "denials are cached too");
    assert_eq!(cache.stats(), (2, 2));
    cache.admit(&c, &b3).expect("fits");
    assert_eq!(cache.len(), 2, "bounded");
    // b1 was the oldest and is gone: asking again is a miss (a Z3 run at
    // 1,024 bytes, which with the success at 10 brackets 1,000).
    assert_eq!(cache.admit(&c, &b1), Ok(first));
    assert_eq!(cache.stats(), (2, 4));
    assert_eq!(cache.capacity(), 2);
}

#[test]
fn cached_answers_for_other_input_sizes_are_the_solvers_answers() {
    // Admitted from 100 to 1,000 bytes: below, no input meets the floor;
    // above, the fuel bound exceeds the budget.
    let floor = contract("floor: input_bytes >= 100\ncost: fuel <= 1000 * input_bytes");
    let sizes = [
        150, 7, 99, 100, 1_000, 1_001, 20, 640, 999, 512, 4_096, 300, 101, 0, 2_048, 1_000_000,
        130_000, 245_000, 245_001, 64,
    ];
    for (c, fuel) in [(contract(ISSUE_CONTRACT), 100_000_000), (floor, 1_000_000)] {
        for capacity in [1_024, 3] {
            let mut cache = ProofCache::new(capacity);
            for n in sizes {
                let b = budget(Some(n), fuel);
                assert_eq!(
                    cache.admit(&c, &b),
                    admit(&c, &b),
                    "{n} bytes, capacity {capacity}"
                );
            }
        }
    }
}

#[test]
fn growing_inputs_cost_one_solver_run_per_doubling() {
    let c = contract(ISSUE_CONTRACT);
    let mut cache = ProofCache::new(64);
    for n in 20..=60 {
        let proof = cache
            .admit(&c, &budget(Some(n), 100_000_000))
            .expect("fits");
        assert_eq!(proof.budget.max_input_bytes, Some(n));
    }
    // Z3 ran at 20 (exact: nothing below it yet), 32 (for 21) and 64 (for
    // 33); every other size was bracketed by two successes.
    assert_eq!(cache.stats(), (38, 3));
}

#[test]
fn the_linked_z3_reports_its_version() {
    let version = voidbox_contract::z3_version();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 4, "{version}");
    assert_eq!(
        parts[0], 4,
        "Z3 4.x is what the pinned bindings were built for: {version}"
    );
}

#[test]
fn variables_are_listed_in_a_fixed_order() {
    let names: Vec<_> = Var::ALL.iter().map(|v| v.name()).collect();
    assert_eq!(
        names,
        [
            "input_bytes",
            "args_bytes",
            "output_bytes",
            "fuel",
            "memory_bytes"
        ]
    );
}

/// A seeded property check: whatever check_attenuation says about random
/// parent and child limit sets, concrete evaluation on many assignments
/// must agree. `CONTRACT_ATTENUATION_CASES` sets the number of cases.
#[test]
fn attenuation_verdicts_agree_with_concrete_evaluation() {
    let cases: u64 = std::env::var("CONTRACT_ATTENUATION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut state: u64 = 0x00a7_7e4a_7e5e_ed01;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    const NAMES: [&str; 3] = ["fuel", "uses", "input-bytes"];
    const OPS: [LimitOp; 5] = [
        LimitOp::Le,
        LimitOp::Lt,
        LimitOp::Ge,
        LimitOp::Gt,
        LimitOp::Eq,
    ];
    let mut random_limits = |count: u64| -> Vec<Limit> {
        (0..count)
            .map(|_| {
                let op = OPS[next(5) as usize];
                // Mostly upper bounds, as real caveats are.
                let op = if next(3) == 0 { op } else { LimitOp::Le };
                Limit::new(NAMES[next(3) as usize], op, next(20))
            })
            .collect()
    };
    let allowed = |limits: &[Limit], values: &[u64; 3]| {
        limits.iter().all(|l| {
            let i = NAMES.iter().position(|n| *n == l.name).unwrap();
            l.allows(values[i])
        })
    };
    let (mut accepted, mut widened, mut empty) = (0, 0, 0);
    for case in 0..cases {
        let parent = random_limits(1 + case % 3);
        let mut child = if case % 2 == 0 {
            parent.clone()
        } else {
            Vec::new()
        };
        child.extend(random_limits(1 + case % 2));
        let verdict = check_attenuation(&parent, &child);
        // Every assignment of small values (all limits use values < 20).
        let grid = (0..22u64)
            .flat_map(|a| (0..22u64).flat_map(move |b| (0..22u64).map(move |c| [a, b, c])));
        match &verdict {
            Ok(_) => {
                accepted += 1;
                assert!(
                    grid.clone().any(|v| allowed(&child, &v)),
                    "case {case}: accepted but allows nothing"
                );
                for v in grid {
                    assert!(
                        !allowed(&child, &v) || allowed(&parent, &v),
                        "case {case}: child {child:?} allows {v:?}, parent {parent:?} denies it"
                    );
                }
            }
            Err(AttenuationError::Unsatisfiable { .. }) => {
                empty += 1;
                assert!(
                    grid.clone().all(|v| !allowed(&child, &v)),
                    "case {case}: {verdict:?}"
                );
            }
            Err(AttenuationError::Widens {
                name,
                value,
                parent_limit,
            }) => {
                widened += 1;
                let limit = parent
                    .iter()
                    .find(|l| l.to_string() == *parent_limit)
                    .unwrap();
                assert_eq!(&limit.name, name);
                assert!(!limit.allows(*value), "case {case}: {verdict:?}");
            }
            Err(other) => panic!("case {case}: {other}"),
        }
    }
    // The generator must exercise every verdict.
    assert!(
        accepted > 0 && widened > 0 && empty > 0,
        "{accepted} {widened} {empty}"
    );
}

#[test]
fn admission_runs_on_many_threads_at_once() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Contract>();
    shareable::<ProofCache>();
    let c = std::sync::Arc::new(contract(ISSUE_CONTRACT));
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                // Thread i alternates a fitting and a denied budget.
                (0..5u64)
                    .map(|j| {
                        admit(
                            &c,
                            &budget(
                                Some(if (i + j) % 2 == 0 { 1_000 } else { 1_048_576 }),
                                100_000_000,
                            ),
                        )
                        .is_ok()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let answers = handle.join().expect("no panic");
        let expected: Vec<bool> = (0..5).map(|j| (i + j) % 2 == 0).collect();
        assert_eq!(answers, expected, "thread {i}");
    }
}
