//! Sockets tokio has no type for: a listening socket and its connections,
//! driven through [`AsyncFd`] with plain `accept4`/`read`/`write`.
//!
//! Used for `AF_VSOCK` (the microVM channel) and for the inherited listening
//! Unix socket alike, so the same code serves both transports.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many pending connections the kernel queues on a socket we listen on.
const BACKLOG: libc::c_int = 128;

/// Makes `fd` non-blocking and close-on-exec (processes we start must not
/// inherit the agent's sockets).
fn prepare(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Registers `fd` with the runtime's reactor. Must run inside the runtime.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open until dropped and its as_raw_fd() always
    // returns the same descriptor; the AsyncFd owns it from here on and
    // nothing swaps it out through get_mut.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// A listening stream socket.
#[derive(Debug)]
pub struct FdListener {
    fd: AsyncFd<OwnedFd>,
}

impl FdListener {
    /// Wraps a socket that is already bound and listening. Must run inside
    /// the tokio runtime. The socket is made non-blocking (which its other
    /// holders, if any, see too).
    pub fn from_listening(fd: OwnedFd) -> io::Result<FdListener> {
        let stat = nix::sys::stat::fstat(&fd)?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the listening descriptor is not a socket",
            ));
        }
        prepare(&fd)?;
        Ok(FdListener { fd: register(fd)? })
    }

    /// Creates an `AF_VSOCK` stream socket listening on `VMADDR_CID_ANY:port`.
    /// Must run inside the tokio runtime.
    pub fn vsock(port: u32) -> io::Result<FdListener> {
        // SAFETY: socket(2) with constant arguments; it returns a new
        // descriptor or -1.
        let raw = unsafe {
            libc::socket(
                libc::AF_VSOCK,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor socket(2) just created; nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_vm is a valid value (its padding
        // included); the fields that matter are set below.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: bind(2) reads `len` bytes of the sockaddr_vm `addr`, which
        // lives across the call.
        let ret = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen(2) on a socket we own.
        let ret = unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FdListener { fd: register(fd)? })
    }

    /// Accepts the next connection.
    pub async fn accept(&self) -> io::Result<FdStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| accept4(fd.get_ref())) {
                Ok(result) => return FdStream::new(result?),
                Err(_would_block) => continue,
            }
        }
    }
}

fn accept4(listener: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4(2) on a socket we own; null address pointers ask for
    // no peer address.
    let raw = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor accept4(2) just created; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A connected stream socket.
#[derive(Debug)]
pub struct FdStream {
    fd: Rc<AsyncFd<OwnedFd>>,
}

impl FdStream {
    /// Wraps a connected socket (made non-blocking and close-on-exec). Must
    /// run inside the tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        prepare(&fd)?;
        Ok(FdStream {
            fd: Rc::new(register(fd)?),
        })
    }

    /// Splits into a read half and a write half that share the socket; it is
    /// closed when both are gone.
    pub fn into_split(self) -> (FdReadHalf, FdWriteHalf) {
        (
            FdReadHalf {
                fd: self.fd.clone(),
            },
            FdWriteHalf { fd: self.fd },
        )
    }
}

/// The read half of an [`FdStream`].
#[derive(Debug)]
pub struct FdReadHalf {
    fd: Rc<AsyncFd<OwnedFd>>,
}

/// The write half of an [`FdStream`].
#[derive(Debug)]
pub struct FdWriteHalf {
    fd: Rc<AsyncFd<OwnedFd>>,
}

impl AsyncRead for FdReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref().as_fd(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), buf)?)) {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on a socket we own; it only ends our sending.
        let ret = unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
        if ret < 0 {
            return Poll::Ready(Err(io::Error::last_os_error()));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn stream_halves_carry_bytes_both_ways_over_a_socketpair() {
        runtime().block_on(async {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (mut r, mut w) = FdStream::new(ours.into()).unwrap().into_split();
            let peer = std::thread::spawn(move || {
                let mut theirs = theirs;
                let mut got = vec![0u8; 1 << 20];
                theirs.read_exact(&mut got).unwrap();
                theirs.write_all(&got).unwrap();
                theirs.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                theirs.read_to_end(&mut rest).unwrap();
                rest
            });
            // More than a socket buffer: writes must wait for readiness.
            let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
            w.write_all(&data).await.unwrap();
            let mut echoed = vec![0u8; data.len()];
            r.read_exact(&mut echoed).await.unwrap();
            assert!(echoed == data);
            let mut end = [0u8; 1];
            assert_eq!(r.read(&mut end).await.unwrap(), 0, "EOF after shutdown");
            w.write_all(b"bye").await.unwrap();
            w.shutdown().await.unwrap();
            assert_eq!(peer.join().unwrap(), b"bye");
        });
    }

    #[test]
    fn listener_accepts_connections_on_an_inherited_socket() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.sock");
            let std_listener = UnixListener::bind(&path).unwrap();
            let listener = FdListener::from_listening(std_listener.into()).unwrap();
            for i in 0..3u8 {
                let path = path.clone();
                let client = std::thread::spawn(move || {
                    let mut c = UnixStream::connect(&path).unwrap();
                    c.write_all(&[i]).unwrap();
                    let mut back = [0u8; 1];
                    c.read_exact(&mut back).unwrap();
                    back[0]
                });
                let (mut r, mut w) = listener.accept().await.unwrap().into_split();
                let mut b = [0u8; 1];
                r.read_exact(&mut b).await.unwrap();
                w.write_all(&[b[0] + 100]).await.unwrap();
                assert_eq!(client.join().unwrap(), i + 100);
            }
        });
    }

    #[test]
    fn a_non_socket_is_not_a_listener() {
        runtime().block_on(async {
            let (r, _w) = std::io::pipe().unwrap();
            let err = FdListener::from_listening(r.into()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        });
    }

    #[test]
    fn vsock_listener_binds_where_vsock_exists() {
        runtime().block_on(async {
            match FdListener::vsock(10_789) {
                Ok(_) => {}
                // No vsock transport on this host (no VM): nothing to test.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::ENODEV)
                    ) => {}
                Err(e) => panic!("vsock listener: {e}"),
            }
        });
    }
}
