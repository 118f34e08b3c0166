//! The overlay mount: options, the availability probe, and the mount call.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::mount::MsFlags;

use super::{RootfsErrorKind, RootfsLayout};
use crate::{Error, Result};

/// The legacy `mount(2)` data argument is one page, NUL included.
const MAX_OPTIONS: usize = 4095;

/// Filesystems that cannot hold an overlay upper directory (or whose use as
/// one is unreliable): overlayfs itself, NFS, FUSE, CIFS/SMB, 9p, eCryptfs.
const UNSUITABLE_UPPER_FS: &[(i64, &str)] = &[
    (0x794c_7630, "overlayfs"),
    (0x6969, "nfs"),
    (0x6573_5546, "fuse"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x517b, "smb"),
    (0x0102_1997, "9p"),
    (0xf15f, "ecryptfs"),
];

/// The overlay's mount options for `layout` when mounted from this process's
/// user namespace.
pub(super) fn options(layout: &RootfsLayout) -> Result<OsString> {
    options_for(layout, in_user_namespace())
}

/// The overlay's mount options for `layout`, with `userxattr` when the mount
/// happens inside a user namespace (`userns`), refusing paths that the option
/// syntax cannot carry (`,` separates options, `:` separates lower dirs, `\`
/// escapes) instead of escaping them.
pub(crate) fn options_for(layout: &RootfsLayout, userns: bool) -> Result<OsString> {
    let mut data = Vec::new();
    for (key, path) in [
        ("lowerdir=", &layout.lower),
        (",upperdir=", &layout.upper),
        (",workdir=", &layout.work),
    ] {
        if let Some(&c) = path
            .as_os_str()
            .as_bytes()
            .iter()
            .find(|c| matches!(c, b',' | b':' | b'\\'))
        {
            return Err(Error::InvalidRootfs {
                path: path.clone(),
                reason: RootfsErrorKind::OverlayUnsafeChar(c as char),
            });
        }
        data.extend_from_slice(key.as_bytes());
        data.extend_from_slice(path.as_os_str().as_bytes());
    }
    if userns {
        data.extend_from_slice(b",userxattr");
    }
    if data.len() > MAX_OPTIONS {
        return Err(Error::InvalidRootfs {
            path: layout.lower.clone(),
            reason: RootfsErrorKind::OptionsTooLong {
                len: data.len(),
                max: MAX_OPTIONS,
            },
        });
    }
    Ok(OsString::from_vec(data))
}

/// Mounts the overlay at `layout.merged`.
pub(super) fn mount(layout: &RootfsLayout) -> Result<()> {
    let data = options(layout)?;
    nix::mount::mount(
        Some("overlay"),
        &layout.merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_os_str()),
    )
    .map_err(|errno| Error::OverlayMount {
        merged: layout.merged.clone(),
        source: errno.into(),
    })?;
    tracing::debug!(merged = %layout.merged.display(), "overlay mounted");
    Ok(())
}

/// Whether an overlay with its upper directory under `state` can be expected
/// to mount; the reason when not.
pub(super) fn usable(state: &Path) -> std::result::Result<(), String> {
    let root = nix::unistd::geteuid().is_root() && !in_user_namespace();
    let listed = std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false);
    // Root can have the module autoloaded by the mount itself.
    if !listed && !root {
        return Err("the kernel has no overlayfs".into());
    }
    if !root {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if kernel_version(&release) < (5, 11) {
            return Err(format!(
                "kernel {} predates unprivileged overlay (5.11)",
                release.trim()
            ));
        }
        let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if max_userns == Some(0) {
            return Err("user namespaces are disabled".into());
        }
    }
    let fs = nix::sys::statfs::statfs(state).map_err(|e| format!("statfs: {e}"))?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let magic = fs.filesystem_type().0 as i64;
    if let Some((_, name)) = UNSUITABLE_UPPER_FS.iter().find(|(m, _)| *m == magic) {
        return Err(format!(
            "the state home is on {name}, which cannot hold an overlay upper dir"
        ));
    }
    Ok(())
}

/// Whether this process is in a user namespace other than the initial one
/// (the initial one maps the whole id range onto itself).
pub(crate) fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// `(major, minor)` of a kernel release string such as `6.18.44-fc`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::Strategy;

    fn layout(lower: &str) -> RootfsLayout {
        RootfsLayout::for_sandbox(
            Path::new("/s/b"),
            &crate::rootfs::RootfsSource::Directory(lower.into()),
        )
        .with_strategy(Strategy::Overlay)
    }

    #[test]
    fn options_name_all_three_dirs() {
        let opts = options(&layout("/img/rootfs")).unwrap();
        let opts = opts.to_str().unwrap();
        assert!(opts.starts_with(
            "lowerdir=/img/rootfs,upperdir=/s/b/rootfs/upper,workdir=/s/b/rootfs/work"
        ));
    }

    #[test]
    fn separators_are_refused() {
        for (path, c) in [("/a,b", ','), ("/a:b", ':'), ("/a\\b", '\\')] {
            match options(&layout(path)) {
                Err(Error::InvalidRootfs {
                    reason: RootfsErrorKind::OverlayUnsafeChar(got),
                    ..
                }) => assert_eq!(got, c),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn overlong_options_are_refused() {
        let long = format!("/{}", "a".repeat(5000));
        assert!(matches!(
            options(&layout(&long)),
            Err(Error::InvalidRootfs {
                reason: RootfsErrorKind::OptionsTooLong { .. },
                ..
            })
        ));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v657\n"), (6, 18));
        assert_eq!(kernel_version("5.10.0-28-amd64"), (5, 10));
        assert!(kernel_version("5.11.0") >= (5, 11));
        assert_eq!(kernel_version(""), (0, 0));
    }
}
