//! `cargo xtask demo`: the main job. Sets up, builds the static agent and
//! `msb`, makes a busybox root filesystem (Debian's `busybox-static`), then
//! boots a sandbox with the best isolation this host allows (`msb run
//! --isolation auto`, which says which and why) and runs a command in it.
//!
//! ```text
//! target/msb/demo/rootfs   the busybox rootfs (made once)
//! target/msb/demo/home     the demo's state home (MSB_HOME)
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::Result;
use crate::cmd;
use crate::layout::Layout;
use crate::setup;

/// Applets linked in the demo rootfs.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "uname", "hostname", "id", "ps", "true", "sleep",
];

pub fn run(root: &Path, command: &[String]) -> Result<()> {
    let started = Instant::now();
    setup::run(root)?;
    setup::ensure_packages(&["busybox-static", "passt", "iproute2"])?;
    crate::agent::build(root)?;
    cmd::run(Command::new(cmd::cargo()).current_dir(root).args([
        "build",
        "--quiet",
        "--package",
        "microsandbox",
        "--bins",
    ]))?;
    let demo = root.join("target").join("msb").join("demo");
    let rootfs = demo.join("rootfs");
    make_rootfs(&rootfs)?;
    eprintln!("xtask demo: ready in {:.1?}", started.elapsed());

    let script = "echo \"hello from $(hostname): $(uname -sr), pid $$, uid $(id -u)\"; \
                  echo processes:; ps -o pid,args";
    let mut msb = Command::new(root.join("target").join("debug").join("msb"));
    msb.env("MSB_HOME", demo.join("home"))
        .env("MSB_LIB_DIR", Layout::new(root).lib_dir())
        .args(["run", "--isolation", "auto", "--name", "demo", "--replace"])
        .arg(&rootfs)
        .arg("--");
    if command.is_empty() {
        msb.args(["sh", "-c", script]);
    } else {
        msb.args(command);
    }
    let run_started = Instant::now();
    let status = msb.status().map_err(|e| format!("cannot run msb: {e}"))?;
    eprintln!(
        "xtask demo: msb run took {:.0?} (create, exec, stop, remove)",
        run_started.elapsed()
    );
    if !status.success() {
        return Err(format!("msb run failed: {status}").into());
    }
    Ok(())
}

/// A minimal busybox rootfs at `dir`, made once (atomically).
fn make_rootfs(dir: &Path) -> Result<()> {
    if dir.join("bin/busybox").exists() {
        return Ok(());
    }
    let parent = dir.parent().expect("rootfs has a parent");
    let tmp = parent.join("rootfs.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |what: &str, e: std::io::Error| format!("demo rootfs: {what}: {e}");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(tmp.join(sub)).map_err(|e| io(sub, e))?;
    }
    std::fs::copy("/bin/busybox", tmp.join("bin/busybox")).map_err(|e| io("copy busybox", e))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet))
            .map_err(|e| io(applet, e))?;
    }
    std::fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| io("passwd", e))?;
    std::fs::write(tmp.join("etc/group"), "root:x:0:\n").map_err(|e| io("group", e))?;
    std::fs::rename(&tmp, dir).map_err(|e| io("rename", e).into())
}
