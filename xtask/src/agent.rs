//! `cargo xtask build-agent`: the guest agent as a static binary.
//!
//! ```text
//! target/msb/agent/<host triple>/release/msb-agent   (cargo's output)
//! target/msb/prefix/libexec/msb-agent                 (installed copy)
//! ```
//!
//! The installed copy is where the runtime finds the agent in a checkout
//! (`msb_core::sandbox::programs`).
//!
//! Built for the host triple with `+crt-static` (a static-pie on glibc; see
//! DESIGN.md, "The guest agent binary") and without msb-core's `krun`
//! feature, which would link libkrun. `--target` keeps RUSTFLAGS away from
//! build scripts and proc macros. The result is checked: no ELF interpreter
//! and no `DT_NEEDED` library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::Result;
use crate::cmd;

/// Builds the agent and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    let triple = host_triple()?;
    let target_dir = root.join("target").join("msb").join("agent");
    cmd::run(
        Command::new(cmd::cargo())
            .current_dir(root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .args([
                "build",
                "--release",
                "--package",
                "msb-core",
                "--no-default-features",
                "--bin",
                "msb-agent",
                "--target",
                &triple,
                "--target-dir",
            ])
            .arg(&target_dir),
    )?;
    let built = target_dir.join(&triple).join("release").join("msb-agent");
    check_static(&built)?;
    let binary = install(&built, &crate::layout::Layout::new(root).agent_path())?;
    eprintln!(
        "xtask build-agent: static agent built in {:.1?}",
        started.elapsed()
    );
    Ok(binary)
}

/// Copies `built` to `dest` atomically (a temporary name, then a rename),
/// unless `dest` already has the same contents.
fn install(built: &Path, dest: &Path) -> Result<PathBuf> {
    let bytes =
        std::fs::read(built).map_err(|e| format!("cannot read {}: {e}", built.display()))?;
    if std::fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(dest.to_path_buf());
    }
    let dir = dest.parent().expect("the install path has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".msb-agent.tmp-{}", std::process::id()));
    std::fs::copy(built, &tmp)
        .and_then(|_| std::fs::rename(&tmp, dest))
        .map_err(|e| format!("cannot install the agent at {}: {e}", dest.display()))?;
    Ok(dest.to_path_buf())
}

pub fn run(root: &Path) -> Result<()> {
    let binary = build(root)?;
    println!("{}", binary.display());
    Ok(())
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = cmd::output(Command::new(rustc).arg("-vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| "`rustc -vV` printed no host triple".into())
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

/// Fails unless `path` is a 64-bit little-endian ELF with no interpreter and
/// no needed shared library.
fn check_static(path: &Path) -> Result<()> {
    let elf = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = |why: &str| format!("{} is not a static binary: {why}", path.display());
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err(bad("not a 64-bit little-endian ELF file").into());
    }
    let truncated = || bad("truncated ELF headers");
    let phoff = u64_at(0x20).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(truncated)? as usize;
    let phnum = u16_at(0x38).ok_or_else(truncated)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(ph).ok_or_else(truncated)?;
        if kind == PT_INTERP {
            return Err(bad("it has an ELF interpreter (PT_INTERP)").into());
        }
        if kind == PT_DYNAMIC {
            let offset = u64_at(ph + 8).ok_or_else(truncated)? as usize;
            let size = u64_at(ph + 32).ok_or_else(truncated)? as usize;
            for entry in (offset..offset + size).step_by(16) {
                match u64_at(entry).ok_or_else(truncated)? {
                    DT_NULL => break,
                    DT_NEEDED => return Err(bad("it needs a shared library (DT_NEEDED)").into()),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}
