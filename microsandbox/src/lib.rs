//! # microsandbox
//!
//! Hardware-isolated sandboxes from OCI images, booted inside your program:
//! no daemon, no server.
//!
//! This release ships the foundation: the libkrun toolchain and the host
//! probe that tells whether microVMs can run here ([`host::probe`]). Booting
//! sandboxes from images builds on it.
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

pub mod host;
