//! Where the project keeps what xtask builds: everything under `target/msb/`.
//!
//! ```text
//! target/msb/prefix/lib/libkrun.so.1        libkrun, RUNPATH $ORIGIN
//! target/msb/prefix/lib/libkrunfw.so.5      guest kernel (unless the system has one)
//! target/msb/prefix/lib/pkgconfig/libkrun.pc
//! target/msb/prefix/include/libkrun.h
//! target/msb/build/                         libkrun source copy and its cargo target dir
//! target/msb/apt/                           private apt state used to fetch libkrunfw5
//! ```

use std::path::{Path, PathBuf};

/// The exact libkrun release the project builds and binds.
pub const LIBKRUN_VERSION: &str = "1.19.7";

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Paths of the project-local prefix and its build area.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub msb: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            msb: root.join("target").join("msb"),
        }
    }

    pub fn prefix(&self) -> PathBuf {
        self.msb.join("prefix")
    }

    pub fn lib_dir(&self) -> PathBuf {
        self.prefix().join("lib")
    }

    /// Where the static guest agent is installed (`libexec/msb-agent`),
    /// where the runtime looks for it in a checkout.
    pub fn agent_path(&self) -> PathBuf {
        self.prefix().join("libexec").join("msb-agent")
    }

    pub fn include_dir(&self) -> PathBuf {
        self.prefix().join("include")
    }

    pub fn build_dir(&self) -> PathBuf {
        self.msb.join("build")
    }

    pub fn apt_dir(&self) -> PathBuf {
        self.msb.join("apt")
    }

    /// The project's own C header for libkrun, the source of the bindings.
    pub fn header(&self) -> PathBuf {
        self.root.join("krun-sys").join("include").join("libkrun.h")
    }
}
