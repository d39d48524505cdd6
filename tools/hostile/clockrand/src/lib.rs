//! `hostile-clockrand`: reports every clock and source of randomness a tool
//! can reach, so a test can check that two runs of the same invocation give
//! byte-identical output. Input and arguments are ignored.
//!
//! Output: compact JSON, fields in this order:
//! - `system_time_ns`: `SystemTime::now()` since the Unix epoch (wasi wall
//!   clock), or the error text as a string;
//! - `instant_elapsed_ns`: `Instant::now().elapsed()` across some work
//!   (wasi monotonic clock);
//! - `host_now_ns`: the host's `now()` (the consensus time);
//! - `getrandom_hex`: 32 bytes from the `getrandom` crate (wasi random);
//! - `hashmap_order`: the iteration order of a `HashMap` of the keys 0..16
//!   (std seeds its hasher from wasi random);
//! - `random_state_hash`: `RandomState::new().hash_one(42)`;
//! - `insecure_seed`: what `wasi:random/insecure-seed` returns.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use voidbox_guest::serde_json::Value;
use voidbox_guest::{Args, Json, Tool, ToolError, ToolInfo};

/// What the tool saw.
#[derive(Debug, Serialize)]
pub struct Observed {
    pub system_time_ns: Value,
    pub instant_elapsed_ns: u64,
    pub host_now_ns: u64,
    pub getrandom_hex: String,
    pub hashmap_order: Vec<u32>,
    pub random_state_hash: u64,
    /// `wasi:random/insecure-seed`, as the two numbers WASI returns.
    pub insecure_seed: [u64; 2],
}

// WASI's insecure seed has no wrapper in std; the import's type comes with
// std's own WASI imports (as getrandom's does). Two u64 results are
// returned through memory under the canonical ABI.
#[link(wasm_import_module = "wasi:random/insecure-seed@0.2.0")]
unsafe extern "C" {
    #[link_name = "insecure-seed"]
    fn wasi_insecure_seed(results: *mut [u64; 2]);
}

fn insecure_seed() -> [u64; 2] {
    let mut seed = [0u64; 2];
    // SAFETY: the host writes two u64 into the 16 aligned bytes given.
    unsafe { wasi_insecure_seed(&mut seed) };
    seed
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn observe() -> Observed {
    let system_time_ns = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => Value::from(since.as_nanos() as u64),
        Err(err) => Value::from(format!("before the epoch: {err}")),
    };
    let start = Instant::now();
    let work: u64 = (0..10_000u64).map(|i| std::hint::black_box(i * i)).sum();
    std::hint::black_box(work);
    let instant_elapsed_ns = start.elapsed().as_nanos() as u64;
    let mut random = [0u8; 32];
    let getrandom_hex = match getrandom::fill(&mut random) {
        Ok(()) => hex(&random),
        Err(err) => format!("error: {err}"),
    };
    let map: HashMap<u32, ()> = (0..16).map(|k| (k, ())).collect();
    Observed {
        system_time_ns,
        instant_elapsed_ns,
        host_now_ns: voidbox_guest::now(),
        getrandom_hex,
        hashmap_order: map.keys().copied().collect(),
        random_state_hash: std::collections::hash_map::RandomState::new().hash_one(42u64),
        insecure_seed: insecure_seed(),
    }
}

const OUTPUT_SCHEMA: &str = r#"{"type":"object","properties":{"system_time_ns":{"type":["integer","string"]},"instant_elapsed_ns":{"type":"integer"},"host_now_ns":{"type":"integer"},"getrandom_hex":{"type":"string"},"hashmap_order":{"type":"array","items":{"type":"integer"}},"random_state_hash":{"type":"integer"},"insecure_seed":{"type":"array","items":{"type":"integer"}}},"required":["system_time_ns","instant_elapsed_ns","host_now_ns","getrandom_hex","hashmap_order","random_state_hash","insecure_seed"]}"#;

struct ClockRand;

impl Tool for ClockRand {
    type Input = Vec<u8>;
    type Output = Json<Observed>;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!().output_schema(OUTPUT_SCHEMA)
    }

    fn invoke(_input: Vec<u8>, _args: &Args) -> Result<Json<Observed>, ToolError> {
        Ok(Json(observe()))
    }
}

voidbox_guest::export_tool!(ClockRand);
