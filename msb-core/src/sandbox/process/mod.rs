//! The sandbox process: one per sandbox, started by the creating program
//! (the `msb-sandbox` binary calls [`main`]).
//!
//! ```text
//! creator ──spawn──▶ msb-sandbox <dir>
//!    │  stdin: "go" once the process is recorded in the state
//!    ▲                 │ reads <dir>/config.json (SandboxSpec)
//!    │ boot report     │ rootfs: overlay (or copy) + agent at /.msb/agent
//!    └── stdout ───────┤ binds <dir>/agent.sock
//!                      ├─ namespace: agent = PID 1 of new namespaces,
//!                      │   given the listening socket; cgroup limits
//!                      └─ microVM: libkrun, agent = guest init, vsock port
//!                          mapped to <dir>/agent.sock
//! ```
//!
//! It reports `ready` once the agent answered a handshake on the socket
//! (or `failed` with the stage and reason), then keeps one connection to
//! the agent open until it is told to stop: SIGTERM or SIGINT, or the exit
//! of its creator unless the sandbox is detached. A stop asks the agent to
//! shut down (SIGTERM to everything inside, SIGKILL after the spec's
//! grace), waits, cleans up and records the sandbox as stopped; an agent
//! that dies on its own is recorded as crashed.
//!
//! Standard error is the runtime log (`<dir>/runtime.log`, set up by the
//! creator); the guest's output goes to `<dir>/console.log`.

pub mod events;
#[cfg(feature = "krun")]
mod microvm;
mod namespace;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use events::{BootEvent, Reporter};

use super::control::PinnedProcess;
use super::spec::{DETACHED_MARKER, SandboxSpec};
use super::state::{Backend, SandboxStatus, StateStore};
use crate::rootfs::{RootfsLayout, RootfsSource};
use crate::{Error, Result};

/// What the creator writes on the sandbox process's standard input once it
/// has recorded the process in the sandbox's state.
pub(crate) const GO_AHEAD: u8 = b'g';

/// Runs the sandbox whose state directory is `dir`; returns the process's
/// exit code (0 after an orderly stop).
///
/// Nothing happens before the creator's go-ahead byte: a sandbox process
/// whose creator died before recording it (end of standard input instead)
/// exits at once and untouched. Nobody could stop it otherwise, and the
/// directory it was given may already hold the sandbox that replaced it.
pub fn main(dir: &Path) -> i32 {
    let started = Instant::now();
    if !go_ahead() {
        tracing::info!(dir = %dir.display(), "creator gone before recording this sandbox process: exiting untouched");
        return 0;
    }
    let mut reporter = Reporter::default();
    let spec = match SandboxSpec::read_from(dir) {
        Ok(spec) => spec,
        Err(e) => {
            reporter.send(&failed("config", &e));
            return 1;
        }
    };
    tracing::info!(sandbox = %spec.name, backend = ?spec.backend, "sandbox process starting");
    match spec.backend {
        Backend::Namespace => namespace::main(spec, dir, started, reporter),
        #[cfg(feature = "krun")]
        Backend::Microvm => microvm::main(spec, dir, started, reporter),
        #[allow(unreachable_patterns)]
        _ => {
            reporter.send(&BootEvent::Failed {
                stage: "backend".into(),
                reason: "this build of msb-sandbox has no microVM support (feature `krun`)".into(),
            });
            1
        }
    }
}

/// Waits for the creator's [`GO_AHEAD`] on standard input, then puts
/// `/dev/null` there. False at the end of input (the creator is gone).
fn go_ahead() -> bool {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut byte = [0u8];
    let go = loop {
        match std::io::stdin().lock().read(&mut byte) {
            Ok(1) => break byte[0] == GO_AHEAD,
            Ok(_) => break false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto descriptor 0 of two descriptors we hold open;
        // the pipe it replaces is not used again.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    go
}

/// A `failed` event for `e` at `stage`.
pub(crate) fn failed(stage: &str, e: &dyn std::fmt::Display) -> BootEvent {
    BootEvent::Failed {
        stage: stage.into(),
        reason: e.to_string(),
    }
}

/// The rootfs layout for `spec` in `dir`, prepared, with the agent injected.
fn prepare_rootfs(spec: &SandboxSpec, dir: &Path) -> Result<RootfsLayout> {
    let source = RootfsSource::Directory(spec.rootfs.lower().to_path_buf());
    let layout = RootfsLayout::for_sandbox(dir, &source);
    layout.prepare()?;
    layout.inject_agent(&spec.agent)?;
    Ok(layout)
}

/// The state home of the sandbox directory `dir` (`<home>/sandboxes/<name>`).
fn home_of(dir: &Path) -> PathBuf {
    dir.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Records the sandbox's final status, unless its name now belongs to
/// another incarnation.
fn record_final(spec: &SandboxSpec, dir: &Path, status: SandboxStatus) {
    let result = StateStore::open(home_of(dir))
        .and_then(|s| s.set_final_status(&spec.name, &spec.instance_id, status));
    match result {
        Ok(_) => tracing::info!(sandbox = %spec.name, ?status, "recorded final status"),
        Err(Error::SandboxNotFound { .. }) => {
            tracing::info!(sandbox = %spec.name, "record gone or replaced; not updated")
        }
        Err(e) => tracing::warn!(sandbox = %spec.name, error = %e, "cannot record final status"),
    }
}

/// Resolves when the creating process has exited and the sandbox is not
/// detached; never when there is no creator to watch or it is detached.
async fn creator_gone(spec: &SandboxSpec, dir: &Path) {
    let Some(creator) = spec.creator else {
        return std::future::pending().await;
    };
    if let Ok(Some(process)) = PinnedProcess::open(creator) {
        let _ = process.exited().await;
    }
    // The marker names the instance it detaches: a sandbox process whose
    // creator died before recording it must not take a later instance's
    // marker, in the same directory, for its own and run on unrecorded.
    let marker = std::fs::read_to_string(dir.join(DETACHED_MARKER)).unwrap_or_default();
    if marker == spec.instance_id {
        tracing::info!("creator exited; the sandbox is detached and keeps running");
        return std::future::pending().await;
    }
    tracing::info!(pid = creator.pid, "creator exited: stopping");
}

/// Why the sandbox process is ending the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    /// SIGTERM or SIGINT: an orderly stop.
    Signal,
    /// The (non-detached) creator exited.
    CreatorExited,
    /// The agent closed its connection or exited on its own.
    AgentExited,
}
