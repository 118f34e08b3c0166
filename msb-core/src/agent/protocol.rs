//! The agent protocol's messages, as Rust values.
//!
//! A [`Frame`] is one message on one stream. [`Message`] has one variant per
//! wire kind ([`MessageKind`]); the byte layout of each is documented on the
//! variant and, in full, in the [module docs](super).

use std::fmt;

/// The protocol versions this build speaks.
///
/// Version 1 is the first; a peer whose range does not overlap this one is
/// refused in the handshake with
/// [`Error::AgentVersionMismatch`](crate::Error::AgentVersionMismatch).
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange { min: 1, max: 1 };

/// The four bytes every [`Hello`] starts with: `b"MSBA"`.
///
/// They let a peer recognise, on its very first frame, that the other end is
/// not a microsandbox agent channel at all (a wrong socket, a stray process).
pub const MAGIC: [u8; 4] = *b"MSBA";

/// A contiguous range of protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionRange {
    /// The oldest version spoken.
    pub min: u16,
    /// The newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// The highest version both ranges contain, if any.
    ///
    /// A range with `min > max` contains nothing.
    pub fn negotiate(self, peer: VersionRange) -> Option<u16> {
        let low = self.min.max(peer.min);
        let high = self.max.min(peer.max);
        (low <= high).then_some(high)
    }

    /// Whether `version` is in the range.
    pub fn contains(self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "v{}", self.min)
        } else {
            write!(f, "v{}..=v{}", self.min, self.max)
        }
    }
}

/// The stream id of connection-level messages ([`Hello`], [`Ready`],
/// shutdown, ping/pong, connection-fatal errors).
pub const CONNECTION_STREAM: u32 = 0;

/// One message on one stream: what travels in one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The stream (request) the message belongs to; [`CONNECTION_STREAM`] for
    /// connection-level messages, nonzero for everything else.
    pub stream: u32,
    /// The message.
    pub message: Message,
}

impl Frame {
    /// A frame of `message` on `stream`.
    pub fn new(stream: u32, message: Message) -> Self {
        Self { stream, message }
    }
}

/// Which way a message may travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Only from the host to the agent.
    HostToAgent,
    /// Only from the agent to the host.
    AgentToHost,
    /// Either way.
    Both,
}

macro_rules! message_kinds {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $dir:ident, $conn:literal;)*) => {
        /// The one-byte kind of a frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum MessageKind {
            $($(#[$doc])* $name = $code,)*
        }

        impl MessageKind {
            /// Every kind, in wire-code order.
            pub const ALL: &'static [MessageKind] = &[$(MessageKind::$name,)*];

            /// The kind with wire code `code`, if there is one.
            pub fn from_u8(code: u8) -> Option<Self> {
                match code {
                    $($code => Some(MessageKind::$name),)*
                    _ => None,
                }
            }

            /// Which way messages of this kind may travel.
            pub fn direction(self) -> Direction {
                match self {
                    $(MessageKind::$name => Direction::$dir,)*
                }
            }

            /// Whether this kind travels on [`CONNECTION_STREAM`] (`true`),
            /// or on a request's own nonzero stream (`false`). [`MessageKind::Error`]
            /// is allowed on both and reports `false`.
            pub fn is_connection_level(self) -> bool {
                match self {
                    $(MessageKind::$name => $conn,)*
                }
            }

            /// The kind's name, as written in the protocol docs.
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageKind::$name => stringify!($name),)*
                }
            }
        }
    };
}

message_kinds! {
    /// Version offer, the first frame each way.
    Hello = 0x01, Both, true;
    /// The agent is up: chosen version and boot timings.
    Ready = 0x02, AgentToHost, true;
    /// Stop everything and power off.
    Shutdown = 0x03, HostToAgent, true;
    /// Liveness probe.
    Ping = 0x04, Both, true;
    /// Answer to a ping.
    Pong = 0x05, Both, true;
    /// Flow-control credit for a stream.
    WindowUpdate = 0x08, Both, false;
    /// A typed failure; ends the stream (on stream 0: the connection).
    Error = 0x09, Both, false;
    /// The sender abandons the stream.
    Reset = 0x0A, Both, false;
    /// Start a process.
    ExecStart = 0x10, HostToAgent, false;
    /// The process started.
    ExecStarted = 0x11, AgentToHost, false;
    /// Bytes for the process' stdin.
    Stdin = 0x12, HostToAgent, false;
    /// End of the process' stdin.
    StdinClose = 0x13, HostToAgent, false;
    /// Bytes the process wrote to stdout (or the tty).
    Stdout = 0x14, AgentToHost, false;
    /// Bytes the process wrote to stderr.
    Stderr = 0x15, AgentToHost, false;
    /// The process ended; ends the stream.
    Exited = 0x16, AgentToHost, false;
    /// Send a signal to the process.
    Signal = 0x17, HostToAgent, false;
    /// Kill the process (and its process group).
    Kill = 0x18, HostToAgent, false;
    /// Resize the process' tty.
    Resize = 0x19, HostToAgent, false;
    /// The process stopped reading stdin (EPIPE); send no more stdin.
    StdinClosed = 0x1A, AgentToHost, false;
    /// Start a file operation.
    FsRequest = 0x20, HostToAgent, false;
    /// File content.
    FileChunk = 0x21, Both, false;
    /// End of file content.
    FileEnd = 0x22, Both, false;
    /// A file's metadata.
    FsStat = 0x23, AgentToHost, false;
    /// A batch of directory entries.
    FsDirEntries = 0x24, AgentToHost, false;
    /// The file operation finished; ends the stream.
    FsDone = 0x25, AgentToHost, false;
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:02x})", self.name(), *self as u8)
    }
}

/// A protocol message. See the [module docs](super) for each payload layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The first frame each side sends.
    Hello(Hello),
    /// The agent's readiness report, after a successful version negotiation.
    Ready(Ready),
    /// Terminate all processes (SIGTERM, SIGKILL after `grace_ms`), sync and
    /// power off.
    Shutdown {
        /// How long processes get between SIGTERM and SIGKILL.
        grace_ms: u32,
    },
    /// Liveness probe; the peer answers `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender may receive `increment` more data bytes on this stream.
    WindowUpdate {
        /// Additional credit in bytes; never zero.
        increment: u32,
    },
    /// A typed failure. Ends the stream; on stream 0 ends the connection.
    Error(RemoteError),
    /// The sender abandons the stream and will send nothing more on it; the
    /// receiver stops sending too (and kills nothing: use `Kill` for that).
    Reset,
    /// Start a process; opens the stream.
    ExecStart(ExecStart),
    /// The process is running.
    ExecStarted {
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// Bytes for stdin (counted against the agent's receive window).
    Stdin(Vec<u8>),
    /// No more stdin: the agent closes the process' stdin (EOF).
    StdinClose,
    /// Bytes from stdout (counted against the host's receive window).
    Stdout(Vec<u8>),
    /// Bytes from stderr (counted against the host's receive window).
    Stderr(Vec<u8>),
    /// The process ended. Last message of an exec stream.
    Exited(ExitStatus),
    /// Deliver `signal` to the process.
    Signal {
        /// The signal number (as in the guest's `signal.h`).
        signal: i32,
    },
    /// SIGKILL the process and its process group.
    Kill,
    /// Set the tty's window size.
    Resize(TtySize),
    /// The process closed its stdin; further `Stdin` is discarded.
    StdinClosed,
    /// Start a file operation; opens the stream.
    FsRequest(FsRequest),
    /// File content (counted against the receiver's window).
    FileChunk(Vec<u8>),
    /// End of file content from the sender.
    FileEnd,
    /// Metadata answering [`FsRequest::Stat`].
    FsStat(Metadata),
    /// A batch of entries answering [`FsRequest::List`]; more may follow
    /// until `FsDone`.
    FsDirEntries(Vec<DirEntry>),
    /// The file operation succeeded. Last message of a file stream.
    FsDone {
        /// Bytes written or copied (write, copy), 0 otherwise.
        bytes: u64,
    },
}

impl Message {
    /// The message's wire kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Ready(_) => MessageKind::Ready,
            Message::Shutdown { .. } => MessageKind::Shutdown,
            Message::Ping { .. } => MessageKind::Ping,
            Message::Pong { .. } => MessageKind::Pong,
            Message::WindowUpdate { .. } => MessageKind::WindowUpdate,
            Message::Error(_) => MessageKind::Error,
            Message::Reset => MessageKind::Reset,
            Message::ExecStart(_) => MessageKind::ExecStart,
            Message::ExecStarted { .. } => MessageKind::ExecStarted,
            Message::Stdin(_) => MessageKind::Stdin,
            Message::StdinClose => MessageKind::StdinClose,
            Message::Stdout(_) => MessageKind::Stdout,
            Message::Stderr(_) => MessageKind::Stderr,
            Message::Exited(_) => MessageKind::Exited,
            Message::Signal { .. } => MessageKind::Signal,
            Message::Kill => MessageKind::Kill,
            Message::Resize(_) => MessageKind::Resize,
            Message::StdinClosed => MessageKind::StdinClosed,
            Message::FsRequest(_) => MessageKind::FsRequest,
            Message::FileChunk(_) => MessageKind::FileChunk,
            Message::FileEnd => MessageKind::FileEnd,
            Message::FsStat(_) => MessageKind::FsStat,
            Message::FsDirEntries(_) => MessageKind::FsDirEntries,
            Message::FsDone { .. } => MessageKind::FsDone,
        }
    }

    /// The number of flow-controlled data bytes the message carries: the
    /// length of `Stdin`, `Stdout`, `Stderr` and `FileChunk`, 0 for all others.
    pub fn flow_len(&self) -> usize {
        match self {
            Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) | Message::FileChunk(b) => {
                b.len()
            }
            _ => 0,
        }
    }
}

/// A version offer: the first frame each side sends on stream 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol versions the sender speaks.
    pub versions: VersionRange,
    /// The sender's software version, e.g. `microsandbox 0.3.1`; for logs and
    /// error messages only.
    pub software: String,
}

/// The agent's readiness report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// The agent's software version.
    pub agent_version: String,
    /// Boot milestones, in the order they happened.
    pub timings: Vec<BootTiming>,
}

/// One boot milestone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTiming {
    /// What happened, e.g. `mounts`, `network`, `agent-listen`.
    pub phase: String,
    /// When, in microseconds of the guest's `CLOCK_BOOTTIME` (time since the
    /// guest kernel, or for namespace sandboxes the host, booted).
    pub micros: u64,
}

/// A typed failure reported by the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The OS error number behind it, 0 if none.
    pub errno: i32,
    /// Human-readable detail (the path, the command), for messages only.
    pub message: String,
}

/// The kinds of failure the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorKind {
    /// A path or command does not exist (ENOENT).
    NotFound = 1,
    /// Access denied (EACCES, EPERM).
    PermissionDenied = 2,
    /// The command exists but cannot be executed (ENOEXEC, bad interpreter,
    /// not a regular file).
    NotExecutable = 3,
    /// The working directory for an exec does not exist or is not a directory.
    BadCwd = 4,
    /// A file operation expected a file and found a directory (EISDIR).
    IsADirectory = 5,
    /// A path component is not a directory (ENOTDIR).
    NotADirectory = 6,
    /// The target exists already (EEXIST).
    AlreadyExists = 7,
    /// The directory is not empty (ENOTEMPTY).
    DirectoryNotEmpty = 8,
    /// The user for an exec does not exist in the sandbox.
    NoSuchUser = 9,
    /// An argument is invalid (EINVAL, a NUL byte in a string, empty argv).
    InvalidArgument = 10,
    /// No space left (ENOSPC, EDQUOT).
    NoSpace = 11,
    /// Read-only filesystem (EROFS).
    ReadOnly = 12,
    /// A resource limit was hit (EMFILE, EAGAIN on fork, ENOMEM).
    ResourceExhausted = 13,
    /// The request refers to a stream id that is already open.
    StreamInUse = 14,
    /// The peer speaks no common protocol version.
    IncompatibleVersion = 15,
    /// The peer broke the protocol (bad frame, flow-control violation).
    ProtocolViolation = 16,
    /// The agent is shutting down and accepts no new requests.
    ShuttingDown = 17,
    /// The operation is not supported.
    Unsupported = 18,
    /// Any other I/O error; see `errno`.
    Io = 19,
}

impl ErrorKind {
    /// Every kind, in wire-code order.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::NotFound,
        ErrorKind::PermissionDenied,
        ErrorKind::NotExecutable,
        ErrorKind::BadCwd,
        ErrorKind::IsADirectory,
        ErrorKind::NotADirectory,
        ErrorKind::AlreadyExists,
        ErrorKind::DirectoryNotEmpty,
        ErrorKind::NoSuchUser,
        ErrorKind::InvalidArgument,
        ErrorKind::NoSpace,
        ErrorKind::ReadOnly,
        ErrorKind::ResourceExhausted,
        ErrorKind::StreamInUse,
        ErrorKind::IncompatibleVersion,
        ErrorKind::ProtocolViolation,
        ErrorKind::ShuttingDown,
        ErrorKind::Unsupported,
        ErrorKind::Io,
    ];

    /// The kind with wire code `code`, if there is one.
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u8 == code)
    }
}

/// How an exec'd process gets its stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StdinMode {
    /// `/dev/null`; `Stdin` frames are refused.
    Null = 0,
    /// A pipe fed by `Stdin` frames and closed by `StdinClose`.
    Pipe = 1,
}

/// A tty's window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStart {
    /// Program and arguments; never empty. `argv[0]` is resolved through
    /// `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Variables set on top of the sandbox's environment, in order (a later
    /// duplicate wins).
    pub env: Vec<(String, String)>,
    /// Working directory; the sandbox's workdir when `None`.
    pub cwd: Option<String>,
    /// User name or `uid[:gid]`; the sandbox's default user when `None`.
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size (stdout carries the tty's output;
    /// stderr is unused).
    pub tty: Option<TtySize>,
    /// Where stdin comes from.
    pub stdin: StdinMode,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

/// A file operation, resolved inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsRequest {
    /// Stream a file's content to the host as `FileChunk`s, then `FileEnd`
    /// (no `FsDone`).
    Read {
        /// The file.
        path: String,
        /// Where to start.
        offset: u64,
        /// How many bytes at most; to the end when `None`.
        len: Option<u64>,
    },
    /// Receive `FileChunk`s from the host up to `FileEnd` into a file, then
    /// answer `FsDone { bytes }`.
    Write {
        /// The file.
        path: String,
        /// Truncate, append or create-new.
        mode: WriteMode,
        /// Permission bits for a file that is created.
        perm: u32,
    },
    /// Answer `FsStat`.
    Stat {
        /// The path.
        path: String,
        /// Stat the symlink's target (`stat`) rather than the link (`lstat`).
        follow_symlinks: bool,
    },
    /// Answer zero or more `FsDirEntries`, then `FsDone`.
    List {
        /// The directory.
        path: String,
    },
    /// Create a directory; answer `FsDone`.
    Mkdir {
        /// The directory.
        path: String,
        /// Create missing parents and accept an existing directory.
        recursive: bool,
        /// Permission bits.
        perm: u32,
    },
    /// Remove a path; answer `FsDone`.
    Remove {
        /// The path.
        path: String,
        /// What may be removed.
        mode: RemoveMode,
    },
    /// Rename `from` to `to` (within the sandbox); answer `FsDone`.
    Rename {
        /// The old path.
        from: String,
        /// The new path.
        to: String,
    },
    /// Copy the file `from` to `to` (within the sandbox); answer
    /// `FsDone { bytes }`.
    Copy {
        /// The source file.
        from: String,
        /// The destination file (replaced if it exists).
        to: String,
    },
}

/// How [`FsRequest::Write`] opens its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WriteMode {
    /// Create or truncate.
    Truncate = 0,
    /// Create or append.
    Append = 1,
    /// Create; fail with `AlreadyExists` if it exists.
    CreateNew = 2,
}

/// What [`FsRequest::Remove`] may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RemoveMode {
    /// A non-directory (`unlink`); a directory gives `IsADirectory`.
    File = 0,
    /// An empty directory (`rmdir`).
    EmptyDir = 1,
    /// Anything, recursively.
    Recursive = 2,
}

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FileType {
    /// A regular file.
    File = 0,
    /// A directory.
    Dir = 1,
    /// A symbolic link.
    Symlink = 2,
    /// A block device.
    BlockDevice = 3,
    /// A character device.
    CharDevice = 4,
    /// A FIFO.
    Fifo = 5,
    /// A Unix socket.
    Socket = 6,
}

/// A file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// Its type.
    pub file_type: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds part; below 1e9.
    pub mtime_nanos: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name (no `/`).
    pub name: String,
    /// Its metadata (`lstat`).
    pub metadata: Metadata,
}

/// Why bytes on the agent channel were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolErrorKind {
    /// A frame's length field is below the 5 bytes of kind and stream id.
    FrameTooShort {
        /// The length field.
        len: u32,
    },
    /// A frame's length field (or a frame being encoded) exceeds the limit.
    FrameTooLarge {
        /// The length (field value, excluding the length field itself).
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The connection ended in the middle of a frame.
    TruncatedFrame {
        /// Bytes of the frame received (length field included).
        got: usize,
        /// Bytes the frame needed (when the length field was complete), or 4.
        expected: usize,
    },
    /// The connection ended where a frame was required.
    ConnectionClosed {
        /// What was awaited, e.g. `Hello`.
        awaiting: &'static str,
    },
    /// The kind byte is not a known message kind.
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A connection-level message on a nonzero stream, or a stream message on
    /// stream 0.
    WrongStream {
        /// The kind.
        kind: MessageKind,
        /// The stream id it came on.
        stream: u32,
    },
    /// A payload ended before the field `what`.
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A payload has bytes after its last field.
    TrailingBytes {
        /// The kind.
        kind: MessageKind,
        /// How many.
        extra: usize,
    },
    /// A string field is not UTF-8.
    InvalidUtf8 {
        /// The field.
        what: &'static str,
    },
    /// An enum, option or bool field has an undefined tag.
    InvalidTag {
        /// The field.
        what: &'static str,
        /// The tag byte.
        tag: u8,
    },
    /// A field's value is out of its range (zero window increment, empty argv,
    /// nanoseconds ≥ 1e9).
    InvalidValue {
        /// The field.
        what: &'static str,
    },
    /// A `Hello` does not start with [`MAGIC`].
    BadMagic {
        /// The four bytes found.
        got: [u8; 4],
    },
    /// A well-formed message arrived where the protocol does not allow it.
    UnexpectedMessage {
        /// What was allowed.
        expected: &'static str,
        /// What came.
        got: MessageKind,
    },
    /// A peer sent more data on a stream than the window it was granted, or
    /// grew a window past [`MAX_WINDOW`](super::MAX_WINDOW).
    FlowControl {
        /// The stream.
        stream: u32,
    },
    /// The agent's `Ready` names a version other than the negotiated one.
    VersionNotNegotiated {
        /// The version negotiated from both `Hello`s.
        negotiated: u16,
        /// The version in `Ready`.
        ready: u16,
    },
    /// The peer reported a connection-fatal error on stream 0.
    PeerError {
        /// Its kind.
        kind: ErrorKind,
    },
}

impl fmt::Display for ProtocolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooShort { len } => {
                write!(f, "frame length {len} is below the 5-byte minimum")
            }
            Self::FrameTooLarge { len, max } => {
                write!(f, "frame length {len} exceeds the maximum of {max}")
            }
            Self::TruncatedFrame { got, expected } => write!(
                f,
                "connection closed mid-frame after {got} of {expected} bytes"
            ),
            Self::ConnectionClosed { awaiting } => {
                write!(f, "connection closed while awaiting {awaiting}")
            }
            Self::UnknownKind { kind } => write!(f, "unknown message kind 0x{kind:02x}"),
            Self::WrongStream { kind, stream } => {
                write!(f, "{kind} is not allowed on stream {stream}")
            }
            Self::Truncated { what } => write!(f, "payload ends before {what}"),
            Self::TrailingBytes { kind, extra } => {
                write!(f, "{extra} trailing bytes after {kind} payload")
            }
            Self::InvalidUtf8 { what } => write!(f, "{what} is not UTF-8"),
            Self::InvalidTag { what, tag } => write!(f, "invalid {what} tag {tag}"),
            Self::InvalidValue { what } => write!(f, "invalid {what}"),
            Self::BadMagic { got } => write!(f, "bad magic {got:02x?}, expected \"MSBA\""),
            Self::UnexpectedMessage { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            Self::FlowControl { stream } => {
                write!(f, "flow-control window violated on stream {stream}")
            }
            Self::VersionNotNegotiated { negotiated, ready } => write!(
                f,
                "agent is ready with v{ready}, but v{negotiated} was negotiated"
            ),
            Self::PeerError { kind } => write!(f, "peer reported a fatal error: {kind:?}"),
        }
    }
}

impl From<ProtocolErrorKind> for crate::Error {
    fn from(reason: ProtocolErrorKind) -> Self {
        crate::Error::AgentProtocol { reason }
    }
}
