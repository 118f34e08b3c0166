//! The agent channel: where the host's frames come from.
//!
//! The environment picks one of three transports (exactly one may be set):
//!
//! - `MSB_AGENT_FD=<n>`: fd n is an inherited, already-connected Unix stream
//!   socket (namespace sandboxes pass the agent end of a socketpair as fd 0).
//!   One connection; its end shuts the agent down.
//! - `MSB_AGENT_LISTEN_FD=<n>`: fd n is an inherited, bound and listening
//!   Unix stream socket; the agent accepts connections on it until shutdown.
//! - `MSB_AGENT_VSOCK_PORT=<port>`: the agent listens on
//!   `AF_VSOCK` `VMADDR_CID_ANY:<port>` itself (the microVM backend).
//!
//! The rest of the agent only sees a boxed reader and writer per connection.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::fdstream::{FdListener, FdStream};

/// The environment variable naming an inherited, connected channel.
pub const FD_ENV: &str = "MSB_AGENT_FD";
/// The environment variable naming an inherited listening socket.
pub const LISTEN_FD_ENV: &str = "MSB_AGENT_LISTEN_FD";
/// The environment variable naming the vsock port to listen on.
pub const VSOCK_PORT_ENV: &str = "MSB_AGENT_VSOCK_PORT";

/// The read half of an open channel.
pub type ChannelReader = Box<dyn AsyncRead + Unpin>;
/// The write half of an open channel.
pub type ChannelWriter = Box<dyn AsyncWrite + Unpin>;

/// Where the channel is, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An inherited, connected Unix stream socket.
    Fd(RawFd),
    /// An inherited, listening Unix stream socket.
    ListenFd(RawFd),
    /// A vsock port to listen on.
    Vsock(u32),
}

impl Channel {
    /// The channel the environment names.
    pub fn from_env() -> io::Result<Channel> {
        Channel::from_lookup(|name| std::env::var(name).ok())
    }

    /// The channel `lookup` (an environment) names.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> io::Result<Channel> {
        let set: Vec<(&str, String)> = [FD_ENV, LISTEN_FD_ENV, VSOCK_PORT_ENV]
            .into_iter()
            .filter_map(|name| lookup(name).map(|v| (name, v)))
            .collect();
        let (name, value) = match set.as_slice() {
            [] => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "none of {FD_ENV}, {LISTEN_FD_ENV}, {VSOCK_PORT_ENV} is set: no agent channel"
                    ),
                ));
            }
            [one] => one.clone(),
            _ => {
                let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "only one agent channel may be set, got {}",
                        names.join(", ")
                    ),
                ));
            }
        };
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}={value:?} is not {what}"),
            )
        };
        match name {
            VSOCK_PORT_ENV => value
                .trim()
                .parse::<u32>()
                .map(Channel::Vsock)
                .map_err(|_| invalid("a port number")),
            _ => {
                let fd = value
                    .trim()
                    .parse::<RawFd>()
                    .ok()
                    .filter(|fd| *fd >= 0)
                    .ok_or_else(|| invalid("a file descriptor"))?;
                Ok(if name == FD_ENV {
                    Channel::Fd(fd)
                } else {
                    Channel::ListenFd(fd)
                })
            }
        }
    }

    /// Opens a connected channel ([`Channel::Fd`]). Must run inside the
    /// tokio runtime.
    pub fn open(fd: RawFd) -> io::Result<(ChannelReader, ChannelWriter)> {
        // SAFETY: the descriptor was handed to us by our parent for exactly
        // this purpose (MSB_AGENT_FD) and nothing else in the agent uses it:
        // we take sole ownership here, once.
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

    /// Opens a listening channel ([`Channel::ListenFd`], [`Channel::Vsock`]).
    /// Must run inside the tokio runtime.
    pub fn listen(self) -> io::Result<Listener> {
        let inner = match self {
            Channel::Fd(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a connected channel cannot be listened on",
                ));
            }
            Channel::ListenFd(fd) => {
                // SAFETY: the descriptor was handed to us by our parent for
                // exactly this purpose (MSB_AGENT_LISTEN_FD) and nothing else
                // in the agent uses it: we take sole ownership here, once.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                FdListener::from_listening(owned)?
            }
            Channel::Vsock(port) => FdListener::vsock(port)?,
        };
        Ok(Listener { inner })
    }
}

/// A listening channel: each accepted connection is served on its own.
#[derive(Debug)]
pub struct Listener {
    inner: FdListener,
}

impl Listener {
    /// Accepts the next connection.
    pub async fn accept(&self) -> io::Result<(ChannelReader, ChannelWriter)> {
        let stream: FdStream = self.inner.accept().await?;
        let (r, w) = stream.into_split();
        Ok((Box::new(r), Box::new(w)))
    }
}

/// Whether an `accept` error is worth retrying (the listener itself is fine).
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ETIMEDOUT
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> io::Result<Channel> {
        Channel::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn the_environment_picks_one_transport() {
        assert_eq!(parse(&[(FD_ENV, "0")]).unwrap(), Channel::Fd(0));
        assert_eq!(
            parse(&[(LISTEN_FD_ENV, " 3")]).unwrap(),
            Channel::ListenFd(3)
        );
        assert_eq!(
            parse(&[(VSOCK_PORT_ENV, "1024")]).unwrap(),
            Channel::Vsock(1024)
        );
    }

    #[test]
    fn none_several_or_garbage_is_an_error() {
        assert_eq!(parse(&[]).unwrap_err().kind(), io::ErrorKind::NotFound);
        let both = parse(&[(FD_ENV, "0"), (VSOCK_PORT_ENV, "1")]).unwrap_err();
        assert_eq!(both.kind(), io::ErrorKind::InvalidInput);
        for bad in [(FD_ENV, "-1"), (LISTEN_FD_ENV, "x"), (VSOCK_PORT_ENV, "-5")] {
            let e = parse(&[bad]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
