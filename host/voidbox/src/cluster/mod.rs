//! A Voidbox cluster: n = 3f + 1 replicas that order invocations with PBFT
//! (`voidbox-pbft`), run each committed batch on their own host, and sign
//! the results; a client accepts a result once f + 1 replicas signed the
//! same one.
//!
//! - [`config`]: `cluster.toml`, keys, `voidbox cluster init`.
//! - [`wire`]: the frames besides PBFT's own messages, and the operation
//!   and result formats.
//! - [`app`]: what a replica does with a committed batch (capability check
//!   against the consensus time and replicated use counters, then the run).
//! - [`results`]: the journal of results a replica serves to peers that
//!   catch up.
//! - [`log`]: the protocol log in redb, synced before dependent sends.
//! - [`node`]: the replica process, the thin tokio driver around the core.
//! - [`client`]: the client handle, and offline receipt verification.
//! - [`embed`]: [`Invoker`], one embedding API over a host and a cluster.
//!
//! The PBFT core decides; this module only moves bytes, persists records
//! and runs batches. Nothing here may decide differently on two correct
//! replicas from what they agreed on: the wall clock enters only through
//! the core's ticks, and the application sees only the batch and its
//! consensus time.

pub mod app;
pub mod client;
pub mod config;
pub mod embed;
pub mod log;
pub mod node;
pub mod results;
pub mod wire;

pub use client::{ClusterClient, LoadReport, SignedReceipt, RETRY_ENV};
pub use config::{
    init_cluster, init_cluster_with, ClusterFile, InitOptions, CLUSTER_FILE, PARTIAL_EXECUTION_MIN,
};
pub use embed::Invoker;
pub use node::run_replica;
