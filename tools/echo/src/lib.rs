//! `echo`: returns its input unchanged.
//!
//! Input: any bytes. Output: the same bytes. Arguments: ignored. The trivial
//! tool of the invocation-overhead benchmark, so it does nothing else: no
//! argument parsing, no logging, no allocation beyond the input itself.

use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

struct Echo;

impl Tool for Echo {
    type Input = Vec<u8>;
    type Output = Vec<u8>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().contract("fuel <= 20 * input_bytes + 100_000")
    }

    fn invoke(input: Vec<u8>, _args: &Args) -> Result<Vec<u8>, ToolError> {
        Ok(input)
    }
}

voidbox_guest::export_tool!(Echo);
