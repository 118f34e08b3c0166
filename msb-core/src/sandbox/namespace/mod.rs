//! Namespace isolation: a program started as PID 1 of new user, mount, PID,
//! UTS, IPC and network namespaces, with a rootfs as its only filesystem.
//!
//! This is the weaker of the two isolation backends (the kernel is shared
//! with the host); see `DESIGN.md`. [`spawn`] starts the program and returns
//! once it has been executed, or with a typed error naming the setup step
//! that failed.
//!
//! # Mechanics
//!
//! 1. **Before the clone** (parent, may allocate): the whole child side is
//!    prepared as a plan of `CString`s and pointer arrays — the overlay's
//!    mount options, every mount source/target under the merged directory,
//!    argv, envp, the candidate paths of a `PATH` search, the stdio
//!    descriptors (moved to CLOEXEC copies ≥ 3), an error pipe (CLOEXEC) and,
//!    with a user namespace, a sync pipe. All signals are blocked around the
//!    clone so that none of the parent's handlers runs in the child.
//! 2. **`clone(CLONE_NEWUSER? | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS |
//!    CLONE_NEWIPC | CLONE_NEWNET | SIGCHLD)`**, the raw system call with no
//!    new stack (fork semantics). With `CLONE_NEWPID` passed to clone (rather
//!    than `unshare`), the child itself is PID 1 of the new PID namespace, so
//!    no double fork is needed: the program it `execve`s *is* PID 1. When
//!    PID 1 dies the kernel kills every other process of the namespace.
//! 3. **Id maps** (parent, user namespace only): `/proc/<pid>/setgroups`
//!    (`deny`, unprivileged only), `uid_map`, `gid_map`; then one byte on
//!    the sync pipe releases the child. If the parent fails here it kills
//!    and reaps the child and returns the error.
//! 4. **Child, before exec** (only raw system calls; see the `child`
//!    module): `setsid`; `/` made `MS_REC|MS_PRIVATE` (nothing propagates
//!    to or from the host); the overlay mounted at `merged`
//!    ([`RootfsLayout`]'s options, `userxattr` in a user namespace); `merged`
//!    bind-mounted onto itself (a mount point, as `pivot_root` needs, also
//!    for the copy strategies); a new procfs at `/proc` (for the new PID
//!    namespace) with its host-wide entries read-only or masked
//!    (`/proc/sys`, `/proc/kcore`, ...: see [`PROC_READONLY`]) and
//!    `CAP_SYS_ADMIN` dropped from the bounding set, so that root inside
//!    cannot undo them; `/dev` as a tmpfs with `null zero full random urandom tty`
//!    bind-mounted from the host, `/dev/pts` (devpts `newinstance`),
//!    `/dev/shm` (tmpfs), and the symlinks `fd stdin stdout stderr ptmx`;
//!    `/tmp` as a tmpfs; the spec's [`Mount`]s (bind mounts, remounted
//!    read-only when asked, and tmpfs), each target resolved beneath
//!    `merged` without following symlinks and mounted through
//!    `/proc/self/fd/N`; `pivot_root(".", ".")` inside `merged` followed by
//!    `umount2(".", MNT_DETACH)` — runc's form, which needs no `.oldroot`
//!    directory in the rootfs and leaves no host path reachable;
//!    `sethostname`; `lo` brought up (`SIOCSIFFLAGS`; the network namespace
//!    has nothing else); `chdir(cwd)`; `setrlimit` for the spec's
//!    [`Rlimit`]s (with a user namespace the parent has already set them
//!    with `prlimit`, as only it may raise a hard limit); `setgroups`,
//!    `setresgid`, `setresuid`;
//!    stdio `dup2`ed onto 0–2 and every other descriptor marked CLOEXEC
//!    (`close_range`); default signal dispositions and an empty mask;
//!    `execve`.
//! 5. **Errors before exec** are written to the error pipe as (step, errno);
//!    the child then `_exit(127)`s. The parent reads the pipe until EOF: EOF
//!    with no message means the exec succeeded (the pipe is CLOEXEC), and
//!    [`spawn`] returns `Ok`; a message becomes
//!    [`Error::NamespaceSetup`] `{ step, errno }` after the child is reaped.
//!
//! # Why clone + a prepared plan, not a helper binary
//!
//! After a fork in a multi-threaded parent only async-signal-safe calls are
//! allowed in the child (another thread may have held malloc's lock). Doing
//! all allocation before the clone keeps the child to plain system calls and
//! avoids an extra `execve` of a helper (which would cost ~1 ms and need the
//! helper to be found). The price: the child cannot call
//! [`RootfsLayout::mount`] itself (it allocates); the plan reproduces its
//! overlay mount instead, with the same option checks.
//!
//! # User namespaces
//!
//! [`UserNamespace::Auto`] (the default) always creates one:
//!
//! - **unprivileged** callers map inside uid/gid 0 onto their own euid/egid
//!   (one id each; `setgroups` is denied first, as the kernel requires). The
//!   program can then only run as uid/gid 0 inside: other ids are unmapped
//!   and `setresuid` fails (`EINVAL`). Wider maps need `newuidmap` and
//!   `/etc/subuid`, not done here.
//! - **root** maps 0–65535 onto itself. File ownership in images works as
//!   is, while the sandbox's root only holds capabilities over its own
//!   namespaces: it cannot load modules, set the clock, create device nodes,
//!   or write host sysctls.
//!
//! [`UserNamespace::Never`] skips it (root only): the program then runs with
//! full root privileges of the host, confined only by the other namespaces
//! and the rootfs.
//!
//! # What is not (yet) done here
//!
//! cgroup limits and a cgroup namespace, `/sys`, capability bounding
//! beyond `CAP_SYS_ADMIN` and [`NamespaceSpec::drop_capabilities`],
//! `no_new_privs` and seccomp, descriptors other than 0–2 passed to the
//! program, terminal (pty) allocation. Networking beyond `lo` is the
//! caller's, through [`NamespaceSpec::before_release`] (see
//! [`crate::sandbox::network`]).

mod child;
mod seccomp;

use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use nix::errno::Errno;

use crate::rootfs::{RootfsLayout, Strategy};
use crate::{Error, Result};

use child::{ChildPlan, Op, PlanStep};

/// The `PATH` a program is searched in when the spec's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host devices bind-mounted into the sandbox's `/dev` (when present).
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The sandbox's root filesystem.
#[derive(Debug, Clone)]
pub enum SandboxRoot {
    /// A prepared [`RootfsLayout`] ([`RootfsLayout::prepare`] already
    /// called): its overlay is mounted inside the sandbox's mount namespace;
    /// for the copy strategies `merged` is used as is.
    Layout(RootfsLayout),
    /// A directory used as the root as is (writes go to it).
    Directory(PathBuf),
}

impl SandboxRoot {
    fn merged(&self) -> &Path {
        match self {
            SandboxRoot::Layout(l) => &l.merged,
            SandboxRoot::Directory(d) => d,
        }
    }
}

/// Whether the sandbox gets its own user namespace; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserNamespace {
    /// Always: caller's ids mapped to 0 when unprivileged, 0–65535 onto
    /// itself as root.
    #[default]
    Auto,
    /// Never (root only).
    Never,
}

/// Where one of the program's standard streams goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// The caller's own descriptor.
    #[default]
    Inherit,
    /// The host's `/dev/null`.
    Null,
    /// This descriptor (e.g. a pipe's end); it is closed in the caller once
    /// [`spawn`] returns.
    Fd(OwnedFd),
}

/// What a [`Mount`] puts at its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host directory or file, bind-mounted (recursively).
    Bind(PathBuf),
    /// A new tmpfs, limited to this many bytes when set.
    Tmpfs {
        /// The size limit.
        size_bytes: Option<u64>,
    },
}

/// A filesystem mounted inside the sandbox, on top of the rootfs, before
/// `pivot_root`.
///
/// The target is resolved beneath the new root one component at a time
/// without following symlinks: missing directories are created (and, for a
/// bind of a host file, an empty file as the last one), and a symlink on
/// the way fails the spawn with `ELOOP` (step `"mount volume"`), so an
/// image can never redirect a mount onto the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The path inside (absolute, without `..`; not `/`).
    pub target: PathBuf,
    /// What is mounted.
    pub source: MountSource,
    /// Mounted read-only (a bind is remounted `MS_RDONLY`; only its top
    /// mount, not host mounts below it).
    pub read_only: bool,
}

/// A resource limit set on the sandbox's PID 1 (and so inherited by
/// everything inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*`.
    pub resource: u32,
    /// The soft limit (`u64::MAX`: unlimited).
    pub soft: u64,
    /// The hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// What to run, and how.
#[derive(Debug)]
pub struct NamespaceSpec {
    /// The root filesystem.
    pub root: SandboxRoot,
    /// The hostname inside (the UTS namespace's).
    pub hostname: String,
    /// The program and its arguments. `argv[0]` is the program: a path
    /// inside the rootfs if it contains `/`, otherwise searched in `PATH`
    /// (the spec's env's, or [`DEFAULT_PATH`]).
    pub argv: Vec<OsString>,
    /// The whole environment of the program (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// The working directory inside.
    pub cwd: PathBuf,
    /// The uid the program runs as inside.
    pub uid: u32,
    /// The gid the program runs as inside (no supplementary groups).
    pub gid: u32,
    /// Whether to create a user namespace.
    pub user_namespace: UserNamespace,
    /// Bring up `lo` in the new network namespace.
    pub loopback: bool,
    /// Filesystems mounted on top of the rootfs, in order (parents first).
    pub mounts: Vec<Mount>,
    /// Resource limits of PID 1. Raising a hard limit needs the caller's
    /// privilege (`CAP_SYS_RESOURCE`): with a user namespace the caller sets
    /// them on the child before releasing it.
    pub rlimits: Vec<Rlimit>,
    /// SIGKILL the sandbox when the thread that spawned it exits (the
    /// kernel's parent-death signal), so a sandbox process killed with
    /// SIGKILL takes its sandbox with it. Only for spawning threads that
    /// live as long as the sandbox should (e.g. a process's main thread).
    pub die_with_parent: bool,
    /// Capabilities dropped from the bounding set before `execve`, besides
    /// `CAP_SYS_ADMIN` (e.g. `CAP_NET_ADMIN` = 12, `CAP_NET_RAW` = 13, so
    /// that root inside cannot change the network namespace's routes and
    /// rules, nor send raw frames around them).
    pub drop_capabilities: Vec<libc::c_int>,
    /// Run by the parent with the child's host pid after the id maps are
    /// written and before the child is released to set itself up and
    /// `execve` (e.g. to configure its network namespace from the host).
    /// The child is still blocked when it runs; an error kills it and is
    /// returned by [`spawn`].
    pub before_release: Option<BeforeRelease>,
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
}

impl NamespaceSpec {
    /// A spec running `argv` in `root`, with defaults: hostname `sandbox`,
    /// env `PATH=`[`DEFAULT_PATH`], cwd `/`, uid/gid 0,
    /// [`UserNamespace::Auto`], `lo` up, stdio inherited.
    pub fn new<I, S>(root: SandboxRoot, argv: I) -> NamespaceSpec
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        NamespaceSpec {
            root,
            hostname: "sandbox".into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: vec![("PATH".into(), DEFAULT_PATH.into())],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            user_namespace: UserNamespace::Auto,
            loopback: true,
            mounts: Vec::new(),
            rlimits: Vec::new(),
            die_with_parent: false,
            drop_capabilities: Vec::new(),
            before_release: None,
            stdin: Stdio::Inherit,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
        }
    }
}

/// A callback of [`NamespaceSpec::before_release`]: gets the child's host
/// pid while the child waits.
pub struct BeforeRelease(pub Box<dyn FnOnce(u32) -> Result<()>>);

impl std::fmt::Debug for BeforeRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeRelease(..)")
    }
}

/// A running sandbox: its PID 1, as seen from the host.
///
/// Dropping it without [`wait`](Self::wait) having returned kills the
/// sandbox (`SIGKILL` to PID 1, which takes the whole PID namespace with it)
/// and reaps it: no zombie, no stray process.
#[derive(Debug)]
pub struct NamespaceChild {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl NamespaceChild {
    /// The host pid of the sandbox's PID 1.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// A pidfd for PID 1 (`pidfd_open`, Linux ≥ 5.3), pollable for its exit
    /// (e.g. with `tokio::io::unix::AsyncFd`); `None` on older kernels.
    pub fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_ref()
    }

    /// Sends `signal` to PID 1 (through the pidfd when there is one, so it
    /// can never hit a recycled pid). Killing PID 1 kills the namespace.
    pub fn kill(&self, signal: libc::c_int) -> Result<()> {
        if self.status.is_some() {
            return Err(self.error("kill", Errno::ESRCH));
        }
        let ret = match &self.pidfd {
            // SAFETY: a valid pidfd we own; no siginfo; flags 0.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            },
            // SAFETY: kill(2) on our own unreaped child: its pid cannot have
            // been recycled.
            None => unsafe { libc::kill(self.pid, signal) }.into(),
        };
        if ret < 0 {
            return Err(self.error("kill", Errno::last()));
        }
        Ok(())
    }

    /// Waits for PID 1 to exit (the rest of the namespace dies with it) and
    /// returns its status. Blocking; call it again to get the same status.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.wait_flags(0)
            .map(|s| s.expect("a blocking waitpid returns a status"))
    }

    /// The exit status if PID 1 has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.wait_flags(libc::WNOHANG)
    }

    fn wait_flags(&mut self, flags: libc::c_int) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = reap(self.pid, flags).map_err(|e| self.error("wait for", e))?;
        if let Some(status) = status {
            self.status = Some(status);
        }
        Ok(status)
    }

    fn error(&self, op: &'static str, errno: Errno) -> Error {
        Error::SandboxProcess {
            op,
            pid: self.pid as u32,
            source: std::io::Error::from_raw_os_error(errno as i32),
        }
    }
}

impl Drop for NamespaceChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill(libc::SIGKILL);
            let _ = self.wait();
        }
    }
}

/// `waitpid(pid, flags)`, retried on `EINTR`; `None` for `WNOHANG` with the
/// child still running.
fn reap(pid: libc::pid_t, flags: libc::c_int) -> std::result::Result<Option<ExitStatus>, Errno> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live int; waitpid on our own child.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if ret == 0 {
            return Ok(None);
        }
        let e = Errno::last();
        if e != Errno::EINTR {
            return Err(e);
        }
    }
}

fn setup_error(step: &'static str, errno: Errno) -> Error {
    Error::NamespaceSetup { step, errno }
}

fn cstring(field: &'static str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::InvalidNamespaceSpec {
        field,
        reason: "contains a NUL byte",
    })
}

fn cpath(field: &'static str, path: &Path) -> Result<CString> {
    cstring(field, path.as_os_str().as_bytes())
}

/// A pipe whose ends are both CLOEXEC and numbered ≥ 3.
fn pipe_high() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(setup_error("create pipe", Errno::last()));
    }
    // SAFETY: pipe2 just returned this descriptor, owned by nobody else.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: likewise.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((high_cloexec(r)?, high_cloexec(w)?))
}

/// A CLOEXEC duplicate of `fd` numbered ≥ 3 (so that `dup2` onto 0–2 in the
/// child never overwrites another source); `fd` itself is closed.
fn high_cloexec(fd: OwnedFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(setup_error("duplicate descriptor", Errno::last()));
    }
    // SAFETY: fcntl just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn stdio_fd(stdio: Stdio) -> Result<Option<OwnedFd>> {
    match stdio {
        Stdio::Inherit => Ok(None),
        Stdio::Null => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| Error::Io {
                    op: "open",
                    path: "/dev/null".into(),
                    source: e,
                })?;
            high_cloexec(f.into()).map(Some)
        }
        Stdio::Fd(fd) => high_cloexec(fd).map(Some),
    }
}

/// The overlay's mount data for `layout`: [`RootfsLayout`]'s own options,
/// with `userxattr` when the mount happens in a new user namespace (the
/// child's) or this process already runs in one.
fn overlay_data(layout: &RootfsLayout, userns: bool) -> Result<CString> {
    let data =
        crate::rootfs::overlay_options(layout, userns || crate::rootfs::in_user_namespace())?;
    cstring("rootfs", data.as_bytes())
}

/// The child's mount plan: rootfs, /proc, /dev, /tmp, all under `merged`.
fn mount_plan(root: &SandboxRoot, userns: bool) -> Result<Vec<PlanStep>> {
    let merged = std::path::absolute(root.merged()).map_err(|source| Error::Io {
        op: "resolve",
        path: root.merged().into(),
        source,
    })?;
    let at = |rel: &str| cpath("rootfs", &merged.join(rel));
    let mut ops = Vec::new();
    let mut push = |step: &'static str, op: Op| ops.push(PlanStep { step, op });
    let mount =
        |source: Option<&str>, target: CString, fstype: Option<&str>, flags, data: Option<&str>| {
            Op::Mount {
                source: source.map(|s| CString::new(s).expect("literal")),
                target,
                fstype: fstype.map(|s| CString::new(s).expect("literal")),
                flags,
                data: data.map(|s| CString::new(s).expect("literal")),
            }
        };

    if let SandboxRoot::Layout(layout) = root
        && layout.strategy() == Strategy::Overlay
    {
        push(
            "mount rootfs overlay",
            Op::Mount {
                source: Some(c"overlay".into()),
                target: cpath("rootfs", &merged)?,
                fstype: Some(c"overlay".into()),
                flags: 0,
                data: Some(overlay_data(layout, userns)?),
            },
        );
    }
    let root_c = cpath("rootfs", &merged)?;
    push(
        "bind rootfs onto itself",
        Op::Mount {
            source: Some(root_c.clone()),
            target: root_c,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        },
    );

    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    push(
        "create /proc",
        Op::Mkdir {
            path: at("proc")?,
            mode: 0o555,
        },
    );
    push(
        "mount /proc",
        mount(
            Some("proc"),
            at("proc")?,
            Some("proc"),
            nosuid_nodev | libc::MS_NOEXEC,
            None,
        ),
    );

    push_proc_masks(&mut push, &at)?;

    push(
        "create /dev",
        Op::Mkdir {
            path: at("dev")?,
            mode: 0o755,
        },
    );
    push(
        "mount /dev",
        mount(
            Some("tmpfs"),
            at("dev")?,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=755,size=65536k"),
        ),
    );
    for dev in DEVICES {
        let host = Path::new("/dev").join(dev);
        if std::fs::metadata(&host).is_err() {
            continue; // e.g. no /dev/tty on a host without one
        }
        let target = at(&format!("dev/{dev}"))?;
        push(
            "create device node target",
            Op::Touch {
                path: target.clone(),
            },
        );
        push(
            "bind host device",
            Op::Mount {
                source: Some(cpath("device", &host)?),
                target,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
        );
    }
    push(
        "create /dev/pts",
        Op::Mkdir {
            path: at("dev/pts")?,
            mode: 0o755,
        },
    );
    push(
        "mount /dev/pts",
        mount(
            Some("devpts"),
            at("dev/pts")?,
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    );
    push(
        "create /dev/shm",
        Op::Mkdir {
            path: at("dev/shm")?,
            mode: 0o1777,
        },
    );
    push(
        "mount /dev/shm",
        mount(
            Some("shm"),
            at("dev/shm")?,
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=1777"),
        ),
    );
    for (target, link) in [
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
        ("pts/ptmx", "dev/ptmx"),
    ] {
        push(
            "create /dev symlink",
            Op::Symlink {
                target: CString::new(target).expect("literal"),
                link: at(link)?,
            },
        );
    }

    push(
        "create /tmp",
        Op::Mkdir {
            path: at("tmp")?,
            mode: 0o1777,
        },
    );
    push(
        "mount /tmp",
        mount(
            Some("tmpfs"),
            at("tmp")?,
            Some("tmpfs"),
            nosuid_nodev,
            Some("mode=1777"),
        ),
    );
    Ok(ops)
}

fn rlimit_of(r: &Rlimit) -> libc::rlimit {
    let value = |v: u64| {
        if v == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            v
        }
    };
    libc::rlimit {
        rlim_cur: value(r.soft),
        rlim_max: value(r.hard),
    }
}

/// The mount flags a bind of `path` must keep when remounted inside a user
/// namespace (the kernel locks `nosuid`, `nodev`, `noexec` and the atime
/// flags of mounts it inherits from a more privileged namespace).
fn locked_flags(path: &Path) -> Result<libc::c_ulong> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| Error::Io {
        op: "statvfs",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut flags = 0;
    for (has, flag) in [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(has) {
            flags |= flag;
        }
    }
    Ok(flags)
}

/// The components of a mount target: absolute, no `..`, not `/`.
fn target_components(target: &Path) -> Result<Vec<CString>> {
    use std::path::Component;
    let invalid = |reason| Error::InvalidNamespaceSpec {
        field: "mounts",
        reason,
    };
    if !target.is_absolute() {
        return Err(invalid("has a target that is not absolute"));
    }
    let mut out = Vec::new();
    for c in target.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(invalid("has a target with `..`")),
            Component::Normal(name) => out.push(cstring("mounts", name.as_bytes())?),
            Component::Prefix(_) => return Err(invalid("has a target that is not absolute")),
        }
    }
    if out.is_empty() {
        return Err(invalid("has `/` as a target"));
    }
    Ok(out)
}

/// The plan steps of the extra mounts, after the rootfs's own.
fn volume_plan(root: &SandboxRoot, mounts: &[Mount]) -> Result<Vec<PlanStep>> {
    let merged = std::path::absolute(root.merged()).map_err(|source| Error::Io {
        op: "resolve",
        path: root.merged().into(),
        source,
    })?;
    let root_c = cpath("rootfs", &merged)?;
    let mut steps = Vec::with_capacity(mounts.len());
    for m in mounts {
        let components = target_components(&m.target)?;
        let op = match &m.source {
            MountSource::Bind(host) => {
                let meta = std::fs::metadata(host).map_err(|source| Error::Io {
                    op: "stat",
                    path: host.clone(),
                    source,
                })?;
                let remount = if m.read_only {
                    Some(libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked_flags(host)?)
                } else {
                    None
                };
                Op::MountBeneath {
                    root: root_c.clone(),
                    components,
                    file: !meta.is_dir(),
                    source: Some(cpath("mounts", host)?),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                    remount,
                }
            }
            MountSource::Tmpfs { size_bytes } => {
                let mut data = String::from("mode=1777");
                if let Some(size) = size_bytes {
                    data.push_str(&format!(",size={size}"));
                }
                let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
                if m.read_only {
                    flags |= libc::MS_RDONLY;
                }
                Op::MountBeneath {
                    root: root_c.clone(),
                    components,
                    file: false,
                    source: Some(c"tmpfs".into()),
                    fstype: Some(c"tmpfs".into()),
                    flags,
                    data: Some(cstring("mounts", data.as_bytes())?),
                    remount: None,
                }
            }
        };
        steps.push(PlanStep {
            step: "mount volume",
            op,
        });
    }
    Ok(steps)
}

/// `/proc` entries that reach the host's kernel as a whole, made read-only
/// in the sandbox (as runc does). With a root caller the sandbox's uid 0
/// *is* host uid 0 (identity map), and the sysctl permission check only
/// looks at the euid: without this, root inside could write host sysctls
/// such as `kernel.core_pattern` (a known way to run a program as host
/// root) through its own procfs.
pub const PROC_READONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// `/proc` files hidden behind `/dev/null` (kernel memory, other users'
/// keys, host timer and scheduler details).
pub const PROC_MASKED_FILES: &[&str] = &["kcore", "keys", "timer_list", "sched_debug"];

/// `/proc` directories hidden behind an empty read-only tmpfs.
pub const PROC_MASKED_DIRS: &[&str] = &["acpi", "scsi"];

/// The bounding-set capability dropped before the program's `execve`:
/// `CAP_SYS_ADMIN` (21 in `linux/capability.h`). Without it the sandbox's
/// root cannot unmount or remount the `/proc` protections above, nor mount
/// a fresh procfs (in a nested user namespace the kernel refuses a procfs
/// that would reveal what these mounts cover, and keeps them locked).
const CAP_SYS_ADMIN: libc::c_int = 21;

/// Adds the `/proc` protections (after `/proc` is mounted): read-only
/// binds of [`PROC_READONLY`], `/dev/null` over [`PROC_MASKED_FILES`], an
/// empty read-only tmpfs over [`PROC_MASKED_DIRS`] (each only where this
/// kernel has it), and the drop of `CAP_SYS_ADMIN` from the bounding set.
fn push_proc_masks(
    push: &mut impl FnMut(&'static str, Op),
    at: &impl Fn(&str) -> Result<CString>,
) -> Result<()> {
    let host_has = |entry: &str| Path::new("/proc").join(entry).exists();
    let locked = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for entry in PROC_READONLY.iter().filter(|e| host_has(e)) {
        let target = at(&format!("proc/{entry}"))?;
        push(
            "bind a /proc entry read-only",
            Op::Mount {
                source: Some(target.clone()),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            },
        );
        push(
            "remount a /proc entry read-only",
            Op::Mount {
                source: None,
                target,
                fstype: None,
                flags: libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked,
                data: None,
            },
        );
    }
    for entry in PROC_MASKED_FILES.iter().filter(|e| host_has(e)) {
        push(
            "mask a /proc file",
            Op::Mount {
                source: Some(c"/dev/null".into()),
                target: at(&format!("proc/{entry}"))?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
        );
    }
    for entry in PROC_MASKED_DIRS.iter().filter(|e| host_has(e)) {
        push(
            "mask a /proc directory",
            Op::Mount {
                source: Some(c"tmpfs".into()),
                target: at(&format!("proc/{entry}"))?,
                fstype: Some(c"tmpfs".into()),
                flags: libc::MS_RDONLY | locked,
                data: None,
            },
        );
    }
    push(
        "drop CAP_SYS_ADMIN from the bounding set",
        Op::DropBoundingCap { cap: CAP_SYS_ADMIN },
    );
    Ok(())
}

/// The paths `execve` is tried on: `argv[0]` itself if it has a `/`,
/// otherwise `dir/argv[0]` for each `dir` of `PATH`.
fn program_candidates(program: &OsStr, env: &[(OsString, OsString)]) -> Result<Vec<CString>> {
    let bytes = program.as_bytes();
    if bytes.contains(&b'/') {
        return Ok(vec![cstring("argv", bytes)?]);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH.as_bytes(), |(_, v)| v.as_bytes());
    path.split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { &b"."[..] } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(bytes);
            cstring("argv", &full)
        })
        .collect()
}

/// Writes the child's uid/gid maps (and `setgroups deny` when unprivileged).
fn write_id_maps(pid: libc::pid_t, euid: u32, egid: u32) -> Result<bool> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let write = |file: &'static str, step: &'static str, text: String| {
        std::fs::write(proc.join(file), text)
            .map_err(|e| setup_error(step, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
    };
    if euid == 0 {
        write("uid_map", "write uid_map", "0 0 65536\n".into())?;
        write("gid_map", "write gid_map", "0 0 65536\n".into())?;
        Ok(true)
    } else {
        write("setgroups", "write setgroups", "deny".into())?;
        write("uid_map", "write uid_map", format!("0 {euid} 1\n"))?;
        write("gid_map", "write gid_map", format!("0 {egid} 1\n"))?;
        Ok(false)
    }
}

/// Blocks every signal in the calling thread until dropped.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn new() -> BlockedSignals {
        // SAFETY: sigset_t is plain data; both sets are initialized by
        // sigfillset / pthread_sigmask before being read.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `all` is a valid sigset_t.
        unsafe { libc::sigfillset(&mut all) };
        // SAFETY: valid sets; only this thread's mask changes.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
        BlockedSignals(old)
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Starts `spec.argv` as PID 1 of new namespaces over `spec.root`; see the
/// module docs. Returns once the program has been executed, or with
/// [`Error::NamespaceSetup`] naming the step that failed (the child is
/// reaped by then). Blocking, for about the time of the mounts (a few ms):
/// call it from `spawn_blocking` in async code.
pub fn spawn(spec: NamespaceSpec) -> Result<NamespaceChild> {
    let NamespaceSpec {
        root,
        hostname,
        argv,
        env,
        cwd,
        uid,
        gid,
        user_namespace,
        loopback,
        mounts,
        rlimits,
        die_with_parent,
        drop_capabilities,
        before_release,
        stdin,
        stdout,
        stderr,
    } = spec;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(Error::InvalidNamespaceSpec {
            field: "argv",
            reason: "is empty",
        });
    }
    if hostname.len() > 64 {
        return Err(Error::InvalidNamespaceSpec {
            field: "hostname",
            reason: "is longer than 64 bytes",
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let userns = match user_namespace {
        UserNamespace::Auto => true,
        UserNamespace::Never => false,
    };

    // Everything the child touches, prepared now (see `child`).
    let argv_c: Vec<CString> = argv
        .iter()
        .map(|a| cstring("argv", a.as_bytes()))
        .collect::<Result<_>>()?;
    let env_c: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                return Err(Error::InvalidNamespaceSpec {
                    field: "env",
                    reason: "has a name that is empty or contains '='",
                });
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring("env", &kv)
        })
        .collect::<Result<_>>()?;
    let mut ops = mount_plan(&root, userns)?;
    ops.extend(volume_plan(&root, &mounts)?);
    for cap in drop_capabilities {
        ops.push(PlanStep {
            step: "drop a capability from the bounding set",
            op: Op::DropBoundingCap { cap },
        });
    }
    for r in &rlimits {
        if r.soft > r.hard {
            return Err(Error::InvalidNamespaceSpec {
                field: "rlimits",
                reason: "has a soft limit above its hard limit",
            });
        }
    }
    let rlimits_c: Vec<(libc::c_int, libc::rlimit)> = rlimits
        .iter()
        .map(|r| (r.resource as libc::c_int, rlimit_of(r)))
        .collect();
    let merged = std::path::absolute(root.merged()).map_err(|source| Error::Io {
        op: "resolve",
        path: root.merged().into(),
        source,
    })?;
    let stdio_owned = [stdio_fd(stdin)?, stdio_fd(stdout)?, stdio_fd(stderr)?];
    let (err_r, err_w) = pipe_high()?;
    let sync = if userns || before_release.is_some() {
        Some(pipe_high()?)
    } else {
        None
    };

    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let plan = ChildPlan {
        err_fd: err_w.as_raw_fd(),
        sync_fd: sync.as_ref().map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd())),
        ops,
        new_root: cpath("rootfs", &merged)?,
        hostname: hostname.into_bytes(),
        loopback_up: loopback,
        cwd: cpath("cwd", &cwd)?,
        // After `setgroups deny` (unprivileged) setgroups(2) always fails.
        setgroups: euid == 0,
        die_with_parent,
        seccomp: seccomp::program(),
        uid,
        gid,
        rlimits: rlimits_c,
        stdio: [
            stdio_owned[0].as_ref().map(|f| f.as_raw_fd()),
            stdio_owned[1].as_ref().map(|f| f.as_raw_fd()),
            stdio_owned[2].as_ref().map(|f| f.as_raw_fd()),
        ],
        programs: program_candidates(&argv[0], &env)?,
        argv: argv_p,
        envp,
    };

    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    if userns {
        flags |= libc::CLONE_NEWUSER;
    }
    let pid = {
        let _blocked = BlockedSignals::new();
        // SAFETY: clone(2) with fork semantics (no CLONE_VM, no new stack):
        // the child gets a copy-on-write copy of this address space with only
        // the calling thread. In the child (ret == 0) we call only
        // `child::run`, which makes nothing but async-signal-safe system
        // calls on memory prepared above and never returns. The argument
        // order after `flags` differs between architectures, but all of them
        // are 0 here.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if ret == 0 {
            // SAFETY: we are the child of the clone above, `plan` was built
            // before it.
            unsafe { child::run(&plan) }
        }
        if ret < 0 {
            return Err(setup_error("clone", Errno::last()));
        }
        ret as libc::pid_t
    };

    // Parent. Our copies of the child's ends go first, so that EOF on the
    // error pipe means "the child exec'd or died".
    drop(err_w);
    drop(stdio_owned);
    let mut child = NamespaceChild {
        pid,
        pidfd: None,
        status: None,
    };
    // SAFETY: pidfd_open on our own unreaped child (its pid cannot be
    // recycled before we reap it); flags 0.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if pidfd >= 0 {
        // SAFETY: the kernel just returned this descriptor (CLOEXEC).
        child.pidfd = Some(unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
    }

    if let Some((sync_r, sync_w)) = sync {
        drop(sync_r);
        // On failure `child` is dropped: SIGKILL and reap.
        if userns {
            write_id_maps(pid, euid, egid)?;
        }
        // Inside its user namespace the child can only lower its limits.
        for (resource, limit) in plan.rlimits.iter().filter(|_| userns) {
            // SAFETY: `limit` is a live rlimit; no old limit wanted.
            let ret = unsafe {
                libc::prlimit(
                    pid,
                    *resource as libc::__rlimit_resource_t,
                    limit,
                    std::ptr::null_mut(),
                )
            };
            if ret < 0 {
                return Err(setup_error("set rlimit from the host", Errno::last()));
            }
        }
        if let Some(BeforeRelease(hook)) = before_release {
            hook(pid as u32)?;
        }
        let mut w = std::fs::File::from(sync_w);
        std::io::Write::write_all(&mut w, b"1").map_err(|e| {
            setup_error(
                "release child",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?;
    }

    let mut msg = Vec::with_capacity(8);
    let mut r = std::fs::File::from(err_r);
    if let Err(e) = r.read_to_end(&mut msg) {
        return Err(setup_error(
            "read child status",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        ));
    }
    if msg.len() >= 8 {
        let code = u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes"));
        let errno = i32::from_ne_bytes(msg[4..8].try_into().expect("4 bytes"));
        let step = child::step_name(code, &plan.ops);
        let _ = child.wait();
        return Err(setup_error(step, Errno::from_raw(errno)));
    }
    drop(plan);
    drop(argv_c);
    drop(env_c);
    Ok(child)
}
