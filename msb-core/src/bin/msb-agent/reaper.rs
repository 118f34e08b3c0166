//! Reaping children: the exit statuses of the processes the agent starts,
//! and, as PID 1, every orphan reparented to it.
//!
//! One reaper owns every `waitpid`: nothing else in the agent waits for a
//! child (no `tokio::process`, no `std::process::Child::wait`). It calls
//! `waitpid(-1, WNOHANG)` until no zombie is left, each time SIGCHLD arrives
//! (a self-pipe written by the signal handler) and, as a safety net, once a
//! second. A reaped pid registered by an exec is handed its status through a
//! oneshot channel; any other pid is an orphan and its status is dropped.
//!
//! Exec tasks register a pid right after `spawn` returns, with no `.await`
//! in between; the runtime is single-threaded, so the reaper task cannot run
//! in that gap and can never reap a known child before it is registered.
//! Signals to a child go through [`Registry::signal`], which only signals a
//! pid that is still registered (not yet reaped), so a recycled pid is never
//! hit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// The write end of the SIGCHLD self-pipe, for the signal handler.
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

/// The children started by execs and not yet reaped: pid → the connection
/// that started it and where its raw wait status goes.
#[derive(Debug, Default)]
pub struct Registry {
    children: HashMap<libc::pid_t, Child>,
}

/// One registered child.
#[derive(Debug)]
struct Child {
    /// The connection whose exec started it.
    owner: u64,
    /// Where its raw wait status goes.
    status: oneshot::Sender<libc::c_int>,
}

/// The registry, shared by the tasks of the agent's single thread.
pub type SharedRegistry = Rc<RefCell<Registry>>;

impl Registry {
    /// Registers `pid`, started by connection `owner`; its raw wait status
    /// arrives on the returned receiver.
    pub fn register(&mut self, pid: libc::pid_t, owner: u64) -> oneshot::Receiver<libc::c_int> {
        let (tx, rx) = oneshot::channel();
        self.children.insert(pid, Child { owner, status: tx });
        rx
    }

    /// Whether any registered child is still unreaped.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Sends `signal` to `pid` (to its process group too when `group`), only
    /// if it is still registered. Returns whether it was.
    pub fn signal(&self, pid: libc::pid_t, signal: libc::c_int, group: bool) -> bool {
        if !self.children.contains_key(&pid) {
            return false;
        }
        if group {
            // SAFETY: kill(2) with a negative pid signals the process group
            // the child leads (it was started with process_group(0)); the
            // child is unreaped, so its pid (= pgid) is not recycled.
            unsafe { libc::kill(-pid, signal) };
        }
        // SAFETY: kill(2) on an unreaped child of ours.
        unsafe { libc::kill(pid, signal) };
        true
    }

    /// Signals every registered child and its process group.
    pub fn signal_all(&self, signal: libc::c_int) {
        for &pid in self.children.keys() {
            self.signal(pid, signal, true);
        }
    }

    /// Signals every child connection `owner` started, and their process
    /// groups. Returns how many there were.
    pub fn signal_owner(&self, owner: u64, signal: libc::c_int) -> usize {
        let mut n = 0;
        for (&pid, child) in &self.children {
            if child.owner == owner {
                self.signal(pid, signal, true);
                n += 1;
            }
        }
        n
    }

    /// Reaps every zombie child without blocking.
    fn reap_all(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid(2) with a valid out-pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                // 0: children left, none exited; -1: ECHILD (none) or EINTR.
                if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if let Some(child) = self.children.remove(&pid) {
                let _ = child.status.send(status);
            }
        }
    }
}

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: __errno_location has no preconditions; it returns this
    // thread's errno slot, valid for the thread's lifetime.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: `errno` points to this thread's errno. Saving and restoring it
    // keeps the handler from clobbering the interrupted code's errno.
    let saved = unsafe { *errno };
    let byte = 1u8;
    // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking (a full
    // pipe already holds a wake-up, so a failed write loses nothing).
    unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// Installs the SIGCHLD handler and returns the self-pipe's read end.
fn install() -> io::Result<pipe::Receiver> {
    let (r, w) = std::io::pipe()?;
    let w: OwnedFd = w.into();
    let flags = OFlag::from_bits_truncate(fcntl(&w, FcntlArg::F_GETFL)?);
    fcntl(&w, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let rx = pipe::Receiver::from_owned_fd(r.into())?;
    // The write end lives as long as the process (the handler uses it).
    let raw = w.as_raw_fd();
    std::mem::forget(w);
    SIGCHLD_PIPE.store(raw, Ordering::Relaxed);

    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigchld as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
    // SAFETY: installs a handler that only does async-signal-safe work; the
    // old action is not needed.
    let ret = unsafe { libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rx)
}

/// Starts the reaper task on the current `LocalSet`.
pub fn start(registry: SharedRegistry) -> io::Result<()> {
    let rx = install()?;
    tokio::task::spawn_local(async move {
        let mut drain = [0u8; 64];
        loop {
            registry.borrow_mut().reap_all();
            tokio::select! {
                ready = rx.readable() => {
                    if ready.is_ok() {
                        while matches!(rx.try_read(&mut drain), Ok(n) if n > 0) {}
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    Ok(())
}
