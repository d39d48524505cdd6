//! The engine, the compiled-tool cache and the per-invocation store.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::bindings::sync::{Command, CommandPre};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::budget::{Limiter, MemoryLimitHit};
use crate::determinism::{FixedWallClock, SeededRandom, SteppingClock};
use crate::world::{self, HostState, Tool, ToolPre};
use crate::{Budget, LoadError, Outcome, RunError, ToolInfo};

/// How often the epoch ticker advances the engine's epoch. The wall-clock
/// guard is accurate to about this much.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks without a run after which the epoch ticker sleeps until the next
/// run starts (100 ms): an idle host, or a cluster's four idle replicas,
/// should not be woken 200 times a second each for nothing.
const IDLE_TICKS_BEFORE_PARKING: u32 = 20;

/// Which lanes have runs going, and whether the epoch ticker sleeps: a run
/// wakes it. The counts are per lane (a lane is a CPU's), each on a cache
/// line of its own, so runs on two cores do not contend on one line.
struct Activity {
    lanes: Vec<LaneRuns>,
    parked: AtomicBool,
    stop: AtomicBool,
    ticker: OnceLock<std::thread::Thread>,
}

#[repr(align(64))]
struct LaneRuns(AtomicU32);

impl Activity {
    /// Counts a run in `lane` until the guard drops, and wakes the ticker
    /// if it sleeps. The count is raised before `parked` is read, and the
    /// ticker sets `parked` before it reads the counts (both SeqCst): so
    /// either the ticker sees the run and stays awake, or the run sees
    /// `parked` and unparks it (an unpark before the park makes the park
    /// return at once).
    fn enter(&self, lane: usize) -> ActiveRun<'_> {
        self.lanes[lane].0.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            if let Some(t) = self.ticker.get() {
                t.unpark();
            }
        }
        ActiveRun {
            activity: self,
            lane,
        }
    }

    fn any(&self) -> bool {
        self.lanes.iter().any(|l| l.0.load(Ordering::SeqCst) > 0)
    }

    /// The ticker's loop: advance the epoch of every engine every tick
    /// while runs go on, sleep once none has for a while.
    fn tick(&self, engines: &[Engine]) {
        let mut quiet = 0;
        while !self.stop.load(Ordering::SeqCst) {
            quiet = if self.any() { 0 } else { quiet + 1 };
            if quiet >= IDLE_TICKS_BEFORE_PARKING {
                self.parked.store(true, Ordering::SeqCst);
                if !self.any() && !self.stop.load(Ordering::SeqCst) {
                    // Spurious wake-ups only cost a loop.
                    std::thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                quiet = 0;
            }
            std::thread::sleep(EPOCH_TICK);
            for engine in engines {
                engine.increment_epoch();
            }
        }
    }
}

/// A run in progress (see [`Activity::enter`]).
struct ActiveRun<'a> {
    activity: &'a Activity,
    lane: usize,
}

impl Drop for ActiveRun<'_> {
    fn drop(&mut self) {
        self.activity.lanes[self.lane]
            .0
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// How much of each linear memory the pooling allocator resets in place
/// (instead of decommitting) when an instance ends, when the kernel has the
/// `PAGEMAP_SCAN` ioctl: only the dirtied pages in it are reset, so a
/// large value costs little and covers a small tool's whole working set.
const KEEP_RESIDENT_BYTES_PAGEMAP: usize = 1 << 20;
/// The same without the ioctl: this many bytes are memset per run, so it
/// stays small.
const KEEP_RESIDENT_BYTES_MEMSET: usize = 64 << 10;

/// Whether the running kernel is Linux 6.7 or later, which has the
/// `PAGEMAP_SCAN` ioctl that wasmtime's `pagemap_scan(Auto)` uses.
fn kernel_has_pagemap_scan() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 7)
}

/// The keep-resident size for this machine (see the constants).
fn keep_resident_bytes() -> usize {
    if kernel_has_pagemap_scan() {
        KEEP_RESIDENT_BYTES_PAGEMAP
    } else {
        KEEP_RESIDENT_BYTES_MEMSET
    }
}

/// The most stderr kept per run. Stderr is for people (panic messages,
/// diagnostics), never part of the output.
const STDERR_BYTES_MAX: usize = 64 << 10;

/// Settings fixed for the life of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled artifacts are kept, keyed by the component's digest and
    /// the engine's compatibility hash, so a restart does not recompile.
    /// `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling allocator (fast instantiation); otherwise
    /// memories are mapped on demand.
    pub pooling: bool,
    /// How many component instances may be alive at once in each lane (its
    /// pool's size).
    pub instances_max: u32,
    /// The ceiling on any budget's `memory_bytes`: the size of one pooled
    /// memory slot.
    pub memory_bytes_max: u64,
    /// Engines to run on (see [`Sandbox`]); 0 means one per CPU this
    /// process may use, up to [`LANES_MAX`].
    pub lanes: usize,
}

/// The most lanes a sandbox makes when asked for one per CPU: each lane
/// reserves its own pool of address space.
pub const LANES_MAX: usize = 16;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: None,
            pooling: true,
            instances_max: 64,
            memory_bytes_max: 4 << 30,
            lanes: 0,
        }
    }
}

/// Which world a loaded component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolKind {
    /// The `voidbox:tool/tool` world: `describe` and `invoke`.
    Tool,
    /// An unmodified `wasi:cli/command`: input on stdin, output from stdout,
    /// arguments as argv.
    Command,
}

enum Pre {
    Tool(ToolPre<RunState>),
    Command(CommandPre<RunState>),
}

/// A compiled, linked component, ready to be instantiated cheaply.
pub struct LoadedTool {
    digest: [u8; 32],
    kind: ToolKind,
    /// One per lane of the sandbox that loaded it, in lane order.
    pres: Vec<Pre>,
    imports: Vec<String>,
    exports: Vec<String>,
    compiled_bytes: u64,
    from_disk_cache: bool,
}

impl std::fmt::Debug for LoadedTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTool")
            .field("kind", &self.kind)
            .field("imports", &self.imports)
            .field("exports", &self.exports)
            .finish_non_exhaustive()
    }
}

impl LoadedTool {
    /// The digest this tool was loaded under.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Which world the component implements.
    pub fn kind(&self) -> ToolKind {
        self.kind
    }

    /// The component's imports, by name (e.g. `wasi:cli/stdout@0.2.0`).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// The component's exports, by name.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }

    /// Size of the compiled artifact in bytes.
    pub fn compiled_bytes(&self) -> u64 {
        self.compiled_bytes
    }

    /// Whether the compiled code came from the on-disk cache.
    pub fn from_disk_cache(&self) -> bool {
        self.from_disk_cache
    }
}

/// Access to content-addressed blobs for the `read-blob` import. The sandbox
/// checks the invocation's grants before it asks; implementations only fetch.
pub trait BlobSource: Send + Sync {
    /// Returns the blob's bytes, `Ok(None)` if the host does not have it.
    /// `digest` is already validated as `blake3:<64 hex>`.
    fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, String>;
}

/// A source with no blobs, for runs that grant none.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBlobs;

impl BlobSource for NoBlobs {
    fn read_blob(&self, _digest: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

impl NoBlobs {
    /// One `NoBlobs` source for every request that needs one.
    pub fn shared() -> &'static Arc<dyn BlobSource> {
        static SHARED: std::sync::LazyLock<Arc<dyn BlobSource>> =
            std::sync::LazyLock::new(|| Arc::new(NoBlobs));
        &SHARED
    }
}

/// Everything one run needs besides the tool.
#[derive(Clone)]
pub struct RunRequest<'a> {
    /// The input bytes (the `input` parameter, or stdin for a command).
    pub input: &'a [u8],
    /// `--arg key=value` pairs, in order.
    pub args: &'a [(String, String)],
    /// The limits of this run.
    pub budget: Budget,
    /// The consensus time, nanoseconds since the Unix epoch: the guest's
    /// wall clock and the host `now` import.
    pub clock_unix_ns: u64,
    /// Seed for all of the guest's randomness; the host derives it from the
    /// invocation digest.
    pub seed: [u8; 32],
    /// Blob digests (`blake3:<hex>`) the guest may read with `read-blob`.
    pub grants: &'a [String],
    /// Where granted blobs are read from (borrowed: a run that grants
    /// nothing never touches it).
    pub blobs: &'a Arc<dyn BlobSource>,
    /// Host directories visible read-only to the guest, as (host path, guest
    /// path).
    pub preopens: &'a [(PathBuf, String)],
}

impl std::fmt::Debug for RunRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("input_bytes", &self.input.len())
            .field("args", &self.args)
            .field("budget", &self.budget)
            .field("clock_unix_ns", &self.clock_unix_ns)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// A line the guest logged through the `log` import.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text, cut to the host's per-line limit.
    pub message: String,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// How the run ended.
    pub outcome: Outcome,
    /// The output bytes; empty unless the outcome is `ok`.
    pub output: Vec<u8>,
    /// Fuel consumed (deterministic).
    pub fuel_used: u64,
    /// The largest size any linear memory reached, in bytes.
    pub memory_peak_bytes: u64,
    /// Lines logged through the `log` import.
    pub logs: Vec<LogLine>,
    /// What the guest wrote to stderr (cut to a limit), e.g. a panic message.
    pub stderr: Vec<u8>,
}

/// The store's data for one run.
pub(crate) struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    stderr: MemoryOutputPipe,
    pub(crate) host: HostState,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One wasmtime engine with its pooling allocator and linker.
struct Lane {
    engine: Engine,
    linker: Linker<RunState>,
}

/// An engine of `config`'s deterministic configuration and a linker with
/// WASI 0.2 and the `voidbox:tool` host interface, for store data `T` (the
/// sandbox's, or the bare baseline's).
pub(crate) fn engine_and_linker<T>(config: &SandboxConfig) -> Result<(Engine, Linker<T>), LoadError>
where
    T: WasiView + world::voidbox::tool::host::Host + world::voidbox::tool::types::Host + 'static,
{
    let engine = Engine::new(&deterministic_config(config)).map_err(|e| {
        LoadError::Engine(format!(
            "could not create the wasmtime engine: {e:#}; if the pooling allocator cannot \
             reserve memory, lower instances_max or memory_bytes_max (or sandbox lanes)"
        ))
    })?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| LoadError::Engine(format!("linking WASI: {e:#}")))?;
    Tool::add_to_linker::<T, HasSelf<T>>(&mut linker, |s| s)
        .map_err(|e| LoadError::Engine(format!("linking the voidbox host: {e:#}")))?;
    Ok((engine, linker))
}

/// Replaces WASI's `insecure-seed` with one that derives the seed from the
/// run's seed when a guest asks for it. WASI takes the value when the
/// context is built, and deriving it costs two blake3 compressions (about
/// 0.15 us) on every run, though few tools ever ask. The guest sees the
/// same value either way: [`SeededRandom::seed_u128`] of the run's seed.
fn seed_on_demand(linker: &mut Linker<RunState>) -> Result<(), LoadError> {
    linker.allow_shadowing(true);
    let added = wasmtime_wasi::p2::bindings::random::insecure_seed::add_to_linker::<
        RunState,
        HasSelf<HostState>,
    >(linker, |s| &mut s.host);
    linker.allow_shadowing(false);
    added.map_err(|e| LoadError::Engine(format!("linking insecure-seed: {e:#}")))
}

/// `component` followed by a copy of its compiled code deserialized into
/// each of `others` (engines of the same configuration), without compiling
/// again.
pub(crate) fn with_copies<'e>(
    component: Component,
    others: impl IntoIterator<Item = &'e Engine>,
) -> Result<Vec<Component>, LoadError> {
    let mut others = others.into_iter().peekable();
    if others.peek().is_none() {
        return Ok(vec![component]);
    }
    let bytes = component
        .serialize()
        .map_err(|e| LoadError::Compile(format!("serializing compiled code: {e:#}")))?;
    let mut all = vec![component];
    for engine in others {
        // SAFETY: `bytes` come from `Component::serialize` in this process,
        // by an engine of the same configuration as `engine` (every caller
        // makes its engines with `deterministic_config` of one config),
        // and never left memory.
        let copy = unsafe { Component::deserialize(engine, &bytes) }
            .map_err(|e| LoadError::Compile(format!("loading compiled code: {e:#}")))?;
        all.push(copy);
    }
    Ok(all)
}

/// How many lanes `config` asks for on this machine.
pub(crate) fn lane_count(config: &SandboxConfig) -> usize {
    match config.lanes {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(LANES_MAX),
        n => n,
    }
}

/// The lane for a run starting now: the CPU this thread is on. Threads that
/// run at the same time are on different CPUs, so they use different
/// engines; a thread that moves meanwhile only shares for a while.
pub(crate) fn current_lane(lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    // SAFETY: sched_getcpu takes no arguments and only reads per-thread
    // state; it returns -1 where the kernel cannot tell.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0) % lanes
}

/// The Wasm sandbox: its engines ("lanes"), and a cache of loaded tools.
///
/// Cheap to share: wrap it in an `Arc` and call [`Sandbox::run`] from any
/// thread.
///
/// Why more than one engine: every instantiation and teardown in an engine
/// updates state the engine shares between threads (reference counts of
/// the engine and of its registered types, the pool's counters), and with
/// two threads on two cores those cache lines move between the cores on
/// every call. Measured on the 2-core VM with bare wasmtime and the echo
/// tool: 8.3 us of CPU per call on one thread; on two threads 12-12.7 us
/// with one shared engine in most runs (9 us in some), 9.1-9.8 us with an
/// engine per thread, and 8.2-8.5 us with two processes. So a sandbox has
/// one engine per CPU (`lanes`), each with its own pool; a run uses the
/// lane of the CPU it starts on. Every lane has the same configuration, so
/// a component compiled in one deserializes into the others, and runs are
/// identical in all of them. Compilation happens once, in lane 0, and the
/// disk cache holds one artifact per tool.
pub struct Sandbox {
    lanes: Vec<Lane>,
    config: SandboxConfig,
    compat_hash: String,
    loaded: Mutex<HashMap<[u8; 32], Arc<LoadedTool>>>,
    activity: Arc<Activity>,
    ticker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.activity.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The engine settings every replica must share for runs to be
/// deterministic. Kept in one place so the benchmark's bare-wasmtime
/// baseline uses exactly the same code generation.
pub fn deterministic_config(config: &SandboxConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        // Determinism: NaN bit patterns and relaxed SIMD would otherwise
        // differ between CPUs. Wasm threads, which would make scheduling
        // visible, are absent: the `threads` feature of wasmtime is not
        // compiled in.
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        .parallel_compilation(true);
    if config.pooling {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.instances_max.max(1);
        pool.total_component_instances(n)
            // A component made by wit-component has a handful of core
            // instances and tables, and usually one memory.
            .total_core_instances(n * 16)
            .total_memories(n * 4)
            .total_tables(n * 8)
            .max_memories_per_component(4)
            .max_memory_size(config.memory_bytes_max as usize)
            // Batched decommits: measured on the 2-core VM, unmapping one
            // slot at a time costs a TLB shootdown each; batching them is
            // the single largest win for instantiation throughput.
            .decommit_batch_size(32)
            // Reset memories in place instead of unmapping them: with the
            // PAGEMAP_SCAN ioctl (Linux 6.7+) wasmtime finds the pages a run
            // dirtied and restores just those, up to the keep-resident size,
            // so a small tool's memory is never `madvise`d away. That spares
            // the page faults of the next run and, with two worker threads,
            // the TLB shootdown every unmap sends to the other core
            // (measured on the 2-core VM: bare calls on two threads cost
            // 15 µs of CPU each with 64 KiB kept, 10 µs with 1 MiB, against
            // 8.5 µs on one thread). Without the ioctl, wasmtime would memset
            // the whole keep-resident size per run, so it stays at 64 KiB.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(keep_resident_bytes())
            .table_keep_resident(16 << 10);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// Links `component` (of world `kind`) in `linker`'s engine.
fn link(
    linker: &Linker<RunState>,
    component: &Component,
    kind: ToolKind,
) -> Result<Pre, LoadError> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
        exports: vec![format!("{e:#}")],
    };
    Ok(match kind {
        ToolKind::Tool => Pre::Tool(ToolPre::new(instance_pre).map_err(wrong_world)?),
        ToolKind::Command => Pre::Command(CommandPre::new(instance_pre).map_err(wrong_world)?),
    })
}

impl Sandbox {
    /// Creates the lanes (an engine and a linker each) and starts the epoch
    /// ticker.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, LoadError> {
        let lanes = (0..lane_count(&config))
            .map(|_| {
                let (engine, mut linker) = engine_and_linker(&config)?;
                seed_on_demand(&mut linker)?;
                Ok(Lane { engine, linker })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| LoadError::Cache {
                path: dir.clone(),
                detail: e.to_string(),
            })?;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        lanes[0].engine.precompile_compatibility_hash().hash(&mut h);
        let compat_hash = format!("{:016x}", h.finish());

        let activity = Arc::new(Activity {
            lanes: lanes.iter().map(|_| LaneRuns(AtomicU32::new(0))).collect(),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticker: OnceLock::new(),
        });
        let ticker = {
            let engines: Vec<Engine> = lanes.iter().map(|l| l.engine.clone()).collect();
            let activity = activity.clone();
            std::thread::Builder::new()
                .name("voidbox-epoch".into())
                .spawn(move || activity.tick(&engines))
                .map_err(|e| LoadError::Engine(format!("starting the epoch ticker: {e}")))?
        };
        // Before any run can start: the sandbox is not returned yet.
        let _ = activity.ticker.set(ticker.thread().clone());
        Ok(Sandbox {
            lanes,
            config,
            compat_hash,
            loaded: Mutex::new(HashMap::new()),
            activity,
            ticker: Some(ticker),
        })
    }

    /// The wasmtime engine of lane 0, where tools are compiled.
    pub fn engine(&self) -> &Engine {
        &self.lanes[0].engine
    }

    /// How many engines this sandbox runs on.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The settings this sandbox was made with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// A tool already loaded under `digest`, if any.
    pub fn loaded(&self, digest: &[u8; 32]) -> Option<Arc<LoadedTool>> {
        self.loaded
            .lock()
            .expect("loaded-tool cache poisoned")
            .get(digest)
            .cloned()
    }

    /// Forgets a loaded tool (its on-disk artifact stays until
    /// [`Sandbox::remove_artifact`]).
    pub fn unload(&self, digest: &[u8; 32]) {
        self.loaded
            .lock()
            .expect("loaded-tool cache poisoned")
            .remove(digest);
    }

    fn artifact_path(&self, digest: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_ref()?;
        Some(dir.join(format!("{}-{}.cwasm", hex(digest), self.compat_hash)))
    }

    /// Removes the compiled artifact of a tool from the disk cache.
    pub fn remove_artifact(&self, digest: &[u8; 32]) {
        self.unload(digest);
        if let Some(p) = self.artifact_path(digest) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Checks that `wasm` looks like a component before handing it to
    /// wasmtime, so the common mistakes get a precise message.
    pub fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        match wasm[4..8] {
            [0x0d, 0x00, 0x01, 0x00] => Ok(()),
            [0x01, 0x00, 0x00, 0x00] => Err(LoadError::CoreModule),
            _ => Err(LoadError::UnknownVersion(u32::from_le_bytes([
                wasm[4], wasm[5], wasm[6], wasm[7],
            ]))),
        }
    }

    /// Compiles (or loads from the disk cache) and links a component, and
    /// keeps it in memory for later runs. `digest` must be the blake3 digest
    /// of `wasm`; it keys both caches.
    pub fn load(&self, digest: [u8; 32], wasm: &[u8]) -> Result<Arc<LoadedTool>, LoadError> {
        if let Some(t) = self.loaded(&digest) {
            return Ok(t);
        }
        Self::check_header(wasm)?;
        let artifact = self.artifact_path(&digest);
        let mut from_disk_cache = false;
        let mut component = None;
        if let Some(path) = &artifact {
            component = self.read_artifact(&digest, path);
            from_disk_cache = component.is_some();
        }
        let component = match component {
            Some(c) => c,
            None => {
                let started = Instant::now();
                let c = Component::new(self.engine(), wasm)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                tracing::info!(digest = %hex(&digest), elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
                if let Some(path) = &artifact {
                    self.write_artifact(&digest, path, &c)?;
                }
                c
            }
        };
        let compiled_bytes = match &artifact {
            Some(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            None => 0,
        };
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(self.engine())
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(self.engine())
            .map(|(n, _)| n.to_string())
            .collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let kind = if has("invoke") && has("describe") {
            ToolKind::Tool
        } else if exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2")) {
            ToolKind::Command
        } else {
            return Err(LoadError::WrongWorld { exports });
        };
        // Lane 0 has the component; the others get copies of its compiled
        // code, deserialized into their own engines.
        let components = with_copies(component, self.lanes[1..].iter().map(|l| &l.engine))?;
        let pres = self
            .lanes
            .iter()
            .zip(&components)
            .map(|(lane, component)| link(&lane.linker, component, kind))
            .collect::<Result<Vec<_>, _>>()?;
        let tool = Arc::new(LoadedTool {
            digest,
            kind,
            pres,
            imports,
            exports,
            compiled_bytes,
            from_disk_cache,
        });
        self.loaded
            .lock()
            .expect("loaded-tool cache poisoned")
            .insert(digest, tool.clone());
        Ok(tool)
    }

    /// Reads a compiled artifact from the disk cache, checks its trailer
    /// and deserializes it from the checked bytes. `None` (and a warning
    /// when the file exists but is unusable) means: compile again.
    ///
    /// The bytes are read into memory and deserialized from there rather
    /// than mapped with `deserialize_file`: wasmtime trusts what it
    /// deserializes, so the bytes it sees must be exactly the bytes that
    /// were checked, and a mapped file could still change under the map.
    /// Artifacts are a few hundred KiB, so the read and the hash cost well
    /// under a millisecond.
    fn read_artifact(&self, digest: &[u8; 32], path: &Path) -> Option<Component> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the compiled artifact; recompiling");
                return None;
            }
        };
        let body = match artifact_body(digest, &bytes) {
            Ok(body) => body,
            // Expected once per tool after an upgrade: not worth a warning.
            Err(why) if why == NO_TRAILER => {
                tracing::info!(path = %path.display(), "compiled artifact has no integrity trailer (an older format); recompiling");
                return None;
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), "compiled artifact is unusable ({why}); recompiling");
                return None;
            }
        };
        // SAFETY: `body` was written by `Component::serialize` of an engine
        // with the same compatibility hash (it is in the file name), and it
        // is byte for byte what was written: its blake3 hash, keyed by the
        // component's digest, matches the trailer written with it. A body
        // wasmtime still refuses (e.g. a different wasmtime build with the
        // same hash) is recompiled.
        match unsafe { Component::deserialize(self.engine(), body) } {
            Ok(c) => {
                tracing::debug!(digest = %format_args!("blake3:{}", hex(digest)), "loaded the compiled artifact from the disk cache");
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compiled artifact does not deserialize; recompiling");
                None
            }
        }
    }

    fn write_artifact(
        &self,
        digest: &[u8; 32],
        path: &Path,
        component: &Component,
    ) -> Result<(), LoadError> {
        let mut bytes = component
            .serialize()
            .map_err(|e| LoadError::Compile(format!("serializing compiled code: {e:#}")))?;
        let check = artifact_check(digest, &bytes);
        bytes.extend_from_slice(ARTIFACT_MAGIC);
        bytes.extend_from_slice(&check);
        let cache_err = |e: std::io::Error| LoadError::Cache {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        // Temp file and rename: a crash never leaves half an artifact under
        // the final name, and the trailer goes in the same file as the body
        // it checks. No fsync: a lost or torn artifact is only recompiled.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(cache_err)?;
        std::fs::rename(&tmp, path).map_err(cache_err)?;
        Ok(())
    }

    /// Calls the tool's `describe` export under [`Budget::DESCRIBE`].
    /// Commands have no description (`Ok(None)`).
    pub fn describe(&self, tool: &LoadedTool) -> Result<Option<ToolInfo>, RunError> {
        let Pre::Tool(pre) = &tool.pres[0] else {
            return Ok(None);
        };
        let seed = [0u8; 32];
        let req = RunRequest {
            input: &[],
            args: &[],
            budget: Budget::DESCRIBE,
            clock_unix_ns: 0,
            seed,
            grants: &[],
            blobs: NoBlobs::shared(),
            preopens: &[],
        };
        let _active = self.activity.enter(0);
        let mut store = self.new_store(0, &req, None, &[])?;
        let result = pre
            .instantiate(&mut store)
            .and_then(|inst| inst.call_describe(&mut store));
        match result {
            Ok(info) => Ok(Some(world::tool_info(info))),
            Err(e) => Err(RunError::Describe(classify(&e, &store).describe())),
        }
    }

    fn new_store(
        &self,
        lane: usize,
        req: &RunRequest<'_>,
        stdout: Option<&MemoryOutputPipe>,
        argv: &[String],
    ) -> Result<Store<RunState>, RunError> {
        let budget = req.budget;
        if budget.memory_bytes > self.config.memory_bytes_max {
            return Err(RunError::BudgetTooLarge {
                what: "memory_bytes",
                asked: budget.memory_bytes,
                max: self.config.memory_bytes_max,
            });
        }
        let mut wasi = WasiCtxBuilder::new();
        wasi.wall_clock(FixedWallClock {
            since_epoch: Duration::from_nanos(req.clock_unix_ns),
        })
        .monotonic_clock(SteppingClock::default())
        .secure_random(SeededRandom::new(&req.seed, "random"))
        .insecure_random(SeededRandom::new(&req.seed, "insecure"))
        // Never read: `seed_on_demand` answers `insecure-seed` instead.
        // A constant, so that nothing of the host's entropy is ever in a
        // guest's reach.
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true)
        .args(argv);
        // A guest that writes more than this to stderr gets a closed stream,
        // not more host memory.
        let stderr = MemoryOutputPipe::new(STDERR_BYTES_MAX);
        wasi.stderr(stderr.clone());
        if let Some(out) = stdout {
            wasi.stdin(MemoryInputPipe::new(req.input.to_vec()))
                .stdout(out.clone());
        }
        for (host_path, guest_path) in req.preopens {
            wasi.preopened_dir(host_path, guest_path, FsPerms::ReadOnly)
                .map_err(|e| RunError::Preopen {
                    path: host_path.clone(),
                    detail: format!("{e:#}"),
                })?;
        }
        let state = RunState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes_max: budget.memory_bytes,
                memory_peak: 0,
                hit: false,
            },
            stderr,
            host: HostState::new(req),
        };
        let mut store = Store::new(&self.lanes[lane].engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(budget.fuel)
            .expect("fuel is enabled in every sandbox config");
        let ticks = budget.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1;
        store.set_epoch_deadline(ticks);
        Ok(store)
    }

    /// Runs a loaded tool once, in a fresh store, and says how it ended.
    ///
    /// Never panics on guest behaviour: every way a guest can misbehave ends
    /// as an [`Outcome`]. `Err` is reserved for requests the host itself
    /// cannot serve (a budget over the configured ceiling, a preopen that
    /// cannot be opened).
    pub fn run(&self, tool: &LoadedTool, req: &RunRequest<'_>) -> Result<RunResult, RunError> {
        self.run_on(current_lane(self.lanes.len()), tool, req)
    }

    /// [`Sandbox::run`] in the given lane.
    fn run_on(
        &self,
        lane: usize,
        tool: &LoadedTool,
        req: &RunRequest<'_>,
    ) -> Result<RunResult, RunError> {
        // Timed only for the debug log: the caller times what it needs, and
        // a clock reading costs about 35 ns here.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let budget = req.budget;
        // The wall-clock guard needs the ticker awake until the store is
        // gone (the guard drops after it, at the end of this function).
        let _active = self.activity.enter(lane);
        // `tool` came from this sandbox's `load`, so it has a pre per lane.
        let (outcome, output, store) = match &tool.pres[lane] {
            Pre::Tool(pre) => {
                let mut store = self.new_store(lane, req, None, &[])?;
                let result = pre
                    .instantiate(&mut store)
                    .and_then(|inst| inst.call_invoke(&mut store, req.input, req.args));
                let (outcome, output) = match result {
                    Ok(Ok(output)) if output.len() as u64 > budget.output_bytes => (
                        Outcome::OutputTooLarge {
                            limit: budget.output_bytes,
                        },
                        Vec::new(),
                    ),
                    Ok(Ok(output)) => (Outcome::Ok, output),
                    Ok(Err(e)) => (
                        Outcome::ToolError {
                            code: e.code,
                            message: e.message,
                        },
                        Vec::new(),
                    ),
                    Err(e) => (classify(&e, &store), Vec::new()),
                };
                (outcome, output, store)
            }
            Pre::Command(pre) => {
                // One byte over the limit is how we tell "exactly at the
                // limit" from "tried to write more".
                let cap =
                    usize::try_from(budget.output_bytes.saturating_add(1)).unwrap_or(usize::MAX);
                let stdout = MemoryOutputPipe::new(cap);
                let mut store =
                    self.new_store(lane, req, Some(&stdout), &command_argv(req.args))?;
                let result = pre
                    .instantiate(&mut store)
                    .and_then(|cmd: Command| cmd.wasi_cli_run().call_run(&mut store));
                let written = stdout.contents();
                let outcome = if written.len() as u64 > budget.output_bytes {
                    Outcome::OutputTooLarge {
                        limit: budget.output_bytes,
                    }
                } else {
                    match result {
                        Ok(Ok(())) => Outcome::Ok,
                        Ok(Err(())) => Outcome::ToolError {
                            code: "exit-failure".into(),
                            message: "the command returned an error from main".into(),
                        },
                        Err(e) => match e.downcast_ref::<I32Exit>() {
                            Some(I32Exit(0)) => Outcome::Ok,
                            Some(I32Exit(code)) => Outcome::ToolError {
                                code: format!("exit-{code}"),
                                message: format!("the command exited with status {code}"),
                            },
                            None => classify(&e, &store),
                        },
                    }
                };
                let output = if outcome == Outcome::Ok {
                    written.to_vec()
                } else {
                    Vec::new()
                };
                (outcome, output, store)
            }
        };
        let fuel_left = store.get_fuel().unwrap_or(0);
        let fuel_used = budget.fuel.saturating_sub(fuel_left);
        let mut state = store.into_data();
        let stderr = state.stderr.contents().to_vec();
        tracing::debug!(
            digest = %format_args!("blake3:{}", hex(&tool.digest)),
            outcome = outcome.name(),
            fuel_used,
            memory_peak_bytes = state.limiter.memory_peak,
            elapsed_us = started.map_or(0, |s| s.elapsed().as_micros() as u64),
            "run ended"
        );
        Ok(RunResult {
            outcome,
            output,
            fuel_used,
            memory_peak_bytes: state.limiter.memory_peak,
            logs: std::mem::take(&mut state.host.logs),
            stderr,
        })
    }
}

/// Marks the trailer of a compiled artifact written by this version: the
/// serialized code, then these 8 bytes, then the 32-byte check.
const ARTIFACT_MAGIC: &[u8; 8] = b"vbxcwas1";

/// Why [`artifact_body`] refuses a file written before the trailer existed
/// (or damaged right where the trailer goes).
const NO_TRAILER: &str = "no integrity trailer: an older format, or damaged at its end";

/// The check stored after an artifact's body: blake3 of the body, keyed by
/// the component's digest, so a damaged body and an artifact renamed to
/// another component's name both fail it.
fn artifact_check(digest: &[u8; 32], body: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(digest, body).as_bytes()
}

/// The body of an artifact file if its trailer checks, or why not.
fn artifact_body<'a>(digest: &[u8; 32], file: &'a [u8]) -> Result<&'a [u8], &'static str> {
    let trailer = ARTIFACT_MAGIC.len() + 32;
    if file.len() < trailer {
        return Err("shorter than its trailer");
    }
    let (body, tail) = file.split_at(file.len() - trailer);
    let (magic, check) = tail.split_at(ARTIFACT_MAGIC.len());
    if magic != ARTIFACT_MAGIC {
        return Err(NO_TRAILER);
    }
    if check != artifact_check(digest, body) {
        return Err("its blake3 check does not match: the file is damaged");
    }
    Ok(body)
}

/// Turns `--arg` pairs into argv for a command: `key=value` becomes
/// `--key=value`; a pair with an empty key passes its value verbatim (for
/// positional arguments). `argv[0]` is `tool`.
fn command_argv(args: &[(String, String)]) -> Vec<String> {
    std::iter::once("tool".to_string())
        .chain(args.iter().map(|(k, v)| {
            if k.is_empty() {
                v.clone()
            } else {
                format!("--{k}={v}")
            }
        }))
        .collect()
}

/// Names the way a run failed, from the error wasmtime returned.
fn classify(err: &wasmtime::Error, store: &Store<RunState>) -> Outcome {
    if store.data().limiter.hit || err.downcast_ref::<MemoryLimitHit>().is_some() {
        return Outcome::MemoryLimit;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(trap) => Outcome::Trap {
            code: kebab(&format!("{trap:?}")),
        },
        None => {
            // Errors that are not traps come from the host side of an import
            // (e.g. a WASI stream refusing a write). The guest cannot go on,
            // so this is a trap; the code names it without host details so
            // that receipts stay identical across hosts.
            tracing::debug!(error = %format!("{err:#}"), "run failed with a host error");
            Outcome::Trap {
                code: "host-error".into(),
            }
        }
    }
}

fn kebab(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_names_are_kebab_case() {
        assert_eq!(kebab("StackOverflow"), "stack-overflow");
        assert_eq!(kebab("UnreachableCodeReached"), "unreachable-code-reached");
    }

    #[test]
    fn argv_for_commands() {
        let args = vec![
            ("n".to_string(), "5".to_string()),
            (String::new(), "file".to_string()),
        ];
        assert_eq!(command_argv(&args), ["tool", "--n=5", "file"]);
    }

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(
            Sandbox::check_header(b"hello"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(
            Sandbox::check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(Sandbox::check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn a_core_module_is_refused_with_a_clear_error() {
        let sandbox = Sandbox::new(SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        })
        .unwrap();
        // The empty core module, `(module)`, in binary form.
        let module = b"\0asm\x01\0\0\0".to_vec();
        let err = sandbox.load([1; 32], &module).unwrap_err();
        assert!(err.to_string().contains("core module"), "{err}");
    }

    #[test]
    fn a_component_of_another_world_is_refused() {
        let sandbox = Sandbox::new(SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        })
        .unwrap();
        // The empty component, `(component)`, in binary form.
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let err = sandbox.load([2; 32], &component).unwrap_err();
        assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
        assert!(err.to_string().contains("voidbox:tool"), "{err}");
    }
    #[test]
    fn an_artifact_trailer_detects_damage_renames_and_old_files() {
        let (digest, body) = ([7u8; 32], b"serialized code ".repeat(8));
        let mut file = body.clone();
        file.extend_from_slice(ARTIFACT_MAGIC);
        file.extend_from_slice(&artifact_check(&digest, &body));
        assert_eq!(artifact_body(&digest, &file), Ok(&body[..]));
        let mut flipped = file.clone();
        flipped[3] ^= 1;
        assert!(artifact_body(&digest, &flipped).is_err());
        // The same file under another component's name.
        assert!(artifact_body(&[8u8; 32], &file).is_err());
        // Cut anywhere, including inside the trailer.
        for len in [0, 10, file.len() - 1] {
            assert!(artifact_body(&digest, &file[..len]).is_err(), "{len}");
        }
        // An artifact of the format before the trailer: no magic.
        assert_eq!(artifact_body(&digest, &body), Err(NO_TRAILER));
    }

    fn echo_request(input: &[u8]) -> RunRequest<'_> {
        RunRequest {
            input,
            args: &[],
            budget: Budget::default(),
            clock_unix_ns: 0,
            seed: [0; 32],
            grants: &[],
            blobs: NoBlobs::shared(),
            preopens: &[],
        }
    }

    fn run_echo(sandbox: &Sandbox, tool: &LoadedTool, input: &[u8]) -> RunResult {
        sandbox.run(tool, &echo_request(input)).unwrap()
    }

    #[test]
    fn every_lane_runs_a_tool_alike() {
        let sandbox = Sandbox::new(SandboxConfig {
            instances_max: 4,
            memory_bytes_max: Budget::default().memory_bytes,
            lanes: 3,
            ..SandboxConfig::default()
        })
        .unwrap();
        assert_eq!(sandbox.lanes(), 3);
        let wasm = std::fs::read(voidbox_tool_artifacts::ECHO).unwrap();
        let tool = sandbox
            .load(*blake3::hash(&wasm).as_bytes(), &wasm)
            .unwrap();
        let runs: Vec<RunResult> = (0..3)
            .map(|lane| {
                sandbox
                    .run_on(lane, &tool, &echo_request(b"same everywhere"))
                    .unwrap()
            })
            .collect();
        for r in &runs {
            assert_eq!(r.outcome, Outcome::Ok);
            assert_eq!(r.output, b"same everywhere");
            assert_eq!(r.fuel_used, runs[0].fuel_used);
            assert_eq!(r.memory_peak_bytes, runs[0].memory_peak_bytes);
        }
        assert!(runs[0].fuel_used > 0);
    }

    #[test]
    fn the_epoch_ticker_sleeps_while_idle_and_a_run_wakes_it_for_its_guard() {
        let sandbox = Sandbox::new(SandboxConfig {
            pooling: false,
            ..SandboxConfig::default()
        })
        .unwrap();
        let wasm = std::fs::read(voidbox_tool_artifacts::HOSTILE_LOOP).unwrap();
        let tool = sandbox
            .load(*blake3::hash(&wasm).as_bytes(), &wasm)
            .unwrap();
        let sleeps = || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sandbox.activity.parked.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the idle ticker never slept");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        sleeps();
        // Only the 50 ms guard ends this loop in time: without a tick the
        // fuel (seconds of it) would run out first.
        let mut req = echo_request(b"");
        req.budget = Budget {
            fuel: 1 << 32,
            timeout: Duration::from_millis(50),
            ..Budget::default()
        };
        let started = Instant::now();
        let r = sandbox.run(&tool, &req).unwrap();
        assert_eq!(r.outcome, Outcome::Timeout, "after {:?}", started.elapsed());
        sleeps();
    }

    #[test]
    fn a_run_takes_the_lane_of_its_cpu() {
        assert!((1..=LANES_MAX).contains(&lane_count(&SandboxConfig::default())));
        assert_eq!(current_lane(1), 0);
        // SAFETY: cpu_set_t is plain data; the calls only read or write the
        // sets given, for this thread.
        unsafe {
            let mut allowed = std::mem::zeroed::<libc::cpu_set_t>();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &allowed))
                .collect();
            std::thread::scope(|s| {
                s.spawn(|| {
                    for &cpu in &cpus {
                        let mut one = std::mem::zeroed::<libc::cpu_set_t>();
                        libc::CPU_SET(cpu, &mut one);
                        assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
                        assert_eq!(current_lane(2), cpu % 2, "on CPU {cpu}");
                        assert_eq!(current_lane(LANES_MAX), cpu % LANES_MAX);
                    }
                });
            });
        }
    }

    #[test]
    fn a_corrupt_compiled_artifact_is_recompiled_and_rewritten() {
        let cache = tempfile::tempdir().unwrap();
        let new_sandbox = || {
            Sandbox::new(SandboxConfig {
                cache_dir: Some(cache.path().to_path_buf()),
                pooling: false,
                ..SandboxConfig::default()
            })
            .unwrap()
        };
        let wasm = std::fs::read(voidbox_tool_artifacts::ECHO).unwrap();
        let digest = *blake3::hash(&wasm).as_bytes();
        let first = new_sandbox();
        let tool = first.load(digest, &wasm).unwrap();
        assert!(!tool.from_disk_cache());
        let path = first.artifact_path(&digest).unwrap();
        drop((tool, first));

        let tool = new_sandbox().load(digest, &wasm).unwrap();
        assert!(tool.from_disk_cache(), "an intact artifact is reused");
        drop(tool);

        // Flip 4 KiB in the middle of the compiled code, as a bad disk
        // sector would. Before the trailer, deserializing this crashed the
        // process (SIGSEGV) on every later load.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid - 2048..mid + 2048] {
            *b ^= 0xa5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let sandbox = new_sandbox();
        let tool = sandbox.load(digest, &wasm).unwrap();
        assert!(
            !tool.from_disk_cache(),
            "a damaged artifact must be recompiled"
        );
        let result = run_echo(&sandbox, &tool, b"still right");
        assert_eq!(result.outcome, Outcome::Ok);
        assert_eq!(result.output, b"still right");
        drop((tool, sandbox));
        assert_ne!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the artifact is rewritten"
        );
        let tool = new_sandbox().load(digest, &wasm).unwrap();
        assert!(
            tool.from_disk_cache(),
            "the rewritten artifact is used again"
        );

        // A file cut short (a full disk, say) is recompiled too.
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let sandbox = new_sandbox();
        let tool = sandbox.load(digest, &wasm).unwrap();
        assert!(!tool.from_disk_cache());
        assert_eq!(run_echo(&sandbox, &tool, b"x").output, b"x");
    }
}
