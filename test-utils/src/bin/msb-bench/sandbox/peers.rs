//! The peers of the `sandbox` suite: `bwrap` and `crun` running a command
//! to completion in the same busybox rootfs, timed from spawn to reap.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Result;

/// One peer: a label and how to build its command for run `i`.
pub struct Peer {
    /// What the table calls it.
    pub label: String,
    program: &'static str,
    /// The arguments of run `i` (crun needs a fresh container id per run).
    args: Box<dyn Fn(usize) -> Vec<OsString>>,
}

impl Peer {
    /// Runs it once to completion and returns its wall time, or its first
    /// error line when it fails.
    pub fn run(&self, i: usize) -> Result<Duration, String> {
        time_run(Command::new(self.program).args((self.args)(i)))
    }
}

/// `bwrap --unshare-all --die-with-parent --bind <rootfs> / --proc /proc
/// --dev /dev <command>`.
pub fn bwrap(rootfs: &Path, label: &str, command: &[&str]) -> Peer {
    let mut args: Vec<OsString> = ["--unshare-all", "--die-with-parent", "--bind"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(rootfs.into());
    args.extend(
        ["/", "--proc", "/proc", "--dev", "/dev"]
            .iter()
            .map(OsString::from),
    );
    args.extend(command.iter().map(OsString::from));
    Peer {
        label: label.to_owned(),
        program: "bwrap",
        args: Box::new(move |_| args.clone()),
    }
}

/// `crun [global…] run --bundle <bundle> msb-bench-<pid>-<i>` running
/// `/bin/true`, with a bundle written under `scratch` whose config roots
/// it at `rootfs` with pid, mount, ipc, uts, network and user namespaces.
///
/// Every variant of the global options in `variants` is tried once; the
/// first that runs is returned. Otherwise the error is the first variant's
/// first error line (crun 1.8 refuses hybrid cgroup hierarchies).
pub fn crun(rootfs: &Path, scratch: &Path, variants: &[&[&str]]) -> Result<Peer, String> {
    let bundle = scratch.join("crun-bundle");
    write_bundle(&bundle, rootfs).map_err(|e| format!("writing the bundle: {e}"))?;
    let mut first_error = None;
    for (v, globals) in variants.iter().enumerate() {
        let globals: Vec<OsString> = globals.iter().map(OsString::from).collect();
        let bundle = bundle.clone();
        let args = move |i: usize| {
            let mut args = globals.clone();
            args.extend(["run".into(), "--bundle".into(), bundle.clone().into()]);
            args.push(format!("msb-bench-{}-{v}-{i}", std::process::id()).into());
            args
        };
        let label = match variants[v] {
            [] => "crun run /bin/true".to_owned(),
            g => format!("crun {} run /bin/true", g.join(" ")),
        };
        let peer = Peer {
            label,
            program: "crun",
            args: Box::new(args),
        };
        // A probe run (id suffix usize::MAX), not measured.
        match peer.run(usize::MAX) {
            Ok(_) => return Ok(peer),
            Err(e) => {
                eprintln!("msb-bench: {}: {e}", peer.label);
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| "no variant to try".to_owned()))
}

/// A minimal OCI runtime bundle at `bundle` running `/bin/true` in
/// `rootfs` (read-only).
fn write_bundle(bundle: &Path, rootfs: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let map = json!([{ "containerID": 0, "hostID": 0, "size": 65536 }]);
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": { "path": PathBuf::from(rootfs), "readonly": true },
        "hostname": "msb-bench",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]
            }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" },
                { "type": "mount" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "network" },
                { "type": "user" }
            ],
            "uidMappings": map,
            "gidMappings": map
        }
    });
    let text = serde_json::to_vec_pretty(&config).expect("a config serializes");
    std::fs::write(bundle.join("config.json"), text)
}

/// Runs `cmd` to completion (output captured), returning its wall time
/// from spawn to reap, or its first stderr line when it fails.
fn time_run(cmd: &mut Command) -> Result<Duration, String> {
    let started = Instant::now();
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let wall = started.elapsed();
    if output.status.success() {
        return Ok(wall);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}", output.status)))
}
