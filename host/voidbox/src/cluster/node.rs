//! One replica as a process: the thin driver around the pure PBFT core.
//!
//! One tokio task owns the [`Replica`] and feeds it frames, the clock and
//! execution results. A committed batch runs on that same thread when
//! everything it names is stored here: it takes tens of microseconds per
//! request, less than handing it to another thread and back (two wake-ups
//! across threads, each a futex call and a context switch on a machine
//! whose cores the replicas share). A batch that must fetch a tool or blob
//! from a peer, a checkpoint's batch that waits for the disk, and a state
//! restore run on the execution thread instead, so the protocol keeps
//! moving while they wait; batches after them queue behind them there, so
//! batches still run in sequence order.
//!
//! Records are synced ([`ProtocolLog::append`]) before the messages of the
//! same step are sent, except deferrable ones ([`Record::deferrable`]),
//! which go with the next write or tick. Side requests (blobs, tools,
//! status) are served beside the protocol on blocking threads.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use voidbox_net::{ConnId, Event, NodeConfig, NodeHandle, Peer};
use voidbox_pbft::{ClientId, Execute, Input, Message, Output, Record, Replica, Target};

use super::app::{App, Decoded, Peers, ResultEntry, Results, RESULTS_CHUNK};
use super::config::{read_signing_key, ClusterFile, REPLICA_KEY_FILE};
use super::log::ProtocolLog;
use super::wire::{
    frame, parse_side, side_frame, SideRequest, SideResponse, Status, SIDE_BLOB_MAX, TAG_PBFT,
    TAG_SIDE_REQUEST, TAG_SIDE_RESPONSE,
};
use crate::{Digest, Error, Host, Result, Store};

/// How long a replica waits for a peer to answer a blob fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Most protocol frames handed to the core as one step: those already
/// queued when the driver takes one, so their replica signatures are
/// checked as one batch (a loaded backup finds one or two behind the one
/// it takes, a primary a dozen client requests). The bound keeps the first
/// frame's answer from waiting behind many others.
const FRAMES_PER_STEP: usize = 16;

/// The wall clock in microseconds: the HLC's physical part.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Work for the execution thread, in protocol order.
enum Job {
    Restore {
        snapshot: Option<Vec<u8>>,
    },
    /// A batch, with its operations when the driver decoded them already.
    Execute(Execute, Option<Decoded>),
}

/// What the execution thread hands back for a job.
enum Done {
    Restored,
    Executed(Executed),
}

/// A batch's results, for the core.
struct Executed {
    seq: u64,
    results: Vec<Vec<u8>>,
    snapshot: Option<Vec<u8>>,
}

/// Runs a batch on `app` (on whichever thread holds it).
fn execute(
    app: &mut App,
    batch: &Execute,
    ops: Option<Decoded>,
    counter: &AtomicU64,
) -> Result<Executed> {
    let ops = ops.unwrap_or_else(|| app.decode(batch));
    let results = app.execute_decoded(batch, ops)?;
    // At a checkpoint the run made the receipts and the journal durable
    // (with fsync), before the checkpoint can become stable and the log
    // below it goes.
    let snapshot = batch.snapshot_wanted.then(|| app.state().snapshot());
    counter.store(app.state().executed, Ordering::Relaxed);
    Ok(Executed {
        seq: batch.seq,
        results,
        snapshot,
    })
}

/// Turns transparent huge pages off for this process (Linux), before it
/// maps anything large.
///
/// mimalloc asks for huge pages on the memory it takes from the kernel, so
/// the first touch of each fresh 2 MiB there zeroes all of it at once: 5-9
/// ms of CPU on this kind of machine, inside whichever step touched it. The
/// replicas of a cluster fill their memory alike (the same records, in the
/// same order), so they stalled at the same moment, and the whole pipeline
/// with them: with 16 clients, 165-211 steps of over 3 ms of CPU in 10 s
/// against 60-68 without huge pages, p99 15.8-16.5 ms against 10.4-13.1
/// (BENCHMARKS.md). With 4 KiB pages the same zeroing comes a page at a
/// time, a few microseconds each.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integers only; it sets a flag
        // of this process (inherited by its children).
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "transparent huge pages stay on"
            );
        }
    }
}

/// Blob fetches waiting for a peer's answer.
type Waiting = Arc<Mutex<HashMap<u64, std_mpsc::Sender<SideResponse>>>>;

/// Runs replica `id` of the cluster in `cluster_file` until the process is
/// stopped. Blocks.
pub fn run_replica(cluster_file: &Path, id: u32) -> Result<()> {
    no_huge_pages();
    let file = ClusterFile::load(cluster_file)?;
    let cluster = file.cluster()?;
    let entry = file.replica(id)?.clone();
    let home = file.home_of(id)?;
    let key = read_signing_key(&home.join(REPLICA_KEY_FILE))?;
    // A cluster measured without fsync runs its hosts without it too.
    let mut config = crate::Config::load(&home)?;
    config.storage.fsync &= file.fsync;
    // Every replica's journal reaches a checkpoint at about the same
    // moment (they run the same batches); at equal priority those bursts
    // held every protocol thread back at once, every few seconds, and were
    // most of the cluster's p99 latency under load.
    config.storage.checkpoint_priority = crate::CheckpointPriority::Low;
    let host = Arc::new(Host::open_existing_with(&home, config)?);
    if let Some(slots) = entry.worker_slots {
        host.set_worker_slots(slots);
    }
    // Replicas fill their journals in step: memory mapped under load would
    // be mapped on all of them at the same moment.
    host.prepare_for_load();
    let (log, records) = ProtocolLog::open(&home.join("pbft.redb"), file.fsync)?;
    let results = Results::open_with(&home.join("results.redb"), file.fsync)?;
    let (replica, outputs) = Replica::recover(cluster, id, key, file.params(), &records)
        .map_err(|e| Error::Cluster(format!("replica {id} cannot start: {e}")))?;
    tracing::info!(
        replica = id,
        records = records.len(),
        "recovered; {}",
        replica.describe()
    );
    let peers: Vec<(u32, std::net::SocketAddr)> = file
        .replicas
        .iter()
        .filter(|r| r.id != id)
        .map(|r| (r.id, r.address))
        .collect();
    let peer_ids = peers.iter().map(|p| p.0).collect();
    // One thread for the protocol and every socket: a frame read on one
    // thread and stepped on another paid a wake-up across threads (a futex
    // call and a context switch) per message, several per batch.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Error::Cluster(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let (net, events) = voidbox_net::start_node(NodeConfig {
            id,
            listen: entry.address,
            peers,
            limits: voidbox_net::Limits::default(),
        })
        .await
        .map_err(|e| {
            let hint = match e {
                voidbox_net::NetError::Bind { .. } => {
                    " If it is another Voidbox cluster, stop it, or give this one other ports \
                     with `voidbox cluster init --base-port`."
                }
                _ => "",
            };
            Error::Cluster(format!("replica {id}: {e}{hint}"))
        })?;
        tracing::info!(replica = id, address = %net.local_addr(), "listening");
        let driver = Driver::new(replica, log, host, net, peer_ids, results);
        driver.run(events, outputs).await
    })
}

struct Driver {
    replica: Replica,
    log: ProtocolLog,
    host: Arc<Host>,
    net: NodeHandle,
    /// The application; the execution thread locks it for each job.
    app: Arc<Mutex<App>>,
    jobs: crossbeam_channel::Sender<Job>,
    done: Option<mpsc::UnboundedReceiver<Result<Done>>>,
    /// Jobs handed to the execution thread that have not come back. While
    /// there are any, later batches go there too, behind them.
    in_flight: usize,
    waiting: Waiting,
    routes: HashMap<ClientId, ConnId>,
    executed_requests: Arc<AtomicU64>,
    /// Records of the protocol log not yet written, in the order the core
    /// produced them.
    pending_records: Vec<Record>,
    results: Results,
    refusals: std::collections::BTreeMap<voidbox_pbft::Reject, u64>,
    /// When the core last had the time.
    last_tick_us: u64,
}

impl Driver {
    fn new(
        replica: Replica,
        log: ProtocolLog,
        host: Arc<Host>,
        net: NodeHandle,
        peers: Vec<u32>,
        results: Results,
    ) -> Driver {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done) = mpsc::unbounded_channel();
        let waiting: Waiting = Arc::default();
        let executed_requests = Arc::new(AtomicU64::new(0));
        let links = PeerLinks {
            net: net.clone(),
            waiting: waiting.clone(),
            peers,
            next_id: AtomicU64::new(1 << 63),
        };
        let app = Arc::new(Mutex::new(App::new(
            host.clone(),
            results.clone(),
            Box::new(links),
        )));
        let counter = executed_requests.clone();
        let thread_app = app.clone();
        std::thread::Builder::new()
            .name("voidbox-exec".into())
            .spawn(move || {
                for job in job_rx {
                    let out = {
                        let mut app = thread_app.lock().expect("application poisoned");
                        match job {
                            Job::Restore { snapshot } => {
                                app.restore(snapshot.as_deref()).map(|()| {
                                    counter.store(app.state().executed, Ordering::Relaxed);
                                    Done::Restored
                                })
                            }
                            Job::Execute(batch, ops) => {
                                execute(&mut app, &batch, ops, &counter).map(Done::Executed)
                            }
                        }
                    };
                    let failed = out.is_err();
                    if done_tx.send(out).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the execution thread");
        Driver {
            replica,
            log,
            host,
            net,
            app,
            jobs,
            done: Some(done),
            in_flight: 0,
            waiting,
            routes: HashMap::new(),
            executed_requests,
            pending_records: Vec::new(),
            results,
            refusals: std::collections::BTreeMap::new(),
            last_tick_us: 0,
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        recovered: Vec<Output>,
    ) -> Result<()> {
        self.handle(recovered)?;
        let mut done = self.done.take().expect("the driver runs once");
        let mut shutdown = Box::pin(shutdown_signal());
        // Wake for the core's next deadline rather than on a fixed period:
        // four replicas on two cores should not spend their time being
        // woken for nothing. One timer, moved only when that deadline
        // changes: a fresh `sleep` per turn registered a timer per frame,
        // and each one due before the runtime's planned wake-up woke its
        // driver through an eventfd (some 5,500 writes a second on a
        // loaded primary, each followed by an epoll_wait that returned at
        // once).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut timer_for: Option<u64> = None;
        loop {
            let deadline = self.replica.next_deadline_us();
            if timer_for != Some(deadline) {
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.until_deadline());
                timer_for = Some(deadline);
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::Frame { from, bytes }) => self.on_frames(from, bytes, &mut events)?,
                    Some(Event::Closed(conn)) => self.routes.retain(|_, c| *c != conn),
                    None => return Ok(()),
                },
                ex = done.recv() => match ex {
                    Some(Ok(done)) => {
                        self.in_flight -= 1;
                        if let Done::Executed(ex) = done {
                            self.keep_time()?;
                            let out = self.executed(ex);
                            self.handle(out)?;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(Error::Cluster("the execution thread stopped".into())),
                },
                _ = &mut timer => {
                    timer_for = None;
                    self.tick()?;
                    // A quiet replica's deferred records reach the log too.
                    self.flush()?;
                }
                _ = &mut shutdown => {
                    tracing::info!(replica = self.replica.id(), "stopping");
                    self.flush()?;
                    // Without fsync the log's and the journal's commits are
                    // only in memory until now; a clean stop loses none.
                    self.log.persist()?;
                    self.results.persist()?;
                    self.net.shutdown();
                    return Ok(());
                }
            }
        }
    }

    /// Gives the core the time.
    fn tick(&mut self) -> Result<()> {
        let now = now_us();
        self.last_tick_us = now;
        let out = self.replica.step(Input::Tick { now_us: now });
        self.handle(out)
    }

    /// Ticks the core if its clock is over a millisecond old. Ticks come at
    /// the core's deadlines, which under load can be a status interval
    /// apart; what the core times from an input (a wait for results to
    /// adopt starts when the batch before it is done) needs the time to the
    /// millisecond, or the wait runs out at the next tick.
    fn keep_time(&mut self) -> Result<()> {
        if now_us() >= self.last_tick_us + 1_000 {
            self.tick()?;
        }
        Ok(())
    }

    /// Time until the core wants a tick, at most 100 ms: a clock that jumps
    /// back stalls the core no longer than that, and an idle replica (whose
    /// next deadline is its slow heartbeat) wakes about ten times a second,
    /// not a hundred.
    fn until_deadline(&self) -> Duration {
        let wait = self.replica.next_deadline_us().saturating_sub(now_us());
        Duration::from_micros(wait.min(100_000))
    }

    /// Handles `bytes` and whatever frames are queued behind it (up to
    /// [`FRAMES_PER_STEP`] protocol frames), the protocol frames in one
    /// step of the core.
    fn on_frames(
        &mut self,
        from: Peer,
        bytes: Vec<u8>,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<()> {
        let mut protocol = Vec::new();
        let mut next = Some((from, bytes));
        while let Some((from, mut bytes)) = next.take() {
            if bytes.first() == Some(&TAG_PBFT) {
                bytes.remove(0);
                if let Peer::Conn(conn) = from {
                    // Replies go back on the connection the client's
                    // requests arrive on.
                    if let Some(Message::Request(r)) = Message::decode(&bytes) {
                        self.routes.insert(r.request.client, conn);
                    }
                }
                protocol.push(bytes);
                if protocol.len() == FRAMES_PER_STEP {
                    break;
                }
            } else {
                self.step_frames(std::mem::take(&mut protocol))?;
                self.on_frame(from, bytes)?;
            }
            match events.try_recv() {
                Ok(Event::Frame { from, bytes }) => next = Some((from, bytes)),
                Ok(Event::Closed(conn)) => self.routes.retain(|_, c| *c != conn),
                Err(_) => break,
            }
        }
        self.step_frames(protocol)
    }

    fn step_frames(&mut self, mut frames: Vec<Vec<u8>>) -> Result<()> {
        let input = match frames.len() {
            0 => return Ok(()),
            1 => Input::Receive(frames.pop().expect("one frame")),
            _ => Input::ReceiveMany(frames),
        };
        self.keep_time()?;
        let out = self.replica.step(input);
        self.handle(out)
    }

    /// A frame other than the protocol's.
    fn on_frame(&mut self, from: Peer, bytes: Vec<u8>) -> Result<()> {
        let Some((&tag, body)) = bytes.split_first() else {
            tracing::debug!(?from, "empty frame refused");
            return Ok(());
        };
        match tag {
            TAG_SIDE_REQUEST => {
                let Some(request) = parse_side::<SideRequest>(body) else {
                    tracing::warn!(?from, "malformed side request refused");
                    return Ok(());
                };
                self.on_side_request(from, request);
                Ok(())
            }
            TAG_SIDE_RESPONSE => {
                let Some(response) = parse_side::<SideResponse>(body) else {
                    tracing::warn!(?from, "malformed side response refused");
                    return Ok(());
                };
                if let Some(tx) = self
                    .waiting
                    .lock()
                    .expect("fetch table poisoned")
                    .remove(&response.id())
                {
                    let _ = tx.send(response);
                }
                Ok(())
            }
            other => {
                tracing::warn!(?from, tag = other, "frame with an unknown tag refused");
                Ok(())
            }
        }
    }

    fn on_side_request(&mut self, from: Peer, request: SideRequest) {
        if let SideRequest::Status { id } = request {
            let stats = self.net.stats();
            let status = Status {
                id: self.replica.id(),
                view: self.replica.view(),
                view_active: self.replica.view_active(),
                primary: self.replica.is_primary(),
                last_executed: self.replica.last_executed(),
                stable: self.replica.stable_seq(),
                executed_requests: self.executed_requests.load(Ordering::Relaxed),
                rejected: self.replica.stats().rejected_total(),
                replies_resent: self.replica.stats().replies_resent,
                batches_adopted: self.replica.stats().batches_adopted,
                adoptions_abandoned: self.replica.stats().adoptions_abandoned,
                sandbox_runs: self.host.runs(),
                requests_checked: self.replica.stats().requests_checked,
                request_signatures_checked: self.replica.stats().request_signatures_checked,
                signatures_made: self.replica.signature_counts().made,
                signatures_checked: self.replica.signature_counts().checked,
                signatures_batched: self.replica.stats().signatures_batched,
                transport_refused: stats.oversized + stats.bad_hello + stats.dropped_queue_full,
                pid: std::process::id(),
            };
            reply(&self.net, from, &SideResponse::Status { id, status });
            return;
        }
        let host = self.host.clone();
        let net = self.net.clone();
        let results = self.results.clone();
        tokio::task::spawn_blocking(move || {
            let response = serve_side(&host, &results, request);
            reply(&net, from, &response);
        });
    }

    /// Hands a batch's results to the core.
    fn executed(&mut self, ex: Executed) -> Vec<Output> {
        tracing::trace!(seq = ex.seq, "executed");
        self.replica.step(Input::Executed {
            seq: ex.seq,
            results: ex.results,
            snapshot: ex.snapshot,
        })
    }

    /// Runs a committed batch here if it needs neither a peer nor the disk
    /// and nothing runs on the execution thread; otherwise queues it there.
    /// Returns the core's outputs when it ran here.
    fn run_batch(&mut self, batch: Execute) -> Result<Option<Vec<Output>>> {
        // With fsync on, a checkpoint's batch waits for the host's journal
        // and the result journal to reach the disk.
        let waits_for_disk = batch.snapshot_wanted && self.results.fsync();
        if self.in_flight > 0 || waits_for_disk {
            self.job(Job::Execute(batch, None))?;
            return Ok(None);
        }
        let mut app = self.app.lock().expect("application poisoned");
        let ops = app.decode(&batch);
        if !app.is_local(&ops)? {
            drop(app);
            self.job(Job::Execute(batch, Some(ops)))?;
            return Ok(None);
        }
        let ex = execute(&mut app, &batch, Some(ops), &self.executed_requests)?;
        drop(app);
        Ok(Some(self.executed(ex)))
    }

    /// Handles one step's outputs, and those of the batches that run here
    /// meanwhile, in order: records are synced before the first message
    /// that follows them is sent.
    fn handle(&mut self, outputs: Vec<Output>) -> Result<()> {
        let mut queue = VecDeque::from(outputs);
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Persist(record) => self.pending_records.push(record),
                Output::Send { to, message } => {
                    self.sync()?;
                    let f = frame(TAG_PBFT, &message.encode());
                    match to {
                        Target::Replica(r) => self.net.send_replica(r, f),
                        Target::AllReplicas => self.net.broadcast(f),
                        Target::Client(c) => match self.routes.get(&c) {
                            Some(conn) => {
                                if !self.net.send_conn(*conn, f) {
                                    self.routes.remove(&c);
                                }
                            }
                            // The client is not connected here; it retries
                            // to every replica and gets the reply then.
                            None => tracing::debug!(client = ?c, "no route to client"),
                        },
                    }
                }
                Output::RestoreState { seq, snapshot } => {
                    self.sync()?;
                    tracing::info!(seq, "restoring the application state");
                    self.job(Job::Restore { snapshot })?;
                }
                Output::Execute(batch) => {
                    self.sync()?;
                    if let Some(more) = self.run_batch(batch)? {
                        queue.extend(more);
                    }
                }
                Output::Rejected(reason) => {
                    // Every refusal is counted (`cluster status`); the log
                    // gets the 1st, 2nd, 4th, 8th... of each kind, so a
                    // flood cannot fill the disk.
                    let n = self.refusals.entry(reason).or_insert(0);
                    *n += 1;
                    if n.is_power_of_two() {
                        tracing::info!(?reason, count = *n, "input refused");
                    } else {
                        tracing::debug!(?reason, "input refused");
                    }
                }
            }
        }
        self.sync()
    }

    /// Writes the pending records if one of them must be durable now;
    /// deferrable ones alone wait for the next write (or [`Driver::flush`]).
    fn sync(&mut self) -> Result<()> {
        // A step persists a handful of records: scanning them is cheaper
        // than keeping a flag in step with the list.
        if self.pending_records.iter().all(Record::deferrable) {
            return Ok(());
        }
        self.flush()
    }

    /// Writes every pending record, deferrable ones included.
    fn flush(&mut self) -> Result<()> {
        if self.pending_records.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending_records);
        self.log.append(records)
    }

    fn job(&mut self, job: Job) -> Result<()> {
        self.in_flight += 1;
        self.jobs
            .send(job)
            .map_err(|_| Error::Cluster("the execution thread stopped".into()))
    }
}

/// The replica's peers, reached with blocking side requests over its links
/// (used from the execution thread).
struct PeerLinks {
    net: NodeHandle,
    waiting: Waiting,
    peers: Vec<u32>,
    next_id: AtomicU64,
}

impl PeerLinks {
    fn ask(&self, peer: u32, make: impl Fn(u64) -> SideRequest) -> Option<SideResponse> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std_mpsc::channel();
        self.waiting
            .lock()
            .expect("fetch table poisoned")
            .insert(id, tx);
        self.net
            .send_replica(peer, side_frame(TAG_SIDE_REQUEST, &make(id)));
        let answer = rx.recv_timeout(FETCH_TIMEOUT).ok();
        self.waiting
            .lock()
            .expect("fetch table poisoned")
            .remove(&id);
        answer
    }
}

impl Peers for PeerLinks {
    fn blob(&self, digest: Digest) -> Option<Vec<u8>> {
        for &peer in &self.peers {
            let answer = self.ask(peer, |id| SideRequest::GetBlob {
                id,
                digest: digest.0,
            });
            if let Some(SideResponse::Blob {
                bytes: Some(bytes), ..
            }) = answer
            {
                if Digest::of(&bytes) == digest {
                    tracing::info!(%digest, peer, "fetched a missing blob");
                    return Some(bytes);
                }
                tracing::warn!(%digest, peer, "a peer sent a blob that does not match its digest");
            }
        }
        None
    }

    fn results(&self, from: u64, count: u64) -> Vec<Vec<ResultEntry>> {
        self.peers
            .iter()
            .filter_map(|&peer| {
                match self.ask(peer, |id| SideRequest::Results { id, from, count }) {
                    Some(SideResponse::Results { entries, .. }) => Some(entries),
                    _ => None,
                }
            })
            .collect()
    }

    fn faults(&self) -> usize {
        // n = 3f + 1 replicas, this one and its peers.
        self.peers.len() / 3
    }
}

fn reply(net: &NodeHandle, to: Peer, response: &SideResponse) {
    let f = side_frame(TAG_SIDE_RESPONSE, response);
    match to {
        Peer::Replica(r) => net.send_replica(r, f),
        Peer::Conn(c) => {
            net.send_conn(c, f);
        }
    }
}

/// Serves one side request from the host's stores.
fn serve_side(host: &Host, results: &Results, request: SideRequest) -> SideResponse {
    let id = request.id();
    let result: Result<SideResponse> = (|| match request {
        SideRequest::PutBlob { bytes, .. } => {
            let digest = host.put_input(&bytes)?;
            Ok(SideResponse::Stored {
                id,
                digest: *digest.as_bytes(),
            })
        }
        SideRequest::GetBlob { digest, .. } => {
            let bytes = host.blobs().get(&Digest(digest)).ok();
            let bytes = bytes.filter(|b| b.len() <= SIDE_BLOB_MAX);
            Ok(SideResponse::Blob { id, bytes })
        }
        SideRequest::AddTool {
            digest,
            name,
            contract,
            ..
        } => {
            let digest = Digest(digest);
            let wasm = host.blobs().get(&digest).map_err(|_| {
                Error::Cluster(format!(
                    "the replica does not have {digest}; put the component first"
                ))
            })?;
            let record =
                host.add_tool_with_contract(&wasm, name.as_deref(), contract.as_deref())?;
            Ok(SideResponse::Tool {
                id,
                tool: record.into(),
            })
        }
        SideRequest::Tool { reference, .. } => match host.tool(&reference) {
            Ok(tool) => Ok(SideResponse::Tool {
                id,
                tool: tool.into(),
            }),
            // Typed, so that a client told so by f + 1 replicas can say
            // "no such tool" as the single-node host does.
            Err(Error::NoSuchTool(_)) => Ok(SideResponse::NoSuchTool { id }),
            Err(e) => Err(e),
        },
        SideRequest::Receipt { invocation, .. } => {
            let receipt = host.cached(&Digest(invocation))?;
            Ok(SideResponse::Receipt {
                id,
                receipt: receipt.map(|r| *r.receipt.as_bytes()),
            })
        }
        SideRequest::Results { from, count, .. } => Ok(SideResponse::Results {
            id,
            // Bounded so that a response stays far below the frame limit.
            entries: results.range(from, count.min(RESULTS_CHUNK))?,
        }),
        SideRequest::Status { .. } => Err(Error::Cluster("status is served by the driver".into())),
    })();
    result.unwrap_or_else(|e| SideResponse::Error {
        id,
        message: e.to_string(),
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
