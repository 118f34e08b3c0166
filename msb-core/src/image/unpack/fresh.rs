//! What the applier knows about the directories it creates, so that most
//! entries need no `fchown` or `fchmod` after they are created.
//!
//! A new entry's mode is the mode asked of `openat`/`mkdirat` less the
//! umask, unless its parent has a default ACL; its group is the creator's
//! effective group, unless the parent is setgid (or the file system is
//! mounted `grpid`), when it is the parent's group. So where the applier
//! knows its parent (created by itself in this layer, no extended
//! attributes set on it, inside a directory it knows too, up to a root
//! without a default ACL), an entry created with the right mode and owned
//! by the applier's own uid and gid needs neither call. Everything else
//! (directories of lower layers, anything after a removal in this layer)
//! is unknown and gets both calls, as before.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::stat::fstat;

/// A directory the applier created in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Known {
    /// Its group.
    pub gid: u32,
    /// Whether it is setgid (new subdirectories inherit the bit).
    pub setgid: bool,
}

/// The directories whose ACLs, group and setgid bit the applier knows,
/// keyed by their path from the root (the root itself is `b""`).
#[derive(Debug)]
pub(super) struct FreshDirs {
    known: HashMap<Vec<u8>, Known>,
    uid: u32,
    gid: u32,
    /// The process umask, if it could be read.
    umask: Option<u32>,
}

impl FreshDirs {
    /// Starts from the root being unpacked into: known when it has no
    /// default ACL.
    pub(super) fn new(root: BorrowedFd<'_>) -> Self {
        let mut known = HashMap::new();
        if let Ok(st) = fstat(root)
            && !has_default_acl(root)
        {
            known.insert(
                Vec::new(),
                Known {
                    gid: st.st_gid,
                    setgid: st.st_mode & libc::S_ISGID != 0,
                },
            );
        }
        Self {
            known,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            umask: umask(),
        }
    }

    /// Forget everything below the root (after a removal: a known path may
    /// now name something else).
    pub(super) fn forget(&mut self) {
        self.known.retain(|path, _| path.is_empty());
    }

    /// Forget one directory (its metadata changed).
    pub(super) fn forget_dir(&mut self, path: &[u8]) {
        self.known.remove(path);
    }

    /// Record `path` as created in this layer with group `gid` and `mode`,
    /// with no extended attributes set on it, inside the directory `parent`.
    pub(super) fn created(&mut self, parent: &[u8], path: Vec<u8>, gid: u32, mode: u32) {
        if self.known.contains_key(parent) {
            self.set(path, gid, mode);
        }
    }

    /// Record the root's new group and mode, if it was known (a layer's
    /// entry for the root itself, with no extended attributes).
    pub(super) fn root_changed(&mut self, gid: u32, mode: u32) {
        if self.known.contains_key(&b""[..]) {
            self.set(Vec::new(), gid, mode);
        }
    }

    fn set(&mut self, path: Vec<u8>, gid: u32, mode: u32) {
        let setgid = mode & libc::S_ISGID != 0;
        self.known.insert(path, Known { gid, setgid });
    }

    /// What is known of the directory `path`.
    pub(super) fn get(&self, path: &[u8]) -> Option<Known> {
        self.known.get(path).copied()
    }

    /// Whether a new non-directory created in `parent` by this process is
    /// already owned by `uid`/`gid`.
    pub(super) fn owner_is(&self, parent: Option<Known>, uid: u32, gid: u32) -> bool {
        // In a setgid parent (or on a `grpid` mount) the parent's group is
        // the new entry's: equal to ours, it is ours either way.
        parent.is_some_and(|p| p.gid == self.gid) && uid == self.uid && gid == self.gid
    }

    /// The group a new directory created in `parent` by this process gets,
    /// when known.
    pub(super) fn new_dir_gid(&self, parent: Option<Known>) -> Option<u32> {
        parent.filter(|p| p.gid == self.gid).map(|_| self.gid)
    }

    /// Whether a new entry created in `parent` with permission bits `mode`
    /// has exactly `mode` (no special bits, nothing the umask clears). A
    /// directory also inherits its parent's setgid bit.
    pub(super) fn mode_is(&self, parent: Option<Known>, mode: u32, dir: bool) -> bool {
        let Some(parent) = parent else {
            return false;
        };
        let Some(umask) = self.umask else {
            return false;
        };
        mode & 0o7000 == 0 && mode & umask == 0 && !(dir && parent.setgid)
    }
}

/// Whether the directory `fd` has a default ACL (which replaces the umask
/// for entries created in it).
fn has_default_acl(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: `fd` is a live descriptor and the name a NUL-terminated
    // string; a null buffer of size 0 only asks for the value's size.
    let rc = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            c"system.posix_acl_default".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc >= 0 {
        return true;
    }
    // No such attribute, or no ACLs on this file system: none. Anything else
    // (an unexpected error): assume there is one.
    !matches!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA | libc::EOPNOTSUPP)
    )
}

/// The process umask, from `/proc/self/status` (reading it with `umask(2)`
/// would change it for a moment, under every other thread).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn the_umask_is_the_one_a_child_inherits() {
        let read = umask().expect("Umask: in /proc/self/status");
        let out = std::process::Command::new("sh")
            .args(["-c", "umask"])
            .output()
            .unwrap();
        let shell = u32::from_str_radix(String::from_utf8(out.stdout).unwrap().trim(), 8).unwrap();
        assert_eq!(read, shell);
    }

    #[test]
    fn a_plain_temp_dir_is_known_and_its_children_follow() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let mut fresh = FreshDirs::new(root.as_fd());
        let root_known = fresh.get(b"").expect("a temp dir has no default ACL");
        let gid = fresh.gid;
        // A directory created in an unknown parent stays unknown.
        fresh.created(b"nowhere", b"nowhere/x".to_vec(), gid, 0o755);
        assert_eq!(fresh.get(b"nowhere/x"), None);
        fresh.created(b"", b"etc".to_vec(), gid, 0o2755);
        let etc = fresh.get(b"etc").unwrap();
        assert!(etc.setgid);
        assert!(fresh.owner_is(Some(etc), fresh.uid, gid));
        assert!(!fresh.owner_is(Some(etc), fresh.uid + 1, gid));
        assert!(!fresh.owner_is(None, fresh.uid, gid));
        // Special bits always need fchmod; a setgid parent marks new
        // directories but not files.
        assert!(!fresh.mode_is(Some(root_known), 0o4755, false));
        assert!(fresh.mode_is(Some(etc), 0o600, false) || fresh.umask.unwrap() & 0o600 != 0);
        assert!(!fresh.mode_is(Some(etc), 0o700, true));
        fresh.forget();
        assert_eq!(fresh.get(b"etc"), None);
        assert!(fresh.get(b"").is_some());
    }
}
