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

    /// The canonical encoding of everything but the tool (which keys the
    /// digest, see [`Invocation::digest`]): a one-byte format tag, then every
    /// field in a fixed order, integers as minimal LEB128 varints and strings
    /// and lists prefixed by their length, so that no two invocations share
    /// an encoding. Grants are sorted and deduplicated, because their order
    /// means nothing. The common invocation (no args, no grants, time 0)
    /// encodes in under 64 bytes: one blake3 block.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.args.len() * 16 + self.grants.len() * 32);
        self.encode_canonical(&mut out);
        out
    }

    fn encode_canonical(&self, out: &mut Vec<u8>) {
        out.push(INVOCATION_TAG);
        out.extend_from_slice(self.input.as_bytes());
        put_str(out, &self.export);
        put_varint(out, self.args.len() as u64);
        for (k, v) in &self.args {
            put_str(out, k);
            put_str(out, v);
        }
        let b = &self.budget;
        put_varint(out, b.fuel);
        put_varint(out, b.memory_bytes);
        put_varint(out, b.output_bytes);
        put_varint(out, b.timeout.as_millis().try_into().unwrap_or(u64::MAX));
        // Fewer than two grants are sorted already: no copy to sort.
        let sorted;
        let grants: &[Digest] = if self.grants.len() < 2 {
            &self.grants
        } else {
            let mut g = self.grants.clone();
            g.sort();
            g.dedup();
            sorted = g;
            &sorted
        };
        put_varint(out, grants.len() as u64);
        for g in grants {
            out.extend_from_slice(g.as_bytes());
        }
        put_varint(out, self.time_unix_ns);
    }

    /// The invocation's identity: blake3 keyed by the tool's digest over
    /// [`Invocation::canonical_bytes`]. The key costs no hashing (it is the
    /// hash's starting state), so the tool is bound without the 32 bytes
    /// that would take the common encoding past one block.
    pub fn digest(&self) -> Digest {
        with_scratch(|out| {
            self.encode_canonical(out);
            Digest(*blake3::keyed_hash(self.tool.as_bytes(), out).as_bytes())
        })
    }
}

/// An outcome as its canonical JSON (a fixed tag, fields in declaration
/// order), except `ok`, nearly every receipt's, as the empty string: no
/// outcome's JSON is empty, so the encodings that use this stay
/// unambiguous, and the common case costs no serialization.
pub(crate) fn outcome_json(outcome: &Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Ok => Vec::new(),
        other => serde_json::to_vec(other).expect("outcomes serialize"),
    }
}

/// The first byte of an invocation's canonical encoding (format 2; format
/// 1 was a plain blake3 of a longer encoding, no longer produced).
const INVOCATION_TAG: u8 = b'i';
/// The first byte of a receipt's digested encoding (format 2).
const RECEIPT_TAG: u8 = b'r';

/// Runs `f` on this thread's cleared scratch buffer: the digests are taken
/// on every invocation's path, where an allocation each is measurable.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            f(&mut buf)
        }
        // Not reentrant today; a fresh buffer keeps it correct if it ever is.
        Err(_) => f(&mut Vec::new()),
    })
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Minimal unsigned LEB128: each value has exactly one encoding, and no
/// encoding is a prefix of another.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A flag byte, then the digest if there is one (receipts' optional
/// digests, in the digest's encoding and the journal's alike).
pub(crate) fn put_opt_digest(out: &mut Vec<u8>, d: &Option<Digest>) {
    match d {
        Some(d) => {
            out.push(1);
            out.extend_from_slice(d.as_bytes());
        }
        None => out.push(0),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
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
    ///
    /// blake3 keyed by the invocation digest over a one-byte format tag and
    /// the other fields (integers as minimal LEB128 varints, the outcome as
    /// its canonical JSON with `ok` written as an empty string): two blocks
    /// for a receipt without diagnostics. Tool and input stay in, although
    /// the invocation digest binds them, because a receipt is checked
    /// without its invocation (`voidbox receipt verify`).
    pub fn compute_digest(&self) -> Digest {
        with_scratch(|out| {
            out.push(RECEIPT_TAG);
            out.extend_from_slice(self.tool.as_bytes());
            out.extend_from_slice(self.input.as_bytes());
            put_opt_digest(out, &self.output);
            put_varint(out, self.output_bytes);
            let json = outcome_json(&self.outcome);
            put_varint(out, json.len() as u64);
            out.extend_from_slice(&json);
            put_varint(out, self.fuel_used);
            put_varint(out, self.memory_peak_bytes);
            put_opt_digest(out, &self.diagnostics);
            Digest(*blake3::keyed_hash(self.invocation.as_bytes(), out).as_bytes())
        })
    }

    /// The digest as format 1 computed it (plain blake3 of a longer,
    /// fixed-width encoding), so that receipts stored or signed before
    /// format 2 still check.
    fn digest_v1(&self) -> Digest {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"voidbox-receipt-v1\0");
        out.extend_from_slice(self.invocation.as_bytes());
        out.extend_from_slice(self.tool.as_bytes());
        out.extend_from_slice(self.input.as_bytes());
        put_opt_digest(&mut out, &self.output);
        put_u64(&mut out, self.output_bytes);
        let outcome = serde_json::to_vec(&self.outcome).expect("outcome serializes");
        put_u64(&mut out, outcome.len() as u64);
        out.extend_from_slice(&outcome);
        put_u64(&mut out, self.fuel_used);
        put_u64(&mut out, self.memory_peak_bytes);
        put_opt_digest(&mut out, &self.diagnostics);
        Digest::of(&out)
    }

    /// Whether the stored digest matches the content (a receipt read back
    /// from disk is checked with this).
    pub fn is_consistent(&self) -> bool {
        self.receipt == self.compute_digest() || self.receipt == self.digest_v1()
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
        let mut o = inv();
        o.tool = Digest::of(b"another tool");
        assert_ne!(base, o.digest());
        let mut e = inv();
        e.export = "run".into();
        assert_ne!(base, e.digest());
        let mut m = inv();
        m.budget.memory_bytes += 1;
        assert_ne!(base, m.digest());
    }

    #[test]
    fn a_plain_invocation_is_one_blake3_block() {
        // What the format is for: the common invocation (default budget,
        // no args or grants, time 0) costs one compression to identify.
        let plain = Invocation::new(Digest::of(b"t"), Digest::of(b"i"));
        assert!(
            plain.canonical_bytes().len() <= 64,
            "{}",
            plain.canonical_bytes().len()
        );
        assert_eq!(
            plain.digest().0,
            *blake3::keyed_hash(plain.tool.as_bytes(), &plain.canonical_bytes()).as_bytes()
        );
    }

    #[test]
    fn varints_are_minimal_and_round_numbers_differ() {
        let enc = |v: u64| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(128), [0x80, 1]);
        assert_eq!(enc(u64::MAX).len(), 10);
        // Budgets that differ only past one varint byte still differ.
        let mut a = inv();
        a.budget.fuel = 127;
        let mut b = inv();
        b.budget.fuel = 128;
        assert_ne!(a.digest(), b.digest());
    }

    fn receipt() -> Receipt {
        let i = inv();
        let mut r = Receipt {
            receipt: Digest([0; 32]),
            invocation: i.digest(),
            tool: i.tool,
            input: i.input,
            output: Some(Digest::of(b"out")),
            output_bytes: 3,
            outcome: Outcome::Ok,
            fuel_used: 1234,
            memory_peak_bytes: 1 << 20,
            diagnostics: None,
            timestamp: 7,
            cached: false,
            duration_us: 9,
        };
        r.receipt = r.compute_digest();
        r
    }

    #[test]
    fn the_receipt_digest_covers_the_deterministic_fields_only() {
        let base = receipt();
        assert!(base.is_consistent());
        let changes: Vec<fn(&mut Receipt)> = vec![
            |r| r.invocation = Digest::of(b"x"),
            |r| r.tool = Digest::of(b"x"),
            |r| r.input = Digest::of(b"x"),
            |r| r.output = None,
            |r| r.output_bytes += 1,
            |r| r.outcome = Outcome::OutOfFuel,
            |r| r.fuel_used += 1,
            |r| r.memory_peak_bytes += 1,
            |r| r.diagnostics = Some(Digest::of(b"d")),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut r = base.clone();
            change(&mut r);
            assert!(!r.is_consistent(), "change {i} left the digest valid");
        }
        let mut r = base.clone();
        r.timestamp += 1;
        r.cached = true;
        r.duration_us += 1;
        assert!(r.is_consistent(), "host-local fields are not digested");
    }

    #[test]
    fn receipts_digested_in_format_1_still_check() {
        // Stored (and signed) before format 2: read back, they must verify,
        // and a changed field must still be caught.
        let mut r = receipt();
        r.receipt = r.digest_v1();
        assert_ne!(r.receipt, r.compute_digest());
        assert!(r.is_consistent());
        r.fuel_used += 1;
        assert!(!r.is_consistent());
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
