//! Sandboxes: create one from an image, run commands in it, stop it.
//!
//! Each sandbox is one child process of the program that created it (the
//! sandbox process, `msb-sandbox`), holding a microVM (the default) or a
//! set of Linux namespaces, with the guest agent as its first process.
//! Its state lives under the state home (`$MSB_HOME`, `~/.microsandbox` by
//! default), so other programs (and `msb`) can find, stop and remove it.

mod builder;
mod exec;
mod fs;
mod logs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use msb_core::sandbox::lifecycle::{self, Launched};
use msb_core::sandbox::spec::SandboxSpec;
use msb_core::sandbox::state::{Backend, SandboxName, SandboxRecord, StateStore};

pub use builder::{DEFAULT_BOOT_TIMEOUT, SandboxBuilder};
pub use exec::{ExecEvent, ExecHandle, ExecOptions, ExecOutput, ExecStdin, ExitStatus, Stdin};
pub use fs::{DirEntry, FileReader, FileType, FsErrorKind, Metadata, SandboxFs};
pub use logs::{LogFollower, LogLine, LogOptions, LogSource};
/// Why a command could not start (see [`MicrosandboxError::ExecFailed`]).
pub use msb_core::agent::ErrorKind as ExecErrorKind;
pub use msb_core::sandbox::spec::RlimitResource;
pub use msb_core::sandbox::state::SandboxStatus;

use crate::error::{MicrosandboxError, Result};

/// Chooses the isolation backend when the builder does not.
pub const ISOLATION_ENV: &str = "MSB_ISOLATION";

/// How a sandbox is isolated from the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isolation {
    /// A libkrun microVM: its own kernel behind hardware virtualization.
    #[default]
    Microvm,
    /// Linux user, mount, PID, UTS, IPC and network namespaces plus cgroup
    /// limits, sharing the host's kernel: clearly weaker, for hosts without
    /// usable KVM. Only ever used when asked for.
    Namespace,
}

impl Isolation {
    /// The backend `MSB_ISOLATION` names (`microvm` or `namespace`), if set.
    pub fn from_env() -> Result<Option<Isolation>> {
        match std::env::var(ISOLATION_ENV) {
            Ok(value) => value.parse().map(Some),
            Err(_) => Ok(None),
        }
    }

    fn backend(self) -> Backend {
        match self {
            Isolation::Microvm => Backend::Microvm,
            Isolation::Namespace => Backend::Namespace,
        }
    }

    fn of(backend: Backend) -> Isolation {
        match backend {
            Backend::Namespace => Isolation::Namespace,
            _ => Isolation::Microvm,
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = MicrosandboxError;

    /// `microvm` (or `vm`, `krun`) or `namespace` (or `ns`).
    fn from_str(s: &str) -> Result<Isolation> {
        match s.trim().to_ascii_lowercase().as_str() {
            "microvm" | "vm" | "krun" => Ok(Isolation::Microvm),
            "namespace" | "namespaces" | "ns" => Ok(Isolation::Namespace),
            _ => Err(MicrosandboxError::InvalidIsolation {
                value: s.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Microvm => "microvm",
            Isolation::Namespace => "namespace",
        })
    }
}

/// What `list`, `get` and `info` tell about a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    /// Its name.
    pub name: String,
    /// Its live status (never `Running` for a dead process).
    pub status: SandboxStatus,
    /// The isolation backend.
    pub isolation: Isolation,
    /// The image reference or rootfs directory.
    pub image: String,
    /// The sandbox process, while one is recorded.
    pub pid: Option<u32>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When its record last changed.
    pub updated_at: SystemTime,
}

impl SandboxInfo {
    fn of(record: &SandboxRecord) -> SandboxInfo {
        let image = serde_json::from_value::<SandboxSpec>(record.config.clone())
            .map(|s| s.rootfs.display_name())
            .unwrap_or_default();
        SandboxInfo {
            name: record.name.to_string(),
            status: record.live_status(),
            isolation: Isolation::of(record.backend),
            image,
            pid: record.pid,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// A handle on a sandbox.
///
/// Cloning it is cheap. A handle from [`SandboxBuilder::create`] *owns*
/// the sandbox: when its last clone is dropped, the sandbox is stopped
/// (unless [`detach`](Self::detach)ed). Handles from [`Sandbox::get`] do
/// not. A handle names one incarnation of a name: once that sandbox is
/// removed or replaced, every call on it fails with
/// [`MicrosandboxError::SandboxNotFound`] rather than touch the newcomer.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: SandboxName,
    instance: String,
    home: PathBuf,
    store: StateStore,
    isolation: Isolation,
    owning: bool,
    detached: AtomicBool,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    /// The default user of every exec.
    user: Option<String>,
    /// The image's entrypoint and command.
    command: Vec<String>,
    /// The sandbox process when we spawned it (tokio reaps it once it
    /// exits, whether or not we wait).
    _child: Mutex<Option<tokio::process::Child>>,
}

impl Sandbox {
    /// Starts configuring a sandbox named `name` in the default state home.
    /// Names are 1–63 characters: letters, digits, `-`, `_`, `.`; no `/`,
    /// no `..`.
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder::new(msb_core::paths::state_home(), name)
    }

    /// A (non-owning) handle on the existing sandbox `name`.
    pub fn get(name: &str) -> Result<Sandbox> {
        Self::get_in(msb_core::paths::state_home(), name)
    }

    /// [`get`](Self::get) in state home `home`.
    pub fn get_in(home: impl AsRef<Path>, name: &str) -> Result<Sandbox> {
        let home = home.as_ref();
        let (store, name) = open(home, name)?;
        let fail = |e| MicrosandboxError::from_sandbox(name.as_str(), e);
        let record =
            store
                .get(&name)
                .map_err(fail)?
                .ok_or_else(|| MicrosandboxError::SandboxNotFound {
                    name: name.to_string(),
                })?;
        let spec = serde_json::from_value::<SandboxSpec>(record.config.clone()).ok();
        Ok(Sandbox {
            inner: Arc::new(Inner {
                name,
                instance: record.instance_id.clone(),
                home: home.to_path_buf(),
                store,
                isolation: Isolation::of(record.backend),
                owning: false,
                detached: AtomicBool::new(true),
                env: spec.as_ref().map(|s| s.env.clone()).unwrap_or_default(),
                workdir: spec.as_ref().and_then(|s| s.workdir.clone()),
                user: spec.as_ref().and_then(|s| s.user.clone()),
                command: spec
                    .map(|s| s.entrypoint.into_iter().chain(s.cmd).collect())
                    .unwrap_or_default(),
                _child: Mutex::new(None),
            }),
        })
    }

    /// Every sandbox in the default state home, by name.
    pub fn list() -> Result<Vec<SandboxInfo>> {
        Self::list_in(msb_core::paths::state_home())
    }

    /// [`list`](Self::list) in state home `home`.
    pub fn list_in(home: impl AsRef<Path>) -> Result<Vec<SandboxInfo>> {
        let home = home.as_ref();
        let store = StateStore::open(home).map_err(|e| MicrosandboxError::from_sandbox("", e))?;
        let records = store
            .list()
            .map_err(|e| MicrosandboxError::from_sandbox("", e))?;
        Ok(records.iter().map(SandboxInfo::of).collect())
    }

    /// Removes the stopped sandbox `name` from the default state home: its
    /// rootfs, logs and record. [`MicrosandboxError::SandboxStillRunning`]
    /// while it runs. (On a handle: [`remove_self`](Self::remove_self).)
    pub fn remove(name: &str) -> Result<()> {
        Self::remove_in(msb_core::paths::state_home(), name)
    }

    /// [`remove`](Self::remove) in state home `home`.
    pub fn remove_in(home: impl AsRef<Path>, name: &str) -> Result<()> {
        let (store, name) = open(home.as_ref(), name)?;
        lifecycle::remove(&store, &name, None)
            .map_err(|e| MicrosandboxError::from_sandbox(name.as_str(), e))
    }

    /// Starts the stopped (or crashed) sandbox `name` again, detached, with
    /// its root filesystem as it was left; returns a (non-owning) handle once
    /// it is ready. [`MicrosandboxError::SandboxStillRunning`] if it runs.
    pub async fn start(name: &str) -> Result<Sandbox> {
        Self::start_in(msb_core::paths::state_home(), name).await
    }

    /// [`start`](Self::start) in state home `home`.
    pub async fn start_in(home: impl AsRef<Path>, name: &str) -> Result<Sandbox> {
        let home = home.as_ref();
        let (store, sandbox_name) = open(home, name)?;
        let fail = |e| MicrosandboxError::from_sandbox(name, e);
        let record = store.get(&sandbox_name).map_err(fail)?.ok_or_else(|| {
            MicrosandboxError::SandboxNotFound {
                name: name.to_owned(),
            }
        })?;
        let isolation = Isolation::of(record.backend);
        let doomed_vm = match isolation {
            Isolation::Microvm => {
                let verdict = crate::host::probe().verdict;
                (!verdict.can_run_microvm()).then_some(verdict)
            }
            Isolation::Namespace => None,
        };
        let options = lifecycle::CreateOptions {
            replace: None,
            detached: true,
            program: msb_core::sandbox::programs::sandbox_program(home).map_err(fail)?,
            doomed_vm,
        };
        let launched = lifecycle::start(home, &sandbox_name, &options)
            .await
            .map_err(fail)?;
        drop(launched);
        Self::get_in(home, name)
    }

    pub(crate) fn from_launched(
        home: PathBuf,
        isolation: Isolation,
        launched: Launched,
        detached: bool,
        defaults: Defaults,
    ) -> Result<Sandbox> {
        let store = StateStore::open(&home)
            .map_err(|e| MicrosandboxError::from_sandbox(launched.record.name.as_str(), e))?;
        Ok(Sandbox {
            inner: Arc::new(Inner {
                name: launched.record.name.clone(),
                instance: launched.record.instance_id.clone(),
                home,
                store,
                isolation,
                owning: true,
                detached: AtomicBool::new(detached),
                env: defaults.env,
                workdir: defaults.workdir,
                user: defaults.user,
                command: defaults.command,
                _child: Mutex::new(Some(launched.child)),
            }),
        })
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        self.inner.name.as_str()
    }

    /// The image's command: its `Entrypoint` followed by its `Cmd` (or the
    /// builder's [`entrypoint`](SandboxBuilder::entrypoint)); empty when
    /// neither is set (e.g. a rootfs directory).
    ///
    /// ```no_run
    /// # async fn run() -> microsandbox::Result<()> {
    /// use microsandbox::Sandbox;
    ///
    /// let sb = Sandbox::builder("web").image("nginx").create().await?;
    /// if let Some((cmd, args)) = sb.image_command().split_first() {
    ///     let out = sb.exec(cmd, args).await?;
    ///     println!("{}", out.stdout_str());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn image_command(&self) -> Vec<String> {
        self.inner.command.clone()
    }

    /// The isolation backend it runs under.
    pub fn isolation(&self) -> Isolation {
        self.inner.isolation
    }

    /// The sandbox's state directory (logs, agent socket, rootfs).
    pub fn state_dir(&self) -> PathBuf {
        self.inner.store.sandbox_dir(&self.inner.name)
    }

    /// The state home it lives in.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// Its current record.
    pub fn info(&self) -> Result<SandboxInfo> {
        lifecycle::record_of(&self.inner.store, &self.inner.name, &self.inner.instance)
            .map(|r| SandboxInfo::of(&r))
            .map_err(|e| self.error(e))
    }

    /// Its live status: `Running`, `Stopped`, or `Crashed` when its process
    /// died without an orderly stop.
    pub fn status(&self) -> Result<SandboxStatus> {
        self.info().map(|i| i.status)
    }

    /// The sandbox process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        lifecycle::record_of(&self.inner.store, &self.inner.name, &self.inner.instance)
            .ok()
            .and_then(|r| r.live_process())
            .map(|p| p.pid)
    }

    /// Stops the sandbox and waits for it, killing it if it has not ended
    /// after `timeout`; returns the final status.
    pub async fn stop_with_timeout(&self, timeout: std::time::Duration) -> Result<SandboxStatus> {
        lifecycle::stop_with_timeout(
            &self.inner.store,
            &self.inner.name,
            &self.inner.instance,
            timeout,
        )
        .await
        .map_err(|e| self.error(e))
    }

    /// Asks the sandbox to stop and returns at once: its processes get
    /// SIGTERM, then SIGKILL after its stop grace.
    pub async fn stop(&self) -> Result<()> {
        lifecycle::stop(&self.inner.store, &self.inner.name, &self.inner.instance)
            .map_err(|e| self.error(e))
    }

    /// Stops the sandbox and waits until its process has exited; returns
    /// the final status.
    pub async fn stop_and_wait(&self) -> Result<SandboxStatus> {
        lifecycle::stop_and_wait(&self.inner.store, &self.inner.name, &self.inner.instance)
            .await
            .map_err(|e| self.error(e))
    }

    /// Kills the sandbox at once (no grace) and waits for it to be gone.
    pub async fn kill(&self) -> Result<SandboxStatus> {
        lifecycle::kill(&self.inner.store, &self.inner.name, &self.inner.instance)
            .await
            .map_err(|e| self.error(e))
    }

    /// Waits until the sandbox's process exits, however that happens, and
    /// returns the status then.
    pub async fn wait(&self) -> Result<SandboxStatus> {
        lifecycle::wait(&self.inner.store, &self.inner.name, &self.inner.instance)
            .await
            .map_err(|e| self.error(e))
    }

    /// Removes this (stopped) sandbox: rootfs, logs and record.
    pub fn remove_self(&self) -> Result<()> {
        lifecycle::remove(
            &self.inner.store,
            &self.inner.name,
            Some(&self.inner.instance),
        )
        .map_err(|e| self.error(e))
    }

    /// Leaves the sandbox running when the handles go and when this
    /// program exits.
    pub fn detach(&self) -> Result<()> {
        lifecycle::detach(&self.inner.store, &self.inner.name, &self.inner.instance)
            .map_err(|e| self.error(e))?;
        self.inner.detached.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn error(&self, e: msb_core::Error) -> MicrosandboxError {
        MicrosandboxError::from_sandbox(self.inner.name.as_str(), e)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.owning && !self.detached.load(Ordering::SeqCst) {
            // Only ours: a replaced sandbox's name belongs to another
            // incarnation, and `stop` checks that.
            match lifecycle::stop(&self.store, &self.name, &self.instance) {
                Ok(()) | Err(msb_core::Error::SandboxNotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %self.name, error = %e, "cannot stop sandbox on drop")
                }
            }
        }
    }
}

/// What every exec of a sandbox starts from.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) command: Vec<String>,
}

fn open(home: &Path, name: &str) -> Result<(StateStore, SandboxName)> {
    let fail = |e| MicrosandboxError::from_sandbox(name, e);
    let name = SandboxName::new(name).map_err(fail)?;
    let store = StateStore::open(home).map_err(fail)?;
    Ok((store, name))
}
