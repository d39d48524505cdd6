//! What one ed25519 operation costs on this machine, as the replicas make
//! them: a client's request signed and checked alone, and checked in
//! batches of the sizes a busy primary cuts. Prints one JSON line.
//!
//! ```text
//! cargo run --release -p voidbox-pbft --example crypto-bench -- --rounds 20000
//! ```
//!
//! Which curve25519 backend runs (AVX-512 IFMA, AVX2 or portable) is
//! chosen at build time by `.cargo/config.toml` and at run time by the CPU;
//! compare builds by running their binaries one after the other.

use std::process::ExitCode;
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey, Verifier};
use voidbox_pbft::{key_from_seed, ClientId, Request, SignedRequest};

fn main() -> ExitCode {
    let mut rounds: u32 = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--rounds", Some(v)) if v > 0 => rounds = v,
            _ => {
                eprintln!("crypto-bench: the only option is --rounds N (N > 0)");
                return ExitCode::from(2);
            }
        }
    }
    let keys: Vec<SigningKey> = (0..64)
        .map(|i| key_from_seed(7, &format!("client-{i}")))
        .collect();
    // A request the size of a small invocation (an operation of 300 bytes).
    let requests: Vec<SignedRequest> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let request = Request {
                client: ClientId::new(&k.verifying_key(), 0),
                timestamp: i as u64 + 1,
                operation: vec![i as u8; 300],
            };
            SignedRequest::sign(request, k)
        })
        .collect();
    let verifying: Vec<_> = keys.iter().map(SigningKey::verifying_key).collect();

    let sign_us = per_op(rounds, 1, || {
        std::hint::black_box(SignedRequest::sign(requests[0].request.clone(), &keys[0]));
    });
    let verify_us = per_op(rounds, 1, || {
        assert!(requests[0].verify_with(&verifying[0]));
    });
    // The same bytes through ed25519-dalek alone, for comparison with the
    // issue's figures.
    let message = [7u8; 100];
    let signature = keys[0].sign(&message);
    let raw_verify_us = per_op(rounds, 1, || {
        assert!(verifying[0].verify(&message, &signature).is_ok());
    });
    let mut batches = Vec::new();
    for n in [2usize, 8, 22, 64] {
        let messages: Vec<Vec<u8>> = requests[..n]
            .iter()
            .map(|r| {
                let mut m = r.request.operation.clone();
                m.extend_from_slice(&r.request.timestamp.to_le_bytes());
                m
            })
            .collect();
        let sigs: Vec<_> = keys[..n]
            .iter()
            .zip(&messages)
            .map(|(k, m)| k.sign(m))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let us = per_op(rounds / n as u32 + 1, n, || {
            assert!(ed25519_dalek::verify_batch(&refs, &sigs, &verifying[..n]).is_ok());
        });
        batches.push(format!("\"verify_in_batch_of_{n}_us\":{us:.2}"));
    }
    println!(
        "{{\"crypto_bench\":{{\"rounds\":{rounds},\"sign_request_us\":{sign_us:.2},\
         \"verify_request_us\":{verify_us:.2},\"verify_100_bytes_us\":{raw_verify_us:.2},{}}}}}",
        batches.join(",")
    );
    ExitCode::SUCCESS
}

/// Microseconds per operation of `f`, which does `ops` operations, run
/// `rounds` times after a tenth as many untimed.
fn per_op(rounds: u32, ops: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..rounds / 10 + 1 {
        f();
    }
    // A benchmark, not the core: it may read the clock.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    for _ in 0..rounds {
        f();
    }
    started.elapsed().as_secs_f64() * 1e6 / (rounds as f64 * ops as f64)
}
