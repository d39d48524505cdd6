//! Protocol data: identifiers, digests, the hybrid logical clock, signed
//! envelopes, every message of the protocol, and the canonical encoding that
//! defines what is signed.
//!
//! The encoding is `postcard` over these structs, whose field order is the
//! order declared here; changing a field's position changes every signature.
//! Signatures cover a domain tag, the message kind, the signer and the
//! payload, so a signature over one kind of message can never be replayed as
//! another kind.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Index of a replica in the cluster configuration, `0..n`.
pub type ReplicaId = u32;
/// View number. The primary of view `v` is replica `v % n`.
pub type View = u64;
/// Sequence number of a batch. Sequence 0 is the empty initial state.
pub type Seq = u64;

/// Domain tag mixed into every signature of this protocol version.
const SIGNING_DOMAIN: &[u8] = b"voidbox-pbft/v1";

/// A blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A client's identity: the ed25519 public key that signs its requests and
/// a session number. Requests are self-certifying: a request is the
/// client's when `key` signed it. One key may run many sessions (a client
/// process with many callers): each session is a client of its own for the
/// protocol (its own timestamps, its own row in the client table), and the
/// key signs the requests its sessions send together once, as a bundle
/// ([`sign_requests`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId {
    /// The public key that signs the client's requests.
    pub key: [u8; 32],
    /// Which of the key's sessions this is.
    pub session: u32,
}

impl ClientId {
    /// Session `session` of `key`.
    pub fn new(key: &VerifyingKey, session: u32) -> ClientId {
        ClientId {
            key: key.to_bytes(),
            session,
        }
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client:")?;
        for b in &self.key[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "/{}", self.session)
    }
}

/// A hybrid logical clock timestamp: physical time (microseconds, from the
/// primary's tick time) plus a logical counter that orders stamps taken in
/// the same microsecond. This is the consensus time of a batch.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Microseconds on the primary's clock when it stamped the batch.
    pub physical_us: u64,
    /// Orders stamps with equal `physical_us`.
    pub logical: u32,
}

impl Hlc {
    /// The smallest stamp strictly after `self`.
    pub fn successor(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc {
                physical_us: self.physical_us,
                logical,
            },
            None => Hlc {
                physical_us: self.physical_us.saturating_add(1),
                logical: 0,
            },
        }
    }

    /// The stamp a clock at `now_us` gives after having given `self`:
    /// physical time when it moved forward, otherwise `self`'s successor.
    pub fn tick(self, now_us: u64) -> Hlc {
        if now_us > self.physical_us {
            Hlc {
                physical_us: now_us,
                logical: 0,
            }
        } else {
            self.successor()
        }
    }
}

/// An ed25519 signature (64 bytes). Serialized as a fixed-size tuple.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sig(pub [u8; 64]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{:02x}{:02x}..", self.0[0], self.0[1])
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Sig, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Sig(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// What a kind of signed payload is called inside its signature.
pub trait Payload: Serialize {
    /// Distinguishes kinds of payload in the signed bytes.
    const KIND: u8;
}

/// The bytes a signature covers.
fn signing_bytes<T: Payload>(signer: &[u8], payload: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(SIGNING_DOMAIN);
    out.push(T::KIND);
    out.extend_from_slice(signer);
    // Encoding into a Vec cannot fail for these plain data types.
    match postcard::to_extend(payload, out) {
        Ok(v) => v,
        Err(e) => panic!("encoding a protocol payload failed: {e}"),
    }
}

/// Checks the signatures of `requests` made by `keys` (one key per
/// request, in order): each request must be a leaf of the tree its signed
/// root names, and each distinct root signature (requests a client bundled
/// share one) is checked once. Two or more distinct signatures are checked
/// as one batch, about twice as fast as one by one. The batch's random
/// coefficients come from a transcript of its inputs, so every replica
/// decides alike on the same requests; a request a correct client signed
/// passes either way. When they pass, returns how many distinct signatures
/// that took.
pub(crate) fn verify_request_refs(
    requests: &[&SignedRequest],
    keys: &[VerifyingKey],
) -> Option<usize> {
    if requests.len() != keys.len() || !requests.iter().all(|r| r.path_ok()) {
        return None;
    }
    // Distinct (key, root, signature) in first-seen order: the order is
    // the requests', so every replica checks the same list.
    let mut distinct: Vec<(&VerifyingKey, &RequestRoot, &Sig)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (r, k) in requests.iter().zip(keys) {
        if seen.insert((k.to_bytes(), r.root, r.signature)) {
            distinct.push((k, &r.root, &r.signature));
        }
    }
    let count = distinct.len();
    match distinct[..] {
        [] => return Some(0),
        [(key, root, sig)] => return verify_root(key, root, sig).then_some(1),
        _ => {}
    }
    let items: Vec<(VerifyingKey, Vec<u8>, Sig)> = distinct
        .iter()
        .map(|(key, root, sig)| (**key, signing_bytes(&[], *root), **sig))
        .collect();
    verify_batch(&items).then_some(count)
}

/// Checks signatures (each a key, the bytes it signed, and the signature:
/// request roots, or replica messages as [`Signed::signed_bytes`] gives
/// them) as one batch: whether all pass. The batch's random coefficients
/// come from a transcript of its inputs, so replicas given the same
/// signatures decide alike; a batch with one bad signature fails, and the
/// caller then checks its members one by one.
pub(crate) fn verify_batch(items: &[(VerifyingKey, Vec<u8>, Sig)]) -> bool {
    let messages: Vec<&[u8]> = items.iter().map(|(_, m, _)| m.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = items
        .iter()
        .map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0))
        .collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(k, _, _)| *k).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

/// Whether `key` signed `root` (plain, cofactorless verification, as for
/// [`Signed::verify`]).
fn verify_root(key: &VerifyingKey, root: &RequestRoot, sig: &Sig) -> bool {
    let bytes = signing_bytes(&[], root);
    key.verify(&bytes, &ed25519_dalek::Signature::from_bytes(&sig.0))
        .is_ok()
}

/// Parses a client id as a key, refusing invalid and small-order keys.
pub fn client_key(client: &ClientId) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&client.key)
        .ok()
        .filter(|k| !k.is_weak())
}

/// A payload signed by a replica.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The replica that signed.
    pub from: ReplicaId,
    /// What it signed.
    pub payload: T,
    /// ed25519 over the domain tag, kind, `from` and `payload`.
    pub signature: Sig,
}

impl<T: Payload> Signed<T> {
    /// Signs `payload` as replica `from` with `key`.
    pub fn sign(from: ReplicaId, payload: T, key: &SigningKey) -> Self {
        let bytes = signing_bytes(&from.to_le_bytes(), &payload);
        let signature = Sig(key.sign(&bytes).to_bytes());
        Signed {
            from,
            payload,
            signature,
        }
    }

    /// The bytes the signature covers: the domain tag, kind, signer and
    /// payload.
    pub(crate) fn signed_bytes(&self) -> Vec<u8> {
        signing_bytes(&self.from.to_le_bytes(), &self.payload)
    }

    /// Whether the signature is `key`'s over this payload and signer.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let bytes = self.signed_bytes();
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature.0);
        // Plain (cofactorless) verification: half the cost of
        // `verify_strict`, which also decompresses R. Keys are checked for
        // small order where they enter (configuration, client key cache).
        key.verify(&bytes, &sig).is_ok()
    }
}

/// A client's request: one operation, identified by (client, timestamp).
/// Timestamps of one client must grow; the client table executes each at
/// most once and only if newer than the client's last executed one.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Request {
    /// The client, which is also the key that signs the request.
    pub client: ClientId,
    /// Client-chosen, strictly increasing per client.
    pub timestamp: u64,
    /// Opaque to the protocol; the application interprets it.
    #[serde(with = "serde_bytes")]
    pub operation: Vec<u8>,
}

impl Request {
    /// This request's leaf in a bundle's tree.
    pub fn leaf(&self) -> Digest {
        leaf_digest(&encode(self))
    }
}

/// What a client signs once per bundle of requests: the root of the tree
/// over their leaves and how many leaves it has (the tree is built as the
/// replies' is, [`ReplyRoot`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct RequestRoot {
    /// Number of requests (leaves).
    pub count: u32,
    /// The tree's root.
    pub root: Digest,
}

impl Payload for RequestRoot {
    const KIND: u8 = 12;
}

/// A request with the proof that its client signed it: its position among
/// the leaves of the bundle it was signed in, the sibling hashes from it to
/// the root, and the client's signature over the root. A request signed
/// alone is a bundle of one (no siblings; the root is its leaf).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedRequest {
    /// The request.
    pub request: Request,
    /// Its leaf's position, `0..root.count`.
    pub index: u32,
    /// Sibling hashes, from the leaf's level upwards.
    pub path: Vec<Digest>,
    /// The bundle's root.
    pub root: RequestRoot,
    /// ed25519 over the root by `request.client.key`.
    pub signature: Sig,
}

impl SignedRequest {
    /// Signs `request` alone with the client's key. The key must be the one
    /// `request.client` names, or replicas reject the request.
    pub fn sign(request: Request, key: &SigningKey) -> Self {
        match sign_requests(vec![request], key).pop() {
            Some(r) => r,
            None => unreachable!("one request signs as one"),
        }
    }

    /// Whether the request is leaf `index` of the tree with the signed
    /// root (hashing only).
    pub fn path_ok(&self) -> bool {
        tree_root(self.request.leaf(), self.index, self.root.count, &self.path)
            == Some(self.root.root)
    }

    /// Whether the client's signature is valid.
    pub fn verify(&self) -> bool {
        client_key(&self.request.client).is_some_and(|k| self.verify_with(&k))
    }

    /// Whether the proof has a shape some bundle could give it: the index
    /// inside the tree, and no more siblings than a tree of 2^32 leaves
    /// has levels. Checked on arrival, before the signature may wait, so
    /// that a request queued unchecked is never much larger than its
    /// operation.
    pub fn well_formed(&self) -> bool {
        self.index < self.root.count && self.path.len() <= 32
    }

    /// Whether the signature is valid for `key`, the client's parsed key
    /// (callers that see many requests cache it: parsing costs about as
    /// much as verifying).
    pub fn verify_with(&self, key: &VerifyingKey) -> bool {
        self.path_ok() && self.root_verifies(key)
    }

    /// Whether `key` signed this request's root (the path aside).
    pub fn root_verifies(&self, key: &VerifyingKey) -> bool {
        verify_root(key, &self.root, &self.signature)
    }

    /// What the signature check of this request shares with the other
    /// requests of its bundle: the signer, the signed root, the signature.
    pub fn signed_root(&self) -> ([u8; 32], RequestRoot, Sig) {
        (self.request.client.key, self.root, self.signature)
    }
}

/// Signs `requests` (all of one key's sessions) with one signature: builds
/// the tree over them, signs its root with `key`, and gives every request
/// its proof, in order. A client process whose sessions send together pays
/// one signature for the lot, and a replica checks it once per batch.
pub fn sign_requests(requests: Vec<Request>, key: &SigningKey) -> Vec<SignedRequest> {
    let tree = Tree::over(requests.iter().map(Request::leaf).collect());
    let root = RequestRoot {
        count: tree.count(),
        root: tree.root(),
    };
    let signature = Sig(key.sign(&signing_bytes(&[], &root)).to_bytes());
    requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| SignedRequest {
            request,
            index: i as u32,
            path: tree.path(i),
            root,
            signature,
        })
        .collect()
}

/// What one sequence number orders: the primary's consensus time and the
/// requests. A batch with no requests and a zero stamp is the null request
/// that fills gaps in a new view.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Consensus time stamped by the primary.
    pub hlc: Hlc,
    /// Requests in execution order.
    pub requests: Vec<SignedRequest>,
}

impl Batch {
    /// The null batch (no requests, zero stamp).
    pub fn null() -> Batch {
        Batch::default()
    }

    /// The digest that pre-prepares, prepares and commits agree on.
    pub fn digest(&self) -> Digest {
        Digest::of(&encode(self))
    }
}

/// PRE-PREPARE header: the primary of `view` assigns `seq` to the batch
/// with `digest`. The batch travels beside the signed header.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View of the primary that signs.
    pub view: View,
    /// Assigned sequence number.
    pub seq: Seq,
    /// Digest of the batch.
    pub digest: Digest,
}

impl Payload for PrePrepare {
    const KIND: u8 = 2;
}

/// PREPARE: a backup accepted the pre-prepare for (view, seq, digest).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Prepare {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: Seq,
    /// Batch digest.
    pub digest: Digest,
}

impl Payload for Prepare {
    const KIND: u8 = 3;
}

/// COMMIT: the sender has a prepared certificate for (view, seq, digest).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Commit {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: Seq,
    /// Batch digest.
    pub digest: Digest,
}

impl Payload for Commit {
    const KIND: u8 = 4;
}

/// CHECKPOINT: the sender's replicated state after executing `seq` has
/// `state_digest`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number (a multiple of the checkpoint interval).
    pub seq: Seq,
    /// Digest of the application snapshot and the client table at `seq`.
    pub state_digest: Digest,
}

impl Payload for Checkpoint {
    const KIND: u8 = 5;
}

/// A signed pre-prepare with its batch.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PrePrepareMsg {
    /// The primary's signed header.
    pub header: Signed<PrePrepare>,
    /// The batch whose digest the header names.
    pub batch: Batch,
}

/// Proof that a batch prepared at (view, seq): the pre-prepare and 2f
/// prepares from distinct backups, all matching.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PreparedCert {
    /// The pre-prepare with its batch.
    pub pre_prepare: PrePrepareMsg,
    /// 2f matching prepares from replicas other than the view's primary.
    pub prepares: Vec<Signed<Prepare>>,
}

/// VIEW-CHANGE: the sender moves to `new_view` and reports what it knows.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view the sender wants to enter.
    pub new_view: View,
    /// The sender's last stable checkpoint.
    pub stable_seq: Seq,
    /// 2f + 1 matching checkpoint messages for `stable_seq` (empty at 0).
    pub checkpoint_proof: Vec<Signed<Checkpoint>>,
    /// For each sequence above `stable_seq` that prepared at the sender,
    /// the certificate from the highest view.
    pub prepared: Vec<PreparedCert>,
}

impl Payload for ViewChange {
    const KIND: u8 = 6;
}

/// NEW-VIEW: the new primary's proof that the view may start, and the
/// pre-prepares that carry prepared batches (and null batches for gaps)
/// into it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NewView {
    /// The view being started.
    pub view: View,
    /// 2f + 1 view-changes for `view` from distinct replicas.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// Pre-prepares for every sequence between the highest stable
    /// checkpoint in `view_changes` and the highest prepared sequence.
    pub pre_prepares: Vec<PrePrepareMsg>,
}

impl Payload for NewView {
    const KIND: u8 = 7;
}

/// A reply to a client: what one replica says a request came to. A reply
/// is not signed alone: after executing a batch a replica signs the root of
/// a Merkle tree over all the batch's replies ([`ReplyRoot`]), and each reply
/// travels with its path to that root ([`CertifiedReply`]). A batch of k
/// replies so costs the replica one signature instead of k, and a client
/// that receives several replies of one batch checks that signature once.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Reply {
    /// The replica's view, so the client learns the primary.
    pub view: View,
    /// The client.
    pub client: ClientId,
    /// The request's timestamp.
    pub timestamp: u64,
    /// Consensus time of the batch that executed the request.
    pub hlc: Hlc,
    /// What the application returned.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

impl Reply {
    /// This reply's leaf in a reply tree.
    pub fn leaf(&self) -> Digest {
        leaf_digest(&encode(self))
    }
}

/// Leaf and inner nodes hash under different prefixes, so no inner node
/// can pass for a leaf (the second-preimage trick on Merkle trees).
const LEAF: u8 = 0;
const NODE: u8 = 1;

fn leaf_digest(encoded: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&[LEAF]);
    h.update(encoded);
    Digest(*h.finalize().as_bytes())
}

fn node(left: &Digest, right: &Digest) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE]);
    h.update(&left.0);
    h.update(&right.0);
    Digest(*h.finalize().as_bytes())
}

/// A Merkle tree, kept level by level from the leaves up. Nodes pair left
/// to right; an odd node out moves up a level unchanged. Replies and
/// request bundles are signed as the roots of such trees.
struct Tree {
    levels: Vec<Vec<Digest>>,
}

impl Tree {
    fn over(leaves: Vec<Digest>) -> Tree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node(left, right),
                    [odd] => *odd,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.levels[0].len()).expect("fewer than 2^32 leaves")
    }

    fn root(&self) -> Digest {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// Sibling hashes from leaf `i` up.
    fn path(&self, i: usize) -> Vec<Digest> {
        let mut path = Vec::new();
        let mut at = i;
        for level in &self.levels[..self.levels.len() - 1] {
            // The sibling of node `at` is `at ^ 1`; an odd node out has
            // none and moves up as it is.
            if let Some(d) = level.get(at ^ 1) {
                path.push(*d);
            }
            at /= 2;
        }
        path
    }
}

/// The root that `leaf` at `index` of a tree of `count` leaves reaches by
/// `path`, or `None` when the index is outside the tree or the path is not
/// exactly as long as that position needs.
fn tree_root(leaf: Digest, index: u32, count: u32, path: &[Digest]) -> Option<Digest> {
    if index >= count {
        return None;
    }
    let (mut at, mut width) = (index, count);
    let mut hash = leaf;
    let mut siblings = path.iter();
    while width > 1 {
        if at % 2 == 1 {
            hash = node(siblings.next()?, &hash);
        } else if at + 1 < width {
            hash = node(&hash, siblings.next()?);
        }
        at /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(hash)
}

/// What a replica signs once per batch of replies: the root of the tree
/// over their leaves and how many leaves it has. The tree pairs nodes left
/// to right, level by level; an odd node out moves up a level unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReplyRoot {
    /// Number of replies (leaves).
    pub count: u32,
    /// The tree's root.
    pub root: Digest,
}

impl Payload for ReplyRoot {
    const KIND: u8 = 10;
}

/// A reply with the proof that its replica vouches for it: the reply's
/// position among the leaves, the sibling hashes from it to the root, and
/// the replica's signature over the root.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CertifiedReply {
    /// The reply.
    pub reply: Reply,
    /// Its leaf's position, `0..root.payload.count`.
    pub index: u32,
    /// Sibling hashes, from the leaf's level upwards.
    pub path: Vec<Digest>,
    /// The signed root.
    pub root: Signed<ReplyRoot>,
}

impl CertifiedReply {
    /// The replica that vouches for the reply.
    pub fn from(&self) -> ReplicaId {
        self.root.from
    }

    /// Whether the reply is leaf `index` of the tree with the signed root
    /// (hashing only; the signature is [`CertifiedReply::verify`]'s job).
    pub fn path_ok(&self) -> bool {
        let ReplyRoot { count, root } = self.root.payload;
        tree_root(self.reply.leaf(), self.index, count, &self.path) == Some(root)
    }

    /// Whether `key` signed a root that this reply reaches.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        self.path_ok() && self.root.verify(key)
    }
}

/// Builds the tree over `replies`, signs its root as replica `from`, and
/// gives every reply its proof, in order. One signature for the lot.
pub fn certify_replies(
    from: ReplicaId,
    replies: Vec<Reply>,
    key: &SigningKey,
) -> Vec<CertifiedReply> {
    let tree = Tree::over(replies.iter().map(Reply::leaf).collect());
    let root = ReplyRoot {
        count: tree.count(),
        root: tree.root(),
    };
    let signed = Signed::sign(from, root, key);
    replies
        .into_iter()
        .enumerate()
        .map(|(i, reply)| CertifiedReply {
            reply,
            index: i as u32,
            path: tree.path(i),
            root: signed.clone(),
        })
        .collect()
}

/// Root signatures a client already checked, so that the replies of one
/// batch cost one signature check per replica, not one per reply. Keyed by
/// signer, root and signature: a different signature over a known root is
/// checked afresh. Bounded: past `capacity` entries it starts over.
#[derive(Debug, Default)]
pub struct VerifiedRoots {
    seen: std::collections::BTreeSet<(ReplicaId, Digest, Sig)>,
}

impl VerifiedRoots {
    const CAPACITY: usize = 4096;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `reply` verifies under `key`, checking its root's signature
    /// only if this cache has not seen it pass.
    pub fn verify(&mut self, reply: &CertifiedReply, key: &VerifyingKey) -> bool {
        if !reply.path_ok() {
            return false;
        }
        let r = &reply.root;
        let id = (r.from, r.payload.root, r.signature);
        if self.seen.contains(&id) {
            return true;
        }
        if !r.verify(key) {
            return false;
        }
        if self.seen.len() >= Self::CAPACITY {
            self.seen.clear();
        }
        self.seen.insert(id);
        true
    }
}

/// STATUS: the sender's progress, sent periodically so that peers can
/// retransmit what it lacks (lost messages, a new view, checkpoint state).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The sender's view.
    pub view: View,
    /// Whether that view is installed (false during a view change).
    pub view_active: bool,
    /// The sender's last stable checkpoint.
    pub stable_seq: Seq,
    /// The last sequence the sender executed.
    pub last_executed: Seq,
}

impl Payload for Status {
    const KIND: u8 = 9;
}

/// The replicated state at a stable checkpoint, for state transfer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Consensus time of the batch at the checkpoint, so the clock of a
    /// replica that installs this state continues from it.
    pub hlc: Hlc,
    /// The application's snapshot bytes.
    #[serde(with = "serde_bytes")]
    pub snapshot: Vec<u8>,
    /// The client table at the checkpoint.
    pub client_table: Vec<ClientEntry>,
}

impl CheckpointState {
    /// The digest a checkpoint message carries for this state at `seq`.
    pub fn digest(&self, seq: Seq) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"voidbox-pbft/checkpoint/v1");
        h.update(&seq.to_le_bytes());
        h.update(&encode(&self.hlc));
        h.update(Digest::of(&self.snapshot).0.as_slice());
        h.update(&encode(&self.client_table));
        Digest(*h.finalize().as_bytes())
    }
}

/// STATE: a stable checkpoint's state with the proof that it is stable.
/// It needs no signature of its own: the 2f + 1 checkpoint signatures and
/// the digest check make it self-verifying.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StateTransfer {
    /// 2f + 1 matching checkpoint messages.
    pub proof: Vec<Signed<Checkpoint>>,
    /// The state whose digest they name.
    pub state: CheckpointState,
}

/// What a replica that ran a batch signs for the replicas that did not
/// (partial execution, [`crate::Params::partial_execution_min`]): the batch
/// it ran at `seq` and a digest of the results it got, one per request in
/// order ([`results_digest`]). f + 1 matching shares mean a correct replica
/// got those results, so a replica that did not run the batch may adopt
/// them instead.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ResultShare {
    /// Sequence number of the batch.
    pub seq: Seq,
    /// Digest of the ordered batch that ran.
    pub batch: Digest,
    /// [`results_digest`] of its results.
    pub results: Digest,
}

impl Payload for ResultShare {
    const KIND: u8 = 11;
}

/// One result's bytes (a newtype so that a list of them encodes as byte
/// strings, not as sequences of `u8` one by one).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ResultBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// RESULTS: a signed [`ResultShare`] with the results it vouches for, or
/// without them when they would not fit in one message (the receiver then
/// runs the batch itself).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SharedResults {
    /// The signed share.
    pub share: Signed<ResultShare>,
    /// The results, in request order; `None` when too large to send.
    pub results: Option<Vec<ResultBytes>>,
}

/// The digest a [`ResultShare`] names for a batch's results: blake3 over
/// the count and each result's length and bytes, so no two lists collide.
pub fn results_digest<'a>(results: impl ExactSizeIterator<Item = &'a [u8]>) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"voidbox-pbft/results/v1");
    h.update(&(results.len() as u64).to_le_bytes());
    for r in results {
        h.update(&(r.len() as u64).to_le_bytes());
        h.update(r);
    }
    Digest(*h.finalize().as_bytes())
}

/// One row of the client table: the last request executed for a client and
/// its result, so a retried request gets the same reply and is never run
/// twice.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClientEntry {
    /// The client.
    pub client: ClientId,
    /// Timestamp of its last executed request.
    pub last_timestamp: u64,
    /// Consensus time at which it executed.
    pub hlc: Hlc,
    /// The result it produced.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// Every message on the wire, between replicas and between clients and
/// replicas.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// A client request (from a client, or forwarded by a backup).
    Request(SignedRequest),
    /// PRE-PREPARE with its batch.
    PrePrepare(PrePrepareMsg),
    /// PREPARE.
    Prepare(Signed<Prepare>),
    /// COMMIT.
    Commit(Signed<Commit>),
    /// CHECKPOINT.
    Checkpoint(Signed<Checkpoint>),
    /// VIEW-CHANGE.
    ViewChange(Signed<ViewChange>),
    /// NEW-VIEW.
    NewView(Signed<NewView>),
    /// STATUS.
    Status(Signed<Status>),
    /// Checkpoint state for a replica that fell behind.
    State(Box<StateTransfer>),
    /// A reply to a client, with its proof.
    Reply(CertifiedReply),
    /// A batch's results from a replica that ran it, for one that did not.
    Results(Box<SharedResults>),
}

impl Message {
    /// The canonical bytes of this message.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses a message; `None` if the bytes are not exactly one message.
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        match postcard::take_from_bytes::<Message>(bytes) {
            Ok((m, [])) => Some(m),
            _ => None,
        }
    }

    /// A short name for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "request",
            Message::PrePrepare(_) => "pre-prepare",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange(_) => "view-change",
            Message::NewView(_) => "new-view",
            Message::Status(_) => "status",
            Message::State(_) => "state",
            Message::Reply(_) => "reply",
            Message::Results(_) => "results",
        }
    }
}

/// Canonical bytes of any protocol value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match postcard::to_allocvec(value) {
        Ok(v) => v,
        Err(e) => panic!("encoding a protocol value failed: {e}"),
    }
}

/// Derives a deterministic ed25519 key from a seed and a label. For tests,
/// the simulator and `cluster init` style tooling that wants reproducible
/// keys; production keys should come from a real random source.
pub fn key_from_seed(seed: u64, label: &str) -> SigningKey {
    let mut h = blake3::Hasher::new();
    h.update(b"voidbox-pbft/test-key");
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    SigningKey::from_bytes(h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify_requests(requests: &[SignedRequest], keys: &[VerifyingKey]) -> bool {
        let refs: Vec<&SignedRequest> = requests.iter().collect();
        verify_request_refs(&refs, keys).is_some()
    }

    #[test]
    fn byte_fields_encode_as_they_did_as_sequences_of_u8() {
        // The encoding before `serde_bytes`: serde's own `Vec<u8>`, a
        // sequence. Logs, checkpoints and peers of older builds hold it.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct AsSequence {
            client: ClientId,
            timestamp: u64,
            operation: Vec<u8>,
        }
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let operation: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let old = AsSequence {
                client: ClientId {
                    key: [9; 32],
                    session: 0,
                },
                timestamp: 42,
                operation: operation.clone(),
            };
            let new = Request {
                client: ClientId {
                    key: [9; 32],
                    session: 0,
                },
                timestamp: 42,
                operation,
            };
            let bytes = postcard::to_allocvec(&old).unwrap();
            assert_eq!(postcard::to_allocvec(&new).unwrap(), bytes, "{len}");
            assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), new);
        }
    }

    #[test]
    fn request_batches_verify_only_when_every_signature_does() {
        let keys: Vec<SigningKey> = (0..5).map(|i| key_from_seed(3, &format!("c{i}"))).collect();
        let requests: Vec<SignedRequest> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                SignedRequest::sign(
                    Request {
                        client: ClientId::new(&k.verifying_key(), 0),
                        timestamp: i as u64,
                        operation: vec![i as u8; i],
                    },
                    k,
                )
            })
            .collect();
        let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        assert!(verify_requests(&requests, &vks));
        assert!(verify_requests(&requests[..1], &vks[..1]));
        assert!(verify_requests(&[], &[]));
        assert!(
            !verify_requests(&requests, &vks[..4]),
            "one key per request"
        );
        // One changed operation, or one key swapped, fails the whole batch.
        let mut bad = requests.clone();
        bad[3].request.operation.push(0);
        assert!(!verify_requests(&bad, &vks));
        let mut swapped = vks.clone();
        swapped.swap(1, 2);
        assert!(!verify_requests(&requests, &swapped));
        assert!(!verify_requests(&bad[3..4], &vks[3..4]));
    }

    fn bundle(key: &SigningKey, sessions: u32, ts: u64) -> Vec<SignedRequest> {
        let requests = (0..sessions)
            .map(|session| Request {
                client: ClientId::new(&key.verifying_key(), session),
                timestamp: ts,
                operation: format!("op {session}").into_bytes(),
            })
            .collect();
        sign_requests(requests, key)
    }

    #[test]
    fn a_bundle_of_requests_verifies_under_one_signature_and_no_request_moves() {
        let a = key_from_seed(4, "a");
        let b = key_from_seed(4, "b");
        for n in 1..=9 {
            let signed = bundle(&a, n, 7);
            assert!(signed.iter().all(|r| r.signature == signed[0].signature));
            assert!(signed.iter().all(SignedRequest::verify), "{n}");
            let vks = vec![a.verifying_key(); n as usize];
            assert!(verify_requests(&signed, &vks), "{n} as one batch");
            for (i, r) in signed.iter().enumerate() {
                let mut other_session = r.clone();
                other_session.request.client.session += n;
                assert!(
                    !other_session.verify(),
                    "a request moved to another session"
                );
                let mut changed = r.clone();
                changed.request.timestamp += 1;
                assert!(!changed.verify(), "a changed timestamp");
                let mut other_key = r.clone();
                other_key.request.client.key = b.verifying_key().to_bytes();
                assert!(!other_key.verify(), "another client's name");
                if n > 1 {
                    let mut swapped = r.clone();
                    swapped.index = (r.index + 1) % n;
                    assert!(!swapped.verify(), "request {i} at another position");
                    let mut mixed = signed.clone();
                    mixed[i] = changed.clone();
                    assert!(
                        !verify_requests(&mixed, &vks),
                        "one bad leaf fails the batch"
                    );
                }
            }
        }
        // Bundles of two keys and a request signed alone, in one batch: the
        // distinct signatures are checked together, and a forged one among
        // them fails the lot.
        let mut batch = bundle(&a, 3, 1);
        batch.extend(bundle(&b, 2, 1));
        let single = SignedRequest::sign(
            Request {
                client: ClientId::new(&b.verifying_key(), 9),
                timestamp: 4,
                operation: b"alone".to_vec(),
            },
            &b,
        );
        assert!(single.path.is_empty() && single.root.count == 1);
        batch.push(single);
        let mut vks = vec![a.verifying_key(); 3];
        vks.extend(vec![b.verifying_key(); 3]);
        assert!(verify_requests(&batch, &vks));
        let mut forged = batch.clone();
        forged[4].signature.0[9] ^= 1;
        assert!(!verify_requests(&forged, &vks));
        // b's bundle signature presented for a's request: a's key is what
        // checks a request, so it fails.
        let mut borrowed = batch.clone();
        borrowed[0].signature = batch[3].signature;
        borrowed[0].root = batch[3].root;
        borrowed[0].path = batch[3].path.clone();
        borrowed[0].index = batch[3].index;
        assert!(!verify_requests(&borrowed, &vks));
    }

    #[test]
    fn signature_round_trips_and_binds_kind_and_signer() {
        let key = key_from_seed(1, "r0");
        let p = Prepare {
            view: 1,
            seq: 2,
            digest: Digest::of(b"x"),
        };
        let s = Signed::sign(0, p, &key);
        assert!(s.verify(&key.verifying_key()));
        let mut other_signer = s.clone();
        other_signer.from = 1;
        assert!(!other_signer.verify(&key.verifying_key()));
        // The same fields signed as a COMMIT do not verify as a PREPARE.
        let c = Signed::sign(
            0,
            Commit {
                view: 1,
                seq: 2,
                digest: p.digest,
            },
            &key,
        );
        let forged = Signed {
            from: 0,
            payload: p,
            signature: c.signature,
        };
        assert!(!forged.verify(&key.verifying_key()));
    }

    #[test]
    fn messages_round_trip_and_trailing_bytes_are_rejected() {
        let key = key_from_seed(1, "c");
        let req = SignedRequest::sign(
            Request {
                client: ClientId::new(&key.verifying_key(), 0),
                timestamp: 7,
                operation: b"op".to_vec(),
            },
            &key,
        );
        assert!(req.verify());
        let m = Message::Request(req);
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes), Some(m));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Message::decode(&longer), None);
        assert_eq!(Message::decode(&bytes[..bytes.len() - 1]), None);
    }

    fn replies(n: u64) -> Vec<Reply> {
        (0..n)
            .map(|i| Reply {
                view: 3,
                client: ClientId {
                    key: [i as u8; 32],
                    session: 0,
                },
                timestamp: 100 + i,
                hlc: Hlc {
                    physical_us: 7,
                    logical: 1,
                },
                result: vec![b'r'; i as usize],
            })
            .collect()
    }

    #[test]
    fn every_reply_of_a_batch_proves_itself_under_one_signature() {
        let key = key_from_seed(1, "r1");
        let vk = key.verifying_key();
        let other = key_from_seed(1, "r2").verifying_key();
        for n in 1..=17 {
            let certified = certify_replies(1, replies(n), &key);
            assert_eq!(certified.len() as u64, n);
            let root = &certified[0].root;
            for (i, c) in certified.iter().enumerate() {
                assert_eq!(&c.root, root, "one signed root per batch");
                assert_eq!(c.index as usize, i);
                assert!(c.path.len() <= (n as f64).log2().ceil() as usize);
                assert!(c.verify(&vk), "reply {i} of {n}");
                assert!(!c.verify(&other), "another replica's key");
                let mut bad = c.clone();
                bad.reply.result.push(b'!');
                assert!(!bad.verify(&vk), "a changed result");
                let mut bad = c.clone();
                bad.reply.view += 1;
                assert!(!bad.path_ok(), "a changed view");
                if n > 1 {
                    let mut moved = c.clone();
                    moved.index = (c.index + 1) % n as u32;
                    assert!(!moved.path_ok(), "the proof of another position");
                    let mut bad = c.clone();
                    bad.path[0].0[0] ^= 1;
                    assert!(!bad.path_ok(), "a changed sibling");
                    let mut short = c.clone();
                    short.path.pop();
                    assert!(!short.path_ok(), "a truncated path");
                }
                let mut longer = c.clone();
                longer.path.push(Digest::of(b"x"));
                assert!(!longer.path_ok(), "a path with an extra step");
                let mut wider = c.clone();
                wider.root.payload.count += 1;
                assert!(!wider.verify(&vk), "a count the replica did not sign");
                let mut outside = c.clone();
                outside.index = n as u32;
                assert!(!outside.path_ok(), "an index past the leaves");
            }
        }
    }

    #[test]
    fn a_proof_does_not_carry_over_to_a_tree_of_another_width() {
        // Reply 0 of a two-reply tree, presented as the only leaf of a
        // one-leaf tree with the pair's root, does not verify: the root of
        // a pair is a node hash, never a leaf hash.
        let key = key_from_seed(1, "r1");
        let pair = certify_replies(1, replies(2), &key);
        let single = certify_replies(1, replies(1), &key);
        assert_ne!(pair[0].root.payload.root, single[0].root.payload.root);
        let mut spliced = pair[0].clone();
        spliced.root.payload.count = 1;
        spliced.path.clear();
        assert!(!spliced.path_ok());
    }

    #[test]
    fn the_root_cache_checks_each_signature_once_and_never_a_bad_one() {
        let key = key_from_seed(1, "r1");
        let vk = key.verifying_key();
        let certified = certify_replies(1, replies(5), &key);
        let mut cache = VerifiedRoots::new();
        assert!(certified.iter().all(|c| cache.verify(c, &vk)));
        assert_eq!(cache.seen.len(), 1, "one root, checked once");
        // A forged signature over the same root is checked, and fails.
        let mut forged = certified[1].clone();
        forged.root.signature.0[5] ^= 1;
        assert!(!cache.verify(&forged, &vk));
        // A known root does not excuse a reply that is not among its leaves.
        let mut changed = certified[2].clone();
        changed.reply.result = b"other".to_vec();
        assert!(!cache.verify(&changed, &vk));
    }

    #[test]
    fn hlc_ticks_forward() {
        let a = Hlc {
            physical_us: 10,
            logical: 3,
        };
        assert_eq!(
            a.tick(5),
            Hlc {
                physical_us: 10,
                logical: 4
            }
        );
        assert_eq!(
            a.tick(11),
            Hlc {
                physical_us: 11,
                logical: 0
            }
        );
        assert!(a.tick(10) > a);
    }
}
