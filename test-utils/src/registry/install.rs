//! Installing the Debian packages the fixtures need, on demand.
//!
//! Tests run in parallel (threads of one test binary, and several test
//! binaries at once), so installs are serialised twice: a process-wide mutex
//! for the threads, and `flock(1)` on [`APT_LOCK`] for the processes. The
//! binary is checked again under the lock, so only the first caller installs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::FixtureError;

/// The file lock every fixture install takes (`flock(1)`).
pub const APT_LOCK: &str = "/tmp/msb-test-apt.lock";

static APT_MUTEX: Mutex<()> = Mutex::new(());

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Makes sure `binary` exists, installing Debian package `package` with
/// `apt-get install -y --no-install-recommends` when it does not and this
/// process is root (`apt-get update` runs only if the first install fails).
pub fn ensure_package(binary: &Path, package: &str) -> Result<(), FixtureError> {
    if binary.exists() {
        return Ok(());
    }
    let _guard = APT_MUTEX.lock().unwrap_or_else(|e| e.into_inner());
    if binary.exists() {
        return Ok(());
    }
    if !is_root() {
        return Err(FixtureError::Install {
            package: package.to_string(),
            detail: format!(
                "{} is missing and this process is not root; run `apt-get install {package}`",
                binary.display()
            ),
        });
    }
    tracing::info!(package, "installing test fixture package");
    let install =
        format!("apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 {package}");
    // Re-checked under the file lock: another process may have installed it.
    let script = format!(
        "test -e '{bin}' && exit 0; {install} || {{ apt-get update -o DPkg::Lock::Timeout=300 && {install}; }}",
        bin = binary.display(),
    );
    let out = Command::new("flock")
        .args([APT_LOCK, "sh", "-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| FixtureError::Install {
            package: package.to_string(),
            detail: format!("running flock/apt-get: {e}"),
        })?;
    if !out.status.success() || !binary.exists() {
        return Err(FixtureError::Install {
            package: package.to_string(),
            detail: format!(
                "apt-get exited with {}; {} exists: {}\n{}",
                out.status,
                binary.display(),
                binary.exists(),
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            ),
        });
    }
    Ok(())
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
