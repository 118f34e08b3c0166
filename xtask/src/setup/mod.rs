//! `cargo xtask setup`: everything the build and the tests need, installed
//! into the project prefix and cached, so that a second run takes seconds.

mod apt;
mod fsutil;
mod libkrun;
mod libkrunfw;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Result;
use crate::layout::Layout;

pub use apt::ensure_packages;

/// What setup provided, and from where.
#[derive(Debug)]
pub struct Prefix {
    pub libkrun: PathBuf,
    pub libkrunfw: libkrunfw::Provenance,
    pub header: PathBuf,
    pub pkg_config: PathBuf,
    pub lib_dir: PathBuf,
}

impl Prefix {
    pub fn print_summary(&self) {
        println!(
            "libkrun {}   {}",
            crate::layout::LIBKRUN_VERSION,
            self.libkrun.display()
        );
        println!("libkrunfw       {}", self.libkrunfw);
        println!("header          {}", self.header.display());
        println!("pkg-config      {}", self.pkg_config.display());
        println!(
            "link with       LIBKRUN_DIR={}  (krun-sys finds it on its own inside this workspace)",
            self.lib_dir.display()
        );
    }
}

/// Builds or reuses libkrun, provides libkrunfw, installs header and `.pc`.
pub fn run(root: &Path) -> Result<Prefix> {
    let started = Instant::now();
    let layout = Layout::new(root);
    let libkrun = libkrun::ensure(&layout)?;
    let libkrunfw = libkrunfw::ensure(&layout)?;
    let header = libkrun::install_header(&layout)?;
    let pkg_config = libkrun::install_pkg_config(&layout)?;
    eprintln!("setup: ready in {:.1?}", started.elapsed());
    Ok(Prefix {
        libkrun,
        libkrunfw,
        header,
        pkg_config,
        lib_dir: layout.lib_dir(),
    })
}
