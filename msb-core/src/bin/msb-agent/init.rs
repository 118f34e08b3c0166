//! PID-1 duties in a microVM (`MSB_AGENT_INIT=1`): the guest kernel hands
//! over a bare root filesystem, so the agent mounts the usual pseudo
//! filesystems and sets the hostname before serving, and powers the VM off
//! instead of exiting (an exiting PID 1 panics the kernel).
//!
//! Volumes (`MSB_MOUNTS`, see [`parse_mounts`]) are mounted after them:
//! virtio-fs shares by tag, and tmpfs.
//!
//! Namespace sandboxes don't set `MSB_AGENT_INIT`: there the host has
//! already set up `/proc`, `/dev`, `/tmp` and the volumes.

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

/// The environment variable that turns init duties on (value `1`).
pub const INIT_ENV: &str = "MSB_AGENT_INIT";
/// The environment variable holding the hostname to set, if any.
pub const HOSTNAME_ENV: &str = "MSB_HOSTNAME";
/// The environment variable listing the volumes to mount (see
/// [`parse_mounts`]).
pub const MOUNTS_ENV: &str = "MSB_MOUNTS";

/// What a volume mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A virtio-fs share, by tag.
    Virtiofs(String),
    /// A new tmpfs, with a size limit in MiB.
    Tmpfs(Option<u32>),
}

/// One volume from `MSB_MOUNTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// What is mounted.
    pub source: VolumeSource,
    /// Where (absolute).
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

/// Parses `MSB_MOUNTS`: comma-separated `SOURCE:GUEST[:ro]`, where
/// `SOURCE` is a virtio-fs tag, `tmpfs` or `tmpfs=<MiB>`. Malformed
/// entries are returned as errors, one per entry, and skipped.
pub fn parse_mounts(value: &str) -> (Vec<Volume>, Vec<String>) {
    let mut volumes = Vec::new();
    let mut errors = Vec::new();
    for entry in value.split(',').filter(|e| !e.is_empty()) {
        let mut parts = entry.split(':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            errors.push(format!("{entry:?}: expected SOURCE:GUEST[:ro]"));
            continue;
        };
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => {
                errors.push(format!("{entry:?}: unknown option {other:?}"));
                continue;
            }
        };
        if parts.next().is_some() || !target.starts_with('/') || source.is_empty() {
            errors.push(format!("{entry:?}: expected SOURCE:/GUEST[:ro]"));
            continue;
        }
        let source = match source.strip_prefix("tmpfs") {
            Some("") => VolumeSource::Tmpfs(None),
            Some(size) => match size.strip_prefix('=').map(str::parse::<u32>) {
                Some(Ok(mib)) => VolumeSource::Tmpfs(Some(mib)),
                _ => VolumeSource::Virtiofs(source.to_owned()),
            },
            None => VolumeSource::Virtiofs(source.to_owned()),
        };
        volumes.push(Volume {
            source,
            target: target.to_owned(),
            read_only,
        });
    }
    (volumes, errors)
}

/// Mounts one volume (creating its mount point).
fn mount_volume(v: &Volume) -> io::Result<()> {
    std::fs::create_dir_all(&v.target)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if v.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    match &v.source {
        VolumeSource::Virtiofs(tag) => {
            mount(
                Some(tag.as_str()),
                v.target.as_str(),
                Some("virtiofs"),
                flags,
                None::<&str>,
            )?;
        }
        VolumeSource::Tmpfs(size) => {
            let data = match size {
                Some(mib) => format!("mode=1777,size={mib}m"),
                None => "mode=1777".to_owned(),
            };
            mount(
                Some("tmpfs"),
                v.target.as_str(),
                Some("tmpfs"),
                flags,
                Some(data.as_str()),
            )?;
        }
    }
    Ok(())
}

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

/// Mounts the pseudo filesystems (one already mounted is fine), then the
/// volumes of `MSB_MOUNTS`, and sets the hostname from `MSB_HOSTNAME`.
/// Failures of the pseudo filesystems are reported and skipped (a guest
/// without `/sys` can still run commands); a volume that cannot be mounted
/// powers the VM off, so the sandbox fails to boot with that reason on its
/// console.
pub fn setup() {
    for m in mounts() {
        if let Err(e) = mount_one(&m) {
            eprintln!("msb-agent: mounting {} on {}: {e}", m.fstype, m.target);
        }
    }
    if let Ok(value) = std::env::var(MOUNTS_ENV) {
        let (volumes, errors) = parse_mounts(&value);
        for e in errors {
            eprintln!("msb-agent: {MOUNTS_ENV}: {e}");
        }
        for v in &volumes {
            if let Err(e) = mount_volume(v) {
                // A sandbox without a volume it was given must not come up:
                // the host sees the guest end before it is ready and
                // reports this line from the console.
                eprintln!(
                    "msb-agent: mounting volume {:?} on {}: {e}",
                    v.source, v.target
                );
                power_off();
                std::process::exit(1);
            }
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
    fn mounts_are_parsed() {
        let (v, errors) = parse_mounts("msbvol0:/data,tmpfs=64:/scratch:ro,tmpfs:/t,bad,x:rel");
        assert_eq!(
            v,
            vec![
                Volume {
                    source: VolumeSource::Virtiofs("msbvol0".into()),
                    target: "/data".into(),
                    read_only: false
                },
                Volume {
                    source: VolumeSource::Tmpfs(Some(64)),
                    target: "/scratch".into(),
                    read_only: true
                },
                Volume {
                    source: VolumeSource::Tmpfs(None),
                    target: "/t".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

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
