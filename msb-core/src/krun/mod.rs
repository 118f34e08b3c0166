//! A thin safe layer over libkrun's C API ([`krun_sys`]).
//!
//! libkrun runs a microVM inside the calling process. A VM is described by a
//! *context*: create one with [`KrunContext::new`], configure it with one
//! method per libkrun call, then boot it with [`KrunContext::start_enter`],
//! which on success never returns: the VM owns the process from then on, so
//! it must run in a dedicated child process (each sandbox is its own process).
//!
//! Every failure is an [`io::Error`] whose kind follows the errno libkrun
//! returned and whose inner error is a [`KrunError`] naming the C function;
//! [`KrunError::from_io`] gives the call and errno back. Where libkrun accepts
//! input it would only trip over later, inside the VM (a root directory that
//! does not exist, a string with a NUL byte or a `"` that would break the
//! guest kernel command line), this layer rejects it up front with the same
//! kind of error.
//!
//! ```no_run
//! use std::path::Path;
//! use msb_core::krun::{KrunContext, Rlimit};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut ctx = KrunContext::new()?;
//! ctx.set_vm_config(1, 256)?;
//! ctx.set_root(Path::new("/var/lib/sandbox/rootfs"))?;
//! ctx.set_exec("/bin/sh", &["-c", "echo hi"], &[("PATH", "/bin:/usr/bin")])?;
//! ctx.set_rlimits(&[Rlimit::new(libc::RLIMIT_NOFILE, 1024, 4096)])?;
//! ctx.set_port_map(&[(8080, 80)])?;
//! // Only in the sandbox's own child process: on success this never returns.
//! let err = ctx.start_enter();
//! eprintln!("VM did not start: {err}");
//! # Ok(())
//! # }
//! ```
//!
//! Configuration errors come back before anything starts:
//!
//! ```
//! use msb_core::krun::{KrunContext, KrunError};
//!
//! let mut ctx = KrunContext::new().unwrap();
//! let err = ctx.set_vm_config(0, 256).unwrap_err();
//! let krun = KrunError::from_io(&err).unwrap();
//! assert_eq!((krun.call, krun.errno), ("krun_set_vm_config", libc::EINVAL));
//! ```

mod context;
mod error;
mod ffi;

use std::io;
use std::sync::Mutex;

pub use context::{
    KernelFormat, KrunContext, ROOT_FS_TAG, Rlimit, VIRTIOFS_TAG_MAX, VirtiofsOptions,
};
pub use error::KrunError;

use ffi::{check, check_value};

/// libkrun's log levels for [`set_log_level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    /// No logging.
    Off = krun_sys::KRUN_LOG_LEVEL_OFF,
    /// Errors only.
    Error = krun_sys::KRUN_LOG_LEVEL_ERROR,
    /// Warnings and errors.
    Warn = krun_sys::KRUN_LOG_LEVEL_WARN,
    /// Informational messages and above.
    Info = krun_sys::KRUN_LOG_LEVEL_INFO,
    /// Debug messages and above.
    Debug = krun_sys::KRUN_LOG_LEVEL_DEBUG,
    /// Everything.
    Trace = krun_sys::KRUN_LOG_LEVEL_TRACE,
}

/// Feature numbers for [`has_feature`] (libkrun's `KRUN_FEATURE_*`).
pub mod feature {
    /// virtio-net.
    pub const NET: u64 = krun_sys::KRUN_FEATURE_NET;
    /// virtio-blk.
    pub const BLK: u64 = krun_sys::KRUN_FEATURE_BLK;
    /// virtio-gpu.
    pub const GPU: u64 = krun_sys::KRUN_FEATURE_GPU;
    /// virtio-snd.
    pub const SND: u64 = krun_sys::KRUN_FEATURE_SND;
    /// virtio-input.
    pub const INPUT: u64 = krun_sys::KRUN_FEATURE_INPUT;
    /// EFI boot.
    pub const EFI: u64 = krun_sys::KRUN_FEATURE_EFI;
    /// Confidential-computing (TEE) build.
    pub const TEE: u64 = krun_sys::KRUN_FEATURE_TEE;
    /// AMD SEV.
    pub const AMD_SEV: u64 = krun_sys::KRUN_FEATURE_AMD_SEV;
    /// Intel TDX.
    pub const INTEL_TDX: u64 = krun_sys::KRUN_FEATURE_INTEL_TDX;
    /// AWS Nitro enclaves.
    pub const AWS_NITRO: u64 = krun_sys::KRUN_FEATURE_AWS_NITRO;
    /// virgl resource map v2.
    pub const VIRGL_RESOURCE_MAP2: u64 = krun_sys::KRUN_FEATURE_VIRGL_RESOURCE_MAP2;
    /// The built-in init injected into the root filesystem.
    pub const INIT_BLOB: u64 = krun_sys::KRUN_FEATURE_INIT_BLOB;
}

/// Sets libkrun's log level (`krun_set_log_level`); its logger writes to
/// stderr and also honours `RUST_LOG`.
///
/// libkrun installs its logger once per process and aborts the process if
/// asked twice, so only the first call reaches libkrun; later calls fail with
/// `AlreadyExists` (`EEXIST`).
pub fn set_log_level(level: LogLevel) -> io::Result<()> {
    const CALL: &str = "krun_set_log_level";
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Err(error::error(
            CALL,
            libc::EEXIST,
            "libkrun's logger is already initialised in this process",
        ));
    }
    // SAFETY: plain integer argument; the DONE guard makes this the only call
    // in the process, so libkrun's logger initialisation cannot panic.
    let ret = unsafe { krun_sys::krun_set_log_level(level as u32) };
    *done = true;
    check(CALL, ret)
}

/// The most vCPUs the hypervisor allows in one VM (`krun_get_max_vcpus`);
/// `EINVAL` when `/dev/kvm` cannot be opened.
pub fn max_vcpus() -> io::Result<u32> {
    // SAFETY: no arguments.
    let ret = unsafe { krun_sys::krun_get_max_vcpus() };
    check_value("krun_get_max_vcpus", ret)
}

/// Whether this libkrun build has a feature, one of the [`feature`] numbers
/// (`krun_has_feature`); `EINVAL` for an unknown number.
pub fn has_feature(feature: u64) -> io::Result<bool> {
    // SAFETY: plain integer argument.
    let ret = unsafe { krun_sys::krun_has_feature(feature) };
    check_value("krun_has_feature", ret).map(|v| v != 0)
}

/// Whether the host's KVM allows nested virtualization
/// (`krun_check_nested_virt`).
pub fn check_nested_virt() -> io::Result<bool> {
    // SAFETY: no arguments; it reads the KVM module parameters in /sys.
    let ret = unsafe { krun_sys::krun_check_nested_virt() };
    check_value("krun_check_nested_virt", ret).map(|v| v != 0)
}
