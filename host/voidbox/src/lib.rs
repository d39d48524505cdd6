//! Voidbox: a WebAssembly-sandboxed tool execution host.
//!
//! This crate composes the pure parts (the `voidbox-cas` store, the
//! `voidbox-sandbox` runtime, the `voidbox-ising` optimizer) into a host you
//! can embed, and carries the `voidbox` command-line program.
//!
//! - [`Host`] opens a data directory and is the whole embedding API:
//!   [`Host::add_tool`], [`Host::put_input`], [`Host::invoke`] (which returns
//!   a [`Receipt`]; [`Host::run`] stores the input and invokes in one),
//!   [`Host::output`], [`Host::receipt`], [`Host::gc`].
//! - [`Invocation`] names everything a run depends on; its digest is its
//!   identity and the key of the action cache.
//! - [`Receipt`] says what came of it; its digest covers only deterministic
//!   fields, so two hosts that ran the same invocation agree on it.
//! - [`Config`] is `voidbox.toml`.
//!
//! ```
//! use voidbox::{Host, Invocation};
//! # fn main() -> Result<(), voidbox::Error> {
//! # let dir = tempfile::tempdir().expect("a temp dir");
//! # let home = dir.path().join("voidbox");
//! # // The test build of the tools; `cargo xtask tools` puts wc.wasm in
//! # // target/wasm-tools/components/.
//! # let wc_wasm = std::path::Path::new(voidbox_tool_artifacts::WC);
//! let host = Host::open(&home)?; // the data directory, created if missing
//! let wc = host.add_tool_file(wc_wasm, None)?; // wc.wasm, a tool of tools/
//! let input = host.put_input(b"the quick brown fox\n")?;
//! // wc takes no arguments: it counts lines, words, chars and bytes.
//! let receipt = host.invoke(&Invocation::new(wc.digest, input))?;
//! assert_eq!(receipt.outcome.name(), "ok");
//! let output = host.output(&receipt)?.unwrap_or_default();
//! assert_eq!(
//!     String::from_utf8_lossy(&output),
//!     r#"{"lines":1,"words":4,"chars":20,"bytes":20}"#
//! );
//! host.flush()?; // make the receipt durable before exiting
//! # Ok(()) }
//! ```
//!
//! The CLI, the benchmarks and (later) the HTTP API are the only places that
//! know clap, terminals or JSON-over-HTTP; the library takes and returns
//! plain data.

/// Makes mimalloc keep freed memory for 10 s before returning it to the
/// system (its default is 1 s), for programs that run on it (the `voidbox`
/// binary and the examples declare it their allocator; a library leaves
/// that choice to the program, so this does nothing for one that did not). Every checkpoint frees a whole journal tail
/// at once, about once a second under load; returned, that memory comes
/// back as fresh pages to fault in and zero, and each return is an
/// `madvise` that flushes the TLB of every core running the process. With
/// 10 s, steady use reuses it and a host that goes idle still gives it
/// back. Page faults of `bare_threads echo.wasm 2 3 host` (perf stat, load
/// 3): 10,320 and 6,258 with 1 s, 5,767 and 6,026 with 10 s, 5,702 and
/// 5,618 with purging off; 24,749-71,920 with immediate purging. Called
/// when a host opens; later calls do nothing.
pub(crate) fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // `mi_option_purge_delay` of mimalloc.h (v2 and v3; v3 is built
        // here), which libmimalloc-sys does not name. Set only if the option
        // reads as one of its documented defaults (10 ms in v2, 1 s in v3),
        // so that another mimalloc version cannot have a different option
        // changed by mistake.
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: reading and setting a mimalloc option is allowed at any
        // time, from any thread.
        unsafe {
            if matches!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 10 | 1000) {
                libmimalloc_sys::mi_option_set(PURGE_DELAY, 10_000);
            }
        }
    });
}

pub mod bench;
mod capability;
pub mod cluster;
mod codec;
mod config;
mod error;
mod host;
mod invocation;
pub mod pool;
mod storage;

pub use capability::{OWNER_TENANT, OWNER_TOKEN_FILE};
pub use config::{
    CheckpointPriority, Config, Defaults, SandboxSettings, StorageSettings, CONFIG_FILE,
    CONFIG_TEMPLATE,
};
pub use error::{Error, Result};
pub use host::{Host, ToolRecord};
pub use invocation::{Invocation, Receipt, INVOKE_EXPORT};
pub use storage::Blobs;

pub use voidbox_cas::{CasError, Digest, Store};
pub use voidbox_sandbox::{Budget, Outcome, ToolInfo, ToolKind};
/// The capability and contract crates, re-exported for embedders.
pub use {voidbox_auth as auth, voidbox_contract as contract};

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_keeps_freed_memory_for_ten_seconds() {
        super::tune_allocator();
        // SAFETY: reading a mimalloc option is allowed at any time.
        let delay = unsafe { libmimalloc_sys::mi_option_get(15) };
        assert_eq!(delay, 10_000);
    }
}
