//! Why microVMs cannot run here, in terms a person can act on.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// microVM guests can run on this host.
    Ready,
    /// They cannot, for this reason. Only the first blocking reason is
    /// reported: the one to fix first.
    Unavailable(Reason),
}

impl Verdict {
    /// Whether microVM guests can run here.
    pub fn can_run_microvm(&self) -> bool {
        matches!(self, Self::Ready)
    }

    /// The reason they cannot, if any.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Self::Ready => None,
            Self::Unavailable(reason) => Some(reason),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => f.write_str("microVM guests can run on this host"),
            Self::Unavailable(reason) => reason.fmt(f),
        }
    }
}

/// Why microVM guests cannot run on this host.
///
/// Variants are listed in the order the probe checks them. `Display` says in
/// a sentence or two what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// There is no KVM device node.
    NoDevice {
        /// Where it was looked for (`/dev/kvm`).
        path: PathBuf,
    },
    /// Something exists at the device path, but it is not a character device.
    NotACharDevice {
        /// The device path.
        path: PathBuf,
    },
    /// KVM here is pagetable-based: it emulates guest page tables in software
    /// for hosts without hardware virtualization and only runs guest kernels
    /// modified for it, so an unmodified guest kernel dies under instruction
    /// emulation. It still creates VMs, which is why it needs its own check.
    PagetableBasedKvm {
        /// The kernel module that provides it (`kvm_pvm`).
        module: String,
    },
    /// The CPU offers neither Intel VT-x (`vmx`) nor AMD-V (`svm`), and no
    /// vendor KVM module is loaded.
    NoHardwareVirtualization {
        /// Whether this machine is itself a virtual machine (the CPU reports
        /// the `hypervisor` flag), in which case nested virtualization is
        /// what is missing.
        in_vm: bool,
    },
    /// This process may not open the device.
    NoPermission {
        /// The device path.
        path: PathBuf,
        /// The process's effective user id.
        uid: u32,
        /// The device's permission bits, e.g. `0o660`.
        mode: u32,
        /// The device's group id.
        gid: u32,
        /// The device's group name, when it resolves, e.g. `kvm`.
        group: Option<String>,
        /// The user is listed in that group, but this login session started
        /// before they joined it, so the process does not carry it yet.
        needs_relogin: bool,
    },
    /// Opening the device failed for another reason.
    OpenFailed {
        /// The device path.
        path: PathBuf,
        /// The `errno` of `open(2)`.
        errno: i32,
    },
    /// `KVM_GET_API_VERSION` did not return 12.
    ApiVersionMismatch {
        /// The version the kernel reported; `None` when the device did not
        /// answer the ioctl at all, i.e. it is not KVM.
        found: Option<i32>,
    },
    /// A capability libkrun needs is missing.
    MissingCapability {
        /// Its name in `linux/kvm.h`, e.g. `KVM_CAP_IRQFD`.
        name: String,
    },
    /// `KVM_CREATE_VM` failed.
    CreateVmFailed {
        /// Its `errno`.
        errno: i32,
    },
    /// `libkrun.so.1`, the virtual machine monitor, was not found.
    LibkrunMissing {
        /// The directories searched, in order.
        searched: Vec<PathBuf>,
    },
    /// `libkrunfw.so.5`, the guest kernel libkrun loads, was not found.
    LibkrunfwMissing {
        /// The directories searched, in order.
        searched: Vec<PathBuf>,
    },
}

/// What to say about a host whose KVM cannot run guests: the fix common to
/// several reasons.
const MOVE_HOST: &str = "Run on bare metal or in a VM with nested virtualization enabled, \
     or choose namespace isolation explicitly (MSB_ISOLATION=namespace).";

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice { path } => write!(
                f,
                "{} does not exist, so this host offers no KVM. Load the module for \
                 your CPU (`sudo modprobe kvm_intel` or `sudo modprobe kvm_amd`); \
                 inside a VM, enable nested virtualization first.",
                path.display()
            ),
            Self::NotACharDevice { path } => write!(
                f,
                "{} exists but is not a character device, so it is not KVM. Remove it \
                 and load the KVM module for your CPU (`kvm_intel` or `kvm_amd`).",
                path.display()
            ),
            Self::PagetableBasedKvm { module } => write!(
                f,
                "KVM on this host is pagetable-based (module `{module}`): it creates VMs \
                 but cannot run an unmodified guest kernel, which dies under instruction \
                 emulation. {MOVE_HOST}"
            ),
            Self::NoHardwareVirtualization { in_vm: true } => write!(
                f,
                "This machine is a VM whose CPU offers neither VT-x (vmx) nor AMD-V (svm), \
                 so KVM cannot run guests here. {MOVE_HOST}"
            ),
            Self::NoHardwareVirtualization { in_vm: false } => f.write_str(
                "The CPU offers neither VT-x (vmx) nor AMD-V (svm), so KVM cannot run \
                 guests. Enable virtualization in the firmware (BIOS/UEFI) settings and \
                 reboot.",
            ),
            Self::NoPermission {
                path,
                uid,
                mode,
                gid,
                group,
                needs_relogin,
            } => {
                let path = path.display();
                match group {
                    Some(group) if *needs_relogin => write!(
                        f,
                        "You are in group `{group}`, which may use {path}, but this session \
                         started before you joined it. Log out and back in (or run \
                         `newgrp {group}`)."
                    ),
                    Some(group) if *gid != 0 && mode & 0o060 == 0o060 => write!(
                        f,
                        "User {uid} may not open {path} (mode {mode:04o}, group `{group}`). \
                         Add yourself to the group: `sudo usermod -aG {group} $USER`, then \
                         log in again."
                    ),
                    _ => write!(
                        f,
                        "User {uid} may not open {path} (mode {mode:04o}, group {}), and no \
                         unprivileged group may either. Give it a group, e.g. with the udev \
                         rule `KERNEL==\"kvm\", GROUP=\"kvm\", MODE=\"0660\"`, then join \
                         that group.",
                        group
                            .as_deref()
                            .map_or_else(|| gid.to_string(), |g| format!("`{g}`"))
                    ),
                }
            }
            Self::OpenFailed { path, errno } => write!(
                f,
                "Opening {} failed: {}. Check the kernel log (`dmesg`) for KVM errors.",
                path.display(),
                io::Error::from_raw_os_error(*errno)
            ),
            Self::ApiVersionMismatch { found: Some(found) } => write!(
                f,
                "KVM reports API version {found}, not 12; this is not a KVM that libkrun \
                 can drive. {MOVE_HOST}"
            ),
            Self::ApiVersionMismatch { found: None } => write!(
                f,
                "The KVM device does not answer KVM_GET_API_VERSION, so it is not KVM. \
                 {MOVE_HOST}"
            ),
            Self::MissingCapability { name } => write!(
                f,
                "KVM lacks {name}, which every microVM needs; the host kernel is too old \
                 or restricts KVM. Use a current kernel with full KVM support."
            ),
            Self::CreateVmFailed { errno } => write!(
                f,
                "KVM refused to create a VM: {}. Another hypervisor (VirtualBox, VMware) \
                 may be holding the CPU's virtualization extensions, or the host is out of \
                 memory.",
                io::Error::from_raw_os_error(*errno)
            ),
            Self::LibkrunMissing { searched } => write!(
                f,
                "libkrun.so.1, the microVM monitor, was not found (searched {}). Run \
                 `cargo xtask setup`, install libkrun, or point MSB_LIB_DIR at the \
                 directory holding it.",
                Dirs(searched)
            ),
            Self::LibkrunfwMissing { searched } => write!(
                f,
                "libkrunfw.so.5, the guest kernel libkrun loads, was not found (searched \
                 {}). Run `cargo xtask setup`, install Debian's `libkrunfw5`, or put it \
                 next to libkrun.so.1.",
                Dirs(searched)
            ),
        }
    }
}

/// A list of directories, comma-separated.
struct Dirs<'a>(&'a [PathBuf]);

impl fmt::Display for Dirs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nowhere");
        }
        for (i, dir) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", dir.display())?;
        }
        Ok(())
    }
}
