//! The copy fallbacks: a tree copied file by file, with `FICLONE` per file
//! where the filesystem supports it.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::reflink;
use crate::{Error, Result};

/// What [`copy_tree`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyStats {
    /// Directories created.
    pub dirs: u64,
    /// Regular files created (each inode once).
    pub files: u64,
    /// Of those, files whose data was shared with `FICLONE`.
    pub reflinked: u64,
    /// Bytes copied (not counting reflinked files).
    pub bytes_copied: u64,
    /// Symbolic links created.
    pub symlinks: u64,
    /// Extra names made as hard links to an already copied inode.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub specials: u64,
    /// Entries that could not be reproduced (device nodes without the
    /// privilege to make them, sockets).
    pub skipped: u64,
}

/// Copies the tree at `src` to `dst` (which must not exist), preserving
/// file types, modes (setuid/setgid/sticky included), symlinks (copied as
/// links, never followed), hard links within the tree, device nodes and fifos
/// where permitted, mtimes, and ownership when running as root. With
/// `reflink`, each regular file's data is shared with `FICLONE` where the
/// filesystem allows, falling back to a byte copy per file.
///
/// Cost: O(number of entries) with reflinks, O(size) without. Extended
/// attributes are not copied.
pub fn copy_tree(src: &Path, dst: &Path, reflink: bool) -> Result<CopyStats> {
    let mut copier = Copier {
        reflink,
        chown: nix::unistd::geteuid().is_root(),
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    let meta = lstat(src)?;
    if !meta.is_dir() {
        return Err(Error::InvalidRootfs {
            path: src.into(),
            reason: super::RootfsErrorKind::NotADirectory,
        });
    }
    copier.dir(src, dst, &meta)?;
    Ok(copier.stats)
}

struct Copier {
    reflink: bool,
    chown: bool,
    /// `(dev, ino)` of multiply linked inodes → their first copy.
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
}

impl Copier {
    fn dir(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .map_err(io("create directory", dst))?;
        self.stats.dirs += 1;
        let entries = fs::read_dir(src).map_err(io("read directory", src))?;
        for entry in entries {
            let entry = entry.map_err(io("read directory", src))?;
            let from = entry.path();
            let to = dst.join(entry.file_name());
            let meta = lstat(&from)?;
            self.entry(&from, &to, &meta)?;
        }
        // Ownership, then mode (chown clears set-id bits), then times: after
        // the children, so read-only directories could still be filled and
        // their mtimes are not disturbed.
        self.finish(dst, meta, true)
    }

    fn entry(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_dir() {
            return self.dir(src, dst, meta);
        }
        if !ft.is_symlink()
            && meta.nlink() > 1
            && let Some(first) = self.links.get(&(meta.dev(), meta.ino()))
        {
            fs::hard_link(first, dst).map_err(io("hard link", dst))?;
            self.stats.hardlinks += 1;
            return Ok(());
        }
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io("read link", src))?;
            std::os::unix::fs::symlink(&target, dst).map_err(io("create symlink", dst))?;
            self.stats.symlinks += 1;
            return self.finish(dst, meta, false);
        }
        if ft.is_file() {
            self.file(src, dst, meta)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_fifo() {
                SFlag::S_IFIFO
            } else if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            match nix::sys::stat::mknod(dst, kind, Mode::from_bits_truncate(0o600), meta.rdev()) {
                Ok(()) => self.stats.specials += 1,
                Err(nix::errno::Errno::EPERM) => {
                    tracing::debug!(path = %dst.display(), "device node skipped: no privilege");
                    self.stats.skipped += 1;
                    return Ok(());
                }
                Err(e) => return Err(io("create device node", dst)(e.into())),
            }
        } else {
            self.stats.skipped += 1; // sockets
            return Ok(());
        }
        if meta.nlink() > 1 {
            self.links
                .insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        self.finish(dst, meta, true)
    }

    fn file(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        let mut from = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(src)
            .map_err(io("open", src))?;
        let mut to = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dst)
            .map_err(io("create", dst))?;
        self.stats.files += 1;
        if meta.len() == 0 {
            return Ok(());
        }
        if self.reflink && reflink::clone_file(&from, &to).is_ok() {
            self.stats.reflinked += 1;
            return Ok(());
        }
        let n = std::io::copy(&mut from, &mut to).map_err(io("copy to", dst))?;
        self.stats.bytes_copied += n;
        Ok(())
    }

    /// Owner (as root), mode (except for symlinks) and times of `dst`.
    fn finish(&self, dst: &Path, meta: &Metadata, chmod: bool) -> Result<()> {
        if self.chown {
            std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
                .map_err(io("chown", dst))?;
        }
        if chmod {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("chmod", dst))?;
        }
        let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
        let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dst,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io("set times of", dst)(e.into()))
    }
}

fn lstat(path: &Path) -> Result<Metadata> {
    fs::symlink_metadata(path).map_err(io("stat", path))
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}
