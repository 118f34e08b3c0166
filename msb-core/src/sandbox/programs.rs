//! Finding the programs a sandbox needs on the host: the sandbox process
//! (`msb-sandbox`, shipped by the `microsandbox` crate) and the static guest
//! agent (`msb-agent`, built by `cargo xtask build-agent`).
//!
//! Search order for the sandbox process: `$MSB_PATH` (the binary, or a
//! directory holding it), the directory of the current executable and its
//! parent (cargo puts test binaries in `target/<profile>/deps`), then
//! `<state home>/bin`.
//!
//! Search order for the agent: `$MSB_AGENT_PATH`, `<state home>/libexec/msb-agent`,
//! `msb-agent` next to the current executable (and its parent) when it is
//! static, then the development prefix `target/msb/prefix/libexec` of the
//! workspace this crate was built in.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Names the sandbox process binary, or a directory holding it.
pub const MSB_PATH_ENV: &str = "MSB_PATH";
/// Names the static guest agent binary.
pub const MSB_AGENT_PATH_ENV: &str = "MSB_AGENT_PATH";
/// The sandbox process binary's file name.
pub const SANDBOX_PROGRAM: &str = "msb-sandbox";
/// The guest agent binary's file name.
pub const AGENT_PROGRAM: &str = "msb-agent";

/// Where `cargo xtask build-agent` installs the agent in a checkout.
const DEV_AGENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/msb/prefix/libexec/msb-agent"
);

/// The sandbox process binary.
pub fn sandbox_program(home: &Path) -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(value) = std::env::var_os(MSB_PATH_ENV) {
        let path = PathBuf::from(value);
        let candidate = if path.is_dir() {
            path.join(SANDBOX_PROGRAM)
        } else {
            path
        };
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    for dir in exe_dirs() {
        let candidate = dir.join(SANDBOX_PROGRAM);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    let candidate = home.join("bin").join(SANDBOX_PROGRAM);
    if is_executable(&candidate) {
        return Ok(candidate);
    }
    searched.push(candidate);
    Err(Error::ProgramNotFound {
        program: SANDBOX_PROGRAM,
        searched,
        hint: "build it with `cargo build -p microsandbox --bins` or set MSB_PATH",
    })
}

/// The static guest agent binary.
pub fn agent_program(home: &Path) -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(value) = std::env::var_os(MSB_AGENT_PATH_ENV) {
        let path = PathBuf::from(value);
        check_static(&path)?;
        return Ok(path);
    }
    let mut candidates = vec![home.join("libexec").join(AGENT_PROGRAM)];
    candidates.extend(exe_dirs().into_iter().map(|d| d.join(AGENT_PROGRAM)));
    candidates.push(PathBuf::from(DEV_AGENT));
    for candidate in candidates {
        if is_executable(&candidate) && check_static(&candidate).is_ok() {
            return Ok(candidate);
        }
        searched.push(candidate);
    }
    Err(Error::ProgramNotFound {
        program: AGENT_PROGRAM,
        searched,
        hint: "build it with `cargo xtask build-agent` or set MSB_AGENT_PATH",
    })
}

/// The current executable's directory and its parent.
fn exe_dirs() -> Vec<PathBuf> {
    let Ok(exe) = std::env::current_exe() else {
        return Vec::new();
    };
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(Path::to_path_buf)
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks that `path` is a 64-bit little-endian ELF executable without a
/// program interpreter (`PT_INTERP`): the agent runs in rootfs trees that
/// have no dynamic loader of ours.
pub fn check_static(path: &Path) -> Result<()> {
    let not_static = |reason| Error::AgentNotStatic {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let elf =
        Elf64::parse(&bytes).ok_or_else(|| not_static("not a 64-bit little-endian ELF file"))?;
    if elf.has_interpreter {
        return Err(not_static(
            "it names a program interpreter (dynamically linked)",
        ));
    }
    Ok(())
}

/// The little of an ELF64 header this module needs.
struct Elf64 {
    has_interpreter: bool,
}

impl Elf64 {
    const PT_INTERP: u32 = 3;

    fn parse(b: &[u8]) -> Option<Elf64> {
        if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
            return None;
        }
        let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let phoff = usize::try_from(u64_at(0x20)?).ok()?;
        let phentsize = usize::from(u16_at(0x36)?);
        let phnum = usize::from(u16_at(0x38)?);
        let mut has_interpreter = false;
        for i in 0..phnum {
            let header = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if u32_at(header)? == Self::PT_INTERP {
                has_interpreter = true;
            }
        }
        Some(Elf64 { has_interpreter })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_not_static() {
        // The test binary itself is dynamically linked against glibc.
        let exe = std::env::current_exe().unwrap();
        let err = check_static(&exe).unwrap_err();
        assert!(matches!(err, Error::AgentNotStatic { .. }), "{err}");
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("script");
        std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
        let err = check_static(&file).unwrap_err();
        assert!(
            matches!(err, Error::AgentNotStatic { reason, .. } if reason.contains("ELF")),
            "{err}"
        );
    }

    #[test]
    fn a_missing_agent_named_by_env_is_an_io_error() {
        let err = check_static(Path::new("/nonexistent/msb-agent")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
