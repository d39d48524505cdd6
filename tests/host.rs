//! End-to-end tests through the embedding API: real components compiled
//! from tools/, a real database and CAS in a temp directory.

use std::time::Duration;

use serde_json::Value;
use voidbox::{Budget, Digest, Error, Host, Invocation, Outcome, Store};
use voidbox_e2e::{tools, TestHost};

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn small_budget() -> Budget {
    Budget {
        fuel: 200_000_000,
        memory_bytes: 64 << 20,
        output_bytes: 1 << 20,
        timeout: Duration::from_secs(20),
    }
}

#[test]
fn wc_counts_lines_words_chars_and_bytes() {
    let h = TestHost::new();
    let wc = h.add(tools::WC);
    let (r, out) = h.run(wc, "héllo wörld\nsecond line\n".as_bytes(), &[]);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(
        json(&out),
        serde_json::json!({"lines": 2, "words": 4, "chars": 24, "bytes": 26})
    );
    assert!(r.fuel_used > 0);
}

#[test]
fn jq_queries_paths() {
    let h = TestHost::new();
    let jq = h.add(tools::JQ);
    let doc = br#"{"items":[{"id":1,"name":"a"},{"id":2,"name":"b"}]}"#;
    let (r, out) = h.run(jq, doc, &[("query", ".items[].id")]);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(out, b"1\n2\n");
    let (_, out) = h.run(jq, doc, &[("query", ".items[1].name"), ("raw", "true")]);
    assert_eq!(out, b"b\n");
    let (r, _) = h.run(jq, b"not json", &[("query", ".")]);
    assert!(
        matches!(r.outcome, Outcome::ToolError { ref code, .. } if code == "bad-input"),
        "{:?}",
        r.outcome
    );
}

#[test]
fn md2html_renders_markdown() {
    let h = TestHost::new();
    let md = h.add(tools::MD2HTML);
    let (r, out) = h.run(md, b"# Title\n\nSome *emphasis* and `code`.\n", &[]);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "<h1>Title</h1>\n<p>Some <em>emphasis</em> and <code>code</code>.</p>\n"
    );
}

#[test]
fn csv2json_turns_rows_into_objects() {
    let h = TestHost::new();
    let csv = h.add(tools::CSV2JSON);
    let (r, out) = h.run(csv, b"name;n\nada;1\n\"b;c\";2\n", &[("delimiter", ";")]);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(
        json(&out),
        serde_json::json!([{"name": "ada", "n": "1"}, {"name": "b;c", "n": "2"}])
    );
}

#[test]
fn grep_finds_matching_lines() {
    let h = TestHost::new();
    let grep = h.add(tools::GREP);
    let text = b"alpha\nbeta\ngamma\nalphabet\n";
    let (r, out) = h.run(grep, text, &[("pattern", "^alpha")]);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(
        json(&out),
        serde_json::json!({"count": 2, "matches": [{"line": 1, "text": "alpha"}, {"line": 4, "text": "alphabet"}]})
    );
    let (r, _) = h.run(grep, text, &[("pattern", "(")]);
    assert!(
        matches!(r.outcome, Outcome::ToolError { ref code, .. } if code == "bad-arg"),
        "{:?}",
        r.outcome
    );
}

#[test]
fn hash_matches_the_hosts_blake3_and_reads_a_granted_blob() {
    let h = TestHost::new();
    let hash = h.add(tools::HASH);
    let (r, out) = h.run(hash, b"abc", &[("algo", "all")]);
    assert_eq!(r.outcome, Outcome::Ok);
    let v = json(&out);
    assert_eq!(
        v["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(v["blake3"].as_str().unwrap(), Digest::of(b"abc").hex());
    assert_eq!(v["bytes"], 3);

    // A granted blob can be read; the same blob without the grant cannot.
    let blob = h.host.put_input(b"granted content").unwrap();
    let input = h.host.put_input(b"").unwrap();
    let inv = Invocation::new(hash, input)
        .arg("algo", "blake3")
        .arg("blob", blob.to_string());
    let denied = h.host.invoke(&inv).unwrap();
    assert!(
        matches!(denied.outcome, Outcome::ToolError { ref code, .. } if code == "blob-not-granted"),
        "{:?}",
        denied.outcome
    );
    let granted = h.host.invoke(&inv.clone().grant(blob)).unwrap();
    assert_eq!(granted.outcome, Outcome::Ok);
    let v = json(&h.host.output(&granted).unwrap().unwrap());
    assert_eq!(v["blake3"].as_str().unwrap(), blob.hex());
}

#[test]
fn an_unmodified_wasi_command_runs_with_stdin_and_argv() {
    let h = TestHost::new();
    let upper = h.add(tools::UPPER);
    let rec = h.host.tool("upper").unwrap();
    assert_eq!(rec.kind, voidbox::ToolKind::Command);
    let (r, out) = h.run(upper, b"hello, world\n", &[("", "first")]);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(String::from_utf8(out).unwrap(), "FIRST\nHELLO, WORLD\n");
}

#[test]
fn endless_loop_runs_out_of_fuel_and_the_host_keeps_serving() {
    let h = TestHost::new();
    let looping = h.add(tools::HOSTILE_LOOP);
    let echo = h.add(tools::ECHO);
    let (r, _) = h.run_with(looping, b"", &[], small_budget());
    assert_eq!(r.outcome, Outcome::OutOfFuel);
    assert_eq!(r.fuel_used, small_budget().fuel);
    assert!(r.output.is_none());
    let (r, out) = h.run(echo, b"still here", &[]);
    assert_eq!(
        (r.outcome, out.as_slice()),
        (Outcome::Ok, &b"still here"[..])
    );
}

#[test]
fn the_wall_clock_guard_ends_an_endless_loop_as_a_timeout_that_is_never_cached() {
    let h = TestHost::new();
    let looping = h.add(tools::HOSTILE_LOOP);
    let echo = h.add(tools::ECHO);
    // Fuel for hours: only the 50 ms guard can end it.
    let budget = Budget {
        fuel: 1 << 50,
        timeout: Duration::from_millis(50),
        ..small_budget()
    };
    let input = h.host.put_input(b"").unwrap();
    let inv = Invocation::new(looping, input).budget(budget);
    let started = std::time::Instant::now();
    let first = h.host.invoke(&inv).unwrap();
    assert_eq!(first.outcome, Outcome::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(first.output.is_none());
    // A timeout depends on the host's speed, not on the invocation: the
    // same invocation runs again instead of being answered from the cache.
    let second = h.host.invoke(&inv).unwrap();
    assert_eq!(second.outcome, Outcome::Timeout);
    assert!(
        !second.cached,
        "a timeout was answered from the action cache"
    );
    let (r, out) = h.run(echo, b"still here", &[]);
    assert_eq!(
        (r.outcome, out.as_slice()),
        (Outcome::Ok, &b"still here"[..])
    );
}

#[test]
fn memory_balloon_hits_the_memory_limit() {
    let h = TestHost::new();
    let balloon = h.add(tools::HOSTILE_BALLOON);
    let (r, _) = h.run_with(balloon, b"", &[], small_budget());
    assert_eq!(r.outcome, Outcome::MemoryLimit);
    assert!(r.memory_peak_bytes <= small_budget().memory_bytes);
    // Within its budget the same tool succeeds.
    let (r, out) = h.run_with(balloon, b"", &[("limit-mib", "8")], small_budget());
    assert_eq!(r.outcome, Outcome::Ok, "{}", String::from_utf8_lossy(&out));
}

#[test]
fn deep_recursion_traps_on_the_stack() {
    let h = TestHost::new();
    let rec = h.add(tools::HOSTILE_RECURSION);
    let (r, _) = h.run_with(rec, b"", &[], small_budget());
    // Each frame of `descend` lives on wasmtime's native stack (its shadow
    // stack in linear memory stays small), so the guard of wasmtime's
    // `max_wasm_stack` is what stops it: the trap is `stack-overflow`, every
    // time. A plain panic (`unreachable-code-reached`) must not pass.
    assert_eq!(
        r.outcome,
        Outcome::Trap {
            code: "stack-overflow".into()
        }
    );
    let (r, out) = h.run_with(rec, b"", &[("depth", "100")], small_budget());
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(json(&out)["depth"], 100);
}

#[test]
fn escape_attempts_are_all_refused() {
    let h = TestHost::new();
    let escape = h.add(tools::HOSTILE_ESCAPE);
    let secret = h.host.put_input(b"not granted").unwrap();
    let (r, out) = h.run(escape, b"", &[("digest", &secret.to_string())]);
    assert_eq!(r.outcome, Outcome::Ok);
    let v = json(&out);
    let attempts = v["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 10, "{v}");
    for a in attempts {
        assert_eq!(a["refused"], true, "not refused: {a}");
    }
    assert_eq!(v["all_refused"], true);
}

#[test]
fn clock_and_randomness_are_deterministic_across_hosts() {
    let (a, b) = (TestHost::new(), TestHost::new());
    let (ta, tb) = (
        a.add(tools::HOSTILE_CLOCKRAND),
        b.add(tools::HOSTILE_CLOCKRAND),
    );
    assert_eq!(ta, tb);
    let (ra, oa) = a.run(ta, b"x", &[]);
    let (rb, ob) = b.run(tb, b"x", &[]);
    assert_eq!(ra.outcome, Outcome::Ok);
    assert_eq!(oa, ob, "clock/random output differs between hosts");
    assert_eq!(ra.receipt, rb.receipt, "receipt digests differ");
    // The guest sees the invocation's time, not the host's clock.
    let v = json(&oa);
    assert_eq!(v["host_now_ns"], 0);
    assert_eq!(v["system_time_ns"], 0);
    // WASI's insecure seed is the documented derivation from the
    // invocation's digest (the host computes it only when a guest asks).
    let mut xof = blake3::Hasher::new_keyed(ra.invocation.as_bytes());
    xof.update(b"voidbox random v1\0insecure-seed");
    let mut seed = [0u8; 16];
    xof.finalize_xof().fill(&mut seed);
    let seed = u128::from_le_bytes(seed);
    assert_eq!(
        v["insecure_seed"],
        serde_json::json!([seed as u64, (seed >> 64) as u64])
    );
    // A different input is a different invocation: different seed.
    let (_, oc) = a.run(ta, b"y", &[]);
    assert_ne!(json(&oc)["getrandom_hex"], v["getrandom_hex"]);
    assert_ne!(json(&oc)["insecure_seed"], v["insecure_seed"]);
}

#[test]
fn same_invocation_in_two_hosts_gives_identical_receipts() {
    let (a, b) = (TestHost::new(), TestHost::new());
    for tool in [
        tools::WC,
        tools::MD2HTML,
        tools::HOSTILE_PANIC,
        tools::HOSTILE_LOOP,
    ] {
        let (ta, tb) = (a.add(tool), b.add(tool));
        let (ra, oa) = a.run_with(ta, b"# same *input*\n", &[], small_budget());
        let (rb, ob) = b.run_with(tb, b"# same *input*\n", &[], small_budget());
        assert_eq!(oa, ob, "{tool}");
        assert_eq!(ra.receipt, rb.receipt, "{tool}");
        assert_eq!(ra.fuel_used, rb.fuel_used, "{tool}");
        assert_eq!(ra.invocation, rb.invocation, "{tool}");
    }
}

#[test]
fn output_flood_is_refused() {
    let h = TestHost::new();
    let flood = h.add(tools::HOSTILE_FLOOD);
    let mut budget = small_budget();
    budget.memory_bytes = 256 << 20;
    let (r, out) = h.run_with(flood, b"", &[("bytes", "4194304")], budget);
    assert_eq!(r.outcome, Outcome::OutputTooLarge { limit: 1 << 20 });
    assert!(out.is_empty());
    // Endless writes to stdout or logs end by fuel, not by host memory.
    for mode in ["stdout", "stderr", "log"] {
        let (r, _) = h.run_with(flood, b"", &[("mode", mode)], small_budget());
        assert!(
            matches!(r.outcome, Outcome::OutOfFuel | Outcome::Trap { .. }),
            "{mode}: {:?}",
            r.outcome
        );
    }
}

#[test]
fn a_panic_is_a_trap_with_the_message_in_diagnostics() {
    let h = TestHost::new();
    let panic = h.add(tools::HOSTILE_PANIC);
    let (r, _) = h.run(panic, b"", &[("message", "boom 42")]);
    assert!(matches!(r.outcome, Outcome::Trap { .. }), "{:?}", r.outcome);
    let diag = h
        .host
        .blobs()
        .get(&r.diagnostics.expect("diagnostics"))
        .unwrap();
    assert!(String::from_utf8_lossy(&diag).contains("boom 42"));
}

#[test]
fn the_action_cache_answers_a_repeated_invocation() {
    let h = TestHost::new();
    let wc = h.add(tools::WC);
    let input = h.host.put_input(b"a b c").unwrap();
    let inv = Invocation::new(wc, input);
    let first = h.host.invoke(&inv).unwrap();
    let second = h.host.invoke(&inv).unwrap();
    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(first.receipt, second.receipt);
    assert_eq!(first.timestamp, second.timestamp);
    // A different budget is a different invocation.
    let third = h.host.invoke(&inv.clone().budget(small_budget())).unwrap();
    assert!(!third.cached);
}

#[test]
fn run_stores_the_input_with_the_receipt_and_answers_like_put_then_invoke() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let small = b"one two three\n".to_vec();
    // Over the inline limit (64 KiB): stored in the disk store, not the
    // journal.
    let large: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (wc, receipts) = {
        let host = Host::init(&home).unwrap();
        let wc = host.add_tool_file(tools::WC.as_ref(), None).unwrap().digest;
        // The template's input is replaced by each input's digest.
        let template = Invocation::new(wc, Digest::of(b"not this one"));
        let mut receipts = Vec::new();
        for input in [&small, &large] {
            let r = host.run(&template, input).unwrap();
            assert_eq!(r.outcome, Outcome::Ok);
            assert!(!r.cached);
            assert_eq!(r.input, Digest::of(input));
            assert_eq!(host.blobs().get(&r.input).unwrap(), *input);
            // The same invocation through put_input and invoke is the
            // cache's answer to this run.
            let stored = host.put_input(input).unwrap();
            let again = host.invoke(&Invocation::new(wc, stored)).unwrap();
            assert!(again.cached);
            assert_eq!(again.receipt, r.receipt);
            // And run again is answered by the cache too.
            let third = host.run(&template, input).unwrap();
            assert!(third.cached);
            assert_eq!(third.receipt, r.receipt);
            receipts.push(r);
        }
        let words = json(&host.output(&receipts[0]).unwrap().unwrap());
        assert_eq!(words["words"], 3);
        host.flush().unwrap();
        (wc, receipts)
    };
    // Durable with the receipt: after a restart, the inputs, receipts and
    // cache entries are all there.
    let host = Host::open_existing(&home).unwrap();
    for (r, input) in receipts.iter().zip([&small, &large]) {
        assert_eq!(host.blobs().get(&r.input).unwrap(), *input);
        let again = host.invoke(&Invocation::new(wc, r.input)).unwrap();
        assert!(again.cached);
        assert_eq!(again.receipt, r.receipt);
    }
    // A second host given the input by put_input and invoke computes the
    // same receipt.
    let other = TestHost::new();
    let wc2 = other.add(tools::WC);
    let input = other.host.put_input(&small).unwrap();
    let r = other.host.invoke(&Invocation::new(wc2, input)).unwrap();
    assert_eq!(r.receipt, receipts[0].receipt);
}

#[test]
fn receipts_and_the_cache_survive_a_restart_without_recompiling() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (inv, receipt) = {
        let host = Host::init(&home).unwrap();
        let wc = host.add_tool_file(tools::WC.as_ref(), None).unwrap().digest;
        let input = host.put_input(b"one two").unwrap();
        let inv = Invocation::new(wc, input);
        let r = host.invoke(&inv).unwrap();
        host.flush().unwrap();
        (inv, r)
    };
    let host = Host::open_existing(&home).unwrap();
    let again = host.invoke(&inv).unwrap();
    assert!(again.cached);
    assert_eq!(again.receipt, receipt.receipt);
    let (shown, shown_inv) = host.receipt(&receipt.receipt).unwrap();
    assert_eq!(shown.receipt, receipt.receipt);
    assert_eq!(shown_inv.unwrap(), inv);
    // A new invocation loads the compiled code from disk.
    let input = host.put_input(b"three").unwrap();
    host.invoke(&Invocation::new(inv.tool, input)).unwrap();
    assert!(host
        .sandbox()
        .loaded(inv.tool.as_bytes())
        .unwrap()
        .from_disk_cache());
}

#[test]
fn bad_components_are_refused_and_nothing_is_stored() {
    let h = TestHost::new();
    let wc = h.add(tools::WC);
    let before = h.host.blobs().list().unwrap();
    let cases: [(&[u8], &str); 3] = [
        (b"definitely not wasm", "not WebAssembly"),
        (b"\0asm\x01\0\0\0", "core module"),
        (b"\0asm\x0d\0\x01\0\x00", "does not compile"),
    ];
    for (bytes, expected) in cases {
        let err = h.host.add_tool(bytes, Some("bad")).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    // A component of another world: a command given with a name is fine,
    // an empty component is not.
    let empty = wat_component();
    let err = h.host.add_tool(&empty, Some("empty")).unwrap_err();
    assert!(err.to_string().contains("voidbox:tool world"), "{err}");
    assert_eq!(h.host.blobs().list().unwrap(), before);
    assert_eq!(h.host.tools().unwrap().len(), 1);
    assert_eq!(h.host.tool("wc").unwrap().digest, wc);
}

/// The smallest valid component: `(component)` in binary form.
fn wat_component() -> Vec<u8> {
    b"\0asm\x0d\0\x01\0".to_vec()
}

#[test]
fn unknown_tools_and_bad_digests_get_clear_errors() {
    let h = TestHost::new();
    let err = h.host.tool("nope").unwrap_err();
    assert!(matches!(err, Error::NoSuchTool(_)));
    assert!(err.to_string().contains("voidbox tool list"), "{err}");
    let err = h.host.tool("blake3:zz").unwrap_err();
    assert!(matches!(err, Error::BadDigest(_)), "{err}");
    let missing = Invocation::new(Digest::of(b"no such tool"), Digest::of(b"x"));
    assert!(matches!(
        h.host.invoke(&missing).unwrap_err(),
        Error::NoSuchTool(_)
    ));
    let wc = h.add(tools::WC);
    let no_input = Invocation::new(wc, Digest::of(b"never stored"));
    assert!(matches!(
        h.host.invoke(&no_input).unwrap_err(),
        Error::NoSuchBlob(_)
    ));
}

#[test]
fn corrupt_blobs_are_detected_by_verify_and_by_reads() {
    let h = TestHost::new();
    // Larger than the inline limit, so it lives as a file under cas/.
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let d = h.host.blobs().put(&big).unwrap();
    assert!(h.host.blobs().verify_all().unwrap().corrupt.is_empty());
    let file = find_blob_file(&h.dir.path().join("home/cas"), &d.hex()).expect("blob file");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let report = h.host.blobs().verify_all().unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].0, d);
    let err = h.host.blobs().get(&d).unwrap_err();
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    assert!(err.to_string().contains("voidbox cas verify"), "{err}");
}

fn find_blob_file(dir: &std::path::Path, hex: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(p) = find_blob_file(&path, hex) {
                return Some(p);
            }
        } else if path.file_name()?.to_str()?.contains(&hex[2..])
            && path.to_string_lossy().contains(&hex[..2])
        {
            return Some(path);
        }
    }
    None
}

#[test]
fn gc_keeps_what_is_referenced_and_removes_the_rest() {
    let h = TestHost::new();
    let wc = h.add(tools::WC);
    let (r, _) = h.run(wc, b"kept input", &[]);
    let orphan = h.host.blobs().put(b"nobody refers to me").unwrap();
    let big_orphan = h.host.blobs().put(&vec![7u8; 100_000]).unwrap();
    let pinned = h.host.blobs().put(b"pinned").unwrap();
    h.host.blobs().pin(&pinned).unwrap();
    let report = h.host.gc().unwrap();
    assert_eq!(report.removed, 2, "{report:?}");
    let blobs = h.host.blobs();
    assert!(!blobs.contains(&orphan).unwrap());
    assert!(!blobs.contains(&big_orphan).unwrap());
    for kept in [wc, r.input, r.output.unwrap(), pinned] {
        assert!(blobs.contains(&kept).unwrap(), "{kept} was collected");
    }
    // The tool still runs after GC.
    let (r, _) = h.run(wc, b"after gc", &[]);
    assert_eq!(r.outcome, Outcome::Ok);
}

#[test]
fn a_granted_blob_is_a_read_only_file_and_nothing_else_is_visible() {
    let h = TestHost::new();
    let escape = h.add(tools::HOSTILE_ESCAPE);
    let blob = h.host.put_input(b"granted file content").unwrap();
    let path = format!("/grants/{}/blob", blob.hex());
    let write = format!("/grants/{}/planted", blob.hex());
    let input = h.host.put_input(b"").unwrap();
    let inv = Invocation::new(escape, input)
        .arg("read", &path)
        .arg("write", &write)
        .arg("write", &path);
    let attempt = |receipt: &voidbox::Receipt, name: &str, target: &str| -> Value {
        let v = json(&h.host.output(receipt).unwrap().unwrap());
        v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name && a["target"] == target)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} attempt on {target}: {v}"))
    };
    // Without the grant the path does not exist for the guest.
    let denied = h.host.invoke(&inv).unwrap();
    assert_eq!(attempt(&denied, "fs-read", &path)["refused"], true);
    // With it, the file reads back exactly, and writes are refused.
    let granted = h.host.invoke(&inv.clone().grant(blob)).unwrap();
    let read = attempt(&granted, "fs-read", &path);
    assert_eq!(read["refused"], false, "{read}");
    assert_eq!(read["result"], "ok: 20 bytes");
    assert_eq!(attempt(&granted, "fs-write", &write)["refused"], true);
    assert_eq!(attempt(&granted, "fs-write", &path)["refused"], true);
    assert_eq!(h.host.blobs().get(&blob).unwrap(), b"granted file content");
}

#[test]
fn concurrent_runs_on_shared_inputs_store_each_once_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let inputs: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("shared input {i}").into_bytes())
        .collect();
    let receipts = {
        let host = Host::init(&home).unwrap();
        let echo = host
            .add_tool_file(tools::ECHO.as_ref(), None)
            .unwrap()
            .digest;
        let template = Invocation::new(echo, Digest::of(b""));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let receipts: Vec<Vec<voidbox::Receipt>> = std::thread::scope(|s| {
            // Checkpoints meanwhile, so records also meet a sealed tail.
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    host.checkpoint().unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            let runners: Vec<_> = (0..4)
                .map(|t| {
                    let (host, template, inputs) = (&host, &template, &inputs);
                    s.spawn(move || {
                        (0..200)
                            .map(|i| host.run(template, &inputs[(i * 7 + t * 3) % 40]).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let all = runners.into_iter().map(|r| r.join().unwrap()).collect();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            all
        });
        host.flush().unwrap();
        receipts
    };
    // Every answer for one input is the same receipt, whichever thread ran
    // it or found it cached.
    let mut by_input = std::collections::HashMap::new();
    for r in receipts.iter().flatten() {
        assert_eq!(r.outcome, Outcome::Ok);
        let first = by_input.entry(r.input).or_insert(r.receipt);
        assert_eq!(*first, r.receipt, "two receipts for one invocation");
    }
    assert_eq!(by_input.len(), inputs.len());
    // After a restart every input and output is there, and the cache
    // answers each invocation with that receipt.
    let host = Host::open_existing(&home).unwrap();
    let echo = receipts[0][0].tool;
    for input in &inputs {
        let d = Digest::of(input);
        assert_eq!(host.blobs().get(&d).unwrap(), *input);
        let again = host.invoke(&Invocation::new(echo, d)).unwrap();
        assert!(again.cached);
        assert_eq!(again.receipt, by_input[&d]);
        assert_eq!(host.output(&again).unwrap().unwrap(), *input);
    }
}

#[test]
fn a_single_use_token_admits_exactly_one_of_many_concurrent_invocations() {
    let h = TestHost::new();
    let echo = h.add(tools::ECHO);
    let token = h
        .host
        .mint_token(voidbox::OWNER_TENANT, &["uses <= 1".parse().unwrap()])
        .unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (host, token) = (&h.host, &token);
                s.spawn(move || {
                    let input = host.put_input(format!("racer {i}").as_bytes()).unwrap();
                    host.invoke_with_token(token, &Invocation::new(echo, input))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.to_string().contains("uses-exhausted"), "{r}");
    }
}

#[test]
fn a_replica_checks_tokens_with_the_root_key_it_first_read() {
    let h = TestHost::new();
    let echo = h.add(tools::ECHO);
    let token = h.host.owner_token().unwrap();
    let inv = Invocation::new(echo, h.host.put_input(b"x").unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let replica_check = || {
        h.host
            .authorize_at(&token, &inv, 1, now, &voidbox::auth::NoRevocations)
    };
    replica_check().unwrap();
    // On one node, deleting a key file revokes its tokens at once...
    std::fs::remove_file(h.dir.path().join("home/keys/owner.key")).unwrap();
    let denied = h.host.authorize_sized(&token, &inv, 1).unwrap_err();
    assert!(matches!(denied, Error::Denied(_)), "{denied}");
    // ...but a replica decides from what every replica shares, not from a
    // file changed on it alone: it keeps the key it read.
    replica_check().unwrap();
}

#[test]
fn contracts_are_checked_at_add_at_admission_and_after_the_run() {
    let h = TestHost::new();
    let wasm = std::fs::read(tools::ECHO).unwrap();
    // Bad contracts are refused at add, and nothing is registered.
    for (contract, expected) in [
        ("fuel <= input_bytes * output_bytes", "linear"),
        ("fuel < 0", "no run"),
        ("fuel <= 10 +", "column"),
    ] {
        let err = h
            .host
            .add_tool_with_contract(&wasm, Some("strict"), Some(contract))
            .unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains(expected),
            "{contract}: {err}"
        );
    }
    assert!(h.host.tools().unwrap().is_empty());

    // A contract the run breaks: the output is withheld.
    let strict = h
        .host
        .add_tool_with_contract(&wasm, Some("strict"), Some("output_bytes <= 4"))
        .unwrap();
    assert_eq!(
        h.host
            .tool("strict")
            .unwrap()
            .contract
            .as_deref()
            .map(str::trim),
        Some("output_bytes <= 4")
    );
    let owner = h.host.owner_token().unwrap();
    let short = h.host.put_input(b"abc").unwrap();
    let r = h
        .host
        .invoke_with_token(&owner, &Invocation::new(strict.digest, short))
        .unwrap();
    assert_eq!(r.outcome, Outcome::Ok);
    let long = h.host.put_input(b"far too long").unwrap();
    let r = h
        .host
        .invoke_with_token(&owner, &Invocation::new(strict.digest, long))
        .unwrap();
    assert_eq!(
        r.outcome,
        Outcome::ContractViolation {
            clause: "output_bytes <= 4".into()
        }
    );
    assert!(r.output.is_none());

    // Admission: the wc contract needs 400 fuel per input byte.
    let wc = h.add(tools::WC);
    let token = h
        .host
        .mint_token(voidbox::OWNER_TENANT, &["fuel <= 3000000".parse().unwrap()])
        .unwrap();
    let small = h.host.put_input(&[b'a'; 1000]).unwrap();
    assert!(h
        .host
        .invoke_with_token(&token, &Invocation::new(wc, small))
        .is_ok());
    let big = h.host.put_input(&vec![b'a'; 10_000]).unwrap();
    let err = h
        .host
        .invoke_with_token(&token, &Invocation::new(wc, big))
        .unwrap_err();
    assert!(matches!(err, Error::NotAdmitted(_)), "{err}");
    assert!(
        err.to_string()
            .contains("input of 10000 bytes may need fuel 6,000,000 > the budget's 3,000,000"),
        "{err}"
    );
}

#[test]
fn a_receipt_computed_elsewhere_is_adopted_only_when_it_and_its_blobs_check_out() {
    // Host a runs the invocation; host b (a cluster replica that adopted
    // the result f + 1 others signed) stores it without running.
    let (a, b) = (TestHost::new(), TestHost::new());
    let (ta, tb) = (a.add(tools::WC), b.add(tools::WC));
    assert_eq!(ta, tb);
    let input = b"adopted, not run\n";
    let inv = Invocation::new(ta, a.host.put_input(input).unwrap()).budget(small_budget());
    assert_eq!(b.host.put_input(input).unwrap(), inv.input);
    let ran = a.host.invoke(&inv).unwrap();
    let output = a.host.output(&ran).unwrap().expect("wc has output");

    // Refused, storing nothing: an output that is not the receipt's...
    let err = b
        .host
        .adopt_receipt(&inv, &ran, Some(b"forged"))
        .unwrap_err();
    assert!(err.to_string().contains("is not"), "{err}");
    // ...a receipt of another invocation...
    let other = inv.clone().arg("x", "1");
    let err = b
        .host
        .adopt_receipt(&other, &ran, Some(&output))
        .unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    // ...a receipt whose fields do not match its digest...
    let mut tampered = ran.clone();
    tampered.fuel_used += 1;
    assert!(b
        .host
        .adopt_receipt(&inv, &tampered, Some(&output))
        .is_err());
    // ...and, without an error, one whose output is neither given nor
    // stored (a cached receipt must never name a blob the host lacks).
    assert!(!b.host.adopt_receipt(&inv, &ran, None).unwrap());
    assert!(b.host.cached(&inv.digest()).unwrap().is_none());

    assert!(b.host.adopt_receipt(&inv, &ran, Some(&output)).unwrap());
    let cached = b.host.cached(&inv.digest()).unwrap().expect("adopted");
    assert_eq!(cached.receipt, ran.receipt);
    assert!(cached.cached);
    assert_eq!(b.host.output(&cached).unwrap(), Some(output));
    // The same invocation is now answered from the cache, never run.
    assert_eq!(b.host.invoke(&inv).unwrap().receipt, ran.receipt);
    assert_eq!(b.host.runs(), 0);
}
