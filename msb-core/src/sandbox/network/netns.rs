//! Running `ip` inside a sandbox's network namespace from the host.
//!
//! The one `unsafe` of the network module: the `setns(2)` calls made in the
//! forked `ip` child before its `execve`.

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// The `ip` program (iproute2): `MSB_IP` or the first of the usual places.
fn ip_program() -> PathBuf {
    if let Some(p) = std::env::var_os("MSB_IP") {
        return p.into();
    }
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "ip".into())
}

/// A sandbox's user and network namespaces, held open. `user` is `None`
/// when it is the caller's own (setns(2) into one's own user namespace is
/// `EINVAL`): a microVM's VMM in a network namespace of its own.
pub(super) struct Netns {
    user: Option<File>,
    net: File,
}

impl Netns {
    /// Opens `/proc/<pid>/ns/{user,net}`.
    pub(super) fn open(pid: u32) -> Result<Netns> {
        let open = |kind: &str| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
            File::open(&path).map_err(|source| Error::Io {
                op: "open",
                path,
                source,
            })
        };
        use std::os::unix::fs::MetadataExt;
        let user = open("user")?;
        let own = std::fs::metadata("/proc/self/ns/user").ok();
        let same = match (user.metadata().ok(), own) {
            (Some(theirs), Some(ours)) => theirs.dev() == ours.dev() && theirs.ino() == ours.ino(),
            _ => false,
        };
        Ok(Netns {
            user: (!same).then_some(user),
            net: open("net")?,
        })
    }

    /// `ip <args>` run inside the namespaces, with `input` on its stdin;
    /// its stdout on success.
    fn ip(&self, args: &[&str], input: &str) -> Result<String> {
        let setup = |reason: String| Error::NetworkSetup {
            step: "configure the network namespace",
            reason,
        };
        let (user, net) = (
            self.user.as_ref().map(|u| u.as_raw_fd()),
            self.net.as_raw_fd(),
        );
        let mut cmd = Command::new(ip_program());
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Runs in the forked child before execve: only setns(2) calls
        // (async-signal-safe) on descriptors this `Netns` keeps open across
        // the fork. Joining the user namespace first gives the child the
        // capabilities over the network namespace that setns(CLONE_NEWNET)
        // needs, also when not running as root.
        let join = move || {
            if let Some(user) = user
                // SAFETY: setns(2) on an open namespace descriptor.
                && unsafe { libc::setns(user, libc::CLONE_NEWUSER) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: as above.
            if unsafe { libc::setns(net, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: `join` only makes async-signal-safe system calls.
        unsafe { cmd.pre_exec(join) };
        let mut child = cmd
            .spawn()
            .map_err(|e| setup(format!("cannot run {}: {e}", ip_program().display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| setup(format!("cannot feed ip: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| setup(format!("cannot wait for ip: {e}")))?;
        if !out.status.success() {
            return Err(setup(format!(
                "ip {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `lines` with `ip -4|-6 -batch -`.
    pub(super) fn ip_batch(&self, v6: bool, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut input = lines.join("\n");
        input.push('\n');
        tracing::debug!(v6, rules = %input, "network namespace rules");
        self.ip(&[if v6 { "-6" } else { "-4" }, "-batch", "-"], &input)
            .map(drop)
    }

    /// The namespace's default gateway of one family, if any.
    pub(super) fn default_gateway(&self, v6: bool) -> Result<Option<IpAddr>> {
        let out = self.ip(
            &[if v6 { "-6" } else { "-4" }, "route", "show", "default"],
            "",
        )?;
        Ok(parse_gateway(&out))
    }
}

/// The address after `via` in `ip route show default` output.
fn parse_gateway(out: &str) -> Option<IpAddr> {
    out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "via")?;
        words.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_parse() {
        assert_eq!(
            parse_gateway("default via 192.0.2.1 dev eth0 \n"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            parse_gateway("default via fe80::1 dev eth0 proto ra metric 1024 pref medium\n"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(parse_gateway(""), None);
    }
}
