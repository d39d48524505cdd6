//! `cluster.toml`: who the replicas are, where they listen, which keys they
//! sign with, and where each keeps its data. `voidbox cluster init` writes
//! it; replicas, clients and `receipt verify` read it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use voidbox_auth::{Entropy, OsEntropy};
use voidbox_pbft::{Cluster, ClusterConfig, Params, ReplicaInfo};

use crate::capability::write_private;
use crate::{Error, Host, Result};

/// The file name `voidbox cluster init` writes.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// A replica's signing key, in its home.
pub const REPLICA_KEY_FILE: &str = "replica.key";
/// The CLI's client key, beside `cluster.toml`.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// One replica's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    /// Its id, 0..n.
    pub id: u32,
    /// Where it listens for replicas and clients.
    pub address: SocketAddr,
    /// Its ed25519 public key, hex.
    pub public_key: String,
    /// Its data directory, relative to the directory of `cluster.toml`.
    pub home: PathBuf,
    /// Threads that run its committed batches (absent: one per core).
    /// `cluster init` puts every replica on this machine, so it shares the
    /// cores out: idle worker threads of four processes on two cores would
    /// only take turns spinning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_slots: Option<usize>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Faults tolerated; n = 3f + 1 replicas are listed.
    pub f: u32,
    /// Whether replicas sync their protocol log to disk before sending the
    /// messages that depend on it, and their result journal and receipts at
    /// checkpoints (off only for measurements).
    #[serde(default = "yes")]
    pub fsync: bool,
    /// Partial execution: a batch of at least this many requests runs on
    /// only f + 1 replicas, and the others adopt the results once f + 1
    /// replicas sign matching ones (0: every replica runs every batch).
    #[serde(default = "partial_execution_min")]
    pub partial_execution_min: usize,
    /// The replicas.
    #[serde(rename = "replica")]
    pub replicas: Vec<ReplicaEntry>,
    /// Where the file was read from (not written).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn yes() -> bool {
    true
}

/// The default of [`ClusterFile::partial_execution_min`].
pub const PARTIAL_EXECUTION_MIN: usize = 8;

fn partial_execution_min() -> usize {
    PARTIAL_EXECUTION_MIN
}

impl ClusterFile {
    /// Reads and validates `path` (a `cluster.toml`, or the directory
    /// holding one).
    pub fn load(path: &Path) -> Result<ClusterFile> {
        let path = if path.is_dir() {
            path.join(CLUSTER_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Cluster(format!(
                "cannot read the cluster file {}: {e}; create one with `voidbox cluster init DIR`",
                path.display()
            ))
        })?;
        let mut file: ClusterFile = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        file.dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        file.cluster().map_err(|e| Error::Config {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(file)
    }

    /// n.
    pub fn n(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// The validated protocol configuration.
    pub fn cluster(&self) -> Result<Cluster> {
        let mut replicas = Vec::with_capacity(self.replicas.len());
        for r in &self.replicas {
            if r.worker_slots == Some(0) {
                return Err(Error::Cluster(format!(
                    "replica {}: worker_slots = 0; give it at least 1, or leave it out for one per core",
                    r.id
                )));
            }
            replicas.push(ReplicaInfo {
                id: r.id,
                public_key: parse_key_hex(&r.public_key).map_err(|detail| {
                    Error::Cluster(format!("replica {}: public_key {detail}", r.id))
                })?,
            });
        }
        ClusterConfig {
            n: self.n(),
            f: self.f,
            replicas,
        }
        .validate()
        .map_err(|e| Error::Cluster(format!("{e}; list n = 3f + 1 replicas with distinct keys")))
    }

    /// A replica's entry.
    pub fn replica(&self, id: u32) -> Result<&ReplicaEntry> {
        self.replicas.iter().find(|r| r.id == id).ok_or_else(|| {
            Error::Cluster(format!(
                "replica {id} is not in the cluster file (ids 0..{}); pick one of those",
                self.n()
            ))
        })
    }

    /// A replica's data directory.
    pub fn home_of(&self, id: u32) -> Result<PathBuf> {
        Ok(self.dir.join(&self.replica(id)?.home))
    }

    /// Every replica's verifying key, by id.
    pub fn verifying_keys(&self) -> Result<Vec<(u32, VerifyingKey)>> {
        self.replicas
            .iter()
            .map(|r| {
                let bytes = parse_key_hex(&r.public_key).map_err(|detail| {
                    Error::Cluster(format!("replica {}: public_key {detail}", r.id))
                })?;
                let key = VerifyingKey::from_bytes(&bytes).map_err(|e| {
                    Error::Cluster(format!("replica {}: public_key is not a key: {e}", r.id))
                })?;
                Ok((r.id, key))
            })
            .collect()
    }

    /// The protocol parameters replicas run with.
    pub fn params(&self) -> Params {
        Params {
            // Requests are small (digests, a token); a short window keeps
            // VIEW-CHANGE messages small.
            operation_bytes_max: 64 << 10,
            batch_bytes_max: 4 << 20,
            // Replicas share machines with other work: a process not
            // scheduled for a few hundred milliseconds is not a faulty
            // primary, and a view change costs far more than the wait.
            view_change_timeout_us: 1_000_000,
            view_change_timeout_max_us: 16_000_000,
            // A checkpoint costs every replica a snapshot, a signature,
            // two or three checks, and synced writes of the result journal
            // and the host's receipts, all four replicas at once; every 64
            // batches instead of 16 took 3% (fsync off) and 10% (fsync on)
            // off the replicas' CPU and 9% off the one-client p50 latency.
            // The window stays four
            // intervals wide, so the primary keeps proposing while a
            // checkpoint becomes stable.
            checkpoint_interval: 64,
            watermark_window: 256,
            partial_execution_min: self.partial_execution_min,
            ..Params::default()
        }
    }
}

/// Reads a signing key file (64 hex digits of seed).
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Cluster(format!(
            "cannot read the key {}: {e}; `voidbox cluster init` writes one per replica",
            path.display()
        ))
    })?;
    let bytes = parse_key_hex(text.trim())
        .map_err(|detail| Error::Cluster(format!("the key in {} {detail}", path.display())))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A fresh random signing key.
pub fn generate_key() -> SigningKey {
    let mut seed = [0u8; 32];
    OsEntropy.fill(&mut seed);
    SigningKey::from_bytes(&seed)
}

fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    write_private(path, hex(key.as_bytes()).as_bytes())
}

/// What `voidbox cluster init` made.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The cluster file.
    pub file: PathBuf,
    /// The configuration written.
    pub cluster: ClusterFile,
}

/// Writes a new cluster of `n` replicas under `dir`: one data directory per
/// replica (sharing one owner root key, so a token minted by any is valid
/// on all), one signing key each, a client key, the owner token and
/// `cluster.toml` with addresses `127.0.0.1:base_port + id`.
pub fn init_cluster(dir: &Path, n: u32, base_port: u16) -> Result<Initialized> {
    init_cluster_with(dir, n, base_port, &InitOptions::default())
}

/// What `cluster.toml` says besides the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// [`ClusterFile::fsync`].
    pub fsync: bool,
    /// [`ClusterFile::partial_execution_min`].
    pub partial_execution_min: usize,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            fsync: true,
            partial_execution_min: PARTIAL_EXECUTION_MIN,
        }
    }
}

/// [`init_cluster`] with a `cluster.toml` that says what `options` say.
pub fn init_cluster_with(
    dir: &Path,
    n: u32,
    base_port: u16,
    options: &InitOptions,
) -> Result<Initialized> {
    if n < 4 || (n - 1) % 3 != 0 {
        // n = 3f + 1 exactly: fewer cannot tolerate a fault, and more would
        // need larger quorums than PBFT's 2f + 1 to stay safe.
        return Err(Error::Cluster(format!(
            "{n} replicas is not 3f + 1: use --replicas 4 (f = 1), 7 (f = 2), 10 (f = 3), ..."
        )));
    }
    let f = (n - 1) / 3;
    let file = dir.join(CLUSTER_FILE);
    if file.exists() {
        return Err(Error::Cluster(format!(
            "{} already exists; use another directory or remove it first",
            file.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(Error::io(dir, "check that the directory is writable"))?;
    let mut replicas = Vec::new();
    let mut owner: Option<(Vec<u8>, Vec<u8>)> = None;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let worker_slots = (cores / n as usize).max(1);
    for id in 0..n {
        let rel = PathBuf::from(format!("replica-{id}"));
        let home = dir.join(&rel);
        if let Some((key, token)) = &owner {
            // The same owner root key and token on every replica.
            let keys = home.join("keys");
            std::fs::create_dir_all(&keys)
                .map_err(Error::io(&keys, "check that the directory is writable"))?;
            write_private(&keys.join("owner.key"), key)?;
            write_private(&home.join(crate::OWNER_TOKEN_FILE), token)?;
        }
        let host = Host::init(&home)?;
        if owner.is_none() {
            let key_path = home.join("keys").join("owner.key");
            let key = std::fs::read(&key_path)
                .map_err(Error::io(&key_path, "check the replica's data directory"))?;
            let token = host.owner_token()?.into_bytes();
            write_private(&dir.join(crate::OWNER_TOKEN_FILE), &token)?;
            owner = Some((key, token));
        }
        drop(host);
        let key = generate_key();
        write_key(&home.join(REPLICA_KEY_FILE), &key)?;
        let port = base_port.checked_add(id as u16).ok_or_else(|| {
            Error::Cluster(format!(
                "port {base_port} + {id} is past 65535; use a lower --base-port"
            ))
        })?;
        replicas.push(ReplicaEntry {
            id,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            public_key: hex(key.verifying_key().as_bytes()),
            home: rel,
            worker_slots: Some(worker_slots),
        });
    }
    write_key(&dir.join(CLIENT_KEY_FILE), &generate_key())?;
    let cluster = ClusterFile {
        f,
        fsync: options.fsync,
        partial_execution_min: options.partial_execution_min,
        replicas,
        dir: dir.to_path_buf(),
    };
    let text = format!(
        "# A Voidbox cluster: n = 3f + 1 replicas ordering invocations with PBFT.\n\
         # Written by `voidbox cluster init`; `voidbox cluster up DIR` starts it.\n\
         # `fsync = false` skips syncing the protocol log, the result journal\n\
         # and the receipts (measurements only: a replica that crashes may\n\
         # forget votes it sent).\n\
         # A batch of at least `partial_execution_min` requests runs on f + 1\n\
         # replicas; the others adopt the results f + 1 of them sign alike\n\
         # (0: every replica runs every batch).\n{}",
        toml::to_string(&cluster).map_err(|e| Error::Cluster(format!("encoding {e}")))?
    );
    std::fs::write(&file, text)
        .map_err(Error::io(&file, "check that the directory is writable"))?;
    Ok(Initialized { file, cluster })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Bytes from hex digits; `None` if the text is not an even number of
/// hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign ("+f").
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 32 bytes from 64 hex digits.
pub fn parse_key_hex(text: &str) -> std::result::Result<[u8; 32], String> {
    unhex(text)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("must be 64 hex digits, got {} characters", text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_cluster_sharing_one_owner_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = init_cluster(dir.path(), 4, 17_300).unwrap();
        let loaded = ClusterFile::load(dir.path()).unwrap();
        assert_eq!(loaded.f, 1);
        assert_eq!(loaded.replicas, made.cluster.replicas);
        assert_eq!(loaded.cluster().unwrap().quorum(), 3);
        let owner0 = std::fs::read(dir.path().join("replica-0/keys/owner.key")).unwrap();
        let owner3 = std::fs::read(dir.path().join("replica-3/keys/owner.key")).unwrap();
        assert_eq!(owner0, owner3);
        for r in &loaded.replicas {
            let key =
                read_signing_key(&loaded.home_of(r.id).unwrap().join(REPLICA_KEY_FILE)).unwrap();
            assert_eq!(hex(key.verifying_key().as_bytes()), r.public_key);
        }
        let again = init_cluster(dir.path(), 4, 17_300).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        assert!(init_cluster(dir.path(), 3, 17_400)
            .unwrap_err()
            .to_string()
            .contains("--replicas 4"));
        init_cluster(dir.path(), 4, 17_400).unwrap();
        let path = dir.path().join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // A duplicated key: n = 3f + 1 still holds but two replicas are one.
        let loaded = ClusterFile::load(&path).unwrap();
        let dup = text.replace(
            &loaded.replicas[1].public_key,
            &loaded.replicas[0].public_key,
        );
        std::fs::write(&path, dup).unwrap();
        let e = ClusterFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("distinct keys"), "{e}");
        std::fs::write(&path, text.replace("f = 1", "f = 2")).unwrap();
        let e = ClusterFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("3f + 1"), "{e}");
        // Replicas share this machine's cores; zero threads is refused.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let slots = loaded.replicas[2].worker_slots.unwrap();
        assert_eq!(slots, (cores / 4).max(1));
        let zero = text.replacen(&format!("worker_slots = {slots}"), "worker_slots = 0", 1);
        std::fs::write(&path, zero).unwrap();
        let e = ClusterFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("worker_slots = 0"), "{e}");
    }
}
