//! The executor pool: worker slots (threads) that run a batch of
//! invocations, and the placement that decides which slot runs which.
//!
//! A batch is placed with the Ising placement of `voidbox-ising`: each
//! worker slot is an executor whose capacity is its share of the batch,
//! and the locality reward goes to slots that already hold a warm instance
//! of the invocation's tool (they ran it recently, so the pooling
//! allocator's memory slot for that module, its code and its data are hot
//! on that core). The placement is checked, repaired or replaced by greedy
//! inside `voidbox-ising`; the pool counts which of these happened and
//! says so in a `tracing` debug line.
//!
//! Few threads, on purpose: on this host's two cores, two threads
//! instantiating in one process pay for each other's TLB shootdowns when
//! linear memories are decommitted, so the pool has one slot per core
//! (never more), and the sandbox resets memories without unmapping them
//! where it can (see `voidbox-sandbox`). The caller's thread is slot 0: it
//! starts on its share at once, while the other slots' threads, asleep
//! between batches, take a while to wake (measured on this 2-core VM: the
//! second of two pool threads started its share 150 us after the first,
//! an eighth of a 64-job batch).
//!
//! The placement is where each job should run, not a promise: a slot
//! whose own share is done takes the last job of the slot with the most
//! left (counted as stolen). A slot that woke late or drew slow jobs would
//! otherwise keep the whole batch waiting while the other cores idle
//! (before stealing, the first slot to finish waited 320 us per batch of
//! 64 for the last).
//!
//! This module knows nothing of storage or receipts: it places opaque tool
//! digests and runs a closure per job.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use voidbox_cas::Digest;
use voidbox_ising::placement::{
    self, Executor, PlacementError, PlacementOutcome, PlacementParams, PlacementProblem, Placer,
    Weights,
};

/// The storage's counters, shown next to the pool's by `voidbox bench`.
pub use crate::storage::StorageStats;

/// Tools remembered as warm per worker slot (most recent first).
const WARM_TOOLS_PER_SLOT: usize = 8;
/// Annealing sweeps per batch. The annealer starts from the greedy
/// placement and keeps the best feasible one it sees, greedy included, so
/// fewer sweeps never place worse than greedy; a few dozen identical slots
/// need few sweeps, and each sweep costs about a microsecond per 64 jobs
/// on the batch's critical path.
const PLACEMENT_SWEEPS: usize = 20;
/// Most worker slots a pool has, whatever the machine.
pub const WORKER_SLOTS_MAX: usize = 64;

/// How a batch was placed on the worker slots, counted over the pool's life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker slots (threads) in the pool.
    pub worker_slots: usize,
    /// Batches run.
    pub batches: u64,
    /// Batches whose annealed placement was used as it was.
    pub placed_annealed: u64,
    /// Batches whose annealed placement broke a hard constraint and was
    /// repaired.
    pub placed_repaired: u64,
    /// Batches placed by the greedy fallback (better than the annealer's, or
    /// the annealer's could not be repaired).
    pub placed_greedy: u64,
    /// Batches the placement refused (an error); they were dealt round-robin.
    pub placement_failed: u64,
    /// Batches with at most one job to run, or a pool of one slot: nothing
    /// to place.
    pub placement_skipped: u64,
    /// Time spent placing, in microseconds, over all batches.
    pub placement_us: u64,
    /// Jobs run, per slot.
    pub jobs_per_slot: Vec<u64>,
    /// Jobs run on another slot than the one they were placed on, because
    /// their own slot still had work when the other ran out.
    pub jobs_stolen: u64,
}

/// Where each job of a batch runs, and which path of the placement chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchPlan {
    /// `slot[j]`: the worker slot of job `j`.
    pub(crate) slot: Vec<usize>,
    /// `None` when nothing was placed (one slot, or one job).
    pub(crate) outcome: Option<Result<PlacementOutcome, String>>,
}

/// Worker slots and their warm tools.
pub(crate) struct Pool {
    /// The threads of slots 1.. (slot 0 is the caller's thread); `None` for
    /// a pool of one slot.
    threads: Option<rayon::ThreadPool>,
    slots: usize,
    warm: Mutex<Vec<VecDeque<Digest>>>,
    /// The placer keeps its scratch space from one batch to the next.
    placer: Mutex<Placer>,
    stats: Mutex<PoolStats>,
    jobs_per_slot: Vec<AtomicU64>,
    jobs_stolen: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `slots` worker slots (clamped to `1..=WORKER_SLOTS_MAX`):
    /// the caller's thread and `slots - 1` threads of its own.
    pub(crate) fn new(slots: usize) -> std::io::Result<Pool> {
        let slots = slots.clamp(1, WORKER_SLOTS_MAX);
        let threads = if slots > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(slots - 1)
                    .thread_name(|i| format!("voidbox-worker-{}", i + 1))
                    .build()
                    .map_err(std::io::Error::other)?,
            )
        } else {
            None
        };
        Ok(Pool {
            threads,
            slots,
            warm: Mutex::new(vec![VecDeque::new(); slots]),
            placer: Mutex::new(slot_placer()),
            stats: Mutex::new(PoolStats {
                worker_slots: slots,
                ..PoolStats::default()
            }),
            jobs_per_slot: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            jobs_stolen: AtomicU64::new(0),
        })
    }

    /// What the pool did so far.
    pub(crate) fn stats(&self) -> PoolStats {
        let mut s = self.stats.lock().expect("pool stats poisoned").clone();
        s.jobs_per_slot = self
            .jobs_per_slot
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        s.jobs_stolen = self.jobs_stolen.load(Ordering::Relaxed);
        s
    }

    /// Places jobs (one tool digest each) on the worker slots. Never fails:
    /// if the placement refuses the batch, jobs are dealt round-robin (and
    /// the refusal is counted and logged).
    pub(crate) fn plan(&self, tools: &[Digest], seed: u64) -> BatchPlan {
        let started = Instant::now();
        let plan = if self.slots == 1 || tools.len() <= 1 {
            BatchPlan {
                slot: vec![0; tools.len()],
                outcome: None,
            }
        } else {
            let warm = self.warm.lock().expect("warm tools poisoned").clone();
            let capacity = slot_capacity(tools.len(), self.slots);
            let mut placer = self.placer.lock().expect("placer poisoned");
            match place_on_slots(&mut placer, tools, &warm, capacity, seed) {
                Ok((slot, outcome)) => BatchPlan {
                    slot,
                    outcome: Some(Ok(outcome)),
                },
                Err(e) => BatchPlan {
                    slot: (0..tools.len()).map(|j| j % self.slots).collect(),
                    outcome: Some(Err(e.to_string())),
                },
            }
        };
        let us = started.elapsed().as_micros() as u64;
        let mut s = self.stats.lock().expect("pool stats poisoned");
        s.batches += 1;
        s.placement_us += us;
        match &plan.outcome {
            None => s.placement_skipped += 1,
            Some(Ok(PlacementOutcome::Annealed)) => s.placed_annealed += 1,
            Some(Ok(PlacementOutcome::Repaired)) => s.placed_repaired += 1,
            Some(Ok(PlacementOutcome::Greedy)) => s.placed_greedy += 1,
            Some(Err(_)) => s.placement_failed += 1,
        }
        drop(s);
        match &plan.outcome {
            None => tracing::debug!(jobs = tools.len(), "batch: nothing to place"),
            Some(Ok(outcome)) => tracing::debug!(
                jobs = tools.len(),
                slots = self.slots,
                placement = ?outcome,
                elapsed_us = us,
                "batch placed on worker slots (Annealed: the annealer's placement; Repaired: it broke a constraint and was repaired; Greedy: the greedy fallback)"
            ),
            Some(Err(e)) => tracing::debug!(
                jobs = tools.len(),
                error = %e,
                "placement refused the batch; dealt round-robin"
            ),
        }
        plan
    }

    /// Places the jobs (one tool digest each; see [`Pool::plan`]) and runs
    /// every job once, all slots at once; returns the results in job order.
    pub(crate) fn run<R: Send>(
        &self,
        tools: &[Digest],
        seed: u64,
        job: impl Fn(usize) -> R + Sync,
    ) -> Vec<R> {
        self.run_placed(|| self.plan(tools, seed), tools, job)
    }

    /// [`Pool::run`] with the placement `place` returns. Each slot runs the
    /// jobs placed on it in order, then helps the slot with the most left,
    /// from the back of its share. The other slots' threads are woken
    /// before the caller's thread places the batch, so that their wake-up
    /// and the placement overlap; they wait for the plan.
    fn run_placed<R: Send>(
        &self,
        place: impl FnOnce() -> BatchPlan,
        tools: &[Digest],
        job: impl Fn(usize) -> R + Sync,
    ) -> Vec<R> {
        let ready: OnceLock<Shares> = OnceLock::new();
        // Each slot's results, with the slot (for the warm tools).
        let run_slot = |slot: usize, shares: &Shares| -> (usize, Vec<(usize, R)>) {
            let mut out = Vec::new();
            while let Some((j, stolen)) = shares.next(slot) {
                out.push((j, job(j)));
                self.jobs_per_slot[slot].fetch_add(1, Ordering::Relaxed);
                if stolen {
                    self.jobs_stolen.fetch_add(1, Ordering::Relaxed);
                }
            }
            (slot, out)
        };
        let publish = |plan: BatchPlan| -> &Shares {
            assert_eq!(plan.slot.len(), tools.len(), "one slot per job");
            ready.get_or_init(|| Shares::new(&plan.slot, self.slots))
        };
        let mut per_slot: Vec<(usize, Vec<(usize, R)>)> = Vec::with_capacity(self.slots);
        match &self.threads {
            None => per_slot.push(run_slot(0, publish(place()))),
            Some(threads) => {
                let others = Mutex::new(Vec::with_capacity(self.slots - 1));
                let mine = threads.in_place_scope(|scope| {
                    // Whatever happens to the placement, the waiting slots
                    // get shares (empty if it panicked) and the scope ends.
                    let _release = ReleaseOnDrop(&ready, self.slots);
                    scope.spawn_broadcast(|_, ctx| {
                        let out = run_slot(ctx.index() + 1, wait_for(&ready));
                        others.lock().expect("slot results poisoned").push(out);
                    });
                    run_slot(0, publish(place()))
                });
                per_slot.push(mine);
                per_slot.extend(others.into_inner().expect("slot results poisoned"));
            }
        }
        let mut ran_on = vec![0; tools.len()];
        let mut results: Vec<Option<R>> = (0..tools.len()).map(|_| None).collect();
        for (slot, out) in per_slot {
            for (j, r) in out {
                assert!(results[j].is_none(), "job {j} ran twice");
                results[j] = Some(r);
                ran_on[j] = slot;
            }
        }
        self.note_warm(&ran_on, tools);
        results
            .into_iter()
            .enumerate()
            .map(|(j, r)| r.unwrap_or_else(|| panic!("job {j} never ran")))
            .collect()
    }

    /// Remembers which tools each slot just ran (most recent first);
    /// `ran_on[j]` is the slot that ran job `j`.
    fn note_warm(&self, ran_on: &[usize], tools: &[Digest]) {
        let mut warm = self.warm.lock().expect("warm tools poisoned");
        for (j, &slot) in ran_on.iter().enumerate() {
            let w = &mut warm[slot];
            if w.front() == Some(&tools[j]) {
                continue;
            }
            w.retain(|d| *d != tools[j]);
            w.push_front(tools[j]);
            w.truncate(WARM_TOOLS_PER_SLOT);
        }
    }
}

/// Waits for the caller's thread to publish the batch's shares: the
/// placement takes tens of microseconds, about what a woken thread takes
/// to get going, so a short spin and then yields.
fn wait_for(ready: &OnceLock<Shares>) -> &Shares {
    let mut spins = 0u32;
    loop {
        if let Some(shares) = ready.get() {
            return shares;
        }
        if spins < 100 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Publishes empty shares when dropped, unless shares were published: a
/// placement that panics must not leave the other slots waiting forever.
struct ReleaseOnDrop<'a>(&'a OnceLock<Shares>, usize);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.get_or_init(|| Shares::new(&[], self.1));
    }
}

/// The jobs of one batch, as each slot's share still to run.
struct Shares {
    /// `left[s]`: the jobs placed on slot `s` and not taken yet, in order.
    left: Vec<Mutex<VecDeque<usize>>>,
}

impl Shares {
    fn new(slot_of: &[usize], slots: usize) -> Shares {
        let mut left = vec![VecDeque::new(); slots];
        for (j, &s) in slot_of.iter().enumerate() {
            left[s].push_back(j);
        }
        Shares {
            left: left.into_iter().map(Mutex::new).collect(),
        }
    }

    /// The next job for `slot`: the first of its own share, else the last
    /// of the share with the most left (`true`: taken from another slot);
    /// `None` when every share is empty. The locks are per share and held
    /// for a pop, so slots working through their own shares never wait
    /// for each other.
    fn next(&self, slot: usize) -> Option<(usize, bool)> {
        if let Some(j) = self.lock(slot).pop_front() {
            return Some((j, false));
        }
        loop {
            let (victim, most) = (0..self.left.len())
                .filter(|&s| s != slot)
                .map(|s| (s, self.lock(s).len()))
                .max_by_key(|&(_, n)| n)?;
            if most == 0 {
                return None;
            }
            // Another thief may have emptied it since it was counted.
            if let Some(j) = self.lock(victim).pop_back() {
                return Some((j, true));
            }
        }
    }

    fn lock(&self, slot: usize) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.left[slot].lock().expect("batch shares poisoned")
    }
}

/// How many jobs of a batch one slot may take: its even share plus a
/// quarter, so that locality can move some jobs to warm slots without
/// piling the batch onto one of them.
pub(crate) fn slot_capacity(jobs: usize, slots: usize) -> u32 {
    let share = jobs.div_ceil(slots);
    u32::try_from(share + share.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The placer for worker slots: few sweeps (see `PLACEMENT_SWEEPS`), work
/// in proportion to the batch (the placement's extra work for small
/// batches, 8 reads of 64 moves a sweep, took 99-180 us for batches of 2
/// to 32 jobs on 2 slots, against 34-42 us for 33, before any slot could
/// start; a cluster replica with more than one slot places every
/// committed batch), no timing.
pub(crate) fn slot_placer() -> Placer {
    Placer::new(PlacementParams {
        sweeps: PLACEMENT_SWEEPS,
        measure_time: false,
        small_batch_boost: false,
        ..PlacementParams::default()
    })
    .expect("the slot placement parameters are valid")
}

/// The one call into `voidbox-ising`: places `tools[j]` on a slot with
/// room for `capacity` jobs, preferring slots where the tool is warm.
/// Returns each job's slot and which path of the placement chose it.
pub(crate) fn place_on_slots(
    placer: &mut Placer,
    tools: &[Digest],
    warm: &[VecDeque<Digest>],
    capacity: u32,
    seed: u64,
) -> Result<(Vec<usize>, PlacementOutcome), PlacementError> {
    // Tools are opaque keys to the placement: a short name per distinct
    // tool (hex digests would cost more to make than to compare).
    let mut names: HashMap<Digest, String> = HashMap::new();
    let mut name = |d: &Digest| {
        let n = names.len();
        names.entry(*d).or_insert_with(|| format!("t{n}")).clone()
    };
    let jobs: Vec<placement::Invocation> = tools
        .iter()
        .enumerate()
        .map(|(j, d)| placement::Invocation {
            id: j.to_string(),
            slots: 1,
            memory_bytes: 0,
            replicas: 1,
            tool: name(d),
            ..placement::Invocation::default()
        })
        .collect();
    let executors: Vec<Executor> = warm
        .iter()
        .enumerate()
        .map(|(i, w)| Executor {
            id: format!("slot-{i}"),
            slots: capacity,
            // Memory is the sandbox's business (each run has its own pooled
            // slot); only job counts are placed here.
            memory_bytes: 1,
            warm_tools: w.iter().map(&mut name).collect(),
            ..Executor::default()
        })
        .collect();
    let problem = PlacementProblem::new(jobs, executors, Weights::default())?;
    let placed = placer.place_with_seed(&problem, seed)?;
    let slot = placed
        .assignment
        .iter()
        .map(|copies| {
            assert_eq!(copies.len(), 1, "one copy per job");
            copies[0]
        })
        .collect();
    Ok((slot, placed.outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn placement_respects_slot_capacity() {
        for slots in 2..=4usize {
            for jobs in [2usize, 3, 7, 16, 33, 64] {
                // Every tool warm on slot 0 only: locality pulls everything
                // there, capacity must stop it.
                let mut warm = vec![VecDeque::new(); slots];
                for t in 0..4 {
                    warm[0].push_back(tool(t));
                }
                let tools: Vec<Digest> = (0..jobs).map(|j| tool((j % 4) as u8)).collect();
                let cap = slot_capacity(jobs, slots);
                let (slot, _) = place_on_slots(&mut slot_placer(), &tools, &warm, cap, 7).unwrap();
                assert_eq!(slot.len(), jobs);
                let mut count = vec![0u32; slots];
                for s in slot {
                    assert!(s < slots);
                    count[s] += 1;
                }
                assert!(
                    count.iter().all(|&c| c <= cap),
                    "{slots} slots, {jobs} jobs, capacity {cap}: {count:?}"
                );
            }
        }
    }

    #[test]
    fn warm_slots_attract_their_tools() {
        // Tool 1 is warm on slot 0 and tool 2 on slot 1: with room enough,
        // each job goes where its tool is warm.
        let warm = vec![VecDeque::from([tool(1)]), VecDeque::from([tool(2)])];
        let tools = [tool(1), tool(2), tool(1), tool(2)];
        let (slot, _) = place_on_slots(&mut slot_placer(), &tools, &warm, 2, 1).unwrap();
        assert_eq!(slot, [0, 1, 0, 1]);
    }

    #[test]
    fn every_job_runs_once_and_results_keep_job_order() {
        let pool = Pool::new(3).unwrap();
        let tools: Vec<Digest> = (0..20).map(|j| tool(j % 5)).collect();
        let ran: Vec<AtomicU64> = (0..tools.len()).map(|_| AtomicU64::new(0)).collect();
        let out = pool.run(&tools, 3, |j| {
            ran[j].fetch_add(1, Ordering::Relaxed);
            j * 10
        });
        assert_eq!(out, (0..20).map(|j| j * 10).collect::<Vec<_>>());
        assert!(ran.iter().all(|n| n.load(Ordering::Relaxed) == 1));
        let stats = pool.stats();
        assert_eq!(stats.jobs_per_slot.iter().sum::<u64>(), 20);
        assert_eq!(stats.batches, 1);
        assert_eq!(
            stats.placed_annealed + stats.placed_repaired + stats.placed_greedy,
            1,
            "{stats:?}"
        );
        // The slots now hold their tools warm.
        let warm = pool.warm.lock().unwrap();
        assert!(warm.iter().any(|w| !w.is_empty()));
    }

    #[test]
    fn a_slot_that_runs_out_takes_jobs_from_one_that_has_not() {
        // Every job placed on slot 1, whose thread stalls 100 ms in each job
        // it runs: slot 0 (the caller's thread), whose own share is empty,
        // takes the rest of slot 1's from the back, and every job still
        // runs once, results in order.
        let pool = Pool::new(2).unwrap();
        let plan = BatchPlan {
            slot: vec![1; 6],
            outcome: None,
        };
        let tools: Vec<Digest> = (0..6).map(|_| tool(1)).collect();
        let on_caller = std::thread::current().id();
        let done_by_caller = AtomicU64::new(0);
        let out = pool.run_placed(
            || plan,
            &tools,
            |j| {
                if std::thread::current().id() == on_caller {
                    done_by_caller.fetch_add(1, Ordering::SeqCst);
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                j + 1
            },
        );
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        let stats = pool.stats();
        assert_eq!(stats.jobs_per_slot.iter().sum::<u64>(), 6);
        // Slot 0 (the caller's thread) ran only what it took from slot 1:
        // all but the one the slot-1 thread started with, or all of them if
        // that thread woke after the caller had taken everything.
        let by_caller = done_by_caller.load(Ordering::SeqCst);
        assert!(by_caller >= 5, "{stats:?}");
        assert_eq!(stats.jobs_per_slot[0], by_caller);
        assert_eq!(stats.jobs_stolen, stats.jobs_per_slot[0]);
        // The shares themselves: slot 0's empty, it takes slot 1's last.
        let shares = Shares::new(&[1, 1, 0], 2);
        assert_eq!(shares.next(0), Some((2, false)));
        assert_eq!(shares.next(0), Some((1, true)));
        assert_eq!(shares.next(1), Some((0, false)));
        assert_eq!(shares.next(1), None);
        assert_eq!(shares.next(0), None);
    }

    #[test]
    fn a_placement_that_panics_leaves_no_slot_waiting() {
        let pool = Pool::new(2).unwrap();
        let tools: Vec<Digest> = (0..4).map(|_| tool(1)).collect();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run_placed(|| panic!("the placement failed"), &tools, |j| j)
        }));
        assert!(outcome.is_err());
        // The slots are free for the next batch.
        assert_eq!(pool.run(&tools, 1, |j| j * 2), [0, 2, 4, 6]);
    }
}
