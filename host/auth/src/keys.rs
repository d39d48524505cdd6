//! Root keys, key ids, the source of randomness, and where keys are kept.
//!
//! One root key per tenant. A token's identifier names the key id, so the
//! verifier looks the key up; the key itself never appears in a token, an
//! error or a `Debug` print.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use crate::chain;
use crate::digest::{decode_hex_into, encode_hex};

/// Longest key id accepted.
pub const KEY_ID_BYTES_MAX: usize = 64;

/// Names a root key: 1 to 64 of `A-Z a-z 0-9 . _ -` (so it is safe as a file
/// name and cannot contain the `/` that separates identifier fields).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Arc<str>);

/// Why a key id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key id `{0}` must be 1 to {KEY_ID_BYTES_MAX} characters of A-Z a-z 0-9 . _ - and not start with `.`")]
pub struct KeyIdError(pub String);

impl KeyId {
    /// Checks and wraps a key id.
    pub fn new(id: &str) -> Result<KeyId, KeyIdError> {
        let ok = !id.is_empty()
            && id.len() <= KEY_ID_BYTES_MAX
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(KeyId(Arc::from(id)))
        } else {
            Err(KeyIdError(id.to_owned()))
        }
    }

    /// The key id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = KeyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::new(s)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// Randomness, injected so tests and simulations are reproducible. The edge of
/// the program passes [`OsEntropy`].
pub trait Entropy {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);
}

/// The operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        // The OS random source failing is not an operating condition we can
        // recover from (no key or nonce may be made without it).
        getrandom::getrandom(dest).expect("the operating system's random source failed");
    }
}

impl<F: FnMut(&mut [u8])> Entropy for F {
    fn fill(&mut self, dest: &mut [u8]) {
        self(dest)
    }
}

/// A tenant's 32-byte root secret. As in libmacaroons and pymacaroons, the
/// HMAC key actually used is derived from it (`HMAC("macaroons-key-generator",
/// root)`), so other implementations given the same 32 bytes agree.
#[derive(Clone, PartialEq, Eq)]
pub struct RootKey {
    secret: [u8; 32],
    /// The derived HMAC key, computed once: verification is hot.
    derived: [u8; 32],
}

impl RootKey {
    /// Makes a fresh key from `entropy`.
    pub fn generate(entropy: &mut dyn Entropy) -> RootKey {
        let mut bytes = [0u8; 32];
        entropy.fill(&mut bytes);
        RootKey::from_bytes(bytes)
    }

    /// Wraps existing key bytes (e.g. read from a key file).
    pub fn from_bytes(secret: [u8; 32]) -> RootKey {
        RootKey {
            secret,
            derived: chain::derive_key(&secret),
        }
    }

    /// The secret bytes. Handle with care: never log them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    pub(crate) fn derived(&self) -> &[u8; 32] {
        &self.derived
    }

    /// The key as 64 lowercase hex digits (the key file format).
    pub fn to_hex(&self) -> String {
        encode_hex(&self.secret)
    }

    /// Reads 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<RootKey> {
        let mut bytes = [0u8; 32];
        decode_hex_into(text.trim(), &mut bytes)?;
        Some(RootKey::from_bytes(bytes))
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<secret>)")
    }
}

/// A store of keys, revocations or use counts failed (I/O, permissions, a
/// corrupt file). Verification fails closed on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600` on it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold 64 hex digits; restore it from a backup")]
    Corrupt { path: PathBuf },
    #[error("{0}")]
    Other(String),
}

/// Where root keys live. The host implements this over its data directory;
/// [`MemoryKeyStore`] and [`DirKeyStore`] are provided.
pub trait KeyStore {
    /// The key with this id, `None` if there is none.
    fn get(&self, id: &KeyId) -> Result<Option<RootKey>, StoreError>;
}

/// Keys in memory, for tests and embedding.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: RwLock<HashMap<KeyId, RootKey>>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a key.
    pub fn insert(&self, id: KeyId, key: RootKey) {
        self.keys
            .write()
            .expect("key store lock poisoned")
            .insert(id, key);
    }
}

impl KeyStore for MemoryKeyStore {
    fn get(&self, id: &KeyId) -> Result<Option<RootKey>, StoreError> {
        Ok(self
            .keys
            .read()
            .expect("key store lock poisoned")
            .get(id)
            .cloned())
    }
}

/// A key store that keeps every key the first time `inner` has it and
/// never asks `inner` about that key again: a key removed or replaced
/// later is still the pinned one. What a cluster replica needs: its
/// decisions must come from the ordered requests, not from files that an
/// operator may change on one replica and not on the others (and a check
/// then costs no `stat`). A key `inner` lacks is asked for again next
/// time, so a key added later is found.
#[derive(Debug)]
pub struct PinnedKeys<S> {
    inner: S,
    pinned: RwLock<HashMap<KeyId, RootKey>>,
}

impl<S: KeyStore> PinnedKeys<S> {
    /// Pins keys from `inner` as they are first found.
    pub fn new(inner: S) -> Self {
        PinnedKeys {
            inner,
            pinned: RwLock::default(),
        }
    }

    /// The store keys are pinned from.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: KeyStore> KeyStore for PinnedKeys<S> {
    fn get(&self, id: &KeyId) -> Result<Option<RootKey>, StoreError> {
        if let Some(key) = self.pinned.read().expect("pinned keys poisoned").get(id) {
            return Ok(Some(key.clone()));
        }
        let Some(key) = self.inner.get(id)? else {
            return Ok(None);
        };
        // Another thread may have pinned it meanwhile: its key stands.
        let mut pinned = self.pinned.write().expect("pinned keys poisoned");
        Ok(Some(pinned.entry(id.clone()).or_insert(key).clone()))
    }
}

/// Keys as files `<dir>/<key id>.key` holding 64 hex digits, created with mode
/// 0600 (owner-only) and refused when group or others can read them.
///
/// Every lookup checks the file's metadata (one `stat`); the key is read
/// again only when the file changed (inode, length or modification time).
/// So deleting a key file, or opening its permissions, takes effect at the
/// next lookup, while the hot path (a capability check per invocation)
/// costs one system call, not four.
#[derive(Debug, Clone)]
pub struct DirKeyStore {
    dir: PathBuf,
    read: Arc<std::sync::Mutex<std::collections::BTreeMap<KeyId, (FileStamp, RootKey)>>>,
}

/// What identifies one version of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            },
        }
    }
}

impl DirKeyStore {
    /// Uses `dir`, creating it (mode 0700) if it does not exist.
    pub fn open(dir: impl Into<PathBuf>) -> Result<DirKeyStore, StoreError> {
        let dir = dir.into();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|source| StoreError::Io {
            what: "cannot create key directory",
            path: dir.clone(),
            source,
        })?;
        Ok(DirKeyStore {
            dir,
            read: Arc::default(),
        })
    }

    /// The file that holds key `id`.
    pub fn path_of(&self, id: &KeyId) -> PathBuf {
        self.dir.join(format!("{}.key", id.as_str()))
    }

    /// Writes a new key file; refuses to overwrite an existing key, since
    /// that would silently invalidate every token minted with it.
    pub fn insert(&self, id: &KeyId, key: &RootKey) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.path_of(id);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { what, path, source }
        };
        let mut file = options
            .open(&path)
            .map_err(io("cannot create key file", &path))?;
        file.write_all(format!("{}\n", key.to_hex()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("cannot write key file", &path))?;
        Ok(())
    }
}

impl KeyStore for DirKeyStore {
    fn get(&self, id: &KeyId) -> Result<Option<RootKey>, StoreError> {
        let path = self.path_of(id);
        let cache = || self.read.lock().expect("key cache poisoned");
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cache().remove(id);
                return Ok(None);
            }
            Err(source) => {
                return Err(StoreError::Io {
                    what: "cannot stat key file",
                    path,
                    source,
                })
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(StoreError::Permissions {
                    path,
                    mode: mode & 0o777,
                });
            }
        }
        let stamp = FileStamp::of(&meta);
        if let Some((seen, key)) = cache().get(id) {
            if *seen == stamp {
                return Ok(Some(key.clone()));
            }
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    what: "cannot read key file",
                    path,
                    source,
                })
            }
        };
        let key = RootKey::from_hex(&text).ok_or(StoreError::Corrupt { path })?;
        cache().insert(id.clone(), (stamp, key.clone()));
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_keys_keep_the_first_key_found_and_look_again_for_missing_ones() {
        let id = KeyId::new("tenant").unwrap();
        let (first, second) = (RootKey::from_bytes([1; 32]), RootKey::from_bytes([2; 32]));
        let keys = PinnedKeys::new(MemoryKeyStore::new());
        assert!(keys.get(&id).unwrap().is_none());
        // Added after a miss: found, then pinned.
        keys.inner().insert(id.clone(), first.clone());
        assert_eq!(keys.get(&id).unwrap(), Some(first.clone()));
        keys.inner().insert(id.clone(), second);
        assert_eq!(keys.get(&id).unwrap(), Some(first));
    }

    #[test]
    fn key_ids_are_checked() {
        assert!(KeyId::new("tenant-a.2026_1").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(KeyId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = RootKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{key:?}"), "RootKey(<secret>)");
    }

    #[test]
    fn injected_entropy_is_used() {
        let mut counter = 0u8;
        let key = RootKey::generate(&mut |buf: &mut [u8]| {
            for b in buf {
                counter += 1;
                *b = counter;
            }
        });
        assert_eq!(key.as_bytes()[31], 32);
        assert_ne!(
            RootKey::generate(&mut OsEntropy).as_bytes(),
            RootKey::generate(&mut OsEntropy).as_bytes()
        );
    }

    #[test]
    fn dir_store_writes_owner_only_files() {
        let dir = std::env::temp_dir().join(format!("voidbox-auth-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = DirKeyStore::open(&dir).unwrap();
        let id = KeyId::new("tenant-a").unwrap();
        assert!(store.get(&id).unwrap().is_none());
        let key = RootKey::generate(&mut OsEntropy);
        store.insert(&id, &key).unwrap();
        assert!(store.insert(&id, &key).is_err(), "no silent overwrite");
        assert_eq!(store.get(&id).unwrap(), Some(key));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = store.path_of(&id);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                store.get(&id),
                Err(StoreError::Permissions { .. })
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(&path, "not hex").unwrap();
            assert!(matches!(store.get(&id), Err(StoreError::Corrupt { .. })));
        }
        // Lookups are served from memory only while the file is unchanged:
        // a replaced key is read again, a deleted one is gone. (The pause
        // moves the file clock on: a replacement within one tick of the
        // coarse kernel clock, reusing the inode, would look unchanged.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = RootKey::generate(&mut OsEntropy);
        let path = store.path_of(&id);
        std::fs::remove_file(&path).unwrap();
        store.insert(&id, &other).unwrap();
        assert_eq!(store.get(&id).unwrap(), Some(other));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(store.get(&id).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
