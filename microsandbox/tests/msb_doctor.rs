//! `msb doctor`, driven as a user would run it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn msb_doctor(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_msb"))
        .arg("doctor")
        .args(args)
        .env("MSB_HOME", home)
        .output()
        .expect("run msb")
}

#[test]
fn json_report_parses_and_agrees_with_the_library() {
    let home = tempfile::tempdir().unwrap();
    let out = msb_doctor(&["--json"], home.path());
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let verdict = &report["verdict"]["verdict"];
    assert!(verdict == "ready" || verdict == "unavailable", "{report}");
    if Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists() {
        assert_eq!(report["verdict"]["reason"]["kind"], "pagetable_based_kvm");
        assert_eq!(report["verdict"]["reason"]["module"], "kvm_pvm");
    }
    assert!(home.path().join("cache/kvm-probe.json").exists());
}

#[test]
fn human_report_names_the_verdict_quickly() {
    let home = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = msb_doctor(&[], home.path());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("microVM"), "{text}");
    assert!(text.contains("libkrun"), "{text}");
    if Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists() {
        assert!(text.contains("cannot run here"), "{text}");
        assert!(text.contains("pagetable-based"), "{text}");
    }
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_msb"))
        .arg("frobnicate")
        .output()
        .expect("run msb");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
