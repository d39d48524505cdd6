//! `voidbox bench`: the figures of issue #2, measured side by side in one
//! run so that the ratios mean something on a shared, noisy machine.
//!
//! - invocation overhead: [`Host::invoke`] with a fresh input each time (so
//!   the action cache never answers; input, output and receipt are stored)
//!   against bare wasmtime on the same component (`InstancePre`, the same
//!   pooling allocator and engine settings, a fresh store per call);
//! - throughput with one thread, with the whole process on one CPU, and
//!   with two threads on two CPUs, and through [`Host::run_batch`] (the
//!   batch form of [`Host::run`]) on the worker slots, with how the Ising
//!   placement placed each batch (annealed, repaired or greedy) and how
//!   many jobs a slot took from another;
//! - an action-cache hit;
//! - CAS put and get of 16 MiB blobs against bare blake3 hashing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voidbox_cas::{Digest, DiskStore, Durability, OpenOptions, Store};
use voidbox_sandbox::baseline::Bare;
use voidbox_sandbox::SandboxConfig;

use crate::{Host, Invocation};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable name, used as the JSON key.
    pub name: &'static str,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The goal from the issue, as text, if there is one.
    pub goal: Option<&'static str>,
    /// Whether the value meets the goal.
    pub meets: Option<bool>,
}

/// Everything one `voidbox bench` run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The figures, in the order measured.
    pub figures: Vec<Figure>,
    /// What a reader needs to know to compare the figures fairly.
    pub notes: Vec<String>,
}

impl Report {
    fn add(&mut self, name: &'static str, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            name,
            value,
            unit,
            goal: None,
            meets: None,
        });
    }

    fn goal(
        &mut self,
        name: &'static str,
        value: f64,
        unit: &'static str,
        goal: &'static str,
        meets: bool,
    ) {
        self.figures.push(Figure {
            name,
            value,
            unit,
            goal: Some(goal),
            meets: Some(meets),
        });
    }

    /// One JSON object: each figure by name with its unit and goal.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for f in &self.figures {
            m.insert(
                f.name.to_string(),
                json!({ "value": f.value, "unit": f.unit, "goal": f.goal, "meets_goal": f.meets }),
            );
        }
        json!({
            "voidbox_bench": m,
            "notes": self.notes,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<42} {:>14} {:<10} {}\n",
            "figure", "value", "unit", "goal"
        );
        for f in &self.figures {
            let goal = match (f.goal, f.meets) {
                (Some(g), Some(true)) => format!("{g} (met)"),
                (Some(g), Some(false)) => format!("{g} (NOT met)"),
                _ => String::new(),
            };
            s.push_str(&format!(
                "{:<42} {:>14.3} {:<10} {}\n",
                f.name, f.value, f.unit, goal
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    }
}

/// Where `cargo xtask tools` puts the echo tool, relative to the running
/// binary (`target/release/voidbox` → `target/wasm-tools/...`) or the
/// current directory.
pub fn default_tool_path() -> Option<PathBuf> {
    let rel = Path::new("wasm-tools/components/echo.wasm");
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(|p| p.parent()) {
            candidates.push(target.join(rel));
        }
    }
    candidates.push(Path::new("target").join(rel));
    candidates.into_iter().find(|p| p.exists())
}

/// Runs `f` repeatedly for about `window`; returns calls per second.
fn rate(window: Duration, mut f: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < window {
        for _ in 0..64 {
            f(n);
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// CPU time this process has used so far (all threads, user and system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `f` and returns its result with the cores the process used
/// meanwhile (CPU seconds per wall second): on a shared machine, what the
/// threads were actually given.
fn with_cores<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let (cpu, wall) = (cpu_time(), Instant::now());
    let out = f();
    let cores = (cpu_time() - cpu).as_secs_f64() / wall.elapsed().as_secs_f64();
    (out, cores)
}

/// Runs `f` on `threads` threads for about `window`; returns total calls
/// per second.
fn rate_threads(window: Duration, threads: usize, f: impl Fn(usize, u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, total, f) = (&stop, &total, &f);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f(t, n);
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    total.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The CPUs this thread may run on.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity only writes it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Sets the CPUs of every thread of this process (Linux sets affinity per
/// thread; threads started later inherit their creator's). Returns whether
/// every thread took it.
fn set_process_affinity(set: &libc::cpu_set_t) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    let mut all = true;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: sched_setaffinity only reads the set it is given.
        let ok = unsafe {
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) == 0
        };
        // A thread that exited since the listing cannot be pinned, and
        // need not be.
        all &= ok || !task.path().exists();
    }
    all
}

/// Runs `f` with the whole process (the journal's background threads
/// included) confined to one CPU, then gives every thread its CPUs back:
/// "on one core" in the sense, where one invoking thread cannot
/// hand part of its work to a second core. `None` when the process cannot
/// change its affinity (some containers forbid it).
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> Option<T> {
    let original = affinity()?;
    // SAFETY: CPU_ISSET/CPU_SET/CPU_ZERO only touch the sets given.
    let one = unsafe {
        let cpu = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &original))?;
        let mut one = std::mem::zeroed::<libc::cpu_set_t>();
        libc::CPU_ZERO(&mut one);
        libc::CPU_SET(cpu, &mut one);
        one
    };
    if !set_process_affinity(&one) {
        set_process_affinity(&original);
        return None;
    }
    let out = f();
    set_process_affinity(&original);
    Some(out)
}

/// Which groups of figures to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Invocation overhead, throughput and the action cache.
    Invoke,
    /// CAS put and get against hashing.
    Cas,
}

/// Measures the `parts` asked for; `window` is the time per measurement.
pub fn run(tool: &Path, window: Duration, parts: &[Part]) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let dir = tempfile::tempdir()?;
    if parts.contains(&Part::Invoke) {
        invoke_figures(&mut report, tool, dir.path(), window)?;
    }
    if parts.contains(&Part::Cas) {
        cas_figures(&mut report, dir.path(), window)?;
    }
    Ok(report)
}

/// Whether a host warming up for the invoke figures, after `calls`
/// invocations, should go on: until its journal has been checkpointed
/// twice, the memory of the tails it keeps between checkpoints is still
/// being mapped (and zeroed by the kernel) for the first time, which a
/// running host no longer pays. Bounded, for slow machines.
fn warming(host: &Host, calls: u64, started: Instant) -> bool {
    const WARM_CHECKPOINTS: u64 = 2;
    const WARM_MAX: Duration = Duration::from_secs(15);
    calls < 500
        || (host.storage_stats().checkpoints < WARM_CHECKPOINTS && started.elapsed() < WARM_MAX)
}

/// Runs the invocation `template` on a fresh `input` (stored with the
/// output and the receipt, as `voidbox run` does); the echo tool must
/// succeed, and the action cache must not answer.
fn run_fresh(host: &Host, template: &Invocation, input: &str) {
    let r = host.run(template, input.as_bytes()).expect("invoke");
    assert!(!r.cached && r.outcome == voidbox_sandbox::Outcome::Ok);
}

/// A host for one side of the one-core/two-core comparison, in `home`:
/// the tool added, then warmed up with fresh invocations, `warm` of them,
/// or when `warm` is `None`, until its journal has been checkpointed twice
/// (see [`warming`]). Returns the host, the template of its
/// invocations and how many warmed it up.
fn comparison_host(
    home: &Path,
    wasm: &[u8],
    warm: Option<u64>,
) -> anyhow::Result<(Host, Invocation, u64)> {
    let host = Host::init(home)?;
    let record = host.add_tool(wasm, Some("bench-echo"))?;
    let template = Invocation::new(record.digest, Digest::of(b"")).budget(host.default_budget());
    let started = Instant::now();
    let mut i = 0u64;
    while match warm {
        Some(n) => i < n,
        None => warming(&host, i, started),
    } {
        host.run(&template, format!("warm-{i}").as_bytes())?;
        i += 1;
    }
    // Both sides start their rounds with an empty tail.
    host.checkpoint()?;
    Ok((host, template, i))
}

/// Runs the fresh invocations `KEY-0` .. `KEY-(n-1)` that no thread has
/// taken yet from `next`, 64 at a time, so that threads sharing `next`
/// share the calls.
fn take_calls(host: &Host, template: &Invocation, key: &str, n: u64, next: &AtomicU64) {
    const TAKE: u64 = 64;
    loop {
        let first = next.fetch_add(TAKE, Ordering::Relaxed);
        if first >= n {
            return;
        }
        for i in first..(first + TAKE).min(n) {
            run_fresh(host, template, &format!("{key}-{i}"));
        }
    }
}

/// Runs `f`; returns the seconds it took and the cores the process used
/// meanwhile.
fn timed(f: impl FnOnce()) -> (f64, f64) {
    let started = Instant::now();
    let ((), cores) = with_cores(f);
    (started.elapsed().as_secs_f64(), cores)
}

/// Checkpoints everything `host` has recorded ([`Host::checkpoint`]);
/// returns the CPU seconds the process spent meanwhile (the checkpoint
/// thread's work, which the calls recorded caused).
fn checkpoint_cpu(host: &Host) -> anyhow::Result<f64> {
    let before = cpu_time();
    host.checkpoint()?;
    Ok((cpu_time() - before).as_secs_f64())
}

fn invoke_figures(
    report: &mut Report,
    tool: &Path,
    dir: &Path,
    window: Duration,
) -> anyhow::Result<()> {
    let wasm = std::fs::read(tool)
        .map_err(|e| anyhow::anyhow!("cannot read the benchmark tool {}: {e}", tool.display()))?;
    let host = Arc::new(Host::init(dir.join("home"))?);
    let record = host.add_tool(&wasm, Some("bench-echo"))?;
    let budget = host.default_budget();
    let bare = Bare::new(&SandboxConfig::default(), &wasm)?;

    // Warm both paths (page faults, pool slots, lazy init) into the steady
    // state of a host that has been serving for a while (see `warming`).
    let warm_started = Instant::now();
    let mut i = 0u64;
    while warming(&host, i, warm_started) {
        bare.call(&i.to_le_bytes())
            .map_err(|e| anyhow::anyhow!("bare wasmtime call failed: {e:#}"))?;
        let input = host.put_input(format!("warm-{i}").as_bytes())?;
        host.invoke(&Invocation::new(record.digest, input).budget(budget))?;
        i += 1;
    }

    // What normal use does (the CLI's `voidbox run`): a fresh input,
    // stored with the output and the receipt. The template's input is
    // replaced by each input's digest.
    let template = Invocation::new(record.digest, Digest::of(b"")).budget(budget);
    let invoke_fresh =
        |thread: usize, i: u64| run_fresh(&host, &template, &format!("host-{thread}-{i}"));
    // Interleave the two so that machine noise hits both alike.
    let mut bare_rates = Vec::new();
    let mut host_rates = Vec::new();
    // The checkpoint thread's CPU per invocation: work each invocation
    // causes that runs in the background (moving its records into redb).
    let checkpoint_us = |before: crate::pool::StorageStats, runs_before: u64| {
        let s = host.storage_stats();
        (s.checkpoint_cpu_us - before.checkpoint_cpu_us) as f64
            / (host.runs() - runs_before).max(1) as f64
    };
    let (stats_1, runs_1) = (host.storage_stats(), host.runs());
    let (mut bare_cpu_us, mut host_cpu_us) = (0.0, 0.0);
    // Many short alternations rather than two long ones: another process's
    // burst of work then falls on both sides of a ratio alike.
    const ROUNDS: usize = 8;
    let slice = window / ROUNDS as u32;
    let share = 1.0 / ROUNDS as f64;
    for round in 0..ROUNDS {
        let (r, cores) = with_cores(|| {
            rate(slice, |i| {
                bare.call(format!("bare-{round}-{i}").as_bytes())
                    .expect("bare call");
            })
        });
        bare_rates.push(r);
        bare_cpu_us += cores / r * 1e6 * share;
        let (r, cores) = with_cores(|| rate(slice, |i| invoke_fresh(round + 10, i)));
        host_rates.push(r);
        host_cpu_us += cores / r * 1e6 * share;
    }
    let bare_rate = bare_rates.iter().sum::<f64>() / bare_rates.len() as f64;
    let host_rate = host_rates.iter().sum::<f64>() / host_rates.len() as f64;
    let (bare_us, host_us) = (1e6 / bare_rate, 1e6 / host_rate);
    report.add("bare_wasmtime_call_us", bare_us, "us");
    report.add("host_invoke_us", host_us, "us");
    report.goal(
        "invoke_overhead_ratio",
        host_us / bare_us,
        "x",
        "<= 1.3",
        host_us / bare_us <= 1.3,
    );
    report.goal(
        "invocations_per_s_1_thread",
        host_rate,
        "1/s",
        ">= 45000",
        host_rate >= 45_000.0,
    );
    // One core against two. Each side has a host of its own, opened fresh
    // and warmed up with the same invocations, and each round gives both
    // the same number of fresh inputs, then checkpoints what they
    // recorded: the two storages grow alike, checkpoint by checkpoint, so
    // their index merges fall due in the same rounds. On one host that
    // background work (lumpy: a checkpoint with a merge took 270-400 ms of
    // CPU, one without 45-100 ms) landed in whichever side's time it
    // happened to, 0.8-2.1 us per invocation on one side against 1.3-1.8
    // on the other, and moved the figure by about a tenth from run to run.
    // The checkpoint that ends a round is untimed; the CPU it takes is
    // added to the side's time as its cores would have spent it (all of
    // it on one core, half of it on two busy ones). The sides alternate in
    // rounds so that machine noise hits both alike: the whole process
    // pinned to one CPU with one invoking thread, then two invoking
    // threads on every CPU. The host above must not checkpoint meanwhile.
    host.checkpoint()?;
    let (one_host, one_template, warmed) = comparison_host(&dir.join("one"), &wasm, None)?;
    let (two_host, two_template, _) = comparison_host(&dir.join("two"), &wasm, Some(warmed))?;
    let (one_stats, two_stats) = (one_host.storage_stats(), two_host.storage_stats());
    // Calls per side and round: about a slice's worth on one thread.
    let per_round = ((host_rate * slice.as_secs_f64()) as u64).max(1024);
    let (mut one_time, mut one_core_cores, mut one_core_pinned) = (0.0, 0.0, true);
    let (mut two_time, mut two_cores) = (0.0, 0.0);
    std::thread::scope(|s| -> anyhow::Result<()> {
        // The second thread of the two-thread side lives through all the
        // rounds, as this one does: a thread started per round begins with
        // a cold allocator heap and cold per-thread caches, which the
        // one-thread side, on this thread throughout, never pays.
        let (jobs, job) = std::sync::mpsc::channel::<(String, Arc<AtomicU64>)>();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let (host_2, template_2) = (&two_host, &two_template);
        s.spawn(move || {
            for (key, next) in job {
                take_calls(host_2, template_2, &key, per_round, &next);
                let _ = done.send(());
            }
        });
        for round in 0..ROUNDS {
            let key = format!("cmp-{round}");
            let one = on_one_cpu(|| -> anyhow::Result<(f64, f64, f64)> {
                let next = AtomicU64::new(0);
                let (seconds, cores) = timed(|| {
                    take_calls(&one_host, &one_template, &key, per_round, &next);
                });
                Ok((seconds, cores, checkpoint_cpu(&one_host)?))
            });
            match one {
                Some(one) => {
                    let (seconds, cores, checkpoint) = one?;
                    one_time += seconds + checkpoint;
                    one_core_cores += cores * share;
                }
                None => one_core_pinned = false,
            }
            let next = Arc::new(AtomicU64::new(0));
            let (seconds, cores) = timed(|| {
                jobs.send((key.clone(), next.clone()))
                    .expect("the second thread waits for work");
                take_calls(&two_host, &two_template, &key, per_round, &next);
                finished
                    .recv()
                    .expect("the second thread finishes its work");
            });
            two_time += seconds + checkpoint_cpu(&two_host)? / cores.max(1.0);
            two_cores += cores * share;
        }
        Ok(())
    })?;
    let calls = (per_round * ROUNDS as u64) as f64;
    let (one_core, two) = (calls / one_time, calls / two_time);
    let background_us = |h: &Host, before: crate::pool::StorageStats| {
        (h.storage_stats().checkpoint_cpu_us - before.checkpoint_cpu_us) as f64 / calls
    };
    let (one_background, two_background) = (
        background_us(&one_host, one_stats),
        background_us(&two_host, two_stats),
    );
    drop((one_host, two_host));
    if one_core_pinned {
        report.goal(
            "invocations_per_s_one_core",
            one_core,
            "1/s",
            ">= 45000",
            one_core >= 45_000.0,
        );
        report.goal(
            "two_core_scaling",
            two / one_core,
            "x",
            ">= 1.8",
            two / one_core >= 1.8,
        );
        // Below 1: another process shared the pinned CPU, and the scaling
        // above is flattered by it.
        report.add("cores_used_one_core", one_core_cores, "cores");
    } else {
        report.notes.push(
            "invocations_per_s_one_core and two_core_scaling are missing: this process may \
             not change its CPU affinity here"
                .into(),
        );
    }
    // No goal of its own: the is two_core_scaling, over the
    // pinned rate (one unpinned thread, which two_thread_scaling compares
    // with, already uses part of the second core).
    report.add("invocations_per_s_2_threads", two, "1/s");
    // The issue's sentence ("≥ 45,000 invocations/s on one core, and ≥ 1.8×
    // that with two cores busy") reads two ways: 1.8× the rate measured on
    // one core (two_core_scaling, above), or 1.8× the 45,000/s goal. Both
    // are reported.
    report.goal(
        "invocations_per_s_2_threads_vs_one_core_goal",
        two,
        "1/s",
        ">= 81000 (1.8 x 45000)",
        two >= 1.8 * 45_000.0,
    );
    report.add("two_thread_scaling", two / host_rate, "x");
    report.add("cores_used_2_threads", two_cores, "cores");
    report.add("bare_cpu_us_per_call_1_thread", bare_cpu_us, "us");
    report.add("host_cpu_us_per_invocation_1_thread", host_cpu_us, "us");
    report.add(
        "host_cpu_us_per_invocation_2_threads",
        two_cores / two * 1e6,
        "us",
    );
    // The storage's leftover work (a checkpoint) must not run during the
    // bare measurement.
    host.checkpoint()?;
    // Everything the one-thread phase ran is in redb now.
    report.add(
        "checkpoint_cpu_us_per_invocation",
        checkpoint_us(stats_1, runs_1),
        "us",
    );
    // The same for the one-core and two-core sides: alike, as their
    // storages grew alike.
    report.add(
        "checkpoint_cpu_us_per_invocation_one_core",
        one_background,
        "us",
    );
    report.add(
        "checkpoint_cpu_us_per_invocation_2_threads",
        two_background,
        "us",
    );
    let (bare_two, bare_two_cores) = with_cores(|| {
        rate_threads(window, 2, |t, i| {
            bare.call(format!("bare2-{t}-{i}").as_bytes())
                .expect("bare call");
        })
    });
    report.add("bare_calls_per_s_2_threads", bare_two, "1/s");
    report.add("bare_two_thread_scaling", bare_two / bare_rate, "x");
    report.add("cores_used_bare_2_threads", bare_two_cores, "cores");
    report.add(
        "bare_cpu_us_per_call_2_threads",
        bare_two_cores / bare_two * 1e6,
        "us",
    );

    // The executor pool: batches of fresh inputs placed on the worker slots
    // (one per core) and run there, each input stored by its slot, as
    // `Host::run` stores it in the phases above.
    const BATCH: usize = 64;
    let before = host.pool_stats();
    let next = AtomicU64::new(0);
    let (batches, pool_cores) = with_cores(|| {
        rate(window, |_| {
            let inputs: Vec<Vec<u8>> = (0..BATCH)
                .map(|_| {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    format!("batch-{i}-{}", dir.display()).into_bytes()
                })
                .collect();
            let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            for r in host.run_batch(&template, &inputs) {
                let r = r.expect("batch run");
                assert!(!r.cached && r.outcome == voidbox_sandbox::Outcome::Ok);
            }
        })
    });
    let pooled = batches * BATCH as f64;
    let stats = host.pool_stats();
    report.add("worker_slots", stats.worker_slots as f64, "slots");
    report.goal(
        "run_batch_per_s_pool",
        pooled,
        "1/s",
        ">= 1.8x one thread",
        pooled >= 1.8 * host_rate,
    );
    report.add("pool_scaling", pooled / host_rate, "x");
    // What the pool's design decides: how close a batch on the slots comes
    // to two threads that each call `Host::run` on their own.
    report.add("pool_vs_2_threads", pooled / two, "x");
    report.add("cores_used_pool", pool_cores, "cores");
    report.add(
        "pool_cpu_us_per_invocation",
        pool_cores / pooled * 1e6,
        "us",
    );
    let placed = (stats.batches - before.batches).max(1);
    report.add(
        "jobs_stolen_per_batch",
        (stats.jobs_stolen - before.jobs_stolen) as f64 / placed as f64,
        "jobs",
    );
    report.add(
        "placement_us_per_batch",
        (stats.placement_us - before.placement_us) as f64 / placed as f64,
        "us",
    );
    report.add(
        "placement_annealed_batches",
        (stats.placed_annealed - before.placed_annealed) as f64,
        "batches",
    );
    report.add(
        "placement_repaired_batches",
        (stats.placed_repaired - before.placed_repaired) as f64,
        "batches",
    );
    report.add(
        "placement_greedy_batches",
        (stats.placed_greedy - before.placed_greedy) as f64,
        "batches",
    );
    report.add(
        "placement_failed_batches",
        (stats.placement_failed - before.placement_failed) as f64,
        "batches",
    );
    report.notes.push(
        "cores_used_*: CPU seconds the whole process got per wall second while measuring; \
         below 2 on two cores means other processes had the rest; *_cpu_us_*: those CPU \
         seconds per call (host figures include the journal's flusher and checkpoint \
         threads); checkpoint_cpu_us_per_invocation: the checkpoint thread's CPU per \
         invocation of the one-thread phase (B, part of the host figures; _one_core and \
         _2_threads: of those sides); with two invoking threads it competes with them for the \
         two cores, so two threads can give at most 2F/(F+B) of one thread's rate, F being the \
         invoking thread's CPU and B the background's; invocations_per_s_one_core: the whole \
         process (background threads included) pinned to one CPU, one invoking thread; \
         invocations_per_s_2_threads: two invoking threads; each of the two on a host of its \
         own that grows alike, the same calls per round, and the checkpoint work those calls \
         caused counted in (see bench.rs); two_core_scaling: the second over the first (the \
         issue's \"on one core\" and \"two cores busy\"; two_thread_scaling compares with one \
         unpinned thread, which also uses part of the second core)"
            .into(),
    );
    report.notes.push(format!(
        "run_batch_per_s_pool: Host::run_batch over batches of {BATCH} fresh inputs, placed by \
         the Ising placement on {} worker slots (warm tool = locality; slot 0 is the calling \
         thread) and run there, a slot that ran out of its own share taking jobs from another's \
         (jobs_stolen_per_batch); the placement counters say which path placed each batch",
        stats.worker_slots
    ));
    host.flush()?;
    let storage = host.storage_stats();
    report.add("journal_group_commits", storage.frames as f64, "fsyncs");
    report.add(
        "journal_checkpoints",
        storage.checkpoints as f64,
        "checkpoints",
    );
    report.notes.push(format!(
        "host invocations store input, output and receipt in the journal (one write and fsync \
         per group commit); {} checkpoints of the journal into redb ran inside the measured \
         windows and are in the figures (the tail left at the end is checkpointed when the host \
         closes, unmeasured)",
        storage.checkpoints
    ));

    // Action-cache hit: the same invocation again and again, with the
    // storage idle (no checkpoint left running from the figures above).
    host.checkpoint()?;
    let input = host.put_input(b"cache me")?;
    let inv = Invocation::new(record.digest, input).budget(budget);
    host.invoke(&inv)?;
    let hits = rate(window, |_| {
        let r = host.invoke(&inv).expect("cached invoke");
        debug_assert!(r.cached);
    });
    report.goal(
        "action_cache_hit_us",
        1e6 / hits,
        "us",
        "<= 2",
        1e6 / hits <= 2.0,
    );
    Ok(())
}

/// The CAS figures' baseline: blake3 of the same bytes on one thread, in
/// spans between the puts it is compared with.
#[derive(Default)]
struct Hashing {
    bytes: u64,
    time: Duration,
    calls: u64,
}

impl Hashing {
    fn run(&mut self, data: &mut [u8], span: Duration) {
        let started = Instant::now();
        while started.elapsed() < span {
            data[..8].copy_from_slice(&self.calls.to_le_bytes());
            std::hint::black_box(blake3::hash(data));
            self.calls += 1;
            self.bytes += data.len() as u64;
        }
        self.time += started.elapsed();
    }

    /// Bytes per second so far.
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64()
    }
}

fn cas_figures(report: &mut Report, dir: &Path, window: Duration) -> anyhow::Result<()> {
    const SIZE: usize = 16 << 20;
    let mut data = vec![0u8; SIZE];
    blake3::Hasher::new_derive_key("voidbox bench data")
        .finalize_xof()
        .fill(&mut data);
    // What the invoke figures left for the kernel to write back would
    // otherwise be written during the puts below (untimed here).
    // SAFETY: sync takes no arguments and only schedules writeback.
    unsafe { libc::sync() };
    // The baseline alternates with the puts, in short rounds as the invoke
    // figures do, so that the machine's noise hits both sides alike (one
    // hashing window before all puts let a slow minute fall on one side).
    const ROUNDS: u32 = 8;
    const WARM_UP_PUTS: usize = 8;
    let slice = window / ROUNDS;
    let mut hashing = Hashing::default();
    for (durability, label_put, label_ratio) in [
        (
            Durability::Deferred,
            "cas_put_mib_per_s_deferred",
            "cas_put_vs_hash_deferred",
        ),
        (
            Durability::Immediate,
            "cas_put_mib_per_s_fsync",
            "cas_put_vs_hash_fsync",
        ),
    ] {
        let root = dir.join(format!("cas-{durability:?}"));
        let store = DiskStore::open_with(
            &root,
            OpenOptions {
                durability,
                read_only: false,
            },
        )?;
        let mut stored = Vec::new();
        // Only the puts are timed, back to back as the hashing is. Between
        // them, untimed, all but the last four blobs are removed, so the
        // disk never fills; a deferred blob removed before it is synced
        // takes its dirty pages with it, so nothing waits on the disk
        // either. Syncing each one here instead would leave the CPUs idle
        // for the disk (about 10 ms) before every timed put, and on this
        // VM work that follows an idle spell runs slower: the put measured
        // 0.74-0.77 of hashing that way, the same after a 10 ms sleep
        // instead of the sync, 0.88-0.90 back to back; blake3 itself after
        // a 10 ms sleep ran 22% slower than back to back, so the ratio was
        // the harness's, not the store's (BENCHMARKS.md, issue #2).
        let mut blobs = 0u64;
        let mut put = |data: &mut [u8]| -> anyhow::Result<Duration> {
            // A distinct blob each time, so dedup never short-cuts a put.
            blobs += 1;
            data[..8].copy_from_slice(&(blobs + 1_000_000).to_le_bytes());
            let t = Instant::now();
            let d = store.put(data)?;
            let took = t.elapsed();
            stored.push(d);
            if stored.len() > 4 {
                store.remove(&stored.remove(0))?;
            }
            Ok(took)
        };
        // Untimed warm-up. After the invoke figures, the first few puts
        // wrote into page cache at a tenth of the usual speed (37 ms for 16
        // MiB, all of it in the kernel's copy, with nothing dirty to
        // throttle): fresh memory this VM's hypervisor had not backed yet.
        // The steady state below reuses the pages of removed blobs.
        for _ in 0..WARM_UP_PUTS {
            put(&mut data)?;
        }
        let (mut put_time, mut puts) = (Duration::ZERO, 0u64);
        for _ in 0..ROUNDS {
            hashing.run(&mut data, slice);
            let started = Instant::now();
            while started.elapsed() < slice * 2 {
                put_time += put(&mut data)?;
                puts += 1;
            }
        }
        let hash_rate = hashing.rate();
        let put_rate = puts as f64 * SIZE as f64 / put_time.as_secs_f64();
        store.sync()?;
        report.add(label_put, put_rate / (1 << 20) as f64, "MiB/s");
        let ratio = put_rate / hash_rate;
        report.goal(label_ratio, ratio, "x", ">= 0.7", ratio >= 0.7);
        if durability == Durability::Deferred {
            let d = *stored.last().expect("at least one put");
            let get_rate = rate(window, |_| {
                std::hint::black_box(store.get(&d).expect("get"));
            }) * SIZE as f64;
            report.add("cas_get_mib_per_s", get_rate / (1 << 20) as f64, "MiB/s");
            report.goal(
                "cas_get_vs_hash",
                get_rate / hash_rate,
                "x",
                ">= 0.7",
                get_rate / hash_rate >= 0.7,
            );
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }
    let hash_rate = hashing.rate();
    report.add(
        "blake3_hash_mib_per_s",
        hash_rate / (1 << 20) as f64,
        "MiB/s",
    );
    report.notes.push(
        "CAS ratios: a 16 MiB put shares writing and hashing, in 512 KiB units, between the \
         calling thread and a helper (two cores busy); the baseline is blake3 on one thread, \
         no I/O"
            .into(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
        // SAFETY: CPU_ISSET only reads the set.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
            .collect()
    }

    #[test]
    fn one_cpu_pins_every_thread_then_gives_the_cpus_back() {
        let before = affinity().expect("affinity readable");
        // A thread started before pinning must be pinned too (the journal's
        // threads are), and one started while pinned inherits it.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (back_tx, back_rx) = std::sync::mpsc::channel();
        let older = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                back_tx.send(cpus(&affinity().unwrap())).unwrap();
            }
        });
        let seen = on_one_cpu(|| {
            tx.send(()).unwrap();
            let older = back_rx.recv().unwrap();
            let mine = cpus(&affinity().unwrap());
            let newer = std::thread::spawn(|| cpus(&affinity().unwrap()))
                .join()
                .unwrap();
            (older, mine, newer)
        });
        let Some((older_cpus, mine, newer)) = seen else {
            // Only right where this process may not change its affinity
            // (the bench then says the figures are missing).
            // SAFETY: sched_setaffinity only reads the set it is given.
            let allowed = unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &before) == 0
            };
            assert!(!allowed, "on_one_cpu gave up where affinity can be set");
            drop(tx);
            older.join().unwrap();
            return;
        };
        assert_eq!(mine.len(), 1, "pinned to one CPU: {mine:?}");
        assert_eq!(older_cpus, mine);
        assert_eq!(newer, mine);
        assert_eq!(cpus(&affinity().unwrap()), cpus(&before));
        tx.send(()).unwrap();
        assert_eq!(back_rx.recv().unwrap(), cpus(&before));
        drop(tx);
        older.join().unwrap();
    }
}
