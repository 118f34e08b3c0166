//! The microsandbox engine.
//!
//! `msb-core` holds everything below the public facade: the libkrun bindings'
//! safe layer ([`krun`]), the host probe that decides whether microVMs can run
//! here ([`kvm`]), and (as they land) OCI image handling, rootfs assembly, the
//! sandbox process and the guest agent.
//!
//! Users depend on the `microsandbox` crate; this crate's API is shared by the
//! project's own crates and may change between minor versions.

pub mod agent;
pub mod error;
pub mod image;
#[cfg(feature = "krun")]
pub mod krun;
pub mod kvm;
pub mod paths;
pub mod rootfs;
pub mod sandbox;
pub mod term;

pub use error::{Error, Result};
