//! [`Contract`]: a parsed, checked contract with its canonical text and
//! digest, and the concrete checks before and after a run.

use std::fmt;

use crate::ast::{self, Clause, ClauseKind, Var, VarSet};
use crate::eval::{eval_formula, EvalError, Figures};
use crate::number::thousands;
use crate::syntax::{self, ParseError};

/// A tool's contract: clauses over `input_bytes`, `args_bytes`,
/// `output_bytes`, `fuel` and `memory_bytes` in linear integer arithmetic.
///
/// The meaning of a contract: *for every invocation whose input satisfies
/// the preconditions, the run's figures satisfy the postconditions.*
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contract {
    clauses: Vec<Clause>,
    canonical: String,
    digest: [u8; 32],
}

impl Contract {
    /// Parses and checks a contract (types, linearity, no overflow, unique
    /// labels). Satisfiability is a separate, Z3-backed step:
    /// [`Contract::check_satisfiable`].
    pub fn parse(text: &str) -> Result<Contract, ParseError> {
        let raw = syntax::parse(text)?;
        let clauses = ast::check_clauses(text, raw)?;
        let canonical = canonical_text(&clauses);
        let digest = *blake3::hash(canonical.as_bytes()).as_bytes();
        Ok(Contract {
            clauses,
            canonical,
            digest,
        })
    }

    /// The clauses, in source order.
    pub fn clauses(&self) -> &[Clause] {
        &self.clauses
    }

    /// The preconditions (clauses over the input side only).
    pub fn preconditions(&self) -> impl Iterator<Item = &Clause> {
        self.clauses
            .iter()
            .filter(|c| c.kind == ClauseKind::Precondition)
    }

    /// The postconditions (clauses that mention the run's figures).
    pub fn postconditions(&self) -> impl Iterator<Item = &Clause> {
        self.clauses
            .iter()
            .filter(|c| c.kind == ClauseKind::Postcondition)
    }

    /// The variables the postconditions mention.
    pub fn post_vars(&self) -> VarSet {
        let mut set = VarSet::default();
        for clause in self.postconditions() {
            set = set.union(clause.vars);
        }
        set
    }

    /// The canonical text: one clause a line, normalized spacing and
    /// parentheses, constant factors folded. Parsing it gives the same
    /// contract back.
    pub fn canonical_text(&self) -> &str {
        &self.canonical
    }

    /// blake3 of the canonical text: two spellings of one contract share it.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The digest written `blake3:<64 hex>`.
    pub fn digest_string(&self) -> String {
        let mut out = String::with_capacity(7 + 64);
        out.push_str("blake3:");
        for byte in self.digest {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// The contract in plain words, one clause a line, for `tool inspect`:
    /// "precondition `small`: input_bytes <= 16777216".
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for clause in &self.clauses {
            let kind = match clause.kind {
                ClauseKind::Precondition => "precondition",
                ClauseKind::Postcondition => "postcondition",
            };
            out.push_str(&format!("{kind} {}: {}\n", clause.name(), clause.text()));
        }
        out
    }

    /// Checks the preconditions on an invocation's input side before it
    /// runs. An input that fails them is outside what the tool promises
    /// anything about, so the host refuses to run it.
    pub fn check_pre(&self, input_bytes: u64, args_bytes: u64) -> Result<(), Violation> {
        let figures = Figures {
            input_bytes,
            args_bytes,
            ..Figures::default()
        };
        check_clauses(self.preconditions(), &figures)
    }

    /// Checks the postconditions on the real figures of a run (output
    /// bytes, fuel used, peak memory). The first clause that does not hold
    /// is the violation.
    pub fn check_post(&self, figures: &Figures) -> Result<(), Violation> {
        check_clauses(self.postconditions(), figures)
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// Checks a contract's postconditions on the real figures of a run; see
/// [`Contract::check_post`].
pub fn check_post(contract: &Contract, figures: &Figures) -> Result<(), Violation> {
    contract.check_post(figures)
}

fn canonical_text(clauses: &[Clause]) -> String {
    let mut out = String::new();
    for clause in clauses {
        out.push_str(&clause.to_string());
        out.push('\n');
    }
    out
}

fn check_clauses<'c>(
    clauses: impl Iterator<Item = &'c Clause>,
    figures: &Figures,
) -> Result<(), Violation> {
    for clause in clauses {
        let reason = match eval_formula(&clause.formula, figures) {
            Ok(true) => continue,
            Ok(false) => ViolationReason::DoesNotHold,
            Err(EvalError::Overflow) => ViolationReason::Overflow,
        };
        return Err(Violation {
            label: clause.label.clone(),
            clause: clause.name(),
            text: clause.text(),
            kind: clause.kind,
            reason,
            values: clause.vars.iter().map(|v| (v, figures.get(v))).collect(),
        });
    }
    Ok(())
}

/// Why a clause failed on real figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationReason {
    /// The clause evaluated to false.
    DoesNotHold,
    /// Evaluating it overflowed; the host fails closed as for a false clause.
    Overflow,
}

/// A clause that failed on real figures: which one and on what values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Violation {
    /// The clause's label, if it has one.
    pub label: Option<String>,
    /// How to name the clause: its label in backticks, or its position.
    pub clause: String,
    /// The clause's canonical text.
    pub text: String,
    pub kind: ClauseKind,
    pub reason: ViolationReason,
    /// The figures the clause mentions, with their values.
    pub values: Vec<(Var, u64)>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ClauseKind::Precondition => "precondition",
            ClauseKind::Postcondition => "postcondition",
        };
        let verb = match self.reason {
            ViolationReason::DoesNotHold => "does not hold",
            ViolationReason::Overflow => "cannot be evaluated (arithmetic overflow)",
        };
        write!(f, "{what} {} ({}) {verb}", self.clause, self.text)?;
        if !self.values.is_empty() {
            let values: Vec<String> = self
                .values
                .iter()
                .map(|(var, value)| format!("{} = {}", var.name(), thousands(u128::from(*value))))
                .collect();
            write!(f, " with {}", values.join(", "))?;
        }
        Ok(())
    }
}
