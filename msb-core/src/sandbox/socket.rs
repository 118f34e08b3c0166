//! Unix socket paths that may be longer than `sun_path` allows.
//!
//! A sandbox's agent socket lives in its state directory, whose path can be
//! longer than the 107 bytes a socket address holds (a deep `MSB_HOME`, a
//! 63-character name). Such a path is reached through the directory's
//! descriptor instead: `/proc/self/fd/<n>/agent.sock` is short, and the
//! kernel resolves it to the same place for `bind` and `connect`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Longest path used directly (`sun_path` is 108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// A path usable in a socket address, and the directory descriptor that
/// must stay open while it is used.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    _dir: Option<File>,
}

impl SocketPath {
    /// The short form of `path`.
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= SUN_PATH_MAX {
            return Ok(SocketPath {
                path: path.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path {} has no directory", path.display()),
            ));
        };
        let dir = File::open(dir)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(SocketPath {
            path: short,
            _dir: Some(dir),
        })
    }

    /// The path to pass to `bind` or `connect`.
    pub fn as_path(&self) -> &Path {
        &self.path
    }
}

/// Connects to the Unix socket at `path`, however long.
pub async fn connect(path: &Path) -> io::Result<tokio::net::UnixStream> {
    let short = SocketPath::new(path)?;
    tokio::net::UnixStream::connect(short.as_path()).await
}

/// Binds a listening Unix socket at `path`, however long, replacing a stale
/// socket left there.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let short = SocketPath::new(path)?;
    std::os::unix::net::UnixListener::bind(short.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_longer_than_sun_path_still_binds_and_connects() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("agent.sock");
        assert!(path.as_os_str().len() > SUN_PATH_MAX);
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket is created at the long path");
        let _client = connect(&path).await.unwrap();
        let (_server, _) = listener.accept().unwrap();
        // Binding again replaces the stale socket.
        drop(listener);
        bind(&path).unwrap();
    }
}
