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

#[inline(never)]
fn host_runs(host: &Host, template: &Invocation, from: u64, n: u64) {
    for i in from..from + n {
        black_box(
            host.run(template, format!("in-{i}").as_bytes())
                .expect("run"),
        );
    }
}

#[inline(never)]
fn bare_calls(bare: &Bare, from: u64, n: u64) {
    for i in from..from + n {
        black_box(bare.call(format!("in-{i}").as_bytes()).expect("call"));
    }
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
    // Warm both (lazy initialisation, the first tail's pages), uncounted.
    bare_calls_uncounted(&bare, n);
    host_runs_uncounted(&host, &template, n);
    bare_calls(&bare, n, n);
    host_runs(&host, &template, n, n);
    println!(
        "{n} calls each; divide callgrind's inclusive counts of host_runs and bare_calls by {n}"
    );
    Ok(())
}

/// The warm-up, under other names so that callgrind does not count it.
#[inline(never)]
fn bare_calls_uncounted(bare: &Bare, n: u64) {
    for i in 0..n {
        black_box(bare.call(format!("warm-{i}").as_bytes()).expect("call"));
    }
}

#[inline(never)]
fn host_runs_uncounted(host: &Host, template: &Invocation, n: u64) {
    for i in 0..n {
        black_box(
            host.run(template, format!("warm-{i}").as_bytes())
                .expect("run"),
        );
    }
}
