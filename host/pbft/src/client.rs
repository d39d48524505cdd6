//! The client side of the protocol, also pure: it signs requests, sends
//! them to the primary it believes in, collects replies and accepts a
//! result once f + 1 replicas vouch for the same one (each reply proved by
//! its path to a signed root of the replica's batch of replies); on timeout it sends the
//! request to every replica (which forward it to the primary and start
//! suspecting it).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::config::Cluster;
use crate::message::{
    CertifiedReply, ClientId, Hlc, Message, ReplicaId, Request, SignedRequest, VerifiedRoots, View,
};
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
    /// Those replies with their proofs, in the order of `signers`: what a
    /// third party checks offline against the replicas' public keys.
    pub proof: Vec<CertifiedReply>,
}

#[derive(Clone, Debug)]
struct Pending {
    timestamp: u64,
    /// The signed request, once [`Client::send`] gave it.
    request: Option<SignedRequest>,
    sent_at_us: u64,
    /// The latest reply claiming to be from each replica, and whether its
    /// signature was checked (a checked one is never replaced).
    replies: BTreeMap<ReplicaId, (CertifiedReply, bool)>,
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
    /// Root signatures already checked, for `on_message`.
    roots: VerifiedRoots,
}

impl Client {
    /// Session `session` of `key`; it retransmits to all replicas after
    /// `retry_us`.
    pub fn new(cluster: Cluster, key: SigningKey, session: u32, retry_us: u64) -> Client {
        let id = ClientId::new(&key.verifying_key(), session);
        Client {
            cluster,
            key,
            id,
            view: 0,
            last_timestamp: 0,
            retry_us,
            pending: None,
            roots: VerifiedRoots::new(),
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

    /// Submits an operation, signed alone. The timestamp is the clock when
    /// it is ahead of the last one used, so timestamps keep growing across
    /// restarts of a client with a sane clock. Returns `None` while a
    /// request is pending.
    pub fn submit(&mut self, operation: Vec<u8>, now_us: u64) -> Option<(Target, Message)> {
        let request = self.begin(operation, now_us)?;
        self.send(SignedRequest::sign(request, &self.key), now_us)
    }

    /// The first half of [`Client::submit`], for a caller that signs the
    /// requests of many sessions of one key together
    /// ([`crate::sign_requests`]): makes the request pending and returns it
    /// unsigned. `None` while a request is pending.
    pub fn begin(&mut self, operation: Vec<u8>, now_us: u64) -> Option<Request> {
        if self.pending.is_some() {
            return None;
        }
        let timestamp = now_us.max(self.last_timestamp + 1);
        self.last_timestamp = timestamp;
        self.pending = Some(Pending {
            timestamp,
            request: None,
            sent_at_us: now_us,
            replies: BTreeMap::new(),
        });
        Some(Request {
            client: self.id,
            timestamp,
            operation,
        })
    }

    /// The second half: the pending request, signed, and where to send
    /// it. `None` if `signed` is not the pending request.
    pub fn send(&mut self, signed: SignedRequest, now_us: u64) -> Option<(Target, Message)> {
        let p = self.pending.as_mut()?;
        let r = &signed.request;
        if r.client != self.id || r.timestamp != p.timestamp {
            return None;
        }
        p.sent_at_us = now_us;
        p.request = Some(signed.clone());
        Some((
            Target::Replica(self.cluster.primary(self.view)),
            Message::Request(signed),
        ))
    }

    /// Retransmits to every replica when the pending request waited too long.
    pub fn tick(&mut self, now_us: u64) -> Option<(Target, Message)> {
        let p = self.pending.as_mut()?;
        if now_us < p.sent_at_us + self.retry_us {
            return None;
        }
        let request = p.request.clone()?;
        p.sent_at_us = now_us;
        Some((Target::AllReplicas, Message::Request(request)))
    }

    /// Handles a message from a replica; returns the result once f + 1
    /// matching verified replies arrived. Invalid replies are ignored.
    pub fn on_message(&mut self, message: &Message) -> Option<Completed> {
        let mut roots = std::mem::take(&mut self.roots);
        let done = self.on_message_with(message, &mut roots);
        self.roots = roots;
        done
    }

    /// [`Client::on_message`] with a cache of checked root signatures that
    /// many clients of one process can share: the replies one replica sends
    /// for one batch then cost one signature check between them.
    pub fn on_message_with(
        &mut self,
        message: &Message,
        roots: &mut VerifiedRoots,
    ) -> Option<Completed> {
        let Message::Reply(reply) = message else {
            return None;
        };
        let p = self.pending.as_mut()?;
        let r = &reply.reply;
        let from = reply.from();
        if r.client != self.id || r.timestamp != p.timestamp {
            return None;
        }
        self.cluster.key(from)?;
        if p.replies.get(&from).is_some_and(|(_, checked)| *checked) {
            return None;
        }
        p.replies.insert(from, (reply.clone(), false));
        // Proofs are checked only once f + 1 replies agree: with correct
        // replicas that is f + 1 checks per request, not n.
        let want = (r.hlc, r.result.clone());
        let matches = |s: &CertifiedReply| (s.reply.hlc, &s.reply.result) == (want.0, &want.1);
        if p.replies.values().filter(|(s, _)| matches(s)).count() <= self.cluster.f() as usize {
            return None;
        }
        let cluster = &self.cluster;
        p.replies.retain(|_, (s, checked)| {
            if !*checked && matches(s) {
                *checked = cluster.key(s.from()).is_some_and(|k| roots.verify(s, k));
                return *checked;
            }
            true
        });
        let proof: Vec<CertifiedReply> = p
            .replies
            .values()
            .filter(|(s, checked)| *checked && matches(s))
            .map(|(s, _)| s.clone())
            .collect();
        if proof.len() <= self.cluster.f() as usize {
            return None;
        }
        self.view = proof.iter().map(|s| s.reply.view).fold(self.view, u64::max);
        let timestamp = p.timestamp;
        self.pending = None;
        Some(Completed {
            timestamp,
            hlc: want.0,
            result: want.1,
            signers: proof.iter().map(CertifiedReply::from).collect(),
            proof,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;
    use crate::message::{certify_replies, key_from_seed, Reply};

    fn setup() -> (Vec<SigningKey>, Client) {
        let keys: Vec<_> = (0..4).map(|i| key_from_seed(5, &format!("r{i}"))).collect();
        let cluster = ClusterConfig::from_keys(1, &keys)
            .validate()
            .expect("valid");
        let client = Client::new(cluster, key_from_seed(5, "client"), 0, 1_000);
        (keys, client)
    }

    fn reply(keys: &[SigningKey], from: u32, client: &Client, ts: u64, result: &[u8]) -> Message {
        let r = Reply {
            view: 1,
            client: client.id(),
            timestamp: ts,
            hlc: Hlc::default(),
            result: result.to_vec(),
        };
        let mut certified = certify_replies(from, vec![r], &keys[from as usize]);
        Message::Reply(certified.remove(0))
    }

    #[test]
    fn accepts_f_plus_one_matching_signed_replies_only() {
        let (keys, mut c) = setup();
        let (to, m) = c.submit(b"op".to_vec(), 100).expect("idle");
        assert_eq!(to, Target::Replica(0));
        let Message::Request(r) = m else {
            panic!("request")
        };
        assert!(r.verify());
        let ts = r.request.timestamp;
        assert!(
            c.submit(b"again".to_vec(), 101).is_none(),
            "one request at a time"
        );
        // A forged reply (signed by replica 1's key, claiming replica 2) and
        // a reply for another timestamp do not count.
        let Message::Reply(mut forged) = reply(&keys, 1, &c, ts, b"evil") else {
            panic!()
        };
        forged.root.from = 2;
        assert_eq!(c.on_message(&Message::Reply(forged)), None);
        assert_eq!(c.on_message(&reply(&keys, 2, &c, ts + 1, b"evil")), None);
        // One honest reply and one different one: not yet.
        assert_eq!(c.on_message(&reply(&keys, 0, &c, ts, b"ok")), None);
        assert_eq!(c.on_message(&reply(&keys, 3, &c, ts, b"evil")), None);
        // The same replica twice is still one vote.
        assert_eq!(c.on_message(&reply(&keys, 0, &c, ts, b"ok")), None);
        let done = c
            .on_message(&reply(&keys, 1, &c, ts, b"ok"))
            .expect("f + 1 = 2 matching");
        assert_eq!(
            (done.result.as_slice(), done.signers.clone()),
            (b"ok".as_slice(), vec![0, 1])
        );
        let keys_ok = done
            .proof
            .iter()
            .all(|s| s.verify(&keys[s.from() as usize].verifying_key()));
        assert!(
            keys_ok && done.proof.len() == 2,
            "the proof is the certified replies"
        );
        assert!(!c.busy());
        // The view learned from replies picks the next primary.
        let (to, _) = c.submit(b"next".to_vec(), 50).expect("idle");
        assert_eq!(to, Target::Replica(1));
    }

    #[test]
    fn retransmits_to_all_replicas_after_the_timeout() {
        let (_, mut c) = setup();
        c.submit(b"op".to_vec(), 100).expect("idle");
        assert!(c.tick(500).is_none());
        let (to, _) = c.tick(1_100).expect("retry");
        assert_eq!(to, Target::AllReplicas);
        assert!(c.tick(1_200).is_none());
    }

    #[test]
    fn a_request_signed_in_a_bundle_is_sent_only_if_it_is_the_pending_one() {
        let (keys, mut a) = setup();
        let cluster = ClusterConfig::from_keys(1, &keys)
            .validate()
            .expect("valid");
        let key = key_from_seed(5, "client");
        let mut b = Client::new(cluster, key.clone(), 1, 1_000);
        assert_ne!(a.id(), b.id(), "sessions of one key are distinct clients");
        let ra = a.begin(b"a".to_vec(), 100).expect("idle");
        let rb = b.begin(b"b".to_vec(), 100).expect("idle");
        assert!(a.begin(b"again".to_vec(), 101).is_none(), "one at a time");
        assert!(
            a.tick(5_000).is_none(),
            "nothing to retransmit before it is signed"
        );
        let signed = crate::message::sign_requests(vec![ra, rb], &key);
        assert_eq!(signed[0].signature, signed[1].signature, "one signature");
        assert!(signed.iter().all(SignedRequest::verify));
        assert!(
            a.send(signed[1].clone(), 100).is_none(),
            "b's request is not a's"
        );
        let (to, m) = a.send(signed[0].clone(), 100).expect("a's own");
        assert_eq!(
            (to, m),
            (Target::Replica(0), Message::Request(signed[0].clone()))
        );
        let (to, _) = a.tick(1_100).expect("retry of the signed request");
        assert_eq!(to, Target::AllReplicas);
        assert!(b.send(signed[1].clone(), 100).is_some());
    }
}
