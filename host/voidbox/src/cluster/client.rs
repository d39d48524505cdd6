//! The client side of a cluster: what `voidbox … --cluster` and embedders
//! use. It puts blobs and tools on every replica (by digest, outside the
//! ordered log), submits operations through PBFT, and accepts a result once
//! f + 1 replicas signed the same one; that proof travels with the result
//! as a [`SignedReceipt`], which anyone can check offline against
//! `cluster.toml` ([`SignedReceipt::verify`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use voidbox_net::ClientHandle;
use voidbox_pbft::message::{
    CertifiedReply, Digest as TreeDigest, Reply, ReplyRoot, Sig, Signed, VerifiedRoots,
};
use voidbox_pbft::{
    sign_requests, Client, ClientId, Cluster, Completed, Hlc, Message, Request, SignedRequest,
    Target,
};

use super::config::{hex, parse_key_hex, read_signing_key, unhex, ClusterFile, CLIENT_KEY_FILE};
use super::wire::{
    frame, parse_side, side_frame, Op, OpResult, SideRequest, SideResponse, Status, ToolSummary,
    SIDE_BLOB_MAX, TAG_PBFT, TAG_SIDE_REQUEST, TAG_SIDE_RESPONSE,
};
use crate::{Digest, Error, Invocation, Receipt, Result};

/// How long a side request waits for replicas.
const SIDE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordered operation may take before the client gives up.
const ORDER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for enough replicas to accept its connections,
/// when it connects and when links drop while it waits for a reply.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long a side request waits for the last replicas once enough answered.
const STRAGGLER_WAIT: Duration = Duration::from_millis(50);
/// A client retransmits to every replica after this long, unless
/// [`RETRY_ENV`] says otherwise.
const RETRY_US: u64 = 300_000;
/// Milliseconds a client waits for f + 1 replies before it retransmits a
/// request to every replica: longer on a machine so loaded that requests
/// routinely take more than [`RETRY_US`] (each retransmission costs every
/// replica a check and a reply), or in a test that must see none.
pub const RETRY_ENV: &str = "VOIDBOX_CLUSTER_RETRY_MS";

/// The retransmission interval in microseconds: [`RETRY_ENV`] when set.
fn retry_us() -> Result<u64> {
    match std::env::var(RETRY_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(RETRY_US),
        Ok(v) => parse_retry_ms(&v),
        // Never digits: refused with the same message.
        Err(std::env::VarError::NotUnicode(v)) => parse_retry_ms(&v.to_string_lossy()),
    }
}

/// A [`RETRY_ENV`] value, in microseconds.
fn parse_retry_ms(v: &str) -> Result<u64> {
    match v.trim().parse::<u64>() {
        Ok(ms) if (1..=3_600_000).contains(&ms) => Ok(ms * 1000),
        _ => Err(Error::Cluster(format!(
            "{RETRY_ENV}={v:?} is not a retransmission interval; give whole \
             milliseconds from 1 to 3600000, or unset it for {} ms",
            RETRY_US / 1000
        ))),
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One replica's word for a result: it signed the root of a Merkle tree
/// over the replies of the batch that ran the request, and the reply that
/// carried this result is leaf `index` of that tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplySignature {
    /// The replica.
    pub replica: u32,
    /// The view it replied in (part of the leaf).
    pub view: u64,
    /// The reply's leaf position in the batch's tree.
    pub index: u32,
    /// Leaves in that tree (part of what was signed).
    pub leaves: u32,
    /// Sibling hashes from the leaf up, hex.
    pub path: Vec<String>,
    /// The tree's root, hex (what was signed, with `leaves`).
    pub root: String,
    /// ed25519 over the root, hex.
    pub signature: String,
}

/// A result the cluster agreed on, with the f + 1 (or more) signatures
/// that make it checkable offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// What came of the operation.
    pub result: OpResult,
    /// The exact bytes the replicas signed (the encoded `result`), hex.
    pub result_bytes: String,
    /// The client's key (its id with `session`), hex.
    pub client: String,
    /// Which session of that key sent the request (receipts of versions
    /// before sessions have none: 0).
    #[serde(default)]
    pub session: u32,
    /// The request's timestamp.
    pub timestamp: u64,
    /// Consensus time of the batch: microseconds of the primary's clock.
    pub hlc_us: u64,
    /// And its logical counter.
    pub hlc_logical: u32,
    /// The signatures.
    pub signatures: Vec<ReplySignature>,
}

impl SignedReceipt {
    fn from_completed(client: ClientId, done: &Completed) -> Result<SignedReceipt> {
        let result = OpResult::decode(&done.result).map_err(Error::Cluster)?;
        Ok(SignedReceipt {
            result,
            result_bytes: hex(&done.result),
            client: hex(&client.key),
            session: client.session,
            timestamp: done.timestamp,
            hlc_us: done.hlc.physical_us,
            hlc_logical: done.hlc.logical,
            signatures: done
                .proof
                .iter()
                .map(|s| ReplySignature {
                    replica: s.from(),
                    view: s.reply.view,
                    index: s.index,
                    leaves: s.root.payload.count,
                    path: s.path.iter().map(|d| hex(&d.0)).collect(),
                    root: hex(&s.root.payload.root.0),
                    signature: hex(&s.root.signature.0),
                })
                .collect(),
        })
    }

    /// The receipt, when the tool ran.
    pub fn receipt(&self) -> Option<&Receipt> {
        match &self.result {
            OpResult::Receipt { receipt, .. } => Some(receipt),
            _ => None,
        }
    }

    /// Checks the proof against the cluster's keys: at least f + 1 distinct
    /// replicas signed exactly these bytes, the bytes are `result`, and a
    /// receipt's digest matches its fields. Returns the signers.
    pub fn verify(&self, cluster: &ClusterFile) -> Result<Vec<u32>> {
        let bad = |m: String| Error::Cluster(format!("the receipt does not verify: {m}"));
        let bytes =
            unhex(&self.result_bytes).ok_or_else(|| bad("result_bytes is not hex".into()))?;
        let decoded = OpResult::decode(&bytes).map_err(bad)?;
        if decoded != self.result {
            return Err(bad("`result` differs from the signed bytes".into()));
        }
        if let Some(r) = self.receipt() {
            if !r.is_consistent() {
                return Err(bad(format!(
                    "receipt {} does not match its fields",
                    r.receipt
                )));
            }
        }
        let client = ClientId {
            key: parse_key_hex(&self.client).map_err(|e| bad(format!("client {e}")))?,
            session: self.session,
        };
        let keys: BTreeMap<u32, _> = cluster.verifying_keys()?.into_iter().collect();
        let mut signers = Vec::new();
        for s in &self.signatures {
            let key = keys
                .get(&s.replica)
                .ok_or_else(|| bad(format!("replica {} is not in this cluster", s.replica)))?;
            let field = |what: &str| bad(format!("replica {}'s {what} is not hex", s.replica));
            let sig: [u8; 64] = unhex(&s.signature)
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| field("signature (64 bytes)"))?;
            let digest = |h: &str| -> Result<TreeDigest> {
                unhex(h)
                    .and_then(|v| v.try_into().ok())
                    .map(TreeDigest)
                    .ok_or_else(|| field("hash (32 bytes)"))
            };
            let certified = CertifiedReply {
                reply: Reply {
                    view: s.view,
                    client,
                    timestamp: self.timestamp,
                    hlc: Hlc {
                        physical_us: self.hlc_us,
                        logical: self.hlc_logical,
                    },
                    result: bytes.clone(),
                },
                index: s.index,
                path: s.path.iter().map(|h| digest(h)).collect::<Result<_>>()?,
                root: Signed {
                    from: s.replica,
                    payload: ReplyRoot {
                        count: s.leaves,
                        root: digest(&s.root)?,
                    },
                    signature: Sig(sig),
                },
            };
            if !certified.path_ok() {
                return Err(bad(format!(
                    "replica {}'s reply is not in the tree it signed",
                    s.replica
                )));
            }
            if !certified.root.verify(key) {
                return Err(bad(format!("replica {}'s signature is invalid", s.replica)));
            }
            if !signers.contains(&s.replica) {
                signers.push(s.replica);
            }
        }
        if signers.len() <= cluster.f as usize {
            return Err(bad(format!(
                "{} replica(s) signed; a cluster with f = {} needs {}",
                signers.len(),
                cluster.f,
                cluster.f + 1
            )));
        }
        Ok(signers)
    }
}

/// Routing tables shared by the connection's reader task and callers.
#[derive(Default)]
struct Routes {
    /// Side requests waiting for answers, by request id.
    side: Mutex<HashMap<u64, mpsc::UnboundedSender<(u32, SideResponse)>>>,
    /// Ordered requests waiting for replies, by client id.
    replies: Mutex<HashMap<ClientId, mpsc::UnboundedSender<Message>>>,
    /// Reply-root signatures already checked, shared by every session of
    /// this connection: the replies one replica sends for one batch cost
    /// one signature check between all the sessions they answer.
    roots: Mutex<VerifiedRoots>,
    /// Client ids that have sent a request to every replica on this
    /// connection. A replica sends replies back on the connection a
    /// client's request arrived on; backups see a request only inside the
    /// primary's pre-prepare, so until one reaches them directly they have
    /// nowhere to reply, and the client would wait for its retry.
    announced: Mutex<std::collections::BTreeSet<ClientId>>,
}

/// A connection to a cluster.
pub struct ClusterClient {
    runtime: tokio::runtime::Runtime,
    file: ClusterFile,
    cluster: Cluster,
    net: ClientHandle,
    routes: Arc<Routes>,
    next_id: AtomicU64,
    /// Signs this connection's own requests ([`ClusterClient::invoke`]).
    bundler: Bundler,
    /// Session numbers of the connection's key not in use by a call, so
    /// that calls from several threads are distinct clients (each with its
    /// own reply route and timestamps) while the numbers, and so the
    /// replicas' client tables, stay as few as the calls at once.
    free_sessions: Mutex<SessionNumbers>,
    /// Microseconds before a request is retransmitted to every replica.
    retry_us: u64,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("replicas", &self.file.n())
            .finish()
    }
}

impl ClusterClient {
    /// Connects to the cluster of `cluster_file` (or its directory) with the
    /// client key written beside it by `voidbox cluster init`.
    pub fn connect(cluster_file: &Path) -> Result<ClusterClient> {
        let file = ClusterFile::load(cluster_file)?;
        let key = read_signing_key(&file.dir.join(CLIENT_KEY_FILE))?;
        ClusterClient::connect_with(file, key)
    }

    /// Connects with a given client key.
    pub fn connect_with(file: ClusterFile, key: SigningKey) -> Result<ClusterClient> {
        let cluster = file.cluster()?;
        let retry_us = retry_us()?;
        // One thread: the caller's, inside each `block_on`. A reply read on
        // a worker thread and handed to the caller's cost a wake-up across
        // threads (a futex call and a context switch), up to n per request,
        // and so did each frame the caller queued for a worker to write.
        // The links make progress only while a call runs, which is when
        // anything is waited for.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Cluster(format!("cannot start the runtime: {e}")))?;
        let routes = Arc::new(Routes::default());
        let replicas = file.replicas.iter().map(|r| (r.id, r.address)).collect();
        let net = runtime.block_on(async {
            let (net, mut incoming) =
                voidbox_net::connect_client(replicas, voidbox_net::Limits::default()).await;
            let routes = routes.clone();
            tokio::spawn(async move {
                while let Some((from, bytes)) = incoming.recv().await {
                    route(&routes, from, &bytes);
                }
            });
            net
        });
        Ok(ClusterClient {
            runtime,
            file,
            cluster,
            net,
            routes,
            next_id: AtomicU64::new(1),
            bundler: Bundler::new(key),
            free_sessions: Mutex::default(),
            retry_us,
        })
    }

    /// The cluster's configuration.
    pub fn file(&self) -> &ClusterFile {
        &self.file
    }

    /// Waits (up to [`CONNECT_WAIT`]) until n - f replicas accept the
    /// connection, so a cluster that is down is reported at once, not
    /// after every timeout.
    fn ensure_reachable(&self) -> Result<()> {
        let need = self.n_minus_f();
        let start = Instant::now();
        loop {
            let up = self.reachable();
            if up >= need {
                return Ok(());
            }
            if start.elapsed() >= CONNECT_WAIT {
                return Err(Error::Cluster(format!(
                    "only {up} of {} replicas accept connections (need {need}); start them with `voidbox cluster up {}`",
                    self.file.n(),
                    self.file.dir.display()
                )));
            }
            // On the runtime: the links connect only while it runs.
            self.runtime
                .block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
    }

    /// How many replicas the client's links reach now.
    fn reachable(&self) -> usize {
        self.file
            .replicas
            .iter()
            .filter(|r| self.net.connected(r.id) == Some(true))
            .count()
    }

    /// Sends a side request to every replica and collects the answers that
    /// arrive within `timeout`, stopping once all did, or [`STRAGGLER_WAIT`]
    /// after `enough` did (a replica that is down must not make every
    /// request wait the whole timeout).
    fn ask_all(
        &self,
        make: impl Fn(u64) -> SideRequest,
        timeout: Duration,
        enough: usize,
    ) -> BTreeMap<u32, SideResponse> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.routes.side.lock().expect("routes").insert(id, tx);
        self.net.broadcast(side_frame(TAG_SIDE_REQUEST, &make(id)));
        let n = self.file.n() as usize;
        let answers = self.runtime.block_on(async {
            let mut answers = BTreeMap::new();
            let mut deadline = tokio::time::Instant::now() + timeout;
            while answers.len() < n {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((from, response))) => {
                        answers.insert(from, response);
                        if answers.len() == enough {
                            deadline = deadline.min(tokio::time::Instant::now() + STRAGGLER_WAIT);
                        }
                    }
                    _ => break,
                }
            }
            answers
        });
        self.routes.side.lock().expect("routes").remove(&id);
        answers
    }

    /// Stores a blob on every replica; succeeds when at least n - f stored
    /// it (the others fetch it from a peer when they need it).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        if bytes.len() > SIDE_BLOB_MAX {
            return Err(Error::Cluster(format!(
                "a blob of {} bytes is larger than the {} a cluster put moves in one piece; use a smaller input",
                bytes.len(),
                SIDE_BLOB_MAX
            )));
        }
        self.ensure_reachable()?;
        let digest = Digest::of(bytes);
        let answers = self.ask_all(
            |id| SideRequest::PutBlob {
                id,
                bytes: bytes.to_vec(),
            },
            SIDE_TIMEOUT,
            self.n_minus_f(),
        );
        let stored = answers
            .values()
            .filter(|a| matches!(a, SideResponse::Stored { digest: d, .. } if *d == digest.0))
            .count();
        self.need_n_minus_f(stored, &answers, "store the blob")?;
        Ok(digest)
    }

    fn n_minus_f(&self) -> usize {
        (self.file.n() - self.file.f) as usize
    }

    fn need_n_minus_f(
        &self,
        ok: usize,
        answers: &BTreeMap<u32, SideResponse>,
        what: &str,
    ) -> Result<()> {
        let need = (self.file.n() - self.file.f) as usize;
        if ok >= need {
            return Ok(());
        }
        // Replicas that refused for the same reason are named together, so
        // a bad request reads once, not once per replica.
        let mut by_message: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (r, a) in answers {
            if let SideResponse::Error { message, .. } = a {
                by_message.entry(message).or_default().push(r.to_string());
            }
        }
        let errors: Vec<String> = by_message
            .into_iter()
            .map(|(message, rs)| {
                let who = if rs.len() == 1 { "replica" } else { "replicas" };
                format!("{who} {}: {message}", rs.join(", "))
            })
            .collect();
        Err(Error::Cluster(format!(
            "only {ok} of {} replicas could {what} (need {need}){}{}",
            self.file.n(),
            if errors.is_empty() { "" } else { ": " },
            if errors.is_empty() {
                "; is the cluster up? (`voidbox cluster status`)".to_string()
            } else {
                errors.join("; ")
            }
        )))
    }

    /// Adds a tool on every replica.
    pub fn add_tool(
        &self,
        wasm: &[u8],
        name: Option<&str>,
        contract: Option<&str>,
    ) -> Result<ToolSummary> {
        // The common mistakes (not Wasm, a core module) are told here,
        // once, not by every replica after the bytes went to each.
        voidbox_sandbox::Sandbox::check_header(wasm)?;
        let digest = self.put_blob(wasm)?;
        let answers = self.ask_all(
            |id| SideRequest::AddTool {
                id,
                digest: digest.0,
                name: name.map(str::to_string),
                contract: contract.map(str::to_string),
            },
            SIDE_TIMEOUT * 3,
            self.n_minus_f(),
        );
        let tools: Vec<&ToolSummary> = answers
            .values()
            .filter_map(|a| match a {
                SideResponse::Tool { tool, .. } if tool.digest == digest => Some(tool),
                _ => None,
            })
            .collect();
        self.need_n_minus_f(tools.len(), &answers, "register the tool")?;
        Ok(tools[0].clone())
    }

    /// A tool by name or digest, as f + 1 replicas agree it is.
    pub fn tool(&self, reference: &str) -> Result<ToolSummary> {
        self.ensure_reachable()?;
        let answers = self.ask_all(
            |id| SideRequest::Tool {
                id,
                reference: reference.to_string(),
            },
            SIDE_TIMEOUT,
            self.n_minus_f(),
        );
        let mut votes: Vec<(&ToolSummary, usize)> = Vec::new();
        for a in answers.values() {
            if let SideResponse::Tool { tool, .. } = a {
                match votes.iter_mut().find(|(t, _)| *t == tool) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((tool, 1)),
                }
            }
        }
        if let Some((tool, _)) = votes.iter().find(|(_, n)| *n > self.file.f as usize) {
            return Ok((*tool).clone());
        }
        // f + 1 replicas, so at least one correct one, say it is not there.
        let missing = answers
            .values()
            .filter(|a| matches!(a, SideResponse::NoSuchTool { .. }))
            .count();
        if missing > self.file.f as usize {
            return Err(Error::NoSuchTool(reference.to_string()));
        }
        let why = answers
            .values()
            .find_map(|a| match a {
                SideResponse::Error { message, .. } => Some(message.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "the replicas do not agree on it".into());
        Err(Error::Cluster(format!(
            "tool `{reference}`: {why}; add it with `voidbox tool add --cluster`"
        )))
    }

    /// Every replica's status (a replica that did not answer is missing).
    pub fn status(&self, timeout: Duration) -> BTreeMap<u32, Status> {
        self.ask_all(
            |id| SideRequest::Status { id },
            timeout,
            self.file.n() as usize,
        )
        .into_iter()
        .filter_map(|(r, a)| match a {
            SideResponse::Status { status, .. } => Some((r, status)),
            _ => None,
        })
        .collect()
    }

    /// Which receipt each replica holds for an invocation digest.
    pub fn receipts_of(&self, invocation: &Digest) -> BTreeMap<u32, Option<Digest>> {
        self.ask_all(
            |id| SideRequest::Receipt {
                id,
                invocation: invocation.0,
            },
            SIDE_TIMEOUT,
            self.file.n() as usize,
        )
        .into_iter()
        .filter_map(|(r, a)| match a {
            SideResponse::Receipt { receipt, .. } => Some((r, receipt.map(Digest))),
            _ => None,
        })
        .collect()
    }

    /// A blob by digest from any replica that has it (checked).
    pub fn get_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.ensure_reachable()?;
        let answers = self.ask_all(
            |id| SideRequest::GetBlob {
                id,
                digest: digest.0,
            },
            SIDE_TIMEOUT,
            self.n_minus_f(),
        );
        answers
            .into_values()
            .find_map(|a| match a {
                SideResponse::Blob { bytes: Some(b), .. } if Digest::of(&b) == *digest => Some(b),
                _ => None,
            })
            .ok_or_else(|| {
                Error::Cluster(format!(
                    "no replica has blob {digest}; check the digest, or add the content with \
                     `voidbox cas put --cluster`"
                ))
            })
    }

    /// The output of a receipt: inline in the result, or fetched.
    pub fn output(&self, signed: &SignedReceipt) -> Result<Option<Vec<u8>>> {
        match &signed.result {
            OpResult::Receipt {
                output: Some(o), ..
            } => Ok(Some(o.clone())),
            OpResult::Receipt { receipt, .. } => match receipt.output {
                Some(d) => self.get_blob(&d).map(Some),
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }

    /// Orders an invocation and waits for f + 1 matching signed results.
    pub fn invoke(&self, token: &str, invocation: &Invocation) -> Result<SignedReceipt> {
        self.ensure_reachable()?;
        let op = Op::Invoke {
            token: token.to_string(),
            invocation: invocation.clone(),
        };
        let number = SessionLease::take(&self.free_sessions);
        let mut session = Session::new(self, &self.bundler, number.0);
        let done = self.runtime.block_on(session.order(op.encode()))?;
        SignedReceipt::from_completed(session.client.id(), &done)
    }

    /// Puts `input` on the replicas, then orders `template` on it.
    pub fn run(&self, token: &str, template: &Invocation, input: &[u8]) -> Result<SignedReceipt> {
        let mut invocation = template.clone();
        invocation.input = self.put_blob(input)?;
        self.invoke(token, &invocation)
    }

    /// `clients` closed-loop clients ordering the operations `make` returns
    /// for `duration`: sessions of one fresh key, so the requests they send
    /// together are signed together. For `voidbox cluster bench`.
    pub fn load(
        &self,
        clients: usize,
        duration: Duration,
        make: &(dyn Fn(u64) -> Vec<u8> + Sync),
    ) -> LoadReport {
        let bundler = Bundler::new(super::config::generate_key());
        self.runtime.block_on(async {
            let mut tasks = Vec::new();
            for session in 0..clients {
                let session = u32::try_from(session).expect("fewer than 2^32 clients");
                let mut session = Session::new(self, &bundler, session);
                tasks.push(async move {
                    let mut load = LoadReport::default();
                    let end = Instant::now() + duration;
                    let mut i = 0;
                    while Instant::now() < end {
                        let t = Instant::now();
                        i += 1;
                        match session.order(make(i)).await {
                            Ok(_) => load.latencies.push(t.elapsed()),
                            Err(e) => {
                                load.failed += 1;
                                load.last_error = Some(e.to_string());
                            }
                        }
                    }
                    load
                });
            }
            let mut all = LoadReport::default();
            for load in futures_join_all(tasks).await {
                all.latencies.extend(load.latencies);
                all.failed += load.failed;
                all.last_error = load.last_error.or(all.last_error);
            }
            all
        })
    }
}

/// What [`ClusterClient::load`] measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// The latency of every completed operation.
    pub latencies: Vec<Duration>,
    /// Operations that failed (no f + 1 matching replies).
    pub failed: u64,
    /// Why the last failed operation failed, if one did.
    pub last_error: Option<String>,
}

/// Runs futures concurrently on the current task and collects their outputs
/// in order (tokio has no join_all; a JoinSet would need 'static futures).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Signs the requests of the sessions of one key with one signature per
/// bundle. A session puts its request in and yields once; by the time it
/// runs again, every other session of the key that was ready in the same
/// turn of the runtime (a batch's replies wake many at once) has put its
/// request in too, and the first one back signs them all. The replicas
/// then check one signature for the lot instead of one per request.
struct Bundler {
    key: SigningKey,
    state: Mutex<BundleState>,
}

#[derive(Default)]
struct BundleState {
    /// Requests put in and not yet signed.
    waiting: Vec<Request>,
    /// Signed requests not yet taken by their sessions.
    signed: HashMap<(ClientId, u64), SignedRequest>,
}

impl Bundler {
    fn new(key: SigningKey) -> Bundler {
        Bundler {
            key,
            state: Mutex::default(),
        }
    }

    async fn sign(&self, request: Request) -> SignedRequest {
        let id = (request.client, request.timestamp);
        self.state.lock().expect("bundle").waiting.push(request);
        tokio::task::yield_now().await;
        let mut state = self.state.lock().expect("bundle");
        if let Some(signed) = state.signed.remove(&id) {
            return signed;
        }
        // Still waiting, so this session is the first back: sign them all.
        let waiting = std::mem::take(&mut state.waiting);
        for signed in sign_requests(waiting, &self.key) {
            let r = &signed.request;
            state.signed.insert((r.client, r.timestamp), signed);
        }
        match state.signed.remove(&id) {
            Some(signed) => signed,
            None => unreachable!("a request is either waiting or signed"),
        }
    }
}

/// Session numbers: those given back, and the next never used.
#[derive(Default)]
struct SessionNumbers {
    free: std::collections::BTreeSet<u32>,
    next: u32,
}

/// A session number taken for one call, given back when it ends.
struct SessionLease<'a>(u32, &'a Mutex<SessionNumbers>);

impl<'a> SessionLease<'a> {
    /// The lowest number not in use.
    fn take(numbers: &'a Mutex<SessionNumbers>) -> SessionLease<'a> {
        let mut n = numbers.lock().expect("session numbers");
        let number = match n.free.pop_first() {
            Some(number) => number,
            None => {
                n.next += 1;
                n.next - 1
            }
        };
        SessionLease(number, numbers)
    }
}

impl Drop for SessionLease<'_> {
    fn drop(&mut self) {
        self.1.lock().expect("session numbers").free.insert(self.0);
    }
}

/// One PBFT client identity with its reply channel.
struct Session<'a> {
    owner: &'a ClusterClient,
    bundler: &'a Bundler,
    client: Client,
    replies: mpsc::UnboundedReceiver<Message>,
}

impl<'a> Session<'a> {
    fn new(owner: &'a ClusterClient, bundler: &'a Bundler, session: u32) -> Session<'a> {
        let client = Client::new(
            owner.cluster.clone(),
            bundler.key.clone(),
            session,
            owner.retry_us,
        );
        let (tx, replies) = mpsc::unbounded_channel();
        owner
            .routes
            .replies
            .lock()
            .expect("routes")
            .insert(client.id(), tx);
        Session {
            owner,
            bundler,
            client,
            replies,
        }
    }

    fn send(&self, to: Target, message: &Message) {
        let f = frame(TAG_PBFT, &message.encode());
        match to {
            Target::Replica(r) => self.owner.net.send(r, f),
            _ => self.owner.net.broadcast(f),
        }
    }

    async fn order(&mut self, operation: Vec<u8>) -> Result<Completed> {
        let request = self
            .client
            .begin(operation, now_us())
            .ok_or_else(|| Error::Cluster("a request is already pending".into()))?;
        let signed = self.bundler.sign(request).await;
        let (to, message) = self
            .client
            .send(signed, now_us())
            .ok_or_else(|| Error::Cluster("the bundle signed another request".into()))?;
        let first = self
            .owner
            .routes
            .announced
            .lock()
            .expect("routes")
            .insert(self.client.id());
        self.send(if first { Target::AllReplicas } else { to }, &message);
        let deadline = tokio::time::Instant::now() + ORDER_TIMEOUT;
        let mut retry = tokio::time::interval(Duration::from_millis(20));
        // Since when fewer than f + 1 replicas are reachable: the f + 1
        // matching replies cannot come then, so after CONNECT_WAIT the
        // caller hears that the cluster is gone instead of waiting out
        // ORDER_TIMEOUT. (Connecting asks for n - f: fewer cannot order;
        // but replicas this client cannot reach may still be ordering.)
        let mut lost_since: Option<Instant> = None;
        loop {
            tokio::select! {
                m = self.replies.recv() => {
                    let Some(m) = m else {
                        return Err(Error::Cluster("the connection closed".into()));
                    };
                    let mut roots = self.owner.routes.roots.lock().expect("roots");
                    if let Some(done) = self.client.on_message_with(&m, &mut roots) {
                        return Ok(done);
                    }
                }
                _ = retry.tick() => {
                    let (up, need) = (self.owner.reachable(), self.owner.file.f as usize + 1);
                    if up >= need {
                        lost_since = None;
                    } else if lost_since.get_or_insert_with(Instant::now).elapsed() >= CONNECT_WAIT {
                        return Err(Error::Cluster(format!(
                            "lost the cluster: only {up} of {} replicas have been reachable for {}s \
                             (a reply needs f + 1 = {need}); the invocation may still run if they \
                             come back: check `voidbox cluster status {}`",
                            self.owner.file.n(),
                            CONNECT_WAIT.as_secs(),
                            self.owner.file.dir.display()
                        )));
                    }
                    if let Some((to, m)) = self.client.tick(now_us()) {
                        self.send(to, &m);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Cluster(format!(
                        "no f + 1 matching replies within {}s; check `voidbox cluster status`",
                        ORDER_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.owner
            .routes
            .replies
            .lock()
            .expect("routes")
            .remove(&self.client.id());
    }
}

fn route(routes: &Routes, from: u32, bytes: &[u8]) {
    let Some((&tag, body)) = bytes.split_first() else {
        return;
    };
    match tag {
        TAG_PBFT => {
            let Some(m) = Message::decode(body) else {
                tracing::debug!(replica = from, "undecodable message dropped");
                return;
            };
            if let Message::Reply(r) = &m {
                if let Some(tx) = routes.replies.lock().expect("routes").get(&r.reply.client) {
                    let _ = tx.send(m);
                }
            }
        }
        TAG_SIDE_RESPONSE => {
            if let Some(resp) = parse_side::<SideResponse>(body) {
                if let Some(tx) = routes.side.lock().expect("routes").get(&resp.id()) {
                    let _ = tx.send((from, resp));
                }
            }
        }
        _ => tracing::debug!(replica = from, tag, "frame with an unknown tag dropped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_at_once_get_distinct_session_numbers_and_numbers_are_reused() {
        let numbers = Mutex::default();
        let a = SessionLease::take(&numbers);
        let b = SessionLease::take(&numbers);
        assert_eq!((a.0, b.0), (0, 1));
        drop(a);
        let c = SessionLease::take(&numbers);
        assert_eq!(c.0, 0, "the lowest free number again");
        let d = SessionLease::take(&numbers);
        assert_eq!(d.0, 2);
        drop((b, c, d));
        assert_eq!(SessionLease::take(&numbers).0, 0);
    }

    #[test]
    fn a_retransmission_interval_is_whole_milliseconds_within_an_hour() {
        assert_eq!(parse_retry_ms("60000").unwrap(), 60_000_000);
        assert_eq!(parse_retry_ms(" 1 ").unwrap(), 1_000);
        for bad in ["0", "soon", "1.5", "-3", "3600001", ""] {
            let e = parse_retry_ms(bad).unwrap_err().to_string();
            assert!(e.contains(RETRY_ENV) && e.contains("whole"), "{bad}: {e}");
        }
    }
}
