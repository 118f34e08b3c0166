//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
///
/// Variants are structured: each carries the values a caller needs to act on
/// the failure (the path, the name, the reference), never a preformatted string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "create directory".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `reference` is not a valid image reference.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text that was parsed.
        reference: String,
        /// What is wrong with it.
        reason: crate::image::ReferenceErrorKind,
    },
    /// `digest` is not a valid `sha256:`/`sha512:` content digest.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The text that was parsed.
        digest: String,
        /// What is wrong with it.
        reason: crate::image::DigestErrorKind,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
