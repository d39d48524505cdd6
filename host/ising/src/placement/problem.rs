//! Building a [`PlacementProblem`]: validation, interning of names, the
//! linear costs, the penalty weight; and the two judges of an assignment,
//! [`PlacementProblem::breakdown`] (its energy by term) and
//! [`PlacementProblem::check`] (the hard constraints in exact units).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    check_size, EnergyBreakdown, Executor, ExecutorBin, Invocation, InvocationCard, Location,
    PlacementError, PlacementProblem, Quantized, Weights,
};

/// Dense ids for names, in first-seen order.
struct Interner<K> {
    ids: BTreeMap<K, u32>,
}

impl<K: Ord> Interner<K> {
    fn new() -> Self {
        Self {
            ids: BTreeMap::new(),
        }
    }

    fn intern(&mut self, key: K) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(key).or_insert(next)
    }

    fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// A place id that no executor has: an origin outside every known
/// datacenter, rack or server.
const NOWHERE: u32 = u32::MAX;

/// [`Location::distance`] on interned places: ids are hierarchical (a rack
/// id names a datacenter and a rack, a server id all three), so equal ids
/// mean equal names.
#[inline]
fn place_distance(a: [u32; 3], b: [u32; 3]) -> u32 {
    if a[0] != b[0] {
        100
    } else if a[1] != b[1] {
        10
    } else if a[2] != b[2] {
        1
    } else {
        0
    }
}

impl PlacementProblem {
    /// Validates a batch and precomputes costs and the penalty weight.
    ///
    /// An empty batch is valid (its placement is empty). An executor with
    /// zero capacity simply receives nothing.
    pub fn new(
        invocations: Vec<Invocation>,
        executors: Vec<Executor>,
        weights: Weights,
    ) -> Result<Self, PlacementError> {
        for (name, value) in [
            ("cold_start", weights.cold_start),
            ("data", weights.data),
            ("topology", weights.topology),
            ("balance", weights.balance),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(PlacementError::BadWeight { name, value });
            }
        }
        if executors.is_empty() {
            return Err(PlacementError::NoExecutors);
        }
        check_size(invocations.len(), executors.len())?;
        let ne = executors.len();
        let free_slots: Vec<u64> = executors
            .iter()
            .map(|e| u64::from(e.slots.saturating_sub(e.load_slots)))
            .collect();
        let free_mem: Vec<u64> = executors
            .iter()
            .map(|e| e.memory_bytes.saturating_sub(e.load_memory_bytes))
            .collect();
        for t in &invocations {
            if t.replicas == 0 {
                return Err(PlacementError::ZeroReplicas(t.id.clone()));
            }
        }
        let needed_slots: u128 = invocations
            .iter()
            .map(|t| u128::from(t.slots) * u128::from(t.replicas))
            .sum();
        let free_total: u128 = free_slots.iter().map(|&v| u128::from(v)).sum();
        if needed_slots > free_total {
            return Err(PlacementError::Overcommitted {
                resource: "slots",
                needed: needed_slots,
                free: free_total,
            });
        }
        let needed_mem: u128 = invocations
            .iter()
            .map(|t| u128::from(t.memory_bytes) * u128::from(t.replicas))
            .sum();
        let free_mem_total: u128 = free_mem.iter().map(|&v| u128::from(v)).sum();
        if needed_mem > free_mem_total {
            return Err(PlacementError::Overcommitted {
                resource: "memory bytes",
                needed: needed_mem,
                free: free_mem_total,
            });
        }
        let slots = Quantized::new(
            &free_slots,
            &invocations
                .iter()
                .map(|t| u64::from(t.slots))
                .collect::<Vec<_>>(),
        );
        let memory = Quantized::new(
            &free_mem,
            &invocations
                .iter()
                .map(|t| t.memory_bytes)
                .collect::<Vec<_>>(),
        );

        // Intern everything that is matched by name, so that the per-pair
        // work below compares integers, never strings.
        let mut domains = Interner::new();
        let domain: Vec<usize> = executors
            .iter()
            .map(|e| domains.intern(e.failure_domain.as_str()) as usize)
            .collect();
        let mut datacenters = Interner::new();
        let mut racks = Interner::new();
        let mut servers = Interner::new();
        let place_of_executor: Vec<[u32; 3]> = executors
            .iter()
            .map(|e| {
                let l = &e.location;
                [
                    datacenters.intern(l.datacenter.as_str()),
                    racks.intern((l.datacenter.as_str(), l.rack.as_str())),
                    servers.intern((l.datacenter.as_str(), l.rack.as_str(), l.server.as_str())),
                ]
            })
            .collect();
        let place_of = |l: &Location| -> [u32; 3] {
            let (d, r, s) = (l.datacenter.as_str(), l.rack.as_str(), l.server.as_str());
            [
                datacenters.get(&d).unwrap_or(NOWHERE),
                racks.get(&(d, r)).unwrap_or(NOWHERE),
                servers.get(&(d, r, s)).unwrap_or(NOWHERE),
            ]
        };
        let place_of_origin: Vec<Option<[u32; 3]>> = invocations
            .iter()
            .map(|t| t.origin.as_ref().map(place_of))
            .collect();
        // Tools: which (invocation tool, executor) pairs are warm.
        let mut tools = Interner::new();
        let tool_of: Vec<u32> = invocations
            .iter()
            .map(|t| tools.intern(t.tool.as_str()))
            .collect();
        let mut warm_tool = vec![false; tools.len() * ne];
        for (e, ex) in executors.iter().enumerate() {
            for w in &ex.warm_tools {
                if let Some(k) = tools.get(&w.as_str()) {
                    warm_tool[k as usize * ne + e] = true;
                }
            }
        }
        // Blobs: the distance from each executor to the nearest holder of
        // each blob some invocation reads (100 if nobody holds it).
        let mut blobs = Interner::new();
        for t in &invocations {
            for b in &t.blobs {
                blobs.intern(b.as_str());
            }
        }
        let mut holders: Vec<Vec<usize>> = vec![Vec::new(); blobs.len()];
        for (e, ex) in executors.iter().enumerate() {
            for b in &ex.blobs {
                if let Some(k) = blobs.get(&b.as_str()) {
                    holders[k as usize].push(e);
                }
            }
        }
        let mut fetch = vec![100u8; blobs.len() * ne];
        {
            // Stamps instead of sets: level `i` of place id `x` is marked
            // with `k + 1` when a holder of blob `k` sits there.
            let mut marks = [
                vec![0u32; datacenters.len()],
                vec![0u32; racks.len()],
                vec![0u32; servers.len()],
            ];
            for (k, hs) in holders.iter().enumerate() {
                if hs.is_empty() {
                    continue;
                }
                let stamp = k as u32 + 1;
                for &h in hs {
                    for (level, m) in marks.iter_mut().enumerate() {
                        m[place_of_executor[h][level] as usize] = stamp;
                    }
                }
                for (e, pe) in place_of_executor.iter().enumerate() {
                    fetch[k * ne + e] = if marks[2][pe[2] as usize] == stamp {
                        0
                    } else if marks[1][pe[1] as usize] == stamp {
                        1
                    } else if marks[0][pe[0] as usize] == stamp {
                        10
                    } else {
                        100
                    };
                }
            }
        }

        let mut eligible = Vec::new();
        let mut eligible_start = Vec::with_capacity(invocations.len() + 1);
        let mut cost = vec![f64::INFINITY; invocations.len() * ne];
        let mut warm = vec![false; invocations.len() * ne];
        let mut seen_domains = vec![usize::MAX; domains.len()];
        let mut blob_ids: Vec<usize> = Vec::new();
        for (ti, t) in invocations.iter().enumerate() {
            eligible_start.push(eligible.len());
            blob_ids.clear();
            blob_ids.extend(
                t.blobs
                    .iter()
                    .filter_map(|b| blobs.get(&b.as_str()))
                    .map(|k| k as usize),
            );
            let mut domains_here = 0usize;
            for (ei, e) in executors.iter().enumerate() {
                let fits = slots.demand[ti] <= slots.free[ei]
                    && memory.demand[ti] <= memory.free[ei]
                    && e.slots > 0
                    && u64::from(t.slots) <= free_slots[ei]
                    && t.memory_bytes <= free_mem[ei];
                if !fits {
                    continue;
                }
                eligible.push(ei);
                if seen_domains[domain[ei]] != ti {
                    seen_domains[domain[ei]] = ti;
                    domains_here += 1;
                }
                let is_warm = warm_tool[tool_of[ti] as usize * ne + ei];
                warm[ti * ne + ei] = is_warm;
                let cold = if is_warm { 0.0 } else { weights.cold_start };
                // Distances are small integers: the sum is exact in any order.
                let data = blob_ids
                    .iter()
                    .map(|&k| f64::from(fetch[k * ne + ei]))
                    .sum::<f64>()
                    * weights.data;
                let topo = place_of_origin[ti]
                    .map_or(0.0, |o| f64::from(place_distance(o, place_of_executor[ei])))
                    * weights.topology;
                cost[ti * ne + ei] = cold + data + topo;
            }
            if eligible.len() == eligible_start[ti] {
                return Err(PlacementError::Unplaceable {
                    id: t.id.clone(),
                    reason: format!(
                        "no executor has {} free slots and {} free memory bytes",
                        t.slots, t.memory_bytes
                    ),
                });
            }
            if (domains_here as u64) < u64::from(t.replicas) {
                return Err(PlacementError::Unplaceable {
                    id: t.id.clone(),
                    reason: format!(
                        "it needs {} replicas on distinct failure domains but fits on executors of only {} domain(s)",
                        t.replicas, domains_here
                    ),
                });
            }
        }
        eligible_start.push(eligible.len());
        let capacity: Vec<f64> = executors.iter().map(|e| f64::from(e.slots)).collect();
        let balance: Vec<f64> = capacity
            .iter()
            .map(|&c| if c > 0.0 { weights.balance / c } else { 0.0 })
            .collect();
        let slots_f: Vec<f64> = invocations.iter().map(|t| f64::from(t.slots)).collect();
        let mut order: Vec<usize> = (0..invocations.len()).collect();
        order.sort_by_key(|&t| {
            (
                std::cmp::Reverse((invocations[t].slots, invocations[t].memory_bytes)),
                t,
            )
        });
        // Replicas are at most the number of failure domains (checked
        // above), so the copies number at most PAIRS_MAX.
        let mut copy_invocation = Vec::new();
        let mut first_copy = Vec::with_capacity(invocations.len() + 1);
        for (t, inv) in invocations.iter().enumerate() {
            first_copy.push(copy_invocation.len());
            for _ in 0..inv.replicas {
                copy_invocation.push(t as u32);
            }
        }
        first_copy.push(copy_invocation.len());
        // Every index fits in u32: pairs and copies are at most PAIRS_MAX.
        let cards = (0..invocations.len())
            .map(|t| InvocationCard {
                slot_units: slots.demand[t],
                memory_units: memory.demand[t],
                slots: slots_f[t],
                eligible_start: eligible_start[t] as u32,
                eligible_len: (eligible_start[t + 1] - eligible_start[t]) as u32,
                first_copy: first_copy[t] as u32,
                copies: (first_copy[t + 1] - first_copy[t]) as u32,
            })
            .collect();
        let bins = (0..ne)
            .map(|e| ExecutorBin {
                free_slot_units: slots.free[e],
                free_memory_units: memory.free[e],
                balance: balance[e],
                domain: domain[e],
            })
            .collect();
        let mut problem = Self {
            invocations,
            executors,
            weights,
            eligible,
            eligible_start,
            cost,
            warm,
            place_of_executor,
            place_of_origin,
            domain,
            slots,
            memory,
            capacity,
            balance,
            slots_f,
            order,
            copy_invocation,
            first_copy,
            cards,
            bins,
            penalty: 0.0,
        };
        problem.penalty = problem.objective_coefficient_bound() + 1.0;
        if !problem.penalty.is_finite() {
            return Err(PlacementError::Params(
                "the objective's coefficients overflow: use smaller weights".into(),
            ));
        }
        Ok(problem)
    }

    /// The invocations.
    #[must_use]
    pub fn invocations(&self) -> &[Invocation] {
        &self.invocations
    }

    /// The executors.
    #[must_use]
    pub fn executors(&self) -> &[Executor] {
        &self.executors
    }

    /// The penalty weight P of the hard constraints.
    #[must_use]
    pub fn penalty(&self) -> f64 {
        self.penalty
    }

    /// Bytes per memory unit in the Hamiltonian (see the module docs).
    #[must_use]
    pub fn memory_unit_bytes(&self) -> u64 {
        self.memory.unit
    }

    /// Slots per slot unit in the Hamiltonian (1 unless capacities are huge).
    #[must_use]
    pub fn slot_unit(&self) -> u64 {
        self.slots.unit
    }

    /// Executors on which one copy of invocation `t` fits alone, ascending.
    #[must_use]
    pub fn eligible(&self, t: usize) -> &[usize] {
        &self.eligible[self.eligible_start[t]..self.eligible_start[t + 1]]
    }

    /// The number of copies in the batch (the sum of the replicas).
    #[must_use]
    pub fn copies(&self) -> usize {
        self.copy_invocation.len()
    }

    pub(super) fn ne(&self) -> usize {
        self.executors.len()
    }

    /// The linear cost of a copy of `t` on `e` (infinite where not eligible).
    #[inline]
    pub(super) fn cost(&self, t: usize, e: usize) -> f64 {
        self.cost[t * self.ne() + e]
    }

    /// The linear cost of a copy of `t` on eligible `e`, split into (cold
    /// start, data, topology).
    pub(super) fn cost_parts(&self, t: usize, e: usize) -> (f64, f64, f64) {
        let ne = self.ne();
        let cold = if self.warm[t * ne + e] {
            0.0
        } else {
            self.weights.cold_start
        };
        let topo = self.place_of_origin[t].map_or(0.0, |o| {
            f64::from(place_distance(o, self.place_of_executor[e]))
        }) * self.weights.topology;
        let total = self.cost[t * ne + e];
        (cold, total - cold - topo, topo)
    }

    /// Balance coefficient of executor `e`.
    #[inline]
    pub(super) fn balance_coef(&self, e: usize) -> f64 {
        self.balance[e]
    }

    /// The sum of the absolute values of every non-constant objective
    /// coefficient of the QUBO: no two assignments' objectives differ by
    /// more, so a penalty above it puts every feasible state below every
    /// infeasible one.
    fn objective_coefficient_bound(&self) -> f64 {
        let ne = self.ne();
        let mut sum = 0.0;
        let mut per_exec_s = vec![0.0f64; ne];
        let mut per_exec_s2 = vec![0.0f64; ne];
        for t in 0..self.invocations.len() {
            let s = self.slots_f[t];
            for &e in self.eligible(t) {
                let b = self.balance_coef(e);
                let load = f64::from(self.executors[e].load_slots);
                sum += self.cost[t * ne + e] + b * (2.0 * load * s + s * s);
                per_exec_s[e] += s;
                per_exec_s2[e] += s * s;
            }
        }
        for e in 0..ne {
            // Σ_{t<t'} 2 b s_t s_t' = b ((Σ s)² - Σ s²).
            sum += self.balance_coef(e) * (per_exec_s[e] * per_exec_s[e] - per_exec_s2[e]);
        }
        sum
    }

    /// The energy of an assignment, by term. Copies on executors where they
    /// are not eligible count as capacity violations.
    ///
    /// # Panics
    /// If the assignment does not have one entry per invocation or names an
    /// executor that does not exist (caller bugs).
    #[must_use]
    pub fn breakdown(&self, assignment: &[Vec<usize>]) -> EnergyBreakdown {
        assert_eq!(
            assignment.len(),
            self.invocations.len(),
            "one executor list per invocation"
        );
        let ne = self.ne();
        let mut b = EnergyBreakdown::default();
        let mut used_slots = vec![0i64; ne];
        let mut used_mem = vec![0i64; ne];
        let mut load = vec![0.0f64; ne];
        let mut ineligible = 0.0;
        for (t, execs) in assignment.iter().enumerate() {
            let inv = &self.invocations[t];
            let k = f64::from(inv.replicas);
            let missing = execs.len() as f64 - k;
            b.penalty_replicas += self.penalty * missing * missing;
            for (a, &e) in execs.iter().enumerate() {
                assert!(e < ne, "executor index {e} out of range");
                if self.cost[t * ne + e].is_finite() {
                    let (cold, data, topo) = self.cost_parts(t, e);
                    b.cold_start += cold;
                    b.data += data;
                    b.topology += topo;
                } else {
                    ineligible += self.penalty;
                }
                used_slots[e] += self.slots.demand[t];
                used_mem[e] += self.memory.demand[t];
                load[e] += self.slots_f[t];
                for &e2 in &execs[a + 1..] {
                    if self.domain[e] == self.domain[e2] {
                        b.penalty_failure_domain += self.penalty;
                    }
                }
            }
        }
        for e in 0..ne {
            let l = f64::from(self.executors[e].load_slots) + load[e];
            b.balance += self.balance_coef(e) * l * l;
            let over = (used_slots[e] - self.slots.free[e]).max(0) as f64;
            b.penalty_slots += self.penalty * over * over;
            let over = (used_mem[e] - self.memory.free[e]).max(0) as f64;
            b.penalty_memory += self.penalty * over * over;
        }
        b.penalty_slots += ineligible;
        b.objective = b.cold_start + b.data + b.topology + b.balance;
        b.total = b.objective
            + b.penalty_replicas
            + b.penalty_slots
            + b.penalty_memory
            + b.penalty_failure_domain;
        b
    }

    /// Checks every hard constraint in exact units (slots and bytes, not the
    /// Hamiltonian's rounded units). `Err` says the first violation found.
    pub fn check(&self, assignment: &[Vec<usize>]) -> Result<(), String> {
        if assignment.len() != self.invocations.len() {
            return Err(format!(
                "{} executor lists for {} invocations",
                assignment.len(),
                self.invocations.len()
            ));
        }
        let ne = self.ne();
        let mut slots = vec![0u64; ne];
        let mut mem = vec![0u128; ne];
        for (t, execs) in assignment.iter().enumerate() {
            let inv = &self.invocations[t];
            if execs.len() != inv.replicas as usize {
                return Err(format!(
                    "invocation `{}` has {} copies, wants {}",
                    inv.id,
                    execs.len(),
                    inv.replicas
                ));
            }
            if let Some(&e) = execs.iter().find(|&&e| e >= ne) {
                return Err(format!(
                    "invocation `{}` names executor {e}, which does not exist",
                    inv.id
                ));
            }
            if let Some(e) = self.shared_domain(execs) {
                return Err(format!(
                    "invocation `{}` has two copies in failure domain `{}`",
                    inv.id, self.executors[e].failure_domain
                ));
            }
            for &e in execs {
                slots[e] += u64::from(inv.slots);
                mem[e] += u128::from(inv.memory_bytes);
            }
        }
        for (e, ex) in self.executors.iter().enumerate() {
            // An executor that is already over capacity is not this
            // placement's doing; giving it anything more would be.
            if !within(
                u128::from(slots[e]),
                u128::from(ex.load_slots),
                u128::from(ex.slots),
            ) {
                return Err(format!(
                    "executor `{}` gets {} slots with {} in use of {}",
                    ex.id, slots[e], ex.load_slots, ex.slots
                ));
            }
            if !within(
                mem[e],
                u128::from(ex.load_memory_bytes),
                u128::from(ex.memory_bytes),
            ) {
                return Err(format!(
                    "executor `{}` gets {} memory bytes with {} in use of {}",
                    ex.id, mem[e], ex.load_memory_bytes, ex.memory_bytes
                ));
            }
        }
        Ok(())
    }

    /// An executor of `execs` whose failure domain another one shares.
    fn shared_domain(&self, execs: &[usize]) -> Option<usize> {
        // Copies are few: pairwise comparison allocates nothing.
        const PAIRWISE_MAX: usize = 32;
        if execs.len() <= PAIRWISE_MAX {
            (1..execs.len()).find_map(|a| {
                let e = execs[a];
                execs[..a]
                    .iter()
                    .any(|&e2| self.domain[e2] == self.domain[e])
                    .then_some(e)
            })
        } else {
            let mut seen = BTreeSet::new();
            execs
                .iter()
                .copied()
                .find(|&e| !seen.insert(self.domain[e]))
        }
    }
}

/// The capacity rule: adding nothing is always fine (an executor already over
/// capacity is not the placement's doing); adding something must keep
/// `added + load <= capacity`.
pub(super) fn within(added: u128, load: u128, capacity: u128) -> bool {
    added == 0 || added + load <= capacity
}
