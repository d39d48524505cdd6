//! A client's links to every replica, with reconnection.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::hello::Hello;
use crate::link::{self, Inbound, LinkSpec, OutLink};
use crate::stats::{bump, Counters, Stats};
use crate::Limits;

struct ClientInner {
    links: BTreeMap<u32, OutLink>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    frame_bytes_max: usize,
}

/// Sends a client's frames to replicas; cheap to clone.
///
/// The links run until [`ClientHandle::shutdown`] is called or the last
/// handle is dropped.
#[derive(Clone)]
pub struct ClientHandle {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandle")
            .field("replicas", &self.inner.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Opens a link to every replica (id, address) on the current tokio runtime.
///
/// Each link dials with backoff, says it is a client, and reconnects when
/// the connection is lost. Replies arrive as `(replica id, frame)` on the
/// receiver, which holds at most `limits.events` of them (the links wait
/// when it is full). A replica id listed twice keeps its first address.
/// Limits of zero are raised to one, since a queue must hold a frame.
pub async fn connect_client(
    replicas: Vec<(u32, SocketAddr)>,
    limits: Limits,
) -> (ClientHandle, mpsc::Receiver<(u32, Vec<u8>)>) {
    let limits = Limits {
        frame_bytes_max: limits.frame_bytes_max.min(u32::MAX as usize),
        queue_frames: limits.queue_frames.max(1),
        events: limits.events.max(1),
    };
    let counters = Arc::new(Counters::default());
    let (stop, _) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(limits.events);
    let mut links = BTreeMap::new();
    for (replica, addr) in replicas {
        if links.contains_key(&replica) {
            tracing::warn!(replica, %addr, "replica listed twice; keeping its first address");
            continue;
        }
        let (tx, rx) = mpsc::channel(limits.queue_frames);
        let up = Arc::new(AtomicBool::new(false));
        links.insert(
            replica,
            OutLink {
                queue: tx,
                up: up.clone(),
            },
        );
        let spec = LinkSpec {
            replica,
            addr,
            hello: Hello::Client,
            frame_bytes_max: limits.frame_bytes_max,
            counters: counters.clone(),
            up,
        };
        tokio::spawn(link::run_link(
            spec,
            rx,
            Inbound::Deliver(events_tx.clone()),
            stop.subscribe(),
        ));
    }
    let handle = ClientHandle {
        inner: Arc::new(ClientInner {
            links,
            counters,
            stop,
            frame_bytes_max: limits.frame_bytes_max,
        }),
    };
    (handle, events_rx)
}

impl ClientHandle {
    /// Queues a frame for one replica. Never waits: a full queue, an
    /// oversized frame or an unknown replica drops the frame and counts it.
    pub fn send(&self, replica: u32, frame: Arc<[u8]>) {
        let counters = &self.inner.counters;
        let Some(link) = self.inner.links.get(&replica) else {
            bump(&counters.unknown_peer);
            tracing::warn!(
                replica,
                "frame for replica {replica}, which this client does not know; dropped"
            );
            return;
        };
        if frame.len() > self.inner.frame_bytes_max {
            bump(&counters.oversized);
            tracing::warn!(
                replica,
                len = frame.len(),
                max = self.inner.frame_bytes_max,
                "outgoing frame exceeds frame_bytes_max; dropped"
            );
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = link.queue.try_send(frame) {
            bump(&counters.dropped_queue_full);
            tracing::debug!(replica, "client link queue full; frame dropped");
        }
    }

    /// Queues a frame for every replica.
    pub fn broadcast(&self, frame: Arc<[u8]>) {
        for &replica in self.inner.links.keys() {
            self.send(replica, frame.clone());
        }
    }

    /// Frames waiting in the link to a replica (None if it is unknown).
    pub fn queued(&self, replica: u32) -> Option<usize> {
        let queue = &self.inner.links.get(&replica)?.queue;
        Some(queue.max_capacity() - queue.capacity())
    }

    /// Whether the link to a replica is connected now (None if it is
    /// unknown). A frame sent while it is not waits in the queue.
    pub fn connected(&self, replica: u32) -> Option<bool> {
        Some(self.inner.links.get(&replica)?.up.load(Ordering::Relaxed))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Closes every link. Returns at once; await [`ClientHandle::closed`]
    /// to know they are gone.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Resolves when every link has ended (after `shutdown`).
    pub async fn closed(&self) {
        self.inner.stop.closed().await;
    }
}
