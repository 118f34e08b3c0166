//! `cargo xtask bench <suite>`: set up, then run a benchmark suite of
//! `msb-bench` (test-utils) in release mode.
//!
//! ```text
//! cargo xtask bench images [--runs N]   ours against skopeo copy + umoci unpack
//! ```
//!
//! The suites report; a missed target is printed, not an error.

use std::path::Path;
use std::process::Command;

use crate::Result;
use crate::cmd;
use crate::layout::Layout;
use crate::setup;

/// The suites `msb-bench` knows.
const SUITES: &[&str] = &["images"];

/// Debian packages the `images` suite needs: the peers it is measured
/// against, debootstrap for the Debian fixture image and the registry.
const IMAGES_PACKAGES: &[&str] = &["skopeo", "umoci", "debootstrap", "docker-registry"];

pub fn run(root: &Path, suite: &str, args: &[String]) -> Result<()> {
    if !SUITES.contains(&suite) {
        return Err(format!(
            "unknown bench suite `{suite}` (known: {})",
            SUITES.join(", ")
        )
        .into());
    }
    setup::run(root)?;
    setup::ensure_packages(IMAGES_PACKAGES)?;
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
