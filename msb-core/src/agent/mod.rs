//! The guest agent protocol: how the host talks to the agent that runs as
//! PID 1 inside every sandbox.
//!
//! The channel is one reliable byte stream: a vsock port mapped to a Unix
//! socket in the sandbox's state dir for microVMs, a Unix socket or
//! socketpair for namespace sandboxes. Everything (handshake, every exec,
//! every file operation) is multiplexed over it as frames.
//!
//! - [`protocol`](self#messages): the messages as Rust values ([`Frame`],
//!   [`Message`], ...);
//! - [`codec`]: encoding and decoding on byte buffers;
//! - [`framing`]: [`FrameReader`] and [`FrameWriter`] over tokio streams;
//! - [`flow`]: per-stream credit accounting ([`SendWindow`], [`RecvWindow`]);
//! - [`handshake`]: [`host_handshake`] and [`agent_handshake`].
//!
//! # Frames
//!
//! ```text
//! +----------------+---------+------------------+-------------------+
//! | length: u32 LE | kind:u8 | stream: u32 LE   | payload           |
//! +----------------+---------+------------------+-------------------+
//!   4 bytes          \______ `length` bytes (5 + payload length) ___/
//! ```
//!
//! - `length` counts everything after itself; it is at least 5 and at most
//!   [`MAX_BODY_LEN`] (5 + 1 MiB). A length outside that range is refused as
//!   soon as its 4 bytes arrive ([`ProtocolErrorKind::FrameTooShort`],
//!   [`ProtocolErrorKind::FrameTooLarge`]), before anything is allocated.
//! - `kind` is a [`MessageKind`]; an unknown kind is refused
//!   ([`ProtocolErrorKind::UnknownKind`]).
//! - `stream` is 0 for connection-level messages (`Hello`, `Ready`,
//!   `Shutdown`, `Ping`, `Pong`, and `Error` when connection-fatal) and
//!   nonzero for everything else ([`ProtocolErrorKind::WrongStream`]).
//! - The payload must be exactly the message: bytes left after the last field
//!   are refused ([`ProtocolErrorKind::TrailingBytes`]).
//!
//! The frame header and the `Hello` payload are frozen for all protocol
//! versions, so any two versions can at least negotiate and refuse cleanly.
//!
//! # Field encodings
//!
//! | type        | encoding                                                      |
//! |-------------|---------------------------------------------------------------|
//! | `u8`..`u64`, `i32`, `i64` | fixed width, little-endian                      |
//! | `bool`      | `u8`, 0 or 1 (anything else refused)                          |
//! | `str`       | `u32` byte length, then UTF-8 bytes (invalid UTF-8 refused)   |
//! | `opt<T>`    | `u8` 0 (none) or 1 followed by `T`                            |
//! | `list<T>`   | `u32` count, then the items                                   |
//! | `rest`      | raw bytes up to the end of the payload                        |
//! | enums       | `u8` tag (undefined tags refused)                             |
//!
//! Every value has exactly one encoding, so decoding then encoding an
//! accepted frame reproduces its bytes. Lengths and counts are checked
//! against the bytes actually left in the payload before anything is
//! allocated.
//!
//! # Messages
//!
//! Direction: H→A host to agent, A→H agent to host.
//!
//! | code | kind           | dir  | stream | payload |
//! |------|----------------|------|--------|---------|
//! | 0x01 | `Hello`        | both | 0      | `magic: [u8;4] = "MSBA"`, `min_version: u16`, `max_version: u16`, `software: str` |
//! | 0x02 | `Ready`        | A→H  | 0      | `version: u16`, `agent_version: str`, `timings: list<{phase: str, micros: u64}>` |
//! | 0x03 | `Shutdown`     | H→A  | 0      | `grace_ms: u32` |
//! | 0x04 | `Ping`         | both | 0      | `nonce: u64` |
//! | 0x05 | `Pong`         | both | 0      | `nonce: u64` |
//! | 0x08 | `WindowUpdate` | both | ≠0     | `increment: u32` (1..=2³¹−1) |
//! | 0x09 | `Error`        | both | any    | `kind: u8` ([`ErrorKind`]), `errno: i32` (0 = none), `message: str` |
//! | 0x0A | `Reset`        | both | ≠0     | empty |
//! | 0x10 | `ExecStart`    | H→A  | ≠0     | `argv: list<str>` (non-empty), `env: list<{name: str, value: str}>`, `cwd: opt<str>`, `user: opt<str>`, `tty: opt<{rows: u16, cols: u16}>`, `stdin: u8` (0 null, 1 pipe) |
//! | 0x11 | `ExecStarted`  | A→H  | ≠0     | `pid: u32` |
//! | 0x12 | `Stdin`        | H→A  | ≠0     | `rest` (flow-controlled) |
//! | 0x13 | `StdinClose`   | H→A  | ≠0     | empty |
//! | 0x14 | `Stdout`       | A→H  | ≠0     | `rest` (flow-controlled) |
//! | 0x15 | `Stderr`       | A→H  | ≠0     | `rest` (flow-controlled) |
//! | 0x16 | `Exited`       | A→H  | ≠0     | `tag: u8`: 0 → `code: i32`; 1 → `signal: i32`, `core_dumped: bool` |
//! | 0x17 | `Signal`       | H→A  | ≠0     | `signal: i32` |
//! | 0x18 | `Kill`         | H→A  | ≠0     | empty |
//! | 0x19 | `Resize`       | H→A  | ≠0     | `rows: u16`, `cols: u16` |
//! | 0x1A | `StdinClosed`  | A→H  | ≠0     | empty |
//! | 0x20 | `FsRequest`    | H→A  | ≠0     | `op: u8`, then per op (below) |
//! | 0x21 | `FileChunk`    | both | ≠0     | `rest` (flow-controlled) |
//! | 0x22 | `FileEnd`      | both | ≠0     | empty |
//! | 0x23 | `FsStat`       | A→H  | ≠0     | metadata (below) |
//! | 0x24 | `FsDirEntries` | A→H  | ≠0     | `list<{name: str, metadata}>` |
//! | 0x25 | `FsDone`       | A→H  | ≠0     | `bytes: u64` |
//!
//! `FsRequest` operations:
//!
//! | op | request | fields | answer |
//! |----|---------|--------|--------|
//! | 0 | `Read`   | `path: str`, `offset: u64`, `len: opt<u64>` | `FileChunk`*, `FileEnd` |
//! | 1 | `Write`  | `path: str`, `mode: u8` (0 truncate, 1 append, 2 create-new), `perm: u32` | host sends `FileChunk`*, `FileEnd`; agent answers `FsDone{bytes}` |
//! | 2 | `Stat`   | `path: str`, `follow_symlinks: bool` | `FsStat` |
//! | 3 | `List`   | `path: str` | `FsDirEntries`*, `FsDone{0}` |
//! | 4 | `Mkdir`  | `path: str`, `recursive: bool`, `perm: u32` | `FsDone{0}` |
//! | 5 | `Remove` | `path: str`, `mode: u8` (0 file, 1 empty dir, 2 recursive) | `FsDone{0}` |
//! | 6 | `Rename` | `from: str`, `to: str` | `FsDone{0}` |
//! | 7 | `Copy`   | `from: str`, `to: str` | `FsDone{bytes}` |
//!
//! Metadata: `file_type: u8` (0 file, 1 dir, 2 symlink, 3 block device,
//! 4 char device, 5 fifo, 6 socket), `size: u64`, `mode: u32`, `uid: u32`,
//! `gid: u32`, `mtime_secs: i64`, `mtime_nanos: u32` (< 10⁹).
//!
//! Any request may instead be answered by `Error` (typed [`ErrorKind`]: not
//! found, permission denied, not executable, bad cwd, is a directory, ...),
//! which ends the stream.
//!
//! # Connection lifecycle
//!
//! 1. **Handshake.** Each side sends `Hello` first, without waiting. Each
//!    picks the highest version in both ranges; with none, both refuse
//!    ([`Error::AgentVersionMismatch`](crate::Error::AgentVersionMismatch)),
//!    the agent sending `Error{IncompatibleVersion}` on stream 0 before
//!    closing. Otherwise the agent sends `Ready` with that version, its
//!    version string and its boot timings. See [`handshake`].
//! 2. **Requests.** The host opens a stream by sending `ExecStart` or
//!    `FsRequest` on a fresh stream id: ids are chosen by the host only,
//!    nonzero, and never reused on a connection (an id in use is answered
//!    `Error{StreamInUse}`). A stream ends with `Exited`, `FsDone`,
//!    `FileEnd` (for `Read`), `Error`, or `Reset` from either side. Frames for
//!    an unknown or ended stream are ignored (they may cross a `Reset`).
//! 3. **Exec streams.** `ExecStart` → `ExecStarted{pid}` (or `Error` with
//!    `NotFound`, `PermissionDenied`, `NotExecutable`, `BadCwd`,
//!    `NoSuchUser`, ...), then any interleaving of `Stdout`/`Stderr` (A→H)
//!    and `Stdin`/`StdinClose`/`Signal`/`Kill`/`Resize` (H→A); the agent sends
//!    `StdinClosed` if the process stops reading stdin (the host reports a
//!    non-fatal stdin error and stops sending), and `Exited` last, after all
//!    output.
//! 4. **Shutdown.** `Shutdown{grace_ms}` on stream 0: the agent SIGTERMs every
//!    process, SIGKILLs survivors after the grace period, syncs and powers
//!    off; the host sees the connection end.
//!
//! # Flow control
//!
//! Each stream has its own credit window in each direction, starting at
//! [`INITIAL_WINDOW`] bytes. Only the payload bytes of `Stdin`, `Stdout`,
//! `Stderr` and `FileChunk` count. A sender never sends more than its credit
//! on a stream; the receiver returns credit with `WindowUpdate` as its
//! consumer takes data (batched at half a window, see [`RecvWindow`]).
//! Exceeding the credit, or growing it past [`MAX_WINDOW`], is a protocol
//! violation. Because credit is per stream, a slow reader stalls only its own
//! stream; control frames are never blocked by data.
//!
//! # Robustness
//!
//! Decoding never panics on any input and never allocates more than the
//! bytes received. The tests include a deterministic fuzz loop over random
//! bytes and mutated valid frames; run it longer with
//! `MSB_FUZZ_ITERS=5000000 cargo test -p msb-core --release agent::tests::fuzz`.

pub mod codec;
pub mod flow;
pub mod framing;
pub mod handshake;
mod protocol;

pub use flow::{RecvWindow, SendWindow};
pub use framing::{FrameReader, FrameWriter};
pub use handshake::{agent_handshake, host_handshake};
pub use protocol::*;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of a frame header: length, kind, stream id.
pub const FRAME_HEADER_LEN: usize = 9;
/// The most bytes a frame's payload may have (1 MiB); also the largest data
/// chunk.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 20;
/// The largest value of a frame's length field: kind, stream id and payload.
pub const MAX_BODY_LEN: u32 = 5 + MAX_PAYLOAD_LEN;
/// The credit each stream starts with, in each direction (4 MiB: several
/// maximum-size frames in flight).
pub const INITIAL_WINDOW: u32 = 4 << 20;
/// The largest credit a stream may hold (2³¹ − 1 bytes).
pub const MAX_WINDOW: u32 = i32::MAX as u32;

#[cfg(test)]
mod tests;
