//! The concrete evaluator: a contract's clauses on the real figures of one
//! invocation or run.
//!
//! Arithmetic is checked `i128`. The parser already rejects contracts whose
//! intermediate values could leave `i128` for any `u64` figures, so
//! [`EvalError::Overflow`] marks a bug rather than a bad contract; it is
//! still a value, never a panic, and callers fail closed on it.

use crate::ast::{Formula, Term, Var};

/// The figures of one invocation (input side) and its run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Figures {
    pub input_bytes: u64,
    pub args_bytes: u64,
    pub output_bytes: u64,
    pub fuel: u64,
    /// Peak linear memory of the run.
    pub memory_bytes: u64,
}

impl Figures {
    /// The value of one variable.
    pub fn get(&self, var: Var) -> u64 {
        match var {
            Var::InputBytes => self.input_bytes,
            Var::ArgsBytes => self.args_bytes,
            Var::OutputBytes => self.output_bytes,
            Var::Fuel => self.fuel,
            Var::MemoryBytes => self.memory_bytes,
        }
    }

    /// Sets one variable.
    pub fn set(&mut self, var: Var, value: u64) {
        match var {
            Var::InputBytes => self.input_bytes = value,
            Var::ArgsBytes => self.args_bytes = value,
            Var::OutputBytes => self.output_bytes = value,
            Var::Fuel => self.fuel = value,
            Var::MemoryBytes => self.memory_bytes = value,
        }
    }
}

/// Evaluation could not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("arithmetic overflowed the 128-bit range")]
    Overflow,
}

// Every operand is evaluated (no short-circuit) so that an overflow is
// reported the same way whatever the other operands' values.

/// The value of a term on the given figures.
pub fn eval_term(term: &Term, figures: &Figures) -> Result<i128, EvalError> {
    let value = match term {
        Term::Const(value) => Some(*value),
        Term::Var(var) => Some(i128::from(figures.get(*var))),
        Term::Neg(inner) => eval_term(inner, figures)?.checked_neg(),
        Term::Add(lhs, rhs) => eval_term(lhs, figures)?.checked_add(eval_term(rhs, figures)?),
        Term::Sub(lhs, rhs) => eval_term(lhs, figures)?.checked_sub(eval_term(rhs, figures)?),
        Term::Scale(coefficient, inner) => coefficient.checked_mul(eval_term(inner, figures)?),
        Term::Ite(cond, then, otherwise) => {
            let (c, t, e) = (
                eval_formula(cond, figures)?,
                eval_term(then, figures)?,
                eval_term(otherwise, figures)?,
            );
            Some(if c { t } else { e })
        }
    };
    value.ok_or(EvalError::Overflow)
}

/// The truth of a formula on the given figures.
pub fn eval_formula(formula: &Formula, figures: &Figures) -> Result<bool, EvalError> {
    Ok(match formula {
        Formula::Const(value) => *value,
        Formula::Cmp(op, lhs, rhs) => op.holds(eval_term(lhs, figures)?, eval_term(rhs, figures)?),
        Formula::Not(inner) => !eval_formula(inner, figures)?,
        Formula::And(lhs, rhs) => {
            let (l, r) = (eval_formula(lhs, figures)?, eval_formula(rhs, figures)?);
            l && r
        }
        Formula::Or(lhs, rhs) => {
            let (l, r) = (eval_formula(lhs, figures)?, eval_formula(rhs, figures)?);
            l || r
        }
        Formula::Implies(lhs, rhs) => {
            let (l, r) = (eval_formula(lhs, figures)?, eval_formula(rhs, figures)?);
            !l || r
        }
        Formula::Ite(cond, then, otherwise) => {
            let (c, t, e) = (
                eval_formula(cond, figures)?,
                eval_formula(then, figures)?,
                eval_formula(otherwise, figures)?,
            );
            if c {
                t
            } else {
                e
            }
        }
    })
}
