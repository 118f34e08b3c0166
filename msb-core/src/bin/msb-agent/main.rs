//! `msb-agent`: the guest agent, PID 1 of every sandbox.
//!
//! A static binary (`cargo xtask build-agent`) injected into the rootfs at
//! `/.msb/agent`. It serves the agent protocol ([`msb_core::agent`]) on the
//! channel its parent names (see [`channel`]: one inherited connection
//! `MSB_AGENT_FD`, an inherited listening socket `MSB_AGENT_LISTEN_FD`, or a
//! vsock port `MSB_AGENT_VSOCK_PORT`), on a single-threaded tokio runtime.
//! Each connection ([`connection`]) is served on its own:
//!
//! - handshake: `Hello`, then `Ready` with boot timings (microseconds from
//!   the start of `main`: `mounts` in init mode, `channel_open` or
//!   `listening`, then `ready` for this connection);
//! - `ExecStart`: one task per stream ([`exec`]); output is forwarded under
//!   the stream's send window; `Signal`, `Kill`, `Reset`, `WindowUpdate`,
//!   `Stdin` and `StdinClose` reach the stream's task (piped stdin is written
//!   by a per-stream writer under the stream's receive window);
//!   `tty` runs the process on a new pseudo-terminal (`Resize` resizes
//!   it), `user` switches to a user of the sandbox's own `/etc/passwd` and
//!   `/etc/group`, and a start failure has a precise kind (`NotFound`,
//!   `PermissionDenied`, `NotExecutable`, `BadCwd`, `NoSuchUser`);
//! - `FsRequest`: one task per stream ([`fs`]); `Read` content goes out
//!   under the stream's send window, `Write` content comes in under its
//!   receive window (`FileChunk`, `FileEnd`, `WindowUpdate`, `Reset` reach
//!   the stream's task);
//! - `Ping` → `Pong`;
//! - the end of a connection SIGKILLs the processes its execs started (in
//!   `MSB_AGENT_FD` mode it is `Shutdown{0}` instead);
//! - `Shutdown{grace_ms}` on any connection, or SIGTERM/SIGINT to the agent
//!   (grace 10 s): SIGTERM to every process (as PID 1: `kill(-1)`), SIGKILL
//!   after the grace period, each connection flushes (≤ 1 s), exit 0 — or,
//!   with `MSB_AGENT_INIT=1` ([`init`]), sync and power off;
//! - zombies are reaped by one reaper ([`reaper`]) that never steals the
//!   status of a process an exec is waiting for.
//!
//! Not yet: forwarding signals sent to the agent itself.

mod channel;
mod connection;
mod exec;
mod fdstream;
mod fs;
mod init;
mod lifecycle;
mod reaper;
mod stdin;
mod writer;

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use msb_core::agent::BootTiming;
use tokio::task::JoinSet;

use crate::channel::{Channel, Listener};
use crate::lifecycle::Agent;

/// The agent's version string, sent in `Hello` and `Ready`.
const SOFTWARE: &str = concat!("msb-agent/", env!("CARGO_PKG_VERSION"));

/// How long connections get, all together, to flush at shutdown (each
/// takes at most a second; this bounds the stragglers).
const DRAIN: Duration = Duration::from_millis(1500);

/// How long to wait before accepting again after a transient failure.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the agent is the microVM's init (see [`init`]).
static INIT: AtomicBool = AtomicBool::new(false);

fn main() {
    let started = Instant::now();
    let mut timings = Vec::new();
    if init::enabled() {
        INIT.store(true, Ordering::Relaxed);
        init::setup();
        timings.push(timing("mounts", started));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, serve(started, timings));
    finish(code);
}

/// Ends the agent: exits with `code`, or as the microVM's init, powers off.
fn finish(code: i32) -> ! {
    if INIT.load(Ordering::Relaxed) {
        init::power_off();
    }
    std::process::exit(code);
}

fn fail(message: &str) -> ! {
    eprintln!("msb-agent: {message}");
    finish(1);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn timing(phase: &str, started: Instant) -> BootTiming {
    BootTiming {
        phase: phase.into(),
        micros: micros(started.elapsed()),
    }
}

async fn serve(started: Instant, mut timings: Vec<BootTiming>) -> i32 {
    let registry = Rc::new(std::cell::RefCell::new(reaper::Registry::default()));
    if let Err(e) = reaper::start(registry.clone()) {
        fail(&format!("cannot install the SIGCHLD handler: {e}"));
    }
    let channel = match Channel::from_env() {
        Ok(channel) => channel,
        Err(e) => fail(&format!("no agent channel: {e}")),
    };
    let agent = Rc::new(Agent::new(
        registry,
        started,
        matches!(channel, Channel::Fd(_)),
    ));
    lifecycle::watch_signals(agent.clone());

    let mut connections = JoinSet::new();
    let listener = match channel {
        Channel::Fd(fd) => {
            let (r, w) = match Channel::open(fd) {
                Ok(rw) => rw,
                Err(e) => fail(&format!("cannot open the agent channel: {e}")),
            };
            timings.push(timing("channel_open", started));
            connections.spawn_local(connection::serve(0, r, w, timings.clone(), agent.clone()));
            None
        }
        listening => match listening.listen() {
            Ok(listener) => {
                timings.push(timing("listening", started));
                Some(listener)
            }
            Err(e) => fail(&format!("cannot listen on {listening:?}: {e}")),
        },
    };

    let mut next_id: u64 = 1;
    let grace_ms = loop {
        tokio::select! {
            biased;
            grace_ms = agent.shutdown_requested() => break grace_ms,
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((r, w)) => {
                    let id = next_id;
                    next_id += 1;
                    connections.spawn_local(connection::serve(id, r, w, timings.clone(), agent.clone()));
                }
                Err(e) if channel::is_transient(&e) => {
                    eprintln!("msb-agent: accepting a connection failed: {e}; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(e) => {
                    eprintln!("msb-agent: accepting connections failed: {e}; shutting down");
                    agent.request_shutdown(lifecycle::SIGNAL_GRACE_MS);
                }
            },
            // Forget connections that ended.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    agent.end_processes(grace_ms).await;
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("msb-agent: some connections did not flush in time");
    }
    0
}

/// The next connection; never resolves without a listener.
async fn accept(
    listener: Option<&Listener>,
) -> std::io::Result<(channel::ChannelReader, channel::ChannelWriter)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}
