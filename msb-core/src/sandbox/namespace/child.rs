//! The child side of [`spawn`](super::spawn): everything that runs between
//! `clone(2)` and `execve(2)`.
//!
//! # Async-signal-safety
//!
//! The parent may be multi-threaded (a tokio runtime, the test harness). After
//! a `clone` without `CLONE_VM` only the calling thread exists in the child,
//! and any lock another thread held at that instant (malloc's arenas, stdio,
//! the `tracing` dispatcher, std's environment lock) stays locked forever.
//! So this module must only make raw system calls:
//!
//! - no allocation (no `String`, `Vec`, `CString`, `format!`, `PathBuf`);
//! - no `std::fs`, no `nix` helpers that build `CString`s internally, no
//!   `tracing`, no panics (every fallible call goes through [`check`], which
//!   reports and `_exit`s);
//! - no glibc functions that use the thread's cached TID or locks
//!   (`raise`, `pthread_*`, `getenv`, `execvp`).
//!
//! Everything the child needs (paths, mount data, argv, envp, the candidate
//! program paths of a `PATH` search) was turned into `CString`s and pointer
//! arrays by the parent before the clone ([`ChildPlan`]); the child's copy of
//! the parent's memory holds them unchanged. Errors are written to the error
//! pipe as 8 bytes (a step code and the errno), then the child `_exit`s.

use std::ffi::CString;
use std::os::fd::RawFd;

/// One filesystem operation of the child's setup, with its paths prepared.
#[derive(Debug)]
pub(super) enum Op {
    /// `mount(2)`.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mkdir(path, mode)`; an existing entry is fine.
    Mkdir { path: CString, mode: libc::mode_t },
    /// Creates an empty regular file (a bind-mount target); an existing
    /// entry is fine.
    Touch { path: CString },
    /// `symlink(target, link)`; an existing entry is fine.
    Symlink { target: CString, link: CString },
    /// `prctl(PR_CAPBSET_DROP, cap)`: the capability leaves the bounding
    /// set, so the program cannot hold it after `execve` (the effective
    /// set, needed for the rest of the setup, is untouched).
    DropBoundingCap { cap: libc::c_int },
    /// A mount onto a path beneath `root`, resolved one component at a time
    /// with `O_NOFOLLOW` (so a symlink in the rootfs can never redirect it
    /// to the host): missing components are created (directories, and the
    /// last one as an empty file when `file`), any existing component that
    /// is a symlink fails with `ELOOP`. The target is then reached through
    /// `/proc/self/fd/N`, and `remount` (when set) is applied onto it after
    /// the mount (e.g. `MS_REMOUNT | MS_BIND | MS_RDONLY`).
    MountBeneath {
        root: CString,
        components: Vec<CString>,
        file: bool,
        source: Option<CString>,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
        remount: Option<libc::c_ulong>,
    },
}

/// One step of the plan: the operation, and the name reported if it fails.
#[derive(Debug)]
pub(super) struct PlanStep {
    pub(super) step: &'static str,
    pub(super) op: Op,
}

/// Steps of the child that are not plan operations. Their code is their
/// index here; plan operations are reported as [`PLAN_BASE`] + index.
pub(super) const FIXED_STEPS: &[&str] = &[
    "wait for id maps",        // 0
    "setsid",                  // 1
    "make / private",          // 2
    "chdir to new root",       // 3
    "pivot_root",              // 4
    "detach old root",         // 5
    "chdir /",                 // 6
    "sethostname",             // 7
    "bring up lo",             // 8
    "chdir to cwd",            // 9
    "setgroups",               // 10
    "setresgid",               // 11
    "setresuid",               // 12
    "redirect stdio",          // 13
    "execve",                  // 14
    "reset signals",           // 15
    "set parent-death signal", // 16
    "set rlimit",              // 17
    "install seccomp filter",  // 18
];
const WAIT_MAPS: u32 = 0;
const SETSID: u32 = 1;
const ROOT_PRIVATE: u32 = 2;
const CHDIR_ROOT: u32 = 3;
const PIVOT: u32 = 4;
const DETACH: u32 = 5;
const CHDIR_SLASH: u32 = 6;
const HOSTNAME: u32 = 7;
const LO_UP: u32 = 8;
const CHDIR_CWD: u32 = 9;
const SETGROUPS: u32 = 10;
const SETGID: u32 = 11;
const SETUID: u32 = 12;
const STDIO: u32 = 13;
const EXEC: u32 = 14;
const SIGNALS: u32 = 15;
const PDEATHSIG: u32 = 16;
const RLIMIT: u32 = 17;
const SECCOMP: u32 = 18;

/// Step codes at or above this are plan operations.
pub(super) const PLAN_BASE: u32 = 0x1_0000;

/// Everything the child needs, prepared by the parent before the clone.
#[derive(Debug)]
pub(super) struct ChildPlan {
    /// Write end of the CLOEXEC error pipe (≥ 3).
    pub(super) err_fd: RawFd,
    /// The id-map sync pipe (≥ 3), when a user namespace is made (or the
    /// parent runs a hook before the release): its read end, and the
    /// parent's write end, of which the clone gave the child a copy.
    pub(super) sync_fd: Option<(RawFd, RawFd)>,
    /// Mount operations, in order, before `pivot_root`.
    pub(super) ops: Vec<PlanStep>,
    /// The new root (the merged directory, bind-mounted onto itself).
    pub(super) new_root: CString,
    pub(super) hostname: Vec<u8>,
    pub(super) loopback_up: bool,
    pub(super) cwd: CString,
    /// Whether `setgroups(0, NULL)` may be called (not after `setgroups deny`).
    pub(super) setgroups: bool,
    /// Whether to ask for SIGKILL when the parent thread dies.
    pub(super) die_with_parent: bool,
    /// The seccomp filter installed right before `execve` (empty: none);
    /// see [`super::seccomp`].
    pub(super) seccomp: Vec<libc::sock_filter>,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    /// Resource limits set before the ids are dropped: `(RLIMIT_*, limit)`.
    pub(super) rlimits: Vec<(libc::c_int, libc::rlimit)>,
    /// Source fds (CLOEXEC, ≥ 3) for 0, 1 and 2; `None` inherits.
    pub(super) stdio: [Option<RawFd>; 3],
    /// Programs to try, in order (one, or the `PATH` candidates).
    pub(super) programs: Vec<CString>,
    /// NULL-terminated argv, pointing into the parent-owned `CString`s.
    pub(super) argv: Vec<*const libc::c_char>,
    /// NULL-terminated envp, likewise.
    pub(super) envp: Vec<*const libc::c_char>,
}

/// Reports `code`/`errno` on the error pipe and exits. Async-signal-safe.
fn fail(err_fd: RawFd, code: u32, errno: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&code.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: `msg` is a live 8-byte buffer; write(2) is async-signal-safe.
    // A short or failed write only loses the detail: the parent then sees
    // the pipe close with the child dead.
    unsafe { libc::write(err_fd, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: _exit(2) runs no atexit handlers and flushes nothing.
    unsafe { libc::_exit(127) }
}

/// The calling thread's errno. Async-signal-safe (a thread-local read).
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Ok` for a non-negative return, otherwise reports `code` and exits.
fn check(err_fd: RawFd, code: u32, ret: libc::c_long) {
    if ret < 0 {
        fail(err_fd, code, errno());
    }
}

fn opt_ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Runs `op`; `EEXIST` counts as success for the create operations.
fn run_op(op: &Op) -> Result<(), i32> {
    let ret = match op {
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => {
            // SAFETY: every pointer is a NUL-terminated string owned by the
            // plan (or NULL where mount(2) allows it).
            unsafe {
                libc::mount(
                    opt_ptr(source),
                    target.as_ptr(),
                    opt_ptr(fstype),
                    *flags,
                    opt_ptr(data).cast(),
                )
            }
        }
        // SAFETY: `path` is NUL-terminated and owned by the plan.
        Op::Mkdir { path, mode } => unsafe { libc::mkdir(path.as_ptr(), *mode) },
        Op::Touch { path } => {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            // SAFETY: `path` is NUL-terminated and owned by the plan.
            let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644 as libc::c_uint) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened by us and is closed once.
                unsafe { libc::close(fd) };
            }
            fd
        }
        // SAFETY: both strings are NUL-terminated and owned by the plan.
        Op::Symlink { target, link } => unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) },
        // SAFETY: prctl(PR_CAPBSET_DROP) takes a capability number.
        Op::DropBoundingCap { cap } => unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, *cap as libc::c_ulong, 0, 0, 0)
        },
        Op::MountBeneath {
            root,
            components,
            file,
            source,
            fstype,
            flags,
            data,
            remount,
        } => {
            let Some(last) = components.last() else {
                return Err(libc::EINVAL);
            };
            let resolved = resolve_beneath(root, components, *file)?;
            let result = mount_resolved(&resolved, last, source, fstype, *flags, data, *remount);
            resolved.close();
            return result;
        }
    };
    if ret < 0 {
        let e = errno();
        let create = matches!(op, Op::Mkdir { .. } | Op::Touch { .. } | Op::Symlink { .. });
        if !(create && e == libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// The descriptors [`resolve_beneath`] opens (closed by its user): the
/// target's parent directory and the target itself (`O_PATH`).
struct Resolved {
    parent: RawFd,
    target: RawFd,
}

impl Resolved {
    fn close(&self) {
        // SAFETY: opened by resolve_beneath, closed once.
        unsafe { libc::close(self.parent) };
        // SAFETY: likewise.
        unsafe { libc::close(self.target) };
    }
}

/// Opens `root/components...` (`O_PATH`), creating missing components and
/// refusing symlinks; see [`Op::MountBeneath`]. `components` is never
/// empty. No allocation.
fn resolve_beneath(root: &CString, components: &[CString], file: bool) -> Result<Resolved, i32> {
    // SAFETY: `root` is NUL-terminated and owned by the plan.
    let mut dir = unsafe {
        libc::open(
            root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(errno());
    }
    for (i, name) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let want_file = file && last;
        // Create what is missing; an existing entry (EEXIST, or a file
        // opened as is) is judged by the fstat below.
        if want_file {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: `dir` is our descriptor, `name` NUL-terminated.
            let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, 0o644 as libc::c_uint) };
            if fd >= 0 {
                // SAFETY: just opened, closed once.
                unsafe { libc::close(fd) };
            }
        } else {
            // SAFETY: `dir` is our descriptor, `name` NUL-terminated.
            unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) };
        }
        // SAFETY: as above; O_PATH|O_NOFOLLOW opens a symlink itself.
        let next = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let e = errno();
        let close_all = |fds: &[RawFd]| {
            for fd in fds {
                // SAFETY: our descriptors, each closed once.
                unsafe { libc::close(*fd) };
            }
        };
        if next < 0 {
            close_all(&[dir]);
            return Err(e);
        }
        // SAFETY: a zeroed stat is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `next` is our descriptor, `st` a live buffer.
        if unsafe { libc::fstat(next, &mut st) } < 0 {
            let e = errno();
            close_all(&[dir, next]);
            return Err(e);
        }
        let kind = st.st_mode & libc::S_IFMT;
        let wanted = if want_file {
            libc::S_IFREG
        } else {
            libc::S_IFDIR
        };
        if kind != wanted {
            close_all(&[dir, next]);
            return Err(match kind {
                libc::S_IFLNK => libc::ELOOP,
                libc::S_IFDIR => libc::EISDIR,
                _ => libc::ENOTDIR,
            });
        }
        if last {
            return Ok(Resolved {
                parent: dir,
                target: next,
            });
        }
        close_all(&[dir]);
        dir = next;
    }
    // Unreachable for a non-empty `components`.
    // SAFETY: ours, closed once.
    unsafe { libc::close(dir) };
    Err(libc::EINVAL)
}

/// `/proc/self/fd/<fd>` in `buf`, NUL-terminated. No allocation.
fn proc_fd_path(fd: RawFd, buf: &mut [u8; 32]) {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
}

/// Mounts onto the resolved target; with `remount`, reopens the target by
/// name (now the new mount's root) and remounts it.
fn mount_resolved(
    resolved: &Resolved,
    last: &CString,
    source: &Option<CString>,
    fstype: &Option<CString>,
    flags: libc::c_ulong,
    data: &Option<CString>,
    remount: Option<libc::c_ulong>,
) -> Result<(), i32> {
    let mut path = [0u8; 32];
    proc_fd_path(resolved.target, &mut path);
    // SAFETY: every pointer is a NUL-terminated string (the plan's, or the
    // stack buffer above) or NULL where mount(2) allows it.
    let ret = unsafe {
        libc::mount(
            opt_ptr(source),
            path.as_ptr().cast(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    };
    if ret < 0 {
        return Err(errno());
    }
    let Some(remount) = remount else {
        return Ok(());
    };
    // A lookup by name crosses into the mount just made (the O_PATH
    // descriptor still names the directory beneath it).
    // SAFETY: `parent` is our descriptor, `last` NUL-terminated.
    let top = unsafe {
        libc::openat(
            resolved.parent,
            last.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if top < 0 {
        return Err(errno());
    }
    proc_fd_path(top, &mut path);
    // SAFETY: as above; a remount takes no source, type or data.
    let ret = unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr().cast(),
            std::ptr::null(),
            remount,
            std::ptr::null(),
        )
    };
    let e = errno();
    // SAFETY: ours, closed once.
    unsafe { libc::close(top) };
    if ret < 0 { Err(e) } else { Ok(()) }
}

/// `struct ifreq` reduced to the name and the flags (40 bytes, as the kernel's).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Sets `IFF_UP` on `lo` in the (new) network namespace.
fn loopback_up() -> Result<(), i32> {
    // SAFETY: a plain socket(2) call; the fd is closed below on every path.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(errno());
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` has the layout of `struct ifreq` for the flag ioctls
    // (name, then a union whose first member is `short ifru_flags`) and is
    // 40 bytes, the size the kernel copies.
    let mut ret =
        unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req as *mut IfReqFlags) };
    if ret == 0 {
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: as above.
        ret = unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req as *const IfReqFlags) };
    }
    let e = errno();
    // SAFETY: `sock` is ours and closed once.
    unsafe { libc::close(sock) };
    if ret < 0 { Err(e) } else { Ok(()) }
}

/// The child: sets up the sandbox and execs the program as PID 1.
///
/// # Safety
///
/// Must only be called in the child of a `clone` without `CLONE_VM`, with a
/// `plan` built by the parent before the clone. Never returns.
pub(super) unsafe fn run(plan: &ChildPlan) -> ! {
    let err = plan.err_fd;

    // 0. Wait until the parent has written our uid/gid maps (or died). Our
    //    copy of its write end goes first: with it open, the pipe would
    //    never end if the parent died before the release, and we would
    //    wait forever, an orphan nobody knows of.
    if let Some((sync, parents)) = plan.sync_fd {
        // SAFETY: our copy of the parent's write end, closed once.
        unsafe { libc::close(parents) };
        let mut byte = 0u8;
        loop {
            // SAFETY: reads one byte into a live stack buffer.
            let n = unsafe { libc::read(sync, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                break;
            }
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            // EOF: the parent gave up (or died) before writing the maps.
            fail(
                err,
                WAIT_MAPS,
                if n == 0 { libc::ECANCELED } else { errno() },
            );
        }
        // SAFETY: our copy of the sync read end, closed once.
        unsafe { libc::close(sync) };
    }

    // 1. Our own session: no controlling terminal of the host's, and the
    //    host's job-control signals do not reach the sandbox.
    // SAFETY: setsid(2) takes no arguments.
    check(err, SETSID, unsafe { libc::setsid() }.into());

    // 2. Nothing we mount may propagate to the host, nor host mounts to us.
    // SAFETY: NUL-terminated literals; a propagation-only mount(2).
    check(
        err,
        ROOT_PRIVATE,
        unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        }
        .into(),
    );

    // 3. The rootfs, /proc, /dev, /tmp: the prepared plan.
    for (i, step) in plan.ops.iter().enumerate() {
        if let Err(e) = run_op(&step.op) {
            fail(err, PLAN_BASE + i as u32, e);
        }
    }

    // 4. pivot_root(".", "."): the old root ends up stacked on top of the
    //    new one at "/", and is lazily detached right away. No `.oldroot`
    //    directory is needed (so a read-only rootfs works too) and no host
    //    path stays reachable.
    // SAFETY: `new_root` is NUL-terminated and owned by the plan.
    check(
        err,
        CHDIR_ROOT,
        unsafe { libc::chdir(plan.new_root.as_ptr()) }.into(),
    );
    // SAFETY: pivot_root has no libc wrapper; both arguments are literals.
    check(err, PIVOT, unsafe {
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
    });
    // SAFETY: a literal path; umount2(2).
    check(
        err,
        DETACH,
        unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) }.into(),
    );
    // SAFETY: a literal path.
    check(
        err,
        CHDIR_SLASH,
        unsafe { libc::chdir(c"/".as_ptr()) }.into(),
    );

    // 5. Hostname (new UTS namespace) and loopback (new network namespace).
    // SAFETY: pointer and length of a live buffer.
    check(
        err,
        HOSTNAME,
        unsafe { libc::sethostname(plan.hostname.as_ptr().cast(), plan.hostname.len()) }.into(),
    );
    if plan.loopback_up
        && let Err(e) = loopback_up()
    {
        fail(err, LO_UP, e);
    }

    // SAFETY: `cwd` is NUL-terminated and owned by the plan.
    check(
        err,
        CHDIR_CWD,
        unsafe { libc::chdir(plan.cwd.as_ptr()) }.into(),
    );

    // Resource limits, while we still may (lowering needs no privilege;
    // the parent already raised what needed raising).
    for (resource, limit) in &plan.rlimits {
        // SAFETY: `limit` is a live rlimit; setrlimit(2) is a system call.
        check(
            err,
            RLIMIT,
            unsafe { libc::setrlimit(*resource as _, limit) }.into(),
        );
    }

    // 5b. The seccomp filter, while still root in the sandbox's user
    //     namespace: that privilege installs it without no_new_privs (which
    //     would break setuid programs inside). Nothing below needs what it
    //     refuses.
    if !plan.seccomp.is_empty() {
        let prog = libc::sock_fprog {
            len: plan.seccomp.len() as libc::c_ushort,
            filter: plan.seccomp.as_ptr().cast_mut(),
        };
        check(
            err,
            SECCOMP,
            // SAFETY: `prog` points to the plan's filter, alive in our copy
            // of the parent's memory; the kernel copies it.
            unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                )
            }
            .into(),
        );
    }

    // 6. Drop to the requested ids (groups first: setgroups and setresgid
    //    need the privileges setresuid gives up). Raw system calls, not the
    //    libc wrappers: glibc's broadcast the change to every thread it
    //    believes the process has, and after a bare clone its thread list is
    //    still the parent's; with a parent thread half-created at the time
    //    of the clone, the wrapper waits forever for that thread (seen as a
    //    hung test run in CI).
    if plan.setgroups {
        // SAFETY: an empty group list.
        check(err, SETGROUPS, unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
        });
    }
    // SAFETY: plain id arguments.
    check(err, SETGID, unsafe {
        libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid)
    });
    // SAFETY: plain id arguments.
    check(err, SETUID, unsafe {
        libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid)
    });

    // The parent-death signal is cleared by credential changes, so it is
    // set after them.
    if plan.die_with_parent {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number.
        check(
            err,
            PDEATHSIG,
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) }.into(),
        );
    }

    // 7. stdio. The sources are CLOEXEC copies ≥ 3, so dup2 never clobbers
    //    another source, and the copies vanish at exec; dup2 clears CLOEXEC
    //    on 0, 1 and 2.
    for (target, source) in plan.stdio.iter().enumerate() {
        if let Some(source) = *source {
            // SAFETY: both are valid descriptor numbers.
            check(
                err,
                STDIO,
                unsafe { libc::dup2(source, target as RawFd) }.into(),
            );
        }
    }
    // Nothing but 0, 1, 2 and the error pipe (CLOEXEC) crosses the exec:
    // a non-CLOEXEC descriptor of the host (another library's) would be a
    // way out of the rootfs. Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC;
    // there the descriptors our own process opened are all CLOEXEC anyway.
    // SAFETY: close_range(2) only flags descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }

    // 8. Signals: the parent blocked all of them around the clone (so that
    //    none of its handlers can run here); give the program default
    //    dispositions (Rust ignores SIGPIPE) and an empty mask.
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = libc::SIG_DFL;
        // SAFETY: `act` is a valid sigaction; the old action is not wanted.
        // Signals glibc reserves (32, 33) refuse with EINVAL: ignored.
        unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
    }
    // SAFETY: a stack sigset, emptied before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: installs the empty mask; no old mask wanted.
    check(
        err,
        SIGNALS,
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) }.into(),
    );

    // 9. exec: the program replaces us, and so is PID 1. Try each candidate
    //    like execvp: remember EACCES over ENOENT/ENOTDIR, stop on others.
    let mut last = libc::ENOENT;
    let mut saw_eacces = false;
    for program in &plan.programs {
        // SAFETY: `program` is NUL-terminated; argv and envp are
        // NULL-terminated arrays of pointers into parent-owned CStrings,
        // all alive in our copy of the parent's memory.
        unsafe { libc::execve(program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
        last = errno();
        match last {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ENOTDIR => {}
            _ => break,
        }
    }
    if saw_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
        last = libc::EACCES;
    }
    fail(err, EXEC, last)
}

/// The step name for a code read from the error pipe.
pub(super) fn step_name(code: u32, ops: &[PlanStep]) -> &'static str {
    if code >= PLAN_BASE {
        ops.get((code - PLAN_BASE) as usize)
            .map_or("unknown step", |s| s.step)
    } else {
        FIXED_STEPS
            .get(code as usize)
            .copied()
            .unwrap_or("unknown step")
    }
}
