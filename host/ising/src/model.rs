//! Sparse QUBO and Ising models, exact conversion between them, and energy.
//!
//! An Ising model over spins `s_i ∈ {-1, +1}` has energy
//! `E(s) = Σ h_i s_i + Σ_{i<j} J_ij s_i s_j + offset`;
//! a QUBO over bits `x_i ∈ {0, 1}` has energy
//! `E(x) = Σ q_ii x_i + Σ_{i<j} q_ij x_i x_j + offset`.
//! With `x = (1 + s) / 2` both give the same energy for the same state: the
//! constant that the substitution produces is kept in `offset`, never dropped.
//! The conversion only multiplies and divides by powers of two and sums with
//! compensated (Neumaier) summation, so integer-valued models convert exactly.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

/// What can be wrong with the terms given to a [`ModelBuilder`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    /// A term names a variable that does not exist.
    #[error("variable {index} is out of range: the model has {variables} variables (indices 0..{variables})")]
    IndexOutOfRange {
        /// The index given.
        index: usize,
        /// The number of variables.
        variables: usize,
    },
    /// A coefficient is NaN or infinite.
    #[error(
        "coefficient of term ({i}, {j}) is {value}: every coefficient must be a finite number"
    )]
    NotFinite {
        /// First variable of the term.
        i: usize,
        /// Second variable (equal to `i` for a linear term).
        j: usize,
        /// The value given.
        value: f64,
    },
    /// The offset is NaN or infinite.
    #[error("the offset is {0}: it must be a finite number")]
    OffsetNotFinite(f64),
    /// A coefficient so large that energies could overflow.
    #[error("coefficient of term ({i}, {j}) is {value}: magnitudes above {max:e} are refused so energies stay finite; rescale the model", max = COEFFICIENT_MAX)]
    TooLarge {
        /// First variable of the term (the offset is reported as `(0, 0)`).
        i: usize,
        /// Second variable.
        j: usize,
        /// The value given.
        value: f64,
    },
    /// More variables than the solver's 32-bit indices can address.
    #[error("{0} variables is more than the solver supports (at most {max})", max = u32::MAX)]
    TooManyVariables(usize),
}

/// The largest coefficient magnitude a model accepts: with at most 2^32
/// variables and their couplings, every energy then stays far from overflow.
pub const COEFFICIENT_MAX: f64 = 1e100;

/// A quadratic term between two distinct variables, `i < j`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Coupling {
    /// The smaller variable index.
    pub i: u32,
    /// The larger variable index.
    pub j: u32,
    /// The coefficient.
    pub value: f64,
}

/// Which kind of model a builder makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ising,
    Qubo,
}

/// Collects terms (duplicates add up) and checks them; see
/// [`IsingModel::builder`] and [`QuboModel::builder`].
#[derive(Clone, Debug)]
pub struct ModelBuilder {
    kind: Kind,
    variables: usize,
    linear: Vec<f64>,
    quadratic: BTreeMap<(u32, u32), f64>,
    offset: f64,
    error: Option<ModelError>,
}

impl ModelBuilder {
    fn new(kind: Kind, variables: usize) -> Self {
        let error =
            (variables > u32::MAX as usize).then_some(ModelError::TooManyVariables(variables));
        let linear = if error.is_some() {
            Vec::new()
        } else {
            vec![0.0; variables]
        };
        Self {
            kind,
            variables,
            linear,
            quadratic: BTreeMap::new(),
            offset: 0.0,
            error,
        }
    }

    fn fail(&mut self, e: ModelError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn check_index(&mut self, index: usize) -> bool {
        if index >= self.variables {
            self.fail(ModelError::IndexOutOfRange {
                index,
                variables: self.variables,
            });
            return false;
        }
        true
    }

    /// Adds `value` to the linear term of variable `i` (`h_i` or `q_ii`).
    pub fn linear(&mut self, i: usize, value: f64) -> &mut Self {
        if !value.is_finite() {
            self.fail(ModelError::NotFinite { i, j: i, value });
        } else if value.abs() > COEFFICIENT_MAX {
            self.fail(ModelError::TooLarge { i, j: i, value });
        } else if self.check_index(i) {
            self.linear[i] += value;
        }
        self
    }

    /// Adds `value` to the quadratic term between `i` and `j` (either order).
    /// A term with `i == j` is folded in exactly: `x_i x_i = x_i` for a QUBO,
    /// `s_i s_i = 1` (a constant) for an Ising model.
    pub fn quadratic(&mut self, i: usize, j: usize, value: f64) -> &mut Self {
        if !value.is_finite() {
            self.fail(ModelError::NotFinite { i, j, value });
            return self;
        }
        if value.abs() > COEFFICIENT_MAX {
            self.fail(ModelError::TooLarge { i, j, value });
            return self;
        }
        if !(self.check_index(i) && self.check_index(j)) {
            return self;
        }
        if i == j {
            match self.kind {
                Kind::Qubo => self.linear[i] += value,
                Kind::Ising => self.offset += value,
            }
            return self;
        }
        let key = if i < j {
            (i as u32, j as u32)
        } else {
            (j as u32, i as u32)
        };
        *self.quadratic.entry(key).or_insert(0.0) += value;
        self
    }

    /// Adds `value` to the constant term.
    pub fn offset(&mut self, value: f64) -> &mut Self {
        if !value.is_finite() {
            self.fail(ModelError::OffsetNotFinite(value));
        } else if value.abs() > COEFFICIENT_MAX {
            self.fail(ModelError::TooLarge { i: 0, j: 0, value });
        } else {
            self.offset += value;
        }
        self
    }

    fn finish(self) -> Result<Parts, ModelError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let couplings = self
            .quadratic
            .into_iter()
            .filter(|&(_, v)| v != 0.0)
            .map(|((i, j), value)| Coupling { i, j, value })
            .collect::<Vec<_>>();
        // Sums of terms within the limit can still exceed it.
        let too_large = |i: usize, j: usize, value: f64| ModelError::TooLarge { i, j, value };
        for c in &couplings {
            if c.value.abs() > COEFFICIENT_MAX {
                return Err(too_large(c.i as usize, c.j as usize, c.value));
            }
        }
        for (i, &v) in self.linear.iter().enumerate() {
            if v.abs() > COEFFICIENT_MAX {
                return Err(too_large(i, i, v));
            }
        }
        if self.offset.abs() > COEFFICIENT_MAX {
            return Err(too_large(0, 0, self.offset));
        }
        Ok(Parts {
            linear: self.linear,
            couplings,
            offset: self.offset,
        })
    }

    /// Builds an Ising model (for a builder from [`IsingModel::builder`]).
    pub fn build_ising(self) -> Result<IsingModel, ModelError> {
        assert_eq!(self.kind, Kind::Ising, "build_ising on a QUBO builder");
        let p = self.finish()?;
        Ok(IsingModel {
            h: p.linear,
            couplings: p.couplings,
            offset: p.offset,
        })
    }

    /// Builds a QUBO (for a builder from [`QuboModel::builder`]).
    pub fn build_qubo(self) -> Result<QuboModel, ModelError> {
        assert_eq!(self.kind, Kind::Qubo, "build_qubo on an Ising builder");
        let p = self.finish()?;
        Ok(QuboModel {
            linear: p.linear,
            couplings: p.couplings,
            offset: p.offset,
        })
    }
}

struct Parts {
    linear: Vec<f64>,
    couplings: Vec<Coupling>,
    offset: f64,
}

/// An Ising model: fields `h`, couplings `J` (sorted, `i < j`, no duplicates,
/// no zeros) and a constant offset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IsingModel {
    h: Vec<f64>,
    couplings: Vec<Coupling>,
    offset: f64,
}

/// A QUBO: linear terms `q_ii`, couplings `q_ij` (sorted, `i < j`, no
/// duplicates, no zeros) and a constant offset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuboModel {
    linear: Vec<f64>,
    couplings: Vec<Coupling>,
    offset: f64,
}

/// Neumaier's compensated sum: exact for the sums of a few integers and far
/// more accurate than a plain sum for long ones.
#[derive(Clone, Copy, Debug, Default)]
struct Sum {
    s: f64,
    c: f64,
}

impl Sum {
    #[inline]
    fn add(&mut self, v: f64) {
        let t = self.s + v;
        // The larger and the smaller magnitude chosen by selects, not a
        // branch (random magnitudes mispredict it): the same arithmetic.
        let s_larger = self.s.abs() >= v.abs();
        let big = if s_larger { self.s } else { v };
        let small = if s_larger { v } else { self.s };
        self.c += (big - t) + small;
        self.s = t;
    }
    fn value(self) -> f64 {
        self.s + self.c
    }
}

impl IsingModel {
    /// A builder for a model over `variables` spins.
    #[must_use]
    pub fn builder(variables: usize) -> ModelBuilder {
        ModelBuilder::new(Kind::Ising, variables)
    }

    /// The number of spins.
    #[must_use]
    pub fn len(&self) -> usize {
        self.h.len()
    }

    /// Whether the model has no variables (its energy is then its offset).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// The fields `h_i`.
    #[must_use]
    pub fn fields(&self) -> &[f64] {
        &self.h
    }

    /// The couplings, sorted by `(i, j)` with `i < j`.
    #[must_use]
    pub fn couplings(&self) -> &[Coupling] {
        &self.couplings
    }

    /// The constant term.
    #[must_use]
    pub fn offset(&self) -> f64 {
        self.offset
    }

    /// The energy of a state of spins (`+1` or `-1`; any positive value is
    /// read as `+1`, anything else as `-1`).
    ///
    /// # Panics
    /// If `spins.len()` differs from the number of variables (a caller bug).
    #[must_use]
    pub fn energy(&self, spins: &[i8]) -> f64 {
        assert_eq!(
            spins.len(),
            self.len(),
            "state length differs from the number of variables"
        );
        let sign = |s: i8| if s > 0 { 1.0 } else { -1.0 };
        let mut e = Sum::default();
        e.add(self.offset);
        for (i, &h) in self.h.iter().enumerate() {
            e.add(h * sign(spins[i]));
        }
        for c in &self.couplings {
            e.add(c.value * sign(spins[c.i as usize]) * sign(spins[c.j as usize]));
        }
        e.value()
    }

    /// The equivalent QUBO under `s = 2x - 1`: same energy for every state.
    #[must_use]
    pub fn to_qubo(&self) -> QuboModel {
        // h s = 2h x - h;  J s_i s_j = 4J x_i x_j - 2J x_i - 2J x_j + J.
        let mut linear: Vec<Sum> = self
            .h
            .iter()
            .map(|&h| {
                let mut s = Sum::default();
                s.add(2.0 * h);
                s
            })
            .collect();
        let mut offset = Sum::default();
        offset.add(self.offset);
        for &h in &self.h {
            offset.add(-h);
        }
        let mut couplings = Vec::with_capacity(self.couplings.len());
        for c in &self.couplings {
            linear[c.i as usize].add(-2.0 * c.value);
            linear[c.j as usize].add(-2.0 * c.value);
            offset.add(c.value);
            couplings.push(Coupling {
                i: c.i,
                j: c.j,
                value: 4.0 * c.value,
            });
        }
        QuboModel {
            linear: linear.into_iter().map(Sum::value).collect(),
            couplings,
            offset: offset.value(),
        }
    }
}

impl QuboModel {
    /// A builder for a model over `variables` bits.
    #[must_use]
    pub fn builder(variables: usize) -> ModelBuilder {
        ModelBuilder::new(Kind::Qubo, variables)
    }

    /// The number of bits.
    #[must_use]
    pub fn len(&self) -> usize {
        self.linear.len()
    }

    /// Whether the model has no variables.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.linear.is_empty()
    }

    /// The linear terms `q_ii`.
    #[must_use]
    pub fn linear_terms(&self) -> &[f64] {
        &self.linear
    }

    /// The couplings, sorted by `(i, j)` with `i < j`.
    #[must_use]
    pub fn couplings(&self) -> &[Coupling] {
        &self.couplings
    }

    /// The constant term.
    #[must_use]
    pub fn offset(&self) -> f64 {
        self.offset
    }

    /// The energy of a state of bits (nonzero is read as 1).
    ///
    /// # Panics
    /// If `bits.len()` differs from the number of variables (a caller bug).
    #[must_use]
    pub fn energy(&self, bits: &[u8]) -> f64 {
        assert_eq!(
            bits.len(),
            self.len(),
            "state length differs from the number of variables"
        );
        let mut e = Sum::default();
        e.add(self.offset);
        for (i, &q) in self.linear.iter().enumerate() {
            if bits[i] != 0 {
                e.add(q);
            }
        }
        for c in &self.couplings {
            if bits[c.i as usize] != 0 && bits[c.j as usize] != 0 {
                e.add(c.value);
            }
        }
        e.value()
    }

    /// The equivalent Ising model under `x = (1 + s) / 2`.
    #[must_use]
    pub fn to_ising(&self) -> IsingModel {
        // q x = q/2 + q/2 s;  q x_i x_j = q/4 (1 + s_i + s_j + s_i s_j).
        let mut h: Vec<Sum> = self
            .linear
            .iter()
            .map(|&q| {
                let mut s = Sum::default();
                s.add(q / 2.0);
                s
            })
            .collect();
        let mut offset = Sum::default();
        offset.add(self.offset);
        for &q in &self.linear {
            offset.add(q / 2.0);
        }
        let mut couplings = Vec::with_capacity(self.couplings.len());
        for c in &self.couplings {
            let quarter = c.value / 4.0;
            h[c.i as usize].add(quarter);
            h[c.j as usize].add(quarter);
            offset.add(quarter);
            couplings.push(Coupling {
                i: c.i,
                j: c.j,
                value: quarter,
            });
        }
        IsingModel {
            h: h.into_iter().map(Sum::value).collect(),
            couplings,
            offset: offset.value(),
        }
    }
}

/// Spins (`±1`) to bits (`+1 → 1`, `-1 → 0`).
#[must_use]
pub fn spins_to_bits(spins: &[i8]) -> Vec<u8> {
    spins.iter().map(|&s| u8::from(s > 0)).collect()
}

/// Bits to spins (`1 → +1`, `0 → -1`).
#[must_use]
pub fn bits_to_spins(bits: &[u8]) -> Vec<i8> {
    bits.iter().map(|&b| if b != 0 { 1 } else { -1 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_qubo(n: usize, seed: u64, integer: bool) -> QuboModel {
        let mut r = Rng::new(seed);
        let mut b = QuboModel::builder(n);
        let coef = |r: &mut Rng| {
            let v = r.next_open01() * 20.0 - 10.0;
            if integer {
                v.round()
            } else {
                v
            }
        };
        for i in 0..n {
            let v = coef(&mut r);
            b.linear(i, v);
            for j in 0..n {
                if i != j && r.below(3) == 0 {
                    let v = coef(&mut r);
                    b.quadratic(i, j, v);
                }
            }
        }
        b.offset(3.5);
        b.build_qubo().unwrap()
    }

    fn all_states(n: usize) -> impl Iterator<Item = Vec<u8>> {
        (0u32..1 << n).map(move |m| (0..n).map(|i| ((m >> i) & 1) as u8).collect())
    }

    #[test]
    fn qubo_ising_round_trip_is_exact_for_integers() {
        for seed in 0..5 {
            let q = random_qubo(9, seed, true);
            let back = q.to_ising().to_qubo();
            assert_eq!(q, back, "seed {seed}");
            let i = q.to_ising();
            assert_eq!(i, i.to_qubo().to_ising(), "seed {seed}");
        }
    }

    #[test]
    fn conversion_keeps_every_energy() {
        for seed in 0..5 {
            let q = random_qubo(8, seed + 100, false);
            let i = q.to_ising();
            for bits in all_states(8) {
                let eq = q.energy(&bits);
                let ei = i.energy(&bits_to_spins(&bits));
                assert!((eq - ei).abs() <= 1e-10 * (1.0 + eq.abs()), "{eq} vs {ei}");
            }
        }
    }

    #[test]
    fn builder_merges_and_folds_self_terms() {
        let mut b = QuboModel::builder(3);
        b.quadratic(2, 0, 1.5)
            .quadratic(0, 2, 0.5)
            .quadratic(1, 1, 4.0)
            .quadratic(0, 1, 1.0)
            .quadratic(1, 0, -1.0);
        let q = b.build_qubo().unwrap();
        assert_eq!(
            q.couplings(),
            &[Coupling {
                i: 0,
                j: 2,
                value: 2.0
            }]
        );
        assert_eq!(q.linear_terms(), &[0.0, 4.0, 0.0]);
        let mut b = IsingModel::builder(2);
        b.quadratic(1, 1, 3.0);
        let m = b.build_ising().unwrap();
        assert_eq!(m.offset(), 3.0);
        assert_eq!(m.energy(&[1, -1]), 3.0);
    }

    #[test]
    fn builder_rejects_bad_terms() {
        let mut b = QuboModel::builder(2);
        b.linear(5, 1.0);
        assert_eq!(
            b.build_qubo(),
            Err(ModelError::IndexOutOfRange {
                index: 5,
                variables: 2
            })
        );
        let mut b = IsingModel::builder(2);
        b.quadratic(0, 1, f64::NAN);
        assert!(matches!(b.build_ising(), Err(ModelError::NotFinite { .. })));
        let mut b = IsingModel::builder(2);
        b.offset(f64::INFINITY);
        assert!(matches!(
            b.build_ising(),
            Err(ModelError::OffsetNotFinite(_))
        ));
        let mut b = IsingModel::builder(2);
        b.linear(0, f64::MAX);
        assert!(matches!(b.build_ising(), Err(ModelError::TooLarge { .. })));
        // Terms within the limit whose sum is not.
        let mut b = IsingModel::builder(2);
        b.quadratic(0, 1, 0.75e100).quadratic(1, 0, 0.75e100);
        assert!(matches!(b.build_ising(), Err(ModelError::TooLarge { .. })));
    }

    #[test]
    fn empty_model_energy_is_its_offset() {
        let mut b = IsingModel::builder(0);
        b.offset(2.5);
        let m = b.build_ising().unwrap();
        assert!(m.is_empty());
        assert_eq!(m.energy(&[]), 2.5);
        assert_eq!(m.to_qubo().energy(&[]), 2.5);
    }
}
