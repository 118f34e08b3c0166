//! libkrun, built from the crates.io crate `libkrun` at a pinned version as
//! `libkrun.so.1` (its build script sets the soname) with `RUNPATH=$ORIGIN`,
//! so the `dlopen("libkrunfw.so.5")` it performs finds a libkrunfw installed
//! next to it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::fsutil::{copy_tree, install_file, replace_symlink, write_atomic};
use crate::Result;
use crate::cmd;
use crate::layout::{LIBKRUN_VERSION, Layout};

/// Everything that decides the built library; a change rebuilds it.
fn recipe() -> String {
    format!("libkrun {LIBKRUN_VERSION} features=default profile=release rpath=$ORIGIN\n")
}

/// Returns the installed `libkrun.so.1`, building it first if needed.
pub fn ensure(layout: &Layout) -> Result<PathBuf> {
    let lib_dir = layout.lib_dir();
    let soname_link = lib_dir.join("libkrun.so.1");
    let stamp = lib_dir.join(".libkrun.stamp");
    let up_to_date = fs::read_to_string(&stamp).is_ok_and(|s| s == recipe());
    if up_to_date && soname_link.exists() {
        return Ok(soname_link);
    }

    let started = Instant::now();
    eprintln!("setup: building libkrun {LIBKRUN_VERSION} (takes a few minutes once)");
    let source = locate_source(layout)?;
    let built = build(layout, &source)?;

    fs::create_dir_all(&lib_dir).map_err(|e| format!("create {}: {e}", lib_dir.display()))?;
    let real_name = format!("libkrun.so.{LIBKRUN_VERSION}");
    install_file(&built, &lib_dir.join(&real_name))
        .map_err(|e| format!("install libkrun into {}: {e}", lib_dir.display()))?;
    replace_symlink(&real_name, &soname_link)?;
    replace_symlink("libkrun.so.1", &lib_dir.join("libkrun.so"))?;
    write_atomic(&stamp, recipe().as_bytes())?;
    eprintln!("setup: libkrun built in {:.0?}", started.elapsed());
    Ok(soname_link)
}

/// Finds the `libkrun` crate's source in cargo's registry cache, downloading
/// it from crates.io first if needed (`cargo metadata` on a scratch manifest).
fn locate_source(layout: &Layout) -> Result<PathBuf> {
    let scratch = layout.build_dir().join("fetch");
    fs::create_dir_all(&scratch)?;
    let manifest = scratch.join("Cargo.toml");
    fs::write(
        &manifest,
        format!(
            "[package]\nname = \"libkrun-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [lib]\npath = \"lib.rs\"\n[dependencies]\nlibkrun = \"={LIBKRUN_VERSION}\"\n[workspace]\n"
        ),
    )?;
    fs::write(scratch.join("lib.rs"), "")?;
    let out = cmd::output(
        Command::new(cmd::cargo())
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(&manifest),
    )
    .map_err(|e| {
        format!(
            "cannot fetch the libkrun {LIBKRUN_VERSION} crate from crates.io (no network?): {e}"
        )
    })?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest_path = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "libkrun" && p["version"] == LIBKRUN_VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("cargo metadata did not list the libkrun crate")?;
    Ok(Path::new(manifest_path)
        .parent()
        .ok_or("libkrun manifest path has no parent")?
        .to_path_buf())
}

/// Builds the cdylib from a private copy of the source (cargo's registry
/// cache is read-only by convention) and returns the built `.so`.
fn build(layout: &Layout, source: &Path) -> Result<PathBuf> {
    let build_dir = layout.build_dir();
    let crate_dir = build_dir.join(format!("libkrun-{LIBKRUN_VERSION}"));
    let target_dir = build_dir.join("cargo-target");
    if !crate_dir.join("Cargo.toml").exists() {
        let tmp = build_dir.join(format!("libkrun-{LIBKRUN_VERSION}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        copy_tree(source, &tmp)?;
        // The copy lives under our workspace's target/; make it its own
        // workspace root so cargo does not treat it as a stray member.
        let manifest = tmp.join("Cargo.toml");
        let mut text = fs::read_to_string(&manifest)?;
        text.push_str("\n[workspace]\n");
        fs::write(&manifest, text)?;
        fs::rename(&tmp, &crate_dir)?;
    }
    cmd::run(
        Command::new(cmd::cargo())
            .current_dir(&crate_dir)
            .env_remove("CARGO_TARGET_DIR")
            // Our workspace's .cargo/config.toml rustflags (rpaths into the
            // prefix) must not leak into libkrun's own build.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", "")
            .args([
                "rustc",
                "--release",
                "--lib",
                "--crate-type",
                "cdylib",
                "--locked",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["--", "-C", "link-arg=-Wl,-rpath,$ORIGIN"]),
    )
    .map_err(|e| format!("building libkrun {LIBKRUN_VERSION} failed: {e}"))?;
    let built = target_dir.join("release").join("libkrun.so");
    if built.is_file() {
        Ok(built)
    } else {
        Err(format!("libkrun build produced no {}", built.display()).into())
    }
}

/// Copies the project's own `libkrun.h` into the prefix.
pub fn install_header(layout: &Layout) -> Result<PathBuf> {
    let dir = layout.include_dir();
    fs::create_dir_all(&dir)?;
    let dst = dir.join("libkrun.h");
    let src = layout.header();
    let contents = fs::read(&src).map_err(|e| format!("read {}: {e}", src.display()))?;
    if fs::read(&dst).ok().as_deref() != Some(&contents[..]) {
        write_atomic(&dst, &contents)?;
    }
    Ok(dst)
}

/// Writes `lib/pkgconfig/libkrun.pc` describing the prefix.
pub fn install_pkg_config(layout: &Layout) -> Result<PathBuf> {
    let dir = layout.lib_dir().join("pkgconfig");
    fs::create_dir_all(&dir)?;
    let dst = dir.join("libkrun.pc");
    let contents = format!(
        "prefix={}\nlibdir=${{prefix}}/lib\nincludedir=${{prefix}}/include\n\n\
         Name: libkrun\nDescription: Virtualization-based process isolation (built by cargo xtask setup)\n\
         Version: {LIBKRUN_VERSION}\nLibs: -L${{libdir}} -Wl,-rpath,${{libdir}} -lkrun\nCflags: -I${{includedir}}\n",
        layout.prefix().display()
    );
    if fs::read_to_string(&dst).ok().as_deref() != Some(contents.as_str()) {
        write_atomic(&dst, contents.as_bytes())?;
    }
    Ok(dst)
}
