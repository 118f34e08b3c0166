//! `cargo xtask test`: the whole suite, exactly what CI runs.
//!
//! Order: cheap checks first (formatting, stale bindings), then lints, then
//! every test of every crate against the real libkrun in the prefix.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::Result;
use crate::cmd;
use crate::layout::Layout;
use crate::setup;

/// Debian packages the suite needs beyond a Rust toolchain: libclang for the
/// bindings check; the registry the image tests pull from, busybox for the
/// fixture images, htpasswd for the basic-auth registry and openssl for the
/// TLS and token-auth registries' keys.
const PACKAGES: &[&str] = &[
    "libclang-dev",
    "docker-registry",
    "busybox-static",
    "apache2-utils",
    "openssl",
    // Sandbox networking: pasta, and `ip` for the network policy's rules.
    "passt",
    "iproute2",
];

pub fn run(root: &Path, cargo_args: &[String]) -> Result<()> {
    let started = Instant::now();
    setup::run(root)?;
    setup::ensure_packages(PACKAGES)?;

    // Doctests are linked in a temporary directory, out of reach of the
    // $ORIGIN-relative rpaths in .cargo/config.toml: give them the prefix on
    // the loader path.
    let loader_path = prepend_path(&Layout::new(root).lib_dir(), "LD_LIBRARY_PATH");
    let cargo = || {
        let mut c = Command::new(cmd::cargo());
        c.current_dir(root).env("LD_LIBRARY_PATH", &loader_path);
        c
    };
    step("cargo fmt --check", || {
        cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("bindings are current", || {
        crate::bindgen::run(root, true).map_err(Into::into)
    })?;
    step("cargo clippy", || {
        cmd::run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("static guest agent", || crate::agent::build(root).map(drop))?;
    step("cargo test", || {
        cmd::run(
            cargo()
                .args(["test", "--workspace", "--locked", "--"])
                .args(cargo_args),
        )
    })?;
    println!("xtask test: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = Instant::now();
    eprintln!("==> {name}");
    f().map_err(|e| format!("{name}: {e}"))?;
    eprintln!("==> {name}: ok ({:.1?})", started.elapsed());
    Ok(())
}

/// `dir` followed by the current value of the path list `var`.
pub(crate) fn prepend_path(dir: &Path, var: &str) -> OsString {
    let current = std::env::var_os(var).unwrap_or_default();
    let rest = std::env::split_paths(&current);
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(rest))
        .unwrap_or_else(|_| dir.as_os_str().to_owned())
}
