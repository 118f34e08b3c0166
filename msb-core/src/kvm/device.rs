//! `/dev/kvm` itself: open it, ask it a few questions, create and drop a VM.
//!
//! This is the probe's only `unsafe` code. Each ioctl here takes either no
//! argument or an integer by value, so the kernel never writes through a
//! pointer of ours; the safety argument is the same for all of them, and is
//! repeated where it applies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `KVMIO`, the ioctl type byte of every KVM request (`linux/kvm.h`).
const KVMIO: u8 = 0xAE;

/// `KVM_GET_API_VERSION`: `_IO(KVMIO, 0x00)`, returns the API version.
const KVM_GET_API_VERSION: libc::c_ulong = nix::request_code_none!(KVMIO, 0x00) as libc::c_ulong;
/// `KVM_CREATE_VM`: `_IO(KVMIO, 0x01)`, takes the machine type, returns a VM fd.
const KVM_CREATE_VM: libc::c_ulong = nix::request_code_none!(KVMIO, 0x01) as libc::c_ulong;
/// `KVM_CHECK_EXTENSION`: `_IO(KVMIO, 0x03)`, takes a `KVM_CAP_*`, returns
/// 0 when absent and a positive, capability-specific value when present.
const KVM_CHECK_EXTENSION: libc::c_ulong = nix::request_code_none!(KVMIO, 0x03) as libc::c_ulong;

/// The only KVM API version there has ever been (`KVM_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;

/// A capability that `KVM_CHECK_EXTENSION` can be asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The constant's name in `linux/kvm.h`.
    pub name: &'static str,
    /// Its value.
    pub number: u32,
}

/// Capabilities every libkrun guest needs: guest memory from our address
/// space, an in-kernel interrupt controller, and eventfd-driven virtio
/// notifications in both directions. Every kernel since 2.6.3x has them; a
/// KVM that lacks one is a restricted or emulated one.
pub const REQUIRED_CAPS: &[Cap] = &[
    Cap {
        name: "KVM_CAP_USER_MEMORY",
        number: 3,
    },
    Cap {
        name: "KVM_CAP_IRQCHIP",
        number: 0,
    },
    Cap {
        name: "KVM_CAP_IRQFD",
        number: 32,
    },
    Cap {
        name: "KVM_CAP_IOEVENTFD",
        number: 36,
    },
];

/// `KVM_CAP_NR_VCPUS`: the recommended maximum of vCPUs per VM.
const KVM_CAP_NR_VCPUS: u32 = 9;
/// `KVM_CAP_MAX_VCPUS`: the hard maximum of vCPUs per VM.
const KVM_CAP_MAX_VCPUS: u32 = 66;

/// An open `/dev/kvm` (the "system" fd, in KVM's terms).
#[derive(Debug)]
pub struct Kvm {
    file: File,
}

impl Kvm {
    /// Opens `path` read-write and close-on-exec, as every VMM does.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { file })
    }

    /// `KVM_GET_API_VERSION`.
    pub fn api_version(&self) -> io::Result<i32> {
        // SAFETY: `self.file` is an open fd for the lifetime of this call;
        // KVM_GET_API_VERSION takes no argument and touches no memory of ours.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// `KVM_CHECK_EXTENSION`: 0 when `cap` is absent, else a positive value
    /// whose meaning depends on the capability.
    pub fn check_extension(&self, cap: u32) -> io::Result<i32> {
        // SAFETY: `self.file` is an open fd for the lifetime of this call;
        // KVM_CHECK_EXTENSION takes the capability number by value and
        // touches no memory of ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                KVM_CHECK_EXTENSION as _,
                libc::c_ulong::from(cap),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// The most vCPUs a VM may have: `KVM_CAP_MAX_VCPUS`, falling back to
    /// `KVM_CAP_NR_VCPUS` and then to 4, as the KVM API documentation says.
    pub fn max_vcpus(&self) -> u32 {
        [KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS]
            .into_iter()
            .find_map(|cap| self.check_extension(cap).ok().filter(|&n| n > 0))
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(4)
    }

    /// `KVM_CREATE_VM` with the default machine type, then closes the VM at
    /// once. Success means the kernel will hand this process a VM; it says
    /// nothing yet about whether a guest can run in it (see the module docs
    /// on pagetable-based KVM).
    pub fn create_and_drop_vm(&self) -> io::Result<()> {
        loop {
            // SAFETY: `self.file` is an open fd for the lifetime of this call;
            // KVM_CREATE_VM takes the machine type (0, the default) by value
            // and touches no memory of ours.
            let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), KVM_CREATE_VM as _, 0) };
            if ret >= 0 {
                // SAFETY: a non-negative return is a fresh VM fd that nothing
                // else in this process knows about; `OwnedFd` becomes its only
                // owner and closes it on drop, which destroys the VM.
                drop(unsafe { OwnedFd::from_raw_fd(ret) });
                return Ok(());
            }
            let err = io::Error::last_os_error();
            // The kernel may be interrupted while it sets the VM up (Firecracker
            // retries the same way); anything else is the answer.
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
