//! What `#[msb_test]` gives a sandbox test: an isolated state home, the
//! isolation backend this host allows, the runtime programs, and the
//! busybox image in a registry on loopback.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use msb_core::kvm::{self, Verdict};

use crate::TestHome;
use crate::images::busybox_image;
use crate::registry::TestRegistry;

/// What a test needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Any backend: a microVM where the host can run one, else namespace
    /// isolation.
    Any,
    /// A microVM; the test is skipped (with `skipped: <reason>`) elsewhere.
    Microvm,
}

/// One test's environment; its state home is deleted when it drops.
#[derive(Debug)]
pub struct TestEnv {
    name: String,
    home: TestHome,
    isolation: &'static str,
    registry: OnceLock<TestRegistry>,
}

impl TestEnv {
    /// The environment for test `name`, or `None` (after printing
    /// `skipped: <reason>`) when the host cannot meet `requirement`.
    pub fn for_test(name: &str, requirement: Requirement) -> Option<TestEnv> {
        let home = TestHome::new();
        let verdict = kvm::probe_with(&crate::probe_options(&home)).verdict;
        let isolation = match (&verdict, requirement) {
            (Verdict::Ready, _) => "microvm",
            (Verdict::Unavailable(_), Requirement::Any) => "namespace",
            (Verdict::Unavailable(reason), Requirement::Microvm) => {
                println!("skipped: {reason}");
                return None;
            }
        };
        ensure_programs();
        Some(TestEnv {
            name: name.to_owned(),
            home,
            isolation,
            registry: OnceLock::new(),
        })
    }

    /// The test's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The isolated state home (pass it to the builder's `home`).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The backend this host allows: `"microvm"` or `"namespace"`.
    pub fn isolation(&self) -> &'static str {
        self.isolation
    }

    /// A registry on 127.0.0.1 for this test, started on first use.
    pub fn registry(&self) -> &TestRegistry {
        self.registry.get_or_init(TestRegistry::start)
    }

    /// The busybox image (Debian's busybox-static), pushed to this test's
    /// registry; returns its reference.
    pub fn busybox(&self) -> String {
        let registry = self.registry();
        busybox_image()
            .push_blocking(registry, "test/busybox", "latest")
            .expect("push the busybox image");
        registry.reference("test/busybox", "latest")
    }
}

impl Drop for TestEnv {
    /// Kills whatever sandbox of this home still runs (a detached one left
    /// by a failed test) before the home is deleted: no test leaks a
    /// sandbox process past its own end.
    fn drop(&mut self) {
        let Ok(store) = msb_core::sandbox::state::StateStore::open(self.home.path()) else {
            return;
        };
        for record in store.list().unwrap_or_default() {
            if let Some(process) = record.live_process()
                && let Ok(pid) = libc::pid_t::try_from(process.pid)
                && process.is_alive()
            {
                // SAFETY: kill(2) with plain integers; the pid was just
                // checked to be this record's process (pid + start time).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Runs `test` on a multi-threaded tokio runtime.
pub fn run<F, Fut>(env: TestEnv, test: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start a tokio runtime")
        .block_on(test(env));
}

/// The workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-utils lives one level below the workspace root")
        .to_path_buf()
}

/// Makes sure the static agent is installed where the runtime finds it in
/// a checkout (`cargo xtask build-agent`; a no-op when current), once per
/// test process.
pub fn ensure_programs() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = workspace_root();
        if root.join("target/msb/prefix/libexec/msb-agent").exists() {
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .env_remove("CARGO_TARGET_DIR")
            .args(["run", "--quiet", "--package", "xtask", "--", "build-agent"])
            .status()
            .expect("run cargo xtask build-agent");
        assert!(status.success(), "building the static agent failed");
    });
}

/// The PID namespace (as `/proc/<pid>/ns/pid` reads) of the sandbox whose
/// sandbox process is `sandbox_pid`: its agent's, that process's child.
/// Root links cannot find a sandbox's processes: after `pivot_root` in its
/// own mount namespace a sandboxed process's root reads as `/` from here.
pub fn pid_ns_of_sandbox(sandbox_pid: u32) -> PathBuf {
    let parent_of = |pid: &str| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("PPid:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|p| parent_of(p) == Some(sandbox_pid))
        .and_then(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok())
        .expect("the sandbox's agent")
}

/// How many host processes live in PID namespace `ns`.
pub fn processes_in(ns: &Path) -> usize {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|n| n == ns))
        .count()
}
