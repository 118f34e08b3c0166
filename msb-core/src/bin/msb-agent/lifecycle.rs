//! The agent's shared state and its one shutdown.
//!
//! Shutdown is requested once (by a connection's `Shutdown`, the end of the
//! only channel in `MSB_AGENT_FD` mode, SIGTERM/SIGINT, or a dead listener);
//! the first request's grace period wins. The main task then stops
//! accepting, SIGTERMs every process, SIGKILLs what is left after the grace
//! period, and announces that everything is reaped, so each connection can
//! flush its last `Exited` frames before the agent exits.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::reaper::SharedRegistry;

/// The grace period of a shutdown by signal.
pub const SIGNAL_GRACE_MS: u32 = 10_000;

/// What every connection shares.
#[derive(Debug)]
pub struct Agent {
    /// The children of every connection.
    pub registry: SharedRegistry,
    /// When `main` started: boot timings are measured from here.
    pub started: Instant,
    /// Whether there is only one channel (`MSB_AGENT_FD`), whose end shuts
    /// the agent down.
    pub single: bool,
    /// `Some(grace_ms)` once shutdown is requested.
    shutdown: watch::Sender<Option<u32>>,
    /// `true` once every process is gone (or given up on).
    reaped: watch::Sender<bool>,
}

impl Agent {
    /// The agent's state; `single` as in [`Agent::single`].
    pub fn new(registry: SharedRegistry, started: Instant, single: bool) -> Agent {
        Agent {
            registry,
            started,
            single,
            shutdown: watch::Sender::new(None),
            reaped: watch::Sender::new(false),
        }
    }

    /// Requests shutdown; a no-op once requested.
    pub fn request_shutdown(&self, grace_ms: u32) {
        self.shutdown.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(grace_ms);
                true
            } else {
                false
            }
        });
    }

    /// Resolves (with the grace period) once shutdown is requested.
    pub async fn shutdown_requested(&self) -> u32 {
        let mut rx = self.shutdown.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let grace = rx.wait_for(Option::is_some).await.map(|s| *s);
        grace.ok().flatten().unwrap_or(0)
    }

    /// Resolves once shutdown has ended every process.
    pub async fn all_reaped(&self) {
        let mut rx = self.reaped.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// SIGTERMs every process, SIGKILLs what is left after `grace_ms`, gives
    /// the exec tasks a moment to see the exits, then announces
    /// [`all_reaped`](Self::all_reaped).
    pub async fn end_processes(&self, grace_ms: u32) {
        let pid1 = std::process::id() == 1;
        let signal_everything = |sig| {
            self.registry.borrow().signal_all(sig);
            if pid1 {
                // SAFETY: kill(-1) from PID 1 signals every other process of
                // the sandbox (never PID 1 itself); that is the point of
                // shutdown.
                unsafe { libc::kill(-1, sig) };
            }
        };
        let all_gone = || async {
            while !self.registry.borrow().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        signal_everything(libc::SIGTERM);
        let grace = Duration::from_millis(u64::from(grace_ms));
        if tokio::time::timeout(grace, all_gone()).await.is_err() {
            signal_everything(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_millis(500), all_gone()).await;
        }
        // Exec tasks wake on their status and queue `Exited`.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        self.reaped.send_replace(true);
    }
}

/// Requests a shutdown with [`SIGNAL_GRACE_MS`] on SIGTERM or SIGINT, for
/// as long as the current `LocalSet` runs. (As PID 1 of a PID namespace the
/// agent only gets the signals it handles.)
pub fn watch_signals(agent: std::rc::Rc<Agent>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("msb-agent: cannot handle SIGTERM/SIGINT: {e}");
            return;
        }
    };
    tokio::task::spawn_local(async move {
        let (mut term, mut int) = (term, int);
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("msb-agent: {name}: shutting down");
        agent.request_shutdown(SIGNAL_GRACE_MS);
    });
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn the_first_shutdown_request_wins() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let agent = Agent::new(
                Rc::new(RefCell::new(Default::default())),
                Instant::now(),
                false,
            );
            let waiting = agent.shutdown_requested();
            agent.request_shutdown(7);
            agent.request_shutdown(9);
            assert_eq!(waiting.await, 7);
            assert_eq!(agent.shutdown_requested().await, 7);
        });
    }
}
