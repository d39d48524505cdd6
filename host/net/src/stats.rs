//! Counters shared by a node's or a client's tasks, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A snapshot of a node's or a client's counters.
///
/// Frame and byte counts cover payloads (the 4-byte length prefixes and the
/// hellos are not counted). `frames_out` counts frames handed to the socket's
/// write buffer; a frame lost with a broken connection has been counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received and delivered to the event channel.
    pub frames_in: u64,
    /// Frames written to a connection.
    pub frames_out: u64,
    /// Payload bytes of `frames_in`.
    pub bytes_in: u64,
    /// Payload bytes of `frames_out`.
    pub bytes_out: u64,
    /// Frames dropped because the outbound queue of their link or
    /// connection was full (the sender never waits).
    pub dropped_queue_full: u64,
    /// Frames refused for exceeding `Limits::frame_bytes_max`: incoming
    /// ones (the connection is then closed) and outgoing ones (dropped).
    pub oversized: u64,
    /// Connections refused because their hello was garbage, of another
    /// protocol version, or named a replica that is not a configured peer.
    pub bad_hello: u64,
    /// Outbound connections established (first connections and reconnections).
    pub connects: u64,
    /// The part of `connects` that re-established a link after it was lost.
    pub reconnects: u64,
    /// Connections open now, inbound (from accept on) and outbound.
    pub conns_open: u64,
    /// Inbound connections accepted.
    pub accepted: u64,
    /// Inbound connections refused because `conns_open` reached the limit.
    pub refused_conns: u64,
    /// Frames sent to a replica id this node or client does not know.
    pub unknown_peer: u64,
    /// Connections that ended with an error other than an oversized frame
    /// (truncated frame, reset, unexpected bytes, hello timeout).
    pub conn_errors: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub oversized: AtomicU64,
    pub bad_hello: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub conns_open: AtomicU64,
    pub accepted: AtomicU64,
    pub refused_conns: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub conn_errors: AtomicU64,
}

/// Adds one; counters are statistics, so relaxed ordering is enough.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            dropped_queue_full: get(&self.dropped_queue_full),
            oversized: get(&self.oversized),
            bad_hello: get(&self.bad_hello),
            connects: get(&self.connects),
            reconnects: get(&self.reconnects),
            conns_open: get(&self.conns_open),
            accepted: get(&self.accepted),
            refused_conns: get(&self.refused_conns),
            unknown_peer: get(&self.unknown_peer),
            conn_errors: get(&self.conn_errors),
        }
    }
}

/// Counts one open connection for as long as it lives, including when its
/// task is dropped at shutdown.
#[derive(Debug)]
pub(crate) struct OpenConn(Arc<Counters>);

impl OpenConn {
    pub fn new(counters: &Arc<Counters>) -> OpenConn {
        bump(&counters.conns_open);
        OpenConn(counters.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.conns_open.fetch_sub(1, Ordering::Relaxed);
    }
}
