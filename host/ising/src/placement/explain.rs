//! What `voidbox schedule --explain` shows.

use serde::Serialize;

use super::{EnergyBreakdown, Placement, PlacementOutcome, PlacementProblem};

/// What `voidbox schedule --explain` shows: the placement with its energy
/// split by term, per invocation and per executor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// Which path produced the placement.
    pub outcome: PlacementOutcome,
    /// The energy by term (penalties are 0: the placement is feasible).
    pub energy: EnergyBreakdown,
    /// The greedy placement's objective, for comparison.
    pub greedy_objective: Option<f64>,
    /// The penalty weight P of the hard constraints.
    pub penalty_weight: f64,
    /// Bytes per memory unit in the Hamiltonian.
    pub memory_unit_bytes: u64,
    /// One line per invocation.
    pub invocations: Vec<InvocationLine>,
    /// One line per executor.
    pub executors: Vec<ExecutorLine>,
}

/// Where one invocation went and what its copies cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InvocationLine {
    /// The invocation's id.
    pub id: String,
    /// The executors' ids, one per copy.
    pub executors: Vec<String>,
    /// Cold-start cost of its copies.
    pub cold_start: f64,
    /// Data-fetch cost of its copies.
    pub data: f64,
    /// Topology cost of its copies.
    pub topology: f64,
}

/// One executor's load before and after the placement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExecutorLine {
    /// The executor's id.
    pub id: String,
    /// Slot capacity.
    pub slots: u32,
    /// Slots in use before.
    pub load_before: u32,
    /// Slots in use after.
    pub load_after: u64,
    /// Copies placed here.
    pub copies: usize,
    /// This executor's share of the balance term.
    pub balance: f64,
}

impl Placement {
    /// The placement explained term by term.
    ///
    /// # Panics
    /// If `problem` is not the problem this placement was made for.
    #[must_use]
    pub fn explain(&self, problem: &PlacementProblem) -> Explanation {
        let p = problem;
        assert_eq!(
            self.assignment.len(),
            p.invocations.len(),
            "placement of another problem"
        );
        let mut added = vec![0u64; p.ne()];
        let mut copies = vec![0usize; p.ne()];
        let invocations = self
            .assignment
            .iter()
            .enumerate()
            .map(|(t, execs)| {
                let mut line = InvocationLine {
                    id: p.invocations[t].id.clone(),
                    executors: Vec::new(),
                    cold_start: 0.0,
                    data: 0.0,
                    topology: 0.0,
                };
                for &e in execs {
                    let (c, d, tp) = p.cost_parts(t, e);
                    line.cold_start += c;
                    line.data += d;
                    line.topology += tp;
                    line.executors.push(p.executors[e].id.clone());
                    added[e] += u64::from(p.invocations[t].slots);
                    copies[e] += 1;
                }
                line
            })
            .collect();
        let executors = p
            .executors
            .iter()
            .enumerate()
            .map(|(e, ex)| {
                let after = u64::from(ex.load_slots) + added[e];
                ExecutorLine {
                    id: ex.id.clone(),
                    slots: ex.slots,
                    load_before: ex.load_slots,
                    load_after: after,
                    copies: copies[e],
                    balance: p.balance_coef(e) * (after as f64) * (after as f64),
                }
            })
            .collect();
        Explanation {
            outcome: self.outcome,
            energy: self.energy.clone(),
            greedy_objective: self.greedy_objective,
            penalty_weight: p.penalty,
            memory_unit_bytes: p.memory.unit,
            invocations,
            executors,
        }
    }
}

impl std::fmt::Display for Explanation {
    /// A plain-text table, for `schedule --explain`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            PlacementOutcome::Annealed => "annealed",
            PlacementOutcome::Repaired => "repaired (the annealed state broke a hard constraint)",
            PlacementOutcome::Greedy => "greedy",
        };
        write!(f, "placement: {outcome}")?;
        if let Some(g) = self.greedy_objective {
            write!(f, " (greedy alone: {g:.3})")?;
        }
        writeln!(f)?;
        let e = &self.energy;
        writeln!(
            f,
            "energy {:.3} = cold start {:.3} + data {:.3} + topology {:.3} + balance {:.3}; penalties {:.3} (P = {:.3})",
            e.total,
            e.cold_start,
            e.data,
            e.topology,
            e.balance,
            e.penalty_replicas + e.penalty_slots + e.penalty_memory + e.penalty_failure_domain,
            self.penalty_weight
        )?;
        writeln!(
            f,
            "{:<24} {:>10} {:>10} {:>10}  executors",
            "invocation", "cold", "data", "topology"
        )?;
        for l in &self.invocations {
            writeln!(
                f,
                "{:<24} {:>10.3} {:>10.3} {:>10.3}  {}",
                l.id,
                l.cold_start,
                l.data,
                l.topology,
                l.executors.join(", ")
            )?;
        }
        writeln!(
            f,
            "{:<24} {:>10} {:>14} {:>7} {:>10}",
            "executor", "slots", "load", "copies", "balance"
        )?;
        for l in &self.executors {
            let load = format!("{} -> {}", l.load_before, l.load_after);
            writeln!(
                f,
                "{:<24} {:>10} {:>14} {:>7} {:>10.3}",
                l.id, l.slots, load, l.copies, l.balance
            )?;
        }
        Ok(())
    }
}
