//! Runs N invocations of a tool with fresh inputs, for profilers
//! (`perf record`), and times the pieces of the path separately. Usage:
//! `invoke_loop HOME TOOL.wasm [N [BATCH]]` (BATCH: the batch phases' size,
//! default 64); reuse HOME so the compiled tool comes
//! from the disk cache. Alongside wall time it prints the calling thread's
//! CPU time, which a busy machine disturbs much less, and the host/bare
//! ratio of it (the invocation overhead without the background threads).

use std::sync::Arc;
use std::time::{Duration, Instant};

use voidbox::{Digest, Host, Invocation};
use voidbox_sandbox::baseline::Bare;
use voidbox_sandbox::{NoBlobs, RunRequest, SandboxConfig};

/// mimalloc, as in the `voidbox` binary (see its `main.rs`), so the figures
/// match what the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time of the calling thread: unlike wall time, it does not count
/// the time other processes on a busy machine had the core.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime only writes the struct it is given.
    let t = unsafe {
        let mut t = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f` n times; prints wall and thread-CPU microseconds per call and
/// returns the CPU figure.
fn time(label: &str, n: u64, mut f: impl FnMut(u64)) -> f64 {
    let (started, cpu) = (Instant::now(), thread_cpu());
    for i in 0..n {
        f(i);
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let per_cpu = (thread_cpu() - cpu).as_secs_f64() * 1e6 / n as f64;
    println!("{label:<28} {per:8.2} us wall {per_cpu:8.2} us CPU (this thread)");
    per_cpu
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (home, tool_path) = match (args.next(), args.next()) {
        (Some(h), Some(t)) => (h, t),
        _ => return Err("usage: invoke_loop HOME TOOL.wasm [N [BATCH]]".into()),
    };
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let batch: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let host = Host::init(&home)?;
    let tool = host.add_tool_file(tool_path.as_ref(), Some("profiled"))?;
    let loaded = host
        .sandbox()
        .loaded(tool.digest.as_bytes())
        .expect("loaded by add");
    let salt = format!("{:?}", Instant::now());
    let blobs: Arc<dyn voidbox_sandbox::BlobSource> = Arc::new(NoBlobs);
    let wasm = std::fs::read(&tool_path)?;
    let bare = Bare::new(&SandboxConfig::default(), &wasm)?;
    for i in 0..500u64 {
        bare.call(&i.to_le_bytes())?;
        let input = host.put_input(format!("warm {i} {salt}").as_bytes())?;
        host.invoke(&Invocation::new(tool.digest, input))?;
    }
    // Alternated, so that a busy moment of the machine hits both alike.
    let (mut bare_cpu, mut host_cpu) = (0.0, 0.0);
    for round in 0..3 {
        bare_cpu += time("bare wasmtime call", n, |i| {
            bare.call(format!("bare {round} {i} {salt}").as_bytes())
                .unwrap();
        });
        host_cpu += time("put_input + invoke", n, |i| {
            let input = host
                .put_input(format!("input {round} {i} {salt}").as_bytes())
                .unwrap();
            host.invoke(&Invocation::new(tool.digest, input)).unwrap();
        });
    }
    println!(
        "host / bare, CPU of the calling thread: {:.3}",
        host_cpu / bare_cpu
    );
    time("sandbox.run", n, |i| {
        let input = format!("run {i} {salt}");
        host.sandbox()
            .run(
                &loaded,
                &RunRequest {
                    input: input.as_bytes(),
                    args: &[],
                    budget: host.default_budget(),
                    clock_unix_ns: 0,
                    seed: [0; 32],
                    grants: &[],
                    blobs: &blobs,
                    preopens: &[],
                },
            )
            .unwrap();
    });
    time("put_input", n, |i| {
        host.put_input(format!("put {i} {salt}").as_bytes())
            .unwrap();
    });
    time("cache miss lookup", n, |i| {
        host.cached(&Digest::of(format!("miss {i} {salt}").as_bytes()))
            .unwrap();
    });
    time(&format!("invoke_batch of {batch}"), n / batch, |b| {
        let invocations: Vec<Invocation> = (0..batch)
            .map(|i| {
                let input = host
                    .put_input(format!("batch {b} {i} {salt}").as_bytes())
                    .unwrap();
                Invocation::new(tool.digest, input)
            })
            .collect();
        for r in host.invoke_batch(&invocations) {
            r.unwrap();
        }
    });
    let template = Invocation::new(tool.digest, Digest::of(b""));
    time(&format!("run_batch of {batch}"), n / batch, |b| {
        let inputs: Vec<Vec<u8>> = (0..batch)
            .map(|i| format!("run batch {b} {i} {salt}").into_bytes())
            .collect();
        let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        for r in host.run_batch(&template, &inputs) {
            r.unwrap();
        }
    });
    println!("  (per batch; divide by {batch} for one invocation)");
    println!("{:?}", host.pool_stats());
    let started = Instant::now();
    host.flush()?;
    println!(
        "final flush {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("{:?}", host.storage_stats());
    Ok(())
}
