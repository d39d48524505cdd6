//! The host services a tool may call: the consensus time and granted blobs.

use std::fmt;

use crate::ToolError;

/// Why [`read_blob`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// The invocation does not grant this digest.
    NotGranted,
    /// The digest is granted but the host does not have the blob.
    NotFound,
    /// The blob is larger than the invocation's read limit (its size).
    TooLarge(u64),
    /// The text is not a digest of the form `blake3:<64 hex>`.
    BadDigest,
}

impl BlobError {
    /// The tool-error code this failure maps to when propagated with `?`.
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::NotGranted => "blob-not-granted",
            BlobError::NotFound => "blob-not-found",
            BlobError::TooLarge(_) => "blob-too-large",
            BlobError::BadDigest => "bad-digest",
        }
    }
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobError::NotGranted => {
                write!(
                    f,
                    "the invocation does not grant this blob; grant it to the invocation"
                )
            }
            BlobError::NotFound => {
                write!(
                    f,
                    "the host does not have this blob; put it in the CAS first"
                )
            }
            BlobError::TooLarge(size) => write!(
                f,
                "the blob is {size} bytes, more than the invocation may read; raise the read limit"
            ),
            BlobError::BadDigest => write!(f, "not a digest; write it as blake3:<64 hex digits>"),
        }
    }
}

impl std::error::Error for BlobError {}

impl From<BlobError> for ToolError {
    fn from(err: BlobError) -> Self {
        ToolError::new(err.code(), err.to_string())
    }
}

/// The consensus time of this invocation, in nanoseconds since the Unix
/// epoch. Every replica sees the same value, and so does `SystemTime::now`
/// inside the sandbox.
///
/// # Panics
///
/// Outside a Voidbox host (in a native unit test), because there is no
/// consensus time there.
pub fn now() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::voidbox::tool::host::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        panic!("voidbox_guest::now() needs a Voidbox host; call it only from a tool built for wasm32-wasip2")
    }
}

/// Reads the content-addressed blob `digest` (`blake3:<64 hex>`), which the
/// invocation must grant.
///
/// # Panics
///
/// Outside a Voidbox host (in a native unit test), because there is no CAS
/// there.
pub fn read_blob(digest: &str) -> Result<Vec<u8>, BlobError> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::voidbox::tool::types::BlobError as Wit;
        crate::bindings::voidbox::tool::host::read_blob(digest).map_err(|err| match err {
            Wit::NotGranted => BlobError::NotGranted,
            Wit::NotFound => BlobError::NotFound,
            Wit::TooLarge(size) => BlobError::TooLarge(size),
            Wit::BadDigest => BlobError::BadDigest,
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        panic!("voidbox_guest::read_blob({digest:?}) needs a Voidbox host; call it only from a tool built for wasm32-wasip2")
    }
}
