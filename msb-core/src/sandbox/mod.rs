//! Sandboxes: their on-disk state and (as they land) the sandbox process,
//! its lifecycle and the isolation backends.
//!
//! - [`state`]: the per-sandbox records under the state home, safe under
//!   concurrent processes (exclusive creation, locked updates, liveness that
//!   tells a crashed sandbox from a running one).

pub mod cgroup;
pub mod namespace;
pub mod state;
