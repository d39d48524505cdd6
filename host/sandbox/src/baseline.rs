//! Bare wasmtime, for the overhead benchmark: the same component and engine
//! settings, `InstancePre` and the pooling allocator, a fresh store per
//! call, and nothing of Voidbox around it (no limiter, no deterministic
//! clocks or randomness, no output checks, no logs). Like the sandbox it has
//! an engine per CPU (see [`Sandbox`]), so that its calls on two threads
//! are as well tuned as the host's.
//!
//! [`Sandbox`]: crate::Sandbox

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::sandbox::{current_lane, deterministic_config, lane_count};
use crate::world::voidbox::tool::types::{BlobError, Level};
use crate::world::{Tool, ToolPre};
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
        let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut compiled: Option<Vec<u8>> = None;
        let mut lanes = Vec::new();
        for _ in 0..lane_count(config) {
            let engine = Engine::new(&deterministic_config(config)).map_err(engine_err)?;
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
            Tool::add_to_linker::<BareState, HasSelf<BareState>>(&mut linker, |s| s)
                .map_err(engine_err)?;
            // Compiled once; the other lanes load a copy of the code.
            let component = match &compiled {
                None => {
                    let c = wasmtime::component::Component::new(&engine, wasm)
                        .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                    compiled = Some(c.serialize().map_err(engine_err)?);
                    c
                }
                // SAFETY: serialized just above, in this process, by an
                // engine of the same configuration.
                Some(bytes) => unsafe {
                    wasmtime::component::Component::deserialize(&engine, bytes)
                        .map_err(engine_err)?
                },
            };
            let pre = linker
                .instantiate_pre(&component)
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
