//! [`SandboxBuilder`]: what a new sandbox is made of.

use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_core::image::config::{RuntimeDefaults, image_config};
use msb_core::image::store::ImageStore;
use msb_core::sandbox::lifecycle::{self, CreateOptions};
use msb_core::sandbox::network::{NetworkPolicy, NetworkSpec, PortMapping, Protocol};
use msb_core::sandbox::programs;
use msb_core::sandbox::spec::{
    DEFAULT_STOP_GRACE, RlimitResource, RlimitSpec, RootfsSpec, SandboxSpec,
};
use msb_core::sandbox::state::SandboxName;

use super::{Isolation, Sandbox};
use crate::error::{MicrosandboxError, Result};
use crate::image::{Images, PullOptions};
use crate::volume::VolumeMount;

/// How long a sandbox may take to become ready, unless set.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures and creates a sandbox; made by [`Sandbox::builder`].
///
/// ```no_run
/// # async fn run() -> microsandbox::Result<()> {
/// use microsandbox::{Isolation, Sandbox};
///
/// let sb = Sandbox::builder("worker-1")
///     .image("alpine")
///     .cpus(1)
///     .memory(256)
///     .env("MODE", "batch")
///     .isolation(Isolation::Namespace)
///     .replace()
///     .create()
///     .await?;
/// let out = sb.exec("sh", ["-c", "echo hi"]).await?;
/// assert_eq!(out.stdout_str(), "hi\n");
/// sb.stop_and_wait().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until create() is called"]
pub struct SandboxBuilder {
    pub(super) home: PathBuf,
    pub(super) name: String,
    image: Option<String>,
    cpus: Option<u8>,
    memory_mib: Option<u32>,
    pids_max: Option<u64>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    user: Option<String>,
    hostname: Option<String>,
    entrypoint: Option<Vec<String>>,
    rlimits: Vec<RlimitSpec>,
    volumes: Vec<(String, VolumeMount)>,
    network: NetworkSpec,
    isolation: Option<Isolation>,
    replace: Option<Duration>,
    stop_grace: Duration,
    boot_timeout: Duration,
}

impl SandboxBuilder {
    pub(super) fn new(home: PathBuf, name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder {
            home,
            name: name.into(),
            image: None,
            cpus: None,
            memory_mib: None,
            pids_max: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            hostname: None,
            entrypoint: None,
            rlimits: Vec::new(),
            volumes: Vec::new(),
            network: NetworkSpec::default(),
            isolation: None,
            replace: None,
            stop_grace: DEFAULT_STOP_GRACE,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
        }
    }

    /// The image: a reference (`alpine`, `ghcr.io/org/app:1.2`,
    /// `name@sha256:…`), pulled if missing, or a local directory used as the
    /// root filesystem (a path starting with `/` or `.`).
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Virtual CPUs (microVM), or CPU bandwidth in CPUs (namespace
    /// isolation, enforced by the cgroup's CPU quota).
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Memory in MiB: the guest's RAM (microVM), or the cgroup's memory
    /// limit (namespace isolation).
    pub fn memory(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    /// The most processes and threads the sandbox may hold (namespace
    /// isolation: the cgroup's `pids` limit).
    pub fn pids(mut self, max: u64) -> Self {
        self.pids_max = Some(max);
        self
    }

    /// Sets one environment variable for every command run inside, on top
    /// of the image's `Env`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The directory commands start in (default: the image's
    /// `WorkingDir`, else `/`).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// The user commands run as unless they say otherwise: a name, `uid`,
    /// `uid:gid` or `name:group` (default: the image's `User`, else root).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The hostname inside (default: the sandbox's name). At most 64
    /// bytes of letters, digits, `-` and `.`.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Replaces the image's `Entrypoint` (and drops its `Cmd`, as Docker
    /// does); see [`Sandbox::image_command`].
    pub fn entrypoint<I, S>(mut self, entrypoint: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(entrypoint.into_iter().map(Into::into).collect());
        self
    }

    /// Sets a resource limit (`setrlimit(2)`) of every process inside;
    /// `u64::MAX` is unlimited. Limits start from the creating process's
    /// (namespace isolation) or the guest kernel's defaults (microVM);
    /// raising a hard limit above the creating process's needs
    /// `CAP_SYS_RESOURCE` under namespace isolation, else the sandbox fails
    /// to boot ([`MicrosandboxError::BootFailed`], `EPERM`).
    ///
    /// ```no_run
    /// # async fn run() -> microsandbox::Result<()> {
    /// use microsandbox::{RlimitResource, Sandbox};
    ///
    /// let sb = Sandbox::builder("worker-1")
    ///     .image("alpine")
    ///     .rlimit(RlimitResource::Nofile, 256, 512)
    ///     .create()
    ///     .await?;
    /// assert_eq!(sb.shell("ulimit -n").await?.stdout_str(), "256\n");
    /// # Ok(())
    /// # }
    /// ```
    pub fn rlimit(mut self, resource: RlimitResource, soft: u64, hard: u64) -> Self {
        self.rlimits.retain(|r| r.resource != resource);
        self.rlimits.push(RlimitSpec {
            resource,
            soft,
            hard,
        });
        self
    }

    /// Mounts a volume at `guest` (an absolute path inside), configured by
    /// `mount`: a host path ([`VolumeMount::bind`]), a named volume
    /// ([`VolumeMount::named`]) or a tmpfs ([`VolumeMount::tmpfs`]),
    /// optionally [`read_only`](VolumeMount::read_only). Checked before
    /// anything starts: see [`MicrosandboxError::InvalidVolume`],
    /// [`MicrosandboxError::VolumeHostPathMissing`] and
    /// [`MicrosandboxError::VolumeNotFound`].
    ///
    /// ```no_run
    /// # async fn run() -> microsandbox::Result<()> {
    /// use microsandbox::Sandbox;
    ///
    /// let sb = Sandbox::builder("worker-1")
    ///     .image("alpine")
    ///     .volume("/src", |m| m.bind("/home/me/project").read_only())
    ///     .volume("/data", |m| m.named("data"))
    ///     .volume("/scratch", |m| m.tmpfs().size_mib(64))
    ///     .create()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn volume(
        mut self,
        guest: impl Into<String>,
        mount: impl FnOnce(VolumeMount) -> VolumeMount,
    ) -> Self {
        self.volumes
            .push((guest.into(), mount(VolumeMount::default())));
        self
    }

    /// Cuts the sandbox off the network: it keeps only its own `lo`.
    /// Networking is on by default (namespace isolation: pasta; microVM:
    /// libkrun's TSI).
    pub fn disable_network(mut self) -> Self {
        self.network.enabled = false;
        self
    }

    /// Publishes TCP port `guest` inside as `host` on the host's
    /// 127.0.0.1. A host port already taken fails [`create`](Self::create)
    /// with [`MicrosandboxError::PortInUse`] before anything starts.
    ///
    /// ```no_run
    /// # async fn run() -> microsandbox::Result<()> {
    /// use microsandbox::{DestinationGroup, NetworkPolicy, Sandbox};
    ///
    /// let sb = Sandbox::builder("web")
    ///     .image("alpine")
    ///     .port(8080, 80)
    ///     .network_policy(NetworkPolicy::allow_all().deny(DestinationGroup::Private))
    ///     .create()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(self, host: u16, guest: u16) -> Self {
        self.publish(PortMapping::local(Protocol::Tcp, host, guest))
    }

    /// Publishes UDP port `guest` inside as `host` on the host's 127.0.0.1
    /// (namespace isolation only: libkrun's port map is TCP only).
    pub fn port_udp(self, host: u16, guest: u16) -> Self {
        self.publish(PortMapping::local(Protocol::Udp, host, guest))
    }

    /// Publishes TCP port `guest` inside as `host` on the host address
    /// `addr` (e.g. `0.0.0.0` for every interface).
    pub fn port_on(self, addr: std::net::IpAddr, host: u16, guest: u16) -> Self {
        self.publish(PortMapping {
            protocol: Protocol::Tcp,
            host_addr: addr,
            host_port: host,
            guest_port: guest,
        })
    }

    fn publish(mut self, mapping: PortMapping) -> Self {
        self.network.ports.push(mapping);
        self
    }

    /// Which destinations code inside may reach (default:
    /// [`NetworkPolicy::allow_all`], which still refuses the cloud metadata
    /// address). Enforced from outside the sandbox (namespace isolation;
    /// not yet for microVMs).
    pub fn network_policy(mut self, policy: NetworkPolicy) -> Self {
        self.network.policy = policy;
        self
    }

    /// The isolation backend. Without it, `MSB_ISOLATION` decides, else the
    /// microVM. Never changed silently: a microVM on a host that cannot run
    /// one fails with [`MicrosandboxError::BootFailed`] saying why.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = Some(isolation);
        self
    }

    /// Takes over the name if a sandbox already has it: its processes get
    /// SIGTERM, then SIGKILL after 10 s; its state is removed.
    pub fn replace(self) -> Self {
        self.replace_with_grace(DEFAULT_STOP_GRACE)
    }

    /// Like [`replace`](Self::replace) with this grace period between
    /// SIGTERM and SIGKILL; `Duration::ZERO` sends SIGKILL at once.
    pub fn replace_with_grace(mut self, grace: Duration) -> Self {
        self.replace = Some(grace);
        self
    }

    /// Between SIGTERM and SIGKILL for the processes inside when this
    /// sandbox is stopped (default 10 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// How long the sandbox may take to become ready (default 30 s).
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// Uses state home `home` instead of `$MSB_HOME` (`~/.microsandbox`).
    pub fn home(mut self, home: impl AsRef<Path>) -> Self {
        self.home = home.as_ref().to_path_buf();
        self
    }

    /// Creates the sandbox and returns once its agent is ready. Dropping
    /// the last handle stops it; so does the exit of this program.
    pub async fn create(self) -> Result<Sandbox> {
        self.launch(false).await
    }

    /// Creates the sandbox and leaves it running when the handle goes and
    /// when this program exits; stop it with [`Sandbox::get`] and
    /// [`Sandbox::stop`], or `msb stop`.
    pub async fn create_detached(self) -> Result<Sandbox> {
        self.launch(true).await
    }

    async fn launch(self, detached: bool) -> Result<Sandbox> {
        let name = SandboxName::new(self.name.clone())
            .map_err(|e| MicrosandboxError::from_sandbox(&self.name, e))?;
        let isolation = match self.isolation {
            Some(i) => i,
            None => Isolation::from_env()?.unwrap_or_default(),
        };
        let fail = |e| MicrosandboxError::from_sandbox(name.as_str(), e);
        let hostname = self
            .hostname
            .clone()
            .unwrap_or_else(|| name.as_str().to_owned());
        check_hostname(&hostname)?;
        check_rlimits(&self.rlimits)?;
        check_network(&self.network)?;
        let volumes =
            crate::volume::resolve_all(&self.home, &self.volumes, isolation == Isolation::Microvm)?;
        let program = programs::sandbox_program(&self.home).map_err(fail)?;
        let agent = programs::agent_program(&self.home).map_err(fail)?;
        let (rootfs, image) = self.resolve_rootfs().await?;
        let env = merge_env(image.env, &self.env);
        let workdir = self.workdir.clone().or(image.workdir);
        let user = self.user.clone().or(image.user);
        let (entrypoint, cmd) = match &self.entrypoint {
            Some(entrypoint) => (entrypoint.clone(), Vec::new()),
            None => (image.entrypoint, image.cmd),
        };
        let doomed_vm = match isolation {
            Isolation::Microvm => {
                let verdict = crate::host::probe().verdict;
                (!verdict.can_run_microvm()).then_some(verdict)
            }
            Isolation::Namespace => None,
        };
        let spec = SandboxSpec {
            name: name.clone(),
            instance_id: String::new(),
            backend: isolation.backend(),
            rootfs,
            agent,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            pids_max: self.pids_max,
            env: env.clone(),
            workdir: workdir.clone(),
            hostname,
            stop_grace_ms: u64::try_from(self.stop_grace.as_millis()).unwrap_or(u64::MAX),
            boot_timeout_ms: u64::try_from(self.boot_timeout.as_millis()).unwrap_or(u64::MAX),
            creator: None,
            volumes,
            user: user.clone(),
            rlimits: self.rlimits.clone(),
            entrypoint: entrypoint.clone(),
            cmd: cmd.clone(),
            network: self.network.clone(),
        };
        let options = CreateOptions {
            replace: self.replace,
            detached,
            program,
            doomed_vm,
        };
        let launched = lifecycle::create(&self.home, spec, &options)
            .await
            .map_err(fail)?;
        tracing::info!(sandbox = %name, ?isolation, boot = ?launched.ready.boot, "sandbox ready");
        Sandbox::from_launched(
            self.home,
            isolation,
            launched,
            detached,
            super::Defaults {
                env,
                workdir,
                user,
                command: entrypoint.into_iter().chain(cmd).collect(),
            },
        )
    }

    /// The rootfs, and the image config's defaults (none for a directory).
    async fn resolve_rootfs(&self) -> Result<(RootfsSpec, RuntimeDefaults)> {
        let Some(image) = &self.image else {
            return Err(MicrosandboxError::InvalidConfig {
                what: "sandbox",
                value: self.name.clone(),
                source: Box::new(msb_core::Error::InvalidRootfs {
                    path: PathBuf::new(),
                    reason: msb_core::rootfs::RootfsErrorKind::Missing,
                }),
            });
        };
        if image.starts_with('/') || image.starts_with('.') {
            let path = std::path::absolute(image).map_err(|source| MicrosandboxError::Io {
                op: "resolve",
                path: image.into(),
                source,
            })?;
            return Ok((RootfsSpec::Directory { path }, RuntimeDefaults::default()));
        }
        let images = Images::open(&self.home)?;
        let pulled = images.pull(image, &PullOptions::default()).await?;
        let image_err = |source| MicrosandboxError::Image {
            reference: pulled.reference.to_string(),
            source: Box::new(source),
        };
        let store = ImageStore::open(&self.home).map_err(image_err)?;
        let config = image_config(&store, &pulled.manifest_digest).map_err(image_err)?;
        Ok((
            RootfsSpec::Image {
                reference: pulled.reference.to_string(),
                digest: pulled.manifest_digest.to_string(),
                tree: pulled.rootfs,
            },
            RuntimeDefaults::of(&config),
        ))
    }
}

/// The image's environment with the builder's on top: a builder variable
/// replaces the image's of the same name in place.
fn merge_env(image: Vec<(String, String)>, ours: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = image;
    for (k, v) in ours {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// A hostname the kernel takes: 1–64 bytes of letters, digits, `-`, `.`.
fn check_hostname(hostname: &str) -> Result<()> {
    let reason = if hostname.is_empty() {
        Some("is empty")
    } else if hostname.len() > 64 {
        Some("is longer than 64 bytes")
    } else if !hostname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        Some("has characters other than letters, digits, `-` and `.`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(MicrosandboxError::InvalidConfig {
            what: "hostname",
            value: hostname.to_owned(),
            source: Box::new(msb_core::Error::InvalidNamespaceSpec {
                field: "hostname",
                reason,
            }),
        }),
    }
}

/// Published ports: none without networking, no port 0, each host port
/// free now (bound and released at once).
fn check_network(network: &NetworkSpec) -> Result<()> {
    if !network.enabled && !network.ports.is_empty() {
        return Err(MicrosandboxError::InvalidNetwork {
            what: "ports".into(),
            reason: "ports are published but networking is disabled".into(),
        });
    }
    network.check_ports().map_err(|e| match e {
        e @ msb_core::Error::PortInUse { .. } => MicrosandboxError::from_sandbox("", e),
        other => MicrosandboxError::InvalidNetwork {
            what: "ports".into(),
            reason: other.to_string(),
        },
    })
}

/// Soft limits never above hard ones.
fn check_rlimits(rlimits: &[RlimitSpec]) -> Result<()> {
    match rlimits.iter().find(|r| r.soft > r.hard) {
        None => Ok(()),
        Some(r) => Err(MicrosandboxError::InvalidConfig {
            what: "rlimit",
            value: format!("{}={}:{}", r.resource.name(), r.soft, r.hard),
            source: Box::new(msb_core::Error::InvalidNamespaceSpec {
                field: "rlimits",
                reason: "has a soft limit above its hard limit",
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_env_goes_on_top_of_the_image_env() {
        let image = vec![("PATH".into(), "/bin".into()), ("A".into(), "1".into())];
        let ours = [("A".to_owned(), "2".to_owned()), ("B".into(), "3".into())];
        assert_eq!(
            merge_env(image, &ours),
            vec![
                ("PATH".to_owned(), "/bin".to_owned()),
                ("A".into(), "2".into()),
                ("B".into(), "3".into())
            ]
        );
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(check_hostname("box-1.local").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("a b").is_err());
        assert!(check_hostname(&"x".repeat(65)).is_err());
    }
}
