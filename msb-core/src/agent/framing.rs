//! Reading and writing frames over async byte streams.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::LENGTH_PREFIX_LEN;
use super::codec::{data_header, decode_frame, encode_frame, frame_len};
use super::protocol::{Frame, MessageKind, ProtocolErrorKind};
use crate::{Error, Result};

/// How much the reader asks the OS for at least, per read.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames from any [`AsyncRead`] (a Unix socket, one half of a
/// socketpair, a vsock stream).
///
/// Reads are buffered: small frames arriving together cost one read. Partial
/// reads are handled; a frame's length is checked as soon as its 4-byte
/// prefix arrives, so the buffer never grows past the largest legal frame.
///
/// [`read_frame`](Self::read_frame) is cancel-safe: all progress lives in the
/// reader, so dropping the future (e.g. in `tokio::select!`) loses no bytes.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// The next frame; `Ok(None)` when the peer closed the stream cleanly
    /// between frames.
    ///
    /// Errors: [`Error::AgentProtocol`] for an invalid frame, or
    /// [`ProtocolErrorKind::TruncatedFrame`] when the stream ends mid-frame;
    /// [`Error::AgentIo`] when reading fails.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some((frame, used)) = decode_frame(pending)? {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(Some(frame));
            }
            // Need more: the whole frame if its length is known, else the prefix.
            let needed = frame_len(pending)?.unwrap_or(LENGTH_PREFIX_LEN);
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // `needed` is bounded by the maximum frame size (checked above).
            let want = needed.max(self.end + READ_CHUNK);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let n = self
                .inner
                .read(&mut self.buf[self.end..])
                .await
                .map_err(|source| Error::AgentIo {
                    op: "read frame",
                    source,
                })?;
            if n == 0 {
                if self.end == 0 {
                    return Ok(None);
                }
                return Err(ProtocolErrorKind::TruncatedFrame {
                    got: self.end,
                    expected: needed,
                }
                .into());
            }
            self.end += n;
        }
    }

    /// The next frame, treating a clean end of stream as an error
    /// ([`ProtocolErrorKind::ConnectionClosed`]) naming what was awaited.
    pub async fn expect_frame(&mut self, awaiting: &'static str) -> Result<Frame> {
        self.read_frame()
            .await?
            .ok_or_else(|| ProtocolErrorKind::ConnectionClosed { awaiting }.into())
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream; bytes already buffered are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Queued frame bytes beyond which [`FrameWriter::feed`] writes without
/// waiting for a flush.
pub const WRITE_BATCH: usize = 256 * 1024;

/// Writes frames to any [`AsyncWrite`].
///
/// Not cancel-safe: dropping a write future midway leaves a partial frame on
/// the stream, after which the connection must be abandoned. Run the writer in
/// one task fed by a channel when writes must be raced against other events.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer over `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// Writes `frame` and flushes.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<()> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Queues `frame` without writing it; [`flush`](Self::flush) writes the
    /// batch in one go (queued bytes beyond [`WRITE_BATCH`] are written
    /// early, so memory stays bounded).
    pub async fn feed(&mut self, frame: &Frame) -> Result<()> {
        encode_frame(frame, &mut self.buf)?;
        self.write_if_full().await
    }

    /// Queues a data frame (`Stdin`, `Stdout`, `Stderr`, `FileChunk`) straight
    /// from `data`, without building a [`Message`](super::Message). `data`
    /// must be at most [`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN) bytes.
    pub async fn feed_data(&mut self, kind: MessageKind, stream: u32, data: &[u8]) -> Result<()> {
        let header = data_header(kind, stream, data.len())?;
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(data);
        self.write_if_full().await
    }

    /// [`feed_data`](Self::feed_data), then [`flush`](Self::flush).
    pub async fn write_data(&mut self, kind: MessageKind, stream: u32, data: &[u8]) -> Result<()> {
        self.feed_data(kind, stream, data).await?;
        self.flush().await
    }

    /// Writes everything queued (one write for the whole batch: header and
    /// payload of a frame never go out as separate system calls) and
    /// flushes the underlying stream.
    pub async fn flush(&mut self) -> Result<()> {
        self.write_queued().await?;
        self.inner.flush().await.map_err(|source| Error::AgentIo {
            op: "flush",
            source,
        })
    }

    async fn write_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_BATCH {
            self.write_queued().await?;
        }
        Ok(())
    }

    async fn write_queued(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner
            .write_all(&self.buf)
            .await
            .map_err(|source| Error::AgentIo {
                op: "write frame",
                source,
            })?;
        self.buf.clear();
        // Don't keep a large buffer around after one large frame.
        if self.buf.capacity() > 2 * WRITE_BATCH {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Shuts down the write side (the peer reads a clean end of stream).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.inner
            .shutdown()
            .await
            .map_err(|source| Error::AgentIo {
                op: "shut down",
                source,
            })
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}
