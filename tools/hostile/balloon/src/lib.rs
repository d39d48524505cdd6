//! `hostile-balloon`: grows its memory in 1 MiB steps, writing to every
//! page so the memory is really used, until the host refuses (the
//! allocation failure aborts: a trap the host should report as its memory
//! limit). Input ignored.
//!
//! Arguments: `limit-mib` (optional): stop after that many MiB and return
//! `{"allocated_bytes":N}` as JSON, so a test can also see a balloon that
//! fits its budget succeed.

use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

const STEP_BYTES: usize = 1 << 20;
const PAGE_BYTES: usize = 64 * 1024;

struct Balloon;

impl Tool for Balloon {
    type Input = Vec<u8>;
    type Output = Json<voidbox_guest::serde_json::Value>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!()
            .output_schema(r#"{"type":"object","properties":{"allocated_bytes":{"type":"integer"}},"required":["allocated_bytes"]}"#)
    }

    fn invoke(_input: Vec<u8>, args: &Args) -> Result<Self::Output, ToolError> {
        args.reject_unknown(&["limit-mib"])?;
        let limit_mib: Option<u64> = args.parse("limit-mib")?;
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut allocated: u64 = 0;
        while limit_mib.is_none_or(|mib| allocated < mib * STEP_BYTES as u64) {
            let mut chunk = vec![0u8; STEP_BYTES];
            for page in chunk.chunks_mut(PAGE_BYTES) {
                page[0] = 1;
            }
            chunks.push(std::hint::black_box(chunk));
            allocated += STEP_BYTES as u64;
        }
        Ok(Json(
            voidbox_guest::serde_json::json!({ "allocated_bytes": allocated }),
        ))
    }
}

voidbox_guest::export_tool!(Balloon);
