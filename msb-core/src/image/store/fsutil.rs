//! Small filesystem helpers: unique temp names, directory fsync, and removal
//! of trees that may contain read-only directories.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Maps an `io::Error` to [`Error::Io`] for `op` on `path`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// A name unique to this process and call: `<prefix>.<pid>.<counter>.<nanos>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}.{}.{n}.{nanos:08x}", std::process::id())
}

const CREATE_ATTEMPTS: usize = 16;

/// Creates a new, empty file with a unique name in `dir`.
pub(crate) fn create_temp_file(dir: &Path, prefix: &str) -> Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..CREATE_ATTEMPTS {
        let path = dir.join(unique_name(prefix));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((e, path)),
            Err(e) => return Err(io_err("create temporary file", path)(e)),
        }
    }
    let (e, path) = last.expect("at least one attempt");
    Err(io_err("create temporary file", path)(e))
}

/// Creates a new, empty directory with a unique name in `dir`.
pub(crate) fn create_temp_dir(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut last = None;
    for _ in 0..CREATE_ATTEMPTS {
        let path = dir.join(unique_name(prefix));
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((e, path)),
            Err(e) => return Err(io_err("create temporary directory", path)(e)),
        }
    }
    let (e, path) = last.expect("at least one attempt");
    Err(io_err("create temporary directory", path)(e))
}

/// Makes a rename or creation in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Removes `path` (a file, symlink or whole directory tree) and returns the
/// bytes its regular files held. Directories without owner write/search
/// permission (as unpacked images have) are made writable first. A missing
/// `path` is not an error.
pub(crate) fn remove_tree_all(path: &Path) -> io::Result<u64> {
    // Descriptor-based and iterative: an unpacked hostile image can nest
    // directories far deeper than PATH_MAX, where path-based removal failed
    // with ENAMETOOLONG and left the tree (and every later gc failing on it).
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match File::open(parent) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    crate::image::unpack::remove_all_counting(dir.as_fd(), name.as_bytes())
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The names in `dir` (empty if it does not exist); non-UTF-8 names are
/// skipped with a warning.
pub(crate) fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => tracing::warn!(?name, dir = %dir.display(), "ignoring non-UTF-8 name"),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_read_only_trees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"12345").unwrap();
        fs::write(root.join("g"), b"1").unwrap();
        fs::set_permissions(root.join("a/b"), Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(root.join("a"), Permissions::from_mode(0o000)).unwrap();
        assert_eq!(remove_tree_all(&root).unwrap(), 6);
        assert!(!root.exists());
        assert_eq!(remove_tree_all(&root).unwrap(), 0);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }
}
