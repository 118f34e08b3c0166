//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
///
/// Variants are structured: each carries the values a caller needs to act on
/// the failure (the path, the name, the reference), never a preformatted string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "create directory".
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `reference` is not a valid image reference.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text that was parsed.
        reference: String,
        /// What is wrong with it.
        reason: crate::image::ReferenceErrorKind,
    },
    /// `digest` is not a valid `sha256:`/`sha512:` content digest.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The text that was parsed.
        digest: String,
        /// What is wrong with it.
        reason: crate::image::DigestErrorKind,
    },
    /// A layer entry at `path` was refused because applying it could reach
    /// outside the root it is unpacked into.
    #[error("unsafe layer entry {path}: {reason}")]
    UnsafeLayerEntry {
        /// The entry's name as written in the layer.
        path: PathBuf,
        /// Why it was refused.
        reason: crate::image::unpack::UnsafeEntryReason,
    },
    /// A layer is not a readable tar stream (corrupt or truncated tar, gzip or
    /// zstd data).
    #[error("malformed layer{}: {reason}", entry.as_ref().map(|e| format!(" at entry {}", e.display())).unwrap_or_default())]
    LayerFormat {
        /// The entry being read when the problem was found, if any.
        entry: Option<PathBuf>,
        /// What is wrong.
        reason: crate::image::unpack::LayerFormatErrorKind,
        /// The decoder's error, if one was reported.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The registry `registry` answered with an unexpected HTTP `status`.
    #[error("registry {registry}: HTTP {status}: {message}")]
    Registry {
        /// The registry host (as configured, before mirror mapping).
        registry: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's error message (from its JSON error body), or the
        /// status' reason phrase.
        message: String,
    },
    /// The registry refused access to `repository`, even after authenticating
    /// with whatever credentials were available.
    #[error("registry {registry}: unauthorized for repository {repository}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository path, e.g. `library/alpine`.
        repository: String,
    },
    /// The registry has no manifest for `reference`.
    #[error("manifest unknown: {reference}")]
    ManifestUnknown {
        /// The image reference (or `repository@digest`) that was asked for.
        reference: String,
    },
    /// The image index for `reference` has no image for the wanted platform.
    #[error("no image for platform {wanted} in {reference} (available: {})", available.join(", "))]
    NoMatchingPlatform {
        /// The image reference.
        reference: String,
        /// The platform that was asked for, e.g. `linux/amd64`.
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A manifest or blob has a media type this engine does not handle.
    #[error("unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The media type as the registry sent it.
        media_type: String,
    },
    /// An HTTP request to `url` failed below the HTTP status level
    /// (connection, TLS, a broken body).
    #[error("HTTP request to {url} failed: {source}")]
    Http {
        /// The URL requested.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: crate::image::Digest,
        /// The digest of the bytes received.
        actual: crate::image::Digest,
    },
    /// A blob ended before its expected size, and retries were exhausted.
    #[error("blob {digest} truncated: expected {expected} bytes, got {got}")]
    BlobTruncated {
        /// The blob's digest.
        digest: crate::image::Digest,
        /// The size it should have.
        expected: u64,
        /// How many bytes arrived.
        got: u64,
    },
    /// A blob (or manifest) was larger than its expected or allowed size;
    /// reading stopped at `limit` bytes.
    #[error("{what} exceeds its size limit of {limit} bytes")]
    TooLarge {
        /// What was being read, e.g. `blob sha256:…` or `manifest alpine:3`.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest or index from the registry is not valid JSON of its type.
    #[error("invalid manifest for {reference}: {reason}")]
    InvalidManifest {
        /// The image reference it was fetched for.
        reference: String,
        /// What is wrong (the JSON parser's message).
        reason: String,
    },
    /// A registry configuration (microsandbox `config.json`, a Docker
    /// `config.json`, an environment variable, a CA file) is invalid.
    #[error("invalid registry configuration in {origin}: {reason}")]
    InvalidRegistryConfig {
        /// Where it came from: a file path or an environment variable name.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Docker credential helper `helper` (e.g.
    /// `docker-credential-desktop`) gave no usable answer for `server`.
    #[error("credential helper {helper} for {server}: {reason}")]
    CredentialHelper {
        /// The helper program's name.
        helper: String,
        /// The server URL it was asked about (a registry host, or
        /// `https://index.docker.io/v1/` for Docker Hub).
        server: String,
        /// What went wrong.
        reason: crate::image::registry::credentials::CredentialHelperErrorKind,
    },
    /// `platform` is not of the form `os/arch[/variant]`.
    #[error("invalid platform {platform:?}: expected os/arch[/variant]")]
    InvalidPlatform {
        /// The text that was parsed.
        platform: String,
    },
    /// No image is stored under `reference`.
    #[error("image not found: {reference}")]
    ImageNotFound {
        /// The (normalized) reference looked up.
        reference: crate::image::Reference,
    },
    /// Content written to the image store did not have its expected size.
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    BlobSizeMismatch {
        /// The blob's digest.
        digest: crate::image::Digest,
        /// The size it was expected to have.
        expected: u64,
        /// The size written (or, for a write past the end, attempted).
        actual: u64,
    },
    /// The image store is damaged at `path`.
    #[error("corrupt image store at {path}: {reason}")]
    CorruptStore {
        /// The file or directory found damaged.
        path: PathBuf,
        /// What is wrong with it.
        reason: crate::image::store::CorruptionKind,
    },
    /// `value` is not a pull policy (`if-missing`, `always`, `never`).
    #[error("invalid pull policy {value:?}: expected if-missing, always or never")]
    InvalidPullPolicy {
        /// The text that was parsed.
        value: String,
    },
    /// A sandbox rootfs cannot be assembled from, or at, `path`.
    #[error("rootfs {path}: {reason}")]
    InvalidRootfs {
        /// The path concerned (the lower tree, a layout directory, ...).
        path: PathBuf,
        /// What is wrong with it.
        reason: crate::rootfs::RootfsErrorKind,
    },
    /// Mounting the sandbox's overlay at `merged` failed (overlayfs missing,
    /// an upper directory on a filesystem overlay cannot use, no privilege).
    #[error("mount overlay at {merged}: {source}")]
    OverlayMount {
        /// The mount point.
        merged: PathBuf,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// `name` is not a valid sandbox name.
    #[error("invalid sandbox name {name:?}: {reason}")]
    InvalidSandboxName {
        /// The text that was checked.
        name: String,
        /// What is wrong with it.
        reason: crate::sandbox::state::SandboxNameErrorKind,
    },
    /// A sandbox named `name` already exists (in any state).
    #[error("sandbox {name:?} already exists")]
    SandboxAlreadyExists {
        /// The sandbox's name.
        name: String,
    },
    /// There is no sandbox named `name`.
    #[error("sandbox {name:?} not found")]
    SandboxNotFound {
        /// The sandbox's name.
        name: String,
    },
    /// The sandbox `name` cannot be removed: its process `pid` is alive.
    #[error("sandbox {name:?} is still running (pid {pid})")]
    SandboxStillRunning {
        /// The sandbox's name.
        name: String,
        /// The live process (the creator's, while it is being created).
        pid: u32,
    },
    /// The state of sandbox `name` at `path` is damaged.
    #[error("corrupt state for sandbox {name:?} at {path}: {reason}")]
    CorruptSandboxState {
        /// The sandbox's name.
        name: String,
        /// The file found damaged.
        path: PathBuf,
        /// What is wrong with it.
        reason: crate::sandbox::state::StateCorruptionKind,
    },
    /// Bytes on the guest agent channel violate the agent protocol.
    #[error("agent protocol: {reason}")]
    AgentProtocol {
        /// What is wrong.
        reason: crate::agent::ProtocolErrorKind,
    },
    /// The peer on the guest agent channel speaks no protocol version we do.
    #[error("agent protocol version mismatch: we speak {local}, {peer_software:?} speaks {remote}")]
    AgentVersionMismatch {
        /// The versions this side speaks.
        local: crate::agent::VersionRange,
        /// The versions the peer offered.
        remote: crate::agent::VersionRange,
        /// The peer's software version, as it reported it.
        peer_software: String,
    },
    /// Reading or writing the guest agent channel failed.
    #[error("agent channel {op}: {source}")]
    AgentIo {
        /// What was being done, e.g. "read frame".
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Starting a namespace-isolated sandbox failed at `step`: in the parent
    /// (`clone`, writing the id maps) or in the child before its program was
    /// executed (a mount, `pivot_root`, `execve`, ...), as the child reported
    /// over its error pipe.
    #[error("namespace sandbox setup failed at {step}: {errno}")]
    NamespaceSetup {
        /// The step that failed, e.g. `"pivot_root"` or `"execve"`.
        step: &'static str,
        /// The kernel's error.
        errno: nix::errno::Errno,
    },
    /// A namespace sandbox spec cannot be used as given.
    #[error("invalid namespace sandbox spec: {field} {reason}")]
    InvalidNamespaceSpec {
        /// The field concerned, e.g. `"argv"`.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Signalling or waiting for the sandbox process `pid` failed.
    #[error("{op} sandbox process {pid}: {source}")]
    SandboxProcess {
        /// What was being done, e.g. "kill".
        op: &'static str,
        /// The process (host pid).
        pid: u32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A requested resource limit cannot be enforced: `controller` is not
    /// available on this host.
    #[error("cgroup controller {controller} unavailable: {reason}")]
    CgroupUnavailable {
        /// The controller the limit needs.
        controller: crate::sandbox::cgroup::Controller,
        /// Why it cannot be used.
        reason: crate::sandbox::cgroup::UnavailableReason,
    },
    /// The cgroup at `path` cannot be removed: processes are still in it.
    #[error("cgroup {path} is still populated (pids {pids:?})")]
    CgroupBusy {
        /// The cgroup directory.
        path: PathBuf,
        /// The processes found in it.
        pids: Vec<u32>,
    },
    /// A program microsandbox runs (the sandbox process `msb-sandbox`, the
    /// static guest agent) was found nowhere it looks.
    #[error("{program} not found (looked at: {}); {hint}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ProgramNotFound {
        /// The program, e.g. `"msb-sandbox"`.
        program: &'static str,
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
        /// What to do about it.
        hint: &'static str,
    },
    /// The guest agent binary at `path` cannot run inside a rootfs of its
    /// own: it is not a static executable.
    #[error("guest agent {path} is not a static executable: {reason}")]
    AgentNotStatic {
        /// The binary.
        path: PathBuf,
        /// What was found.
        reason: &'static str,
    },
    /// The sandbox did not become ready: its process failed, or the guest
    /// died or did not answer in time.
    #[error(
        "sandbox {name:?} failed to boot during {stage}: {reason}{}",
        tail_suffix(console_tail)
    )]
    BootFailed {
        /// The sandbox's name.
        name: String,
        /// Where it failed, e.g. `"rootfs"`, `"agent handshake"`, `"vm"`.
        stage: String,
        /// Why.
        reason: String,
        /// The last lines of the guest console (may be empty).
        console_tail: String,
    },
    /// The command's stdin is closed (the process closed it, or it ended);
    /// its output can still be read.
    #[error("the command's stdin is closed")]
    StdinClosed,
    /// The guest agent refused or failed a request.
    #[error("the sandbox's agent answered {kind:?}: {message}")]
    AgentRefused {
        /// What kind of failure.
        kind: crate::agent::ErrorKind,
        /// The guest's OS error number, 0 if none.
        errno: i32,
        /// The agent's detail (the path, the command).
        message: String,
    },
    /// A resource limit has an invalid value.
    #[error("invalid cgroup limit {limit}: {reason}")]
    InvalidCgroupLimit {
        /// The field, e.g. `"cpus"`.
        limit: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An address block (`10.0.0.0/8`) of a network policy does not parse.
    #[error("invalid address block {value:?}: {reason}")]
    InvalidCidr {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A published host port is already taken on the host.
    #[error("host port {addr}:{port}/{protocol} is already in use")]
    PortInUse {
        /// The bind address.
        addr: std::net::IpAddr,
        /// The host port.
        port: u16,
        /// `tcp` or `udp`.
        protocol: &'static str,
    },
    /// Setting up the sandbox's network failed (starting `pasta`, installing
    /// the policy's rules).
    #[error("sandbox network setup failed during {step}: {reason}")]
    NetworkSetup {
        /// What was being done, e.g. `"start pasta"`.
        step: &'static str,
        /// Why it failed (the tool's own message where there is one).
        reason: String,
    },
}

/// `"\nconsole:\n<tail>"`, or nothing for an empty tail.
fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nconsole (last lines):\n{}", tail.trim_end())
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
