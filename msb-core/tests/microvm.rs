//! Booting a real microVM guest with libkrun, where the host can run one.
//!
//! `krun_start_enter` takes over the calling process, so the guest runs in a
//! child: this test binary re-executed with `MSB_MICROVM_CHILD` set. On hosts
//! the KVM probe rules out (no KVM, a pagetable-based KVM, ...) the test says
//! `skipped: <reason>` instead of passing silently.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use msb_core::image::registry::Credentials;
use msb_core::image::{PullOptions, Reference};
use msb_core::krun::KrunContext;
use test_utils::TestHome;
use test_utils::images::busybox_image;
use test_utils::registry::TestRegistry;

const CHILD_ENV: &str = "MSB_MICROVM_CHILD";
const MARKER: &str = "msb-microvm-smoke-ok";

/// The child's side: boot `rootfs` running `busybox echo MARKER`.
#[test]
fn microvm_child() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return; // only meaningful when re-executed by the parent test
    };
    let spec = PathBuf::from(spec);
    let rootfs = spec.join("rootfs");
    let console = spec.join("console.log");
    let mut ctx = KrunContext::new().expect("krun_create_ctx");
    ctx.set_vm_config(1, 256).expect("vm config");
    ctx.set_root(&rootfs).expect("root");
    ctx.set_console_output(&console).expect("console");
    ctx.set_exec("/bin/busybox", &["echo", MARKER], &[("PATH", "/bin")])
        .expect("exec");
    let err = ctx.start_enter();
    panic!("krun_start_enter returned: {err}");
}

#[test]
fn boots_busybox_in_a_microvm() {
    test_utils::require_microvm!();
    let registry = TestRegistry::start();
    busybox_image()
        .push_blocking(&registry, "test/busybox", "v1")
        .unwrap();
    let home = TestHome::new();
    let puller = test_utils::pull::puller(home.path(), Credentials::none());
    let reference: Reference = format!("{}/test/busybox:v1", registry.host())
        .parse()
        .unwrap();
    let pulled = test_utils::pull::runtime()
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap();

    // The guest writes into its root: give it a private copy of the tree.
    let spec = home.path().join("vm");
    std::fs::create_dir_all(&spec).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(&pulled.rootfs)
        .arg(spec.join("rootfs"))
        .status()
        .unwrap();
    assert!(status.success());

    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "microvm_child", "--nocapture"])
        .env(CHILD_ENV, &spec)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("guest did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = std::fs::read_to_string(spec.join("console.log")).unwrap_or_default();
    assert!(
        status.success(),
        "guest exited {status}; console:\n{console}"
    );
    assert!(console.contains(MARKER), "console:\n{console}");
}
