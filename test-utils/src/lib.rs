//! Test support for microsandbox.
//!
//! - [`TestHome`]: an isolated state home per test, removed afterwards.
//! - [`probe_options`] / [`microvm_skip_reason`]: the KVM probe as the test
//!   suite sees it, with this workspace's libkrun prefix on the search path.
//!   A test that needs a microVM on a host that cannot run one prints
//!   `skipped: <reason>` (see [`require_microvm!`]) instead of passing silently.

pub mod fuzz;
pub mod images;
pub mod proxy;
pub mod pull;
pub mod registry;
pub mod sandbox;
pub mod tls;
pub mod token;

use std::path::{Path, PathBuf};

use msb_core::kvm::{self, ProbeOptions, Verdict};

pub use msb_test_macros::msb_test;

/// The directory `cargo xtask setup` installs libkrun and libkrunfw into.
pub fn prefix_lib_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-utils lives one level below the workspace root")
        .join("target/msb/prefix/lib")
}

/// Probe options for tests: the workspace prefix first, the real cache dir
/// of `home` (so tests never touch `~/.microsandbox`).
pub fn probe_options(home: &TestHome) -> ProbeOptions {
    probe_options_for(home.path())
}

/// Probe options for a test's state home at `home`.
pub fn probe_options_for(home: &Path) -> ProbeOptions {
    ProbeOptions {
        lib_dirs: vec![prefix_lib_dir()],
        cache_dir: Some(home.join("cache")),
        ..ProbeOptions::default()
    }
}

/// `Some(reason)` when microVM guests cannot run on this host.
pub fn microvm_skip_reason() -> Option<String> {
    let home = TestHome::new();
    match kvm::probe_with(&probe_options(&home)).verdict {
        Verdict::Ready => None,
        Verdict::Unavailable(reason) => Some(reason.to_string()),
    }
}

/// Returns early from the calling test, printing `skipped: <reason>`, when
/// this host cannot run microVM guests.
///
/// ```no_run
/// #[test]
/// fn boots_a_guest() {
///     test_utils::require_microvm!();
///     // ... only reached where microVMs can run
/// }
/// ```
#[macro_export]
macro_rules! require_microvm {
    () => {
        if let Some(reason) = $crate::microvm_skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// An isolated microsandbox state home, deleted when dropped.
#[derive(Debug)]
pub struct TestHome {
    dir: tempfile::TempDir,
}

impl TestHome {
    /// Creates a fresh, empty state home under the system temp dir.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("msb-test-home-")
            .tempdir()
            .expect("create a temporary state home");
        Self { dir }
    }

    /// The state home's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}
