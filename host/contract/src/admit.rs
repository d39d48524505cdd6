//! Admission: Z3 proves, before anything runs, that a contract's bounds fit
//! the budget a capability grants, or finds a counterexample.
//!
//! # What "the contract's bounds fit the budget" means
//!
//! Let *allowed inputs* be the input-side figures (`input_bytes`,
//! `args_bytes`) within the capability's limits that satisfy the contract's
//! preconditions. A contract lets a run on such an input end with any
//! figures its postconditions accept, so the run may legitimately use up to
//! the largest `fuel` (or `output_bytes`, `memory_bytes`) the postconditions
//! permit for that input. The contract fits the budget when, for every
//! resource the postconditions mention,
//!
//! > for all allowed inputs, and all run figures that the postconditions
//! > accept for that input, the resource is ≤ the budget;
//!
//! equivalently, the largest value the contract permits over all allowed
//! inputs is within the budget. Z3 checks the negation (some allowed input
//! and accepted figures exceed a budget) for unsatisfiability. When it is
//! satisfiable, the counterexample reports the *worst* case: the largest
//! value of the resource the contract permits, at the smallest input that
//! reaches it.
//!
//! A resource that no postcondition mentions is not bounded by the contract
//! at all; admission cannot say anything about it and leaves it to the
//! sandbox's run-time limit ([`Proof::unchecked`]). A resource that is
//! mentioned but bounded only from below (say `fuel >= 10`) is unbounded
//! above, and admission denies it. Every variable ranges over `u64`, so
//! "unbounded" shows up as a need of `u64::MAX`.
//!
//! If no allowed input admits any run the contract accepts, admission is
//! denied too ([`AdmissionError::NoAdmissibleRun`]): such an invocation
//! could only end in a contract violation.

use std::fmt;

use z3::ast::{Bool, Int};
use z3::{Optimize, SatResult, Solver};

use crate::ast::Var;
use crate::contract::Contract;
use crate::number::thousands;
use crate::solve::{context, core_positions, track, Encoding, SolverError};

/// The budget an invocation may spend: the minimum of what it asks and what
/// its capability allows. `None` for an input-side limit means the
/// capability does not limit it (it still cannot exceed `u64::MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub max_input_bytes: Option<u64>,
    pub max_args_bytes: Option<u64>,
    pub fuel: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
}

/// A resource whose contract bound admission checks against the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Fuel,
    OutputBytes,
    MemoryBytes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Fuel, Resource::OutputBytes, Resource::MemoryBytes];

    /// The contract variable that measures this resource.
    pub fn var(self) -> Var {
        match self {
            Resource::Fuel => Var::Fuel,
            Resource::OutputBytes => Var::OutputBytes,
            Resource::MemoryBytes => Var::MemoryBytes,
        }
    }

    /// The budget's limit for this resource.
    pub fn limit(self, budget: &Budget) -> u64 {
        match self {
            Resource::Fuel => budget.fuel,
            Resource::OutputBytes => budget.output_bytes,
            Resource::MemoryBytes => budget.memory_bytes,
        }
    }

    pub fn name(self) -> &'static str {
        self.var().name()
    }
}

/// Z3's proof that a contract fits a budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    pub contract_digest: [u8; 32],
    pub budget: Budget,
    /// Resources whose contract bound was proved to fit the budget.
    pub checked: Vec<Resource>,
    /// Resources the contract does not mention: only the sandbox's
    /// run-time limit applies to them.
    pub unchecked: Vec<Resource>,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |rs: &[Resource]| rs.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ");
        if self.checked.is_empty() {
            write!(f, "the contract bounds no resource")?;
        } else {
            write!(
                f,
                "the contract's bounds on {} fit the budget",
                names(&self.checked)
            )?;
        }
        if !self.unchecked.is_empty() {
            write!(
                f,
                "; {} not bounded by the contract (enforced at run time)",
                names(&self.unchecked)
            )?;
        }
        Ok(())
    }
}

/// A concrete input on which the contract allows a run beyond the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    pub resource: Resource,
    pub input_bytes: u64,
    pub args_bytes: u64,
    /// Whether the contract mentions `args_bytes` (and so the message).
    pub mentions_args: bool,
    /// The largest value of the resource the contract permits for that
    /// input (`u64::MAX`: no upper bound).
    pub needed: u64,
    /// The budget's limit for the resource.
    pub limit: u64,
    /// The postconditions that mention the resource, described.
    pub clauses: Vec<String>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input of {} bytes", self.input_bytes)?;
        if self.mentions_args {
            write!(f, " and arguments of {} bytes", self.args_bytes)?;
        }
        if self.needed == u64::MAX {
            write!(
                f,
                " may need unbounded {} (the contract sets no upper bound)",
                self.resource.name()
            )?;
        } else {
            write!(
                f,
                " may need {} {}",
                self.resource.name(),
                thousands(u128::from(self.needed))
            )?;
        }
        write!(f, " > the token's {}", thousands(u128::from(self.limit)))
    }
}

/// Why an invocation is not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The contract lets some allowed input exceed the budget.
    #[error("{0}")]
    Counterexample(Counterexample),
    /// No input the capability allows admits a run the contract accepts.
    #[error("no input the token allows can meet the contract: {} cannot all hold at once", .reasons.join(", "))]
    NoAdmissibleRun { reasons: Vec<String> },
    #[error(transparent)]
    Solver(#[from] SolverError),
}

/// Proves that `contract` fits `budget` for every input the budget allows,
/// or returns a counterexample; see the module docs for the exact meaning.
/// Each call builds a fresh Z3 context; [`crate::ProofCache`] remembers
/// answers.
pub fn admit(contract: &Contract, budget: &Budget) -> Result<Proof, AdmissionError> {
    const QUESTION: &str = "whether the contract fits the budget";
    let ctx = context();
    let enc = Encoding::new(&ctx);
    let solver = Solver::new(&ctx);
    for bound in enc.domain() {
        solver.assert(&bound);
    }

    // Everything an admitted run satisfies, tracked so that an empty set of
    // runs can be explained by naming clauses and token limits.
    let mut labels = Vec::new();
    let mut reasons = Vec::new();
    let input_limits = [
        (Var::InputBytes, budget.max_input_bytes, "input-bytes"),
        (Var::ArgsBytes, budget.max_args_bytes, "args-bytes"),
    ];
    let mut run_space: Vec<Bool<'_>> = Vec::new();
    for (var, limit, caveat) in input_limits {
        if let Some(limit) = limit {
            let bound = enc.var(var).le(&Int::from_u64(&ctx, limit));
            track(&solver, &mut labels, &bound);
            reasons.push(format!("the token's {caveat} <= {limit}"));
            run_space.push(bound);
        }
    }
    for clause in contract.clauses() {
        let formula = enc.formula(&clause.formula);
        track(&solver, &mut labels, &formula);
        reasons.push(clause.describe());
        run_space.push(formula);
    }
    match solver.check() {
        SatResult::Sat => {}
        SatResult::Unsat => {
            let reasons = core_positions(&solver, &labels)
                .into_iter()
                .map(|i| reasons[i].clone())
                .collect();
            return Err(AdmissionError::NoAdmissibleRun { reasons });
        }
        SatResult::Unknown => return Err(SolverError::unknown(QUESTION, &solver).into()),
    }

    let post_vars = contract.post_vars();
    let (checked, unchecked): (Vec<Resource>, Vec<Resource>) = Resource::ALL
        .into_iter()
        .partition(|r| post_vars.contains(r.var()));
    let proof = Proof {
        contract_digest: contract.digest(),
        budget: *budget,
        checked: checked.clone(),
        unchecked,
    };
    if checked.is_empty() {
        return Ok(proof);
    }

    let exceeds = |r: Resource| enc.var(r.var()).gt(&Int::from_u64(&ctx, r.limit(budget)));
    let any_exceeds: Vec<Bool<'_>> = checked.iter().map(|r| exceeds(*r)).collect();
    solver.assert(&Bool::or(&ctx, &any_exceeds.iter().collect::<Vec<_>>()));
    let witness = match solver.check() {
        SatResult::Unsat => return Ok(proof),
        SatResult::Unknown => return Err(SolverError::unknown(QUESTION, &solver).into()),
        SatResult::Sat => {
            let model = solver
                .get_model()
                .ok_or_else(|| SolverError::new(QUESTION, "no model"))?;
            enc.figures(&model, QUESTION)?
        }
    };
    let resource = checked
        .iter()
        .copied()
        .find(|r| witness.get(r.var()) > r.limit(budget))
        .ok_or_else(|| SolverError::new(QUESTION, "the model exceeds no budget"))?;

    // The worst case for that resource: maximize it over all allowed runs,
    // then take the smallest input that reaches the maximum. If the
    // optimizer cannot decide, the solver's witness is still a valid
    // counterexample.
    let worst = {
        let optimize = Optimize::new(&ctx);
        for bound in enc.domain() {
            optimize.assert(&bound);
        }
        for formula in &run_space {
            optimize.assert(formula);
        }
        optimize.assert(&exceeds(resource));
        optimize.maximize(enc.var(resource.var()));
        optimize.minimize(enc.var(Var::InputBytes));
        optimize.minimize(enc.var(Var::ArgsBytes));
        match optimize.check(&[]) {
            SatResult::Sat => optimize
                .get_model()
                .and_then(|model| enc.figures(&model, QUESTION).ok())
                .unwrap_or(witness),
            _ => witness,
        }
    };
    let clauses = contract
        .postconditions()
        .filter(|c| c.vars.contains(resource.var()))
        .map(|c| c.describe())
        .collect();
    Err(AdmissionError::Counterexample(Counterexample {
        resource,
        input_bytes: worst.input_bytes,
        args_bytes: worst.args_bytes,
        mentions_args: contract
            .clauses()
            .iter()
            .any(|c| c.vars.contains(Var::ArgsBytes)),
        needed: worst.get(resource.var()),
        limit: resource.limit(budget),
        clauses,
    }))
}
