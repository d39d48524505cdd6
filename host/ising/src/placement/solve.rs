//! Solving a [`PlacementProblem`]: the greedy start, the structured
//! annealer, repair, and the [`Placer`] that runs them with reused scratch
//! space.
//!
//! Inside the solver an assignment is flat: `exec[c]` is the executor of
//! copy `c`, and the copies of invocation `t` are
//! `first_copy[t]..first_copy[t + 1]`. The `Vec<Vec<usize>>` form of the
//! public API is built once, for the answer.

use std::time::Instant;

use super::problem::within;
use super::{
    InvocationCard, Placement, PlacementError, PlacementOutcome, PlacementParams, PlacementProblem,
    Solver, SMALL_BATCH_ATTEMPTS, SMALL_BATCH_COPIES, SMALL_BATCH_READS,
};
use crate::anneal::{anneal, ln_det, metropolis, Metropolis, Params, NEVER_ACCEPTED};
use crate::model::spins_to_bits;
use crate::rng::{exp_neg, stream_seed, Rng};

/// The annealer starts this many times colder than "a large uphill move
/// passes half the time": it starts from the greedy placement, which a hot
/// start would only scramble (measured on the benchmark's locality-heavy
/// and 256-invocation batches).
const START_COLDER: f64 = 16.0;

/// What one executor holds in the walk.
#[derive(Clone, Copy, Debug, Default)]
struct Fill {
    slot_units: i64,
    memory_units: i64,
    /// Slot load including existing load, for balance.
    load: f64,
}

/// Mutable state of the structured annealer: where each copy is,
/// per-executor usage, and the energy, all kept consistent move by move.
/// Its buffers are reused from one placement to the next.
#[derive(Clone, Debug, Default)]
pub(super) struct Walk {
    /// `exec[c]`: the executor of copy `c`.
    pub(super) exec: Vec<u32>,
    fill: Vec<Fill>,
    /// Penalty units: slot overflow² + memory overflow² + domain clashes.
    pub(super) violations: i64,
    /// The objective at the last [`Walk::recompute`].
    pub(super) objective: f64,
    /// Objective plus penalties, kept up to date move by move.
    pub(super) energy: f64,
}

fn sq_over(used: i64, free: i64) -> i64 {
    let o = (used - free).max(0);
    o * o
}

impl Walk {
    /// Puts the walk at `start` (one eligible executor per copy; domains and
    /// capacity may clash).
    pub(super) fn reset(&mut self, p: &PlacementProblem, start: &[u32]) {
        debug_assert_eq!(start.len(), p.copies());
        self.exec.clear();
        self.exec.extend_from_slice(start);
        self.fill.clear();
        self.fill.extend(p.executors.iter().map(|e| Fill {
            slot_units: 0,
            memory_units: 0,
            load: f64::from(e.load_slots),
        }));
        for (c, &e) in start.iter().enumerate() {
            let card = &p.cards[p.copy_invocation[c] as usize];
            let f = &mut self.fill[e as usize];
            f.slot_units += card.slot_units;
            f.memory_units += card.memory_units;
            f.load += card.slots;
        }
        self.recompute(p);
    }

    /// Recomputes the energy from scratch (no drift).
    pub(super) fn recompute(&mut self, p: &PlacementProblem) {
        let ne = p.ne();
        let mut obj = 0.0;
        let mut viol = 0i64;
        for (c, &e) in self.exec.iter().enumerate() {
            obj += p.cost[p.copy_invocation[c] as usize * ne + e as usize];
        }
        for (f, b) in self.fill.iter().zip(&p.bins) {
            obj += b.balance * f.load * f.load;
            viol += sq_over(f.slot_units, b.free_slot_units)
                + sq_over(f.memory_units, b.free_memory_units);
        }
        for card in &p.cards {
            let first = card.first_copy as usize;
            let cs = &self.exec[first..first + card.copies as usize];
            for (a, &ea) in cs.iter().enumerate() {
                for &eb in &cs[a + 1..] {
                    viol += i64::from(p.bins[ea as usize].domain == p.bins[eb as usize].domain);
                }
            }
        }
        self.violations = viol;
        self.objective = obj;
        self.energy = obj + p.penalty * viol as f64;
    }

    /// (Δbalance, Δviolations) of executor `e` gaining `ds` slot units, `dm`
    /// memory units and `dl` slots of load (negative to lose them).
    #[inline(always)]
    fn executor_delta(
        &self,
        p: &PlacementProblem,
        e: usize,
        ds: i64,
        dm: i64,
        dl: f64,
    ) -> (f64, i64) {
        let f = &self.fill[e];
        let b = &p.bins[e];
        let d_bal = b.balance * (dl * (2.0 * f.load + dl));
        let (us, um) = (f.slot_units, f.memory_units);
        let (fs, fm) = (b.free_slot_units, b.free_memory_units);
        let d_viol =
            sq_over(us + ds, fs) - sq_over(us, fs) + sq_over(um + dm, fm) - sq_over(um, fm);
        (d_bal, d_viol)
    }

    /// Change in same-domain pairs when copy `c` of an invocation with
    /// `card` moves from `from` to `to`.
    #[inline(always)]
    fn domain_delta(
        &self,
        p: &PlacementProblem,
        card: &InvocationCard,
        c: usize,
        from: usize,
        to: usize,
    ) -> i64 {
        if card.copies < 2 {
            return 0;
        }
        let (df, dt) = (p.bins[from].domain, p.bins[to].domain);
        if df == dt {
            return 0;
        }
        let first = card.first_copy as usize;
        (first..first + card.copies as usize)
            .filter(|&c2| c2 != c)
            .map(|c2| {
                let d2 = p.bins[self.exec[c2] as usize].domain;
                i64::from(d2 == dt) - i64::from(d2 == df)
            })
            .sum()
    }

    /// (Δobjective, Δviolations) of moving copy `c` to executor `to`.
    #[inline(always)]
    pub(super) fn move_delta(&self, p: &PlacementProblem, c: usize, to: usize) -> (f64, i64) {
        let ne = p.ne();
        let t = p.copy_invocation[c] as usize;
        let card = &p.cards[t];
        let from = self.exec[c] as usize;
        debug_assert_ne!(from, to);
        let (su, mu, s) = (card.slot_units, card.memory_units, card.slots);
        let (bf, vf) = self.executor_delta(p, from, -su, -mu, -s);
        let (bt, vt) = self.executor_delta(p, to, su, mu, s);
        let d_obj = p.cost[t * ne + to] - p.cost[t * ne + from] + bf + bt;
        (d_obj, vf + vt + self.domain_delta(p, card, c, from, to))
    }

    /// (Δobjective, Δviolations) of swapping the executors of copies `c` and
    /// `c2` (of different invocations, on different executors).
    #[inline(always)]
    pub(super) fn swap_delta(&self, p: &PlacementProblem, c: usize, c2: usize) -> (f64, i64) {
        let ne = p.ne();
        let (t, a) = (p.copy_invocation[c] as usize, self.exec[c] as usize);
        let (t2, b) = (p.copy_invocation[c2] as usize, self.exec[c2] as usize);
        debug_assert!(t != t2 && a != b);
        let (k, k2) = (&p.cards[t], &p.cards[t2]);
        let ds = k2.slot_units - k.slot_units;
        let dm = k2.memory_units - k.memory_units;
        let dl = k2.slots - k.slots;
        let (ba, va) = self.executor_delta(p, a, ds, dm, dl);
        let (bb, vb) = self.executor_delta(p, b, -ds, -dm, -dl);
        let d_obj = p.cost[t * ne + b] - p.cost[t * ne + a] + p.cost[t2 * ne + a]
            - p.cost[t2 * ne + b]
            + ba
            + bb;
        (
            d_obj,
            va + vb + self.domain_delta(p, k, c, a, b) + self.domain_delta(p, k2, c2, b, a),
        )
    }

    /// Moves copy `c` to `to`, updating usage but not the energy.
    #[inline(always)]
    pub(super) fn shift(&mut self, p: &PlacementProblem, c: usize, to: usize) {
        let card = &p.cards[p.copy_invocation[c] as usize];
        let from = self.exec[c] as usize;
        let f = &mut self.fill[from];
        f.slot_units -= card.slot_units;
        f.memory_units -= card.memory_units;
        f.load -= card.slots;
        let f = &mut self.fill[to];
        f.slot_units += card.slot_units;
        f.memory_units += card.memory_units;
        f.load += card.slots;
        self.exec[c] = to as u32;
    }

    /// Moves copy `c` to `to` with its energy change already known.
    #[inline(always)]
    pub(super) fn relocate(
        &mut self,
        p: &PlacementProblem,
        c: usize,
        to: usize,
        (d_obj, d_viol): (f64, i64),
    ) {
        self.shift(p, c, to);
        self.violations += d_viol;
        self.energy += d_obj + p.penalty * d_viol as f64;
    }

    /// Whether invocation `t` has a copy on `e` other than `except`.
    #[inline(always)]
    pub(super) fn has_copy_on(
        &self,
        p: &PlacementProblem,
        t: usize,
        e: usize,
        except: usize,
    ) -> bool {
        let card = &p.cards[t];
        let first = card.first_copy as usize;
        card.copies > 1
            && (first..first + card.copies as usize)
                .any(|c| c != except && self.exec[c] as usize == e)
    }

    /// The assignment in the public form: executors ascending per invocation.
    pub(super) fn assignment(&self, p: &PlacementProblem) -> Vec<Vec<usize>> {
        to_assignment(p, &self.exec)
    }

    /// Greedy descent: moves each copy to its best executor while that
    /// lowers the energy. Stops after the pass in which its move
    /// evaluations reach `evaluations_max` (at least one pass), so its time
    /// is bounded too.
    pub(super) fn descend(&mut self, p: &PlacementProblem, evaluations_max: usize) {
        const PASSES_MAX: usize = 100;
        let ne = p.ne();
        let mut evaluations = 0usize;
        for _pass in 0..PASSES_MAX {
            let mut improved = false;
            let tolerance = 1e-9 * (1.0 + self.energy.abs());
            for c in 0..self.exec.len() {
                let t = p.copy_invocation[c] as usize;
                let card = &p.cards[t];
                let from = self.exec[c] as usize;
                let (su, mu, s) = (card.slot_units, card.memory_units, card.slots);
                // What leaving `from` changes is the same for every target.
                let (bf, vf) = self.executor_delta(p, from, -su, -mu, -s);
                let leave = bf - p.cost[t * ne + from];
                let several = card.copies > 1;
                let mut best: Option<(f64, usize, (f64, i64))> = None;
                let eligible = p.eligible(t);
                evaluations += eligible.len();
                for &to in eligible {
                    if to == from || (several && self.has_copy_on(p, t, to, c)) {
                        continue;
                    }
                    let (bt, vt) = self.executor_delta(p, to, su, mu, s);
                    let d_obj = leave + p.cost[t * ne + to] + bt;
                    let d_viol = vf + vt + self.domain_delta(p, card, c, from, to);
                    let de = d_obj + p.penalty * d_viol as f64;
                    if de < -tolerance && best.is_none_or(|(b, _, _)| de < b) {
                        best = Some((de, to, (d_obj, d_viol)));
                    }
                }
                if let Some((_, to, d)) = best {
                    self.relocate(p, c, to, d);
                    improved = true;
                }
            }
            if !improved || evaluations >= evaluations_max {
                break;
            }
        }
        // Summing many small changes accumulates rounding.
        self.recompute(p);
    }
}

/// A flat assignment in the public form.
fn to_assignment(p: &PlacementProblem, exec: &[u32]) -> Vec<Vec<usize>> {
    (0..p.invocations.len())
        .map(|t| {
            let mut a: Vec<usize> = exec[p.first_copy[t]..p.first_copy[t + 1]]
                .iter()
                .map(|&e| e as usize)
                .collect();
            a.sort_unstable();
            a
        })
        .collect()
}

/// Whether one more copy of `t` fits on `e` after `used_*`, by the rule of
/// [`PlacementProblem::check`].
#[inline]
fn room(p: &PlacementProblem, t: usize, e: usize, used_slots: &[u64], used_mem: &[u128]) -> bool {
    let inv = &p.invocations[t];
    let ex = &p.executors[e];
    within(
        u128::from(used_slots[e]) + u128::from(inv.slots),
        u128::from(ex.load_slots),
        u128::from(ex.slots),
    ) && within(
        used_mem[e] + u128::from(inv.memory_bytes),
        u128::from(ex.load_memory_bytes),
        u128::from(ex.memory_bytes),
    )
}

/// Usage buffers of the greedy placements, reused.
#[derive(Clone, Debug, Default)]
struct Usage {
    slots: Vec<u64>,
    memory: Vec<u128>,
    load: Vec<f64>,
}

impl Usage {
    fn reset(&mut self, p: &PlacementProblem) {
        let ne = p.ne();
        self.slots.clear();
        self.slots.resize(ne, 0);
        self.memory.clear();
        self.memory.resize(ne, 0);
        self.load.clear();
        self.load
            .extend(p.executors.iter().map(|e| f64::from(e.load_slots)));
    }

    fn add(&mut self, p: &PlacementProblem, t: usize, e: usize) {
        self.slots[e] += u64::from(p.invocations[t].slots);
        self.memory[e] += u128::from(p.invocations[t].memory_bytes);
        self.load[e] += p.slots_f[t];
    }
}

/// The greedy score of one more copy of `t` on `e` with slot load `load`:
/// the energy it adds.
#[inline]
fn marginal_energy(p: &PlacementProblem, t: usize, e: usize, load: f64) -> f64 {
    let s = p.slots_f[t];
    p.cost(t, e) + p.balance[e] * (s * (2.0 * load + s))
}

/// Greedy placement into `out` (flat): each copy, biggest invocations
/// first, goes to the feasible executor with the lowest `score`. `false` if
/// some copy finds no room.
fn greedy_flat(
    p: &PlacementProblem,
    score: impl Fn(&PlacementProblem, usize, usize, f64) -> f64,
    usage: &mut Usage,
    out: &mut Vec<u32>,
) -> bool {
    usage.reset(p);
    out.clear();
    out.resize(p.copies(), u32::MAX);
    for &t in &p.order {
        for c in p.first_copy[t]..p.first_copy[t + 1] {
            let mut best: Option<(f64, usize)> = None;
            for &e in p.eligible(t) {
                let domain_taken = out[p.first_copy[t]..c]
                    .iter()
                    .any(|&e2| p.domain[e2 as usize] == p.domain[e]);
                if domain_taken || !room(p, t, e, &usage.slots, &usage.memory) {
                    continue;
                }
                let sc = score(p, t, e, usage.load[e]);
                if best.is_none_or(|(b, _)| sc < b) {
                    best = Some((sc, e));
                }
            }
            let Some((_, e)) = best else {
                return false;
            };
            usage.add(p, t, e);
            out[c] = e as u32;
        }
    }
    true
}

/// Greedy placement by marginal cost: each copy (largest first) goes to the
/// feasible executor where it adds the least energy. `None` if some copy
/// finds no room.
#[must_use]
pub fn greedy(p: &PlacementProblem) -> Option<Vec<Vec<usize>>> {
    let mut out = Vec::new();
    greedy_flat(p, marginal_energy, &mut Usage::default(), &mut out).then(|| to_assignment(p, &out))
}

/// The baseline scheduler: each copy goes to the feasible executor with the
/// lowest slot utilization, ignoring locality and topology.
#[must_use]
pub fn greedy_least_loaded(p: &PlacementProblem) -> Option<Vec<Vec<usize>>> {
    let mut out = Vec::new();
    greedy_flat(
        p,
        |p, _t, e, load| load / p.capacity[e].max(1.0),
        &mut Usage::default(),
        &mut out,
    )
    .then(|| to_assignment(p, &out))
}

/// Makes an assignment feasible if it can: drops extra copies and copies that
/// clash on a failure domain or overflow an executor, then places the missing
/// ones greedily. `None` if some copy finds no room.
#[must_use]
pub fn repair(p: &PlacementProblem, assignment: &[Vec<usize>]) -> Option<Vec<Vec<usize>>> {
    let ne = p.ne();
    let mut a: Vec<Vec<usize>> = Vec::with_capacity(assignment.len());
    // Keep at most `replicas` eligible copies on distinct domains, cheapest first.
    for (t, execs) in assignment.iter().enumerate() {
        let mut execs: Vec<usize> = execs
            .iter()
            .copied()
            .filter(|&e| e < ne && p.cost(t, e).is_finite())
            .collect();
        execs.sort_by(|&x, &y| p.cost(t, x).total_cmp(&p.cost(t, y)).then(x.cmp(&y)));
        execs.dedup();
        let mut kept = Vec::new();
        let mut domains = Vec::new();
        for e in execs {
            if kept.len() < p.invocations[t].replicas as usize && !domains.contains(&p.domain[e]) {
                domains.push(p.domain[e]);
                kept.push(e);
            }
        }
        a.push(kept);
    }
    // Drop copies from overflowing executors, largest first, until they fit.
    let mut usage = Usage::default();
    usage.reset(p);
    for &t in p.order.iter().rev() {
        let mut kept = Vec::new();
        for &e in &a[t] {
            if room(p, t, e, &usage.slots, &usage.memory) {
                usage.add(p, t, e);
                kept.push(e);
            }
        }
        a[t] = kept;
    }
    // Place what is missing by marginal cost.
    for &t in &p.order {
        while a[t].len() < p.invocations[t].replicas as usize {
            let mut best: Option<(f64, usize)> = None;
            for &e in p.eligible(t) {
                if a[t].iter().any(|&e2| p.domain[e2] == p.domain[e])
                    || !room(p, t, e, &usage.slots, &usage.memory)
                {
                    continue;
                }
                let sc = marginal_energy(p, t, e, usage.load[e]);
                if best.is_none_or(|(b, _)| sc < b) {
                    best = Some((sc, e));
                }
            }
            let (_, e) = best?;
            usage.add(p, t, e);
            a[t].push(e);
        }
        a[t].sort_unstable();
    }
    Some(a)
}

/// Each copy on the cheapest eligible executors of distinct domains,
/// ignoring capacity (flat): the annealer's start when greedy fails.
pub(super) fn cheapest_ignoring_capacity(p: &PlacementProblem, out: &mut Vec<u32>) {
    out.clear();
    out.resize(p.copies(), u32::MAX);
    let mut by_cost: Vec<usize> = Vec::new();
    for t in 0..p.invocations.len() {
        by_cost.clear();
        by_cost.extend_from_slice(p.eligible(t));
        by_cost.sort_by(|&x, &y| p.cost(t, x).total_cmp(&p.cost(t, y)).then(x.cmp(&y)));
        let mut c = p.first_copy[t];
        for &e in &by_cost {
            if c == p.first_copy[t + 1] {
                break;
            }
            if out[p.first_copy[t]..c]
                .iter()
                .all(|&e2| p.domain[e2 as usize] != p.domain[e])
            {
                out[c] = e as u32;
                c += 1;
            }
        }
        // The problem guarantees enough domains among the eligible executors.
        assert_eq!(c, p.first_copy[t + 1], "too few domains for invocation {t}");
    }
}

/// Scratch space of one [`Placer`], reused from batch to batch.
#[derive(Clone, Debug, Default)]
struct Scratch {
    walk: Walk,
    usage: Usage,
    /// The greedy placement (flat), or the cheapest start when greedy fails.
    start: Vec<u32>,
    /// The best clean state of the current read.
    read_best: Vec<u32>,
    /// The best feasible state over all reads.
    best: Vec<u32>,
    /// Objective changes sampled for the temperature scale.
    deltas: Vec<f64>,
}

/// One structured annealing read from `scratch.start`. Leaves the walk at
/// the read's answer: the best clean state seen, polished by descent, or
/// the final state if none was clean. Returns the move attempts made.
/// One read's work: `sweeps` sweeps of `attempts` move attempts, then a
/// descent of at most `descent_max` evaluations.
struct Schedule {
    sweeps: usize,
    attempts: usize,
    descent_max: usize,
}

fn anneal_read(
    p: &PlacementProblem,
    s: &mut Scratch,
    schedule: Schedule,
    seed: u64,
    table: &Metropolis,
) -> u64 {
    let Schedule {
        sweeps,
        attempts,
        descent_max: descent_evaluations_max,
    } = schedule;
    let st = &mut s.walk;
    st.reset(p, &s.start);
    let n_copies = st.exec.len();
    if n_copies == 0 {
        return 0;
    }
    let mut rng = Rng::new(seed);
    let ne = p.ne();
    // The temperature scale comes from the objective changes of random moves
    // (penalties excluded): a typical large move passes now and then at the
    // start, the smallest one seen almost never at the end.
    s.deltas.clear();
    for _ in 0..64.min(4 * n_copies) {
        let c = rng.below(n_copies as u64) as usize;
        let t = p.copy_invocation[c] as usize;
        let el = p.eligible(t);
        let to = el[rng.below(el.len() as u64) as usize];
        if to == st.exec[c] as usize || st.has_copy_on(p, t, to, c) {
            continue;
        }
        let (d_obj, _) = st.move_delta(p, c, to);
        if d_obj.abs() > 1e-9 {
            s.deltas.push(d_obj.abs());
        }
    }
    s.deltas.sort_by(f64::total_cmp);
    let (hot, cold) = if s.deltas.is_empty() {
        (1.0, 1.0)
    } else {
        let big = s.deltas[s.deltas.len() * 9 / 10];
        let small = s.deltas[0];
        let hot = START_COLDER * std::f64::consts::LN_2 / big;
        (hot, (ln_det(100.0 * n_copies as f64) / small).max(hot))
    };
    let mut best_energy = if st.violations == 0 {
        st.energy
    } else {
        f64::INFINITY
    };
    s.read_best.clear();
    s.read_best.extend_from_slice(&st.exec);
    // Geometric schedule with deterministic arithmetic (no platform `pow`).
    let ratio = if sweeps > 1 {
        1.0 / exp_neg((ln_det(cold) - ln_det(hot)) / (sweeps - 1) as f64)
    } else {
        1.0
    };
    let mut beta = hot;
    let n = n_copies as u64;
    let mut made = 0u64;
    for sweep in 0..sweeps {
        // Moves that changed the energy in this sweep.
        let mut changed = 0usize;
        for k in 0..attempts {
            // One random word picks the copy (high half) and the target (30
            // bits below). Every fourth attempt is a swap: a fixed pattern
            // the branch predictor learns, where a random choice would cost
            // a misprediction one time in four.
            let r = rng.next_u64();
            let c = (((r >> 32) * n) >> 32) as usize;
            let pick = (r >> 2) & 0x3FFF_FFFF;
            let t = p.copy_invocation[c] as usize;
            let from = st.exec[c] as usize;
            if k & 3 == 0 {
                // Swap with a copy of another invocation on another executor.
                let c2 = ((pick * n) >> 30) as usize;
                let t2 = p.copy_invocation[c2] as usize;
                let to = st.exec[c2] as usize;
                if t2 == t
                    || to == from
                    || p.cost[t * ne + to].is_infinite()
                    || p.cost[t2 * ne + from].is_infinite()
                    || st.has_copy_on(p, t, to, c)
                    || st.has_copy_on(p, t2, from, c2)
                {
                    continue;
                }
                let d = st.swap_delta(p, c, c2);
                let de = d.0 + p.penalty * d.1 as f64;
                if de <= 0.0 || (beta * de < NEVER_ACCEPTED && table.accept(beta * de, &mut rng)) {
                    st.shift(p, c, to);
                    st.shift(p, c2, from);
                    st.violations += d.1;
                    st.energy += de;
                    changed += usize::from(de != 0.0);
                }
            } else {
                let card = &p.cards[t];
                let k = ((pick * u64::from(card.eligible_len)) >> 30) as usize;
                let to = p.eligible[card.eligible_start as usize + k];
                if to == from || st.has_copy_on(p, t, to, c) {
                    continue;
                }
                let d = st.move_delta(p, c, to);
                let de = d.0 + p.penalty * d.1 as f64;
                if de <= 0.0 || (beta * de < NEVER_ACCEPTED && table.accept(beta * de, &mut rng)) {
                    st.relocate(p, c, to, d);
                    changed += usize::from(de != 0.0);
                }
            }
        }
        if st.violations == 0 && st.energy < best_energy - 1e-9 * (1.0 + best_energy.abs()) {
            best_energy = st.energy;
            s.read_best.copy_from_slice(&st.exec);
        }
        made += attempts as u64;
        beta *= ratio;
        // Frozen: in the cold half of the schedule a whole sweep changed
        // nothing, and colder sweeps would change even less. The descent
        // below finishes the job.
        if changed == 0 && 2 * sweep >= sweeps {
            break;
        }
    }
    st.recompute(p);
    st.descend(p, descent_evaluations_max);
    if st.violations == 0 && st.energy <= best_energy {
        return made;
    }
    if best_energy.is_finite() {
        // Go back to the best clean state and polish it.
        st.reset(p, &s.read_best);
        st.descend(p, descent_evaluations_max);
    }
    made
}

/// Places batches of invocations, keeping its scratch space from one batch
/// to the next (see the [module docs](super) for the host's loop).
///
/// The same problem and seed give the same placement, whatever the placer
/// placed before.
#[derive(Clone, Debug)]
pub struct Placer {
    params: PlacementParams,
    scratch: Scratch,
}

impl Default for Placer {
    fn default() -> Self {
        Self::new(PlacementParams::default()).expect("the default parameters are valid")
    }
}

impl Placer {
    /// A placer with checked parameters.
    pub fn new(params: PlacementParams) -> Result<Self, PlacementError> {
        if params.reads == 0 {
            return Err(PlacementError::Params("reads must be at least 1".into()));
        }
        if params.reads > crate::anneal::READS_MAX || params.sweeps > crate::anneal::SWEEPS_MAX {
            return Err(PlacementError::Params(format!(
                "at most {} reads and {} sweeps",
                crate::anneal::READS_MAX,
                crate::anneal::SWEEPS_MAX
            )));
        }
        // Build the shared acceptance table now rather than in the first
        // placement.
        let _ = metropolis();
        Ok(Self {
            params,
            scratch: Scratch::default(),
        })
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &PlacementParams {
        &self.params
    }

    /// Places a batch with the parameters' seed: anneal, check, repair or
    /// fall back to greedy.
    ///
    /// Never returns an assignment that breaks a hard constraint: if nothing
    /// feasible is found it returns [`PlacementError::NoFeasiblePlacement`].
    pub fn place(&mut self, p: &PlacementProblem) -> Result<Placement, PlacementError> {
        self.place_with_seed(p, self.params.seed)
    }

    /// [`Placer::place`] with another seed (say, derived from the batch's
    /// digest, so that replicas agree without sharing a generator).
    pub fn place_with_seed(
        &mut self,
        p: &PlacementProblem,
        seed: u64,
    ) -> Result<Placement, PlacementError> {
        // The one clock read: optional timing statistics, never a decision.
        #[allow(clippy::disallowed_methods)]
        let start_time = self.params.measure_time.then(Instant::now);
        let params = &self.params;
        let s = &mut self.scratch;
        let greedy_ok = greedy_flat(p, marginal_energy, &mut s.usage, &mut s.start);
        let mut greedy_objective = None;
        let mut greedy_feasible = false;
        if greedy_ok {
            s.walk.reset(p, &s.start);
            greedy_objective = Some(s.walk.objective);
            greedy_feasible = s.walk.violations == 0 || exactly_feasible(p, &s.start, &mut s.usage);
        }
        if p.invocations.is_empty() {
            let a: Vec<Vec<usize>> = Vec::new();
            return Ok(Placement {
                energy: p.breakdown(&a),
                assignment: a,
                outcome: PlacementOutcome::Greedy,
                greedy_objective,
                elapsed: start_time.map(|s| s.elapsed()),
                move_attempts: 0,
            });
        }
        // The best feasible candidate: (objective, outcome); its state is in
        // `s.best`, or in `repaired` when it came from a repair.
        let mut best: Option<(f64, PlacementOutcome)> = None;
        let mut move_attempts = 0u64;
        let mut repaired: Option<Vec<Vec<usize>>> = None;
        match params.solver {
            Solver::Structured => {
                if !greedy_ok {
                    cheapest_ignoring_capacity(p, &mut s.start);
                }
                let copies = p.copies();
                // Small batches get extra reads and attempts (unless the
                // caller turned that off): microseconds of work that make
                // small placements reliably optimal.
                let boost = params.small_batch_boost && copies <= SMALL_BATCH_COPIES;
                let reads = if boost {
                    params.reads.max(SMALL_BATCH_READS)
                } else {
                    params.reads
                };
                let attempts_per_sweep = if params.small_batch_boost {
                    copies.max(SMALL_BATCH_ATTEMPTS)
                } else {
                    copies
                };
                // The work bound: sweeps cut so that all reads together make
                // at most `move_attempts_max` attempts (one sweep at least).
                let sweeps = params
                    .sweeps
                    .min((params.move_attempts_max / (reads * attempts_per_sweep.max(1))).max(1));
                let descent_max = (params.move_attempts_max / reads).max(1);
                let table = metropolis();
                for r in 0..reads {
                    let seed = stream_seed(seed, r as u64);
                    move_attempts += anneal_read(
                        p,
                        s,
                        Schedule {
                            sweeps,
                            attempts: attempts_per_sweep,
                            descent_max,
                        },
                        seed,
                        table,
                    );
                    let objective = s.walk.objective;
                    if s.walk.violations == 0 && exactly_feasible(p, &s.walk.exec, &mut s.usage) {
                        if best.is_none_or(|(b, _)| objective < b) {
                            best = Some((objective, PlacementOutcome::Annealed));
                            s.best.clone_from(&s.walk.exec);
                            repaired = None;
                        }
                    } else if let Some((obj, a)) = repair_and_polish(p, s, descent_max) {
                        if best.is_none_or(|(b, _)| obj < b) {
                            best = Some((obj, PlacementOutcome::Repaired));
                            repaired = Some(a);
                        }
                    }
                }
            }
            Solver::Qubo => {
                let (qubo, layout) = p.to_qubo()?;
                let sol = anneal(
                    &qubo.to_ising(),
                    &Params {
                        sweeps: params.sweeps,
                        reads: params.reads,
                        seed,
                        measure_time: false,
                        ..Params::default()
                    },
                )?;
                move_attempts = sol.stats.flip_attempts;
                let a = layout.decode(&spins_to_bits(&sol.state), p.invocations.len());
                if p.check(&a).is_ok() {
                    best = Some((p.breakdown(&a).objective, PlacementOutcome::Annealed));
                    repaired = Some(a);
                } else if let Some(fixed) = repair(p, &a).filter(|f| p.check(f).is_ok()) {
                    best = Some((p.breakdown(&fixed).objective, PlacementOutcome::Repaired));
                    repaired = Some(fixed);
                }
            }
        }
        if greedy_feasible {
            let g_obj = greedy_objective.expect("greedy succeeded");
            if best.is_none_or(|(b, _)| g_obj < b) {
                best = Some((g_obj, PlacementOutcome::Greedy));
                s.best.clone_from(&s.start);
                repaired = None;
            }
        }
        let (_, outcome) = best.ok_or(PlacementError::NoFeasiblePlacement)?;
        let assignment = match repaired {
            Some(a) => a,
            None => to_assignment(p, &s.best),
        };
        // The one check that matters: nothing infeasible leaves this function.
        if let Err(e) = p.check(&assignment) {
            unreachable!("a placement that failed its own check was about to be returned: {e}");
        }
        Ok(Placement {
            energy: p.breakdown(&assignment),
            assignment,
            outcome,
            greedy_objective,
            elapsed: start_time.map(|s| s.elapsed()),
            move_attempts,
        })
    }
}

/// Whether a flat assignment satisfies every hard constraint in exact units
/// (the flat twin of [`PlacementProblem::check`], allocation-free).
fn exactly_feasible(p: &PlacementProblem, exec: &[u32], usage: &mut Usage) -> bool {
    usage.reset(p);
    for t in 0..p.invocations.len() {
        let cs = p.first_copy[t]..p.first_copy[t + 1];
        for c in cs.clone() {
            let e = exec[c] as usize;
            if e >= p.ne() || !p.cost(t, e).is_finite() {
                return false;
            }
            if exec[cs.start..c]
                .iter()
                .any(|&e2| p.domain[e2 as usize] == p.domain[e])
            {
                return false;
            }
            if !room(p, t, e, &usage.slots, &usage.memory) {
                return false;
            }
            usage.add(p, t, e);
        }
    }
    true
}

/// Repairs the walk's state and polishes it by descent: (objective,
/// assignment), if the repair succeeds.
fn repair_and_polish(
    p: &PlacementProblem,
    s: &mut Scratch,
    descent_max: usize,
) -> Option<(f64, Vec<Vec<usize>>)> {
    let fixed = repair(p, &s.walk.assignment(p)).filter(|f| p.check(f).is_ok())?;
    let mut flat = Vec::with_capacity(p.copies());
    for execs in &fixed {
        flat.extend(execs.iter().map(|&e| e as u32));
    }
    s.walk.reset(p, &flat);
    s.walk.descend(p, descent_max);
    let polished = s.walk.assignment(p);
    if p.check(&polished).is_ok() {
        Some((s.walk.objective, polished))
    } else {
        Some((p.breakdown(&fixed).objective, fixed))
    }
}

/// Places a batch with a one-off [`Placer`]: anneal, check, repair or fall
/// back to greedy. A host placing many batches keeps a [`Placer`] instead.
///
/// Never returns an assignment that breaks a hard constraint: if nothing
/// feasible is found it returns [`PlacementError::NoFeasiblePlacement`].
pub fn place(p: &PlacementProblem, params: &PlacementParams) -> Result<Placement, PlacementError> {
    Placer::new(params.clone())?.place(p)
}
