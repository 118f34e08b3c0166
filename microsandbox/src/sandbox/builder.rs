//! [`SandboxBuilder`]: what a new sandbox is made of.

use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_core::sandbox::lifecycle::{self, CreateOptions};
use msb_core::sandbox::programs;
use msb_core::sandbox::spec::{DEFAULT_STOP_GRACE, RootfsSpec, SandboxSpec};
use msb_core::sandbox::state::SandboxName;

use super::{Isolation, Sandbox};
use crate::error::{MicrosandboxError, Result};
use crate::image::{Images, PullOptions};

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

    /// Sets one environment variable for every command run inside.
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

    /// The directory commands start in (default `/`).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
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
        let program = programs::sandbox_program(&self.home).map_err(fail)?;
        let agent = programs::agent_program(&self.home).map_err(fail)?;
        let rootfs = self.resolve_rootfs().await?;
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
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            hostname: name.as_str().to_owned(),
            stop_grace_ms: u64::try_from(self.stop_grace.as_millis()).unwrap_or(u64::MAX),
            boot_timeout_ms: u64::try_from(self.boot_timeout.as_millis()).unwrap_or(u64::MAX),
            creator: None,
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
            self.env,
            self.workdir,
        )
    }

    async fn resolve_rootfs(&self) -> Result<RootfsSpec> {
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
            return Ok(RootfsSpec::Directory { path });
        }
        let images = Images::open(&self.home)?;
        let pulled = images.pull(image, &PullOptions::default()).await?;
        Ok(RootfsSpec::Image {
            reference: pulled.reference.to_string(),
            digest: pulled.manifest_digest.to_string(),
            tree: pulled.rootfs,
        })
    }
}
