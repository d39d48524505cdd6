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
use std::time::{Duration, Instant};

use z3::ast::Ast;
use z3::ast::{Bool, Int};
use z3::{SatResult, Solver};

use crate::ast::Var;
use crate::contract::Contract;
use crate::number::thousands;
use crate::solve::{
    context, explain_unsat, fast_solver, int, Encoding, SolverError, SOLVER_TIMEOUT_MS,
};

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
    /// input; when `unbounded`, just one value it permits above the budget.
    pub needed: u128,
    /// The contract sets no upper bound on the resource.
    pub unbounded: bool,
    /// `needed` is the proven largest value. False when the contract is
    /// unbounded or the search ran out of time: `needed` is then one value
    /// the contract permits (still a valid counterexample).
    pub exact: bool,
    /// The budget's limit for the resource.
    pub limit: u64,
    /// The postconditions that mention the resource, described.
    pub clauses: Vec<String>,
}

impl Counterexample {
    /// The sentence of `Display` followed by the clauses that bound the
    /// resource, for messages that must name the failing clause:
    /// "input of 1048576 bytes may need fuel 421,430,400 > the budget's
    /// 100,000,000; bound by `cost` (fuel <= 400 * input_bytes + 2000000)".
    pub fn detail(&self) -> String {
        if self.clauses.is_empty() {
            self.to_string()
        } else {
            format!("{self}; bound by {}", self.clauses.join(", "))
        }
    }
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input of {} bytes", self.input_bytes)?;
        if self.mentions_args {
            write!(f, " and arguments of {} bytes", self.args_bytes)?;
        }
        write!(
            f,
            " may need {} {} > the budget's {}",
            self.resource.name(),
            thousands(self.needed),
            thousands(u128::from(self.limit))
        )?;
        if self.unbounded {
            write!(
                f,
                " (the contract sets no upper bound on {})",
                self.resource.name()
            )?;
        }
        Ok(())
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
    let solver = fast_solver(&ctx);
    let domain = enc.domain();
    for bound in &domain {
        solver.assert(bound);
    }

    // Everything an admitted run satisfies: the token's input limits and
    // every clause. If nothing satisfies it, name the culprits.
    let mut run_space: Vec<Bool<'_>> = Vec::new();
    let mut reasons = Vec::new();
    let input_limits = [
        (Var::InputBytes, budget.max_input_bytes, "input-bytes"),
        (Var::ArgsBytes, budget.max_args_bytes, "args-bytes"),
    ];
    for (var, limit, caveat) in input_limits {
        if let Some(limit) = limit {
            run_space.push(enc.var(var).le(&Int::from_u64(&ctx, limit)));
            reasons.push(format!("the token's {caveat} <= {limit}"));
        }
    }
    for clause in contract.clauses() {
        run_space.push(enc.formula(&clause.formula));
        reasons.push(clause.describe());
    }
    for formula in &run_space {
        solver.assert(formula);
    }
    match solver.check() {
        SatResult::Sat => {}
        SatResult::Unsat => {
            let reasons = explain_unsat(&ctx, &domain, &run_space, QUESTION)?
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
    solver.push();
    solver.assert(&Bool::or(&ctx, &any_exceeds.iter().collect::<Vec<_>>()));
    match solver.check() {
        SatResult::Unsat => return Ok(proof),
        SatResult::Unknown => return Err(SolverError::unknown(QUESTION, &solver).into()),
        SatResult::Sat => solver.pop(1),
    }

    // Denied. Report the first resource, in a fixed order, that can exceed
    // its budget, so that the message does not depend on the solver's
    // choice of model.
    let mut resource = None;
    for r in &checked {
        solver.push();
        solver.assert(&exceeds(*r));
        let answer = solver.check();
        solver.pop(1);
        match answer {
            SatResult::Sat => {
                resource = Some(*r);
                break;
            }
            SatResult::Unsat => {}
            SatResult::Unknown => return Err(SolverError::unknown(QUESTION, &solver).into()),
        }
    }
    let resource = resource
        .ok_or_else(|| SolverError::new(QUESTION, "no single resource exceeds its budget"))?;
    let worst = worst_case(&enc, &run_space, resource, &exceeds(resource))?;
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
        needed: worst.needed,
        unbounded: worst.unbounded,
        exact: worst.exact,
        limit: resource.limit(budget),
        clauses,
    }))
}

struct WorstCase {
    input_bytes: u64,
    args_bytes: u64,
    needed: u128,
    unbounded: bool,
    exact: bool,
}

/// The largest value of `resource` the contract permits over all allowed
/// runs that exceed the budget, at the smallest input reaching it. The
/// resource's own `u64` cap is lifted here so that the figure shows what
/// the contract itself allows. If the contract has no upper bound, a
/// concrete run beyond the budget is still reported, flagged unbounded.
///
/// Z3 4.8's `Optimize` takes seconds on these problems (the `u64` bounds
/// make its search slow), so the extremes are found with plain solver
/// checks instead: a few model-improving steps, then bisection.
fn worst_case<'ctx>(
    enc: &Encoding<'ctx>,
    run_space: &[Bool<'ctx>],
    resource: Resource,
    exceeds: &Bool<'ctx>,
) -> Result<WorstCase, SolverError> {
    let deadline = Instant::now() + Duration::from_millis(SOLVER_TIMEOUT_MS);
    let ctx = enc.ctx();
    let target = enc.var(resource.var());
    let zero = Int::from_u64(ctx, 0);
    let max = Int::from_u64(ctx, u64::MAX);
    // The default solver, made incremental by a push before its first
    // check: its models tend to sit at a vertex of the run space (often the
    // extreme already), and later checks reuse what earlier ones learned.
    let solver = Solver::new(ctx);
    solver.push();
    for var in Var::ALL {
        solver.assert(&enc.var(var).ge(&zero));
        if var != resource.var() {
            solver.assert(&enc.var(var).le(&max));
        }
    }
    for formula in run_space {
        solver.assert(formula);
    }
    solver.assert(exceeds);

    // Every bound a contract can state on a resource is a term, and the
    // parser keeps terms within i128, so a run above i128::MAX means the
    // contract has no upper bound at all.
    let ceiling = i128::MAX;
    let start = model_value(&solver, target)?;
    solver.push();
    solver.assert(&target.gt(&int(ctx, ceiling)));
    let unbounded = match solver.check() {
        SatResult::Sat => true,
        SatResult::Unsat => false,
        SatResult::Unknown => return Err(SolverError::unknown(QUESTION_WORST, &solver)),
    };
    solver.pop(1);
    let (needed, exact) = if unbounded {
        (start, false)
    } else {
        extremum(&solver, target, start, ceiling, Direction::Up, deadline)?
    };
    solver.assert(&target._eq(&int(ctx, needed)));
    let input = enc.var(Var::InputBytes);
    let start = model_value(&solver, input)?;
    let (input_bytes, _) = extremum(&solver, input, start, 0, Direction::Down, deadline)?;
    solver.assert(&input._eq(&int(ctx, input_bytes)));
    let args = enc.var(Var::ArgsBytes);
    let start = model_value(&solver, args)?;
    let (args_bytes, _) = extremum(&solver, args, start, 0, Direction::Down, deadline)?;
    let to_u64 = |v: i128| {
        u64::try_from(v).map_err(|_| SolverError::new(QUESTION_WORST, "an input figure beyond u64"))
    };
    Ok(WorstCase {
        input_bytes: to_u64(input_bytes)?,
        args_bytes: to_u64(args_bytes)?,
        needed: u128::try_from(needed)
            .map_err(|_| SolverError::new(QUESTION_WORST, "a negative figure"))?,
        unbounded,
        exact,
    })
}

const QUESTION_WORST: &str = "the worst case of the contract";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Checks the solver's assertions and reads `target` from the model.
fn model_value<'ctx>(solver: &Solver<'ctx>, target: &Int<'ctx>) -> Result<i128, SolverError> {
    match solver.check() {
        SatResult::Sat => read_value(solver, target),
        SatResult::Unsat => Err(SolverError::new(
            QUESTION_WORST,
            "the run space became empty",
        )),
        SatResult::Unknown => Err(SolverError::unknown(QUESTION_WORST, solver)),
    }
}

/// Reads `target` from the model of the last satisfiable check.
fn read_value<'ctx>(solver: &Solver<'ctx>, target: &Int<'ctx>) -> Result<i128, SolverError> {
    solver
        .get_model()
        .and_then(|m| m.eval(target, true))
        .and_then(|v| v.to_string().parse::<i128>().ok())
        .ok_or_else(|| SolverError::new(QUESTION_WORST, "no integer value in the model"))
}

/// The largest (`Up`) or smallest (`Down`) value of `target` under the
/// solver's assertions, given an achievable `start` and a `limit` no
/// solution goes beyond. The first probes ask for any better value (the
/// solver's models usually jump straight to the extreme); after that the
/// step doubles until a probe fails (the limit may be far away, like
/// `i128::MAX`), and then the remaining range is bisected, so the number
/// of checks stays logarithmic in the extreme. Past `deadline` the search
/// stops and returns the best value so far, flagged as not exact (each
/// check has its own time limit, but a hostile contract could make many
/// slow ones).
fn extremum<'ctx>(
    solver: &Solver<'ctx>,
    target: &Int<'ctx>,
    start: i128,
    limit: i128,
    direction: Direction,
    deadline: Instant,
) -> Result<(i128, bool), SolverError> {
    const GREEDY_PROBES: u32 = 4;
    let ctx = solver.get_context();
    // `best` is achievable; nothing lies beyond `bound`.
    let (mut best, mut bound) = (start, limit);
    let mut probes = 0;
    let mut galloping = true;
    while best != bound {
        if Instant::now() >= deadline {
            return Ok((best, false));
        }
        let gap = match direction {
            Direction::Up => bound - best,
            Direction::Down => best - bound,
        };
        let step = if probes < GREEDY_PROBES {
            1
        } else if galloping {
            best.abs().max(1).min(gap)
        } else {
            gap - gap / 2
        };
        let probe = match direction {
            Direction::Up => best + step,
            Direction::Down => best - step,
        };
        let condition = match direction {
            Direction::Up => target.ge(&int(ctx, probe)),
            Direction::Down => target.le(&int(ctx, probe)),
        };
        probes += 1;
        match solver.check_assumptions(std::slice::from_ref(&condition)) {
            SatResult::Sat => best = read_value(solver, target)?,
            SatResult::Unsat => {
                if probes > GREEDY_PROBES {
                    galloping = false;
                }
                bound = match direction {
                    Direction::Up => probe - 1,
                    Direction::Down => probe + 1,
                }
            }
            SatResult::Unknown => return Err(SolverError::unknown(QUESTION_WORST, solver)),
        }
    }
    Ok((best, true))
}
