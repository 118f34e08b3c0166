//! The host's side of file operations: [`FsRequest`]s on an
//! [`AgentConnection`], with file content streamed under flow control both
//! ways.
//!
//! Each operation uses a fresh stream of the connection and runs to its
//! end before the call returns, except [`FileReadStream`], which owns its
//! connection and hands out the content chunk by chunk. A refusal by the
//! agent is [`Error::AgentRefused`] with the guest's typed
//! [`ErrorKind`](crate::agent::ErrorKind) and errno.
//!
//! ```no_run
//! # async fn demo(socket: &std::path::Path) -> msb_core::Result<()> {
//! use msb_core::agent::WriteMode;
//! use msb_core::sandbox::client::AgentConnection;
//!
//! let mut conn = AgentConnection::connect(socket).await?;
//! conn.write_file("/tmp/hello", WriteMode::Truncate, 0o644, &mut &b"hi"[..])
//!     .await?;
//! assert_eq!(conn.read_file("/tmp/hello").await?, b"hi");
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::client::AgentConnection;
use crate::agent::{
    DirEntry, Frame, FrameReader, FrameWriter, FsRequest, MAX_PAYLOAD_LEN, Message, MessageKind,
    Metadata, ProtocolErrorKind, RecvWindow, RemoteError, RemoveMode, SendWindow, WriteMode,
};
use crate::{Error, Result};

/// The most bytes of file content sent in one frame.
const CHUNK: usize = MAX_PAYLOAD_LEN as usize / 2;

/// The error for a refusal from the agent.
fn refused(e: RemoteError) -> Error {
    Error::AgentRefused {
        kind: e.kind,
        errno: e.errno,
        message: e.message,
    }
}

/// The error for a message the protocol does not allow here.
fn unexpected(expected: &'static str, got: &Message) -> Error {
    ProtocolErrorKind::UnexpectedMessage {
        expected,
        got: got.kind(),
    }
    .into()
}

/// The next message on `stream`, skipping frames of other streams.
async fn next_on(reader: &mut FrameReader<OwnedReadHalf>, stream: u32) -> Result<Message> {
    loop {
        let frame = reader.expect_frame("a file operation's answer").await?;
        if frame.stream == stream {
            return Ok(frame.message);
        }
    }
}

/// The next chunk of a `Read` on `stream`, `None` at `FileEnd`; returns the
/// chunk's credit to the agent.
async fn next_chunk(
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut FrameWriter<OwnedWriteHalf>,
    stream: u32,
    window: &mut RecvWindow,
) -> Result<Option<Vec<u8>>> {
    loop {
        match next_on(reader, stream).await? {
            Message::FileChunk(data) => {
                window.on_data(stream, data.len())?;
                if let Some(increment) = window.on_consumed(data.len()) {
                    writer
                        .write_frame(&Frame::new(stream, Message::WindowUpdate { increment }))
                        .await?;
                }
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(data));
            }
            Message::FileEnd => return Ok(None),
            Message::Error(e) => return Err(refused(e)),
            other => return Err(unexpected("FileChunk or FileEnd", &other)),
        }
    }
}

impl AgentConnection {
    /// Sends `request` on a fresh stream and returns the stream.
    async fn request(&mut self, request: FsRequest) -> Result<u32> {
        let stream = self.new_stream_id();
        let (_, writer) = self.io_mut();
        writer
            .write_frame(&Frame::new(stream, Message::FsRequest(request)))
            .await?;
        Ok(stream)
    }

    /// Sends `request` and waits for its `FsDone`.
    async fn request_done(&mut self, request: FsRequest) -> Result<u64> {
        let stream = self.request(request).await?;
        let (reader, _) = self.io_mut();
        match next_on(reader, stream).await? {
            Message::FsDone { bytes } => Ok(bytes),
            Message::Error(e) => Err(refused(e)),
            other => Err(unexpected("FsDone", &other)),
        }
    }

    /// Reads the whole file at `path` (absolute, inside the sandbox).
    pub async fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let mut content = Vec::new();
        self.read_file_to(path, 0, None, &mut content).await?;
        Ok(content)
    }

    /// Copies `len` bytes (to the end when `None`) of the file at `path`,
    /// from `offset`, into `sink`; returns how many. Credit goes back to the
    /// agent only as `sink` takes the content, so a slow sink slows the
    /// transfer instead of buffering it.
    pub async fn read_file_to<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        path: &str,
        offset: u64,
        len: Option<u64>,
        sink: &mut W,
    ) -> Result<u64> {
        let stream = self
            .request(FsRequest::Read {
                path: path.to_owned(),
                offset,
                len,
            })
            .await?;
        let mut window = RecvWindow::new();
        let mut total = 0u64;
        loop {
            let (reader, writer) = self.io_mut();
            let Some(chunk) = next_chunk(reader, writer, stream, &mut window).await? else {
                break;
            };
            if let Err(source) = sink.write_all(&chunk).await {
                let _ = writer
                    .write_frame(&Frame::new(stream, Message::Reset))
                    .await;
                return Err(Error::Io {
                    op: "write the content of",
                    path: PathBuf::from(path),
                    source,
                });
            }
            total += chunk.len() as u64;
        }
        if let Err(source) = sink.flush().await {
            return Err(Error::Io {
                op: "write the content of",
                path: PathBuf::from(path),
                source,
            });
        }
        Ok(total)
    }

    /// Writes everything `source` yields to the file at `path`, opened per
    /// `mode` (created with permission bits `perm`); returns the bytes
    /// written. Content is sent only against the agent's credit, which it
    /// returns as the bytes reach the file.
    pub async fn write_file<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        path: &str,
        mode: WriteMode,
        perm: u32,
        source: &mut R,
    ) -> Result<u64> {
        let stream = self
            .request(FsRequest::Write {
                path: path.to_owned(),
                mode,
                perm,
            })
            .await?;
        let (reader, writer) = self.io_mut();
        let mut window = SendWindow::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            // Out of credit: wait for the agent (or its refusal).
            while window.sendable(CHUNK) == 0 {
                match next_on(reader, stream).await? {
                    Message::WindowUpdate { increment } => window.grant(stream, increment)?,
                    Message::Error(e) => return Err(refused(e)),
                    other => return Err(unexpected("WindowUpdate", &other)),
                }
            }
            let want = window.sendable(CHUNK);
            let n = match source.read(&mut buf[..want]).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    let _ = writer
                        .write_frame(&Frame::new(stream, Message::Reset))
                        .await;
                    return Err(Error::Io {
                        op: "read the content for",
                        path: PathBuf::from(path),
                        source,
                    });
                }
            };
            window.consume(n);
            writer
                .write_data(MessageKind::FileChunk, stream, &buf[..n])
                .await?;
        }
        writer
            .write_frame(&Frame::new(stream, Message::FileEnd))
            .await?;
        loop {
            match next_on(reader, stream).await? {
                Message::WindowUpdate { .. } => {}
                Message::FsDone { bytes } => return Ok(bytes),
                Message::Error(e) => return Err(refused(e)),
                other => return Err(unexpected("FsDone", &other)),
            }
        }
    }

    /// The metadata of `path`; of a symlink's target when `follow_symlinks`.
    pub async fn stat(&mut self, path: &str, follow_symlinks: bool) -> Result<Metadata> {
        let stream = self
            .request(FsRequest::Stat {
                path: path.to_owned(),
                follow_symlinks,
            })
            .await?;
        let (reader, _) = self.io_mut();
        match next_on(reader, stream).await? {
            Message::FsStat(meta) => Ok(meta),
            Message::Error(e) => Err(refused(e)),
            other => Err(unexpected("FsStat", &other)),
        }
    }

    /// The entries of the directory `path` (without `.` and `..`), in the
    /// directory's order.
    pub async fn list(&mut self, path: &str) -> Result<Vec<DirEntry>> {
        let stream = self
            .request(FsRequest::List {
                path: path.to_owned(),
            })
            .await?;
        let (reader, _) = self.io_mut();
        let mut entries = Vec::new();
        loop {
            match next_on(reader, stream).await? {
                Message::FsDirEntries(batch) => entries.extend(batch),
                Message::FsDone { .. } => return Ok(entries),
                Message::Error(e) => return Err(refused(e)),
                other => return Err(unexpected("FsDirEntries or FsDone", &other)),
            }
        }
    }

    /// Creates the directory `path` with permission bits `perm`; with
    /// `recursive`, its missing parents too, and an existing directory is
    /// fine.
    pub async fn mkdir(&mut self, path: &str, recursive: bool, perm: u32) -> Result<()> {
        self.request_done(FsRequest::Mkdir {
            path: path.to_owned(),
            recursive,
            perm,
        })
        .await
        .map(drop)
    }

    /// Removes `path` as `mode` allows; [`RemoveMode::Recursive`] never
    /// follows symlinks.
    pub async fn remove(&mut self, path: &str, mode: RemoveMode) -> Result<()> {
        self.request_done(FsRequest::Remove {
            path: path.to_owned(),
            mode,
        })
        .await
        .map(drop)
    }

    /// Renames `from` to `to`.
    pub async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.request_done(FsRequest::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Copies the file `from` to `to` (content and permission bits,
    /// replacing `to`); returns the bytes copied.
    pub async fn copy(&mut self, from: &str, to: &str) -> Result<u64> {
        self.request_done(FsRequest::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
        })
        .await
    }
}

/// A file being read chunk by chunk, on a connection of its own.
///
/// Credit goes back to the agent as chunks are taken, so an idle reader
/// holds at most one window of content in flight.
#[derive(Debug)]
pub struct FileReadStream {
    conn: AgentConnection,
    stream: u32,
    window: RecvWindow,
    done: bool,
}

impl FileReadStream {
    /// Starts reading `len` bytes (to the end when `None`) of `path` from
    /// `offset` on `conn`, which the stream then owns.
    pub async fn open(
        mut conn: AgentConnection,
        path: &str,
        offset: u64,
        len: Option<u64>,
    ) -> Result<FileReadStream> {
        let stream = conn
            .request(FsRequest::Read {
                path: path.to_owned(),
                offset,
                len,
            })
            .await?;
        Ok(FileReadStream {
            conn,
            stream,
            window: RecvWindow::new(),
            done: false,
        })
    }

    /// The next chunk; `None` once the whole file (range) was read. A
    /// refusal (the file is missing, a directory, ...) comes on the first
    /// call.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let (reader, writer) = self.conn.io_mut();
        let chunk = next_chunk(reader, writer, self.stream, &mut self.window).await;
        if !matches!(chunk, Ok(Some(_))) {
            self.done = true;
        }
        chunk
    }
}
