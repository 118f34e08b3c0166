//! Stdin for one exec stream: a pipe, or the master of its tty.
//!
//! `Stdin` frames land in a per-stream inbox, bounded in bytes by the
//! stream's receive window (the host may never have more than
//! [`INITIAL_WINDOW`](msb_core::agent::INITIAL_WINDOW) bytes unacknowledged,
//! and credit is only returned once bytes are written to the pipe). A writer
//! task drains the inbox into the pipe in order and reports what it wrote, so
//! a process that reads slowly stalls only its own stream's stdin.
//!
//! With a tty, closing cannot mean closing the master (that would hang up
//! the terminal): `StdinClose` writes the terminal's end-of-file character
//! (`^D`, see [`StdinPipe::start`]'s `eof`) after the queued bytes instead,
//! which a reader in canonical mode sees as end of input.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// The most bytes written to the pipe at once.
const CHUNK: usize = 256 * 1024;

/// What the writer task tells the exec task.
#[derive(Debug)]
pub enum Event {
    /// `n` bytes were written to the pipe.
    Written(usize),
    /// The pipe broke (EPIPE or another error): the process stopped reading.
    Broken,
    /// Everything was written and the pipe closed after `StdinClose`.
    Done,
}

#[derive(Debug, Default)]
struct Inbox {
    data: VecDeque<u8>,
    eof: bool,
}

/// The exec task's handle on the writer task.
#[derive(Debug)]
pub struct StdinPipe {
    inbox: Rc<RefCell<Inbox>>,
    wake: Rc<Notify>,
    task: JoinHandle<()>,
}

impl StdinPipe {
    /// Starts the writer task on `pipe`; its events arrive on the returned
    /// receiver. `eof` is written after the last byte on close, before
    /// `pipe` is dropped (empty for a pipe, whose closing is the EOF).
    pub fn start<W>(pipe: W, eof: &'static [u8]) -> (StdinPipe, mpsc::UnboundedReceiver<Event>)
    where
        W: AsyncWrite + Unpin + 'static,
    {
        let inbox = Rc::new(RefCell::new(Inbox::default()));
        let wake = Rc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::task::spawn_local(write_loop(pipe, eof, inbox.clone(), wake.clone(), tx));
        (StdinPipe { inbox, wake, task }, rx)
    }

    /// Queues bytes (the caller has checked them against the window).
    pub fn push(&self, data: &[u8]) {
        self.inbox.borrow_mut().data.extend(data);
        self.wake.notify_one();
    }

    /// Closes the pipe once everything queued is written.
    pub fn close(&self) {
        self.inbox.borrow_mut().eof = true;
        self.wake.notify_one();
    }

    /// Stops the writer now, dropping what is queued and closing the pipe.
    pub fn abort(&self) {
        self.task.abort();
        self.inbox.borrow_mut().data.clear();
    }
}

impl Drop for StdinPipe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut pipe: W,
    eof: &'static [u8],
    inbox: Rc<RefCell<Inbox>>,
    wake: Rc<Notify>,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let chunk = {
            let mut inbox = inbox.borrow_mut();
            if inbox.data.is_empty() {
                if inbox.eof {
                    break;
                }
                None
            } else {
                let n = inbox.data.len().min(CHUNK);
                Some(inbox.data.drain(..n).collect::<Vec<u8>>())
            }
        };
        let Some(chunk) = chunk else {
            // notify_one stores a permit, so a push between the check and
            // here is not lost.
            wake.notified().await;
            continue;
        };
        let mut written = 0;
        while written < chunk.len() {
            match pipe.write(&chunk[written..]).await {
                Ok(0) | Err(_) => {
                    let _ = events.send(Event::Broken);
                    return;
                }
                Ok(n) => {
                    written += n;
                    let _ = events.send(Event::Written(n));
                }
            }
        }
    }
    if !eof.is_empty() && pipe.write_all(eof).await.is_err() {
        let _ = events.send(Event::Broken);
        return;
    }
    drop(pipe);
    let _ = events.send(Event::Done);
}
