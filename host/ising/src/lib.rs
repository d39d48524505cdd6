//! voidbox-ising: QUBO and Ising models, a fast simulated-annealing solver,
//! and the placement of invocation batches on executors.
//!
//! This crate is a pure core: it knows QUBO/Ising models, annealing and the
//! placement Hamiltonian, and nothing else of Voidbox (no files, sockets,
//! wasmtime, consensus or CAS). It reads no clock except to report timing
//! statistics, and all randomness comes from seeded generators, so the same
//! inputs and seed give the same answer on every machine and thread count.
//!
//! - [`model`]: [`IsingModel`] and [`QuboModel`], exact conversion, energy.
//! - [`anneal()`]: simulated annealing with [`Params`] → [`Solution`].
//! - [`format`](mod@format): the max-cut / QUBO / Ising text formats and [`solve_text`],
//!   which the `voidbox ising solve` command calls.
//! - [`placement`]: the batch-placement Hamiltonian, its solver
//!   ([`placement::Placer`]), the feasibility check, repair and greedy
//!   fallback.
//!
//! Solving a model:
//!
//! ```
//! use voidbox_ising::{anneal, IsingModel, Params};
//! // Three spins on an antiferromagnetic path: the ground state alternates.
//! let mut b = IsingModel::builder(3);
//! b.quadratic(0, 1, 1.0).quadratic(1, 2, 1.0);
//! let model = b.build_ising().unwrap();
//! let sol = anneal(&model, &Params { sweeps: 100, reads: 4, seed: 7, ..Params::default() }).unwrap();
//! assert_eq!(sol.energy, -2.0);
//! assert_ne!(sol.state[0], sol.state[1]);
//! ```
//!
//! Placing batches, as the host does: one [`Placer`](placement::Placer) per
//! executor pool, kept for its life (it reuses its scratch space), and one
//! [`PlacementProblem`](placement::PlacementProblem) per batch, built from
//! the pool's state. Ids, tool digests and blob ids are opaque strings here;
//! warm instances of a tool are its `warm_tools`.
//!
//! ```
//! use voidbox_ising::placement::{Executor, Invocation, PlacementParams, PlacementProblem, Placer, Weights};
//! let mut placer = Placer::new(PlacementParams::default()).unwrap();
//! let mut warm = Executor { id: "w1".into(), slots: 4, memory_bytes: 1 << 30, failure_domain: "a".into(), ..Default::default() };
//! warm.warm_tools.insert("blake3:aa".into());
//! let cold = Executor { id: "w2".into(), slots: 4, memory_bytes: 1 << 30, failure_domain: "b".into(), ..Default::default() };
//! let job = Invocation { id: "job".into(), slots: 1, memory_bytes: 1 << 20, replicas: 1, tool: "blake3:aa".into(), ..Default::default() };
//! let problem = PlacementProblem::new(vec![job], vec![warm, cold], Weights::default()).unwrap();
//! let placement = placer.place(&problem).unwrap();
//! assert_eq!(placement.assignment, vec![vec![0]]); // the warm executor
//! assert!(problem.check(&placement.assignment).is_ok());
//! let explained = placement.explain(&problem); // what `schedule --explain` prints
//! assert_eq!(explained.invocations[0].executors, vec!["w1".to_string()]);
//! ```
//!
//! A call's work is bounded: at most
//! [`PlacementParams::move_attempts_max`](placement::PlacementParams::move_attempts_max)
//! annealing moves plus linear-time greedy, descent and checks; 256
//! invocations on 16 executors take about 0.4 ms of CPU, building the
//! problem included (see `examples/placement_bench.rs`).

pub mod anneal;
pub mod format;
pub mod model;
pub mod placement;
pub mod rng;

pub use anneal::{
    anneal, auto_beta_range, extremes_beta_range, AnnealError, Params, Solution, Stats, READS_MAX,
    SWEEPS_MAX, THREADS_MAX,
};
pub use format::{
    parse_problem, read_problem, solve_problem, solve_text, ParseError, Problem, SolveError,
    SolveReport,
};
pub use model::{
    bits_to_spins, spins_to_bits, Coupling, IsingModel, ModelBuilder, ModelError, QuboModel,
};
