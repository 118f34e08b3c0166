//! One exec stream: start a process ([`spawn`]), feed its stdin under the
//! stream's receive window (see [`crate::stdin`]), forward its output under
//! the stream's send window, report how it ended.
//!
//! With a tty ([`tty`]) the process's output is the pty master's, sent as
//! `Stdout` (there is no `Stderr`), and ends at the master's EIO once every
//! holder of the slave has exited. `Stdin` frames are written to the master
//! when `stdin` is `Pipe` (keyboard input; `StdinClose` types `^D`); with
//! `Null` the tty is still the process's stdin but nothing is written to it.
//! `Resize` sets the master's window size (the process gets SIGWINCH);
//! without a tty it is ignored.

mod spawn;
mod tty;
mod users;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;

use msb_core::agent::{
    ErrorKind, ExecStart, ExitStatus, Message, MessageKind, RecvWindow, RemoteError, SendWindow,
    StdinMode, TtySize,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::fdstream::FdStream;
use crate::reaper::SharedRegistry;
use crate::stdin::{Event, StdinPipe};
use crate::writer::Out;

/// One of the process's output streams.
type Output = Pin<Box<dyn AsyncRead>>;

/// The terminal's end-of-file character (`VEOF`, `^D`), typed on
/// `StdinClose` with a tty.
const TTY_EOF: &[u8] = b"\x04";

/// The process's side of a started exec, as the exec loop uses it.
struct Io {
    stdout: Output,
    /// `None` with a tty (everything arrives on `stdout`).
    stderr: Option<Output>,
    stdin: Option<StdinPipe>,
    stdin_events: Option<mpsc::UnboundedReceiver<Event>>,
    /// The pty master, for `Resize`.
    tty: Option<OwnedFd>,
}

/// The most output bytes read (and sent) at once.
const CHUNK: usize = 256 * 1024;

/// What the dispatcher forwards to an exec stream.
#[derive(Debug)]
pub enum Control {
    /// The host granted more credit.
    Window(u32),
    /// Deliver a signal to the process.
    Signal(i32),
    /// SIGKILL the process and its process group.
    Kill,
    /// The host abandoned the stream: send nothing more on it.
    Reset,
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The host has no more stdin: close the pipe once it is written.
    StdinClose,
    /// Resize the tty.
    Resize(TtySize),
}

/// Where a piped stdin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinState {
    /// Taking `Stdin` frames.
    Open,
    /// The host sent `StdinClose`; the writer is flushing.
    Closing,
    /// Everything was written and the pipe closed.
    Done,
    /// The process stopped reading (or the stream ended); `StdinClosed` was
    /// sent if due, and further `Stdin` is dropped.
    Dead,
}

/// Runs the exec on `stream` of connection `conn` to completion.
pub async fn run(
    conn: u64,
    stream: u32,
    req: ExecStart,
    registry: SharedRegistry,
    out: mpsc::Sender<Out>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) {
    let send = |message: Message| {
        let out = out.clone();
        async move {
            let _ = out.send(Out::Frame(stream, message)).await;
        }
    };

    let (pid, status_rx, io) = match spawn::start(&req) {
        Ok(started) => {
            let pid = started.child.id() as libc::pid_t;
            // No await between spawn and register: see the reaper's docs.
            let status_rx = registry.borrow_mut().register(pid, conn);
            match wire(started, req.stdin) {
                Ok(io) => (pid, status_rx, io),
                Err(err) => {
                    registry.borrow().signal(pid, libc::SIGKILL, true);
                    send(error_message(spawn::io_kind(&err), &err, "output pipes")).await;
                    return;
                }
            }
        }
        Err((kind, err)) => {
            let what = req.argv.first().map_or("exec", String::as_str);
            send(error_message(kind, &err, what)).await;
            return;
        }
    };

    send(Message::ExecStarted { pid: pid as u32 }).await;

    let Io {
        mut stdout,
        stderr,
        stdin,
        mut stdin_events,
        tty,
    } = io;
    let (mut stderr, err_open) = match stderr {
        Some(e) => (e, true),
        None => (Box::pin(tokio::io::empty()) as Output, false),
    };
    let mut stdin_state = if stdin.is_some() {
        StdinState::Open
    } else {
        StdinState::Dead
    };
    let mut recv_window = RecvWindow::new();

    let mut window = SendWindow::new();
    let (mut out_open, mut err_open, mut ctl_open, mut reset) = (true, err_open, true, false);
    let mut buf_out = vec![0u8; CHUNK];
    let mut buf_err = vec![0u8; CHUNK];
    let mut status_rx = status_rx;
    let mut status = None;
    loop {
        if !out_open && !err_open && status.is_some() {
            break;
        }
        // Reading no more than the credit keeps unsendable output in the
        // pipe, so a slow host stalls this process and nothing else. After a
        // Reset the output is discarded without credit.
        let credit = if reset { CHUNK } else { window.sendable(CHUNK) };
        tokio::select! {
            r = stdout.read(&mut buf_out[..credit]), if out_open && credit > 0 => match r {
                Ok(n) if n > 0 => {
                    if !reset {
                        window.consume(n);
                        let _ = out.send(Out::Data(MessageKind::Stdout, stream, buf_out[..n].to_vec())).await;
                    }
                }
                _ => out_open = false,
            },
            r = stderr.read(&mut buf_err[..credit]), if err_open && credit > 0 => match r {
                Ok(n) if n > 0 => {
                    if !reset {
                        window.consume(n);
                        let _ = out.send(Out::Data(MessageKind::Stderr, stream, buf_err[..n].to_vec())).await;
                    }
                }
                _ => err_open = false,
            },
            s = &mut status_rx, if status.is_none() => {
                // A dropped sender would mean the reaper lost the child: report
                // it as killed rather than hang.
                status = Some(s.unwrap_or(libc::SIGKILL));
            }
            c = ctl.recv(), if ctl_open => match c {
                Some(Control::Window(increment)) => {
                    if window.grant(stream, increment).is_err() && !reset {
                        send(Message::Error(msb_core::agent::RemoteError {
                            kind: ErrorKind::ProtocolViolation,
                            errno: 0,
                            message: format!("window update of {increment} overflows the window"),
                        })).await;
                        reset = true;
                    }
                }
                Some(Control::Signal(sig)) => {
                    registry.borrow().signal(pid, sig, false);
                }
                Some(Control::Kill) => {
                    registry.borrow().signal(pid, libc::SIGKILL, true);
                }
                Some(Control::Reset) => {
                    reset = true;
                    if let Some(p) = &stdin {
                        p.abort();
                    }
                    stdin_state = StdinState::Dead;
                }
                Some(Control::Stdin(data)) => {
                    // Dropped unless the pipe is open: null stdin, after
                    // StdinClose, or after the process stopped reading.
                    if let (StdinState::Open, Some(p)) = (stdin_state, &stdin) {
                        if recv_window.on_data(stream, data.len()).is_ok() {
                            p.push(&data);
                        } else {
                            // A violation for this stream only: report it,
                            // end the stream and its process.
                            p.abort();
                            stdin_state = StdinState::Dead;
                            if !reset {
                                send(Message::Error(RemoteError {
                                    kind: ErrorKind::ProtocolViolation,
                                    errno: 0,
                                    message: format!(
                                        "{} bytes of stdin exceed the stream's window",
                                        data.len()
                                    ),
                                })).await;
                                reset = true;
                            }
                            registry.borrow().signal(pid, libc::SIGKILL, true);
                        }
                    }
                }
                Some(Control::StdinClose) => {
                    if let (StdinState::Open, Some(p)) = (stdin_state, &stdin) {
                        p.close();
                        stdin_state = StdinState::Closing;
                    }
                }
                Some(Control::Resize(size)) => {
                    if let Some(master) = &tty
                        && let Err(e) = tty::set_size(master.as_fd(), size)
                    {
                        eprintln!("msb-agent: stream {stream}: resizing the tty failed: {e}");
                    }
                }
                None => ctl_open = false,
            },
            ev = recv_event(&mut stdin_events), if stdin_events.is_some() => {
                if let Some(message) = on_stdin_event(ev, &mut stdin_state, &mut recv_window, &mut stdin_events) && !reset {
                    send(message).await;
                }
            }
        }
    }
    // Events the writer queued before the process ended.
    while let Some(rx) = stdin_events.as_mut() {
        let ev = rx.try_recv().ok();
        if ev.is_none() {
            break;
        }
        if let Some(message) =
            on_stdin_event(ev, &mut stdin_state, &mut recv_window, &mut stdin_events)
            && !reset
        {
            send(message).await;
        }
    }
    if let Some(p) = &stdin {
        p.abort();
    }
    // The process ended without taking all of its stdin: tell the host to
    // stop sending, once.
    if matches!(stdin_state, StdinState::Open | StdinState::Closing) && !reset {
        send(Message::StdinClosed).await;
    }
    if !reset {
        let raw = status.unwrap_or(libc::SIGKILL);
        send(Message::Exited(exit_status(raw))).await;
    }
}

/// Turns the started process's stdio into what the exec loop reads and
/// writes (must run inside the runtime).
fn wire(started: spawn::Started, stdin: StdinMode) -> io::Result<Io> {
    let mut child = started.child;
    if let Some(master) = started.tty {
        let resize = master.try_clone()?;
        let (r, w) = FdStream::new(master)?.into_split();
        let (stdin, stdin_events) = match stdin {
            StdinMode::Pipe => {
                let (p, rx) = StdinPipe::start(w, TTY_EOF);
                (Some(p), Some(rx))
            }
            StdinMode::Null => (None, None),
        };
        return Ok(Io {
            stdout: Box::pin(r),
            stderr: None,
            stdin,
            stdin_events,
            tty: Some(resize),
        });
    }
    let stdout: OwnedFd = child.stdout.take().expect("piped").into();
    grow_pipe(&stdout);
    let o = pipe::Receiver::from_owned_fd(stdout)?;
    let e = pipe::Receiver::from_owned_fd(child.stderr.take().expect("piped").into())?;
    let (stdin, stdin_events) = match child.stdin.take() {
        Some(i) => {
            let i: OwnedFd = i.into();
            grow_pipe(&i);
            let (p, rx) = StdinPipe::start(pipe::Sender::from_owned_fd(i)?, b"");
            (Some(p), Some(rx))
        }
        None => (None, None),
    };
    // The reaper waits for the child; the std handle only held the pipes.
    Ok(Io {
        stdout: Box::pin(o),
        stderr: Some(Box::pin(e)),
        stdin,
        stdin_events,
        tty: None,
    })
}

/// Bytes a bulk pipe (stdout, stdin) is grown to: fewer, larger reads and
/// writes per MiB than the kernel's default 64 KiB. Best effort: the
/// unprivileged limit (`/proc/sys/fs/pipe-max-size`) may refuse it.
const PIPE_SIZE: libc::c_int = 1 << 20;

fn grow_pipe(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, fcntl};
    let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}

/// The next writer event; `None` once the writer is gone.
async fn recv_event(events: &mut Option<mpsc::UnboundedReceiver<Event>>) -> Option<Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies a writer event; returns the frame to send for it, if any.
fn on_stdin_event(
    ev: Option<Event>,
    state: &mut StdinState,
    window: &mut RecvWindow,
    events: &mut Option<mpsc::UnboundedReceiver<Event>>,
) -> Option<Message> {
    match ev {
        Some(Event::Written(n)) => {
            let increment = window.on_consumed(n)?;
            (*state == StdinState::Open).then_some(Message::WindowUpdate { increment })
        }
        Some(Event::Done) => {
            *events = None;
            if *state == StdinState::Closing {
                *state = StdinState::Done;
            }
            None
        }
        Some(Event::Broken) | None => {
            *events = None;
            let due = matches!(*state, StdinState::Open | StdinState::Closing);
            *state = StdinState::Dead;
            due.then_some(Message::StdinClosed)
        }
    }
}

fn error_message(kind: ErrorKind, err: &io::Error, what: &str) -> Message {
    Message::Error(msb_core::agent::RemoteError {
        kind,
        errno: err.raw_os_error().unwrap_or(0),
        message: format!("{what}: {err}"),
    })
}

/// A raw wait status as the protocol's [`ExitStatus`].
pub fn exit_status(raw: libc::c_int) -> ExitStatus {
    let status = std::process::ExitStatus::from_raw(raw);
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal {
            signal,
            core_dumped: status.core_dumped(),
        },
        // Stopped/continued statuses are never reported (no WUNTRACED).
        (None, None) => ExitStatus::Code(-1),
    }
}
