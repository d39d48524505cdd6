//! Placement of a batch of invocations on executors as an Ising/QUBO problem.
//!
//! Each copy of an invocation must run on some executor. The binary variable
//! `x(t, e)` says "invocation `t` runs on executor `e`", and the Hamiltonian is
//!
//! ```text
//! H = Σ_{t,e} cost(t, e) x(t, e)                       locality and topology
//!   + w_balance Σ_e (load_e + Σ_t slots_t x(t, e))² / capacity_e    balance
//!   + P Σ_t (Σ_e x(t, e) - k_t)²                           exactly k copies
//!   + P Σ_e (Σ_t slots_t x(t, e) + slack_e - free_e)²      slot capacity
//!   + P Σ_e (Σ_t mem_t x(t, e) + slack'_e - free'_e)²      memory capacity
//!   + P Σ_t Σ_{e<e' in one failure domain} x(t, e) x(t, e') distinct domains
//! ```
//!
//! where `cost(t, e)` = `w_cold_start` if the tool is not warm on `e`, plus
//! `w_data ×` the distance to the nearest executor holding each input blob
//! that `e` lacks (100 if none holds it), plus `w_topology ×` the distance
//! from the invocation's origin. Distances: same server 0, same rack 1, same
//! datacenter 10, elsewhere 100. Slack variables are bounded binary
//! encodings of `0..=free_e`, so the capacity terms vanish exactly when the
//! capacity holds. Every objective coefficient is non-negative, so choosing
//! `P` larger than the sum of all objective coefficients makes every feasible
//! assignment cost less than every infeasible one (checked by brute force in
//! the tests).
//!
//! Solving: [`place`] first builds a greedy placement (each copy, largest
//! first, where it adds the least energy). By default it then anneals the
//! Hamiltonian from there with moves that keep the one-hot structure (move
//! one copy, or swap two copies of different invocations), evaluating the
//! same energy incrementally in O(k) per move with the slack minimized
//! analytically, and ends with a greedy descent. With [`Solver::Qubo`] it
//! instead builds the full QUBO ([`PlacementProblem::to_qubo`]) and runs the
//! generic annealer on it (for small batches: the QUBO has a coupling for
//! every pair of invocations that may share an executor). Every result is
//! checked against the hard constraints in exact units
//! ([`PlacementProblem::check`]); an infeasible one is repaired ([`repair`]);
//! the best feasible candidate, greedy included, is returned, and
//! [`PlacementOutcome`] says which path produced it. If nothing feasible is
//! found the answer is [`PlacementError::NoFeasiblePlacement`], never an
//! assignment that breaks a hard constraint. An executor that is already
//! over capacity is not a violation unless the placement adds to it.
//!
//! Memory (and slots, if huge) are counted in a unit chosen so that at most
//! [`UNITS_MAX`] units describe any executor: the exact greatest common
//! divisor when that is small enough, otherwise a coarser unit with demands
//! rounded up and capacities down, which is conservative (feasible in units
//! implies feasible in bytes).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::anneal::{anneal, ln_det, metropolis, AnnealError, Params, NEVER_ACCEPTED};
use crate::model::{spins_to_bits, ModelError, QuboModel};
use crate::rng::{exp_neg, Rng};

/// Where an executor (or an invocation's origin) sits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Datacenter name.
    pub datacenter: String,
    /// Rack name, within the datacenter.
    pub rack: String,
    /// Server name, within the rack.
    pub server: String,
}

impl Location {
    /// A location from its three names.
    pub fn new(
        datacenter: impl Into<String>,
        rack: impl Into<String>,
        server: impl Into<String>,
    ) -> Self {
        Self {
            datacenter: datacenter.into(),
            rack: rack.into(),
            server: server.into(),
        }
    }

    /// Same server 0, same rack 1, same datacenter 10, elsewhere 100.
    #[must_use]
    pub fn distance(&self, other: &Location) -> u32 {
        if self.datacenter != other.datacenter {
            100
        } else if self.rack != other.rack {
            10
        } else if self.server != other.server {
            1
        } else {
            0
        }
    }
}

/// Where invocations can run: a worker slot pool, a replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Executor {
    /// Name shown in placements.
    pub id: String,
    /// Slot capacity.
    pub slots: u32,
    /// Memory capacity in bytes.
    pub memory_bytes: u64,
    /// Slots already in use.
    pub load_slots: u32,
    /// Memory already in use, in bytes.
    pub load_memory_bytes: u64,
    /// Tools with a compiled, instantiated (warm) instance here.
    pub warm_tools: BTreeSet<String>,
    /// Blobs this executor's CAS holds.
    pub blobs: BTreeSet<String>,
    /// Topology position.
    pub location: Location,
    /// Copies of one invocation go to distinct failure domains.
    pub failure_domain: String,
}

/// One invocation of the batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// Name shown in placements.
    pub id: String,
    /// Slots each copy needs.
    pub slots: u32,
    /// Memory each copy needs, in bytes.
    pub memory_bytes: u64,
    /// Number of copies to run, each on a different failure domain.
    pub replicas: u32,
    /// The tool's digest (an opaque key matched against warm tools).
    pub tool: String,
    /// Input blob ids (opaque keys matched against executors' blobs).
    pub blobs: Vec<String>,
    /// Where the request comes from, if that matters.
    pub origin: Option<Location>,
}

/// The weights of the soft terms. All must be finite and non-negative.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// Cost of running where the tool is not warm.
    pub cold_start: f64,
    /// Cost per distance unit of fetching a missing input blob.
    pub data: f64,
    /// Cost per distance unit between the origin and the executor.
    pub topology: f64,
    /// Weight of `Σ_e load_e² / capacity_e` (slots).
    pub balance: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            cold_start: 10.0,
            data: 1.0,
            topology: 1.0,
            balance: 1.0,
        }
    }
}

/// Which solver places the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Solver {
    /// Anneal with structure-keeping moves (fast; the default).
    Structured,
    /// Build the full QUBO and run the generic annealer (small batches).
    Qubo,
}

/// How to place.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementParams {
    /// Annealing sweeps (one move attempt per copy per sweep).
    pub sweeps: usize,
    /// Independent reads (the best feasible one wins).
    pub reads: usize,
    /// Seed; the same seed gives the same placement.
    pub seed: u64,
    /// The solver.
    pub solver: Solver,
    /// Measure wall-clock time.
    pub measure_time: bool,
}

impl Default for PlacementParams {
    fn default() -> Self {
        Self {
            sweeps: 100,
            reads: 1,
            seed: 0,
            solver: Solver::Structured,
            measure_time: true,
        }
    }
}

/// Which path produced the placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementOutcome {
    /// The annealer's state was feasible and at least as good as greedy.
    Annealed,
    /// The annealer's state broke a hard constraint and was repaired.
    Repaired,
    /// The greedy placement was used (it was better, the annealer's state
    /// could not be repaired, or there was nothing to anneal).
    Greedy,
}

/// The energy of a placement split by term (penalties are zero for a
/// feasible placement).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EnergyBreakdown {
    /// Cold starts (tool not warm).
    pub cold_start: f64,
    /// Fetching input blobs the executor lacks.
    pub data: f64,
    /// Distance from the origin.
    pub topology: f64,
    /// Load balance.
    pub balance: f64,
    /// Penalty: copies ≠ replicas.
    pub penalty_replicas: f64,
    /// Penalty: slot capacity exceeded.
    pub penalty_slots: f64,
    /// Penalty: memory capacity exceeded.
    pub penalty_memory: f64,
    /// Penalty: two copies in one failure domain.
    pub penalty_failure_domain: f64,
    /// The sum of the objective terms (no penalties).
    pub objective: f64,
    /// Everything: the Hamiltonian's value.
    pub total: f64,
}

/// A placement: for each invocation, the executors (indices) of its copies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Placement {
    /// `assignment[t]` lists the executors of invocation `t`, ascending.
    pub assignment: Vec<Vec<usize>>,
    /// Which path produced it.
    pub outcome: PlacementOutcome,
    /// Its energy by term.
    pub energy: EnergyBreakdown,
    /// The greedy placement's objective, when greedy succeeded (for
    /// comparison in `--explain`).
    pub greedy_objective: Option<f64>,
    /// Time spent, when measured.
    #[serde(serialize_with = "serialize_seconds")]
    pub elapsed: Option<Duration>,
}

fn serialize_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Why a batch could not be placed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlacementError {
    /// No executors were given.
    #[error("no executors: add at least one executor with free capacity")]
    NoExecutors,
    /// A weight is NaN, infinite or negative.
    #[error("weight `{name}` is {value}: weights must be finite and non-negative")]
    BadWeight {
        /// The weight's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// An invocation asks for zero copies.
    #[error("invocation `{0}` asks for 0 replicas: ask for at least 1")]
    ZeroReplicas(String),
    /// An invocation fits on no executor, or on too few failure domains.
    #[error("invocation `{id}` cannot be placed: {reason}")]
    Unplaceable {
        /// The invocation.
        id: String,
        /// Why.
        reason: String,
    },
    /// The batch needs more than all executors have free.
    #[error("the batch needs {needed} {resource} but the executors have {free} free: split the batch or add executors")]
    Overcommitted {
        /// `slots` or `memory bytes`.
        resource: &'static str,
        /// Total demand.
        needed: u128,
        /// Total free capacity.
        free: u128,
    },
    /// Neither the annealer, the repair nor greedy found a feasible placement.
    #[error("no placement satisfying every capacity and failure-domain constraint was found: the batch is too tight for these executors; split it or add capacity")]
    NoFeasiblePlacement,
    /// The batch is larger than one placement handles.
    #[error("{invocations} invocations × {executors} executors is more than the {max} pairs one placement handles: split the batch")]
    TooLarge {
        /// Invocations in the batch.
        invocations: usize,
        /// Executors.
        executors: usize,
        /// The limit, [`PAIRS_MAX`].
        max: usize,
    },
    /// Bad solver parameters.
    #[error("invalid placement parameters: {0}")]
    Params(String),
}

impl From<AnnealError> for PlacementError {
    fn from(e: AnnealError) -> Self {
        PlacementError::Params(e.to_string())
    }
}

impl From<ModelError> for PlacementError {
    fn from(e: ModelError) -> Self {
        PlacementError::Params(e.to_string())
    }
}

/// A batch of at most this many copies is small: it gets at least
/// `SMALL_BATCH_READS` reads.
const SMALL_BATCH_COPIES: usize = 32;
const SMALL_BATCH_READS: usize = 8;

/// At most this many (invocation, executor) pairs in one placement: the
/// problem keeps a cost per pair.
pub const PAIRS_MAX: usize = 1 << 24;

/// At most this many units describe any executor's capacity in the
/// Hamiltonian (keeps slack small and coefficients exact in `f64`).
pub const UNITS_MAX: u64 = 4096;

/// A resource (slots or memory) expressed in integer units.
#[derive(Clone, Debug)]
struct Quantized {
    /// Bytes (or slots) per unit.
    unit: u64,
    /// Free capacity per executor, in units (rounded down).
    free: Vec<i64>,
    /// Demand per invocation, in units (rounded up).
    demand: Vec<i64>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Quantized {
    fn new(free: &[u64], demand: &[u64]) -> Self {
        let g = free
            .iter()
            .chain(demand)
            .fold(0u64, |g, &v| gcd(g, v))
            .max(1);
        let max = free.iter().chain(demand).copied().max().unwrap_or(0);
        let unit = if max / g <= UNITS_MAX {
            g
        } else {
            max.div_ceil(UNITS_MAX)
        };
        Self {
            unit,
            free: free.iter().map(|&f| (f / unit) as i64).collect(),
            demand: demand.iter().map(|&d| d.div_ceil(unit) as i64).collect(),
        }
    }
}

/// Refuses batches with more than [`PAIRS_MAX`] (invocation, executor) pairs.
fn check_size(invocations: usize, executors: usize) -> Result<(), PlacementError> {
    if invocations.saturating_mul(executors) > PAIRS_MAX {
        return Err(PlacementError::TooLarge {
            invocations,
            executors,
            max: PAIRS_MAX,
        });
    }
    Ok(())
}

/// A validated batch with everything the solvers need precomputed.
#[derive(Clone, Debug)]
pub struct PlacementProblem {
    invocations: Vec<Invocation>,
    executors: Vec<Executor>,
    weights: Weights,
    /// `eligible[t][..]`: executors where one copy of `t` fits alone.
    eligible: Vec<Vec<usize>>,
    /// `cost[t * E + e]`: the linear cost (infinite where not eligible).
    cost: Vec<f64>,
    /// Per executor: failure-domain index.
    domain: Vec<usize>,
    slots: Quantized,
    memory: Quantized,
    /// Slot capacity as f64 (balance divides by it); 0 for a full stop.
    capacity: Vec<f64>,
    /// The penalty weight P.
    penalty: f64,
}

impl PlacementProblem {
    /// Validates a batch and precomputes costs and the penalty weight.
    ///
    /// An empty batch is valid (its placement is empty). An executor with
    /// zero capacity simply receives nothing.
    pub fn new(
        invocations: Vec<Invocation>,
        executors: Vec<Executor>,
        weights: Weights,
    ) -> Result<Self, PlacementError> {
        for (name, value) in [
            ("cold_start", weights.cold_start),
            ("data", weights.data),
            ("topology", weights.topology),
            ("balance", weights.balance),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(PlacementError::BadWeight { name, value });
            }
        }
        if executors.is_empty() {
            return Err(PlacementError::NoExecutors);
        }
        check_size(invocations.len(), executors.len())?;
        let ne = executors.len();
        let free_slots: Vec<u64> = executors
            .iter()
            .map(|e| u64::from(e.slots.saturating_sub(e.load_slots)))
            .collect();
        let free_mem: Vec<u64> = executors
            .iter()
            .map(|e| e.memory_bytes.saturating_sub(e.load_memory_bytes))
            .collect();
        for t in &invocations {
            if t.replicas == 0 {
                return Err(PlacementError::ZeroReplicas(t.id.clone()));
            }
        }
        let needed_slots: u128 = invocations
            .iter()
            .map(|t| u128::from(t.slots) * u128::from(t.replicas))
            .sum();
        let free_total: u128 = free_slots.iter().map(|&v| u128::from(v)).sum();
        if needed_slots > free_total {
            return Err(PlacementError::Overcommitted {
                resource: "slots",
                needed: needed_slots,
                free: free_total,
            });
        }
        let needed_mem: u128 = invocations
            .iter()
            .map(|t| u128::from(t.memory_bytes) * u128::from(t.replicas))
            .sum();
        let free_mem_total: u128 = free_mem.iter().map(|&v| u128::from(v)).sum();
        if needed_mem > free_mem_total {
            return Err(PlacementError::Overcommitted {
                resource: "memory bytes",
                needed: needed_mem,
                free: free_mem_total,
            });
        }
        let slots = Quantized::new(
            &free_slots,
            &invocations
                .iter()
                .map(|t| u64::from(t.slots))
                .collect::<Vec<_>>(),
        );
        let memory = Quantized::new(
            &free_mem,
            &invocations
                .iter()
                .map(|t| t.memory_bytes)
                .collect::<Vec<_>>(),
        );
        let mut domain_ids = BTreeMap::new();
        let domain: Vec<usize> = executors
            .iter()
            .map(|e| {
                let next = domain_ids.len();
                *domain_ids.entry(e.failure_domain.clone()).or_insert(next)
            })
            .collect();
        // Nearest holder of each blob, per executor.
        let mut holders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (ei, e) in executors.iter().enumerate() {
            for b in &e.blobs {
                holders.entry(b.as_str()).or_default().push(ei);
            }
        }
        let fetch = |b: &str, e: usize| -> f64 {
            match holders.get(b) {
                Some(hs) => f64::from(
                    hs.iter()
                        .map(|&h| executors[e].location.distance(&executors[h].location))
                        .min()
                        .unwrap_or(100),
                ),
                None => 100.0,
            }
        };
        let mut eligible = Vec::with_capacity(invocations.len());
        let mut cost = vec![f64::INFINITY; invocations.len() * ne];
        for (ti, t) in invocations.iter().enumerate() {
            let mut el = Vec::new();
            for (ei, e) in executors.iter().enumerate() {
                let fits = slots.demand[ti] <= slots.free[ei]
                    && memory.demand[ti] <= memory.free[ei]
                    && e.slots > 0
                    && u64::from(t.slots) <= free_slots[ei]
                    && t.memory_bytes <= free_mem[ei];
                if !fits {
                    continue;
                }
                el.push(ei);
                let cold = if e.warm_tools.contains(&t.tool) {
                    0.0
                } else {
                    weights.cold_start
                };
                let data: f64 = t
                    .blobs
                    .iter()
                    .filter(|b| !e.blobs.contains(*b))
                    .map(|b| fetch(b, ei))
                    .sum::<f64>()
                    * weights.data;
                let topo = t
                    .origin
                    .as_ref()
                    .map_or(0.0, |o| f64::from(o.distance(&e.location)))
                    * weights.topology;
                cost[ti * ne + ei] = cold + data + topo;
            }
            if el.is_empty() {
                return Err(PlacementError::Unplaceable {
                    id: t.id.clone(),
                    reason: format!(
                        "no executor has {} free slots and {} free memory bytes",
                        t.slots, t.memory_bytes
                    ),
                });
            }
            let domains: BTreeSet<usize> = el.iter().map(|&e| domain[e]).collect();
            if (domains.len() as u64) < u64::from(t.replicas) {
                return Err(PlacementError::Unplaceable {
                    id: t.id.clone(),
                    reason: format!(
                        "it needs {} replicas on distinct failure domains but fits on executors of only {} domain(s)",
                        t.replicas,
                        domains.len()
                    ),
                });
            }
            eligible.push(el);
        }
        let capacity: Vec<f64> = executors.iter().map(|e| f64::from(e.slots)).collect();
        let mut problem = Self {
            invocations,
            executors,
            weights,
            eligible,
            cost,
            domain,
            slots,
            memory,
            capacity,
            penalty: 0.0,
        };
        problem.penalty = problem.objective_coefficient_bound() + 1.0;
        if !problem.penalty.is_finite() {
            return Err(PlacementError::Params(
                "the objective's coefficients overflow: use smaller weights".into(),
            ));
        }
        Ok(problem)
    }

    /// The invocations.
    #[must_use]
    pub fn invocations(&self) -> &[Invocation] {
        &self.invocations
    }

    /// The executors.
    #[must_use]
    pub fn executors(&self) -> &[Executor] {
        &self.executors
    }

    /// The penalty weight P of the hard constraints.
    #[must_use]
    pub fn penalty(&self) -> f64 {
        self.penalty
    }

    /// Bytes per memory unit in the Hamiltonian (see the module docs).
    #[must_use]
    pub fn memory_unit_bytes(&self) -> u64 {
        self.memory.unit
    }

    /// Slots per slot unit in the Hamiltonian (1 unless capacities are huge).
    #[must_use]
    pub fn slot_unit(&self) -> u64 {
        self.slots.unit
    }

    /// Executors on which one copy of invocation `t` fits alone.
    #[must_use]
    pub fn eligible(&self, t: usize) -> &[usize] {
        &self.eligible[t]
    }

    fn ne(&self) -> usize {
        self.executors.len()
    }

    /// The linear cost of a copy of `t` on `e`, split into (cold start, data,
    /// topology).
    fn cost_parts(&self, t: usize, e: usize) -> (f64, f64, f64) {
        let inv = &self.invocations[t];
        let ex = &self.executors[e];
        let cold = if ex.warm_tools.contains(&inv.tool) {
            0.0
        } else {
            self.weights.cold_start
        };
        let topo = inv
            .origin
            .as_ref()
            .map_or(0.0, |o| f64::from(o.distance(&ex.location)))
            * self.weights.topology;
        let total = self.cost[t * self.ne() + e];
        (cold, total - cold - topo, topo)
    }

    /// Balance coefficient of executor `e` (0 for a zero-capacity executor,
    /// which never receives anything).
    fn balance_coef(&self, e: usize) -> f64 {
        if self.capacity[e] > 0.0 {
            self.weights.balance / self.capacity[e]
        } else {
            0.0
        }
    }

    /// The sum of the absolute values of every non-constant objective
    /// coefficient of the QUBO: no two assignments' objectives differ by
    /// more, so a penalty above it puts every feasible state below every
    /// infeasible one.
    fn objective_coefficient_bound(&self) -> f64 {
        let ne = self.ne();
        let mut sum = 0.0;
        let mut per_exec_s = vec![0.0f64; ne];
        let mut per_exec_s2 = vec![0.0f64; ne];
        for (t, el) in self.eligible.iter().enumerate() {
            let s = f64::from(self.invocations[t].slots);
            for &e in el {
                let b = self.balance_coef(e);
                let load = f64::from(self.executors[e].load_slots);
                sum += self.cost[t * ne + e] + b * (2.0 * load * s + s * s);
                per_exec_s[e] += s;
                per_exec_s2[e] += s * s;
            }
        }
        for e in 0..ne {
            // Σ_{t<t'} 2 b s_t s_t' = b ((Σ s)² - Σ s²).
            sum += self.balance_coef(e) * (per_exec_s[e] * per_exec_s[e] - per_exec_s2[e]);
        }
        sum
    }

    /// The energy of an assignment, by term. Copies on executors where they
    /// are not eligible count as capacity violations.
    ///
    /// # Panics
    /// If the assignment does not have one entry per invocation or names an
    /// executor that does not exist (caller bugs).
    #[must_use]
    pub fn breakdown(&self, assignment: &[Vec<usize>]) -> EnergyBreakdown {
        assert_eq!(
            assignment.len(),
            self.invocations.len(),
            "one executor list per invocation"
        );
        let ne = self.ne();
        let mut b = EnergyBreakdown::default();
        let mut used_slots = vec![0i64; ne];
        let mut used_mem = vec![0i64; ne];
        let mut load = vec![0.0f64; ne];
        let mut ineligible = 0.0;
        for (t, execs) in assignment.iter().enumerate() {
            let inv = &self.invocations[t];
            let k = f64::from(inv.replicas);
            let missing = execs.len() as f64 - k;
            b.penalty_replicas += self.penalty * missing * missing;
            for (a, &e) in execs.iter().enumerate() {
                assert!(e < ne, "executor index {e} out of range");
                if self.cost[t * ne + e].is_finite() {
                    let (cold, data, topo) = self.cost_parts(t, e);
                    b.cold_start += cold;
                    b.data += data;
                    b.topology += topo;
                } else {
                    ineligible += self.penalty;
                }
                used_slots[e] += self.slots.demand[t];
                used_mem[e] += self.memory.demand[t];
                load[e] += f64::from(inv.slots);
                for &e2 in &execs[a + 1..] {
                    if self.domain[e] == self.domain[e2] {
                        b.penalty_failure_domain += self.penalty;
                    }
                }
            }
        }
        for e in 0..ne {
            let l = f64::from(self.executors[e].load_slots) + load[e];
            b.balance += self.balance_coef(e) * l * l;
            let over = (used_slots[e] - self.slots.free[e]).max(0) as f64;
            b.penalty_slots += self.penalty * over * over;
            let over = (used_mem[e] - self.memory.free[e]).max(0) as f64;
            b.penalty_memory += self.penalty * over * over;
        }
        b.penalty_slots += ineligible;
        b.objective = b.cold_start + b.data + b.topology + b.balance;
        b.total = b.objective
            + b.penalty_replicas
            + b.penalty_slots
            + b.penalty_memory
            + b.penalty_failure_domain;
        b
    }

    /// Checks every hard constraint in exact units (slots and bytes, not the
    /// Hamiltonian's rounded units). `Err` says the first violation found.
    pub fn check(&self, assignment: &[Vec<usize>]) -> Result<(), String> {
        if assignment.len() != self.invocations.len() {
            return Err(format!(
                "{} executor lists for {} invocations",
                assignment.len(),
                self.invocations.len()
            ));
        }
        let ne = self.ne();
        let mut slots = vec![0u64; ne];
        let mut mem = vec![0u128; ne];
        for (t, execs) in assignment.iter().enumerate() {
            let inv = &self.invocations[t];
            if execs.len() != inv.replicas as usize {
                return Err(format!(
                    "invocation `{}` has {} copies, wants {}",
                    inv.id,
                    execs.len(),
                    inv.replicas
                ));
            }
            let mut domains = BTreeSet::new();
            for &e in execs {
                if e >= ne {
                    return Err(format!(
                        "invocation `{}` names executor {e}, which does not exist",
                        inv.id
                    ));
                }
                if !domains.insert(self.domain[e]) {
                    return Err(format!(
                        "invocation `{}` has two copies in failure domain `{}`",
                        inv.id, self.executors[e].failure_domain
                    ));
                }
                slots[e] += u64::from(inv.slots);
                mem[e] += u128::from(inv.memory_bytes);
            }
        }
        for (e, ex) in self.executors.iter().enumerate() {
            // An executor that is already over capacity is not this
            // placement's doing; giving it anything more would be.
            if !within(
                u128::from(slots[e]),
                u128::from(ex.load_slots),
                u128::from(ex.slots),
            ) {
                return Err(format!(
                    "executor `{}` gets {} slots with {} in use of {}",
                    ex.id, slots[e], ex.load_slots, ex.slots
                ));
            }
            if !within(
                mem[e],
                u128::from(ex.load_memory_bytes),
                u128::from(ex.memory_bytes),
            ) {
                return Err(format!(
                    "executor `{}` gets {} memory bytes with {} in use of {}",
                    ex.id, mem[e], ex.load_memory_bytes, ex.memory_bytes
                ));
            }
        }
        Ok(())
    }
}

/// The variables of the placement QUBO.
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
        for (t, el) in self.eligible.iter().enumerate() {
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
        for (t, el) in self.eligible.iter().enumerate() {
            let terms: Vec<(usize, f64)> = el.iter().map(|&e| (var_of[t * ne + e], 1.0)).collect();
            equalities.push((terms, -f64::from(self.invocations[t].replicas)));
        }
        let mut domain_pairs = Vec::new();
        for (t, el) in self.eligible.iter().enumerate() {
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

/// Mutable state of the structured annealer: where each copy is, per-executor
/// usage, and the energy, all kept consistent move by move.
#[derive(Clone, Debug)]
struct State<'p> {
    p: &'p PlacementProblem,
    /// `copies[c] = (invocation, executor)`.
    copies: Vec<(usize, usize)>,
    /// For each invocation, the indices of its copies in `copies`.
    of_invocation: Vec<Vec<usize>>,
    used_slots: Vec<i64>,
    used_mem: Vec<i64>,
    /// Slot load including existing load, for balance.
    load: Vec<f64>,
    /// Penalty units: slot overflow² + memory overflow² + domain clashes.
    violations: i64,
    energy: f64,
}

impl<'p> State<'p> {
    /// A state from an assignment that has exactly `replicas` copies per
    /// invocation on eligible executors (domains and capacity may clash).
    fn new(p: &'p PlacementProblem, assignment: &[Vec<usize>]) -> Self {
        let ne = p.ne();
        let mut copies = Vec::new();
        let mut of_invocation = vec![Vec::new(); assignment.len()];
        for (t, execs) in assignment.iter().enumerate() {
            debug_assert_eq!(execs.len(), p.invocations[t].replicas as usize);
            for &e in execs {
                of_invocation[t].push(copies.len());
                copies.push((t, e));
            }
        }
        let mut s = Self {
            p,
            copies,
            of_invocation,
            used_slots: vec![0; ne],
            used_mem: vec![0; ne],
            load: p
                .executors
                .iter()
                .map(|e| f64::from(e.load_slots))
                .collect(),
            violations: 0,
            energy: 0.0,
        };
        for &(t, e) in &s.copies {
            s.used_slots[e] += p.slots.demand[t];
            s.used_mem[e] += p.memory.demand[t];
            s.load[e] += f64::from(p.invocations[t].slots);
        }
        s.recompute();
        s
    }

    fn recompute(&mut self) {
        let p = self.p;
        let ne = p.ne();
        let mut obj = 0.0;
        let mut viol = 0i64;
        for &(t, e) in &self.copies {
            obj += p.cost[t * ne + e];
        }
        for e in 0..ne {
            obj += p.balance_coef(e) * self.load[e] * self.load[e];
            viol += sq_over(self.used_slots[e], p.slots.free[e])
                + sq_over(self.used_mem[e], p.memory.free[e]);
        }
        for cs in &self.of_invocation {
            for (a, &c) in cs.iter().enumerate() {
                for &c2 in &cs[a + 1..] {
                    viol += i64::from(p.domain[self.copies[c].1] == p.domain[self.copies[c2].1]);
                }
            }
        }
        self.violations = viol;
        self.energy = obj + p.penalty * viol as f64;
    }

    /// (Δbalance, Δviolations) of executor `e` gaining `ds` slot units, `dm`
    /// memory units and `dl` slots of load (negative to lose them).
    #[inline]
    fn executor_delta(&self, e: usize, ds: i64, dm: i64, dl: f64) -> (f64, i64) {
        let p = self.p;
        let l = self.load[e];
        let d_bal = p.balance_coef(e) * ((l + dl) * (l + dl) - l * l);
        let (us, um) = (self.used_slots[e], self.used_mem[e]);
        let d_viol = sq_over(us + ds, p.slots.free[e]) - sq_over(us, p.slots.free[e])
            + sq_over(um + dm, p.memory.free[e])
            - sq_over(um, p.memory.free[e]);
        (d_bal, d_viol)
    }

    /// Change in same-domain pairs when copy `c` moves from `from` to `to`.
    #[inline]
    fn domain_delta(&self, c: usize, from: usize, to: usize) -> i64 {
        let p = self.p;
        let (df, dt) = (p.domain[from], p.domain[to]);
        if df == dt {
            return 0;
        }
        let t = self.copies[c].0;
        self.of_invocation[t]
            .iter()
            .filter(|&&c2| c2 != c)
            .map(|&c2| {
                let d2 = p.domain[self.copies[c2].1];
                i64::from(d2 == dt) - i64::from(d2 == df)
            })
            .sum()
    }

    /// (Δobjective, Δviolations) of moving copy `c` to executor `to`.
    fn move_delta(&self, c: usize, to: usize) -> (f64, i64) {
        let p = self.p;
        let ne = p.ne();
        let (t, from) = self.copies[c];
        debug_assert_ne!(from, to);
        let (su, mu, s) = (
            p.slots.demand[t],
            p.memory.demand[t],
            f64::from(p.invocations[t].slots),
        );
        let (bf, vf) = self.executor_delta(from, -su, -mu, -s);
        let (bt, vt) = self.executor_delta(to, su, mu, s);
        let d_obj = p.cost[t * ne + to] - p.cost[t * ne + from] + bf + bt;
        (d_obj, vf + vt + self.domain_delta(c, from, to))
    }

    /// (Δobjective, Δviolations) of swapping the executors of copies `c` and
    /// `c2` (of different invocations, on different executors).
    fn swap_delta(&self, c: usize, c2: usize) -> (f64, i64) {
        let p = self.p;
        let ne = p.ne();
        let (t, a) = self.copies[c];
        let (t2, b) = self.copies[c2];
        debug_assert!(t != t2 && a != b);
        let ds = p.slots.demand[t2] - p.slots.demand[t];
        let dm = p.memory.demand[t2] - p.memory.demand[t];
        let dl = f64::from(p.invocations[t2].slots) - f64::from(p.invocations[t].slots);
        let (ba, va) = self.executor_delta(a, ds, dm, dl);
        let (bb, vb) = self.executor_delta(b, -ds, -dm, -dl);
        let d_obj = p.cost[t * ne + b] - p.cost[t * ne + a] + p.cost[t2 * ne + a]
            - p.cost[t2 * ne + b]
            + ba
            + bb;
        (
            d_obj,
            va + vb + self.domain_delta(c, a, b) + self.domain_delta(c2, b, a),
        )
    }

    /// Moves copy `c` to `to`, updating usage but not the energy.
    fn shift(&mut self, c: usize, to: usize) {
        let p = self.p;
        let (t, from) = self.copies[c];
        let (su, mu, s) = (
            p.slots.demand[t],
            p.memory.demand[t],
            f64::from(p.invocations[t].slots),
        );
        self.used_slots[from] -= su;
        self.used_slots[to] += su;
        self.used_mem[from] -= mu;
        self.used_mem[to] += mu;
        self.load[from] -= s;
        self.load[to] += s;
        self.copies[c].1 = to;
    }

    /// Moves copy `c` to `to` with its energy change already known.
    fn relocate(&mut self, c: usize, to: usize, (d_obj, d_viol): (f64, i64)) {
        self.shift(c, to);
        self.violations += d_viol;
        self.energy += d_obj + self.p.penalty * d_viol as f64;
    }

    /// Whether invocation `t` already has a copy on `e` (other than `except`).
    fn has_copy_on(&self, t: usize, e: usize, except: usize) -> bool {
        self.of_invocation[t]
            .iter()
            .any(|&c| c != except && self.copies[c].1 == e)
    }

    fn assignment(&self) -> Vec<Vec<usize>> {
        let mut a: Vec<Vec<usize>> = self
            .of_invocation
            .iter()
            .map(|cs| cs.iter().map(|&c| self.copies[c].1).collect())
            .collect();
        for execs in &mut a {
            execs.sort_unstable();
        }
        a
    }

    /// Greedy descent: moves each copy to its best executor while that lowers
    /// the energy.
    fn descend(&mut self) {
        for _pass in 0..100 {
            let mut improved = false;
            for c in 0..self.copies.len() {
                let (t, from) = self.copies[c];
                let mut best: Option<(f64, usize, (f64, i64))> = None;
                for &to in &self.p.eligible[t] {
                    if to == from || self.has_copy_on(t, to, c) {
                        continue;
                    }
                    let d = self.move_delta(c, to);
                    let de = d.0 + self.p.penalty * d.1 as f64;
                    if de < -1e-9 * (1.0 + self.energy.abs()) && best.is_none_or(|(b, _, _)| de < b)
                    {
                        best = Some((de, to, d));
                    }
                }
                if let Some((_, to, d)) = best {
                    self.relocate(c, to, d);
                    improved = true;
                }
            }
            if !improved {
                break;
            }
        }
        // Summing many small changes accumulates rounding.
        self.recompute();
    }
}

fn sq_over(used: i64, free: i64) -> i64 {
    let o = (used - free).max(0);
    o * o
}

/// The feasible executors for one more copy of `t`, given usage so far.
fn fits(
    p: &PlacementProblem,
    t: usize,
    e: usize,
    used_slots: &[u64],
    used_mem: &[u128],
    taken_domains: &[usize],
) -> bool {
    room(p, t, e, used_slots, used_mem) && !taken_domains.contains(&p.domain[e])
}

/// Whether one more copy of `t` fits on `e` after `used_*`, by the rule of
/// [`PlacementProblem::check`].
fn room(p: &PlacementProblem, t: usize, e: usize, used_slots: &[u64], used_mem: &[u128]) -> bool {
    let inv = &p.invocations[t];
    let ex = &p.executors[e];
    within(
        u128::from(used_slots[e]) + u128::from(inv.slots),
        u128::from(ex.load_slots),
        u128::from(ex.slots),
    ) && within(
        used_mem[e] + u128::from(inv.memory_bytes),
        u128::from(ex.load_memory_bytes),
        u128::from(ex.memory_bytes),
    )
}

/// The capacity rule: adding nothing is always fine (an executor already over
/// capacity is not the placement's doing); adding something must keep
/// `added + load <= capacity`.
fn within(added: u128, load: u128, capacity: u128) -> bool {
    added == 0 || added + load <= capacity
}

/// Copies in placement order: biggest first (bin-packing's best friend),
/// then by index for determinism.
fn copy_order(p: &PlacementProblem) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.invocations.len()).collect();
    order.sort_by_key(|&t| {
        (
            std::cmp::Reverse((p.invocations[t].slots, p.invocations[t].memory_bytes)),
            t,
        )
    });
    order
}

/// Greedy placement by marginal cost: each copy (largest first) goes to the
/// feasible executor where it adds the least energy. `None` if some copy
/// finds no room.
#[must_use]
pub fn greedy(p: &PlacementProblem) -> Option<Vec<Vec<usize>>> {
    greedy_by(p, |p, t, e, load| {
        let s = f64::from(p.invocations[t].slots);
        p.cost[t * p.ne() + e] + p.balance_coef(e) * ((load + s) * (load + s) - load * load)
    })
}

/// The baseline scheduler: each copy goes to the feasible executor with the
/// lowest slot utilization, ignoring locality and topology.
#[must_use]
pub fn greedy_least_loaded(p: &PlacementProblem) -> Option<Vec<Vec<usize>>> {
    greedy_by(p, |p, _t, e, load| load / p.capacity[e].max(1.0))
}

fn greedy_by(
    p: &PlacementProblem,
    score: impl Fn(&PlacementProblem, usize, usize, f64) -> f64,
) -> Option<Vec<Vec<usize>>> {
    let ne = p.ne();
    let mut used_slots = vec![0u64; ne];
    let mut used_mem = vec![0u128; ne];
    let mut load: Vec<f64> = p
        .executors
        .iter()
        .map(|e| f64::from(e.load_slots))
        .collect();
    let mut a = vec![Vec::new(); p.invocations.len()];
    for t in copy_order(p) {
        let mut domains = Vec::new();
        for _ in 0..p.invocations[t].replicas {
            let mut best: Option<(f64, usize)> = None;
            for &e in &p.eligible[t] {
                if !fits(p, t, e, &used_slots, &used_mem, &domains) {
                    continue;
                }
                let sc = score(p, t, e, load[e]);
                if best.is_none_or(|(b, _)| sc < b) {
                    best = Some((sc, e));
                }
            }
            let (_, e) = best?;
            used_slots[e] += u64::from(p.invocations[t].slots);
            used_mem[e] += u128::from(p.invocations[t].memory_bytes);
            load[e] += f64::from(p.invocations[t].slots);
            domains.push(p.domain[e]);
            a[t].push(e);
        }
        a[t].sort_unstable();
    }
    Some(a)
}

/// Makes an assignment feasible if it can: drops extra copies and copies that
/// clash on a failure domain or overflow an executor, then places the missing
/// ones greedily. `None` if some copy finds no room.
#[must_use]
pub fn repair(p: &PlacementProblem, assignment: &[Vec<usize>]) -> Option<Vec<Vec<usize>>> {
    let ne = p.ne();
    let mut a: Vec<Vec<usize>> = Vec::with_capacity(assignment.len());
    // Keep at most `replicas` eligible copies on distinct domains, cheapest first.
    for (t, execs) in assignment.iter().enumerate() {
        let mut execs: Vec<usize> = execs
            .iter()
            .copied()
            .filter(|&e| e < ne && p.cost[t * ne + e].is_finite())
            .collect();
        execs.sort_by(|&x, &y| {
            p.cost[t * ne + x]
                .total_cmp(&p.cost[t * ne + y])
                .then(x.cmp(&y))
        });
        execs.dedup();
        let mut kept = Vec::new();
        let mut domains = Vec::new();
        for e in execs {
            if kept.len() < p.invocations[t].replicas as usize && !domains.contains(&p.domain[e]) {
                domains.push(p.domain[e]);
                kept.push(e);
            }
        }
        a.push(kept);
    }
    // Drop copies from overflowing executors, largest first, until they fit.
    let mut used_slots = vec![0u64; ne];
    let mut used_mem = vec![0u128; ne];
    for t in copy_order(p).into_iter().rev() {
        let inv = &p.invocations[t];
        let mut kept = Vec::new();
        for &e in &a[t] {
            if room(p, t, e, &used_slots, &used_mem) {
                used_slots[e] += u64::from(inv.slots);
                used_mem[e] += u128::from(inv.memory_bytes);
                kept.push(e);
            }
        }
        a[t] = kept;
    }
    // Place what is missing by marginal cost.
    let mut load: Vec<f64> = p
        .executors
        .iter()
        .map(|e| f64::from(e.load_slots))
        .collect();
    for (t, execs) in a.iter().enumerate() {
        for &e in execs {
            load[e] += f64::from(p.invocations[t].slots);
        }
    }
    for t in copy_order(p) {
        while a[t].len() < p.invocations[t].replicas as usize {
            let domains: Vec<usize> = a[t].iter().map(|&e| p.domain[e]).collect();
            let s = f64::from(p.invocations[t].slots);
            let mut best: Option<(f64, usize)> = None;
            for &e in &p.eligible[t] {
                if !fits(p, t, e, &used_slots, &used_mem, &domains) {
                    continue;
                }
                let sc = p.cost[t * ne + e]
                    + p.balance_coef(e) * ((load[e] + s) * (load[e] + s) - load[e] * load[e]);
                if best.is_none_or(|(b, _)| sc < b) {
                    best = Some((sc, e));
                }
            }
            let (_, e) = best?;
            used_slots[e] += u64::from(p.invocations[t].slots);
            used_mem[e] += u128::from(p.invocations[t].memory_bytes);
            load[e] += s;
            a[t].push(e);
        }
        a[t].sort_unstable();
    }
    Some(a)
}

/// Each invocation's copies on its cheapest eligible executors of distinct
/// domains, ignoring capacity: the annealer's start when greedy fails.
fn cheapest_ignoring_capacity(p: &PlacementProblem) -> Vec<Vec<usize>> {
    let ne = p.ne();
    (0..p.invocations.len())
        .map(|t| {
            let mut el = p.eligible[t].clone();
            el.sort_by(|&x, &y| {
                p.cost[t * ne + x]
                    .total_cmp(&p.cost[t * ne + y])
                    .then(x.cmp(&y))
            });
            let mut chosen = Vec::new();
            let mut domains = Vec::new();
            for e in el {
                if chosen.len() < p.invocations[t].replicas as usize
                    && !domains.contains(&p.domain[e])
                {
                    domains.push(p.domain[e]);
                    chosen.push(e);
                }
            }
            chosen.sort_unstable();
            chosen
        })
        .collect()
}

/// Structured simulated annealing from `start`; returns the best state
/// without violations seen (polished), or the final state if none was clean.
fn anneal_structured(
    p: &PlacementProblem,
    start: &[Vec<usize>],
    sweeps: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut st = State::new(p, start);
    if st.copies.is_empty() {
        return st.assignment();
    }
    let mut rng = Rng::new(seed);
    let n_copies = st.copies.len();
    let ne = p.ne();
    // The temperature scale comes from the objective changes of random moves
    // (penalties excluded): hot enough that a typical large move passes half
    // the time, cold enough that the smallest one seen almost never does.
    let mut deltas = Vec::new();
    for _ in 0..64.min(4 * n_copies) {
        let c = rng.below(n_copies as u64) as usize;
        let (t, from) = st.copies[c];
        let el = &p.eligible[t];
        let to = el[rng.below(el.len() as u64) as usize];
        if to == from || st.has_copy_on(t, to, c) {
            continue;
        }
        let (d_obj, _) = st.move_delta(c, to);
        if d_obj.abs() > 1e-9 {
            deltas.push(d_obj.abs());
        }
    }
    deltas.sort_by(f64::total_cmp);
    let (hot, cold) = if deltas.is_empty() {
        (1.0, 1.0)
    } else {
        let big = deltas[deltas.len() * 9 / 10];
        let small = deltas[0];
        let hot = std::f64::consts::LN_2 / big;
        (hot, (ln_det(100.0 * n_copies as f64) / small).max(hot))
    };
    let mut best_energy = if st.violations == 0 {
        st.energy
    } else {
        f64::INFINITY
    };
    let mut best: Vec<usize> = st.copies.iter().map(|&(_, e)| e).collect();
    // Geometric schedule with deterministic arithmetic (no platform `pow`).
    let ratio = if sweeps > 1 {
        1.0 / exp_neg((ln_det(cold) - ln_det(hot)) / (sweeps - 1) as f64)
    } else {
        1.0
    };
    let mut beta = hot;
    // Small batches get at least 64 attempts per sweep: it costs microseconds
    // and makes small placements reliably optimal.
    let attempts = n_copies.max(64);
    let table = metropolis();
    for _sweep in 0..sweeps {
        for _ in 0..attempts {
            let r = rng.next_u64();
            let c = (((r >> 32) * n_copies as u64) >> 32) as usize;
            let (t, from) = st.copies[c];
            if r & 3 == 0 {
                // Swap with a copy of another invocation on another executor.
                let c2 = rng.below(n_copies as u64) as usize;
                let (t2, to) = st.copies[c2];
                if t2 == t
                    || to == from
                    || p.cost[t * ne + to].is_infinite()
                    || p.cost[t2 * ne + from].is_infinite()
                    || st.has_copy_on(t, to, c)
                    || st.has_copy_on(t2, from, c2)
                {
                    continue;
                }
                let d = st.swap_delta(c, c2);
                let de = d.0 + p.penalty * d.1 as f64;
                if de <= 0.0 || (beta * de < NEVER_ACCEPTED && table.accept(beta * de, &mut rng)) {
                    st.shift(c, to);
                    st.shift(c2, from);
                    st.violations += d.1;
                    st.energy += de;
                }
            } else {
                let el = &p.eligible[t];
                let to = el[rng.below(el.len() as u64) as usize];
                if to == from || st.has_copy_on(t, to, c) {
                    continue;
                }
                let d = st.move_delta(c, to);
                let de = d.0 + p.penalty * d.1 as f64;
                if de <= 0.0 || (beta * de < NEVER_ACCEPTED && table.accept(beta * de, &mut rng)) {
                    st.relocate(c, to, d);
                }
            }
        }
        if st.violations == 0 && st.energy < best_energy - 1e-9 * (1.0 + best_energy.abs()) {
            best_energy = st.energy;
            for (b, &(_, e)) in best.iter_mut().zip(&st.copies) {
                *b = e;
            }
        }
        beta *= ratio;
    }
    st.recompute();
    st.descend();
    if st.violations == 0 && st.energy <= best_energy {
        return st.assignment();
    }
    if best_energy.is_finite() {
        // Go back to the best clean state and polish it.
        for (c, &e) in best.iter().enumerate() {
            if st.copies[c].1 != e {
                st.shift(c, e);
            }
        }
        st.recompute();
        st.descend();
    }
    st.assignment()
}

/// Places a batch: anneal, check, repair or fall back to greedy.
///
/// Never returns an assignment that breaks a hard constraint: if nothing
/// feasible is found it returns [`PlacementError::NoFeasiblePlacement`].
pub fn place(p: &PlacementProblem, params: &PlacementParams) -> Result<Placement, PlacementError> {
    if params.reads == 0 {
        return Err(PlacementError::Params("reads must be at least 1".into()));
    }
    if params.reads > crate::anneal::READS_MAX || params.sweeps > crate::anneal::SWEEPS_MAX {
        return Err(PlacementError::Params(format!(
            "at most {} reads and {} sweeps",
            crate::anneal::READS_MAX,
            crate::anneal::SWEEPS_MAX
        )));
    }
    // The one clock read: optional timing statistics, never a decision.
    #[allow(clippy::disallowed_methods)]
    let start_time = params.measure_time.then(Instant::now);
    let greedy_a = greedy(p).filter(|a| p.check(a).is_ok());
    let greedy_objective = greedy_a.as_ref().map(|a| p.breakdown(a).objective);
    if p.invocations.is_empty() {
        let a: Vec<Vec<usize>> = Vec::new();
        return Ok(Placement {
            energy: p.breakdown(&a),
            assignment: a,
            outcome: PlacementOutcome::Greedy,
            greedy_objective,
            elapsed: start_time.map(|s| s.elapsed()),
        });
    }
    // Candidates from each read: (assignment, feasible as returned?).
    let mut candidates: Vec<Vec<Vec<usize>>> = Vec::new();
    match params.solver {
        Solver::Structured => {
            let start = greedy_a
                .clone()
                .unwrap_or_else(|| cheapest_ignoring_capacity(p));
            // Small batches get extra reads: microseconds of work that make
            // small placements reliably optimal.
            let copies: usize = p.invocations.iter().map(|t| t.replicas as usize).sum();
            let reads = if copies <= SMALL_BATCH_COPIES {
                params.reads.max(SMALL_BATCH_READS)
            } else {
                params.reads
            };
            for r in 0..reads {
                let seed = crate::rng::stream_seed(params.seed, r as u64);
                candidates.push(anneal_structured(p, &start, params.sweeps, seed));
            }
        }
        Solver::Qubo => {
            let (qubo, layout) = p.to_qubo()?;
            let sol = anneal(
                &qubo.to_ising(),
                &Params {
                    sweeps: params.sweeps,
                    reads: params.reads,
                    seed: params.seed,
                    measure_time: false,
                    ..Params::default()
                },
            )?;
            candidates.push(layout.decode(&spins_to_bits(&sol.state), p.invocations.len()));
        }
    }
    // The best feasible candidate, else the best repaired one.
    let mut best: Option<(f64, Vec<Vec<usize>>, PlacementOutcome)> = None;
    let consider =
        |a: Vec<Vec<usize>>,
         outcome: PlacementOutcome,
         best: &mut Option<(f64, Vec<Vec<usize>>, PlacementOutcome)>| {
            debug_assert!(p.check(&a).is_ok());
            let obj = p.breakdown(&a).objective;
            if best.as_ref().is_none_or(|(b, _, _)| obj < *b) {
                *best = Some((obj, a, outcome));
            }
        };
    for a in candidates {
        if p.check(&a).is_ok() {
            consider(a, PlacementOutcome::Annealed, &mut best);
        } else if let Some(fixed) = repair(p, &a).filter(|f| p.check(f).is_ok()) {
            let mut st = State::new(p, &fixed);
            st.descend();
            let polished = st.assignment();
            let fixed = if p.check(&polished).is_ok() {
                polished
            } else {
                fixed
            };
            consider(fixed, PlacementOutcome::Repaired, &mut best);
        }
    }
    if let Some(g) = &greedy_a {
        let g_obj = p.breakdown(g).objective;
        if best.as_ref().is_none_or(|(b, _, _)| g_obj < *b) {
            best = Some((g_obj, g.clone(), PlacementOutcome::Greedy));
        }
    }
    let (_, assignment, outcome) = best.ok_or(PlacementError::NoFeasiblePlacement)?;
    // The one check that matters: nothing infeasible leaves this function.
    if let Err(e) = p.check(&assignment) {
        unreachable!("a placement that failed its own check was about to be returned: {e}");
    }
    Ok(Placement {
        energy: p.breakdown(&assignment),
        assignment,
        outcome,
        greedy_objective,
        elapsed: start_time.map(|s| s.elapsed()),
    })
}

/// What `voidbox schedule --explain` shows: the placement with its energy
/// split by term, per invocation and per executor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// Which path produced the placement.
    pub outcome: PlacementOutcome,
    /// The energy by term (penalties are 0: the placement is feasible).
    pub energy: EnergyBreakdown,
    /// The greedy placement's objective, for comparison.
    pub greedy_objective: Option<f64>,
    /// The penalty weight P of the hard constraints.
    pub penalty_weight: f64,
    /// Bytes per memory unit in the Hamiltonian.
    pub memory_unit_bytes: u64,
    /// One line per invocation.
    pub invocations: Vec<InvocationLine>,
    /// One line per executor.
    pub executors: Vec<ExecutorLine>,
}

/// Where one invocation went and what its copies cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InvocationLine {
    /// The invocation's id.
    pub id: String,
    /// The executors' ids, one per copy.
    pub executors: Vec<String>,
    /// Cold-start cost of its copies.
    pub cold_start: f64,
    /// Data-fetch cost of its copies.
    pub data: f64,
    /// Topology cost of its copies.
    pub topology: f64,
}

/// One executor's load before and after the placement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExecutorLine {
    /// The executor's id.
    pub id: String,
    /// Slot capacity.
    pub slots: u32,
    /// Slots in use before.
    pub load_before: u32,
    /// Slots in use after.
    pub load_after: u64,
    /// Copies placed here.
    pub copies: usize,
    /// This executor's share of the balance term.
    pub balance: f64,
}

impl Placement {
    /// The placement explained term by term.
    ///
    /// # Panics
    /// If `problem` is not the problem this placement was made for.
    #[must_use]
    pub fn explain(&self, problem: &PlacementProblem) -> Explanation {
        let p = problem;
        assert_eq!(
            self.assignment.len(),
            p.invocations.len(),
            "placement of another problem"
        );
        let mut added = vec![0u64; p.ne()];
        let mut copies = vec![0usize; p.ne()];
        let invocations = self
            .assignment
            .iter()
            .enumerate()
            .map(|(t, execs)| {
                let mut line = InvocationLine {
                    id: p.invocations[t].id.clone(),
                    executors: Vec::new(),
                    cold_start: 0.0,
                    data: 0.0,
                    topology: 0.0,
                };
                for &e in execs {
                    let (c, d, tp) = p.cost_parts(t, e);
                    line.cold_start += c;
                    line.data += d;
                    line.topology += tp;
                    line.executors.push(p.executors[e].id.clone());
                    added[e] += u64::from(p.invocations[t].slots);
                    copies[e] += 1;
                }
                line
            })
            .collect();
        let executors = p
            .executors
            .iter()
            .enumerate()
            .map(|(e, ex)| {
                let after = u64::from(ex.load_slots) + added[e];
                ExecutorLine {
                    id: ex.id.clone(),
                    slots: ex.slots,
                    load_before: ex.load_slots,
                    load_after: after,
                    copies: copies[e],
                    balance: p.balance_coef(e) * (after as f64) * (after as f64),
                }
            })
            .collect();
        Explanation {
            outcome: self.outcome,
            energy: self.energy.clone(),
            greedy_objective: self.greedy_objective,
            penalty_weight: p.penalty,
            memory_unit_bytes: p.memory.unit,
            invocations,
            executors,
        }
    }
}

impl std::fmt::Display for Explanation {
    /// A plain-text table, for `schedule --explain`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            PlacementOutcome::Annealed => "annealed",
            PlacementOutcome::Repaired => "repaired (the annealed state broke a hard constraint)",
            PlacementOutcome::Greedy => "greedy",
        };
        write!(f, "placement: {outcome}")?;
        if let Some(g) = self.greedy_objective {
            write!(f, " (greedy alone: {g:.3})")?;
        }
        writeln!(f)?;
        let e = &self.energy;
        writeln!(
            f,
            "energy {:.3} = cold start {:.3} + data {:.3} + topology {:.3} + balance {:.3}; penalties {:.3} (P = {:.3})",
            e.total,
            e.cold_start,
            e.data,
            e.topology,
            e.balance,
            e.penalty_replicas + e.penalty_slots + e.penalty_memory + e.penalty_failure_domain,
            self.penalty_weight
        )?;
        writeln!(
            f,
            "{:<24} {:>10} {:>10} {:>10}  executors",
            "invocation", "cold", "data", "topology"
        )?;
        for l in &self.invocations {
            writeln!(
                f,
                "{:<24} {:>10.3} {:>10.3} {:>10.3}  {}",
                l.id,
                l.cold_start,
                l.data,
                l.topology,
                l.executors.join(", ")
            )?;
        }
        writeln!(
            f,
            "{:<24} {:>10} {:>14} {:>7} {:>10}",
            "executor", "slots", "load", "copies", "balance"
        )?;
        for l in &self.executors {
            let load = format!("{} -> {}", l.load_before, l.load_after);
            writeln!(
                f,
                "{:<24} {:>10} {:>14} {:>7} {:>10.3}",
                l.id, l.slots, load, l.copies, l.balance
            )?;
        }
        Ok(())
    }
}

/// The exact optimum by enumeration, for small batches: every choice of
/// `replicas` executors per invocation. `None` if there are more than
/// `limit` combinations or none is feasible.
#[must_use]
pub fn exact_optimum(p: &PlacementProblem, limit: u64) -> Option<(Vec<Vec<usize>>, f64)> {
    let choices: Vec<Vec<Vec<usize>>> = (0..p.invocations.len())
        .map(|t| subsets(&p.eligible[t], p.invocations[t].replicas as usize))
        .collect();
    let total = choices
        .iter()
        .try_fold(1u64, |acc, c| acc.checked_mul(c.len() as u64))?;
    if total > limit {
        return None;
    }
    let mut best: Option<(Vec<Vec<usize>>, f64)> = None;
    let mut idx = vec![0usize; choices.len()];
    loop {
        let a: Vec<Vec<usize>> = idx
            .iter()
            .enumerate()
            .map(|(t, &i)| choices[t][i].clone())
            .collect();
        if p.check(&a).is_ok() {
            let obj = p.breakdown(&a).objective;
            if best.as_ref().is_none_or(|(_, b)| obj < *b) {
                best = Some((a, obj));
            }
        }
        // Odometer increment.
        let mut k = 0;
        loop {
            if k == idx.len() {
                return best;
            }
            idx[k] += 1;
            if idx[k] < choices[k].len() {
                break;
            }
            idx[k] = 0;
            k += 1;
        }
    }
}

fn subsets(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    if items.len() < k {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        for mut rest in subsets(&items[i + 1..], k - 1) {
            rest.insert(0, first);
            out.push(rest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn exec(id: &str, slots: u32, mem_mib: u64, rack: &str, server: &str) -> Executor {
        Executor {
            id: id.into(),
            slots,
            memory_bytes: mem_mib * MIB,
            location: Location::new("dc1", rack, server),
            failure_domain: format!("{rack}/{server}"),
            ..Executor::default()
        }
    }

    fn inv(id: &str, slots: u32, mem_mib: u64, replicas: u32, tool: &str) -> Invocation {
        Invocation {
            id: id.into(),
            slots,
            memory_bytes: mem_mib * MIB,
            replicas,
            tool: tool.into(),
            ..Invocation::default()
        }
    }

    /// A small random instance whose QUBO has at most `max_vars` variables.
    fn small_instance(seed: u64, max_vars: usize) -> PlacementProblem {
        let mut r = Rng::new(seed);
        loop {
            let n_exec = 2 + r.below(2) as usize;
            let n_inv = 2 + r.below(2) as usize;
            let mut execs: Vec<Executor> = (0..n_exec)
                .map(|e| {
                    let mut x = exec(
                        &format!("e{e}"),
                        1 + r.below(3) as u32,
                        2 + r.below(4),
                        &format!("r{}", e % 2),
                        &format!("s{e}"),
                    );
                    if r.below(2) == 0 {
                        x.warm_tools.insert("toolA".into());
                    }
                    if r.below(2) == 0 {
                        x.blobs.insert("blob1".into());
                    }
                    x
                })
                .collect();
            execs[0].load_slots = u32::from(execs[0].slots > 1);
            let invs: Vec<Invocation> = (0..n_inv)
                .map(|t| {
                    let mut i = inv(
                        &format!("t{t}"),
                        1 + r.below(2) as u32,
                        1 + r.below(2),
                        1 + u32::from(t == 0 && r.below(2) == 0),
                        if t % 2 == 0 { "toolA" } else { "toolB" },
                    );
                    i.blobs = vec!["blob1".into()];
                    if r.below(2) == 0 {
                        i.origin = Some(Location::new("dc1", "r0", "s0"));
                    }
                    i
                })
                .collect();
            let Ok(p) = PlacementProblem::new(invs, execs, Weights::default()) else {
                continue;
            };
            let Ok((_, layout)) = p.to_qubo() else {
                continue;
            };
            if layout.variables <= max_vars && exact_optimum(&p, 1_000_000).is_some() {
                return p;
            }
        }
    }

    #[test]
    fn distances_follow_the_topology() {
        let a = Location::new("d", "r", "s");
        assert_eq!(a.distance(&Location::new("d", "r", "s")), 0);
        assert_eq!(a.distance(&Location::new("d", "r", "t")), 1);
        assert_eq!(a.distance(&Location::new("d", "q", "s")), 10);
        assert_eq!(a.distance(&Location::new("e", "r", "s")), 100);
    }

    /// The penalty test of the issue: on small instances, enumerate every
    /// state of the QUBO (slack included) and check that the most expensive
    /// feasible state still costs less than the cheapest infeasible one, and
    /// that feasible states cost exactly their placement's objective.
    #[test]
    fn every_feasible_state_beats_every_infeasible_one() {
        let mut checked = 0;
        for seed in 0..12 {
            let p = small_instance(seed, 16);
            let (qubo, layout) = p.to_qubo().unwrap();
            let n = layout.variables;
            let mut max_feasible = f64::NEG_INFINITY;
            let mut min_infeasible = f64::INFINITY;
            let mut min_feasible = f64::INFINITY;
            for mask in 0u32..(1 << n) {
                let bits: Vec<u8> = (0..n).map(|i| ((mask >> i) & 1) as u8).collect();
                let e = qubo.energy(&bits);
                if layout.is_feasible(&bits) {
                    let a = layout.decode(&bits, p.invocations().len());
                    assert!(
                        p.check(&a).is_ok(),
                        "seed {seed}: a feasible QUBO state decodes to an infeasible placement"
                    );
                    let b = p.breakdown(&a);
                    assert!(
                        (b.total - e).abs() < 1e-9 * (1.0 + e.abs()),
                        "seed {seed}: {} vs {e}",
                        b.total
                    );
                    max_feasible = max_feasible.max(e);
                    min_feasible = min_feasible.min(e);
                } else {
                    min_infeasible = min_infeasible.min(e);
                }
            }
            assert!(
                max_feasible < min_infeasible,
                "seed {seed}: feasible up to {max_feasible}, infeasible from {min_infeasible}"
            );
            let (_, opt) = exact_optimum(&p, 1_000_000).unwrap();
            assert!(
                (min_feasible - opt).abs() < 1e-9 * (1.0 + opt.abs()),
                "seed {seed}: QUBO optimum {min_feasible} vs enumeration {opt}"
            );
            checked += 1;
        }
        assert_eq!(checked, 12);
    }

    #[test]
    fn structured_annealer_finds_the_exact_optimum_on_small_instances() {
        for seed in 0..20 {
            let p = small_instance(seed + 100, 40);
            let placed = place(
                &p,
                &PlacementParams {
                    seed,
                    ..PlacementParams::default()
                },
            )
            .unwrap();
            assert!(p.check(&placed.assignment).is_ok());
            let (_, opt) = exact_optimum(&p, 1_000_000).unwrap();
            assert!(
                (placed.energy.objective - opt).abs() < 1e-9 * (1.0 + opt),
                "seed {seed}: {} vs {opt}",
                placed.energy.objective
            );
        }
    }

    #[test]
    fn qubo_solver_gives_feasible_placements() {
        for seed in 0..6 {
            let p = small_instance(seed + 200, 40);
            let placed = place(
                &p,
                &PlacementParams {
                    solver: Solver::Qubo,
                    sweeps: 300,
                    reads: 4,
                    seed,
                    ..PlacementParams::default()
                },
            )
            .unwrap();
            assert!(p.check(&placed.assignment).is_ok());
            assert_eq!(placed.energy.total, placed.energy.objective);
        }
    }

    #[test]
    fn incremental_state_energy_matches_recomputed() {
        let p = small_instance(7, 40);
        let start = cheapest_ignoring_capacity(&p);
        let mut st = State::new(&p, &start);
        let mut r = Rng::new(3);
        let mut swaps = 0;
        for _ in 0..400 {
            let c = r.below(st.copies.len() as u64) as usize;
            let (t, from) = st.copies[c];
            if r.below(2) == 0 {
                let c2 = r.below(st.copies.len() as u64) as usize;
                let (t2, to) = st.copies[c2];
                if t == t2
                    || to == from
                    || !p.eligible(t).contains(&to)
                    || !p.eligible(t2).contains(&from)
                    || st.has_copy_on(t, to, c)
                    || st.has_copy_on(t2, from, c2)
                {
                    continue;
                }
                let d = st.swap_delta(c, c2);
                st.shift(c, to);
                st.shift(c2, from);
                st.violations += d.1;
                st.energy += d.0 + p.penalty * d.1 as f64;
                swaps += 1;
            } else {
                let el = p.eligible(t);
                let to = el[r.below(el.len() as u64) as usize];
                if to == from || st.has_copy_on(t, to, c) {
                    continue;
                }
                let d = st.move_delta(c, to);
                st.relocate(c, to, d);
            }
            let incremental = st.energy;
            let b = p.breakdown(&st.assignment());
            st.recompute();
            assert!(
                (incremental - st.energy).abs() < 1e-6,
                "{incremental} vs {}",
                st.energy
            );
            assert!(
                (b.total - st.energy).abs() < 1e-6,
                "{} vs {}",
                b.total,
                st.energy
            );
        }
        assert!(swaps > 10, "the walk made only {swaps} swaps");
    }

    #[test]
    fn explanation_adds_up() {
        let p = small_instance(3, 40);
        let placed = place(&p, &PlacementParams::default()).unwrap();
        let x = placed.explain(&p);
        let sum = |f: fn(&InvocationLine) -> f64| x.invocations.iter().map(f).sum::<f64>();
        assert!((sum(|l| l.cold_start) - x.energy.cold_start).abs() < 1e-9);
        assert!((sum(|l| l.data) - x.energy.data).abs() < 1e-9);
        assert!((sum(|l| l.topology) - x.energy.topology).abs() < 1e-9);
        let balance: f64 = x.executors.iter().map(|l| l.balance).sum();
        assert!((balance - x.energy.balance).abs() < 1e-9);
        let copies: usize = x.executors.iter().map(|l| l.copies).sum();
        assert_eq!(
            copies,
            p.invocations()
                .iter()
                .map(|t| t.replicas as usize)
                .sum::<usize>()
        );
        assert_eq!(x.energy.total, x.energy.objective);
        let text = x.to_string();
        assert!(text.starts_with("placement: "), "{text}");
        assert!(x.invocations.iter().all(|l| text.contains(&l.id)));
        assert_eq!(
            text.lines().count(),
            4 + x.invocations.len() + x.executors.len()
        );
    }

    /// Random batches, tight or impossible ones included: every answer is a
    /// feasible placement or an error, never a panic.
    #[test]
    fn random_batches_get_feasible_placements_or_errors() {
        let mut r = Rng::new(77);
        let (mut placed, mut refused) = (0, 0);
        for round in 0..150 {
            let n_exec = 1 + r.below(6) as usize;
            let execs: Vec<Executor> = (0..n_exec)
                .map(|e| {
                    let mut x = exec(
                        &format!("e{e}"),
                        r.below(6) as u32,
                        r.below(8),
                        &format!("r{}", r.below(3)),
                        &format!("s{e}"),
                    );
                    x.load_slots = r.below(4) as u32;
                    x.load_memory_bytes = r.below(3) * MIB;
                    x.failure_domain = format!("fd{}", r.below(3));
                    if r.below(2) == 0 {
                        x.warm_tools.insert("a".into());
                    }
                    x
                })
                .collect();
            let invs: Vec<Invocation> = (0..r.below(9) as usize)
                .map(|t| {
                    inv(
                        &format!("t{t}"),
                        r.below(3) as u32,
                        r.below(3),
                        1 + r.below(2) as u32,
                        "a",
                    )
                })
                .collect();
            let w = Weights {
                cold_start: r.below(20) as f64,
                data: r.below(3) as f64,
                topology: 0.5,
                balance: r.below(3) as f64,
            };
            let Ok(p) = PlacementProblem::new(invs, execs, w) else {
                refused += 1;
                continue;
            };
            let solver = if round % 5 == 0 {
                Solver::Qubo
            } else {
                Solver::Structured
            };
            match place(
                &p,
                &PlacementParams {
                    solver,
                    sweeps: 50,
                    seed: round,
                    ..PlacementParams::default()
                },
            ) {
                Ok(pl) => {
                    assert!(
                        p.check(&pl.assignment).is_ok(),
                        "round {round}: {:?}",
                        p.check(&pl.assignment)
                    );
                    assert_eq!(pl.energy.total, pl.energy.objective, "round {round}");
                    placed += 1;
                }
                Err(e) => {
                    assert_eq!(e, PlacementError::NoFeasiblePlacement, "round {round}");
                    refused += 1;
                }
            }
        }
        // The generator makes both kinds; make sure the test saw both.
        assert!(
            placed > 30 && refused > 10,
            "placed {placed}, refused {refused}"
        );
    }

    #[test]
    fn warm_tools_and_blobs_attract_invocations() {
        let mut execs = vec![
            exec("cold", 4, 64, "r0", "s0"),
            exec("warm", 4, 64, "r0", "s1"),
        ];
        execs[1].warm_tools.insert("t".into());
        execs[1].blobs.insert("b".into());
        let mut i = inv("x", 1, 1, 1, "t");
        i.blobs = vec!["b".into()];
        let p = PlacementProblem::new(vec![i], execs, Weights::default()).unwrap();
        let placed = place(&p, &PlacementParams::default()).unwrap();
        assert_eq!(placed.assignment, vec![vec![1]]);
        assert_eq!(placed.energy.cold_start, 0.0);
        assert_eq!(placed.energy.data, 0.0);
    }

    #[test]
    fn replicas_go_to_distinct_failure_domains() {
        let mut execs: Vec<Executor> = (0..4)
            .map(|e| exec(&format!("e{e}"), 8, 64, "r0", &format!("s{e}")))
            .collect();
        // Two domains only: {e0, e1} and {e2, e3}; e0 and e1 are warm.
        for (e, x) in execs.iter_mut().enumerate() {
            x.failure_domain = if e < 2 { "A".into() } else { "B".into() };
        }
        execs[0].warm_tools.insert("t".into());
        execs[1].warm_tools.insert("t".into());
        let p =
            PlacementProblem::new(vec![inv("x", 1, 1, 2, "t")], execs, Weights::default()).unwrap();
        let placed = place(&p, &PlacementParams::default()).unwrap();
        let a = &placed.assignment[0];
        assert_eq!(a.len(), 2);
        assert!(a[0] < 2 && a[1] >= 2, "{a:?}");
    }

    #[test]
    fn bad_inputs_get_errors_not_panics() {
        let e = || vec![exec("e", 2, 8, "r", "s")];
        // Too many pairs is refused before anything is allocated per pair.
        assert!(matches!(
            check_size(PAIRS_MAX / 2 + 1, 2),
            Err(PlacementError::TooLarge { .. })
        ));
        assert!(check_size(PAIRS_MAX / 2, 2).is_ok());
        assert!(matches!(
            check_size(usize::MAX, usize::MAX),
            Err(PlacementError::TooLarge { .. })
        ));
        assert_eq!(
            PlacementProblem::new(vec![inv("x", 1, 1, 1, "t")], vec![], Weights::default())
                .unwrap_err(),
            PlacementError::NoExecutors
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let w = Weights {
                data: bad,
                ..Weights::default()
            };
            assert!(matches!(
                PlacementProblem::new(vec![], e(), w),
                Err(PlacementError::BadWeight { name: "data", .. })
            ));
        }
        assert_eq!(
            PlacementProblem::new(vec![inv("x", 1, 1, 0, "t")], e(), Weights::default())
                .unwrap_err(),
            PlacementError::ZeroReplicas("x".into())
        );
        assert!(matches!(
            PlacementProblem::new(vec![inv("x", 3, 1, 1, "t")], e(), Weights::default()),
            Err(PlacementError::Overcommitted {
                resource: "slots",
                ..
            })
        ));
        assert!(matches!(
            PlacementProblem::new(vec![inv("x", 1, 9, 1, "t")], e(), Weights::default()),
            Err(PlacementError::Overcommitted {
                resource: "memory bytes",
                ..
            })
        ));
        // Fits in total, but not on one executor.
        let two = vec![exec("a", 2, 8, "r", "s"), exec("b", 2, 8, "r", "t")];
        assert!(matches!(
            PlacementProblem::new(
                vec![inv("x", 3, 1, 1, "t")],
                two.clone(),
                Weights::default()
            ),
            Err(PlacementError::Unplaceable { .. })
        ));
        // Two replicas but one failure domain.
        let mut same = two.clone();
        for x in &mut same {
            x.failure_domain = "one".into();
        }
        assert!(matches!(
            PlacementProblem::new(vec![inv("x", 1, 1, 2, "t")], same, Weights::default()),
            Err(PlacementError::Unplaceable { .. })
        ));
        // Total slots suffice (6 of 6) but 2-slot jobs cannot pack into 3+3.
        let three = vec![exec("a", 3, 64, "r", "s"), exec("b", 3, 64, "r", "t")];
        let jobs: Vec<Invocation> = (0..3)
            .map(|k| inv(&format!("j{k}"), 2, 1, 1, "t"))
            .collect();
        let p = PlacementProblem::new(jobs, three, Weights::default()).unwrap();
        for solver in [Solver::Structured, Solver::Qubo] {
            assert_eq!(
                place(
                    &p,
                    &PlacementParams {
                        solver,
                        ..PlacementParams::default()
                    }
                )
                .unwrap_err(),
                PlacementError::NoFeasiblePlacement
            );
        }
        assert!(matches!(
            place(
                &p,
                &PlacementParams {
                    reads: 0,
                    ..PlacementParams::default()
                }
            ),
            Err(PlacementError::Params(_))
        ));
    }

    #[test]
    fn empty_batch_and_zero_capacity_executors_are_well_defined() {
        let execs = vec![exec("zero", 0, 0, "r", "s"), exec("ok", 4, 64, "r", "t")];
        let p = PlacementProblem::new(vec![], execs.clone(), Weights::default()).unwrap();
        let placed = place(&p, &PlacementParams::default()).unwrap();
        assert!(placed.assignment.is_empty());
        assert_eq!(placed.outcome, PlacementOutcome::Greedy);
        let jobs: Vec<Invocation> = (0..4)
            .map(|k| inv(&format!("j{k}"), 1, 1, 1, "t"))
            .collect();
        let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
        assert!(p.eligible(0) == [1]);
        let placed = place(&p, &PlacementParams::default()).unwrap();
        assert!(placed.assignment.iter().all(|a| a == &[1]));
        assert!(PlacementProblem::new(
            vec![inv("x", 1, 1, 1, "t")],
            vec![exec("zero", 0, 8, "r", "s")],
            Weights::default()
        )
        .is_err());
    }

    #[test]
    fn repair_fixes_an_overloaded_assignment() {
        let execs: Vec<Executor> = (0..3)
            .map(|e| exec(&format!("e{e}"), 2, 64, "r0", &format!("s{e}")))
            .collect();
        let jobs: Vec<Invocation> = (0..5)
            .map(|k| inv(&format!("j{k}"), 1, 1, 1, "t"))
            .collect();
        let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
        let crowded = vec![vec![0]; 5];
        assert!(p.check(&crowded).is_err());
        let fixed = repair(&p, &crowded).unwrap();
        assert!(p.check(&fixed).is_ok(), "{fixed:?}");
        // Missing and duplicated copies are fixed too.
        let odd = vec![vec![], vec![0, 1], vec![2], vec![2], vec![1]];
        assert!(p.check(&repair(&p, &odd).unwrap()).is_ok());
    }

    #[test]
    fn memory_units_are_conservative() {
        // Capacities that are not multiples of a small unit: 10 GiB + 1 byte.
        let mut execs = vec![exec("a", 64, 0, "r", "s"), exec("b", 64, 0, "r", "t")];
        execs[0].memory_bytes = (10 << 30) + 1;
        execs[1].memory_bytes = (10 << 30) + 7;
        let jobs: Vec<Invocation> = (0..20)
            .map(|k| Invocation {
                memory_bytes: (1 << 30) - 3,
                ..inv(&format!("j{k}"), 1, 0, 1, "t")
            })
            .collect();
        let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
        assert!(p.memory_unit_bytes() > 1);
        let placed = place(&p, &PlacementParams::default()).unwrap();
        assert!(p.check(&placed.assignment).is_ok());
    }

    #[test]
    fn same_seed_same_placement_and_big_batches_are_feasible() {
        let execs: Vec<Executor> = (0..16)
            .map(|e| {
                let mut x = exec(
                    &format!("e{e}"),
                    40,
                    4096,
                    &format!("r{}", e / 4),
                    &format!("s{e}"),
                );
                x.warm_tools.insert(format!("tool{}", e % 5));
                x.load_slots = (e % 3) as u32;
                x
            })
            .collect();
        let jobs: Vec<Invocation> = (0..256)
            .map(|k| {
                let mut i = inv(
                    &format!("j{k}"),
                    1 + (k % 3) as u32,
                    64,
                    1 + u32::from(k % 16 == 0),
                    &format!("tool{}", k % 7),
                );
                i.blobs = vec![format!("blob{}", k % 11)];
                i
            })
            .collect();
        let p = PlacementProblem::new(jobs, execs, Weights::default()).unwrap();
        let a = place(
            &p,
            &PlacementParams {
                seed: 5,
                ..PlacementParams::default()
            },
        )
        .unwrap();
        let b = place(
            &p,
            &PlacementParams {
                seed: 5,
                ..PlacementParams::default()
            },
        )
        .unwrap();
        assert_eq!(a.assignment, b.assignment);
        assert!(p.check(&a.assignment).is_ok());
        let g = greedy(&p).unwrap();
        assert!(a.energy.objective <= p.breakdown(&g).objective);
    }
}
