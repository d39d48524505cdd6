//! Runs N invocations of a tool with fresh inputs, for profilers
//! (`perf record`), and times the pieces of the path separately. Usage:
//! `invoke_loop HOME TOOL.wasm [N]`; reuse HOME so the compiled tool comes
//! from the disk cache.

use std::sync::Arc;
use std::time::Instant;

use voidbox::{Digest, Host, Invocation};
use voidbox_sandbox::{NoBlobs, RunRequest};

fn time(label: &str, n: u64, mut f: impl FnMut(u64)) {
    let started = Instant::now();
    for i in 0..n {
        f(i);
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("{label:<28} {per:8.2} us");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (home, tool) = match (args.next(), args.next()) {
        (Some(h), Some(t)) => (h, t),
        _ => return Err("usage: invoke_loop HOME TOOL.wasm [N]".into()),
    };
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let host = Host::init(&home)?;
    let tool = host.add_tool_file(tool.as_ref(), Some("profiled"))?;
    let loaded = host
        .sandbox()
        .loaded(tool.digest.as_bytes())
        .expect("loaded by add");
    let salt = format!("{:?}", Instant::now());
    let blobs: Arc<dyn voidbox_sandbox::BlobSource> = Arc::new(NoBlobs);
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
                    blobs: blobs.clone(),
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
    time("put_input + invoke", n, |i| {
        let input = host
            .put_input(format!("input {i} {salt}").as_bytes())
            .unwrap();
        host.invoke(&Invocation::new(tool.digest, input)).unwrap();
    });
    let batch = 64u64;
    time("invoke_batch of 64", n / batch, |b| {
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
