//! The `voidbox` command: thin glue over the `voidbox` library. Only this
//! file knows clap, terminals and exit codes.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use voidbox::{Budget, Digest, Error, Host, Invocation, Outcome, Receipt, Store, ToolRecord};

/// `println!` for this program's results: a closed stdout (`voidbox tool
/// list | head`) ends the command quietly through [`Failure::BROKEN_PIPE`]
/// instead of panicking, and any other write error is a [`Failure`].
/// Rust ignores SIGPIPE, so a write to a closed pipe returns EPIPE, on which
/// `println!` panics (exit 101). Only usable in functions that return
/// `Result<_, Failure>`. Defined before `mod cli_cluster` so that it can
/// use it too.
macro_rules! outln {
    ($($arg:tt)*) => {
        crate::write_out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {
        crate::write_out(format_args!($($arg)*))?
    };
}

mod cli_cluster;

/// Exit codes, one per failure class, so scripts can tell them apart.
mod exit {
    pub const OK: u8 = 0;
    /// Something unexpected inside voidbox.
    pub const INTERNAL: u8 = 1;
    /// A command line clap or our own checks refuse (clap exits with 2
    /// for its own errors).
    pub const BAD_COMMAND_LINE: u8 = 2;
    /// A bad request: unknown tool, malformed digest, file not found, bad
    /// component, input too large, bad configuration.
    pub const BAD_REQUEST: u8 = 3;
    /// Storage problems: corrupt data, database or disk errors.
    pub const STORAGE: u8 = 4;
    /// Blobs found corrupt by `cas verify`.
    pub const CORRUPT: u8 = 5;
    /// The cluster could not be reached, or its replicas did not agree, or
    /// a receipt's signatures do not verify.
    pub const CLUSTER: u8 = 6;
    pub const TOOL_ERROR: u8 = 10;
    pub const TRAP: u8 = 11;
    pub const OUT_OF_FUEL: u8 = 12;
    pub const MEMORY_LIMIT: u8 = 13;
    pub const OUTPUT_TOO_LARGE: u8 = 14;
    pub const TIMEOUT: u8 = 15;
    pub const CONTRACT_VIOLATION: u8 = 16;
    // 20–34: a token was denied; the code names the kind (voidbox-auth's
    // `DeniedKind::exit_code`).
    /// Z3 could not prove the tool's contract fits the budget.
    pub const NOT_ADMITTED: u8 = 35;
    /// A contract that does not parse or that no run can meet.
    pub const BAD_CONTRACT: u8 = 36;
}

/// mimalloc as this program's allocator. glibc's malloc grows each thread's
/// arena a page at a time with `mprotect` and takes the owning arena's lock
/// when another thread frees into it: with the journal's checkpoint thread
/// freeing what invoking threads allocated, `strace -f -c` counted one
/// `mprotect` per three invocations (14,757 in 3 s on two threads), each a
/// page-table change, against about 2,000 with mimalloc, whose per-thread
/// heaps take cross-thread frees without a lock. (Declared here, not in the
/// library, so that programs embedding the library choose their own.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "voidbox",
    version,
    about = "Run WebAssembly tools in a deterministic sandbox, with receipts"
)]
struct Cli {
    /// The data directory (default: $XDG_DATA_HOME/voidbox or ~/.local/share/voidbox).
    #[arg(long, global = true, env = "VOIDBOX_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// More logging of Voidbox itself (-v info, -vv debug, -vvv trace and
    /// other crates' info, -vvvv everything); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the data directory (with a commented voidbox.toml).
    Init,
    /// Add, list, inspect and remove tools.
    #[command(subcommand)]
    Tool(ToolCmd),
    /// Invoke a tool on an input; prints the output (or the receipt with --json).
    Run(RunArgs),
    /// The content-addressed store.
    #[command(subcommand)]
    Cas(CasCmd),
    /// Receipts.
    #[command(subcommand)]
    Receipt(ReceiptCmd),
    /// Measure invocation overhead, the action cache and the CAS.
    Bench(BenchArgs),
    /// The Ising-model optimizer on its own.
    #[command(subcommand)]
    Ising(IsingCmd),
    /// Place a batch of invocations on executors with the Ising optimizer
    /// and show the placement with its energy split by term.
    Schedule {
        /// A JSON file: {"invocations": [...], "executors": [...], "weights": {...}}
        /// (weights optional); see tests/data/schedule-example.json.
        file: PathBuf,
        /// Show the placement and its energy by term (the default and only mode for now).
        #[arg(long, default_value_t = true)]
        explain: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Capabilities: mint, narrow, inspect, check and revoke tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Tenants: each has its own root key.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// A replicated cluster: init, up, status, down, bench.
    #[command(subcommand)]
    Cluster(cli_cluster::ClusterCmd),
    /// Run one replica of a cluster in the foreground (`cluster up` starts these).
    Replica {
        /// The cluster file.
        #[arg(long)]
        cluster: PathBuf,
        /// This replica's id.
        #[arg(long)]
        id: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Mint a token with a tenant's root key; prints it.
    Mint {
        /// The tenant whose key signs it.
        #[arg(long, default_value = voidbox::OWNER_TENANT)]
        tenant: String,
        /// A caveat, e.g. `fuel <= 1000000`, `tool-name = wc`, `uses <= 1` (repeatable).
        #[arg(long = "caveat", value_name = "CAVEAT")]
        caveats: Vec<String>,
    },
    /// Narrow a token with more caveats (offline; anyone holding it can).
    Attenuate {
        token: String,
        #[arg(long = "caveat", value_name = "CAVEAT", required = true)]
        caveats: Vec<String>,
    },
    /// Show a token's caveats in plain words.
    Inspect { token: String },
    /// Check a token against a tool and input without running anything.
    Verify {
        token: String,
        #[arg(long)]
        tool: String,
        /// The input file, or - for stdin (default: empty input).
        #[arg(long, short)]
        input: Option<String>,
    },
    /// Revoke a token and every token narrowed from it.
    Revoke { token: String },
    /// Make a secret to share with a third party (an approval or quota service).
    ThirdPartyKey,
    /// Narrow a token so it also needs a discharge from a third party.
    Require {
        token: String,
        #[command(flatten)]
        third_party: ThirdPartyArgs,
    },
    /// As the third party: issue a discharge for a caveat id, bound to the
    /// token it is for; prints `TOKEN,DISCHARGE` for `run --token`.
    Discharge {
        /// The token that carries the third-party caveat.
        #[arg(long = "for")]
        for_token: String,
        #[command(flatten)]
        third_party: ThirdPartyArgs,
        /// Caveats on the discharge itself, e.g. `expires < ...` (repeatable).
        #[arg(long = "caveat", value_name = "CAVEAT")]
        caveats: Vec<String>,
    },
}

/// Which third party, and the secret shared with it.
#[derive(Args, Debug)]
struct ThirdPartyArgs {
    /// Where the third party is (free text, e.g. a URL).
    #[arg(long)]
    location: String,
    /// The secret shared with the third party (64 hex digits).
    #[arg(long, env = "VOIDBOX_THIRD_PARTY_KEY", hide_env_values = true)]
    third_party_key: String,
    /// What the third party is asked to approve, e.g. `approve-run-42`.
    #[arg(long)]
    caveat_id: String,
}

#[derive(Subcommand, Debug)]
enum TenantCmd {
    /// Create a root key for a tenant.
    Add { name: String },
}

#[derive(Subcommand, Debug)]
enum ToolCmd {
    /// Store a component, compile it once, record it; prints its digest.
    Add {
        /// The component (.wasm).
        file: PathBuf,
        /// The name to register (default: the name the tool describes).
        #[arg(long)]
        name: Option<String>,
        /// A contract file that replaces the contract the tool describes.
        #[arg(long, value_name = "CONTRACT_FILE")]
        contract: Option<PathBuf>,
        /// Add it on every replica of this cluster instead (DIR/cluster.toml).
        #[arg(long, value_name = "CLUSTER_FILE")]
        cluster: Option<PathBuf>,
    },
    /// List registered tools.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a tool's exports, imports, description and contract.
    Inspect {
        /// A name or digest.
        tool: String,
        #[arg(long)]
        json: bool,
    },
    /// Unregister a tool (its blob stays until `cas gc`).
    Rm {
        /// A name or digest.
        tool: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A tool name or digest.
    tool: String,
    /// The input file, or - for stdin (default: empty input).
    #[arg(long, short)]
    input: Option<String>,
    /// An argument for the tool, KEY=VALUE (repeatable; =VALUE for a
    /// positional argument of a command).
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = key_value)]
    args: Vec<String>,
    /// Fuel budget (default from voidbox.toml).
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory budget in bytes.
    #[arg(long)]
    memory: Option<u64>,
    /// Output limit in bytes.
    #[arg(long)]
    output_limit: Option<u64>,
    /// Wall-clock guard in milliseconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// A blob the tool may read with read-blob (repeatable).
    #[arg(long = "grant", value_name = "DIGEST")]
    grants: Vec<String>,
    /// The time the tool sees, Unix seconds (default 0: fully reproducible).
    #[arg(long)]
    time: Option<u64>,
    /// Print the whole receipt as JSON instead of the output.
    #[arg(long)]
    json: bool,
    /// The capability to run under (default: the owner token `voidbox init`,
    /// or `voidbox cluster init`, made).
    #[arg(long, env = "VOIDBOX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Submit to this cluster (DIR/cluster.toml) and wait for f + 1 matching
    /// signed results; --json prints the signed receipt.
    #[arg(long, value_name = "CLUSTER_FILE")]
    cluster: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CasCmd {
    /// Store a file (or - for stdin); prints its digest.
    Put {
        file: String,
        /// Store it on every replica of this cluster instead.
        #[arg(long, value_name = "CLUSTER_FILE")]
        cluster: Option<PathBuf>,
    },
    /// Write a blob to stdout or to a file.
    Get {
        digest: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Fetch it from the replicas of this cluster instead (checked
        /// against its digest).
        #[arg(long, value_name = "CLUSTER_FILE")]
        cluster: Option<PathBuf>,
    },
    /// List blobs.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every blob and report corrupt ones.
    Verify,
    /// Remove blobs that no tool, pin or receipt references.
    Gc,
    /// Keep a blob through GC.
    Pin { digest: String },
    /// Undo a pin.
    Unpin { digest: String },
    /// Remove one blob.
    Rm { digest: String },
}

#[derive(Subcommand, Debug)]
enum ReceiptCmd {
    /// Show a receipt by its digest or its invocation's digest.
    Show { digest: String },
    /// Check a signed cluster receipt (`run --cluster --json` output) offline:
    /// f + 1 replica signatures over exactly its bytes.
    Verify {
        /// The signed receipt file (or - for stdin).
        file: String,
        /// The cluster's configuration, for the replicas' public keys.
        #[arg(long, value_name = "CLUSTER_FILE")]
        cluster: PathBuf,
    },
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The trivial tool to measure (default: the echo tool built by `cargo xtask tools`).
    #[arg(long)]
    tool: Option<PathBuf>,
    /// Measure only one group: `invoke` or `cas`.
    #[arg(long, value_parser = ["invoke", "cas"])]
    only: Option<String>,
}

#[derive(Subcommand, Debug)]
enum IsingCmd {
    /// Anneal a max-cut edge list or QUBO file; prints JSON.
    Solve {
        file: PathBuf,
        #[arg(long, default_value_t = 1000)]
        sweeps: usize,
        #[arg(long, default_value_t = 10)]
        reads: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// The reader of stdout went away (EPIPE). Not an error of this
    /// command: it ends quietly with exit 0, as a command killed by SIGPIPE
    /// would end silently, without a message on stderr.
    const BROKEN_PIPE: u8 = 0;

    fn broken_pipe() -> Failure {
        Failure {
            code: Failure::BROKEN_PIPE,
            message: String::new(),
        }
    }
}

/// A failure to write stdout: quiet for a closed pipe, an error otherwise.
fn stdout_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::broken_pipe()
    } else {
        fail(exit::INTERNAL, format!("cannot write to stdout: {e}"))
    }
}

/// What [`outln!`] and [`out!`] call.
fn write_out(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    std::io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(stdout_failure)
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Denied(d) => d.kind.exit_code(),
            Error::NotAdmitted(_) => exit::NOT_ADMITTED,
            Error::Contract(_) => exit::BAD_CONTRACT,
            Error::Cas(voidbox::CasError::Corrupt { .. })
            | Error::Corrupt { .. }
            | Error::Db { .. }
            | Error::NotWritable { .. }
            | Error::InUse { .. }
            | Error::WriterStopped(_) => exit::STORAGE,
            Error::Cas(voidbox::CasError::Io { .. }) | Error::Io { .. } => exit::STORAGE,
            Error::Cluster(_) => exit::CLUSTER,
            _ => exit::BAD_REQUEST,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: exit::BAD_REQUEST,
            message: format!("{e:#}"),
        }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli).and_then(|code| {
        std::io::stdout().flush().map_err(stdout_failure)?;
        Ok(code)
    }) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("voidbox: {}", f.message);
            }
            // stdout is flushed at exit; a reader that left causes EPIPE
            // there too, which must not become a panic either.
            let _ = std::io::stdout().flush();
            ExitCode::from(f.code)
        }
    }
}

/// The log filter for `-v`s (RUST_LOG replaces it): Voidbox's own crates
/// (every target starting with `voidbox`) at the level asked, everything
/// else at `warn` until `-vvv`. Z3 logs every AST it builds at debug and
/// cranelift every function it compiles, which buried Voidbox's own lines.
fn default_log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn",
        1 => "warn,voidbox=info",
        2 => "warn,voidbox=debug",
        3 => "info,voidbox=trace",
        _ => "trace",
    }
}

fn init_logging(verbose: u8) {
    let default = default_log_filter(verbose);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
        // The macaroon crate logs whole tokens, signatures included, at
        // debug level: never let them reach the log.
        .add_directive("macaroon=warn".parse().expect("a valid directive"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Replicas log to files: colour codes only on a terminal.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn default_home() -> Result<PathBuf, Failure> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("voidbox"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h).join(".local/share/voidbox"));
    }
    Err(fail(
        exit::BAD_REQUEST,
        "no data directory: pass --home DIR or set VOIDBOX_HOME",
    ))
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    match cli.command {
        Command::Cluster(cmd) => cli_cluster::dispatch(cmd),
        Command::Replica { cluster, id } => {
            voidbox::cluster::run_replica(&cluster, id)?;
            Ok(exit::OK)
        }
        Command::Tool(ToolCmd::Add {
            file,
            name,
            contract,
            cluster: Some(cluster),
        }) => cli_cluster::tool_add(&cluster, &file, name.as_deref(), contract.as_deref()),
        Command::Run(args) if args.cluster.is_some() => cli_cluster::run(args),
        Command::Cas(CasCmd::Put {
            file,
            cluster: Some(cluster),
        }) => cli_cluster::cas_put(&cluster, &read_input(Some(&file))?),
        Command::Cas(CasCmd::Get {
            digest: d,
            output,
            cluster: Some(cluster),
        }) => {
            let d: Digest = d.parse().map_err(Error::from)?;
            cli_cluster::cas_get(&cluster, &d, output.as_deref())
        }
        Command::Receipt(ReceiptCmd::Verify { file, cluster }) => {
            cli_cluster::verify(&file, &cluster)
        }
        Command::Init => {
            let existed = home.join(voidbox::CONFIG_FILE).exists();
            let host = Host::init(&home)?;
            outln!(
                "{} Voidbox data directory at {}",
                if existed { "Using existing" } else { "Created" },
                host.home().display()
            );
            Ok(exit::OK)
        }
        Command::Tool(cmd) => tool(&Host::open_existing(&home)?, cmd),
        Command::Run(args) => run(&Host::open_existing(&home)?, args),
        Command::Cas(cmd) => cas(&Host::open_existing(&home)?, cmd),
        Command::Receipt(ReceiptCmd::Show { digest }) => {
            let host = Host::open_existing(&home)?;
            let d: Digest = digest.parse().map_err(Error::from)?;
            let (receipt, invocation) = host.receipt(&d)?;
            let out = serde_json::json!({ "receipt": receipt, "invocation": invocation });
            outln!("{}", serde_json::to_string_pretty(&out).expect("json"));
            Ok(exit::OK)
        }
        Command::Bench(args) => bench(args),
        Command::Token(cmd) => token(&Host::open_existing(&home)?, cmd),
        Command::Schedule {
            file,
            explain: _,
            json,
            seed,
        } => schedule(&file, json, seed),
        Command::Tenant(TenantCmd::Add { name }) => {
            Host::open_existing(&home)?.add_tenant(&name)?;
            outln!("created a root key for tenant `{name}`; mint tokens with `voidbox token mint --tenant {name}`");
            Ok(exit::OK)
        }
        Command::Ising(IsingCmd::Solve {
            file,
            sweeps,
            reads,
            seed,
            threads,
        }) => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                fail(
                    exit::BAD_REQUEST,
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let params = voidbox_ising::Params {
                sweeps,
                reads,
                seed,
                threads,
                ..Default::default()
            };
            let report = voidbox_ising::solve_text(&text, &params)
                .map_err(|e| fail(exit::BAD_REQUEST, format!("{}: {e}", file.display())))?;
            outln!("{}", serde_json::to_string(&report).expect("json"));
            Ok(exit::OK)
        }
    }
}

fn tool(host: &Host, cmd: ToolCmd) -> Result<u8, Failure> {
    match cmd {
        ToolCmd::Add {
            file,
            name,
            contract,
            cluster: _,
        } => {
            let contract = match contract {
                Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| {
                    fail(
                        exit::BAD_REQUEST,
                        format!("cannot read contract file {}: {e}", path.display()),
                    )
                })?),
                None => None,
            };
            let terminal = std::io::stderr().is_terminal();
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let started = Instant::now();
            if terminal {
                eprint!("compiling {} ({} KiB)…", file.display(), size / 1024);
                let _ = std::io::stderr().flush();
            }
            // Where each name points now, to say so when this add moves one
            // to another tool (the name the tool describes is known only
            // once it is loaded).
            let names_before: std::collections::HashMap<String, Digest> = host
                .tools()?
                .into_iter()
                .filter_map(|t| host.tool(&t.name).ok().map(|now| (t.name, now.digest)))
                .collect();
            let record =
                host.add_tool_file_with_contract(&file, name.as_deref(), contract.as_deref());
            if terminal {
                eprintln!(" {:.1}s", started.elapsed().as_secs_f64());
            }
            let record = record?;
            tracing::info!(name = %record.name, digest = %record.digest, kind = kind_name(&record), "tool added");
            if let Some(was) = names_before
                .get(&record.name)
                .filter(|d| **d != record.digest)
            {
                eprintln!(
                    "voidbox: name {} now points to {} (was {}; that tool stays available by its digest)",
                    record.name, record.digest, was
                );
            }
            outln!("{}  {} {}", record.digest, record.name, record.version);
            Ok(exit::OK)
        }
        ToolCmd::List { json } => {
            let tools = host.tools()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&tools).expect("json"));
            } else if tools.is_empty() {
                outln!("no tools; add one with `voidbox tool add FILE.wasm`");
            } else {
                for t in tools {
                    outln!(
                        "{:<16} {:<8} {:<8} {:>9}  {}",
                        t.name,
                        t.version,
                        kind_name(&t),
                        t.size_bytes,
                        t.digest
                    );
                }
            }
            Ok(exit::OK)
        }
        ToolCmd::Inspect { tool, json } => {
            let t = host.tool(&tool)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&t).expect("json"));
                return Ok(exit::OK);
            }
            outln!("name:        {}", t.name);
            outln!("digest:      {}", t.digest);
            outln!("kind:        {}", kind_name(&t));
            outln!("version:     {}", t.version);
            outln!("description: {}", t.description);
            outln!("size:        {} bytes", t.size_bytes);
            outln!(
                "contract:    {}",
                t.contract
                    .as_deref()
                    .map(str::trim)
                    .unwrap_or("(none declared)")
            );
            if let Some(info) = &t.info {
                if let Some(s) = &info.input_schema {
                    outln!("input:       {s}");
                }
                if let Some(s) = &info.output_schema {
                    outln!("output:      {s}");
                }
            }
            outln!("exports:");
            for e in &t.exports {
                outln!("  {e}");
            }
            outln!("imports:");
            for i in &t.imports {
                outln!("  {i}");
            }
            Ok(exit::OK)
        }
        ToolCmd::Rm { tool } => {
            let t = host.remove_tool(&tool)?;
            outln!(
                "removed {} ({}); run `voidbox cas gc` to free its blob",
                t.name,
                t.digest
            );
            Ok(exit::OK)
        }
    }
}

fn kind_name(t: &ToolRecord) -> &'static str {
    match t.kind {
        voidbox::ToolKind::Tool => "tool",
        voidbox::ToolKind::Command => "command",
    }
}

/// Reads an input with no size limit of its own (the `--cluster` forms,
/// whose replicas apply theirs).
fn read_input(spec: Option<&str>) -> Result<Vec<u8>, Failure> {
    read_input_max(spec, u64::MAX)
}

/// Reads an input (`-` for stdin), refusing one over `max` bytes before it
/// is read whole: a file by its length first, and any input by reading at
/// most `max + 1` bytes, so an oversized input never sits in memory.
fn read_input_max(spec: Option<&str>, max: u64) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    match spec {
        None => return Ok(buf),
        Some("-") => {
            std::io::stdin()
                .lock()
                .take(max.saturating_add(1))
                .read_to_end(&mut buf)
                .map_err(|e| fail(exit::BAD_REQUEST, format!("cannot read stdin: {e}")))?;
            if buf.len() as u64 > max {
                return Err(fail(
                    exit::BAD_REQUEST,
                    format!(
                        "the input on stdin is over the limit of {max} bytes; raise \
                         `input_bytes_max` in voidbox.toml or use a smaller input"
                    ),
                ));
            }
        }
        Some(path) => {
            let cannot = |e: std::io::Error| {
                fail(
                    exit::BAD_REQUEST,
                    format!(
                        "cannot read input file {path}: {e}; give an existing file or - for stdin"
                    ),
                )
            };
            let file = std::fs::File::open(path).map_err(cannot)?;
            // A regular file's length is known before reading; pipes and
            // devices are caught by the bounded read below.
            let len = file.metadata().map_err(cannot)?.len();
            if len > max {
                return Err(Error::InputTooLarge { size: len, max }.into());
            }
            file.take(max.saturating_add(1))
                .read_to_end(&mut buf)
                .map_err(cannot)?;
            if buf.len() as u64 > max {
                return Err(Error::InputTooLarge {
                    size: buf.len() as u64,
                    max,
                }
                .into());
            }
        }
    }
    Ok(buf)
}

/// The input of `voidbox schedule`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    invocations: Vec<voidbox_ising::placement::Invocation>,
    executors: Vec<voidbox_ising::placement::Executor>,
    #[serde(default)]
    weights: Option<voidbox_ising::placement::Weights>,
}

fn schedule(file: &std::path::Path, json: bool, seed: u64) -> Result<u8, Failure> {
    use voidbox_ising::placement::{place, PlacementParams, PlacementProblem};
    let text = std::fs::read_to_string(file).map_err(|e| {
        fail(
            exit::BAD_REQUEST,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let batch: ScheduleFile = serde_json::from_str(&text).map_err(|e| {
        fail(
            exit::BAD_REQUEST,
            format!(
                "{}: {e}; see tests/data/schedule-example.json for the format",
                file.display()
            ),
        )
    })?;
    let problem = PlacementProblem::new(
        batch.invocations,
        batch.executors,
        batch.weights.unwrap_or_default(),
    )
    .map_err(|e| fail(exit::BAD_REQUEST, format!("{}: {e}", file.display())))?;
    let params = PlacementParams {
        seed,
        ..PlacementParams::default()
    };
    let placement = place(&problem, &params)
        .map_err(|e| fail(exit::BAD_REQUEST, format!("{}: {e}", file.display())))?;
    let explanation = placement.explain(&problem);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&explanation).expect("json")
        );
    } else {
        out!("{explanation}");
    }
    Ok(exit::OK)
}

fn parse_caveats(texts: &[String]) -> Result<Vec<voidbox::auth::Caveat>, Failure> {
    texts
        .iter()
        .map(|c| {
            c.parse().map_err(|e| {
                fail(
                    exit::BAD_REQUEST,
                    format!("caveat `{c}`: {e}; caveats look like `fuel <= 1000000` or `tool-name = wc`"),
                )
            })
        })
        .collect()
}

fn token(host: &Host, cmd: TokenCmd) -> Result<u8, Failure> {
    match cmd {
        TokenCmd::Mint { tenant, caveats } => {
            outln!("{}", host.mint_token(&tenant, &parse_caveats(&caveats)?)?);
        }
        TokenCmd::Attenuate { token, caveats } => {
            let (child, verdict) = host.attenuate_token(&token, &parse_caveats(&caveats)?)?;
            outln!("{child}");
            eprintln!("{verdict}");
        }
        TokenCmd::Inspect { token } => {
            let t = voidbox::auth::Token::decode(&token)
                .map_err(|e| fail(exit::BAD_REQUEST, format!("the token cannot be read: {e}")))?;
            for line in voidbox::auth::inspect(&t) {
                outln!("{line}");
            }
        }
        TokenCmd::Verify { token, tool, input } => {
            let tool = host.tool(&tool)?;
            // Checking stores nothing: the input is only named by digest.
            let bytes = read_input_max(input.as_deref(), host.config().defaults.input_bytes_max)?;
            let inv =
                Invocation::new(tool.digest, Digest::of(&bytes)).budget(host.default_budget());
            let (auth, effective) = match host.authorize_sized(&token, &inv, bytes.len() as u64) {
                // The budget checked is voidbox.toml's: no flags here.
                Err(Error::NotAdmitted(why)) => {
                    return Err(not_admitted(&why, &inv.budget, [false; 3], &token))
                }
                other => other?,
            };
            let b = effective.budget;
            outln!(
                "allowed: {} may run {} with fuel {}, memory {} bytes, output {} bytes{}",
                auth.token_id,
                tool.name,
                b.fuel,
                b.memory_bytes,
                b.output_bytes,
                match auth.uses_limit {
                    Some(n) => format!(", at most {n} uses in all"),
                    None => String::new(),
                }
            );
        }
        TokenCmd::Revoke { token } => {
            let id = host.revoke_token(&token)?;
            outln!("revoked {id} and every token narrowed from it");
        }
        TokenCmd::ThirdPartyKey => {
            let key = voidbox::auth::ThirdPartyKey::generate(&mut voidbox::auth::OsEntropy);
            outln!("{}", hex(key.as_bytes()));
        }
        TokenCmd::Require { token, third_party } => {
            let ThirdPartyArgs {
                location,
                third_party_key,
                caveat_id,
            } = third_party;
            let key = third_party_key_from_hex(&third_party_key)?;
            let t = decode_token(&token)?;
            let narrowed = t
                .add_third_party_caveat(&location, &key.caveat_key(&caveat_id), &caveat_id)
                .map_err(|e| fail(exit::BAD_REQUEST, e.to_string()))?;
            outln!("{}", narrowed.encode());
        }
        TokenCmd::Discharge {
            for_token,
            third_party,
            caveats,
        } => {
            let ThirdPartyArgs {
                location,
                third_party_key,
                caveat_id,
            } = third_party;
            let key = third_party_key_from_hex(&third_party_key)?;
            let t = decode_token(&for_token)?;
            let discharge = voidbox::auth::Discharge::create(
                &location,
                &key.caveat_key(&caveat_id),
                &caveat_id,
                &parse_caveats(&caveats)?,
            )
            .map_err(|e| fail(exit::BAD_REQUEST, e.to_string()))?;
            let bound = t
                .bind(&discharge)
                .map_err(|e| fail(exit::BAD_REQUEST, e.to_string()))?;
            outln!("{}", voidbox::auth::encode_bundle(&t, &[bound]));
        }
    }
    Ok(exit::OK)
}

fn decode_token(text: &str) -> Result<voidbox::auth::Token, Failure> {
    voidbox::auth::Token::decode(text)
        .map_err(|e| fail(exit::BAD_REQUEST, format!("the token cannot be read: {e}")))
}

fn third_party_key_from_hex(text: &str) -> Result<voidbox::auth::ThirdPartyKey, Failure> {
    let bytes: Option<Vec<u8>> = (text.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten();
    match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        Some(b) => Ok(voidbox::auth::ThirdPartyKey::from_bytes(b)),
        None => Err(fail(
            exit::BAD_REQUEST,
            "the third-party key must be 64 hex digits; make one with `voidbox token third-party-key`",
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(host: &Host, a: RunArgs) -> Result<u8, Failure> {
    let tool = host.tool(&a.tool)?;
    let token = match &a.token {
        Some(t) => t.clone(),
        None => host.owner_token()?,
    };
    let input_bytes = read_input_max(a.input.as_deref(), host.config().defaults.input_bytes_max)?;
    // Named by digest now, stored only if the token allows the run.
    let input = Digest::of(&input_bytes);
    let inv = invocation_of(&a, tool.digest, input, host.default_budget())?;
    let receipt = match host.run_with_token(&token, &inv, &input_bytes) {
        Err(Error::NotAdmitted(why)) => {
            let given = [
                a.fuel.is_some(),
                a.memory.is_some(),
                a.output_limit.is_some(),
            ];
            return Err(not_admitted(&why, &inv.budget, given, &token));
        }
        other => other?,
    };
    host.flush()?;
    tracing::info!(
        tool = %tool.name,
        invocation = %receipt.invocation,
        outcome = receipt.outcome.name(),
        fuel_used = receipt.fuel_used,
        duration_us = receipt.duration_us,
        cached = receipt.cached,
        "invocation ran"
    );
    if receipt.cached {
        tracing::debug!(receipt = %receipt.receipt, "answered from the action cache, nothing ran");
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&receipt).expect("json"));
    } else if let Some(output) = host.output(&receipt)? {
        // A reader that stopped early does not change how the run ended.
        match write_stdout(&output) {
            Err(f) if f.code == Failure::BROKEN_PIPE && f.message.is_empty() => {}
            other => other?,
        }
    }
    report_outcome(host, &receipt)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|_| stdout.flush())
        .map_err(stdout_failure)
}

/// Checks an `--arg` while clap parses the command line, so that a bad one
/// is a command-line error (exit 2) before anything is opened or read.
fn key_value(text: &str) -> Result<String, String> {
    if text.contains('=') {
        Ok(text.to_string())
    } else {
        Err(format!(
            "expected KEY=VALUE, e.g. `--arg query=.items` (use an empty key, `--arg ={text}`, for a positional argument)"
        ))
    }
}

/// The invocation `voidbox run` asks for: the flags over `budget`.
fn invocation_of(
    a: &RunArgs,
    tool: Digest,
    input: Digest,
    mut budget: Budget,
) -> Result<Invocation, Failure> {
    budget.fuel = a.fuel.unwrap_or(budget.fuel);
    budget.memory_bytes = a.memory.unwrap_or(budget.memory_bytes);
    budget.output_bytes = a.output_limit.unwrap_or(budget.output_bytes);
    if let Some(ms) = a.timeout {
        budget.timeout = Duration::from_millis(ms);
    }
    let mut inv = Invocation::new(tool, input).budget(budget);
    for kv in &a.args {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            fail(
                exit::BAD_COMMAND_LINE,
                format!("--arg {kv}: expected KEY=VALUE (use an empty key, =VALUE, for a positional argument)"),
            )
        })?;
        inv = inv.arg(k, v);
    }
    for g in &a.grants {
        inv = inv.grant(g.parse().map_err(Error::from)?);
    }
    inv.time_unix_ns = a.time.unwrap_or(0).saturating_mul(1_000_000_000);
    Ok(inv)
}

/// The resources a contract bounds, as admission names them, with the
/// flag and the voidbox.toml key that set each in a run's request.
const BUDGET_SOURCES: [(&str, &str, &str); 3] = [
    ("fuel", "--fuel", "fuel"),
    ("memory_bytes", "--memory", "memory_bytes"),
    ("output_bytes", "--output-limit", "output_bytes"),
];

/// A "not admitted" error that names where the limit that was exceeded
/// came from. A run's budget is the smaller of what it asks (a flag, else
/// voidbox.toml's [defaults]) and what its token's caveats allow;
/// admission only sees the result ("the budget's").
/// `flag_given` says, in [`BUDGET_SOURCES`] order, which limits a flag set.
fn not_admitted(why: &str, asked: &Budget, flag_given: [bool; 3], token: &str) -> Failure {
    let resource = why
        .split(" may need ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    let Some(i) = resource.and_then(|r| BUDGET_SOURCES.iter().position(|(n, ..)| *n == r)) else {
        return Error::NotAdmitted(why.to_string()).into();
    };
    let (name, flag, key) = BUDGET_SOURCES[i];
    let asked = [asked.fuel, asked.memory_bytes, asked.output_bytes][i];
    // The token's tightest caveat on the resource, from the token and its
    // discharges (the host has already verified them).
    let caveat_limit = voidbox::auth::decode_bundle(token)
        .ok()
        .and_then(|(t, discharges)| {
            t.caveats()
                .into_iter()
                .chain(discharges.iter().flat_map(|d| d.caveats()))
                .filter_map(|entry| match (i, entry) {
                    (
                        0,
                        voidbox::auth::CaveatEntry::FirstParty(Ok(voidbox::auth::Caveat::Fuel(n))),
                    )
                    | (
                        1,
                        voidbox::auth::CaveatEntry::FirstParty(Ok(voidbox::auth::Caveat::Memory(
                            n,
                        ))),
                    )
                    | (
                        2,
                        voidbox::auth::CaveatEntry::FirstParty(Ok(
                            voidbox::auth::Caveat::OutputBytes(n),
                        )),
                    ) => Some(n),
                    _ => None,
                })
                .min()
        });
    let fix = match caveat_limit {
        Some(limit) if limit < asked => format!(
            "the {name} limit is the token's caveat ({limit}); use a token that allows more, or a smaller input"
        ),
        _ => {
            let source = if flag_given[i] {
                format!("{flag} {asked}")
            } else {
                format!("`{key} = {asked}` in voidbox.toml's [defaults]")
            };
            format!("the {name} limit comes from {source}: ask for more with {flag} (or raise `{key}` in voidbox.toml), or give a smaller input")
        }
    };
    fail(exit::NOT_ADMITTED, format!("not admitted: {why}; {fix}"))
}

/// The exit code of an outcome.
fn outcome_code(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Ok => exit::OK,
        Outcome::ToolError { .. } => exit::TOOL_ERROR,
        Outcome::Trap { .. } => exit::TRAP,
        Outcome::OutOfFuel => exit::OUT_OF_FUEL,
        Outcome::MemoryLimit => exit::MEMORY_LIMIT,
        Outcome::OutputTooLarge { .. } => exit::OUTPUT_TOO_LARGE,
        Outcome::Timeout => exit::TIMEOUT,
        Outcome::ContractViolation { .. } => exit::CONTRACT_VIOLATION,
    }
}

fn report_outcome(host: &Host, receipt: &Receipt) -> Result<u8, Failure> {
    let code = outcome_code(&receipt.outcome);
    if code == exit::OK {
        return Ok(code);
    }
    let detail = receipt
        .diagnostics
        .and_then(|d| host.blobs().get(&d).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| diagnostic_line(&v));
    eprintln!(
        "voidbox: {}: {}{} (receipt {})",
        receipt.outcome.name(),
        receipt.outcome.describe(),
        detail.map(|d| format!(" [{d}]")).unwrap_or_default(),
        receipt.receipt
    );
    Ok(code)
}

/// The most useful line of a failed run's diagnostics (`{"stderr": …,
/// "logs": [{"level", "message"}]}`): a panic's message (the line after
/// "panicked at …:", not the "note: run with RUST_BACKTRACE=1" that Rust
/// prints last), else the last error the tool logged, else the last line
/// of stderr that is not such a note.
fn diagnostic_line(diagnostics: &serde_json::Value) -> Option<String> {
    let stderr = diagnostics["stderr"].as_str().unwrap_or("");
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_note = |l: &&str| l.starts_with("note: ");
    if let Some(at) = lines.iter().position(|l| l.contains(" panicked at ")) {
        // Since Rust 1.73 the message follows the location on its own
        // line(s); before, it was inside the location line.
        let message = lines[at + 1..].iter().find(|l| !is_note(l));
        return Some(format!("panic: {}", message.unwrap_or(&lines[at])));
    }
    let logged_error = diagnostics["logs"].as_array().and_then(|logs| {
        logs.iter()
            .rev()
            .find(|l| l["level"] == "error")
            .and_then(|l| l["message"].as_str())
    });
    if let Some(message) = logged_error {
        return Some(format!("log: {message}"));
    }
    lines
        .iter()
        .rev()
        .find(|l| !is_note(l))
        .map(|l| format!("stderr: {l}"))
}

fn cas(host: &Host, cmd: CasCmd) -> Result<u8, Failure> {
    let blobs = host.blobs();
    let digest = |s: &str| -> Result<Digest, Failure> { Ok(s.parse().map_err(Error::from)?) };
    match cmd {
        CasCmd::Put { file, cluster: _ } => {
            let (d, len) = if file == "-" {
                blobs
                    .put_reader(&mut std::io::stdin().lock())
                    .map_err(Error::from)?
            } else {
                let mut f = std::fs::File::open(&file).map_err(|e| {
                    fail(
                        exit::BAD_REQUEST,
                        format!("cannot open {file}: {e}; give an existing file or - for stdin"),
                    )
                })?;
                blobs.put_reader(&mut f).map_err(Error::from)?
            };
            // Only the digest on stdout, so that `cas get $(cas put f)`
            // works, as with the --cluster form.
            outln!("{d}");
            eprintln!("stored {len} bytes");
        }
        CasCmd::Get {
            digest: d,
            output,
            cluster: _,
        } => {
            let d = digest(&d)?;
            match output {
                Some(path) => {
                    blobs.get_to_file(&d, &path).map_err(Error::from)?;
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    match blobs.copy_to(&d, &mut lock) {
                        Err(voidbox::CasError::Output { source, .. })
                            if source.kind() == std::io::ErrorKind::BrokenPipe =>
                        {
                            return Err(Failure::broken_pipe())
                        }
                        other => other.map_err(Error::from)?,
                    };
                    lock.flush().map_err(stdout_failure)?;
                }
            }
        }
        CasCmd::Ls { json } => {
            let list = blobs.list().map_err(Error::from)?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(d, n)| serde_json::json!({"digest": d, "bytes": n}))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                for (d, n) in list {
                    outln!("{d}  {n}");
                }
            }
        }
        CasCmd::Verify => {
            let report = blobs.verify_all().map_err(Error::from)?;
            // verify re-hashes every stored copy: a small blob recorded in
            // more than one checkpoint has a row in each, while `cas ls`
            // lists each digest once. Say both, so the counts agree.
            let distinct = blobs.list().map_err(Error::from)?.len() as u64;
            outln!("{}", verify_summary(distinct, report.checked, report.bytes));
            for path in &report.stray_files {
                outln!(
                    "STRAY {}: not a blob's file, left alone; remove it if nothing else put it there",
                    path.display()
                );
            }
            if !report.corrupt.is_empty() {
                for (d, what) in &report.corrupt {
                    outln!("CORRUPT {d}: {what}");
                }
                return Err(fail(
                    exit::CORRUPT,
                    format!(
                        "{} corrupt blob(s); remove each with `voidbox cas rm DIGEST` and add the original content again",
                        report.corrupt.len()
                    ),
                ));
            }
            outln!("all blobs intact");
        }
        CasCmd::Gc => {
            let r = host.gc()?;
            outln!(
                "kept {}, removed {} blobs, freed {} bytes",
                r.kept,
                r.removed,
                r.bytes_freed
            );
        }
        CasCmd::Pin { digest: d } => blobs.pin(&digest(&d)?).map_err(Error::from)?,
        CasCmd::Unpin { digest: d } => {
            blobs.unpin(&digest(&d)?).map_err(Error::from)?;
        }
        CasCmd::Rm { digest: d } => {
            let d = digest(&d)?;
            if !blobs.remove(&d).map_err(Error::from)? {
                return Err(fail(exit::BAD_REQUEST, format!("no blob {d} in the store")));
            }
        }
    }
    Ok(exit::OK)
}

/// The first line of `cas verify`: the number of blobs as `cas ls` counts
/// them, and the stored copies re-hashed when there are more.
fn verify_summary(blobs: u64, copies: u64, bytes: u64) -> String {
    if copies == blobs {
        format!("checked {blobs} blobs ({bytes} bytes)")
    } else {
        format!(
            "checked {blobs} blobs in {copies} stored copies ({bytes} bytes; a small blob stored by several invocations can have a copy in each checkpoint of the database)"
        )
    }
}

fn bench(args: BenchArgs) -> Result<u8, Failure> {
    let tool = match args.tool {
        Some(t) => t,
        None => voidbox::bench::default_tool_path().ok_or_else(|| {
            fail(
                exit::BAD_REQUEST,
                "no echo tool found; build the tools with `cargo xtask tools` or pass --tool FILE.wasm",
            )
        })?,
    };
    use voidbox::bench::Part;
    let parts = match args.only.as_deref() {
        Some("invoke") => vec![Part::Invoke],
        Some("cas") => vec![Part::Cas],
        _ => vec![Part::Invoke, Part::Cas],
    };
    let report = voidbox::bench::run(&tool, Duration::from_secs_f64(args.seconds), &parts)
        .map_err(|e| fail(exit::INTERNAL, format!("benchmark failed: {e:#}")))?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).expect("json")
        );
    } else {
        out!("{}", report.table());
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message admission gives (its exact text, so that a change to
    /// it breaks this test rather than the source named below).
    fn counterexample(resource: voidbox::contract::admit::Resource, limit: u64) -> String {
        voidbox::contract::admit::Counterexample {
            resource,
            input_bytes: 5,
            args_bytes: 0,
            mentions_args: false,
            needed: 2_000_000,
            unbounded: false,
            exact: true,
            limit,
            clauses: vec![],
        }
        .to_string()
    }

    #[test]
    fn not_admitted_names_where_the_exceeded_limit_came_from() {
        use voidbox::contract::admit::Resource;
        let asked = Budget {
            fuel: 10,
            memory_bytes: 1 << 20,
            output_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
        };
        let why = counterexample(Resource::Fuel, 10);
        assert!(why.ends_with(" > the budget's 10"), "{why}");
        let no_token = "";
        let flag = not_admitted(&why, &asked, [true, false, false], no_token).message;
        assert!(flag.contains("fuel 2,000,000 > the budget's 10;"), "{flag}");
        assert!(flag.contains("comes from --fuel 10"), "{flag}");
        let config = not_admitted(&why, &asked, [false; 3], no_token).message;
        assert!(config.contains("`fuel = 10` in voidbox.toml"), "{config}");
        assert!(!config.contains("token's"), "{config}");
        let why = counterexample(Resource::OutputBytes, 1 << 20);
        let output = not_admitted(&why, &asked, [false, false, true], no_token).message;
        assert!(
            output.contains("comes from --output-limit 1048576"),
            "{output}"
        );
    }

    #[test]
    fn a_panic_shows_its_message_not_the_backtrace_note() {
        let diag = serde_json::json!({
            "logs": [{"level": "error", "message": "tool panicked at src/lib.rs:22:9: boom"}],
            "stderr": "\nthread '<unnamed>' (1) panicked at src/lib.rs:22:9:\nhostile-panic: panicking on purpose\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        });
        assert_eq!(
            diagnostic_line(&diag).as_deref(),
            Some("panic: hostile-panic: panicking on purpose")
        );
    }

    #[test]
    fn without_a_panic_a_logged_error_then_the_last_stderr_line() {
        let logged = serde_json::json!({
            "logs": [{"level": "info", "message": "starting"}, {"level": "error", "message": "bad header"}],
            "stderr": "note: something\n",
        });
        assert_eq!(diagnostic_line(&logged).as_deref(), Some("log: bad header"));
        let plain = serde_json::json!({"logs": [], "stderr": "first\nlast words\n\n"});
        assert_eq!(
            diagnostic_line(&plain).as_deref(),
            Some("stderr: last words")
        );
        assert_eq!(diagnostic_line(&serde_json::json!({"stderr": ""})), None);
    }
}
