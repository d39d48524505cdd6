//! Solves a model file and prints the JSON report that `voidbox ising solve`
//! prints:
//!
//! `cargo run --release -p voidbox-ising --example solve -- FILE [--sweeps N]
//! [--reads N] [--seed S] [--threads N] [--beta-range HOT COLD] [--no-state]`

use std::process::ExitCode;

use voidbox_ising::{parse_problem, solve_problem, Params};

fn usage() -> ExitCode {
    eprintln!("usage: solve FILE [--sweeps N] [--reads N] [--seed S] [--threads N] [--beta-range HOT COLD] [--no-state]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut params = Params::default();
    let mut file = None;
    let mut keep_state = true;
    let mut k = 0;
    while k < args.len() {
        let a = args[k].as_str();
        let value = |k: usize| args.get(k + 1).cloned();
        let parsed = match a {
            "--sweeps" => value(k)
                .and_then(|v| v.parse().ok())
                .map(|v| params.sweeps = v),
            "--reads" => value(k)
                .and_then(|v| v.parse().ok())
                .map(|v| params.reads = v),
            "--seed" => value(k)
                .and_then(|v| v.parse().ok())
                .map(|v| params.seed = v),
            "--threads" => value(k)
                .and_then(|v| v.parse().ok())
                .map(|v| params.threads = v),
            "--beta-range" => {
                let hot = value(k).and_then(|v| v.parse::<f64>().ok());
                let cold = value(k + 1).and_then(|v| v.parse::<f64>().ok());
                k += 1;
                hot.zip(cold).map(|r| params.beta_range = Some(r))
            }
            "--no-state" => {
                keep_state = false;
                k -= 1;
                Some(())
            }
            _ if !a.starts_with("--") && file.is_none() => {
                file = Some(a.to_string());
                k -= 1;
                Some(())
            }
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("solve: bad or incomplete argument `{a}`");
            return usage();
        }
        k += 2;
    }
    let Some(file) = file else { return usage() };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("solve: cannot read {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let problem = match parse_problem(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("solve: {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpu_before = process_cpu_seconds();
    let result = solve_problem(&problem, &params);
    let cpu = process_cpu_seconds().zip(cpu_before).map(|(b, a)| b - a);
    match result {
        Ok(mut report) => {
            if !keep_state {
                report.state.clear();
            }
            // The CLI's report, plus the process CPU time of the solve (the
            // benchmark compares it, as wall time is noisy on a shared machine).
            let mut json = serde_json::to_value(&report).expect("a report always serializes");
            json["process_cpu_seconds"] = serde_json::json!(cpu);
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("solve: {file}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// CPU time of the whole process (all threads), in seconds.
fn process_cpu_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}
