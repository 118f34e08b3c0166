//! Per-sandbox root filesystems, assembled over a shared, read-only tree.
//!
//! # Design: an overlay mount inside the sandbox's own mount namespace
//!
//! Every sandbox of an image starts from the same flattened tree
//! (`<home>/images/trees/<digest>/rootfs`, see [`crate::image::store`]), or
//! from a local directory the user named (`image("./rootfs")`). Neither may be
//! modified by a sandbox, and creating a sandbox must not cost time or space
//! proportional to the image. The sandbox's rootfs is therefore an
//! **overlayfs** mount:
//!
//! | overlay part | path |
//! | --- | --- |
//! | `lowerdir` (read-only, shared by all sandboxes of the image) | the image tree, or the local directory |
//! | `upperdir` (this sandbox's changes) | `<sandbox dir>/rootfs/upper` |
//! | `workdir` (overlay's scratch space) | `<sandbox dir>/rootfs/work` |
//! | mount point | `<sandbox dir>/rootfs/merged` |
//!
//! Creating a sandbox then makes three empty directories and one mount: O(1)
//! in the image size. Writes land in `upper` (copy-up happens per file, on
//! first write), deletions become whiteouts (character devices 0:0) in
//! `upper`, and the lower tree is never touched.
//!
//! The mount is made **inside the sandbox process's private mount namespace**
//! ([`RootfsLayout::mount_overlay`] is called after `unshare(CLONE_NEWNS)` and
//! after `/` was made private there). No mount ever appears in the host's
//! mount table, and there is nothing to unmount if the sandbox process dies,
//! however it dies: the kernel drops the namespace, and the mount with it,
//! when its last process exits. The microVM backend uses the same mount: the
//! sandbox process serves `merged` to libkrun over virtio-fs from within that
//! namespace.
//!
//! Overlay works in a user namespace without host privileges on kernels ≥
//! 5.11 (overlay got `FS_USERNS_MOUNT` there); inside a user namespace the
//! mount uses the `userxattr` option so that overlay's own metadata goes to
//! `user.overlay.*` xattrs, which an unprivileged mounter may write. As root
//! in the initial user namespace it works on any kernel with overlayfs.
//!
//! Alternatives considered: copy-up on write in our own code (a FUSE or
//! virtio-fs layer) would be slower and much larger than the kernel's
//! overlayfs; reflinks are O(number of files), not O(1), and only on btrfs,
//! XFS and bcachefs; a full copy is O(size). These two remain as fallbacks.
//!
//! # Fallbacks, and how the strategy is chosen
//!
//! [`Strategy::detect`] (used by [`RootfsLayout::for_sandbox`]) picks, in order:
//!
//! 1. [`Strategy::Overlay`] when the kernel has overlayfs, we may mount it (root
//!    in the initial user namespace, or kernel ≥ 5.11) and the state home is on
//!    a filesystem that can hold an upper directory (not overlayfs itself, NFS,
//!    FUSE, CIFS/SMB, 9p, ...).
//! 2. [`Strategy::Reflink`] otherwise, when a `FICLONE` between the lower tree's
//!    filesystem and the sandbox directory's works (btrfs, XFS with reflink,
//!    bcachefs): [`prepare`](RootfsLayout::prepare) copies the tree into
//!    `merged`, sharing every file's data blocks. O(number of files), not O(size).
//! 3. [`Strategy::Copy`] otherwise: a full copy into `merged`, **O(size)**.
//!
//! The chosen strategy is reported by [`RootfsLayout::strategy`] (and traced),
//! so callers can say why a create was slow. Detection is a heuristic: the
//! mount itself is the final word, and a failed mount comes back as
//! [`Error::OverlayMount`], after which the caller may switch strategy with
//! [`RootfsLayout::with_strategy`].
//!
//! # The guest agent
//!
//! [`RootfsLayout::inject_agent`] places the agent at [`AGENT_PATH`]
//! (`/.msb/agent`) in the sandbox's writable layer: `upper` for the overlay
//! (so it is visible in `merged` but never in the shared image tree), or
//! `merged` itself for the copy strategies.
//!
//! ```no_run
//! use std::path::Path;
//! use msb_core::rootfs::{RootfsLayout, RootfsSource};
//!
//! # fn main() -> msb_core::Result<()> {
//! let source = RootfsSource::Directory("./rootfs".into());
//! let layout = RootfsLayout::for_sandbox(Path::new("/home/me/.microsandbox/sandboxes/w1"), &source);
//! layout.prepare()?;
//! layout.inject_agent(Path::new("/usr/libexec/msb-agent"))?;
//! // ... then, in the sandbox process, after unshare(CLONE_NEWNS):
//! layout.mount()?;
//! # Ok(())
//! # }
//! ```

mod cleanup;
mod copy;
mod overlay;
pub(crate) use overlay::{in_user_namespace, options_for as overlay_options};
mod reflink;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use cleanup::cleanup;
pub use copy::{CopyStats, copy_tree};

use crate::{Error, Result};

/// Where the guest agent lives inside every sandbox's rootfs.
pub const AGENT_PATH: &str = "/.msb/agent";

/// The name of the per-sandbox rootfs directory inside a sandbox directory.
pub const ROOTFS_DIR: &str = "rootfs";

/// What a sandbox's rootfs is built from. Both are used read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// A pulled image's flattened tree (`PulledImage::rootfs`).
    Image {
        /// The tree's root directory.
        tree: PathBuf,
    },
    /// A local directory given by the user, e.g. `image("./rootfs")`.
    Directory(PathBuf),
}

impl RootfsSource {
    /// The directory used as the read-only lower layer.
    pub fn lower(&self) -> &Path {
        match self {
            RootfsSource::Image { tree } => tree,
            RootfsSource::Directory(dir) => dir,
        }
    }
}

/// How a sandbox's rootfs is materialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// An overlayfs mount over the shared tree: O(1) per sandbox.
    Overlay,
    /// A copy of the tree whose files share data blocks with it (`FICLONE`):
    /// O(number of files).
    Reflink,
    /// A full copy of the tree: O(size).
    Copy,
}

impl Strategy {
    /// Picks the cheapest strategy that works for `lower` and a sandbox
    /// directory at `sandbox_dir` (which need not exist yet). See the module
    /// docs for the order and its caveats.
    pub fn detect(lower: &Path, sandbox_dir: &Path) -> Strategy {
        let state = nearest_existing(sandbox_dir);
        if let Err(why) = overlay::usable(&state) {
            tracing::debug!(%why, "overlay unavailable for {}", state.display());
        } else {
            return Strategy::Overlay;
        }
        if reflink::probe(lower, &state) {
            Strategy::Reflink
        } else {
            Strategy::Copy
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Overlay => "overlay",
            Strategy::Reflink => "reflink",
            Strategy::Copy => "copy",
        })
    }
}

/// Why a rootfs cannot be assembled (see [`Error::InvalidRootfs`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootfsErrorKind {
    /// The lower tree (image tree or local directory) does not exist.
    #[error("does not exist")]
    Missing,
    /// The path exists but is not a directory (a symlink counts as not one).
    #[error("is not a directory")]
    NotADirectory,
    /// The path contains a character that overlay's mount options use as a
    /// separator (`,` `:`) or escape (`\`); such paths are refused rather
    /// than escaped.
    #[error("contains {0:?}, which overlay mount options cannot carry")]
    OverlayUnsafeChar(char),
    /// The overlay mount options would exceed the kernel's one-page limit.
    #[error("overlay mount options are {len} bytes, more than the kernel's {max}")]
    OptionsTooLong {
        /// The options' length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A directory to be removed is a mount point (an overlay mounted in this
    /// mount namespace, or something bind-mounted); cleanup does not cross it.
    #[error("is a mount point; unmount it first")]
    StillMounted,
}

/// The paths of one sandbox's rootfs, and the strategy that builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsLayout {
    /// The read-only lower tree.
    pub lower: PathBuf,
    /// Overlay upper directory: `<sandbox dir>/rootfs/upper`.
    pub upper: PathBuf,
    /// Overlay work directory: `<sandbox dir>/rootfs/work`.
    pub work: PathBuf,
    /// The sandbox's root as the guest sees it: `<sandbox dir>/rootfs/merged`.
    pub merged: PathBuf,
    strategy: Strategy,
}

impl RootfsLayout {
    /// The layout for the sandbox whose state directory is `sandbox_dir`, with
    /// the strategy [`Strategy::detect`] picks. A relative lower path (a local
    /// directory given as `./rootfs`) is made absolute against the current
    /// directory. Touches nothing but a reflink probe file when overlay is
    /// unusable.
    pub fn for_sandbox(sandbox_dir: &Path, source: &RootfsSource) -> RootfsLayout {
        let lower = std::path::absolute(source.lower()).unwrap_or_else(|_| source.lower().into());
        let root = sandbox_dir.join(ROOTFS_DIR);
        let strategy = Strategy::detect(&lower, sandbox_dir);
        tracing::debug!(%strategy, lower = %lower.display(), "rootfs strategy");
        RootfsLayout {
            lower,
            upper: root.join("upper"),
            work: root.join("work"),
            merged: root.join("merged"),
            strategy,
        }
    }

    /// The same layout built with `strategy` instead (e.g. after an overlay
    /// mount failed, or to force a copy).
    pub fn with_strategy(mut self, strategy: Strategy) -> RootfsLayout {
        self.strategy = strategy;
        self
    }

    /// How this rootfs is materialized.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The directory the sandbox's own files go to: `upper` for the overlay,
    /// `merged` for the copy strategies.
    pub fn writable_root(&self) -> &Path {
        match self.strategy {
            Strategy::Overlay => &self.upper,
            Strategy::Reflink | Strategy::Copy => &self.merged,
        }
    }

    /// Validates the lower tree and creates the sandbox's directories.
    ///
    /// For the overlay: `upper`, `work` and an empty `merged` (O(1)); the
    /// overlay's option constraints are checked here so that a bad path fails
    /// on the host rather than in the sandbox process. For the copy
    /// strategies: copies the lower tree into `merged` (O(files) with
    /// reflinks, O(size) without). Safe to call again on a prepared layout.
    pub fn prepare(&self) -> Result<()> {
        check_lower(&self.lower)?;
        match self.strategy {
            Strategy::Overlay => {
                overlay::options(self)?;
                for dir in [&self.upper, &self.work, &self.merged] {
                    create_dir_all(dir, 0o755)?;
                }
                // The merged root directory takes its owner and mode from the
                // upper root: give it the lower root's.
                root_like_lower(&self.lower, &self.upper)
            }
            Strategy::Reflink | Strategy::Copy => {
                let parent = self.merged.parent().unwrap_or(Path::new("/"));
                create_dir_all(parent, 0o755)?;
                if fs::symlink_metadata(&self.merged).is_ok() {
                    return Ok(()); // already copied
                }
                // Copy into a temporary name, then rename: a crash mid-copy
                // never leaves a half tree at `merged`.
                let tmp = parent.join(format!(".merged.tmp-{}", std::process::id()));
                if fs::symlink_metadata(&tmp).is_ok() {
                    cleanup::remove_tree(&tmp)?;
                }
                let stats = copy_tree(&self.lower, &tmp, self.strategy == Strategy::Reflink)?;
                tracing::debug!(?stats, strategy = %self.strategy, "rootfs copied");
                fs::rename(&tmp, &self.merged).map_err(|source| Error::Io {
                    op: "rename copied rootfs",
                    path: self.merged.clone(),
                    source,
                })
            }
        }
    }

    /// Mounts the overlay at `merged`. Call it inside the sandbox process's
    /// private mount namespace (after `unshare(CLONE_NEWNS)` and making `/`
    /// private there), never in the host's: the namespace takes the mount
    /// away when the process exits. Inside a user namespace the `userxattr`
    /// option is added.
    pub fn mount_overlay(&self) -> Result<()> {
        overlay::mount(self)
    }

    /// Makes `merged` the sandbox's root: mounts the overlay for
    /// [`Strategy::Overlay`], nothing for the copy strategies (the copy is
    /// already there). Same namespace rule as [`mount_overlay`](Self::mount_overlay).
    pub fn mount(&self) -> Result<()> {
        match self.strategy {
            Strategy::Overlay => self.mount_overlay(),
            Strategy::Reflink | Strategy::Copy => Ok(()),
        }
    }

    /// Installs `agent_binary` at [`AGENT_PATH`] in the sandbox's writable
    /// layer, mode 0755, and returns its host path. Atomic (written to a
    /// temporary name, then renamed) and idempotent: calling it again replaces
    /// the agent with the same or a newer binary. The shared lower tree is
    /// never written. Anything at `/.msb` in the writable layer that is not a
    /// directory (e.g. a symlink from a copied image) is replaced, never
    /// followed.
    pub fn inject_agent(&self, agent_binary: &Path) -> Result<PathBuf> {
        let root = self.writable_root();
        let rel = AGENT_PATH.trim_start_matches('/');
        let dest = root.join(rel);
        let dir = dest.parent().unwrap_or(root);
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => fs::remove_file(dir).map_err(|source| Error::Io {
                op: "remove non-directory",
                path: dir.into(),
                source,
            })?,
            Err(_) => {}
        }
        create_dir_all(dir, 0o755)?;
        let tmp = dir.join(format!(".agent.tmp-{}", std::process::id()));
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { op, path, source }
        };
        let _ = fs::remove_file(&tmp);
        let mut src = fs::File::open(agent_binary).map_err(io("open agent", agent_binary))?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        std::io::copy(&mut src, &mut out).map_err(io("copy agent to", &tmp))?;
        out.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &tmp))?;
        out.flush().map_err(io("write", &tmp))?;
        drop(out);
        fs::rename(&tmp, &dest).map_err(io("rename agent to", &dest))?;
        Ok(dest)
    }
}

/// The lower tree must exist and be a directory (not a symlink to one).
fn check_lower(lower: &Path) -> Result<()> {
    match fs::symlink_metadata(lower) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::InvalidRootfs {
            path: lower.into(),
            reason: RootfsErrorKind::NotADirectory,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::InvalidRootfs {
            path: lower.into(),
            reason: RootfsErrorKind::Missing,
        }),
        Err(source) => Err(Error::Io {
            op: "stat rootfs lower",
            path: lower.into(),
            source,
        }),
    }
}

/// Gives `upper` the mode (and, as root, the owner) of `lower`.
fn root_like_lower(lower: &Path, upper: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    let meta = fs::symlink_metadata(lower).map_err(io("stat", lower))?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(upper, Some(meta.uid()), Some(meta.gid()))
            .map_err(io("chown", upper))?;
    }
    fs::set_permissions(upper, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io("chmod", upper))
}

fn create_dir_all(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| Error::Io {
            op: "create directory",
            path: dir.into(),
            source,
        })
}

/// `path` or its closest ancestor that exists (the state home may not be
/// created yet when the strategy is chosen).
fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = std::path::absolute(path).unwrap_or_else(|_| path.into());
    while fs::symlink_metadata(&p).is_err() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let src = RootfsSource::Image {
            tree: "/x/images/trees/d/rootfs".into(),
        };
        let l = RootfsLayout::for_sandbox(Path::new("/h/sandboxes/a"), &src)
            .with_strategy(Strategy::Overlay);
        assert_eq!(l.lower, Path::new("/x/images/trees/d/rootfs"));
        assert_eq!(l.upper, Path::new("/h/sandboxes/a/rootfs/upper"));
        assert_eq!(l.work, Path::new("/h/sandboxes/a/rootfs/work"));
        assert_eq!(l.merged, Path::new("/h/sandboxes/a/rootfs/merged"));
        assert_eq!(l.writable_root(), l.upper);
        assert_eq!(
            l.clone().with_strategy(Strategy::Copy).writable_root(),
            l.merged
        );
    }

    #[test]
    fn relative_directory_is_made_absolute() {
        let l = RootfsLayout::for_sandbox(
            Path::new("/h/s"),
            &RootfsSource::Directory("./rootfs".into()),
        );
        assert!(l.lower.is_absolute());
        assert!(l.lower.ends_with("rootfs"));
    }

    #[test]
    fn nearest_existing_walks_up() {
        assert_eq!(
            nearest_existing(Path::new("/proc/nonexistent/a/b")),
            Path::new("/proc")
        );
    }
}
