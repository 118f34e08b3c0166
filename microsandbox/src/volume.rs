//! Volumes: host directories, named volumes and tmpfs mounted into a
//! sandbox, and the named volumes kept in the state home.
//!
//! A named volume is a directory, `<state home>/volumes/<name>`, that
//! outlives the sandboxes using it:
//!
//! ```no_run
//! # async fn run() -> microsandbox::Result<()> {
//! use microsandbox::{Sandbox, Volume};
//!
//! Volume::create("data")?;
//! let sb = Sandbox::builder("worker-1")
//!     .image("alpine")
//!     .volume("/data", |m| m.named("data"))
//!     .volume("/src", |m| m.bind("./src").read_only())
//!     .volume("/scratch", |m| m.tmpfs().size_mib(64))
//!     .create()
//!     .await?;
//! sb.exec("sh", ["-c", "date > /data/last-run"]).await?;
//! sb.stop_and_wait().await?;
//! # Ok(())
//! # }
//! ```

use std::path::{Component, Path, PathBuf};

use msb_core::sandbox::spec::{SandboxSpec, VolumeSource, VolumeSpec};
use msb_core::sandbox::state::{SandboxName, SandboxStatus, StateStore};

use crate::error::{MicrosandboxError, Result};

/// The directory of the state home holding named volumes.
pub const VOLUMES_DIR: &str = "volumes";

/// Paths inside no volume may be mounted at or below.
const RESERVED: &[&str] = &["/proc", "/.msb"];

/// Why a volume's mount point (or its definition) is unusable; see
/// [`MicrosandboxError::InvalidVolume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeErrorKind {
    /// The path inside is not absolute.
    #[error("the path inside must be absolute")]
    NotAbsolute,
    /// The path inside has a `..` component.
    #[error("the path inside must not contain `..`")]
    ParentComponent,
    /// The path inside is `/`.
    #[error("the root directory cannot be a mount point")]
    Root,
    /// The path inside has a `,`, `:` or NUL character.
    #[error("the path inside must not contain `,`, `:` or NUL")]
    InvalidCharacter,
    /// The closure chose no source (`bind`, `named` or `tmpfs`).
    #[error("no source chosen (bind, named or tmpfs)")]
    NoSource,
    /// Two volumes have the same path inside.
    #[error("another volume is mounted at the same path")]
    Duplicate,
    /// The path inside is reserved (`/proc` and the agent's `/.msb`, and
    /// what is below them).
    #[error("the path inside is reserved for the sandbox itself")]
    Reserved,
    /// A host file (not a directory) bound into a microVM, which can only
    /// share directories.
    #[error("a microVM can only share host directories")]
    NotADirectory,
}

/// What one volume of a sandbox is; made in the closure given to
/// [`SandboxBuilder::volume`](crate::SandboxBuilder::volume).
///
/// ```
/// use microsandbox::volume::VolumeMount;
///
/// let m = VolumeMount::default().tmpfs().size_mib(64).read_only();
/// assert!(m.is_read_only());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct VolumeMount {
    source: Option<MountSource>,
    size_mib: Option<u32>,
    read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MountSource {
    Bind(PathBuf),
    Named(String),
    Tmpfs,
}

impl VolumeMount {
    /// Mounts the host directory (or file) `path`; it must exist. Relative
    /// paths are taken from the current directory. Under microVM isolation
    /// only directories can be shared.
    pub fn bind(mut self, path: impl AsRef<Path>) -> Self {
        self.source = Some(MountSource::Bind(path.as_ref().to_path_buf()));
        self
    }

    /// Mounts the named volume `name` (made with [`Volume::create`]).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.source = Some(MountSource::Named(name.into()));
        self
    }

    /// Mounts a new, empty tmpfs (gone with the sandbox).
    pub fn tmpfs(mut self) -> Self {
        self.source = Some(MountSource::Tmpfs);
        self
    }

    /// The tmpfs's size limit in MiB (writes beyond fail with `ENOSPC`);
    /// only for [`tmpfs`](Self::tmpfs).
    pub fn size_mib(mut self, mib: u32) -> Self {
        self.size_mib = Some(mib);
        self
    }

    /// Mounts it read-only (writes fail with `EROFS`).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Whether it is mounted read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The engine's spec for this volume at `guest`, checked: a valid path
    /// inside, an existing host path, an existing named volume.
    pub(crate) fn resolve(&self, home: &Path, guest: &str) -> Result<VolumeSpec> {
        let guest = normalize_guest(guest)?;
        let invalid = |reason| MicrosandboxError::InvalidVolume {
            guest: guest.clone(),
            reason,
        };
        let source = match self
            .source
            .as_ref()
            .ok_or(invalid(VolumeErrorKind::NoSource))?
        {
            MountSource::Bind(path) => {
                let path = std::fs::canonicalize(path).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        MicrosandboxError::VolumeHostPathMissing {
                            guest: guest.clone(),
                            path: path.clone(),
                        }
                    } else {
                        MicrosandboxError::Io {
                            op: "resolve",
                            path: path.clone(),
                            source,
                        }
                    }
                })?;
                VolumeSource::Bind { path }
            }
            MountSource::Named(name) => {
                let volume = Volume::get_in(home, name)?;
                // Absolute, whatever the sandbox process's directory.
                let path = std::fs::canonicalize(&volume.path).map_err(|source| {
                    MicrosandboxError::Io {
                        op: "resolve",
                        path: volume.path.clone(),
                        source,
                    }
                })?;
                VolumeSource::Named {
                    name: volume.name,
                    path,
                }
            }
            MountSource::Tmpfs => VolumeSource::Tmpfs {
                size_mib: self.size_mib,
            },
        };
        Ok(VolumeSpec {
            guest,
            source,
            read_only: self.read_only,
        })
    }
}

/// `guest` as an absolute path without `.`, `..`, repeated or trailing `/`.
fn normalize_guest(guest: &str) -> Result<String> {
    let invalid = |reason| MicrosandboxError::InvalidVolume {
        guest: guest.to_owned(),
        reason,
    };
    if guest.contains([',', ':', '\0']) {
        return Err(invalid(VolumeErrorKind::InvalidCharacter));
    }
    let path = Path::new(guest);
    if !path.is_absolute() {
        return Err(invalid(VolumeErrorKind::NotAbsolute));
    }
    let mut out = String::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => {
                out.push('/');
                out.push_str(&name.to_string_lossy());
            }
            Component::ParentDir => return Err(invalid(VolumeErrorKind::ParentComponent)),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if out.is_empty() {
        return Err(invalid(VolumeErrorKind::Root));
    }
    if RESERVED
        .iter()
        .any(|r| out == *r || out.starts_with(&format!("{r}/")))
    {
        return Err(invalid(VolumeErrorKind::Reserved));
    }
    Ok(out)
}

/// Checks and orders a sandbox's volumes: parents before children, no two
/// at the same path; with `directories_only` (microVMs), no host files.
pub(crate) fn resolve_all(
    home: &Path,
    volumes: &[(String, VolumeMount)],
    directories_only: bool,
) -> Result<Vec<VolumeSpec>> {
    let mut specs = volumes
        .iter()
        .map(|(guest, m)| m.resolve(home, guest))
        .collect::<Result<Vec<_>>>()?;
    if directories_only
        && let Some(v) = specs
            .iter()
            .find(|v| v.source.host_path().is_some_and(|p| !p.is_dir()))
    {
        return Err(MicrosandboxError::InvalidVolume {
            guest: v.guest.clone(),
            reason: VolumeErrorKind::NotADirectory,
        });
    }
    specs.sort_by_key(|v| v.guest.matches('/').count());
    for (i, v) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.guest == v.guest) {
            return Err(MicrosandboxError::InvalidVolume {
                guest: v.guest.clone(),
                reason: VolumeErrorKind::Duplicate,
            });
        }
    }
    Ok(specs)
}

/// A named volume: a directory in the state home that sandboxes mount with
/// [`VolumeMount::named`], kept until removed.
///
/// ```no_run
/// # fn run() -> microsandbox::Result<()> {
/// use microsandbox::Volume;
///
/// let v = Volume::create("cache")?;
/// println!("{} lives in {}", v.name(), v.path().display());
/// assert!(Volume::list()?.iter().any(|v| v.name() == "cache"));
/// Volume::remove("cache")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    name: String,
    path: PathBuf,
}

impl Volume {
    /// Creates the named volume `name` in the default state home. Names
    /// follow the rules of sandbox names (1–63 of letters, digits, `-`,
    /// `_`, `.`). [`MicrosandboxError::VolumeAlreadyExists`] if it exists.
    pub fn create(name: &str) -> Result<Volume> {
        Self::create_in(msb_core::paths::state_home(), name)
    }

    /// [`create`](Self::create) in state home `home`.
    pub fn create_in(home: impl AsRef<Path>, name: &str) -> Result<Volume> {
        let volume = Self::at(home.as_ref(), name)?;
        let parent = home.as_ref().join(VOLUMES_DIR);
        std::fs::create_dir_all(&parent).map_err(|source| MicrosandboxError::Io {
            op: "create",
            path: parent,
            source,
        })?;
        match std::fs::create_dir(&volume.path) {
            Ok(()) => Ok(volume),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(MicrosandboxError::VolumeAlreadyExists { name: volume.name })
            }
            Err(source) => Err(MicrosandboxError::Io {
                op: "create",
                path: volume.path,
                source,
            }),
        }
    }

    /// The existing named volume `name` in the default state home;
    /// [`MicrosandboxError::VolumeNotFound`] if there is none.
    pub fn get(name: &str) -> Result<Volume> {
        Self::get_in(msb_core::paths::state_home(), name)
    }

    /// [`get`](Self::get) in state home `home`.
    pub fn get_in(home: impl AsRef<Path>, name: &str) -> Result<Volume> {
        let volume = Self::at(home.as_ref(), name)?;
        if volume.path.is_dir() {
            Ok(volume)
        } else {
            Err(MicrosandboxError::VolumeNotFound { name: volume.name })
        }
    }

    /// Every named volume in the default state home, by name.
    pub fn list() -> Result<Vec<Volume>> {
        Self::list_in(msb_core::paths::state_home())
    }

    /// [`list`](Self::list) in state home `home`.
    pub fn list_in(home: impl AsRef<Path>) -> Result<Vec<Volume>> {
        let dir = home.as_ref().join(VOLUMES_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(MicrosandboxError::Io {
                    op: "list",
                    path: dir,
                    source,
                });
            }
        };
        let mut volumes: Vec<Volume> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Self::at(home.as_ref(), &e.file_name().to_string_lossy()).ok())
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Removes the named volume `name` and its content from the default
    /// state home. [`MicrosandboxError::VolumeInUse`] while a running
    /// sandbox mounts it; [`MicrosandboxError::VolumeNotFound`] if there
    /// is none.
    pub fn remove(name: &str) -> Result<()> {
        Self::remove_in(msb_core::paths::state_home(), name)
    }

    /// [`remove`](Self::remove) in state home `home`.
    pub fn remove_in(home: impl AsRef<Path>, name: &str) -> Result<()> {
        let volume = Self::get_in(home.as_ref(), name)?;
        let users = running_users(home.as_ref(), &volume.name)?;
        if !users.is_empty() {
            return Err(MicrosandboxError::VolumeInUse {
                name: volume.name,
                sandboxes: users,
            });
        }
        std::fs::remove_dir_all(&volume.path).map_err(|source| MicrosandboxError::Io {
            op: "remove",
            path: volume.path,
            source,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(home: &Path, name: &str) -> Result<Volume> {
        let checked = SandboxName::new(name).map_err(|e| MicrosandboxError::InvalidConfig {
            what: "volume name",
            value: name.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Volume {
            path: home.join(VOLUMES_DIR).join(checked.as_str()),
            name: checked.to_string(),
        })
    }
}

/// The running sandboxes of `home` that mount named volume `name`.
fn running_users(home: &Path, name: &str) -> Result<Vec<String>> {
    let fail = |e| MicrosandboxError::from_sandbox("", e);
    let store = StateStore::open(home).map_err(fail)?;
    let records = store.list().map_err(fail)?;
    Ok(records
        .iter()
        .filter(|r| r.live_status() == SandboxStatus::Running)
        .filter(|r| {
            serde_json::from_value::<SandboxSpec>(r.config.clone()).is_ok_and(|spec| {
                spec.volumes
                    .iter()
                    .any(|v| matches!(&v.source, VolumeSource::Named { name: n, .. } if n == name))
            })
        })
        .map(|r| r.name.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_normalized_or_refused() {
        assert_eq!(normalize_guest("/data/").unwrap(), "/data");
        assert_eq!(normalize_guest("//a/./b").unwrap(), "/a/b");
        let kind = |p| match normalize_guest(p) {
            Err(MicrosandboxError::InvalidVolume { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind("data"), VolumeErrorKind::NotAbsolute);
        assert_eq!(kind("/a/../b"), VolumeErrorKind::ParentComponent);
        assert_eq!(kind("/"), VolumeErrorKind::Root);
        assert_eq!(kind("/a:b"), VolumeErrorKind::InvalidCharacter);
        assert_eq!(kind("/proc/sys"), VolumeErrorKind::Reserved);
        assert_eq!(kind("/.msb"), VolumeErrorKind::Reserved);
        assert_eq!(normalize_guest("/processes").unwrap(), "/processes");
    }

    #[test]
    fn microvms_share_directories_only() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let volumes = [("/f".to_owned(), VolumeMount::default().bind(&file))];
        assert!(resolve_all(home.path(), &volumes, false).is_ok());
        match resolve_all(home.path(), &volumes, true) {
            Err(MicrosandboxError::InvalidVolume { reason, .. }) => {
                assert_eq!(reason, VolumeErrorKind::NotADirectory)
            }
            other => panic!("{other:?}"),
        }
        let twice = [
            ("/a".to_owned(), VolumeMount::default().tmpfs()),
            ("/a/".to_owned(), VolumeMount::default().tmpfs()),
        ];
        assert!(matches!(
            resolve_all(home.path(), &twice, false),
            Err(MicrosandboxError::InvalidVolume {
                reason: VolumeErrorKind::Duplicate,
                ..
            })
        ));
    }

    #[test]
    fn named_volumes_are_created_listed_and_removed() {
        let home = tempfile::tempdir().unwrap();
        let v = Volume::create_in(home.path(), "data").unwrap();
        assert!(v.path().is_dir());
        assert!(matches!(
            Volume::create_in(home.path(), "data"),
            Err(MicrosandboxError::VolumeAlreadyExists { .. })
        ));
        assert!(matches!(
            Volume::create_in(home.path(), "../x"),
            Err(MicrosandboxError::InvalidConfig { .. })
        ));
        assert_eq!(Volume::list_in(home.path()).unwrap(), vec![v.clone()]);
        Volume::remove_in(home.path(), "data").unwrap();
        assert!(matches!(
            Volume::get_in(home.path(), "data"),
            Err(MicrosandboxError::VolumeNotFound { .. })
        ));
    }
}
