//! Debian packages: installing build tools on the system, and fetching a
//! single package with a *private* apt configuration (own source list, own
//! state and cache directories) that leaves the system's apt setup untouched.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::cmd;

/// Makes sure the Debian packages `names` are installed, installing the
/// missing ones with `apt-get` (needs root).
pub fn ensure_packages(names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !is_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::on_path("apt-get") {
        return Err(format!(
            "missing Debian packages {missing:?} and no apt-get here: install them with your package manager"
        )
        .into());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages: run `sudo apt-get install {}`",
            missing.join(" ")
        )
        .into());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    cmd::output(Command::new("apt-get").args(["update", "-q"]))
        .map_err(|e| format!("apt-get update failed (no network?): {e}"))?;
    cmd::output(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    Ok(())
}

fn is_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    // `id -u` keeps this crate free of unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// One package's record in the archive index.
#[derive(Debug, Clone)]
pub struct PackageRecord {
    pub version: String,
    pub sha256: String,
}

/// apt, pointed at one Debian suite through files under `dir` only.
#[derive(Debug)]
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// The archive and keyring every Debian system has.
    const ARCHIVE: &str = "http://deb.debian.org/debian";
    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    pub fn new(dir: &Path, suite: &str) -> Result<Self> {
        if !cmd::on_path("apt-get") || !cmd::on_path("dpkg-deb") {
            return Err(
                "apt-get and dpkg-deb are needed to fetch Debian's libkrunfw5 package; \
                        install libkrunfw (libkrunfw.so.5) yourself or run on Debian/Ubuntu"
                    .into(),
            );
        }
        if !Path::new(Self::KEYRING).exists() {
            return Err(format!(
                "{} is missing: install the debian-archive-keyring package",
                Self::KEYRING
            )
            .into());
        }
        for sub in [
            "etc",
            "state/lists/partial",
            "cache/archives/partial",
            "debs",
        ] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(
            dir.join("etc/sources.list"),
            format!(
                "deb [signed-by={}] {} {suite} main\n",
                Self::KEYRING,
                Self::ARCHIVE
            ),
        )?;
        fs::write(dir.join("status"), "")?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/etc/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State={d}/state"),
            format!("-oDir::State::status={d}/status"),
            format!("-oDir::Cache={d}/cache"),
            format!("-oAPT::Architecture={}", debian_arch()),
            "-oAcquire::Languages=none".into(),
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    /// Downloads the suite's signed package index.
    pub fn update(&self) -> Result<()> {
        cmd::output(
            Command::new("apt-get")
                .args(self.options())
                .args(["-q", "update"]),
        )
        .map_err(|e| format!("cannot download Debian's package index (no network?): {e}"))?;
        Ok(())
    }

    /// The candidate version of `package` and its SHA-256 from the index.
    pub fn record(&self, package: &str) -> Result<PackageRecord> {
        let out = cmd::output(Command::new("apt-cache").args(self.options()).args([
            "show",
            "--no-all-versions",
            package,
        ]))
        .map_err(|e| format!("package {package} not found in the index: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .map(str::to_owned)
        };
        Ok(PackageRecord {
            version: field("Version").ok_or("index record has no Version")?,
            sha256: field("SHA256").ok_or("index record has no SHA256")?,
        })
    }

    /// Downloads `package`'s candidate `.deb` and returns its path.
    pub fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        for old in fs::read_dir(&debs)? {
            fs::remove_file(old?.path())?;
        }
        cmd::output(
            Command::new("apt-get")
                .current_dir(&debs)
                .args(self.options())
                .args(["-q", "download", package]),
        )
        .map_err(|e| format!("cannot download {package}: {e}"))?;
        let deb = fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("apt-get download left no .deb for {package}"))?;
        Ok(deb)
    }
}

/// Debian's name for this machine's architecture.
pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "amd64",
        other => other,
    }
}

/// The multiarch library directory name, e.g. `x86_64-linux-gnu`.
pub fn multiarch() -> String {
    format!("{}-linux-gnu", std::env::consts::ARCH)
}
