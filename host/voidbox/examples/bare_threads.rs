//! Bare wasmtime calls (the benchmark's baseline), or full host invocations
//! with fresh inputs, on N threads for a few seconds, for profilers:
//! `bare_threads TOOL.wasm THREADS SECONDS [host]`. Prints calls per second and
//! CPU time per call (all threads of the process).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use voidbox_sandbox::baseline::Bare;
use voidbox_sandbox::SandboxConfig;

/// mimalloc, as in the `voidbox` binary (see its `main.rs`), so the figures
/// match what the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time of the whole process (all threads, user and system): on a
/// shared machine, CPU per call is steadier than calls per second.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let u = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (tool, threads, seconds, host) = match &args[..] {
        [t, n, s] => (t, n, s, false),
        [t, n, s, h] if h == "host" => (t, n, s, true),
        _ => return Err("usage: bare_threads TOOL.wasm THREADS SECONDS [host]".into()),
    };
    let threads: usize = threads.parse()?;
    let window = Duration::from_secs_f64(seconds.parse()?);
    let wasm = std::fs::read(tool)?;
    let bare = Bare::new(&SandboxConfig::default(), &wasm)?;
    for i in 0..1000u64 {
        bare.call(&i.to_le_bytes())?;
    }
    let dir = tempfile::tempdir()?;
    let h = voidbox::Host::open(dir.path())?;
    let digest = h.add_tool(&wasm, Some("echo"))?.digest;
    let template = voidbox::Invocation::new(digest, voidbox::Digest::of(b""));
    let call = |t: usize, n: u64| {
        let input = format!("{t}-{n}");
        if host {
            h.run(&template, input.as_bytes()).expect("run");
        } else {
            bare.call(input.as_bytes()).expect("call");
        }
    };
    let slow = AtomicU64::new(0);
    let slow_us = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let cpu_before = cpu_time();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (call, stop, calls, slow, slow_us) = (&call, &stop, &calls, &slow, &slow_us);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    call(t, n);
                    let us = t0.elapsed().as_micros() as u64;
                    if us > 200 {
                        slow.fetch_add(1, Ordering::Relaxed);
                        slow_us.fetch_add(us, Ordering::Relaxed);
                    }
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_before).as_secs_f64();
    let n = calls.load(Ordering::Relaxed) as f64;
    println!(
        "{threads} threads: {:.0} calls/s, {:.2} CPU us per call, {:.2} cores; {} calls over 200 us, {} ms in them",
        n / wall,
        cpu / n * 1e6,
        cpu / wall,
        slow.load(Ordering::Relaxed),
        slow_us.load(Ordering::Relaxed) / 1000
    );
    if host {
        // What the invocations left for the checkpoint thread, done now.
        h.checkpoint()?;
        let stats = h.storage_stats();
        println!(
            "checkpoint thread: {:.2} CPU us per invocation, {} checkpoints",
            stats.checkpoint_cpu_us as f64 / h.runs().max(1) as f64,
            stats.checkpoints
        );
    }
    Ok(())
}
