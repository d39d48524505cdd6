//! voidbox-pbft: Castro & Liskov PBFT for Voidbox, as a pure state machine.
//!
//! n = 3f + 1 replicas order client requests in batches (pre-prepare,
//! prepare, commit), execute them strictly in sequence order, checkpoint
//! every K sequence numbers, change views when the primary is suspected,
//! transfer state to replicas that fell behind and recover from their own
//! persisted records. Every message is signed with ed25519.
//!
//! The crate knows the protocol and ed25519 only. It must not know tokio,
//! sockets, clocks, disks, randomness or WebAssembly: time arrives in
//! [`Input::Tick`], records to persist and batches to execute leave as
//! [`Output`]s, and the application answers with [`Input::Executed`].
//!
//! # Contents
//!
//! - [`Replica`]: the core; [`Replica::step`] is the whole interface.
//! - [`Client`]: signs requests and accepts a result once f + 1 replicas
//!   signed the same reply.
//! - [`message`]: every message and the canonical encoding that is signed.
//! - [`sim`]: a seeded simulator that runs replicas and clients under
//!   network faults, crashes, clock skew and Byzantine replicas, checking
//!   safety and liveness invariants after every step.
//!
//! # Driving a replica
//!
//! A driver owns one [`Replica`] and loops:
//! 1. feed an [`Input`]: every frame from a peer or a client as
//!    [`Input::Receive`] (the core decodes, bounds and verifies it), or the
//!    frames already queued together as one [`Input::ReceiveMany`] (the
//!    replica signatures among them are then checked as one batch), the
//!    clock as [`Input::Tick`] every millisecond or so (or at
//!    [`Replica::next_deadline_us`]), and the application's answer to each
//!    [`Output::Execute`] as [`Input::Executed`];
//! 2. handle the returned [`Output`]s in order: write every
//!    [`Output::Persist`] record and sync it **before** sending any
//!    [`Output::Send`] of the same step; send [`Target::AllReplicas`] to
//!    every other replica and [`Target::Client`] to the connection the
//!    client's requests come from (its id is `request.client`, a key);
//!    apply [`Output::RestoreState`] and [`Output::Execute`] to the
//!    application in order; log [`Output::Rejected`] (it is also counted in
//!    [`Replica::stats`]).
//!
//! After a restart, [`Replica::recover`] takes the records in the order they
//! were written and returns the outputs that rebuild the application. A
//! record store may keep only the latest [`Record::Stable`], the latest
//! [`Record::View`] or [`Record::NewView`], and the records whose
//! [`Record::seq`] is above the latest stable checkpoint, in their order
//! ([`compact_records`] does exactly that; the simulator uses it).
//!
//! # Known limits
//!
//! - VIEW-CHANGE and NEW-VIEW carry whole batches (not digests with a
//!   separate fetch), so their size grows with `watermark_window` times
//!   `batch_bytes_max`; keep operations small (the host orders digests,
//!   not blobs) or the window short.
//! - State transfer sends the application's snapshot in one message; large
//!   objects (CAS blobs) are the host's to fetch and verify by digest.
//! - The client table keeps one row per client ever seen; admission of
//!   clients (capabilities) is the host's job.
//!
//! # Example
//!
//! ```
//! use voidbox_pbft::{key_from_seed, ClusterConfig, Input, Params, Replica};
//! let keys: Vec<_> = (0..4).map(|i| key_from_seed(7, &format!("replica-{i}"))).collect();
//! let config = ClusterConfig::from_keys(1, &keys);
//! let cluster = config.validate().expect("4 replicas tolerate 1 fault");
//! let mut replica = Replica::new(cluster, 0, keys[0].clone(), Params::default()).unwrap();
//! let outputs = replica.step(Input::Tick { now_us: 1_000 });
//! assert!(!outputs.is_empty()); // a STATUS broadcast
//! ```

pub mod client;
pub mod config;
pub mod message;
pub mod replica;
pub mod sim;

pub use client::{Client, Completed};
pub use config::{Cluster, ClusterConfig, ConfigError, Params, ReplicaInfo};
pub use message::{
    key_from_seed, results_digest, sign_requests, Batch, CertifiedReply, ClientId, Digest, Hlc,
    Message, ReplicaId, Reply, ReplyRoot, Request, RequestRoot, ResultBytes, ResultShare, Seq,
    SharedResults, SignedRequest, VerifiedRoots, View,
};
pub use replica::{
    compact_records, Execute, Input, Output, Record, Reject, Replica, ReplicaError,
    SignatureCounts, Stats, Target,
};
