//! Removing what lower layers put in the tree: `.wh.<name>` whiteouts, opaque
//! directories (`.wh..wh..opq`) and entries replaced by one of another type.
//!
//! Removal never follows symlinks: directories are opened with `O_NOFOLLOW`
//! and everything else is unlinked, so a removal stays inside the tree.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

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
    remove_all_counting(dir, name).map(drop)
}

/// [`remove_all_at`], returning the bytes the removed regular files held.
///
/// Iterative, holding one directory descriptor at a time (it climbs back
/// with `..`): a hostile layer can nest directories tens of thousands deep,
/// and the recursive version overflowed a 2 MiB stack removing such a tree
/// and aborted the process (found by `tests/fuzz_unpack.rs`,
/// `deep_directories_and_their_whiteout_do_not_crash`).
pub(crate) fn remove_all_counting(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<u64> {
    let size = match fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if !is_dir(st.st_mode) => regular_size(&st),
        Ok(_) => 0,
        Err(Errno::ENOENT) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(size),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e.into()),
    }
    let top = match openat(dir, os(name), DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    make_writable(top.as_fd())?;
    let mut bytes = 0u64;
    // One frame per directory from `name` down to `cur`: its name in its
    // parent and the children still to remove.
    let mut frames: Vec<(OsString, Vec<OsString>)> =
        vec![(OsString::new(), read_dir_names(top.as_fd())?)];
    let mut cur: OwnedFd = top;
    while let Some(frame) = frames.last_mut() {
        if let Some(child) = frame.1.pop() {
            let child_b = child.as_bytes();
            match fstatat(cur.as_fd(), os(child_b), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if !is_dir(st.st_mode) => {
                    match unlinkat(cur.as_fd(), os(child_b), UnlinkatFlags::NoRemoveDir) {
                        Ok(()) => bytes += regular_size(&st),
                        Err(Errno::ENOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(_) => {
                    let sub = match openat(cur.as_fd(), os(child_b), DIR_FLAGS, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    make_writable(sub.as_fd())?;
                    let names = read_dir_names(sub.as_fd())?;
                    frames.push((child, names));
                    cur = sub;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        // `cur` is empty: remove it from its parent and climb back.
        let (done, _) = frames.pop().expect("a frame was just looked at");
        if frames.is_empty() {
            break;
        }
        let parent = openat(cur.as_fd(), c"..", DIR_FLAGS, Mode::empty())?;
        match unlinkat(
            parent.as_fd(),
            os(done.as_bytes()),
            UnlinkatFlags::RemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        cur = parent;
    }
    drop(cur);
    match unlinkat(dir, os(name), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(bytes),
        Err(e) => Err(e.into()),
    }
}

/// The size of a regular file, 0 for anything else.
fn regular_size(st: &nix::sys::stat::FileStat) -> u64 {
    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
        st.st_size as u64
    } else {
        0
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
///
/// Iterative (the pending directories are on the heap), for the same reason
/// as [`remove_all_counting`].
pub(crate) fn clean_except_added(dir: BorrowedFd<'_>, key: &[u8], added: &Added) -> io::Result<()> {
    // Directories still to clean, as (parent, name, key): siblings share
    // their parent's descriptor and are opened only when their turn comes,
    // so the open descriptors grow with the depth, not the width.
    let mut pending: Vec<(Rc<OwnedFd>, Option<OsString>, Vec<u8>)> =
        vec![(Rc::new(dir.try_clone_to_owned()?), None, key.to_vec())];
    while let Some((parent, name, key)) = pending.pop() {
        let dir = match name {
            None => parent,
            Some(name) => {
                match openat(
                    parent.as_fd(),
                    os(name.as_bytes()),
                    DIR_FLAGS,
                    Mode::empty(),
                ) {
                    Ok(fd) => Rc::new(fd),
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        for name in read_dir_names(dir.as_fd())? {
            let name_b = name.as_bytes();
            let mut child = Vec::with_capacity(key.len() + 1 + name_b.len());
            if !key.is_empty() {
                child.extend_from_slice(&key);
                child.push(b'/');
            }
            child.extend_from_slice(name_b);
            if added.contains(&child) || added.has_descendants(&child) {
                let st = match fstatat(dir.as_fd(), os(name_b), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                if is_dir(st.st_mode) {
                    pending.push((dir.clone(), Some(name), child));
                }
            } else {
                remove_all_at(dir.as_fd(), name_b)?;
            }
        }
    }
    Ok(())
}
