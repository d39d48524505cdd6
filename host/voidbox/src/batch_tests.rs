//! [`Host::invoke_batch`] against [`Host::invoke`], with real tools.

use std::time::Duration;

use voidbox_cas::{Digest, Store};
use voidbox_sandbox::{Budget, Outcome};

use crate::{Host, Invocation};

fn host(slots: usize) -> (Host, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::open(dir.path()).unwrap();
    assert!(host.set_worker_slots(slots));
    (host, dir)
}

fn add(host: &Host, path: &str) -> Digest {
    host.add_tool_file(path.as_ref(), None).unwrap().digest
}

fn budget() -> Budget {
    Budget {
        fuel: 50_000_000,
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
        timeout: Duration::from_secs(20),
    }
}

/// A batch with two tools, repeats, an invocation the cache already holds,
/// one that runs out of fuel, and one whose input is missing.
fn batch(host: &Host) -> Vec<Invocation> {
    let echo = add(host, voidbox_tool_artifacts::ECHO);
    let wc = add(host, voidbox_tool_artifacts::WC);
    let looping = add(host, voidbox_tool_artifacts::HOSTILE_LOOP);
    let mut out = Vec::new();
    for i in 0..24 {
        let input = host.put_input(format!("input {i}\n").as_bytes()).unwrap();
        let tool = if i % 3 == 0 { wc } else { echo };
        out.push(Invocation::new(tool, input).budget(budget()));
    }
    // Repeats of earlier invocations, in the middle and at the end.
    out.insert(10, out[2].clone());
    out.push(out[5].clone());
    out.push(out[5].clone());
    // Answered by the cache: run once before the batch.
    let warm = Invocation::new(echo, host.put_input(b"cached").unwrap()).budget(budget());
    host.invoke(&warm).unwrap();
    out.push(warm);
    let empty = host.put_input(b"").unwrap();
    out.push(Invocation::new(looping, empty).budget(budget()));
    out.push(Invocation::new(echo, Digest::of(b"never stored")).budget(budget()));
    out
}

#[test]
fn a_batch_gives_the_receipts_of_sequential_invokes_in_order() {
    let (seq_host, _d1) = host(1);
    let (batch_host, _d2) = host(3);
    let sequential: Vec<_> = batch(&seq_host)
        .iter()
        .map(|i| seq_host.invoke(i))
        .collect();
    let invocations = batch(&batch_host);
    let batched = batch_host.invoke_batch(&invocations);
    assert_eq!(batched.len(), sequential.len());
    for (k, (s, b)) in sequential.iter().zip(&batched).enumerate() {
        match (s, b) {
            (Ok(s), Ok(b)) => {
                assert_eq!(s.receipt, b.receipt, "invocation {k}");
                assert_eq!(s.invocation, b.invocation, "invocation {k}");
                assert_eq!(s.cached, b.cached, "invocation {k}");
                assert_eq!(
                    seq_host.output(s).unwrap(),
                    batch_host.output(b).unwrap(),
                    "invocation {k}"
                );
            }
            (Err(s), Err(b)) => assert_eq!(s.to_string(), b.to_string(), "invocation {k}"),
            (s, b) => panic!("invocation {k}: sequential {s:?}, batch {b:?}"),
        }
    }
    assert!(matches!(
        batched[batched.len() - 2].as_ref().unwrap().outcome,
        Outcome::OutOfFuel
    ));
    // The receipts are stored and survive a restart.
    batch_host.flush().unwrap();
    let some = batched[0].as_ref().unwrap().clone();
    drop(batch_host);
    let reopened = Host::open(_d2.path()).unwrap();
    assert_eq!(
        reopened.receipt(&some.receipt).unwrap().0.receipt,
        some.receipt
    );
    assert!(reopened.cached(&some.invocation).unwrap().is_some());
}

#[test]
fn every_invocation_of_a_batch_runs_exactly_once() {
    let (host, _dir) = host(2);
    let invocations = batch(&host);
    let runs_before = host.runs();
    let results = host.invoke_batch(&invocations);
    let unique: std::collections::HashSet<Digest> =
        invocations.iter().map(Invocation::digest).collect();
    // Runs: every distinct invocation but the cached one and the one whose
    // input is missing (it fails before running).
    assert_eq!(host.runs() - runs_before, unique.len() as u64 - 2);
    let stats = host.pool_stats();
    assert_eq!(stats.worker_slots, 2);
    assert_eq!(stats.batches, 1);
    // The pool took each distinct invocation once (the cached one and the
    // one whose input is missing included).
    assert_eq!(stats.jobs_per_slot.iter().sum::<u64>(), unique.len() as u64);
    assert_eq!(
        stats.placed_annealed + stats.placed_repaired + stats.placed_greedy,
        1,
        "{stats:?}"
    );
    // Fresh runs are not cached; repeats within the batch are.
    let fresh = results
        .iter()
        .filter(|r| matches!(r, Ok(r) if !r.cached))
        .count();
    assert_eq!(fresh as u64, unique.len() as u64 - 2);
    // A second identical batch runs nothing.
    let again = host.invoke_batch(&invocations);
    assert_eq!(host.runs() - runs_before, unique.len() as u64 - 2);
    assert!(again
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .all(|r| r.cached));
}

#[test]
fn run_batch_gives_the_receipts_of_sequential_runs_in_order() {
    let (seq_host, _d1) = host(1);
    let (batch_host, _d2) = host(2);
    let inputs: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("line {}\n", i % 15).into_bytes())
        .collect();
    let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let mut receipts = Vec::new();
    for (h, batched) in [(&seq_host, false), (&batch_host, true)] {
        let echo = add(h, voidbox_tool_artifacts::ECHO);
        let template = Invocation::new(echo, Digest::of(b"")).budget(budget());
        receipts.push(if batched {
            h.run_batch(&template, &inputs)
        } else {
            inputs.iter().map(|i| h.run(&template, i)).collect()
        });
    }
    let (sequential, batched) = (&receipts[0], &receipts[1]);
    for (k, (s, b)) in sequential.iter().zip(batched).enumerate() {
        let (s, b) = (s.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(s.receipt, b.receipt, "input {k}");
        assert_eq!(s.cached, b.cached, "input {k}");
        // Inputs 15.. repeat 0..5: answered from the batch's first runs.
        assert_eq!(b.cached, k >= 15, "input {k}");
        assert_eq!(
            batch_host.output(b).unwrap().unwrap(),
            inputs[k],
            "input {k}"
        );
        // The input was stored by the slot that ran it.
        assert_eq!(batch_host.blobs().get(&b.input).unwrap(), inputs[k]);
    }
    assert_eq!(batch_host.runs(), 15);
    assert_eq!(
        batch_host.pool_stats().jobs_per_slot.iter().sum::<u64>(),
        15
    );
}
