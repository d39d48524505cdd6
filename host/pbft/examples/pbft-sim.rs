//! Runs the PBFT simulator over a range of seeds and prints a JSON summary.
//!
//! ```text
//! cargo run --release -p voidbox-pbft --example pbft-sim -- \
//!     --seeds 1000 --start 0 --replicas 4 --drop 0.05 --byzantine random
//! ```
//!
//! Options (defaults in parentheses): --seeds (100), --start (0),
//! --replicas (4), --clients (3), --requests (8, per client), --drop,
//! --duplicate, --corrupt, --delay-max-us, --partition, --crash, --lose-unsynced,
//! --skew-us, --drift-ppm, --fault-ms, --bound-ms, --byzantine (random | none | a comma
//! list of equivocator, forger, replayer, wrong-digest, wrong-result,
//! silent), --partial (odd-seeds | on | off: which seeds run batches on only
//! f + 1 replicas, the others adopting their results), --report (also print one JSON line per failing seed, the first
//! 100). `PBFT_SIM_VERBOSE=1` prints every seed's full report to stderr.
//! The exit status is 1 when a seed failed, 2 on a bad option.

use std::process::ExitCode;
use std::time::Instant;

use voidbox_pbft::sim::{run, run_seeds, Byzantine, ByzantineMode, PartialExecution, SimConfig};

fn parse<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{name} needs a value"))?;
    v.parse().map_err(|_| format!("{name}: cannot parse {v:?}"))
}

fn main() -> ExitCode {
    let mut cfg = SimConfig::default();
    let mut seeds = 100u64;
    let mut start = 0u64;
    let mut report = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--seeds" => seeds = parse(&a, args.next())?,
                "--start" => start = parse(&a, args.next())?,
                "--replicas" => cfg.replicas = parse(&a, args.next())?,
                "--clients" => cfg.clients = parse(&a, args.next())?,
                "--requests" => cfg.requests_per_client = parse(&a, args.next())?,
                "--drop" => cfg.drop = parse(&a, args.next())?,
                "--duplicate" => cfg.duplicate = parse(&a, args.next())?,
                "--corrupt" => cfg.corrupt = parse(&a, args.next())?,
                "--delay-max-us" => cfg.delay_max_us = parse(&a, args.next())?,
                "--partition" => cfg.partition = parse(&a, args.next())?,
                "--crash" => cfg.crash = parse(&a, args.next())?,
                "--lose-unsynced" => cfg.lose_unsynced = parse(&a, args.next())?,
                "--skew-us" => cfg.clock_skew_max_us = parse(&a, args.next())?,
                "--drift-ppm" => cfg.clock_drift_max_ppm = parse(&a, args.next())?,
                "--fault-ms" => cfg.fault_duration_us = parse::<u64>(&a, args.next())? * 1000,
                "--bound-ms" => cfg.liveness_bound_us = parse::<u64>(&a, args.next())? * 1000,
                "--report" => report = true,
                "--partial" => {
                    let v: String = parse(&a, args.next())?;
                    cfg.partial_execution = PartialExecution::parse(&v)
                        .ok_or_else(|| format!("--partial: {v:?} is not odd-seeds, on or off"))?;
                }
                "--byzantine" => {
                    let v: String = parse(&a, args.next())?;
                    cfg.byzantine = match v.as_str() {
                        "random" => ByzantineMode::Random,
                        "none" => ByzantineMode::None,
                        list => ByzantineMode::Fixed(
                            list.split(',')
                                .map(|n| {
                                    Byzantine::parse(n)
                                        .ok_or_else(|| format!("unknown Byzantine behaviour {n:?}"))
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown option {other:?} (see the example's doc comment)"
                    ))
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("pbft-sim: {e}");
            return ExitCode::from(2);
        }
    }
    if cfg.replicas < 4 || (cfg.replicas - 1) % 3 != 0 {
        eprintln!(
            "pbft-sim: --replicas {} is not 3f + 1 with f >= 1; use 4, 7, 10, ...",
            cfg.replicas
        );
        return ExitCode::from(2);
    }
    // The binary may read the wall clock: it only reports how long the
    // seeds took; the simulation itself never sees it.
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let summary = run_seeds(&cfg, start, seeds);
    let elapsed = t0.elapsed().as_millis();
    if report {
        for (seed, v, hash) in &summary.failed {
            println!(
                "{{\"seed\":{seed},\"invariant\":\"{}\",\"detail\":{:?},\"at_us\":{},\"trace_hash\":\"{hash}\"}}",
                v.invariant, v.detail, v.at_us
            );
        }
    }
    if std::env::var_os("PBFT_SIM_VERBOSE").is_some() {
        for seed in start..start + seeds {
            eprintln!(
                "seed {seed}: {:?}",
                run(&SimConfig {
                    seed,
                    ..cfg.clone()
                })
            );
        }
    }
    println!("{}", summary.to_json(elapsed, &cfg, start));
    if summary.failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
