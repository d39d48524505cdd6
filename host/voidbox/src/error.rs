//! The host's error type. Every message names the problem and the fix.

use std::path::PathBuf;

/// Errors from the [`Host`](crate::Host) API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be used.
    #[error("{}: {source}; {hint}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The data directory has not been initialized.
    #[error("no Voidbox data directory at {}; run `voidbox init` (or pass --home DIR / set VOIDBOX_HOME)", .0.display())]
    NotInitialized(PathBuf),
    /// The configuration file is invalid.
    #[error("{}: {detail}; fix the file or delete it to get the defaults back", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column when known.
        detail: String,
    },
    /// The embedded database failed.
    #[error("database {}: {detail}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A stored record could not be decoded.
    #[error("stored record {what} is damaged: {detail}; run `voidbox cas verify` and re-add what is missing")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The content-addressed store failed.
    #[error(transparent)]
    Cas(#[from] voidbox_cas::CasError),
    /// A component could not be loaded.
    #[error(transparent)]
    Load(#[from] voidbox_sandbox::LoadError),
    /// The sandbox could not run a request.
    #[error(transparent)]
    Run(#[from] voidbox_sandbox::RunError),
    /// No tool by that name or digest.
    #[error("no tool named or with digest `{0}`; see `voidbox tool list`, or add it with `voidbox tool add FILE.wasm`")]
    NoSuchTool(String),
    /// A reference that is neither a name nor a digest.
    #[error("`{text}` is not a tool name or digest: {detail}")]
    BadReference {
        /// The text given.
        text: String,
        /// Why it was refused.
        detail: String,
    },
    /// A digest given on the command line or in a request is malformed.
    #[error(transparent)]
    BadDigest(#[from] voidbox_cas::DigestParseError),
    /// No blob under a digest that was asked for.
    #[error("no blob {0} in the store; add it with `voidbox cas put FILE`")]
    NoSuchBlob(voidbox_cas::Digest),
    /// No receipt under a digest.
    #[error(
        "no receipt or invocation {0}; receipts are listed in the --json output of `voidbox run`"
    )]
    NoSuchReceipt(voidbox_cas::Digest),
    /// An input over the configured limit.
    #[error("the input is {size} bytes, over the limit of {max} bytes; raise `input_bytes_max` in voidbox.toml or use a smaller input")]
    InputTooLarge {
        /// The input's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A tool name that cannot be used.
    #[error("`{0}` is not a usable tool name: use 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `blake3:` or made of 64 hex digits")]
    BadName(String),
    /// A capability operation failed (keys, tenants, token text).
    #[error("{detail}")]
    Auth {
        /// What failed and what to do.
        detail: String,
    },
    /// The token does not allow this invocation.
    #[error("{}", denied_message(.0))]
    Denied(voidbox_auth::Denied),
    /// Z3 could not prove that the tool's contract fits the budget.
    #[error("not admitted: {0}; ask for a smaller input or a token with a larger budget")]
    NotAdmitted(String),
    /// A contract that cannot be used.
    #[error("the tool's contract is not usable: {0}")]
    Contract(String),
    /// A cluster operation failed: configuration, keys, or replicas that
    /// cannot be reached or do not agree.
    #[error("{0}")]
    Cluster(String),
    /// The background writer stopped; nothing more can be made durable.
    #[error("the storage writer stopped: {0}; restart the host")]
    WriterStopped(String),
}

fn denied_message(d: &voidbox_auth::Denied) -> String {
    // The message already names the failing caveat, never the key.
    format!("denied ({}): {}", d.kind.as_str(), d.message)
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        hint: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source, hint }
    }
}
