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
//! Solving: a [`Placer`] (or the one-shot [`place`]) first builds a greedy
//! placement (each copy, largest first, where it adds the least energy). By
//! default it then anneals the Hamiltonian from there with moves that keep
//! the one-hot structure (move one copy, or swap two copies of different
//! invocations), evaluating the same energy incrementally in O(k) per move
//! with the slack minimized analytically, and ends with a greedy descent.
//! The work of one call is bounded by construction: at most
//! [`PlacementParams::move_attempts_max`] move attempts over all reads (the
//! sweeps are cut to fit), plus the linear-time greedy start, descent and
//! checks. With [`Solver::Qubo`] it instead builds the full QUBO
//! ([`PlacementProblem::to_qubo`]) and runs the generic annealer on it (for
//! small batches: the QUBO has a coupling for every pair of invocations that
//! may share an executor). Every result is checked against the hard
//! constraints in exact units ([`PlacementProblem::check`]); an infeasible
//! one is repaired ([`repair`]); the best feasible candidate, greedy
//! included, is returned, and [`PlacementOutcome`] says which path produced
//! it. If nothing feasible is found the answer is
//! [`PlacementError::NoFeasiblePlacement`], never an assignment that breaks
//! a hard constraint. An executor that is already over capacity is not a
//! violation unless the placement adds to it.
//!
//! The host's loop: build one [`Placer`] per executor pool and keep it; for
//! each batch of concurrent invocations build a [`PlacementProblem`] from
//! the pool's state (warm instances of a tool are `warm_tools`) and call
//! [`Placer::place`]. The placer keeps its scratch space from one batch to
//! the next, so a call allocates little beyond its answer.
//!
//! ```
//! use voidbox_ising::placement::{Executor, Invocation, PlacementParams, PlacementProblem, Placer, Weights};
//! let mut placer = Placer::new(PlacementParams::default()).unwrap();
//! let slot = |id: &str| Executor { id: id.into(), slots: 2, memory_bytes: 1 << 30, failure_domain: id.into(), ..Default::default() };
//! let mut warm = slot("slot-1");
//! warm.warm_tools.insert("blake3:aa".into());
//! let job = |id: &str| Invocation { id: id.into(), slots: 1, memory_bytes: 1 << 20, replicas: 1, tool: "blake3:aa".into(), ..Default::default() };
//! for batch in [vec![job("a")], vec![job("b"), job("c"), job("d")]] {
//!     let problem = PlacementProblem::new(batch, vec![warm.clone(), slot("slot-2")], Weights::default()).unwrap();
//!     let placement = placer.place(&problem).unwrap();
//!     assert!(problem.check(&placement.assignment).is_ok());
//! }
//! ```
//!
//! Memory (and slots, if huge) are counted in a unit chosen so that at most
//! [`UNITS_MAX`] units describe any executor: the exact greatest common
//! divisor when that is small enough, otherwise a coarser unit with demands
//! rounded up and capacities down, which is conservative (feasible in units
//! implies feasible in bytes).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::anneal::AnnealError;
use crate::model::ModelError;

mod exact;
mod explain;
mod problem;
mod qubo;
mod solve;
#[cfg(test)]
mod tests;

pub use exact::exact_optimum;
pub use explain::{ExecutorLine, Explanation, InvocationLine};
pub use qubo::QuboLayout;
pub use solve::{greedy, greedy_least_loaded, place, repair, Placer};

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
    /// At most this many move attempts per placement, over all reads: the
    /// structured annealer's sweeps are cut to fit, which bounds the time of
    /// one call whatever the batch size (one sweep per read is always made).
    pub move_attempts_max: usize,
    /// Whether a small batch (at most 32 copies) gets extra work: at least
    /// 8 reads and 64 move attempts a sweep, microseconds that make small
    /// placements reliably optimal. Off, a batch's work is `reads` reads of
    /// `sweeps` sweeps of one attempt per copy, whatever its size: for a
    /// caller that places every small batch of short jobs on their
    /// critical path (the host's worker slots: 2 jobs on 2 slots took
    /// about 100 us with it on, 5 us off).
    pub small_batch_boost: bool,
}

impl Default for PlacementParams {
    fn default() -> Self {
        Self {
            sweeps: 100,
            reads: 1,
            seed: 0,
            solver: Solver::Structured,
            measure_time: true,
            move_attempts_max: MOVE_ATTEMPTS_MAX_DEFAULT,
            small_batch_boost: true,
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
    /// Annealing move attempts made, over all reads: at most
    /// [`PlacementParams::move_attempts_max`], or one sweep per read if
    /// that is more. With [`Solver::Qubo`], the QUBO annealer's spin-flip
    /// attempts, which that bound does not limit.
    pub move_attempts: u64,
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

/// The default work bound of one placement; see
/// [`PlacementParams::move_attempts_max`]. Measured with
/// `examples/placement_bench.rs`: 256 invocations on 16 executors then take
/// about 0.4 ms of CPU (building the problem included) and land within
/// 0.02% of a hundred times longer anneal; four times the budget improved
/// the benchmark's batches by less than 0.1%. Wide pools (64 executors)
/// gain more from more work: 1.3% separates the default from the long
/// anneal there.
pub const MOVE_ATTEMPTS_MAX_DEFAULT: usize = 8_192;

/// A batch of at most this many copies is small: it gets at least
/// `SMALL_BATCH_READS` reads (see [`PlacementParams::small_batch_boost`]).
const SMALL_BATCH_COPIES: usize = 32;
const SMALL_BATCH_READS: usize = 8;
/// With the small-batch boost, every sweep makes at least this many move
/// attempts.
const SMALL_BATCH_ATTEMPTS: usize = 64;

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
///
/// Built once per batch by [`PlacementProblem::new`]; tools, blobs and
/// locations are interned there, so that solving touches only flat arrays
/// of numbers.
#[derive(Clone, Debug)]
pub struct PlacementProblem {
    invocations: Vec<Invocation>,
    executors: Vec<Executor>,
    weights: Weights,
    /// The eligible executors of `t` (where one copy fits alone) are
    /// `eligible[eligible_start[t]..eligible_start[t + 1]]`, ascending.
    eligible: Vec<usize>,
    eligible_start: Vec<usize>,
    /// `cost[t * E + e]`: the linear cost (infinite where not eligible).
    cost: Vec<f64>,
    /// `warm[t * E + e]`: the tool of `t` is warm on `e`.
    warm: Vec<bool>,
    /// Per executor: interned (datacenter, rack, server).
    place_of_executor: Vec<[u32; 3]>,
    /// Per invocation: its origin's interned place, if it has one.
    place_of_origin: Vec<Option<[u32; 3]>>,
    /// Per executor: failure-domain index.
    domain: Vec<usize>,
    slots: Quantized,
    memory: Quantized,
    /// Slot capacity as f64; 0 for a full stop.
    capacity: Vec<f64>,
    /// Per executor: the balance coefficient `w_balance / capacity` (0 for a
    /// zero-capacity executor, which never receives anything).
    balance: Vec<f64>,
    /// Slots of one copy of each invocation, as f64 (for the balance term).
    slots_f: Vec<f64>,
    /// Invocations in placement order: biggest first, then by index.
    order: Vec<usize>,
    /// `copy_invocation[c]`: the invocation of copy `c`. The copies of `t`
    /// are `first_copy[t]..first_copy[t + 1]`.
    copy_invocation: Vec<u32>,
    first_copy: Vec<usize>,
    /// Per invocation: what the annealer reads on every move, packed.
    cards: Vec<InvocationCard>,
    /// Per executor: the annealer's constants, packed.
    bins: Vec<ExecutorBin>,
    /// The penalty weight P.
    penalty: f64,
}

/// What the annealer reads about one invocation on every move, in one
/// place (one cache line rather than one per array).
#[derive(Clone, Copy, Debug, Default)]
struct InvocationCard {
    /// Slot units of one copy.
    slot_units: i64,
    /// Memory units of one copy.
    memory_units: i64,
    /// Slots of one copy, for the balance term.
    slots: f64,
    /// Its eligible executors: `eligible[eligible_start..][..eligible_len]`.
    eligible_start: u32,
    eligible_len: u32,
    /// Its copies: `first_copy..first_copy + copies`.
    first_copy: u32,
    copies: u32,
}

/// The annealer's constants of one executor.
#[derive(Clone, Copy, Debug, Default)]
struct ExecutorBin {
    free_slot_units: i64,
    free_memory_units: i64,
    /// The balance coefficient.
    balance: f64,
    /// The failure-domain index.
    domain: usize,
}
