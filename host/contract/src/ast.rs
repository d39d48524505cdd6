//! The typed tree shared by the evaluator, the Z3 encoding and the printer,
//! and the checks that turn the parser's untyped tree into it: types (number
//! or condition), linearity, and the absence of overflow.

use std::fmt::{self, Write as _};

use crate::eval::{eval_term, Figures};
use crate::syntax::{self, BinOp, Node, NodeKind, ParseError};

/// The variables a contract may mention. Every one ranges over `u64`
/// (`0 ..= u64::MAX`), in the evaluator and in the Z3 encoding alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Var {
    /// Size of the invocation's input, in bytes.
    InputBytes,
    /// Size of the invocation's encoded arguments, in bytes.
    ArgsBytes,
    /// Size of the output the tool produced, in bytes.
    OutputBytes,
    /// Fuel the run consumed.
    Fuel,
    /// Peak linear memory of the run, in bytes.
    MemoryBytes,
}

impl Var {
    /// Every variable, in a fixed order (the order of [`VarSet`] bits).
    pub const ALL: [Var; 5] = [
        Var::InputBytes,
        Var::ArgsBytes,
        Var::OutputBytes,
        Var::Fuel,
        Var::MemoryBytes,
    ];

    /// The name written in contracts.
    pub fn name(self) -> &'static str {
        match self {
            Var::InputBytes => "input_bytes",
            Var::ArgsBytes => "args_bytes",
            Var::OutputBytes => "output_bytes",
            Var::Fuel => "fuel",
            Var::MemoryBytes => "memory_bytes",
        }
    }

    /// The variable written `name`, if any.
    pub fn from_name(name: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == name)
    }

    /// Input-side variables are known before the run; the others are
    /// figures of the run itself.
    pub fn is_input_side(self) -> bool {
        matches!(self, Var::InputBytes | Var::ArgsBytes)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A set of variables, as bits in [`Var::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VarSet(u8);

impl VarSet {
    pub fn contains(self, var: Var) -> bool {
        self.0 & (1 << var.index()) != 0
    }

    fn insert(&mut self, var: Var) {
        self.0 |= 1 << var.index();
    }

    pub(crate) fn union(self, other: VarSet) -> VarSet {
        VarSet(self.0 | other.0)
    }

    /// True when no variable is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The variables in the set, in [`Var::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Var> {
        Var::ALL.into_iter().filter(move |v| self.contains(*v))
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
    Ne,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Le => "<=",
            CmpOp::Lt => "<",
            CmpOp::Ge => ">=",
            CmpOp::Gt => ">",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    pub(crate) fn holds(self, lhs: i128, rhs: i128) -> bool {
        match self {
            CmpOp::Le => lhs <= rhs,
            CmpOp::Lt => lhs < rhs,
            CmpOp::Ge => lhs >= rhs,
            CmpOp::Gt => lhs > rhs,
            CmpOp::Eq => lhs == rhs,
            CmpOp::Ne => lhs != rhs,
        }
    }
}

/// An integer-valued expression. Linear by construction: the only product
/// is [`Term::Scale`], a constant times a term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    /// A literal (always within `0 ..= u64::MAX`).
    Const(i128),
    Var(Var),
    Neg(Box<Term>),
    Add(Box<Term>, Box<Term>),
    Sub(Box<Term>, Box<Term>),
    /// `coefficient * term`; the coefficient is the folded constant side of
    /// a `*` in the source.
    Scale(i128, Box<Term>),
    Ite(Box<Formula>, Box<Term>, Box<Term>),
}

/// A condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Formula {
    Const(bool),
    Cmp(CmpOp, Box<Term>, Box<Term>),
    Not(Box<Formula>),
    And(Box<Formula>, Box<Formula>),
    Or(Box<Formula>, Box<Formula>),
    Implies(Box<Formula>, Box<Formula>),
    Ite(Box<Formula>, Box<Formula>, Box<Formula>),
}

/// Whether a clause constrains the input alone or the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClauseKind {
    /// Mentions only `input_bytes` / `args_bytes` (or nothing): a condition
    /// on the invocation that the host checks before the run.
    Precondition,
    /// Mentions `fuel`, `output_bytes` or `memory_bytes`: a promise about
    /// the run, used as a bound at admission and checked after the run.
    Postcondition,
}

/// One clause of a contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The label written before `:`, if any.
    pub label: Option<String>,
    pub formula: Formula,
    pub kind: ClauseKind,
    /// The variables the clause mentions.
    pub vars: VarSet,
    /// 1-based position among the contract's clauses.
    pub index: usize,
    /// 1-based line where the clause starts in the source text.
    pub line: usize,
}

impl Clause {
    /// How messages name the clause: its label, or its position.
    pub fn name(&self) -> String {
        match &self.label {
            Some(label) => format!("`{label}`"),
            None => format!("clause {} (line {})", self.index, self.line),
        }
    }

    /// The clause's canonical text, without its label.
    pub fn text(&self) -> String {
        let mut out = String::new();
        print_formula(&self.formula, 0, &mut out);
        out
    }

    /// The name and the text, for messages: "`cost` (fuel <= 400 * input_bytes)".
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name(), self.text())
    }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(label) = &self.label {
            write!(f, "{label}: ")?;
        }
        f.write_str(&self.text())
    }
}

/// The range of values a term can take when every variable ranges over
/// `u64`; computed with checked `i128` arithmetic so that a contract whose
/// intermediate values could leave `i128` is rejected when it is parsed.
#[derive(Clone, Copy, Debug)]
struct Interval {
    lo: i128,
    hi: i128,
}

impl Interval {
    fn point(value: i128) -> Interval {
        Interval {
            lo: value,
            hi: value,
        }
    }
}

pub(crate) fn check_clauses(
    src: &str,
    raw: Vec<syntax::RawClause>,
) -> Result<Vec<Clause>, ParseError> {
    let checker = Checker { src };
    let mut clauses: Vec<Clause> = Vec::with_capacity(raw.len());
    for (position, raw) in raw.into_iter().enumerate() {
        if let Some((label, span)) = &raw.label {
            if clauses
                .iter()
                .any(|c| c.label.as_deref() == Some(label.as_str()))
            {
                return Err(ParseError::at(
                    src,
                    *span,
                    format!("the label `{label}` is used twice; labels name clauses in messages, so make them unique"),
                ));
            }
        }
        let (formula, vars) = checker.formula(&raw.body)?;
        let kind = if vars.iter().all(Var::is_input_side) {
            ClauseKind::Precondition
        } else {
            ClauseKind::Postcondition
        };
        let line = src[..raw.span.start].matches('\n').count() + 1;
        clauses.push(Clause {
            label: raw.label.map(|(label, _)| label),
            formula,
            kind,
            vars,
            index: position + 1,
            line,
        });
    }
    Ok(clauses)
}

struct Checker<'s> {
    src: &'s str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Number,
    Condition,
}

fn sort_of(node: &Node) -> Sort {
    match &node.kind {
        NodeKind::Int(_) | NodeKind::Var(_) | NodeKind::Neg(_) => Sort::Number,
        NodeKind::Bin(BinOp::Add | BinOp::Sub | BinOp::Mul, _, _) => Sort::Number,
        NodeKind::Bool(_) | NodeKind::Not(_) | NodeKind::Bin(_, _, _) => Sort::Condition,
        NodeKind::Ite(_, then, _) => sort_of(then),
    }
}

impl Checker<'_> {
    fn error(&self, node: &Node, message: impl Into<String>) -> ParseError {
        ParseError::at(self.src, node.span, message)
    }

    fn overflow(&self, node: &Node) -> ParseError {
        ParseError::at(
            self.src,
            node.op,
            "this arithmetic can leave the 128-bit range for some run figures; use smaller constants",
        )
    }

    fn formula(&self, node: &Node) -> Result<(Formula, VarSet), ParseError> {
        let boxed = |(f, v): (Formula, VarSet)| (Box::new(f), v);
        Ok(match &node.kind {
            NodeKind::Bool(value) => (Formula::Const(*value), VarSet::default()),
            NodeKind::Not(inner) => {
                let (inner, vars) = boxed(self.formula(inner)?);
                (Formula::Not(inner), vars)
            }
            NodeKind::Bin(BinOp::Cmp(op), lhs, rhs) => {
                let (lhs, _, lvars) = self.term(lhs)?;
                let (rhs, _, rvars) = self.term(rhs)?;
                (
                    Formula::Cmp(*op, Box::new(lhs), Box::new(rhs)),
                    lvars.union(rvars),
                )
            }
            NodeKind::Bin(op @ (BinOp::And | BinOp::Or | BinOp::Implies), lhs, rhs) => {
                let (lhs, lvars) = boxed(self.formula(lhs)?);
                let (rhs, rvars) = boxed(self.formula(rhs)?);
                let formula = match op {
                    BinOp::And => Formula::And(lhs, rhs),
                    BinOp::Or => Formula::Or(lhs, rhs),
                    _ => Formula::Implies(lhs, rhs),
                };
                (formula, lvars.union(rvars))
            }
            NodeKind::Ite(cond, then, otherwise) => {
                let (cond, cvars) = boxed(self.formula(cond)?);
                if sort_of(otherwise) != Sort::Condition {
                    return Err(self.error(
                        otherwise,
                        "the branches of `if` must both be conditions or both be numbers; this one is a number",
                    ));
                }
                let (then, tvars) = boxed(self.formula(then)?);
                let (otherwise, evars) = boxed(self.formula(otherwise)?);
                (
                    Formula::Ite(cond, then, otherwise),
                    cvars.union(tvars).union(evars),
                )
            }
            NodeKind::Int(_) | NodeKind::Var(_) | NodeKind::Neg(_) | NodeKind::Bin(_, _, _) => {
                return Err(self.error(
                    node,
                    "expected a condition here, found a number; compare it, like `fuel <= 1_000_000`",
                ));
            }
        })
    }

    fn term(&self, node: &Node) -> Result<(Term, Interval, VarSet), ParseError> {
        Ok(match &node.kind {
            NodeKind::Int(value) => (
                Term::Const(i128::from(*value)),
                Interval::point(i128::from(*value)),
                VarSet::default(),
            ),
            NodeKind::Var(var) => {
                let mut vars = VarSet::default();
                vars.insert(*var);
                let range = Interval {
                    lo: 0,
                    hi: i128::from(u64::MAX),
                };
                (Term::Var(*var), range, vars)
            }
            NodeKind::Neg(inner) => {
                let (inner, range, vars) = self.term(inner)?;
                let range = match (range.hi.checked_neg(), range.lo.checked_neg()) {
                    (Some(lo), Some(hi)) => Interval { lo, hi },
                    _ => return Err(self.overflow(node)),
                };
                (Term::Neg(Box::new(inner)), range, vars)
            }
            NodeKind::Bin(op @ (BinOp::Add | BinOp::Sub), lhs, rhs) => {
                let (lhs, l, lvars) = self.term(lhs)?;
                let (rhs, r, rvars) = self.term(rhs)?;
                let range = if *op == BinOp::Add {
                    l.lo.checked_add(r.lo).zip(l.hi.checked_add(r.hi))
                } else {
                    l.lo.checked_sub(r.hi).zip(l.hi.checked_sub(r.lo))
                };
                let Some((lo, hi)) = range else {
                    return Err(self.overflow(node));
                };
                let term = if *op == BinOp::Add {
                    Term::Add(Box::new(lhs), Box::new(rhs))
                } else {
                    Term::Sub(Box::new(lhs), Box::new(rhs))
                };
                (term, Interval { lo, hi }, lvars.union(rvars))
            }
            NodeKind::Bin(BinOp::Mul, lhs_node, rhs_node) => {
                let (lhs, l, lvars) = self.term(lhs_node)?;
                let (rhs, r, rvars) = self.term(rhs_node)?;
                // One side must be free of variables: fold it to its value.
                // (Its interval is not always a point: a variable-free `if`
                // spans both branches.)
                let (constant, term, range, vars) = if lvars.is_empty() {
                    (&lhs, rhs, r, rvars)
                } else if rvars.is_empty() {
                    (&rhs, lhs, l, lvars)
                } else {
                    return Err(ParseError::at(
                        self.src,
                        node.op,
                        format!(
                            "non-linear: this `*` multiplies two terms that both mention variables ({} and {}); \
                             contracts are linear, so one side of `*` must be a constant",
                            lvars.iter().map(Var::name).collect::<Vec<_>>().join(", "),
                            rvars.iter().map(Var::name).collect::<Vec<_>>().join(", "),
                        ),
                    ));
                };
                let coefficient =
                    eval_term(constant, &Figures::default()).map_err(|_| self.overflow(node))?;
                let ends = coefficient
                    .checked_mul(range.lo)
                    .zip(coefficient.checked_mul(range.hi));
                let Some((a, b)) = ends else {
                    return Err(self.overflow(node));
                };
                let range = Interval {
                    lo: a.min(b),
                    hi: a.max(b),
                };
                (Term::Scale(coefficient, Box::new(term)), range, vars)
            }
            NodeKind::Ite(cond, then, otherwise) => {
                let (cond, cvars) = self.formula(cond)?;
                if sort_of(otherwise) != Sort::Number {
                    return Err(self.error(
                        otherwise,
                        "the branches of `if` must both be numbers or both be conditions; this one is a condition",
                    ));
                }
                let (then, t, tvars) = self.term(then)?;
                let (otherwise, e, evars) = self.term(otherwise)?;
                let range = Interval {
                    lo: t.lo.min(e.lo),
                    hi: t.hi.max(e.hi),
                };
                (
                    Term::Ite(Box::new(cond), Box::new(then), Box::new(otherwise)),
                    range,
                    cvars.union(tvars).union(evars),
                )
            }
            NodeKind::Bool(_) | NodeKind::Not(_) | NodeKind::Bin(_, _, _) => {
                return Err(self.error(node, "expected a number here, found a condition"));
            }
        })
    }
}

// Canonical printing. Precedence levels, loosest first; a child printed
// where a tighter level is required gets parentheses. The choice of which
// side needs the tighter level mirrors the parser's associativity, so that
// printing and parsing again gives back the same tree.
const LEVEL_ITE: u8 = 0;
const LEVEL_IMPLIES: u8 = 1;
const LEVEL_OR: u8 = 2;
const LEVEL_AND: u8 = 3;
const LEVEL_NOT: u8 = 4;
const LEVEL_CMP: u8 = 5;
const LEVEL_SUM: u8 = 6;
const LEVEL_PRODUCT: u8 = 7;
const LEVEL_UNARY: u8 = 8;

fn open(level: u8, min: u8, out: &mut String) -> bool {
    let wrap = level < min;
    if wrap {
        out.push('(');
    }
    wrap
}

fn close(wrap: bool, out: &mut String) {
    if wrap {
        out.push(')');
    }
}

pub(crate) fn print_formula(formula: &Formula, min: u8, out: &mut String) {
    let binary = |lhs: &Formula,
                  op: &str,
                  rhs: &Formula,
                  level: u8,
                  lmin: u8,
                  rmin: u8,
                  out: &mut String| {
        let wrap = open(level, min, out);
        print_formula(lhs, lmin, out);
        out.push(' ');
        out.push_str(op);
        out.push(' ');
        print_formula(rhs, rmin, out);
        close(wrap, out);
    };
    match formula {
        Formula::Const(value) => out.push_str(if *value { "true" } else { "false" }),
        Formula::Cmp(op, lhs, rhs) => {
            let wrap = open(LEVEL_CMP, min, out);
            print_term(lhs, LEVEL_SUM, out);
            out.push(' ');
            out.push_str(op.symbol());
            out.push(' ');
            print_term(rhs, LEVEL_SUM, out);
            close(wrap, out);
        }
        Formula::Not(inner) => {
            let wrap = open(LEVEL_NOT, min, out);
            out.push_str("not ");
            print_formula(inner, LEVEL_NOT, out);
            close(wrap, out);
        }
        Formula::And(lhs, rhs) => binary(lhs, "and", rhs, LEVEL_AND, LEVEL_AND, LEVEL_NOT, out),
        Formula::Or(lhs, rhs) => binary(lhs, "or", rhs, LEVEL_OR, LEVEL_OR, LEVEL_AND, out),
        Formula::Implies(lhs, rhs) => {
            binary(lhs, "=>", rhs, LEVEL_IMPLIES, LEVEL_OR, LEVEL_IMPLIES, out)
        }
        Formula::Ite(cond, then, otherwise) => {
            let wrap = open(LEVEL_ITE, min, out);
            out.push_str("if ");
            print_formula(cond, LEVEL_ITE, out);
            out.push_str(" then ");
            print_formula(then, LEVEL_ITE, out);
            out.push_str(" else ");
            print_formula(otherwise, LEVEL_ITE, out);
            close(wrap, out);
        }
    }
}

pub(crate) fn print_term(term: &Term, min: u8, out: &mut String) {
    match term {
        Term::Const(value) => {
            let _ = write!(out, "{value}");
        }
        Term::Var(var) => out.push_str(var.name()),
        Term::Neg(inner) => {
            let wrap = open(LEVEL_UNARY, min, out);
            out.push('-');
            print_term(inner, LEVEL_UNARY, out);
            close(wrap, out);
        }
        Term::Add(lhs, rhs) | Term::Sub(lhs, rhs) => {
            let wrap = open(LEVEL_SUM, min, out);
            print_term(lhs, LEVEL_SUM, out);
            out.push_str(if matches!(term, Term::Add(..)) {
                " + "
            } else {
                " - "
            });
            print_term(rhs, LEVEL_PRODUCT, out);
            close(wrap, out);
        }
        Term::Scale(coefficient, inner) => {
            let wrap = open(LEVEL_PRODUCT, min, out);
            print_coefficient(*coefficient, out);
            out.push_str(" * ");
            print_term(inner, LEVEL_UNARY, out);
            close(wrap, out);
        }
        Term::Ite(cond, then, otherwise) => {
            let wrap = open(LEVEL_ITE, min, out);
            out.push_str("if ");
            print_formula(cond, LEVEL_ITE, out);
            out.push_str(" then ");
            print_term(then, LEVEL_ITE, out);
            out.push_str(" else ");
            print_term(otherwise, LEVEL_ITE, out);
            close(wrap, out);
        }
    }
}

/// Prints a folded coefficient so that it parses back to the same value:
/// a literal when it fits one (a negative one as `-N`, which parses as a
/// unary minus, tighter than `*`), otherwise a constant expression in
/// literals, which the parser folds back into the same coefficient.
fn print_coefficient(coefficient: i128, out: &mut String) {
    let magnitude = coefficient.unsigned_abs();
    let sign = if coefficient < 0 { "-" } else { "" };
    match u64::try_from(magnitude) {
        Ok(small) => {
            let _ = write!(out, "{sign}{small}");
        }
        Err(_) => {
            let base = u128::from(u64::MAX);
            let _ = write!(
                out,
                "{sign}({} * {} + {})",
                magnitude / base,
                base,
                magnitude % base
            );
        }
    }
}
