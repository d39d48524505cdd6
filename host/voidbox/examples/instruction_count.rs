//! Counts instructions instead of timing: `Host::run` with fresh inputs and
//! bare wasmtime calls of the same tool, for valgrind's callgrind, whose
//! counts repeat to the instruction on a machine whose timings wander by
//! half (see BENCHMARKS.md, issue #2). Usage:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     --toggle-collect='instruction_count::host_runs' \
//!     --toggle-collect='instruction_count::bare_calls' \
//!     target/release/examples/instruction_count TOOL.wasm [N]
//! callgrind_annotate --inclusive=yes cg.out | grep -E 'host_runs|bare_calls'
//! ```
//!
//! Each count divided by N (default 2,000) is one call. The pool is kept
//! small (valgrind cannot reserve the terabyte of address space the default
//! pool asks for), and under valgrind wasmtime resets memories with memset
//! rather than `PAGEMAP_SCAN`, so the wasmtime part of both counts is not
//! what a native run executes; the difference between them, the host's own
//! instructions per invocation, is.

use std::hint::black_box;

use voidbox::{Digest, Host, Invocation};
use voidbox_sandbox::baseline::Bare;
use voidbox_sandbox::SandboxConfig;

/// mimalloc, as in the `voidbox` binary (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A pool valgrind can map: two instances of 256 MiB on one lane.
const VOIDBOX_TOML: &str =
    "[sandbox]\ninstances_max = 2\nmemory_bytes_max = 268435456\nlanes = 1\n";

/// Calls `call` `n` times with fresh inputs, named `{prefix}-{i}`; inlined
/// into the functions below, whose names callgrind tells apart.
#[inline(always)]
fn repeat(prefix: &str, from: u64, n: u64, mut call: impl FnMut(&[u8])) {
    for i in from..from + n {
        call(format!("{prefix}-{i}").as_bytes());
    }
}

/// The counted runs (callgrind's `--toggle-collect` names these two).
#[inline(never)]
fn host_runs(host: &Host, template: &Invocation, n: u64) {
    repeat("in", n, n, |input| {
        black_box(host.run(template, input).expect("run"));
    });
}

#[inline(never)]
fn bare_calls(bare: &Bare, n: u64) {
    repeat("in", n, n, |input| {
        black_box(bare.call(input).expect("call"));
    });
}

/// The warm-up (lazy initialisation, the first tail's pages), uncounted.
#[inline(never)]
fn warm_up(host: &Host, template: &Invocation, bare: &Bare, n: u64) {
    repeat("warm", 0, n, |input| {
        black_box(bare.call(input).expect("call"));
        black_box(host.run(template, input).expect("run"));
    });
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tool = args
        .next()
        .ok_or("usage: instruction_count TOOL.wasm [N]")?;
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let wasm = std::fs::read(&tool)?;
    let home = tempfile::tempdir()?;
    std::fs::write(home.path().join(voidbox::CONFIG_FILE), VOIDBOX_TOML)?;
    let host = Host::init(home.path())?;
    let digest = host.add_tool(&wasm, Some("counted"))?.digest;
    let template = Invocation::new(digest, Digest::of(b""));
    let bare = Bare::new(
        &SandboxConfig {
            instances_max: 2,
            memory_bytes_max: 256 << 20,
            lanes: 1,
            ..SandboxConfig::default()
        },
        &wasm,
    )?;
    warm_up(&host, &template, &bare, n);
    bare_calls(&bare, n);
    host_runs(&host, &template, n);
    println!(
        "{n} calls each; divide callgrind's inclusive counts of host_runs and bare_calls by {n}"
    );
    Ok(())
}
