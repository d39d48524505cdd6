//! Voidbox: a WebAssembly-sandboxed tool execution host.
//!
//! This crate composes the pure parts (the `voidbox-cas` store, the
//! `voidbox-sandbox` runtime, the `voidbox-ising` optimizer) into a host you
//! can embed, and carries the `voidbox` command-line program.
//!
//! - [`Host`] opens a data directory and is the whole embedding API:
//!   [`Host::add_tool`], [`Host::put_input`], [`Host::invoke`] (which returns
//!   a [`Receipt`]), [`Host::output`], [`Host::receipt`], [`Host::gc`].
//! - [`Invocation`] names everything a run depends on; its digest is its
//!   identity and the key of the action cache.
//! - [`Receipt`] says what came of it; its digest covers only deterministic
//!   fields, so two hosts that ran the same invocation agree on it.
//! - [`Config`] is `voidbox.toml`.
//!
//! ```no_run
//! use voidbox::{Host, Invocation};
//! # fn main() -> Result<(), voidbox::Error> {
//! let host = Host::open("/tmp/voidbox-demo")?;
//! let wc = host.add_tool_file("target/wasm-tools/components/wc.wasm".as_ref(), None)?;
//! let input = host.put_input(b"the quick brown fox\n")?;
//! let receipt = host.invoke(&Invocation::new(wc.digest, input).arg("mode", "words"))?;
//! assert_eq!(receipt.outcome.name(), "ok");
//! let output = host.output(&receipt)?.unwrap_or_default();
//! println!("{}", String::from_utf8_lossy(&output));
//! host.flush()?; // make the receipt durable before exiting
//! # Ok(()) }
//! ```
//!
//! The CLI, the benchmarks and (later) the HTTP API are the only places that
//! know clap, terminals or JSON-over-HTTP; the library takes and returns
//! plain data.

/// The process's allocator, for every program that links this crate (the
/// CLI, replicas, tests, examples). glibc's malloc grows each thread's arena
/// a page at a time with `mprotect` and takes the owning arena's lock when
/// another thread frees into it: with the journal's checkpoint thread
/// freeing what invoking threads allocated, `strace -f -c` counted one
/// `mprotect` per three invocations (14,757 in 3 s on two threads), each a
/// page-table change, against about 2,000 with mimalloc, whose per-thread
/// heaps take cross-thread frees without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod bench;
mod capability;
pub mod cluster;
mod config;
mod error;
mod host;
mod invocation;
pub mod pool;
mod storage;

pub use capability::{OWNER_TENANT, OWNER_TOKEN_FILE};
pub use config::{
    Config, Defaults, SandboxSettings, StorageSettings, CONFIG_FILE, CONFIG_TEMPLATE,
};
pub use error::{Error, Result};
pub use host::{Host, ToolRecord};
pub use invocation::{Invocation, Receipt, INVOKE_EXPORT};
pub use storage::Blobs;

pub use voidbox_cas::{CasError, Digest, Store};
pub use voidbox_sandbox::{Budget, Outcome, ToolInfo, ToolKind};
/// The capability and contract crates, re-exported for embedders.
pub use {voidbox_auth as auth, voidbox_contract as contract};
