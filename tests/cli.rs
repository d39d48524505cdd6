//! End-to-end tests through the real `voidbox` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use voidbox_e2e::{assert_failed, stderr, tools, voidbox_bin};

struct Cli {
    _dir: tempfile::TempDir,
    home: PathBuf,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        Cli { _dir: dir, home }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(voidbox_bin());
        c.arg("--home").arg(&self.home).args(args);
        c.env_remove("VOIDBOX_HOME").env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "voidbox {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn init_add_run_and_inspect() {
    let cli = Cli::new();
    assert!(cli.ok(&["init"]).contains("Created"));
    assert!(cli.home.join("voidbox.toml").exists());
    let added = cli.ok(&["tool", "add", tools::WC]);
    assert!(added.starts_with("blake3:"), "{added}");
    assert!(added.contains(" wc "), "{added}");
    let list = cli.ok(&["tool", "list", "--json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "wc");

    let out = cli.with_stdin(&["run", "wc", "--input", "-"], b"a b c\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["words"], 3);

    let out = cli.with_stdin(&["run", "wc", "--input", "-", "--json"], b"a b c\n");
    let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "invocation",
        "tool",
        "input",
        "output",
        "outcome",
        "fuel_used",
        "cached",
        "duration_us",
    ] {
        assert!(
            receipt.get(field).is_some(),
            "receipt lacks {field}: {receipt}"
        );
    }
    assert_eq!(
        receipt["cached"], true,
        "the second identical run is answered from the cache"
    );
    assert_eq!(receipt["outcome"]["kind"], "ok");

    let shown = cli.ok(&["receipt", "show", receipt["receipt"].as_str().unwrap()]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["receipt"]["receipt"], receipt["receipt"]);
    assert_eq!(shown["invocation"]["tool"], receipt["tool"]);

    let inspect = cli.ok(&["tool", "inspect", "wc"]);
    assert!(
        inspect.contains("contract:    fuel <= 400 * input_bytes"),
        "{inspect}"
    );
    assert!(inspect.contains("invoke"), "{inspect}");
}

#[test]
fn outcomes_have_distinct_exit_codes_and_one_line_errors() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::HOSTILE_LOOP]);
    cli.ok(&["tool", "add", tools::HOSTILE_PANIC]);
    cli.ok(&["tool", "add", tools::HOSTILE_BALLOON]);
    let fuel = cli.run(&["run", "hostile-loop", "--fuel", "1000000"]);
    assert_eq!(fuel.status.code(), Some(12), "{}", stderr(&fuel));
    assert!(stderr(&fuel).contains("out-of-fuel"), "{}", stderr(&fuel));
    assert!(stderr(&fuel).contains("--fuel"), "{}", stderr(&fuel));
    assert_eq!(stderr(&fuel).lines().count(), 1, "{}", stderr(&fuel));
    let trap = cli.run(&["run", "hostile-panic"]);
    assert_eq!(trap.status.code(), Some(11), "{}", stderr(&trap));
    // The panic's message, not Rust's "run with RUST_BACKTRACE=1" note.
    assert!(
        stderr(&trap).contains("[panic: hostile-panic: panicking on purpose]"),
        "{}",
        stderr(&trap)
    );
    assert!(
        !stderr(&trap).contains("RUST_BACKTRACE"),
        "{}",
        stderr(&trap)
    );
    assert_eq!(stderr(&trap).lines().count(), 1, "{}", stderr(&trap));
    let mem = cli.run(&["run", "hostile-balloon", "--memory", "33554432"]);
    assert_eq!(mem.status.code(), Some(13), "{}", stderr(&mem));
    // A tool error: wc takes no arguments and says so.
    cli.ok(&["tool", "add", tools::WC]);
    let tool_error = cli.with_stdin(
        &["run", "wc", "--input", "-", "--arg", "mode=words"],
        b"a b",
    );
    assert_eq!(
        tool_error.status.code(),
        Some(10),
        "{}",
        stderr(&tool_error)
    );
    assert!(
        stderr(&tool_error).contains("tool-error"),
        "{}",
        stderr(&tool_error)
    );
    // Output over --output-limit.
    cli.ok(&["tool", "add", tools::HOSTILE_FLOOD]);
    let flood = cli.run(&[
        "run",
        "hostile-flood",
        "--arg",
        "bytes=4194304",
        "--output-limit",
        "1048576",
    ]);
    assert_failed(&flood, 14, "output-too-large");
    assert!(flood.stdout.is_empty());
    // Fuel for hours, so only the wall-clock guard ends it.
    let timeout = cli.run(&[
        "run",
        "hostile-loop",
        "--fuel",
        "1000000000000000",
        "--timeout",
        "50",
    ]);
    assert_eq!(timeout.status.code(), Some(15), "{}", stderr(&timeout));
    assert!(stderr(&timeout).contains("timeout"), "{}", stderr(&timeout));
    for out in [&tool_error, &flood, &timeout] {
        assert_eq!(stderr(out).lines().count(), 1, "{}", stderr(out));
    }
}

#[test]
fn bad_requests_name_the_problem_and_the_fix() {
    let cli = Cli::new();
    // Not initialized yet.
    let out = cli.run(&["tool", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("voidbox init"), "{}", stderr(&out));
    cli.ok(&["init"]);
    let out = cli.run(&["run", "missing-tool"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("voidbox tool list"),
        "{}",
        stderr(&out)
    );
    let out = cli.run(&["cas", "get", "blake3:xyz"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("blake3:"), "{}", stderr(&out));
    let not_wasm = cli.home.join("notes.txt");
    std::fs::write(&not_wasm, "hello").unwrap();
    let out = cli.run(&["tool", "add", not_wasm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("not WebAssembly"), "{}", stderr(&out));
    // Each bad component's error names the file.
    let core = cli.home.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let other_world = cli.home.join("empty.wasm");
    std::fs::write(&other_world, b"\0asm\x0d\0\x01\0").unwrap();
    for (file, what) in [
        (&not_wasm, "not WebAssembly"),
        (&core, "core module"),
        (&other_world, "voidbox:tool world"),
    ] {
        let out = cli.run(&["tool", "add", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let named = format!("voidbox: {}: ", file.display());
        assert!(stderr(&out).starts_with(&named), "{}", stderr(&out));
        assert!(stderr(&out).contains(what), "{}", stderr(&out));
    }
    // A missing file is a bad request (3), as for `cas put`, not a
    // storage failure (4).
    let missing = cli.home.join("nope.wasm");
    let out = cli.run(&["tool", "add", missing.to_str().unwrap()]);
    assert_failed(&out, 3, &format!("cannot read {}", missing.display()));
    let out = cli.run(&["cas", "put", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // A malformed --arg is a bad command line (2, as README's table says),
    // refused before the tool is even looked up.
    cli.ok(&["tool", "add", tools::ECHO]);
    for tool in ["echo", "missing-tool"] {
        let out = cli.run(&["run", tool, "--arg", "novalue"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
    }
}

#[test]
fn an_oversized_input_is_refused_before_it_is_read() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    let config = cli.home.join("voidbox.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("input_bytes_max = 1073741824", "input_bytes_max = 1000");
    assert!(
        text.contains("input_bytes_max = 1000"),
        "the template changed"
    );
    std::fs::write(&config, text).unwrap();
    // A sparse file of 1 TiB: read whole, it could not even be allocated.
    let big = cli.home.join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let out = cli.run(&["run", "echo", "--input", big.to_str().unwrap()]);
    assert_failed(
        &out,
        3,
        "the input is 1099511627776 bytes, over the limit of 1000 bytes",
    );
    // On stdin the size is unknown: the command reads at most the limit
    // and one byte more, so a writer of an endless stream is cut off early.
    let mut child = cli
        .cmd(&["run", "echo", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 << 10];
        let mut written = 0usize;
        while written < (256 << 20) && stdin.write_all(&chunk).is_ok() {
            written += chunk.len();
        }
        written
    });
    let out = child.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    assert_failed(&out, 3, "over the limit of 1000 bytes");
    assert!(
        written < 16 << 20,
        "the command read {written} bytes of stdin"
    );
    // Within the limit, the same input runs.
    let ok = cli.with_stdin(&["run", "echo", "--input", "-"], &[b'y'; 1000]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(ok.stdout.len(), 1000);
}

#[test]
fn cas_put_get_ls_verify_gc() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_be_bytes()).collect();
    let file = cli.home.join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let put = cli.run(&["cas", "put", file.to_str().unwrap()]);
    assert!(put.status.success(), "{}", stderr(&put));
    // stdout is the digest and nothing else, so `cas get $(cas put f)` works.
    let digest = String::from_utf8(put.stdout.clone())
        .unwrap()
        .trim_end()
        .to_string();
    assert!(
        digest.starts_with("blake3:") && digest.len() == 7 + 64,
        "{digest:?}"
    );
    assert!(stderr(&put).contains("1200000 bytes"), "{}", stderr(&put));
    let got = cli.run(&["cas", "get", &digest]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(got.stdout, big);
    let small = cli.with_stdin(&["cas", "put", "-"], b"small blob");
    assert!(small.status.success());
    let got = cli.home.join("got.bin");
    cli.ok(&["cas", "get", &digest, "-o", got.to_str().unwrap()]);
    assert_eq!(std::fs::read(&got).unwrap(), big);
    let ls = cli.ok(&["cas", "ls"]);
    assert!(ls.contains(&digest));
    assert!(cli.ok(&["cas", "verify"]).contains("all blobs intact"));
    // A file among the blobs that is not one is listed, and left alone.
    let blob = blob_file(&cli.home.join("cas"), &digest["blake3:".len()..]);
    let stray = blob.with_file_name("notes.txt");
    std::fs::write(&stray, b"not a blob").unwrap();
    let verify = cli.ok(&["cas", "verify"]);
    assert!(
        verify.contains(&format!("STRAY {}: not a blob's file", stray.display()))
            && verify.contains("all blobs intact"),
        "{verify}"
    );
    assert!(stray.exists());
    std::fs::remove_file(&stray).unwrap();

    // Damage the big blob on disk: verify and get both report it.
    let blob = blob_file(&cli.home.join("cas"), &digest["blake3:".len()..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&blob, &bytes).unwrap();
    let verify = cli.run(&["cas", "verify"]);
    assert_eq!(verify.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&digest));
    let get = cli.run(&["cas", "get", &digest, "-o", got.to_str().unwrap()]);
    assert_eq!(get.status.code(), Some(4), "{}", stderr(&get));
    assert_eq!(
        std::fs::read(&got).unwrap(),
        big,
        "a failed get must not touch the output file"
    );

    // Nothing references the blobs: gc removes them.
    cli.ok(&["cas", "rm", &digest]);
    let gc = cli.ok(&["cas", "gc"]);
    assert!(gc.contains("removed 1"), "{gc}");
}

fn blob_file(dir: &Path, hex: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().contains(&hex[2..]) {
                return p;
            }
        }
    }
    panic!("no file for blob {hex} under {}", dir.display());
}

#[test]
fn a_data_directory_that_cannot_be_created_is_reported() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    // A regular file where a directory must go: creating under it fails
    // even for root, who ignores permission bits.
    let file = cli.home.join("voidbox.toml");
    let out = Command::new(voidbox_bin())
        .arg("--home")
        .arg(file.join("sub"))
        .arg("init")
        .output()
        .unwrap();
    assert_failed(&out, 4, "could not create the data directory");
    // The existing directory is untouched.
    assert!(cli.ok(&["tool", "list"]).contains("no tools"));
}

#[test]
fn a_data_directory_this_user_cannot_write_is_named_with_the_fix() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    let set_mode = |mode: u32| {
        for entry in [cli.home.clone(), cli.home.join("voidbox.redb")] {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    let mut cmd = cli.cmd(&["tool", "list"]);
    let as_root = std::fs::metadata(&cli.home).unwrap().uid() == 0;
    if as_root {
        // Root ignores permission bits: run the command as `nobody`, who
        // may read the directory (made traversable) but not write it. The
        // binary is linked (or copied) next to it, since the build's own
        // directory may be out of nobody's reach (a checkout under /root).
        std::fs::set_permissions(cli._dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = cli._dir.path().join("voidbox");
        if std::fs::hard_link(voidbox_bin(), &bin).is_err() {
            std::fs::copy(voidbox_bin(), &bin).unwrap();
        }
        cmd = Command::new(&bin);
        cmd.arg("--home").arg(&cli.home).args(["tool", "list"]);
        cmd.env_remove("VOIDBOX_HOME").env_remove("RUST_LOG");
        cmd.uid(65534).gid(65534);
    } else {
        set_mode(0o555);
    }
    let out = cmd.output().unwrap();
    if !as_root {
        set_mode(0o755);
    }
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("voidbox.redb is not writable by this user"),
        "{err}"
    );
    assert!(err.contains("chmod") && err.contains("--home"), "{err}");
    assert!(!err.contains("another voidbox process"), "{err}");
    // Nothing was lost.
    assert!(cli.ok(&["tool", "list"]).contains("echo"));
}

#[test]
fn a_second_process_waits_for_the_database_lock_then_fails_clearly() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    // This test process holds the database, as a long command would.
    let holder = voidbox::Host::open_existing(&cli.home).unwrap();
    // Released within the wait: the command waits, says so, and succeeds.
    let waiting = cli
        .cmd(&["tool", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    drop(holder);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo"));
    assert!(
        stderr(&out).contains("in use by another voidbox process; waiting"),
        "{}",
        stderr(&out)
    );
    // Held for longer than the wait: a clear error after a bounded time.
    let holder = voidbox::Host::open_existing(&cli.home).unwrap();
    let started = std::time::Instant::now();
    let out = cli.run(&["tool", "list"]);
    let waited = started.elapsed();
    drop(holder);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let last = stderr(&out).lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("is in use by another voidbox process (waited"),
        "{last}"
    );
    assert!(last.contains("--home"), "{last}");
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(30),
        "{waited:?}"
    );
}

#[test]
fn tokens_narrow_deny_and_revoke_through_the_cli() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    cli.ok(&["tool", "add", tools::WC]);
    let token = cli.ok(&[
        "token",
        "mint",
        "--caveat",
        "tool-name = echo",
        "--caveat",
        "uses <= 2",
    ]);
    let token = token.trim();
    let inspect = cli.ok(&["token", "inspect", token]);
    assert!(inspect.contains("only the tool named `echo`"), "{inspect}");
    // The wrong tool: denied with the caveat named, and no use counted.
    let wrong = cli.with_stdin(&["run", "wc", "--input", "-", "--token", token], b"x");
    assert_failed(&wrong, 25, "tool-name = echo");
    let narrowed = cli.ok(&["token", "attenuate", token, "--caveat", "uses <= 1"]);
    let narrowed = narrowed.trim();
    let ok = cli.with_stdin(
        &["run", "echo", "--input", "-", "--token", narrowed],
        b"once",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(ok.stdout, b"once");
    let twice = cli.with_stdin(
        &["run", "echo", "--input", "-", "--token", narrowed],
        b"twice",
    );
    assert_eq!(twice.status.code(), Some(30), "{}", stderr(&twice));
    cli.ok(&["token", "revoke", token]);
    let revoked = cli.with_stdin(&["run", "echo", "--input", "-", "--token", token], b"x");
    assert_eq!(revoked.status.code(), Some(23), "{}", stderr(&revoked));
    let tampered = format!("{}A", &token[..token.len() - 1]);
    let bad = cli.with_stdin(&["run", "echo", "--input", "-", "--token", &tampered], b"x");
    assert!(!bad.status.success());
    let audit = std::fs::read_to_string(cli.home.join("audit.log")).unwrap();
    assert!(
        audit.lines().filter(|l| l.contains("\"deny\"")).count() >= 3,
        "{audit}"
    );
}

#[test]
fn schedule_explains_a_placement_and_refuses_bad_batches() {
    let cli = Cli::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/data/schedule-example.json");
    let out = cli.ok(&["schedule", "--explain", example, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let invocations = v["invocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 4);
    // md-1 runs on two executors in different failure domains.
    let md = invocations.iter().find(|i| i["id"] == "md-1").unwrap();
    assert_eq!(md["executors"].as_array().unwrap().len(), 2, "{md}");
    for term in [
        "penalty_replicas",
        "penalty_slots",
        "penalty_memory",
        "penalty_failure_domain",
    ] {
        assert_eq!(v["energy"][term], 0.0, "{term}: {}", v["energy"]);
    }
    assert!(v["energy"]["total"].as_f64().unwrap() <= v["greedy_objective"].as_f64().unwrap());
    // More demand than capacity: a clear error, no placement.
    let mut batch: Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let one = batch["invocations"][0].clone();
    for i in 0..20 {
        let mut extra = one.clone();
        extra["id"] = Value::from(format!("extra-{i}"));
        batch["invocations"].as_array_mut().unwrap().push(extra);
    }
    let file = cli._dir.path().join("too-big.json");
    std::fs::write(&file, batch.to_string()).unwrap();
    let out = cli.run(&["schedule", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).is_empty());
}

#[test]
fn third_party_discharges_are_required_and_bound() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    let secret = cli.ok(&["token", "third-party-key"]);
    let secret = secret.trim();
    assert_eq!(secret.len(), 64);
    let base = cli.ok(&["token", "mint"]);
    let needs = cli.ok(&[
        "token",
        "require",
        base.trim(),
        "--location",
        "https://approvals.example",
        "--third-party-key",
        secret,
        "--caveat-id",
        "approve-42",
    ]);
    let needs = needs.trim();
    // Without the discharge: denied, and nothing is stored.
    let before = cli.ok(&["cas", "ls"]);
    let missing = cli.with_stdin(
        &["run", "echo", "--input", "-", "--token", needs],
        b"secret input",
    );
    assert_eq!(missing.status.code(), Some(31), "{}", stderr(&missing));
    assert_eq!(
        cli.ok(&["cas", "ls"]),
        before,
        "a denied run stored something"
    );
    // The third party discharges it, bound to this token.
    let bundle = cli.ok(&[
        "token",
        "discharge",
        "--for",
        needs,
        "--location",
        "https://approvals.example",
        "--third-party-key",
        secret,
        "--caveat-id",
        "approve-42",
    ]);
    let ok = cli.with_stdin(
        &["run", "echo", "--input", "-", "--token", bundle.trim()],
        b"approved",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(ok.stdout, b"approved");
    // A discharge made with the wrong secret does not verify.
    let wrong = cli.ok(&["token", "third-party-key"]);
    let forged = cli.ok(&[
        "token",
        "discharge",
        "--for",
        needs,
        "--location",
        "x",
        "--third-party-key",
        wrong.trim(),
        "--caveat-id",
        "approve-42",
    ]);
    let denied = cli.with_stdin(
        &["run", "echo", "--input", "-", "--token", forged.trim()],
        b"x",
    );
    assert!(!denied.status.success());
    assert!(
        (20..=34).contains(&denied.status.code().unwrap()),
        "{}",
        stderr(&denied)
    );
}

#[test]
fn a_contract_given_at_add_is_checked_and_shown() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let bad = cli.home.join("bad.contract");
    std::fs::write(&bad, "fuel <= 3 * * input_bytes\n").unwrap();
    let out = cli.run(&[
        "tool",
        "add",
        tools::ECHO,
        "--contract",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(36), "{}", stderr(&out));
    assert!(stderr(&out).contains("column"), "{}", stderr(&out));
    let good = cli.home.join("good.contract");
    std::fs::write(
        &good,
        "fuel <= 50 * input_bytes + 200_000\noutput_bytes <= input_bytes\n",
    )
    .unwrap();
    cli.ok(&[
        "tool",
        "add",
        tools::ECHO,
        "--contract",
        good.to_str().unwrap(),
    ]);
    let inspect = cli.ok(&["tool", "inspect", "echo"]);
    assert!(inspect.contains("output_bytes <= input_bytes"), "{inspect}");
}

#[test]
fn not_admitted_names_the_real_source_of_the_budget() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    // wc's contract: fuel <= 400 * input_bytes + 2_000_000.
    cli.ok(&["tool", "add", tools::WC]);
    let flag = cli.with_stdin(&["run", "wc", "--input", "-", "--fuel", "10"], b"a b c");
    assert_failed(&flag, 35, "> the budget's 10;");
    assert!(
        stderr(&flag).contains("comes from --fuel 10"),
        "{}",
        stderr(&flag)
    );
    assert!(!stderr(&flag).contains("token"), "{}", stderr(&flag));

    let token = cli.ok(&["token", "mint", "--caveat", "fuel <= 1000"]);
    let caveat = cli.with_stdin(
        &["run", "wc", "--input", "-", "--token", token.trim()],
        b"a b c",
    );
    assert_failed(&caveat, 35, "> the budget's 1,000;");
    assert!(
        stderr(&caveat).contains("the fuel limit is the token's caveat (1000)"),
        "{}",
        stderr(&caveat)
    );

    let config = cli.home.join("voidbox.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("fuel = 1000000000", "fuel = 20")).unwrap();
    let toml = cli.with_stdin(&["run", "wc", "--input", "-"], b"a b c");
    assert_failed(&toml, 35, "`fuel = 20` in voidbox.toml");
    // `token verify` checks the same budget and says the same.
    let owner = std::fs::read_to_string(cli.home.join("owner.token")).unwrap();
    let verify = cli.with_stdin(
        &[
            "token",
            "verify",
            owner.trim(),
            "--tool",
            "wc",
            "--input",
            "-",
        ],
        b"a b c",
    );
    assert_failed(&verify, 35, "`fuel = 20` in voidbox.toml");
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    let big = cli.home.join("big.bin");
    std::fs::write(&big, vec![b'z'; 1 << 20]).unwrap();
    let digest = cli.ok(&["cas", "put", big.to_str().unwrap()]);
    let digest = digest.trim();
    let big = big.to_str().unwrap();
    for (args, code) in [
        (vec!["tool", "list", "--json"], 0),
        (vec!["cas", "ls"], 0),
        (vec!["cas", "get", digest], 0),
        // `run` still exits with its outcome's code.
        (vec!["run", "echo", "--input", big], 0),
    ] {
        let out = voidbox_e2e::with_closed_stdout(&mut cli.cmd(&args));
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn moving_a_name_to_another_tool_is_said_on_stderr() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let wc = cli.run(&["tool", "add", tools::WC]);
    assert!(stderr(&wc).is_empty(), "{}", stderr(&wc));
    let wc = String::from_utf8(wc.stdout).unwrap();
    let wc = wc.split_whitespace().next().unwrap();
    // The same tool again: the name does not move, nothing is said.
    let again = cli.run(&["tool", "add", tools::WC]);
    assert!(
        again.status.success() && stderr(&again).is_empty(),
        "{}",
        stderr(&again)
    );
    let hash = cli.run(&["tool", "add", tools::HASH, "--name", "wc"]);
    assert!(hash.status.success(), "{}", stderr(&hash));
    let hash_digest = String::from_utf8(hash.stdout.clone()).unwrap();
    let hash_digest = hash_digest.split_whitespace().next().unwrap();
    assert!(
        stderr(&hash).contains(&format!("name wc now points to {hash_digest} (was {wc}")),
        "{}",
        stderr(&hash)
    );
    // The old tool is still there by its digest.
    cli.ok(&["tool", "inspect", wc]);
}

#[test]
fn verbose_logs_show_voidbox_events_without_the_flood_of_its_libraries() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let add = cli.run(&["-v", "tool", "add", tools::WC]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(stderr(&add).contains("tool added"), "{}", stderr(&add));
    // wc has a contract, so this run goes through Z3, which logs every AST
    // at debug level, and compiles nothing (the artifact is cached).
    let run = cli.with_stdin(&["-vv", "run", "wc", "--input", "-"], b"a b c\n");
    assert!(run.status.success(), "{}", stderr(&run));
    let log = stderr(&run);
    assert!(log.contains("invocation ran"), "{log}");
    assert!(
        log.contains("outcome=\"ok\"") || log.contains("outcome=ok"),
        "{log}"
    );
    assert!(log.contains("run ended"), "{log}");
    for noisy in ["z3", "cranelift", "wasmtime"] {
        assert!(
            !log.lines().any(|l| l.contains(&format!(" {noisy}"))),
            "{noisy} floods -vv:\n{log}"
        );
    }
    let again = cli.with_stdin(&["-vv", "run", "wc", "--input", "-"], b"a b c\n");
    assert!(
        stderr(&again).contains("answered from the action cache"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn cas_verify_counts_blobs_as_cas_ls_does() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    cli.ok(&["tool", "add", tools::ECHO]);
    cli.ok(&["tool", "add", tools::WC]);
    // The same small input in several invocations, each process a
    // checkpoint of its own: the input can be recorded more than once.
    for (tool, fuel) in [
        ("echo", "1000000000"),
        ("wc", "1000000000"),
        ("echo", "5000000"),
    ] {
        let out = cli.with_stdin(&["run", tool, "--input", "-", "--fuel", fuel], b"same\n");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let listed = cli.ok(&["cas", "ls"]).lines().count();
    let verify = cli.ok(&["cas", "verify"]);
    let first = verify.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("checked {listed} blobs")),
        "cas ls lists {listed}: {verify}"
    );
    assert!(verify.contains("all blobs intact"), "{verify}");
}
