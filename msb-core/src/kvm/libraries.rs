//! Finding libkrun and libkrunfw on disk.
//!
//! This is a file-existence search in the directories the dynamic loader
//! would use, not a `dlopen`: it costs a few `stat` calls and loads nothing.
//! It is redone on every probe, since installing a library must not need a
//! reboot to be noticed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::reason::Reason;

/// The soname microsandbox loads libkrun by.
pub const LIBKRUN: &str = "libkrun.so.1";
/// The soname libkrun `dlopen`s its guest kernel by.
pub const LIBKRUNFW: &str = "libkrunfw.so.5";
/// Environment variable naming a directory searched before all others.
pub const MSB_LIB_DIR_ENV: &str = "MSB_LIB_DIR";

/// The system library directories, searched last.
#[cfg(target_arch = "x86_64")]
const SYSTEM_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
];
/// The system library directories, searched last.
#[cfg(target_arch = "aarch64")]
const SYSTEM_DIRS: &[&str] = &[
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/lib/aarch64-linux-gnu",
];
/// The system library directories, searched last.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSTEM_DIRS: &[&str] = &["/usr/lib64", "/usr/lib", "/usr/local/lib"];

/// Where the libraries microVMs need were found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Libraries {
    /// `libkrun.so.1`, if found.
    pub libkrun: Option<PathBuf>,
    /// `libkrunfw.so.5`, if found.
    pub libkrunfw: Option<PathBuf>,
    /// The directories searched for libkrun, in order.
    pub libkrun_searched: Vec<PathBuf>,
    /// The directories searched for libkrunfw, in order: libkrun's own
    /// directory first (its `RUNPATH` is `$ORIGIN`), then the same list.
    pub libkrunfw_searched: Vec<PathBuf>,
}

impl Libraries {
    /// The search list for a probe: `$MSB_LIB_DIR`, then `lib_dirs` (e.g. the
    /// project prefix), then `$LD_LIBRARY_PATH`, then the system directories.
    pub fn search_path(lib_dirs: &[PathBuf]) -> Vec<PathBuf> {
        let env_dir = std::env::var_os(MSB_LIB_DIR_ENV).filter(|v| !v.is_empty());
        let ld_path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
        let dirs = env_dir
            .map(PathBuf::from)
            .into_iter()
            .chain(lib_dirs.iter().cloned())
            .chain(std::env::split_paths(&ld_path))
            .chain(SYSTEM_DIRS.iter().map(PathBuf::from));
        dedup(dirs)
    }

    /// Looks for both libraries in `dirs`, in order.
    pub fn locate(dirs: &[PathBuf]) -> Self {
        let libkrun = find(LIBKRUN, dirs);
        let libkrunfw_searched = dedup(
            libkrun
                .as_deref()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .into_iter()
                .chain(dirs.iter().cloned()),
        );
        let libkrunfw = find(LIBKRUNFW, &libkrunfw_searched);
        debug!(?libkrun, ?libkrunfw, "kvm probe: libraries");
        Self {
            libkrun,
            libkrunfw,
            libkrun_searched: dirs.to_vec(),
            libkrunfw_searched,
        }
    }

    /// The reason microVMs cannot run for want of a library, if any.
    pub fn reason(&self) -> Option<Reason> {
        if self.libkrun.is_none() {
            Some(Reason::LibkrunMissing {
                searched: self.libkrun_searched.clone(),
            })
        } else if self.libkrunfw.is_none() {
            Some(Reason::LibkrunfwMissing {
                searched: self.libkrunfw_searched.clone(),
            })
        } else {
            None
        }
    }
}

/// The first `dir/name` that is a file (a symlink to one counts), skipping
/// relative directories, which would depend on the working directory.
fn find(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Drops empty and repeated entries, keeping the first occurrence.
fn dedup(dirs: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    dirs.into_iter()
        .filter(|d| !d.as_os_str().is_empty() && seen.insert(d.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn touch(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, b"not really an ELF").unwrap();
        path
    }

    #[test]
    fn finds_both_in_one_prefix() {
        let prefix = tempfile::tempdir().unwrap();
        let krun = touch(prefix.path(), LIBKRUN);
        let krunfw = touch(prefix.path(), LIBKRUNFW);
        let libs = Libraries::locate(&[prefix.path().to_path_buf()]);
        assert_eq!(libs.libkrun, Some(krun));
        assert_eq!(libs.libkrunfw, Some(krunfw));
        assert_eq!(libs.reason(), None);
    }

    #[test]
    fn earlier_directories_win() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        touch(second.path(), LIBKRUN);
        let wanted = touch(first.path(), LIBKRUN);
        let libs = Libraries::locate(&[first.path().into(), second.path().into()]);
        assert_eq!(libs.libkrun, Some(wanted));
    }

    #[test]
    fn libkrunfw_is_looked_for_next_to_libkrun_first() {
        let (krun_dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        touch(other.path(), LIBKRUNFW);
        touch(krun_dir.path(), LIBKRUN);
        let beside = touch(krun_dir.path(), LIBKRUNFW);
        // libkrun's directory is searched for libkrunfw even though it comes
        // second in the list, as the loader does for a `$ORIGIN` RUNPATH.
        let libs = Libraries::locate(&[other.path().into(), krun_dir.path().into()]);
        assert_eq!(libs.libkrunfw, Some(beside));
        assert_eq!(libs.libkrunfw_searched[0], krun_dir.path());
    }

    #[test]
    fn missing_libraries_name_where_they_were_looked_for() {
        let empty = tempfile::tempdir().unwrap();
        let dirs = vec![empty.path().to_path_buf()];
        let libs = Libraries::locate(&dirs);
        assert_eq!(
            libs.reason(),
            Some(Reason::LibkrunMissing {
                searched: dirs.clone()
            })
        );
        let msg = libs.reason().unwrap().to_string();
        assert!(msg.contains(&*empty.path().to_string_lossy()), "{msg}");

        touch(empty.path(), LIBKRUN);
        let libs = Libraries::locate(&dirs);
        assert_eq!(
            libs.reason(),
            Some(Reason::LibkrunfwMissing { searched: dirs })
        );
    }

    #[test]
    fn directories_and_broken_links_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(LIBKRUN)).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join(LIBKRUNFW)).unwrap();
        let libs = Libraries::locate(&[dir.path().into()]);
        assert_eq!((libs.libkrun, libs.libkrunfw), (None, None));
    }

    #[test]
    fn relative_and_repeated_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), LIBKRUN);
        let path = Libraries::search_path(&[dir.path().into(), dir.path().into(), "".into()]);
        assert_eq!(path.iter().filter(|d| *d == dir.path()).count(), 1);
        assert!(path.iter().all(|d| !d.as_os_str().is_empty()));
        assert!(path.ends_with(&SYSTEM_DIRS.iter().map(PathBuf::from).collect::<Vec<_>>()));
        assert_eq!(find(LIBKRUN, &["relative".into()]), None);
    }
}
