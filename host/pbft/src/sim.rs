//! A seeded, deterministic simulator for the PBFT core.
//!
//! It runs `n` [`Replica`]s and a few [`Client`]s on a simulated network and
//! clock. Everything random comes from one seeded generator, so a seed
//! replays exactly and the same seed always yields the same trace hash.
//!
//! Faults, all active until `fault_duration_us` and then stopped: message
//! drop, duplication, corruption, delay and reordering; partitions that heal; crashes
//! and restarts from persisted records (with or without losing the records
//! of the step that was running; deferrable records not yet written are
//! always lost); per-replica clock skew and drift. For the whole
//! run, up to f replicas are Byzantine, each one of the small named
//! behaviours in [`Byzantine`].
//!
//! Checked after every step (Byzantine replicas excluded):
//! - `agreement`: no two correct replicas execute different batches at one
//!   sequence number;
//! - `exactly-once`: no request executes twice in one replica's state;
//! - `execution-order`: each replica executes sequence numbers in order and
//!   consensus time only grows;
//! - `results`: correct replicas return the same result for a request, and
//!   what a client accepts is that result;
//! - `checkpoint-agreement`: correct replicas' checkpoint digests agree;
//! - `liveness`: every client request completes within
//!   `liveness_bound_us` after the faults stop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::config::{Cluster, ClusterConfig, Params};
use crate::message::{
    key_from_seed, sign_requests, Batch, ClientId, Commit, Digest, Hlc, Message, PrePrepare,
    PrePrepareMsg, Prepare, ReplicaId, Seq, Signed,
};
use crate::replica::{compact_records, Execute, Input, Output, Record, Reject, Replica, Target};

/// A Byzantine behaviour. The replica runs the correct core; the behaviour
/// rewrites what it sends (or, for `WrongResult`, what its application
/// returns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Byzantine {
    /// As primary, sends one batch to half the backups and a different one
    /// (reordered, restamped, properly signed) to the other half.
    Equivocator,
    /// Also sends messages that claim to come from other replicas (bad
    /// signatures), tampered client requests and forged replies.
    Forger,
    /// Also re-sends old messages it received, at random, to random peers.
    Replayer,
    /// Signs prepares, commits, checkpoints and pre-prepares with wrong
    /// digests.
    WrongDigest,
    /// Its application returns wrong results (and so wrong checkpoints).
    WrongResult,
    /// Sends nothing at all.
    Silent,
}

impl Byzantine {
    /// Every behaviour.
    pub const ALL: [Byzantine; 6] = [
        Byzantine::Equivocator,
        Byzantine::Forger,
        Byzantine::Replayer,
        Byzantine::WrongDigest,
        Byzantine::WrongResult,
        Byzantine::Silent,
    ];

    /// The behaviour's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Byzantine::Equivocator => "equivocator",
            Byzantine::Forger => "forger",
            Byzantine::Replayer => "replayer",
            Byzantine::WrongDigest => "wrong-digest",
            Byzantine::WrongResult => "wrong-result",
            Byzantine::Silent => "silent",
        }
    }

    /// Parses a name from [`Byzantine::name`].
    pub fn parse(name: &str) -> Option<Byzantine> {
        Byzantine::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Which Byzantine replicas a run has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByzantineMode {
    /// None.
    None,
    /// These behaviours (at most f), on replicas chosen by the seed.
    Fixed(Vec<Byzantine>),
    /// 0 to f behaviours chosen by the seed.
    Random,
}

/// One simulation's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Replicas (n = 3f + 1; f = (n - 1) / 3).
    pub replicas: u32,
    /// Concurrent clients.
    pub clients: u32,
    /// Requests each client submits, one at a time.
    pub requests_per_client: u32,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message arrives with one byte changed.
    pub corrupt: f64,
    /// Most extra delay of a message (reorders them), microseconds.
    pub delay_max_us: u64,
    /// Probability, every 100 ms, that a partition starts.
    pub partition: f64,
    /// Probability, every 100 ms and per correct replica, that it crashes.
    pub crash: f64,
    /// Probability that a crash also loses the records of the step that
    /// was running (the records the step had not synced yet).
    pub lose_unsynced: f64,
    /// Most clock offset of a replica, either way, microseconds.
    pub clock_skew_max_us: u64,
    /// Most clock drift of a replica, either way, in parts per million.
    pub clock_drift_max_ppm: u64,
    /// Byzantine replicas.
    pub byzantine: ByzantineMode,
    /// When the faults stop (Byzantine replicas stay), microseconds.
    pub fault_duration_us: u64,
    /// How long after the faults stop every request must have completed.
    pub liveness_bound_us: u64,
    /// Protocol parameters for every replica.
    pub params: Params,
    /// Which seeds run with partial execution (batches run on f + 1
    /// replicas, the others adopting their results).
    pub partial_execution: PartialExecution,
}

/// Which seeds of a simulation run with partial execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialExecution {
    /// As `params` says.
    AsParams,
    /// Every seed: every non-empty batch runs on f + 1 replicas.
    On,
    /// Odd seeds as `On`, even seeds as `AsParams`, so one range of seeds
    /// covers both ways of executing.
    OddSeeds,
}

impl PartialExecution {
    /// Parses `as-params`, `on` or `odd-seeds`.
    pub fn parse(name: &str) -> Option<PartialExecution> {
        match name {
            "as-params" | "off" => Some(PartialExecution::AsParams),
            "on" => Some(PartialExecution::On),
            "odd-seeds" => Some(PartialExecution::OddSeeds),
            _ => None,
        }
    }

    /// The parameters seed `seed` runs with.
    fn params(self, seed: u64, params: &Params) -> Params {
        let on = match self {
            PartialExecution::AsParams => false,
            PartialExecution::On => true,
            PartialExecution::OddSeeds => seed % 2 == 1,
        };
        let mut p = params.clone();
        if on && p.partial_execution_min == 0 {
            p.partial_execution_min = 1;
        }
        p
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            replicas: 4,
            clients: 3,
            requests_per_client: 8,
            drop: 0.02,
            duplicate: 0.02,
            corrupt: 0.01,
            delay_max_us: 3_000,
            partition: 0.05,
            crash: 0.02,
            lose_unsynced: 0.5,
            clock_skew_max_us: 50_000,
            clock_drift_max_ppm: 2_000,
            byzantine: ByzantineMode::Random,
            fault_duration_us: 2_000_000,
            liveness_bound_us: 60_000_000,
            params: Params {
                checkpoint_interval: 4,
                watermark_window: 16,
                batch_requests_max: 4,
                batch_delay_us: 1_000,
                batches_in_flight_max: 3,
                view_change_timeout_us: 150_000,
                view_change_timeout_max_us: 2_000_000,
                status_interval_us: 100_000,
                clock_ahead_max_us: 500_000,
                adopt_timeout_us: 30_000,
                ..Params::default()
            },
            partial_execution: PartialExecution::OddSeeds,
        }
    }
}

/// An invariant that broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (see the module documentation).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// Simulated time, microseconds.
    pub at_us: u64,
}

/// What one seed did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// The first invariant broken, if any.
    pub violation: Option<Violation>,
    /// blake3 over every event processed, hex.
    pub trace_hash: String,
    /// Simulated time at the end, microseconds.
    pub sim_time_us: u64,
    /// Client requests completed.
    pub requests_completed: u64,
    /// How long after the faults stopped the last request completed
    /// (0 if all completed before), microseconds.
    pub settle_us: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Messages delivered to replicas, by kind.
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Highest view any correct replica reached.
    pub max_view: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// State transfers installed by correct replicas.
    pub state_transfers: u64,
    /// Inputs refused by correct replicas.
    pub rejections: u64,
    /// The same, by reason.
    pub rejections_by_reason: BTreeMap<Reject, u64>,
    /// The Byzantine behaviours in the run, by replica.
    pub byzantine: Vec<(ReplicaId, Byzantine)>,
    /// Batches correct replicas adopted from others' results (partial
    /// execution), and those they were meant to adopt but ran.
    pub batches_adopted: u64,
    /// Adoptions that fell back to running the batch.
    pub adoptions_abandoned: u64,
    /// Replica signatures correct replicas checked in batches, ahead of
    /// frames delivered together.
    pub signatures_batched: u64,
}

/// A deterministic generator (SplitMix64): the only randomness in a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x0005_eed0_fbf7_u64)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        p > 0.0 && unit < p
    }
}

/// The replicated application of the simulation: a hash chain over the
/// executed requests, with the set of executed requests to catch a second
/// execution.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SimApp {
    chain: [u8; 32],
    seq: Seq,
    hlc: Hlc,
    executed: BTreeSet<(ClientId, u64)>,
}

impl SimApp {
    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        *self = match snapshot {
            None => SimApp::default(),
            Some(b) => {
                postcard::from_bytes(b).map_err(|e| format!("snapshot does not decode: {e}"))?
            }
        };
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Endpoint {
    Replica(ReplicaId),
    Client(u32),
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: Endpoint,
        bytes: Vec<u8>,
    },
    ReplicaTick(ReplicaId),
    ClientTick(u32),
    Crash {
        node: ReplicaId,
        lose_unsynced: bool,
    },
    Restart(ReplicaId),
    Partition(Vec<ReplicaId>),
    Heal,
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    records: Vec<Record>,
    /// Deferrable records ([`Record::deferrable`]) not written yet: they
    /// go with the next record that must be, or at a tick, as the driver
    /// does; a crash loses them.
    deferred: Vec<Record>,
    app: SimApp,
    skew_us: i64,
    drift_ppm: i64,
    byzantine: Option<Byzantine>,
    key: SigningKey,
    seen: VecDeque<Vec<u8>>,
    crash_in_next_step: bool,
}

#[derive(Debug)]
struct SimClient {
    client: Client,
    submitted: u32,
    completed: u32,
    next_submit_us: Option<u64>,
    /// The key it shares with the other sessions of its group.
    key: SigningKey,
}

/// Epoch of every replica's clock, so that negative skew stays positive.
const CLOCK_BASE_US: u64 = 10_000_000;
const TICK_US: u64 = 1_000;
const CLIENT_RETRY_US: u64 = 120_000;
/// Clients `k * SESSIONS_PER_KEY ..` are sessions of one key.
const SESSIONS_PER_KEY: u32 = 2;
/// Deliveries to one replica due this soon may arrive together
/// ([`Input::ReceiveMany`]), this many at most.
const GROUP_WINDOW_US: u64 = 500;
const GROUP_FRAMES_MAX: usize = 16;

/// One simulation run.
#[derive(Debug)]
struct World {
    cfg: SimConfig,
    cluster: Cluster,
    rng: Rng,
    now_us: u64,
    events: BTreeMap<(u64, u64), Event>,
    event_counter: u64,
    nodes: Vec<Node>,
    clients: Vec<SimClient>,
    client_index: BTreeMap<ClientId, u32>,
    partition: Option<BTreeSet<ReplicaId>>,
    trace: blake3::Hasher,
    // Invariant state.
    executed_at: BTreeMap<Seq, Digest>,
    results: BTreeMap<(ClientId, u64), Vec<u8>>,
    checkpoints: BTreeMap<Seq, Digest>,
    violation: Option<Violation>,
    report: SimReport,
}

/// Runs one seed.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut cfg = cfg.clone();
    cfg.params = cfg.partial_execution.params(cfg.seed, &cfg.params);
    let mut w = World::new(cfg);
    w.run();
    w.finish()
}

impl World {
    fn new(cfg: SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        // n = 3f + 1 exactly: the largest such n not above what was asked.
        let f = (cfg.replicas.max(4) - 1) / 3;
        let n = 3 * f + 1;
        let keys: Vec<SigningKey> = (0..n)
            .map(|i| key_from_seed(cfg.seed, &format!("replica-{i}")))
            .collect();
        let config = ClusterConfig::from_keys(f, &keys);
        let cluster = match config.validate() {
            Ok(c) => c,
            Err(e) => panic!("the simulator builds a valid cluster: {e}"),
        };
        let kinds: Vec<Byzantine> = match &cfg.byzantine {
            ByzantineMode::None => vec![],
            ByzantineMode::Fixed(k) => k.iter().copied().take(f as usize).collect(),
            ByzantineMode::Random => (0..rng.below(u64::from(f) + 1))
                .map(|_| Byzantine::ALL[rng.below(Byzantine::ALL.len() as u64) as usize])
                .collect(),
        };
        let mut byz_nodes: Vec<ReplicaId> = Vec::new();
        while byz_nodes.len() < kinds.len() {
            let r = rng.below(u64::from(n)) as ReplicaId;
            if !byz_nodes.contains(&r) {
                byz_nodes.push(r);
            }
        }
        let mut nodes = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let skew = if cfg.clock_skew_max_us == 0 {
                0
            } else {
                rng.below(2 * cfg.clock_skew_max_us + 1) as i64 - cfg.clock_skew_max_us as i64
            };
            let drift_ppm =
                rng.below(2 * cfg.clock_drift_max_ppm + 1) as i64 - cfg.clock_drift_max_ppm as i64;
            let replica =
                match Replica::new(cluster.clone(), i as u32, key.clone(), cfg.params.clone()) {
                    Ok(r) => r,
                    Err(e) => panic!("the simulator's parameters are valid: {e}"),
                };
            let byzantine = byz_nodes
                .iter()
                .position(|b| *b == i as u32)
                .map(|p| kinds[p]);
            nodes.push(Node {
                replica: Some(replica),
                records: Vec::new(),
                deferred: Vec::new(),
                app: SimApp::default(),
                skew_us: skew,
                drift_ppm,
                byzantine,
                key,
                seen: VecDeque::new(),
                crash_in_next_step: false,
            });
        }
        let mut clients = Vec::new();
        let mut client_index = BTreeMap::new();
        for j in 0..cfg.clients {
            // Clients pair up as two sessions of one key, which sign one
            // bundle when they submit together.
            let key = key_from_seed(cfg.seed, &format!("client-{}", j / SESSIONS_PER_KEY));
            let client = Client::new(
                cluster.clone(),
                key.clone(),
                j % SESSIONS_PER_KEY,
                CLIENT_RETRY_US,
            );
            client_index.insert(client.id(), j);
            clients.push(SimClient {
                client,
                submitted: 0,
                completed: 0,
                next_submit_us: Some(rng.below(20_000)),
                key,
            });
        }
        let byzantine = byz_nodes
            .iter()
            .copied()
            .zip(kinds.iter().copied())
            .collect();
        let report = SimReport {
            seed: cfg.seed,
            violation: None,
            trace_hash: String::new(),
            sim_time_us: 0,
            requests_completed: 0,
            settle_us: 0,
            messages_delivered: 0,
            messages_by_kind: BTreeMap::new(),
            max_view: 0,
            crashes: 0,
            state_transfers: 0,
            rejections: 0,
            rejections_by_reason: BTreeMap::new(),
            byzantine,
            batches_adopted: 0,
            adoptions_abandoned: 0,
            signatures_batched: 0,
        };
        let mut w = World {
            cfg,
            cluster,
            rng,
            now_us: 0,
            events: BTreeMap::new(),
            event_counter: 0,
            nodes,
            clients,
            client_index,
            partition: None,
            trace: blake3::Hasher::new(),
            executed_at: BTreeMap::new(),
            results: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            violation: None,
            report,
        };
        w.schedule_faults();
        for i in 0..n {
            let offset = w.rng.below(TICK_US);
            w.schedule(offset, Event::ReplicaTick(i));
        }
        for j in 0..w.cfg.clients {
            let offset = w.rng.below(TICK_US);
            w.schedule(offset, Event::ClientTick(j));
        }
        w
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.event_counter += 1;
        self.events.insert((at_us, self.event_counter), event);
    }

    /// Takes the deliveries to replica `i` due within the next
    /// [`GROUP_WINDOW_US`] (at most [`GROUP_FRAMES_MAX`] in all, counting
    /// the one being delivered), in order, counting them delivered.
    fn take_soon(&mut self, i: ReplicaId) -> Vec<Vec<u8>> {
        let window = (self.now_us, 0)..(self.now_us + GROUP_WINDOW_US, u64::MAX);
        let due: Vec<(u64, u64)> = self
            .events
            .range(window)
            .filter(
                |(_, e)| matches!(e, Event::Deliver { to: Endpoint::Replica(j), .. } if *j == i),
            )
            .map(|(k, _)| *k)
            .take(GROUP_FRAMES_MAX - 1)
            .collect();
        let mut frames = Vec::with_capacity(due.len());
        for key in due {
            if let Some(Event::Deliver { bytes, .. }) = self.events.remove(&key) {
                self.report.messages_delivered += 1;
                frames.push(bytes);
            }
        }
        frames
    }

    fn faulty_time(&self) -> bool {
        self.now_us < self.cfg.fault_duration_us
    }

    fn is_correct(&self, i: ReplicaId) -> bool {
        self.nodes[i as usize].byzantine.is_none()
    }

    /// Plans partitions and crashes for the fault window up front.
    fn schedule_faults(&mut self) {
        let end = self.cfg.fault_duration_us;
        let n = self.cfg.replicas.max(4);
        let f = (n - 1) / 3;
        let mut t = 0;
        let mut partition_until = 0;
        while t < end {
            if t >= partition_until && self.rng.chance(self.cfg.partition) {
                let size = 1 + self.rng.below(u64::from(n / 2)) as usize;
                let mut side = BTreeSet::new();
                while side.len() < size {
                    side.insert(self.rng.below(u64::from(n)) as ReplicaId);
                }
                let heal = (t + 100_000 + self.rng.below(400_000)).min(end);
                self.schedule(t, Event::Partition(side.into_iter().collect()));
                self.schedule(heal, Event::Heal);
                partition_until = heal;
            }
            t += 100_000;
        }
        // Crashes: never more than f correct replicas down at once.
        let mut down: Vec<(u64, u64)> = Vec::new();
        for i in 0..n {
            if self.nodes[i as usize].byzantine.is_some() {
                continue;
            }
            let mut t = self.rng.below(100_000);
            while t < end {
                if self.rng.chance(self.cfg.crash) {
                    let up = (t + 50_000 + self.rng.below(450_000)).min(end);
                    let overlapping = down.iter().filter(|(a, b)| *a < up && t < *b).count();
                    if overlapping < f as usize && up > t {
                        let lose = self.rng.chance(self.cfg.lose_unsynced);
                        self.schedule(
                            t,
                            Event::Crash {
                                node: i,
                                lose_unsynced: lose,
                            },
                        );
                        self.schedule(up, Event::Restart(i));
                        down.push((t, up));
                        t = up;
                    }
                }
                t += 100_000;
            }
        }
    }

    fn run(&mut self) {
        let deadline = self.cfg.fault_duration_us + self.cfg.liveness_bound_us;
        while self.violation.is_none() {
            if self.all_done() {
                break;
            }
            let Some(((at, _), event)) = self.events.pop_first() else {
                break;
            };
            if at > deadline {
                let pending: u32 = self
                    .clients
                    .iter()
                    .map(|c| self.cfg.requests_per_client - c.completed)
                    .sum();
                let states: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match &n.replica {
                        None => format!("r{i}: down"),
                        Some(r) => format!(
                            "r{i}{}: {}",
                            n.byzantine
                                .map(|b| format!(" ({})", b.name()))
                                .unwrap_or_default(),
                            r.describe()
                        ),
                    })
                    .collect();
                self.violate(
                    "liveness",
                    format!(
                        "{pending} client requests not complete {} ms after the faults stopped; {}",
                        self.cfg.liveness_bound_us / 1000,
                        states.join("; ")
                    ),
                );
                break;
            }
            self.now_us = at;
            self.handle(event);
        }
        self.report.sim_time_us = self.now_us;
    }

    fn all_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.completed >= self.cfg.requests_per_client)
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                invariant,
                detail,
                at_us: self.now_us,
            });
        }
    }

    fn trace(&mut self, tag: u8, who: u64, bytes: &[u8]) {
        self.trace.update(&self.now_us.to_le_bytes());
        self.trace.update(&[tag]);
        self.trace.update(&who.to_le_bytes());
        self.trace.update(&(bytes.len() as u64).to_le_bytes());
        self.trace.update(bytes);
    }

    /// Replica `i`'s clock: offset by its skew and running fast or slow by
    /// its drift, never backwards.
    fn replica_clock(&self, i: ReplicaId) -> u64 {
        let node = &self.nodes[i as usize];
        let t = self.now_us as i64;
        let drift = t / 1_000_000 * node.drift_ppm + (t % 1_000_000) * node.drift_ppm / 1_000_000;
        (CLOCK_BASE_US as i64 + t + node.skew_us + drift) as u64
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ReplicaTick(i) => {
                self.trace(1, u64::from(i), &[]);
                self.schedule(self.now_us + TICK_US, Event::ReplicaTick(i));
                let now_us = self.replica_clock(i);
                self.step_replica(i, Input::Tick { now_us });
                // The driver writes deferred records at a tick.
                let node = &mut self.nodes[i as usize];
                if node.replica.is_some() {
                    node.records.append(&mut node.deferred);
                }
                if self.nodes[i as usize].byzantine == Some(Byzantine::Replayer) {
                    self.replay_old(i);
                }
            }
            Event::ClientTick(j) => {
                self.trace(2, u64::from(j), &[]);
                self.schedule(self.now_us + TICK_US, Event::ClientTick(j));
                self.client_tick(j);
            }
            Event::Deliver { to, bytes } => {
                self.report.messages_delivered += 1;
                match to {
                    Endpoint::Replica(i) => {
                        // Half the time the frames due at this replica
                        // soon arrive with this one, as a loaded driver
                        // finds them queued and hands them over together.
                        let mut frames = vec![bytes];
                        if self.rng.chance(0.5) {
                            frames.extend(self.take_soon(i));
                        }
                        for bytes in &frames {
                            self.trace(3, u64::from(i), bytes);
                            let kind = Message::decode(bytes).map_or("malformed", |m| m.kind());
                            *self.report.messages_by_kind.entry(kind).or_insert(0) += 1;
                            let node = &mut self.nodes[i as usize];
                            if node.byzantine == Some(Byzantine::Replayer) && node.seen.len() < 256
                            {
                                node.seen.push_back(bytes.clone());
                            }
                        }
                        let input = if frames.len() == 1 {
                            Input::Receive(frames.pop().expect("one frame"))
                        } else {
                            Input::ReceiveMany(frames)
                        };
                        self.step_replica(i, input);
                    }
                    Endpoint::Client(j) => {
                        self.trace(4, u64::from(j), &bytes);
                        self.client_receive(j, &bytes);
                    }
                }
            }
            Event::Crash {
                node,
                lose_unsynced,
            } => {
                self.trace(5, u64::from(node), &[u8::from(lose_unsynced)]);
                self.report.crashes += 1;
                let n = &mut self.nodes[node as usize];
                if lose_unsynced {
                    n.crash_in_next_step = true;
                } else {
                    n.replica = None;
                    n.deferred.clear();
                }
            }
            Event::Restart(i) => {
                self.trace(6, u64::from(i), &[]);
                self.restart(i);
            }
            Event::Partition(side) => {
                let bytes: Vec<u8> = side.iter().map(|s| *s as u8).collect();
                self.trace(7, 0, &bytes);
                self.partition = Some(side.into_iter().collect());
            }
            Event::Heal => {
                self.trace(8, 0, &[]);
                self.partition = None;
            }
        }
    }

    fn restart(&mut self, i: ReplicaId) {
        let node = &mut self.nodes[i as usize];
        node.crash_in_next_step = false;
        if node.replica.is_some() {
            return;
        }
        let recovered = Replica::recover(
            self.cluster.clone(),
            i,
            node.key.clone(),
            self.cfg.params.clone(),
            &node.records,
        );
        match recovered {
            Ok((replica, outputs)) => {
                node.replica = Some(replica);
                node.app = SimApp::default();
                self.handle_outputs(i, outputs);
            }
            Err(e) => self.violate("recovery", format!("replica {i} could not recover: {e}")),
        }
    }

    fn step_replica(&mut self, i: ReplicaId, input: Input) {
        let node = &mut self.nodes[i as usize];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let outputs = replica.step(input);
        if node.crash_in_next_step {
            // The crash strikes while this step's records (after any
            // deferred ones) are being written: a prefix reaches the disk,
            // nothing is sent, nothing runs.
            let records: Vec<Record> = std::mem::take(&mut node.deferred)
                .into_iter()
                .chain(outputs.into_iter().filter_map(|o| match o {
                    Output::Persist(r) => Some(r),
                    _ => None,
                }))
                .collect();
            let keep = self.rng.below(records.len() as u64 + 1) as usize;
            let node = &mut self.nodes[i as usize];
            node.records.extend(records.into_iter().take(keep));
            node.replica = None;
            node.crash_in_next_step = false;
            return;
        }
        self.handle_outputs(i, outputs);
    }

    fn handle_outputs(&mut self, i: ReplicaId, outputs: Vec<Output>) {
        let mut queue: VecDeque<Output> = outputs.into();
        let correct = self.is_correct(i);
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Persist(r) => self.persist(i, r),
                Output::Send { to, message } => {
                    if correct {
                        self.check_sent(i, &message);
                    }
                    self.send_from_replica(i, to, message);
                }
                Output::RestoreState { seq, snapshot } => {
                    let node = &mut self.nodes[i as usize];
                    if let Err(e) = node.app.restore(snapshot.as_deref()) {
                        self.violate("state-transfer", format!("replica {i}: {e}"));
                    } else if node.app.seq != seq && seq != 0 {
                        let have = node.app.seq;
                        self.violate(
                            "state-transfer",
                            format!(
                                "replica {i} restored state of seq {have} for checkpoint {seq}"
                            ),
                        );
                    }
                    if correct && snapshot.is_some() {
                        self.report.state_transfers += 1;
                    }
                }
                Output::Execute(e) => {
                    let input = self.execute(i, &e);
                    let Some(replica) = self.nodes[i as usize].replica.as_mut() else {
                        return;
                    };
                    queue.extend(replica.step(input));
                }
                Output::Rejected(_) => {}
            }
        }
    }

    fn persist(&mut self, i: ReplicaId, r: Record) {
        let node = &mut self.nodes[i as usize];
        if r.deferrable() {
            node.deferred.push(r);
            return;
        }
        node.records.append(&mut node.deferred);
        // Compact as a real store would, so recovery is tested on exactly
        // what the documented compaction keeps.
        let compact = matches!(
            r,
            Record::Stable(_) | Record::View { .. } | Record::NewView(_)
        );
        node.records.push(r);
        if compact {
            compact_records(&mut node.records);
        }
    }

    /// Runs a batch on replica `i`'s application, checking the execution
    /// invariants, and returns the result input.
    fn execute(&mut self, i: ReplicaId, e: &Execute) -> Input {
        let correct = self.is_correct(i);
        let wrong = self.nodes[i as usize].byzantine == Some(Byzantine::WrongResult);
        if correct {
            match self.executed_at.get(&e.seq) {
                Some(d) if *d != e.digest => {
                    let d = *d;
                    self.violate(
                        "agreement",
                        format!(
                            "replica {i} executes {:?} at seq {}, another correct replica {d:?}",
                            e.digest, e.seq
                        ),
                    );
                }
                _ => {
                    self.executed_at.insert(e.seq, e.digest);
                }
            }
        }
        let app = &mut self.nodes[i as usize].app;
        if correct && (e.seq != app.seq + 1 || e.hlc <= app.hlc) {
            let (seq, hlc) = (app.seq, app.hlc);
            self.violate(
                "execution-order",
                format!(
                    "replica {i} executes seq {} at {:?} after seq {seq} at {hlc:?}",
                    e.seq, e.hlc
                ),
            );
        }
        let app = &mut self.nodes[i as usize].app;
        app.seq = e.seq;
        app.hlc = e.hlc;
        let mut results = Vec::new();
        let mut twice = None;
        for r in &e.requests {
            if !app.executed.insert((r.client, r.timestamp)) {
                twice = Some((r.client, r.timestamp));
            }
            let mut h = blake3::Hasher::new();
            h.update(&app.chain);
            h.update(&r.client.key);
            h.update(&r.client.session.to_le_bytes());
            h.update(&r.timestamp.to_le_bytes());
            h.update(&r.operation);
            app.chain = *h.finalize().as_bytes();
            let mut result = app.chain[..8].to_vec();
            if wrong {
                result.push(0xff);
            }
            results.push(result);
        }
        let snapshot = e.snapshot_wanted.then(|| crate::message::encode(&*app));
        if let Some(adopted) = &e.adopted {
            // The application's state moved as if it had run the batch
            // (above); the results are the ones f + 1 replicas signed, and
            // a correct replica's own would have been the same.
            if correct && *adopted != results {
                self.violate(
                    "adoption",
                    format!(
                        "replica {i} adopts results at seq {} that differ from its own",
                        e.seq
                    ),
                );
            }
            results = adopted.clone();
        }
        if correct {
            if let Some((c, ts)) = twice {
                self.violate(
                    "exactly-once",
                    format!("replica {i} executes {c:?}/{ts} a second time"),
                );
            }
            for (r, result) in e.requests.iter().zip(&results) {
                let key = (r.client, r.timestamp);
                match self.results.get(&key) {
                    Some(prev) if prev != result => {
                        self.violate(
                            "results",
                            format!(
                                "replica {i} returns a different result for {:?}/{}",
                                r.client, r.timestamp
                            ),
                        );
                    }
                    _ => {
                        self.results.insert(key, result.clone());
                    }
                }
            }
        }
        Input::Executed {
            seq: e.seq,
            results,
            snapshot,
        }
    }

    /// Invariants on what correct replicas send.
    fn check_sent(&mut self, i: ReplicaId, m: &Message) {
        if let Message::Checkpoint(c) = m {
            match self.checkpoints.get(&c.payload.seq) {
                Some(d) if *d != c.payload.state_digest => {
                    let seq = c.payload.seq;
                    self.violate(
                        "checkpoint-agreement",
                        format!("replica {i} checkpoints seq {seq} with another digest"),
                    );
                }
                _ => {
                    self.checkpoints
                        .insert(c.payload.seq, c.payload.state_digest);
                }
            }
        }
    }

    fn endpoints(&self, from: Endpoint, to: Target) -> Vec<Endpoint> {
        match to {
            Target::Replica(r) => vec![Endpoint::Replica(r)],
            Target::AllReplicas => (0..self.cfg.replicas.max(4))
                .filter(|r| from != Endpoint::Replica(*r))
                .map(Endpoint::Replica)
                .collect(),
            Target::Client(c) => self
                .client_index
                .get(&c)
                .map(|j| Endpoint::Client(*j))
                .into_iter()
                .collect(),
        }
    }

    /// Sends through the simulated network: partitions, drops, duplicates
    /// and delays apply while the faults last.
    fn transmit(&mut self, from: Endpoint, to: Endpoint, bytes: Vec<u8>) {
        let faulty = self.faulty_time();
        if faulty {
            if let (Some(side), Endpoint::Replica(a), Endpoint::Replica(b)) =
                (&self.partition, from, to)
            {
                if side.contains(&a) != side.contains(&b) {
                    return;
                }
            }
            if self.rng.chance(self.cfg.drop) {
                return;
            }
        }
        let mut bytes = bytes;
        if faulty && !bytes.is_empty() && self.rng.chance(self.cfg.corrupt) {
            let i = self.rng.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 << self.rng.below(8);
        }
        let copies = if faulty && self.rng.chance(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if faulty {
                self.rng.below(self.cfg.delay_max_us + 1)
            } else {
                self.rng.below(200)
            };
            let at = self.now_us + 100 + jitter;
            self.schedule(
                at,
                Event::Deliver {
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn send_from_replica(&mut self, i: ReplicaId, to: Target, message: Message) {
        let from = Endpoint::Replica(i);
        let targets = self.endpoints(from, to);
        let byz = self.nodes[i as usize].byzantine;
        match byz {
            Some(Byzantine::Silent) => {}
            Some(Byzantine::Equivocator) => {
                let alt = self.equivocate(i, &message);
                let bytes = message.encode();
                for (k, t) in targets.into_iter().enumerate() {
                    match (&alt, t) {
                        (Some(a), Endpoint::Replica(_)) if k % 2 == 1 => {
                            self.transmit(from, t, a.clone())
                        }
                        _ => self.transmit(from, t, bytes.clone()),
                    }
                }
            }
            Some(Byzantine::WrongDigest) => {
                let m = self.wrong_digest(i, message);
                let bytes = m.encode();
                for t in targets {
                    self.transmit(from, t, bytes.clone());
                }
            }
            Some(Byzantine::Forger) => {
                let forged = self.forge(i, &message);
                let bytes = message.encode();
                for t in targets {
                    self.transmit(from, t, bytes.clone());
                    for f in &forged {
                        self.transmit(from, t, f.clone());
                    }
                }
            }
            _ => {
                let bytes = message.encode();
                for t in targets {
                    self.transmit(from, t, bytes.clone());
                }
            }
        }
    }

    fn client_tick(&mut self, j: u32) {
        let now = self.now_us;
        let per_client = self.cfg.requests_per_client;
        let due = |c: &SimClient| {
            c.next_submit_us.is_some_and(|at| now >= at) && c.submitted < per_client
        };
        if !due(&self.clients[j as usize]) {
            let c = &mut self.clients[j as usize];
            if let Some((to, m)) = c.client.tick(CLOCK_BASE_US + now) {
                self.client_send(j, to, &m);
            }
            return;
        }
        // The sessions of this client's key that are due now submit
        // together, under one signature.
        let first = j - j % SESSIONS_PER_KEY;
        let last = (first + SESSIONS_PER_KEY).min(self.cfg.clients);
        let group: Vec<u32> = std::iter::once(j)
            .chain((first..last).filter(|&k| k != j && due(&self.clients[k as usize])))
            .collect();
        let mut requests = Vec::new();
        for &k in &group {
            let c = &mut self.clients[k as usize];
            let op = format!("client-{k}-op-{}", c.submitted).into_bytes();
            let request = c.client.begin(op, CLOCK_BASE_US + now);
            c.submitted += 1;
            c.next_submit_us = None;
            requests.extend(request);
        }
        let key = self.clients[j as usize].key.clone();
        for (k, signed) in group.into_iter().zip(sign_requests(requests, &key)) {
            if let Some((to, m)) = self.clients[k as usize]
                .client
                .send(signed, CLOCK_BASE_US + now)
            {
                self.client_send(k, to, &m);
            }
        }
    }

    fn client_send(&mut self, j: u32, to: Target, m: &Message) {
        let from = Endpoint::Client(j);
        let bytes = m.encode();
        for t in self.endpoints(from, to) {
            self.transmit(from, t, bytes.clone());
        }
    }

    fn client_receive(&mut self, j: u32, bytes: &[u8]) {
        let Some(m) = Message::decode(bytes) else {
            return;
        };
        let c = &mut self.clients[j as usize];
        let Some(done) = c.client.on_message(&m) else {
            return;
        };
        c.completed += 1;
        let id = c.client.id();
        self.report.requests_completed += 1;
        self.report.settle_us = self
            .report
            .settle_us
            .max(self.now_us.saturating_sub(self.cfg.fault_duration_us));
        if c.submitted < self.cfg.requests_per_client {
            let spread =
                self.cfg.fault_duration_us / u64::from(self.cfg.requests_per_client.max(1));
            let think = self.rng.below(spread.max(1));
            self.clients[j as usize].next_submit_us = Some(self.now_us + think);
        }
        self.trace(9, u64::from(j), &done.result);
        match self.results.get(&(id, done.timestamp)) {
            Some(r) if *r == done.result => {}
            Some(_) => self.violate(
                "results",
                format!("client {j} accepted a result no correct replica produced"),
            ),
            None => self.violate(
                "results",
                format!(
                    "client {j} accepted a result for {} that no correct replica executed",
                    done.timestamp
                ),
            ),
        }
    }

    // ----- Byzantine behaviours ----------------------------------------

    /// Equivocator: a second, validly signed pre-prepare for the same
    /// sequence with a different batch.
    fn equivocate(&mut self, i: ReplicaId, m: &Message) -> Option<Vec<u8>> {
        let Message::PrePrepare(pp) = m else {
            return None;
        };
        if pp.header.from != i {
            return None;
        }
        let mut batch: Batch = pp.batch.clone();
        batch.requests.reverse();
        batch.hlc = batch.hlc.successor();
        let key = &self.nodes[i as usize].key;
        let h = pp.header.payload;
        let header = Signed::sign(
            i,
            PrePrepare {
                view: h.view,
                seq: h.seq,
                digest: batch.digest(),
            },
            key,
        );
        Some(Message::PrePrepare(PrePrepareMsg { header, batch }).encode())
    }

    /// Wrong digests, signed properly by the Byzantine replica itself.
    fn wrong_digest(&mut self, i: ReplicaId, m: Message) -> Message {
        let key = self.nodes[i as usize].key.clone();
        let skew = |d: Digest| Digest::of(&d.0);
        match m {
            Message::Prepare(p) => {
                let v = p.payload;
                Message::Prepare(Signed::sign(
                    i,
                    Prepare {
                        digest: skew(v.digest),
                        ..v
                    },
                    &key,
                ))
            }
            Message::Commit(c) => {
                let v = c.payload;
                Message::Commit(Signed::sign(
                    i,
                    Commit {
                        digest: skew(v.digest),
                        ..v
                    },
                    &key,
                ))
            }
            Message::Checkpoint(c) => {
                let mut v = c.payload;
                v.state_digest = skew(v.state_digest);
                Message::Checkpoint(Signed::sign(i, v, &key))
            }
            Message::PrePrepare(pp) if pp.header.from == i => {
                let h = pp.header.payload;
                let header = Signed::sign(
                    i,
                    PrePrepare {
                        digest: skew(h.digest),
                        ..h
                    },
                    &key,
                );
                Message::PrePrepare(PrePrepareMsg {
                    header,
                    batch: pp.batch,
                })
            }
            other => other,
        }
    }

    /// Forgeries: others' names with this replica's signature, tampered
    /// client requests, a forged reply.
    fn forge(&mut self, i: ReplicaId, m: &Message) -> Vec<Vec<u8>> {
        let n = self.cfg.replicas.max(4);
        let victim = (i + 1 + self.rng.below(u64::from(n - 1)) as u32) % n;
        let mut out = Vec::new();
        match m {
            Message::Prepare(p) => {
                let mut f = p.clone();
                f.from = victim;
                out.push(Message::Prepare(f).encode());
            }
            Message::Commit(c) => {
                let mut f = c.clone();
                f.from = victim;
                f.payload.digest = Digest::of(b"forged");
                out.push(Message::Commit(f).encode());
            }
            Message::Checkpoint(c) => {
                let mut f = c.clone();
                f.from = victim;
                out.push(Message::Checkpoint(f).encode());
            }
            Message::PrePrepare(pp) if pp.header.from == i && !pp.batch.requests.is_empty() => {
                // A client request changed after the client signed it,
                // wrapped in a pre-prepare that is itself correctly signed.
                let mut batch = pp.batch.clone();
                batch.requests[0].request.operation.push(b'!');
                let h = pp.header.payload;
                let key = &self.nodes[i as usize].key;
                let header = Signed::sign(
                    i,
                    PrePrepare {
                        digest: batch.digest(),
                        ..h
                    },
                    key,
                );
                out.push(Message::PrePrepare(PrePrepareMsg { header, batch }).encode());
            }
            Message::Request(r) => {
                // A forwarded request altered after the client signed it,
                // and one moved to another session of the client's key
                // under the same bundle signature.
                let mut f = r.clone();
                f.request.operation.push(b'!');
                out.push(Message::Request(f).encode());
                let mut f = r.clone();
                f.request.client.session ^= 1;
                out.push(Message::Request(f).encode());
            }
            Message::Reply(r) => {
                let mut f = r.clone();
                f.root.from = victim;
                f.reply.result = b"forged result".to_vec();
                out.push(Message::Reply(f).encode());
            }
            _ => {}
        }
        out
    }

    /// Replayer: re-sends a message it received earlier.
    fn replay_old(&mut self, i: ReplicaId) {
        let len = self.nodes[i as usize].seen.len() as u64;
        if len == 0 || !self.rng.chance(0.2) {
            return;
        }
        let k = self.rng.below(len) as usize;
        let bytes = self.nodes[i as usize].seen[k].clone();
        let n = self.cfg.replicas.max(4);
        let to = self.rng.below(u64::from(n)) as ReplicaId;
        if to != i {
            self.transmit(Endpoint::Replica(i), Endpoint::Replica(to), bytes);
        }
    }

    fn finish(mut self) -> SimReport {
        for node in &self.nodes {
            if node.byzantine.is_some() {
                continue;
            }
            if let Some(r) = &node.replica {
                self.report.max_view = self.report.max_view.max(r.view());
                self.report.rejections += r.stats().rejected_total();
                self.report.batches_adopted += r.stats().batches_adopted;
                self.report.adoptions_abandoned += r.stats().adoptions_abandoned;
                self.report.signatures_batched += r.stats().signatures_batched;
                for (k, v) in &r.stats().rejected {
                    *self.report.rejections_by_reason.entry(*k).or_insert(0) += v;
                }
            }
        }
        self.report.violation = self.violation.take();
        let hash = self.trace.finalize();
        let mut hex = String::new();
        for b in hash.as_bytes() {
            let _ = write!(hex, "{b:02x}");
        }
        self.report.trace_hash = hex;
        self.report
    }
}

/// What a range of seeds did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Seeds run.
    pub seeds_run: u64,
    /// Seeds that broke an invariant.
    pub failures: u64,
    /// The first of them and what it broke.
    pub first_failure: Option<(u64, Violation)>,
    /// The failing seeds with what they broke and their trace hashes (the
    /// first 100).
    pub failed: Vec<(u64, Violation, String)>,
    /// Requests completed over all seeds.
    pub requests_completed: u64,
    /// The longest any seed took to finish after its faults stopped.
    pub settle_us_max: u64,
    /// Crashes injected over all seeds.
    pub crashes: u64,
    /// View changes seen (highest view per seed, summed).
    pub views: u64,
    /// State transfers over all seeds.
    pub state_transfers: u64,
    /// Refused inputs at correct replicas over all seeds.
    pub rejections: u64,
    /// Batches adopted by correct replicas over all seeds.
    pub batches_adopted: u64,
    /// Adoptions that fell back to running the batch, over all seeds.
    pub adoptions_abandoned: u64,
    /// Replica signatures checked in batches, over all seeds.
    pub signatures_batched: u64,
}

impl Summary {
    /// The summary as one JSON object.
    pub fn to_json(&self, elapsed_ms: u128, config: &SimConfig, start: u64) -> String {
        let first = match &self.first_failure {
            None => "null".to_string(),
            Some((seed, v)) => format!(
                "{{\"seed\":{seed},\"invariant\":\"{}\",\"detail\":\"{}\",\"at_us\":{}}}",
                v.invariant,
                v.detail.replace('\\', "\\\\").replace('"', "\\\""),
                v.at_us
            ),
        };
        format!(
            "{{\"seeds_run\":{},\"start_seed\":{start},\"replicas\":{},\"failures\":{},\"first_failure\":{first},\
             \"requests_completed\":{},\"settle_ms_max\":{},\"crashes\":{},\"views_total\":{},\"state_transfers\":{},\"rejections\":{},\
             \"batches_adopted\":{},\"adoptions_abandoned\":{},\"signatures_batched\":{},\"elapsed_ms\":{elapsed_ms}}}",
            self.seeds_run,
            config.replicas,
            self.failures,
            self.requests_completed,
            self.settle_us_max / 1000,
            self.crashes,
            self.views,
            self.state_transfers,
            self.rejections,
            self.batches_adopted,
            self.adoptions_abandoned,
            self.signatures_batched
        )
    }
}

/// Runs `count` seeds from `start` with `base`'s settings.
pub fn run_seeds(base: &SimConfig, start: u64, count: u64) -> Summary {
    let mut s = Summary {
        seeds_run: 0,
        failures: 0,
        first_failure: None,
        failed: Vec::new(),
        requests_completed: 0,
        settle_us_max: 0,
        crashes: 0,
        views: 0,
        state_transfers: 0,
        rejections: 0,
        batches_adopted: 0,
        adoptions_abandoned: 0,
        signatures_batched: 0,
    };
    for seed in start..start.saturating_add(count) {
        let cfg = SimConfig {
            seed,
            ..base.clone()
        };
        let r = run(&cfg);
        s.seeds_run += 1;
        s.requests_completed += r.requests_completed;
        s.settle_us_max = s.settle_us_max.max(r.settle_us);
        s.crashes += r.crashes;
        s.views += r.max_view;
        s.state_transfers += r.state_transfers;
        s.rejections += r.rejections;
        s.batches_adopted += r.batches_adopted;
        s.adoptions_abandoned += r.adoptions_abandoned;
        s.signatures_batched += r.signatures_batched;
        if let Some(v) = r.violation {
            s.failures += 1;
            if s.failed.len() < 100 {
                s.failed.push((seed, v.clone(), r.trace_hash.clone()));
            }
            if s.first_failure.is_none() {
                s.first_failure = Some((seed, v));
            }
        }
    }
    s
}
