//! The facade's error type.

use std::path::PathBuf;

/// Everything a microsandbox call can fail with.
///
/// Engine errors are boxed to keep `Result`s small.
///
/// Variants are structured so a program can act on them (`match` on the
/// variant, read the fields) and each message says what went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MicrosandboxError {
    /// A configuration value is unusable (an image reference that does not
    /// parse, a platform string, a pull policy).
    #[error("invalid {what} {value:?}: {source}")]
    InvalidConfig {
        /// Which setting, e.g. "image reference".
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is unusable.
        #[source]
        source: Box<msb_core::Error>,
    },
    /// The image is neither in the local store nor allowed to be pulled
    /// (pull policy `never`), or it is not in the store when asked to remove it.
    #[error("image {reference} is not in the local store")]
    ImageNotFound {
        /// The normalized reference.
        reference: String,
    },
    /// Pulling, verifying, storing or unpacking `reference` failed.
    #[error("image {reference}: {source}")]
    Image {
        /// The normalized reference.
        reference: String,
        /// What failed, from the engine.
        #[source]
        source: Box<msb_core::Error>,
    },
    /// The image store under the state home failed.
    #[error("image store {path}: {source}")]
    Store {
        /// The store's directory.
        path: PathBuf,
        /// What failed, from the engine.
        #[source]
        source: Box<msb_core::Error>,
    },
    /// The host refused a resource microsandbox needs to run (threads, an
    /// async runtime, ...).
    #[error("cannot {what}: {source}")]
    Runtime {
        /// What could not be done.
        what: &'static str,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`MicrosandboxError`].
pub type Result<T, E = MicrosandboxError> = std::result::Result<T, E>;
