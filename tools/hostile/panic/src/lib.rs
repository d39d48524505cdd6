//! `hostile-panic`: panics. Input ignored. Arguments: `message` (optional):
//! the panic message, default `hostile-panic: panicking on purpose`. On
//! wasm32 a panic prints the message to stderr and aborts: a trap
//! (`unreachable`) for the host.

use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

struct Panic;

impl Tool for Panic {
    type Input = Vec<u8>;
    type Output = Vec<u8>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!()
    }

    fn invoke(_input: Vec<u8>, args: &Args) -> Result<Vec<u8>, ToolError> {
        let message = args
            .get("message")
            .unwrap_or("hostile-panic: panicking on purpose");
        panic!("{message}");
    }
}

voidbox_guest::export_tool!(Panic);
