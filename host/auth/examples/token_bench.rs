//! Token verification benchmark: a token with 5 first-party caveats,
//! verified including caveat evaluation, here and by pymacaroons on the same
//! token in the same run. Prints one JSON object.
//!
//! `cargo run --release -p voidbox-auth --example token_bench`
//! (`TOKEN_BENCH_ITERS` sets the iterations per round; default 100000.)

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use voidbox_auth::*;

const ROUNDS: usize = 5;

/// This thread's CPU time: unlike wall time, it does not count the time the
/// scheduler gave to other processes on a shared machine.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds per call, median over rounds: (wall, thread CPU).
#[derive(Clone, Copy)]
struct Figure {
    wall: f64,
    cpu: f64,
}

/// Runs `f` `iters` times per round, after a warm-up.
fn time_ns(iters: u64, mut f: impl FnMut()) -> Figure {
    for _ in 0..iters / 10 {
        f();
    }
    let mut wall = Vec::with_capacity(ROUNDS);
    let mut cpu = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let (start, start_cpu) = (Instant::now(), thread_cpu_ns());
        for _ in 0..iters {
            f();
        }
        cpu.push((thread_cpu_ns() - start_cpu) as f64 / iters as f64);
        wall.push(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    Figure {
        wall: wall[ROUNDS / 2],
        cpu: cpu[ROUNDS / 2],
    }
}

const PYTHON: &str = r#"
import sys, binascii, time
from pymacaroons import Macaroon, Verifier
token, root, iters = sys.argv[1], binascii.unhexlify(sys.argv[2]), int(sys.argv[3])
caveats = sys.argv[4].split("|")
def verify(m):
    v = Verifier()
    for c in caveats:
        v.satisfy_exact(c)
    assert v.verify(m, root)
def median(f):
    for _ in range(iters // 10):
        f()
    wall, cpu = [], []
    for _ in range(5):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(iters):
            f()
        cpu.append((time.thread_time_ns() - start_cpu) / iters)
        wall.append((time.perf_counter_ns() - start) / iters)
    wall.sort()
    cpu.sort()
    return "%f %f" % (wall[2], cpu[2])
parsed = Macaroon.deserialize(token)
print(median(lambda: verify(Macaroon.deserialize(token))))
print(median(lambda: verify(parsed)))
"#;

fn ensure_pymacaroons() -> Result<(), String> {
    let import = || {
        Command::new("python3")
            .args(["-c", "import pymacaroons"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if import() {
        return Ok(());
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "pymacaroons"])
        .status();
    if import() {
        Ok(())
    } else {
        Err("python3 with pymacaroons is needed for the comparison; `python3 -m pip install pymacaroons` failed".to_owned())
    }
}

fn main() {
    let iters: u64 = std::env::var("TOKEN_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let keys = MemoryKeyStore::new();
    let key_id = KeyId::new("bench").expect("valid key id");
    let root = RootKey::generate(&mut OsEntropy);
    keys.insert(key_id.clone(), root.clone());
    let tool = Digest([7; 32]);
    let texts = [
        format!("tool = {tool}"),
        "tool-name = wc".to_owned(),
        "expires < 4000000000".to_owned(),
        "fuel <= 100000000".to_owned(),
        "input-bytes <= 1048576".to_owned(),
    ];
    let caveats: Vec<Caveat> = texts.iter().map(|t| t.parse().expect("caveat")).collect();
    let token = Token::mint(&key_id, &root, &caveats, &mut OsEntropy).expect("token mints");
    let text = token.encode();
    let request = Request {
        tool_digest: tool,
        tool_name: "wc",
        now_unix: 1_800_000_000,
        budget: Budget::UNLIMITED,
        input_bytes: 4096,
        reads: &[],
    };
    // Sanity: every path accepts the token before it is timed.
    verify(&token, &request, &keys, &NoRevocations, &[]).expect("token verifies");
    reference::verify_with_macaroon_crate(&text, &[], &request, &keys, &NoRevocations)
        .expect("token verifies with the macaroon crate");

    let decode_verify = time_ns(iters, || {
        let t = Token::decode(black_box(&text)).expect("decodes");
        black_box(verify(&t, black_box(&request), &keys, &NoRevocations, &[]).is_ok());
    });
    let verify_only = time_ns(iters, || {
        black_box(
            verify(
                black_box(&token),
                black_box(&request),
                &keys,
                &NoRevocations,
                &[],
            )
            .is_ok(),
        );
    });
    let crate_decode_verify = time_ns(iters, || {
        black_box(
            reference::verify_with_macaroon_crate(
                black_box(&text),
                &[],
                &request,
                &keys,
                &NoRevocations,
            )
            .is_ok(),
        );
    });

    if let Err(e) = ensure_pymacaroons() {
        eprintln!("token_bench: {e}");
        std::process::exit(1);
    }
    let py_iters = (iters / 5).max(1000);
    let out = Command::new("python3")
        .args([
            "-c",
            PYTHON,
            &text,
            &root.to_hex(),
            &py_iters.to_string(),
            &texts.join("|"),
        ])
        .output()
        .expect("python3 runs");
    if !out.status.success() {
        eprintln!(
            "token_bench: pymacaroons run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    let py: Vec<Figure> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut v = l
                .split_whitespace()
                .map(|x| x.parse::<f64>().expect("python prints numbers"));
            Figure {
                wall: v.next().expect("wall figure"),
                cpu: v.next().expect("cpu figure"),
            }
        })
        .collect();
    let (py_decode_verify, py_verify) = (py[0], py[1]);
    let goal_ns = 3000.0;
    let fig = |name: &str, f: Figure| {
        format!(
            "\"{name}_ns\":{{\"cpu\":{:.0},\"wall\":{:.0}}}",
            f.cpu, f.wall
        )
    };
    println!(
        "{{\"bench\":\"token_verify\",\"caveats\":5,\"iterations\":{iters},\"pymacaroons_iterations\":{py_iters},\
{},{},{},{},{},\
\"ratio_pymacaroons_over_voidbox_decode_verify_cpu\":{:.1},\"ratio_pymacaroons_over_voidbox_verify_cpu\":{:.1},\
\"goal_ns\":{goal_ns:.0},\"meets_goal_cpu\":{}}}",
        fig("voidbox_auth_decode_verify", decode_verify),
        fig("voidbox_auth_verify", verify_only),
        fig("macaroon_crate_decode_verify", crate_decode_verify),
        fig("pymacaroons_deserialize_verify", py_decode_verify),
        fig("pymacaroons_verify", py_verify),
        py_decode_verify.cpu / decode_verify.cpu,
        py_verify.cpu / verify_only.cpu,
        decode_verify.cpu <= goal_ns,
    );
}
