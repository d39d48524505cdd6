//! How a run ended, told apart precisely enough to act on.

use serde::{Deserialize, Serialize};

/// How one run of a tool ended. Every variant is deterministic: the same
/// invocation ends the same way on every host (`timeout` aside, which is the
/// wall-clock safety net and is never cached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// The tool returned an output.
    Ok,
    /// The tool returned a `tool-error` on purpose (or a command exited
    /// with a non-zero status).
    ToolError {
        /// The tool's machine-readable code.
        code: String,
        /// The tool's sentence for people.
        message: String,
    },
    /// The guest trapped: a panic, an `unreachable`, a stack overflow, an
    /// out-of-bounds access.
    Trap {
        /// Wasmtime's trap code, e.g. `unreachable`, `stack-overflow`.
        code: String,
    },
    /// The fuel budget ran out.
    OutOfFuel,
    /// A linear memory would have grown past the memory budget.
    MemoryLimit,
    /// The output was larger than the output budget.
    OutputTooLarge {
        /// The budget that was exceeded, in bytes.
        limit: u64,
    },
    /// The wall-clock guard fired before the run finished.
    Timeout,
    /// The run finished, but its figures break the tool's declared contract,
    /// so its output is withheld. Set by the host (the sandbox does not know
    /// contracts).
    ContractViolation {
        /// The clause that failed, as written in the contract.
        clause: String,
    },
}

impl Outcome {
    /// The short, stable name used in receipts, logs and exit codes.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError { .. } => "tool-error",
            Outcome::Trap { .. } => "trap",
            Outcome::OutOfFuel => "out-of-fuel",
            Outcome::MemoryLimit => "memory-limit",
            Outcome::OutputTooLarge { .. } => "output-too-large",
            Outcome::Timeout => "timeout",
            Outcome::ContractViolation { .. } => "contract-violation",
        }
    }

    /// Whether the outcome depends only on the invocation, so a receipt
    /// carrying it may be cached and replayed. A timeout depends on how busy
    /// the host was.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Outcome::Timeout)
    }

    /// One sentence for people: what happened and what to try.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Ok => "the tool ran and returned an output".into(),
            Outcome::ToolError { code, message } => {
                format!("the tool reported an error ({code}): {message}")
            }
            Outcome::Trap { code } => format!(
                "the tool trapped ({code}); this is a bug in the tool or an input it cannot handle"
            ),
            Outcome::OutOfFuel => {
                "the tool ran out of fuel; give it more with --fuel N or a smaller input".into()
            }
            Outcome::MemoryLimit => {
                "the tool needed more memory than allowed; raise it with --memory BYTES".into()
            }
            Outcome::OutputTooLarge { limit } => format!(
                "the tool's output was larger than the limit of {limit} bytes; raise `output_bytes` in voidbox.toml or use --output-limit"
            ),
            Outcome::Timeout => {
                "the tool hit the wall-clock guard; the host may be overloaded, or raise --timeout"
                    .into()
            }
            Outcome::ContractViolation { clause } => format!(
                "the run broke the tool's contract clause `{clause}`, so its output is withheld; the tool's contract is wrong for this input"
            ),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
