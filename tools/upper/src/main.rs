//! `upper`: a plain `wasi:cli/command` program, with no Voidbox SDK, to show
//! that unmodified commands run as tools.
//!
//! Output (stdout): first each command-line argument after the program name,
//! upper-cased, one per line; then stdin, upper-cased (Unicode rules; bytes
//! that are not UTF-8 become U+FFFD). Exit code 0, or 1 with a message on
//! stderr when stdin or stdout fails.

use std::io::{Read, Write};

fn run() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for arg in std::env::args().skip(1) {
        writeln!(out, "{}", arg.to_uppercase())?;
    }
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    out.write_all(String::from_utf8_lossy(&input).to_uppercase().as_bytes())?;
    out.flush()
}

fn main() {
    if let Err(err) = run() {
        eprintln!("upper: {err}");
        std::process::exit(1);
    }
}
