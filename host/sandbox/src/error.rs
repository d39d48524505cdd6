//! Errors the host sees (as opposed to outcomes, which are what the guest did).

use std::path::PathBuf;

/// Why a component could not be loaded. Each message names the problem and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the Wasm magic number.
    #[error("the file is not WebAssembly (no `\\0asm` header); give the .wasm file of a component built for wasm32-wasip2")]
    NotWasm,
    /// A core module, not a component.
    #[error("the file is a core module, not a component; build it for wasm32-wasip2 (or wrap it with `wasm-tools component new`) so that it targets the voidbox:tool world or wasi:cli/command")]
    CoreModule,
    /// A Wasm binary of a version we do not know.
    #[error("the file has an unknown Wasm binary version ({0:#x}); rebuild it with a current toolchain for wasm32-wasip2")]
    UnknownVersion(u32),
    /// The component does not implement a world we can run.
    #[error("the component implements neither the voidbox:tool world (exports `describe` and `invoke`) nor wasi:cli/command (exports wasi:cli/run); it exports: [{}]. Build it with the voidbox-guest SDK or as a wasi:cli command", exports.join(", "))]
    WrongWorld {
        /// What the component does export.
        exports: Vec<String>,
    },
    /// Wasmtime rejected the component.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component imports something the sandbox does not provide.
    #[error("the component needs imports the sandbox does not provide ({0}); tools may import only WASI 0.2 (no sockets) and voidbox:tool/host")]
    Link(String),
    /// The compiled-artifact cache could not be used.
    #[error("the compiled-code cache at {} is not usable: {detail}; check that the data directory is writable", path.display())]
    Cache {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        detail: String,
    },
    /// The engine could not be created.
    #[error("{0}")]
    Engine(String),
}

/// Why the host could not run a request at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A budget asks for more than the sandbox's configured ceiling.
    #[error("the budget's {what} of {asked} is over this host's ceiling of {max}; ask for less or raise the ceiling in voidbox.toml")]
    BudgetTooLarge {
        /// Which limit.
        what: &'static str,
        /// What was asked.
        asked: u64,
        /// The ceiling.
        max: u64,
    },
    /// A directory to expose to the guest could not be opened.
    #[error("cannot expose {} to the tool: {detail}", path.display())]
    Preopen {
        /// The host directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// `describe` did not return normally.
    #[error("the tool's describe export failed: {0}")]
    Describe(String),
}
