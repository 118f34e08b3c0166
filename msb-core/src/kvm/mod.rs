//! The KVM probe: can microVM guests run on this host, and if not, why not.
//!
//! `/dev/kvm` being present is not the answer. A cloud VM without nested
//! virtualization may carry a *pagetable-based* KVM (module `kvm_pvm`) that
//! opens, reports API version 12 and creates VMs and vCPUs, yet runs an
//! unmodified guest kernel under instruction emulation until it dies with
//! `KVM_EXIT_INTERNAL_ERROR` some seconds into boot. A user there deserves a
//! sentence up front, not a guest that hangs and then fails. So the probe
//! looks at everything a VMM depends on, cheapest first, and names the first
//! thing that is wrong:
//!
//! 1. the device node: present, and a character device (`stat`);
//! 2. a pagetable-based KVM module (`/sys/module/kvm_pvm`);
//! 3. hardware virtualization: `vmx` or `svm` in the CPU flags, or a vendor
//!    module (`kvm_intel`, `kvm_amd`) loaded;
//! 4. permission to open the device, naming the group to join;
//! 5. what the device answers: `KVM_GET_API_VERSION` is 12, the capabilities
//!    a libkrun guest needs are there (`KVM_CHECK_EXTENSION`), and
//!    `KVM_CREATE_VM` succeeds (the VM is closed at once);
//! 6. `libkrun.so.1` and the guest kernel it loads, `libkrunfw.so.5`.
//!
//! Steps 1–3 read a few small files; the device is opened only when they
//! pass. The answer is a [`KvmReport`] whose [`Verdict`] is
//! [`Verdict::Ready`] or [`Verdict::Unavailable`] with a typed [`Reason`],
//! whose `Display` says what is wrong and what to do.
//!
//! The kernel-side facts (steps 1–5, [`HostFacts`]) are cached per boot in
//! `<state home>/cache/kvm-probe.json`, keyed by the boot id, the caller's
//! user and groups and the device node's owner and mode, and in memory by
//! [`probe()`]. The libraries are looked up afresh each time. Uncached, the
//! probe takes about 0.1 ms when sysfs decides and some 10 ms when it goes on
//! to create a VM; from the cache file, tens of microseconds.
//!
//! The only `unsafe` code is in the `device` module: three ioctls on an owned
//! file descriptor.
//!
//! ```
//! use msb_core::kvm::{probe_uncached, ProbeOptions, Verdict};
//!
//! let report = probe_uncached(&ProbeOptions::default());
//! match &report.verdict {
//!     Verdict::Ready => println!("microVMs can run here"),
//!     Verdict::Unavailable(reason) => println!("no microVMs: {reason}"),
//! }
//! assert!(report.elapsed.as_secs() < 2);
//! ```

mod cache;
mod device;
mod libraries;
mod probe;
mod reason;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::debug;

pub use self::cache::FILE_NAME as CACHE_FILE_NAME;
pub use self::device::{Cap, KVM_API_VERSION, REQUIRED_CAPS};
pub use self::libraries::{LIBKRUN, LIBKRUNFW, Libraries, MSB_LIB_DIR_ENV};
pub use self::probe::{
    Access, CpuVirt, HARDWARE_MODULES, HostFacts, KvmFacts, Node, PAGETABLE_MODULES, VmCheck,
    classify,
};
pub use self::reason::{Reason, Verdict};

/// The probe's full answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmReport {
    /// Whether microVM guests can run here, and if not, why.
    pub verdict: Verdict,
    /// What the kernel and CPU said.
    pub host: HostFacts,
    /// Where libkrun and libkrunfw were found.
    pub libraries: Libraries,
    /// Whether [`host`](Self::host) came from the per-boot cache.
    pub cached: bool,
    /// How long this probe took.
    pub elapsed: Duration,
}

/// Where the probe looks. [`Default`] is this host as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Directories to search for libkrun and libkrunfw after `$MSB_LIB_DIR`
    /// and before `$LD_LIBRARY_PATH` and the system directories, e.g. the
    /// prefix `cargo xtask setup` installs into.
    pub lib_dirs: Vec<PathBuf>,
    /// The directory holding the cache file; `None` means
    /// [`crate::paths::cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// The KVM device (`/dev/kvm`).
    pub device: PathBuf,
    /// The kernel's module directory (`/sys/module`).
    pub sysfs_modules: PathBuf,
    /// The CPU description (`/proc/cpuinfo`).
    pub cpuinfo: PathBuf,
    /// The boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: PathBuf,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            lib_dirs: Vec::new(),
            cache_dir: None,
            device: PathBuf::from("/dev/kvm"),
            sysfs_modules: PathBuf::from("/sys/module"),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
            boot_id: PathBuf::from("/proc/sys/kernel/random/boot_id"),
        }
    }
}

impl ProbeOptions {
    /// The cache file these options read and write.
    pub fn cache_file(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(crate::paths::cache_dir)
            .join(cache::FILE_NAME)
    }
}

/// Probes this host with default options, answering from memory after the
/// first call in a process and from the per-boot cache file after the first
/// call in a boot.
pub fn probe() -> KvmReport {
    static HOST: OnceLock<HostFacts> = OnceLock::new();
    let started = Instant::now();
    let opts = ProbeOptions::default();
    let mut cached = true;
    let host = HOST
        .get_or_init(|| {
            let (host, from_file) = host_facts_cached(&opts);
            cached = from_file;
            host
        })
        .clone();
    report(&opts, host, cached, started)
}

/// Probes with `opts`, through the per-boot cache file in
/// [`ProbeOptions::cache_dir`].
pub fn probe_with(opts: &ProbeOptions) -> KvmReport {
    let started = Instant::now();
    let (host, cached) = host_facts_cached(opts);
    report(opts, host, cached, started)
}

/// Probes with `opts`, neither reading nor writing any cache.
pub fn probe_uncached(opts: &ProbeOptions) -> KvmReport {
    let started = Instant::now();
    let host = probe::gather(
        opts,
        &probe::Identity::current(),
        probe::stat_node(&opts.device),
    );
    report(opts, host, false, started)
}

/// The host facts from the cache file when it holds them for this boot,
/// user and device node; gathered and stored otherwise.
fn host_facts_cached(opts: &ProbeOptions) -> (HostFacts, bool) {
    let identity = probe::Identity::current();
    let node = probe::stat_node(&opts.device);
    let file = opts.cache_file();
    let key = cache::boot_id(&opts.boot_id).map(|boot_id| {
        cache::Key::new(
            boot_id,
            identity.clone(),
            opts.device.clone(),
            node.clone(),
            opts.sysfs_modules.clone(),
            opts.cpuinfo.clone(),
        )
    });
    if let Some(host) = key.as_ref().and_then(|key| cache::load(&file, key)) {
        return (host, true);
    }
    let host = probe::gather(opts, &identity, node);
    if let Some(key) = &key {
        match cache::store(&file, key, &host) {
            Ok(()) => debug!(file = %file.display(), "kvm probe: cached"),
            Err(err) => debug!(file = %file.display(), %err, "kvm probe: cannot write cache"),
        }
    }
    (host, false)
}

fn report(opts: &ProbeOptions, host: HostFacts, cached: bool, started: Instant) -> KvmReport {
    let libraries = Libraries::locate(&Libraries::search_path(&opts.lib_dirs));
    let verdict = classify(&host, &libraries);
    let elapsed = started.elapsed();
    debug!(?verdict, ?elapsed, cached, "kvm probe: done");
    KvmReport {
        verdict,
        host,
        libraries,
        cached,
        elapsed,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn options(cache: &Path) -> ProbeOptions {
        ProbeOptions {
            cache_dir: Some(cache.to_path_buf()),
            ..ProbeOptions::default()
        }
    }

    #[test]
    fn answers_well_within_two_seconds() {
        let cache = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let cold = probe_with(&options(cache.path()));
        let warm = probe_with(&options(cache.path()));
        let uncached = probe_uncached(&ProbeOptions::default());
        assert!(started.elapsed() < Duration::from_secs(2));
        for report in [&cold, &warm, &uncached] {
            assert!(report.elapsed < Duration::from_millis(500), "{report:?}");
        }
    }

    /// On a host with a pagetable-based KVM (the project's CI machines) the
    /// verdict names the module, whatever else is true.
    #[test]
    fn pagetable_based_kvm_on_this_host() {
        let report = probe_uncached(&ProbeOptions::default());
        if Path::new("/dev/kvm").exists() && Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(
                report.verdict,
                Verdict::Unavailable(Reason::PagetableBasedKvm {
                    module: "kvm_pvm".into()
                })
            );
            assert!(report.verdict.to_string().contains("`kvm_pvm`"));
            // Decided from sysfs alone: the device was never opened.
            assert_eq!(report.host.access, Access::NotTried);
        }
    }

    #[test]
    fn second_probe_comes_from_the_cache_file() {
        let cache = tempfile::tempdir().unwrap();
        let opts = options(cache.path());
        let first = probe_with(&opts);
        let second = probe_with(&opts);
        if cache::boot_id(&opts.boot_id).is_none() {
            return; // no boot id, no disk cache
        }
        assert!(opts.cache_file().is_file());
        assert!(!first.cached);
        assert!(second.cached);
        assert_eq!(first.host, second.host);
        assert_eq!(first.verdict, second.verdict);
    }

    #[test]
    fn corrupt_cache_file_is_ignored_and_rewritten() {
        let cache = tempfile::tempdir().unwrap();
        let opts = options(cache.path());
        std::fs::write(opts.cache_file(), "{\"key\": truncated").unwrap();
        let report = probe_with(&opts);
        assert!(!report.cached);
        assert_eq!(report.verdict, probe_uncached(&opts).verdict);
        if cache::boot_id(&opts.boot_id).is_some() {
            assert!(probe_with(&opts).cached, "the entry was rewritten");
        }
    }

    #[test]
    fn libraries_come_from_lib_dirs() {
        let prefix = tempfile::tempdir().unwrap();
        for name in [LIBKRUN, LIBKRUNFW] {
            std::fs::write(prefix.path().join(name), b"").unwrap();
        }
        let opts = ProbeOptions {
            lib_dirs: vec![prefix.path().to_path_buf()],
            ..ProbeOptions::default()
        };
        let report = probe_uncached(&opts);
        // `$MSB_LIB_DIR` may come first; otherwise the prefix is what is found.
        if std::env::var_os(MSB_LIB_DIR_ENV).is_none() {
            assert_eq!(report.libraries.libkrun, Some(prefix.path().join(LIBKRUN)));
            assert_eq!(
                report.libraries.libkrunfw,
                Some(prefix.path().join(LIBKRUNFW))
            );
        }
    }

    #[test]
    fn report_serializes_for_tools() {
        let report = probe_uncached(&ProbeOptions::default());
        let json = serde_json::to_string(&report).unwrap();
        let back: KvmReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let pvm = Verdict::Unavailable(Reason::PagetableBasedKvm {
            module: "kvm_pvm".into(),
        });
        assert_eq!(
            serde_json::to_value(&pvm).unwrap(),
            serde_json::json!({"verdict": "unavailable", "reason": {"kind": "pagetable_based_kvm", "module": "kvm_pvm"}})
        );
    }

    #[test]
    fn every_reason_says_what_to_do() {
        let reasons = [
            Reason::NoDevice {
                path: "/dev/kvm".into(),
            },
            Reason::NotACharDevice {
                path: "/dev/kvm".into(),
            },
            Reason::PagetableBasedKvm {
                module: "kvm_pvm".into(),
            },
            Reason::NoHardwareVirtualization { in_vm: true },
            Reason::NoHardwareVirtualization { in_vm: false },
            Reason::NoPermission {
                path: "/dev/kvm".into(),
                uid: 1000,
                mode: 0o660,
                gid: 108,
                group: Some("kvm".into()),
                needs_relogin: false,
            },
            Reason::OpenFailed {
                path: "/dev/kvm".into(),
                errno: libc::ENXIO,
            },
            Reason::ApiVersionMismatch { found: Some(11) },
            Reason::ApiVersionMismatch { found: None },
            Reason::MissingCapability {
                name: "KVM_CAP_IRQFD".into(),
            },
            Reason::CreateVmFailed { errno: libc::EBUSY },
            Reason::LibkrunMissing {
                searched: vec!["/usr/lib".into()],
            },
            Reason::LibkrunfwMissing {
                searched: vec!["/usr/lib".into()],
            },
        ];
        let actions = [
            "Run on", "Load", "Enable", "Add", "Use", "Another", "install", "Remove", "Check",
        ];
        for reason in reasons {
            let msg = reason.to_string();
            assert!(msg.len() < 400, "{msg}");
            assert!(msg.ends_with('.'), "{msg}");
            let acts = actions.iter().any(|a| msg.contains(a)) || msg.contains("Run `cargo xtask");
            assert!(acts, "no action in: {msg}");
            let round: Reason =
                serde_json::from_value(serde_json::to_value(&reason).unwrap()).unwrap();
            assert_eq!(round, reason);
        }
    }
}
