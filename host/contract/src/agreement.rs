//! Cross-checks of the three readers of the typed tree on random contracts:
//! the concrete evaluator and the Z3 encoding must give every clause the
//! same truth value on every assignment, and the printer's canonical text
//! must parse back to the same tree.
//!
//! Seeded, so a failure replays. `CONTRACT_AGREEMENT_CASES` sets the number
//! of random clauses (default 300); `CONTRACT_AGREEMENT_SEED` the seed.

use z3::ast::{Ast, Bool, Int};
use z3::SatResult;

use crate::ast::Var;
use crate::contract::Contract;
use crate::eval::{eval_formula, Figures};
use crate::solve::{context, Encoding};

/// xorshift64*: tiny, deterministic, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn literal(&mut self) -> u64 {
        match self.below(10) {
            0 => u64::MAX - self.below(3),
            1 => self.next() >> self.below(64),
            2 => 1 << self.below(64),
            _ => self.below(100),
        }
    }

    fn figure(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.next(),
            3 => self.next() >> 32,
            _ => self.below(200),
        }
    }
}

fn literal_text(rng: &mut Rng) -> String {
    let value = rng.literal();
    if rng.below(3) == 0 {
        // Separators anywhere after the first digit.
        let digits = value.to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && rng.below(4) == 0 {
                out.push('_');
            }
            out.push(ch);
        }
        out
    } else {
        value.to_string()
    }
}

fn term(rng: &mut Rng, depth: u32) -> String {
    let leaf = depth == 0 || rng.below(3) == 0;
    if leaf {
        return if rng.below(2) == 0 {
            Var::ALL[rng.below(5) as usize].name().to_string()
        } else {
            literal_text(rng)
        };
    }
    let d = depth - 1;
    match rng.below(7) {
        0 => format!("-{}", term(rng, d)),
        1 => format!("({} + {})", term(rng, d), term(rng, d)),
        2 => format!("({} - {})", term(rng, d), term(rng, d)),
        3 => format!("({} * {})", literal_text(rng), term(rng, d)),
        4 => format!(
            "({} * ({} - {}))",
            term(rng, d),
            literal_text(rng),
            literal_text(rng)
        ),
        5 => format!(
            "(if {} then {} else {})",
            formula(rng, d),
            term(rng, d),
            term(rng, d)
        ),
        _ => format!("{} + {}", term(rng, d), term(rng, d)),
    }
}

fn formula(rng: &mut Rng, depth: u32) -> String {
    const OPS: [&str; 6] = ["<=", "<", ">=", ">", "==", "!="];
    if depth == 0 || rng.below(4) == 0 {
        return match rng.below(12) {
            0 => "true".to_string(),
            1 => "false".to_string(),
            _ => format!(
                "{} {} {}",
                term(rng, depth.min(2)),
                OPS[rng.below(6) as usize],
                term(rng, depth.min(2))
            ),
        };
    }
    let d = depth - 1;
    match rng.below(6) {
        0 => format!("not ({})", formula(rng, d)),
        1 => format!("({} and {})", formula(rng, d), formula(rng, d)),
        2 => format!("({} or {})", formula(rng, d), formula(rng, d)),
        3 => format!("({} => {})", formula(rng, d), formula(rng, d)),
        4 => format!(
            "(if {} then {} else {})",
            formula(rng, d),
            formula(rng, d),
            formula(rng, d)
        ),
        _ => format!(
            "{} {} {}",
            term(rng, d),
            OPS[rng.below(6) as usize],
            term(rng, d)
        ),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn evaluator_z3_and_printer_agree_on_random_clauses() {
    let cases = env_number("CONTRACT_AGREEMENT_CASES", 300);
    let seed = env_number("CONTRACT_AGREEMENT_SEED", 0x5eed_c0de);
    let mut rng = Rng(seed.max(1));
    let ctx = context();
    let enc = Encoding::new(&ctx);
    let (mut parsed, mut rejected, mut checks) = (0, 0, 0);
    for case in 0..cases {
        let text = formula(&mut rng, 4);
        let contract = match Contract::parse(&text) {
            Ok(contract) => contract,
            Err(err) => {
                // The generator writes valid syntax; only the overflow
                // check may reject a clause (huge literals multiplied).
                assert!(
                    err.message.contains("128-bit range"),
                    "case {case} (seed {seed}): {text:?} was rejected: {err}"
                );
                rejected += 1;
                continue;
            }
        };
        parsed += 1;
        let clause = &contract.clauses()[0];
        let again = Contract::parse(contract.canonical_text())
            .unwrap_or_else(|e| panic!("canonical text of {text:?} does not parse: {e}"));
        assert_eq!(
            again.clauses()[0].formula,
            clause.formula,
            "case {case}: printing and parsing {text:?} changed the tree"
        );

        let encoded = enc.formula(&clause.formula);
        // A solver per clause: one solver would keep every clause it ever
        // saw and slow down as the test goes on. The push puts it in
        // incremental mode, fast for many small checks.
        let solver = z3::Solver::new(&ctx);
        solver.push();
        let mut any_true = false;
        for _ in 0..8 {
            let mut figures = Figures::default();
            for var in Var::ALL {
                figures.set(var, rng.figure());
            }
            let expected = eval_formula(&clause.formula, &figures)
                .unwrap_or_else(|e| panic!("case {case}: {text:?} overflowed on {figures:?}: {e}"));
            let fixed: Vec<Bool<'_>> = Var::ALL
                .iter()
                .map(|v| enc.var(*v)._eq(&Int::from_u64(&ctx, figures.get(*v))))
                .collect();
            let mut with = fixed.clone();
            with.push(encoded.clone());
            let mut without = fixed;
            without.push(encoded.not());
            let holds = solver.check_assumptions(&with);
            let fails = solver.check_assumptions(&without);
            checks += 2;
            let z3_says = match (holds, fails) {
                (SatResult::Sat, SatResult::Unsat) => true,
                (SatResult::Unsat, SatResult::Sat) => false,
                other => panic!("case {case}: Z3 answered {other:?} for {text:?} on {figures:?}"),
            };
            any_true |= expected;
            assert_eq!(
                z3_says, expected,
                "case {case} (seed {seed}): evaluator and Z3 disagree on {text:?} with {figures:?}"
            );
        }

        // A satisfiable clause's example run must satisfy it concretely;
        // an unsatisfiable one cannot have held on any assignment above.
        match contract.check_satisfiable() {
            Ok(run) => assert!(
                eval_formula(&clause.formula, &run).unwrap(),
                "case {case}: Z3's example run {run:?} does not satisfy {text:?}"
            ),
            Err(err) => assert!(
                !any_true,
                "case {case}: {text:?} held on some figures but Z3 says: {err}"
            ),
        }
    }
    assert!(
        parsed >= cases * 3 / 4,
        "too few clauses parsed: {parsed} of {cases} ({rejected} rejected)"
    );
    assert!(checks > 0);
}

#[test]
fn the_parser_never_panics_on_random_text() {
    const PIECES: [&str; 34] = [
        "fuel",
        "input_bytes",
        "args_bytes",
        "output_bytes",
        "memory_bytes",
        "label:",
        "1",
        "0",
        "18446744073709551615",
        "18446744073709551616",
        "1_000",
        "+",
        "-",
        "*",
        "(",
        ")",
        "<=",
        "<",
        "==",
        "!=",
        "=",
        "=>",
        "and",
        "or",
        "not",
        "if",
        "then",
        "else",
        "true",
        ";",
        "\n",
        "#c\n",
        "é",
        " ",
    ];
    let cases = env_number("CONTRACT_PARSER_FUZZ_CASES", 5_000);
    let mut rng = Rng(0xf022_ba55);
    for _ in 0..cases {
        let mut text = String::new();
        for _ in 0..rng.below(24) {
            text.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
            if rng.below(2) == 0 {
                text.push(' ');
            }
        }
        match Contract::parse(&text) {
            Ok(contract) => {
                let again = Contract::parse(contract.canonical_text())
                    .unwrap_or_else(|e| panic!("canonical text of {text:?} does not parse: {e}"));
                assert_eq!(again.canonical_text(), contract.canonical_text());
            }
            Err(err) => {
                assert!(err.line >= 1 && err.column >= 1, "{text:?}: {err:?}");
                assert!(err.excerpt.contains('^'), "{text:?}: {err:?}");
            }
        }
    }
    // A two-byte character straddling the size limit (it starts at every
    // odd offset, and the limit is even).
    let huge = format!("a{}", "é".repeat(crate::syntax::CONTRACT_TEXT_BYTES_MAX));
    assert!(!huge.is_char_boundary(crate::syntax::CONTRACT_TEXT_BYTES_MAX));
    let err = Contract::parse(&huge).expect_err("too large");
    assert!(err.message.contains("the limit is"), "{}", err.message);
}
