//! Pseudo-terminals for execs with `ExecStart::tty`.
//!
//! The agent keeps the master; the child gets the slave as stdin, stdout
//! and stderr and, after `setsid`, as its controlling terminal (see
//! [`make_controlling`], run between fork and exec). The slave is found with
//! `TIOCGPTPEER` (no path lookup, so it works in any mount namespace), or
//! through `/dev/pts/N` on kernels without it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use msb_core::agent::TtySize;

/// A freshly opened pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The agent's side.
    pub master: OwnedFd,
    /// The child's side.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of `size` (both ends close-on-exec; the slave is
/// not made anyone's controlling terminal here).
pub fn open(size: TtySize) -> io::Result<Pty> {
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one c_int through the pointer, which points
    // at `unlock` for the duration of the call; `master` is an open ptmx.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &raw const unlock) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let slave = open_slave(&master)?;
    set_size(master.as_fd(), size)?;
    Ok(Pty { master, slave })
}

/// Opens the slave of `master`.
fn open_slave(master: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new
    // descriptor or -1; `master` is an open ptmx.
    let raw = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if raw >= 0 {
        // SAFETY: `raw` is a descriptor the ioctl just created; nothing else
        // owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(err);
    }
    // Older kernels: look the slave up by number.
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one c_uint through the pointer, which points
    // at `n` for the duration of the call.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &raw mut n) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/dev/pts/{n}"))?
        .into())
}

/// Sets the window size of the terminal `fd` (either end); the kernel
/// signals SIGWINCH to its foreground process group.
pub fn set_size(fd: BorrowedFd<'_>, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which points
    // at `ws` for the duration of the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the child between fork and exec: starts a new session and makes
/// stdin (the slave) its controlling terminal. Async-signal-safe (two
/// syscalls, no allocation).
pub fn make_controlling() -> io::Result<()> {
    // SAFETY: setsid(2) takes no arguments; the child is not a process
    // group leader (no process_group() is set with a tty).
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal); fd 0 is
    // the slave, already dup2'd by the time pre_exec hooks run.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn the_pair_carries_bytes_and_has_the_size() {
        let size = TtySize {
            rows: 33,
            cols: 101,
        };
        let pty = match open(size) {
            Ok(p) => p,
            // No devpts here: nothing to test.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => panic!("open a pty: {e}"),
        };
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which
        // points at `ws` for the duration of the call.
        let ret = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) };
        assert_eq!(ret, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        set_size(pty.master.as_fd(), TtySize { rows: 5, cols: 7 }).unwrap();
        // SAFETY: as above.
        let ret = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) };
        assert_eq!(ret, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (5, 7));

        let mut slave = std::fs::File::from(pty.slave);
        let mut master = std::fs::File::from(pty.master);
        slave.write_all(b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).unwrap();
        // The line discipline turns \n into \r\n.
        assert_eq!(&buf[..n], b"hi\r\n");
    }
}
