//! A bounded cache of admission answers, keyed by (contract digest,
//! effective budget).
//!
//! Admission is a pure function of the contract's canonical text and the
//! budget, so a stored answer, proof or counterexample, stays right
//! forever. Solver failures (time limit) are not stored: they may succeed
//! another time.

use std::collections::{HashMap, VecDeque};

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
    hits: u64,
    misses: u64,
}

impl ProofCache {
    /// A cache holding at most `capacity` answers (at least one).
    pub fn new(capacity: usize) -> ProofCache {
        let capacity = capacity.max(1);
        ProofCache {
            capacity,
            answers: HashMap::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            hits: 0,
            misses: 0,
        }
    }

    /// [`admit`], answered from the cache when the same contract and budget
    /// were admitted before.
    pub fn admit(&mut self, contract: &Contract, budget: &Budget) -> Result<Proof, AdmissionError> {
        let key = (contract.digest(), *budget);
        if let Some(answer) = self.answers.get(&key) {
            self.hits += 1;
            return answer.clone();
        }
        self.misses += 1;
        let answer = admit(contract, budget);
        if !matches!(answer, Err(AdmissionError::Solver(_))) {
            if self.answers.len() >= self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.answers.remove(&oldest);
                }
            }
            self.answers.insert(key, answer.clone());
            self.order.push_back(key);
        }
        answer
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

    /// (hits, misses) since the cache was made.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}
