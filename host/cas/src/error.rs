//! [`CasError`]: every way a store operation can fail, with messages that
//! say what failed and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::{Digest, DigestParseError};

/// Result of a store operation.
pub type Result<T, E = CasError> = std::result::Result<T, E>;

/// An operating error of the store. Bugs are assertions, not variants.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// No blob with this digest is stored.
    #[error("no blob {0} in the content store; check the digest, or add the content with `voidbox cas put`")]
    NotFound(Digest),

    /// The stored bytes no longer hash to their digest (or their header or
    /// size is wrong). The bad bytes are never returned.
    #[error("blob {digest} is corrupt in the content store: {detail}; run `voidbox cas verify` to list every damaged blob, then remove it (`voidbox cas rm {digest}`) and add the original content again")]
    Corrupt {
        /// The blob that is damaged.
        digest: Digest,
        /// What is wrong with it.
        detail: Corruption,
    },

    /// A file-system operation on the store failed.
    #[error("could not {action} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        /// What the store was doing, e.g. "create the store directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Reading the caller's input stream failed during `put_reader`.
    #[error("could not read the input to store: {0}")]
    Input(#[source] io::Error),

    /// Writing to the caller's output failed during `copy_to`.
    #[error("could not write blob {digest} to the output: {source}")]
    Output {
        /// The blob being copied.
        digest: Digest,
        /// The writer's error.
        #[source]
        source: io::Error,
    },

    /// A text given as a digest is not one.
    #[error(transparent)]
    BadDigest(#[from] DigestParseError),

    /// `remove` refused a pinned blob.
    #[error("blob {0} is pinned; unpin it first (`voidbox cas unpin {0}`) if you really want to remove it")]
    Pinned(Digest),

    /// A write was attempted on a store opened read-only.
    #[error("the content store at {} was opened read-only; open it writable to {action}", path.display())]
    ReadOnly {
        /// The store's directory.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
    },
}

/// What is wrong with a corrupt blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The file holds fewer or more bytes than its header records (for
    /// example a truncated file).
    SizeMismatch {
        /// Content bytes recorded when the blob was written.
        expected: u64,
        /// Content bytes present now.
        actual: u64,
    },
    /// The size is right but the content hashes to another digest.
    ContentChanged {
        /// What the content hashes to now.
        actual: Digest,
    },
    /// The file does not start with the store's blob header (overwritten,
    /// or shorter than the header).
    BadHeader,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::SizeMismatch { expected, actual } if actual < expected => {
                write!(f, "truncated: {actual} of its {expected} bytes are left")
            }
            Corruption::SizeMismatch { expected, actual } => write!(
                f,
                "size mismatch: it should hold {expected} bytes but holds {actual}"
            ),
            Corruption::ContentChanged { actual } => {
                write!(f, "content changed: the bytes now hash to {actual}")
            }
            Corruption::BadHeader => f.write_str("its header is damaged or missing"),
        }
    }
}

/// A suggestion for the usual reasons a store directory cannot be used.
fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied => {
            " (check that the user running voidbox may read and write this directory, e.g. with chown or chmod, or choose another data directory with --home or VOIDBOX_HOME)"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            " (the file system is mounted read-only: choose a data directory on a writable file system with --home or VOIDBOX_HOME)"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            " (the disk is full: free some space, e.g. with `voidbox cas gc`)"
        }
        io::ErrorKind::NotADirectory => {
            " (a file is in the way where the store expects a directory: move it or choose another data directory)"
        }
        _ => "",
    }
}

impl CasError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CasError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
