//! voidbox-net: the TCP transport between Voidbox replicas and clients.
//!
//! It moves opaque frames and knows nothing of PBFT, WebAssembly or the
//! host: what a frame means, and whether its sender is who it claims, is the
//! caller's business (every PBFT message is signed).
//!
//! - A frame is a `u32` big-endian length and that many bytes
//!   ([`read_frame`], [`write_frame`]); a length above
//!   [`Limits::frame_bytes_max`] closes the connection, never allocates.
//! - Every connection opens with a [`Hello`] from the dialer: a replica
//!   names its id, a client says it is a client. Garbage, another protocol
//!   version or an id that is not a configured peer is refused.
//! - A replica ([`start_node`]) dials every peer and sends its frames on its
//!   own outbound links; frames arriving on a peer's link come out as
//!   [`Peer::Replica`]. Clients dial in; their frames come out as
//!   [`Peer::Conn`] and [`NodeHandle::send_conn`] answers on the same
//!   connection.
//! - A client ([`connect_client`]) keeps a link to every replica.
//! - Links reconnect with exponential backoff. Sending never waits: each
//!   link has a bounded queue and a frame beyond it is dropped and counted.
//!   Receiving pushes back: the event channel is bounded and readers wait.
//!
//! ```no_run
//! # async fn demo() -> Result<(), voidbox_net::NetError> {
//! use std::sync::Arc;
//! use voidbox_net::{start_node, Event, Limits, NodeConfig, Peer};
//!
//! let (node, mut events) = start_node(NodeConfig {
//!     id: 0,
//!     listen: "127.0.0.1:7000".parse().unwrap(),
//!     peers: vec![(1, "127.0.0.1:7001".parse().unwrap())],
//!     limits: Limits::default(),
//! })
//! .await?;
//! node.broadcast(Arc::from(&b"hello, replicas"[..]));
//! while let Some(event) = events.recv().await {
//!     if let Event::Frame { from: Peer::Conn(conn), bytes } = event {
//!         node.send_conn(conn, Arc::from(bytes)); // echo to the client
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod frame;
mod hello;
mod link;
mod node;
mod stats;

use std::net::SocketAddr;

pub use client::{connect_client, ClientHandle};
pub use frame::{read_frame, write_frame, FrameError, FRAME_HEADER_BYTES};
pub use hello::{Hello, HelloError, HELLO_BYTES_MAX, HELLO_MAGIC};
pub use link::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};
pub use node::{
    start_node, ConnId, Event, NodeConfig, NodeHandle, Peer, HELLO_TIMEOUT, INBOUND_CONNECTIONS_MAX,
};
pub use stats::Stats;

/// Sizes of everything a peer or a caller can make this crate hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload sent or accepted, in bytes.
    pub frame_bytes_max: usize,
    /// Frames an outbound link or a client connection queues before it drops.
    pub queue_frames: usize,
    /// Capacity of the inbound event channel, in events.
    pub events: usize,
}

impl Default for Limits {
    /// 16 MiB + 4 KiB frames (a 16 MiB blob and its envelope), 4096 queued
    /// frames per link, 65536 pending events.
    fn default() -> Limits {
        Limits {
            frame_bytes_max: 16 * 1024 * 1024 + 4 * 1024,
            queue_frames: 4096,
            events: 65536,
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), NetError> {
        if self.queue_frames == 0 || self.events == 0 {
            return Err(NetError::BadLimits {
                reason: "queue_frames and events must be at least 1".into(),
            });
        }
        if self.frame_bytes_max > u32::MAX as usize {
            return Err(NetError::BadLimits {
                reason: format!(
                    "frame_bytes_max {} exceeds what a u32 length prefix can carry",
                    self.frame_bytes_max
                ),
            });
        }
        Ok(())
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; is another process using this port?")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The peer list names a replica twice.
    #[error("the peer list names replica {id} twice; give each replica one address")]
    DuplicatePeer {
        /// The repeated id.
        id: u32,
    },
    /// The peer list names this node.
    #[error("the peer list names this node's own id {id}; list only the other replicas")]
    SelfInPeers {
        /// This node's id.
        id: u32,
    },
    /// A limit cannot work.
    #[error("invalid limits: {reason}")]
    BadLimits {
        /// What is wrong.
        reason: String,
    },
}
