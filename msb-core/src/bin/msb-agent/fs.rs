//! One file-operation stream: a [`FsRequest`] resolved inside the sandbox
//! (the agent's root is the sandbox's root).
//!
//! - `Read` streams `FileChunk`s under the stream's send window, then
//!   `FileEnd`;
//! - `Write` opens the file first (an open failure is answered at once),
//!   then takes `FileChunk`s under the stream's receive window, returning
//!   credit as each chunk reaches the file, and answers `FsDone{bytes}` on
//!   `FileEnd`;
//! - `List` answers batches of `FsDirEntries`, then `FsDone{0}`;
//! - `Stat`, `Mkdir`, `Remove`, `Rename`, `Copy` answer one message.
//!
//! Every failure is a typed `Error` ([`error_kind`] maps errno), which ends
//! the stream. File I/O runs on the blocking pool, so one large file never
//! stalls the other streams of the single-threaded runtime.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use msb_core::agent::{
    DirEntry, ErrorKind, FileType, FsRequest, Message, MessageKind, Metadata, RecvWindow,
    RemoteError, RemoveMode, SendWindow, WriteMode,
};
use tokio::sync::mpsc;

use crate::writer::Out;

/// The most bytes read from a file (and sent) at once.
const CHUNK: usize = 512 * 1024;

/// Directory entries per `FsDirEntries` frame: each is at most ~300 bytes
/// (a 255-byte name and its metadata), well below the payload limit.
const LIST_BATCH: usize = 512;

/// What the dispatcher forwards to a file-operation stream.
#[derive(Debug)]
pub enum Control {
    /// The host granted more credit (for `Read`).
    Window(u32),
    /// File content from the host (for `Write`).
    Chunk(Vec<u8>),
    /// The host has no more content (for `Write`).
    End,
    /// The host abandoned the stream: send nothing more on it.
    Reset,
}

/// A failure to answer with `Error`.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    errno: i32,
    message: String,
}

impl Failure {
    /// A failure of the operation on `path`.
    fn io(err: &io::Error, path: &str) -> Failure {
        Failure {
            kind: error_kind(err),
            errno: err.raw_os_error().unwrap_or(0),
            message: format!("{path}: {err}"),
        }
    }

    /// A failure from an errno.
    fn errno(errno: i32, path: &str) -> Failure {
        Failure::io(&io::Error::from_raw_os_error(errno), path)
    }

    fn into_message(self) -> Message {
        Message::Error(RemoteError {
            kind: self.kind,
            errno: self.errno,
            message: self.message,
        })
    }
}

type FsResult<T> = std::result::Result<T, Failure>;

/// The protocol's kind for an I/O error: by errno, else by
/// [`io::ErrorKind`] (errors std raises itself, e.g. a NUL in a path).
pub fn error_kind(err: &io::Error) -> ErrorKind {
    if let Some(errno) = err.raw_os_error() {
        return match errno {
            libc::ENOENT => ErrorKind::NotFound,
            libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
            libc::EISDIR => ErrorKind::IsADirectory,
            libc::ENOTDIR => ErrorKind::NotADirectory,
            libc::EEXIST => ErrorKind::AlreadyExists,
            libc::ENOTEMPTY => ErrorKind::DirectoryNotEmpty,
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EROFS => ErrorKind::ReadOnly,
            libc::EINVAL => ErrorKind::InvalidArgument,
            _ => ErrorKind::Io,
        };
    }
    match err.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    }
}

/// Refuses a path that is not absolute (or holds a NUL byte).
fn check_path(path: &str) -> FsResult<()> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Failure {
            kind: ErrorKind::InvalidArgument,
            errno: libc::EINVAL,
            message: format!("{path:?}: paths must be absolute and free of NUL bytes"),
        });
    }
    Ok(())
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Failure {
            kind: ErrorKind::Io,
            errno: 0,
            message: format!("file operation failed: {e}"),
        }),
    }
}

/// Runs the file operation on `stream` to completion.
pub async fn run(
    stream: u32,
    req: FsRequest,
    out: mpsc::Sender<Out>,
    ctl: mpsc::UnboundedReceiver<Control>,
) {
    let result = match req {
        FsRequest::Read { path, offset, len } => read(stream, path, offset, len, &out, ctl).await,
        FsRequest::Write { path, mode, perm } => write(stream, path, mode, perm, &out, ctl).await,
        other => simple(stream, other, &out).await,
    };
    match result {
        Ok(()) => {}
        Err(Some(failure)) => {
            let _ = out.send(Out::Frame(stream, failure.into_message())).await;
        }
        // Reset by the host: nothing more is sent.
        Err(None) => {}
    }
}

/// An operation's end: `Err(None)` when the host reset the stream.
type Outcome = std::result::Result<(), Option<Failure>>;

async fn send(out: &mpsc::Sender<Out>, stream: u32, message: Message) {
    let _ = out.send(Out::Frame(stream, message)).await;
}

/// The operations answered by one or a few messages.
async fn simple(stream: u32, req: FsRequest, out: &mpsc::Sender<Out>) -> Outcome {
    let answers = blocking(move || answer(req)).await?;
    for message in answers {
        send(out, stream, message).await;
    }
    Ok(())
}

/// Performs a non-streaming request; its answer messages in order.
fn answer(req: FsRequest) -> FsResult<Vec<Message>> {
    let done = |bytes| vec![Message::FsDone { bytes }];
    match req {
        FsRequest::Stat {
            path,
            follow_symlinks,
        } => {
            check_path(&path)?;
            let meta = if follow_symlinks {
                fs::metadata(&path)
            } else {
                fs::symlink_metadata(&path)
            }
            .map_err(|e| Failure::io(&e, &path))?;
            Ok(vec![Message::FsStat(metadata(&meta))])
        }
        FsRequest::List { path } => {
            check_path(&path)?;
            let mut entries = Vec::new();
            for entry in fs::read_dir(&path).map_err(|e| Failure::io(&e, &path))? {
                let entry = entry.map_err(|e| Failure::io(&e, &path))?;
                let Ok(name) = entry.file_name().into_string() else {
                    eprintln!("msb-agent: {path}: skipping a non-UTF-8 file name");
                    continue;
                };
                // The entry may vanish between readdir and lstat.
                let Ok(meta) = entry.metadata() else { continue };
                entries.push(DirEntry {
                    name,
                    metadata: metadata(&meta),
                });
            }
            let mut answers: Vec<Message> = Vec::new();
            let mut entries = entries.into_iter().peekable();
            while entries.peek().is_some() {
                answers.push(Message::FsDirEntries(
                    entries.by_ref().take(LIST_BATCH).collect(),
                ));
            }
            answers.push(Message::FsDone { bytes: 0 });
            Ok(answers)
        }
        FsRequest::Mkdir {
            path,
            recursive,
            perm,
        } => {
            check_path(&path)?;
            DirBuilder::new()
                .recursive(recursive)
                .mode(perm & 0o7777)
                .create(&path)
                .map_err(|e| Failure::io(&e, &path))?;
            if recursive && !Path::new(&path).is_dir() {
                return Err(Failure::errno(libc::EEXIST, &path));
            }
            Ok(done(0))
        }
        FsRequest::Remove { path, mode } => {
            check_path(&path)?;
            let result = match mode {
                RemoveMode::File => fs::remove_file(&path),
                RemoveMode::EmptyDir => fs::remove_dir(&path),
                // lstat: a symlink is removed itself, never followed.
                RemoveMode::Recursive => match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
                    Ok(_) => fs::remove_file(&path),
                    Err(e) => Err(e),
                },
            };
            result.map_err(|e| Failure::io(&e, &path))?;
            Ok(done(0))
        }
        FsRequest::Rename { from, to } => {
            check_path(&from)?;
            check_path(&to)?;
            fs::rename(&from, &to).map_err(|e| Failure::io(&e, &format!("{from} -> {to}")))?;
            Ok(done(0))
        }
        FsRequest::Copy { from, to } => {
            check_path(&from)?;
            check_path(&to)?;
            let meta = fs::metadata(&from).map_err(|e| Failure::io(&e, &from))?;
            if meta.is_dir() {
                return Err(Failure::errno(libc::EISDIR, &from));
            }
            // Copies the content and the permission bits.
            let bytes =
                fs::copy(&from, &to).map_err(|e| Failure::io(&e, &format!("{from} -> {to}")))?;
            Ok(done(bytes))
        }
        FsRequest::Read { .. } | FsRequest::Write { .. } => Err(Failure {
            kind: ErrorKind::Unsupported,
            errno: 0,
            message: "streaming operation".into(),
        }),
    }
}

/// The protocol's metadata of `meta`.
fn metadata(meta: &fs::Metadata) -> Metadata {
    let t = meta.file_type();
    let file_type = if t.is_dir() {
        FileType::Dir
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_fifo() {
        FileType::Fifo
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::File
    };
    Metadata {
        file_type,
        size: meta.size(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_secs: meta.mtime(),
        mtime_nanos: u32::try_from(meta.mtime_nsec())
            .unwrap_or(0)
            .min(999_999_999),
    }
}

/// `Read`: chunks under the send window, then `FileEnd`.
async fn read(
    stream: u32,
    path: String,
    offset: u64,
    len: Option<u64>,
    out: &mpsc::Sender<Out>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) -> Outcome {
    check_path(&path)?;
    let open_path = path.clone();
    let file = blocking(move || {
        let file = File::open(&open_path).map_err(|e| Failure::io(&e, &open_path))?;
        let meta = file.metadata().map_err(|e| Failure::io(&e, &open_path))?;
        if meta.is_dir() {
            return Err(Failure::errno(libc::EISDIR, &open_path));
        }
        Ok(Arc::new(file))
    })
    .await?;

    let mut window = SendWindow::new();
    let mut position = offset;
    let mut remaining = len.unwrap_or(u64::MAX);
    while remaining > 0 {
        // Take every control already queued, then wait while out of credit.
        loop {
            let waiting = window.sendable(CHUNK) == 0;
            let control = if waiting {
                ctl.recv().await
            } else {
                match ctl.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            match control {
                Some(Control::Window(increment)) => {
                    if window.grant(stream, increment).is_err() {
                        return Err(Some(Failure {
                            kind: ErrorKind::ProtocolViolation,
                            errno: 0,
                            message: format!("window update of {increment} overflows the window"),
                        }));
                    }
                }
                Some(Control::Reset) | None => return Err(None),
                Some(Control::Chunk(_) | Control::End) => {}
            }
        }
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(window.sendable(CHUNK));
        let f = file.clone();
        let p = path.clone();
        let data = blocking(move || {
            let mut buf = vec![0u8; want];
            let n = loop {
                match f.read_at(&mut buf, position) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Failure::io(&e, &p)),
                }
            };
            buf.truncate(n);
            Ok(buf)
        })
        .await?;
        if data.is_empty() {
            break;
        }
        let n = data.len();
        window.consume(n);
        position += n as u64;
        remaining -= n as u64;
        let _ = out
            .send(Out::Data(MessageKind::FileChunk, stream, data))
            .await;
    }
    send(out, stream, Message::FileEnd).await;
    Ok(())
}

/// `Write`: open, take chunks under the receive window, answer `FsDone`.
async fn write(
    stream: u32,
    path: String,
    mode: WriteMode,
    perm: u32,
    out: &mpsc::Sender<Out>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) -> Outcome {
    check_path(&path)?;
    let open_path = path.clone();
    let file = blocking(move || {
        let mut options = OpenOptions::new();
        options.write(true).mode(perm & 0o7777);
        match mode {
            WriteMode::Truncate => options.create(true).truncate(true),
            WriteMode::Append => options.create(true).append(true),
            WriteMode::CreateNew => options.create_new(true),
        };
        let file = options
            .open(&open_path)
            .map_err(|e| Failure::io(&e, &open_path))?;
        Ok(Arc::new(file))
    })
    .await?;

    let mut window = RecvWindow::new();
    let mut written: u64 = 0;
    loop {
        match ctl.recv().await {
            Some(Control::Chunk(data)) => {
                if window.on_data(stream, data.len()).is_err() {
                    return Err(Some(Failure {
                        kind: ErrorKind::ProtocolViolation,
                        errno: 0,
                        message: format!(
                            "{} bytes of file content exceed the stream's window",
                            data.len()
                        ),
                    }));
                }
                let n = data.len();
                let f = file.clone();
                let p = path.clone();
                blocking(move || (&*f).write_all(&data).map_err(|e| Failure::io(&e, &p))).await?;
                written += n as u64;
                if let Some(increment) = window.on_consumed(n) {
                    send(out, stream, Message::WindowUpdate { increment }).await;
                }
            }
            Some(Control::End) => break,
            Some(Control::Reset) | None => return Err(None),
            Some(Control::Window(_)) => {}
        }
    }
    send(out, stream, Message::FsDone { bytes: written }).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_kinds() {
        let kind = |errno| error_kind(&io::Error::from_raw_os_error(errno));
        assert_eq!(kind(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(kind(libc::EPERM), ErrorKind::PermissionDenied);
        assert_eq!(kind(libc::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(kind(libc::EISDIR), ErrorKind::IsADirectory);
        assert_eq!(kind(libc::ENOTDIR), ErrorKind::NotADirectory);
        assert_eq!(kind(libc::EEXIST), ErrorKind::AlreadyExists);
        assert_eq!(kind(libc::ENOTEMPTY), ErrorKind::DirectoryNotEmpty);
        assert_eq!(kind(libc::EDQUOT), ErrorKind::NoSpace);
        assert_eq!(kind(libc::EROFS), ErrorKind::ReadOnly);
        assert_eq!(kind(libc::EINVAL), ErrorKind::InvalidArgument);
        assert_eq!(kind(libc::EIO), ErrorKind::Io);
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = answer(FsRequest::Stat {
            path: "etc/passwd".into(),
            follow_symlinks: true,
        })
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn simple_operations_on_a_temp_dir() {
        let dir = std::env::temp_dir().join(format!("msb-agent-fs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let d = dir.to_str().unwrap().to_owned();
        let sub = format!("{d}/a/b");
        answer(FsRequest::Mkdir {
            path: sub.clone(),
            recursive: true,
            perm: 0o755,
        })
        .unwrap();
        fs::write(format!("{sub}/f"), b"hello").unwrap();
        let copied = answer(FsRequest::Copy {
            from: format!("{sub}/f"),
            to: format!("{d}/g"),
        })
        .unwrap();
        assert_eq!(copied, vec![Message::FsDone { bytes: 5 }]);
        assert_eq!(fs::read(format!("{d}/g")).unwrap(), b"hello");
        let listed = answer(FsRequest::List { path: sub.clone() }).unwrap();
        assert!(matches!(&listed[0], Message::FsDirEntries(e) if e.len() == 1 && e[0].name == "f"));
        let err = answer(FsRequest::Remove {
            path: format!("{d}/a"),
            mode: RemoveMode::EmptyDir,
        })
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::DirectoryNotEmpty);
        answer(FsRequest::Remove {
            path: d.clone(),
            mode: RemoveMode::Recursive,
        })
        .unwrap();
        assert!(!dir.exists());
    }
}
