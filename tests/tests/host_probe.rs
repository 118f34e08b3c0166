//! The KVM probe as users see it through the facade.

use std::path::Path;
use std::time::{Duration, Instant};

use microsandbox::host::{self, Reason, Verdict};
use test_utils::{TestHome, probe_options};

fn has_vmx_or_svm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    })
}

#[test]
fn probe_answers_within_two_seconds() {
    let home = TestHome::new();
    let started = Instant::now();
    let report = host::probe_with(&probe_options(&home));
    assert!(started.elapsed() < Duration::from_secs(2), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(2));
}

#[test]
fn probe_finds_the_workspace_libraries() {
    let home = TestHome::new();
    let report = host::probe_with(&probe_options(&home));
    let libkrun = report.libraries.libkrun.expect("libkrun.so.1 found");
    assert!(libkrun.ends_with("libkrun.so.1"), "{}", libkrun.display());
    assert!(report.libraries.libkrunfw.is_some(), "libkrunfw.so.5 found");
}

#[test]
fn verdict_matches_the_host() {
    let home = TestHome::new();
    let verdict = host::probe_with(&probe_options(&home)).verdict;
    if !Path::new("/dev/kvm").exists() {
        assert!(
            matches!(verdict, Verdict::Unavailable(Reason::NoDevice { .. })),
            "{verdict:?}"
        );
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(
            verdict,
            Verdict::Unavailable(Reason::PagetableBasedKvm {
                module: "kvm_pvm".into()
            })
        );
        let message = verdict.to_string();
        assert!(message.contains("kvm_pvm"), "{message}");
    } else if !has_vmx_or_svm() {
        assert!(!verdict.can_run_microvm(), "{verdict:?}");
    }
}

#[test]
fn second_probe_is_served_from_the_per_boot_cache() {
    let home = TestHome::new();
    let options = probe_options(&home);
    let first = host::probe_with(&options);
    assert!(home.path().join("cache/kvm-probe.json").exists());
    let second = host::probe_with(&options);
    assert_eq!(first.verdict, second.verdict);
}
