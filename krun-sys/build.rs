//! Finds libkrun and tells cargo how to link it.
//!
//! Lookup order:
//! 1. `LIBKRUN_DIR`: a directory containing `libkrun.so`;
//! 2. pkg-config (`libkrun`);
//! 3. the prefix maintained by `cargo xtask setup`:
//!    `<workspace>/target/msb/prefix/lib`.
//!
//! Nothing is downloaded here: when none of these has libkrun the build fails
//! with a message saying how to get it.
//!
//! Metadata for dependent build scripts (`links = "krun"`):
//! `DEP_KRUN_ROOT` (the prefix), `DEP_KRUN_LIB_DIR` (the directory holding
//! libkrun) and `DEP_KRUN_INCLUDE` (the directory holding `libkrun.h`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// File names that make a directory count as holding libkrun.
const LIB_NAMES: &[&str] = &["libkrun.so", "libkrun.so.1", "libkrun.dylib"];

/// Libraries linked into `OUT_DIR/lib` so that `cargo test` / `cargo run`
/// find them at run time (libkrunfw is what libkrun `dlopen`s).
const RUNTIME_NAMES: &[&str] = &["libkrun.so", "libkrun.so.1", "libkrunfw.so.5"];

fn has_libkrun(dir: &Path) -> Option<PathBuf> {
    LIB_NAMES.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

/// Cargo puts only the link-search paths under `target/<profile>/` on the
/// loader path of `cargo test` / `cargo run` (for this crate and every crate
/// that depends on it). Symlink the libraries into `OUT_DIR/lib`, which is
/// under there, and return that directory.
#[cfg(unix)]
fn stage_for_loader(dir: &Path) -> Option<PathBuf> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR")?);
    let stage = out_dir.join("lib");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).ok()?;
    let mut staged = false;
    for name in RUNTIME_NAMES {
        let Ok(target) = dir.join(name).canonicalize() else {
            continue;
        };
        if std::os::unix::fs::symlink(&target, stage.join(name)).is_ok() {
            staged = true;
        }
    }
    staged.then_some(stage)
}

#[cfg(not(unix))]
fn stage_for_loader(_dir: &Path) -> Option<PathBuf> {
    None
}

fn emit(dir: &Path, manifest_dir: &Path) {
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib=krun");
    if let Some(lib) = has_libkrun(dir) {
        println!("cargo:rerun-if-changed={}", lib.display());
    }
    if let Some(stage) = stage_for_loader(dir) {
        println!("cargo:rustc-link-search=native={}", stage.display());
    }
    // Binaries outside cargo need the library on their own loader path;
    // this crate's test binaries get an rpath to it as well.
    println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", dir.display());

    let root = if dir.file_name().is_some_and(|n| n == "lib") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    println!("cargo:root={}", root.display());
    println!("cargo:lib_dir={}", dir.display());
    println!("cargo:include={}", manifest_dir.join("include").display());
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBKRUN_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let prefix_lib = manifest_dir.join("../target/msb/prefix/lib");
    // Rebuild when `cargo xtask setup` (re)installs the library. Only watch
    // paths that exist: cargo reruns the script on every build otherwise.
    if prefix_lib.is_dir() {
        println!("cargo:rerun-if-changed={}", prefix_lib.display());
    }
    for name in LIB_NAMES {
        let path = prefix_lib.join(name);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    // 1. LIBKRUN_DIR
    if let Some(dir) = env::var_os("LIBKRUN_DIR") {
        let dir = PathBuf::from(dir);
        if has_libkrun(&dir).is_none() {
            panic!(
                "LIBKRUN_DIR={} does not contain libkrun.so; point it at the directory \
                 holding libkrun.so (or unset it and run `cargo xtask setup`)",
                dir.display()
            );
        }
        emit(&dir, &manifest_dir);
        return;
    }

    // 2. pkg-config (not finding it is not fatal: fall through to the prefix)
    if let Ok(lib) = pkg_config::Config::new()
        .cargo_metadata(false)
        .env_metadata(true)
        .probe("libkrun")
    {
        let dir = lib
            .link_paths
            .iter()
            .find(|d| has_libkrun(d).is_some())
            .cloned()
            .or_else(|| {
                // pkg-config drops -L for system directories: ask for libdir.
                pkg_config::get_variable("libkrun", "libdir")
                    .ok()
                    .map(PathBuf::from)
                    .filter(|d| has_libkrun(d).is_some())
            });
        if let Some(dir) = dir {
            emit(&dir, &manifest_dir);
            return;
        }
        println!(
            "cargo:warning=pkg-config found libkrun but libkrun.so is not in its \
             link paths ({:?}) or libdir; trying the xtask prefix",
            lib.link_paths
        );
    }

    // 3. The prefix maintained by `cargo xtask setup`.
    if has_libkrun(&prefix_lib).is_some() {
        let dir = prefix_lib.canonicalize().unwrap_or(prefix_lib);
        emit(&dir, &manifest_dir);
        return;
    }

    panic!(
        "\n\nkrun-sys: libkrun was not found.\n\
         Looked at: $LIBKRUN_DIR (unset), pkg-config `libkrun`, and {}.\n\
         Run `cargo xtask setup` to build libkrun into the project prefix, \
         or set LIBKRUN_DIR to a directory containing libkrun.so.\n",
        prefix_lib.display()
    );
}
