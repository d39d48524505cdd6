//! CPU cost of the protocol core: n replicas and closed-loop clients in one
//! thread, no network and a no-op application, every signature made and
//! checked. Prints one JSON line. It measures the core alone (what a tokio
//! driver adds is not here).
//!
//! ```text
//! cargo run --release -p voidbox-pbft --example pbft-bench -- --requests 20000 --clients 64
//! ```

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Instant;

use voidbox_pbft::{
    key_from_seed, Client, ClusterConfig, Input, Message, Output, Params, Replica, Target,
};

fn main() -> ExitCode {
    let mut total: u64 = 20_000;
    let mut clients: u32 = 64;
    let mut n: u32 = 4;
    let mut batch: usize = 256;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), v) {
            ("--requests", Some(v)) => total = v,
            ("--clients", Some(v)) => clients = v as u32,
            ("--replicas", Some(v)) => n = v as u32,
            ("--batch", Some(v)) => batch = v as usize,
            _ => {
                eprintln!(
                    "pbft-bench: options are --requests N --clients N --replicas N --batch N"
                );
                return ExitCode::from(2);
            }
        }
    }
    let keys: Vec<_> = (0..n)
        .map(|i| key_from_seed(1, &format!("replica-{i}")))
        .collect();
    let config = ClusterConfig::from_keys((n - 1) / 3, &keys);
    let cluster = match config.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pbft-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let params = Params {
        batch_requests_max: batch,
        checkpoint_interval: 64,
        watermark_window: 256,
        ..Params::default()
    };
    let mut replicas: Vec<Replica> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Replica::new(cluster.clone(), i as u32, k.clone(), params.clone())
                .unwrap_or_else(|e| panic!("replica {i}: {e}"))
        })
        .collect();
    let mut cls: Vec<Client> = (0..clients)
        .map(|j| {
            Client::new(
                cluster.clone(),
                key_from_seed(2, &format!("client-{j}")),
                0,
                u64::MAX / 4,
            )
        })
        .collect();
    let index: std::collections::BTreeMap<_, _> =
        cls.iter().enumerate().map(|(j, c)| (c.id(), j)).collect();
    let mut queue: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
    let mut to_clients: VecDeque<(usize, Message)> = VecDeque::new();
    let mut submitted = 0u64;
    let mut done = 0u64;
    let mut batches = 0u64;
    let mut now = 1_000_000u64;
    // Wall-clock only measures the run; the core never sees it.
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    for c in cls.iter_mut() {
        if let Some((Target::Replica(p), m)) = c.submit(b"noop".to_vec(), now) {
            queue.push_back((p as usize, m.encode()));
            submitted += 1;
        }
    }
    while done < total {
        now += 100;
        for i in 0..n as usize {
            queue.push_front((i, Vec::new()));
        }
        while let Some((i, bytes)) = queue.pop_front() {
            let input = if bytes.is_empty() {
                Input::Tick { now_us: now }
            } else {
                Input::Receive(bytes)
            };
            let mut work: VecDeque<Output> = replicas[i].step(input).into();
            while let Some(o) = work.pop_front() {
                match o {
                    Output::Send { to, message } => match to {
                        Target::Client(c) => to_clients.push_back((index[&c], message)),
                        Target::Replica(r) => queue.push_back((r as usize, message.encode())),
                        Target::AllReplicas => {
                            let b = message.encode();
                            for r in (0..n as usize).filter(|r| *r != i) {
                                queue.push_back((r, b.clone()));
                            }
                        }
                    },
                    Output::Execute(e) => {
                        if i == 0 {
                            batches += 1;
                        }
                        let results = vec![Vec::new(); e.requests.len()];
                        let snapshot = e.snapshot_wanted.then(Vec::new);
                        work.extend(replicas[i].step(Input::Executed {
                            seq: e.seq,
                            results,
                            snapshot,
                        }));
                    }
                    _ => {}
                }
            }
        }
        while let Some((j, m)) = to_clients.pop_front() {
            if cls[j].on_message(&m).is_some() {
                done += 1;
                if submitted < total {
                    if let Some((Target::Replica(p), m)) = cls[j].submit(b"noop".to_vec(), now) {
                        queue.push_back((p as usize, m.encode()));
                        submitted += 1;
                    }
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"replicas\":{n},\"clients\":{clients},\"requests\":{done},\"batches\":{batches},\
         \"mean_batch\":{:.1},\"wall_seconds_one_thread\":{secs:.3},\"requests_per_second_one_thread\":{:.0}}}",
        done as f64 / batches.max(1) as f64,
        done as f64 / secs
    );
    ExitCode::SUCCESS
}
