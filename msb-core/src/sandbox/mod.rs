//! Sandboxes: their on-disk state, the sandbox process, its lifecycle and
//! the isolation backends.
//!
//! - [`state`]: the per-sandbox records under the state home, safe under
//!   concurrent processes (exclusive creation, locked updates, liveness that
//!   tells a crashed sandbox from a running one).
//! - [`spec`]: what a sandbox is made of, as handed to its process.
//! - [`lifecycle`]: create (and replace), stop, kill, wait, remove, from the
//!   creating program's side.
//! - [`process`]: the sandbox process itself (`msb-sandbox`).
//! - [`client`]: connections to a sandbox's guest agent.
//! - [`network`]: networking (pasta, TSI), published ports, the network
//!   policy.
//! - [`namespace`], [`cgroup`]: the namespace isolation backend's parts;
//!   the microVM backend is [`crate::krun`].

pub mod cgroup;
pub mod client;
pub mod control;
pub mod exec;
pub mod files;
pub mod lifecycle;
pub mod logs;
pub mod namespace;
pub mod network;
pub mod process;
pub mod programs;
pub mod socket;
pub mod spec;
pub mod state;
