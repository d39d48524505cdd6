//! `cargo xtask`: the project's tasks beyond cargo. Standard library only,
//! so it builds in seconds on a fresh machine.
//!
//! - `setup`  installs what a fresh machine lacks (the wasm32-wasip2 target,
//!   Z3 and libclang, Python's pymacaroons)
//! - `tools`  builds the tools under tools/ for wasm32-wasip2
//! - `demo`   setup + tools + the host, then a run on a temp data directory
//! - `test`   setup + fmt check + clippy + every test + 1,000 PBFT
//!   simulator seeds (what CI runs)
//! - `bench`  setup + tools + `voidbox bench`
//! - `bench-cluster [--seconds N] [--clients N]`  a 4-replica cluster in a
//!   temp directory, with fsync on and then off: `voidbox cluster bench`

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    let result = match task {
        "setup" => setup(),
        "tools" => tools(),
        "demo" => setup().and_then(|_| tools()).and_then(|_| demo()),
        "test" => setup().and_then(|_| tools()).and_then(|_| test()),
        "bench" => setup().and_then(|_| tools()).and_then(|_| bench(rest)),
        "bench-cluster" => setup()
            .and_then(|_| tools())
            .and_then(|_| bench_cluster(rest)),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup|tools|demo|test|bench [ARGS]|bench-cluster [ARGS]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {}", show(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {}: {e}", show(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", show(cmd)))
    }
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Installs what a fresh machine of this kind lacks. Idempotent and quiet
/// when everything is there.
fn setup() -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to add the wasm32-wasip2 target: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout).contains("wasm32-wasip2") {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    // z3 (contracts) links the system Z3 and runs bindgen, which needs
    // libclang; the macaroon crate's libsodium comes from the system too
    // (see .cargo/config.toml) instead of a 2.5-minute bundled build.
    // procps gives `kill`, which `voidbox cluster down` and the cluster
    // tests use to stop replica processes.
    let missing: Vec<&str> = [
        "libz3-dev",
        "libclang-dev",
        "libsodium-dev",
        "pkg-config",
        "procps",
    ]
    .into_iter()
    .filter(|pkg| !succeeds(Command::new("dpkg").args(["-s", pkg])))
    .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !succeeds(Command::new("python3").args(["-c", "import pymacaroons"])) {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "pymacaroons",
        ]))?;
    }
    Ok(())
}

fn tools() -> Result {
    // The build script of tests/artifacts builds the tools/ workspace for
    // wasm32-wasip2 and names each component after its tool.
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "voidbox-tool-artifacts",
    ]))
}

/// The release `voidbox` binary, in `CARGO_TARGET_DIR` when that is set
/// (cargo builds it there), else in the repository's `target/`.
fn voidbox_bin() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root().join(t) })
        .unwrap_or_else(|| root().join("target"))
        .join("release/voidbox")
}

fn tool_path(name: &str) -> PathBuf {
    root().join(format!("target/wasm-tools/components/{name}.wasm"))
}

fn demo() -> Result {
    run(cargo().args(["build", "--release", "--quiet", "-p", "voidbox"]))?;
    let voidbox = voidbox_bin();
    let home = std::env::temp_dir().join(format!("voidbox-demo-{}", std::process::id()));
    let vb = |args: &[&str]| {
        let mut c = Command::new(&voidbox);
        c.arg("--home").arg(&home).args(args);
        c
    };
    let input = home.join("input.txt");
    let result = (|| {
        run(&mut vb(&["init"]))?;
        let wc = tool_path("wc");
        run(vb(&["tool", "add"]).arg(&wc))?;
        run(&mut vb(&["tool", "list"]))?;
        std::fs::write(
            &input,
            "Voidbox runs WebAssembly tools in a sandbox.\nEvery run gets a receipt.\n",
        )
        .map_err(|e| e.to_string())?;
        eprintln!("\n-- output of wc --");
        run(vb(&["run", "wc", "--input"]).arg(&input))?;
        eprintln!("\n-- the receipt --");
        run(vb(&["run", "wc", "--json", "--input"]).arg(&input))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&home);
    result
}

fn test() -> Result {
    warn_if_disk_is_short();
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    // tests/cli.rs drives the real binary, which `cargo test` does not
    // build for another package's tests. It is built with every target of
    // the workspace so that its dependencies resolve to the features the
    // test run resolves (dev-dependencies included): built alone, the
    // binary's wasmtime and cranelift differed in features from the tests'
    // and the whole stack compiled twice (7 of a 24-minute CI run).
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "--workspace",
        "--all-targets",
    ]))?;
    let (mut passed, mut failed) =
        run_counting_tests(cargo().args(["test", "--workspace", "--release"]))?;
    // The tools are a workspace of their own (built for wasm32-wasip2 by
    // tests/artifacts); their unit tests run natively, in the target
    // directory of that build, so its host-side build dependencies are
    // shared.
    let (p, f) = run_counting_tests(
        cargo()
            .args(["test", "--release", "--manifest-path", "tools/Cargo.toml"])
            .env("CARGO_TARGET_DIR", root().join("target/wasm-tools")),
    )?;
    (passed, failed) = (passed + p, failed + f);
    // The slow group: 1,000 seeds of the PBFT simulator with faults and a
    // random Byzantine replica (about a minute). Any failing seed fails CI
    // and is printed with its trace hash, so it replays exactly.
    run(cargo().args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "voidbox-pbft",
        "--example",
        "pbft-sim",
        "--",
        "--seeds",
        "1000",
        "--start",
        "0",
        "--replicas",
        "4",
        "--drop",
        "0.05",
        "--byzantine",
        "random",
    ]))?;
    // One plain closing line over every test binary and doc-test run.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Below this much free disk, `test` warns: a fresh clone's `target/` after
/// `cargo xtask test` (release and clippy outputs, the tools) takes about
/// 6 GiB, and the tests' temp directories some more.
const BUILD_DISK_BYTES: u64 = 8 << 30;

/// Says so up front when the disk the build writes to has less room than a
/// clean build takes: otherwise the first sign is a linker killed by a bus
/// error halfway through (seen in CI), which names neither cause nor fix.
/// Only a warning: an incremental build may need far less.
fn warn_if_disk_is_short() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let probe = if target.exists() { target } else { root() };
    let Ok(out) = Command::new("df").arg("-Pk").arg(&probe).output() else {
        return;
    };
    // POSIX format: a header line, then `fs blocks used available ...`.
    let text = String::from_utf8_lossy(&out.stdout);
    let available_kib = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(kib) = available_kib {
        let free = kib * 1024;
        if free < BUILD_DISK_BYTES {
            eprintln!(
                "xtask test: warning: only {:.1} GiB free under {}; a clean build and its tests \
                 need about {} GiB. If it fails with \"No space left on device\" or a linker bus error, \
                 free disk space (old target directories are the usual culprit) and run again.",
                free as f64 / f64::from(1u32 << 30),
                probe.display(),
                BUILD_DISK_BYTES >> 30
            );
        }
    }
}

/// Runs `cargo test`, passing its output through, and adds up the
/// `test result:` lines of every test binary.
fn run_counting_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("$ {}", show(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", show(cmd)))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next().and_then(|n| n.parse().ok()))
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "`{}` failed ({status}); {failed} failed",
            show(cmd)
        ));
    }
    Ok((passed, failed))
}

fn bench(rest: &[String]) -> Result {
    run(cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "voidbox",
            "--",
            "bench",
            "--tool",
        ])
        .arg(tool_path("echo"))
        .args(rest))
}

/// Starts a 4-replica cluster in a temp directory (fsync on, then off),
/// adds the echo tool, and runs `voidbox cluster bench --json` on it.
fn bench_cluster(rest: &[String]) -> Result {
    run(cargo().args(["build", "--release", "-p", "voidbox", "--bin", "voidbox"]))?;
    let bin = voidbox_bin();
    let base = std::env::temp_dir().join(format!("voidbox-bench-cluster-{}", std::process::id()));
    let mut result = Ok(());
    for (i, fsync) in [true, false].into_iter().enumerate() {
        let dir = base.join(if fsync { "fsync" } else { "nofsync" });
        let port = (7520 + 10 * i).to_string();
        let dir_s = dir.to_string_lossy().into_owned();
        let mut init = vec!["cluster", "init", "--base-port", &port, &dir_s];
        if !fsync {
            init.push("--no-fsync");
        }
        result = run(Command::new(&bin).args(&init))
            .and_then(|_| run(Command::new(&bin).args(["cluster", "up", &dir_s])))
            .and_then(|_| {
                run(Command::new(&bin)
                    .args(["tool", "add", "--cluster", &dir_s])
                    .arg(tool_path("echo")))
            })
            .and_then(|_| {
                run(Command::new(&bin)
                    .args(["cluster", "bench", &dir_s, "--json"])
                    .args(rest))
            });
        let _ = run(Command::new(&bin).args(["cluster", "down", &dir_s]));
        if result.is_err() {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    result
}
