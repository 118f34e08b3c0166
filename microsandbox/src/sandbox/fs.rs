//! Files in a sandbox: read, write, list, create, remove, rename, copy,
//! stat, and copy between the host and the sandbox ([`Sandbox::fs`]).
//!
//! Paths are absolute paths inside the sandbox (a relative path is
//! [`FsErrorKind::InvalidArgument`]). Every operation runs on its own
//! connection to the sandbox's agent, and file content is streamed under
//! flow control both ways, so large files never sit whole in memory unless
//! asked for ([`SandboxFs::read`]). A failure in the sandbox is
//! [`MicrosandboxError::Fs`] with its [`FsErrorKind`].

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use msb_core::agent::{RemoveMode, WriteMode};
use msb_core::sandbox::client::AgentConnection;
use msb_core::sandbox::files::FileReadStream;
use msb_core::sandbox::spec::AGENT_SOCKET;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// Why a file operation failed (see [`MicrosandboxError::Fs`]).
pub use msb_core::agent::ErrorKind as FsErrorKind;
/// The type of a file in a sandbox.
pub use msb_core::agent::FileType;

use super::Sandbox;
use crate::error::{MicrosandboxError, Result};

/// Permission bits of files created by [`SandboxFs::write`] and friends.
const FILE_PERM: u32 = 0o644;
/// Permission bits of directories created by [`SandboxFs::mkdir`].
const DIR_PERM: u32 = 0o755;

/// A file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// Its type.
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission and special bits (`0o7777` at most).
    pub mode: u32,
    /// Owner (inside the sandbox).
    pub uid: u32,
    /// Group (inside the sandbox).
    pub gid: u32,
    /// Last modification.
    pub modified: SystemTime,
}

impl Metadata {
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.file_type == FileType::File
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Dir
    }

    /// A symbolic link (only from [`SandboxFs::symlink_metadata`] or
    /// [`SandboxFs::list`]).
    pub fn is_symlink(&self) -> bool {
        self.file_type == FileType::Symlink
    }
}

impl From<msb_core::agent::Metadata> for Metadata {
    fn from(m: msb_core::agent::Metadata) -> Self {
        let since_epoch = Duration::new(m.mtime_secs.unsigned_abs(), m.mtime_nanos);
        // Out-of-range times (none in practice) clamp to the epoch.
        let modified = if m.mtime_secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(since_epoch)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(since_epoch)
        }
        .unwrap_or(SystemTime::UNIX_EPOCH);
        Metadata {
            file_type: m.file_type,
            size: m.size,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            modified,
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name.
    pub name: String,
    /// Its metadata (of a symlink itself, not its target).
    pub metadata: Metadata,
}

/// The files of a sandbox; from [`Sandbox::fs`].
#[derive(Debug, Clone, Copy)]
pub struct SandboxFs<'a> {
    sandbox: &'a Sandbox,
}

impl Sandbox {
    /// The sandbox's files.
    ///
    /// ```no_run
    /// # async fn run(sb: microsandbox::Sandbox) -> microsandbox::Result<()> {
    /// use microsandbox::{FsErrorKind, MicrosandboxError};
    ///
    /// let fs = sb.fs();
    /// fs.mkdir_all("/work/data").await?;
    /// fs.write("/work/data/hello.txt", b"hello\n").await?;
    /// assert_eq!(fs.read_to_string("/work/data/hello.txt").await?, "hello\n");
    /// for entry in fs.list("/work/data").await? {
    ///     println!("{} ({} bytes)", entry.name, entry.metadata.size);
    /// }
    /// fs.copy_to_host("/work/data/hello.txt", "/tmp/hello.txt").await?;
    /// match fs.read("/missing").await {
    ///     Err(MicrosandboxError::Fs { kind: FsErrorKind::NotFound, .. }) => {}
    ///     other => panic!("unexpected: {other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn fs(&self) -> SandboxFs<'_> {
        SandboxFs { sandbox: self }
    }
}

impl SandboxFs<'_> {
    /// A fresh connection to the sandbox's agent.
    async fn connect(&self) -> Result<AgentConnection> {
        // The handle must still name a live incarnation.
        self.sandbox.info()?;
        let socket = self.sandbox.state_dir().join(AGENT_SOCKET);
        AgentConnection::connect(&socket)
            .await
            .map_err(|e| self.sandbox.error(e))
    }

    /// The facade's error for an engine error of an operation on `path`.
    fn error(&self, path: &str, e: msb_core::Error) -> MicrosandboxError {
        fs_error(self.sandbox.name(), path, e)
    }

    /// The whole content of the file at `path`.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut conn = self.connect().await?;
        conn.read_file(path).await.map_err(|e| self.error(path, e))
    }

    /// The whole content of the file at `path`, as UTF-8 text; content that
    /// is not UTF-8 is [`FsErrorKind::InvalidArgument`].
    pub async fn read_to_string(&self, path: &str) -> Result<String> {
        let bytes = self.read(path).await?;
        String::from_utf8(bytes).map_err(|e| MicrosandboxError::Fs {
            name: self.sandbox.name().to_owned(),
            path: path.to_owned(),
            kind: FsErrorKind::InvalidArgument,
            message: format!("the content is not UTF-8: {e}"),
        })
    }

    /// The file at `path` as an [`AsyncRead`], streamed: the sandbox sends
    /// more only as it is read. A missing file (or a directory) fails here;
    /// a failure midway is an [`io::Error`] wrapping the
    /// [`MicrosandboxError`].
    pub async fn read_stream(&self, path: &str) -> Result<FileReader> {
        let conn = self.connect().await?;
        let mut stream = FileReadStream::open(conn, path, 0, None)
            .await
            .map_err(|e| self.error(path, e))?;
        // The first chunk (or refusal) now, so errors are typed here.
        let first = stream.next_chunk().await.map_err(|e| self.error(path, e))?;
        let done = first.is_none();
        Ok(FileReader {
            sandbox: self.sandbox.name().to_owned(),
            path: path.to_owned(),
            state: if done {
                ReadState::Done
            } else {
                ReadState::Idle(Box::new(stream))
            },
            buf: first.unwrap_or_default(),
            pos: 0,
        })
    }

    /// Writes `data` to the file at `path`, creating it (mode `0644`) or
    /// truncating it.
    pub async fn write(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        self.write_mode(path, WriteMode::Truncate, FILE_PERM, &mut data.as_ref())
            .await
            .map(drop)
    }

    /// Appends `data` to the file at `path`, creating it (mode `0644`) if
    /// needed.
    pub async fn append(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        self.write_mode(path, WriteMode::Append, FILE_PERM, &mut data.as_ref())
            .await
            .map(drop)
    }

    /// Creates the file at `path` (mode `0644`) with `data`; an existing
    /// file is [`FsErrorKind::AlreadyExists`].
    pub async fn create_new(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        self.write_mode(path, WriteMode::CreateNew, FILE_PERM, &mut data.as_ref())
            .await
            .map(drop)
    }

    /// Writes everything `source` yields to the file at `path` (created
    /// with mode `0644`, or truncated), streamed under the sandbox's flow
    /// control; returns the bytes written.
    pub async fn write_stream<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mut source: R,
    ) -> Result<u64> {
        self.write_mode(path, WriteMode::Truncate, FILE_PERM, &mut source)
            .await
    }

    async fn write_mode<R: AsyncRead + Unpin + ?Sized>(
        &self,
        path: &str,
        mode: WriteMode,
        perm: u32,
        source: &mut R,
    ) -> Result<u64> {
        let mut conn = self.connect().await?;
        conn.write_file(path, mode, perm, source)
            .await
            .map_err(|e| self.error(path, e))
    }

    /// The entries of the directory at `path` (without `.` and `..`).
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mut conn = self.connect().await?;
        let entries = conn.list(path).await.map_err(|e| self.error(path, e))?;
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                name: e.name,
                metadata: e.metadata.into(),
            })
            .collect())
    }

    /// Creates the directory `path` (mode `0755`); its parent must exist.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        let mut conn = self.connect().await?;
        conn.mkdir(path, false, DIR_PERM)
            .await
            .map_err(|e| self.error(path, e))
    }

    /// Creates the directory `path` and its missing parents (mode `0755`);
    /// an existing directory is fine.
    pub async fn mkdir_all(&self, path: &str) -> Result<()> {
        let mut conn = self.connect().await?;
        conn.mkdir(path, true, DIR_PERM)
            .await
            .map_err(|e| self.error(path, e))
    }

    /// Removes the file (or symlink) at `path`; a directory is
    /// [`FsErrorKind::IsADirectory`].
    pub async fn remove(&self, path: &str) -> Result<()> {
        self.remove_mode(path, RemoveMode::File).await
    }

    /// Removes the empty directory at `path`; a non-empty one is
    /// [`FsErrorKind::DirectoryNotEmpty`].
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        self.remove_mode(path, RemoveMode::EmptyDir).await
    }

    /// Removes `path` and everything under it, never following symlinks.
    pub async fn remove_dir_all(&self, path: &str) -> Result<()> {
        self.remove_mode(path, RemoveMode::Recursive).await
    }

    async fn remove_mode(&self, path: &str, mode: RemoveMode) -> Result<()> {
        let mut conn = self.connect().await?;
        conn.remove(path, mode)
            .await
            .map_err(|e| self.error(path, e))
    }

    /// Renames `from` to `to` (replacing a file at `to`).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut conn = self.connect().await?;
        conn.rename(from, to).await.map_err(|e| self.error(from, e))
    }

    /// Copies the file `from` to `to` (content and permission bits,
    /// replacing `to`); returns the bytes copied.
    pub async fn copy(&self, from: &str, to: &str) -> Result<u64> {
        let mut conn = self.connect().await?;
        conn.copy(from, to).await.map_err(|e| self.error(from, e))
    }

    /// The metadata of `path`, following symlinks.
    pub async fn stat(&self, path: &str) -> Result<Metadata> {
        self.stat_with(path, true).await
    }

    /// The metadata of `path` itself, a symlink not followed.
    pub async fn symlink_metadata(&self, path: &str) -> Result<Metadata> {
        self.stat_with(path, false).await
    }

    async fn stat_with(&self, path: &str, follow: bool) -> Result<Metadata> {
        let mut conn = self.connect().await?;
        conn.stat(path, follow)
            .await
            .map(Metadata::from)
            .map_err(|e| self.error(path, e))
    }

    /// Whether `path` exists (following symlinks): a missing path or a
    /// missing directory on the way is `false`.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(MicrosandboxError::Fs {
                kind: FsErrorKind::NotFound | FsErrorKind::NotADirectory,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copies the host file `host_path` into the sandbox at `guest_path`
    /// (created with the host file's permission bits, or truncated);
    /// returns the bytes copied.
    pub async fn copy_from_host(
        &self,
        host_path: impl AsRef<Path>,
        guest_path: &str,
    ) -> Result<u64> {
        use std::os::unix::fs::PermissionsExt;

        let host_path = host_path.as_ref();
        let host_error = |op, source| MicrosandboxError::Io {
            op,
            path: host_path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(host_path)
            .await
            .map_err(|e| host_error("open", e))?;
        let meta = file.metadata().await.map_err(|e| host_error("stat", e))?;
        if meta.is_dir() {
            return Err(host_error(
                "copy",
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        }
        let perm = meta.permissions().mode() & 0o7777;
        self.write_mode(guest_path, WriteMode::Truncate, perm, &mut file)
            .await
    }

    /// Copies the sandbox file `guest_path` to the host at `host_path`
    /// (created or truncated); returns the bytes copied.
    pub async fn copy_to_host(&self, guest_path: &str, host_path: impl AsRef<Path>) -> Result<u64> {
        let host_path = host_path.as_ref();
        let host_error = |op, source| MicrosandboxError::Io {
            op,
            path: host_path.to_owned(),
            source,
        };
        let conn = self.connect().await?;
        let mut stream = FileReadStream::open(conn, guest_path, 0, None)
            .await
            .map_err(|e| self.error(guest_path, e))?;
        // The first chunk before creating the host file: a missing guest
        // file leaves the host untouched.
        let mut chunk = stream
            .next_chunk()
            .await
            .map_err(|e| self.error(guest_path, e))?;
        let mut file = tokio::fs::File::create(host_path)
            .await
            .map_err(|e| host_error("create", e))?;
        let mut total = 0u64;
        while let Some(data) = chunk {
            file.write_all(&data)
                .await
                .map_err(|e| host_error("write", e))?;
            total += data.len() as u64;
            chunk = stream
                .next_chunk()
                .await
                .map_err(|e| self.error(guest_path, e))?;
        }
        file.flush().await.map_err(|e| host_error("write", e))?;
        Ok(total)
    }
}

/// The facade's error for an engine error of a file operation on `path` in
/// sandbox `name`.
fn fs_error(name: &str, path: &str, e: msb_core::Error) -> MicrosandboxError {
    match e {
        msb_core::Error::AgentRefused { kind, message, .. } => MicrosandboxError::Fs {
            name: name.to_owned(),
            path: path.to_owned(),
            kind,
            message,
        },
        e => MicrosandboxError::from_sandbox(name, e),
    }
}

/// The next chunk of a [`FileReadStream`], as an owned future.
type ChunkFuture = Pin<
    Box<
        dyn Future<Output = (Box<FileReadStream>, msb_core::Result<Option<Vec<u8>>>)>
            + Send
            + 'static,
    >,
>;

enum ReadState {
    /// Waiting to be polled for more.
    Idle(Box<FileReadStream>),
    /// A chunk is on its way.
    Reading(ChunkFuture),
    /// The file ended or failed.
    Done,
}

/// A sandbox file being read; from [`SandboxFs::read_stream`].
pub struct FileReader {
    sandbox: String,
    path: String,
    state: ReadState,
    buf: Vec<u8>,
    pos: usize,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("sandbox", &self.sandbox)
            .field("path", &self.path)
            .field("buffered", &(self.buf.len() - self.pos))
            .finish_non_exhaustive()
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.buf.len() {
                let n = out.remaining().min(this.buf.len() - this.pos);
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match std::mem::replace(&mut this.state, ReadState::Done) {
                ReadState::Done => return Poll::Ready(Ok(())),
                ReadState::Idle(mut stream) => {
                    this.state = ReadState::Reading(Box::pin(async move {
                        let chunk = stream.next_chunk().await;
                        (stream, chunk)
                    }));
                }
                ReadState::Reading(mut fut) => {
                    let (stream, chunk) = match fut.as_mut().poll(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            this.state = ReadState::Reading(fut);
                            return Poll::Pending;
                        }
                    };
                    match chunk {
                        Ok(Some(data)) => {
                            this.buf = data;
                            this.pos = 0;
                            this.state = ReadState::Idle(stream);
                        }
                        Ok(None) => return Poll::Ready(Ok(())),
                        Err(e) => {
                            let e = fs_error(&this.sandbox, &this.path, e);
                            return Poll::Ready(Err(io::Error::other(e)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_meta(mtime_secs: i64, mtime_nanos: u32) -> msb_core::agent::Metadata {
        msb_core::agent::Metadata {
            file_type: FileType::Dir,
            size: 4096,
            mode: 0o755,
            uid: 1,
            gid: 2,
            mtime_secs,
            mtime_nanos,
        }
    }

    #[test]
    fn metadata_converts_times_and_types() {
        let m = Metadata::from(agent_meta(10, 5));
        assert!(m.is_dir() && !m.is_file() && !m.is_symlink());
        assert_eq!(m.modified, SystemTime::UNIX_EPOCH + Duration::new(10, 5));
        let before = Metadata::from(agent_meta(-10, 0));
        assert_eq!(
            before.modified,
            SystemTime::UNIX_EPOCH - Duration::from_secs(10)
        );
        // Never panics on absurd times.
        let _ = Metadata::from(agent_meta(i64::MIN, 999_999_999));
        let _ = Metadata::from(agent_meta(i64::MAX, 999_999_999));
    }

    #[test]
    fn refusals_become_fs_errors() {
        let e = fs_error(
            "sb",
            "/x",
            msb_core::Error::AgentRefused {
                kind: FsErrorKind::NotFound,
                errno: 2,
                message: "/x: No such file or directory".into(),
            },
        );
        assert!(matches!(
            e,
            MicrosandboxError::Fs { ref name, ref path, kind: FsErrorKind::NotFound, .. }
                if name == "sb" && path == "/x"
        ));
        let e = fs_error(
            "sb",
            "/x",
            msb_core::Error::SandboxNotFound { name: "sb".into() },
        );
        assert!(matches!(e, MicrosandboxError::SandboxNotFound { .. }));
    }
}
