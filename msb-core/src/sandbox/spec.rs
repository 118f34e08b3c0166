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
/// Present when the sandbox outlives its creator (see [`SandboxSpec::creator`]);
/// holds the instance id it applies to.
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
    /// Host directories and tmpfs mounted inside, parents before children.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// The user commands run as unless they say otherwise (a name, `uid`,
    /// `uid:gid`, `name:group`); the image's `User` or the builder's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Resource limits of every process inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<RlimitSpec>,
    /// The image's (or the builder's) entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// The image's default arguments (`Cmd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Networking: on or off, published ports, the policy.
    #[serde(default)]
    pub network: super::network::NetworkSpec,
}

/// Where a volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VolumeSource {
    /// A host directory or file, bind-mounted (microVM: shared over
    /// virtio-fs, directories only).
    Bind {
        /// The host path (absolute, existing).
        path: PathBuf,
    },
    /// A named volume: a directory under `<state home>/volumes/`.
    Named {
        /// The volume's name.
        name: String,
        /// Its directory on the host.
        path: PathBuf,
    },
    /// A fresh, empty tmpfs.
    Tmpfs {
        /// Its size limit in MiB (the kernel's default, half the RAM, when
        /// `None`).
        size_mib: Option<u32>,
    },
}

impl VolumeSource {
    /// The host path shared into the sandbox, for bind and named volumes.
    pub fn host_path(&self) -> Option<&Path> {
        match self {
            VolumeSource::Bind { path } | VolumeSource::Named { path, .. } => Some(path),
            VolumeSource::Tmpfs { .. } => None,
        }
    }
}

/// One volume: what is mounted where inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The mount point inside (absolute, no `..`; created if missing).
    pub guest: String,
    /// What is mounted there.
    pub source: VolumeSource,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A resource limit (`setrlimit(2)`) of the sandbox's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitSpec {
    /// Which resource.
    pub resource: RlimitResource,
    /// The soft limit ([`u64::MAX`]: unlimited).
    pub soft: u64,
    /// The hard limit ([`u64::MAX`]: unlimited).
    pub hard: u64,
}

/// The resources of `setrlimit(2)`, by their `RLIMIT_*` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RlimitResource {
    /// `RLIMIT_AS`: address space, bytes.
    As,
    /// `RLIMIT_CORE`: core file size, bytes.
    Core,
    /// `RLIMIT_CPU`: CPU time, seconds.
    Cpu,
    /// `RLIMIT_DATA`: data segment, bytes.
    Data,
    /// `RLIMIT_FSIZE`: file size, bytes.
    Fsize,
    /// `RLIMIT_LOCKS`: file locks.
    Locks,
    /// `RLIMIT_MEMLOCK`: locked memory, bytes.
    Memlock,
    /// `RLIMIT_MSGQUEUE`: POSIX message queues, bytes.
    Msgqueue,
    /// `RLIMIT_NICE`: nice ceiling.
    Nice,
    /// `RLIMIT_NOFILE`: open file descriptors.
    Nofile,
    /// `RLIMIT_NPROC`: processes of the user.
    Nproc,
    /// `RLIMIT_RSS`: resident set, bytes.
    Rss,
    /// `RLIMIT_RTPRIO`: real-time priority ceiling.
    Rtprio,
    /// `RLIMIT_RTTIME`: real-time CPU time, microseconds.
    Rttime,
    /// `RLIMIT_SIGPENDING`: queued signals.
    Sigpending,
    /// `RLIMIT_STACK`: stack, bytes.
    Stack,
}

impl RlimitResource {
    /// Every resource.
    pub const ALL: [RlimitResource; 16] = [
        RlimitResource::As,
        RlimitResource::Core,
        RlimitResource::Cpu,
        RlimitResource::Data,
        RlimitResource::Fsize,
        RlimitResource::Locks,
        RlimitResource::Memlock,
        RlimitResource::Msgqueue,
        RlimitResource::Nice,
        RlimitResource::Nofile,
        RlimitResource::Nproc,
        RlimitResource::Rss,
        RlimitResource::Rtprio,
        RlimitResource::Rttime,
        RlimitResource::Sigpending,
        RlimitResource::Stack,
    ];

    /// The kernel's resource number (`RLIMIT_*`).
    pub fn as_raw(self) -> u32 {
        let raw = match self {
            RlimitResource::As => libc::RLIMIT_AS,
            RlimitResource::Core => libc::RLIMIT_CORE,
            RlimitResource::Cpu => libc::RLIMIT_CPU,
            RlimitResource::Data => libc::RLIMIT_DATA,
            RlimitResource::Fsize => libc::RLIMIT_FSIZE,
            RlimitResource::Locks => libc::RLIMIT_LOCKS,
            RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
            RlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
            RlimitResource::Nice => libc::RLIMIT_NICE,
            RlimitResource::Nofile => libc::RLIMIT_NOFILE,
            RlimitResource::Nproc => libc::RLIMIT_NPROC,
            RlimitResource::Rss => libc::RLIMIT_RSS,
            RlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
            RlimitResource::Rttime => libc::RLIMIT_RTTIME,
            RlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
            RlimitResource::Stack => libc::RLIMIT_STACK,
        };
        // `u32` with glibc, `c_int` with musl.
        #[allow(clippy::unnecessary_cast)]
        let raw = raw as u32;
        raw
    }

    /// The lower-case name without `RLIMIT_` (`nofile`).
    pub fn name(self) -> &'static str {
        match self {
            RlimitResource::As => "as",
            RlimitResource::Core => "core",
            RlimitResource::Cpu => "cpu",
            RlimitResource::Data => "data",
            RlimitResource::Fsize => "fsize",
            RlimitResource::Locks => "locks",
            RlimitResource::Memlock => "memlock",
            RlimitResource::Msgqueue => "msgqueue",
            RlimitResource::Nice => "nice",
            RlimitResource::Nofile => "nofile",
            RlimitResource::Nproc => "nproc",
            RlimitResource::Rss => "rss",
            RlimitResource::Rtprio => "rtprio",
            RlimitResource::Rttime => "rttime",
            RlimitResource::Sigpending => "sigpending",
            RlimitResource::Stack => "stack",
        }
    }
}

impl std::str::FromStr for RlimitResource {
    type Err = ();

    /// `nofile`, `NOFILE` or `RLIMIT_NOFILE` (any case).
    fn from_str(s: &str) -> std::result::Result<RlimitResource, ()> {
        let lower = s.trim().to_ascii_lowercase();
        let name = lower.strip_prefix("rlimit_").unwrap_or(&lower);
        RlimitResource::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or(())
    }
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
