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
    /// The data directory or its database cannot be written by this user
    /// (permissions, or a read-only file system).
    #[error("{} is not writable by this user ({detail}); make the data directory and everything in it writable by you (`sudo chown -R $(id -un) {}`, or `chmod -R u+rwX {}` if you own it) or choose another --home", path.display(), dir_of(path).display(), dir_of(path).display())]
    NotWritable {
        /// The file or directory that could not be opened for writing.
        path: PathBuf,
        /// What the operating system said.
        detail: String,
    },
    /// Another process holds the database's lock.
    #[error("database {} is in use by another voidbox process (waited {} s for it); stop that process (for a replica, `voidbox cluster down`) or choose another --home", path.display(), waited.as_secs_f64())]
    InUse {
        /// The database file.
        path: PathBuf,
        /// How long this process waited for the lock.
        waited: std::time::Duration,
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
    /// A file the caller named cannot be read: a bad request, unlike
    /// [`Error::Io`] on the data directory's own files.
    #[error("cannot read {}: {source}; {hint}", path.display())]
    UnreadableFile {
        /// The file given.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// A component file that cannot be a tool (not Wasm, a core module, the
    /// wrong world, does not compile or link).
    #[error("{}: {source}", path.display())]
    BadComponent {
        /// The file given.
        path: PathBuf,
        /// Why it cannot be loaded.
        source: voidbox_sandbox::LoadError,
    },
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
    #[error("not admitted: {0}; ask for a smaller input or a larger budget (a run's budget is the smaller of what the invocation asks and what its token allows)")]
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
    /// The error for a database that could not be opened: a held lock and
    /// missing write permission each get their own message, because their
    /// fixes differ.
    pub(crate) fn db_open(
        path: &std::path::Path,
        err: redb::DatabaseError,
        waited: std::time::Duration,
    ) -> Error {
        let path = path.to_path_buf();
        match err {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse { path, waited },
            redb::DatabaseError::Storage(redb::StorageError::Io(e)) if is_not_writable(&e) => {
                Error::NotWritable {
                    path,
                    detail: e.to_string(),
                }
            }
            other => Error::Db {
                path,
                detail: other.to_string(),
            },
        }
    }

    pub(crate) fn io(
        path: impl Into<PathBuf>,
        hint: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source, hint }
    }
}

/// The directory a file is in (the data directory, for the database).
fn dir_of(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    }
}

/// Whether an I/O error says the file cannot be written by this process:
/// its permissions, or a file system mounted read-only.
fn is_not_writable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::Path;
    use std::time::Duration;

    fn io_err(kind: io::ErrorKind) -> redb::DatabaseError {
        redb::DatabaseError::Storage(redb::StorageError::Io(io::Error::from(kind)))
    }

    // Tests run as root, which ignores permission bits, so a real read-only
    // directory cannot be made here: the mapping is tested on the error
    // redb returns for one (EACCES from open(2)).
    #[test]
    fn a_database_without_write_permission_says_so_and_how_to_fix_it() {
        let path = Path::new("home/voidbox.redb");
        for kind in [
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let e = Error::db_open(path, io_err(kind), Duration::ZERO);
            assert!(matches!(e, Error::NotWritable { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.contains("home/voidbox.redb is not writable by this user"),
                "{text}"
            );
            assert!(
                text.contains("chmod -R u+rwX home` if you own it") && text.contains("--home"),
                "{text}"
            );
            assert!(text.contains("sudo chown -R $(id -un) home`"), "{text}");
            assert!(!text.contains("another voidbox process"), "{text}");
        }
    }

    #[test]
    fn a_held_lock_names_the_other_process() {
        let path = Path::new("home/voidbox.redb");
        let e = Error::db_open(
            path,
            redb::DatabaseError::DatabaseAlreadyOpen,
            Duration::from_secs(5),
        );
        let text = e.to_string();
        assert!(text.contains("in use by another voidbox process"), "{text}");
        assert!(text.contains("waited 5 s"), "{text}");
        let other = Error::db_open(path, io_err(io::ErrorKind::InvalidData), Duration::ZERO);
        assert!(matches!(other, Error::Db { .. }), "{other:?}");
    }
}
