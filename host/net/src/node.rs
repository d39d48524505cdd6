//! A replica's endpoint: a listener for peers and clients, and one outbound
//! link per peer replica.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{BufReader, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::frame::{read_frame, FrameError};
use crate::hello::{Hello, HELLO_BYTES_MAX};
use crate::link::{self, pump, stopped, ConnEnd, Inbound, LinkSpec, OutLink};
use crate::stats::{add, bump, Counters, OpenConn, Stats};
use crate::{Limits, NetError};

/// A dialer that has not sent its hello by then is disconnected.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Inbound connections a node keeps open at once; more are refused.
pub const INBOUND_CONNECTIONS_MAX: u64 = 4096;
/// Pending connections the kernel queues for `accept`.
const LISTEN_BACKLOG: u32 = 1024;

/// Who sent a frame to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// A configured peer replica, by id, on its outbound link to us.
    Replica(u32),
    /// A client connection accepted by this node.
    Conn(ConnId),
}

/// A client connection accepted by a node; unique for the node's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What a node hands to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame arrived.
    Frame {
        /// Its sender.
        from: Peer,
        /// Its payload.
        bytes: Vec<u8>,
    },
    /// A client connection ended; `send_conn` to it now returns false.
    Closed(ConnId),
}

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This replica's id; peers know it by this id.
    pub id: u32,
    /// Where to listen for peers and clients (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The other replicas: id and address.
    pub peers: Vec<(u32, SocketAddr)>,
    /// Sizes of frames and queues.
    pub limits: Limits,
}

/// What the node's tasks share.
#[derive(Debug)]
struct Core {
    id: u32,
    limits: Limits,
    peers: BTreeMap<u32, SocketAddr>,
    conns: Mutex<HashMap<ConnId, mpsc::Sender<Arc<[u8]>>>>,
    next_conn: AtomicU64,
    inbound_open: AtomicU64,
    counters: Arc<Counters>,
}

impl Core {
    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, mpsc::Sender<Arc<[u8]>>>> {
        // No code panics while holding this lock; should one ever, the table
        // is still consistent (single inserts and removes), so keep using it.
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct NodeInner {
    core: Arc<Core>,
    links: BTreeMap<u32, OutLink>,
    stop: watch::Sender<bool>,
    local_addr: SocketAddr,
}

/// Sends frames from a running node; cheap to clone.
///
/// The node runs until [`NodeHandle::shutdown`] is called or the last handle
/// is dropped.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<NodeInner>,
}

impl fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.inner.core.id)
            .field("local_addr", &self.inner.local_addr)
            .field("peers", &self.inner.core.peers)
            .finish_non_exhaustive()
    }
}

/// Starts listening and dialing peers on the current tokio runtime.
///
/// Frames from peers and clients arrive on the returned receiver, which
/// holds at most `limits.events` of them: when it is full, the connections'
/// readers wait (and TCP pushes back on the senders) rather than drop.
pub async fn start_node(
    config: NodeConfig,
) -> Result<(NodeHandle, mpsc::Receiver<Event>), NetError> {
    config.limits.check()?;
    let mut peers = BTreeMap::new();
    for &(id, addr) in &config.peers {
        if id == config.id {
            return Err(NetError::SelfInPeers { id });
        }
        if peers.insert(id, addr).is_some() {
            return Err(NetError::DuplicatePeer { id });
        }
    }
    let listener = bind(config.listen).map_err(|source| NetError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| NetError::Bind {
        addr: config.listen,
        source,
    })?;
    let limits = config.limits;
    let counters = Arc::new(Counters::default());
    let core = Arc::new(Core {
        id: config.id,
        limits,
        peers: peers.clone(),
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        inbound_open: AtomicU64::new(0),
        counters: counters.clone(),
    });
    let (stop, _) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(limits.events);

    tokio::spawn(accept_loop(
        core.clone(),
        listener,
        events_tx,
        stop.subscribe(),
    ));
    let mut links = BTreeMap::new();
    for (&peer, &addr) in &peers {
        let (tx, rx) = mpsc::channel(limits.queue_frames);
        let up = Arc::new(AtomicBool::new(false));
        links.insert(
            peer,
            OutLink {
                queue: tx,
                up: up.clone(),
            },
        );
        let spec = LinkSpec {
            replica: peer,
            addr,
            hello: Hello::Replica(config.id),
            frame_bytes_max: limits.frame_bytes_max,
            counters: counters.clone(),
            up,
        };
        tokio::spawn(link::run_link(spec, rx, Inbound::Silent, stop.subscribe()));
    }
    tracing::info!(id = config.id, %local_addr, peers = peers.len(), "node listening");
    let handle = NodeHandle {
        inner: Arc::new(NodeInner {
            core,
            links,
            stop,
            local_addr,
        }),
    };
    Ok((handle, events_rx))
}

/// Binds with SO_REUSEADDR so a restarted node gets its port back while old
/// connections linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl NodeHandle {
    /// The address the node listens on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's replica id.
    pub fn id(&self) -> u32 {
        self.inner.core.id
    }

    /// Queues a frame for a peer replica. Never waits: when the link's queue
    /// is full, or the frame is larger than the limit, or the id is not a
    /// peer, the frame is dropped, counted and logged (PBFT retransmits).
    pub fn send_replica(&self, id: u32, frame: Arc<[u8]>) {
        let counters = &self.inner.core.counters;
        let Some(link) = self.inner.links.get(&id) else {
            bump(&counters.unknown_peer);
            tracing::warn!(
                node = self.inner.core.id,
                replica = id,
                "frame for replica {id}, which is not a configured peer; dropped"
            );
            return;
        };
        if self.refuse_oversized(&frame, Peer::Replica(id)) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = link.queue.try_send(frame) {
            bump(&counters.dropped_queue_full);
            tracing::debug!(replica = id, "link queue full; frame dropped");
        }
    }

    /// Queues a frame for every peer replica (never for this node itself).
    pub fn broadcast(&self, frame: Arc<[u8]>) {
        for &id in self.inner.links.keys() {
            self.send_replica(id, frame.clone());
        }
    }

    /// Queues a frame on a client connection. Returns false if the
    /// connection is gone; a full queue drops and counts the frame but
    /// still returns true, since the client is there.
    pub fn send_conn(&self, conn: ConnId, frame: Arc<[u8]>) -> bool {
        let Some(queue) = self.inner.core.conns().get(&conn).cloned() else {
            return false;
        };
        if self.refuse_oversized(&frame, Peer::Conn(conn)) {
            return true;
        }
        match queue.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.inner.core.counters.dropped_queue_full);
                tracing::debug!(?conn, "connection queue full; frame dropped");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Frames waiting in the link to a peer (None if `id` is not a peer).
    pub fn queued(&self, id: u32) -> Option<usize> {
        let queue = &self.inner.links.get(&id)?.queue;
        Some(queue.max_capacity() - queue.capacity())
    }

    /// Whether the link to a peer is connected now (None if `id` is not a
    /// peer). A frame sent while it is not waits in the queue.
    pub fn peer_connected(&self, id: u32) -> Option<bool> {
        Some(self.inner.links.get(&id)?.up.load(Ordering::Relaxed))
    }

    /// The client connections open now.
    pub fn conns(&self) -> Vec<ConnId> {
        let mut conns: Vec<ConnId> = self.inner.core.conns().keys().copied().collect();
        conns.sort();
        conns
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.core.counters.snapshot()
    }

    /// Stops the listener, the links and every connection. Returns at once;
    /// await [`NodeHandle::closed`] to know the port is free again.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Resolves when every task of the node has ended (after `shutdown`).
    pub async fn closed(&self) {
        self.inner.stop.closed().await;
    }

    fn refuse_oversized(&self, frame: &[u8], to: Peer) -> bool {
        let max = self.inner.core.limits.frame_bytes_max;
        if frame.len() <= max {
            return false;
        }
        bump(&self.inner.core.counters.oversized);
        tracing::warn!(node = self.inner.core.id, peer = ?to, len = frame.len(), max,
            "outgoing frame exceeds frame_bytes_max; dropped");
        true
    }
}

async fn accept_loop(
    core: Arc<Core>,
    listener: TcpListener,
    events: mpsc::Sender<Event>,
    stop: watch::Receiver<bool>,
) {
    let mut stop_here = stop.clone();
    let serve = async {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    if core.inbound_open.load(Ordering::Relaxed) >= INBOUND_CONNECTIONS_MAX {
                        bump(&core.counters.refused_conns);
                        tracing::warn!(node = core.id, %remote,
                            "refused connection: {INBOUND_CONNECTIONS_MAX} inbound connections \
                             are open already");
                        continue;
                    }
                    bump(&core.counters.accepted);
                    let slot = InboundSlot::new(&core);
                    let open = OpenConn::new(&core.counters);
                    let conn_stop = stop.clone();
                    let task = serve_inbound(core.clone(), stream, remote, events.clone());
                    tokio::spawn(async move {
                        let mut conn_stop = conn_stop;
                        tokio::select! {
                            () = stopped(&mut conn_stop) => {}
                            () = task => {}
                        }
                        drop((slot, open));
                    });
                }
                Err(error) => {
                    // Usually out of file descriptors; waiting lets some close.
                    tracing::warn!(node = core.id, %error, "accept failed; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::select! {
        () = stopped(&mut stop_here) => {}
        () = serve => {}
    }
    tracing::debug!(node = core.id, "listener stopped");
}

/// Counts one inbound connection against [`INBOUND_CONNECTIONS_MAX`].
struct InboundSlot(Arc<Core>);

impl InboundSlot {
    fn new(core: &Arc<Core>) -> InboundSlot {
        core.inbound_open.fetch_add(1, Ordering::Relaxed);
        InboundSlot(core.clone())
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.0.inbound_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_inbound(
    core: Arc<Core>,
    stream: TcpStream,
    remote: SocketAddr,
    events: mpsc::Sender<Event>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%remote, %error, "cannot set TCP_NODELAY");
    }
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(link::READ_BUFFER_BYTES, rd);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut rd, HELLO_BYTES_MAX))
        .await
    {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => {
            tracing::debug!(node = core.id, %remote, "connection closed before its hello");
            return;
        }
        Ok(Err(FrameError::Oversized { len, .. })) => {
            bump(&core.counters.bad_hello);
            tracing::warn!(node = core.id, %remote, len,
                "refused connection: a hello of {len} bytes (at most {HELLO_BYTES_MAX}); \
                 the dialer does not speak voidbox-net");
            return;
        }
        Ok(Err(error)) => {
            bump(&core.counters.conn_errors);
            tracing::info!(node = core.id, %remote, %error, "connection failed before its hello");
            return;
        }
        Err(_elapsed) => {
            bump(&core.counters.conn_errors);
            tracing::info!(node = core.id, %remote,
                "no hello within {HELLO_TIMEOUT:?}; closing the connection");
            return;
        }
    };
    match Hello::decode(&hello) {
        Err(error) => {
            bump(&core.counters.bad_hello);
            tracing::warn!(node = core.id, %remote, %error, "refused connection: bad hello");
        }
        Ok(Hello::Replica(id)) if !core.peers.contains_key(&id) => {
            bump(&core.counters.bad_hello);
            tracing::warn!(node = core.id, %remote, replica = id,
                "refused connection: its hello names replica {id}, which is not a configured peer");
        }
        Ok(Hello::Replica(id)) => {
            tracing::debug!(node = core.id, %remote, replica = id, "replica connected");
            // Dropping the write half would shut down our side of the
            // connection, which the peer reads as "gone": keep it.
            let _write_half = wr;
            read_frames(&core, &mut rd, Peer::Replica(id), remote, &events).await;
        }
        Ok(Hello::Client) => serve_client(&core, rd, wr, remote, &events).await,
    }
}

async fn serve_client(
    core: &Arc<Core>,
    mut rd: BufReader<OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    remote: SocketAddr,
    events: &mpsc::Sender<Event>,
) {
    let conn = ConnId(core.next_conn.fetch_add(1, Ordering::Relaxed));
    let (tx, mut rx) = mpsc::channel(core.limits.queue_frames);
    core.conns().insert(conn, tx);
    let registered = Registered {
        core: core.clone(),
        conn,
    };
    tracing::debug!(node = core.id, %remote, ?conn, "client connected");
    let mut wr = BufWriter::with_capacity(link::WRITE_BUFFER_BYTES, wr);
    tokio::select! {
        () = read_frames(core, &mut rd, Peer::Conn(conn), remote, events) => {}
        end = pump(&mut wr, &mut rx, &core.counters) => {
            if let ConnEnd::Lost(reason) = end {
                tracing::info!(node = core.id, %remote, ?conn, %reason, "client connection lost");
            }
        }
    }
    // Unregister before announcing, so that after `Closed` arrives
    // `send_conn` answers false.
    drop(registered);
    let _ = events.send(Event::Closed(conn)).await;
}

/// Keeps a client connection in the table while it lives, including when
/// its task is dropped at shutdown.
struct Registered {
    core: Arc<Core>,
    conn: ConnId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.core.conns().remove(&self.conn);
    }
}

/// Delivers frames from one connection until it ends.
async fn read_frames(
    core: &Core,
    rd: &mut BufReader<OwnedReadHalf>,
    from: Peer,
    remote: SocketAddr,
    events: &mpsc::Sender<Event>,
) {
    loop {
        match read_frame(rd, core.limits.frame_bytes_max).await {
            Ok(Some(bytes)) => {
                bump(&core.counters.frames_in);
                add(&core.counters.bytes_in, bytes.len());
                // Backpressure: a full event channel stops this reader, and
                // TCP then stops the sender. Nobody listening means the node
                // is going away.
                if events.send(Event::Frame { from, bytes }).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                tracing::debug!(node = core.id, peer = ?from, %remote, "connection closed");
                return;
            }
            Err(FrameError::Oversized { len, max }) => {
                bump(&core.counters.oversized);
                tracing::warn!(node = core.id, peer = ?from, %remote, len, max,
                    "oversized frame; closing the connection");
                return;
            }
            Err(error) => {
                bump(&core.counters.conn_errors);
                tracing::info!(node = core.id, peer = ?from, %remote, %error, "connection failed");
                return;
            }
        }
    }
}
