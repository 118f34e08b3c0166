//! The busybox rootfs every contender of the `sandbox` suite runs in.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use msb_core::sandbox::programs::check_static;

use crate::Result;

/// Where Debian's `busybox-static` puts busybox.
const BUSYBOX: &str = "/bin/busybox";
/// The applets linked to `/bin/busybox`.
const APPLETS: &[&str] = &["sh", "true", "sleep", "echo", "cat"];

/// Builds the rootfs at `dir` (which must not exist): a static busybox,
/// symlinks for [`APPLETS`], `/etc/passwd`, `/etc/group` and the empty
/// mount points `/tmp`, `/proc`, `/dev`, `/sys`, `/root`.
pub fn build(dir: &Path) -> Result<()> {
    let busybox = Path::new(BUSYBOX);
    check_static(busybox).map_err(|e| {
        format!("{BUSYBOX} cannot serve as the rootfs's busybox ({e}); install `busybox-static`")
    })?;
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| format!("{what} {path}: {e}")
    };
    for sub in ["bin", "etc", "tmp", "proc", "dev", "sys", "root"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(io("creating", &path))?;
    }
    let tmp = dir.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &tmp))?;
    let target = dir.join("bin").join("busybox");
    std::fs::copy(busybox, &target).map_err(io("copying busybox to", &target))?;
    for applet in APPLETS {
        let link = dir.join("bin").join(applet);
        symlink("busybox", &link).map_err(io("linking", &link))?;
    }
    let passwd = dir.join("etc").join("passwd");
    std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\n").map_err(io("writing", &passwd))?;
    let group = dir.join("etc").join("group");
    std::fs::write(&group, "root:x:0:\n").map_err(io("writing", &group))?;
    Ok(())
}
