//! `kill -9` of the calling program at awkward moments, driven through the
//! `msb` binary with namespace isolation and images from a registry on
//! loopback: during a pull, during sandbox boot, and during an exec.
//!
//! Afterwards: the next `msb pull` succeeds and `msb image ls` is
//! consistent; no sandbox process or agent is left running for the test's
//! home, nothing of it is left mounted, and `msb ls` / `msb rm` work.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_utils::images::{Compression, ImageBuilder, LayerBuilder};
use test_utils::proxy::FaultyProxy;

mod common;

use common::{env, msb, msb_command, msb_ok, text};

/// SIGKILL and reap.
fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The processes (other than ourselves) whose command line or root
/// directory is under `home`: sandbox processes (`msb-sandbox <dir>`) and
/// agents (their root is the sandbox's rootfs).
fn processes_of(home: &Path) -> Vec<String> {
    let home = home.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|b| text(&b).replace('\0', " "))
            .unwrap_or_default();
        let root = std::fs::read_link(dir.join("root"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Zombies have neither; they are not running anything.
        if cmdline.contains(&home) || root.starts_with(&home) {
            out.push(format!("{name}: {cmdline} (root {root})"));
        }
    }
    out
}

/// Mount points under `home` in our mount namespace.
fn mounts_of(home: &Path) -> Vec<String> {
    let home = home.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&home)))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) until nothing of `home` runs or is mounted.
fn assert_nothing_leaked(home: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (procs, mounts) = (processes_of(home), mounts_of(home));
        if procs.is_empty() && mounts.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: leaked processes {procs:#?} and mounts {mounts:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `msb ls -q` works and returns the names.
fn ls(home: &Path) -> Vec<String> {
    let out = msb(home, &["ls", "-q"]);
    assert!(out.status.success(), "msb ls: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// Removes every listed sandbox with `msb rm` (each must succeed), then
/// checks the list is empty.
fn rm_all(home: &Path, what: &str) {
    for name in ls(home) {
        let out = msb(home, &["rm", &name]);
        assert!(
            out.status.success(),
            "{what}: msb rm {name}: {}",
            text(&out.stderr)
        );
    }
    assert!(ls(home).is_empty(), "{what}: sandboxes left");
}

use test_utils::fuzz::noise;

#[test]
fn kill_9_during_pull_then_pull_again() {
    let env = env("faults_pull");
    let home = env.home();
    let registry = env.registry();
    // Two big layers, so that a kill lands in downloads, unpacking and
    // commits, depending on the moment.
    let mut a = LayerBuilder::new();
    a.file("a/noise", &noise(24 << 20, 1), 0o644);
    let mut b = LayerBuilder::new();
    b.file("b/noise", &noise(24 << 20, 2), 0o644);
    for i in 0..2000 {
        b.file(&format!("b/many/{i}"), format!("{i}").as_bytes(), 0o644);
    }
    ImageBuilder::new()
        .layer(a, Compression::Gzip)
        .layer(b, Compression::Gzip)
        .push_blocking(registry, "test/big", "v1")
        .unwrap();
    // Through a proxy that stalls, so one kill surely lands mid-blob.
    let proxy = FaultyProxy::start(registry.addr());
    let direct = registry.reference("test/big", "v1");
    let stalled = format!("{}/test/big:v1", proxy.host());

    let mut cases: Vec<(String, Duration)> = [0u64, 30, 100, 250, 500, 900, 1500]
        .iter()
        .map(|ms| (direct.clone(), Duration::from_millis(*ms)))
        .collect();
    cases.push((stalled.clone(), Duration::from_millis(800)));
    for (reference, after) in cases {
        let what = format!("kill -9 after {after:?} pulling {reference}");
        if reference == stalled {
            proxy.stall_after(4 << 20);
        }
        let mut child = msb_command(home, &["pull", &reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        kill9(&mut child);
        proxy.pass_through();
        let tmp = home.join("images/tmp");
        let tmp_entries = || -> Vec<std::ffi::OsString> {
            std::fs::read_dir(&tmp)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let killed_with = tmp_entries();

        // Whatever the moment, the listing works and shows the image at
        // most once; the next pull succeeds and lists it exactly once.
        let out = msb(home, &["image", "ls", "-q"]);
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        let listed = text(&out.stdout);
        assert!(
            listed.lines().filter(|l| l.contains("test/big")).count() <= 1,
            "{what}: {listed}"
        );
        let out = msb(home, &["pull", &reference]);
        assert!(
            out.status.success(),
            "{what}: pull again: {}",
            text(&out.stderr)
        );
        let out = msb(home, &["image", "ls", "-q"]);
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        let listed = text(&out.stdout);
        let name = reference.split('/').next().unwrap();
        assert_eq!(
            listed
                .lines()
                .filter(|l| l.starts_with(name) && l.contains("test/big"))
                .count(),
            1,
            "{what}: {listed}"
        );
        eprintln!(
            "{what}: {} entries in images/tmp when killed, {} after the next pull",
            killed_with.len(),
            tmp_entries().len()
        );
        // Untag and collect, so the next round starts from an empty store
        // (gc runs with the killed pull's leftovers present).
        let out = msb(home, &["image", "rm", &reference]);
        assert!(
            out.status.success(),
            "{what}: image rm: {}",
            text(&out.stderr)
        );
        let out = msb(home, &["image", "gc"]);
        assert!(out.status.success(), "{what}: gc: {}", text(&out.stderr));
        assert!(
            !home
                .join("images/trees")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some())
        );
        // The killed pull's partial blobs and trees are collected at once
        // (their process is gone), not after gc's grace period.
        assert!(tmp_entries().is_empty(), "{what}: {:?}", tmp_entries());
    }
    assert_nothing_leaked(home, "pulls");
}

#[test]
fn kill_9_of_the_creator_during_boot_stops_the_sandbox() {
    let env = env("faults_boot");
    let home = env.home();
    let image = env.busybox();
    // Pull first, so the kills land in the sandbox start itself.
    msb_ok(home, &["pull", &image]);

    for (i, ms) in [0u64, 20, 60, 120, 250, 500, 1000].into_iter().enumerate() {
        let what = format!("kill -9 of msb run after {ms} ms");
        let name = format!("boot-{i}");
        let mut child = msb_command(
            home,
            &["run", "--name", &name, &image, "--", "sleep", "600"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        kill9(&mut child);
        // A non-detached sandbox stops when its creator dies.
        assert_nothing_leaked(home, &what);
        let out = msb(home, &["ls"]);
        eprintln!("{what}: msb ls:\n{}", text(&out.stdout));
        rm_all(home, &what);
    }
}

#[test]
fn kill_9_during_exec_leaves_the_sandbox_usable() {
    let env = env("faults_exec");
    let home = env.home();
    let image = env.busybox();

    // An ephemeral `msb run` killed while its command runs.
    let mut child = msb_command(
        home,
        &[
            "run",
            "--name",
            "ephemeral",
            &image,
            "--",
            "sh",
            "-c",
            "echo ready; sleep 600",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    kill9(&mut child);
    assert_nothing_leaked(home, "kill -9 of msb run during its command");
    rm_all(home, "kill -9 of msb run during its command");

    // `msb exec` into a created sandbox, killed mid-command.
    msb_ok(home, &["create", "--name", "box", &image]);
    let mut child = msb_command(
        home,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 600",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    kill9(&mut child);

    // The sandbox still answers, and the killed client's command does not
    // outlive it for long.
    let out = msb_ok(home, &["exec", "box", "--", "echo", "alive"]);
    assert_eq!(text(&out.stdout), "alive\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = msb_ok(home, &["exec", "box", "--", "ps"]);
        let ps = text(&out.stdout);
        if !ps.contains("sleep 600") {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("FINDING: the command of a killed `msb exec` keeps running:\n{ps}");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ls(home), ["box"]);
    msb_ok(home, &["rm", "-f", "box"]);
    assert!(ls(home).is_empty());
    assert_nothing_leaked(home, "kill -9 of msb exec");
}

/// The host pid of the agent of sandbox `name` (the child of its sandbox
/// process running `/.msb/agent`).
fn agent_pid(home: &Path, name: &str) -> u32 {
    let out = msb(home, &["inspect", name]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sandbox_pid = info["pid"].as_u64().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid = stat
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<u64>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(sandbox_pid) && text(&cmdline).starts_with("/.msb/agent")
        })
        .expect("the agent process")
}

fn status_of(home: &Path, name: &str) -> String {
    let out = msb(home, &["inspect", name]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["status"].as_str().unwrap().to_owned()
}

#[test]
fn kill_9_of_the_agent_is_a_crash_with_nothing_left() {
    let env = env("faults_agent");
    let home = env.home();
    let image = env.busybox();
    msb_ok(home, &["create", "--name", "victim", &image]);
    let agent = agent_pid(home, "victim");
    let status = Command::new("kill")
        .args(["-9", &agent.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The sandbox process notices at once and records the crash.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(home, "victim") != "crashed" {
        assert!(
            Instant::now() < deadline,
            "still {}",
            status_of(home, "victim")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_nothing_leaked(home, "kill -9 of the agent");
    // It can be started again, or removed.
    msb_ok(home, &["start", "victim"]);
    let out = msb(home, &["exec", "victim", "--", "echo", "back"]);
    assert_eq!(text(&out.stdout), "back\n", "{}", text(&out.stderr));
    msb_ok(home, &["rm", "--force", "victim"]);
    assert_nothing_leaked(home, "rm after the agent's crash");
}

#[test]
fn kill_9_of_the_creator_during_replace_leaves_a_usable_name() {
    let env = env("faults_replace");
    let home = env.home();
    let image = env.busybox();
    msb_ok(home, &["create", "--name", "svc", &image]);
    // A process that ignores SIGTERM: replacing waits out the grace.
    let out = msb(
        home,
        &[
            "exec",
            "svc",
            "--",
            "sh",
            "-c",
            "busybox setsid sh -c \"trap '' TERM; sleep 600\" >/dev/null 2>&1 &",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for ms in [0u64, 100, 400, 1500] {
        let what = format!("kill -9 of msb create --replace after {ms} ms");
        let mut child = msb_command(
            home,
            &[
                "create",
                "--name",
                "svc",
                "--replace-with-grace",
                "3",
                &image,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        kill9(&mut child);
        // Whatever step it was at, the name is in one consistent state:
        // listed at most once, and a replace with no grace takes it over.
        let names = ls(home);
        assert!(names.len() <= 1, "{what}: {names:?}");
        let out = msb(
            home,
            &[
                "create",
                "--name",
                "svc",
                "--replace-with-grace",
                "0",
                &image,
            ],
        );
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        assert_eq!(status_of(home, "svc"), "running", "{what}");
    }
    msb_ok(home, &["rm", "--force", "svc"]);
    assert_nothing_leaked(home, "replace faults");
}

#[test]
fn a_sandbox_process_without_its_creators_go_ahead_touches_nothing() {
    // What a sandbox process sees when its creator is killed before it
    // recorded the process in the state: its standard input ends before
    // the go-ahead. It must exit at once, without booting anything in a
    // directory that may already belong to the sandbox that replaced it.
    let env = env("faults_go_ahead");
    let home = env.home();
    let image = env.busybox();
    msb_ok(home, &["create", "--name", "idle", &image]);
    msb_ok(home, &["stop", "idle"]);
    let dir = home.join("sandboxes/idle");
    assert!(!dir.join("agent.sock").exists());
    let before = std::fs::read_to_string(dir.join("runtime.log")).unwrap_or_default();

    let mut child = Command::new(env!("CARGO_BIN_EXE_msb-sandbox"))
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            kill9(&mut child);
            panic!("the sandbox process ran on without its go-ahead");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "no boot report: {}",
        text(&out.stdout)
    );
    assert!(
        !dir.join("agent.sock").exists(),
        "it bound the agent socket"
    );
    assert_eq!(status_of(home, "idle"), "stopped");
    assert_eq!(
        std::fs::read_to_string(dir.join("runtime.log")).unwrap_or_default(),
        before
    );
    assert_nothing_leaked(home, "a sandbox process without its go-ahead");

    // With the go-ahead (what the library writes), the same sandbox starts.
    msb_ok(home, &["start", "idle"]);
    assert_eq!(status_of(home, "idle"), "running");
    msb_ok(home, &["rm", "--force", "idle"]);
    assert_nothing_leaked(home, "go-ahead test");
}
