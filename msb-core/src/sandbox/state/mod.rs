//! Sandbox state: one record per sandbox under the state home, safe under
//! concurrent threads and processes.
//!
//! ```text
//! <home>/sandboxes/<name>/state.json   the SandboxRecord (JSON)
//! <home>/sandboxes/<name>/lock         flock'ed by updates and removal
//! ```
//!
//! - [`SandboxName`]: validated names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most
//!   63 characters, no `..`), safe to use as a directory name.
//! - [`StateStore`]: exclusive creation ([`StateStore::create`] returns a
//!   [`Reservation`]; of two concurrent creators of a name exactly one wins
//!   and the other gets [`Error::SandboxAlreadyExists`](crate::Error::SandboxAlreadyExists)
//!   at once), lock-free reads, locked updates, and removal that refuses
//!   while the sandbox's process lives.
//! - Liveness: a record names its process by pid *and* start time
//!   ([`ProcessIdentity`]), so [`SandboxRecord::live_status`] reports a
//!   sandbox whose process died, or whose pid was reused, as
//!   [`SandboxStatus::Crashed`], never as running.
//!
//! ```
//! use msb_core::sandbox::state::{Backend, SandboxName, SandboxStatus, StateStore};
//!
//! # let home = tempfile::tempdir().unwrap();
//! let store = StateStore::open(home.path())?;
//! let name = SandboxName::new("worker-1")?;
//! let reservation = store.create(&name, serde_json::json!({}), Backend::Namespace)?;
//! // ... spawn the sandbox process, then:
//! reservation.commit(std::process::id())?;
//! assert_eq!(store.status(&name)?, SandboxStatus::Running);
//! assert!(matches!(
//!     store.create(&name, serde_json::json!({}), Backend::Namespace),
//!     Err(msb_core::Error::SandboxAlreadyExists { .. })
//! ));
//! store.set_stopped(&name)?;
//! store.remove(&name)?;
//! assert!(store.get(&name)?.is_none());
//! # Ok::<(), msb_core::Error>(())
//! ```

mod name;
mod process;
mod record;
mod store;

pub use name::{NAME_MAX_LEN, SandboxName, SandboxNameErrorKind};
pub use process::ProcessIdentity;
pub use record::{Backend, RECORD_VERSION, SandboxRecord, SandboxStatus};
pub use store::{LOCK_FILE, Reservation, SANDBOXES_DIR, STATE_FILE, StateStore};

/// Why a sandbox's `state.json` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateCorruptionKind {
    /// The sandbox directory exists but has no `state.json`.
    #[error("state file is missing")]
    MissingStateFile,
    /// The sandbox directory exists but has no `lock` file.
    #[error("lock file is missing")]
    MissingLockFile,
    /// `state.json` is larger than any record this code writes.
    #[error("state file is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// `state.json` was written by a newer (or unknown) format version.
    #[error("unsupported state format version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// `state.json` is not a valid record.
    #[error("invalid record: {message}")]
    InvalidJson {
        /// The JSON parser's message (with line and column).
        message: String,
    },
    /// The record names a different sandbox than its directory.
    #[error("record is for sandbox {recorded:?}")]
    NameMismatch {
        /// The name found in the record.
        recorded: String,
    },
}
