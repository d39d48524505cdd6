//! Bare wasmtime, for the overhead benchmark: the same component and engine
//! settings, `InstancePre` and the pooling allocator, a fresh store per
//! call, and nothing of Voidbox around it (no limiter, no deterministic
//! clocks or randomness, no output checks, no logs). Like the sandbox it has
//! an engine per CPU (see [`Sandbox`]), so that its calls on two threads
//! are as well tuned as the host's.
//!
//! [`Sandbox`]: crate::Sandbox

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::sandbox::{current_lane, engine_and_linker, lane_count, with_copies};
use crate::world::voidbox::tool::types::{BlobError, Level};
use crate::world::ToolPre;
use crate::{LoadError, SandboxConfig};

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::world::voidbox::tool::types::Host for BareState {}

impl crate::world::voidbox::tool::host::Host for BareState {
    fn log(&mut self, _level: Level, _message: String) {}

    fn now(&mut self) -> u64 {
        0
    }

    fn read_blob(&mut self, _digest: String) -> Result<Vec<u8>, BlobError> {
        Err(BlobError::NotGranted)
    }
}

/// A `voidbox:tool` component under bare wasmtime.
pub struct Bare {
    /// One engine and linked component per lane.
    lanes: Vec<(Engine, ToolPre<BareState>)>,
}

impl std::fmt::Debug for Bare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bare").finish_non_exhaustive()
    }
}

impl Bare {
    /// Compiles `wasm` with the same engine settings as a [`Sandbox`]
    /// made from `config`.
    ///
    /// [`Sandbox`]: crate::Sandbox
    pub fn new(config: &SandboxConfig, wasm: &[u8]) -> Result<Bare, LoadError> {
        let mut engines = Vec::new();
        let mut linkers = Vec::new();
        for _ in 0..lane_count(config) {
            let (engine, linker) = engine_and_linker::<BareState>(config)?;
            engines.push(engine);
            linkers.push(linker);
        }
        // Compiled once; the other lanes load a copy of the code.
        let component =
            Component::new(&engines[0], wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let components = with_copies(component, &engines[1..])?;
        let mut lanes = Vec::new();
        for ((engine, linker), component) in engines.into_iter().zip(&linkers).zip(&components) {
            let pre = linker
                .instantiate_pre(component)
                .map_err(|e| LoadError::Link(format!("{e:#}")))?;
            let pre = ToolPre::new(pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
            lanes.push((engine, pre));
        }
        Ok(Bare { lanes })
    }

    /// Instantiates the component in a fresh store and calls `invoke`.
    pub fn call(&self, input: &[u8]) -> wasmtime::Result<Vec<u8>> {
        let (engine, pre) = &self.lanes[current_lane(self.lanes.len())];
        let mut store = Store::new(
            engine,
            BareState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        // The engine meters fuel and checks epochs (they are part of the
        // deterministic configuration); give both effectively no limit.
        store.set_fuel(u64::MAX)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let tool = pre.instantiate(&mut store)?;
        match tool.call_invoke(&mut store, input, &[])? {
            Ok(out) => Ok(out),
            Err(e) => Err(wasmtime::format_err!(
                "tool error {}: {}",
                e.code,
                e.message
            )),
        }
    }
}
