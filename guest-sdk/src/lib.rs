//! `voidbox-guest`: write a Voidbox tool in about ten lines of Rust.
//!
//! A Voidbox tool is a Wasm component that implements the `tool` world of
//! the WIT package `voidbox:tool@0.1.0` (`wit/tool.wit` in this repository):
//! it exports `describe` and `invoke`, and it may call the host's `log`,
//! `now` and `read-blob`. This crate hides the generated bindings behind
//! a small trait, [`Tool`], and one macro, [`export_tool!`]:
//!
//! - [`Tool::Input`] says how the input bytes are decoded: raw bytes
//!   (`Vec<u8>`), UTF-8 text (`String`) or JSON ([`Json<T>`] with any
//!   `serde::Deserialize` type). A decoding failure becomes the tool error
//!   `bad-input` before your code runs.
//! - [`Tool::Output`] says how the result is encoded, the same three ways.
//! - [`Args`] gives typed access to the `--arg key=value` pairs.
//! - [`ToolError`] is the error the caller sees: a stable code and a message.
//! - [`log`] writes to the host's log, [`now`] is the consensus time of the
//!   invocation and [`read_blob`] reads a content-addressed blob that the
//!   invocation grants.
//!
//! # Example
//!
//! ```
//! use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { items: Vec<u64> }
//!
//! struct Total;
//!
//! impl Tool for Total {
//!     type Input = Json<Order>;
//!     type Output = Json<u64>;
//!     fn describe() -> ToolInfo {
//!         ToolInfo::new("total", "0.1.0", "Sums the items of an order, times --arg factor")
//!     }
//!     fn invoke(Json(order): Json<Order>, args: &Args) -> Result<Json<u64>, ToolError> {
//!         let factor: u64 = args.parse_or("factor", 1)?;
//!         voidbox_guest::log::info!("summing {} items", order.items.len());
//!         Ok(Json(order.items.iter().sum::<u64>() * factor))
//!     }
//! }
//!
//! voidbox_guest::export_tool!(Total);
//! # fn main() {
//! #     // The logic is plain Rust, so it also runs natively in unit tests.
//! #     let out = Total::invoke(Json(Order { items: vec![1, 2, 3] }),
//! #                             &Args::new(vec![("factor".into(), "2".into())])).unwrap();
//! #     assert_eq!(out.0, 12);
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` in a crate
//! whose `[lib]` has `crate-type = ["cdylib"]`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the component to give to
//! `voidbox tool add`. `guest-sdk/README.md` walks through it.
//!
//! # What this crate must not know
//!
//! Nothing about the host: no wasmtime, no CAS, no receipts. It only knows
//! the WIT contract, so a tool built with it runs on any host of that world.
//!
//! # Outside Voidbox
//!
//! The crate also compiles for the host's own target so that tools can unit
//! test their logic natively. There, [`log`] writes to stderr, while
//! [`now`] and [`read_blob`] panic: they have no meaning without a host.

mod args;
mod error;
mod host;
mod info;
mod io;
pub mod log;

pub use args::Args;
pub use error::ToolError;
pub use host::{now, read_blob, BlobError};
pub use info::ToolInfo;
pub use io::{FromInput, IntoOutput, Json};

/// Re-exported so tools can build JSON values (`serde_json::json!`) without
/// a version of their own.
pub use serde_json;

/// The bindings generated from `wit/tool.wit`. Tools do not use them
/// directly; [`export_tool!`] does.
#[doc(hidden)]
#[allow(missing_debug_implementations, unsafe_op_in_unsafe_fn, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "tool",
        // The export macro is used from the tool's crate, which has no
        // `wit-bindgen` dependency of its own: make it public and let it
        // find the generated types here.
        pub_export_macro: true,
        export_macro_name: "__export_tool_world",
        default_bindings_module: "voidbox_guest::bindings",
    });
}

/// A Voidbox tool: what it says about itself and what it does with one
/// input.
///
/// Implement it on a unit struct and export it with [`export_tool!`].
pub trait Tool {
    /// How the input bytes are decoded before [`Tool::invoke`] sees them:
    /// `Vec<u8>`, `String` or [`Json<T>`].
    type Input: FromInput;
    /// How the result is encoded: `Vec<u8>`, `String` or [`Json<T>`].
    type Output: IntoOutput;

    /// Name, version, description, schemas and contract. Must be cheap and
    /// must not depend on any input; the host calls it when the tool is
    /// added.
    fn describe() -> ToolInfo;

    /// Runs the tool on one input with the `--arg` pairs of the invocation.
    fn invoke(input: Self::Input, args: &Args) -> Result<Self::Output, ToolError>;
}

/// Exports a type that implements [`Tool`] as the component's `describe`
/// and `invoke`.
///
/// Use it once per tool crate, at the top level, with the name of the type:
/// `voidbox_guest::export_tool!(MyTool);`.
#[macro_export]
macro_rules! export_tool {
    ($tool:ident) => {
        impl $crate::bindings::Guest for $tool {
            fn describe() -> $crate::bindings::ToolInfo {
                $crate::__private::describe::<$tool>()
            }

            fn invoke(
                input: ::std::vec::Vec<u8>,
                args: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::bindings::ToolError> {
                $crate::__private::invoke::<$tool>(input, args)
            }
        }

        $crate::bindings::__export_tool_world!($tool with_types_in $crate::bindings);
    };
}

/// Builds a [`ToolInfo`] from the calling crate's `Cargo.toml`: its package
/// name, version and description.
///
/// ```
/// let info = voidbox_guest::tool_info!();
/// assert_eq!(info.name(), "voidbox-guest");
/// ```
#[macro_export]
macro_rules! tool_info {
    () => {
        $crate::ToolInfo::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_DESCRIPTION"),
        )
    };
}

/// Glue called by [`export_tool!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use crate::{bindings, Args, FromInput, IntoOutput, Tool};

    pub fn describe<T: Tool>() -> bindings::ToolInfo {
        T::describe().into()
    }

    pub fn invoke<T: Tool>(
        input: Vec<u8>,
        args: Vec<(String, String)>,
    ) -> Result<Vec<u8>, bindings::ToolError> {
        report_panics_to_the_host_log();
        let args = Args::new(args);
        let run = || {
            let input = T::Input::from_input(input)?;
            T::invoke(input, &args)?.into_output()
        };
        run().map_err(Into::into)
    }

    /// A panic aborts the tool and the host sees only a trap; the default
    /// hook's message goes to stderr, which a host may not keep. Sending it
    /// to the host's log as well tells people why the tool died.
    fn report_panics_to_the_host_log() {
        #[cfg(target_arch = "wasm32")]
        {
            static HOOK: std::sync::Once = std::sync::Once::new();
            HOOK.call_once(|| {
                let default_hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    let payload = info.payload();
                    let message = payload
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(a non-text panic payload)");
                    let line = match info.location() {
                        Some(at) => format!("tool panicked at {at}: {message}"),
                        None => format!("tool panicked: {message}"),
                    };
                    crate::log::write(crate::log::Level::Error, &line);
                    default_hook(info);
                }));
            });
        }
    }
}

/// Compiles and runs the Rust examples of `README.md` as doc tests, so the
/// "Write your first tool" guide cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
