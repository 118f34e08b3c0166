//! PID-1 duties in a microVM (`MSB_AGENT_INIT=1`): the guest kernel hands
//! over a bare root filesystem, so the agent mounts the usual pseudo
//! filesystems and sets the hostname before serving, and powers the VM off
//! instead of exiting (an exiting PID 1 panics the kernel).
//!
//! Namespace sandboxes don't set `MSB_AGENT_INIT`: there the host has
//! already set up `/proc`, `/dev` and `/tmp`.

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

/// The environment variable that turns init duties on (value `1`).
pub const INIT_ENV: &str = "MSB_AGENT_INIT";
/// The environment variable holding the hostname to set, if any.
pub const HOSTNAME_ENV: &str = "MSB_HOSTNAME";

/// One pseudo filesystem to mount.
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// What is mounted, in order (parents before children).
fn mounts() -> [Mount; 7] {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: hardened,
            data: None,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: hardened,
            data: None,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620"),
        },
        Mount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
    ]
}

/// Whether the environment asks for init duties.
pub fn enabled() -> bool {
    std::env::var(INIT_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Mounts the pseudo filesystems (one already mounted is fine) and sets the
/// hostname from `MSB_HOSTNAME`. Failures are reported and skipped: a guest
/// without `/sys` can still run commands.
pub fn setup() {
    for m in mounts() {
        if let Err(e) = mount_one(&m) {
            eprintln!("msb-agent: mounting {} on {}: {e}", m.fstype, m.target);
        }
    }
    // /dev/ptmx must be the new devpts instance's.
    if !Path::new("/dev/ptmx").exists()
        && let Err(e) = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")
    {
        eprintln!("msb-agent: linking /dev/ptmx: {e}");
    }
    if let Ok(name) = std::env::var(HOSTNAME_ENV)
        && !name.is_empty()
        && let Err(e) = set_hostname(&name)
    {
        eprintln!("msb-agent: setting the hostname to {name:?}: {e}");
    }
}

fn mount_one(m: &Mount) -> io::Result<()> {
    std::fs::create_dir_all(m.target)?;
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: sethostname(2) reads `name.len()` bytes from a live &str.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flushes filesystems and powers the VM off. Only returns if the kernel
/// refuses (then the caller exits).
pub fn power_off() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a valid command; as the VM's PID 1 this is how
    // the agent ends the guest.
    let ret = unsafe { libc::reboot(libc::RB_POWER_OFF) };
    if ret < 0 {
        eprintln!(
            "msb-agent: powering off failed: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_children() {
        let all = mounts();
        for (i, m) in all.iter().enumerate() {
            for earlier in &all[..i] {
                assert!(
                    !Path::new(earlier.target).starts_with(m.target),
                    "{} is mounted after its child {}",
                    m.target,
                    earlier.target
                );
            }
        }
    }
}
