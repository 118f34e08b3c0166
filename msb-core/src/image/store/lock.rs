//! `flock(2)` locks on files under `locks/`.
//!
//! `flock` locks belong to an open file description, so two opens of the same
//! lock file conflict whether they come from two processes or two threads of
//! one. Lock files are never removed while anyone could be using them (gc
//! removes per-digest lock files only while it holds the gc lock exclusively,
//! which excludes every writer).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::ImageStore;
use super::fsutil::io_err;
use crate::error::Result;
use crate::image::Digest;

/// A held lock; released on drop.
pub(crate) struct FileLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl fmt::Debug for FileLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLock")
            .field("path", &self.path)
            .finish()
    }
}

/// Whether a lock is taken shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

/// Opens (creating) `path` and locks it, waiting as long as it takes.
pub(crate) fn lock(path: &Path, mode: Mode) -> Result<FileLock> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(io_err("open lock file", path))?;
    let arg = match mode {
        Mode::Shared => FlockArg::LockShared,
        Mode::Exclusive => FlockArg::LockExclusive,
    };
    loop {
        match Flock::lock(file, arg) {
            Ok(lock) => {
                return Ok(FileLock {
                    _lock: lock,
                    path: path.to_path_buf(),
                });
            }
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(io_err("lock", path)(std::io::Error::from(errno))),
        }
    }
}

/// A shared hold on the store's gc lock: while any lease is alive (in any
/// process), [`ImageStore::gc`] waits, so nothing written under it is
/// collected before it is tagged. Released on drop.
#[derive(Debug)]
pub struct StoreLease {
    _lock: FileLock,
}

impl ImageStore {
    /// Takes a [`StoreLease`], waiting while a gc runs. A pull holds one from
    /// its first blob until its image is tagged; blob writers, tree builds and
    /// tagging take their own as well.
    pub fn lease(&self) -> Result<StoreLease> {
        Ok(StoreLease {
            _lock: lock(&self.gc_lock_path(), Mode::Shared)?,
        })
    }

    pub(crate) fn gc_lock_path(&self) -> PathBuf {
        self.locks_dir().join("gc.lock")
    }

    pub(crate) fn index_lock_path(&self) -> PathBuf {
        self.locks_dir().join("index.lock")
    }

    pub(crate) fn blob_lock_path(&self, digest: &Digest) -> PathBuf {
        self.locks_dir().join(format!(
            "blob-{}-{}.lock",
            digest.algorithm(),
            digest.encoded()
        ))
    }

    pub(crate) fn tree_lock_path(&self, digest: &Digest) -> PathBuf {
        self.locks_dir()
            .join(format!("tree-{}.lock", digest.encoded()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn exclusive_lock_excludes_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock(&path, Mode::Exclusive).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let _l = lock(&p, Mode::Shared).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        // Shared locks coexist.
        let _a = lock(&path, Mode::Shared).unwrap();
        let _b = lock(&path, Mode::Shared).unwrap();
    }
}
