//! The Voidbox sandbox: runs WIT-typed Wasm components under fuel, memory,
//! output and wall-clock limits, with a deterministic, capability-scoped WASI.
//!
//! A [`Sandbox`] owns one wasmtime [`Engine`](wasmtime::Engine) (with the
//! pooling allocator), one linker, an on-disk cache of compiled artifacts
//! keyed by component digest and engine compatibility hash, and an in-memory
//! cache of pre-instantiated components ([`LoadedTool`]). Each
//! [`Sandbox::run`] creates a fresh store with the [`Budget`]'s fuel, an epoch
//! deadline as wall-clock guard and a resource limiter, and reports an
//! [`Outcome`]: `ok`, `tool-error`, `trap`, `out-of-fuel`, `memory-limit`,
//! `output-too-large` or `timeout`.
//!
//! Determinism: fuel (not time) bounds CPU; the guest's wall clock is the
//! invocation's consensus time and its monotonic clock steps by a fixed amount
//! per reading; randomness is a blake3 stream seeded by the caller (the host
//! derives it from the invocation digest); there is no network and no
//! environment; files are visible only through read-only preopens the caller
//! passes; NaNs are canonicalized and relaxed SIMD is deterministic; Wasm
//! threads are off.
//!
//! Two kinds of component run: the `voidbox:tool` world (see `wit/tool.wit`)
//! and unmodified `wasi:cli/command` programs (input on stdin, output from
//! stdout, `--arg key=value` as `--key=value` in argv).
//!
//! This crate knows wasmtime, wasmtime-wasi and cap-std. It must not know
//! consensus, HTTP, macaroons or the content-addressed store (blobs arrive
//! through the [`BlobSource`] trait).
//!
//! ```no_run
//! use voidbox_sandbox::{Budget, NoBlobs, RunRequest, Sandbox, SandboxConfig};
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let wasm = std::fs::read("wc.wasm")?;
//! let tool = sandbox.load(*blake3::hash(&wasm).as_bytes(), &wasm)?;
//! let result = sandbox.run(&tool, &RunRequest {
//!     input: b"hello world",
//!     args: &[],
//!     budget: Budget::default(),
//!     clock_unix_ns: 0,
//!     seed: [0; 32],
//!     grants: &[],
//!     blobs: NoBlobs::shared(),
//!     preopens: &[],
//! })?;
//! println!("{} {}", result.outcome, String::from_utf8_lossy(&result.output));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod baseline;
mod budget;
mod determinism;
mod error;
mod outcome;
mod sandbox;
mod world;

pub use budget::Budget;
pub use error::{LoadError, RunError};
pub use outcome::Outcome;
pub use sandbox::{
    deterministic_config, BlobSource, LoadedTool, LogLine, NoBlobs, RunRequest, RunResult, Sandbox,
    SandboxConfig, ToolKind,
};

/// What a tool says about itself (the WIT `tool-info` record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolInfo {
    /// Short machine name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// One line for people.
    pub description: String,
    /// JSON Schema of the input, as text.
    pub input_schema: Option<String>,
    /// JSON Schema of the output, as text.
    pub output_schema: Option<String>,
    /// The tool's resource contract, as text.
    pub contract: Option<String>,
}

/// Re-exported so callers can build a baseline with the same wasmtime.
pub use wasmtime;
