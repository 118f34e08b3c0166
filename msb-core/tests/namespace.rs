//! Namespace isolation against the real kernel: a busybox rootfs (built from
//! the host's static busybox) run as PID 1 of new namespaces, over an overlay
//! of the tree, with and without a user namespace.
//!
//! These need root (or unprivileged user namespaces and overlay); they run
//! as root on our machines.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_core::Error;
use msb_core::rootfs::{RootfsLayout, RootfsSource, Strategy};
use msb_core::sandbox::namespace::{
    BeforeRelease, NamespaceSpec, SandboxRoot, Stdio, UserNamespace, spawn,
};
use nix::errno::Errno;

/// A minimal image tree: /bin/busybox (static) and its applet links, /etc.
fn busybox_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(tree.join("etc/config"), "original").unwrap();
    fs::write(tree.join("etc/deleteme"), "x").unwrap();
    tree
}

/// A scratch dir with a busybox tree and a prepared overlay layout over it.
struct Fixture {
    dir: tempfile::TempDir,
    tree: PathBuf,
    layout: RootfsLayout,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::in_dir(tempfile::tempdir().unwrap())
    }

    fn in_dir(dir: tempfile::TempDir) -> Fixture {
        let tree = busybox_tree(dir.path());
        let layout = RootfsLayout::for_sandbox(
            &dir.path().join("sandbox"),
            &RootfsSource::Image { tree: tree.clone() },
        )
        .with_strategy(Strategy::Overlay);
        layout.prepare().unwrap();
        Fixture { dir, tree, layout }
    }

    fn spec(&self, script: &str) -> NamespaceSpec {
        NamespaceSpec::new(
            SandboxRoot::Layout(self.layout.clone()),
            ["/bin/busybox", "sh", "-c", script],
        )
    }
}

/// Runs `spec` with stdout (and stderr) on a pipe; returns the output and status.
fn run(mut spec: NamespaceSpec) -> (String, std::process::ExitStatus) {
    let (mut r, w) = std::io::pipe().unwrap();
    let w: OwnedFd = w.into();
    spec.stderr = Stdio::Fd(w.try_clone().unwrap());
    spec.stdout = Stdio::Fd(w);
    spec.stdin = Stdio::Null;
    let mut child = spawn(spec).expect("spawn");
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    (out, status)
}

fn mountinfo() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn pid1_sees_only_its_rootfs(userns: UserNamespace) {
    let fx = Fixture::new();
    let before = mountinfo();
    let mut spec = fx.spec(
        "echo pid=$$; hostname; ls /; cat /proc/1/cmdline; echo; \
         ls /.oldroot 2>&1; id; ls /dev; cat /proc/self/uid_map; \
         ip link show lo 2>&1 | head -1; echo cwd=$(pwd)",
    );
    spec.hostname = "box-1".into();
    spec.user_namespace = userns;
    spec.cwd = "/etc".into();
    let (out, status) = run(spec);
    assert!(status.success(), "{status:?}\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    assert_eq!(lines[1], "box-1", "{out}");
    let root: Vec<&str> = out
        .lines()
        .skip(2)
        .take_while(|l| !l.starts_with("/bin/busybox"))
        .collect();
    for dir in ["bin", "dev", "etc", "proc", "tmp"] {
        assert!(root.contains(&dir), "/ lacks {dir}: {out}");
    }
    for host in ["work", "root", "usr", "home", ".oldroot"] {
        assert!(!root.contains(&host), "/ shows host dir {host}: {out}");
    }
    assert!(
        out.contains("/bin/busybox\0sh\0-c\0") || out.contains("/bin/busyboxsh-c"),
        "{out}"
    );
    assert!(
        out.contains("/.oldroot: No such file or directory"),
        "{out}"
    );
    assert!(out.contains("uid=0 gid=0"), "{out}");
    for dev in ["null", "zero", "urandom", "pts", "shm", "ptmx", "fd"] {
        assert!(out.lines().any(|l| l == dev), "/dev lacks {dev}: {out}");
    }
    let map_line = out
        .lines()
        .find(|l| l.split_whitespace().count() == 3 && l.trim_start().starts_with('0'))
        .unwrap_or_else(|| panic!("no uid_map: {out}"));
    let map: Vec<&str> = map_line.split_whitespace().collect();
    match userns {
        UserNamespace::Auto => assert_eq!(map, ["0", "0", "65536"], "{out}"),
        UserNamespace::Never => assert_eq!(map, ["0", "0", "4294967295"], "{out}"),
    }
    assert!(
        out.contains("LOOPBACK,UP") || out.contains("<LOOPBACK,UP"),
        "{out}"
    );
    assert!(out.contains("cwd=/etc"), "{out}");
    // Nothing of the sandbox's mounts reached the host's mount table.
    let after = mountinfo();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(new.is_empty(), "new host mounts: {new:?}");
    let dir = fx.dir.path().to_str().unwrap();
    assert!(
        !after.iter().any(|l| l.contains(dir)),
        "host mount under {dir}"
    );
}

#[test]
fn pid1_sees_only_its_rootfs_in_a_user_namespace() {
    pid1_sees_only_its_rootfs(UserNamespace::Auto);
}

#[test]
fn pid1_sees_only_its_rootfs_without_a_user_namespace() {
    pid1_sees_only_its_rootfs(UserNamespace::Never);
}

#[test]
fn exit_code_propagates() {
    let fx = Fixture::new();
    let (_, status) = run(fx.spec("exit 7"));
    assert_eq!(status.code(), Some(7));
    let (_, status) = run(fx.spec("exit 0"));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn missing_program_is_a_typed_error() {
    let fx = Fixture::new();
    for argv in [&["/no/such/program"][..], &["no-such-program", "arg"][..]] {
        let started = Instant::now();
        let spec = NamespaceSpec::new(SandboxRoot::Layout(fx.layout.clone()), argv.iter().copied());
        match spawn(spec) {
            Err(Error::NamespaceSetup { step, errno }) => {
                assert_eq!(step, "execve");
                assert_eq!(errno, Errno::ENOENT);
            }
            other => panic!("{argv:?}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A bad cwd names its step too.
    let mut spec = fx.spec("true");
    spec.cwd = "/nonexistent".into();
    match spawn(spec) {
        Err(Error::NamespaceSetup { step, errno }) => {
            assert_eq!((step, errno), ("chdir to cwd", Errno::ENOENT));
        }
        other => panic!("{other:?}"),
    }
    // An unmapped uid in the user namespace.
    let mut spec = fx.spec("true");
    spec.uid = 100_000;
    match spawn(spec) {
        Err(Error::NamespaceSetup { step, errno }) => {
            assert_eq!((step, errno), ("setresuid", Errno::EINVAL));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn runs_as_the_requested_ids() {
    let fx = Fixture::new();
    let mut spec = fx.spec("id -u; id -g; id -G; touch /tmp/f && stat -c %u:%g /tmp/f");
    spec.uid = 1000;
    spec.gid = 1001;
    let (out, status) = run(spec);
    assert!(status.success(), "{out}");
    assert_eq!(out, "1000\n1001\n1001\n1000:1001\n");
}

/// Host pids whose command line starts with `marker` (not the shell that
/// started them, whose `-c` script merely contains it).
fn pids_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .starts_with(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

/// [`pids_with`], polled for up to 5 s until it finds any (the shell may not
/// have exec'd its child yet).
fn wait_for_pids(marker: &str) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_with(marker);
        if !pids.is_empty() || Instant::now() > deadline {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killing_pid1_kills_the_namespace() {
    let fx = Fixture::new();
    let marker = "987651";
    let (r, w) = std::io::pipe().unwrap();
    let mut spec = fx.spec(&format!("(exec sleep {marker}) & echo started; wait"));
    spec.stdout = Stdio::Fd(w.into());
    let mut child = spawn(spec).unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    let sleepers = wait_for_pids(&format!("sleep {marker}"));
    assert_eq!(sleepers.len(), 1, "{sleepers:?}");
    assert_ne!(sleepers[0], child.pid());
    assert!(child.pidfd().is_some());
    child.kill(libc::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // The kernel killed (and reaped) the rest of the PID namespace before
    // PID 1's exit was reported.
    assert!(pids_with(&format!("sleep {marker}")).is_empty());
    assert!(
        child.kill(libc::SIGKILL).is_err(),
        "no signal after reaping"
    );
}

/// Set in the helper process of the test below: where it writes the pid of
/// the child it spawned.
const ORPHAN_HELPER: &str = "MSB_TEST_NAMESPACE_ORPHAN_PIDFILE";

#[test]
fn a_child_whose_parent_dies_before_releasing_it_exits() {
    // The helper: spawns a sandbox whose release hook records the child's
    // pid and never returns, so that the test kills it (the parent) while
    // the child waits for its release.
    if let Ok(pidfile) = std::env::var(ORPHAN_HELPER) {
        let fx =
            Fixture::in_dir(tempfile::tempdir_in(Path::new(&pidfile).parent().unwrap()).unwrap());
        let mut spec = fx.spec("exec sleep 987653");
        spec.before_release = Some(BeforeRelease(Box::new(move |pid| {
            // Written whole, then renamed: the test polls for the file.
            let partial = format!("{pidfile}.partial");
            fs::write(&partial, pid.to_string()).unwrap();
            fs::rename(&partial, &pidfile).unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        })));
        let _ = spawn(spec);
        unreachable!("the release hook never returns");
    }
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_child_whose_parent_dies_before_releasing_it_exits",
        ])
        .env(ORPHAN_HELPER, &pidfile)
        // Nothing of the harness's for an orphan to hold open.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        if let Ok(pid) = fs::read_to_string(&pidfile)
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            break pid.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the helper never spawned its child"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    helper.kill().unwrap();
    helper.wait().unwrap();
    // The child's wait for its release ends with the pipe: it exits (and
    // whoever adopted it reaps it), instead of waiting forever unknown to
    // anyone. It used to hold a copy of the pipe's write end itself.
    let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_dir.exists() {
        let zombie = fs::read_to_string(proc_dir.join("stat"))
            .is_ok_and(|stat| stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')));
        if zombie {
            break;
        }
        if Instant::now() > deadline {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
            panic!("the orphaned child {pid} still ran (killed now)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dropping_the_handle_kills_the_sandbox() {
    let fx = Fixture::new();
    let marker = "987652";
    let mut spec = fx.spec(&format!("exec sleep {marker}"));
    spec.stdout = Stdio::Null;
    let child = spawn(spec).unwrap();
    let pid = child.pid();
    assert_eq!(wait_for_pids(&format!("sleep {marker}")), [pid]);
    drop(child);
    assert!(pids_with(&format!("sleep {marker}")).is_empty());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// Every path under `root` with its type, mode, size and content hash.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let meta = e.path().symlink_metadata().unwrap();
            let content = if meta.is_file() && meta.len() < 4096 {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.insert(
                e.path().strip_prefix(root).unwrap().into(),
                (meta.mode(), meta.len(), content),
            );
        }
    }
    out
}

#[test]
fn overlay_leaves_the_image_tree_unchanged() {
    let fx = Fixture::new();
    let before = snapshot(&fx.tree);
    let (out, status) = run(fx.spec(
        "echo new > /new.txt && echo changed > /etc/config && rm /etc/deleteme && \
         mkdir /newdir && rm /bin/ls && cat /etc/config && echo ok",
    ));
    assert!(status.success(), "{out}");
    assert_eq!(out, "changed\nok\n");
    assert_eq!(snapshot(&fx.tree), before, "the image tree changed");
    let upper = &fx.layout.upper;
    assert_eq!(fs::read_to_string(upper.join("new.txt")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(upper.join("etc/config")).unwrap(),
        "changed\n"
    );
    // A second sandbox over the same layout sees the first one's changes.
    let (out, _) = run(fx.spec("cat /new.txt; ls /bin/ls 2>&1"));
    assert!(out.starts_with("new\n"), "{out}");
    assert!(out.contains("No such file"), "{out}");
}

#[test]
fn plain_directory_root_and_stdio_null() {
    let dir = tempfile::tempdir().unwrap();
    let tree = busybox_tree(dir.path());
    let mut spec = NamespaceSpec::new(
        SandboxRoot::Directory(tree.clone()),
        [
            "sh",
            "-c",
            "read x; echo \"[$x]\" > /out; echo $FOO >> /out",
        ],
    );
    spec.env.push(("FOO".into(), "bar".into()));
    spec.stdin = Stdio::Null;
    spec.stdout = Stdio::Null;
    let mut child = spawn(spec).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(fs::read_to_string(tree.join("out")).unwrap(), "[]\nbar\n");
}

#[test]
fn invalid_specs_are_refused_before_cloning() {
    let fx = Fixture::new();
    let spec = NamespaceSpec::new(SandboxRoot::Layout(fx.layout.clone()), Vec::<String>::new());
    assert!(matches!(
        spawn(spec),
        Err(Error::InvalidNamespaceSpec { field: "argv", .. })
    ));
    let mut spec = fx.spec("true");
    spec.hostname = "h".repeat(65);
    assert!(matches!(
        spawn(spec),
        Err(Error::InvalidNamespaceSpec {
            field: "hostname",
            ..
        })
    ));
}
