//! `Sandbox::run` alone against bare wasmtime on the same component, for
//! splitting the host's invocation overhead into the sandbox's part and the
//! rest (storage, digests): `sandbox_vs_bare TOOL.wasm SECONDS`. The two
//! alternate in eight rounds, one thread, each call with a fresh input, and
//! the figures are wall time per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use voidbox_sandbox::baseline::Bare;
use voidbox_sandbox::{BlobSource, Budget, NoBlobs, Outcome, RunRequest, Sandbox, SandboxConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tool, seconds] = &args[..] else {
        return Err("usage: sandbox_vs_bare TOOL.wasm SECONDS".into());
    };
    let wasm = std::fs::read(tool)?;
    let slice = Duration::from_secs_f64(seconds.parse::<f64>()? / 16.0);
    let config = SandboxConfig::default();
    let bare = Bare::new(&config, &wasm)?;
    let sandbox = Sandbox::new(config)?;
    let loaded = sandbox.load(*blake3::hash(&wasm).as_bytes(), &wasm)?;
    let blobs: Arc<dyn BlobSource> = Arc::new(NoBlobs);
    let (mut bare_calls, mut bare_time) = (0u64, Duration::ZERO);
    let (mut runs, mut run_time) = (0u64, Duration::ZERO);
    for round in 0..8 {
        let started = Instant::now();
        while started.elapsed() < slice {
            bare.call(format!("bare-{round}-{bare_calls}").as_bytes())?;
            bare_calls += 1;
        }
        bare_time += started.elapsed();
        let started = Instant::now();
        while started.elapsed() < slice {
            let input = format!("sandbox-{round}-{runs}");
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&runs.to_le_bytes());
            let result = sandbox.run(
                &loaded,
                &RunRequest {
                    input: input.as_bytes(),
                    args: &[],
                    budget: Budget::default(),
                    clock_unix_ns: 0,
                    seed,
                    grants: &[],
                    blobs: &blobs,
                    preopens: &[],
                },
            )?;
            if result.outcome != Outcome::Ok {
                return Err(format!("the tool ended with {:?}", result.outcome).into());
            }
            runs += 1;
        }
        run_time += started.elapsed();
    }
    let per = |t: Duration, n: u64| t.as_secs_f64() * 1e6 / n.max(1) as f64;
    let (b, s) = (per(bare_time, bare_calls), per(run_time, runs));
    println!(
        "bare wasmtime {b:.2} us per call, Sandbox::run {s:.2} us per run, ratio {:.3}",
        s / b
    );
    Ok(())
}
