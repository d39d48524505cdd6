//! The Z3 encoding of the typed tree, and the satisfiability check.
//!
//! Every check builds a fresh Z3 context: contexts are cheap next to the
//! solving, they keep checks independent of each other, and nothing Z3
//! owns outlives a call. Variables are Z3 integers bounded to
//! `0 ..= u64::MAX`, the same domain the evaluator sees, so the two agree
//! on every assignment the host can produce.

use std::time::Duration;
use z3::ast::{Ast, Bool, Int};

use z3::{Config, Context, Model, SatResult, Solver, Tactic};

use crate::ast::{Formula, Term, Var};
use crate::contract::Contract;
use crate::eval::Figures;

/// How long Z3 may think about one check before the host gives up and
/// denies. Linear integer arithmetic over a handful of variables is decided
/// in milliseconds; the limit only stops a pathological contract from
/// holding an admission for long.
pub const SOLVER_TIMEOUT_MS: u64 = 5_000;

/// Z3 could not decide a question (time limit or an internal reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Z3 could not decide {question} ({reason}); simplify the contract (the solver stops after {SOLVER_TIMEOUT_MS} ms)")]
pub struct SolverError {
    pub question: String,
    pub reason: String,
}

impl SolverError {
    pub(crate) fn new(question: &str, reason: impl Into<String>) -> SolverError {
        SolverError {
            question: question.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unknown(question: &str, solver: &Solver<'_>) -> SolverError {
        let reason = solver
            .get_reason_unknown()
            .unwrap_or_else(|| "unknown".to_string());
        SolverError::new(question, reason)
    }
}

/// A contract that no run can meet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SatisfiabilityError {
    #[error("no run can meet this contract: {} cannot all hold at once", .clauses.join(", "))]
    Unsatisfiable {
        /// The clauses that conflict (an unsat core: named and with text).
        clauses: Vec<String>,
    },
    #[error(transparent)]
    Solver(#[from] SolverError),
}

/// The version of the Z3 library linked at run time, like `4.8.12.0`, for
/// version reports and benchmark records.
pub fn z3_version() -> String {
    let (mut major, mut minor, mut build, mut revision) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: Z3_get_version only writes the four integers it is given
    // pointers to, and needs no context.
    unsafe { z3_sys::Z3_get_version(&mut major, &mut minor, &mut build, &mut revision) };
    format!("{major}.{minor}.{build}.{revision}")
}

pub(crate) fn context() -> Context {
    let mut config = Config::new();
    config.set_model_generation(true);
    config.set_timeout_msec(SOLVER_TIMEOUT_MS);
    Context::new(&config)
}

/// The Z3 terms for one contract's variables in one context.
pub(crate) struct Encoding<'ctx> {
    ctx: &'ctx Context,
    vars: Vec<Int<'ctx>>,
}

impl<'ctx> Encoding<'ctx> {
    pub(crate) fn new(ctx: &'ctx Context) -> Encoding<'ctx> {
        let vars = Var::ALL
            .iter()
            .map(|v| Int::new_const(ctx, v.name()))
            .collect();
        Encoding { ctx, vars }
    }

    pub(crate) fn ctx(&self) -> &'ctx Context {
        self.ctx
    }

    pub(crate) fn var(&self, var: Var) -> &Int<'ctx> {
        &self.vars[var.index()]
    }

    pub(crate) fn int(&self, value: i128) -> Int<'ctx> {
        int(self.ctx, value)
    }

    /// `0 <= v <= u64::MAX` for every variable.
    pub(crate) fn domain(&self) -> Vec<Bool<'ctx>> {
        let zero = Int::from_u64(self.ctx, 0);
        let max = Int::from_u64(self.ctx, u64::MAX);
        self.vars
            .iter()
            .flat_map(|v| [v.ge(&zero), v.le(&max)])
            .collect()
    }

    pub(crate) fn term(&self, term: &Term) -> Int<'ctx> {
        match term {
            Term::Const(value) => self.int(*value),
            Term::Var(var) => self.var(*var).clone(),
            Term::Neg(inner) => self.term(inner).unary_minus(),
            Term::Add(lhs, rhs) => Int::add(self.ctx, &[&self.term(lhs), &self.term(rhs)]),
            Term::Sub(lhs, rhs) => Int::sub(self.ctx, &[&self.term(lhs), &self.term(rhs)]),
            Term::Scale(coefficient, inner) => {
                Int::mul(self.ctx, &[&self.int(*coefficient), &self.term(inner)])
            }
            Term::Ite(cond, then, otherwise) => self
                .formula(cond)
                .ite(&self.term(then), &self.term(otherwise)),
        }
    }

    pub(crate) fn formula(&self, formula: &Formula) -> Bool<'ctx> {
        match formula {
            Formula::Const(value) => Bool::from_bool(self.ctx, *value),
            Formula::Cmp(op, lhs, rhs) => {
                let (l, r) = (self.term(lhs), self.term(rhs));
                match op {
                    crate::ast::CmpOp::Le => l.le(&r),
                    crate::ast::CmpOp::Lt => l.lt(&r),
                    crate::ast::CmpOp::Ge => l.ge(&r),
                    crate::ast::CmpOp::Gt => l.gt(&r),
                    crate::ast::CmpOp::Eq => l._eq(&r),
                    crate::ast::CmpOp::Ne => l._eq(&r).not(),
                }
            }
            Formula::Not(inner) => self.formula(inner).not(),
            Formula::And(lhs, rhs) => {
                Bool::and(self.ctx, &[&self.formula(lhs), &self.formula(rhs)])
            }
            Formula::Or(lhs, rhs) => Bool::or(self.ctx, &[&self.formula(lhs), &self.formula(rhs)]),
            Formula::Implies(lhs, rhs) => self.formula(lhs).implies(&self.formula(rhs)),
            Formula::Ite(cond, then, otherwise) => self
                .formula(cond)
                .ite(&self.formula(then), &self.formula(otherwise)),
        }
    }

    /// The figures of a model, or an error when Z3 gave a value outside
    /// the domain (which the domain constraints rule out).
    pub(crate) fn figures(
        &self,
        model: &Model<'ctx>,
        question: &str,
    ) -> Result<Figures, SolverError> {
        let mut figures = Figures::default();
        for var in Var::ALL {
            let value = model
                .eval(self.var(var), true)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| {
                    SolverError::new(
                        question,
                        format!("no u64 value for {} in the model", var.name()),
                    )
                })?;
            figures.set(var, value);
        }
        Ok(figures)
    }
}

pub(crate) fn int(ctx: &Context, value: i128) -> Int<'_> {
    match i64::try_from(value) {
        Ok(small) => Int::from_i64(ctx, small),
        // Z3 reads any decimal numeral; only a bug could make this fail.
        Err(_) => Int::from_str(ctx, &value.to_string())
            .unwrap_or_else(|| panic!("Z3 rejected the numeral {value}")),
    }
}

/// A solver for the checks on the hot path: Z3's SMT core without the
/// default preprocessing. On Debian's Z3 4.8.12 the default solver spends
/// 10 to 30 ms probing and preprocessing even tiny problems (its first
/// check), while the bare core decides them in well under a millisecond.
/// It cannot give unsat cores; [`explain_unsat`] uses the default solver
/// for that, on the failure path only.
pub(crate) fn fast_solver(ctx: &Context) -> Solver<'_> {
    Tactic::new(ctx, "smt")
        .try_for(Duration::from_millis(SOLVER_TIMEOUT_MS))
        .solver()
}

/// Which of `items` conflict (an unsat core, as positions in `items`),
/// given `background` facts that are not reported. Used after a fast check
/// found the conjunction unsatisfiable.
pub(crate) fn explain_unsat<'ctx>(
    ctx: &'ctx Context,
    background: &[Bool<'ctx>],
    items: &[Bool<'ctx>],
    question: &str,
) -> Result<Vec<usize>, SolverError> {
    let solver = Solver::new(ctx);
    for fact in background {
        solver.assert(fact);
    }
    let labels: Vec<Bool<'ctx>> = (0..items.len())
        .map(|i| Bool::new_const(ctx, format!("item{i}")))
        .collect();
    for (item, label) in items.iter().zip(&labels) {
        solver.assert_and_track(item, label);
    }
    match solver.check() {
        SatResult::Unsat => {
            let core = solver.get_unsat_core();
            let mut positions: Vec<usize> = core
                .iter()
                .filter_map(|c| labels.iter().position(|l| l == c))
                .collect();
            positions.sort_unstable();
            Ok(positions)
        }
        SatResult::Sat => Err(SolverError::new(
            question,
            "the two Z3 solvers disagree about satisfiability",
        )),
        SatResult::Unknown => Err(SolverError::unknown(question, &solver)),
    }
}

impl Contract {
    /// Checks that some run can meet the contract: there are figures (all
    /// within `u64`) that satisfy every clause. Returns such figures (an
    /// example run) or the clauses that conflict.
    pub fn check_satisfiable(&self) -> Result<Figures, SatisfiabilityError> {
        const QUESTION: &str = "whether the contract is satisfiable";
        let ctx = context();
        let enc = Encoding::new(&ctx);
        let solver = fast_solver(&ctx);
        let domain = enc.domain();
        for bound in &domain {
            solver.assert(bound);
        }
        let clauses: Vec<Bool<'_>> = self
            .clauses()
            .iter()
            .map(|c| enc.formula(&c.formula))
            .collect();
        for clause in &clauses {
            solver.assert(clause);
        }
        match solver.check() {
            SatResult::Sat => {
                let model = solver
                    .get_model()
                    .ok_or_else(|| SolverError::new(QUESTION, "no model"))?;
                Ok(enc.figures(&model, QUESTION)?)
            }
            SatResult::Unsat => {
                let clauses = explain_unsat(&ctx, &domain, &clauses, QUESTION)?
                    .into_iter()
                    .map(|i| self.clauses()[i].describe())
                    .collect();
                Err(SatisfiabilityError::Unsatisfiable { clauses })
            }
            SatResult::Unknown => Err(SolverError::unknown(QUESTION, &solver).into()),
        }
    }
}
