//! `cargo xtask bench <suite>`: set up, then run a benchmark suite of
//! `msb-bench` (test-utils) in release mode.
//!
//! ```text
//! cargo xtask bench images [--runs N] [--no-prime]   ours against skopeo copy + umoci unpack
//! cargo xtask bench sandbox [--runs N]   ours against bwrap and crun
//! cargo xtask bench exec [--runs N]      exec through the agent against nsenter
//! cargo xtask bench soak [--sandboxes N] [--seconds S]   (also `cargo xtask soak`)
//!                                         many sandboxes exec'ing at once; failures, leaks
//! ```
//!
//! `sandbox`, `exec` and `soak` first build the static guest agent
//! (`xtask build-agent`) and the sandbox process `msb-sandbox` in release
//! mode, next to `msb-bench`, where the runtime looks for it.
//!
//! The suites report; a missed target is printed, not an error (`soak`
//! fails on any failure or leak).

use std::path::Path;
use std::process::Command;

use crate::Result;
use crate::cmd;
use crate::layout::Layout;
use crate::setup;

/// The suites `msb-bench` knows.
const SUITES: &[&str] = &["images", "sandbox", "exec", "soak"];

/// Debian packages the `images` suite needs: the peers it is measured
/// against, debootstrap for the Debian fixture image and the registry.
const IMAGES_PACKAGES: &[&str] = &["skopeo", "umoci", "debootstrap", "docker-registry"];

/// Debian packages the `sandbox` suite needs: the peers it is measured
/// against and the static busybox of the rootfs (the `exec` suite's too: it
/// probes crun; its peer, nsenter, comes with util-linux).
const SANDBOX_PACKAGES: &[&str] = &["bubblewrap", "crun", "busybox-static"];

/// The Debian packages of `suite`.
fn packages(suite: &str) -> &'static [&'static str] {
    match suite {
        "images" => IMAGES_PACKAGES,
        "sandbox" | "exec" | "soak" => SANDBOX_PACKAGES,
        _ => &[],
    }
}

pub fn run(root: &Path, suite: &str, args: &[String]) -> Result<()> {
    if !SUITES.contains(&suite) {
        return Err(format!(
            "unknown bench suite `{suite}` (known: {})",
            SUITES.join(", ")
        )
        .into());
    }
    setup::run(root)?;
    setup::ensure_packages(packages(suite))?;
    if matches!(suite, "sandbox" | "exec" | "soak") {
        crate::agent::build(root)?;
        cmd::run(Command::new(cmd::cargo()).current_dir(root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "microsandbox",
            "--bin",
            "msb-sandbox",
        ]))?;
    }
    let loader_path = crate::test::prepend_path(&Layout::new(root).lib_dir(), "LD_LIBRARY_PATH");
    cmd::run(
        Command::new(cmd::cargo())
            .current_dir(root)
            .env("LD_LIBRARY_PATH", &loader_path)
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "test-utils",
                "--bin",
                "msb-bench",
                "--",
                suite,
            ])
            .args(args),
    )
}
