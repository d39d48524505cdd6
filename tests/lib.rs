//! Shared helpers for the end-to-end tests: a fresh host in a temp
//! directory with tools registered, and the path of the `voidbox` binary.

use std::path::PathBuf;
use std::process::Output;

use voidbox::{Budget, Digest, Host, Invocation, Receipt};

pub use voidbox_tool_artifacts as tools;

/// A host in its own temp directory (removed on drop).
#[derive(Debug)]
pub struct TestHost {
    pub host: Host,
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// A fresh, empty host.
    pub fn new() -> TestHost {
        let dir = tempfile::tempdir().expect("temp dir");
        let host = Host::init(dir.path().join("home")).expect("init host");
        TestHost { host, dir }
    }

    /// Registers the component at `path` and returns its digest.
    pub fn add(&self, path: &str) -> Digest {
        self.host
            .add_tool_file(path.as_ref(), None)
            .unwrap_or_else(|e| panic!("adding {path}: {e}"))
            .digest
    }

    /// Runs `tool` on `input` with `args` and a budget, returning the
    /// receipt and the output (empty when there is none).
    pub fn run_with(
        &self,
        tool: Digest,
        input: &[u8],
        args: &[(&str, &str)],
        budget: Budget,
    ) -> (Receipt, Vec<u8>) {
        let input = self.host.put_input(input).expect("put input");
        let mut inv = Invocation::new(tool, input).budget(budget);
        for (k, v) in args {
            inv = inv.arg(*k, *v);
        }
        let receipt = self.host.invoke(&inv).expect("invoke");
        let output = self
            .host
            .output(&receipt)
            .expect("output")
            .unwrap_or_default();
        (receipt, output)
    }

    /// [`TestHost::run_with`] with the default budget.
    pub fn run(&self, tool: Digest, input: &[u8], args: &[(&str, &str)]) -> (Receipt, Vec<u8>) {
        self.run_with(tool, input, args, Budget::default())
    }
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

/// The `voidbox` binary next to the test executable (`cargo test
/// --workspace` builds it; `cargo xtask test` does that).
pub fn voidbox_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let bin = dir.join("voidbox");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p voidbox` in the same profile (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Runs `cmd` with its stdout closed before it writes (as `| head` does
/// once it has its lines: every write gets EPIPE) and returns what it did.
pub fn with_closed_stdout(cmd: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    drop(child.stdout.take());
    child.wait_with_output().expect("the command ends")
}

/// What a command wrote to stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that a command exited with `code` and that its stderr says
/// `needle` (showing the stderr when either is not so); returns the stderr
/// for further checks.
#[track_caller]
pub fn assert_failed(o: &Output, code: i32, needle: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}
