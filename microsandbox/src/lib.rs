//! # microsandbox
//!
//! Hardware-isolated sandboxes from OCI images, booted inside your program:
//! no daemon, no server.
//!
//! This release ships the foundation: the host probe that tells whether
//! microVMs can run here ([`host::probe`]) and OCI images pulled from any
//! registry into a verified local store ([`image::Images`]). Booting
//! sandboxes from those images builds on it.
//!
//! ```
//! let report = microsandbox::host::probe();
//! if report.verdict.can_run_microvm() {
//!     println!("microVMs can run on this host");
//! } else {
//!     println!("no microVMs here: {}", report.verdict);
//! }
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod host;
pub mod image;
pub mod sandbox;
pub mod volume;

/// The host's terminal, for interactive commands: its window size and raw
/// mode.
pub mod term {
    pub use msb_core::term::{RawMode, window_size};
}

pub use error::{MicrosandboxError, Result};
/// Networking: the network policy's types.
pub use msb_core::sandbox::network::{Cidr, DestinationGroup, NetworkPolicy};
pub use sandbox::{
    ExecOutput, ExitStatus, FsErrorKind, Isolation, RlimitResource, Sandbox, SandboxBuilder,
    SandboxFs, SandboxInfo, SandboxStatus,
};
pub use volume::{Volume, VolumeErrorKind, VolumeMount};
