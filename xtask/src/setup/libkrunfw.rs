//! libkrunfw, the guest kernel packed as a shared library that libkrun
//! `dlopen`s as `libkrunfw.so.5`. A system copy wins; otherwise Debian's
//! `libkrunfw5` package is fetched from the unstable suite with a private apt
//! setup, hash-checked and unpacked into the prefix.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::apt::{PrivateApt, multiarch};
use super::fsutil::{install_file, replace_symlink, write_atomic};
use crate::Result;
use crate::cmd;
use crate::layout::Layout;

const PACKAGE: &str = "libkrunfw5";
const SONAME: &str = "libkrunfw.so.5";
const SUITE: &str = "unstable";
/// Versions we have checked by hand, with the `.deb`'s SHA-256. A version
/// listed here must match; a newer one is accepted on the signed index's
/// hash alone (unstable moves on, the soname keeps the ABI).
const KNOWN: &[(&str, &str)] = &[(
    "5.5.0+ds-1",
    "20c37f213b618690422dd6c16e7c0a605e568c1e89447e2c7e9e6e44563f1fde",
)];

/// Where the libkrunfw in use comes from.
#[derive(Debug)]
pub enum Provenance {
    System(PathBuf),
    Prefix { path: PathBuf, version: String },
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System(path) => write!(f, "{} (system copy)", path.display()),
            Self::Prefix { path, version } => {
                write!(f, "{} (Debian {PACKAGE} {version})", path.display())
            }
        }
    }
}

fn system_dirs() -> Vec<PathBuf> {
    let multiarch = multiarch();
    vec![
        PathBuf::from("/usr/lib").join(&multiarch),
        PathBuf::from("/lib").join(&multiarch),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/local/lib"),
        PathBuf::from("/usr/local/lib64"),
    ]
}

pub fn ensure(layout: &Layout) -> Result<Provenance> {
    if let Some(path) = system_dirs()
        .into_iter()
        .map(|d| d.join(SONAME))
        .find(|p| p.exists())
    {
        return Ok(Provenance::System(path));
    }
    let lib_dir = layout.lib_dir();
    let installed = lib_dir.join(SONAME);
    let stamp = lib_dir.join(".libkrunfw.stamp");
    if let (true, Ok(version)) = (installed.exists(), fs::read_to_string(&stamp)) {
        return Ok(Provenance::Prefix {
            path: installed,
            version: version.trim().to_owned(),
        });
    }

    eprintln!("setup: fetching Debian's {PACKAGE} ({SUITE}) with a private apt configuration");
    let apt = PrivateApt::new(&layout.apt_dir(), SUITE)?;
    apt.update()?;
    let record = apt.record(PACKAGE)?;
    let deb = apt.download(PACKAGE)?;
    verify(&deb, &record.version, &record.sha256)?;

    let unpacked = layout.apt_dir().join("unpacked");
    let _ = fs::remove_dir_all(&unpacked);
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let lib = find_library(&unpacked.join("usr/lib").join(multiarch()))?;
    let file_name = lib.file_name().ok_or("library without a name")?.to_owned();

    fs::create_dir_all(&lib_dir)?;
    install_file(&lib, &lib_dir.join(&file_name))?;
    replace_symlink(&file_name.to_string_lossy(), &installed)?;
    write_atomic(&stamp, record.version.as_bytes())?;
    let _ = fs::remove_dir_all(&unpacked);
    Ok(Provenance::Prefix {
        path: installed,
        version: record.version,
    })
}

/// Checks the downloaded `.deb` against the index and our own pins.
fn verify(deb: &Path, version: &str, index_sha256: &str) -> Result<()> {
    let actual = sha256_hex(deb)?;
    if actual != index_sha256 {
        return Err(format!(
            "checksum mismatch for {}: index says {index_sha256}, file is {actual}",
            deb.display()
        )
        .into());
    }
    if let Some((_, pinned)) = KNOWN.iter().find(|(v, _)| *v == version) {
        if *pinned != actual {
            return Err(format!(
                "checksum mismatch for {PACKAGE} {version}: pinned {pinned}, got {actual}"
            )
            .into());
        }
    } else {
        eprintln!(
            "setup: note: {PACKAGE} {version} is newer than the pinned versions; verified against the signed index"
        );
    }
    Ok(())
}

fn sha256_hex(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut file = fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The real file (not the soname symlink) `libkrunfw.so.5.x.y` in `dir`.
fn find_library(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)
        .map_err(|e| format!("{PACKAGE} has no {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name().to_string_lossy().starts_with(SONAME)
                && e.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|e| e.path())
        .ok_or_else(|| format!("{PACKAGE} contains no {SONAME}.* file").into())
}
