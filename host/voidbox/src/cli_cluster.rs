//! `voidbox cluster …` and the `--cluster` forms of `tool add`, `cas put`,
//! `run` and `receipt verify`: glue over `voidbox::cluster`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Subcommand;
use voidbox::cluster::wire::{Op, OpResult, Status as ReplicaStatus, ToolSummary, SIDE_BLOB_MAX};
use voidbox::cluster::{init_cluster_with, ClusterClient, ClusterFile, InitOptions, SignedReceipt};
use voidbox::{Budget, Digest, Invocation};

use super::{
    exit, fail, invocation_of, outcome_code, read_input, read_input_max, write_stdout, Failure,
    RunArgs,
};

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCmd {
    /// Write keys, data directories and DIR/cluster.toml for a new cluster.
    Init {
        /// Where to put it.
        dir: PathBuf,
        /// How many replicas: 3f + 1 (4 tolerates one fault).
        #[arg(long, default_value_t = 4)]
        replicas: u32,
        /// Replica i listens on 127.0.0.1:(base-port + i).
        #[arg(long, default_value_t = 7420)]
        base_port: u16,
        /// Do not sync the protocol log (for measurements only: a crash can
        /// then lose what a replica promised).
        #[arg(long)]
        no_fsync: bool,
        /// Run a batch of at least this many requests on only f + 1
        /// replicas, the others adopting the results f + 1 sign alike (0:
        /// every replica runs every batch).
        #[arg(long, default_value_t = voidbox::cluster::PARTIAL_EXECUTION_MIN)]
        partial_execution_min: usize,
    },
    /// Start every replica as its own process on loopback and wait until
    /// each answers.
    Up {
        /// The cluster directory (or its cluster.toml).
        dir: PathBuf,
    },
    /// Show each replica's view, progress and counters.
    Status {
        /// The cluster directory (or its cluster.toml).
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stop the replicas `cluster up` started.
    Down {
        /// The cluster directory (or its cluster.toml).
        dir: PathBuf,
    },
    /// Measure the running cluster: one closed-loop client; a sweep of
    /// client counts (doubling, then halfway between the last count within
    /// the bound and the first over it) to find the highest throughput whose
    /// p99 latency stays within a bound, measured again for the whole
    /// duration (if that run breaks the bound, a count halfway down to the
    /// next fastest, then that one; after one within it, halfway back up,
    /// up to four runs); then `--clients` clients.
    Bench {
        /// The cluster directory (or its cluster.toml).
        dir: PathBuf,
        /// A tool already added with `tool add --cluster` (name or digest).
        #[arg(long, default_value = "echo")]
        tool: String,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Concurrent closed-loop clients in the throughput phase.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// The p99 latency bound of the sweep, in milliseconds.
        #[arg(long, default_value_t = 10.0)]
        p99_ms: f64,
        /// Seconds per client count of the sweep (0: no sweep).
        #[arg(long, default_value_t = 8.0)]
        sweep_seconds: f64,
        /// Each invocation's fuel (default: the default budget's). With the
        /// `loop` tool, which spins until its fuel runs out, this sets what
        /// a run costs.
        #[arg(long)]
        fuel: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

fn cluster_file(dir: &Path) -> Result<ClusterFile, Failure> {
    Ok(ClusterFile::load(dir)?)
}

fn pid_file(file: &ClusterFile, id: u32) -> Result<PathBuf, Failure> {
    Ok(file.home_of(id)?.join("replica.pid"))
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Whether `pid` is a live `voidbox replica` process for replica `id`, not
/// whatever process reuses the number of one that is gone (a pid file
/// outlives a reboot).
fn running_replica(pid: u32, id: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let id = id.to_string();
    alive(pid)
        && args.get(1) == Some(&&b"replica"[..])
        && args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(crate) fn dispatch(cmd: ClusterCmd) -> Result<u8, Failure> {
    match cmd {
        ClusterCmd::Init {
            dir,
            replicas,
            base_port,
            no_fsync,
            partial_execution_min,
        } => {
            let options = InitOptions {
                fsync: !no_fsync,
                partial_execution_min,
            };
            let made = init_cluster_with(&dir, replicas, base_port, &options)?;
            outln!(
                "Created a cluster of {} replicas (f = {}) in {}",
                made.cluster.n(),
                made.cluster.f,
                dir.display()
            );
            for r in &made.cluster.replicas {
                outln!("  replica {} at {} ({})", r.id, r.address, r.home.display());
            }
            outln!("Start it with `voidbox cluster up {}`", dir.display());
            Ok(exit::OK)
        }
        ClusterCmd::Up { dir } => up(&cluster_file(&dir)?),
        ClusterCmd::Status { dir, json } => status(&cluster_file(&dir)?, json),
        ClusterCmd::Down { dir } => down(&cluster_file(&dir)?),
        ClusterCmd::Bench {
            dir,
            tool,
            seconds,
            clients,
            p99_ms,
            sweep_seconds,
            fuel,
            json,
        } => bench(
            &cluster_file(&dir)?,
            &tool,
            &BenchPlan {
                duration: Duration::from_secs_f64(seconds),
                clients,
                p99_bound_us: p99_ms * 1000.0,
                sweep: Duration::from_secs_f64(sweep_seconds),
                fuel,
            },
            json,
        ),
    }
}

fn up(file: &ClusterFile) -> Result<u8, Failure> {
    let exe = std::env::current_exe().map_err(|e| {
        fail(
            exit::INTERNAL,
            format!("cannot find the voidbox binary: {e}"),
        )
    })?;
    let cluster_toml = file.dir.join(voidbox::cluster::CLUSTER_FILE);
    // The replicas started now, to notice one that exits at once (its port
    // taken, its database held) instead of waiting for it to answer.
    let mut started: Vec<(u32, std::process::Child, PathBuf)> = Vec::new();
    // The process each replica must be: a status answer from another
    // process on its address (another cluster given the same ports) does
    // not count as the replica being up.
    let mut expected: BTreeMap<u32, u32> = BTreeMap::new();
    for r in &file.replicas {
        let pid_path = pid_file(file, r.id)?;
        if let Some(pid) = read_pid(&pid_path).filter(|p| running_replica(*p, r.id)) {
            outln!("replica {} already running (pid {pid})", r.id);
            expected.insert(r.id, pid);
            continue;
        }
        let home = file.home_of(r.id)?;
        let log_path = home.join("replica.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(exit::STORAGE, format!("{}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| fail(exit::STORAGE, format!("{}: {e}", log_path.display())))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("replica")
            .arg("--cluster")
            .arg(&cluster_toml)
            .arg("--id")
            .arg(r.id.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        {
            // Its own process group: a Ctrl-C at the terminal that ran
            // `cluster up` does not stop the cluster.
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|e| {
            fail(
                exit::INTERNAL,
                format!("cannot start replica {}: {e}", r.id),
            )
        })?;
        std::fs::write(&pid_path, child.id().to_string())
            .map_err(|e| fail(exit::STORAGE, format!("{}: {e}", pid_path.display())))?;
        outln!(
            "replica {} starting: pid {}, {}, log {}",
            r.id,
            child.id(),
            r.address,
            log_path.display()
        );
        expected.insert(r.id, child.id());
        started.push((r.id, child, log_path));
    }
    let client = ClusterClient::connect(&file.dir)?;
    let start = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    // Why replicas are not up: one exited (what its log said), or another
    // process answers on its address.
    let mut failures: BTreeMap<u32, String> = BTreeMap::new();
    // Replicas whose address another process answered (its pid).
    let mut impostors: BTreeMap<u32, u32> = BTreeMap::new();
    while seen.len() + failures.len() < file.replicas.len()
        && start.elapsed() < Duration::from_secs(30)
    {
        started.retain_mut(|(id, child, log)| match child.try_wait() {
            Ok(Some(status)) => {
                failures.insert(
                    *id,
                    format!(
                        "replica {id} exited at once ({status}); the end of {}:\n{}",
                        log.display(),
                        log_tail(log, 5)
                    ),
                );
                false
            }
            _ => true,
        });
        for (id, s) in client.status(Duration::from_millis(300)) {
            if expected.get(&id) != Some(&s.pid) {
                impostors.insert(id, s.pid);
                continue;
            }
            if seen.insert(id) {
                outln!(
                    "replica {id} up after {:.1}s: view {}{}, executed seq {}",
                    start.elapsed().as_secs_f64(),
                    s.view,
                    if s.primary { " (primary)" } else { "" },
                    s.last_executed
                );
            }
        }
    }
    // Another process on the address is the reason only for a replica
    // that neither came up nor exited (one that exited said why).
    for (id, pid) in &impostors {
        if !seen.contains(id) && !failures.contains_key(id) {
            let message = format!(
                "replica {id}'s address {} is answered by another process (pid {pid}), not by \
                 this cluster's replica {id}: another cluster or program uses the port; stop it, \
                 or give this cluster other ports with `voidbox cluster init --base-port`",
                file.replicas
                    .iter()
                    .find(|r| r.id == *id)
                    .map_or_else(String::new, |r| r.address.to_string())
            );
            failures.insert(*id, message);
        }
    }
    if !failures.is_empty() {
        let messages: Vec<String> = failures.into_values().collect();
        return Err(fail(exit::CLUSTER, messages.join("\n")));
    }
    if seen.len() < file.replicas.len() {
        let missing: Vec<String> = file
            .replicas
            .iter()
            .filter(|r| !seen.contains(&r.id))
            .map(|r| r.id.to_string())
            .collect();
        return Err(fail(
            exit::CLUSTER,
            format!(
                "replica(s) {} did not answer within 30 s; see their replica.log",
                missing.join(", ")
            ),
        ));
    }
    outln!(
        "cluster up: {} replicas, f = {}",
        file.replicas.len(),
        file.f
    );
    Ok(exit::OK)
}

/// The last `lines` lines of a log file, indented (or why it is unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("  (cannot read it: {e})"),
    }
}

fn status(file: &ClusterFile, json: bool) -> Result<u8, Failure> {
    let client = ClusterClient::connect(&file.dir)?;
    let mut statuses = client.status(Duration::from_secs(1));
    // An answer from a process other than the one `cluster up` started
    // for that replica is another cluster (or program) on its port: that
    // replica of this cluster is not up.
    for r in &file.replicas {
        let recorded = pid_file(file, r.id).ok().and_then(|p| read_pid(&p));
        if let (Some(s), Some(pid)) = (statuses.get(&r.id), recorded) {
            if s.pid != pid {
                eprintln!(
                    "voidbox: replica {}'s address {} is answered by pid {}, not by pid {pid} \
                     that `cluster up` started for it: another cluster or program uses the \
                     port; counted as down",
                    r.id, r.address, s.pid
                );
                statuses.remove(&r.id);
            }
        }
    }
    if json {
        let v: Vec<_> = file
            .replicas
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "address": r.address.to_string(),
                    "up": statuses.contains_key(&r.id),
                    "status": statuses.get(&r.id),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        outln!(
            "{:<8} {:<22} {:<6} {:>6} {:>10} {:>10} {:>10} {:>9}",
            "replica",
            "address",
            "state",
            "view",
            "executed",
            "stable",
            "requests",
            "rejected"
        );
        for r in &file.replicas {
            match statuses.get(&r.id) {
                Some(s) => outln!(
                    "{:<8} {:<22} {:<6} {:>6} {:>10} {:>10} {:>10} {:>9}",
                    r.id,
                    r.address.to_string(),
                    if s.primary {
                        "prim"
                    } else if s.view_active {
                        "up"
                    } else {
                        "vchg"
                    },
                    s.view,
                    s.last_executed,
                    s.stable,
                    s.executed_requests,
                    s.rejected + s.transport_refused
                ),
                None => outln!("{:<8} {:<22} down", r.id, r.address.to_string()),
            }
        }
    }
    let up = statuses.len();
    let quorum = (2 * file.f + 1) as usize;
    if up < quorum {
        eprintln!(
            "voidbox: only {up} of {} replicas answer; the cluster needs {quorum} to make progress (`voidbox cluster up`)",
            file.n()
        );
        return Ok(exit::CLUSTER);
    }
    Ok(exit::OK)
}

fn down(file: &ClusterFile) -> Result<u8, Failure> {
    let mut stopping = Vec::new();
    for r in &file.replicas {
        let path = pid_file(file, r.id)?;
        match read_pid(&path) {
            Some(pid) if running_replica(pid, r.id) => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
                stopping.push((r.id, pid, path));
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let start = Instant::now();
    for (id, pid, path) in stopping {
        while alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            outln!("replica {id} (pid {pid}) did not stop; killed");
        } else {
            outln!("replica {id} (pid {pid}) stopped");
        }
        let _ = std::fs::remove_file(&path);
    }
    Ok(exit::OK)
}

pub(crate) fn tool_add(
    cluster: &Path,
    file: &Path,
    name: Option<&str>,
    contract: Option<&Path>,
) -> Result<u8, Failure> {
    let wasm = std::fs::read(file).map_err(|e| {
        fail(
            exit::BAD_REQUEST,
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let contract = match contract {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            fail(
                exit::BAD_REQUEST,
                format!("cannot read contract file {}: {e}", p.display()),
            )
        })?),
        None => None,
    };
    let client = ClusterClient::connect(cluster)?;
    let tool = client
        .add_tool(&wasm, name, contract.as_deref())
        .map_err(|e| match e {
            voidbox::Error::Load(source) => voidbox::Error::BadComponent {
                path: file.to_path_buf(),
                source,
            },
            e => e,
        })?;
    outln!("{}  {} {}", tool.digest, tool.name, tool.version);
    Ok(exit::OK)
}

pub(crate) fn cas_put(cluster: &Path, bytes: &[u8]) -> Result<u8, Failure> {
    let client = ClusterClient::connect(cluster)?;
    outln!("{}", client.put_blob(bytes)?);
    Ok(exit::OK)
}

pub(crate) fn cas_get(
    cluster: &Path,
    digest: &Digest,
    output: Option<&Path>,
) -> Result<u8, Failure> {
    let client = ClusterClient::connect(cluster)?;
    let bytes = client.get_blob(digest)?;
    match output {
        Some(path) => std::fs::write(path, &bytes).map_err(|e| {
            fail(
                exit::STORAGE,
                format!(
                    "cannot write {}: {e}; check the path and its permissions",
                    path.display()
                ),
            )
        })?,
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(super::stdout_failure)?;
        }
    }
    Ok(exit::OK)
}

fn owner_token(file: &ClusterFile) -> Result<String, Failure> {
    let path = file.dir.join(voidbox::OWNER_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            fail(
                exit::BAD_REQUEST,
                format!(
                    "no token given and the owner token {} cannot be read: {e}; pass --token",
                    path.display()
                ),
            )
        })
}

pub(crate) fn run(a: RunArgs) -> Result<u8, Failure> {
    let path = a.cluster.clone().expect("called with --cluster");
    if a.timeout.is_some() {
        // Replicas would disagree on a run that one of them timed out.
        return Err(fail(
            exit::BAD_REQUEST,
            "--timeout is a local wall-clock guard and a cluster does not take it: every replica \
             must decide alike, so there runs are bounded by fuel; use --fuel instead"
                .to_string(),
        ));
    }
    let client = ClusterClient::connect(&path)?;
    let token = match &a.token {
        Some(t) => t.clone(),
        None => owner_token(client.file())?,
    };
    let tool = cluster_tool(&client, &a.tool)?;
    // The replicas take an input of at most one side frame's blob.
    let input = read_input_max(a.input.as_deref(), SIDE_BLOB_MAX as u64)?;
    let template = invocation_of(&a, tool.digest, Digest::of(&input), Budget::default())?;
    let signed = client.run(&token, &template, &input)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&signed).expect("json"));
    }
    result_code(&client, &signed, !a.json)
}

/// The cluster's tool by name or digest; a missing one is a bad request
/// whose message names the cluster form of `tool add`.
fn cluster_tool(client: &ClusterClient, reference: &str) -> Result<ToolSummary, Failure> {
    client.tool(reference).map_err(|e| match e {
        voidbox::Error::NoSuchTool(name) => fail(
            exit::BAD_REQUEST,
            format!(
                "the cluster has no tool named or with digest `{name}`; add it with \
                 `voidbox tool add --cluster {} FILE.wasm`",
                client.file().dir.display()
            ),
        ),
        e => e.into(),
    })
}

/// Prints the output (unless `quiet`) and maps the result to an exit code.
fn result_code(client: &ClusterClient, signed: &SignedReceipt, print: bool) -> Result<u8, Failure> {
    match &signed.result {
        OpResult::Receipt { receipt, .. } => {
            if print {
                if let Some(out) = client.output(signed)? {
                    write_stdout(&out)?;
                }
            }
            let code = outcome_code(&receipt.outcome);
            if code != exit::OK {
                eprintln!(
                    "voidbox: {}: {} (receipt {}, signed by replicas {:?})",
                    receipt.outcome.name(),
                    receipt.outcome.describe(),
                    receipt.receipt,
                    signed
                        .signatures
                        .iter()
                        .map(|s| s.replica)
                        .collect::<Vec<_>>()
                );
            }
            Ok(code)
        }
        OpResult::Denied { kind, message } => {
            let code = if kind == "not-admitted" {
                exit::NOT_ADMITTED
            } else {
                voidbox::auth::DeniedKind::ALL
                    .iter()
                    .find(|k| k.as_str() == kind)
                    .map(|k| k.exit_code())
                    .unwrap_or(exit::BAD_REQUEST)
            };
            eprintln!("voidbox: denied ({kind}) by the cluster: {message}");
            Ok(code)
        }
        OpResult::Failed { message } => Err(fail(exit::BAD_REQUEST, message.clone())),
    }
}

pub(crate) fn verify(file: &str, cluster: &Path) -> Result<u8, Failure> {
    let bytes = read_input(Some(file))?;
    let signed: SignedReceipt = serde_json::from_slice(&bytes).map_err(|e| {
        fail(
            exit::BAD_REQUEST,
            format!("{file} is not a signed receipt (the output of `voidbox run --cluster … --json`): {e}"),
        )
    })?;
    let cluster = ClusterFile::load(cluster)?;
    let signers = signed.verify(&cluster)?;
    match signed.receipt() {
        Some(r) => outln!(
            "receipt {} verified: signed by replicas {:?} of {} (f = {})",
            r.receipt,
            signers,
            cluster.n(),
            cluster.f
        ),
        None => outln!(
            "result verified: signed by replicas {:?} of {} (f = {})",
            signers,
            cluster.n(),
            cluster.f
        ),
    }
    Ok(exit::OK)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14, 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// What `cluster bench` measures.
struct BenchPlan {
    /// Length of the one-client, at-bound and `clients` phases.
    duration: Duration,
    /// Clients of the last phase.
    clients: usize,
    /// The p99 latency the sweep stays within.
    p99_bound_us: f64,
    /// Length of each step of the sweep (zero: no sweep).
    sweep: Duration,
    /// Each invocation's fuel, if not the default budget's.
    fuel: Option<u64>,
}

/// Client counts of the sweep, doubling up to `max`.
fn sweep_counts(max: usize) -> Vec<usize> {
    let mut counts = Vec::new();
    let mut c = 2;
    while c < max {
        counts.push(c);
        c *= 2;
    }
    counts.push(max.max(2));
    counts
}

/// The sweep step with the highest throughput whose p99 latency is within
/// `bound_us` (by index), if any.
fn best_within(phases: &[&serde_json::Value], bound_us: f64) -> Option<usize> {
    within_by_throughput(phases, bound_us).first().copied()
}

/// The steps whose p99 latency is within `bound_us` (by index), fastest
/// first.
fn within_by_throughput(phases: &[&serde_json::Value], bound_us: f64) -> Vec<usize> {
    let mut within: Vec<usize> = (0..phases.len())
        .filter(|&i| figure(phases[i], "latency_p99_us") <= bound_us)
        .collect();
    within.sort_by(|&a, &b| {
        figure(phases[b], "invocations_per_s").total_cmp(&figure(phases[a], "invocations_per_s"))
    });
    within
}

fn figure(p: &serde_json::Value, k: &str) -> f64 {
    p[k].as_f64().unwrap_or(f64::NAN)
}

/// A step's client count.
fn clients_of(p: &serde_json::Value) -> usize {
    p["clients"].as_u64().unwrap_or(1) as usize
}

/// The client count to try next between the doubling steps: halfway
/// between the fastest count within the bound and the smallest larger
/// count that was over it, when no count between them was tried yet.
/// Doubling finds the knee only to a factor of two (4 clients within the
/// bound and 8 over it says nothing of 6), and the throughput at the
/// bound is what the sweep is for.
fn refine(phases: &[&serde_json::Value], bound_us: f64) -> Option<usize> {
    let best = clients_of(phases[best_within(phases, bound_us)?]);
    let over = phases
        .iter()
        .filter(|p| figure(p, "latency_p99_us") > bound_us && clients_of(p) > best)
        .map(|p| clients_of(p))
        .min()?;
    let mid = best + (over - best) / 2;
    let tried = phases.iter().any(|p| clients_of(p) == mid);
    (mid > best && !tried).then_some(mid)
}

/// Most extra steps [`refine`] may add to a sweep.
const REFINE_STEPS_MAX: usize = 2;

/// Most full-length runs spent confirming a count within the bound (see
/// [`next_long_run`]).
const CONFIRM_RUNS_MAX: usize = 4;

/// The client count to run next for the whole duration, given the short
/// steps (`short`: the one-client phase and the sweep) and the long runs so
/// far; `None` when no count is left to try or `runs_left` is 0. First the
/// fastest count within the bound in its short step. When a long run
/// breaks the bound (a short step can be lucky, and stalls that come every
/// few seconds show only in a long run), the knee lies below it: the next
/// try is halfway between the failed count and the next fastest count
/// within the bound below it (or below the smallest count over the bound
/// above that one), so that a doubling sweep's factor of two does not
/// decide the figure; the last of `runs_left` is always that next fastest
/// count itself, which passed its short step. Once a long run keeps within
/// the bound, the search bisects between the highest such count and the
/// lowest failed one above it, while runs are left.
fn next_long_run(
    short: &[&serde_json::Value],
    long: &[&serde_json::Value],
    bound_us: f64,
    runs_left: usize,
) -> Option<usize> {
    let over = |p: &&serde_json::Value| figure(p, "latency_p99_us") > bound_us;
    if runs_left == 0 {
        return None;
    }
    let run: Vec<usize> = long.iter().map(|p| clients_of(p)).collect();
    if let Some(passed) = long
        .iter()
        .filter(|p| !over(p))
        .map(|p| clients_of(p))
        .max()
    {
        let failed = long
            .iter()
            .filter(|p| over(p) && clients_of(p) > passed)
            .map(|p| clients_of(p))
            .min()?;
        let mid = passed + (failed - passed) / 2;
        return (mid > passed && !run.contains(&mid)).then_some(mid);
    }
    let failed_min = run.iter().copied().min().unwrap_or(usize::MAX);
    let lo = within_by_throughput(short, bound_us)
        .into_iter()
        .map(|i| clients_of(short[i]))
        .find(|c| *c < failed_min && !run.contains(c))?;
    if long.is_empty() {
        return Some(lo);
    }
    let hi = short
        .iter()
        .filter(|p| over(p) && clients_of(p) > lo)
        .map(|p| clients_of(p))
        .fold(failed_min, usize::min);
    let mid = lo + (hi - lo) / 2;
    let tried = short.iter().chain(long).any(|p| clients_of(p) == mid);
    Some(if runs_left > 1 && mid > lo && !tried {
        mid
    } else {
        lo
    })
}

/// The long run that gives the figure at the bound: the fastest one within
/// it, or else the last one tried (which broke it).
fn at_bound_run(long: &[serde_json::Value], bound_us: f64) -> Option<&serde_json::Value> {
    long.iter()
        .filter(|p| figure(p, "latency_p99_us") <= bound_us)
        .max_by(|a, b| figure(a, "invocations_per_s").total_cmp(&figure(b, "invocations_per_s")))
        .or(long.last())
}

fn bench(file: &ClusterFile, tool: &str, plan: &BenchPlan, json: bool) -> Result<u8, Failure> {
    let client = ClusterClient::connect(&file.dir)?;
    let token = owner_token(file)?;
    let tool = cluster_tool(&client, tool)?;
    let input = client.put_blob(b"bench")?;
    let pids: Vec<u32> = file
        .replicas
        .iter()
        .filter_map(|r| pid_file(file, r.id).ok().and_then(|p| read_pid(&p)))
        .collect();
    // Every request is a distinct invocation (an argument counts up), so
    // the action cache never answers and every replica runs the tool.
    let counter = std::sync::atomic::AtomicU64::new(0);
    let mut budget = Budget::default();
    if let Some(fuel) = plan.fuel {
        budget.fuel = fuel;
    }
    let make = |_: u64| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Op::Invoke {
            token: token.clone(),
            invocation: Invocation::new(tool.digest, input)
                .arg("n", n.to_string())
                .budget(budget),
        }
        .encode()
    };
    let measure = |label: &str, c: usize, duration: Duration| {
        let before = client.status(Duration::from_secs(1));
        let cpu0: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let own0 = cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
        let t = Instant::now();
        let load = client.load(c, duration, &make);
        let (mut lat, failed) = (load.latencies, load.failed);
        let secs = t.elapsed().as_secs_f64();
        let cpu1: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let own1 = cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
        let after = client.status(Duration::from_secs(1));
        lat.sort();
        let batches: u64 = after
            .values()
            .map(|s| s.last_executed)
            .max()
            .unwrap_or(0)
            .saturating_sub(before.values().map(|s| s.last_executed).max().unwrap_or(0));
        // Requests whose signatures the replicas checked, per signature:
        // how much the clients' bundles saved them.
        let checked = |f: fn(&ReplicaStatus) -> u64| -> u64 {
            let sum = |m: &BTreeMap<u32, ReplicaStatus>| m.values().map(f).sum::<u64>();
            sum(&after).saturating_sub(sum(&before))
        };
        let requests_checked = checked(|s| s.requests_checked);
        let signatures_checked = checked(|s| s.request_signatures_checked);
        let protocol_made = checked(|s| s.signatures_made);
        let protocol_checked = checked(|s| s.signatures_checked);
        let protocol_batched = checked(|s| s.signatures_batched);
        let per_batch = |count: u64| {
            if batches > 0 {
                count as f64 / batches as f64
            } else {
                f64::NAN
            }
        };
        if lat.is_empty() && failed > 0 {
            return Err(fail(
                exit::CLUSTER,
                format!(
                    "the cluster stopped answering in the {label} phase ({c} clients): {failed} \
                     requests failed and none completed; the last one: {}",
                    load.last_error.as_deref().unwrap_or("no error recorded")
                ),
            ));
        }
        let n = lat.len() as f64;
        Ok(serde_json::json!({
            "phase": label,
            "clients": c,
            "seconds": secs,
            "completed": lat.len(),
            "failed": failed,
            "invocations_per_s": n / secs,
            "latency_p50_us": percentile(&lat, 0.5),
            "latency_p99_us": percentile(&lat, 0.99),
            "latency_max_us": percentile(&lat, 1.0),
            "batches": batches,
            "mean_batch_size": if batches > 0 { n / batches as f64 } else { f64::NAN },
            "requests_per_signature": if signatures_checked > 0 {
                requests_checked as f64 / signatures_checked as f64
            } else {
                f64::NAN
            },
            // Over all replicas; client request signatures are the
            // `requests_per_signature` above.
            "signatures_made_per_batch": per_batch(protocol_made),
            "signatures_checked_per_batch": per_batch(protocol_checked),
            "signatures_batched_per_batch": per_batch(protocol_batched),
            "replica_cpu_s": cpu1 - cpu0,
            "replica_cpu_us_per_invocation": if n > 0.0 { (cpu1 - cpu0) * 1e6 / n } else { f64::NAN },
            // The client's side: signing requests, checking replies.
            "client_cpu_us_per_invocation": if n > 0.0 { (own1 - own0) * 1e6 / n } else { f64::NAN },
        }))
    };
    let clients = plan.clients.max(1);
    let mut phases = vec![measure("one client", 1, plan.duration)?];
    // The sweep finds the knee: throughput grows with clients until the
    // replicas' CPU is used up, then latency grows instead. Its best step
    // within the bound is measured again for the whole duration, and that
    // run's figures are the ones reported (a short step can be lucky).
    let mut sweep = Vec::new();
    if !plan.sweep.is_zero() {
        for c in sweep_counts(clients) {
            sweep.push(measure("sweep", c, plan.sweep)?);
        }
        for _ in 0..REFINE_STEPS_MAX {
            let tried: Vec<&serde_json::Value> = phases.iter().chain(&sweep).collect();
            let Some(c) = refine(&tried, plan.p99_bound_us) else {
                break;
            };
            sweep.push(measure("sweep", c, plan.sweep)?);
        }
    }
    let mut at_bound = serde_json::Value::Null;
    // One client is a candidate too: with a slow cluster even two clients
    // may break the bound. The figure reported is a whole run within the
    // bound whenever one of the tries gives one.
    if !sweep.is_empty() {
        let short: Vec<&serde_json::Value> = phases.iter().chain(&sweep).collect();
        let mut long: Vec<serde_json::Value> = Vec::new();
        while let Some(c) = next_long_run(
            &short,
            &long.iter().collect::<Vec<_>>(),
            plan.p99_bound_us,
            CONFIRM_RUNS_MAX - long.len(),
        ) {
            long.push(measure("at p99 bound", c, plan.duration)?);
        }
        if let Some(p) = at_bound_run(&long, plan.p99_bound_us) {
            at_bound = serde_json::json!({
                "clients": p["clients"],
                "invocations_per_s": p["invocations_per_s"],
                "latency_p99_us": p["latency_p99_us"],
                "p99_within_bound": figure(p, "latency_p99_us") <= plan.p99_bound_us,
            });
        }
        phases.extend(long);
    }
    phases.push(measure("throughput", clients, plan.duration)?);
    let report = serde_json::json!({
        "replicas": file.n(),
        "f": file.f,
        "fsync": file.fsync,
        "partial_execution_min": file.partial_execution_min,
        "tool": tool.name,
        "fuel": budget.fuel,
        "p99_bound_us": plan.p99_bound_us,
        "throughput_at_p99_bound": at_bound,
        "phases": phases,
        "sweep": sweep,
    });
    if json {
        outln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    } else {
        outln!(
            "cluster bench: {} replicas, fsync {}, partial execution from {} requests, tool {}, fuel {}",
            file.n(),
            if file.fsync { "on" } else { "off" },
            file.partial_execution_min,
            tool.name,
            budget.fuel
        );
        // In the order they ran: one client, the sweep, the rest.
        for p in phases[..1].iter().chain(&sweep).chain(&phases[1..]) {
            outln!(
                "  {:<12} clients {:>3}: {:>8.0} inv/s, p50 {:>8.0} us, p99 {:>8.0} us, batch {:>5.1}, replica cpu {:>6.0} us/inv, client cpu {:>5.0} us/inv, failed {}",
                p["phase"].as_str().unwrap_or(""),
                p["clients"],
                figure(p, "invocations_per_s"),
                figure(p, "latency_p50_us"),
                figure(p, "latency_p99_us"),
                figure(p, "mean_batch_size"),
                figure(p, "replica_cpu_us_per_invocation"),
                figure(p, "client_cpu_us_per_invocation"),
                p["failed"],
            );
        }
        match at_bound.get("clients") {
            Some(c) => outln!(
                "  throughput at p99 <= {:.0} ms: {:.0} inv/s with {c} clients (p99 {:.0} us{})",
                plan.p99_bound_us / 1000.0,
                figure(&at_bound, "invocations_per_s"),
                figure(&at_bound, "latency_p99_us"),
                if at_bound["p99_within_bound"] == true {
                    ""
                } else {
                    ", over the bound in the long run"
                },
            ),
            None if !sweep.is_empty() => outln!(
                "  throughput at p99 <= {:.0} ms: no client count of the sweep stayed within it",
                plan.p99_bound_us / 1000.0
            ),
            None => {}
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_doubles_up_to_the_client_count() {
        assert_eq!(sweep_counts(64), vec![2, 4, 8, 16, 32, 64]);
        assert_eq!(sweep_counts(48), vec![2, 4, 8, 16, 32, 48]);
        assert_eq!(sweep_counts(1), vec![2]);
    }

    #[test]
    fn the_best_step_is_the_fastest_within_the_bound() {
        let step = |ips: f64, p99: f64| serde_json::json!({"invocations_per_s": ips, "latency_p99_us": p99});
        let steps = [
            step(500.0, 4000.0),
            step(2500.0, 9000.0),
            step(4000.0, 30000.0),
            step(2000.0, 8000.0),
        ];
        let refs: Vec<&serde_json::Value> = steps.iter().collect();
        assert_eq!(best_within(&refs, 10_000.0), Some(1));
        assert_eq!(best_within(&refs, 50_000.0), Some(2));
        assert_eq!(best_within(&refs, 1_000.0), None);
        assert_eq!(within_by_throughput(&refs, 10_000.0), vec![1, 3, 0]);
    }

    fn step(clients: u64, p99: f64) -> serde_json::Value {
        // Throughput grows with the clients, as below the knee.
        serde_json::json!({
            "clients": clients,
            "invocations_per_s": 100.0 * clients as f64,
            "latency_p99_us": p99,
        })
    }

    #[test]
    fn refining_tries_halfway_between_the_last_count_within_and_the_first_over() {
        let steps = [
            step(1, 3000.0),
            step(2, 5000.0),
            step(4, 9000.0),
            step(8, 14000.0),
            step(16, 30000.0),
        ];
        let refs: Vec<&serde_json::Value> = steps.iter().collect();
        assert_eq!(refine(&refs, 10_000.0), Some(6));
        // 6 was within: next halfway between 6 and 8.
        let mut more = steps.to_vec();
        more.push(step(6, 9500.0));
        let refs: Vec<&serde_json::Value> = more.iter().collect();
        assert_eq!(refine(&refs, 10_000.0), Some(7));
        // 6 was over: between 4 and 6.
        more.pop();
        more.push(step(6, 11000.0));
        let refs: Vec<&serde_json::Value> = more.iter().collect();
        assert_eq!(refine(&refs, 10_000.0), Some(5));
    }

    fn long_runs(short: &[serde_json::Value], long: &[serde_json::Value]) -> Option<usize> {
        let short: Vec<&serde_json::Value> = short.iter().collect();
        let long: Vec<&serde_json::Value> = long.iter().collect();
        next_long_run(&short, &long, 10_000.0, CONFIRM_RUNS_MAX - long.len())
    }

    #[test]
    fn a_failed_long_run_is_followed_halfway_down_then_by_the_next_fastest() {
        // 64 passed its short step; 8 s cannot show a stall every 20 s.
        let short = [
            step(1, 1500.0),
            step(16, 5000.0),
            step(32, 7000.0),
            step(64, 9800.0),
        ];
        assert_eq!(long_runs(&short, &[]), Some(64));
        let mut long = vec![step(64, 12_800.0)];
        assert_eq!(long_runs(&short, &long), Some(48));
        long.push(step(48, 10_500.0));
        assert_eq!(long_runs(&short, &long), Some(40));
        // The last try is the count whose short step was within.
        long.push(step(40, 10_100.0));
        assert_eq!(long_runs(&short, &long), Some(32));
        long.push(step(32, 10_050.0));
        assert_eq!(long_runs(&short, &long), None, "four long runs at most");
        // No failed run above one within the bound: nothing to look for.
        assert_eq!(long_runs(&short, &[step(64, 9_900.0)]), None);
    }

    #[test]
    fn after_a_long_run_within_the_bound_the_search_bisects_back_up() {
        let short = [step(1, 1500.0), step(32, 7000.0), step(64, 9800.0)];
        let mut long = vec![step(64, 12_800.0), step(48, 9_100.0)];
        assert_eq!(long_runs(&short, &long), Some(56));
        long.push(step(56, 10_400.0));
        assert_eq!(long_runs(&short, &long), Some(52));
        long.push(step(52, 9_800.0));
        assert_eq!(long_runs(&short, &long), None, "four long runs at most");
        // The figure is the fastest run within the bound, not the last.
        let best = at_bound_run(&long, 10_000.0).unwrap();
        assert_eq!(clients_of(best), 52);
        // Adjacent counts: nothing left between them.
        let long = [step(64, 12_800.0), step(48, 10_500.0), step(47, 9_000.0)];
        assert_eq!(long_runs(&short, &long), None);
        // With no run within the bound the last one stands, flagged over.
        let long = [step(64, 12_800.0), step(48, 10_500.0)];
        assert_eq!(clients_of(at_bound_run(&long, 10_000.0).unwrap()), 48);
    }

    #[test]
    fn halfway_down_stops_below_a_count_over_the_bound_in_its_short_step() {
        // 48 was over in the sweep, 64 within by luck: after 64 fails in
        // its long run, 40 lies between 32 and 48.
        let short = [
            step(1, 1500.0),
            step(32, 7000.0),
            step(48, 10_400.0),
            step(64, 9_900.0),
        ];
        let long = [step(64, 11_000.0)];
        assert_eq!(long_runs(&short, &long), Some(40));
        // Nothing within the bound: no long run at all.
        let short = [step(1, 12_000.0), step(2, 15_000.0)];
        assert_eq!(long_runs(&short, &[]), None);
        // Nothing between: adjacent counts go straight to the next fastest.
        let short = [step(1, 1500.0), step(2, 9_000.0)];
        assert_eq!(long_runs(&short, &[step(2, 11_000.0)]), Some(1));
    }

    #[test]
    fn refining_stops_where_nothing_lies_between() {
        // Adjacent counts: nothing to try.
        let steps = [step(1, 3000.0), step(2, 12000.0)];
        let refs: Vec<&serde_json::Value> = steps.iter().collect();
        assert_eq!(refine(&refs, 10_000.0), None);
        // Every count within the bound: no knee to look for.
        let steps = [step(2, 3000.0), step(4, 5000.0)];
        let refs: Vec<&serde_json::Value> = steps.iter().collect();
        assert_eq!(refine(&refs, 10_000.0), None);
        // None within: nothing to refine from.
        let steps = [step(1, 13000.0), step(2, 15000.0)];
        let refs: Vec<&serde_json::Value> = steps.iter().collect();
        assert_eq!(refine(&refs, 10_000.0), None);
    }
}
