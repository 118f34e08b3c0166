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

use std::env;
use std::path::{Path, PathBuf};

/// File names that make a directory count as holding libkrun.
const LIB_NAMES: &[&str] = &["libkrun.so", "libkrun.so.1", "libkrun.dylib"];

fn has_libkrun(dir: &Path) -> Option<PathBuf> {
    LIB_NAMES.iter().map(|n| dir.join(n)).find(|p| p.exists())
}

fn emit(dir: &Path) {
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib=krun");
    println!("cargo:lib_dir={}", dir.display());
    // Cargo only puts link-search paths under target/<profile> on the loader
    // path, so give this crate's own test binaries an rpath to the library.
    // Dependents get the directory as DEP_KRUN_LIB_DIR and do the same.
    println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", dir.display());
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBKRUN_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let prefix_lib = manifest_dir.join("../target/msb/prefix/lib");
    // Rebuild when `cargo xtask setup` (re)installs the library.
    for name in LIB_NAMES {
        println!("cargo:rerun-if-changed={}", prefix_lib.join(name).display());
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
        emit(&dir);
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
            emit(&dir);
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
        emit(&dir);
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
