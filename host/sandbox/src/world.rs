//! The `voidbox:tool` world as seen from the host: generated bindings and
//! the implementation of the `host` interface.

use crate::sandbox::{LogLine, RunRequest, RunState};
use std::sync::Arc;

use crate::determinism::SeededRandom;
use crate::BlobSource;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "tool",
});

use self::voidbox::tool::types::{BlobError, Level};

/// Lines a guest may log per run; more are counted and dropped.
const LOG_LINES_MAX: usize = 256;
/// Bytes kept of one logged line.
const LOG_LINE_BYTES_MAX: usize = 4 << 10;

/// Per-run state behind the `host` interface.
pub(crate) struct HostState {
    clock_unix_ns: u64,
    /// The run's seed, for `wasi:random/insecure-seed` (see
    /// `seed_on_demand`).
    seed: [u8; 32],
    grants: Vec<String>,
    /// Where granted blobs come from; `None` when nothing is granted (the
    /// common case: no reference to share, so no reference count that two
    /// threads' runs would both write).
    blobs: Option<Arc<dyn BlobSource>>,
    read_bytes_max: u64,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) logs_dropped: u64,
}

impl HostState {
    pub(crate) fn new(req: &RunRequest<'_>) -> HostState {
        HostState {
            clock_unix_ns: req.clock_unix_ns,
            seed: req.seed,
            grants: req.grants.to_vec(),
            blobs: (!req.grants.is_empty()).then(|| Arc::clone(req.blobs)),
            read_bytes_max: req.budget.memory_bytes,
            logs: Vec::new(),
            logs_dropped: 0,
        }
    }
}

impl voidbox::tool::types::Host for RunState {}

impl wasmtime_wasi::p2::bindings::random::insecure_seed::Host for HostState {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        // In the order wasmtime-wasi splits its own u128 seed.
        let seed = SeededRandom::seed_u128(&self.seed);
        Ok((seed as u64, (seed >> 64) as u64))
    }
}

impl voidbox::tool::host::Host for RunState {
    fn log(&mut self, level: Level, mut message: String) {
        let h = &mut self.host;
        if h.logs.len() >= LOG_LINES_MAX {
            h.logs_dropped += 1;
            return;
        }
        if message.len() > LOG_LINE_BYTES_MAX {
            let mut cut = LOG_LINE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        tracing::debug!(target: "voidbox::guest", level, "{message}");
        h.logs.push(LogLine {
            level: level.to_string(),
            message,
        });
    }

    fn now(&mut self) -> u64 {
        self.host.clock_unix_ns
    }

    fn read_blob(&mut self, digest: String) -> Result<Vec<u8>, BlobError> {
        if !is_digest(&digest) {
            return Err(BlobError::BadDigest);
        }
        let h = &self.host;
        if !h.grants.iter().any(|g| g == &digest) {
            return Err(BlobError::NotGranted);
        }
        let Some(blobs) = &h.blobs else {
            return Err(BlobError::NotGranted);
        };
        match blobs.read_blob(&digest) {
            Ok(Some(bytes)) if bytes.len() as u64 > h.read_bytes_max => {
                Err(BlobError::TooLarge(bytes.len() as u64))
            }
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(BlobError::NotFound),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "granted blob could not be read");
                Err(BlobError::NotFound)
            }
        }
    }
}

/// `blake3:` followed by 64 lowercase hex digits.
pub(crate) fn is_digest(s: &str) -> bool {
    s.strip_prefix("blake3:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Converts the generated record into the crate's own plain type.
pub(crate) fn tool_info(info: voidbox::tool::types::ToolInfo) -> crate::ToolInfo {
    crate::ToolInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        input_schema: info.input_schema,
        output_schema: info.output_schema,
        contract: info.contract,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digests_are_checked() {
        assert!(super::is_digest(&format!("blake3:{}", "a".repeat(64))));
        assert!(!super::is_digest(&format!("blake3:{}", "A".repeat(64))));
        assert!(!super::is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!super::is_digest("blake3:abc"));
    }
}
