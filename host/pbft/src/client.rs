//! The client side of the protocol, also pure: it signs requests, sends
//! them to the primary it believes in, collects replies and accepts a
//! result once f + 1 replicas signed the same one; on timeout it sends the
//! request to every replica (which forward it to the primary and start
//! suspecting it).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::config::Cluster;
use crate::message::{ClientId, Hlc, Message, ReplicaId, Request, SignedRequest, View};
use crate::replica::Target;

/// A result that f + 1 replicas signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The request's timestamp.
    pub timestamp: u64,
    /// Consensus time at which it executed.
    pub hlc: Hlc,
    /// The agreed result.
    pub result: Vec<u8>,
    /// The replicas whose signed replies agreed (at least f + 1).
    pub signers: Vec<ReplicaId>,
}

#[derive(Clone, Debug)]
struct Pending {
    request: SignedRequest,
    sent_at_us: u64,
    replies: BTreeMap<ReplicaId, (Hlc, Vec<u8>)>,
}

/// One client with at most one request outstanding (as PBFT assumes).
#[derive(Debug)]
pub struct Client {
    cluster: Cluster,
    key: SigningKey,
    id: ClientId,
    view: View,
    last_timestamp: u64,
    retry_us: u64,
    pending: Option<Pending>,
}

impl Client {
    /// A client with `key`; it retransmits to all replicas after `retry_us`.
    pub fn new(cluster: Cluster, key: SigningKey, retry_us: u64) -> Client {
        let id = ClientId(key.verifying_key().to_bytes());
        Client {
            cluster,
            key,
            id,
            view: 0,
            last_timestamp: 0,
            retry_us,
            pending: None,
        }
    }

    /// This client's id (its public key).
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Whether a request is outstanding.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Submits an operation. The timestamp is the clock when it is ahead of
    /// the last one used, so timestamps keep growing across restarts of a
    /// client with a sane clock. Returns `None` while a request is pending.
    pub fn submit(&mut self, operation: Vec<u8>, now_us: u64) -> Option<(Target, Message)> {
        if self.pending.is_some() {
            return None;
        }
        let timestamp = now_us.max(self.last_timestamp + 1);
        self.last_timestamp = timestamp;
        let request = SignedRequest::sign(
            Request {
                client: self.id,
                timestamp,
                operation,
            },
            &self.key,
        );
        self.pending = Some(Pending {
            request: request.clone(),
            sent_at_us: now_us,
            replies: BTreeMap::new(),
        });
        Some((
            Target::Replica(self.cluster.primary(self.view)),
            Message::Request(request),
        ))
    }

    /// Retransmits to every replica when the pending request waited too long.
    pub fn tick(&mut self, now_us: u64) -> Option<(Target, Message)> {
        let p = self.pending.as_mut()?;
        if now_us < p.sent_at_us + self.retry_us {
            return None;
        }
        p.sent_at_us = now_us;
        Some((Target::AllReplicas, Message::Request(p.request.clone())))
    }

    /// Handles a message from a replica; returns the result once f + 1
    /// matching signed replies arrived. Invalid replies are ignored.
    pub fn on_message(&mut self, message: &Message) -> Option<Completed> {
        let Message::Reply(reply) = message else {
            return None;
        };
        let p = self.pending.as_mut()?;
        let r = &reply.payload;
        if r.client != self.id || r.timestamp != p.request.request.timestamp {
            return None;
        }
        let key = self.cluster.key(reply.from)?;
        if !reply.verify(key) {
            return None;
        }
        self.view = self.view.max(r.view);
        p.replies.insert(reply.from, (r.hlc, r.result.clone()));
        let want = (r.hlc, r.result.clone());
        let signers: Vec<ReplicaId> = p
            .replies
            .iter()
            .filter(|(_, v)| **v == want)
            .map(|(id, _)| *id)
            .collect();
        if signers.len() <= self.cluster.f() as usize {
            return None;
        }
        let timestamp = p.request.request.timestamp;
        self.pending = None;
        Some(Completed {
            timestamp,
            hlc: want.0,
            result: want.1,
            signers,
        })
    }
}
