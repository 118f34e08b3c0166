//! Removing a sandbox's rootfs directories.
//!
//! An upper directory is written by the guest: it holds read-only and
//! mode-000 directories (overlay's own `work/work` is `d---------`), sticky
//! directories, files of other owners, whiteout device nodes and symlinks
//! pointing anywhere. Removal is done relative to directory descriptors
//! opened with `O_NOFOLLOW`, so a symlink is unlinked, never followed, and
//! directories are made writable (`chmod 0700` through an `O_PATH`
//! descriptor) before their entries are removed. Mount points are never
//! crossed: a mounted `merged` is refused with
//! [`RootfsErrorKind::StillMounted`].

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::{ROOTFS_DIR, RootfsErrorKind};
use crate::{Error, Result};

/// Removes the rootfs of the sandbox whose state directory is `sandbox_dir`
/// (`<sandbox dir>/rootfs`: upper, work, merged, and any copy). Succeeds when
/// there is nothing to remove. Fails with
/// [`RootfsErrorKind::StillMounted`] rather than descend into a mount.
///
/// Files of other owners are removed when the caller may write to their
/// directories: always as root; an unprivileged user whose sandbox wrote
/// files as mapped (subordinate) ids must run this inside the sandbox's user
/// namespace.
pub fn cleanup(sandbox_dir: &Path) -> Result<()> {
    remove_tree(&sandbox_dir.join(ROOTFS_DIR))
}

/// Removes `path` and everything below it, without following symlinks and
/// without crossing mount points.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                op: "stat",
                path: path.into(),
                source,
            });
        }
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::InvalidRootfs {
            path: path.into(),
            reason: RootfsErrorKind::NotADirectory,
        });
    };
    if let Some(mount) = mount_below(path) {
        return Err(Error::InvalidRootfs {
            path: mount,
            reason: RootfsErrorKind::StillMounted,
        });
    }
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent_fd = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open directory", parent))?;
    use std::os::unix::fs::MetadataExt;
    remove_at(&parent_fd, name, meta.dev(), path)
}

fn remove_at(parent: &OwnedFd, name: &OsStr, dev: u64, path: &Path) -> Result<()> {
    let st = nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(errno("stat", path))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if !is_dir {
        return nix::unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(errno("remove", path));
    }
    if st.st_dev != dev {
        return Err(Error::InvalidRootfs {
            path: path.into(),
            reason: RootfsErrorKind::StillMounted,
        });
    }
    // Make the directory ours to empty: read, write and search for the
    // owner, no sticky bit. Through an O_PATH descriptor opened without
    // following symlinks, so the chmod lands on this very directory.
    if st.st_mode & 0o7777 != 0o700 {
        let handle = nix::fcntl::openat(
            parent,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno("open directory", path))?;
        let magic = format!("/proc/self/fd/{}", handle.as_raw_fd());
        match nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            magic.as_str(),
            Mode::from_bits_truncate(0o700),
            FchmodatFlags::FollowSymlink,
        ) {
            // Not the owner: removal may still work if we can write to it.
            Ok(()) | Err(Errno::EPERM) => {}
            Err(e) => return Err(errno("chmod", path)(e)),
        }
    }
    let fd = nix::fcntl::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open directory", path))?;
    let listing = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&listing).map_err(|source| Error::Io {
        op: "read directory",
        path: path.into(),
        source,
    })? {
        let entry = entry.map_err(|source| Error::Io {
            op: "read directory",
            path: path.into(),
            source,
        })?;
        names.push(entry.file_name());
    }
    for child in names {
        remove_at(&fd, &child, dev, &path.join(&child))?;
    }
    drop(fd);
    nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(errno("remove", path))
}

/// A mount point at or below `path` in this mount namespace, if any.
fn mount_below(path: &Path) -> Option<PathBuf> {
    let path = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .find(|mount| mount.starts_with(&path))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
pub(crate) fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(b) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

fn errno(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> Error + use<> {
    let path = path.to_path_buf();
    move |e| Error::Io {
        op,
        path,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), Path::new("/a b"));
        assert_eq!(unescape_mountinfo("/plain"), Path::new("/plain"));
        assert_eq!(unescape_mountinfo("/x\\134y"), Path::new("/x\\y"));
    }
}
