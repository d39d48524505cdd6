//! Capabilities (macaroons, from `voidbox-auth`) and contracts (Z3, from
//! `voidbox-contract`) on the host's path: root keys in `keys/`, revocations
//! and use counters in the database, the owner token, the proof cache and
//! the audit log.
//!
//! The host never runs a token-checked invocation before three things hold:
//! the token verifies against the request (tool, time, budget, input size,
//! grants), the tool's contract provably fits the effective budget for every
//! input the token allows, and a use has been taken when the token is
//! limited-use. A denial changes nothing but the audit log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use voidbox_auth::{
    Caveat, DirKeyStore, KeyId, KeyStore, OsEntropy, Revocations, RootKey, StoreError, TakeError,
    Token, TokenId, UseCounter,
};
use voidbox_contract::{Contract, Limit, LimitOp, ProofCache};

use crate::error::{Error, Result};

/// Revoked token ids (their `Display` form).
const REVOKED: TableDefinition<&str, ()> = TableDefinition::new("revoked_tokens");
/// Uses taken per limited-use token id.
const USES: TableDefinition<&str, u64> = TableDefinition::new("token_uses");

/// The tenant whose key `voidbox init` creates and whose token the local
/// CLI uses unless given another.
pub const OWNER_TENANT: &str = "owner";
/// The file holding the owner token.
pub const OWNER_TOKEN_FILE: &str = "owner.token";
/// Admission proofs kept in memory.
const PROOF_CACHE_ENTRIES: usize = 4096;

/// Keys, revocations, use counters, proofs and the audit log of one host.
pub(crate) struct Capabilities {
    home: PathBuf,
    keys: DirKeyStore,
    db: Arc<Database>,
    proofs: Mutex<ProofCache>,
    audit: Mutex<()>,
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

fn store_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(e.to_string())
}

fn auth_store(path: &Path) -> impl Fn(StoreError) -> Error + '_ {
    move |e| Error::Auth {
        detail: format!("the key store at {} failed: {e}", path.display()),
    }
}

impl Capabilities {
    /// Opens `home/keys`, creating the owner key and token on first use.
    pub(crate) fn open(home: &Path, db: Arc<Database>) -> Result<Capabilities> {
        let keys_dir = home.join("keys");
        let keys = DirKeyStore::open(&keys_dir).map_err(auth_store(&keys_dir))?;
        {
            let txn = db.begin_write().map_err(|e| db_error(home, e))?;
            txn.open_table(REVOKED).map_err(|e| db_error(home, e))?;
            txn.open_table(USES).map_err(|e| db_error(home, e))?;
            txn.commit().map_err(|e| db_error(home, e))?;
        }
        let caps = Capabilities {
            home: home.to_path_buf(),
            keys,
            db,
            proofs: Mutex::new(ProofCache::new(PROOF_CACHE_ENTRIES)),
            audit: Mutex::new(()),
        };
        let owner = KeyId::new(OWNER_TENANT).expect("a valid key id");
        let token_file = home.join(OWNER_TOKEN_FILE);
        if caps
            .keys
            .get(&owner)
            .map_err(auth_store(&keys_dir))?
            .is_none()
        {
            caps.add_tenant(OWNER_TENANT)?;
        }
        if !token_file.exists() {
            let token = caps.mint(OWNER_TENANT, &[])?;
            write_private(&token_file, token.as_bytes())?;
        }
        Ok(caps)
    }

    /// Creates a root key for a new tenant.
    pub(crate) fn add_tenant(&self, tenant: &str) -> Result<()> {
        let id = key_id(tenant)?;
        let dir = self.home.join("keys");
        if self.keys.get(&id).map_err(auth_store(&dir))?.is_some() {
            return Err(Error::Auth {
                detail: format!(
                    "tenant `{tenant}` already has a root key; tokens it minted stay valid"
                ),
            });
        }
        self.keys
            .insert(&id, &RootKey::generate(&mut OsEntropy))
            .map_err(auth_store(&dir))
    }

    /// Mints a token for `tenant` with `caveats`, encoded (V2, base64url).
    pub(crate) fn mint(&self, tenant: &str, caveats: &[Caveat]) -> Result<String> {
        let id = key_id(tenant)?;
        let dir = self.home.join("keys");
        let root = self.keys.get(&id).map_err(auth_store(&dir))?.ok_or_else(|| Error::Auth {
            detail: format!("no root key for tenant `{tenant}`; create one with `voidbox tenant add {tenant}`"),
        })?;
        let token = Token::mint(&id, &root, caveats, &mut OsEntropy).map_err(|e| Error::Auth {
            detail: e.to_string(),
        })?;
        Ok(token.encode())
    }

    pub(crate) fn keys(&self) -> &dyn KeyStore {
        &self.keys
    }

    /// The key directory's store itself (it shares its cache with this
    /// one's).
    pub(crate) fn key_dir(&self) -> DirKeyStore {
        self.keys.clone()
    }

    /// Revokes a token (and so every token narrowed from it).
    pub(crate) fn revoke(&self, id: &TokenId) -> Result<()> {
        let key = id.to_string();
        let txn = self.db.begin_write().map_err(|e| db_error(&self.home, e))?;
        {
            let mut t = txn
                .open_table(REVOKED)
                .map_err(|e| db_error(&self.home, e))?;
            t.insert(key.as_str(), ())
                .map_err(|e| db_error(&self.home, e))?;
        }
        txn.commit().map_err(|e| db_error(&self.home, e))?;
        Ok(())
    }

    /// Proves (or refutes, with a counterexample) that `contract` fits the
    /// budget for every input up to `max_input_bytes`. Cached.
    pub(crate) fn admit(
        &self,
        contract: &Contract,
        budget: &voidbox_contract::Budget,
    ) -> Result<(), voidbox_contract::AdmissionError> {
        self.proofs
            .lock()
            .expect("proof cache poisoned")
            .admit(contract, budget)
            .map(|_| ())
    }

    /// Appends one JSON line to `audit.log`. Never fails the request: an
    /// audit line that cannot be written is reported through tracing.
    pub(crate) fn audit(&self, line: serde_json::Value) {
        let _guard = self.audit.lock().expect("audit lock poisoned");
        let path = self.home.join("audit.log");
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "could not write the audit log");
        }
    }
}

impl Revocations for Capabilities {
    fn is_revoked(&self, id: &TokenId) -> std::result::Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let t = txn.open_table(REVOKED).map_err(store_err)?;
        Ok(t.get(id.to_string().as_str()).map_err(store_err)?.is_some())
    }
}

impl UseCounter for Capabilities {
    /// One write transaction per take: redb serializes writers, so two
    /// concurrent invocations cannot both take the last use.
    fn try_take(&self, id: &TokenId, limit: u64) -> std::result::Result<u64, TakeError> {
        let key = id.to_string();
        let txn = self.db.begin_write().map_err(store_err)?;
        let taken = {
            let mut t = txn.open_table(USES).map_err(store_err)?;
            let used = t
                .get(key.as_str())
                .map_err(store_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            if used >= limit {
                return Err(TakeError::Exhausted { used, limit });
            }
            t.insert(key.as_str(), used + 1).map_err(store_err)?;
            used + 1
        };
        txn.commit().map_err(store_err)?;
        Ok(taken)
    }

    fn used(&self, id: &TokenId) -> std::result::Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(store_err)?;
        let t = txn.open_table(USES).map_err(store_err)?;
        Ok(t.get(id.to_string().as_str())
            .map_err(store_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

fn key_id(tenant: &str) -> Result<KeyId> {
    KeyId::new(tenant).map_err(|e| Error::Auth {
        detail: format!("`{tenant}` is not a usable tenant name: {}", e.0),
    })
}

fn db_error(home: &Path, e: impl std::fmt::Display) -> Error {
    Error::Db {
        path: home.join("voidbox.redb"),
        detail: e.to_string(),
    }
}

/// Writes a file readable by its owner only (tokens are bearer secrets).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let hint = "check that the data directory is writable";
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(path, hint))?;
    f.write_all(bytes).map_err(Error::io(path, hint))?;
    f.sync_all().map_err(Error::io(path, hint))
}

/// The numeric limits of a token as contract-language limits, for the Z3
/// attenuation check.
pub(crate) fn limits_of(token: &Token) -> Result<Vec<Limit>> {
    let l = token.limits().map_err(|e| Error::Auth {
        detail: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, value) in [
        ("fuel", l.fuel),
        ("memory_bytes", l.memory_bytes),
        ("input_bytes", l.input_bytes),
        ("output_bytes", l.output_bytes),
        ("uses", l.uses),
    ] {
        if let Some(v) = value {
            out.push(Limit::new(name, LimitOp::Le, v));
        }
    }
    if let Some(t) = l.expires {
        out.push(Limit::new("expires", LimitOp::Lt, t));
    }
    Ok(out)
}
