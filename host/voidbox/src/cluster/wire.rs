//! What travels between clients and replicas besides the PBFT protocol.
//!
//! Every frame starts with a tag byte: a PBFT message (ordered, signed), or
//! a side request/response (blob transfer, tool registration, lookups,
//! status). Side traffic is never ordered: it moves content-addressed data
//! whose digest the receiver checks, or answers questions whose answers a
//! client cross-checks with f + 1 replicas.
//!
//! Ordered operations ([`Op`]) and their results ([`OpResult`]) travel in
//! a binary form (see [`crate::codec`]): their bytes must be identical on
//! every correct replica, which one encoder gives, and each is hashed,
//! copied, logged and signed several times on its way, so every byte
//! costs. The JSON they were before (digests as hex, outputs as arrays of
//! numbers) made a result several times larger; parsing and hashing it
//! took about 15% of a loaded cluster's replica CPU (BENCHMARKS.md, PBFT
//! cluster, session 18).

use serde::{Deserialize, Serialize};

use crate::codec::{
    decode_invocation, decode_receipt_fields, encode_invocation, encode_receipt, patch_len,
    put_len, put_opt_bytes, put_str, Reader,
};
use crate::{Digest, Invocation, Receipt};

/// A PBFT message ([`voidbox_pbft::Message`]).
pub const TAG_PBFT: u8 = 0;
/// A [`SideRequest`].
pub const TAG_SIDE_REQUEST: u8 = 1;
/// A [`SideResponse`].
pub const TAG_SIDE_RESPONSE: u8 = 2;

/// Outputs up to this size travel inside the signed reply; larger ones are
/// fetched by digest.
pub const INLINE_OUTPUT_MAX: u64 = 64 << 10;

/// Largest blob moved in one side frame.
pub const SIDE_BLOB_MAX: usize = 15 << 20;

/// An operation a client asks the cluster to order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Run a tool under a capability. The replicas set the invocation's
    /// time to the consensus time before running it.
    Invoke {
        /// The capability (token, with discharges).
        token: String,
        /// What to run; `time_unix_ns` is ignored.
        invocation: Invocation,
    },
}

/// What came of an ordered operation: the bytes every correct replica
/// signs in its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum OpResult {
    /// The tool ran (or the action cache answered): the receipt with its
    /// replica-specific fields cleared (`cached` false, `duration_us` 0,
    /// `timestamp` the consensus time), and the output when small.
    Receipt {
        /// The receipt.
        receipt: Box<Receipt>,
        /// The output bytes when at most [`INLINE_OUTPUT_MAX`].
        output: Option<Vec<u8>>,
    },
    /// The capability or the admission proof said no.
    Denied {
        /// The denial's kind (`expired`, `not-admitted`, ...).
        kind: String,
        /// What failed and what to do.
        message: String,
    },
    /// The operation could not run (a malformed operation, a tool or input
    /// no replica has).
    Failed {
        /// What failed and what to do.
        message: String,
    },
}

/// The first byte of an operation or result in the binary form
/// ([`crate::codec`]) that this version writes. The JSON that earlier
/// versions wrote starts with `{`, so a replica still reads operations
/// in its protocol log and results in its journal from before an upgrade.
const OP_INVOKE: u8 = 1;
const RESULT_RECEIPT: u8 = 1;
const RESULT_DENIED: u8 = 2;
const RESULT_FAILED: u8 = 3;
const INVOCATION_ENTRY: u8 = 1;
/// How every JSON value of those versions begins.
const LEGACY_JSON: u8 = b'{';

/// A value as an earlier version wrote it (JSON).
fn earlier_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

impl Op {
    /// The operation's bytes for a request: a tag byte, the token, then the
    /// invocation's binary form.
    pub fn encode(&self) -> Vec<u8> {
        let Op::Invoke { token, invocation } = self;
        let mut out = Vec::with_capacity(1 + 4 + token.len() + 160);
        out.push(OP_INVOKE);
        put_str(&mut out, token);
        encode_invocation(&mut out, invocation);
        out
    }

    /// Parses an operation (this version's form, or an earlier version's
    /// JSON).
    pub fn decode(bytes: &[u8]) -> Result<Op, String> {
        let malformed = |e: String| format!("malformed operation: {e}");
        match bytes.split_first() {
            Some((&OP_INVOKE, rest)) => {
                let mut r = Reader(rest);
                let token = r.string().map_err(malformed)?;
                let invocation = decode_invocation(r.0).map_err(malformed)?;
                Ok(Op::Invoke { token, invocation })
            }
            Some((&LEGACY_JSON, _)) => earlier_json(bytes).map_err(malformed),
            _ => Err(malformed("unknown encoding".into())),
        }
    }
}

impl OpResult {
    /// The result's bytes for a reply: a tag byte per variant, then its
    /// fields (a receipt in its binary form, the inline output behind a
    /// presence byte and a length). Every correct replica writes the same
    /// bytes for the same result: they are what the replies sign and the
    /// result chain hashes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            OpResult::Receipt { receipt, output } => {
                out.reserve(1 + 4 + 240 + output.as_ref().map_or(1, |o| 5 + o.len()));
                out.push(RESULT_RECEIPT);
                let at = out.len();
                put_len(&mut out, 0);
                encode_receipt(&mut out, receipt);
                patch_len(&mut out, at);
                put_opt_bytes(&mut out, output.as_deref());
            }
            OpResult::Denied { kind, message } => {
                out.push(RESULT_DENIED);
                put_str(&mut out, kind);
                put_str(&mut out, message);
            }
            OpResult::Failed { message } => {
                out.push(RESULT_FAILED);
                put_str(&mut out, message);
            }
        }
        out
    }

    /// Parses a result (this version's form, or an earlier version's JSON).
    /// A receipt's digest is not checked here: whoever relies on the
    /// receipt checks it ([`Receipt::is_consistent`]).
    pub fn decode(bytes: &[u8]) -> Result<OpResult, String> {
        let parse = || -> Result<OpResult, String> {
            let Some((&tag, rest)) = bytes.split_first() else {
                return Err("empty".into());
            };
            let mut r = Reader(rest);
            let result = match tag {
                RESULT_RECEIPT => {
                    let n = r.len()?;
                    let receipt = Box::new(decode_receipt_fields(r.take(n)?)?);
                    let output = r.opt_bytes()?.map(<[u8]>::to_vec);
                    OpResult::Receipt { receipt, output }
                }
                RESULT_DENIED => OpResult::Denied {
                    kind: r.string()?,
                    message: r.string()?,
                },
                RESULT_FAILED => OpResult::Failed {
                    message: r.string()?,
                },
                LEGACY_JSON => return earlier_json(bytes),
                t => return Err(format!("unknown encoding (first byte {t})")),
            };
            r.end()?;
            Ok(result)
        };
        parse().map_err(|e| format!("malformed result: {e}"))
    }
}

/// An invocation as a result journal entry stores it ([`crate::codec`]'s
/// form behind a tag byte; earlier versions stored JSON).
pub(crate) fn encode_invocation_entry(invocation: &Invocation) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.push(INVOCATION_ENTRY);
    encode_invocation(&mut out, invocation);
    out
}

/// Reads [`encode_invocation_entry`]'s bytes, or an earlier version's JSON.
pub(crate) fn decode_invocation_entry(bytes: &[u8]) -> Result<Invocation, String> {
    match bytes.split_first() {
        Some((&INVOCATION_ENTRY, rest)) => decode_invocation(rest),
        Some((&LEGACY_JSON, _)) => earlier_json(bytes),
        _ => Err("unknown invocation encoding".into()),
    }
}

/// A question to one replica, outside the ordered log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SideRequest {
    /// Store a blob (an input, a tool's bytes).
    PutBlob {
        /// Matches the response.
        id: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A blob by digest (clients fetch outputs; replicas fetch what they
    /// lack from peers).
    GetBlob {
        /// Matches the response.
        id: u64,
        /// blake3 of the blob.
        digest: [u8; 32],
    },
    /// Register a stored blob as a tool.
    AddTool {
        /// Matches the response.
        id: u64,
        /// The component's digest (put it first).
        digest: [u8; 32],
        /// Its name.
        name: Option<String>,
        /// A contract text that overrides the tool's own.
        contract: Option<String>,
    },
    /// A tool by name or digest.
    Tool {
        /// Matches the response.
        id: u64,
        /// Name or `blake3:` digest.
        reference: String,
    },
    /// The receipt the replica holds for an invocation digest.
    Receipt {
        /// Matches the response.
        id: u64,
        /// blake3 of the invocation.
        invocation: [u8; 32],
    },
    /// The replica's protocol state.
    Status {
        /// Matches the response.
        id: u64,
    },
    /// Journaled results `from..from + count` (a replica catching up).
    Results {
        /// Matches the response.
        id: u64,
        /// First result number.
        from: u64,
        /// How many.
        count: u64,
    },
}

impl SideRequest {
    /// The request id.
    pub fn id(&self) -> u64 {
        match self {
            SideRequest::PutBlob { id, .. }
            | SideRequest::GetBlob { id, .. }
            | SideRequest::AddTool { id, .. }
            | SideRequest::Tool { id, .. }
            | SideRequest::Receipt { id, .. }
            | SideRequest::Results { id, .. }
            | SideRequest::Status { id } => *id,
        }
    }
}

/// A replica's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Replica id.
    pub id: u32,
    /// Current view.
    pub view: u64,
    /// Whether the view is installed (false while changing views).
    pub view_active: bool,
    /// Whether it is the primary.
    pub primary: bool,
    /// Last executed sequence number.
    pub last_executed: u64,
    /// Latest stable checkpoint.
    pub stable: u64,
    /// Requests executed since the cluster started (replicated).
    pub executed_requests: u64,
    /// Inputs the protocol core refused.
    pub rejected: u64,
    /// Replies sent from the client table to a request that had already
    /// run: mostly a client's retry (it did not get f + 1 replies in
    /// time), sometimes a copy that reached this replica late.
    pub replies_resent: u64,
    /// Batches whose results the replica adopted from f + 1 replicas that
    /// ran them (partial execution), instead of running them.
    #[serde(default)]
    pub batches_adopted: u64,
    /// Batches it was to adopt but ran itself (results late or not
    /// agreeing, or an executor it was passing over).
    #[serde(default)]
    pub adoptions_abandoned: u64,
    /// Invocations its host ran in the sandbox since the process started.
    #[serde(default)]
    pub sandbox_runs: u64,
    /// Client requests whose signatures it checked since the process
    /// started, and the distinct signatures that took (a client's sessions
    /// that send together sign one bundle).
    #[serde(default)]
    pub requests_checked: u64,
    /// See `requests_checked`.
    #[serde(default)]
    pub request_signatures_checked: u64,
    /// Protocol signatures (pre-prepares, votes, replies, result shares,
    /// checkpoints, view changes) it made since the process started.
    #[serde(default)]
    pub signatures_made: u64,
    /// Protocol signatures it checked since the process started.
    #[serde(default)]
    pub signatures_checked: u64,
    /// Of those, the ones checked in batches, ahead of frames that arrived
    /// together.
    #[serde(default)]
    pub signatures_batched: u64,
    /// Frames the transport refused (oversized, bad hello) or dropped.
    pub transport_refused: u64,
    /// Process id, so `cluster status` can match processes.
    pub pid: u32,
}

/// A tool as a replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSummary {
    /// Component digest.
    pub digest: Digest,
    /// Registered name.
    pub name: String,
    /// Version from `describe`.
    pub version: String,
}

impl From<crate::ToolRecord> for ToolSummary {
    fn from(r: crate::ToolRecord) -> Self {
        ToolSummary {
            digest: r.digest,
            name: r.name,
            version: r.version,
        }
    }
}

/// A replica's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SideResponse {
    /// Done (a blob stored: its digest).
    Stored {
        /// Matches the request.
        id: u64,
        /// blake3 of what was stored.
        digest: [u8; 32],
    },
    /// A blob, or `None` when the replica does not have it.
    Blob {
        /// Matches the request.
        id: u64,
        /// The bytes.
        bytes: Option<Vec<u8>>,
    },
    /// A tool.
    Tool {
        /// Matches the request.
        id: u64,
        /// The tool.
        tool: ToolSummary,
    },
    /// A receipt digest, or `None`.
    Receipt {
        /// Matches the request.
        id: u64,
        /// The receipt digest held for the invocation.
        receipt: Option<[u8; 32]>,
    },
    /// Status.
    Status {
        /// Matches the request.
        id: u64,
        /// The status.
        status: Status,
    },
    /// Journaled results.
    Results {
        /// Matches the request.
        id: u64,
        /// The entries held, in order.
        entries: Vec<super::app::ResultEntry>,
    },
    /// The replica has no tool by that name or digest.
    NoSuchTool {
        /// Matches the request.
        id: u64,
    },
    /// The request failed.
    Error {
        /// Matches the request.
        id: u64,
        /// What failed and what to do.
        message: String,
    },
}

impl SideResponse {
    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        match self {
            SideResponse::Stored { id, .. }
            | SideResponse::Blob { id, .. }
            | SideResponse::Tool { id, .. }
            | SideResponse::Receipt { id, .. }
            | SideResponse::Status { id, .. }
            | SideResponse::Results { id, .. }
            | SideResponse::NoSuchTool { id }
            | SideResponse::Error { id, .. } => *id,
        }
    }
}

/// A frame: the tag, then the body.
pub fn frame(tag: u8, body: &[u8]) -> std::sync::Arc<[u8]> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(tag);
    v.extend_from_slice(body);
    v.into()
}

/// A side request or response as a frame.
pub fn side_frame<T: Serialize>(tag: u8, value: &T) -> std::sync::Arc<[u8]> {
    let body = postcard::to_allocvec(value).expect("side messages serialize");
    frame(tag, &body)
}

/// Parses the body of a side frame; `None` if it is not exactly one value.
pub fn parse_side<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_messages_round_trip_and_garbage_is_refused() {
        let r = SideRequest::AddTool {
            id: 7,
            digest: [3; 32],
            name: Some("wc".into()),
            contract: None,
        };
        let f = side_frame(TAG_SIDE_REQUEST, &r);
        assert_eq!(f[0], TAG_SIDE_REQUEST);
        assert_eq!(parse_side::<SideRequest>(&f[1..]), Some(r));
        assert_eq!(parse_side::<SideRequest>(&[200, 1, 2]), None);
        let mut long = f[1..].to_vec();
        long.push(0);
        assert_eq!(parse_side::<SideRequest>(&long), None, "trailing bytes");
    }

    fn op() -> Op {
        Op::Invoke {
            token: "t".into(),
            invocation: Invocation::new(Digest::of(b"tool"), Digest::of(b"in"))
                .arg("k", "v")
                .grant(Digest::of(b"g")),
        }
    }

    fn results() -> Vec<OpResult> {
        let inv = Invocation::new(Digest::of(b"tool"), Digest::of(b"in"));
        let mut receipt = Receipt {
            receipt: Digest::of(b""),
            invocation: inv.digest(),
            tool: inv.tool,
            input: inv.input,
            output: Some(Digest::of(b"out")),
            output_bytes: 3,
            outcome: voidbox_sandbox::Outcome::Ok,
            fuel_used: 1234,
            memory_peak_bytes: 65536,
            diagnostics: None,
            timestamp: 1_700_000_000_000_000_000,
            cached: false,
            duration_us: 0,
        };
        receipt.receipt = receipt.compute_digest();
        let mut trapped = receipt.clone();
        trapped.outcome = voidbox_sandbox::Outcome::Trap {
            code: "unreachable".into(),
        };
        trapped.output = None;
        vec![
            OpResult::Receipt {
                receipt: Box::new(receipt),
                output: Some(b"out".to_vec()),
            },
            OpResult::Receipt {
                receipt: Box::new(trapped),
                output: None,
            },
            OpResult::Denied {
                kind: "expired".into(),
                message: "m".into(),
            },
            OpResult::Failed {
                message: "no such tool".into(),
            },
        ]
    }

    #[test]
    fn ops_round_trip_and_bad_ones_name_the_problem() {
        let op = op();
        assert_eq!(Op::decode(&op.encode()).unwrap(), op);
        for bad in [&b"{"[..], b"", b"\x07xyz"] {
            assert!(Op::decode(bad).unwrap_err().contains("malformed operation"));
        }
        // Cut anywhere, an operation does not decode.
        let bytes = op.encode();
        for n in 0..bytes.len() {
            assert!(Op::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn results_round_trip_and_cut_or_padded_ones_are_refused() {
        for res in results() {
            let bytes = res.encode();
            assert_eq!(OpResult::decode(&bytes).unwrap(), res);
            for n in 0..bytes.len() {
                assert!(OpResult::decode(&bytes[..n]).is_err(), "cut at {n}");
            }
            let mut long = bytes.clone();
            long.push(0);
            let err = OpResult::decode(&long).unwrap_err();
            assert!(err.contains("malformed result"), "{err}");
        }
    }

    #[test]
    fn the_json_of_earlier_versions_still_decodes() {
        // Operations in a protocol log and results in a journal written
        // before the binary form (JSON, as serde wrote it then).
        let op = op();
        let json = serde_json::to_vec(&op).unwrap();
        assert_eq!(Op::decode(&json).unwrap(), op);
        for res in results() {
            let json = serde_json::to_vec(&res).unwrap();
            assert_eq!(OpResult::decode(&json).unwrap(), res);
        }
        let Op::Invoke { invocation, .. } = op;
        let json = serde_json::to_vec(&invocation).unwrap();
        assert_eq!(decode_invocation_entry(&json).unwrap(), invocation);
        let entry = encode_invocation_entry(&invocation);
        assert_eq!(decode_invocation_entry(&entry).unwrap(), invocation);
        assert!(decode_invocation_entry(b"x").is_err());
    }

    #[test]
    fn the_binary_forms_are_much_smaller_than_json() {
        // What the change was for: every result is hashed, copied and
        // logged several times (see the module doc).
        for res in results() {
            let (bin, json) = (res.encode().len(), serde_json::to_vec(&res).unwrap().len());
            assert!(bin * 2 < json, "{bin} bytes against {json} of JSON");
        }
    }
}
