//! voidbox-contract: the tool contract language and its Z3 checks.
//!
//! A tool may declare a *contract*: preconditions on its input and bounds on
//! its run, in linear integer arithmetic over `input_bytes`, `args_bytes`,
//! `output_bytes`, `fuel` and `memory_bytes`. This crate parses contracts
//! ([`Contract::parse`], errors point at line and column), checks that some
//! run can meet them ([`Contract::check_satisfiable`]), proves before a run
//! that they fit a capability's budget ([`admit()`], cached by
//! [`ProofCache`]), checks them on the real figures after a run
//! ([`check_post`]) and checks that a narrowed capability's limits lie
//! within its parent's ([`check_attenuation`]). One parser, one concrete
//! evaluator ([`eval`]) and one Z3 encoding share one typed tree ([`ast`]).
//!
//! It must not know wasmtime, the network, macaroons or storage: it takes
//! and returns plain data, and the host maps caveats and run figures onto
//! it.
//!
//! # The language
//!
//! ```text
//! # one clause a line (or separated by `;`), each optionally labelled
//! small: input_bytes <= 16_777_216
//! cost:  fuel <= 400 * input_bytes + 2_000_000
//! out:   output_bytes <= input_bytes + 64
//! mem:   memory_bytes <= if input_bytes < 1_000_000 then 16_777_216 else 67_108_864
//! ```
//!
//! Integers (with `_` separators), `+ - *` (one side of `*` must be a
//! constant), `<= < >= > == !=`, `and or not`, `=>`, `if c then a else b`,
//! parentheses and `#` comments. A clause that mentions only `input_bytes`
//! and `args_bytes` is a precondition; one that mentions `fuel`,
//! `output_bytes` or `memory_bytes` is a postcondition.
//!
//! # How the host uses it
//!
//! - `tool add`: [`Contract::parse`], then [`Contract::check_satisfiable`];
//!   `tool inspect` shows [`Contract::describe`]. The contract's identity
//!   is [`Contract::digest`] (blake3 of the canonical text).
//! - Before a run: [`Contract::check_pre`] on the concrete input, then
//!   [`ProofCache::admit`] with the effective [`Budget`]. A denial carries a
//!   [`Counterexample`] whose `Display` is the user-facing sentence.
//! - After a run: [`check_post`] on the real [`Figures`]; a [`Violation`]
//!   names the clause (outcome `contract-violation`).
//! - `token attenuate`: [`check_attenuation`] on the parent's and the
//!   child's numeric caveats, mapped to [`Limit`]s.
//!
//! What admission proves, precisely, is in the [`admit`](mod@admit) module
//! docs. Named limits: [`CONTRACT_TEXT_BYTES_MAX`],
//! [`EXPRESSION_DEPTH_MAX`], [`SOLVER_TIMEOUT_MS`].
//!
//! # Example
//!
//! ```
//! use voidbox_contract::{admit, check_post, AdmissionError, Budget, Contract, Figures};
//!
//! let contract = Contract::parse("cost: fuel <= 400 * input_bytes + 2_000_000").unwrap();
//! contract.check_satisfiable().unwrap();
//!
//! let budget = Budget {
//!     max_input_bytes: Some(1_048_576),
//!     max_args_bytes: None,
//!     fuel: 100_000_000,
//!     memory_bytes: 64 << 20,
//!     output_bytes: 1 << 20,
//! };
//! let Err(AdmissionError::Counterexample(why)) = admit(&contract, &budget) else { panic!() };
//! assert_eq!(
//!     why.to_string(),
//!     "input of 1048576 bytes may need fuel 421,430,400 > the budget's 100,000,000"
//! );
//!
//! let run = Figures { input_bytes: 10, fuel: 3_000_000, ..Figures::default() };
//! let violation = check_post(&contract, &run).unwrap_err();
//! assert_eq!(violation.label.as_deref(), Some("cost"));
//! ```

pub mod admit;
#[cfg(test)]
mod agreement;
pub mod ast;
pub mod attenuate;
pub mod cache;
pub mod contract;
pub mod eval;
pub mod number;
pub mod solve;
pub mod syntax;

pub use admit::{admit, AdmissionError, Budget, Counterexample, Proof, Resource};
pub use ast::{Clause, ClauseKind, Var};
pub use attenuate::{check_attenuation, Attenuation, AttenuationError, Limit, LimitOp, LimitRange};
pub use cache::ProofCache;
pub use contract::{check_post, Contract, Violation, ViolationReason};
pub use eval::{EvalError, Figures};
pub use number::thousands;
pub use solve::{z3_version, SatisfiabilityError, SolverError, SOLVER_TIMEOUT_MS};
pub use syntax::{ParseError, CONTRACT_TEXT_BYTES_MAX, EXPRESSION_DEPTH_MAX};
