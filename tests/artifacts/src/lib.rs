//! The Voidbox tools, built for `wasm32-wasip2`, as file paths.
//!
//! Building this crate runs `cargo build --release --target wasm32-wasip2`
//! on the separate workspace `tools/` (see `build.rs`), so a plain
//! `cargo test` builds every tool it needs. Each tool gets a constant named
//! after it (upper case, `-` as `_`) holding the absolute path of its
//! component, whose file name is the tool's name:
//!
//! ```
//! let wc = std::path::Path::new(voidbox_tool_artifacts::WC);
//! assert_eq!(wc.file_name().unwrap(), "wc.wasm");
//! assert!(voidbox_tool_artifacts::ALL.iter().any(|(name, _)| *name == "hostile-loop"));
//! ```
//!
//! Tools written with `voidbox-guest` export the `voidbox:tool/tool` world;
//! `upper` is a plain `wasi:cli/command`. This crate knows nothing about
//! running them: it only builds them and names the files.

include!(concat!(env!("OUT_DIR"), "/tools.rs"));

/// The component path of the tool called `name`, if it was built.
///
/// ```
/// assert_eq!(voidbox_tool_artifacts::find("jq"), Some(voidbox_tool_artifacts::JQ));
/// assert_eq!(voidbox_tool_artifacts::find("no-such-tool"), None);
/// ```
pub fn find(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, path)| *path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_a_component_named_after_itself() {
        assert!(ALL.len() >= 15, "only {} tools were built", ALL.len());
        for (name, path) in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{path}: {err}"));
            // `\0asm`, then the component-model layer/version 0x0d 0x00 0x01 0x00
            // (a core module would have 0x01 0x00 0x00 0x00).
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\x00\x01\x00",
                "{name} is not a component"
            );
            let file = std::path::Path::new(path).file_name().unwrap();
            assert_eq!(file.to_str().unwrap(), format!("{name}.wasm"));
        }
        for expected in [
            "wc",
            "jq",
            "md2html",
            "csv2json",
            "grep",
            "hash",
            "echo",
            "upper",
            "hostile-loop",
            "hostile-balloon",
            "hostile-recursion",
            "hostile-escape",
            "hostile-clockrand",
            "hostile-flood",
            "hostile-panic",
        ] {
            assert!(
                ALL.iter().any(|(name, _)| *name == expected),
                "{expected} missing"
            );
        }
        assert_eq!(
            HOSTILE_LOOP,
            ALL.iter().find(|(n, _)| *n == "hostile-loop").unwrap().1
        );
    }
}
