//! `hostile-loop`: never returns. Input and arguments are ignored. The host
//! must end it by fuel (or, without fuel, by its wall-clock guard).

use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

struct Loop;

impl Tool for Loop {
    type Input = Vec<u8>;
    type Output = Vec<u8>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!()
    }

    fn invoke(_input: Vec<u8>, _args: &Args) -> Result<Vec<u8>, ToolError> {
        let mut spins: u64 = 0;
        loop {
            // black_box keeps the optimizer from proving the loop has no
            // effect; it must burn fuel, not be folded away.
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

voidbox_guest::export_tool!(Loop);
