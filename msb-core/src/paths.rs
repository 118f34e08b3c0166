//! Where microsandbox keeps its state on the host.

use std::path::PathBuf;

/// Environment variable that overrides the state home.
pub const MSB_HOME_ENV: &str = "MSB_HOME";

/// The state home: `$MSB_HOME`, else `$HOME/.microsandbox`, else
/// `/var/lib/microsandbox` for a process without a home directory.
///
/// ```
/// let home = msb_core::paths::state_home();
/// assert!(home.is_absolute() || std::env::var_os("MSB_HOME").is_some());
/// ```
pub fn state_home() -> PathBuf {
    if let Some(home) = std::env::var_os(MSB_HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".microsandbox"),
        None => PathBuf::from("/var/lib/microsandbox"),
    }
}

/// Directory for host facts cached across processes (e.g. the KVM probe).
pub fn cache_dir() -> PathBuf {
    state_home().join("cache")
}
