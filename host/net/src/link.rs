//! Outbound links: dial with backoff, say hello, pump a bounded queue into
//! the socket, and start over when the connection is lost.
//!
//! Shared by a node's links to its peer replicas and by a client's links to
//! every replica; the two differ only in what the far side sends back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::frame::{read_frame, write_frame, FrameError};
use crate::hello::Hello;
use crate::stats::{add, bump, Counters, OpenConn};

/// First wait after a failed connect; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest wait between two connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connect that takes longer is abandoned and retried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes gathered before the writer goes to the socket on its own.
pub(crate) const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes read from the socket at once; many small frames arrive per read.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Frames taken from a queue at once before they are written out.
const COALESCE_FRAMES_MAX: usize = 256;

/// The outbound queue of one link or connection.
pub(crate) type Queue = mpsc::Receiver<Arc<[u8]>>;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum ConnEnd {
    /// Every sender of the queue is gone: the link has nothing left to do.
    QueueClosed,
    /// The connection broke; the link reconnects.
    Lost(String),
}

/// What a link does with the bytes the far side sends.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A replica's outbound link: the peer never writes on it, so any byte
    /// is a protocol error and end of stream means the peer went away.
    Silent,
    /// A client's link: the replica answers with frames, delivered as
    /// `(replica, frame)`.
    Deliver(mpsc::Sender<(u32, Vec<u8>)>),
}

/// The caller's side of an outbound link.
#[derive(Debug)]
pub(crate) struct OutLink {
    pub queue: mpsc::Sender<Arc<[u8]>>,
    /// Shared with the link's [`LinkSpec::up`].
    pub up: Arc<AtomicBool>,
}

/// Where a link goes and what it says.
#[derive(Debug)]
pub(crate) struct LinkSpec {
    /// The replica at the far end.
    pub replica: u32,
    pub addr: SocketAddr,
    pub hello: Hello,
    pub frame_bytes_max: usize,
    pub counters: Arc<Counters>,
    /// True while the link has a connection on which its hello went out.
    pub up: Arc<AtomicBool>,
}

/// Resolves when the owner asks to stop or has dropped its handle.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which is a stop as well.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Runs one link until it is stopped or its queue closes.
pub(crate) async fn run_link(
    spec: LinkSpec,
    mut queue: Queue,
    inbound: Inbound,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        () = stopped(&mut stop) => {}
        () = link_loop(&spec, &mut queue, &inbound) => {}
    }
}

async fn link_loop(spec: &LinkSpec, queue: &mut Queue, inbound: &Inbound) {
    let mut backoff = BACKOFF_MIN;
    let mut ever_connected = false;
    // Say once, not on every retry, that a replica cannot be reached.
    let mut failures_in_a_row = 0u64;
    loop {
        let stream = match connect(spec.addr).await {
            Ok(stream) => stream,
            Err(error) => {
                failures_in_a_row += 1;
                if failures_in_a_row == 1 {
                    tracing::info!(replica = spec.replica, addr = %spec.addr, %error,
                        "cannot connect; retrying with backoff up to {BACKOFF_MAX:?}");
                } else {
                    tracing::debug!(replica = spec.replica, addr = %spec.addr, %error,
                        retry_ms = backoff.as_millis() as u64, "connect failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(replica = spec.replica, %error, "cannot set TCP_NODELAY");
        }
        bump(&spec.counters.connects);
        if ever_connected {
            bump(&spec.counters.reconnects);
            tracing::info!(replica = spec.replica, addr = %spec.addr, "reconnected");
        } else {
            tracing::debug!(replica = spec.replica, addr = %spec.addr, "connected");
        }
        ever_connected = true;
        failures_in_a_row = 0;
        let since = Instant::now();
        let open = OpenConn::new(&spec.counters);
        let end = run_connection(spec, stream, queue, inbound).await;
        drop(open);
        match end {
            ConnEnd::QueueClosed => return,
            ConnEnd::Lost(reason) => {
                tracing::warn!(replica = spec.replica, addr = %spec.addr, %reason,
                    "link lost; reconnecting");
            }
        }
        // A connection that the far side closes at once (it refuses our
        // hello, or is shutting down) must not turn into a busy loop.
        if since.elapsed() >= BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

async fn run_connection(
    spec: &LinkSpec,
    stream: TcpStream,
    queue: &mut Queue,
    inbound: &Inbound,
) -> ConnEnd {
    let (rd, wr) = stream.into_split();
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
    let hello = spec.hello.encode();
    if let Err(error) = write_frame(&mut wr, &hello).await {
        return ConnEnd::Lost(format!("sending the hello failed: {error}"));
    }
    if let Err(error) = wr.flush().await {
        return ConnEnd::Lost(format!("sending the hello failed: {error}"));
    }
    let _up = Up::new(&spec.up);
    tokio::select! {
        end = pump(&mut wr, queue, &spec.counters) => end,
        end = read_side(spec, rd, inbound) => end,
    }
}

/// Marks a link up for as long as its connection lives, including when the
/// link's task is dropped at shutdown.
struct Up(Arc<AtomicBool>);

impl Up {
    fn new(flag: &Arc<AtomicBool>) -> Up {
        flag.store(true, Ordering::Relaxed);
        Up(flag.clone())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Writes queued frames until the queue closes or a write fails.
///
/// Frames are gathered in the buffer and flushed when the queue is
/// momentarily empty, so a burst leaves in few large writes while a lone
/// frame still goes out at once.
pub(crate) async fn pump<W: AsyncWrite + Unpin>(
    wr: &mut BufWriter<W>,
    queue: &mut Queue,
    counters: &Counters,
) -> ConnEnd {
    let mut batch = Vec::with_capacity(COALESCE_FRAMES_MAX);
    loop {
        if queue.recv_many(&mut batch, COALESCE_FRAMES_MAX).await == 0 {
            // Best effort: the owner is gone, but what was queued may still
            // leave.
            let _ = wr.flush().await;
            return ConnEnd::QueueClosed;
        }
        for frame in batch.drain(..) {
            if let Err(error) = write_frame(wr, &frame).await {
                return ConnEnd::Lost(format!("write failed: {error}"));
            }
            bump(&counters.frames_out);
            add(&counters.bytes_out, frame.len());
        }
        if queue.is_empty() {
            if let Err(error) = wr.flush().await {
                return ConnEnd::Lost(format!("write failed: {error}"));
            }
        }
    }
}

async fn read_side(spec: &LinkSpec, rd: OwnedReadHalf, inbound: &Inbound) -> ConnEnd {
    match inbound {
        Inbound::Silent => {
            let mut rd = rd;
            let mut scratch = [0u8; 64];
            match rd.read(&mut scratch).await {
                Ok(0) => ConnEnd::Lost("the peer closed the connection".into()),
                Ok(n) => {
                    bump(&spec.counters.conn_errors);
                    ConnEnd::Lost(format!(
                        "the peer sent {n} bytes on a send-only replica link (protocol error)"
                    ))
                }
                Err(error) => ConnEnd::Lost(format!("read failed: {error}")),
            }
        }
        Inbound::Deliver(events) => {
            let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
            loop {
                match read_frame(&mut rd, spec.frame_bytes_max).await {
                    Ok(Some(frame)) => {
                        bump(&spec.counters.frames_in);
                        add(&spec.counters.bytes_in, frame.len());
                        // Backpressure: wait for room rather than drop. If
                        // nobody listens any more the frame is discarded and
                        // the link keeps serving sends.
                        let _ = events.send((spec.replica, frame)).await;
                    }
                    Ok(None) => return ConnEnd::Lost("the replica closed the connection".into()),
                    Err(FrameError::Oversized { len, max }) => {
                        bump(&spec.counters.oversized);
                        tracing::warn!(replica = spec.replica, addr = %spec.addr, len, max,
                            "oversized frame from replica; closing the connection");
                        return ConnEnd::Lost(format!("oversized frame of {len} bytes"));
                    }
                    Err(error) => {
                        bump(&spec.counters.conn_errors);
                        return ConnEnd::Lost(error.to_string());
                    }
                }
            }
        }
    }
}
