//! Signalling and awaiting a sandbox process that need not be our child.
//!
//! A recorded [`ProcessIdentity`] (pid + start time) is turned into a pidfd
//! (`pidfd_open`), and the start time is checked again *after* opening it:
//! from then on the descriptor names that one process, so a signal can never
//! reach a process that later got the same pid, and its exit is awaited by
//! polling the descriptor (readable once the process has terminated) — no
//! polling loop on `/proc`, no unbounded wait.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::state::ProcessIdentity;
use crate::{Error, Result};

/// A live process, pinned by a pidfd.
#[derive(Debug)]
pub struct PinnedProcess {
    identity: ProcessIdentity,
    pidfd: OwnedFd,
}

impl PinnedProcess {
    /// Pins `identity`; `Ok(None)` when that process no longer exists (it
    /// exited, or its pid now belongs to another process).
    pub fn open(identity: ProcessIdentity) -> Result<Option<PinnedProcess>> {
        // SAFETY: pidfd_open(2) takes a pid and flags (0) and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, identity.pid as libc::pid_t, 0u32) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(Error::SandboxProcess {
                    op: "pidfd_open",
                    pid: identity.pid,
                    source: err,
                }),
            };
        }
        // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        // The pid may have been reused between the record and the open:
        // the start time tells, and from now on the pidfd cannot drift.
        if !identity.is_alive() {
            return Ok(None);
        }
        Ok(Some(PinnedProcess { identity, pidfd }))
    }

    /// The process's identity.
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// Sends `signal`. A process that has exited meanwhile is not an error.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        // SAFETY: a pidfd we own; no siginfo; flags 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::SandboxProcess {
                    op: "signal",
                    pid: self.identity.pid,
                    source: err,
                });
            }
        }
        Ok(())
    }

    /// Waits until the process has terminated (a zombie not yet reaped by
    /// its parent counts as terminated).
    pub async fn exited(&self) -> Result<()> {
        let dup = self
            .pidfd
            .try_clone()
            .map_err(|source| Error::SandboxProcess {
                op: "duplicate pidfd of",
                pid: self.identity.pid,
                source,
            })?;
        let fd = pollable(dup).map_err(|source| Error::SandboxProcess {
            op: "poll pidfd of",
            pid: self.identity.pid,
            source,
        })?;
        let mut guard = fd
            .readable()
            .await
            .map_err(|source| Error::SandboxProcess {
                op: "poll pidfd of",
                pid: self.identity.pid,
                source,
            })?;
        // A pidfd stays readable once the process is gone.
        guard.retain_ready();
        Ok(())
    }

    /// Waits at most `timeout` for the process to terminate; `true` if it did.
    pub async fn exited_within(&self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.exited()).await {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace` (at once
    /// when `grace` is zero), and waits for the exit.
    pub async fn terminate(&self, grace: Duration) -> Result<()> {
        if !grace.is_zero() {
            self.signal(libc::SIGTERM)?;
            if self.exited_within(grace).await? {
                return Ok(());
            }
            tracing::debug!(
                pid = self.identity.pid,
                ?grace,
                "grace period over: SIGKILL"
            );
        }
        self.signal(libc::SIGKILL)?;
        self.exited().await
    }
}

/// Registers `fd` (a pidfd) with the tokio reactor for readability.
pub(crate) fn pollable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`, so the descriptor stays
    // open and names the same file description until the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn terminate_waits_for_the_real_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let identity = ProcessIdentity::of(child.id()).unwrap();
        let pinned = PinnedProcess::open(identity).unwrap().unwrap();
        assert!(
            !pinned
                .exited_within(Duration::from_millis(50))
                .await
                .unwrap()
        );
        let started = std::time::Instant::now();
        pinned.terminate(Duration::from_secs(5)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(!identity.is_alive());
        child.wait().unwrap();
        // Gone now: nothing to pin.
        assert!(PinnedProcess::open(identity).unwrap().is_none());
    }

    #[tokio::test]
    async fn zero_grace_kills_at_once_even_when_sigterm_is_ignored() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .spawn()
            .unwrap();
        let identity = ProcessIdentity::of(child.id()).unwrap();
        let pinned = PinnedProcess::open(identity).unwrap().unwrap();
        pinned.terminate(Duration::ZERO).await.unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_stale_identity_is_not_pinned() {
        let me = ProcessIdentity::current().unwrap();
        let stale = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(PinnedProcess::open(stale).unwrap().is_none());
    }
}
