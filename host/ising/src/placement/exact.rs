//! The exact optimum by enumeration, the yardstick of the quality tests.

use super::PlacementProblem;

/// The exact optimum by enumeration, for small batches: every choice of
/// `replicas` executors per invocation. `None` if there are more than
/// `limit` combinations or none is feasible.
#[must_use]
pub fn exact_optimum(p: &PlacementProblem, limit: u64) -> Option<(Vec<Vec<usize>>, f64)> {
    let choices: Vec<Vec<Vec<usize>>> = (0..p.invocations.len())
        .map(|t| subsets(p.eligible(t), p.invocations[t].replicas as usize))
        .collect();
    let total = choices
        .iter()
        .try_fold(1u64, |acc, c| acc.checked_mul(c.len() as u64))?;
    if total > limit {
        return None;
    }
    let mut best: Option<(Vec<Vec<usize>>, f64)> = None;
    let mut idx = vec![0usize; choices.len()];
    loop {
        let a: Vec<Vec<usize>> = idx
            .iter()
            .enumerate()
            .map(|(t, &i)| choices[t][i].clone())
            .collect();
        if p.check(&a).is_ok() {
            let obj = p.breakdown(&a).objective;
            if best.as_ref().is_none_or(|(_, b)| obj < *b) {
                best = Some((a, obj));
            }
        }
        // Odometer increment.
        let mut k = 0;
        loop {
            if k == idx.len() {
                return best;
            }
            idx[k] += 1;
            if idx[k] < choices[k].len() {
                break;
            }
            idx[k] = 0;
            k += 1;
        }
    }
}

fn subsets(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    if items.len() < k {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        for mut rest in subsets(&items[i + 1..], k - 1) {
            rest.insert(0, first);
            out.push(rest);
        }
    }
    out
}
