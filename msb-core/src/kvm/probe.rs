//! The checks: what the kernel and CPU say, and what that means.
//!
//! Gathering ([`gather`]) and judging ([`classify`]) are separate so that the
//! judgement, a pure function of [`HostFacts`], can be tested for every
//! [`Reason`] on any machine.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::ProbeOptions;
use super::device::{KVM_API_VERSION, Kvm, REQUIRED_CAPS};
use super::libraries::Libraries;
use super::reason::{Reason, Verdict};

/// Kernel modules that provide a KVM which cannot run unmodified guests.
pub const PAGETABLE_MODULES: &[&str] = &["kvm_pvm"];

/// Kernel modules that provide KVM on top of hardware virtualization.
pub const HARDWARE_MODULES: &[&str] = &["kvm_intel", "kvm_amd"];

/// Everything the probe learned from the kernel and the CPU.
///
/// These facts change only across boots, module loads, permission changes or
/// group membership, which is why they are cached per boot and per identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// The device path examined (`/dev/kvm`).
    pub path: PathBuf,
    /// What is at that path.
    pub node: Node,
    /// Loaded kernel modules whose name starts with `kvm`, sorted.
    pub kvm_modules: Vec<String>,
    /// The CPU's virtualization flags; `None` where they are not known
    /// (not x86, or `/proc/cpuinfo` unreadable), which no check holds against
    /// the host.
    pub cpu: Option<CpuVirt>,
    /// What opening the device and asking it questions gave.
    pub access: Access,
}

/// What is at the device path, per `stat(2)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Node {
    /// Nothing.
    Missing,
    /// Something that is not a character device.
    NotACharDevice,
    /// A character device.
    CharDevice {
        /// Permission bits, e.g. `0o660`.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Device number (`st_rdev`); KVM is 10:232.
        rdev: u64,
    },
}

/// The x86 CPU flags that matter for KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuVirt {
    /// Intel VT-x.
    pub vmx: bool,
    /// AMD-V.
    pub svm: bool,
    /// The CPU reports running under a hypervisor: this host is itself a VM.
    pub hypervisor: bool,
}

/// Opening the device and the ioctls on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Access {
    /// Not attempted: an earlier check already decided the verdict.
    NotTried,
    /// `open(2)` failed with `EACCES` or `EPERM`.
    Denied {
        /// The effective user id that was refused.
        uid: u32,
        /// The device group's name, when it resolves.
        group: Option<String>,
        /// The user is a listed member of the device's group, but this
        /// process does not carry that group (the login predates the change).
        needs_relogin: bool,
    },
    /// `open(2)` failed otherwise.
    OpenFailed {
        /// Its `errno`.
        errno: i32,
    },
    /// The device opened; what it answered.
    Opened(KvmFacts),
}

/// What an open `/dev/kvm` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmFacts {
    /// `KVM_GET_API_VERSION`; `None` if the ioctl failed (not KVM).
    pub api_version: Option<i32>,
    /// Required capabilities `KVM_CHECK_EXTENSION` reports absent, by name.
    pub missing_caps: Vec<String>,
    /// The most vCPUs one VM may have.
    pub max_vcpus: u32,
    /// `KVM_CREATE_VM`.
    pub create_vm: VmCheck,
}

/// The outcome of `KVM_CREATE_VM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VmCheck {
    /// Not attempted: an earlier check already decided the verdict.
    NotTried,
    /// A VM was created (and destroyed at once).
    Created,
    /// It failed with this `errno`.
    Failed {
        /// The `errno`.
        errno: i32,
    },
}

/// Judges the facts: the first reason microVM guests cannot run, in the order
/// a person should fix them, or [`Verdict::Ready`].
///
/// The order is: the device node, a pagetable-based KVM, the CPU, permission,
/// what the device answers, and last the libraries.
///
/// A check recorded as not tried is never held against the host: the probe
/// skips a check only when an earlier one has already decided.
pub fn classify(host: &HostFacts, libraries: &Libraries) -> Verdict {
    match host_reason(host).or_else(|| libraries.reason()) {
        Some(reason) => Verdict::Unavailable(reason),
        None => Verdict::Ready,
    }
}

/// The first kernel-side reason, if any.
fn host_reason(host: &HostFacts) -> Option<Reason> {
    let path = host.path.clone();
    let (mode, gid) = match host.node {
        Node::Missing => return Some(Reason::NoDevice { path }),
        Node::NotACharDevice => return Some(Reason::NotACharDevice { path }),
        Node::CharDevice { mode, gid, .. } => (mode, gid),
    };
    if let Some(module) = host
        .kvm_modules
        .iter()
        .find(|m| PAGETABLE_MODULES.contains(&m.as_str()))
    {
        return Some(Reason::PagetableBasedKvm {
            module: module.clone(),
        });
    }
    if let Some(cpu) = host.cpu {
        let vendor_module = host
            .kvm_modules
            .iter()
            .any(|m| HARDWARE_MODULES.contains(&m.as_str()));
        if !cpu.vmx && !cpu.svm && !vendor_module {
            return Some(Reason::NoHardwareVirtualization {
                in_vm: cpu.hypervisor,
            });
        }
    }
    let kvm = match &host.access {
        Access::NotTried => return None,
        Access::Denied {
            uid,
            group,
            needs_relogin,
        } => {
            return Some(Reason::NoPermission {
                path,
                uid: *uid,
                mode,
                gid,
                group: group.clone(),
                needs_relogin: *needs_relogin,
            });
        }
        Access::OpenFailed { errno } => {
            return Some(Reason::OpenFailed {
                path,
                errno: *errno,
            });
        }
        Access::Opened(kvm) => kvm,
    };
    if kvm.api_version != Some(KVM_API_VERSION) {
        return Some(Reason::ApiVersionMismatch {
            found: kvm.api_version,
        });
    }
    if let Some(name) = kvm.missing_caps.first() {
        return Some(Reason::MissingCapability { name: name.clone() });
    }
    match kvm.create_vm {
        VmCheck::Failed { errno } => Some(Reason::CreateVmFailed { errno }),
        VmCheck::NotTried | VmCheck::Created => None,
    }
}

/// The identity a permission check depends on: part of the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// Supplementary groups, sorted.
    pub groups: Vec<u32>,
}

impl Identity {
    /// This process's identity.
    pub fn current() -> Self {
        let mut groups: Vec<u32> = nix::unistd::getgroups()
            .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_default();
        groups.sort_unstable();
        groups.dedup();
        Self {
            euid: Uid::effective().as_raw(),
            egid: Gid::effective().as_raw(),
            groups,
        }
    }

    fn has_group(&self, gid: u32) -> bool {
        self.egid == gid || self.groups.binary_search(&gid).is_ok()
    }
}

/// `stat(2)` of the device path.
pub fn stat_node(path: &Path) -> Node {
    match fs::metadata(path) {
        Ok(meta) if meta.file_type().is_char_device() => Node::CharDevice {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev(),
        },
        Ok(_) => Node::NotACharDevice,
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                debug!(path = %path.display(), %err, "kvm probe: cannot stat the device");
            }
            Node::Missing
        }
    }
}

/// Gathers the facts, cheapest first, and stops before the ioctls when the
/// cheap facts already decide.
pub fn gather(opts: &ProbeOptions, identity: &Identity, node: Node) -> HostFacts {
    debug!(path = %opts.device.display(), ?node, "kvm probe: device node");
    let kvm_modules = kvm_modules(&opts.sysfs_modules);
    debug!(?kvm_modules, "kvm probe: loaded kvm modules");
    let cpu = cpu_virt(&opts.cpuinfo);
    debug!(?cpu, "kvm probe: cpu virtualization flags");

    let mut facts = HostFacts {
        path: opts.device.clone(),
        node,
        kvm_modules,
        cpu,
        access: Access::NotTried,
    };
    if let Some(reason) = host_reason(&facts) {
        debug!(?reason, "kvm probe: decided without opening the device");
        return facts;
    }
    let gid = match facts.node {
        Node::CharDevice { gid, .. } => gid,
        Node::Missing | Node::NotACharDevice => return facts,
    };
    facts.access = access(&opts.device, identity, gid);
    facts
}

/// Loaded modules named `kvm*`, from `/sys/module` (which, unlike
/// `/proc/modules`, also lists built-in modules that have parameters).
fn kvm_modules(dir: &Path) -> Vec<String> {
    let mut modules: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("kvm"))
            .collect(),
        Err(err) => {
            debug!(dir = %dir.display(), %err, "kvm probe: cannot list kernel modules");
            Vec::new()
        }
    };
    modules.sort();
    modules
}

/// The first `flags` line of `/proc/cpuinfo`. Only meaningful on x86.
fn cpu_virt(cpuinfo: &Path) -> Option<CpuVirt> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
        return None;
    }
    let file = fs::File::open(cpuinfo)
        .inspect_err(|err| debug!(path = %cpuinfo.display(), %err, "kvm probe: no cpuinfo"))
        .ok()?;
    let line = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("flags"))?;
    let flags = line.split_once(':')?.1;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    Some(CpuVirt {
        vmx: has("vmx"),
        svm: has("svm"),
        hypervisor: has("hypervisor"),
    })
}

/// Opens the device and asks it the questions a VMM would.
fn access(path: &Path, identity: &Identity, gid: u32) -> Access {
    let kvm = match Kvm::open(path) {
        Ok(kvm) => kvm,
        Err(err) => {
            debug!(path = %path.display(), %err, "kvm probe: open failed");
            return match err.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => denied(identity, gid),
                errno => Access::OpenFailed {
                    errno: errno.unwrap_or(libc::EIO),
                },
            };
        }
    };
    let api_version = kvm.api_version().ok();
    debug!(?api_version, "kvm probe: KVM_GET_API_VERSION");
    if api_version != Some(KVM_API_VERSION) {
        return Access::Opened(KvmFacts {
            api_version,
            missing_caps: Vec::new(),
            max_vcpus: 0,
            create_vm: VmCheck::NotTried,
        });
    }
    let missing_caps: Vec<String> = REQUIRED_CAPS
        .iter()
        .filter(|cap| kvm.check_extension(cap.number).map_or(true, |n| n <= 0))
        .map(|cap| cap.name.to_owned())
        .collect();
    let max_vcpus = kvm.max_vcpus();
    debug!(?missing_caps, max_vcpus, "kvm probe: KVM_CHECK_EXTENSION");
    let create_vm = if missing_caps.is_empty() {
        match kvm.create_and_drop_vm() {
            Ok(()) => VmCheck::Created,
            Err(err) => VmCheck::Failed {
                errno: err.raw_os_error().unwrap_or(libc::EIO),
            },
        }
    } else {
        VmCheck::NotTried
    };
    debug!(?create_vm, "kvm probe: KVM_CREATE_VM");
    Access::Opened(KvmFacts {
        api_version,
        missing_caps,
        max_vcpus,
        create_vm,
    })
}

/// Permission denied: find the group to join, and whether the user already
/// has, in a login that predates it.
fn denied(identity: &Identity, gid: u32) -> Access {
    let group = Group::from_gid(Gid::from_raw(gid)).ok().flatten();
    let user = User::from_uid(Uid::from_raw(identity.euid)).ok().flatten();
    let needs_relogin = match (&group, &user) {
        (Some(group), Some(user)) => group.mem.contains(&user.name) && !identity.has_group(gid),
        _ => false,
    };
    Access::Denied {
        uid: identity.euid,
        group: group.map(|g| g.name),
        needs_relogin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libs_ok() -> Libraries {
        Libraries {
            libkrun: Some("/opt/lib/libkrun.so.1".into()),
            libkrunfw: Some("/opt/lib/libkrunfw.so.5".into()),
            libkrun_searched: vec!["/opt/lib".into()],
            libkrunfw_searched: vec!["/opt/lib".into()],
        }
    }

    /// A bare-metal Intel host where everything works.
    fn healthy() -> HostFacts {
        HostFacts {
            path: "/dev/kvm".into(),
            node: Node::CharDevice {
                mode: 0o660,
                uid: 0,
                gid: 108,
                rdev: 0xae8,
            },
            kvm_modules: vec!["kvm".into(), "kvm_intel".into()],
            cpu: Some(CpuVirt {
                vmx: true,
                svm: false,
                hypervisor: false,
            }),
            access: Access::Opened(KvmFacts {
                api_version: Some(12),
                missing_caps: Vec::new(),
                max_vcpus: 1024,
                create_vm: VmCheck::Created,
            }),
        }
    }

    fn opened(f: impl FnOnce(&mut KvmFacts)) -> HostFacts {
        let mut host = healthy();
        if let Access::Opened(kvm) = &mut host.access {
            f(kvm);
        }
        host
    }

    fn reason(host: &HostFacts) -> Reason {
        match classify(host, &libs_ok()) {
            Verdict::Unavailable(reason) => reason,
            Verdict::Ready => panic!("expected a reason for {host:?}"),
        }
    }

    #[test]
    fn healthy_host_is_ready() {
        assert_eq!(classify(&healthy(), &libs_ok()), Verdict::Ready);
        let amd = HostFacts {
            kvm_modules: vec!["kvm".into(), "kvm_amd".into()],
            cpu: Some(CpuVirt {
                vmx: false,
                svm: true,
                hypervisor: true,
            }),
            ..healthy()
        };
        assert_eq!(classify(&amd, &libs_ok()), Verdict::Ready);
        // Not x86: no CPU flags to go by, the device's answers decide.
        let arm = HostFacts {
            cpu: None,
            kvm_modules: Vec::new(),
            ..healthy()
        };
        assert_eq!(classify(&arm, &libs_ok()), Verdict::Ready);
    }

    #[test]
    fn missing_device() {
        let host = HostFacts {
            node: Node::Missing,
            access: Access::NotTried,
            ..healthy()
        };
        assert_eq!(
            reason(&host),
            Reason::NoDevice {
                path: "/dev/kvm".into()
            }
        );
    }

    #[test]
    fn device_that_is_not_a_char_device() {
        let host = HostFacts {
            node: Node::NotACharDevice,
            access: Access::NotTried,
            ..healthy()
        };
        assert_eq!(
            reason(&host),
            Reason::NotACharDevice {
                path: "/dev/kvm".into()
            }
        );
    }

    #[test]
    fn pagetable_based_kvm_wins_over_everything_but_the_node() {
        // This host: kvm + kvm_pvm, no vmx/svm, under a hypervisor.
        let host = HostFacts {
            kvm_modules: vec!["kvm".into(), "kvm_pvm".into()],
            cpu: Some(CpuVirt {
                vmx: false,
                svm: false,
                hypervisor: true,
            }),
            access: Access::NotTried,
            ..healthy()
        };
        let want = Reason::PagetableBasedKvm {
            module: "kvm_pvm".into(),
        };
        assert_eq!(reason(&host), want);
        // Even with permission denied and no libraries, it is the reason to report.
        let denied = HostFacts {
            access: Access::Denied {
                uid: 1000,
                group: None,
                needs_relogin: false,
            },
            ..host
        };
        let no_libs = Libraries {
            libkrun: None,
            libkrunfw: None,
            ..libs_ok()
        };
        assert_eq!(classify(&denied, &no_libs), Verdict::Unavailable(want));
    }

    #[test]
    fn no_hardware_virtualization() {
        let host = HostFacts {
            kvm_modules: vec!["kvm".into()],
            cpu: Some(CpuVirt {
                vmx: false,
                svm: false,
                hypervisor: true,
            }),
            access: Access::NotTried,
            ..healthy()
        };
        assert_eq!(
            reason(&host),
            Reason::NoHardwareVirtualization { in_vm: true }
        );
        let bare = HostFacts {
            cpu: Some(CpuVirt {
                hypervisor: false,
                ..host.cpu.unwrap()
            }),
            ..host
        };
        assert_eq!(
            reason(&bare),
            Reason::NoHardwareVirtualization { in_vm: false }
        );
        // A vendor module loaded (flags masked from cpuinfo) is taken at its word.
        let masked = HostFacts {
            kvm_modules: vec!["kvm".into(), "kvm_intel".into()],
            ..bare
        };
        assert_eq!(classify(&masked, &libs_ok()), Verdict::Ready);
    }

    #[test]
    fn no_permission_carries_the_group_to_join() {
        let host = HostFacts {
            access: Access::Denied {
                uid: 1000,
                group: Some("kvm".into()),
                needs_relogin: false,
            },
            ..healthy()
        };
        let got = reason(&host);
        assert_eq!(
            got,
            Reason::NoPermission {
                path: "/dev/kvm".into(),
                uid: 1000,
                mode: 0o660,
                gid: 108,
                group: Some("kvm".into()),
                needs_relogin: false,
            }
        );
        assert!(
            got.to_string().contains("sudo usermod -aG kvm $USER"),
            "{got}"
        );

        let relogin = HostFacts {
            access: Access::Denied {
                uid: 1000,
                group: Some("kvm".into()),
                needs_relogin: true,
            },
            ..healthy()
        };
        assert!(reason(&relogin).to_string().contains("Log out and back in"));

        // root:root 0600, as on many cloud images: no group would help.
        let root_only = HostFacts {
            node: Node::CharDevice {
                mode: 0o600,
                uid: 0,
                gid: 0,
                rdev: 0xae8,
            },
            access: Access::Denied {
                uid: 1000,
                group: Some("root".into()),
                needs_relogin: false,
            },
            ..healthy()
        };
        let msg = reason(&root_only).to_string();
        assert!(msg.contains("udev") && !msg.contains("usermod"), "{msg}");
    }

    #[test]
    fn open_failure() {
        let host = HostFacts {
            access: Access::OpenFailed { errno: libc::ENXIO },
            ..healthy()
        };
        assert_eq!(
            reason(&host),
            Reason::OpenFailed {
                path: "/dev/kvm".into(),
                errno: libc::ENXIO
            }
        );
    }

    #[test]
    fn api_version_mismatch() {
        let host = opened(|kvm| kvm.api_version = Some(11));
        assert_eq!(
            reason(&host),
            Reason::ApiVersionMismatch { found: Some(11) }
        );
        let not_kvm = opened(|kvm| kvm.api_version = None);
        assert_eq!(reason(&not_kvm), Reason::ApiVersionMismatch { found: None });
    }

    #[test]
    fn missing_capability() {
        let host = opened(|kvm| kvm.missing_caps = vec!["KVM_CAP_IRQFD".into()]);
        assert_eq!(
            reason(&host),
            Reason::MissingCapability {
                name: "KVM_CAP_IRQFD".into()
            }
        );
    }

    #[test]
    fn create_vm_failure() {
        let host = opened(|kvm| kvm.create_vm = VmCheck::Failed { errno: libc::EBUSY });
        assert_eq!(reason(&host), Reason::CreateVmFailed { errno: libc::EBUSY });
    }

    #[test]
    fn libraries_are_judged_after_the_kernel() {
        let no_fw = Libraries {
            libkrunfw: None,
            ..libs_ok()
        };
        assert_eq!(
            classify(&healthy(), &no_fw),
            Verdict::Unavailable(Reason::LibkrunfwMissing {
                searched: vec!["/opt/lib".into()]
            })
        );
        let none = Libraries {
            libkrun: None,
            libkrunfw: None,
            ..libs_ok()
        };
        assert_eq!(
            classify(&healthy(), &none),
            Verdict::Unavailable(Reason::LibkrunMissing {
                searched: vec!["/opt/lib".into()]
            })
        );
    }

    #[test]
    fn cpu_flags_are_read_from_the_first_flags_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpuinfo");
        fs::write(
            &path,
            "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n\nprocessor\t: 1\nflags\t\t: vmx\n",
        )
        .unwrap();
        let got = cpu_virt(&path);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                got,
                Some(CpuVirt {
                    vmx: false,
                    svm: false,
                    hypervisor: true
                })
            );
        }
        assert_eq!(cpu_virt(&dir.path().join("absent")), None);
    }

    #[test]
    fn modules_are_listed_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        for m in ["kvm_pvm", "kvm", "virtio_net", "kvmgt_not_really"] {
            fs::create_dir(dir.path().join(m)).unwrap();
        }
        assert_eq!(
            kvm_modules(dir.path()),
            ["kvm", "kvm_pvm", "kvmgt_not_really"]
        );
        assert!(kvm_modules(&dir.path().join("absent")).is_empty());
    }

    #[test]
    fn stat_tells_device_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kvm");
        fs::write(&file, b"").unwrap();
        assert_eq!(stat_node(&file), Node::NotACharDevice);
        assert_eq!(stat_node(&dir.path().join("absent")), Node::Missing);
        assert!(matches!(
            stat_node(Path::new("/dev/null")),
            Node::CharDevice { .. }
        ));
    }

    /// The real ioctl path against a character device that is not KVM:
    /// it opens, and does not answer `KVM_GET_API_VERSION`.
    #[test]
    fn a_char_device_that_is_not_kvm_is_caught_by_the_api_version() {
        let dir = tempfile::tempdir().unwrap();
        let cpuinfo = dir.path().join("cpuinfo");
        fs::write(&cpuinfo, "flags\t: vmx\n").unwrap();
        let opts = ProbeOptions {
            device: "/dev/null".into(),
            sysfs_modules: dir.path().to_path_buf(),
            cpuinfo,
            ..ProbeOptions::default()
        };
        let facts = gather(&opts, &Identity::current(), stat_node(&opts.device));
        assert_eq!(reason(&facts), Reason::ApiVersionMismatch { found: None });
    }
}
