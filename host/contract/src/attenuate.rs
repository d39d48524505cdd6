//! The attenuation check: a child capability's numeric limits must lie
//! within its parent's and still allow something.
//!
//! Limits are plain `name op value` bounds over named non-negative integers
//! (`fuel <= 1000`, `expires < 1767225600`, `uses <= 1`); this crate does
//! not know what the names mean or where they come from. A set of limits
//! means their conjunction, each name ranging over `u64`.

use std::collections::BTreeMap;
use std::fmt;

use z3::ast::{Ast, Bool, Int};
use z3::SatResult;

use crate::number::thousands;
use crate::solve::{context, explain_unsat, fast_solver, SolverError};

/// A comparison in a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitOp {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
}

impl LimitOp {
    pub fn symbol(self) -> &'static str {
        match self {
            LimitOp::Le => "<=",
            LimitOp::Lt => "<",
            LimitOp::Ge => ">=",
            LimitOp::Gt => ">",
            LimitOp::Eq => "==",
        }
    }
}

/// One numeric limit, `name op value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub name: String,
    pub op: LimitOp,
    pub value: u64,
}

impl Limit {
    pub fn new(name: impl Into<String>, op: LimitOp, value: u64) -> Limit {
        Limit {
            name: name.into(),
            op,
            value,
        }
    }

    /// Whether `actual` (the named figure's value) meets this limit.
    pub fn allows(&self, actual: u64) -> bool {
        match self.op {
            LimitOp::Le => actual <= self.value,
            LimitOp::Lt => actual < self.value,
            LimitOp::Ge => actual >= self.value,
            LimitOp::Gt => actual > self.value,
            LimitOp::Eq => actual == self.value,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.name, self.op.symbol(), self.value)
    }
}

/// The range a name may take under a set of limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitRange {
    pub name: String,
    pub min: u64,
    pub max: u64,
}

/// The child's limits are within the parent's and leave something allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attenuation {
    /// For every name the child limits, the range it allows (by name).
    pub ranges: Vec<LimitRange>,
}

/// Why a child's limits are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttenuationError {
    #[error("the child's limits allow nothing: {} cannot all hold at once", .limits.join(", "))]
    Unsatisfiable { limits: Vec<String> },
    #[error("the child allows {name} = {}, which the parent's `{parent_limit}` denies; a child can only narrow its parent", thousands(u128::from(*.value)))]
    Widens {
        name: String,
        value: u64,
        parent_limit: String,
    },
    #[error(transparent)]
    Solver(#[from] SolverError),
}

/// Z3 checks that every assignment the `child` limits allow, the `parent`
/// limits allow too, and that the child allows at least one assignment.
pub fn check_attenuation(
    parent: &[Limit],
    child: &[Limit],
) -> Result<Attenuation, AttenuationError> {
    const QUESTION: &str = "whether the child's limits narrow the parent's";
    let ctx = context();
    let mut names: BTreeMap<&str, Int<'_>> = BTreeMap::new();
    for limit in parent.iter().chain(child) {
        names
            .entry(limit.name.as_str())
            .or_insert_with(|| Int::new_const(&ctx, format!("limit_{}", limit.name)));
    }
    let zero = Int::from_u64(&ctx, 0);
    let max = Int::from_u64(&ctx, u64::MAX);
    let encode = |limit: &Limit| -> Bool<'_> {
        let var = &names[limit.name.as_str()];
        let value = Int::from_u64(&ctx, limit.value);
        match limit.op {
            LimitOp::Le => var.le(&value),
            LimitOp::Lt => var.lt(&value),
            LimitOp::Ge => var.ge(&value),
            LimitOp::Gt => var.gt(&value),
            LimitOp::Eq => var._eq(&value),
        }
    };

    let solver = fast_solver(&ctx);
    let mut domain = Vec::new();
    for var in names.values() {
        domain.push(var.ge(&zero));
        domain.push(var.le(&max));
    }
    for bound in &domain {
        solver.assert(bound);
    }
    let child_formulas: Vec<Bool<'_>> = child.iter().map(encode).collect();
    for formula in &child_formulas {
        solver.assert(formula);
    }
    match solver.check() {
        SatResult::Sat => {}
        SatResult::Unsat => {
            let limits = explain_unsat(&ctx, &domain, &child_formulas, QUESTION)?
                .into_iter()
                .map(|i| format!("`{}`", child[i]))
                .collect();
            return Err(AttenuationError::Unsatisfiable { limits });
        }
        SatResult::Unknown => return Err(SolverError::unknown(QUESTION, &solver).into()),
    }

    // Containment: no assignment satisfies the child and breaks a parent
    // limit.
    let parent_formulas: Vec<Bool<'_>> = parent.iter().map(encode).collect();
    let parent_all = Bool::and(&ctx, &parent_formulas.iter().collect::<Vec<_>>());
    solver.assert(&parent_all.not());
    match solver.check() {
        SatResult::Unsat => {}
        SatResult::Unknown => return Err(SolverError::unknown(QUESTION, &solver).into()),
        SatResult::Sat => {
            let model = solver
                .get_model()
                .ok_or_else(|| SolverError::new(QUESTION, "no model"))?;
            for (limit, formula) in parent.iter().zip(&parent_formulas) {
                let holds = model.eval(formula, true).and_then(|b| b.as_bool());
                if holds == Some(false) {
                    let value = model
                        .eval(&names[limit.name.as_str()], true)
                        .and_then(|v| v.as_u64())
                        .ok_or_else(|| SolverError::new(QUESTION, "no u64 value in the model"))?;
                    return Err(AttenuationError::Widens {
                        name: limit.name.clone(),
                        value,
                        parent_limit: limit.to_string(),
                    });
                }
            }
            return Err(SolverError::new(QUESTION, "the model breaks no parent limit").into());
        }
    }
    Ok(Attenuation {
        ranges: ranges(child),
    })
}

/// The range each name may take under `limits`, by interval arithmetic
/// (exact for single-name bounds). Only called on satisfiable limits.
fn ranges(limits: &[Limit]) -> Vec<LimitRange> {
    let mut ranges: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for limit in limits {
        let (lo, hi) = ranges.entry(limit.name.as_str()).or_insert((0, u64::MAX));
        let v = limit.value;
        match limit.op {
            LimitOp::Le => *hi = (*hi).min(v),
            LimitOp::Lt => *hi = (*hi).min(v.saturating_sub(1)),
            LimitOp::Ge => *lo = (*lo).max(v),
            LimitOp::Gt => *lo = (*lo).max(v.saturating_add(1)),
            LimitOp::Eq => {
                *lo = (*lo).max(v);
                *hi = (*hi).min(v);
            }
        }
    }
    ranges
        .into_iter()
        .map(|(name, (min, max))| LimitRange {
            name: name.to_string(),
            min,
            max,
        })
        .collect()
}
