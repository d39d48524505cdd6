//! A bounded cache of admission answers, keyed by (contract digest,
//! effective budget).
//!
//! Admission is a pure function of the contract's canonical text and the
//! budget, so a stored answer, proof or counterexample, stays right
//! forever. Solver failures (time limit) are not stored: they may succeed
//! another time.
//!
//! A token without an input-bytes caveat is admitted for the input at
//! hand, so every new input size would be a new key and a new Z3 run
//! (milliseconds, on every replica of a cluster at once). Admission is
//! monotone in that size, though: a larger limit only widens the inputs
//! it quantifies over. So where admission succeeded at sizes `lo <= n`
//! and `hi >= n` (the rest of the budget equal), it succeeds at `n` too:
//! at `lo` some allowed input admits a run, and the inputs allowed at `n`
//! include it; at `hi` no allowed input can exceed the budget, and the
//! inputs allowed at `n` are among them. Its proof is theirs with `n` in
//! the budget (which resources it checks depends on the contract alone).
//! A size above every success is proved at the next power of two instead
//! of itself, so growing inputs cost one Z3 run per doubling, not one per
//! size. Denials are only ever answered for the exact budget asked.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::admit::{admit, AdmissionError, Budget, Proof};
use crate::contract::Contract;

type Key = ([u8; 32], Budget);

/// Remembers up to `capacity` admission answers; the oldest goes first.
#[derive(Debug)]
pub struct ProofCache {
    capacity: usize,
    answers: HashMap<Key, Result<Proof, AdmissionError>>,
    // Insertion order, for eviction. Lookups never iterate the map, so its
    // order does not matter.
    order: VecDeque<Key>,
    /// The input sizes of the stored successes, by their key with the
    /// input-bytes limit taken out (see the module doc).
    admitted_sizes: HashMap<Key, BTreeSet<u64>>,
    hits: u64,
    misses: u64,
}

/// `key` without its input-bytes limit, and that limit.
fn split(key: &Key) -> Option<(Key, u64)> {
    let size = key.1.max_input_bytes?;
    let mut rest = *key;
    rest.1.max_input_bytes = None;
    Some((rest, size))
}

impl ProofCache {
    /// A cache holding at most `capacity` answers (at least one).
    pub fn new(capacity: usize) -> ProofCache {
        let capacity = capacity.max(1);
        ProofCache {
            capacity,
            answers: HashMap::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            admitted_sizes: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// [`admit`], answered from the cache when the same contract and budget
    /// were admitted before, or when successes at a smaller and a larger
    /// input size bracket this one (see the module doc). The answer is
    /// always the one [`admit`] gives for this budget.
    pub fn admit(&mut self, contract: &Contract, budget: &Budget) -> Result<Proof, AdmissionError> {
        let key = (contract.digest(), *budget);
        if let Some(answer) = self.answers.get(&key) {
            self.hits += 1;
            return answer.clone();
        }
        let Some((rest, size)) = split(&key) else {
            return self.solve(contract, key);
        };
        if let Some(proof) = self.bracketed(&rest, size) {
            self.hits += 1;
            return Ok(proof);
        }
        let proved_below = self
            .admitted_sizes
            .get(&rest)
            .is_some_and(|sizes| sizes.range(..=size).next().is_some());
        let above = size.checked_next_power_of_two().unwrap_or(size);
        if proved_below && above > size {
            let mut wider = key;
            wider.1.max_input_bytes = Some(above);
            // (Storing it may evict the success below, when the cache is
            // that small: then the exact question is asked after all.)
            if self.solve(contract, wider).is_ok() {
                if let Some(proof) = self.bracketed(&rest, size) {
                    return Ok(proof);
                }
            }
        }
        self.solve(contract, key)
    }

    /// A success at `size` inferred from stored successes at a size at most
    /// and one at least `size`, the rest of the budget being `rest`.
    fn bracketed(&self, rest: &Key, size: u64) -> Option<Proof> {
        let sizes = self.admitted_sizes.get(rest)?;
        sizes.range(..=size).next_back()?;
        let hi = *sizes.range(size..).next()?;
        let mut at = *rest;
        at.1.max_input_bytes = Some(hi);
        let mut proof = self.answers.get(&at)?.clone().ok()?;
        proof.budget.max_input_bytes = Some(size);
        Some(proof)
    }

    /// Runs Z3 for `key` and stores the answer (unless the solver failed).
    fn solve(&mut self, contract: &Contract, key: Key) -> Result<Proof, AdmissionError> {
        self.misses += 1;
        let answer = admit(contract, &key.1);
        if !matches!(answer, Err(AdmissionError::Solver(_))) {
            if self.answers.len() >= self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.forget(&oldest);
                }
            }
            if answer.is_ok() {
                if let Some((rest, size)) = split(&key) {
                    self.admitted_sizes.entry(rest).or_default().insert(size);
                }
            }
            self.answers.insert(key, answer.clone());
            self.order.push_back(key);
        }
        answer
    }

    /// Drops a stored answer and its entry among the admitted sizes.
    fn forget(&mut self, key: &Key) {
        if let Some(Ok(_)) = self.answers.remove(key) {
            if let Some((rest, size)) = split(key) {
                if let Some(sizes) = self.admitted_sizes.get_mut(&rest) {
                    sizes.remove(&size);
                    if sizes.is_empty() {
                        self.admitted_sizes.remove(&rest);
                    }
                }
            }
        }
    }

    /// Number of stored answers.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The most answers the cache keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// (hits, misses) since the cache was made: answers given without Z3,
    /// and Z3 runs.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}
