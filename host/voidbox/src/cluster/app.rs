//! The replicated application: what a replica does with each committed
//! batch. It knows the host and the operation format, not sockets or the
//! protocol's messages beyond the batch it is handed; peers are reached
//! through the [`Peers`] trait the driver implements.
//!
//! Every decision that must agree across replicas is taken here from
//! replicated inputs only: the consensus time of the batch (capability
//! expiry, the guest's clock) and the use counters kept in [`AppState`]
//! (not in the host's own database, which a replica's crash could leave a
//! step ahead of its protocol log). The receipts themselves live in the
//! host's stores; running a batch twice after a restart hits the action
//! cache and yields the same receipt.
//!
//! Every result is also journaled with the chain value after it
//! ([`Results`]). A replica that state transfer moves past work it never
//! did fetches the missing entries from a peer, checks that they chain
//! from its own last entry to the checkpoint's chain (so a lying peer is
//! caught), and re-runs their invocations, so it holds the same receipts as
//! the replicas that did the work.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use voidbox_auth::{NoRevocations, StoreError, TakeError, TokenId, UseCounter};
use voidbox_pbft::{Execute, Hlc};

pub use super::results::{ResultEntry, Results, RESULTS_CHUNK};
use super::wire::{
    decode_invocation_entry, encode_invocation_entry, Op, OpResult, INLINE_OUTPUT_MAX,
};
use crate::{Digest, Error, Host, Store};

/// The replicated state besides receipts: what the checkpoint digest
/// covers. Its encoding is canonical (a `BTreeMap`, fixed field order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// Requests executed since genesis.
    pub executed: u64,
    /// blake3 chain over every result: `chain = H(chain || H(result))`, so
    /// two replicas with equal chains returned the same results.
    pub chain: [u8; 32],
    /// Uses taken per limited-use token id.
    pub uses: BTreeMap<String, u64>,
}

impl AppState {
    /// The canonical snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("state serializes")
    }

    /// A state from a snapshot; `None` is the initial state.
    pub fn restore(snapshot: Option<&[u8]>) -> Result<AppState, String> {
        match snapshot {
            None => Ok(AppState::default()),
            Some(b) => match postcard::take_from_bytes::<AppState>(b) {
                Ok((s, [])) => Ok(s),
                _ => Err("the checkpoint's snapshot is not an application state".into()),
            },
        }
    }

    fn record(&mut self, result: &[u8]) {
        self.chain = chain_step(&self.chain, result);
        self.executed += 1;
    }
}

/// The chain value after `result`.
fn chain_step(chain: &[u8; 32], result: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"voidbox-cluster-chain-v1");
    h.update(chain);
    h.update(blake3::hash(result).as_bytes());
    *h.finalize().as_bytes()
}

/// The wall-clock guard of every run in a cluster: at least this long...
const GUARD_BASE: std::time::Duration = std::time::Duration::from_secs(30);
/// ...plus one second per this much fuel. Wasm runs at 10^8 to 10^9 fuel
/// per second here even on a busy machine, so a run that fuel ends finishes
/// far inside the guard on every replica.
const GUARD_FUEL_PER_S: u64 = 25_000_000;

/// The wall-clock guard a replica runs `fuel` under. A timeout depends on
/// each replica's own clock and load, so were it the client's (short)
/// choice, some replicas could time out a run that others finish or end by
/// fuel: their results would differ and no checkpoint would ever become
/// stable again. In a cluster fuel is what bounds a run, alike everywhere;
/// the guard only catches a replica that is pathologically slow (whose
/// result then differs, and which the stable checkpoint corrects).
fn cluster_guard(fuel: u64) -> std::time::Duration {
    GUARD_BASE + std::time::Duration::from_secs(fuel / GUARD_FUEL_PER_S)
}

/// How many rounds of asking every peer for a missing blob (with
/// doubling waits from 100 ms) before the request fails.
const FETCH_ATTEMPTS: u32 = 4;

/// The replica's peers, as the application needs them.
pub trait Peers: Send {
    /// A blob by digest from any peer (unchecked; the caller checks).
    fn blob(&self, digest: Digest) -> Option<Vec<u8>>;
    /// Journal entries `from..from + count` from each peer that answers,
    /// one list per peer, best first.
    fn results(&self, from: u64, count: u64) -> Vec<Vec<ResultEntry>>;
    /// How many peers may be faulty (f): more answers than that agreeing
    /// on something means a correct peer said it.
    fn faults(&self) -> usize;
}

/// A batch's operations, decoded once ([`App::decode`]): one per
/// request, or why it is malformed.
#[derive(Debug)]
pub struct Decoded(Vec<Result<Op, String>>);

/// What admission made of one request.
enum Step {
    /// Admitted: run this (effective budget, consensus time).
    Run(crate::Invocation),
    /// Answered without a run (denied, malformed, a missing blob).
    Done(OpResult),
}

/// Use counting over the replicated map (one thread executes batches, so
/// the atomicity `UseCounter` asks for is trivial).
struct Uses<'a>(RefCell<&'a mut BTreeMap<String, u64>>);

impl UseCounter for Uses<'_> {
    fn try_take(&self, id: &TokenId, limit: u64) -> Result<u64, TakeError> {
        let mut map = self.0.borrow_mut();
        let used = map.get(&id.to_string()).copied().unwrap_or(0);
        if used >= limit {
            return Err(TakeError::Exhausted { used, limit });
        }
        map.insert(id.to_string(), used + 1);
        Ok(used + 1)
    }

    fn used(&self, id: &TokenId) -> Result<u64, StoreError> {
        Ok(self.0.borrow().get(&id.to_string()).copied().unwrap_or(0))
    }
}

/// A replica's application.
pub struct App {
    host: Arc<Host>,
    state: AppState,
    peers: Box<dyn Peers>,
    results: Results,
    /// Tools known to be registered on the host. The cluster never removes
    /// a tool, so once seen a tool needs no registry read (and no parse of
    /// its record) per invocation.
    tools_present: std::sync::Mutex<std::collections::BTreeSet<Digest>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("state", &self.state).finish()
    }
}

impl App {
    /// An application over `host`, journaling to `results` and fetching
    /// what it lacks from `peers`.
    pub fn new(host: Arc<Host>, results: Results, peers: Box<dyn Peers>) -> App {
        App {
            host,
            state: AppState::default(),
            peers,
            results,
            tools_present: Default::default(),
        }
    }

    /// The replicated state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Replaces the state (recovery, state transfer). When the checkpoint
    /// is past what this replica executed, the results in between are
    /// fetched, checked against the checkpoint's chain and re-run, so the
    /// replica holds their receipts too.
    pub fn restore(&mut self, snapshot: Option<&[u8]>) -> crate::Result<()> {
        let target = AppState::restore(snapshot).map_err(Error::Cluster)?;
        let have = self
            .results
            .last_at_most(target.executed)
            .map_err(|e| Error::Cluster(e.to_string()))?;
        let (from, chain) = match &have {
            Some(e) if e.number == target.executed && e.chain == target.chain => {
                self.state = target;
                return Ok(());
            }
            Some(e) if e.number < target.executed => (e.number + 1, e.chain),
            // This replica's results diverged from the quorum's (a run that
            // hit the wall-clock guard here and not elsewhere, a local
            // disk error): take the quorum's history from genesis, which
            // the checkpoint's chain vouches for.
            Some(_) => {
                tracing::warn!(
                    executed = target.executed,
                    "this replica's results diverged from the stable checkpoint; adopting the quorum's"
                );
                (1, [0; 32])
            }
            None => (1, [0; 32]),
        };
        if target.executed > 0 {
            let mut caught = self.catch_up(from, chain, &target);
            if matches!(caught, Ok(false)) {
                // Peers answered, but nothing chains from this replica's
                // last result: its results diverged before it stopped.
                tracing::warn!(
                    from,
                    "this replica's results diverged from the quorum's; adopting the quorum's from the start"
                );
                caught = self.catch_up(1, [0; 32], &target);
            }
            if let Err(e) = caught {
                // The checkpoint itself is proven (2f + 1 signed it), so the
                // replica goes on from it; only receipts of the gap are
                // missing here, and the log says which.
                tracing::error!("{e}; receipts of that range are missing on this replica");
            }
        }
        self.state = target;
        Ok(())
    }

    /// Fetches entries `from..=target.executed`, checks they chain from
    /// `chain` to the target's, journals them and re-runs their invocations.
    /// `Ok(false)` when peers answered with entries that do not chain from
    /// `chain` at all (this replica's own history diverged).
    fn catch_up(&mut self, from: u64, chain: [u8; 32], target: &AppState) -> crate::Result<bool> {
        let mut next = from;
        let mut chain = chain;
        let mut failures = 0;
        while next <= target.executed {
            let count = RESULTS_CHUNK.min(target.executed - next + 1);
            let mut accepted = None;
            let mut answered = 0;
            for entries in self.peers.results(next, count) {
                if entries.first().is_some_and(|e| e.number == next) {
                    answered += 1;
                }
                // A peer's entries count only if they are the ones asked for
                // (a prefix of them) and chain from ours; the last one is
                // checked against the checkpoint, which 2f + 1 signed.
                let mut c = chain;
                let ok = !entries.is_empty()
                    && entries.len() as u64 <= count
                    && entries.iter().enumerate().all(|(i, e)| {
                        c = chain_step(&c, &e.result);
                        e.number == next + i as u64 && e.chain == c
                    });
                let last = next + entries.len() as u64 - 1;
                if ok && (last < target.executed || c == target.chain) {
                    accepted = Some((entries, c));
                    break;
                }
            }
            let Some((entries, c)) = accepted else {
                if next == from && from > 1 && answered > self.peers.faults() {
                    return Ok(false);
                }
                failures += 1;
                if failures < 5 {
                    // Peers may be busy or still starting; ask again.
                    std::thread::sleep(std::time::Duration::from_millis(200 * failures));
                    continue;
                }
                return Err(Error::Cluster(format!(
                    "no peer returned results {next}..={} that chain to the stable checkpoint",
                    target.executed
                )));
            };
            // Entries this replica already holds as they are need no
            // re-run.
            let held = self.results.range(next, entries.len() as u64)?;
            for e in &entries {
                if !held.contains(e) {
                    self.rerun(e);
                }
            }
            next += entries.len() as u64;
            self.results.append(entries, true)?;
            chain = c;
        }
        tracing::info!(
            from,
            to = target.executed,
            "caught up with results from peers"
        );
        Ok(true)
    }

    /// Re-runs a fetched entry's invocation so this host holds its receipt.
    fn rerun(&self, entry: &ResultEntry) {
        let Some(bytes) = &entry.invocation else {
            return;
        };
        let Ok(invocation) = decode_invocation_entry(bytes) else {
            tracing::warn!(
                number = entry.number,
                "a fetched invocation does not decode"
            );
            return;
        };
        let want = match OpResult::decode(&entry.result) {
            Ok(OpResult::Receipt { receipt, .. }) => receipt.receipt,
            _ => return,
        };
        let got = self
            .ensure_tool(invocation.tool)
            .and_then(|_| self.ensure_blob(invocation.input).map(|_| ()))
            .and_then(|_| self.host.invoke(&invocation));
        match got {
            Ok(r) if r.receipt == want => {}
            Ok(r) => tracing::error!(
                number = entry.number,
                ours = %r.receipt,
                agreed = %want,
                "re-running a fetched invocation gave another receipt"
            ),
            Err(e) => tracing::warn!(
                number = entry.number,
                "cannot re-run a fetched invocation: {e}"
            ),
        }
    }

    /// Runs a committed batch; one result per request, in order. The
    /// results are journaled, synced at checkpoints.
    pub fn execute(&mut self, batch: &Execute) -> crate::Result<Vec<Vec<u8>>> {
        let ops = self.decode(batch);
        self.execute_decoded(batch, ops)
    }

    /// Decodes a batch's operations, for [`App::is_local`] and
    /// [`App::execute_decoded`]. Nothing changes.
    pub fn decode(&self, batch: &Execute) -> Decoded {
        Decoded(
            batch
                .requests
                .iter()
                .map(|r| Op::decode(&r.operation))
                .collect(),
        )
    }

    /// Whether running the batch needs nothing from a peer: every tool and
    /// blob its operations name is stored here. Such a batch runs in
    /// microseconds; one that fetches may wait on the network for seconds.
    pub fn is_local(&self, ops: &Decoded) -> crate::Result<bool> {
        for op in &ops.0 {
            let Ok(Op::Invoke { invocation, .. }) = op else {
                continue;
            };
            if !self.has_tool(invocation.tool)? {
                return Ok(false);
            }
            for blob in std::iter::once(&invocation.input).chain(&invocation.grants) {
                if !self.host.blobs().contains(blob)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// [`App::execute`] with the operations [`App::decode`] made of `batch`.
    /// A batch that carries adopted results (partial execution: f + 1
    /// replicas that ran it signed them alike) is admitted like any other,
    /// so the use counters move alike everywhere, but not run: its results
    /// are the adopted ones, and their receipts are stored on the host as
    /// if it had run them.
    pub fn execute_decoded(
        &mut self,
        batch: &Execute,
        ops: Decoded,
    ) -> crate::Result<Vec<Vec<u8>>> {
        debug_assert_eq!(ops.0.len(), batch.requests.len());
        // Admission first, in order (it takes uses of the replicated
        // counters); then every admitted run at once on the host's worker
        // slots, placed by the Ising optimizer; then the results, in order.
        let steps: Vec<Step> = ops
            .0
            .into_iter()
            .map(|op| self.admit(op, batch.hlc))
            .collect();
        let ran = match &batch.adopted {
            Some(adopted) => self.adopt(steps, adopted),
            None => self.run(steps),
        };
        let mut results = Vec::with_capacity(batch.requests.len());
        let mut entries = Vec::with_capacity(batch.requests.len());
        for (result, invocation) in ran {
            self.state.record(&result);
            entries.push(ResultEntry {
                number: self.state.executed,
                invocation: invocation.map(|i| encode_invocation_entry(&i)),
                result: result.clone(),
                chain: self.state.chain,
            });
            results.push(result);
        }
        if batch.snapshot_wanted && self.results.fsync() {
            // At a checkpoint the receipts become durable first, then the
            // journal that vouches for them: a journal entry that survives a
            // crash never stands for a receipt that did not. (Without fsync
            // nothing is made durable, and the execution thread does not
            // wait for the disk.)
            self.host.flush()?;
        }
        if !entries.is_empty() || batch.snapshot_wanted {
            self.results.append(entries, batch.snapshot_wanted)?;
        }
        Ok(results)
    }

    /// Runs the admitted steps; each result with the invocation that ran.
    fn run(&mut self, steps: Vec<Step>) -> Vec<(Vec<u8>, Option<crate::Invocation>)> {
        let to_run: Vec<crate::Invocation> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Run(i) => Some(i.clone()),
                Step::Done(_) => None,
            })
            .collect();
        let mut receipts = self.host.invoke_batch(&to_run).into_iter();
        steps
            .into_iter()
            .map(|step| match step {
                Step::Done(r) => (r.encode(), None),
                Step::Run(inv) => {
                    let ran = receipts.next().expect("one result per run");
                    (self.finish(&inv, ran).encode(), Some(inv))
                }
            })
            .collect()
    }

    /// Pairs the admitted steps with adopted results, storing the receipts
    /// of the runs on the host so that it answers for them like the
    /// replicas that ran them. A receipt whose blobs did not come with it
    /// (an output over [`INLINE_OUTPUT_MAX`], diagnostics) is not stored:
    /// this replica runs that invocation if it is ever asked again.
    fn adopt(
        &mut self,
        steps: Vec<Step>,
        adopted: &[Vec<u8>],
    ) -> Vec<(Vec<u8>, Option<crate::Invocation>)> {
        steps
            .into_iter()
            .zip(adopted)
            .map(|(step, result)| match step {
                Step::Done(_) => (result.clone(), None),
                Step::Run(inv) => {
                    self.store_adopted(&inv, result);
                    (result.clone(), Some(inv))
                }
            })
            .collect()
    }

    fn store_adopted(&self, invocation: &crate::Invocation, result: &[u8]) {
        let Ok(OpResult::Receipt { receipt, output }) = OpResult::decode(result) else {
            // A denial or failure where this replica admitted the run: the
            // f + 1 that signed it decided otherwise, and their result
            // stands (a divergence the checkpoint's chain would show).
            return;
        };
        if let Err(e) = self
            .host
            .adopt_receipt(invocation, &receipt, output.as_deref())
        {
            tracing::warn!(
                invocation = %receipt.invocation,
                "an adopted receipt was not stored: {e}"
            );
        }
    }

    /// The journal, for serving peers.
    pub fn results(&self) -> &Results {
        &self.results
    }

    /// Admits a decoded request: the invocation to run (with its effective
    /// budget and the consensus time), or the result already.
    fn admit(&mut self, op: Result<Op, String>, hlc: Hlc) -> Step {
        match op {
            Ok(Op::Invoke { token, invocation }) => self.admit_invoke(&token, invocation, hlc),
            Err(message) => Step::Done(OpResult::Failed { message }),
        }
    }

    fn admit_invoke(&mut self, token: &str, mut invocation: crate::Invocation, hlc: Hlc) -> Step {
        // The guest's clock is the consensus time, so every replica runs
        // the same invocation (and the digest says when it ran).
        invocation.time_unix_ns = hlc.physical_us.saturating_mul(1_000);
        let failed = |e: Error| {
            Step::Done(OpResult::Failed {
                message: e.to_string(),
            })
        };
        if let Err(e) = self.ensure_tool(invocation.tool) {
            return failed(e);
        }
        let input_bytes = match self.ensure_blob(invocation.input) {
            Ok(n) => n,
            Err(e) => return failed(e),
        };
        for g in invocation.grants.clone() {
            if let Err(e) = self.ensure_blob(g) {
                return failed(e);
            }
        }
        let now_unix = hlc.physical_us / 1_000_000;
        // Revocation is not replicated yet: a replica's local revocation
        // list would make replicas disagree, so none is consulted.
        let denied = |kind: &str, message: String| {
            Step::Done(OpResult::Denied {
                kind: kind.to_string(),
                message,
            })
        };
        let (authorized, effective) =
            match self
                .host
                .authorize_at(token, &invocation, input_bytes, now_unix, &NoRevocations)
            {
                Ok(a) => a,
                Err(Error::Denied(d)) => return denied(d.kind.as_str(), d.message),
                Err(Error::NotAdmitted(m)) => return denied("not-admitted", m),
                Err(e) => return failed(e),
            };
        if let Err(d) = authorized.take_use(&Uses(RefCell::new(&mut self.state.uses))) {
            return denied(d.kind.as_str(), d.message);
        }
        let mut effective = effective;
        // The guard is the replicas', not the client's (see `cluster_guard`).
        effective.budget.timeout = cluster_guard(effective.budget.fuel);
        Step::Run(effective)
    }

    /// The result of a run: the receipt with its replica-specific fields
    /// cleared, and the output when small.
    fn finish(
        &self,
        invocation: &crate::Invocation,
        ran: crate::Result<crate::Receipt>,
    ) -> OpResult {
        let failed = |e: Error| OpResult::Failed {
            message: e.to_string(),
        };
        let mut receipt = match ran {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let output = if receipt.output_bytes <= INLINE_OUTPUT_MAX {
            match self.host.output(&receipt) {
                Ok(o) => o,
                Err(e) => return failed(e),
            }
        } else {
            None
        };
        receipt.cached = false;
        receipt.duration_us = 0;
        receipt.timestamp = invocation.time_unix_ns;
        OpResult::Receipt {
            receipt: Box::new(receipt),
            output,
        }
    }

    fn ensure_tool(&self, digest: Digest) -> crate::Result<()> {
        if self.has_tool(digest)? {
            return Ok(());
        }
        let wasm = self.fetched(digest)?;
        self.host.add_tool(&wasm, None)?;
        self.tools_present
            .lock()
            .expect("tool set poisoned")
            .insert(digest);
        Ok(())
    }

    /// Whether the host has a tool registered; remembered once seen.
    fn has_tool(&self, digest: Digest) -> crate::Result<bool> {
        let present = || self.tools_present.lock().expect("tool set poisoned");
        if present().contains(&digest) {
            return Ok(true);
        }
        match self.host.tool(&digest.to_string()) {
            Ok(_) => {
                present().insert(digest);
                Ok(true)
            }
            Err(Error::NoSuchTool(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes sure a blob is stored; returns its size.
    fn ensure_blob(&self, digest: Digest) -> crate::Result<u64> {
        if let Some(n) = self.host.blobs().size(&digest)? {
            return Ok(n);
        }
        let bytes = self.fetched(digest)?;
        self.host.put_input(&bytes)?;
        Ok(bytes.len() as u64)
    }

    /// A blob from the peers. Asked a few times: a result that differs
    /// only because this replica could not reach a peer for a moment would
    /// make it diverge from the others, so it waits rather than fail fast.
    fn fetched(&self, digest: Digest) -> crate::Result<Vec<u8>> {
        for attempt in 0..FETCH_ATTEMPTS {
            match self.peers.blob(digest) {
                Some(b) if Digest::of(&b) == digest => return Ok(b),
                _ => std::thread::sleep(std::time::Duration::from_millis(100 << attempt)),
            }
        }
        Err(Error::Cluster(format!(
            "no replica has {digest}; put it with `voidbox cas put --cluster` (or `tool add --cluster`) first"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_canonical_and_chain_every_result() {
        let mut a = AppState::default();
        a.uses.insert("b".into(), 2);
        a.uses.insert("a".into(), 1);
        let mut b = AppState::default();
        b.uses.insert("a".into(), 1);
        b.uses.insert("b".into(), 2);
        assert_eq!(
            a.snapshot(),
            b.snapshot(),
            "insertion order does not matter"
        );
        a.record(b"r1");
        b.record(b"r2");
        assert_ne!(a.chain, b.chain);
        assert_eq!(AppState::restore(Some(&a.snapshot())).unwrap(), a);
        assert_eq!(AppState::restore(None).unwrap(), AppState::default());
        assert!(AppState::restore(Some(b"\xff\xff\xff")).is_err());
    }

    /// Peers that all hold one history of denial results.
    struct FakePeers(Vec<ResultEntry>);

    impl Peers for FakePeers {
        fn blob(&self, _: Digest) -> Option<Vec<u8>> {
            None
        }
        fn results(&self, from: u64, count: u64) -> Vec<Vec<ResultEntry>> {
            let mine: Vec<ResultEntry> = self
                .0
                .iter()
                .filter(|e| e.number >= from && e.number < from + count)
                .cloned()
                .collect();
            // One lying peer first: a history that does not chain.
            let mut lie = mine.clone();
            if let Some(e) = lie.first_mut() {
                e.result = b"forged".to_vec();
            }
            vec![lie, mine]
        }
        fn faults(&self) -> usize {
            1
        }
    }

    fn history(tag: &str, n: u64) -> (Vec<ResultEntry>, AppState) {
        let mut state = AppState::default();
        let mut entries = Vec::new();
        for i in 0..n {
            let result = OpResult::Denied {
                kind: "expired".into(),
                message: format!("{tag} {i}"),
            }
            .encode();
            state.record(&result);
            entries.push(ResultEntry {
                number: state.executed,
                invocation: None,
                result,
                chain: state.chain,
            });
        }
        (entries, state)
    }

    #[test]
    fn restore_catches_up_from_peers_and_repairs_a_diverged_journal() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(Host::init(dir.path().join("home")).unwrap());
        let (quorum, target) = history("quorum", 300);
        // This replica did the first 100 like everyone, then diverged.
        let (mut local, _) = history("quorum", 100);
        let (diverged, _) = history("other", 150);
        local.extend(diverged.into_iter().skip(100));
        let results = Results::open(&dir.path().join("results.redb")).unwrap();
        results.append(local, true).unwrap();
        let mut app = App::new(host, results.clone(), Box::new(FakePeers(quorum.clone())));
        app.restore(Some(&target.snapshot())).unwrap();
        assert_eq!(app.state(), &target);
        assert_eq!(
            results.range(1, 1000).unwrap(),
            quorum,
            "the quorum's history, checked"
        );

        // Behind by a gap: fetched from the point this replica reached.
        let dir2 = tempfile::tempdir().unwrap();
        let host2 = Arc::new(Host::init(dir2.path().join("home")).unwrap());
        let results2 = Results::open(&dir2.path().join("results.redb")).unwrap();
        results2.append(quorum[..40].to_vec(), true).unwrap();
        let mut behind = App::new(host2, results2.clone(), Box::new(FakePeers(quorum.clone())));
        behind.restore(Some(&target.snapshot())).unwrap();
        assert_eq!(results2.range(1, 1000).unwrap(), quorum);

        // No peer can vouch for the gap: the proven checkpoint is still
        // taken, the journal keeps what it had.
        let dir3 = tempfile::tempdir().unwrap();
        let host3 = Arc::new(Host::init(dir3.path().join("home")).unwrap());
        let results3 = Results::open(&dir3.path().join("results.redb")).unwrap();
        let mut alone = App::new(host3, results3.clone(), Box::new(FakePeers(Vec::new())));
        alone.restore(Some(&target.snapshot())).unwrap();
        assert_eq!(alone.state(), &target);
        assert!(results3.range(1, 1000).unwrap().is_empty());
    }

    #[test]
    fn a_batch_is_local_only_when_every_tool_and_blob_it_names_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(Host::init(dir.path().join("home")).unwrap());
        let echo = host
            .add_tool_file(voidbox_tool_artifacts::ECHO.as_ref(), None)
            .unwrap()
            .digest;
        let input = host.put_input(b"stored").unwrap();
        let results = Results::open(&dir.path().join("results.redb")).unwrap();
        let app = App::new(host, results, Box::new(FakePeers(Vec::new())));
        let request = |timestamp: u64, operation: Vec<u8>| voidbox_pbft::Request {
            client: voidbox_pbft::ClientId {
                key: [3; 32],
                session: 0,
            },
            timestamp,
            operation,
        };
        let invoke = |invocation: crate::Invocation| {
            Op::Invoke {
                token: "a token".into(),
                invocation,
            }
            .encode()
        };
        let local = |operations: Vec<Vec<u8>>| {
            let batch = Execute {
                seq: 1,
                digest: voidbox_pbft::Digest([0; 32]),
                hlc: Hlc::default(),
                requests: operations
                    .into_iter()
                    .enumerate()
                    .map(|(i, op)| request(i as u64 + 1, op))
                    .collect(),
                snapshot_wanted: false,
                adopted: None,
            };
            app.is_local(&app.decode(&batch)).unwrap()
        };
        let absent = Digest::of(b"on no replica here");
        let here = crate::Invocation::new(echo, input);
        assert!(local(vec![invoke(here.clone())]));
        // A malformed operation fails alike everywhere: nothing to fetch.
        assert!(local(vec![
            b"not an operation".to_vec(),
            invoke(here.clone())
        ]));
        assert!(local(Vec::new()));

        let no_tool = crate::Invocation::new(absent, input);
        let no_input = crate::Invocation::new(echo, absent);
        let mut no_grant = here.clone();
        no_grant.grants.push(absent);
        for missing in [no_tool, no_input, no_grant] {
            assert!(
                !local(vec![invoke(here.clone()), invoke(missing.clone())]),
                "{missing:?}"
            );
        }
    }

    #[test]
    fn an_adopted_batch_moves_the_state_like_a_run_without_running() {
        // Two replicas of one cluster (one owner key): a runs the batch, b
        // adopts a's results.
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c");
        crate::cluster::init_cluster(&c, 4, 7000).unwrap();
        let token = std::fs::read_to_string(c.join(crate::OWNER_TOKEN_FILE)).unwrap();
        let open = |id: u32| {
            let host = Arc::new(Host::open_existing(c.join(format!("replica-{id}"))).unwrap());
            let echo = host
                .add_tool_file(voidbox_tool_artifacts::ECHO.as_ref(), None)
                .unwrap()
                .digest;
            let input = host.put_input(b"adopt me").unwrap();
            let results = Results::open(&dir.path().join(format!("results-{id}.redb"))).unwrap();
            let app = App::new(host.clone(), results, Box::new(FakePeers(Vec::new())));
            (app, host, echo, input)
        };
        let (mut a, host_a, echo, input) = open(0);
        let (mut b, host_b, _, _) = open(1);
        let op = Op::Invoke {
            token: token.trim().to_string(),
            invocation: crate::Invocation::new(echo, input),
        };
        let request = |timestamp: u64, operation: Vec<u8>| voidbox_pbft::Request {
            client: voidbox_pbft::ClientId {
                key: [3; 32],
                session: 0,
            },
            timestamp,
            operation,
        };
        let batch = Execute {
            seq: 1,
            digest: voidbox_pbft::Digest([1; 32]),
            hlc: Hlc {
                physical_us: 1_700_000_000_000_000,
                logical: 0,
            },
            requests: vec![request(1, op.encode()), request(2, b"not an op".to_vec())],
            snapshot_wanted: true,
            adopted: None,
        };
        let ran = a.execute(&batch).unwrap();
        assert_eq!(host_a.runs(), 1);
        let Ok(OpResult::Receipt { receipt, .. }) = OpResult::decode(&ran[0]) else {
            panic!("the invocation ran: {:?}", OpResult::decode(&ran[0]));
        };
        let adopted = Execute {
            adopted: Some(ran.clone()),
            ..batch
        };
        assert_eq!(b.execute(&adopted).unwrap(), ran);
        assert_eq!(b.state(), a.state(), "the same chain and counters");
        assert_eq!(host_b.runs(), 0, "nothing ran on b");
        let held = host_b.cached(&receipt.invocation).unwrap().expect("stored");
        assert_eq!(held.receipt, receipt.receipt);
        assert_eq!(
            b.results().range(1, 2).unwrap(),
            a.results().range(1, 2).unwrap(),
            "the same journal"
        );
    }

    #[test]
    fn uses_are_counted_in_the_replicated_map() {
        let mut map = BTreeMap::new();
        let id = TokenId::new(voidbox_auth::KeyId::new("owner").unwrap(), [7; 16]);
        let uses = Uses(RefCell::new(&mut map));
        assert_eq!(uses.try_take(&id, 2).unwrap(), 1);
        assert_eq!(uses.try_take(&id, 2).unwrap(), 2);
        assert!(matches!(
            uses.try_take(&id, 2),
            Err(TakeError::Exhausted { used: 2, limit: 2 })
        ));
        assert_eq!(map.len(), 1);
    }
}
