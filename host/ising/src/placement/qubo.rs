//! The full placement QUBO, for the generic annealer and for the tests that
//! check the penalty weights by brute force.

use super::{PlacementError, PlacementProblem};
use crate::model::QuboModel;

#[derive(Clone, Debug, PartialEq)]
pub struct QuboLayout {
    /// `(invocation, executor)` of each assignment variable, in index order;
    /// slack variables follow them.
    pub assignment_vars: Vec<(usize, usize)>,
    /// Total number of variables, slack included.
    pub variables: usize,
    /// The indices of the penalty groups: each is `(terms, constant)` whose
    /// square (times P) is one equality constraint. Used to tell feasible
    /// states from infeasible ones.
    pub equalities: Vec<(Vec<(usize, f64)>, f64)>,
    /// Pairs of assignment variables in one failure domain for one invocation.
    pub domain_pairs: Vec<(usize, usize)>,
}

impl QuboLayout {
    /// Whether a full state (bits) satisfies every hard constraint.
    #[must_use]
    pub fn is_feasible(&self, bits: &[u8]) -> bool {
        let eq_ok = self.equalities.iter().all(|(terms, c)| {
            let v: f64 = terms
                .iter()
                .map(|&(i, a)| if bits[i] != 0 { a } else { 0.0 })
                .sum::<f64>()
                + c;
            v == 0.0
        });
        eq_ok
            && self
                .domain_pairs
                .iter()
                .all(|&(i, j)| bits[i] == 0 || bits[j] == 0)
    }

    /// The assignment a state encodes (slack ignored).
    #[must_use]
    pub fn decode(&self, bits: &[u8], invocations: usize) -> Vec<Vec<usize>> {
        let mut a = vec![Vec::new(); invocations];
        for (v, &(t, e)) in self.assignment_vars.iter().enumerate() {
            if bits[v] != 0 {
                a[t].push(e);
            }
        }
        a
    }
}

/// Adds `weight × (Σ a_i z_i + constant)²` to a QUBO builder.
fn add_square(
    b: &mut crate::model::ModelBuilder,
    terms: &[(usize, f64)],
    constant: f64,
    weight: f64,
) {
    b.offset(weight * constant * constant);
    for (k, &(i, a)) in terms.iter().enumerate() {
        // z² = z for bits.
        b.linear(i, weight * (a * a + 2.0 * a * constant));
        for &(j, c) in &terms[k + 1..] {
            b.quadratic(i, j, weight * 2.0 * a * c);
        }
    }
}

/// Coefficients of a bounded binary encoding of `0..=max`.
fn slack_coefficients(max: i64) -> Vec<i64> {
    let mut coefs = Vec::new();
    let mut sum = 0;
    let mut next = 1;
    while sum + next <= max {
        coefs.push(next);
        sum += next;
        next *= 2;
    }
    if sum < max {
        coefs.push(max - sum);
    }
    coefs
}

impl PlacementProblem {
    /// The full placement QUBO, with its variable layout.
    pub fn to_qubo(&self) -> Result<(QuboModel, QuboLayout), PlacementError> {
        let ne = self.ne();
        let mut assignment_vars = Vec::new();
        let mut var_of = vec![usize::MAX; self.invocations.len() * ne];
        for t in 0..self.invocations.len() {
            let el = self.eligible(t);
            for &e in el {
                var_of[t * ne + e] = assignment_vars.len();
                assignment_vars.push((t, e));
            }
        }
        let mut next_var = assignment_vars.len();
        let mut equalities = Vec::new();
        let mut slack_groups = Vec::new();
        for e in 0..ne {
            for (q, _) in [(&self.slots, "slots"), (&self.memory, "memory")] {
                let terms: Vec<(usize, f64)> = (0..self.invocations.len())
                    .filter(|&t| var_of[t * ne + e] != usize::MAX)
                    .map(|t| (var_of[t * ne + e], q.demand[t] as f64))
                    .collect();
                let max_use: f64 = terms.iter().map(|&(_, a)| a).sum();
                if max_use <= q.free[e] as f64 {
                    continue; // This constraint can never be broken.
                }
                let mut all = terms;
                for c in slack_coefficients(q.free[e]) {
                    all.push((next_var, c as f64));
                    next_var += 1;
                }
                slack_groups.push(all.len());
                equalities.push((all, -(q.free[e] as f64)));
            }
        }
        for t in 0..self.invocations.len() {
            let el = self.eligible(t);
            let terms: Vec<(usize, f64)> = el.iter().map(|&e| (var_of[t * ne + e], 1.0)).collect();
            equalities.push((terms, -f64::from(self.invocations[t].replicas)));
        }
        let mut domain_pairs = Vec::new();
        for t in 0..self.invocations.len() {
            let el = self.eligible(t);
            if self.invocations[t].replicas < 2 {
                // One copy: the exactly-k term already forbids a second.
                continue;
            }
            for (a, &e) in el.iter().enumerate() {
                for &e2 in &el[a + 1..] {
                    if self.domain[e] == self.domain[e2] {
                        domain_pairs.push((var_of[t * ne + e], var_of[t * ne + e2]));
                    }
                }
            }
        }
        let mut b = QuboModel::builder(next_var);
        // Objective: linear costs and balance.
        for (v, &(t, e)) in assignment_vars.iter().enumerate() {
            b.linear(v, self.cost[t * ne + e]);
        }
        for e in 0..ne {
            let coef = self.balance_coef(e);
            let terms: Vec<(usize, f64)> = (0..self.invocations.len())
                .filter(|&t| var_of[t * ne + e] != usize::MAX)
                .map(|t| (var_of[t * ne + e], f64::from(self.invocations[t].slots)))
                .collect();
            add_square(
                &mut b,
                &terms,
                f64::from(self.executors[e].load_slots),
                coef,
            );
        }
        for (terms, c) in &equalities {
            add_square(&mut b, terms, *c, self.penalty);
        }
        for &(i, j) in &domain_pairs {
            b.quadratic(i, j, self.penalty);
        }
        let qubo = b.build_qubo()?;
        Ok((
            qubo,
            QuboLayout {
                assignment_vars,
                variables: next_var,
                equalities,
                domain_pairs,
            },
        ))
    }
}
