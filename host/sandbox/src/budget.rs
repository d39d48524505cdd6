//! What one invocation may consume, and how the store enforces it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The resources one invocation may use. Every field is a hard limit that the
/// sandbox enforces; crossing one ends the run with its own [`Outcome`].
///
/// [`Outcome`]: crate::Outcome
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Wasm fuel: roughly one unit per Wasm operator. Deterministic, so the
    /// same run uses the same fuel on every host.
    pub fuel: u64,
    /// The largest size any one linear memory may grow to, in bytes.
    pub memory_bytes: u64,
    /// The largest output the tool may return (or write to stdout), in bytes.
    pub output_bytes: u64,
    /// Wall-clock safety net. Fuel is what bounds CPU deterministically; this
    /// only catches a host that is much slower than expected or a guest
    /// blocked outside Wasm. Hitting it is the `timeout` outcome.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
}

impl Budget {
    /// Budget used for `describe` calls: describing a tool must be cheap.
    pub const DESCRIBE: Budget = Budget {
        fuel: 200_000_000,
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
        timeout: Duration::from_secs(10),
    };
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            fuel: 1_000_000_000,
            memory_bytes: 256 << 20,
            output_bytes: 16 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Marker error raised from the resource limiter when a memory would grow
/// past the budget. It travels through wasmtime as the trap's cause, so the
/// run can be classified as `memory-limit` rather than a generic trap.
#[derive(Debug)]
pub(crate) struct MemoryLimitHit {
    pub desired: usize,
    pub limit: u64,
}

impl std::fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory would grow to {} bytes, over the limit of {} bytes",
            self.desired, self.limit
        )
    }
}

impl std::error::Error for MemoryLimitHit {}

/// Tables are small in practice; a tool that wants more than this many
/// elements in one table is hostile or broken.
pub(crate) const TABLE_ELEMENTS_MAX: usize = 100_000;

/// Enforces the memory budget and records the peak, per store.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub memory_bytes_max: u64,
    pub memory_peak: u64,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes_max {
            self.hit = true;
            // Trapping (rather than returning `false`, which makes
            // `memory.grow` return -1) ends the run at once with a cause we
            // can name; most guests abort on allocation failure anyway.
            return Err(wasmtime::Error::new(MemoryLimitHit {
                desired,
                limit: self.memory_bytes_max,
            }));
        }
        self.memory_peak = self.memory_peak.max(desired as u64);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }

    fn instances(&self) -> usize {
        // A component instantiates a handful of core instances; far more
        // means something is wrong.
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}
