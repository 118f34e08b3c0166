//! Removing what lower layers put in the tree: `.wh.<name>` whiteouts, opaque
//! directories (`.wh..wh..opq`) and entries replaced by one of another type.
//!
//! Removal never follows symlinks: directories are opened with `O_NOFOLLOW`
//! and everything else is unlinked, so a removal stays inside the tree.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, openat};
use nix::sys::stat::{Mode, fchmod, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::resolve::{DIR_FLAGS, is_dir};
use super::sys::{os, read_dir_names};

/// Whiteout file name prefix.
pub(crate) const PREFIX: &[u8] = b".wh.";
/// Opaque directory marker, the whole file name.
pub(crate) const OPAQUE: &[u8] = b".wh..wh..opq";

/// Remove `name` from `dir`, recursively if it is a directory. A missing
/// `name` is not an error.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = match openat(dir, os(name), DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    make_writable(sub.as_fd())?;
    for child in read_dir_names(sub.as_fd())? {
        remove_all_at(sub.as_fd(), child.as_bytes())?;
    }
    match unlinkat(dir, os(name), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Give the owner write and search permission on `dir` if it lacks them, so
/// that an unprivileged caller can empty it.
fn make_writable(dir: BorrowedFd<'_>) -> io::Result<()> {
    let st = fstat(dir)?;
    if st.st_mode & 0o300 != 0o300 {
        fchmod(dir, Mode::from_bits_truncate((st.st_mode | 0o700) & 0o7777))?;
    }
    Ok(())
}

/// The paths (relative, `/`-joined) this layer created, for opaque
/// directories and whiteouts that must not remove the layer's own entries.
#[derive(Debug, Default)]
pub(crate) struct Added {
    paths: HashSet<Vec<u8>>,
    /// Proper ancestors of `paths`.
    ancestors: HashSet<Vec<u8>>,
}

impl Added {
    /// Record that this layer created `comps`.
    pub(crate) fn record(&mut self, comps: &[&[u8]]) {
        self.paths.insert(comps.join(&b'/'));
        for i in (1..comps.len()).rev() {
            if !self.ancestors.insert(comps[..i].join(&b'/')) {
                break;
            }
        }
    }

    /// Whether this layer created `key`.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.paths.contains(key)
    }

    /// Whether this layer created something below `key`.
    pub(crate) fn has_descendants(&self, key: &[u8]) -> bool {
        self.ancestors.contains(key)
    }
}

/// Remove everything in `dir` (whose relative path is `key`) that this layer
/// did not create, descending into what it did.
pub(crate) fn clean_except_added(dir: BorrowedFd<'_>, key: &[u8], added: &Added) -> io::Result<()> {
    for name in read_dir_names(dir)? {
        let name = name.as_bytes();
        let mut child = Vec::with_capacity(key.len() + 1 + name.len());
        if !key.is_empty() {
            child.extend_from_slice(key);
            child.push(b'/');
        }
        child.extend_from_slice(name);
        if added.contains(&child) || added.has_descendants(&child) {
            let st = match fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            if is_dir(st.st_mode) {
                let sub = openat(dir, os(name), DIR_FLAGS, Mode::empty())?;
                clean_except_added(sub.as_fd(), &child, added)?;
            }
        } else {
            remove_all_at(dir, name)?;
        }
    }
    Ok(())
}
