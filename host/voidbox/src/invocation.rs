//! Invocations and receipts: the plain data every other part exchanges.
//!
//! An [`Invocation`] names everything a run depends on (tool, input, args,
//! budget, grants, the guest-visible time), so its digest is its identity:
//! two equal invocations produce the same bytes on every host. A [`Receipt`]
//! says what came of one; its digest covers only the deterministic part, so
//! the same invocation on two hosts yields the same receipt digest.

use serde::{Deserialize, Serialize};
use voidbox_cas::Digest;
use voidbox_sandbox::{Budget, Outcome};

/// The export every `voidbox:tool` component provides.
pub const INVOKE_EXPORT: &str = "invoke";

/// A request to run one tool on one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// The tool component's digest.
    pub tool: Digest,
    /// The export to call (always `invoke` for now; commands run `wasi:cli/run`).
    pub export: String,
    /// The input blob's digest.
    pub input: Digest,
    /// `--arg key=value` pairs, in order.
    pub args: Vec<(String, String)>,
    /// The limits of the run.
    pub budget: Budget,
    /// Blobs the tool may read through `read-blob`.
    pub grants: Vec<Digest>,
    /// The time the guest sees, nanoseconds since the Unix epoch. Part of
    /// the identity, because a tool may print it: `0` unless the caller asks
    /// for another (the CLI's `--time`).
    pub time_unix_ns: u64,
}

impl Invocation {
    /// An invocation of `tool` on the blob `input`, with default budget.
    pub fn new(tool: Digest, input: Digest) -> Invocation {
        Invocation {
            tool,
            export: INVOKE_EXPORT.to_string(),
            input,
            args: Vec::new(),
            budget: Budget::default(),
            grants: Vec::new(),
            time_unix_ns: 0,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.args.push((key.into(), value.into()));
        self
    }

    /// Sets the budget.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Grants read access to a blob.
    pub fn grant(mut self, blob: Digest) -> Self {
        self.grants.push(blob);
        self
    }

    /// The canonical encoding: a versioned, length-prefixed byte string with
    /// every field in a fixed order. Grants are sorted and deduplicated,
    /// because their order means nothing.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.args.len() * 32);
        out.extend_from_slice(b"voidbox-invocation-v1\0");
        out.extend_from_slice(self.tool.as_bytes());
        put_str(&mut out, &self.export);
        out.extend_from_slice(self.input.as_bytes());
        put_u64(&mut out, self.args.len() as u64);
        for (k, v) in &self.args {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        let b = &self.budget;
        put_u64(&mut out, b.fuel);
        put_u64(&mut out, b.memory_bytes);
        put_u64(&mut out, b.output_bytes);
        put_u64(
            &mut out,
            b.timeout.as_millis().try_into().unwrap_or(u64::MAX),
        );
        let mut grants = self.grants.clone();
        grants.sort();
        grants.dedup();
        put_u64(&mut out, grants.len() as u64);
        for g in &grants {
            out.extend_from_slice(g.as_bytes());
        }
        put_u64(&mut out, self.time_unix_ns);
        out
    }

    /// The invocation's identity: blake3 of [`Invocation::canonical_bytes`].
    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical_bytes())
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// What came of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The receipt's own digest: blake3 of the deterministic fields (see
    /// [`Receipt::compute_digest`]).
    pub receipt: Digest,
    /// The invocation's digest.
    pub invocation: Digest,
    /// The tool's digest.
    pub tool: Digest,
    /// The input blob's digest.
    pub input: Digest,
    /// The output blob's digest, when the outcome is `ok`.
    pub output: Option<Digest>,
    /// The size of the output in bytes.
    pub output_bytes: u64,
    /// How the run ended.
    pub outcome: Outcome,
    /// Fuel the run consumed.
    pub fuel_used: u64,
    /// The largest linear memory the run reached, in bytes.
    pub memory_peak_bytes: u64,
    /// Logs and stderr of the run, as a JSON blob, when there were any.
    pub diagnostics: Option<Digest>,
    /// When the host executed it: a hybrid logical clock reading
    /// (nanoseconds since the Unix epoch, made strictly increasing per host).
    pub timestamp: u64,
    /// Whether this answer came from the action cache rather than a run.
    pub cached: bool,
    /// Wall-clock time of the run, in microseconds (of the original run
    /// when `cached`).
    pub duration_us: u64,
}

impl Receipt {
    /// The digest of the deterministic fields: invocation, tool, input,
    /// outcome, output, fuel, memory peak and diagnostics. Timestamps,
    /// durations and the cache flag differ between hosts and are left out,
    /// so two hosts that ran the same invocation agree on this digest.
    pub fn compute_digest(&self) -> Digest {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"voidbox-receipt-v1\0");
        out.extend_from_slice(self.invocation.as_bytes());
        out.extend_from_slice(self.tool.as_bytes());
        out.extend_from_slice(self.input.as_bytes());
        match &self.output {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d.as_bytes());
            }
            None => out.push(0),
        }
        put_u64(&mut out, self.output_bytes);
        // The outcome's JSON form is canonical: a fixed tag and fields in
        // declaration order. `ok`, nearly every receipt's, is encoded once.
        static OK_JSON: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let encoded;
        let outcome: &[u8] = match self.outcome {
            Outcome::Ok => OK_JSON
                .get_or_init(|| serde_json::to_vec(&Outcome::Ok).expect("outcome serializes")),
            _ => {
                encoded = serde_json::to_vec(&self.outcome).expect("outcome serializes");
                &encoded
            }
        };
        put_u64(&mut out, outcome.len() as u64);
        out.extend_from_slice(outcome);
        put_u64(&mut out, self.fuel_used);
        put_u64(&mut out, self.memory_peak_bytes);
        match &self.diagnostics {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d.as_bytes());
            }
            None => out.push(0),
        }
        Digest::of(&out)
    }

    /// Whether the stored digest matches the content (a receipt read back
    /// from disk is checked with this).
    pub fn is_consistent(&self) -> bool {
        self.receipt == self.compute_digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Invocation {
        Invocation::new(Digest::of(b"tool"), Digest::of(b"input")).arg("k", "v")
    }

    #[test]
    fn digest_covers_every_field() {
        let base = inv().digest();
        assert_eq!(base, inv().digest());
        assert_ne!(base, inv().arg("k2", "v2").digest());
        let mut b = inv();
        b.budget.fuel += 1;
        assert_ne!(base, b.digest());
        let mut t = inv();
        t.time_unix_ns = 1;
        assert_ne!(base, t.digest());
        assert_ne!(base, inv().grant(Digest::of(b"x")).digest());
    }

    #[test]
    fn grant_order_does_not_matter() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(
            inv().grant(a).grant(b).digest(),
            inv().grant(b).grant(a).digest()
        );
    }

    #[test]
    fn args_are_length_prefixed() {
        // ("ab","c") and ("a","bc") must not collide.
        let x = Invocation::new(Digest::of(b"t"), Digest::of(b"i")).arg("ab", "c");
        let y = Invocation::new(Digest::of(b"t"), Digest::of(b"i")).arg("a", "bc");
        assert_ne!(x.digest(), y.digest());
    }
}
