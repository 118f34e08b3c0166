//! `FICLONE`: share a file's data blocks with a new file (btrfs, XFS with
//! reflink, bcachefs). The only `unsafe` of the rootfs module lives here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Makes `dst` (an empty file opened for writing) share `src`'s data.
/// Fails with `EOPNOTSUPP`, `EXDEV`, `EINVAL` or `ENOTTY` where the
/// filesystem (or the pair of filesystems) cannot do it.
pub(super) fn clone_file(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source file descriptor as its integer
    // argument and reads no memory of ours; both descriptors are open for the
    // whole call because `src` and `dst` are borrowed.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a reflink from a file of the tree at `lower` into the directory
/// `state` works, tried on a real file (the first non-empty regular file
/// found near the top of `lower`) and a temporary file in `state`.
pub(super) fn probe(lower: &Path, state: &Path) -> bool {
    let Some(sample) = sample_file(lower) else {
        return false;
    };
    let Ok(src) = File::open(&sample) else {
        return false;
    };
    let tmp = state.join(format!(".msb-reflink-probe-{}", std::process::id()));
    let Ok(dst) = File::options().write(true).create_new(true).open(&tmp) else {
        return false;
    };
    let _ = std::fs::remove_file(&tmp);
    clone_file(&src, &dst).is_ok()
}

/// A non-empty regular file in `root`, breadth first, looking at a bounded
/// number of entries so that the probe stays cheap on huge trees.
fn sample_file(root: &Path) -> Option<std::path::PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut budget = 2_000usize;
    while let Some(dir) = queue.pop_front() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            budget = budget.checked_sub(1)?;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() && meta.len() > 0 {
                return Some(entry.path());
            }
            if meta.is_dir() {
                queue.push_back(entry.path());
            }
        }
    }
    None
}
