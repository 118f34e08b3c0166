//! Encoding and decoding frames on byte buffers.
//!
//! The encoding is hand-written and canonical: every value has exactly one
//! encoding, so `encode(decode(bytes)) == bytes` for every accepted frame.
//! Decoding is total: on any input it returns a frame, "need more bytes", or
//! [`Error::AgentProtocol`](crate::Error::AgentProtocol); it never panics and
//! never allocates more than the input's size.

use super::protocol::*;
use super::{FRAME_HEADER_LEN, LENGTH_PREFIX_LEN, MAX_BODY_LEN, MAX_PAYLOAD_LEN};
use crate::Result;

// ---------------------------------------------------------------------------
// Decoding.

/// How many bytes the frame at the start of `buf` takes, length prefix
/// included, once its 4-byte length prefix is available.
///
/// `Ok(None)`: fewer than 4 bytes. Errors when the length is below the 5-byte
/// minimum or above [`MAX_BODY_LEN`], so a hostile length is refused before
/// anything is allocated for it.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix);
    if len < (FRAME_HEADER_LEN - LENGTH_PREFIX_LEN) as u32 {
        return Err(ProtocolErrorKind::FrameTooShort { len }.into());
    }
    if len > MAX_BODY_LEN {
        return Err(ProtocolErrorKind::FrameTooLarge {
            len: u64::from(len),
            max: MAX_BODY_LEN,
        }
        .into());
    }
    Ok(Some(LENGTH_PREFIX_LEN + len as usize))
}

/// Decodes the frame at the start of `buf`.
///
/// `Ok(Some((frame, used)))`: a frame of `used` bytes; `Ok(None)`: `buf` is a
/// strict prefix of a frame (need more bytes). Bytes after the frame are left
/// alone (they are the next frame).
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let kind = frame[4];
    let stream = u32::from_le_bytes([frame[5], frame[6], frame[7], frame[8]]);
    let frame = decode_body(kind, stream, &frame[FRAME_HEADER_LEN..])?;
    Ok(Some((frame, total)))
}

/// Decodes one frame from its kind byte, stream id and payload, which must
/// hold exactly the message (trailing bytes are an error).
pub fn decode_body(kind: u8, stream: u32, payload: &[u8]) -> Result<Frame> {
    let kind = MessageKind::from_u8(kind).ok_or(ProtocolErrorKind::UnknownKind { kind })?;
    check_stream(kind, stream)?;
    let mut r = Reader { buf: payload };
    let message = match kind {
        MessageKind::Hello => {
            let magic = *r.array::<4>("magic")?;
            if magic != MAGIC {
                return Err(ProtocolErrorKind::BadMagic { got: magic }.into());
            }
            Message::Hello(Hello {
                versions: VersionRange {
                    min: r.u16("min version")?,
                    max: r.u16("max version")?,
                },
                software: r.string("software version")?,
            })
        }
        MessageKind::Ready => Message::Ready(Ready {
            version: r.u16("version")?,
            agent_version: r.string("agent version")?,
            timings: r.list("boot timings", 12, |r| {
                Ok(BootTiming {
                    phase: r.string("boot phase")?,
                    micros: r.u64("boot micros")?,
                })
            })?,
        }),
        MessageKind::Shutdown => Message::Shutdown {
            grace_ms: r.u32("grace")?,
        },
        MessageKind::Ping => Message::Ping {
            nonce: r.u64("nonce")?,
        },
        MessageKind::Pong => Message::Pong {
            nonce: r.u64("nonce")?,
        },
        MessageKind::WindowUpdate => {
            let increment = r.u32("window increment")?;
            if increment == 0 || increment > super::MAX_WINDOW {
                return Err(ProtocolErrorKind::InvalidValue {
                    what: "window increment",
                }
                .into());
            }
            Message::WindowUpdate { increment }
        }
        MessageKind::Error => {
            let tag = r.u8("error kind")?;
            let kind = ErrorKind::from_u8(tag).ok_or(ProtocolErrorKind::InvalidTag {
                what: "error kind",
                tag,
            })?;
            Message::Error(RemoteError {
                kind,
                errno: r.i32("errno")?,
                message: r.string("error message")?,
            })
        }
        MessageKind::Reset => Message::Reset,
        MessageKind::ExecStart => {
            let argv = r.list("argv", 4, |r| r.string("argument"))?;
            if argv.is_empty() {
                return Err(ProtocolErrorKind::InvalidValue { what: "empty argv" }.into());
            }
            Message::ExecStart(ExecStart {
                argv,
                env: r.list("env", 8, |r| {
                    Ok((r.string("env name")?, r.string("env value")?))
                })?,
                cwd: r.option("cwd", |r| r.string("cwd"))?,
                user: r.option("user", |r| r.string("user"))?,
                tty: r.option("tty", Reader::tty_size)?,
                stdin: match r.u8("stdin mode")? {
                    0 => StdinMode::Null,
                    1 => StdinMode::Pipe,
                    tag => {
                        return Err(ProtocolErrorKind::InvalidTag {
                            what: "stdin mode",
                            tag,
                        }
                        .into());
                    }
                },
            })
        }
        MessageKind::ExecStarted => Message::ExecStarted { pid: r.u32("pid")? },
        MessageKind::Stdin => Message::Stdin(r.rest()),
        MessageKind::StdinClose => Message::StdinClose,
        MessageKind::Stdout => Message::Stdout(r.rest()),
        MessageKind::Stderr => Message::Stderr(r.rest()),
        MessageKind::Exited => Message::Exited(match r.u8("exit status")? {
            0 => ExitStatus::Code(r.i32("exit code")?),
            1 => ExitStatus::Signal {
                signal: r.i32("exit signal")?,
                core_dumped: r.bool("core dumped")?,
            },
            tag => {
                return Err(ProtocolErrorKind::InvalidTag {
                    what: "exit status",
                    tag,
                }
                .into());
            }
        }),
        MessageKind::Signal => Message::Signal {
            signal: r.i32("signal")?,
        },
        MessageKind::Kill => Message::Kill,
        MessageKind::Resize => Message::Resize(r.tty_size()?),
        MessageKind::StdinClosed => Message::StdinClosed,
        MessageKind::FsRequest => Message::FsRequest(r.fs_request()?),
        MessageKind::FileChunk => Message::FileChunk(r.rest()),
        MessageKind::FileEnd => Message::FileEnd,
        MessageKind::FsStat => Message::FsStat(r.metadata()?),
        MessageKind::FsDirEntries => Message::FsDirEntries(r.list("dir entries", 37, |r| {
            Ok(DirEntry {
                name: r.string("entry name")?,
                metadata: r.metadata()?,
            })
        })?),
        MessageKind::FsDone => Message::FsDone {
            bytes: r.u64("bytes")?,
        },
    };
    if !r.buf.is_empty() {
        return Err(ProtocolErrorKind::TrailingBytes {
            kind,
            extra: r.buf.len(),
        }
        .into());
    }
    Ok(Frame { stream, message })
}

fn check_stream(kind: MessageKind, stream: u32) -> Result<()> {
    let ok = match kind {
        MessageKind::Error => true,
        k if k.is_connection_level() => stream == CONNECTION_STREAM,
        _ => stream != CONNECTION_STREAM,
    };
    if ok {
        Ok(())
    } else {
        Err(ProtocolErrorKind::WrongStream { kind, stream }.into())
    }
}

/// A cursor over a payload. Every read checks the remaining length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(ProtocolErrorKind::Truncated { what }.into());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<&'a [u8; N]> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(ProtocolErrorKind::Truncated { what })?;
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(*self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(*self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(*self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_le_bytes(*self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(i64::from_le_bytes(*self.array(what)?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(ProtocolErrorKind::InvalidTag { what, tag }.into()),
        }
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let len = self.u32(what)?;
        // A length beyond the payload fails in `take`, before any allocation.
        let bytes = self.take(len as usize, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolErrorKind::InvalidUtf8 { what }.into())
    }

    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf).to_vec()
    }

    fn option<T>(
        &mut self,
        what: &'static str,
        item: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => item(self).map(Some),
            tag => Err(ProtocolErrorKind::InvalidTag { what, tag }.into()),
        }
    }

    /// A `u32` count, then the items. `min_item` is the smallest encoding of
    /// one item: the capacity reserved never exceeds what the remaining bytes
    /// could hold, so a hostile count allocates nothing.
    fn list<T>(
        &mut self,
        what: &'static str,
        min_item: usize,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let count = self.u32(what)? as usize;
        if count > self.buf.len() / min_item {
            return Err(ProtocolErrorKind::Truncated { what }.into());
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn tty_size(&mut self) -> Result<TtySize> {
        Ok(TtySize {
            rows: self.u16("tty rows")?,
            cols: self.u16("tty cols")?,
        })
    }

    fn metadata(&mut self) -> Result<Metadata> {
        let tag = self.u8("file type")?;
        let file_type = match tag {
            0 => FileType::File,
            1 => FileType::Dir,
            2 => FileType::Symlink,
            3 => FileType::BlockDevice,
            4 => FileType::CharDevice,
            5 => FileType::Fifo,
            6 => FileType::Socket,
            tag => {
                return Err(ProtocolErrorKind::InvalidTag {
                    what: "file type",
                    tag,
                }
                .into());
            }
        };
        let metadata = Metadata {
            file_type,
            size: self.u64("size")?,
            mode: self.u32("mode")?,
            uid: self.u32("uid")?,
            gid: self.u32("gid")?,
            mtime_secs: self.i64("mtime seconds")?,
            mtime_nanos: self.u32("mtime nanoseconds")?,
        };
        if metadata.mtime_nanos >= 1_000_000_000 {
            return Err(ProtocolErrorKind::InvalidValue {
                what: "mtime nanoseconds",
            }
            .into());
        }
        Ok(metadata)
    }

    fn fs_request(&mut self) -> Result<FsRequest> {
        Ok(match self.u8("fs operation")? {
            0 => FsRequest::Read {
                path: self.string("path")?,
                offset: self.u64("offset")?,
                len: self.option("length", |r| r.u64("length"))?,
            },
            1 => FsRequest::Write {
                path: self.string("path")?,
                mode: match self.u8("write mode")? {
                    0 => WriteMode::Truncate,
                    1 => WriteMode::Append,
                    2 => WriteMode::CreateNew,
                    tag => {
                        return Err(ProtocolErrorKind::InvalidTag {
                            what: "write mode",
                            tag,
                        }
                        .into());
                    }
                },
                perm: self.u32("permissions")?,
            },
            2 => FsRequest::Stat {
                path: self.string("path")?,
                follow_symlinks: self.bool("follow symlinks")?,
            },
            3 => FsRequest::List {
                path: self.string("path")?,
            },
            4 => FsRequest::Mkdir {
                path: self.string("path")?,
                recursive: self.bool("recursive")?,
                perm: self.u32("permissions")?,
            },
            5 => FsRequest::Remove {
                path: self.string("path")?,
                mode: match self.u8("remove mode")? {
                    0 => RemoveMode::File,
                    1 => RemoveMode::EmptyDir,
                    2 => RemoveMode::Recursive,
                    tag => {
                        return Err(ProtocolErrorKind::InvalidTag {
                            what: "remove mode",
                            tag,
                        }
                        .into());
                    }
                },
            },
            6 => FsRequest::Rename {
                from: self.string("source path")?,
                to: self.string("destination path")?,
            },
            7 => FsRequest::Copy {
                from: self.string("source path")?,
                to: self.string("destination path")?,
            },
            tag => {
                return Err(ProtocolErrorKind::InvalidTag {
                    what: "fs operation",
                    tag,
                }
                .into());
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Encoding.

/// Appends the encoding of `frame` to `out`.
///
/// Refuses (leaving `out` as it was) a frame the decoder would refuse: a
/// payload over [`MAX_PAYLOAD_LEN`], a message on the wrong stream, an empty
/// argv, a zero window increment, nanoseconds ≥ 1e9.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let result = encode_unchecked(frame, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_unchecked(frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
    let kind = frame.message.kind();
    check_stream(kind, frame.stream)?;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    put_u32(out, frame.stream);
    encode_payload(&frame.message, out)?;
    let payload = out.len() - start - FRAME_HEADER_LEN;
    if payload > MAX_PAYLOAD_LEN as usize {
        return Err(ProtocolErrorKind::FrameTooLarge {
            len: (payload + FRAME_HEADER_LEN - LENGTH_PREFIX_LEN) as u64,
            max: MAX_BODY_LEN,
        }
        .into());
    }
    let len = (payload + FRAME_HEADER_LEN - LENGTH_PREFIX_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The 9-byte header of a data frame (`Stdin`, `Stdout`, `Stderr`,
/// `FileChunk`) whose payload is `len` raw bytes, for writers that send the
/// data from their own buffer instead of building a [`Message`].
pub fn data_header(kind: MessageKind, stream: u32, len: usize) -> Result<[u8; FRAME_HEADER_LEN]> {
    if !matches!(
        kind,
        MessageKind::Stdin | MessageKind::Stdout | MessageKind::Stderr | MessageKind::FileChunk
    ) {
        return Err(ProtocolErrorKind::UnexpectedMessage {
            expected: "a data kind",
            got: kind,
        }
        .into());
    }
    check_stream(kind, stream)?;
    if len > MAX_PAYLOAD_LEN as usize {
        return Err(ProtocolErrorKind::FrameTooLarge {
            len: (len + FRAME_HEADER_LEN - LENGTH_PREFIX_LEN) as u64,
            max: MAX_BODY_LEN,
        }
        .into());
    }
    let mut header = [0; FRAME_HEADER_LEN];
    header[..4]
        .copy_from_slice(&((len + FRAME_HEADER_LEN - LENGTH_PREFIX_LEN) as u32).to_le_bytes());
    header[4] = kind as u8;
    header[5..].copy_from_slice(&stream.to_le_bytes());
    Ok(header)
}

fn encode_payload(message: &Message, out: &mut Vec<u8>) -> Result<()> {
    match message {
        Message::Hello(h) => {
            out.extend_from_slice(&MAGIC);
            put_u16(out, h.versions.min);
            put_u16(out, h.versions.max);
            put_str(out, &h.software);
        }
        Message::Ready(r) => {
            put_u16(out, r.version);
            put_str(out, &r.agent_version);
            put_u32(out, r.timings.len() as u32);
            for t in &r.timings {
                put_str(out, &t.phase);
                put_u64(out, t.micros);
            }
        }
        Message::Shutdown { grace_ms } => put_u32(out, *grace_ms),
        Message::Ping { nonce } | Message::Pong { nonce } => put_u64(out, *nonce),
        Message::WindowUpdate { increment } => {
            if *increment == 0 || *increment > super::MAX_WINDOW {
                return Err(ProtocolErrorKind::InvalidValue {
                    what: "window increment",
                }
                .into());
            }
            put_u32(out, *increment);
        }
        Message::Error(e) => {
            out.push(e.kind as u8);
            put_i32(out, e.errno);
            put_str(out, &e.message);
        }
        Message::Reset
        | Message::StdinClose
        | Message::Kill
        | Message::StdinClosed
        | Message::FileEnd => {}
        Message::ExecStart(x) => {
            if x.argv.is_empty() {
                return Err(ProtocolErrorKind::InvalidValue { what: "empty argv" }.into());
            }
            put_u32(out, x.argv.len() as u32);
            for a in &x.argv {
                put_str(out, a);
            }
            put_u32(out, x.env.len() as u32);
            for (k, v) in &x.env {
                put_str(out, k);
                put_str(out, v);
            }
            put_opt(out, x.cwd.as_deref(), put_str);
            put_opt(out, x.user.as_deref(), put_str);
            put_opt(out, x.tty, put_tty);
            out.push(x.stdin as u8);
        }
        Message::ExecStarted { pid } => put_u32(out, *pid),
        Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) | Message::FileChunk(b) => {
            if b.len() > MAX_PAYLOAD_LEN as usize {
                // Refuse before copying a huge buffer.
                return Err(ProtocolErrorKind::FrameTooLarge {
                    len: (b.len() + FRAME_HEADER_LEN - LENGTH_PREFIX_LEN) as u64,
                    max: MAX_BODY_LEN,
                }
                .into());
            }
            out.extend_from_slice(b);
        }
        Message::Exited(ExitStatus::Code(code)) => {
            out.push(0);
            put_i32(out, *code);
        }
        Message::Exited(ExitStatus::Signal {
            signal,
            core_dumped,
        }) => {
            out.push(1);
            put_i32(out, *signal);
            out.push(u8::from(*core_dumped));
        }
        Message::Signal { signal } => put_i32(out, *signal),
        Message::Resize(size) => put_tty(out, *size),
        Message::FsRequest(req) => put_fs_request(out, req),
        Message::FsStat(m) => put_metadata(out, m)?,
        Message::FsDirEntries(entries) => {
            put_u32(out, entries.len() as u32);
            for e in entries {
                put_str(out, &e.name);
                put_metadata(out, &e.metadata)?;
            }
        }
        Message::FsDone { bytes } => put_u64(out, *bytes),
    }
    Ok(())
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // A string over 4 GiB cannot fit a frame; the length would wrap, but the
    // frame-size check after the payload refuses the frame anyway.
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

fn put_tty(out: &mut Vec<u8>, size: TtySize) {
    put_u16(out, size.rows);
    put_u16(out, size.cols);
}

fn put_metadata(out: &mut Vec<u8>, m: &Metadata) -> Result<()> {
    if m.mtime_nanos >= 1_000_000_000 {
        return Err(ProtocolErrorKind::InvalidValue {
            what: "mtime nanoseconds",
        }
        .into());
    }
    out.push(m.file_type as u8);
    put_u64(out, m.size);
    put_u32(out, m.mode);
    put_u32(out, m.uid);
    put_u32(out, m.gid);
    out.extend_from_slice(&m.mtime_secs.to_le_bytes());
    put_u32(out, m.mtime_nanos);
    Ok(())
}

fn put_fs_request(out: &mut Vec<u8>, req: &FsRequest) {
    match req {
        FsRequest::Read { path, offset, len } => {
            out.push(0);
            put_str(out, path);
            put_u64(out, *offset);
            put_opt(out, *len, put_u64);
        }
        FsRequest::Write { path, mode, perm } => {
            out.push(1);
            put_str(out, path);
            out.push(*mode as u8);
            put_u32(out, *perm);
        }
        FsRequest::Stat {
            path,
            follow_symlinks,
        } => {
            out.push(2);
            put_str(out, path);
            out.push(u8::from(*follow_symlinks));
        }
        FsRequest::List { path } => {
            out.push(3);
            put_str(out, path);
        }
        FsRequest::Mkdir {
            path,
            recursive,
            perm,
        } => {
            out.push(4);
            put_str(out, path);
            out.push(u8::from(*recursive));
            put_u32(out, *perm);
        }
        FsRequest::Remove { path, mode } => {
            out.push(5);
            put_str(out, path);
            out.push(*mode as u8);
        }
        FsRequest::Rename { from, to } => {
            out.push(6);
            put_str(out, from);
            put_str(out, to);
        }
        FsRequest::Copy { from, to } => {
            out.push(7);
            put_str(out, from);
            put_str(out, to);
        }
    }
}
