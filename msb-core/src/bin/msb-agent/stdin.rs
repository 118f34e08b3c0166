//! Piped stdin for one exec stream.
//!
//! `Stdin` frames land in a per-stream inbox, bounded in bytes by the
//! stream's receive window (the host may never have more than
//! [`INITIAL_WINDOW`](msb_core::agent::INITIAL_WINDOW) bytes unacknowledged,
//! and credit is only returned once bytes are written to the pipe). A writer
//! task drains the inbox into the pipe in order and reports what it wrote, so
//! a process that reads slowly stalls only its own stream's stdin.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// The most bytes written to the pipe at once.
const CHUNK: usize = 64 * 1024;

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
    /// Starts the writer task; its events arrive on the returned receiver.
    pub fn start(pipe: pipe::Sender) -> (StdinPipe, mpsc::UnboundedReceiver<Event>) {
        let inbox = Rc::new(RefCell::new(Inbox::default()));
        let wake = Rc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::task::spawn_local(write_loop(pipe, inbox.clone(), wake.clone(), tx));
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

async fn write_loop(
    mut pipe: pipe::Sender,
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
    drop(pipe);
    let _ = events.send(Event::Done);
}
