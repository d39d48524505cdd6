//! Builds the `tools/` workspace for `wasm32-wasip2` and writes one path
//! constant per tool into `$OUT_DIR/tools.rs`.
//!
//! The nested build uses its own target directory, `<repo>/target/wasm-tools`:
//! sharing the outer build's target directory would deadlock on its lock.
//! It also drops the flags and target settings of the outer build (a
//! `RUSTFLAGS` meant for the host, clippy's wrapper, a `CARGO_TARGET_DIR`)
//! so the tools always build the same way.

use std::collections::{BTreeMap, HashMap};
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("tests/artifacts sits two levels below the repository root");
    for watched in ["tools", "guest-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }

    check_target_installed();

    let tools_manifest = repo.join("tools/Cargo.toml");
    let target_dir = repo.join("target/wasm-tools");
    let members = workspace_members(&tools_manifest);
    let built = build_tools(&tools_manifest, &target_dir);

    // Component files are named after their tool (`hostile-loop.wasm`), while
    // cargo names a library's file after the crate (`hostile_loop.wasm`).
    let components = target_dir.join("components");
    std::fs::create_dir_all(&components)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", components.display()));
    let mut tools = BTreeMap::new();
    for (package_id, wasm) in built {
        let Some(name) = members.get(&package_id) else {
            continue;
        };
        let dest = components.join(format!("{name}.wasm"));
        copy_if_changed(&wasm, &dest);
        println!("cargo:rerun-if-changed={}", dest.display());
        tools.insert(name.clone(), dest);
    }
    assert!(
        !tools.is_empty(),
        "the build of {} produced no .wasm file",
        tools_manifest.display()
    );

    let mut code = String::new();
    for (name, path) in &tools {
        let path = path.to_str().expect("the repository path is UTF-8");
        writeln!(code, "/// The component of the `{name}` tool.").unwrap();
        writeln!(code, "pub const {}: &str = {path:?};", const_name(name)).unwrap();
    }
    writeln!(
        code,
        "/// Every tool, as (name, path of its component), sorted by name."
    )
    .unwrap();
    writeln!(code, "pub const ALL: &[(&str, &str)] = &[").unwrap();
    for name in tools.keys() {
        writeln!(code, "    ({name:?}, {}),", const_name(name)).unwrap();
    }
    writeln!(code, "];").unwrap();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("tools.rs");
    std::fs::write(&out, code)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", out.display()));
}

fn const_name(tool: &str) -> String {
    tool.to_uppercase().replace('-', "_")
}

/// Fails early, with the fix, when the wasm32-wasip2 standard library is not
/// installed; otherwise the nested build would fail with a long, obscure
/// error about `core`.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {rustc:?}: {err}"));
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let installed = output.status.success() && !libdir.is_empty() && Path::new(&libdir).is_dir();
    if !installed {
        fail(&format!(
            "the Rust target {TARGET} is not installed, so the Voidbox tools cannot be built.\n\
             Fix: rustup target add {TARGET}"
        ));
    }
}

/// Stops the build with a message for people: a panic's backtrace would
/// only hide it.
fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    std::process::exit(1);
}

/// A cargo command for the tools workspace, cleaned of the outer build's
/// settings.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer_only = matches!(
            key,
            "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "CARGO_ENCODED_RUSTFLAGS"
                | "CARGO_ENCODED_RUSTDOCFLAGS"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "CLIPPY_ARGS"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
        ) || key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_BUILD_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_");
        if outer_only {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Package id → package name of every member of the tools workspace.
fn workspace_members(manifest: &Path) -> HashMap<String, String> {
    let output = cargo()
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|err| panic!("cannot run cargo metadata: {err}"));
    assert!(
        output.status.success(),
        "cargo metadata failed on {}",
        manifest.display()
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    metadata["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("a package has an id").to_string(),
                p["name"]
                    .as_str()
                    .expect("a package has a name")
                    .to_string(),
            )
        })
        .collect()
}

/// Builds the tools and returns (package id, .wasm file) for every
/// component the build produced.
fn build_tools(manifest: &Path, target_dir: &Path) -> Vec<(String, PathBuf)> {
    let output = cargo()
        .args(["build", "--release", "--target", TARGET])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        // Diagnostics go to stderr as text, artifacts to stdout as JSON.
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|err| panic!("cannot run cargo to build the tools: {err}"));
    if !output.status.success() {
        fail(&format!(
            "building the Voidbox tools ({}) for {TARGET} failed; the compiler's errors are above.\n\
             Reproduce with: cargo build --release --target {TARGET} --manifest-path tools/Cargo.toml",
            manifest.display()
        ));
    }
    let mut built = Vec::new();
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let kinds = message["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !kinds.iter().any(|k| k == "cdylib" || k == "bin") {
            continue;
        }
        let package_id = message["package_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                built.push((package_id.clone(), PathBuf::from(file)));
            }
        }
    }
    built
}

/// Copies only when the bytes differ, so an unchanged tool keeps its mtime.
fn copy_if_changed(from: &Path, to: &Path) {
    let bytes =
        std::fs::read(from).unwrap_or_else(|err| panic!("cannot read {}: {err}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(bytes.as_slice()) {
        std::fs::write(to, &bytes)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", to.display()));
    }
}
