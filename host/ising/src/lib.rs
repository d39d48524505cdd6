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
//! - [`format`]: the max-cut / QUBO / Ising text formats and [`solve_text`],
//!   which the `voidbox ising solve` command calls.
//! - [`placement`]: the batch-placement Hamiltonian, its solver, the
//!   feasibility check, repair and greedy fallback.
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

pub mod anneal;
pub mod format;
pub mod model;
pub mod placement;
pub mod rng;

pub use anneal::{anneal, auto_beta_range, AnnealError, Params, Solution, Stats};
pub use format::{
    parse_problem, read_problem, solve_problem, solve_text, ParseError, Problem, SolveError,
    SolveReport,
};
pub use model::{
    bits_to_spins, spins_to_bits, Coupling, IsingModel, ModelBuilder, ModelError, QuboModel,
};
