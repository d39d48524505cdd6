//! Cluster membership (validated) and protocol parameters.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::message::ReplicaId;

/// One replica as the cluster configuration file lists it. Addresses are
/// the driver's business; the core only needs identities and keys.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Index, `0..n`.
    pub id: ReplicaId,
    /// ed25519 public key.
    pub public_key: [u8; 32],
}

/// The cluster: n = 3f + 1 replicas with their keys.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Number of replicas.
    pub n: u32,
    /// Number of Byzantine faults tolerated.
    pub f: u32,
    /// Every replica, ids `0..n`.
    pub replicas: Vec<ReplicaInfo>,
}

/// Why a cluster configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// n is not 3f + 1. Fewer cannot tolerate f faults; more would need
    /// quorums larger than the 2f + 1 the protocol counts (two quorums of
    /// 2f + 1 out of n > 3f + 1 may share no correct replica), so the
    /// configuration says exactly what it tolerates.
    #[error("cluster has n = {n} replicas and f = {f}, but Voidbox runs exactly n = 3f + 1 = {need} replicas for f = {f}; use n = 4 for f = 1, n = 7 for f = 2 (n = 3f + 1)")]
    WrongSize {
        /// Replicas configured.
        n: u32,
        /// Faults requested.
        f: u32,
        /// 3f + 1.
        need: u32,
    },
    /// f must be at least 1 for a Byzantine fault-tolerant cluster.
    #[error("f = 0 tolerates no fault; configure f >= 1 (n >= 4)")]
    NoFaultTolerance,
    /// The replica list does not have n entries.
    #[error("cluster says n = {n} but lists {listed} replicas; list exactly n")]
    WrongCount {
        /// n.
        n: u32,
        /// Entries listed.
        listed: usize,
    },
    /// An id is out of range or listed twice.
    #[error("replica id {0} is duplicated or not in 0..n; ids must be exactly 0..n")]
    BadId(ReplicaId),
    /// Two replicas share a public key.
    #[error("replicas {a} and {b} share a public key; each replica needs its own key")]
    DuplicateKey {
        /// First holder.
        a: ReplicaId,
        /// Second holder.
        b: ReplicaId,
    },
    /// A public key is not a valid ed25519 point.
    #[error("replica {0}'s public key is not a valid ed25519 key; regenerate it")]
    BadKey(ReplicaId),
}

/// A configuration that passed validation, with parsed keys indexed by id.
#[derive(Clone, Debug)]
pub struct Cluster {
    n: u32,
    f: u32,
    keys: Vec<VerifyingKey>,
}

impl ClusterConfig {
    /// The configuration of replicas `0..keys.len()` whose public keys are
    /// those of `keys`, in order, tolerating `f` faults (not yet validated).
    pub fn from_keys(f: u32, keys: &[ed25519_dalek::SigningKey]) -> ClusterConfig {
        ClusterConfig {
            n: keys.len() as u32,
            f,
            replicas: keys
                .iter()
                .enumerate()
                .map(|(i, k)| ReplicaInfo {
                    id: i as u32,
                    public_key: k.verifying_key().to_bytes(),
                })
                .collect(),
        }
    }

    /// Checks n = 3f + 1, f >= 1, ids exactly `0..n`, distinct and valid keys.
    pub fn validate(&self) -> Result<Cluster, ConfigError> {
        if self.f == 0 {
            return Err(ConfigError::NoFaultTolerance);
        }
        let need = self.f.saturating_mul(3).saturating_add(1);
        if self.n != need {
            return Err(ConfigError::WrongSize {
                n: self.n,
                f: self.f,
                need,
            });
        }
        if self.replicas.len() != self.n as usize {
            return Err(ConfigError::WrongCount {
                n: self.n,
                listed: self.replicas.len(),
            });
        }
        let mut keys: Vec<Option<VerifyingKey>> = vec![None; self.n as usize];
        for r in &self.replicas {
            let slot = keys
                .get_mut(r.id as usize)
                .ok_or(ConfigError::BadId(r.id))?;
            if slot.is_some() {
                return Err(ConfigError::BadId(r.id));
            }
            let key = VerifyingKey::from_bytes(&r.public_key)
                .ok()
                .filter(|k| !k.is_weak())
                .ok_or(ConfigError::BadKey(r.id))?;
            *slot = Some(key);
        }
        let mut seen = BTreeSet::new();
        for r in &self.replicas {
            if !seen.insert(r.public_key) {
                let a = self
                    .replicas
                    .iter()
                    .find(|o| o.public_key == r.public_key)
                    .map_or(r.id, |o| o.id);
                return Err(ConfigError::DuplicateKey { a, b: r.id });
            }
        }
        let keys = keys.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(keys.len(), self.n as usize, "every id 0..n was filled");
        Ok(Cluster {
            n: self.n,
            f: self.f,
            keys,
        })
    }
}

impl Cluster {
    /// Number of replicas.
    pub fn n(&self) -> u32 {
        self.n
    }
    /// Faults tolerated.
    pub fn f(&self) -> u32 {
        self.f
    }
    /// 2f + 1: the size of every quorum.
    pub fn quorum(&self) -> usize {
        2 * self.f as usize + 1
    }
    /// The key of replica `id`, if it is a member.
    pub fn key(&self, id: ReplicaId) -> Option<&VerifyingKey> {
        self.keys.get(id as usize)
    }
    /// The primary of `view`.
    pub fn primary(&self, view: u64) -> ReplicaId {
        (view % u64::from(self.n)) as ReplicaId
    }
    /// The f + 1 replicas that run the batch at `seq` under partial
    /// execution: backups of `view`, rotating with the sequence number so
    /// that the work spreads evenly. The primary is left out because it
    /// already does the most per batch (it checks every request first,
    /// signs and sends the pre-prepare). `None` when the cluster has too
    /// few backups for that (n = 1): then every replica runs every batch.
    pub fn executors(&self, view: u64, seq: u64) -> Option<Vec<ReplicaId>> {
        let backups = u64::from(self.n) - 1;
        let count = u64::from(self.f) + 1;
        if backups < count {
            return None;
        }
        let primary = u64::from(self.primary(view));
        Some(
            (0..count)
                .map(|k| {
                    let backup = (seq + k) % backups;
                    ((primary + 1 + backup) % u64::from(self.n)) as ReplicaId
                })
                .collect(),
        )
    }
}

/// Protocol parameters. Times are microseconds of the driver's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Checkpoint every this many sequence numbers (K).
    pub checkpoint_interval: u64,
    /// Sequence numbers accepted above the low watermark (L, a multiple of K).
    pub watermark_window: u64,
    /// Most requests in one batch.
    pub batch_requests_max: usize,
    /// Most bytes of operations (plus 128 per request for its framing and
    /// 32 per hash of its bundle proof) in one batch; keeps pre-prepares
    /// under `message_bytes_max`.
    pub batch_bytes_max: usize,
    /// Longest a request waits at the primary while earlier batches are in
    /// flight; with nothing in flight a batch is cut at once.
    pub batch_delay_us: u64,
    /// Most batches the primary keeps in flight (pre-prepared, not executed).
    pub batches_in_flight_max: u64,
    /// Backup's wait for a pending request before it suspects the primary.
    pub view_change_timeout_us: u64,
    /// Cap on the backed-off view-change timeout.
    pub view_change_timeout_max_us: u64,
    /// How often a replica broadcasts STATUS and retransmits its own
    /// messages for unfinished sequence numbers.
    pub status_interval_us: u64,
    /// How far ahead of a backup's clock a primary's stamp may be.
    pub clock_ahead_max_us: u64,
    /// Largest message accepted, in bytes.
    pub message_bytes_max: usize,
    /// Largest operation in a request, in bytes.
    pub operation_bytes_max: usize,
    /// Most client requests a replica holds unordered (the primary's queue,
    /// a backup's forwarded requests); past it new ones are refused and the
    /// clients retry.
    pub pending_requests_max: usize,
    /// Partial execution: a committed batch of at least this many requests
    /// (after the client table's filter) runs on only f + 1 replicas, the
    /// backups [`Cluster::executors`] names; the others adopt the results
    /// once f + 1 replicas sign matching ones, and run the batch themselves
    /// when that does not happen in time. 0 turns it off: every replica
    /// runs every batch.
    pub partial_execution_min: usize,
    /// How long a replica that does not run a batch waits for f + 1
    /// matching results before it runs the batch itself.
    pub adopt_timeout_us: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            checkpoint_interval: 16,
            watermark_window: 64,
            batch_requests_max: 256,
            batch_bytes_max: 4 << 20,
            batch_delay_us: 500,
            batches_in_flight_max: 4,
            view_change_timeout_us: 200_000,
            view_change_timeout_max_us: 5_000_000,
            status_interval_us: 50_000,
            clock_ahead_max_us: 500_000,
            message_bytes_max: 16 << 20,
            operation_bytes_max: 1 << 20,
            pending_requests_max: 65_536,
            partial_execution_min: 0,
            adopt_timeout_us: 100_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::key_from_seed;

    fn config(n: u32, f: u32) -> ClusterConfig {
        ClusterConfig {
            n,
            f,
            replicas: (0..n)
                .map(|id| ReplicaInfo {
                    id,
                    public_key: key_from_seed(0, &format!("r{id}"))
                        .verifying_key()
                        .to_bytes(),
                })
                .collect(),
        }
    }

    #[test]
    fn valid_configs_pass() {
        let c = config(4, 1)
            .validate()
            .expect("4 replicas tolerate 1 fault");
        assert_eq!((c.n(), c.f(), c.quorum(), c.primary(5)), (4, 1, 3, 1));
        assert!(config(7, 2).validate().is_ok());
    }

    #[test]
    fn a_size_other_than_3f_plus_1_is_rejected() {
        // More replicas than 3f + 1 with quorums of 2f + 1 would let two
        // quorums miss each other's correct replicas: 5 with f = 1 has
        // quorums of 3 that can share only one (possibly faulty) replica.
        for (n, f) in [(3, 1), (5, 1), (6, 1), (7, 1), (10, 2)] {
            assert_eq!(
                config(n, f).validate().unwrap_err(),
                ConfigError::WrongSize {
                    n,
                    f,
                    need: 3 * f + 1
                },
                "n = {n}, f = {f}"
            );
        }
        assert!(config(10, 3).validate().is_ok());
        assert_eq!(
            config(4, 0).validate().unwrap_err(),
            ConfigError::NoFaultTolerance
        );
    }

    #[test]
    fn too_few_replicas_rejected() {
        assert_eq!(
            config(3, 1).validate().unwrap_err(),
            ConfigError::WrongSize {
                n: 3,
                f: 1,
                need: 4
            }
        );
        assert_eq!(
            config(4, 0).validate().unwrap_err(),
            ConfigError::NoFaultTolerance
        );
    }

    #[test]
    fn duplicate_ids_and_keys_rejected() {
        let mut c = config(4, 1);
        c.replicas[3].id = 2;
        assert_eq!(c.validate().unwrap_err(), ConfigError::BadId(2));
        let mut c = config(4, 1);
        c.replicas[3].public_key = c.replicas[1].public_key;
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::DuplicateKey { a: 1, b: 3 }
        );
        let mut c = config(4, 1);
        c.replicas.pop();
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::WrongCount { n: 4, listed: 3 }
        );
        let mut c = config(4, 1);
        c.replicas[0].id = 9;
        assert_eq!(c.validate().unwrap_err(), ConfigError::BadId(9));
    }
}
