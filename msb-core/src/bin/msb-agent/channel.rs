//! The agent channel: where the host's frames come from.
//!
//! Only one transport exists today, an inherited, already-connected Unix
//! stream socket named by `MSB_AGENT_FD` (namespace sandboxes pass the agent
//! end of a socketpair as fd 0). The microVM backend will add vsock here; the
//! rest of the agent only sees a boxed reader and writer.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio::io::{AsyncRead, AsyncWrite};

/// The environment variable naming the inherited channel descriptor.
pub const FD_ENV: &str = "MSB_AGENT_FD";

/// The read half of an open channel.
pub type ChannelReader = Box<dyn AsyncRead + Unpin>;
/// The write half of an open channel.
pub type ChannelWriter = Box<dyn AsyncWrite + Unpin>;

/// Where the channel is, before it is opened.
#[derive(Debug)]
pub enum Channel {
    /// An inherited, connected Unix stream socket.
    Fd(RawFd),
}

impl Channel {
    /// The channel the environment names.
    pub fn from_env() -> io::Result<Channel> {
        let value = std::env::var(FD_ENV).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{FD_ENV} is not set: no agent channel"),
            )
        })?;
        let fd: RawFd = value.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{FD_ENV}={value:?} is not a file descriptor"),
            )
        })?;
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{FD_ENV}={fd} is negative"),
            ));
        }
        Ok(Channel::Fd(fd))
    }

    /// Opens the channel. Must run inside the tokio runtime.
    pub fn open(self) -> io::Result<(ChannelReader, ChannelWriter)> {
        match self {
            Channel::Fd(fd) => {
                // SAFETY: the descriptor was handed to us by our parent for
                // exactly this purpose (MSB_AGENT_FD) and nothing else in the
                // agent uses it: we take sole ownership here, once.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // Processes we start must not inherit the channel.
                fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
                let std = std::os::unix::net::UnixStream::from(owned);
                // Fails with ENOTSOCK (or similar) when it is not a socket.
                std.peer_addr()?;
                std.set_nonblocking(true)?;
                let stream = tokio::net::UnixStream::from_std(std)?;
                let (r, w) = stream.into_split();
                Ok((Box::new(r), Box::new(w)))
            }
        }
    }
}
