//! What a sandbox is made of: the specification the creating program writes
//! to `<sandbox dir>/config.json` and the sandbox process reads back.
//!
//! It is also stored (as JSON) in the sandbox's state record, so `list` and
//! `inspect` can show how a sandbox was configured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{Backend, ProcessIdentity, SandboxName};
use crate::{Error, Result};

/// The file in the sandbox directory holding the [`SandboxSpec`].
pub const SPEC_FILE: &str = "config.json";
/// The agent's listening socket in the sandbox directory.
pub const AGENT_SOCKET: &str = "agent.sock";
/// The guest's console output (the agent's stdout and stderr for namespace
/// sandboxes, the virtual console for microVMs).
pub const CONSOLE_LOG: &str = "console.log";
/// The sandbox process's own log (its stderr).
pub const RUNTIME_LOG: &str = "runtime.log";
/// Present when the sandbox outlives its creator (see [`SandboxSpec::creator`]).
pub const DETACHED_MARKER: &str = "detached";
/// The guest vsock port the agent listens on in a microVM.
pub const AGENT_VSOCK_PORT: u32 = 2695;

/// How long processes inside get between SIGTERM and SIGKILL on an orderly
/// stop, unless the spec says otherwise.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the sandbox's root filesystem comes from, resolved on the host
/// before the sandbox process starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RootfsSpec {
    /// A pulled image's unpacked tree.
    Image {
        /// The normalized reference, for display.
        reference: String,
        /// The manifest digest the tree was built from.
        digest: String,
        /// The tree's root directory.
        tree: PathBuf,
    },
    /// A local directory used read-only as the lower layer.
    Directory {
        /// The directory (absolute).
        path: PathBuf,
    },
}

impl RootfsSpec {
    /// The read-only lower directory.
    pub fn lower(&self) -> &Path {
        match self {
            RootfsSpec::Image { tree, .. } => tree,
            RootfsSpec::Directory { path } => path,
        }
    }

    /// What to show as the sandbox's image.
    pub fn display_name(&self) -> String {
        match self {
            RootfsSpec::Image { reference, .. } => reference.clone(),
            RootfsSpec::Directory { path } => path.display().to_string(),
        }
    }
}

/// Everything the sandbox process needs to build and run one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The sandbox's name.
    pub name: SandboxName,
    /// The state record's incarnation this spec belongs to (empty in the
    /// copy stored in the record itself, which has its own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance_id: String,
    /// The isolation backend.
    pub backend: Backend,
    /// The root filesystem.
    pub rootfs: RootfsSpec,
    /// The static guest agent binary on the host, injected at
    /// [`crate::rootfs::AGENT_PATH`].
    pub agent: PathBuf,
    /// Virtual CPUs (microVM) or CPU bandwidth in CPUs (namespace).
    pub cpus: Option<u8>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
    /// Maximum number of processes and threads (namespace isolation).
    pub pids_max: Option<u64>,
    /// Environment every command inside starts with.
    pub env: Vec<(String, String)>,
    /// The working directory commands start in.
    pub workdir: Option<String>,
    /// The hostname inside.
    pub hostname: String,
    /// Between SIGTERM and SIGKILL for the processes inside on a stop.
    pub stop_grace_ms: u64,
    /// How long the sandbox may take to report ready.
    pub boot_timeout_ms: u64,
    /// The creating process: unless [`DETACHED_MARKER`] exists in the
    /// sandbox directory, the sandbox stops when it exits.
    pub creator: Option<ProcessIdentity>,
}

impl SandboxSpec {
    /// Writes the spec to `<dir>/`[`SPEC_FILE`].
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SPEC_FILE);
        let text = serde_json::to_vec_pretty(self).expect("a spec serializes");
        std::fs::write(&path, text).map_err(|source| Error::Io {
            op: "write",
            path,
            source,
        })
    }

    /// Reads the spec from `<dir>/`[`SPEC_FILE`].
    pub fn read_from(dir: &Path) -> Result<SandboxSpec> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read(&path).map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| Error::CorruptSandboxState {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path,
            reason: crate::sandbox::state::StateCorruptionKind::InvalidJson {
                message: format!("unreadable sandbox spec: {e}"),
            },
        })
    }

    /// The spec as stored in the state record.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a spec serializes")
    }

    /// The stop grace period.
    pub fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }

    /// The boot timeout.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_millis(self.boot_timeout_ms)
    }
}
