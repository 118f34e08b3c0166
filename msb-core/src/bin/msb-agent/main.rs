//! `msb-agent`: the guest agent, PID 1 of every sandbox.
//!
//! A static binary (`cargo xtask build-agent`) injected into the rootfs at
//! `/.msb/agent`. It serves the agent protocol ([`msb_core::agent`]) on the
//! channel its parent hands it (see [`channel`]), on a single-threaded tokio
//! runtime:
//!
//! - handshake: `Hello`, then `Ready` with boot timings (measured from the
//!   start of `main`);
//! - `ExecStart`: one task per stream ([`exec`]); output is forwarded under
//!   the stream's send window; `Signal`, `Kill`, `Reset`, `WindowUpdate`,
//!   `Stdin` and `StdinClose` reach the stream's task (piped stdin is written
//!   by a per-stream writer under the stream's receive window);
//! - `Ping` → `Pong`;
//! - `Shutdown{grace_ms}`: SIGTERM to every process (as PID 1: `kill(-1)`),
//!   SIGKILL after the grace period, flush, exit 0. The end of the channel
//!   is treated as `Shutdown{0}`;
//! - zombies are reaped by one reaper ([`reaper`]) that never steals the
//!   status of a process an exec is waiting for.
//!
//! Not yet: ttys, `user`, file operations (all answered
//! `Error{Unsupported}`), mounts and power-off for the microVM backend, sync
//! on shutdown, forwarding signals sent to the agent itself, vsock.

mod channel;
mod exec;
mod reaper;
mod stdin;
mod writer;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use msb_core::agent::{
    BootTiming, CONNECTION_STREAM, ErrorKind, FrameReader, FrameWriter, Message, RemoteError,
    SUPPORTED_VERSIONS, agent_handshake,
};
use tokio::sync::{mpsc, oneshot};

use crate::exec::Control;
use crate::writer::Out;

/// The agent's version string, sent in `Hello` and `Ready`.
const SOFTWARE: &str = concat!("msb-agent/", env!("CARGO_PKG_VERSION"));

fn main() {
    let started = Instant::now();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, serve(started));
    std::process::exit(code);
}

fn fail(message: &str) -> ! {
    eprintln!("msb-agent: {message}");
    std::process::exit(1);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn serve(started: Instant) -> i32 {
    let registry = Rc::new(std::cell::RefCell::new(reaper::Registry::default()));
    if let Err(e) = reaper::start(registry.clone()) {
        fail(&format!("cannot install the SIGCHLD handler: {e}"));
    }
    let (r, w) = match channel::Channel::from_env().and_then(channel::Channel::open) {
        Ok(rw) => rw,
        Err(e) => fail(&format!("cannot open the agent channel: {e}")),
    };
    let channel_open = started.elapsed();
    let mut reader = FrameReader::new(r);
    let mut frame_writer = FrameWriter::new(w);
    let timings = vec![
        BootTiming {
            phase: "channel_open".into(),
            micros: micros(channel_open),
        },
        BootTiming {
            phase: "ready".into(),
            micros: micros(started.elapsed()),
        },
    ];
    if let Err(e) = agent_handshake(
        &mut reader,
        &mut frame_writer,
        SUPPORTED_VERSIONS,
        SOFTWARE,
        timings,
    )
    .await
    {
        fail(&format!("handshake failed: {e}"));
    }
    let out = writer::start(frame_writer);

    let mut used: HashSet<u32> = HashSet::new();
    let mut streams: HashMap<u32, mpsc::UnboundedSender<Control>> = HashMap::new();
    let grace_ms = loop {
        let frame = match reader.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                eprintln!("msb-agent: the host closed the channel; shutting down");
                break 0;
            }
            Err(e) => {
                eprintln!("msb-agent: reading the channel failed: {e}; shutting down");
                break 0;
            }
        };
        let stream = frame.stream;
        let to_stream = |streams: &mut HashMap<u32, mpsc::UnboundedSender<Control>>, c| {
            if let Some(tx) = streams.get(&stream)
                && tx.send(c).is_err()
            {
                streams.remove(&stream);
            }
        };
        match frame.message {
            Message::Shutdown { grace_ms } => break grace_ms,
            Message::Ping { nonce } => {
                let _ = out
                    .send(Out::Frame(CONNECTION_STREAM, Message::Pong { nonce }))
                    .await;
            }
            Message::ExecStart(req) => {
                if !used.insert(stream) {
                    reply_error(
                        &out,
                        stream,
                        ErrorKind::StreamInUse,
                        "stream id already used",
                    )
                    .await;
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                streams.insert(stream, tx);
                tokio::task::spawn_local(exec::run(stream, req, registry.clone(), out.clone(), rx));
            }
            Message::FsRequest(_) => {
                if used.insert(stream) {
                    reply_error(
                        &out,
                        stream,
                        ErrorKind::Unsupported,
                        "file operations are not supported yet",
                    )
                    .await;
                } else {
                    reply_error(
                        &out,
                        stream,
                        ErrorKind::StreamInUse,
                        "stream id already used",
                    )
                    .await;
                }
            }
            Message::WindowUpdate { increment } => {
                to_stream(&mut streams, Control::Window(increment))
            }
            Message::Signal { signal } => to_stream(&mut streams, Control::Signal(signal)),
            Message::Kill => to_stream(&mut streams, Control::Kill),
            Message::Reset => {
                to_stream(&mut streams, Control::Reset);
                streams.remove(&stream);
            }
            Message::Stdin(data) => to_stream(&mut streams, Control::Stdin(data)),
            Message::StdinClose => to_stream(&mut streams, Control::StdinClose),
            // Nothing else is meaningful from the host.
            _ => {}
        }
    };
    shutdown(&registry, grace_ms).await;
    // Let exec tasks queue their last frames, then flush them.
    tokio::task::yield_now().await;
    let (done, flushed) = oneshot::channel();
    if out.send(Out::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), flushed).await;
    }
    0
}

async fn reply_error(out: &mpsc::Sender<Out>, stream: u32, kind: ErrorKind, message: &str) {
    let error = RemoteError {
        kind,
        errno: 0,
        message: message.to_owned(),
    };
    let _ = out.send(Out::Frame(stream, Message::Error(error))).await;
}

/// SIGTERM everything, SIGKILL what is left after `grace_ms`, and give the
/// exec tasks a moment to report the exits.
async fn shutdown(registry: &reaper::SharedRegistry, grace_ms: u32) {
    let pid1 = std::process::id() == 1;
    let signal_everything = |sig| {
        registry.borrow().signal_all(sig);
        if pid1 {
            // SAFETY: kill(-1) from PID 1 signals every other process of the
            // sandbox (never PID 1 itself); that is the point of shutdown.
            unsafe { libc::kill(-1, sig) };
        }
    };
    let all_reaped = || async {
        while !registry.borrow().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    signal_everything(libc::SIGTERM);
    let grace = Duration::from_millis(u64::from(grace_ms));
    if tokio::time::timeout(grace, all_reaped()).await.is_err() {
        signal_everything(libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_millis(500), all_reaped()).await;
    }
    // Exec tasks wake on their status and queue `Exited`.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}
