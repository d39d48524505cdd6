//! `voidbox.toml`: defaults for runs and settings of the sandbox.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use voidbox_sandbox::Budget;

use crate::error::{Error, Result};

/// The file name inside the data directory.
pub const CONFIG_FILE: &str = "voidbox.toml";

/// The whole configuration. Every field has a default; a missing file means
/// all defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Defaults for `voidbox run` and [`Host::invoke`](crate::Host::invoke)
    /// callers that do not set a budget.
    pub defaults: Defaults,
    /// Settings of the Wasm sandbox.
    pub sandbox: SandboxSettings,
    /// Settings of storage.
    pub storage: StorageSettings,
}

/// Default budget of a run; flags override each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Fuel (about one unit per Wasm operator).
    pub fuel: u64,
    /// Largest linear memory, in bytes.
    pub memory_bytes: u64,
    /// Largest output, in bytes.
    pub output_bytes: u64,
    /// Wall-clock guard, in milliseconds.
    pub timeout_ms: u64,
    /// Largest input accepted, in bytes.
    pub input_bytes_max: u64,
}

/// Settings of the sandbox, fixed while a host runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Use wasmtime's pooling allocator.
    pub pooling: bool,
    /// Instances that may be alive at once, per lane.
    pub instances_max: u32,
    /// Ceiling for any run's memory budget, in bytes.
    pub memory_bytes_max: u64,
    /// wasmtime engines to run on, each with its own pool (0: one per CPU).
    /// A run uses the engine of the CPU it starts on, so concurrent runs
    /// share no engine state.
    pub lanes: usize,
}

/// The most `storage.inline_blob_bytes_max` may be: a small fraction of a
/// journal segment, so that a segment holds many records and the
/// in-memory tail stays bounded.
pub const INLINE_BLOB_BYTES_LIMIT: u64 = 1 << 20;

/// Settings of storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Blobs up to this size are kept inside the database (cheap to write in
    /// batches); larger ones are files in the CAS directory. At most
    /// [`INLINE_BLOB_BYTES_LIMIT`].
    pub inline_blob_bytes_max: u64,
    /// Receipts kept in the in-memory action cache in front of the database.
    pub action_cache_entries: usize,
    /// Memory for the database's page cache, in bytes. Recent receipts and
    /// blobs are answered from the journal's in-memory tail, so the cache
    /// serves older ones; redb's own default (1 GiB) grows with the file,
    /// and every page it takes is fresh memory the kernel must zero first.
    pub db_cache_bytes: u64,
    /// Whether the journal's group commits are fsynced. Off only for
    /// measurements: records then survive a crash of the process, not of
    /// the machine. (A replica of a cluster whose `cluster.toml` says
    /// `fsync = false` runs its host without it too.)
    pub fsync: bool,
    /// The CPU priority of the thread that moves the journal into the
    /// database (see [`CheckpointPriority`]).
    pub checkpoint_priority: CheckpointPriority,
}

/// The CPU priority of the storage's checkpoint thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointPriority {
    /// The process's own: a checkpoint competes with invocations for the
    /// CPU as an equal.
    #[default]
    Normal,
    /// The idle class (`SCHED_IDLE`): a checkpoint runs on the CPU time
    /// the other threads leave, any of them that wakes takes its CPU at
    /// once, and if it falls two journal tails behind, writers wait for
    /// it. For a process whose requests wait on each other, as a cluster
    /// replica's do: there the checkpoints of all replicas fall due at
    /// about the same moment, and at equal priority they stalled the whole
    /// cluster (BENCHMARKS.md). A cluster's replicas always run it so.
    Low,
}

impl Default for Defaults {
    fn default() -> Self {
        let b = Budget::default();
        Defaults {
            fuel: b.fuel,
            memory_bytes: b.memory_bytes,
            output_bytes: b.output_bytes,
            timeout_ms: b.timeout.as_millis() as u64,
            input_bytes_max: 1 << 30,
        }
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            pooling: true,
            instances_max: 64,
            memory_bytes_max: 4 << 30,
            lanes: 0,
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            inline_blob_bytes_max: 64 << 10,
            action_cache_entries: 100_000,
            db_cache_bytes: 64 << 20,
            fsync: true,
            checkpoint_priority: CheckpointPriority::Normal,
        }
    }
}

impl Defaults {
    /// The default budget.
    pub fn budget(&self) -> Budget {
        Budget {
            fuel: self.fuel,
            memory_bytes: self.memory_bytes,
            output_bytes: self.output_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// The file `voidbox init` writes: every setting with its default and a
/// comment, so the file documents itself.
pub const CONFIG_TEMPLATE: &str = r#"# Voidbox configuration. Every setting is optional; the values below are the
# defaults. Command-line flags override the [defaults] for one run.

[defaults]
# Fuel per run: about one unit per Wasm operator. Deterministic.
fuel = 1000000000
# Largest size of a tool's linear memory, in bytes (256 MiB).
memory_bytes = 268435456
# Largest output a tool may return, in bytes (16 MiB).
output_bytes = 16777216
# Wall-clock guard per run, in milliseconds. Fuel bounds CPU; this only
# catches a host that is far slower than expected.
timeout_ms = 10000
# Largest input accepted, in bytes (1 GiB).
input_bytes_max = 1073741824

[sandbox]
# wasmtime's pooling allocator: much faster instantiation.
pooling = true
# Tool instances alive at once, per lane (see `lanes`).
instances_max = 64
# Ceiling for any run's memory budget, in bytes (4 GiB).
memory_bytes_max = 4294967296
# wasmtime engines, each with its own instance pool (0: one per CPU, up to
# 16). A run takes the engine of the CPU it starts on: runs on different
# cores then share no engine state, which two threads in one engine pay for
# on every instantiation.
lanes = 0

[storage]
# Blobs up to this size live in the database, written in batches; larger
# blobs are files under cas/ (64 KiB; at most 1 MiB).
inline_blob_bytes_max = 65536
# Receipts kept in memory in front of the on-disk action cache.
action_cache_entries = 100000
# Memory for the database's page cache (64 MiB); recent records are
# served from memory before they reach the database.
db_cache_bytes = 67108864
# Whether the journal's group commits are fsynced; false is for
# measurements only (records then survive a crash of the process, not of
# the machine).
fsync = true
# The CPU priority of the thread that moves the journal into the database:
# "normal", or "low" (the idle class: it then runs on the time invocations
# leave idle). A cluster's replicas always run it "low".
checkpoint_priority = "normal"
"#;

impl Config {
    /// Reads `voidbox.toml` from `home`; all defaults if it does not exist.
    pub fn load(home: &Path) -> Result<Config> {
        let path = home.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(Error::io(path, "check the file's permissions")(e)),
        };
        Config::parse(&text, &path)
    }

    /// Parses configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: PathBuf::from(path),
            detail: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.check().map_err(|detail| Error::Config {
            path: PathBuf::from(path),
            detail,
        })?;
        Ok(config)
    }

    /// Refuses values the host cannot honour, naming the key and the fix.
    fn check(&self) -> std::result::Result<(), String> {
        let inline = self.storage.inline_blob_bytes_max;
        if inline > INLINE_BLOB_BYTES_LIMIT {
            // Inline blobs live in the journal and its in-memory tail until
            // a checkpoint (a segment of 32 MiB): larger ones belong in the
            // CAS directory, which streams them.
            return Err(format!(
                "storage.inline_blob_bytes_max = {inline} is over its limit of \
                 {INLINE_BLOB_BYTES_LIMIT} (1 MiB): larger blobs are stored as files, \
                 streamed; set it to at most {INLINE_BLOB_BYTES_LIMIT} (the default is 65536)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_the_defaults() {
        let parsed = Config::parse(CONFIG_TEMPLATE, Path::new("voidbox.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[defaults]\nfule = 3\n", Path::new("voidbox.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("fule"), "{msg}");
        assert!(msg.contains("voidbox.toml"), "{msg}");
    }

    #[test]
    fn an_inline_limit_too_large_is_refused_with_the_fix() {
        let err = Config::parse(
            "[storage]\ninline_blob_bytes_max = 4294967296\n",
            Path::new("voidbox.toml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("inline_blob_bytes_max = 4294967296"), "{msg}");
        assert!(msg.contains("at most 1048576"), "{msg}");
        assert!(msg.contains("voidbox.toml"), "{msg}");
        let at_limit = format!("[storage]\ninline_blob_bytes_max = {INLINE_BLOB_BYTES_LIMIT}\n");
        assert!(Config::parse(&at_limit, Path::new("x")).is_ok());
    }

    #[test]
    fn partial_files_keep_other_defaults() {
        let c = Config::parse("[defaults]\nfuel = 5\n", Path::new("x")).unwrap();
        assert_eq!(c.defaults.fuel, 5);
        assert_eq!(c.defaults.memory_bytes, Defaults::default().memory_bytes);
    }
}
