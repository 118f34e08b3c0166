//! The per-boot cache of [`HostFacts`].
//!
//! What the kernel says about KVM changes only with a reboot, a module load,
//! a permission change or a new group membership. The cache file is keyed by
//! all of these: the boot id, the process's user and groups, and the device
//! node's `stat` (owner, group, mode, device number). A permission fixed with
//! `chmod`, `usermod -aG` or a udev rule is therefore noticed at once, and a
//! result for one user is never served to another.
//!
//! The file is one JSON object, written to a temporary file in the same
//! directory and renamed into place, so a reader sees the old entry or the
//! new one, never half of one. A file that does not parse (corrupt, from
//! another format version) is ignored and rewritten.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tracing::debug;

use super::probe::{HostFacts, Identity, Node};

/// The cache file's name inside the cache directory.
pub const FILE_NAME: &str = "kvm-probe.json";

/// Bumped whenever [`HostFacts`] or [`Key`] change shape or meaning.
const FORMAT: u32 = 1;

/// What a cached entry is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The cache format version.
    pub format: u32,
    /// `/proc/sys/kernel/random/boot_id`: new on every boot.
    pub boot_id: String,
    /// Who is asking.
    pub identity: Identity,
    /// The device path.
    pub device: PathBuf,
    /// The device node as `stat` sees it now.
    pub node: Node,
    /// Where modules were listed from.
    pub sysfs_modules: PathBuf,
    /// Where CPU flags were read from.
    pub cpuinfo: PathBuf,
}

impl Key {
    /// A key of the current format.
    pub fn new(
        boot_id: String,
        identity: Identity,
        device: PathBuf,
        node: Node,
        sysfs_modules: PathBuf,
        cpuinfo: PathBuf,
    ) -> Self {
        Self {
            format: FORMAT,
            boot_id,
            identity,
            device,
            node,
            sysfs_modules,
            cpuinfo,
        }
    }
}

/// One cache file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: Key,
    facts: HostFacts,
}

/// The current boot's id, or `None` where the kernel does not say (then
/// nothing is cached on disk).
pub fn boot_id(path: &Path) -> Option<String> {
    let id = fs::read_to_string(path)
        .inspect_err(|err| debug!(path = %path.display(), %err, "kvm probe: no boot id"))
        .ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The cached facts in `file`, if they were recorded under `key`.
pub fn load(file: &Path, key: &Key) -> Option<HostFacts> {
    let bytes = match fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) => {
            debug!(file = %file.display(), %err, "kvm probe: no cache entry");
            return None;
        }
    };
    match serde_json::from_slice::<Entry>(&bytes) {
        Ok(entry) if entry.key == *key => {
            debug!(file = %file.display(), "kvm probe: cache hit");
            Some(entry.facts)
        }
        Ok(_) => {
            debug!(file = %file.display(), "kvm probe: cache entry is for another boot or user");
            None
        }
        Err(err) => {
            debug!(file = %file.display(), %err, "kvm probe: ignoring unreadable cache entry");
            None
        }
    }
}

/// Records `facts` under `key` in `file`, atomically, creating the directory.
pub fn store(file: &Path, key: &Key, facts: &HostFacts) -> io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let entry = Entry {
        key: key.clone(),
        facts: facts.clone(),
    };
    let json = serde_json::to_vec_pretty(&entry).map_err(io::Error::other)?;

    // Unique per writer, so concurrent stores (threads, processes) never
    // share a temporary file; the last rename wins, and every one is whole.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{FILE_NAME}.{}.{seq}.tmp", std::process::id()));
    let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(&json));
    let renamed = written.and_then(|()| fs::rename(&tmp, file));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::probe::{Access, CpuVirt};

    fn key(boot_id: &str, euid: u32) -> Key {
        Key::new(
            boot_id.into(),
            Identity {
                euid,
                egid: euid,
                groups: vec![108],
            },
            "/dev/kvm".into(),
            Node::CharDevice {
                mode: 0o660,
                uid: 0,
                gid: 108,
                rdev: 0xae8,
            },
            "/sys/module".into(),
            "/proc/cpuinfo".into(),
        )
    }

    fn facts() -> HostFacts {
        HostFacts {
            path: "/dev/kvm".into(),
            node: Node::CharDevice {
                mode: 0o660,
                uid: 0,
                gid: 108,
                rdev: 0xae8,
            },
            kvm_modules: vec!["kvm".into(), "kvm_pvm".into()],
            cpu: Some(CpuVirt {
                vmx: false,
                svm: false,
                hypervisor: true,
            }),
            access: Access::NotTried,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/cache").join(FILE_NAME);
        store(&file, &key("boot-a", 1000), &facts()).unwrap();
        assert_eq!(load(&file, &key("boot-a", 1000)), Some(facts()));
        // Only the entry is left behind, no temporary files.
        assert_eq!(fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn another_boot_or_user_misses() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        store(&file, &key("boot-a", 1000), &facts()).unwrap();
        assert_eq!(load(&file, &key("boot-b", 1000)), None);
        assert_eq!(load(&file, &key("boot-a", 1001)), None);
        let mut regrouped = key("boot-a", 1000);
        regrouped.identity.groups.clear();
        assert_eq!(load(&file, &regrouped), None);
        let mut chmodded = key("boot-a", 1000);
        chmodded.node = Node::CharDevice {
            mode: 0o666,
            uid: 0,
            gid: 108,
            rdev: 0xae8,
        };
        assert_eq!(load(&file, &chmodded), None);
    }

    #[test]
    fn corrupt_entry_is_ignored_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        for garbage in [&b""[..], b"{", b"\x00\xff", br#"{"key": 1, "facts": []}"#] {
            fs::write(&file, garbage).unwrap();
            assert_eq!(load(&file, &key("boot-a", 0)), None);
        }
        store(&file, &key("boot-a", 0), &facts()).unwrap();
        assert_eq!(load(&file, &key("boot-a", 0)), Some(facts()));
    }

    #[test]
    fn boot_id_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot_id");
        fs::write(&path, "a7a333f1-25e8-4ab1-98fe-e69f4210e944\n").unwrap();
        assert_eq!(
            boot_id(&path).as_deref(),
            Some("a7a333f1-25e8-4ab1-98fe-e69f4210e944")
        );
        fs::write(&path, "\n").unwrap();
        assert_eq!(boot_id(&path), None);
        assert_eq!(boot_id(&dir.path().join("absent")), None);
    }
}
