//! `hostile-flood`: writes far too much. Input ignored.
//!
//! Arguments: `mode` (default `output`) and `bytes`:
//! - `output`: returns an output of `bytes` bytes (default 64 MiB), all
//!   `x`, which the host's output cap should refuse;
//! - `stdout` / `stderr`: writes 64 KiB chunks of `x` to that stream
//!   forever, ignoring write errors, like a hostile program would;
//! - `log`: writes 1 KiB log lines forever.
//!
//! The endless modes only stop when the host stops them (output cap, fuel
//! or wall-clock guard).

use std::io::Write;

use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

const DEFAULT_OUTPUT_BYTES: usize = 64 << 20;
const CHUNK_BYTES: usize = 64 << 10;

struct Flood;

impl Tool for Flood {
    type Input = Vec<u8>;
    type Output = Vec<u8>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!()
    }

    fn invoke(_input: Vec<u8>, args: &Args) -> Result<Vec<u8>, ToolError> {
        args.reject_unknown(&["mode", "bytes"])?;
        match args.get("mode").unwrap_or("output") {
            "output" => {
                let bytes = args.parse_or("bytes", DEFAULT_OUTPUT_BYTES)?;
                Ok(vec![b'x'; bytes])
            }
            "stdout" => flood(std::io::stdout()),
            "stderr" => flood(std::io::stderr()),
            "log" => {
                let line = "x".repeat(1024);
                loop {
                    voidbox_guest::log::write(voidbox_guest::log::Level::Info, &line);
                }
            }
            other => Err(ToolError::bad_arg(
                "mode",
                format!("`{other}` is not output, stdout, stderr or log"),
            )),
        }
    }
}

fn flood(mut stream: impl Write) -> ! {
    let chunk = vec![b'x'; CHUNK_BYTES];
    loop {
        // Errors are ignored on purpose: the host, not the tool, must end
        // this.
        let _ = stream.write_all(&chunk);
        let _ = stream.flush();
    }
}

voidbox_guest::export_tool!(Flood);
