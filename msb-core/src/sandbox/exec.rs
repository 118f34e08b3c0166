//! A streaming exec: one command on its own agent connection, with output
//! as events, a stdin sink, signals, and flow control both ways.
//!
//! ```text
//!            ┌──────── reader task ────────┐
//! agent ──▶  │ Stdout/Stderr/Exited ──▶ events (bounded) ──▶ consumer
//!            │ WindowUpdate ──▶ stdin credit, StdinClosed   │
//!            └─────────────────────────────┘              │ consumed bytes
//! agent ◀──  writer task ◀── Stdin / StdinClose / Signal / Kill / WindowUpdate
//! ```
//!
//! Backpressure: the host grants the agent [`INITIAL_WINDOW`](crate::agent::INITIAL_WINDOW) bytes of
//! output and returns credit only as the consumer takes events, so a slow
//! consumer stops the agent reading the process's pipes (and only this
//! process: each exec has its own connection). Stdin is sent only against
//! the agent's credit, so a process that reads slowly slows its writer.

use std::sync::{Arc, Mutex};

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc};

use super::client::AgentConnection;
use crate::agent::{
    ExecStart, ExitStatus, Frame, FrameReader, FrameWriter, MAX_PAYLOAD_LEN, Message, RecvWindow,
    SendWindow, TtySize,
};
use crate::{Error, Result};

/// The stream id of the exec on its connection.
const STREAM: u32 = 1;
/// Output events buffered between the reader task and the consumer.
const EVENT_QUEUE: usize = 64;

/// What a running command produces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// It started, with this pid inside the sandbox.
    Started {
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// Bytes it wrote to stdout (or to its tty).
    Stdout(Vec<u8>),
    /// Bytes it wrote to stderr.
    Stderr(Vec<u8>),
    /// It ended; the last event.
    Exited(ExitStatus),
}

/// Commands for the writer task.
#[derive(Debug)]
enum Outgoing {
    Frame(Message),
}

/// Shared between the consumer side and the reader task.
#[derive(Debug)]
struct Shared {
    /// Credit the agent gave us for stdin.
    send: Mutex<SendWindow>,
    /// Our receive accounting for output.
    recv: Mutex<RecvWindow>,
    /// Woken when stdin credit arrives or stdin is closed.
    credit: Notify,
    /// The process closed its stdin (`StdinClosed`), or the exec ended.
    stdin_closed: Mutex<bool>,
}

/// A command running in a sandbox.
#[derive(Debug)]
pub struct ExecSession {
    events: mpsc::Receiver<Result<ExecEvent>>,
    out: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    finished: bool,
}

impl ExecSession {
    /// Starts `request` on `conn` (which the session then owns).
    pub async fn start(conn: AgentConnection, request: ExecStart) -> Result<ExecSession> {
        let (reader, mut writer) = conn.into_parts();
        writer
            .write_frame(&Frame::new(STREAM, Message::ExecStart(request)))
            .await?;
        let shared = Arc::new(Shared {
            send: Mutex::new(SendWindow::new()),
            recv: Mutex::new(RecvWindow::new()),
            credit: Notify::new(),
            stdin_closed: Mutex::new(false),
        });
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, out_rx));
        tokio::spawn(read_loop(reader, events_tx, shared.clone()));
        Ok(ExecSession {
            events,
            out,
            shared,
            finished: false,
        })
    }

    /// The next event; `None` after `Exited` (or once the connection is
    /// gone). An `Err` ends the session: the agent refused the command
    /// ([`Error::AgentRefused`]) or the connection failed.
    pub async fn next_event(&mut self) -> Option<Result<ExecEvent>> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await;
        match &event {
            Some(Ok(ExecEvent::Stdout(data) | ExecEvent::Stderr(data))) => {
                let increment = self
                    .shared
                    .recv
                    .lock()
                    .expect("window lock")
                    .on_consumed(data.len());
                if let Some(increment) = increment {
                    let _ = self
                        .out
                        .send(Outgoing::Frame(Message::WindowUpdate { increment }));
                }
            }
            Some(Ok(ExecEvent::Exited(_)) | Err(_)) | None => self.finished = true,
            Some(Ok(ExecEvent::Started { .. })) => {}
        }
        event
    }

    /// A handle for writing the command's stdin (meaningful when it was
    /// started with a piped stdin or a tty). Clones share the stream.
    pub fn stdin(&self) -> ExecStdin {
        ExecStdin {
            out: self.out.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Delivers `signal` to the process.
    pub fn signal(&self, signal: i32) -> Result<()> {
        self.send(Message::Signal { signal })
    }

    /// SIGKILLs the process and its process group.
    pub fn kill(&self) -> Result<()> {
        self.send(Message::Kill)
    }

    /// Resizes the command's tty.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.send(Message::Resize(TtySize { rows, cols }))
    }

    fn send(&self, message: Message) -> Result<()> {
        self.out
            .send(Outgoing::Frame(message))
            .map_err(|_| Error::AgentIo {
                op: "send to exec",
                source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            })
    }
}

/// The write side of a command's stdin.
#[derive(Debug, Clone)]
pub struct ExecStdin {
    out: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
}

impl ExecStdin {
    /// Writes all of `data`, waiting for the agent's credit as needed (so a
    /// slow reader inside slows this writer down). Fails with
    /// [`Error::StdinClosed`] once the process has closed its stdin or
    /// ended: not fatal for the exec, whose output can still be read.
    pub async fn write_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = loop {
                // Register for a wakeup before checking, so a grant between
                // the check and the wait is not lost.
                let notified = self.shared.credit.notified();
                if *self.shared.stdin_closed.lock().expect("stdin lock") {
                    return Err(Error::StdinClosed);
                }
                let n = self
                    .shared
                    .send
                    .lock()
                    .expect("window lock")
                    .sendable(data.len().min(MAX_PAYLOAD_LEN as usize));
                if n > 0 {
                    break n;
                }
                notified.await;
            };
            self.shared.send.lock().expect("window lock").consume(n);
            let (chunk, rest) = data.split_at(n);
            self.out
                .send(Outgoing::Frame(Message::Stdin(chunk.to_vec())))
                .map_err(|_| Error::StdinClosed)?;
            data = rest;
        }
        Ok(())
    }

    /// Closes stdin: the process reads EOF.
    pub fn close(&self) {
        let _ = self.out.send(Outgoing::Frame(Message::StdinClose));
    }
}

async fn write_loop(
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(Outgoing::Frame(message)) = rx.recv().await {
        if writer.feed(&Frame::new(STREAM, message)).await.is_err() {
            return;
        }
        // Batch what is queued, then flush once.
        while let Ok(Outgoing::Frame(message)) = rx.try_recv() {
            if writer.feed(&Frame::new(STREAM, message)).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(
    mut reader: FrameReader<OwnedReadHalf>,
    events: mpsc::Sender<Result<ExecEvent>>,
    shared: Arc<Shared>,
) {
    let close_stdin = || {
        *shared.stdin_closed.lock().expect("stdin lock") = true;
        shared.credit.notify_waiters();
    };
    loop {
        let frame = match reader.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                close_stdin();
                let _ = events
                    .send(Err(Error::AgentIo {
                        op: "read exec output",
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the agent closed the connection before the command ended",
                        ),
                    }))
                    .await;
                return;
            }
            Err(e) => {
                close_stdin();
                let _ = events.send(Err(e)).await;
                return;
            }
        };
        if frame.stream != STREAM {
            continue;
        }
        let len = frame.message.flow_len();
        let accounted = if len > 0 {
            shared
                .recv
                .lock()
                .expect("window lock")
                .on_data(STREAM, len)
        } else {
            Ok(())
        };
        if let Err(e) = accounted {
            close_stdin();
            let _ = events.send(Err(e)).await;
            return;
        }
        let event = match frame.message {
            Message::ExecStarted { pid } => ExecEvent::Started { pid },
            Message::Stdout(data) => ExecEvent::Stdout(data),
            Message::Stderr(data) => ExecEvent::Stderr(data),
            Message::WindowUpdate { increment } => {
                let granted = shared
                    .send
                    .lock()
                    .expect("window lock")
                    .grant(STREAM, increment);
                if let Err(e) = granted {
                    close_stdin();
                    let _ = events.send(Err(e)).await;
                    return;
                }
                shared.credit.notify_waiters();
                continue;
            }
            Message::StdinClosed => {
                close_stdin();
                continue;
            }
            Message::Exited(status) => {
                close_stdin();
                let _ = events.send(Ok(ExecEvent::Exited(status))).await;
                return;
            }
            Message::Error(e) => {
                close_stdin();
                let _ = events
                    .send(Err(Error::AgentRefused {
                        kind: e.kind,
                        errno: e.errno,
                        message: e.message,
                    }))
                    .await;
                return;
            }
            _ => continue,
        };
        if events.send(Ok(event)).await.is_err() {
            // The consumer is gone: dropping the connection makes the agent
            // kill the process.
            return;
        }
    }
}
