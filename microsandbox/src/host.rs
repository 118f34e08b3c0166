//! What this host can run.
//!
//! microsandbox never downgrades isolation silently: a program that asks for a
//! microVM on a host that cannot run one gets an error that says why. The
//! probe answers that question up front, in milliseconds, and is cached per
//! boot.

pub use msb_core::kvm::{
    Access, CpuVirt, HostFacts, KvmFacts, KvmReport, Libraries, Node, ProbeOptions, Reason,
    Verdict, VmCheck,
};

/// Probes this host (cached per boot): can microVM guests run here, and if
/// not, why not.
///
/// ```
/// use microsandbox::host::{probe, Verdict};
///
/// match probe().verdict {
///     Verdict::Ready => println!("microVMs available"),
///     Verdict::Unavailable(reason) => println!("microVMs unavailable: {reason}"),
/// }
/// ```
pub fn probe() -> KvmReport {
    msb_core::kvm::probe()
}

/// Probes with explicit options, e.g. extra directories holding libkrun.
pub fn probe_with(options: &ProbeOptions) -> KvmReport {
    msb_core::kvm::probe_with(options)
}
