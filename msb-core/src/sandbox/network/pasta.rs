//! The pasta process of a namespace sandbox (see the module docs of
//! [`super`] for its flags).

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{NetworkSpec, Protocol};
use crate::{Error, Result};

/// pasta's pid file in the sandbox directory (its readiness signal).
pub const PASTA_PID_FILE: &str = "pasta.pid";
/// pasta's messages, in the sandbox directory.
pub const PASTA_LOG: &str = "pasta.log";
/// How long pasta may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `pasta` program: `MSB_PASTA`, else `pasta` in the usual places.
pub fn pasta_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MSB_PASTA") {
        return Some(p.into());
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/bin".into()])
        .map(|dir| dir.join("pasta"))
        .find(|p| p.is_file())
}

/// pasta's arguments for the namespaces of `pid` (without the program).
pub fn pasta_args(
    pid: u32,
    spec: &NetworkSpec,
    pid_file: &Path,
    root: bool,
    dns: Option<IpAddr>,
) -> Vec<String> {
    let mut args: Vec<String> = ["--config-net", "--foreground", "--quiet"]
        .map(String::from)
        .to_vec();
    if root {
        args.extend(["--runas".into(), "0:0".into()]);
    }
    for (flag, protocol) in [("-t", Protocol::Tcp), ("-u", Protocol::Udp)] {
        let specs: Vec<String> = spec
            .ports
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| p.pasta_spec())
            .collect();
        if specs.is_empty() {
            args.extend([flag.into(), "none".into()]);
        }
        for s in specs {
            args.extend([flag.into(), s]);
        }
    }
    args.extend(["-T", "none", "-U", "none"].map(String::from));
    if !spec.policy.allows_loopback() {
        args.push("--no-map-gw".into());
    }
    if let Some(addr) = dns {
        args.extend(["--dns-forward".into(), addr.to_string()]);
    }
    args.extend([
        "--userns".into(),
        format!("/proc/{pid}/ns/user"),
        "--netns".into(),
        format!("/proc/{pid}/ns/net"),
        "-P".into(),
        pid_file.display().to_string(),
    ]);
    args
}

/// A running pasta, the sandbox process's child. Dropping it kills and
/// reaps it.
#[derive(Debug)]
pub struct Pasta {
    child: Option<Child>,
    pid: u32,
}

impl Pasta {
    /// Starts pasta for the namespaces of `pid` and waits until it has
    /// configured them (its pid file is written), or fails with its own
    /// message. Must be called from the thread that lives as long as the
    /// sandbox (the parent-death signal follows that thread).
    pub fn start(pid: u32, spec: &NetworkSpec, dir: &Path) -> Result<Pasta> {
        Self::start_from(pid, spec, dir, None)
    }

    /// [`start`](Self::start), with pasta itself run in the network
    /// namespace `outer` (its external side) when the caller has already
    /// left the host's: a microVM's VMM connecting its own namespace.
    pub fn start_from(
        pid: u32,
        spec: &NetworkSpec,
        dir: &Path,
        outer: Option<&File>,
    ) -> Result<Pasta> {
        let fail = |reason: String| Error::NetworkSetup {
            step: "start pasta",
            reason,
        };
        let program = pasta_program().ok_or_else(|| {
            fail("pasta is not installed (Debian package passt; or set MSB_PASTA)".into())
        })?;
        let pid_file = dir.join(PASTA_PID_FILE);
        let _ = std::fs::remove_file(&pid_file);
        let log_path = dir.join(PASTA_LOG);
        let log = File::create(&log_path).map_err(|source| Error::Io {
            op: "create",
            path: log_path.clone(),
            source,
        })?;
        let root = nix::unistd::geteuid().is_root();
        let mut args = pasta_args(pid, spec, &pid_file, root, super::files::dns_forward());
        if outer.is_some() {
            // The namespace is the caller's own, in the caller's user
            // namespace: pasta joins just the network namespace, through a
            // bind mount of it (pasta opens it after dropping privileges,
            // when /proc/<pid>/ns is no longer open to it).
            if let Some(at) = args.iter().position(|a| a == "--userns") {
                args.drain(at..at + 2);
            }
            let pinned = dir.join("netns");
            pin_netns(pid, &pinned)
                .map_err(|e| fail(format!("cannot pin the network namespace: {e}")))?;
            if let Some(at) = args.iter().position(|a| a == "--netns") {
                args[at + 1] = pinned.display().to_string();
            }
        }
        tracing::debug!(program = %program.display(), ?args, "starting pasta");
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let outer = outer.map(std::os::fd::AsRawFd::as_raw_fd);
        // Runs in the forked child before execve: setns(2), prctl(2) and
        // getppid(2) only, all async-signal-safe.
        let die_with_us = move || {
            if let Some(outer) = outer
                // SAFETY: setns(2) on a namespace descriptor the caller keeps
                // open until spawn returns.
                && unsafe { libc::setns(outer, libc::CLONE_NEWNET) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: PR_SET_PDEATHSIG takes a signal number.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then we are
            // already orphaned and no signal will come.
            // SAFETY: getppid(2) takes no arguments.
            if unsafe { libc::getppid() } == 1 {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: `die_with_us` only makes async-signal-safe system calls.
        unsafe { cmd.pre_exec(die_with_us) };
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        let mut pasta = Pasta {
            pid: child.id(),
            child: Some(child),
        };
        let started = Instant::now();
        loop {
            if std::fs::read(&pid_file).is_ok_and(|b| !b.is_empty()) {
                tracing::debug!(elapsed = ?started.elapsed(), "pasta is ready");
                return Ok(pasta);
            }
            if let Some(status) = pasta
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                pasta.child = None;
                return Err(fail(format!(
                    "pasta exited ({status}): {}",
                    messages(&log_path)
                )));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(fail(format!(
                    "pasta did not configure the namespace within {READY_TIMEOUT:?}: {}",
                    messages(&log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// pasta's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills and reaps pasta.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            match child.wait() {
                Ok(status) => tracing::debug!(%status, "pasta stopped"),
                Err(e) => tracing::warn!(error = %e, "cannot reap pasta"),
            }
        }
    }
}

impl Drop for Pasta {
    fn drop(&mut self) {
        self.stop();
    }
}

/// pasta's log without the noise of a missing syslog.
fn messages(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("Failed to send") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Bind-mounts the network namespace of `pid` on `at` (created empty), in
/// the caller's mount namespace.
fn pin_netns(pid: u32, at: &Path) -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    File::create(at)?;
    mount(
        Some(format!("/proc/{pid}/ns/net").as_str()),
        at,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::network::{DestinationGroup, NetworkPolicy, PortMapping};

    #[test]
    fn arguments() {
        let spec = NetworkSpec {
            ports: vec![
                PortMapping::local(Protocol::Tcp, 8080, 80),
                PortMapping::local(Protocol::Tcp, 8443, 443),
            ],
            policy: NetworkPolicy::allow_all().deny(DestinationGroup::Loopback),
            ..NetworkSpec::default()
        };
        let args = pasta_args(42, &spec, Path::new("/d/pasta.pid"), true, None).join(" ");
        assert_eq!(
            args,
            "--config-net --foreground --quiet --runas 0:0 -t 127.0.0.1/8080:80 \
             -t 127.0.0.1/8443:443 -u none -T none -U none --no-map-gw \
             --userns /proc/42/ns/user --netns /proc/42/ns/net -P /d/pasta.pid"
        );
        let args = pasta_args(
            7,
            &NetworkSpec::default(),
            Path::new("p"),
            false,
            Some("192.0.2.1".parse().unwrap()),
        )
        .join(" ");
        assert!(
            args.contains("-t none -u none -T none -U none --dns-forward 192.0.2.1 --userns"),
            "{args}"
        );
        assert!(!args.contains("--no-map-gw"));
    }
}
