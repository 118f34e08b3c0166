//! Safe path resolution inside the root being unpacked into.
//!
//! Every directory is reached from an open descriptor of the root, one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`. A component
//! that is a symlink is followed by hand, only when its target is relative and
//! its `..` components never climb above the root; symlinks are never
//! followed by the kernel, so nothing outside the root is ever reached. The
//! descriptors of the last resolved directory chain are cached, so entries in
//! tar order (siblings, then deeper) cost one `openat` per new directory, and
//! are handed out shared ([`Arc`], the file helper holds some), so a cached directory costs no system call
//! at all.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};

use super::UnsafeEntryReason;
use super::sys::os;
use crate::error::{Error, Result};

/// Symlinks followed resolving one name before it is a loop (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// Flags to open a directory without following a symlink.
pub(crate) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The components of an entry name: a leading `/` and `.` components are
/// dropped, `..` is refused.
pub(crate) fn split_name(raw: &[u8]) -> Result<Vec<&[u8]>, UnsafeEntryReason> {
    if raw.contains(&0) {
        return Err(UnsafeEntryReason::InvalidName);
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(UnsafeEntryReason::ParentComponent),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Components joined with `/`, as a relative path key.
pub(crate) fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// `bytes` as a path, for errors.
pub(crate) fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(os(bytes))
}

/// Whether `mode` is a symlink's.
pub(crate) fn is_symlink(mode: libc::mode_t) -> bool {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK
}

/// Whether `mode` is a directory's.
pub(crate) fn is_dir(mode: libc::mode_t) -> bool {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

/// An [`Error::Io`] for `op` on `rel` under `root`.
pub(crate) fn io_error(
    root: &Path,
    rel: &Path,
    op: &'static str,
    e: impl Into<io::Error>,
) -> Error {
    Error::Io {
        op,
        path: root.join(rel.strip_prefix("/").unwrap_or(rel)),
        source: e.into(),
    }
}

/// Resolves directories inside one root.
#[derive(Debug)]
pub(crate) struct Resolver {
    root_path: PathBuf,
    root: Arc<OwnedFd>,
    root_id: (u64, u64),
    /// The last resolved chain: logical component, the directory it
    /// resolved to, and whether it was reached without following a symlink
    /// (nor was any directory above it).
    cache: Vec<(Vec<u8>, Arc<OwnedFd>, bool)>,
}

impl Resolver {
    /// Open `root`, which must be a directory.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let err = |e: Errno| Error::Io {
            op: "open root directory",
            path: root.to_owned(),
            source: e.into(),
        };
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        let st = fstat(&fd).map_err(err)?;
        Ok(Self {
            root_path: root.to_owned(),
            root: Arc::new(fd),
            root_id: (st.st_dev, st.st_ino),
            cache: Vec::new(),
        })
    }

    /// The root's path.
    pub(crate) fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The root directory.
    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The root directory, shared.
    pub(crate) fn root_dir(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.root)
    }

    /// Forget cached directories (after removing a directory or symlink).
    /// Directories already handed out stay open until their holders drop
    /// them.
    pub(crate) fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// `dir`, just opened (without following a symlink) as the directory
    /// `leaf` of `dirs`, is where the next entries probably go (tar lists a
    /// directory's contents after it): cache it, so that they find it
    /// without opening it again. Ignored unless `dirs` is the chain the
    /// cache holds.
    pub(crate) fn entered(&mut self, dirs: &[&[u8]], leaf: &[u8], dir: Arc<OwnedFd>) {
        let holds_dirs = self.cache.len() == dirs.len()
            && self
                .cache
                .iter()
                .zip(dirs)
                .all(|((name, _, _), d)| name.as_slice() == *d);
        if holds_dirs {
            let plain = self.plain();
            self.cache.push((leaf.to_vec(), dir, plain));
        }
    }

    /// Whether the chain [`dir`](Self::dir) resolved last was reached
    /// without following a symlink: its logical path is where it is.
    pub(crate) fn plain(&self) -> bool {
        self.cache.last().is_none_or(|(_, _, plain)| *plain)
    }

    /// The directory named by `dirs` (logical components from the root).
    /// Missing directories are created (mode 0755) when `create`, else the
    /// answer is `None`. `entry` names the layer entry, for errors.
    pub(crate) fn dir(
        &mut self,
        dirs: &[&[u8]],
        create: bool,
        entry: &Path,
    ) -> Result<Option<Arc<OwnedFd>>> {
        let common = self
            .cache
            .iter()
            .zip(dirs)
            .take_while(|((name, _, _), d)| name.as_slice() == **d)
            .count();
        self.cache.truncate(common);
        for i in common..dirs.len() {
            let start = self
                .cache
                .last()
                .map_or(self.root.as_fd(), |(_, fd, _)| fd.as_fd());
            match self.step(start, &dirs[..=i], create, entry)? {
                Some((fd, followed)) => {
                    let plain = !followed && self.plain();
                    self.cache.push((dirs[i].to_vec(), Arc::new(fd), plain))
                }
                None => return Ok(None),
            }
        }
        Ok(Some(Arc::clone(
            self.cache.last().map_or(&self.root, |(_, fd, _)| fd),
        )))
    }

    /// Resolve the last of `logical` from the directory `start`; with
    /// whether a symlink was followed.
    fn step(
        &self,
        start: BorrowedFd<'_>,
        logical: &[&[u8]],
        create: bool,
        entry: &Path,
    ) -> Result<Option<(OwnedFd, bool)>> {
        let name = logical[logical.len() - 1];
        // Fast path: a plain directory, or a missing one to create.
        match openat(start, os(name), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok(Some((fd, false))),
            Err(Errno::ENOENT) if create => {
                return self
                    .mkdir_open(start, name, entry)
                    .map(|fd| Some((fd, false)));
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {}
            Err(e) => return Err(self.io(entry, "open directory", e)),
        }
        // Slow path: follow symlinks by hand.
        let mut cur: Option<OwnedFd> = None;
        let mut pending: Vec<Vec<u8>> = vec![name.to_vec()];
        let mut links = 0;
        let mut last_link: (PathBuf, PathBuf) = (path_of(&join(logical)), PathBuf::new());
        while let Some(c) = pending.pop() {
            let fd = cur.as_ref().map_or(start, |f| f.as_fd());
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                if self.is_root(fd, entry)? {
                    return Err(unsafe_entry(
                        entry,
                        UnsafeEntryReason::SymlinkEscape {
                            symlink: last_link.0,
                            target: last_link.1,
                        },
                    ));
                }
                cur = Some(
                    openat(fd, c"..", DIR_FLAGS, Mode::empty())
                        .map_err(|e| self.io(entry, "open directory", e))?,
                );
                continue;
            }
            match openat(fd, os(&c), DIR_FLAGS, Mode::empty()) {
                Ok(next) => cur = Some(next),
                Err(Errno::ENOENT) if create => cur = Some(self.mkdir_open(fd, &c, entry)?),
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = fstatat(fd, os(&c), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| self.io(entry, "stat", e))?;
                    if !is_symlink(st.st_mode) {
                        return Err(self.io(entry, "open parent directory", Errno::ENOTDIR));
                    }
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(unsafe_entry(entry, UnsafeEntryReason::SymlinkLoop));
                    }
                    let target =
                        readlinkat(fd, os(&c)).map_err(|e| self.io(entry, "read symlink", e))?;
                    let target = target.as_bytes();
                    let symlink = if links == 1 {
                        path_of(&join(logical))
                    } else {
                        last_link.0.join(os(&c))
                    };
                    if target.starts_with(b"/") {
                        // An absolute target means the image's own root, as
                        // inside the container (containerd resolves it the
                        // same way): continue from `root`, never the host's /.
                        cur = Some(self.root.try_clone().map_err(|e| {
                            io_error(&self.root_path, entry, "duplicate descriptor", e)
                        })?);
                    }
                    last_link = (symlink, path_of(target));
                    pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                }
                Err(e) => return Err(self.io(entry, "open directory", e)),
            }
        }
        match cur {
            Some(fd) => Ok(Some((fd, true))),
            // Every component was `.` or empty: the start itself.
            None => start
                .try_clone_to_owned()
                .map(|fd| Some((fd, true)))
                .map_err(|e| self.io(entry, "duplicate descriptor", e)),
        }
    }

    /// Create the directory `name` in `dir` (mode 0755) and open it.
    fn mkdir_open(&self, dir: BorrowedFd<'_>, name: &[u8], entry: &Path) -> Result<OwnedFd> {
        match mkdirat(dir, os(name), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(self.io(entry, "create directory", e)),
        }
        openat(dir, os(name), DIR_FLAGS, Mode::empty())
            .map_err(|e| self.io(entry, "open directory", e))
    }

    /// Whether `fd` is the root directory.
    fn is_root(&self, fd: BorrowedFd<'_>, entry: &Path) -> Result<bool> {
        let st = fstat(fd).map_err(|e| self.io(entry, "stat", e))?;
        Ok((st.st_dev, st.st_ino) == self.root_id)
    }

    /// An [`Error::Io`] about `entry`.
    pub(crate) fn io(&self, entry: &Path, op: &'static str, e: impl Into<io::Error>) -> Error {
        io_error(&self.root_path, entry, op, e)
    }
}

/// An [`Error::UnsafeLayerEntry`].
pub(crate) fn unsafe_entry(entry: &Path, reason: UnsafeEntryReason) -> Error {
    Error::UnsafeLayerEntry {
        path: entry.to_owned(),
        reason,
    }
}
