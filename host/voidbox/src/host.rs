//! The embedding API: [`Host`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use voidbox_cas::{Digest, GcReport, Store};
use voidbox_sandbox::{
    BlobSource, Budget, LoadedTool, Outcome, RunRequest, Sandbox, SandboxConfig, ToolInfo, ToolKind,
};

use voidbox_auth::{
    Authorized, Caveat, Digest as AuthDigest, Request as AuthRequest, Token, TokenId,
};
use voidbox_contract::{Contract, Figures};

use crate::capability::{Capabilities, OWNER_TOKEN_FILE};
use crate::config::{Config, CONFIG_FILE, CONFIG_TEMPLATE};
use crate::error::{Error, Result};
use crate::invocation::{Invocation, Receipt};
use crate::pool::{Pool, PoolStats};
use crate::storage::{
    db_err, Blobs, DigestMap, InMemory, PendingBlob, Storage, StorageStats, NAMES, TOOLS,
};

/// What the host knows about a registered tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    /// The component's digest.
    pub digest: Digest,
    /// The name it is registered under.
    pub name: String,
    /// Its version (from `describe`; empty for commands).
    pub version: String,
    /// One line for people.
    pub description: String,
    /// Which world it implements.
    pub kind: ToolKind,
    /// Size of the component in bytes.
    pub size_bytes: u64,
    /// What `describe` returned, for `voidbox:tool` components.
    pub info: Option<ToolInfo>,
    /// The component's imports.
    pub imports: Vec<String>,
    /// The component's exports.
    pub exports: Vec<String>,
    /// When it was added, seconds since the Unix epoch.
    pub added_unix_s: u64,
    /// The tool's resource contract (canonical text), checked by Z3 when the
    /// tool was added: from `describe`, or given with `--contract`.
    #[serde(default)]
    pub contract: Option<String>,
}

/// What the hot path needs to know about a registered tool.
#[derive(Debug, Clone)]
struct ToolEntry {
    name: String,
    contract: Option<Arc<Contract>>,
}

impl ToolEntry {
    fn of(record: &ToolRecord) -> Result<ToolEntry> {
        let contract = match &record.contract {
            Some(text) => Some(Arc::new(
                Contract::parse(text).map_err(|e| Error::Contract(e.to_string()))?,
            )),
            None => None,
        };
        Ok(ToolEntry {
            name: record.name.clone(),
            contract,
        })
    }
}

/// Where [`Host::execute_with`] finds an invocation's input.
enum RunInput<'a> {
    /// In the storage: read it.
    Stored,
    /// Read already (by [`Storage::probe`]).
    Read(Arc<[u8]>),
    /// Given by the caller and not stored yet: recorded with the receipt.
    Given(&'a [u8], PendingBlob<'a>),
}

/// A Voidbox host on one machine: a data directory with its database, CAS
/// and compiled-code cache, and a sandbox.
///
/// ```no_run
/// use voidbox::{Host, Invocation};
/// # fn main() -> Result<(), voidbox::Error> {
/// let host = Host::open("/tmp/voidbox-example")?;
/// let tool = host.add_tool_file("wc.wasm".as_ref(), None)?;
/// let input = host.put_input(b"one two three\n")?;
/// let receipt = host.invoke(&Invocation::new(tool.digest, input))?;
/// println!("{} -> {:?}", receipt.outcome, host.output(&receipt)?);
/// # Ok(()) }
/// ```
///
/// `Host` is `Send + Sync`: share it in an `Arc` and invoke from many
/// threads. Call [`Host::flush`] (or drop the host) to make every receipt
/// durable; see the `storage` module docs for what is durable when.
pub struct Host {
    home: PathBuf,
    config: Config,
    storage: Arc<Storage>,
    blobs: Blobs,
    blob_source: Arc<dyn BlobSource>,
    sandbox: Sandbox,
    /// Registered tools by digest; the database is the source of truth,
    /// this is its in-memory index for the hot path.
    tools: RwLock<HashMap<Digest, ToolEntry>>,
    /// Keys, revocations, use counters, admission proofs, the audit log.
    caps: Capabilities,
    /// The root keys [`Host::authorize_at`] checks tokens with, each read
    /// once (made on first use).
    pinned_keys: OnceLock<voidbox_auth::PinnedKeys<voidbox_auth::DirKeyStore>>,
    /// The in-memory front of the action cache.
    recent: Mutex<DigestMap<Digest, Arc<Receipt>>>,
    /// The physical part of receipts' timestamps (the storage, recording
    /// them, makes them strictly increasing).
    unix_clock: UnixClock,
    /// The worker slots of [`Host::invoke_batch`], started on first use.
    pool: OnceLock<Pool>,
    /// Worker slots asked for with [`Host::set_worker_slots`] (0: one per
    /// core).
    worker_slots: AtomicUsize,
    /// Runs in the sandbox (not cache answers), for tests and benchmarks.
    runs: ShardedCounter,
    /// Tells this host from others in the process, for [`LAST_TOOL`].
    id: u64,
    /// Changes whenever `tools` does, so a thread's [`LAST_TOOL`] is
    /// never used after the tool changed or went.
    tools_generation: AtomicU64,
}

/// A tool as a run needs it: compiled, with its contract.
struct RunnableTool {
    loaded: Arc<LoadedTool>,
    contract: Option<Arc<Contract>>,
}

thread_local! {
    /// The tool this thread ran last, with the host (`Host::id`) and the
    /// `tools_generation` it was taken under. Looking a tool up in the
    /// shared tables takes their locks and a reference to the tool, and
    /// each is a write to memory that every invoking thread writes too:
    /// with two threads, that memory moves between the cores on every
    /// invocation. A thread that runs the same tool again moves its own
    /// copy out of here and back instead.
    static LAST_TOOL: RefCell<Option<(u64, u64, Digest, RunnableTool)>> =
        const { RefCell::new(None) };
}

/// Tells hosts in one process apart.
static NEXT_HOST_ID: AtomicU64 = AtomicU64::new(0);

/// A counter that threads add to without sharing a cache line: each
/// thread adds to a shard of its own (chosen once per thread), readers
/// sum the shards. (One shared counter is written by every invocation of
/// every thread.)
struct ShardedCounter {
    shards: Box<[PaddedCounter]>,
}

#[repr(align(128))]
#[derive(Default)]
struct PaddedCounter(AtomicU64);

impl ShardedCounter {
    const SHARDS: usize = 16;

    fn new() -> ShardedCounter {
        ShardedCounter {
            shards: (0..Self::SHARDS)
                .map(|_| PaddedCounter::default())
                .collect(),
        }
    }

    fn add(&self, n: u64) {
        static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
        }
        let i = SHARD.with(|s| *s) % self.shards.len();
        self.shards[i].0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl BlobSource for Blobs {
    fn read_blob(&self, digest: &str) -> std::result::Result<Option<Vec<u8>>, String> {
        let d: Digest = digest
            .parse()
            .map_err(|e: voidbox_cas::DigestParseError| e.to_string())?;
        match self.get(&d) {
            Ok(b) => Ok(Some(b)),
            Err(voidbox_cas::CasError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Host {
    /// Creates a data directory at `home` (and a commented `voidbox.toml`)
    /// if there is none, then opens it.
    pub fn init(home: impl AsRef<Path>) -> Result<Host> {
        let home = home.as_ref();
        std::fs::create_dir_all(home).map_err(Error::io(
            home,
            "could not create the data directory; check the parent's permissions or choose another --home",
        ))?;
        let cfg = home.join(CONFIG_FILE);
        if !cfg.exists() {
            std::fs::write(&cfg, CONFIG_TEMPLATE).map_err(Error::io(
                &cfg,
                "the data directory is not writable; check its permissions",
            ))?;
        }
        Host::open_existing(home)
    }

    /// Opens the data directory at `home`, creating it if needed.
    pub fn open(home: impl AsRef<Path>) -> Result<Host> {
        Host::init(home)
    }

    /// Opens an existing data directory; [`Error::NotInitialized`] if there
    /// is none (the CLI uses this so a typo in `--home` does not silently
    /// create an empty host).
    pub fn open_existing(home: impl AsRef<Path>) -> Result<Host> {
        let home = home.as_ref();
        // A missing voidbox.toml loads as the defaults; a missing directory
        // is then refused as not initialized.
        Host::open_existing_with(home, Config::load(home)?)
    }

    /// [`Host::open_existing`] with `config` instead of the directory's
    /// `voidbox.toml` (a replica adjusts its host to its cluster's
    /// settings this way).
    pub fn open_existing_with(home: impl AsRef<Path>, config: Config) -> Result<Host> {
        crate::tune_allocator();
        let home = home.as_ref().to_path_buf();
        if !home.join(CONFIG_FILE).exists() && !home.join("voidbox.redb").exists() {
            return Err(Error::NotInitialized(home));
        }
        let storage = Arc::new(Storage::open_with(&home, &config.storage)?);
        let blobs = Blobs::new(storage.clone());
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(home.join("compiled")),
            pooling: config.sandbox.pooling,
            instances_max: config.sandbox.instances_max,
            memory_bytes_max: config.sandbox.memory_bytes_max,
            lanes: config.sandbox.lanes,
        })?;
        let caps = Capabilities::open(&home, storage.db.clone())?;
        let host = Host {
            caps,
            pinned_keys: OnceLock::new(),
            blob_source: Arc::new(blobs.clone()),
            blobs,
            home,
            config,
            storage,
            sandbox,
            tools: RwLock::new(HashMap::new()),
            recent: Mutex::new(DigestMap::default()),
            unix_clock: UnixClock::new(),
            pool: OnceLock::new(),
            worker_slots: AtomicUsize::new(0),
            runs: ShardedCounter::new(),
            id: NEXT_HOST_ID.fetch_add(1, Ordering::Relaxed),
            tools_generation: AtomicU64::new(0),
        };
        let index = host
            .tools()?
            .iter()
            .map(|t| Ok((t.digest, ToolEntry::of(t)?)))
            .collect::<Result<_>>()?;
        host.set_tools(|tools| *tools = index);
        Ok(host)
    }

    /// The data directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The configuration read from `voidbox.toml`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The default budget from the configuration.
    pub fn default_budget(&self) -> Budget {
        self.config.defaults.budget()
    }

    /// The content-addressed store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// The sandbox (for benchmarks and tests that need the engine).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Registers a component as a tool: checks it, compiles it (once; the
    /// compiled code is cached on disk), calls its `describe`, stores it in
    /// the CAS and records it. `name` overrides the name from `describe`.
    /// Nothing is stored unless every step succeeds.
    pub fn add_tool(&self, wasm: &[u8], name: Option<&str>) -> Result<ToolRecord> {
        self.add_tool_with_contract(wasm, name, None)
    }

    /// [`Host::add_tool`] with a contract that replaces the one the tool
    /// describes. The contract is parsed (errors point at the column) and
    /// Z3 checks that some run can meet it.
    pub fn add_tool_with_contract(
        &self,
        wasm: &[u8],
        name: Option<&str>,
        contract: Option<&str>,
    ) -> Result<ToolRecord> {
        Sandbox::check_header(wasm)?;
        let digest = Digest::of(wasm);
        let loaded = self.sandbox.load(*digest.as_bytes(), wasm)?;
        let info = self.sandbox.describe(&loaded)?;
        let name = match (name, &info) {
            (Some(n), _) => n.to_string(),
            (None, Some(i)) => i.name.clone(),
            (None, None) => {
                return Err(Error::BadName(
                    "(none: a wasi:cli command does not describe itself; pass --name)".into(),
                ))
            }
        };
        check_name(&name)?;
        let contract = match contract.or(info.as_ref().and_then(|i| i.contract.as_deref())) {
            Some(text) => {
                let c = Contract::parse(text).map_err(|e| Error::Contract(e.to_string()))?;
                c.check_satisfiable()
                    .map_err(|e| Error::Contract(e.to_string()))?;
                Some(c.canonical_text().to_string())
            }
            None => None,
        };
        let record = ToolRecord {
            contract,
            digest,
            version: info.as_ref().map(|i| i.version.clone()).unwrap_or_default(),
            description: info
                .as_ref()
                .map(|i| i.description.clone())
                .unwrap_or_default(),
            kind: loaded.kind(),
            size_bytes: wasm.len() as u64,
            imports: loaded.imports().to_vec(),
            exports: loaded.exports().to_vec(),
            info,
            added_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            name,
        };
        self.blobs.put(wasm)?;
        let p = self.storage.db_path();
        let txn = self
            .storage
            .db
            .begin_write()
            .map_err(|e| db_err(p)(e.to_string()))?;
        {
            let json = serde_json::to_vec(&record).expect("tool records serialize");
            let mut tools = txn
                .open_table(TOOLS)
                .map_err(|e| db_err(p)(e.to_string()))?;
            tools
                .insert(digest.as_bytes(), &json[..])
                .map_err(|e| db_err(p)(e.to_string()))?;
            let mut names = txn
                .open_table(NAMES)
                .map_err(|e| db_err(p)(e.to_string()))?;
            names
                .insert(record.name.as_str(), digest.as_bytes())
                .map_err(|e| db_err(p)(e.to_string()))?;
        }
        txn.commit().map_err(|e| db_err(p)(e.to_string()))?;
        let entry = ToolEntry::of(&record)?;
        self.set_tools(|tools| {
            tools.insert(digest, entry);
        });
        Ok(record)
    }

    /// [`Host::add_tool`] from a file; the file stem is the fallback name
    /// for commands.
    pub fn add_tool_file(&self, path: &Path, name: Option<&str>) -> Result<ToolRecord> {
        self.add_tool_file_with_contract(path, name, None)
    }

    /// [`Host::add_tool_with_contract`] from a file.
    pub fn add_tool_file_with_contract(
        &self,
        path: &Path,
        name: Option<&str>,
        contract: Option<&str>,
    ) -> Result<ToolRecord> {
        let wasm = std::fs::read(path).map_err(|source| Error::UnreadableFile {
            path: path.to_path_buf(),
            source,
            hint: "give the path of a .wasm component (build tools with `cargo xtask tools`)",
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string);
        let is_command = matches!(Sandbox::check_header(&wasm), Ok(()))
            && self
                .sandbox
                .load(*Digest::of(&wasm).as_bytes(), &wasm)
                .map(|t| t.kind() == ToolKind::Command)
                .unwrap_or(false);
        let name = name
            .map(str::to_string)
            .or(if is_command { stem } else { None });
        // Name the file in what is wrong with its content; problems of the
        // host itself (its compiled-code cache, the engine) stay as they are.
        self.add_tool_with_contract(&wasm, name.as_deref(), contract)
            .map_err(|e| {
                use voidbox_sandbox::LoadError as L;
                match e {
                    Error::Load(
                        source @ (L::NotWasm
                        | L::CoreModule
                        | L::UnknownVersion(_)
                        | L::WrongWorld { .. }
                        | L::Compile(_)
                        | L::Link(_)),
                    ) => Error::BadComponent {
                        path: path.to_path_buf(),
                        source,
                    },
                    other => other,
                }
            })
    }

    /// Every registered tool, sorted by name.
    pub fn tools(&self) -> Result<Vec<ToolRecord>> {
        let p = self.storage.db_path();
        let e = |e: &dyn std::fmt::Display| db_err(p)(e.to_string());
        let txn = self.storage.db.begin_read().map_err(|x| e(&x))?;
        let table = txn.open_table(TOOLS).map_err(|x| e(&x))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|x| e(&x))? {
            let (k, v) = entry.map_err(|x| e(&x))?;
            let rec: ToolRecord =
                serde_json::from_slice(v.value()).map_err(|x| Error::Corrupt {
                    what: format!("tool record {}", Digest(*k.value())),
                    detail: x.to_string(),
                })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// Finds a tool by name, by `blake3:<hex>` digest, or by bare hex digest.
    pub fn tool(&self, reference: &str) -> Result<ToolRecord> {
        let p = self.storage.db_path();
        let e = |e: &dyn std::fmt::Display| db_err(p)(e.to_string());
        let digest = if reference.starts_with("blake3:") {
            reference.parse::<Digest>()?
        } else if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            format!("blake3:{}", reference.to_ascii_lowercase()).parse::<Digest>()?
        } else {
            let txn = self.storage.db.begin_read().map_err(|x| e(&x))?;
            let names = txn.open_table(NAMES).map_err(|x| e(&x))?;
            match names.get(reference).map_err(|x| e(&x))? {
                Some(d) => Digest(*d.value()),
                None => return Err(Error::NoSuchTool(reference.to_string())),
            }
        };
        let txn = self.storage.db.begin_read().map_err(|x| e(&x))?;
        let tools = txn.open_table(TOOLS).map_err(|x| e(&x))?;
        let Some(v) = tools.get(digest.as_bytes()).map_err(|x| e(&x))? else {
            return Err(Error::NoSuchTool(reference.to_string()));
        };
        serde_json::from_slice(v.value()).map_err(|x| Error::Corrupt {
            what: format!("tool record {digest}"),
            detail: x.to_string(),
        })
    }

    /// Unregisters a tool (its blob stays until `gc`).
    pub fn remove_tool(&self, reference: &str) -> Result<ToolRecord> {
        let record = self.tool(reference)?;
        let p = self.storage.db_path();
        let e = |e: &dyn std::fmt::Display| db_err(p)(e.to_string());
        let txn = self.storage.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut tools = txn.open_table(TOOLS).map_err(|x| e(&x))?;
            tools.remove(record.digest.as_bytes()).map_err(|x| e(&x))?;
            let mut names = txn.open_table(NAMES).map_err(|x| e(&x))?;
            let points_here = names
                .get(record.name.as_str())
                .map_err(|x| e(&x))?
                .is_some_and(|d| Digest(*d.value()) == record.digest);
            if points_here {
                names.remove(record.name.as_str()).map_err(|x| e(&x))?;
            }
        }
        txn.commit().map_err(|x| e(&x))?;
        self.set_tools(|tools| {
            tools.remove(&record.digest);
        });
        self.sandbox.remove_artifact(record.digest.as_bytes());
        Ok(record)
    }

    /// Refuses an input over `defaults.input_bytes_max`.
    fn check_input_size(&self, len: usize) -> Result<()> {
        let max = self.config.defaults.input_bytes_max;
        if len as u64 > max {
            return Err(Error::InputTooLarge {
                size: len as u64,
                max,
            });
        }
        Ok(())
    }

    /// Stores an input for a later [`Host::invoke`]. Small inputs take the
    /// write-behind path (durable at the next batch or [`Host::flush`]).
    pub fn put_input(&self, bytes: &[u8]) -> Result<Digest> {
        self.check_input_size(bytes.len())?;
        self.storage.put_blob_deferred(bytes)
    }

    /// Changes the tool index (and so every thread's [`LAST_TOOL`] of this
    /// host goes stale).
    fn set_tools(&self, change: impl FnOnce(&mut HashMap<Digest, ToolEntry>)) {
        let mut tools = self.tools.write().expect("tool index poisoned");
        change(&mut tools);
        self.tools_generation.fetch_add(1, Ordering::Release);
    }

    /// The tool to run: this thread's [`LAST_TOOL`] if it is this one,
    /// moved out (give it back with [`Host::keep_tool`]), else looked up.
    fn take_tool(&self, digest: &Digest) -> Result<(u64, RunnableTool)> {
        // Read before the lookup: a change after it makes the copy stale.
        let generation = self.tools_generation.load(Ordering::Acquire);
        let last = LAST_TOOL.with_borrow_mut(|last| match last.take() {
            Some((host, g, d, tool)) if host == self.id && g == generation && d == *digest => {
                Some(tool)
            }
            other => {
                *last = other;
                None
            }
        });
        if let Some(tool) = last {
            return Ok((generation, tool));
        }
        // The index first: a tool removed from it may still be loaded.
        let contract = self.tool_entry(digest)?.contract;
        let loaded = match self.sandbox.loaded(digest.as_bytes()) {
            Some(t) => t,
            None => {
                let wasm = self.blobs.get(digest)?;
                self.sandbox.load(*digest.as_bytes(), &wasm)?
            }
        };
        Ok((generation, RunnableTool { loaded, contract }))
    }

    /// Keeps a tool from [`Host::take_tool`] as this thread's last.
    fn keep_tool(&self, generation: u64, digest: Digest, tool: RunnableTool) {
        LAST_TOOL.set(Some((self.id, generation, digest, tool)));
    }

    fn tool_entry(&self, digest: &Digest) -> Result<ToolEntry> {
        self.tools
            .read()
            .expect("tool index poisoned")
            .get(digest)
            .cloned()
            .ok_or_else(|| Error::NoSuchTool(digest.to_string()))
    }

    /// The owner token `voidbox init` minted (no caveats: everything is
    /// allowed). The local CLI uses it unless given another.
    pub fn owner_token(&self) -> Result<String> {
        let path = self.home.join(OWNER_TOKEN_FILE);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .map_err(Error::io(
                path,
                "pass a token with --token or VOIDBOX_TOKEN",
            ))
    }

    /// Creates a root key for a new tenant.
    pub fn add_tenant(&self, tenant: &str) -> Result<()> {
        self.caps.add_tenant(tenant)
    }

    /// Mints a token for `tenant` (default: the owner) with caveats.
    pub fn mint_token(&self, tenant: &str, caveats: &[Caveat]) -> Result<String> {
        self.caps.mint(tenant, caveats)
    }

    /// Narrows a token offline with more caveats. Z3 checks that the
    /// child's numeric limits stay within the parent's and can still be met;
    /// returns the new token and that verdict in words.
    pub fn attenuate_token(&self, token: &str, caveats: &[Caveat]) -> Result<(String, String)> {
        let parent = Token::decode(token).map_err(|e| Error::Auth {
            detail: format!("the token cannot be read: {e}"),
        })?;
        let child = parent.attenuate(caveats).map_err(|e| Error::Auth {
            detail: e.to_string(),
        })?;
        let verdict = voidbox_contract::check_attenuation(
            &crate::capability::limits_of(&parent)?,
            &crate::capability::limits_of(&child)?,
        )
        .map_err(|e| Error::Auth {
            detail: format!("refused: {e}"),
        })?;
        let ranges: Vec<String> = verdict
            .ranges
            .iter()
            .map(|r| format!("{} in {}..={}", r.name, r.min, r.max))
            .collect();
        let words = if ranges.is_empty() {
            "Z3: the new caveats add no numeric limit; the token is narrowed by them alone"
                .to_string()
        } else {
            format!(
                "Z3: the child's limits are within the parent's and satisfiable ({})",
                ranges.join(", ")
            )
        };
        Ok((child.encode(), words))
    }

    /// Revokes a token and every token narrowed from it.
    pub fn revoke_token(&self, token: &str) -> Result<TokenId> {
        let t = Token::decode(token).map_err(|e| Error::Auth {
            detail: format!("the token cannot be read: {e}"),
        })?;
        self.caps.revoke(t.id())?;
        self.caps
            .audit(serde_json::json!({"event": "revoke", "token": t.id().to_string()}));
        Ok(t.id().clone())
    }

    /// Checks a token against an invocation without side effects: what
    /// `voidbox token verify` shows. Returns the authorization and the
    /// invocation with its effective budget.
    pub fn authorize(
        &self,
        token: &str,
        invocation: &Invocation,
    ) -> Result<(Authorized, Invocation)> {
        let input_bytes = match self.blobs.size(&invocation.input)? {
            Some(n) => n,
            None => return Err(Error::NoSuchBlob(invocation.input)),
        };
        self.authorize_sized(token, invocation, input_bytes)
    }

    /// [`Host::authorize`] for an input that need not be stored: the
    /// caller names it by digest in `invocation.input` and gives its size.
    pub fn authorize_sized(
        &self,
        token: &str,
        invocation: &Invocation,
        input_bytes: u64,
    ) -> Result<(Authorized, Invocation)> {
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.authorize_with(
            token,
            invocation,
            input_bytes,
            now_unix,
            self.caps.keys(),
            &self.caps,
        )
    }

    /// [`Host::authorize_sized`] at a given time and against a given set of
    /// revocations: what a cluster replica does, with the consensus time and
    /// the replicated state, so that every correct replica decides alike.
    /// Root keys are [pinned](voidbox_auth::PinnedKeys): each is read from
    /// the data directory once, the first time a token needs it, so a key
    /// file changed on one replica cannot make it decide apart from the
    /// others. It takes no use; the caller counts uses in its replicated
    /// state ([`Authorized::take_use`]).
    pub fn authorize_at(
        &self,
        token: &str,
        invocation: &Invocation,
        input_bytes: u64,
        now_unix: u64,
        revocations: &dyn voidbox_auth::Revocations,
    ) -> Result<(Authorized, Invocation)> {
        let keys = self
            .pinned_keys
            .get_or_init(|| voidbox_auth::PinnedKeys::new(self.caps.key_dir()));
        self.authorize_with(token, invocation, input_bytes, now_unix, keys, revocations)
    }

    /// The capability check of [`Host::authorize_sized`] and
    /// [`Host::authorize_at`], with the keys and revocations given.
    fn authorize_with(
        &self,
        token: &str,
        invocation: &Invocation,
        input_bytes: u64,
        now_unix: u64,
        keys: &dyn voidbox_auth::KeyStore,
        revocations: &dyn voidbox_auth::Revocations,
    ) -> Result<(Authorized, Invocation)> {
        let entry = self.tool_entry(&invocation.tool)?;
        let reads: Vec<AuthDigest> = invocation.grants.iter().map(|d| AuthDigest(d.0)).collect();
        let b = invocation.budget;
        let request = AuthRequest {
            tool_digest: AuthDigest(invocation.tool.0),
            tool_name: &entry.name,
            now_unix,
            budget: voidbox_auth::Budget {
                fuel: b.fuel,
                memory_bytes: b.memory_bytes,
                output_bytes: b.output_bytes,
            },
            input_bytes,
            reads: &reads,
        };
        let authorized =
            voidbox_auth::verify_encoded(token, &request, keys, revocations).map_err(|d| {
                self.audit_denial(invocation, d.kind.as_str(), &d.message);
                Error::Denied(d)
            })?;
        let mut effective = invocation.clone();
        effective.budget.fuel = authorized.budget.fuel;
        effective.budget.memory_bytes = authorized.budget.memory_bytes;
        effective.budget.output_bytes = authorized.budget.output_bytes;
        if let Some(contract) = &entry.contract {
            let budget = voidbox_contract::Budget {
                // Every input the token allows; without an input-bytes
                // caveat, the input at hand.
                max_input_bytes: Some(authorized.limits.input_bytes.unwrap_or(input_bytes)),
                max_args_bytes: Some(args_bytes(&invocation.args)),
                fuel: effective.budget.fuel,
                memory_bytes: effective.budget.memory_bytes,
                output_bytes: effective.budget.output_bytes,
            };
            self.caps.admit(contract, &budget).map_err(|e| {
                self.audit_denial(invocation, "not-admitted", &e.to_string());
                Error::NotAdmitted(e.to_string())
            })?;
        }
        Ok((authorized, effective))
    }

    /// Runs an invocation under a capability: verifies the token, proves
    /// the tool's contract fits the effective budget, takes a use when the
    /// token is limited-use, then runs (or answers from the cache). A
    /// denial has no side effects besides an audit line.
    pub fn invoke_with_token(&self, token: &str, invocation: &Invocation) -> Result<Receipt> {
        let (authorized, effective) = self.authorize(token, invocation)?;
        self.run_authorized(&authorized, &effective, None)
    }

    /// [`Host::invoke_with_token`] for an input that is not stored yet: the
    /// input is stored only once the token, the admission proof and the use
    /// count have all said yes, so a denied request stores nothing.
    /// `template.input` is replaced by the input's digest.
    pub fn run_with_token(
        &self,
        token: &str,
        template: &Invocation,
        input: &[u8],
    ) -> Result<Receipt> {
        self.check_input_size(input.len())?;
        let mut invocation = template.clone();
        invocation.input = Digest::of(input);
        let (authorized, effective) =
            self.authorize_sized(token, &invocation, input.len() as u64)?;
        self.run_authorized(&authorized, &effective, Some(input))
    }

    /// The last steps of an authorized run: take a use (the only step that
    /// can still deny), store the input if it is not stored yet, run, audit.
    fn run_authorized(
        &self,
        authorized: &Authorized,
        effective: &Invocation,
        input: Option<&[u8]>,
    ) -> Result<Receipt> {
        authorized.take_use(&self.caps).map_err(|d| {
            self.audit_denial(effective, d.kind.as_str(), &d.message);
            Error::Denied(d)
        })?;
        let receipt = match input {
            Some(input) => {
                let blob = self.storage.prepare_known(effective.input, input)?;
                self.invoke_given(effective, input, blob)?
            }
            None => self.invoke(effective)?,
        };
        self.caps.audit(serde_json::json!({
            "event": "invoke",
            "token": authorized.token_id.to_string(),
            "invocation": receipt.invocation,
            "outcome": receipt.outcome.name(),
        }));
        Ok(receipt)
    }

    fn audit_denial(&self, invocation: &Invocation, kind: &str, message: &str) {
        self.caps.audit(serde_json::json!({
            "event": "deny",
            "tool": invocation.tool,
            "input": invocation.input,
            "kind": kind,
            "message": message,
        }));
    }

    /// The receipt the action cache holds for `invocation`, if any.
    pub fn cached(&self, invocation: &Digest) -> Result<Option<Receipt>> {
        // Memory first: a fresh invocation (the common miss) or one whose
        // receipt is still in the journal's tail is answered under the
        // storage's lock alone; the front of receipts read from the
        // database only holds what memory calls stored.
        self.cached_after(invocation, self.storage.cached_in_memory(invocation))
    }

    /// [`Host::cached`], given what memory said.
    fn cached_after(&self, invocation: &Digest, memory: InMemory) -> Result<Option<Receipt>> {
        match memory {
            InMemory::Found(mut r) => {
                r.cached = true;
                return Ok(Some(r));
            }
            InMemory::Absent => return Ok(None),
            InMemory::Stored => {}
        }
        if let Some(r) = self
            .recent
            .lock()
            .expect("action cache poisoned")
            .get(invocation)
        {
            let mut r = (**r).clone();
            r.cached = true;
            return Ok(Some(r));
        }
        match self.storage.cached_receipt_stored(invocation)? {
            Some(mut r) => {
                self.remember(Arc::new(r.clone()), *invocation);
                r.cached = true;
                Ok(Some(r))
            }
            None => Ok(None),
        }
    }

    fn remember(&self, receipt: Arc<Receipt>, invocation: Digest) {
        let mut recent = self.recent.lock().expect("action cache poisoned");
        if recent.len() >= self.config.storage.action_cache_entries {
            // The database holds every entry; the front only saves a lookup.
            recent.clear();
        }
        recent.insert(invocation, receipt);
    }

    /// Runs an invocation, or answers it from the action cache. The input
    /// (and any granted blob) must already be stored.
    pub fn invoke(&self, invocation: &Invocation) -> Result<Receipt> {
        let inv_digest = invocation.digest();
        // The cache question and, for a miss, the input, under one lock:
        // each lock taken moves its cache line between the cores when two
        // threads invoke.
        let (memory, input) = self.storage.probe(&inv_digest, &invocation.input);
        if let Some(r) = self.cached_after(&inv_digest, memory)? {
            return Ok(r);
        }
        let input = match input {
            Some(bytes) => RunInput::Read(bytes),
            None => RunInput::Stored,
        };
        self.execute_with(invocation, inv_digest, input)
    }

    /// [`Host::invoke`] for an input that is not stored yet:
    /// `template.input` is replaced by the digest of `input`, which is
    /// stored with the receipt. The same receipt as [`Host::put_input`]
    /// then [`Host::invoke`], with one storage lock fewer (each lock moves
    /// a cache line between the cores when two threads invoke) and no
    /// copy of the input read back from the storage to run it.
    pub fn run(&self, template: &Invocation, input: &[u8]) -> Result<Receipt> {
        self.check_input_size(input.len())?;
        let blob = self.storage.prepare_blob(input)?;
        let mut invocation = template.clone();
        invocation.input = blob.digest();
        self.invoke_given(&invocation, input, blob)
    }

    /// Runs `invocation` on `input`, whose digest is `invocation.input`
    /// (readied as `blob`): answered from the cache (storing the input
    /// alone) or run and recorded with it.
    fn invoke_given(
        &self,
        invocation: &Invocation,
        input: &[u8],
        blob: PendingBlob<'_>,
    ) -> Result<Receipt> {
        let inv_digest = invocation.digest();
        let memory = self
            .storage
            .cached_in_memory_fresh(&inv_digest, &invocation.input);
        if let Some(r) = self.cached_after(&inv_digest, memory)? {
            // Stored already unless removed since (`cas rm`): a caller
            // that stored it itself would find it after this call too.
            self.storage.put_pending(&blob)?;
            return Ok(r);
        }
        self.execute_with(invocation, inv_digest, RunInput::Given(input, blob))
    }

    /// Runs a batch of invocations on the worker slots and returns their
    /// results in the batch's order: the same receipts (digests) as calling
    /// [`Host::invoke`] on each in turn. Distinct invocations are placed on
    /// the slots by the Ising placement (a slot that ran the tool recently
    /// has it warm), answered there from the cache or run, each exactly
    /// once: a
    /// repeated invocation in the batch is answered from the first one's
    /// receipt, marked `cached`, as a sequential run would answer it.
    pub fn invoke_batch(&self, invocations: &[Invocation]) -> Vec<Result<Receipt>> {
        let digests: Vec<Digest> = invocations.iter().map(Invocation::digest).collect();
        self.batch(
            &digests,
            |i| invocations[i].tool,
            // The cache is asked on the slots too: a miss costs a database
            // lookup, which would otherwise run on one thread for the batch.
            |i| match self.cached(&digests[i]) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => self.execute(&invocations[i], digests[i]),
                Err(e) => Err(e),
            },
            |i| self.invoke(&invocations[i]),
        )
    }

    /// [`Host::run`] over many inputs on the worker slots: `template` with
    /// each input in turn, results in the inputs' order, the same receipts
    /// (digests) as calling [`Host::run`] on each. Each input is stored on
    /// the slot that runs it, as `run` stores it; a repeated input is
    /// answered from the first one's receipt, marked `cached`, as in
    /// [`Host::invoke_batch`].
    ///
    /// ```
    /// # fn main() -> voidbox::Result<()> {
    /// # let dir = tempfile::tempdir().expect("a temp dir");
    /// # let echo_wasm = std::path::Path::new(voidbox_tool_artifacts::ECHO);
    /// use voidbox::{Digest, Host, Invocation};
    ///
    /// let host = Host::open(dir.path())?;
    /// let echo = host.add_tool_file(echo_wasm, None)?; // echo.wasm, of tools/
    /// // The template's input is replaced by each input's digest.
    /// let template = Invocation::new(echo.digest, Digest::of(b""));
    /// let inputs: [&[u8]; 3] = [b"one", b"two", b"one"];
    /// let receipts = host.run_batch(&template, &inputs);
    /// let mut outputs = Vec::new();
    /// for r in &receipts {
    ///     outputs.push(host.output(r.as_ref().expect("ran"))?.unwrap_or_default());
    /// }
    /// assert_eq!(outputs, [b"one".to_vec(), b"two".to_vec(), b"one".to_vec()]);
    /// assert!(receipts[2].as_ref().unwrap().cached);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_batch(&self, template: &Invocation, inputs: &[&[u8]]) -> Vec<Result<Receipt>> {
        self.batch(
            inputs,
            |_| template.tool,
            |i| self.run(template, inputs[i]),
            |i| self.run(template, inputs[i]),
        )
    }

    /// The batch paths' common part: runs `job(i)` once per distinct
    /// `keys[i]` on the worker slots, placed by `tool(i)`, and answers a
    /// repeated key from its first occurrence's receipt, marked `cached`
    /// (or with `again(i)` when that receipt would not have been cached).
    fn batch<K: Eq + std::hash::Hash>(
        &self,
        keys: &[K],
        tool: impl Fn(usize) -> Digest,
        job: impl Fn(usize) -> Result<Receipt> + Sync,
        again: impl Fn(usize) -> Result<Receipt>,
    ) -> Vec<Result<Receipt>> {
        let mut results: Vec<Option<Result<Receipt>>> = (0..keys.len()).map(|_| None).collect();
        // The first occurrence of each key, and where later ones are.
        let mut first: HashMap<&K, usize> = HashMap::with_capacity(keys.len());
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut to_run: Vec<usize> = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            if let Some(&f) = first.get(k) {
                repeats.push((i, f));
                continue;
            }
            first.insert(k, i);
            to_run.push(i);
        }
        if !to_run.is_empty() {
            let tools: Vec<Digest> = to_run.iter().map(|&i| tool(i)).collect();
            // Any seed that the batch fixes keeps placement reproducible.
            let seed = u64::from_le_bytes(tools[0].as_bytes()[..8].try_into().expect("8 bytes"))
                ^ keys.len() as u64;
            let ran = self.pool().run(&tools, seed, |j| job(to_run[j]));
            for (j, r) in ran.into_iter().enumerate() {
                results[to_run[j]] = Some(r);
            }
        }
        for (i, f) in repeats {
            let again = match &results[f] {
                Some(Ok(r)) if r.outcome.is_deterministic() => {
                    let mut r = r.clone();
                    r.cached = true;
                    Ok(r)
                }
                // Not cached (a timeout, or an error): a sequential caller
                // would have tried again, so try again.
                _ => again(i),
            };
            results[i] = Some(again);
        }
        results
            .into_iter()
            .map(|r| r.expect("every invocation of the batch has a result"))
            .collect()
    }

    /// Sets the number of worker slots of [`Host::invoke_batch`] (default:
    /// one per core). Only before the first batch, which starts the pool:
    /// returns `false` (and changes nothing) after it.
    pub fn set_worker_slots(&self, slots: usize) -> bool {
        if self.pool.get().is_some() {
            return false;
        }
        self.worker_slots.store(slots, Ordering::Relaxed);
        true
    }

    fn pool(&self) -> &Pool {
        self.pool.get_or_init(|| {
            let asked = self.worker_slots.load(Ordering::Relaxed);
            let slots = if asked > 0 {
                asked
            } else {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            };
            // A pool that cannot start threads runs batches on the caller's
            // thread: slower, never wrong.
            Pool::new(slots).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not start worker threads; running batches on one slot");
                Pool::new(1).expect("a one-slot pool starts no thread")
            })
        })
    }

    /// How [`Host::invoke_batch`] placed and ran its batches so far.
    pub fn pool_stats(&self) -> PoolStats {
        match self.pool.get() {
            Some(p) => p.stats(),
            None => PoolStats::default(),
        }
    }

    /// Invocations run in the sandbox so far (cache answers excluded).
    pub fn runs(&self) -> u64 {
        self.runs.get()
    }

    /// Moves everything the journal holds into the database and waits
    /// until it is there (the host does this by itself as the journal
    /// grows, and when it closes).
    pub fn checkpoint(&self) -> Result<()> {
        self.storage.checkpoint()
    }

    /// Readies the storage for a steady load before serving it: maps the
    /// journal's memory now rather than under the invocations (about a
    /// tenth of a second here, during which invocations wait). A replica
    /// does this at start; a host that serves a few invocations and exits
    /// (the CLI) need not.
    pub fn prepare_for_load(&self) {
        self.storage.prefault();
    }

    /// What the storage did so far: journal frames, bytes, checkpoints.
    pub fn storage_stats(&self) -> StorageStats {
        self.storage.stats()
    }

    /// Runs an invocation that the action cache did not answer.
    fn execute(&self, invocation: &Invocation, inv_digest: Digest) -> Result<Receipt> {
        self.execute_with(invocation, inv_digest, RunInput::Stored)
    }

    /// [`Host::execute`] with the input, when the caller read it already.
    fn execute_with(
        &self,
        invocation: &Invocation,
        inv_digest: Digest,
        input: RunInput<'_>,
    ) -> Result<Receipt> {
        let started = Instant::now();
        let (generation, tool) = self.take_tool(&invocation.tool)?;
        let read: Arc<[u8]>;
        let (input, input_blob) = match input {
            RunInput::Stored => {
                read = match self.blobs.get_shared(&invocation.input) {
                    Ok(b) => b,
                    Err(voidbox_cas::CasError::NotFound(d)) => return Err(Error::NoSuchBlob(d)),
                    Err(e) => return Err(e.into()),
                };
                (&read[..], None)
            }
            RunInput::Read(bytes) => {
                read = bytes;
                (&read[..], None)
            }
            RunInput::Given(bytes, blob) => (bytes, Some(blob)),
        };
        self.check_input_size(input.len())?;
        let grants: Vec<String> = invocation.grants.iter().map(|d| d.to_string()).collect();
        let preopens = invocation
            .grants
            .iter()
            .map(|d| Ok((self.materialize(d)?, format!("/grants/{}", d.hex()))))
            .collect::<Result<Vec<_>>>()?;
        self.runs.add(1);
        let result = self.sandbox.run(
            &tool.loaded,
            &RunRequest {
                input,
                args: &invocation.args,
                budget: invocation.budget,
                clock_unix_ns: invocation.time_unix_ns,
                seed: *inv_digest.as_bytes(),
                grants: &grants,
                blobs: &self.blob_source,
                preopens: &preopens,
            },
        )?;
        let mut outcome = result.outcome;
        if outcome == Outcome::Ok {
            if let Some(contract) = &tool.contract {
                let figures = Figures {
                    input_bytes: input.len() as u64,
                    args_bytes: args_bytes(&invocation.args),
                    output_bytes: result.output.len() as u64,
                    fuel: result.fuel_used,
                    memory_bytes: result.memory_peak_bytes,
                };
                if let Err(v) = contract.check_post(&figures) {
                    // Deterministic like the run itself, so the receipt (and
                    // its cache entry) says so for every identical invocation.
                    let clause = match v.label {
                        Some(label) => format!("{label}: {}", v.text),
                        None => v.text,
                    };
                    outcome = Outcome::ContractViolation { clause };
                }
            }
        }
        // The blobs the receipt names are stored with it, under one lock.
        let diagnostics_json = if result.logs.is_empty() && result.stderr.is_empty() {
            None
        } else {
            let d = serde_json::json!({
                "logs": result.logs,
                "stderr": String::from_utf8_lossy(&result.stderr),
            });
            Some(serde_json::to_vec(&d).expect("json"))
        };
        let output_blob = match outcome {
            Outcome::Ok => Some(self.storage.prepare_blob(&result.output)?),
            _ => None,
        };
        let diagnostics_blob = match &diagnostics_json {
            Some(json) => Some(self.storage.prepare_blob(json)?),
            None => None,
        };
        let output = output_blob.as_ref().map(|b| b.digest());
        let diagnostics = diagnostics_blob.as_ref().map(|b| b.digest());
        let ended = Instant::now();
        let mut receipt = Receipt {
            receipt: Digest([0; 32]),
            invocation: inv_digest,
            tool: invocation.tool,
            input: invocation.input,
            output,
            output_bytes: result.output.len() as u64,
            outcome,
            fuel_used: result.fuel_used,
            memory_peak_bytes: result.memory_peak_bytes,
            diagnostics,
            // Given by the storage as it records the receipt.
            timestamp: 0,
            cached: false,
            duration_us: ended.duration_since(started).as_micros() as u64,
        };
        receipt.receipt = receipt.compute_digest();
        let cacheable = receipt.outcome.is_deterministic();
        // The storage's tail answers the next identical invocation; the
        // in-memory front is filled when an answer comes from the database.
        self.storage.record(
            invocation,
            inv_digest,
            &mut receipt,
            cacheable,
            input_blob
                .into_iter()
                .chain(output_blob)
                .chain(diagnostics_blob),
            Some(self.unix_clock.unix_ns(ended)),
        )?;
        self.keep_tool(generation, invocation.tool, tool);
        Ok(receipt)
    }

    /// Stores a receipt this host did not compute, as if it had run the
    /// invocation: its output blob (when given), the receipt, and the
    /// action-cache entry. For a cluster replica that adopted the result
    /// f + 1 other replicas signed alike instead of running it; the caller
    /// vouches for the receipt, which is checked only for consistency
    /// (it must name `invocation`, its digest must be its own, and
    /// `output` must hash to the output it names).
    ///
    /// Returns false, storing nothing, when a blob the receipt names is
    /// neither given nor stored here (a large output, diagnostics): a
    /// cached receipt must never point at a blob this host cannot return.
    pub fn adopt_receipt(
        &self,
        invocation: &Invocation,
        receipt: &Receipt,
        output: Option<&[u8]>,
    ) -> Result<bool> {
        let inv_digest = invocation.digest();
        if receipt.invocation != inv_digest {
            return Err(Error::Cluster(format!(
                "receipt {} does not belong to invocation {inv_digest}; it was not stored",
                receipt.receipt
            )));
        }
        if !receipt.is_consistent() {
            return Err(Error::Cluster(format!(
                "receipt {}'s fields do not hash to its digest; it was not stored",
                receipt.receipt
            )));
        }
        let mut blobs = Vec::new();
        if let Some(d) = receipt.output {
            match output {
                Some(bytes) => {
                    let blob = self.storage.prepare_blob(bytes)?;
                    if blob.digest() != d {
                        return Err(Error::Cluster(format!(
                            "the output given with receipt {} is not {d}; it was not stored",
                            receipt.receipt
                        )));
                    }
                    blobs.push(blob);
                }
                None if self.blobs.contains(&d)? => {}
                None => return Ok(false),
            }
        }
        if let Some(d) = receipt.diagnostics {
            if !self.blobs.contains(&d)? {
                return Ok(false);
            }
        }
        let mut receipt = receipt.clone();
        receipt.cached = false;
        let cacheable = receipt.outcome.is_deterministic();
        self.storage
            .record(invocation, inv_digest, &mut receipt, cacheable, blobs, None)?;
        Ok(true)
    }

    /// A granted blob as a read-only file for the guest: the directory
    /// `grants/<hex>/` holding one file, `blob`, with the verified content.
    /// The guest sees it as `/grants/<hex>/blob`. Written once (temp file
    /// and rename), reused by later invocations; `gc` clears them.
    fn materialize(&self, digest: &Digest) -> Result<PathBuf> {
        let dir = self.home.join("grants").join(digest.hex());
        let file = dir.join("blob");
        if !file.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(&dir, "check that the data directory is writable"))?;
            match self.blobs.get_to_file(digest, &file) {
                Ok(_) => {}
                Err(voidbox_cas::CasError::NotFound(d)) => return Err(Error::NoSuchBlob(d)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(dir)
    }

    /// The output bytes a receipt names, if the run produced any.
    pub fn output(&self, receipt: &Receipt) -> Result<Option<Vec<u8>>> {
        match &receipt.output {
            Some(d) => Ok(Some(self.blobs.get(d)?)),
            None => Ok(None),
        }
    }

    /// A receipt by its digest or by its invocation's digest, with the
    /// invocation when it is known.
    pub fn receipt(&self, digest: &Digest) -> Result<(Receipt, Option<Invocation>)> {
        self.storage
            .receipt(digest)?
            .ok_or(Error::NoSuchReceipt(*digest))
    }

    /// Makes every receipt and blob handed over so far durable.
    pub fn flush(&self) -> Result<()> {
        self.storage.flush()
    }

    /// Removes every blob that no tool, pin, receipt or invocation
    /// references.
    pub fn gc(&self) -> Result<GcReport> {
        let roots = self.storage.roots()?;
        let report = self.blobs.gc(&roots)?;
        // Materialized grants are copies; the next invocation that needs
        // one makes it again from the CAS.
        let grants = self.home.join("grants");
        if grants.exists() {
            std::fs::remove_dir_all(&grants)
                .map_err(Error::io(&grants, "remove the directory by hand"))?;
        }
        Ok(report)
    }
}

/// Unix time read from the monotonic clock, so that one reading at the end
/// of a run gives both its duration and its timestamp (a clock reading
/// costs 25 ns here in a loop and about 100 ns right after a guest ran, on
/// every invocation's path). The offset between the two clocks is taken
/// again once a second, so a step of the system clock reaches timestamps
/// within a second; the storage's hybrid logical clock keeps them
/// increasing across such a step.
struct UnixClock {
    base: Instant,
    /// Unix time at `base`, in nanoseconds, as last measured.
    unix_at_base: AtomicU64,
    /// Nanoseconds after `base` when `unix_at_base` was measured.
    measured_at: AtomicU64,
}

impl UnixClock {
    const REMEASURE_NS: u64 = 1_000_000_000;

    fn new() -> UnixClock {
        let base = Instant::now();
        UnixClock {
            base,
            unix_at_base: AtomicU64::new(system_unix_ns()),
            measured_at: AtomicU64::new(0),
        }
    }

    fn unix_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_nanos() as u64;
        if since.saturating_sub(self.measured_at.load(Ordering::Relaxed)) >= Self::REMEASURE_NS {
            // Racing threads each store a fresh measurement; any is right.
            self.unix_at_base
                .store(system_unix_ns().saturating_sub(since), Ordering::Relaxed);
            self.measured_at.store(since, Ordering::Relaxed);
        }
        self.unix_at_base
            .load(Ordering::Relaxed)
            .saturating_add(since)
    }
}

fn system_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The size of the arguments as the contract language's `args_bytes`.
fn args_bytes(args: &[(String, String)]) -> u64 {
    args.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// Tool names: short, unambiguous with digests, safe in file names.
fn check_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let looks_like_digest = name.starts_with("blake3:")
        || (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()));
    if name.is_empty() || name.len() > 64 || !ok_chars || looks_like_digest {
        return Err(Error::BadName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod batch_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("wc").is_ok());
        assert!(check_name("json-query_2.0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name("blake3:x").is_err());
    }

    #[test]
    fn a_threads_last_tool_is_not_used_after_the_tool_changed_or_by_another_host() {
        let wasm = std::fs::read(voidbox_tool_artifacts::ECHO).unwrap();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Host::open(dir_a.path()).unwrap();
        let b = Host::open(dir_b.path()).unwrap();
        let echo = a.add_tool(&wasm, Some("echo")).unwrap().digest;
        let run = |host: &Host, input: &str| {
            let input = host.put_input(input.as_bytes()).unwrap();
            host.invoke(&Invocation::new(echo, input))
        };
        assert_eq!(run(&a, "one").unwrap().outcome, Outcome::Ok);
        // This thread now holds host a's echo; host b has no such tool.
        assert!(matches!(run(&b, "two"), Err(Error::NoSuchTool(_))));
        assert_eq!(run(&a, "three").unwrap().outcome, Outcome::Ok);
        a.remove_tool("echo").unwrap();
        assert!(matches!(run(&a, "four"), Err(Error::NoSuchTool(_))));
        // Added again, it runs again.
        a.add_tool(&wasm, Some("echo")).unwrap();
        assert_eq!(run(&a, "five").unwrap().outcome, Outcome::Ok);
    }

    #[test]
    fn receipts_from_two_threads_get_distinct_increasing_timestamps_near_the_clock() {
        let wasm = std::fs::read(voidbox_tool_artifacts::ECHO).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host = Host::open(dir.path()).unwrap();
        let echo = host.add_tool(&wasm, Some("echo")).unwrap().digest;
        let before = system_unix_ns();
        let stamps: Vec<Vec<u64>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let host = &host;
                    s.spawn(move || {
                        (0..50)
                            .map(|i| {
                                let input = host.put_input(format!("{t}-{i}").as_bytes()).unwrap();
                                host.invoke(&Invocation::new(echo, input))
                                    .unwrap()
                                    .timestamp
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let after = system_unix_ns();
        for mine in &stamps {
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        }
        let mut all: Vec<u64> = stamps.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100, "two receipts shared a timestamp");
        let slack = 50_000_000;
        assert!(
            all[0] + slack >= before && all[99] <= after + slack,
            "{all:?}"
        );
    }

    #[test]
    fn timestamps_follow_the_system_clock() {
        let clock = UnixClock::new();
        let near = |at: Instant| {
            let (ours, system) = (clock.unix_ns(at), system_unix_ns());
            assert!(ours.abs_diff(system) < 50_000_000, "{ours} vs {system}");
        };
        near(Instant::now());
        // Past the first re-measurement too.
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        near(Instant::now());
    }

    #[test]
    fn opening_a_missing_home_without_init_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Host::open_existing(dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("voidbox init"), "{err}");
    }

    #[test]
    fn inputs_over_the_limit_are_refused_before_storing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[defaults]\ninput_bytes_max = 4\n",
        )
        .unwrap();
        let host = Host::open(dir.path()).unwrap();
        let err = host.put_input(b"12345").unwrap_err();
        assert!(
            matches!(err, Error::InputTooLarge { size: 5, max: 4 }),
            "{err}"
        );
        // `run` refuses it before storing or looking up the tool.
        let template = Invocation::new(Digest([7; 32]), Digest([0; 32]));
        let err = host.run(&template, b"12345").unwrap_err();
        assert!(
            matches!(err, Error::InputTooLarge { size: 5, max: 4 }),
            "{err}"
        );
        assert!(host.blobs().list().unwrap().is_empty());
    }

    #[test]
    fn small_blobs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let d = {
            let host = Host::open(dir.path()).unwrap();
            let d = host.put_input(b"hello").unwrap();
            host.flush().unwrap();
            d
        };
        let host = Host::open(dir.path()).unwrap();
        assert_eq!(host.blobs().get(&d).unwrap(), b"hello");
    }
}
