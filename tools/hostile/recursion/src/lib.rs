//! `hostile-recursion`: recurses without bound until the stack runs out (a
//! trap: call-stack exhausted, or an out-of-bounds access when the shadow
//! stack in linear memory overflows first). Input ignored.
//!
//! Arguments: `depth` (optional): stop at that depth and return
//! `{"depth":N}` as JSON, so a test can also see a shallow recursion succeed.

use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

/// Recurses until `limit`; the work after the call keeps it from becoming a
/// loop.
#[inline(never)]
fn descend(depth: u64, limit: u64) -> u64 {
    if depth >= limit {
        return depth;
    }
    let below = std::hint::black_box(descend(std::hint::black_box(depth + 1), limit));
    below.max(depth)
}

struct Recursion;

impl Tool for Recursion {
    type Input = Vec<u8>;
    type Output = Json<voidbox_guest::serde_json::Value>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().output_schema(
            r#"{"type":"object","properties":{"depth":{"type":"integer"}},"required":["depth"]}"#,
        )
    }

    fn invoke(_input: Vec<u8>, args: &Args) -> Result<Self::Output, ToolError> {
        args.reject_unknown(&["depth"])?;
        let limit = args.parse_or("depth", u64::MAX)?;
        let depth = descend(0, limit);
        Ok(Json(voidbox_guest::serde_json::json!({ "depth": depth })))
    }
}

voidbox_guest::export_tool!(Recursion);

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_descent_reaches_its_limit() {
        assert_eq!(super::descend(0, 1000), 1000);
    }
}
