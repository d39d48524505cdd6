//! A real cluster: four `voidbox replica` processes on loopback, started by
//! `voidbox cluster up`, driven through the binary and the client library,
//! and killed with SIGKILL.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use voidbox::cluster::config::generate_key;
use voidbox::cluster::wire::OpResult;
use voidbox::cluster::{ClusterClient, ClusterFile, Invoker, RETRY_ENV};
use voidbox::{Budget, Digest, Invocation};
use voidbox_e2e::{assert_failed, stderr, tools, voidbox_bin};

/// Four consecutive free ports on loopback (checked by binding them);
/// tests in one process get different ones.
fn free_base_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(7);
    for _ in 0..200 {
        let attempt = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + seed.wrapping_add(attempt.wrapping_mul(97)) % 30_000;
        let ok = (0..4).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if ok {
            return base;
        }
    }
    panic!("no four consecutive free ports on loopback");
}

/// A cluster directory whose replicas are stopped when the test ends, even
/// when it fails.
struct TestCluster {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestCluster {
    fn init(extra: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let base = free_base_port().to_string();
        let mut args = vec!["cluster", "init", "--base-port", &base];
        args.extend_from_slice(extra);
        let out = voidbox(&args, Some(&path));
        assert!(out.status.success(), "init: {}", stderr(&out));
        TestCluster { _dir: dir, path }
    }

    fn file(&self) -> PathBuf {
        self.path.join("cluster.toml")
    }

    /// One field of every replica's `cluster status --json`, in id order.
    fn status_of(&self, field: &str) -> Vec<u64> {
        let status: Value = serde_json::from_str(&self.ok(&["cluster", "status", "{c}", "--json"]))
            .expect("status is JSON");
        status
            .as_array()
            .expect("one entry per replica")
            .iter()
            .map(|r| {
                r["status"][field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field} in {r}"))
            })
            .collect()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_env(args, &[])
    }

    /// [`TestCluster::ok`] with `env` set.
    fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run_env(args, env);
        assert!(
            out.status.success(),
            "voidbox {args:?}: {}\n{}",
            out.status,
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `voidbox ARGS…`, with `{c}` in an argument replaced by the
    /// cluster directory.
    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// [`TestCluster::run`] with `env` set.
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let c = self.path.to_str().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.replace("{c}", c)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        voidbox_env(&args, None, env)
    }

    fn pid(&self, id: u32) -> u32 {
        std::fs::read_to_string(self.path.join(format!("replica-{id}/replica.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn sigkill(&self, id: u32) {
        let pid = self.pid(id);
        let st = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        // Wait until it is gone (the parent that spawned it has exited, so
        // init reaps it).
        let start = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists()
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.run(&["cluster", "down", "{c}"]);
        if std::thread::panicking() {
            // The replicas' own words are the best clue to a failure.
            for id in 0..4 {
                let log = self.path.join(format!("replica-{id}/replica.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- replica {id}, last lines of its log ---");
                for l in &lines[lines.len().saturating_sub(25)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn voidbox(args: &[&str], last: Option<&Path>) -> Output {
    voidbox_env(args, last, &[])
}

/// [`voidbox`] with `env` set.
fn voidbox_env(args: &[&str], last: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(voidbox_bin());
    c.args(args);
    if let Some(p) = last {
        c.arg(p);
    }
    c.env_remove("VOIDBOX_HOME")
        .env_remove("RUST_LOG")
        .env_remove("VOIDBOX_TOKEN")
        .env_remove(RETRY_ENV)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    c.output().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_cluster_orders_runs_and_signs_invocations() {
    let c = TestCluster::init(&[]);
    // A token with one use, minted before the replicas hold their
    // databases open (every replica shares the owner root key).
    let once = c.ok(&[
        "--home",
        "{c}/replica-0",
        "token",
        "mint",
        "--caveat",
        "uses <= 1",
    ]);
    let up = c.ok(&["cluster", "up", "{c}"]);
    assert_eq!(up.matches(" up after ").count(), 4, "{up}");
    // Replicas run without transparent huge pages (see `no_huge_pages` in
    // the driver): a 2 MiB page zeroed at first touch stalled them all.
    for id in 0..4 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid(id))).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
            "replica {id}: {status}"
        );
    }
    c.ok(&["tool", "add", "--cluster", "{c}/cluster.toml", tools::WC]);
    c.ok(&["tool", "add", "--cluster", "{c}", tools::HOSTILE_LOOP]);
    let input = write(&c.path, "in.txt", b"one two three\nfour\n");

    // A new connection's first request reaches every replica, so each can
    // reply on it at once: the client needs no retransmission. Its
    // retransmission is put off for a minute, since on a loaded machine
    // (CI runs these tests side by side) a first request can take longer
    // than the default 300 ms; were the backups' replies not routed, only
    // the primary's would come, and this run would give up (after 30 s)
    // before its retry. (The replicas' `replies_resent` cannot tell: a
    // backup that the broadcast copy reaches after the batch ran there
    // answers it from its client table and counts that like a retry.)
    let out = c.ok_env(
        &["run", "--cluster", "{c}", "wc", "--input", &input],
        &[(RETRY_ENV, "60000")],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["lines"].as_u64(), v["words"].as_u64()),
        (Some(2), Some(4))
    );
    // A setting that is not an interval is refused, naming it and the fix.
    let bad = c.run_env(
        &["run", "--cluster", "{c}", "wc", "--input", &input],
        &[(RETRY_ENV, "soon")],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("VOIDBOX_CLUSTER_RETRY_MS=\"soon\" is not a retransmission interval"),
        "{}",
        stderr(&bad)
    );

    let signed = c.ok(&["run", "--cluster", "{c}", "wc", "--input", &input, "--json"]);
    let receipt_file = write(&c.path, "receipt.json", signed.as_bytes());
    let v: Value = serde_json::from_str(&signed).unwrap();
    assert_eq!(v["result"]["result"], "receipt");
    assert_eq!(v["result"]["receipt"]["outcome"]["kind"], "ok");
    assert!(v["signatures"].as_array().unwrap().len() >= 2, "{signed}");
    let verified = c.ok(&["receipt", "verify", &receipt_file, "--cluster", "{c}"]);
    assert!(verified.contains("verified"), "{verified}");

    // A changed result, or a proof with one signature, does not verify.
    let mut tampered = v.clone();
    let bytes = tampered["result_bytes"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        &bytes[..bytes.len() - 2],
        if bytes.ends_with("7d") { "7e" } else { "7d" }
    );
    tampered["result_bytes"] = Value::String(flipped);
    let bad = write(&c.path, "bad.json", tampered.to_string().as_bytes());
    let out = c.run(&["receipt", "verify", &bad, "--cluster", "{c}"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let mut short = v.clone();
    short["signatures"].as_array_mut().unwrap().truncate(1);
    let bad = write(&c.path, "short.json", short.to_string().as_bytes());
    let out = c.run(&["receipt", "verify", &bad, "--cluster", "{c}"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs 2"), "{}", stderr(&out));
    // Each signature covers a batch's root; the reply must be a leaf of it
    // at the stated place, and the root must be the one signed.
    let mut moved = v.clone();
    let leaves = moved["signatures"][0]["leaves"].as_u64().unwrap();
    moved["signatures"][0]["index"] = Value::from(leaves);
    let bad = write(&c.path, "moved.json", moved.to_string().as_bytes());
    let out = c.run(&["receipt", "verify", &bad, "--cluster", "{c}"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("not in the tree"), "{}", stderr(&out));
    let mut rooted = v.clone();
    rooted["signatures"][0]["root"] = Value::String("ab".repeat(32));
    let bad = write(&c.path, "rooted.json", rooted.to_string().as_bytes());
    let out = c.run(&["receipt", "verify", &bad, "--cluster", "{c}"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));

    // Outcomes keep their exit codes through the cluster.
    let out = c.run(&[
        "run",
        "--cluster",
        "{c}",
        "hostile-loop",
        "--fuel",
        "1000000",
    ]);
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    // A wall-clock guard would let replicas decide differently, so the
    // client's is refused on the command line, and through the library the
    // replicas replace it with their own: a 1 ms guard on a run of 2 * 10^8
    // fuel (about half a second) ends by fuel on every replica alike.
    let out = c.run(&["run", "--cluster", "{c}", "wc", "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--fuel"), "{}", stderr(&out));
    let file = ClusterFile::load(&c.file()).unwrap();
    let owner = std::fs::read_to_string(c.path.join("owner.token")).unwrap();
    let client = ClusterClient::connect_with(file, generate_key()).unwrap();
    let looping = client.tool("hostile-loop").unwrap().digest;
    let budget = Budget {
        fuel: 200_000_000,
        timeout: Duration::from_millis(1),
        ..Budget::default()
    };
    let template = Invocation::new(looping, Digest::of(b"")).budget(budget);
    let signed = client.run(owner.trim(), &template, b"").unwrap();
    match &signed.result {
        OpResult::Receipt { receipt, .. } => {
            assert_eq!(receipt.outcome.name(), "out-of-fuel", "{receipt:?}")
        }
        other => panic!("expected a receipt, got {other:?}"),
    }

    // Use counters are replicated: the one-use token runs once, then every
    // correct replica denies it alike.
    let run_once = [
        "run",
        "--cluster",
        "{c}",
        "wc",
        "--token",
        once.trim(),
        "--input",
        &input,
    ];
    c.ok(&run_once);
    let out = c.run(&run_once);
    assert!(
        stderr(&out).contains("uses-exhausted"),
        "{:?} {}",
        out.status,
        stderr(&out)
    );
    assert!(!out.status.success());

    // A bad request names the fix; an unknown tool is a bad request (3),
    // as on a single node.
    let out = c.run(&["run", "--cluster", "{c}", "no-such-tool"]);
    assert_failed(&out, 3, "tool add --cluster");

    // A file that cannot be a tool is told apart before it is sent, with
    // the single-node message and exit code; a component of another world
    // is refused by every replica, for one reason, said once.
    let not_wasm = write(&c.path, "notes.wasm", b"just text");
    let out = c.run(&["tool", "add", "--cluster", "{c}", &not_wasm]);
    assert_failed(&out, 3, "notes.wasm: the file is not WebAssembly");
    let other_world = write(&c.path, "empty.wasm", b"\0asm\x0d\0\x01\0");
    let out = c.run(&["tool", "add", "--cluster", "{c}", &other_world]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("replicas 0, 1, 2, 3: the component implements neither")
            && err.matches("implements neither").count() == 1,
        "{err}"
    );

    // Blobs go in and come back out by digest, checked.
    let blob = c.ok(&["cas", "put", "--cluster", "{c}", &input]);
    let blob = blob.trim();
    let back = c.ok(&["cas", "get", "--cluster", "{c}", blob]);
    assert_eq!(back, "one two three\nfour\n");
    let copy = c.path.join("copy.txt");
    c.ok(&[
        "cas",
        "get",
        "--cluster",
        "{c}",
        blob,
        "-o",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&copy).unwrap(), b"one two three\nfour\n");
    let missing = Digest::of(b"never stored").to_string();
    let out = c.run(&["cas", "get", "--cluster", "{c}", &missing]);
    assert_failed(&out, 6, "no replica has blob");

    let executed = c.status_of("executed_requests");
    assert!(executed.iter().all(|&e| e >= 5), "{executed:?}");

    // The same embedding code runs on a single host and on the cluster.
    fn count_words(on: &dyn Invoker, token: &str) -> Vec<u8> {
        let wc = on.tool_digest("wc").unwrap();
        let r = on
            .run_with_token(token, &Invocation::new(wc, Digest::of(b"")), b"a b c d e\n")
            .unwrap();
        on.output(&r).unwrap().unwrap()
    }
    let single = voidbox_e2e::TestHost::new();
    single.add(tools::WC);
    let client = ClusterClient::connect(&c.path).unwrap();
    let owner = std::fs::read_to_string(c.path.join("owner.token")).unwrap();
    assert_eq!(
        count_words(&client, owner.trim()),
        count_words(&single.host, &single.host.owner_token().unwrap())
    );

    let down = c.ok(&["cluster", "down", "{c}"]);
    assert_eq!(down.matches("stopped").count(), 4, "{down}");
    let out = c.run(&["cluster", "status", "{c}"]);
    assert_eq!(out.status.code(), Some(6), "all down: {}", stderr(&out));
}

/// A cluster that stops under a running client is reported, with the
/// reason, once fewer than f + 1 replicas have been reachable for a few
/// seconds: `cluster bench` stops at the first phase that completes
/// nothing, instead of waiting out the 30 s ordering timeout of every
/// request in every later phase.
#[test]
fn a_client_whose_cluster_stops_says_so() {
    let c = TestCluster::init(&["--no-fsync"]);
    c.ok(&["cluster", "up", "{c}"]);
    c.ok(&["tool", "add", "--cluster", "{c}", tools::ECHO]);
    // (A tool the cluster lacks is a bad request, as for `run --cluster`.)
    let out = c.run(&[
        "cluster",
        "bench",
        "{c}",
        "--tool",
        "nope",
        "--seconds",
        "1",
    ]);
    assert_failed(&out, 3, "tool add --cluster");
    let bench = Command::new(voidbox_bin())
        .args(["cluster", "bench", c.path.to_str().unwrap()])
        .args(["--seconds", "3", "--clients", "2", "--sweep-seconds", "0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the replicas once the bench's requests are being executed.
    let start = Instant::now();
    while c.status_of("last_executed").into_iter().max() < Some(5) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the bench never got going"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["cluster", "down", "{c}"]);
    let out = bench.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("the cluster stopped answering in the throughput phase (2 clients)")
            && err.contains("none completed"),
        "{err}"
    );
    // Each request failed because the links were down, not by timing out.
    assert!(
        err.contains("lost the cluster: only 0 of 4 replicas"),
        "{err}"
    );
}

/// `cluster bench --json`: with a bound every step meets, the fastest count
/// of the sweep is run again and reported as a whole run within the bound;
/// with a bound no step meets, nothing is reported at the bound and no
/// long run is spent on it.
#[test]
fn cluster_bench_reports_the_throughput_at_the_bound_from_a_whole_run() {
    let c = TestCluster::init(&["--no-fsync"]);
    c.ok(&["cluster", "up", "{c}"]);
    c.ok(&["tool", "add", "--cluster", "{c}", tools::ECHO]);
    let bench = |p99_ms: &str| -> Value {
        let out = c.ok(&[
            "cluster",
            "bench",
            "{c}",
            "--seconds",
            "1",
            "--sweep-seconds",
            "0.3",
            "--clients",
            "4",
            "--p99-ms",
            p99_ms,
            "--json",
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let phases_named = |report: &Value, name: &str| -> Vec<Value> {
        report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["phase"] == name)
            .cloned()
            .collect()
    };

    let loose = bench("600000");
    let swept: Vec<u64> = loose["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["clients"].as_u64().unwrap())
        .collect();
    // Every step within the bound: doubling alone, nothing to refine.
    assert_eq!(swept, vec![2, 4], "{loose}");
    let at = &loose["throughput_at_p99_bound"];
    assert_eq!(at["p99_within_bound"], true, "{loose}");
    let long = phases_named(&loose, "at p99 bound");
    assert_eq!(long.len(), 1, "the first long run was within: {loose}");
    assert_eq!(at["clients"], long[0]["clients"]);
    assert_eq!(at["invocations_per_s"], long[0]["invocations_per_s"]);
    assert!(long[0]["completed"].as_u64().unwrap() > 0, "{loose}");
    // The count run again is the fastest one measured before it.
    let fastest = loose["phases"]
        .as_array()
        .unwrap()
        .iter()
        .take(1)
        .chain(loose["sweep"].as_array().unwrap())
        .max_by(|a, b| {
            a["invocations_per_s"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["invocations_per_s"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(at["clients"], fastest["clients"], "{loose}");

    let tight = bench("0.001");
    assert!(tight["throughput_at_p99_bound"].is_null(), "{tight}");
    assert!(phases_named(&tight, "at p99 bound").is_empty(), "{tight}");
    let throughput = phases_named(&tight, "throughput");
    assert_eq!(throughput.len(), 1, "{tight}");

    // One client signs each request alone; four sessions of one key that
    // a batch's replies wake together sign what they send next as one
    // bundle, so the replicas check fewer signatures than requests.
    let per_signature = |p: &Value| p["requests_per_signature"].as_f64().unwrap();
    let one = phases_named(&tight, "one client");
    assert_eq!(per_signature(&one[0]), 1.0, "{tight}");
    assert!(per_signature(&throughput[0]) > 1.0, "{tight}");
    // A batch of one client's request costs the replicas at least the
    // normal case's 12 signatures and 16 checks (more when a checkpoint or
    // a status message falls in the phase).
    let per_batch = |p: &Value, what: &str| p[what].as_f64().unwrap();
    assert!(
        per_batch(&one[0], "signatures_made_per_batch") >= 12.0,
        "{tight}"
    );
    assert!(
        per_batch(&one[0], "signatures_checked_per_batch") >= 16.0,
        "{tight}"
    );
    // Under four clients' load votes reach a replica together, queued
    // behind the frame its driver takes, and are checked as one batch.
    assert!(
        per_batch(&throughput[0], "signatures_batched_per_batch") > 0.0,
        "{tight}"
    );
}

/// A cluster without fsync, stopped cleanly with `cluster down` past a
/// stable checkpoint, comes back with its protocol log and result
/// journal: the replicas restore the checkpoint's state with the results
/// that chain to it (they used to find none, having kept their commits in
/// memory only, and spent seconds asking their peers for them in vain).
#[test]
fn a_cluster_without_fsync_restarts_with_its_log_and_results() {
    let c = TestCluster::init(&["--no-fsync"]);
    c.ok(&["cluster", "up", "{c}"]);
    c.ok(&["tool", "add", "--cluster", "{c}", tools::ECHO]);
    // Well past one checkpoint (every 64 batches).
    c.ok(&[
        "cluster",
        "bench",
        "{c}",
        "--seconds",
        "2",
        "--sweep-seconds",
        "0",
        "--clients",
        "2",
    ]);
    let before = c.status_of("stable");
    assert!(before.iter().all(|&s| s >= 64), "{before:?}");
    c.ok(&["cluster", "down", "{c}"]);
    c.ok(&["cluster", "up", "{c}"]);
    let input = write(&c.path, "input.txt", b"after the restart");
    let out = c.ok(&["run", "--cluster", "{c}", "echo", "--input", &input]);
    assert_eq!(out, "after the restart");
    // A replica that cannot chain results gives up after asking every
    // peer (3 s each at most); give it that long to say so.
    std::thread::sleep(Duration::from_secs(4));
    let after = c.status_of("stable");
    for id in 0..4 {
        let log =
            std::fs::read_to_string(c.path.join(format!("replica-{id}/replica.log"))).unwrap();
        assert!(
            !log.contains("that chain to the stable checkpoint"),
            "replica {id} lost its results: {log}"
        );
        assert!(after[id] >= before[id], "{before:?} -> {after:?}");
    }
}

/// Two clusters given the same ports: the second `cluster up` fails and
/// says which port and what to do, and `cluster status` of the second does
/// not show the first one's replicas as its own. A pid file naming another
/// live process (its number reused, as after a reboot) neither keeps
/// `cluster up` from starting the replica nor gets that process killed by
/// `cluster down`.
#[test]
fn clusters_on_the_same_ports_and_stale_pid_files_are_told_apart() {
    let first = TestCluster::init(&["--no-fsync"]);
    first.ok(&["cluster", "up", "{c}"]);
    let status: Value =
        serde_json::from_str(&first.ok(&["cluster", "status", "{c}", "--json"])).unwrap();
    let address = status[0]["address"].as_str().unwrap().to_string();
    let port = address.rsplit_once(':').unwrap().1;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let out = voidbox(
        &["cluster", "init", "--no-fsync", "--base-port", port],
        Some(&path),
    );
    assert!(out.status.success(), "init: {}", stderr(&out));
    let second = TestCluster { _dir: dir, path };
    let out = second.run(&["cluster", "up", "{c}"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {address}"))
            && err.contains("Address already in use")
            && err.contains("--base-port"),
        "{err}"
    );
    let out = second.run(&["cluster", "status", "{c}"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!("replica 0's address {address} is answered by pid"))
            && err.contains("counted as down"),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches(" down")
            .count(),
        4,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The ports are free again; replica 0's pid file names a live process
    // that is not a replica.
    first.ok(&["cluster", "down", "{c}"]);
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(
        second.path.join("replica-0/replica.pid"),
        other.id().to_string(),
    )
    .unwrap();
    let up = second.ok(&["cluster", "up", "{c}"]);
    assert!(
        up.contains("replica 0 starting") && !up.contains("already running"),
        "{up}"
    );
    assert_eq!(up.matches(" up after ").count(), 4, "{up}");
    second.ok(&["cluster", "down", "{c}"]);
    assert!(
        other.try_wait().unwrap().is_none(),
        "cluster down killed a process that is not a replica"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

/// One length-prefixed frame.
fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut f = (bytes.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(bytes);
    f
}

#[test]
fn hostile_frames_are_refused_and_counted_and_the_cluster_goes_on() {
    use std::io::Write;
    let c = TestCluster::init(&[]);
    c.ok(&["cluster", "up", "{c}"]);
    c.ok(&["tool", "add", "--cluster", "{c}", tools::WC]);
    let file = ClusterFile::load(&c.file()).unwrap();
    let addr = file.replicas[1].address;
    let client = ClusterClient::connect(&c.path).unwrap();
    let refused = |client: &ClusterClient| {
        let s = client.status(Duration::from_secs(1));
        s[&1].rejected + s[&1].transport_refused
    };
    let before = refused(&client);
    let mut hello = b"voidbox-net/1".to_vec();
    hello.push(b'C');
    let attacks: Vec<Vec<u8>> = vec![
        // Not our protocol at all.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A client hello, then a frame claiming 4 GiB.
        [frame(&hello), u32::MAX.to_be_bytes().to_vec()].concat(),
        // A client hello, then PBFT frames that are garbage, a truncated
        // message, and an unknown tag.
        [
            frame(&hello),
            frame(&[0, 0xff, 0xff, 0xff]),
            frame(&[0]),
            frame(&[9, 1, 2, 3]),
        ]
        .concat(),
        // A replica hello naming a replica that does not exist.
        [frame(
            &[b"voidbox-net/1".as_slice(), b"R", &77u32.to_be_bytes()].concat(),
        )]
        .concat(),
    ];
    for bytes in attacks {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&bytes).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = refused(&client);
    assert!(after >= before + 3, "refusals counted: {before} -> {after}");
    // The replica that saw all of that still orders and runs invocations.
    let out = c.run(&[
        "run",
        "--cluster",
        "{c}",
        "wc",
        "--input",
        "{c}/cluster.toml",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = client.status(Duration::from_secs(1));
    assert_eq!(s.len(), 4, "every replica still answers: {s:?}");
}

#[test]
fn bad_cluster_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = voidbox(
        &["cluster", "init", "--replicas", "3"],
        Some(&dir.path().join("x")),
    );
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("--replicas 4"), "{}", stderr(&out));
    // More than 3f + 1 would be unsafe with quorums of 2f + 1.
    let out = voidbox(
        &["cluster", "init", "--replicas", "5"],
        Some(&dir.path().join("five")),
    );
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("not 3f + 1"), "{}", stderr(&out));
    assert!(!dir.path().join("five").exists(), "nothing written");
    // Seven replicas claiming to tolerate only one fault: refused on load.
    let seven = dir.path().join("seven");
    let out = voidbox(&["cluster", "init", "--replicas", "7"], Some(&seven));
    assert!(out.status.success(), "{}", stderr(&out));
    let file = seven.join("cluster.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\nf = 2\n"), "{text}");
    std::fs::write(&file, text.replace("\nf = 2\n", "\nf = 1\n")).unwrap();
    let out = voidbox(&["cluster", "status"], Some(&seven));
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("n = 3f + 1"), "{}", stderr(&out));
    let out = voidbox(&["cluster", "status"], Some(&dir.path().join("nothing")));
    assert!(stderr(&out).contains("cluster init"), "{}", stderr(&out));
    // A cluster that is not up is reported as such.
    let c = TestCluster::init(&[]);
    let out = c.run(&["run", "--cluster", "{c}", "wc"]);
    assert_failed(&out, 6, "voidbox cluster up");
    // A closed stdout (`| head`) ends a cluster command quietly, with its
    // own exit code, not a panic.
    for args in [
        vec!["cluster", "status"],
        vec!["cluster", "status", "--json"],
    ] {
        let out = voidbox_e2e::with_closed_stdout(
            Command::new(voidbox_bin())
                .args(&args)
                .arg(&c.path)
                .stdin(Stdio::null()),
        );
        assert_ne!(out.status.code(), Some(101), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A replica whose port is taken exits at once, and `cluster up` says
    // so with the end of its log instead of waiting for it.
    let file = ClusterFile::load(&c.file()).unwrap();
    let taken = TcpListener::bind(file.replicas[2].address).unwrap();
    let t = Instant::now();
    let out = c.run(&["cluster", "up", "{c}"]);
    let err = assert_failed(&out, 6, "replica 2 exited at once");
    assert!(err.contains("in use"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    drop(taken);
}

/// A running cluster with the wc tool: its file, the owner token, a client
/// and the tool's digest.
fn wc_cluster() -> (TestCluster, ClusterFile, String, ClusterClient, Digest) {
    wc_cluster_with(&[])
}

/// [`wc_cluster`] with more `cluster init` options.
fn wc_cluster_with(init: &[&str]) -> (TestCluster, ClusterFile, String, ClusterClient, Digest) {
    let c = TestCluster::init(init);
    c.ok(&["cluster", "up", "{c}"]);
    c.ok(&["tool", "add", "--cluster", "{c}", tools::WC]);
    let file = ClusterFile::load(&c.file()).unwrap();
    let token = std::fs::read_to_string(c.path.join("owner.token")).unwrap();
    let client = ClusterClient::connect_with(file.clone(), generate_key()).unwrap();
    let tool = client.tool("wc").unwrap().digest;
    (c, file, token.trim().to_string(), client, tool)
}

#[test]
fn a_replica_that_missed_an_input_fetches_it_when_the_invocation_runs() {
    let (c, _, token, client, tool) = wc_cluster();
    // n - f replicas store the input; replica 3 is down meanwhile.
    c.sigkill(3);
    let input = client
        .put_blob(b"stored while replica 3 was down\n")
        .unwrap();
    c.ok(&["cluster", "up", "{c}"]);

    // Replica 3 cannot run the batch from what it stores: it fetches the
    // input from a peer (off the protocol's thread, which must go on
    // reading the peer's answer) and runs it like the others.
    let signed = client
        .invoke(&token, &Invocation::new(tool, input))
        .unwrap();
    let OpResult::Receipt { receipt, .. } = &signed.result else {
        panic!("the invocation ran: {:?}", signed.result);
    };
    let t = Instant::now();
    loop {
        let held = client.receipts_of(&receipt.invocation);
        if held.len() == 4 && held.values().all(|r| *r == Some(receipt.receipt)) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "every replica holds the receipt: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(c.path.join("replica-3/replica.log")).unwrap();
    assert!(log.contains("fetched a missing blob"), "{log}");

    // One connection shared by threads that invoke at once: each call is
    // its own session of the connection's key, so every one is ordered and
    // answered (with one session for all, they would take each other's
    // replies or be refused as stale).
    let file = ClusterFile::load(&c.file()).unwrap();
    let receipts: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let (client, token) = (&client, &token);
                s.spawn(move || {
                    let text = format!("thread {i} of four\n");
                    let input = client.put_blob(text.as_bytes()).unwrap();
                    client.invoke(token, &Invocation::new(tool, input)).unwrap()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut invocations = std::collections::BTreeSet::new();
    for signed in &receipts {
        assert!(signed.verify(&file).unwrap().len() >= 2);
        invocations.insert(signed.receipt().expect("it ran").invocation);
    }
    assert_eq!(invocations.len(), 4, "four distinct invocations answered");
}

/// Waits until every replica in `ids` holds `receipt` for its invocation.
fn wait_held(client: &ClusterClient, receipt: &voidbox::Receipt, ids: &[u32]) {
    let t = Instant::now();
    loop {
        let held = client.receipts_of(&receipt.invocation);
        if ids
            .iter()
            .all(|id| held.get(id) == Some(&Some(receipt.receipt)))
        {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "replicas {ids:?} hold the receipt {}: {held:?}",
            receipt.receipt
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_partial_execution_two_replicas_run_each_batch_and_every_replica_holds_its_receipt() {
    // Every batch (one invocation each here) runs on two backups; the
    // primary and the third backup adopt the results the two sign alike.
    let (c, _, token, client, tool) = wc_cluster_with(&["--partial-execution-min", "1"]);
    let run = |text: &str| {
        let input = client.put_blob(text.as_bytes()).unwrap();
        let signed = client
            .invoke(&token, &Invocation::new(tool, input))
            .unwrap();
        let OpResult::Receipt { receipt, output } = signed.result else {
            panic!("the invocation ran: {:?}", signed.result);
        };
        assert_eq!(receipt.outcome, voidbox::Outcome::Ok);
        (receipt, output.expect("a small output comes inline"))
    };
    let mut receipts = Vec::new();
    for i in 0..12 {
        let text = format!("partial execution run {i}\n");
        let (receipt, output) = run(&text);
        let words: u64 = serde_json::from_slice::<Value>(&output).unwrap()["words"]
            .as_u64()
            .unwrap();
        assert_eq!(words, 4, "{}", String::from_utf8_lossy(&output));
        receipts.push(receipt);
    }
    // Adopting replicas store the receipts too, so every replica answers
    // for every invocation (and the checkpoints' chains agree).
    for r in &receipts {
        wait_held(&client, r, &[0, 1, 2, 3]);
    }
    let status = client.status(Duration::from_secs(2));
    let primary = status.values().find(|s| s.primary).expect("a primary");
    assert!(
        primary.batches_adopted >= 6,
        "the primary runs no batch while its executors answer: {status:?}"
    );
    // What a replica adopted it did not run: the primary runs only the
    // batches it gave up waiting for (none on a quiet machine), and the
    // replicas together ran each invocation about twice, not four times.
    assert_eq!(
        primary.batches_adopted + primary.adoptions_abandoned,
        12,
        "{status:?}"
    );
    assert_eq!(
        primary.sandbox_runs, primary.adoptions_abandoned,
        "{status:?}"
    );
    let runs: u64 = status.values().map(|s| s.sandbox_runs).sum();
    let gave_up: u64 = status.values().map(|s| s.adoptions_abandoned).sum();
    assert_eq!(runs, 2 * 12 + gave_up, "{status:?}");
    let adopted_by_backups: u64 = status
        .values()
        .filter(|s| !s.primary)
        .map(|s| s.batches_adopted)
        .sum();
    assert!(
        adopted_by_backups > 0,
        "each backup adopts a third: {status:?}"
    );

    // An executor dies: the replicas waiting for its results run the
    // batches themselves after a short wait, and pass it over afterwards.
    let dead = (0..4).find(|id| *id != primary.id).unwrap();
    c.sigkill(dead);
    let live: Vec<u32> = (0..4).filter(|id| *id != dead).collect();
    let mut last = None;
    for i in 0..6 {
        last = Some(run(&format!("after the kill {i}\n")).0);
    }
    // (Asking a dead replica costs the client's side timeout, so once.)
    wait_held(&client, &last.expect("ran"), &live);
    let status = client.status(Duration::from_secs(2));
    let abandoned: u64 = status.values().map(|s| s.adoptions_abandoned).sum();
    assert!(
        abandoned > 0,
        "someone ran what the dead replica was to run: {status:?}"
    );
}

/// Acknowledged receipts, by invocation digest.
type Acked = Arc<Mutex<BTreeMap<Digest, Digest>>>;

/// Closed-loop load through the client library until `stop`.
fn load(file: ClusterFile, tool: Digest, token: String, stop: Arc<AtomicBool>, acked: Acked) {
    let client = ClusterClient::connect_with(file, generate_key()).unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let input = format!("request {n}\n");
        let template = Invocation::new(tool, Digest::of(b""));
        // A failure (the cluster changing views beyond the client's
        // patience) is not acknowledged, so nothing is claimed for it.
        if let Ok(signed) = client.run(&token, &template, input.as_bytes()) {
            if let OpResult::Receipt { receipt, .. } = &signed.result {
                acked
                    .lock()
                    .unwrap()
                    .insert(receipt.invocation, receipt.receipt);
            }
        }
    }
}

#[test]
fn acknowledged_invocations_survive_sigkill_of_a_backup_and_the_primary() {
    let (c, file, token, probe, tool) = wc_cluster();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (file, token, stop, acked) =
                (file.clone(), token.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || load(file, tool, token, stop, acked))
        })
        .collect();
    let wait_acks = |more: usize| {
        let start_len = acked.lock().unwrap().len();
        let t = Instant::now();
        while acked.lock().unwrap().len() < start_len + more {
            if t.elapsed() > Duration::from_secs(120) {
                panic!(
                    "the cluster stopped acknowledging: {} of {more} more in 120 s; replicas: {:?}",
                    acked.lock().unwrap().len() - start_len,
                    probe.status(Duration::from_secs(1))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_acks(30);
    // A backup dies mid-load, misses work, and comes back.
    c.sigkill(2);
    wait_acks(100);
    c.ok(&["cluster", "up", "{c}"]);
    wait_acks(30);
    // Then the primary dies: the others change views and go on.
    let before = probe.status(Duration::from_secs(1));
    let primary = before
        .values()
        .find(|s| s.primary)
        .expect("a primary answers")
        .id;
    let stable_before = before.values().map(|s| s.stable).max().unwrap_or(0);
    c.sigkill(primary);
    wait_acks(60);
    c.ok(&["cluster", "up", "{c}"]);
    wait_acks(30);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    // Every replica catches up to the same point, and checkpoints still
    // become stable after the kills (a divergence among replicas would
    // stop them while requests still execute). A replica that comes
    // back behind may sit out the current view (it suspected the primary
    // while it was catching up) and then follows by state transfer at each
    // stable checkpoint, so a trickle of requests carries it to the next
    // one; that is why this loop keeps submitting.
    let trickle = ClusterClient::connect_with(file.clone(), generate_key()).unwrap();
    let t = Instant::now();
    let mut n = 0;
    loop {
        let s = probe.status(Duration::from_secs(1));
        let done: Vec<u64> = s.values().map(|s| s.executed_requests).collect();
        let stable: Vec<u64> = s.values().map(|s| s.stable).collect();
        if s.len() == 4
            && done.iter().all(|d| *d == done[0])
            && stable.iter().all(|x| *x > stable_before)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "replicas did not converge: {s:?}"
        );
        n += 1;
        let template = Invocation::new(tool, Digest::of(b""));
        if let Ok(signed) = trickle.run(&token, &template, format!("trickle {n}").as_bytes()) {
            if let OpResult::Receipt { receipt, .. } = &signed.result {
                acked
                    .lock()
                    .unwrap()
                    .insert(receipt.invocation, receipt.receipt);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // ...and holds every acknowledged invocation with the same receipt.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 250, "{} acknowledged", acked.len());
    for (invocation, receipt) in &acked {
        let held = probe.receipts_of(invocation);
        assert_eq!(held.len(), 4, "every replica answers for {invocation}");
        for (replica, r) in held {
            assert_eq!(
                r,
                Some(*receipt),
                "replica {replica} holds a different receipt for {invocation}"
            );
        }
    }
}
