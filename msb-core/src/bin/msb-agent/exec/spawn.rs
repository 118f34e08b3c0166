//! Starting an exec's process: checks before the spawn, the tty and user
//! switch between fork and exec, and a precise error kind when it fails.
//!
//! - `cwd` is checked before spawning (missing, not a directory, not
//!   reachable: `BadCwd`), so the child's `chdir` never fails in a way that
//!   could be taken for the program's own ENOENT.
//! - `user` is resolved against the sandbox's `/etc/passwd` and
//!   `/etc/group` ([`super::users`]); unknown: `NoSuchUser`. The child calls
//!   `setgroups`, `setgid`, `setuid` (in that order, last thing before
//!   `exec`, after the `chdir` into `cwd`, which is done as the agent);
//!   `HOME` comes from the passwd entry unless the env has one. Where
//!   `setgroups` is denied (an unprivileged user namespace) and there are
//!   no supplementary groups to set, the groups are left as they are.
//! - `tty`: the child gets the slave of a new pty as stdin, stdout and
//!   stderr, `setsid`s and makes it its controlling terminal (so it leads
//!   its own session and process group, as `process_group(0)` does without
//!   a tty); `TERM=xterm` unless the env has a `TERM`.
//! - A failed spawn is classified by errno and, where errno is ambiguous, by
//!   looking at the program the way `execvp` finds it: ENOENT with nothing
//!   there is `NotFound`; EACCES on a directory or a file without execute
//!   bits is `NotExecutable`, on anything else `PermissionDenied`; ENOEXEC,
//!   and ENOENT for a program that does exist (a missing `#!` interpreter),
//!   are `NotExecutable`.

use std::fs::Metadata;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use msb_core::agent::{ErrorKind, ExecStart, StdinMode};

use super::{tty, users};

/// `execvp`'s search path when the env has no `PATH` (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// A started process.
#[derive(Debug)]
pub struct Started {
    /// The process; with pipes, its stdio ends are in `stdin`/`stdout`/`stderr`.
    pub child: Child,
    /// The master of its tty, when it has one.
    pub tty: Option<OwnedFd>,
}

/// Why an exec did not start: the kind to report and the cause.
pub type StartError = (ErrorKind, io::Error);

/// Spawns the process for `req`.
pub fn start(req: &ExecStart) -> Result<Started, StartError> {
    let Some((program, args)) = req.argv.split_first() else {
        return Err((
            ErrorKind::InvalidArgument,
            io::Error::new(io::ErrorKind::InvalidInput, "empty argv"),
        ));
    };
    let cwd = match &req.cwd {
        Some(cwd) => {
            check_cwd(cwd)?;
            PathBuf::from(cwd)
        }
        None => std::env::current_dir().unwrap_or_else(|_| "/".into()),
    };
    let identity = match &req.user {
        Some(user) => Some(users::resolve(user).map_err(|e| {
            (
                ErrorKind::NoSuchUser,
                io::Error::new(io::ErrorKind::NotFound, e.to_string()),
            )
        })?),
        None => None,
    };

    let mut env = req.env.clone();
    let has = |env: &[(String, String)], key: &str| env.iter().any(|(k, _)| k == key);
    if let Some(id) = &identity
        && !has(&env, "HOME")
    {
        env.push(("HOME".into(), id.home.clone()));
    }
    if req.tty.is_some() && !has(&env, "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }

    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd);
    let master = match req.tty {
        Some(size) => {
            let pty = tty::open(size).map_err(|e| (io_kind(&e), e))?;
            let clone = |fd: &OwnedFd| fd.try_clone().map_err(|e| (io_kind(&e), e));
            cmd.stdin(Stdio::from(clone(&pty.slave)?))
                .stdout(Stdio::from(clone(&pty.slave)?))
                .stderr(Stdio::from(pty.slave));
            Some(pty.master)
        }
        None => {
            cmd.stdin(match req.stdin {
                StdinMode::Null => Stdio::null(),
                StdinMode::Pipe => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
            None
        }
    };

    let with_tty = master.is_some();
    let ids = identity.map(|id| (id.uid, id.gid, id.groups));
    // SAFETY: the hook runs in the forked child before exec; it only makes
    // raw syscalls (setsid, ioctl, setgroups, setgid, setuid) on values
    // computed before the fork, allocating nothing and taking no locks, so
    // it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if with_tty {
                tty::make_controlling()?;
            }
            if let Some((uid, gid, groups)) = &ids {
                switch_user(*uid, *gid, groups)?;
            }
            Ok(())
        });
    }
    match cmd.spawn() {
        // The Command (and with it the agent's copies of the slave) is
        // dropped on return, so the master sees EOF once the child's side
        // is all closed.
        Ok(child) => Ok(Started { child, tty: master }),
        Err(e) => {
            let path = env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
            let found = locate(program, path, &cwd);
            Err((classify(&e, &found), e))
        }
    }
}

/// Refuses a `cwd` that is missing or not a directory.
fn check_cwd(cwd: &str) -> Result<(), StartError> {
    let bad = |e: io::Error| {
        (
            ErrorKind::BadCwd,
            io::Error::new(e.kind(), format!("cwd {cwd}: {e}")),
        )
    };
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(bad(io::Error::from_raw_os_error(libc::ENOTDIR))),
        Err(e) => Err(bad(e)),
    }
}

/// In the forked child: drops to `uid`/`gid` with supplementary `groups`.
/// Async-signal-safe.
fn switch_user(uid: libc::uid_t, gid: libc::gid_t, groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: setgroups(2) reads `groups.len()` gids from the slice's
    // pointer, which stays valid for the call (a null pointer is fine for 0).
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
        let err = io::Error::last_os_error();
        if !(groups.is_empty() && err.raw_os_error() == Some(libc::EPERM)) {
            return Err(err);
        }
    }
    // SAFETY: setgid(2) takes an id by value.
    if unsafe { libc::setgid(gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setuid(2) takes an id by value.
    if unsafe { libc::setuid(uid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What is at the places `execvp` would try for `program`: the one path
/// when it has a `/` (relative to `cwd`), else each `PATH` entry's.
fn locate(program: &str, path: &str, cwd: &Path) -> Vec<Metadata> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(program)]
    } else if program.is_empty() {
        Vec::new()
    } else {
        path.split(':')
            .map(|dir| {
                let dir = if dir.is_empty() {
                    Path::new(".")
                } else {
                    Path::new(dir)
                };
                cwd.join(dir).join(program)
            })
            .collect()
    };
    candidates
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .collect()
}

/// Whether `m` is something `execve` could run at all.
fn executable(m: &Metadata) -> bool {
    m.is_file() && m.permissions().mode() & 0o111 != 0
}

/// The kind to report for a failed spawn, given what [`locate`] found.
fn classify(e: &io::Error, found: &[Metadata]) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOENT) if found.is_empty() => ErrorKind::NotFound,
        // The program is there: its interpreter is not.
        Some(libc::ENOENT) => ErrorKind::NotExecutable,
        Some(libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => ErrorKind::NotFound,
        Some(libc::EACCES) if !found.is_empty() && !found.iter().any(executable) => {
            ErrorKind::NotExecutable
        }
        Some(libc::EACCES | libc::EPERM) => ErrorKind::PermissionDenied,
        Some(libc::ENOEXEC | libc::EISDIR) => ErrorKind::NotExecutable,
        Some(libc::E2BIG) => ErrorKind::InvalidArgument,
        Some(_) => io_kind(e),
        // std's own refusals, e.g. a NUL byte in an argument.
        None if e.kind() == io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
        None => ErrorKind::Io,
    }
}

/// The kind for an I/O failure of the agent's own (opening a pty, a pipe).
pub fn io_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::ENOSPC) => {
            ErrorKind::ResourceExhausted
        }
        _ => ErrorKind::Io,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn errors_are_classified_by_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("plain"), "x").unwrap();
        std::fs::write(d.join("tool"), "x").unwrap();
        std::fs::set_permissions(d.join("tool"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = format!("/nonexistent:{}", d.display());

        let at = |p: &str| locate(p, &path, d);
        assert!(at("missing").is_empty());
        assert_eq!(
            classify(&errno(libc::ENOENT), &at("missing")),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(&errno(libc::ENOENT), &at("./missing")),
            ErrorKind::NotFound
        );
        assert_eq!(
            classify(&errno(libc::EACCES), &at("sub")),
            ErrorKind::NotExecutable
        );
        assert_eq!(
            classify(&errno(libc::EACCES), &at("./plain")),
            ErrorKind::NotExecutable
        );
        assert_eq!(
            classify(&errno(libc::EACCES), &at("tool")),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            classify(&errno(libc::ENOENT), &at("tool")),
            ErrorKind::NotExecutable
        );
        assert_eq!(
            classify(&errno(libc::ENOEXEC), &at("tool")),
            ErrorKind::NotExecutable
        );
        let nul = io::Error::new(io::ErrorKind::InvalidInput, "nul byte");
        assert_eq!(classify(&nul, &[]), ErrorKind::InvalidArgument);
    }

    #[test]
    fn a_cwd_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(check_cwd(dir.path().to_str().unwrap()).is_ok());
        let missing = check_cwd(dir.path().join("nope").to_str().unwrap()).unwrap_err();
        assert_eq!(missing.0, ErrorKind::BadCwd);
        let not_dir = check_cwd(file.to_str().unwrap()).unwrap_err();
        assert_eq!(not_dir.0, ErrorKind::BadCwd);
    }
}
