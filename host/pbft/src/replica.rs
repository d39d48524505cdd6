//! The replica: Castro & Liskov PBFT as a pure state machine.
//!
//! [`Replica::step`] takes one [`Input`] (bytes from the network, a clock
//! tick, or the application's result for a batch) and returns the
//! [`Output`]s it caused, in order. The driver must, for each step:
//! 1. write every [`Output::Persist`] record durably (synced) before
//! 2. sending any [`Output::Send`] of the same step (a
//!    [`Record::deferrable`] one may wait for the next record that is not),
//!    and
//! 3. hand [`Output::RestoreState`] and [`Output::Execute`] to the
//!    application in the order given, feeding each batch's results back as
//!    [`Input::Executed`] (the core issues the next batch only after that).
//!
//! Nothing here reads a clock, a socket, a disk or a random source; maps are
//! `BTreeMap`, so the same inputs always give the same outputs.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Cluster, Params};
use crate::message::{
    results_digest, Batch, Checkpoint, CheckpointState, ClientEntry, ClientId, Commit, Digest, Hlc,
    Message, NewView, Payload, PrePrepare, PrePrepareMsg, Prepare, PreparedCert, ReplicaId, Reply,
    Request, ResultBytes, ResultShare, Seq, SharedResults, Sig, Signed, SignedRequest,
    StateTransfer, Status, View, ViewChange,
};

/// An idle replica sends STATUS this many times less often.
const IDLE_STATUS_FACTOR: u64 = 8;

/// A replica whose results did not come in time is passed over as an
/// executor for this many adoption timeouts: a crashed replica then costs
/// one wait, not one per batch it was meant to run.
const SUSPECT_FACTOR: u64 = 40;

/// What the driver feeds the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// One frame from a peer replica or a client: an encoded [`Message`].
    Receive(Vec<u8>),
    /// Frames that arrived together, in order: the same as one `Receive`
    /// each, except that the replica signatures it would check are checked
    /// first as one batch (about half the cost each, from a few up).
    ReceiveMany(Vec<Vec<u8>>),
    /// The driver's clock, in microseconds. Drive it every millisecond or
    /// so (see [`Replica::next_deadline_us`]); it never needs to be exact.
    Tick {
        /// Current time.
        now_us: u64,
    },
    /// The application's results for the batch last handed out with
    /// [`Output::Execute`].
    Executed {
        /// Sequence number of that batch.
        seq: Seq,
        /// One result per request of the batch, in order.
        results: Vec<Vec<u8>>,
        /// The application's snapshot after this batch, required when the
        /// batch asked for one (`snapshot_wanted`), otherwise `None`.
        snapshot: Option<Vec<u8>>,
    },
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// One replica.
    Replica(ReplicaId),
    /// Every replica but the sender.
    AllReplicas,
    /// A client (the driver routes by client id).
    Client(ClientId),
}

/// A batch for the application to execute, strictly in `seq` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execute {
    /// Sequence number.
    pub seq: Seq,
    /// Digest of the ordered batch (what all correct replicas agreed on).
    pub digest: Digest,
    /// Consensus time: the primary's stamp, raised if needed so that it is
    /// strictly after the previous batch's.
    pub hlc: Hlc,
    /// The requests to run, already filtered by the client table (a request
    /// that ran before is not here). May be empty.
    pub requests: Vec<Request>,
    /// Whether [`Input::Executed`] must carry the snapshot after this batch
    /// (a checkpoint).
    pub snapshot_wanted: bool,
    /// Under partial execution, the results f + 1 replicas that ran the
    /// batch signed alike: the application applies them (its state must
    /// change as if it had run the batch, and it must answer `Executed`
    /// with these results) instead of running the batch. `None`: run it.
    pub adopted: Option<Vec<Vec<u8>>>,
}

/// What the replica asks of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this record durably before sending this step's messages,
    /// unless it is [`Record::deferrable`]: such a record may wait and be
    /// written with the next one that is not (in order, in the same write).
    Persist(Record),
    /// Send a message.
    Send {
        /// Destination.
        to: Target,
        /// The message (encode with [`Message::encode`]).
        message: Message,
    },
    /// Replace the application's state with `snapshot` (after recovery or
    /// state transfer); `None` means the empty initial state. The batches
    /// that follow continue from `seq + 1`. A batch handed out before this
    /// and not yet answered is void: its `Executed` is refused.
    ///
    /// The application's snapshot must be canonical: replicas that executed
    /// the same batches produce the same bytes (its blake3 is part of the
    /// checkpoint digest).
    RestoreState {
        /// The checkpoint the state belongs to.
        seq: Seq,
        /// Snapshot bytes, as the application produced them at `seq`.
        snapshot: Option<Vec<u8>>,
    },
    /// Execute a batch.
    Execute(Execute),
    /// An input was refused and changed nothing; log it.
    Rejected(Reject),
}

/// A durable record. Replaying them in order with [`Replica::recover`]
/// rebuilds the replica. Records whose [`Record::seq`] is at or below the
/// latest [`Record::Stable`] may be deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The replica's view and whether it is installed.
    View {
        /// View.
        view: View,
        /// False while changing to it.
        active: bool,
    },
    /// The NEW-VIEW the replica installed (it is then active in that view
    /// and can hand the proof to replicas still changing views).
    NewView(Box<Signed<NewView>>),
    /// A pre-prepare the replica accepted (or proposed) in its view.
    PrePrepare(PrePrepareMsg),
    /// A prepared certificate, before the replica sends its commit.
    Prepared(PreparedCert),
    /// The batch at `seq` committed locally in `view`.
    Committed {
        /// View.
        view: View,
        /// Sequence number.
        seq: Seq,
        /// Batch digest.
        digest: Digest,
    },
    /// A stable checkpoint with its proof and state.
    Stable(Box<StateTransfer>),
}

impl Record {
    /// The record's canonical bytes, for the store.
    pub fn encode(&self) -> Vec<u8> {
        crate::message::encode(self)
    }

    /// Parses bytes from [`Record::encode`]; `None` if they are not exactly
    /// one record (a torn or corrupted write).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        match postcard::take_from_bytes::<Record>(bytes) {
            Ok((r, [])) => Some(r),
            _ => None,
        }
    }

    /// Whether the driver may write this record after the messages that
    /// follow it, with the next record that is not deferrable (a crash may
    /// then lose it). True only of [`Record::Committed`]: nothing a replica
    /// sends depends on it. The 2f + 1 commits that committed the batch
    /// came from replicas that had made their prepared certificates durable
    /// first, f + 1 of them correct, and those certificates are what carry
    /// the batch through a view change; this record only spares a
    /// recovering replica from waiting for commits again. Deferring it takes
    /// one synced write per batch off the way to execution and the reply.
    pub fn deferrable(&self) -> bool {
        matches!(self, Record::Committed { .. })
    }

    /// The sequence number the record is about, if any.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Record::View { .. } | Record::NewView(_) => None,
            Record::PrePrepare(m) => Some(m.header.payload.seq),
            Record::Prepared(c) => Some(c.pre_prepare.header.payload.seq),
            Record::Committed { seq, .. } => Some(*seq),
            Record::Stable(s) => s.proof.first().map(|c| c.payload.seq),
        }
    }
}

/// Drops the records recovery no longer needs, keeping the order of the
/// rest: the latest [`Record::Stable`], the latest [`Record::View`] or
/// [`Record::NewView`], and every record about a sequence number above the
/// latest stable checkpoint.
pub fn compact_records(records: &mut Vec<Record>) {
    let stable = records.iter().rposition(|r| matches!(r, Record::Stable(_)));
    let stable_seq = stable.and_then(|i| records[i].seq()).unwrap_or(0);
    let view = records
        .iter()
        .rposition(|r| matches!(r, Record::View { .. } | Record::NewView(_)));
    let mut i = 0;
    records.retain(|r| {
        let keep = Some(i) == stable
            || Some(i) == view
            || (!matches!(r, Record::Stable(_)) && r.seq().is_some_and(|s| s > stable_seq));
        i += 1;
        keep
    });
}

/// Why an input was refused. Every refusal leaves the state unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reject {
    /// Frame larger than `message_bytes_max`.
    Oversized,
    /// Bytes are not a message.
    Malformed,
    /// Signer is not a replica of the cluster.
    UnknownSender,
    /// Signature does not verify.
    BadSignature,
    /// Message for a view the replica has left.
    OldView,
    /// Message for a view the replica has not entered (it catches up by
    /// STATUS instead).
    FutureView,
    /// Normal-case message while a view change is in progress.
    ViewChanging,
    /// Sequence number outside (low, high] watermarks.
    OutsideWatermarks,
    /// Pre-prepare not from the view's primary, or prepare from it.
    WrongSender,
    /// Batch does not hash to the digest its pre-prepare names.
    DigestMismatch,
    /// Batch too large or holding an invalid request.
    BadBatch,
    /// Stamp not after its predecessor's (or not before its successor's).
    HlcBackwards,
    /// Stamp too far ahead of the replica's clock.
    HlcAhead,
    /// A second, different pre-prepare/prepare/commit from one sender for
    /// one (view, seq): equivocation.
    Conflicting,
    /// Request with a bad operation size or client signature.
    BadRequest,
    /// Request older than the client's last executed one.
    StaleRequest,
    /// Checkpoint message for a sequence that is not a checkpoint or is
    /// below the stable one.
    BadCheckpoint,
    /// Checkpoint proof that is not 2f + 1 matching valid signatures.
    BadCheckpointProof,
    /// VIEW-CHANGE with an invalid proof or certificate.
    BadViewChange,
    /// NEW-VIEW whose view-changes or pre-prepares do not check out.
    BadNewView,
    /// State transfer whose state does not match its proof, or is old.
    BadState,
    /// `Executed` that does not answer the outstanding batch.
    UnexpectedExecution,
    /// A message kind replicas do not accept (a reply).
    NotForReplicas,
    /// Too many requests already pending (`pending_requests_max`).
    Overloaded,
}

/// Counters the driver can read and export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Refusals by reason.
    pub rejected: BTreeMap<Reject, u64>,
    /// Batches this replica proposed as primary.
    pub batches_proposed: u64,
    /// Requests in those batches.
    pub requests_proposed: u64,
    /// Batches executed (including null batches).
    pub batches_executed: u64,
    /// Requests executed.
    pub requests_executed: u64,
    /// Replies sent from the client table to a request that had already
    /// run: a client's retry, or a copy that arrived late (a backup's
    /// forward, or a client's first broadcast, reaching a replica after
    /// the batch that held it ran there).
    pub replies_resent: u64,
    /// View changes this replica started.
    pub view_changes_started: u64,
    /// New views installed.
    pub new_views_installed: u64,
    /// Checkpoints that became stable.
    pub checkpoints_stable: u64,
    /// Batches whose results were adopted from f + 1 replicas that ran
    /// them (partial execution), and the requests in them.
    pub batches_adopted: u64,
    /// Requests in adopted batches.
    pub requests_adopted: u64,
    /// Batches this replica was not meant to run but ran, because f + 1
    /// matching results did not come in time or did not agree, or an
    /// executor of the batch was being passed over.
    pub adoptions_abandoned: u64,
    /// Result shares sent to replicas that did not run a batch.
    pub result_shares_sent: u64,
    /// States installed by state transfer.
    pub state_transfers: u64,
    /// Own checkpoints whose digest differed from the stable quorum's.
    pub checkpoint_divergences: u64,
    /// Client requests whose signatures this replica checked (on arrival,
    /// in a batch to propose, in a pre-prepare), and the distinct
    /// signatures that took: requests a client bundled share one.
    pub requests_checked: u64,
    /// See `requests_checked`.
    pub request_signatures_checked: u64,
    /// Replica signatures checked in a batch ahead of their messages
    /// ([`Input::ReceiveMany`]); they count in
    /// [`SignatureCounts::checked`] too.
    pub signatures_batched: u64,
    /// Such batches that failed (a bad signature among them), after which
    /// their messages were checked one by one.
    pub signature_batches_failed: u64,
}

impl Stats {
    /// Total refusals.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    /// Refusals for one reason.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected.get(&reason).copied().unwrap_or(0)
    }
}

/// Protocol signatures made and checked, see [`Replica::signature_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignatureCounts {
    /// Signatures made: one per signed message, one per reply tree.
    pub made: u64,
    /// Signatures checked.
    pub checked: u64,
}

/// The live counters behind [`SignatureCounts`].
#[derive(Debug, Default)]
struct Signatures {
    made: Cell<u64>,
    checked: Cell<u64>,
}

impl Signatures {
    fn made_one(&self) {
        self.made.set(self.made.get() + 1);
    }
    fn checked_one(&self) {
        self.checked.set(self.checked.get() + 1);
    }
}

/// Why a replica could not be created.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplicaError {
    /// The id is not in the cluster.
    #[error("replica id {0} is not in the cluster configuration; use an id from 0..n")]
    UnknownId(ReplicaId),
    /// The signing key is not the one the configuration lists for this id.
    #[error("the signing key does not match the public key configured for replica {0}; use that replica's key file")]
    KeyMismatch(ReplicaId),
    /// Parameters that cannot work.
    #[error("invalid parameters: {0}")]
    BadParams(&'static str),
}

/// One sequence number's progress in the current view.
#[derive(Clone, Debug, Default)]
struct Slot {
    pre_prepare: Option<PrePrepareMsg>,
    prepares: BTreeMap<ReplicaId, Signed<Prepare>>,
    commits: BTreeMap<ReplicaId, Signed<Commit>>,
    prepared: bool,
    committed: bool,
    /// When the pre-prepare was accepted (driver clock).
    accepted_us: u64,
}

impl Slot {
    fn digest(&self) -> Option<Digest> {
        self.pre_prepare.as_ref().map(|p| p.header.payload.digest)
    }
}

/// A request waiting in the primary's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Queued {
    request: SignedRequest,
    /// Whether its signature was already checked (on arrival, when the
    /// primary was idle, or as a backup before a view change made it
    /// primary); a busy primary defers the check to the batch cut.
    checked: bool,
}

/// The batch handed to the application (or waiting for results to adopt)
/// and not yet answered.
#[derive(Clone, Debug)]
struct Executing {
    seq: Seq,
    digest: Digest,
    hlc: Hlc,
    requests: Vec<Request>,
    snapshot_wanted: bool,
    /// Under partial execution, the replicas meant to run the batch.
    executors: Option<Vec<ReplicaId>>,
    phase: Phase,
}

/// Where the batch being executed is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not handed out: waiting, since this time, for f + 1 matching
    /// results from the replicas that run it.
    Waiting { since_us: u64 },
    /// Handed to the application to run.
    Running,
    /// Handed to the application with adopted results.
    Adopted,
}

/// A PBFT replica. See the module documentation for the driving contract.
#[derive(Debug)]
pub struct Replica {
    cluster: Cluster,
    id: ReplicaId,
    key: SigningKey,
    params: Params,
    now_us: u64,

    view: View,
    view_active: bool,
    /// View changes attempted since the last installed view (backoff).
    view_change_attempts: u32,
    view_change_deadline_us: Option<u64>,
    own_view_change: Option<Signed<ViewChange>>,
    view_changes: BTreeMap<View, BTreeMap<ReplicaId, Signed<ViewChange>>>,
    last_new_view: Option<Signed<NewView>>,

    log: BTreeMap<Seq, Slot>,
    /// Highest-view prepared certificate per sequence, kept across views.
    prepared_certs: BTreeMap<Seq, PreparedCert>,

    /// Low watermark: the last stable checkpoint.
    low: Seq,
    stable: Option<StateTransfer>,
    checkpoint_votes: BTreeMap<Seq, BTreeMap<ReplicaId, Signed<Checkpoint>>>,
    own_checkpoints: BTreeMap<Seq, CheckpointState>,

    last_executed: Seq,
    last_executed_hlc: Hlc,
    executing: Option<Executing>,
    client_table: BTreeMap<ClientId, ClientEntry>,
    /// Result shares from replicas that ran batches this replica has not
    /// executed yet (partial execution); the first from each sender counts.
    shares: BTreeMap<Seq, BTreeMap<ReplicaId, SharedResults>>,
    /// Replicas passed over as executors until the given time (their
    /// results did not come in time).
    suspects: BTreeMap<ReplicaId, u64>,

    /// Highest stamp seen or given; the primary stamps after it.
    last_hlc: Hlc,
    /// Primary: next sequence to assign.
    next_seq: Seq,
    /// Primary: requests waiting for a batch.
    queue: VecDeque<Queued>,
    queue_since_us: u64,
    /// Primary: latest timestamp queued or proposed per client.
    proposed: BTreeMap<ClientId, u64>,
    /// Backup: requests forwarded to the primary and not yet executed.
    waiting: BTreeMap<ClientId, SignedRequest>,

    /// Parsed client keys (parsing costs as much as a verification).
    client_keys: BTreeMap<[u8; 32], Option<ed25519_dalek::VerifyingKey>>,

    next_status_us: u64,
    /// When this replica last answered a STATUS from a replica ahead of it.
    last_pull_us: u64,
    /// When this replica last served state or relayed messages to a peer.
    served_us: BTreeMap<ReplicaId, u64>,
    stats: Stats,
    /// Protocol signatures made and checked (counted where `&self` is all
    /// a check has, as in the nested proofs of a view change).
    signatures: Signatures,
    /// The signer and signature of the message being handled, when a batch
    /// of [`Input::ReceiveMany`] checked it already.
    preverified: Option<(ReplicaId, Sig)>,
    /// Replicas that sent a bad signature: their messages are checked one
    /// by one, so that they cannot make every batch fail and be redone. A
    /// forger naming another replica as the sender puts that one here too
    /// (a frame's sender is what it claims): the most it gains is that
    /// replica's votes checked one by one, as without batches. Like the
    /// counters, this is not protocol state: it decides how signatures
    /// are checked, never what passes.
    unbatched: BTreeSet<ReplicaId>,
    out: Vec<Output>,
}

impl Replica {
    /// A fresh replica at view 0, sequence 0, with the empty initial state.
    pub fn new(
        cluster: Cluster,
        id: ReplicaId,
        key: SigningKey,
        params: Params,
    ) -> Result<Replica, ReplicaError> {
        let configured = cluster.key(id).ok_or(ReplicaError::UnknownId(id))?;
        if *configured != key.verifying_key() {
            return Err(ReplicaError::KeyMismatch(id));
        }
        if params.checkpoint_interval == 0 {
            return Err(ReplicaError::BadParams(
                "checkpoint_interval must be at least 1",
            ));
        }
        if params.watermark_window < 2 * params.checkpoint_interval
            || params.watermark_window % params.checkpoint_interval != 0
        {
            return Err(ReplicaError::BadParams(
                "watermark_window must be a multiple of checkpoint_interval and at least twice it",
            ));
        }
        if params.batch_bytes_max < params.operation_bytes_max + 128
            || params.batch_bytes_max >= params.message_bytes_max
        {
            return Err(ReplicaError::BadParams(
                "batch_bytes_max must hold one largest operation and stay below message_bytes_max",
            ));
        }
        if params.batch_requests_max == 0 || params.batches_in_flight_max == 0 {
            return Err(ReplicaError::BadParams(
                "batch_requests_max and batches_in_flight_max must be at least 1",
            ));
        }
        Ok(Replica {
            cluster,
            id,
            key,
            params,
            now_us: 0,
            view: 0,
            view_active: true,
            view_change_attempts: 0,
            view_change_deadline_us: None,
            own_view_change: None,
            view_changes: BTreeMap::new(),
            last_new_view: None,
            log: BTreeMap::new(),
            prepared_certs: BTreeMap::new(),
            low: 0,
            stable: None,
            checkpoint_votes: BTreeMap::new(),
            own_checkpoints: BTreeMap::new(),
            last_executed: 0,
            last_executed_hlc: Hlc::default(),
            executing: None,
            client_table: BTreeMap::new(),
            shares: BTreeMap::new(),
            suspects: BTreeMap::new(),
            last_hlc: Hlc::default(),
            next_seq: 1,
            queue: VecDeque::new(),
            queue_since_us: 0,
            proposed: BTreeMap::new(),
            waiting: BTreeMap::new(),
            client_keys: BTreeMap::new(),
            next_status_us: 0,
            last_pull_us: 0,
            served_us: BTreeMap::new(),
            stats: Stats::default(),
            signatures: Signatures::default(),
            preverified: None,
            unbatched: BTreeSet::new(),
            out: Vec::new(),
        })
    }

    /// Rebuilds a replica from its persisted records (in the order they were
    /// written). The returned outputs restore the application's state and
    /// re-execute the committed batches after the stable checkpoint; the
    /// driver handles them like any step's outputs.
    pub fn recover(
        cluster: Cluster,
        id: ReplicaId,
        key: SigningKey,
        params: Params,
        records: &[Record],
    ) -> Result<(Replica, Vec<Output>), ReplicaError> {
        let mut r = Replica::new(cluster, id, key, params)?;
        for record in records {
            r.replay(record);
        }
        r.out.push(Output::RestoreState {
            seq: r.low,
            snapshot: r.stable.as_ref().map(|s| s.state.snapshot.clone()),
        });
        if r.is_primary() && r.view_active {
            r.next_seq = r
                .log
                .keys()
                .next_back()
                .copied()
                .unwrap_or(r.low)
                .max(r.low)
                + 1;
        }
        r.try_execute();
        let out = std::mem::take(&mut r.out);
        Ok((r, out))
    }

    fn replay(&mut self, record: &Record) {
        match record {
            Record::View { view, active } => {
                if *view > self.view {
                    self.log.clear();
                }
                self.view = *view;
                self.view_active = *active;
            }
            Record::NewView(nv) => {
                if nv.payload.view > self.view || !self.view_active {
                    self.log.clear();
                }
                self.view = nv.payload.view;
                self.view_active = true;
                self.last_new_view = Some((**nv).clone());
            }
            Record::Stable(st) => {
                let Some(seq) = st.proof.first().map(|c| c.payload.seq) else {
                    return;
                };
                if seq > self.low {
                    self.install_stable((**st).clone(), true);
                }
            }
            Record::PrePrepare(m) => {
                let h = m.header.payload;
                if h.seq <= self.low || h.view != self.view {
                    return;
                }
                self.note_hlc(m.batch.hlc);
                let slot = Slot {
                    pre_prepare: Some(m.clone()),
                    ..Slot::default()
                };
                self.log.insert(h.seq, slot);
            }
            Record::Prepared(cert) => {
                let h = cert.pre_prepare.header.payload;
                if h.seq <= self.low {
                    return;
                }
                self.keep_cert(cert.clone());
                if let Some(slot) = self.log.get_mut(&h.seq) {
                    if slot.digest() == Some(h.digest) && h.view == self.view {
                        slot.prepared = true;
                        for p in &cert.prepares {
                            slot.prepares.insert(p.from, p.clone());
                        }
                    }
                }
            }
            Record::Committed { view, seq, digest } => {
                if let Some(slot) = self.log.get_mut(seq) {
                    if slot.digest() == Some(*digest) && *view == self.view && slot.prepared {
                        slot.committed = true;
                    }
                }
            }
        }
    }

    /// Feeds one input; returns what it caused, in order.
    pub fn step(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Receive(bytes) => {
                if let Some(message) = self.decode(&bytes) {
                    self.on_message(message);
                }
            }
            Input::ReceiveMany(frames) => self.on_frames(&frames),
            Input::Tick { now_us } => self.on_tick(now_us),
            Input::Executed {
                seq,
                results,
                snapshot,
            } => self.on_executed(seq, results, snapshot),
        }
        std::mem::take(&mut self.out)
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }
    /// Current view (the target view during a view change).
    pub fn view(&self) -> View {
        self.view
    }
    /// Whether the current view is installed.
    pub fn view_active(&self) -> bool {
        self.view_active
    }
    /// Whether this replica is the primary of its current view.
    pub fn is_primary(&self) -> bool {
        self.cluster.primary(self.view) == self.id
    }
    /// Last executed sequence number.
    pub fn last_executed(&self) -> Seq {
        self.last_executed
    }
    /// Last stable checkpoint (the low watermark).
    pub fn stable_seq(&self) -> Seq {
        self.low
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Protocol signatures (of replicas: pre-prepares, votes, replies,
    /// result shares, checkpoints, view changes) this replica made and
    /// checked since it started. Client request signatures are counted in
    /// [`Stats::request_signatures_checked`].
    pub fn signature_counts(&self) -> SignatureCounts {
        SignatureCounts {
            made: self.signatures.made.get(),
            checked: self.signatures.checked.get(),
        }
    }
    /// The client table row for `client`, if it ever executed a request.
    pub fn client_entry(&self, client: &ClientId) -> Option<&ClientEntry> {
        self.client_table.get(client)
    }
    /// A one-line description of the replica's progress, for logs and
    /// failure reports.
    pub fn describe(&self) -> String {
        let slots: Vec<String> = self
            .log
            .iter()
            .map(|(seq, s)| {
                let state = match (s.pre_prepare.is_some(), s.prepared, s.committed) {
                    (_, _, true) => "C",
                    (_, true, _) => "P",
                    (true, _, _) => "pp",
                    _ => "-",
                };
                format!("{seq}:{state}/{}p{}c", s.prepares.len(), s.commits.len())
            })
            .collect();
        format!(
            "view {}{} low {} executed {}{} next_seq {} waiting {} queue {} vc_deadline {:?} vcs {:?} log [{}]",
            self.view,
            if self.view_active { "" } else { " (changing)" },
            self.low,
            self.last_executed,
            if self.executing.is_some() { " (executing)" } else { "" },
            self.next_seq,
            self.waiting.len(),
            self.queue.len(),
            self.view_change_deadline_us,
            self.view_changes.iter().map(|(v, m)| (*v, m.keys().copied().collect::<Vec<_>>())).collect::<Vec<_>>(),
            slots.join(" ")
        )
    }

    /// The earliest time at which a tick would do something, so the driver
    /// can sleep until then (it may tick more often).
    pub fn next_deadline_us(&self) -> u64 {
        let mut t = self.next_status_us;
        if let Some(d) = self.view_change_deadline_us {
            t = t.min(d);
        }
        if !self.queue.is_empty() {
            t = t.min(
                self.queue_since_us
                    .saturating_add(self.params.batch_delay_us),
            );
        }
        if let Some(d) = self.adopt_deadline_us() {
            t = t.min(d);
        }
        t
    }

    /// When a replica waiting for results to adopt runs the batch itself.
    fn adopt_deadline_us(&self) -> Option<u64> {
        match self.executing.as_ref()?.phase {
            Phase::Waiting { since_us } => {
                Some(since_us.saturating_add(self.params.adopt_timeout_us))
            }
            _ => None,
        }
    }

    /// Everything that is protocol state (not counters or caches), for tests
    /// that check a refused input changed nothing.
    #[cfg(test)]
    fn fingerprint(&self) -> String {
        format!(
            "{:?}",
            (
                (
                    self.now_us,
                    self.view,
                    self.view_active,
                    self.view_change_attempts
                ),
                (
                    self.view_change_deadline_us,
                    &self.own_view_change,
                    &self.view_changes
                ),
                (
                    &self.last_new_view,
                    &self.prepared_certs,
                    self.low,
                    &self.stable
                ),
                (
                    &self.checkpoint_votes,
                    &self.own_checkpoints,
                    self.last_executed
                ),
                (
                    self.last_executed_hlc,
                    &self.executing,
                    &self.client_table,
                    self.last_hlc
                ),
                (
                    self.next_seq,
                    &self.queue,
                    self.queue_since_us,
                    &self.proposed,
                    &self.waiting
                ),
                (format!("{:?}", self.log), self.next_status_us, &self.shares),
            )
        )
    }

    // ----- small helpers -------------------------------------------------

    fn reject(&mut self, reason: Reject) {
        *self.stats.rejected.entry(reason).or_insert(0) += 1;
        self.out.push(Output::Rejected(reason));
    }

    fn send(&mut self, to: Target, message: Message) {
        self.out.push(Output::Send { to, message });
    }

    fn persist(&mut self, record: Record) {
        self.out.push(Output::Persist(record));
    }

    fn sign<T: Payload>(&self, payload: T) -> Signed<T> {
        self.signatures.made_one();
        Signed::sign(self.id, payload, &self.key)
    }

    /// Signs one root over `replies` and sends each to its client.
    fn send_replies(&mut self, replies: Vec<Reply>) {
        if replies.is_empty() {
            return;
        }
        self.signatures.made_one();
        for r in crate::message::certify_replies(self.id, replies, &self.key) {
            self.send(Target::Client(r.reply.client), Message::Reply(r));
        }
    }

    /// Checks signer membership and signature, counting a refusal. The
    /// message being handled may have been checked in a batch already
    /// ([`Replica::check_ahead`]): its signer and signature match then.
    fn verified<T: Payload>(&mut self, s: &Signed<T>) -> bool {
        if self
            .preverified
            .take_if(|(from, sig)| *from == s.from && *sig == s.signature)
            .is_some()
        {
            return true;
        }
        match self.cluster.key(s.from) {
            None => {
                self.reject(Reject::UnknownSender);
                false
            }
            Some(key) => {
                self.signatures.checked_one();
                if s.verify(key) {
                    true
                } else {
                    self.unbatched.insert(s.from);
                    self.reject(Reject::BadSignature);
                    false
                }
            }
        }
    }

    /// Signature check without counting a refusal (for nested proofs).
    fn signature_ok<T: Payload>(&self, s: &Signed<T>) -> bool {
        self.cluster.key(s.from).is_some_and(|k| {
            self.signatures.checked_one();
            s.verify(k)
        })
    }

    fn in_window(&self, seq: Seq) -> bool {
        seq > self.low && seq <= self.low + self.params.watermark_window
    }

    fn high(&self) -> Seq {
        self.low + self.params.watermark_window
    }

    fn note_hlc(&mut self, hlc: Hlc) {
        self.last_hlc = self.last_hlc.max(hlc);
    }

    /// Refuses a normal-case message not for the installed current view.
    fn normal_case_view_ok(&mut self, view: View) -> bool {
        if view < self.view {
            self.reject(Reject::OldView);
            false
        } else if view > self.view {
            self.reject(Reject::FutureView);
            false
        } else if !self.view_active {
            self.reject(Reject::ViewChanging);
            false
        } else {
            true
        }
    }

    fn view_change_timeout_us(&self) -> u64 {
        let shift = self.view_change_attempts.min(20);
        self.params
            .view_change_timeout_us
            .saturating_mul(1u64 << shift)
            .min(self.params.view_change_timeout_max_us)
    }

    // ----- input dispatch -----------------------------------------------

    fn decode(&mut self, bytes: &[u8]) -> Option<Message> {
        if bytes.len() > self.params.message_bytes_max {
            self.reject(Reject::Oversized);
            return None;
        }
        let message = Message::decode(bytes);
        if message.is_none() {
            self.reject(Reject::Malformed);
        }
        message
    }

    /// Frames that arrived together: decoded, the replica signatures their
    /// handlers would check checked as one batch, then each handled in
    /// order as if it came alone.
    fn on_frames(&mut self, frames: &[Vec<u8>]) {
        let messages: Vec<Option<Message>> = frames.iter().map(|f| self.decode(f)).collect();
        let checked = self.check_ahead(&messages);
        for (message, checked) in messages.into_iter().zip(checked) {
            let Some(message) = message else { continue };
            self.preverified = checked;
            self.on_message(message);
            self.preverified = None;
        }
    }

    /// Checks as one batch the signatures of `messages` that their
    /// handlers would check now; returns, per message, the signer and
    /// signature that passed. What a handler would skip unchecked (a vote
    /// a slot no longer needs, a late result share) stays out, judged on
    /// the state before the first of them is handled: a vote that becomes
    /// needless on the way costs its share of the batch, no more.
    fn check_ahead(&mut self, messages: &[Option<Message>]) -> Vec<Option<(ReplicaId, Sig)>> {
        let mut checked = vec![None; messages.len()];
        let mut items = Vec::new();
        let mut at = Vec::new();
        // Votes picked per (phase, seq): no more than would complete it.
        let mut picked: BTreeMap<(bool, Seq), usize> = BTreeMap::new();
        for (i, message) in messages.iter().enumerate() {
            let Some(message) = message else { continue };
            let signed = match message {
                Message::PrePrepare(m) => self
                    .pre_prepare_unseen(&m.header)
                    .then(|| (m.header.from, m.header.signed_bytes(), m.header.signature)),
                Message::Prepare(p) => self
                    .vote_wanted(false, p.from, (p.payload.view, p.payload.seq), &mut picked)
                    .then(|| (p.from, p.signed_bytes(), p.signature)),
                Message::Commit(c) => self
                    .vote_wanted(true, c.from, (c.payload.view, c.payload.seq), &mut picked)
                    .then(|| (c.from, c.signed_bytes(), c.signature)),
                Message::Results(m) => self
                    .share_wanted(&m.share)
                    .then(|| (m.share.from, m.share.signed_bytes(), m.share.signature)),
                Message::Checkpoint(c) => {
                    (c.payload.seq > self.low).then(|| (c.from, c.signed_bytes(), c.signature))
                }
                Message::Status(s) => Some((s.from, s.signed_bytes(), s.signature)),
                _ => None,
            };
            let Some((from, bytes, signature)) = signed else {
                continue;
            };
            if from == self.id || self.unbatched.contains(&from) {
                continue;
            }
            let Some(key) = self.cluster.key(from) else {
                continue;
            };
            items.push((*key, bytes, signature));
            at.push((i, from, signature));
        }
        // One signature alone is checked the usual way, at its handler.
        if items.len() < 2 {
            return checked;
        }
        for _ in &items {
            self.signatures.checked_one();
        }
        if crate::message::verify_batch(&items) {
            self.stats.signatures_batched += items.len() as u64;
            for (i, from, signature) in at {
                checked[i] = Some((from, signature));
            }
        } else {
            self.stats.signature_batches_failed += 1;
        }
        checked
    }

    /// Whether [`Replica::on_pre_prepare`] would check this header's
    /// signature and might accept it: the current primary's, for a slot
    /// of the current view that has none yet.
    fn pre_prepare_unseen(&self, header: &Signed<PrePrepare>) -> bool {
        let h = header.payload;
        self.view_active
            && h.view == self.view
            && header.from == self.cluster.primary(h.view)
            && self.in_window(h.seq)
            && self.log.get(&h.seq).and_then(Slot::digest).is_none()
    }

    /// Whether a vote would be checked and still count: its slot, in the
    /// current view, is short of a quorum of other replicas' votes of its
    /// phase (`commit` or prepare) by more than the votes already picked
    /// for it, and holds none from this sender.
    fn vote_wanted(
        &self,
        commit: bool,
        from: ReplicaId,
        (view, seq): (View, Seq),
        picked: &mut BTreeMap<(bool, Seq), usize>,
    ) -> bool {
        if !self.view_active || view != self.view || !self.in_window(seq) {
            return false;
        }
        // Others' votes that complete the phase: a backup's own prepare
        // counts toward its 2f, the primary sends none; everyone's own
        // commit counts toward 2f + 1.
        let need = if commit {
            self.cluster.quorum() - 1
        } else {
            2 * self.cluster.f() as usize - usize::from(!self.is_primary())
        };
        // Votes from others held, unless the slot is done or holds one
        // from this sender already.
        fn others<V>(
            votes: &BTreeMap<ReplicaId, V>,
            me: ReplicaId,
            from: ReplicaId,
        ) -> Option<usize> {
            (!votes.contains_key(&from)).then(|| votes.len() - usize::from(votes.contains_key(&me)))
        }
        let held = match self.log.get(&seq) {
            None => Some(0),
            Some(slot) if commit => {
                others(&slot.commits, self.id, from).filter(|_| !slot.committed)
            }
            Some(slot) => others(&slot.prepares, self.id, from).filter(|_| !slot.prepared),
        };
        let Some(held) = held else { return false };
        let count = picked.entry((commit, seq)).or_default();
        if held + *count >= need {
            return false;
        }
        *count += 1;
        true
    }

    /// Whether [`Replica::on_results`] would check this share's signature.
    fn share_wanted(&self, share: &Signed<ResultShare>) -> bool {
        let seq = share.payload.seq;
        share.from != self.id
            && seq > self.last_executed
            && seq <= self.last_executed + self.share_window()
            && !self
                .shares
                .get(&seq)
                .is_some_and(|s| s.contains_key(&share.from))
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Request(r) => self.on_request(r),
            Message::PrePrepare(m) => self.on_pre_prepare(m),
            Message::Prepare(p) => self.on_prepare(p),
            Message::Commit(c) => self.on_commit(c),
            Message::Checkpoint(c) => self.on_checkpoint(c),
            Message::ViewChange(v) => self.on_view_change(v),
            Message::NewView(nv) => self.on_new_view(nv),
            Message::Status(s) => self.on_status(s),
            Message::State(st) => self.on_state(*st),
            Message::Reply(_) => self.reject(Reject::NotForReplicas),
            Message::Results(m) => self.on_results(*m),
        }
    }

    fn on_tick(&mut self, now_us: u64) {
        // A clock that steps back is tolerated; protocol time never does.
        self.now_us = self.now_us.max(now_us);
        if !self.view_active && self.own_view_change.is_none() {
            // Recovered in the middle of a view change: say so again.
            self.send_view_change();
        }
        if self
            .view_change_deadline_us
            .is_some_and(|d| self.now_us >= d)
        {
            let next = self.view + 1;
            self.start_view_change(next);
        }
        if self.adopt_deadline_us().is_some_and(|d| self.now_us >= d) {
            self.adoption_timed_out();
        }
        // An idle replica (nothing pending, nothing unfinished) only needs a
        // slow heartbeat: it learns it is behind from checkpoints and client
        // retries, which make it busy again.
        let idle = self.view_active
            && self.executing.is_none()
            && self.waiting.is_empty()
            && self.queue.is_empty()
            && self.log.values().all(|s| s.committed);
        if !idle {
            self.next_status_us = self
                .next_status_us
                .min(self.now_us + self.params.status_interval_us);
        }
        if self.now_us >= self.next_status_us {
            let factor = if idle { IDLE_STATUS_FACTOR } else { 1 };
            self.next_status_us = self.now_us + self.params.status_interval_us * factor;
            self.broadcast_status();
            self.retransmit_own();
        }
        self.try_propose();
    }

    // ----- requests and batching -----------------------------------------

    fn on_request(&mut self, r: SignedRequest) {
        if r.request.operation.len() > self.params.operation_bytes_max || !r.well_formed() {
            self.reject(Reject::BadRequest);
            return;
        }
        // A busy primary checks a request's signature when it cuts the
        // batch, with the batch's others as one batch verification (about
        // half the cost); everyone else, and an idle primary (which cuts a
        // batch at once anyway), checks it now.
        let deferred = self.view_active && self.is_primary() && self.in_flight() > 0;
        if !deferred && !self.request_signature_ok(&r) {
            self.reject(Reject::BadSignature);
            return;
        }
        let client = r.request.client;
        let ts = r.request.timestamp;
        if let Some(entry) = self.client_table.get(&client) {
            if ts < entry.last_timestamp {
                self.reject(Reject::StaleRequest);
                return;
            }
            if ts == entry.last_timestamp {
                if deferred && !r.verify() {
                    self.reject(Reject::BadSignature);
                    return;
                }
                // A retry of the request that ran last: answer it again.
                let reply = Reply {
                    view: self.view,
                    client,
                    timestamp: ts,
                    hlc: entry.hlc,
                    result: entry.result.clone(),
                };
                self.stats.replies_resent += 1;
                self.send_replies(vec![reply]);
                return;
            }
        }
        if self.queue.len() + self.waiting.len() >= self.params.pending_requests_max
            && !self.waiting.contains_key(&client)
        {
            self.reject(Reject::Overloaded);
            return;
        }
        if self.view_active && self.is_primary() {
            if self.proposed.get(&client).is_some_and(|&p| p >= ts) {
                // Already queued or ordered. Unless a different copy of
                // the same (client, timestamp) waits unchecked in the
                // queue: then this one is checked now and, if it is the
                // client's, takes the place of what may be a forgery (so
                // that a forger cannot hold a client's request back).
                let unchecked = self.queue.iter().position(|q| {
                    let c = &q.request;
                    !q.checked && c.request.client == client && c.request.timestamp == ts && *c != r
                });
                if let Some(i) = unchecked {
                    if self.request_signature_ok(&r) {
                        self.queue[i] = Queued {
                            request: r,
                            checked: true,
                        };
                    } else {
                        self.reject(Reject::BadSignature);
                    }
                }
                return;
            }
            self.proposed.insert(client, ts);
            if self.queue.is_empty() {
                self.queue_since_us = self.now_us;
            }
            self.queue.push_back(Queued {
                request: r,
                checked: !deferred,
            });
            // The primary times its own requests too: one it cannot get
            // committed (say, a correct backup left for a later view) makes
            // it join a view change instead of waiting forever.
            if self.view_change_deadline_us.is_none() {
                self.view_change_deadline_us = Some(self.now_us + self.view_change_timeout_us());
            }
            self.try_propose();
        } else {
            let newer = self
                .waiting
                .get(&client)
                .is_none_or(|w| w.request.timestamp <= ts);
            if !newer {
                return;
            }
            if self.view_active {
                let primary = self.cluster.primary(self.view);
                self.send(Target::Replica(primary), Message::Request(r.clone()));
            }
            self.waiting.insert(client, r);
            if self.view_active && self.view_change_deadline_us.is_none() {
                self.view_change_deadline_us = Some(self.now_us + self.view_change_timeout_us());
            }
        }
    }

    /// Checks a batch's client signatures (as one batch) before the primary
    /// proposes it, and removes any that fail, forgetting them as proposed
    /// so the client's genuine request is taken when it comes. A batch of
    /// requests that were all checked on arrival (an idle primary checks at
    /// once) is not checked again. Otherwise the whole batch is checked, as
    /// the backups will check it: batch verification and single
    /// verification can disagree on a signature crafted with a small-order
    /// component, and only the same set in the same order gives the same
    /// answer on the primary and on every backup.
    fn drop_forged(&mut self, queued: Vec<Queued>) -> Vec<SignedRequest> {
        if queued.iter().all(|q| q.checked) {
            return queued.into_iter().map(|q| q.request).collect();
        }
        let requests: Vec<&SignedRequest> = queued.iter().map(|q| &q.request).collect();
        let keys: Option<Vec<_>> = requests
            .iter()
            .map(|r| self.client_key(r.request.client))
            .collect();
        let checked = keys.and_then(|k| crate::message::verify_request_refs(&requests, &k));
        if let Some(signatures) = checked {
            self.stats.requests_checked += requests.len() as u64;
            self.stats.request_signatures_checked += signatures as u64;
            return queued.into_iter().map(|q| q.request).collect();
        }
        let mut forged = Vec::new();
        let mut requests = Vec::with_capacity(queued.len());
        // One check per bundle signature here too, so that one forged
        // request does not cost a check for each request of its bundle.
        let mut roots = BTreeMap::new();
        for q in queued {
            // Only after a failed batch: parse afresh rather than trust a
            // cache that the collection above may have cleared.
            let r = &q.request;
            let root_ok = *roots.entry(r.signed_root()).or_insert_with(|| {
                crate::message::client_key(&r.request.client).is_some_and(|k| r.root_verifies(&k))
            });
            if root_ok && r.path_ok() {
                requests.push(q.request);
            } else {
                forged.push((q.request.request.client, q.request.request.timestamp));
            }
        }
        for (client, ts) in forged {
            self.reject(Reject::BadSignature);
            if self.proposed.get(&client) == Some(&ts) {
                self.proposed.remove(&client);
            }
        }
        if self.proposed.is_empty() && self.waiting.is_empty() && self.queue.is_empty() {
            // Nothing genuine pending: no reason to suspect anyone.
            self.view_change_deadline_us = None;
        }
        requests
    }

    fn in_flight(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.last_executed)
    }

    fn try_propose(&mut self) {
        if !self.view_active || !self.is_primary() {
            return;
        }
        while !self.queue.is_empty() && self.next_seq <= self.high() {
            let in_flight = self.in_flight();
            if in_flight >= self.params.batches_in_flight_max {
                break;
            }
            // Adaptive batching: an idle pipeline gets a batch at once; a
            // busy one accumulates until the batch is full or has waited
            // `batch_delay_us`.
            let full = self.queue.len() >= self.params.batch_requests_max;
            let waited = self.now_us >= self.queue_since_us + self.params.batch_delay_us;
            if in_flight > 0 && !full && !waited {
                break;
            }
            let mut requests = Vec::new();
            let mut bytes = 0usize;
            while requests.len() < self.params.batch_requests_max {
                let Some(q) = self.queue.pop_front() else {
                    break;
                };
                let r = &q.request;
                let size = r.request.operation.len() + 128 + 32 * r.path.len();
                if !requests.is_empty() && bytes + size > self.params.batch_bytes_max {
                    self.queue.push_front(q);
                    break;
                }
                bytes += size;
                let stale = self
                    .client_table
                    .get(&r.request.client)
                    .is_some_and(|e| e.last_timestamp >= r.request.timestamp);
                if !stale {
                    requests.push(q);
                }
            }
            self.queue_since_us = self.now_us;
            let requests = self.drop_forged(requests);
            if requests.is_empty() {
                continue;
            }
            let hlc = self.last_hlc.tick(self.now_us);
            self.last_hlc = hlc;
            let batch = Batch { hlc, requests };
            let seq = self.next_seq;
            self.next_seq += 1;
            let header = self.sign(PrePrepare {
                view: self.view,
                seq,
                digest: batch.digest(),
            });
            self.stats.batches_proposed += 1;
            self.stats.requests_proposed += batch.requests.len() as u64;
            let msg = PrePrepareMsg { header, batch };
            self.persist(Record::PrePrepare(msg.clone()));
            self.log.insert(
                seq,
                Slot {
                    pre_prepare: Some(msg.clone()),
                    accepted_us: self.now_us,
                    ..Slot::default()
                },
            );
            self.send(Target::AllReplicas, Message::PrePrepare(msg));
        }
    }

    /// Checks a batch's size and every client signature in it.
    fn batch_ok(&mut self, batch: &Batch) -> bool {
        if batch.requests.len() > self.params.batch_requests_max
            || batch.requests.iter().any(|r| {
                r.request.operation.len() > self.params.operation_bytes_max || !r.well_formed()
            })
        {
            return false;
        }
        let mut keys = Vec::with_capacity(batch.requests.len());
        for r in &batch.requests {
            match self.client_key(r.request.client) {
                Some(k) => keys.push(k),
                None => return false,
            }
        }
        let requests: Vec<&SignedRequest> = batch.requests.iter().collect();
        let Some(signatures) = crate::message::verify_request_refs(&requests, &keys) else {
            return false;
        };
        self.stats.requests_checked += requests.len() as u64;
        self.stats.request_signatures_checked += signatures as u64;
        true
    }

    fn request_signature_ok(&mut self, r: &SignedRequest) -> bool {
        let ok = self
            .client_key(r.request.client)
            .is_some_and(|k| r.verify_with(&k));
        if ok {
            self.stats.requests_checked += 1;
            self.stats.request_signatures_checked += 1;
        }
        ok
    }

    /// A client's key from its id, parsed once and cached.
    fn client_key(&mut self, client: ClientId) -> Option<ed25519_dalek::VerifyingKey> {
        /// Bound on the cache; past it, it starts over.
        const CLIENT_KEYS_MAX: usize = 65_536;
        match self.client_keys.get(&client.key) {
            Some(k) => *k,
            None => {
                if self.client_keys.len() >= CLIENT_KEYS_MAX {
                    self.client_keys.clear();
                }
                let k = crate::message::client_key(&client);
                self.client_keys.insert(client.key, k);
                k
            }
        }
    }

    // ----- normal case ---------------------------------------------------

    fn on_pre_prepare(&mut self, m: PrePrepareMsg) {
        let h = m.header.payload;
        if m.header.from != self.cluster.primary(h.view) {
            self.reject(Reject::WrongSender);
            return;
        }
        if !self.verified(&m.header) || !self.normal_case_view_ok(h.view) {
            return;
        }
        if !self.in_window(h.seq) {
            self.reject(Reject::OutsideWatermarks);
            return;
        }
        if m.batch.digest() != h.digest {
            self.reject(Reject::DigestMismatch);
            return;
        }
        if let Some(existing) = self.log.get(&h.seq).and_then(Slot::digest) {
            if existing != h.digest {
                self.reject(Reject::Conflicting);
            }
            return;
        }
        if m.header.from == self.id {
            return;
        }
        if !self.batch_ok(&m.batch) {
            self.reject(Reject::BadBatch);
            return;
        }
        let hlc = m.batch.hlc;
        if m.batch == Batch::null() {
            // A null batch (a gap a NEW-VIEW filled, relayed to a replica
            // that missed it) carries no time; execution stamps it.
            self.accept_pre_prepare(m);
            return;
        }
        if hlc.physical_us > self.now_us.saturating_add(self.params.clock_ahead_max_us) {
            self.reject(Reject::HlcAhead);
            return;
        }
        if !self.hlc_fits(h.seq, hlc) {
            self.reject(Reject::HlcBackwards);
            return;
        }
        self.accept_pre_prepare(m);
    }

    /// Whether `hlc` lies strictly between the stamps of the nearest known
    /// batches below and above `seq`.
    fn hlc_fits(&self, seq: Seq, hlc: Hlc) -> bool {
        let below = self
            .log
            .range(..seq)
            .rev()
            .find_map(|(_, s)| s.pre_prepare.as_ref())
            .map(|p| p.batch.hlc)
            .filter(|h| *h != Hlc::default());
        let floor = if seq > self.last_executed {
            below
                .unwrap_or(self.last_executed_hlc)
                .max(self.last_executed_hlc)
        } else {
            Hlc::default()
        };
        let above = self
            .log
            .range(seq + 1..)
            .find_map(|(_, s)| s.pre_prepare.as_ref())
            .map(|p| p.batch.hlc)
            .filter(|h| *h != Hlc::default());
        hlc > floor && above.is_none_or(|a| hlc < a)
    }

    /// Stores a pre-prepare for the current view and answers with PREPARE.
    fn accept_pre_prepare(&mut self, m: PrePrepareMsg) {
        let h = m.header.payload;
        self.note_hlc(m.batch.hlc);
        self.persist(Record::PrePrepare(m.clone()));
        let now_us = self.now_us;
        let slot = self.log.entry(h.seq).or_default();
        slot.pre_prepare = Some(m);
        slot.accepted_us = now_us;
        if !self.is_primary() {
            let prepare = self.sign(Prepare {
                view: h.view,
                seq: h.seq,
                digest: h.digest,
            });
            self.log
                .entry(h.seq)
                .or_default()
                .prepares
                .insert(self.id, prepare.clone());
            self.send(Target::AllReplicas, Message::Prepare(prepare));
        }
        self.check_prepared(h.seq);
    }

    /// Whether a vote for `seq` can be dropped before its signature is
    /// checked (a signature check costs more than the rest of handling a
    /// vote): an exact copy of a vote already held is a retransmission, and
    /// once the slot reached the quorum this vote would add to in the
    /// current view, no vote of that phase changes anything.
    fn vote_needless<T: PartialEq>(
        &self,
        view: View,
        seq: Seq,
        votes: impl Fn(&Slot) -> Option<&T>,
        vote: &T,
        done: impl Fn(&Slot) -> bool,
    ) -> bool {
        self.log
            .get(&seq)
            .is_some_and(|slot| votes(slot) == Some(vote) || (view == self.view && done(slot)))
    }

    fn on_prepare(&mut self, p: Signed<Prepare>) {
        let v = p.payload;
        if self.vote_needless(
            v.view,
            v.seq,
            |s| s.prepares.get(&p.from),
            &p,
            |s| s.prepared,
        ) {
            return;
        }
        if !self.verified(&p) || !self.normal_case_view_ok(v.view) {
            return;
        }
        if p.from == self.cluster.primary(v.view) {
            self.reject(Reject::WrongSender);
            return;
        }
        if !self.in_window(v.seq) {
            self.reject(Reject::OutsideWatermarks);
            return;
        }
        let slot = self.log.entry(v.seq).or_default();
        if let Some(old) = slot.prepares.get(&p.from) {
            if old.payload != v {
                self.reject(Reject::Conflicting);
            }
            return;
        }
        slot.prepares.insert(p.from, p);
        self.check_prepared(v.seq);
    }

    fn check_prepared(&mut self, seq: Seq) {
        let need = 2 * self.cluster.f() as usize;
        let view = self.view;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        if slot.prepared {
            return;
        }
        let Some(pre_prepare) = slot.pre_prepare.clone() else {
            return;
        };
        let digest = pre_prepare.header.payload.digest;
        let matching: Vec<Signed<Prepare>> = slot
            .prepares
            .values()
            .filter(|p| p.payload.view == view && p.payload.digest == digest)
            .take(need)
            .cloned()
            .collect();
        if matching.len() < need {
            return;
        }
        let cert = PreparedCert {
            pre_prepare,
            prepares: matching,
        };
        self.persist(Record::Prepared(cert.clone()));
        self.keep_cert(cert);
        let commit = self.sign(Commit { view, seq, digest });
        let slot = self.log.entry(seq).or_default();
        slot.prepared = true;
        slot.commits.insert(self.id, commit.clone());
        self.send(Target::AllReplicas, Message::Commit(commit));
        self.check_committed(seq);
    }

    fn keep_cert(&mut self, cert: PreparedCert) {
        let h = cert.pre_prepare.header.payload;
        let newer = self
            .prepared_certs
            .get(&h.seq)
            .is_none_or(|c| c.pre_prepare.header.payload.view <= h.view);
        if newer {
            self.prepared_certs.insert(h.seq, cert);
        }
    }

    fn on_commit(&mut self, c: Signed<Commit>) {
        let v = c.payload;
        if self.vote_needless(
            v.view,
            v.seq,
            |s| s.commits.get(&c.from),
            &c,
            |s| s.committed,
        ) {
            return;
        }
        if !self.verified(&c) || !self.normal_case_view_ok(v.view) {
            return;
        }
        if !self.in_window(v.seq) {
            self.reject(Reject::OutsideWatermarks);
            return;
        }
        let slot = self.log.entry(v.seq).or_default();
        if let Some(old) = slot.commits.get(&c.from) {
            if old.payload != v {
                self.reject(Reject::Conflicting);
            }
            return;
        }
        slot.commits.insert(c.from, c);
        self.check_committed(v.seq);
    }

    fn check_committed(&mut self, seq: Seq) {
        let quorum = self.cluster.quorum();
        let view = self.view;
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        if !slot.prepared || slot.committed {
            return;
        }
        let Some(digest) = slot.digest() else { return };
        let count = slot
            .commits
            .values()
            .filter(|c| c.payload.view == view && c.payload.digest == digest)
            .count();
        if count < quorum {
            return;
        }
        slot.committed = true;
        self.persist(Record::Committed { view, seq, digest });
        self.try_execute();
    }

    // ----- execution -----------------------------------------------------

    fn try_execute(&mut self) {
        if self.executing.is_some() {
            return;
        }
        let seq = self.last_executed + 1;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        if !slot.committed {
            return;
        }
        let Some(pp) = slot.pre_prepare.as_ref() else {
            return;
        };
        let digest = pp.header.payload.digest;
        let batch = &pp.batch;
        // Consensus time never goes back, whatever the primary stamped.
        let hlc = batch.hlc.max(self.last_executed_hlc.successor());
        let mut seen: BTreeMap<ClientId, u64> = BTreeMap::new();
        let mut requests = Vec::new();
        for r in &batch.requests {
            let c = r.request.client;
            let last = seen
                .get(&c)
                .copied()
                .or_else(|| self.client_table.get(&c).map(|e| e.last_timestamp));
            if last.is_none_or(|l| r.request.timestamp > l) {
                seen.insert(c, r.request.timestamp);
                requests.push(r.request.clone());
            }
        }
        let snapshot_wanted = seq % self.params.checkpoint_interval == 0;
        let executors = self.partial_executors(seq, requests.len());
        let adopts = executors.as_ref().is_some_and(|e| !e.contains(&self.id));
        let waits = adopts && executors.iter().flatten().all(|r| !self.suspected(*r));
        if adopts && !waits {
            self.stats.adoptions_abandoned += 1;
        }
        self.executing = Some(Executing {
            seq,
            digest,
            hlc,
            requests,
            snapshot_wanted,
            executors,
            phase: Phase::Waiting {
                since_us: self.now_us,
            },
        });
        if waits {
            self.try_adopt();
        } else {
            self.hand_out(None);
        }
    }

    /// The replicas meant to run a batch of `requests` requests at `seq`,
    /// when partial execution applies to it.
    fn partial_executors(&self, seq: Seq, requests: usize) -> Option<Vec<ReplicaId>> {
        let min = self.params.partial_execution_min;
        if min == 0 || requests < min {
            return None;
        }
        self.cluster.executors(self.view, seq)
    }

    fn suspected(&self, replica: ReplicaId) -> bool {
        self.suspects
            .get(&replica)
            .is_some_and(|&t| self.now_us < t)
    }

    /// Hands the executing batch to the application: to run, or with the
    /// results it adopts.
    fn hand_out(&mut self, adopted: Option<Vec<Vec<u8>>>) {
        let Some(ex) = self.executing.as_mut() else {
            return;
        };
        ex.phase = if adopted.is_some() {
            Phase::Adopted
        } else {
            Phase::Running
        };
        let execute = Execute {
            seq: ex.seq,
            digest: ex.digest,
            hlc: ex.hlc,
            requests: ex.requests.clone(),
            snapshot_wanted: ex.snapshot_wanted,
            adopted,
        };
        self.out.push(Output::Execute(execute));
    }

    /// Adopts the waiting batch's results once f + 1 replicas signed the
    /// same ones; runs the batch at once when they cannot agree (every
    /// replica meant to run it answered, or a share says its results were
    /// too large to send).
    fn try_adopt(&mut self) {
        let Some(ex) = self.executing.as_ref() else {
            return;
        };
        if !matches!(ex.phase, Phase::Waiting { .. }) {
            return;
        }
        let Some(shares) = self.shares.get(&ex.seq) else {
            return;
        };
        let needed = self.cluster.f() as usize + 1;
        let for_batch = || {
            shares
                .values()
                .filter(|s| s.share.payload.batch == ex.digest)
        };
        let mut counts: BTreeMap<Digest, usize> = BTreeMap::new();
        for s in for_batch() {
            *counts.entry(s.share.payload.results).or_insert(0) += 1;
        }
        let agreed = counts
            .iter()
            .find(|(_, &c)| c >= needed)
            .and_then(|(d, _)| {
                for_batch()
                    .filter(|s| s.share.payload.results == *d)
                    .find_map(|s| s.results.as_ref())
            })
            .filter(|r| r.len() == ex.requests.len())
            .map(|r| r.iter().map(|b| b.0.clone()).collect::<Vec<_>>());
        if let Some(results) = agreed {
            self.hand_out(Some(results));
            return;
        }
        let too_large = for_batch().any(|s| s.results.is_none());
        let all_answered = ex.executors.as_ref().is_some_and(|e| {
            e.iter().all(|r| {
                shares
                    .get(r)
                    .is_some_and(|s| s.share.payload.batch == ex.digest)
            })
        });
        if too_large || all_answered {
            self.stats.adoptions_abandoned += 1;
            self.hand_out(None);
        }
    }

    /// The wait for results ran out: the replicas meant to run the batch
    /// that did not send theirs are passed over for a while, and this
    /// replica runs the batch itself.
    fn adoption_timed_out(&mut self) {
        let Some(ex) = self.executing.as_ref() else {
            return;
        };
        let shares = self.shares.get(&ex.seq);
        let silent: Vec<ReplicaId> = ex
            .executors
            .iter()
            .flatten()
            .copied()
            .filter(|r| {
                shares
                    .and_then(|s| s.get(r))
                    .is_none_or(|s| s.share.payload.batch != ex.digest)
            })
            .collect();
        let until = self
            .now_us
            .saturating_add(self.params.adopt_timeout_us.saturating_mul(SUSPECT_FACTOR));
        for r in silent {
            self.suspects.insert(r, until);
        }
        self.stats.adoptions_abandoned += 1;
        self.hand_out(None);
    }

    /// A result share from a replica that ran a batch.
    fn on_results(&mut self, m: SharedResults) {
        let seq = m.share.payload.seq;
        let from = m.share.from;
        if from == self.id || seq <= self.last_executed {
            // Late (this replica ran or adopted the batch already) or
            // echoed: nothing to do.
            return;
        }
        if seq > self.last_executed + self.share_window() {
            self.reject(Reject::OutsideWatermarks);
            return;
        }
        if self.shares.get(&seq).is_some_and(|s| s.contains_key(&from)) {
            return;
        }
        if !self.verified(&m.share) {
            return;
        }
        if let Some(results) = &m.results {
            if results_digest(results.iter().map(|r| r.0.as_slice())) != m.share.payload.results {
                self.reject(Reject::DigestMismatch);
                return;
            }
        }
        self.shares.entry(seq).or_default().insert(from, m);
        self.try_adopt();
    }

    /// How far past its last executed batch a replica keeps result shares
    /// (a bound on what a peer can make it hold; one further behind runs
    /// its batches itself).
    fn share_window(&self) -> Seq {
        4 * self.params.batches_in_flight_max
    }

    /// Signs this replica's results of a batch it was meant to run and
    /// sends them to the replicas that were not.
    fn share_results(
        &mut self,
        seq: Seq,
        batch: Digest,
        executors: &[ReplicaId],
        results: &[Vec<u8>],
    ) {
        let digest = results_digest(results.iter().map(|r| r.as_slice()));
        let size: usize = results.iter().map(|r| r.len() + 10).sum();
        // Room for the signature and framing; results that do not fit are
        // not sent, and the receivers run the batch themselves.
        let fits = size + 1024 < self.params.message_bytes_max;
        let message = Message::Results(Box::new(SharedResults {
            share: self.sign(ResultShare {
                seq,
                batch,
                results: digest,
            }),
            results: fits.then(|| results.iter().map(|r| ResultBytes(r.clone())).collect()),
        }));
        let others: Vec<ReplicaId> = (0..self.cluster.n() as ReplicaId)
            .filter(|r| *r != self.id && !executors.contains(r))
            .collect();
        for r in others {
            self.stats.result_shares_sent += 1;
            self.send(Target::Replica(r), message.clone());
        }
    }

    fn on_executed(&mut self, seq: Seq, results: Vec<Vec<u8>>, snapshot: Option<Vec<u8>>) {
        let Some(ex) = self.executing.as_ref() else {
            self.reject(Reject::UnexpectedExecution);
            return;
        };
        if ex.seq != seq
            || ex.requests.len() != results.len()
            || ex.snapshot_wanted != snapshot.is_some()
            || matches!(ex.phase, Phase::Waiting { .. })
        {
            self.reject(Reject::UnexpectedExecution);
            return;
        }
        let Some(ex) = self.executing.take() else {
            return;
        };
        let adopted = ex.phase == Phase::Adopted;
        if !adopted {
            if let Some(executors) = ex.executors.as_ref().filter(|e| e.contains(&self.id)) {
                self.share_results(seq, ex.digest, executors, &results);
            }
        }
        let mut replies = Vec::with_capacity(results.len());
        for (request, result) in ex.requests.iter().zip(results) {
            let entry = ClientEntry {
                client: request.client,
                last_timestamp: request.timestamp,
                hlc: ex.hlc,
                result: result.clone(),
            };
            self.client_table.insert(request.client, entry);
            if !adopted {
                replies.push(Reply {
                    view: self.view,
                    client: request.client,
                    timestamp: request.timestamp,
                    hlc: ex.hlc,
                    result,
                });
            }
        }
        if adopted {
            // The replicas that ran the batch answered its clients; a
            // client that missed their replies retries and gets this
            // replica's from the client table.
            self.stats.batches_adopted += 1;
            self.stats.requests_adopted += ex.requests.len() as u64;
        } else {
            self.send_replies(replies);
        }
        self.shares = self.shares.split_off(&(seq + 1));
        self.stats.batches_executed += 1;
        self.stats.requests_executed += ex.requests.len() as u64;
        self.last_executed = seq;
        self.last_executed_hlc = ex.hlc;
        self.note_hlc(ex.hlc);
        self.forget_answered();
        if let Some(snapshot) = snapshot {
            let state = CheckpointState {
                hlc: ex.hlc,
                snapshot,
                client_table: self.client_table.values().cloned().collect(),
            };
            let digest = state.digest(seq);
            self.own_checkpoints.insert(seq, state);
            let c = self.sign(Checkpoint {
                seq,
                state_digest: digest,
            });
            self.checkpoint_votes
                .entry(seq)
                .or_default()
                .insert(self.id, c.clone());
            self.send(Target::AllReplicas, Message::Checkpoint(c));
            self.check_stable(seq);
        }
        self.try_execute();
        self.try_propose();
    }

    /// Drops waiting and proposed entries the client table now answers,
    /// and restarts the view-change timer for what is still pending.
    fn forget_answered(&mut self) {
        let table = &self.client_table;
        let done = |c: &ClientId, ts: u64| table.get(c).is_some_and(|e| e.last_timestamp >= ts);
        let before = self.waiting.len() + self.proposed.len();
        self.waiting.retain(|c, r| !done(c, r.request.timestamp));
        self.proposed.retain(|c, ts| !done(c, *ts));
        let pending = self.waiting.len() + self.proposed.len();
        if self.view_active {
            if pending == 0 {
                self.view_change_deadline_us = None;
            } else if pending < before {
                self.view_change_deadline_us = Some(self.now_us + self.view_change_timeout_us());
            }
        }
    }

    // ----- checkpoints and state transfer ------------------------------

    fn on_checkpoint(&mut self, c: Signed<Checkpoint>) {
        if !self.verified(&c) {
            return;
        }
        let seq = c.payload.seq;
        if seq % self.params.checkpoint_interval != 0 || seq == 0 {
            self.reject(Reject::BadCheckpoint);
            return;
        }
        if seq <= self.low {
            return;
        }
        // Far-future checkpoints are not stored (bounded memory); a replica
        // that far behind catches up through STATUS and state transfer.
        if seq > self.low + 4 * self.params.watermark_window {
            self.reject(Reject::OutsideWatermarks);
            return;
        }
        let votes = self.checkpoint_votes.entry(seq).or_default();
        if votes.contains_key(&c.from) {
            return;
        }
        votes.insert(c.from, c);
        self.check_stable(seq);
    }

    /// Makes `seq` stable when 2f + 1 checkpoints agree and the replica has
    /// that state; asks for state transfer when it cannot get there alone.
    fn check_stable(&mut self, seq: Seq) {
        if seq <= self.low {
            return;
        }
        let quorum = self.cluster.quorum();
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_digest: BTreeMap<Digest, Vec<Signed<Checkpoint>>> = BTreeMap::new();
        for v in votes.values() {
            by_digest
                .entry(v.payload.state_digest)
                .or_default()
                .push(v.clone());
        }
        let Some((digest, proof)) = by_digest.into_iter().find(|(_, v)| v.len() >= quorum) else {
            return;
        };
        let proof: Vec<_> = proof.into_iter().take(quorum).collect();
        match self.own_checkpoints.get(&seq) {
            Some(state) if state.digest(seq) == digest => {
                let st = StateTransfer {
                    proof,
                    state: state.clone(),
                };
                self.persist(Record::Stable(Box::new(st.clone())));
                self.install_stable(st, false);
                self.try_propose();
            }
            Some(_) => {
                // This replica's state differs from the quorum's: fetch the
                // quorum's state rather than continue from a wrong one.
                self.stats.checkpoint_divergences += 1;
                self.broadcast_status();
            }
            None => {
                let reachable = (self.last_executed + 1..=seq)
                    .all(|s| self.log.get(&s).is_some_and(|sl| sl.committed));
                if !reachable {
                    self.broadcast_status();
                }
            }
        }
    }

    /// Moves the low watermark to a stable checkpoint and collects garbage.
    /// With `restore`, the state also replaces the executed state (state
    /// transfer and recovery).
    fn install_stable(&mut self, st: StateTransfer, restore: bool) {
        let seq = st.proof[0].payload.seq;
        assert!(seq > self.low, "stable checkpoints only move forward");
        self.low = seq;
        if restore {
            self.client_table = st
                .state
                .client_table
                .iter()
                .map(|e| (e.client, e.clone()))
                .collect();
            self.last_executed = seq;
            self.last_executed_hlc = st.state.hlc;
            self.executing = None;
            self.shares = self.shares.split_off(&(seq + 1));
            self.note_hlc(st.state.hlc);
            self.forget_answered();
        }
        self.stats.checkpoints_stable += 1;
        self.stable = Some(st);
        self.log = self.log.split_off(&(seq + 1));
        self.prepared_certs = self.prepared_certs.split_off(&(seq + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(seq + 1));
        self.own_checkpoints = self.own_checkpoints.split_off(&(seq + 1));
        if self.next_seq <= seq {
            self.next_seq = seq + 1;
        }
    }

    /// Whether `proof` is 2f + 1 valid checkpoint signatures from distinct
    /// replicas on one (seq, digest); returns that pair.
    fn checkpoint_proof(&self, proof: &[Signed<Checkpoint>]) -> Option<(Seq, Digest)> {
        let first = proof.first()?.payload;
        let mut signers = BTreeSet::new();
        for c in proof {
            if c.payload != first || !signers.insert(c.from) || !self.signature_ok(c) {
                return None;
            }
        }
        (signers.len() >= self.cluster.quorum()).then_some((first.seq, first.state_digest))
    }

    fn on_state(&mut self, st: StateTransfer) {
        let Some((seq, digest)) = self.checkpoint_proof(&st.proof) else {
            self.reject(Reject::BadCheckpointProof);
            return;
        };
        if seq <= self.last_executed || seq <= self.low {
            // Already there; an unsolicited or duplicate answer.
            return;
        }
        if st.state.digest(seq) != digest {
            self.reject(Reject::BadState);
            return;
        }
        self.stats.state_transfers += 1;
        self.persist(Record::Stable(Box::new(st.clone())));
        self.out.push(Output::RestoreState {
            seq,
            snapshot: Some(st.state.snapshot.clone()),
        });
        self.install_stable(st, true);
        self.try_execute();
        self.try_propose();
    }

    // ----- status and retransmission -------------------------------------

    fn broadcast_status(&mut self) {
        let s = self.sign(Status {
            view: self.view,
            view_active: self.view_active,
            stable_seq: self.low,
            last_executed: self.last_executed,
        });
        self.send(Target::AllReplicas, Message::Status(s));
    }

    /// Re-sends this replica's own messages for sequences not yet
    /// committed, so lost messages cannot stall a view forever.
    fn retransmit_own(&mut self) {
        if !self.view_active {
            if let Some(vc) = self.own_view_change.clone() {
                self.send(Target::AllReplicas, Message::ViewChange(vc));
            }
            return;
        }
        // Only slots that have waited a whole status interval: under load
        // there are always a few batches in flight, and re-sending their
        // votes every interval would make every peer check them again.
        let stale = |s: &&Slot| s.accepted_us + self.params.status_interval_us <= self.now_us;
        let mut msgs = Vec::new();
        for slot in self.log.values().filter(|s| !s.committed).filter(stale) {
            let Some(pp) = slot.pre_prepare.as_ref() else {
                continue;
            };
            if pp.header.from == self.id {
                msgs.push(Message::PrePrepare(pp.clone()));
            }
            if let Some(p) = slot.prepares.get(&self.id) {
                msgs.push(Message::Prepare(p.clone()));
            }
            if let Some(c) = slot.commits.get(&self.id) {
                msgs.push(Message::Commit(c.clone()));
            }
        }
        for m in msgs {
            self.send(Target::AllReplicas, m);
        }
    }

    fn on_status(&mut self, s: Signed<Status>) {
        if !self.verified(&s) {
            return;
        }
        let to = Target::Replica(s.from);
        let st = s.payload;
        if s.from == self.id {
            return;
        }
        let ahead = st.view > self.view
            || st.last_executed > self.last_executed
            || st.stable_seq > self.low;
        if ahead && self.now_us >= self.last_pull_us + self.params.status_interval_us {
            // The sender knows more: answer with this replica's status so
            // that it relays what is missing, at most once per interval.
            self.last_pull_us = self.now_us;
            let mine = self.sign(Status {
                view: self.view,
                view_active: self.view_active,
                stable_seq: self.low,
                last_executed: self.last_executed,
            });
            self.send(to, Message::Status(mine));
        }
        if st.view < self.view || (st.view == self.view && !st.view_active) {
            if self.view_active {
                if let Some(nv) = self.last_new_view.clone() {
                    if nv.payload.view == self.view {
                        self.send(to, Message::NewView(nv));
                    }
                }
            } else if st.view == self.view {
                if let Some(vc) = self.own_view_change.clone() {
                    self.send(to, Message::ViewChange(vc));
                }
            }
        }
        // What follows can be large; serve each peer at most once per half
        // interval so a Byzantine peer's STATUS flood cannot amplify.
        let served = self.served_us.get(&s.from).copied();
        if served.is_some_and(|t| self.now_us < t + self.params.status_interval_us / 2) {
            return;
        }
        self.served_us.insert(s.from, self.now_us);
        if st.last_executed < self.low {
            if let Some(stable) = self.stable.clone() {
                self.send(to, Message::State(Box::new(stable)));
            }
        }
        if st.view == self.view && self.view_active && st.view_active {
            // Relay the signed messages that let the sender commit what it
            // lacks; every one is verified by the sender on its own.
            let from = st.last_executed.max(self.low);
            let mut msgs = Vec::new();
            for (_, slot) in self.log.range(from.saturating_add(1)..) {
                let Some(pp) = slot.pre_prepare.as_ref() else {
                    continue;
                };
                if !slot.committed {
                    break;
                }
                msgs.push(Message::PrePrepare(pp.clone()));
                msgs.extend(slot.prepares.values().cloned().map(Message::Prepare));
                msgs.extend(slot.commits.values().cloned().map(Message::Commit));
            }
            for m in msgs {
                self.send(to, m);
            }
        }
    }

    // ----- view change -----------------------------------------------------

    fn start_view_change(&mut self, new_view: View) {
        assert!(new_view > self.view, "views only grow");
        self.view = new_view;
        self.view_active = false;
        self.view_change_attempts = self.view_change_attempts.saturating_add(1);
        self.view_change_deadline_us = None;
        self.stats.view_changes_started += 1;
        self.queue.clear();
        self.proposed.clear();
        self.persist(Record::View {
            view: new_view,
            active: false,
        });
        self.send_view_change();
        self.view_changes = self.view_changes.split_off(&new_view);
        self.arm_view_change_timer();
        self.check_new_view();
    }

    /// During a view change, the timer that moves on to the next view runs
    /// only once 2f + 1 replicas want this view or a later one (as in
    /// Castro & Liskov):
    /// a replica alone in a view change waits instead of running ahead of
    /// the others forever.
    fn arm_view_change_timer(&mut self) {
        if self.view_active || self.view_change_deadline_us.is_some() {
            return;
        }
        // Replicas that want this view or a later one: if 2f + 1 do, this
        // replica is not alone, and a lost VIEW-CHANGE must not stall it.
        let wanting: BTreeSet<ReplicaId> = self
            .view_changes
            .range(self.view..)
            .flat_map(|(_, m)| m.keys().copied())
            .collect();
        if wanting.len() >= self.cluster.quorum() {
            self.view_change_deadline_us = Some(self.now_us + self.view_change_timeout_us());
        }
    }

    fn send_view_change(&mut self) {
        let vc = self.sign(ViewChange {
            new_view: self.view,
            stable_seq: self.low,
            checkpoint_proof: self
                .stable
                .as_ref()
                .map(|s| s.proof.clone())
                .unwrap_or_default(),
            prepared: self
                .prepared_certs
                .range(self.low + 1..)
                .map(|(_, c)| c.clone())
                .collect(),
        });
        self.view_changes
            .entry(self.view)
            .or_default()
            .insert(self.id, vc.clone());
        self.own_view_change = Some(vc.clone());
        self.send(Target::AllReplicas, Message::ViewChange(vc));
    }

    /// Checks a prepared certificate's pre-prepare, digest and 2f prepares.
    fn cert_ok(&self, cert: &PreparedCert, stable_seq: Seq, below_view: View) -> bool {
        let h = cert.pre_prepare.header.payload;
        let need = 2 * self.cluster.f() as usize;
        if h.view >= below_view
            || h.seq <= stable_seq
            || h.seq > stable_seq + self.params.watermark_window
            || cert.pre_prepare.header.from != self.cluster.primary(h.view)
            || cert.pre_prepare.batch.digest() != h.digest
            || !self.signature_ok(&cert.pre_prepare.header)
        {
            return false;
        }
        let mut signers = BTreeSet::new();
        for p in &cert.prepares {
            if p.payload
                != (Prepare {
                    view: h.view,
                    seq: h.seq,
                    digest: h.digest,
                })
                || p.from == cert.pre_prepare.header.from
                || !signers.insert(p.from)
                || !self.signature_ok(p)
            {
                return false;
            }
        }
        signers.len() >= need
    }

    /// Validates a view-change's signature, checkpoint proof and
    /// certificates.
    fn view_change_ok(&self, vc: &Signed<ViewChange>) -> bool {
        let v = &vc.payload;
        if !self.signature_ok(vc) {
            return false;
        }
        if v.stable_seq == 0 {
            if !v.checkpoint_proof.is_empty() {
                return false;
            }
        } else {
            match self.checkpoint_proof(&v.checkpoint_proof) {
                Some((seq, _)) if seq == v.stable_seq => {}
                _ => return false,
            }
        }
        let mut seqs = BTreeSet::new();
        v.prepared.iter().all(|c| {
            seqs.insert(c.pre_prepare.header.payload.seq)
                && self.cert_ok(c, v.stable_seq, v.new_view)
        })
    }

    fn on_view_change(&mut self, vc: Signed<ViewChange>) {
        let v = vc.payload.new_view;
        if self.cluster.key(vc.from).is_none() {
            self.reject(Reject::UnknownSender);
            return;
        }
        if v < self.view || (v == self.view && self.view_active) {
            if v == self.view && self.view_active {
                // A straggler: it needs the NEW-VIEW, not a refusal.
                if let Some(nv) = self.last_new_view.clone() {
                    self.send(Target::Replica(vc.from), Message::NewView(nv));
                }
                return;
            }
            self.reject(Reject::OldView);
            return;
        }
        if self
            .view_changes
            .get(&v)
            .is_some_and(|m| m.contains_key(&vc.from))
        {
            return;
        }
        if !self.signature_ok(&vc) {
            self.reject(Reject::BadSignature);
            return;
        }
        if !self.view_change_ok(&vc) {
            self.reject(Reject::BadViewChange);
            return;
        }
        // Keep one view-change per sender for views above ours (bounded).
        for (view, votes) in self.view_changes.iter_mut() {
            if *view != v && *view > self.view {
                votes.remove(&vc.from);
            }
        }
        self.view_changes.entry(v).or_default().insert(vc.from, vc);
        // Join a view change that f + 1 replicas want: at least one of them
        // is correct, so the current primary is suspect.
        let mut wanted: BTreeMap<ReplicaId, View> = BTreeMap::new();
        for (view, votes) in self.view_changes.range(self.view + 1..) {
            for from in votes.keys().filter(|f| **f != self.id) {
                wanted.entry(*from).or_insert(*view);
            }
        }
        if wanted.len() > self.cluster.f() as usize {
            if let Some(target) = wanted.values().copied().min() {
                self.start_view_change(target);
                return;
            }
        }
        self.arm_view_change_timer();
        self.check_new_view();
    }

    /// The pre-prepares a NEW-VIEW for `view` must carry, given its
    /// view-changes: the highest stable checkpoint, then for each sequence
    /// up to the highest prepared one the batch from the highest-view
    /// certificate, or the null batch.
    fn new_view_batches(vcs: &[Signed<ViewChange>]) -> (Seq, Vec<(Seq, Batch)>) {
        let min_s = vcs.iter().map(|v| v.payload.stable_seq).max().unwrap_or(0);
        let mut best: BTreeMap<Seq, &PreparedCert> = BTreeMap::new();
        for vc in vcs {
            for c in &vc.payload.prepared {
                let h = c.pre_prepare.header.payload;
                if h.seq <= min_s {
                    continue;
                }
                let better = best
                    .get(&h.seq)
                    .is_none_or(|b| b.pre_prepare.header.payload.view < h.view);
                if better {
                    best.insert(h.seq, c);
                }
            }
        }
        let max_s = best.keys().next_back().copied().unwrap_or(min_s);
        let batches = (min_s + 1..=max_s)
            .map(|s| {
                (
                    s,
                    best.get(&s)
                        .map_or_else(Batch::null, |c| c.pre_prepare.batch.clone()),
                )
            })
            .collect();
        (min_s, batches)
    }

    fn check_new_view(&mut self) {
        let v = self.view;
        if self.view_active || self.cluster.primary(v) != self.id {
            return;
        }
        let Some(votes) = self.view_changes.get(&v) else {
            return;
        };
        if votes.len() < self.cluster.quorum() || !votes.contains_key(&self.id) {
            return;
        }
        // Its own view-change first: its stable checkpoint and certificates
        // are then part of the new view's starting point.
        let mut vcs: Vec<_> = votes.get(&self.id).cloned().into_iter().collect();
        vcs.extend(
            votes
                .iter()
                .filter(|(from, _)| **from != self.id)
                .map(|(_, vc)| vc.clone())
                .take(self.cluster.quorum() - 1),
        );
        let (_, batches) = Self::new_view_batches(&vcs);
        let pre_prepares = batches
            .into_iter()
            .map(|(seq, batch)| PrePrepareMsg {
                header: self.sign(PrePrepare {
                    view: v,
                    seq,
                    digest: batch.digest(),
                }),
                batch,
            })
            .collect();
        let nv = self.sign(NewView {
            view: v,
            view_changes: vcs,
            pre_prepares,
        });
        self.send(Target::AllReplicas, Message::NewView(nv.clone()));
        self.install_new_view(nv);
    }

    fn on_new_view(&mut self, nv: Signed<NewView>) {
        let v = nv.payload.view;
        if nv.from != self.cluster.primary(v) {
            self.reject(Reject::WrongSender);
            return;
        }
        if !self.verified(&nv) {
            return;
        }
        if v < self.view {
            self.reject(Reject::OldView);
            return;
        }
        if v == self.view && self.view_active {
            return;
        }
        if !self.new_view_ok(&nv.payload) {
            self.reject(Reject::BadNewView);
            return;
        }
        self.install_new_view(nv);
    }

    fn new_view_ok(&self, nv: &NewView) -> bool {
        let mut senders = BTreeSet::new();
        for vc in &nv.view_changes {
            if vc.payload.new_view != nv.view
                || !senders.insert(vc.from)
                || !self.view_change_ok(vc)
            {
                return false;
            }
        }
        if senders.len() < self.cluster.quorum() {
            return false;
        }
        let (_, expected) = Self::new_view_batches(&nv.view_changes);
        if expected.len() != nv.pre_prepares.len() {
            return false;
        }
        let primary = self.cluster.primary(nv.view);
        expected
            .iter()
            .zip(&nv.pre_prepares)
            .all(|((seq, batch), pp)| {
                let h = pp.header.payload;
                h.view == nv.view
                    && h.seq == *seq
                    && pp.header.from == primary
                    && pp.batch == *batch
                    && h.digest == batch.digest()
                    && self.signature_ok(&pp.header)
            })
    }

    fn install_new_view(&mut self, nv: Signed<NewView>) {
        let v = nv.payload.view;
        assert!(v >= self.view, "views only grow");
        self.view = v;
        self.view_active = true;
        self.view_change_attempts = 0;
        self.own_view_change = None;
        self.stats.new_views_installed += 1;
        self.persist(Record::NewView(Box::new(nv.clone())));
        self.view_changes = self.view_changes.split_off(&(v + 1));
        // Adopt the highest stable checkpoint the quorum proved.
        let (min_s, _) = Self::new_view_batches(&nv.payload.view_changes);
        if min_s > self.low {
            let proof = nv
                .payload
                .view_changes
                .iter()
                .find(|vc| vc.payload.stable_seq == min_s)
                .map(|vc| vc.payload.checkpoint_proof.clone())
                .unwrap_or_default();
            for c in proof {
                self.checkpoint_votes
                    .entry(min_s)
                    .or_default()
                    .insert(c.from, c);
            }
            self.check_stable(min_s);
        }
        // Normal-case state of old views is void; certificates remain.
        for slot in self.log.values_mut() {
            *slot = Slot::default();
        }
        let mut last = self.low;
        for pp in nv.payload.pre_prepares.clone() {
            let seq = pp.header.payload.seq;
            last = last.max(seq);
            if self.in_window(seq) {
                self.accept_pre_prepare(pp);
            }
        }
        self.log.retain(|_, s| s.pre_prepare.is_some());
        self.last_new_view = Some(nv);
        if self.is_primary() {
            self.next_seq = last.max(self.low) + 1;
            self.proposed.clear();
            for slot in self.log.values() {
                if let Some(pp) = slot.pre_prepare.as_ref() {
                    for r in &pp.batch.requests {
                        let ts = self.proposed.entry(r.request.client).or_insert(0);
                        *ts = (*ts).max(r.request.timestamp);
                    }
                }
            }
            // Requests this replica was waiting on as a backup are now its
            // own to order.
            let waiting = std::mem::take(&mut self.waiting);
            for r in waiting.into_values() {
                if self
                    .proposed
                    .get(&r.request.client)
                    .is_none_or(|&p| p < r.request.timestamp)
                {
                    self.proposed.insert(r.request.client, r.request.timestamp);
                    if self.queue.is_empty() {
                        self.queue_since_us = self.now_us;
                    }
                    // Checked when it arrived here as a backup.
                    self.queue.push_back(Queued {
                        request: r,
                        checked: true,
                    });
                }
            }
            self.view_change_deadline_us =
                (!self.proposed.is_empty()).then(|| self.now_us + self.view_change_timeout_us());
        } else {
            let primary = self.cluster.primary(v);
            let waiting: Vec<_> = self.waiting.values().cloned().collect();
            for r in waiting {
                self.send(Target::Replica(primary), Message::Request(r));
            }
            self.view_change_deadline_us =
                (!self.waiting.is_empty()).then(|| self.now_us + self.view_change_timeout_us());
        }
        self.try_execute();
        self.try_propose();
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
