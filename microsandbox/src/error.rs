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
    /// An isolation backend name (`MSB_ISOLATION`, `--isolation`) that is
    /// neither `microvm` nor `namespace`.
    #[error("invalid isolation {value:?}: expected microvm or namespace")]
    InvalidIsolation {
        /// The value given.
        value: String,
    },
    /// A command could not be started in the sandbox (not found, not
    /// executable, permission denied, bad working directory, ...).
    #[error("cannot run {command:?} in sandbox {name:?}: {kind:?}: {message}")]
    ExecFailed {
        /// The sandbox's name.
        name: String,
        /// The command.
        command: String,
        /// Why, as the guest agent classified it.
        kind: msb_core::agent::ErrorKind,
        /// The agent's detail.
        message: String,
    },
    /// A file operation in the sandbox failed (the path is missing, is a
    /// directory, a directory is not empty, ...); see
    /// [`SandboxFs`](crate::sandbox::SandboxFs).
    #[error("{kind:?} for {path:?} in sandbox {name:?}: {message}")]
    Fs {
        /// The sandbox's name.
        name: String,
        /// The path (inside the sandbox) the operation was on.
        path: String,
        /// Why, as the guest agent classified it.
        kind: crate::sandbox::FsErrorKind,
        /// The agent's detail.
        message: String,
    },
    /// A command ran longer than its timeout and was killed.
    #[error("command {command:?} in sandbox {name:?} timed out after {timeout:?} and was killed")]
    ExecTimeout {
        /// The sandbox's name.
        name: String,
        /// The command.
        command: String,
        /// The timeout it had.
        timeout: std::time::Duration,
    },
    /// The command's stdin is closed (it closed it, or it ended); its
    /// output can still be read.
    #[error("stdin of a command in sandbox {name:?} is closed")]
    StdinClosed {
        /// The sandbox's name.
        name: String,
    },
    /// A sandbox of that name exists already (running or not) and
    /// `replace()` was not asked for.
    #[error("sandbox {name:?} already exists (use replace() to take it over, or remove it first)")]
    SandboxAlreadyExists {
        /// The sandbox's name.
        name: String,
    },
    /// No sandbox has that name, or the handle's sandbox was removed or
    /// replaced by another of the same name.
    #[error("sandbox {name:?} not found")]
    SandboxNotFound {
        /// The sandbox's name.
        name: String,
    },
    /// The sandbox cannot be removed while its process runs.
    #[error("sandbox {name:?} is still running (pid {pid}); stop it first")]
    SandboxStillRunning {
        /// The sandbox's name.
        name: String,
        /// Its live process.
        pid: u32,
    },
    /// The sandbox did not become ready.
    #[error(
        "sandbox {name:?} failed to boot during {stage}: {reason}{}",
        console_suffix(console_tail)
    )]
    BootFailed {
        /// The sandbox's name.
        name: String,
        /// Where it failed, e.g. `"vm"`, `"rootfs"`, `"agent handshake"`.
        stage: String,
        /// Why.
        reason: String,
        /// The last lines of the guest console (may be empty).
        console_tail: String,
    },
    /// Running or talking to the sandbox failed (its process, its agent,
    /// its state on disk).
    #[error("sandbox {name:?}: {source}")]
    Sandbox {
        /// The sandbox's name.
        name: String,
        /// What failed, from the engine.
        #[source]
        source: Box<msb_core::Error>,
    },
    /// A volume's path inside the sandbox (or its definition) is unusable;
    /// reported before anything is started.
    #[error("invalid volume at {guest:?}: {reason}")]
    InvalidVolume {
        /// The path inside, as given.
        guest: String,
        /// What is wrong.
        reason: crate::volume::VolumeErrorKind,
    },
    /// The host path of a bind volume does not exist; reported before
    /// anything is started.
    #[error("host path {path} of the volume at {guest:?} does not exist")]
    VolumeHostPathMissing {
        /// The path inside.
        guest: String,
        /// The missing host path.
        path: PathBuf,
    },
    /// No named volume has that name.
    #[error("volume {name:?} not found")]
    VolumeNotFound {
        /// The volume's name.
        name: String,
    },
    /// A named volume of that name exists already.
    #[error("volume {name:?} already exists")]
    VolumeAlreadyExists {
        /// The volume's name.
        name: String,
    },
    /// The named volume cannot be removed while running sandboxes mount it.
    #[error("volume {name:?} is in use by running sandboxes {sandboxes:?}")]
    VolumeInUse {
        /// The volume's name.
        name: String,
        /// The sandboxes mounting it.
        sandboxes: Vec<String>,
    },
    /// A published host port is already taken; reported at create time,
    /// before anything is started.
    #[error("host port {addr}:{port}/{protocol} is already in use")]
    PortInUse {
        /// The bind address on the host.
        addr: std::net::IpAddr,
        /// The host port.
        port: u16,
        /// `tcp` or `udp`.
        protocol: &'static str,
    },
    /// A network setting is unusable (a published port of 0, the same host
    /// port published twice, an address block that does not parse).
    #[error("invalid network setting {what}: {reason}")]
    InvalidNetwork {
        /// Which setting, e.g. `"port 0:80"`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file microsandbox needs could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
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

fn console_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nconsole (last lines):\n{}", tail.trim_end())
    }
}

impl MicrosandboxError {
    /// The facade's error for an engine error about sandbox `name`: the
    /// variants a program acts on are lifted out, the rest is wrapped.
    pub(crate) fn from_sandbox(name: &str, e: msb_core::Error) -> MicrosandboxError {
        use msb_core::Error as E;
        match e {
            E::SandboxAlreadyExists { name } => MicrosandboxError::SandboxAlreadyExists { name },
            E::SandboxNotFound { name } => MicrosandboxError::SandboxNotFound { name },
            E::SandboxStillRunning { name, pid } => {
                MicrosandboxError::SandboxStillRunning { name, pid }
            }
            E::BootFailed {
                name,
                stage,
                reason,
                console_tail,
            } => MicrosandboxError::BootFailed {
                name,
                stage,
                reason,
                console_tail,
            },
            E::InvalidSandboxName { .. } => MicrosandboxError::InvalidConfig {
                what: "sandbox name",
                value: name.to_owned(),
                source: Box::new(e),
            },
            E::Io { op, path, source } => MicrosandboxError::Io { op, path, source },
            E::PortInUse {
                addr,
                port,
                protocol,
            } => MicrosandboxError::PortInUse {
                addr,
                port,
                protocol,
            },
            other => MicrosandboxError::Sandbox {
                name: name.to_owned(),
                source: Box::new(other),
            },
        }
    }
}

/// `Result` with [`MicrosandboxError`].
pub type Result<T, E = MicrosandboxError> = std::result::Result<T, E>;
