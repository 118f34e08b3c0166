//! cgroup limits against the real kernel (as root): detection, joining a
//! cgroup, the PIDs, memory and CPU limits, removal; and the typed errors for
//! limits that cannot be enforced (no root needed).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msb_core::Error;
use msb_core::sandbox::cgroup::{
    CgroupLayout, CgroupVersion, Controller, Limits, SandboxCgroup, UnavailableReason,
};

/// The host layout when running as root with memory, cpu and pids usable;
/// otherwise prints `skipped: <reason>` and returns `None`.
fn root_layout(test: &str) -> Option<CgroupLayout> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: not root");
        return None;
    }
    let layout = CgroupLayout::detect().unwrap();
    for c in Controller::ALL {
        if let Err(e) = layout.placement(c) {
            println!("skipped: {test}: {e}");
            return None;
        }
    }
    Some(layout)
}

/// A per-test cgroup name, unique across concurrent test runs.
fn name(test: &str) -> String {
    format!("test-{test}-{}", std::process::id())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// Spawns `sh -c script` that first waits for a line on stdin, so that it
/// can be put into a cgroup before it does anything.
fn gated_sh(script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("read go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn release(child: &mut Child) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

#[test]
fn detection_on_this_host() {
    let layout = CgroupLayout::detect().unwrap();
    println!("layout: {layout:#?}");
    for c in Controller::ALL {
        println!("{c}: {:?}", layout.placement(c).map_err(|e| e.to_string()));
    }
    let is_mount = |p: &str| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p))
    };
    if is_mount("/sys/fs/cgroup/unified") && is_mount("/sys/fs/cgroup/memory") {
        // Our hybrid hosts: memory, cpu and pids are v1 hierarchies.
        let CgroupLayout::Hybrid { unified, .. } = &layout else {
            panic!("expected Hybrid, got {layout:?}");
        };
        assert_eq!(unified, Path::new("/sys/fs/cgroup/unified"));
        for c in Controller::ALL {
            let p = layout.placement(c).unwrap();
            assert_eq!(p.version, CgroupVersion::V1, "{c}");
            assert_eq!(p.hierarchy, Path::new("/sys/fs/cgroup").join(c.name()));
        }
    } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(matches!(layout, CgroupLayout::V2 { .. }), "{layout:?}");
    }
}

#[test]
fn from_mountinfo_classifies_and_unescapes() {
    let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
              35 31 0:32 / /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n\
              40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n";
    let layout = CgroupLayout::from_mountinfo(v1).unwrap();
    let CgroupLayout::V1 { controllers } = &layout else {
        panic!("{layout:?}")
    };
    assert_eq!(
        controllers.get("cpu").unwrap(),
        Path::new("/sys/fs/cgroup/cpu,cpuacct")
    );
    assert_eq!(
        controllers.get("memory").unwrap(),
        Path::new("/sys/fs/cgroup/my mem")
    );
    assert_eq!(controllers.len(), 3, "{controllers:?}");
    assert!(matches!(
        layout.placement(Controller::Pids),
        Err(Error::CgroupUnavailable {
            controller: Controller::Pids,
            reason: UnavailableReason::NotMounted { unified: None }
        })
    ));
    assert_eq!(
        CgroupLayout::from_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap(),
        CgroupLayout::None
    );
}

#[test]
fn unavailable_limits_are_typed_errors() {
    let limits = Limits {
        memory_bytes: Some(1 << 20),
        cpus: Some(1.0),
        pids_max: Some(10),
    };
    // A v1 host without a memory hierarchy.
    let v1 = CgroupLayout::V1 {
        controllers: BTreeMap::from([
            ("cpu".to_owned(), PathBuf::from("/nonexistent/cpu")),
            ("pids".to_owned(), PathBuf::from("/nonexistent/pids")),
        ]),
    };
    let err = SandboxCgroup::create(&v1, "x", &limits).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CgroupUnavailable {
                controller: Controller::Memory,
                reason: UnavailableReason::NotMounted { .. }
            }
        ),
        "{err:?}"
    );
    println!("{err}");
    // Without the memory limit the plan is fine.
    let plan = v1
        .plan(&Limits {
            memory_bytes: None,
            ..limits
        })
        .unwrap();
    assert_eq!(plan.len(), 2);

    // A hybrid host whose unified hierarchy carries nothing and no pids v1.
    let hybrid = CgroupLayout::Hybrid {
        v1: BTreeMap::from([("memory".to_owned(), PathBuf::from("/nonexistent/m"))]),
        unified: PathBuf::from("/nonexistent/unified"),
        unified_controllers: vec!["hugetlb".into()],
    };
    assert!(matches!(
        hybrid.plan(&Limits {
            cpus: None,
            ..limits
        }),
        Err(Error::CgroupUnavailable {
            controller: Controller::Pids,
            reason: UnavailableReason::NotMounted { unified: Some(_) }
        })
    ));
    // v2 without the cpu controller delegated.
    let v2 = CgroupLayout::V2 {
        root: PathBuf::from("/nonexistent"),
        controllers: vec!["memory".into(), "pids".into()],
    };
    assert!(matches!(
        v2.plan(&limits),
        Err(Error::CgroupUnavailable {
            controller: Controller::Cpu,
            reason: UnavailableReason::NotInV2 { .. }
        })
    ));
    assert!(matches!(
        CgroupLayout::None.plan(&limits),
        Err(Error::CgroupUnavailable {
            reason: UnavailableReason::NoCgroupFs,
            ..
        })
    ));
    // No limits: nothing needed, even with no cgroups at all.
    assert!(
        CgroupLayout::None
            .plan(&Limits::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn invalid_names_and_values() {
    let layout = CgroupLayout::None;
    for bad in ["a/b", "", "..", "../x"] {
        let err = SandboxCgroup::create(&layout, bad, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSandboxName { .. }),
            "{bad}: {err:?}"
        );
    }
    for cpus in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let limits = Limits {
            cpus: Some(cpus),
            ..Limits::default()
        };
        assert!(matches!(
            layout.plan(&limits),
            Err(Error::InvalidCgroupLimit { limit: "cpus", .. })
        ));
    }
}

/// The v2 file formats, against a fake hierarchy in a temporary directory.
#[test]
fn v2_files_written_in_fake_hierarchy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let layout = CgroupLayout::V2 {
        root: root.clone(),
        controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
    };
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        cpus: Some(0.5),
        pids_max: Some(5),
    };
    let cg = SandboxCgroup::create(&layout, "v2", &limits).unwrap();
    let dir = root.join("microsandbox/v2");
    assert_eq!(cg.paths(), vec![dir.as_path()]);
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(
        read(&root.join("microsandbox/cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(read(&dir.join("memory.max")), (32u64 << 20).to_string());
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("pids.max")), "5");
    cg.add_pid(4242).unwrap();
    assert_eq!(read(&dir.join("cgroup.procs")), "4242");
}

#[test]
fn child_joins_cgroup() {
    let Some(layout) = root_layout("child_joins_cgroup") else {
        return;
    };
    let limits = Limits {
        pids_max: Some(5),
        ..Limits::default()
    };
    let mut cg = SandboxCgroup::create(&layout, &name("join"), &limits).unwrap();
    let paths: Vec<PathBuf> = cg.paths().iter().map(|p| p.to_path_buf()).collect();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    cg.add_pid(child.id()).unwrap();
    for p in &paths {
        let procs = read(&p.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == child.id().to_string()),
            "{}: {procs}",
            p.display()
        );
    }
    assert_eq!(cg.pids().unwrap(), vec![child.id()]);
    assert_eq!(cg.stats().unwrap().pids, Some(1));

    // Still populated: a typed error after the retry window.
    let err = cg.remove().unwrap_err();
    assert!(
        matches!(&err, Error::CgroupBusy { pids, .. } if pids == &[child.id()]),
        "{err:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    cg.remove().unwrap();
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn pids_limit_stops_forks() {
    let Some(layout) = root_layout("pids_limit_stops_forks") else {
        return;
    };
    let limits = Limits {
        pids_max: Some(5),
        ..Limits::default()
    };
    let mut cg = SandboxCgroup::create(&layout, &name("pids"), &limits).unwrap();
    let pids_dir = cg.path_of(Controller::Pids).unwrap().to_path_buf();
    assert_eq!(read(&pids_dir.join("pids.max")), "5");

    let mut child = gated_sh("for i in $(seq 20); do sleep 5 & done; wait");
    cg.add_pid(child.id()).unwrap();
    release(&mut child);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut max_seen = 0;
    let status = loop {
        max_seen = max_seen.max(cg.stats().unwrap().pids.unwrap());
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "shell did not finish");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    println!("status {status:?}, max pids.current {max_seen}, stderr: {stderr}");
    assert!(max_seen <= 5, "pids.current reached {max_seen}");
    assert!(
        stderr.to_lowercase().contains("fork"),
        "no fork failure reported: {stderr:?}"
    );
    let events = read(&pids_dir.join("pids.events"));
    assert!(events != "max 0", "pids.events: {events}");

    cg.kill_all().unwrap();
    cg.remove().unwrap();
    assert!(!pids_dir.exists());
}

#[test]
fn memory_limit_oom_kills() {
    let Some(layout) = root_layout("memory_limit_oom_kills") else {
        return;
    };
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let mut cg = SandboxCgroup::create(&layout, &name("mem"), &limits).unwrap();
    let mem_dir = cg.path_of(Controller::Memory).unwrap().to_path_buf();
    let file = match cg.placements()[0].version {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    };
    assert_eq!(read(&mem_dir.join(file)), (32u64 << 20).to_string());

    let mut child = gated_sh("x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived >&2");
    cg.add_pid(child.id()).unwrap();
    release(&mut child);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let stats = cg.stats().unwrap();
    println!("status {status:?}, stats {stats:?}, stderr: {stderr}");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(stats.oom_kills.unwrap_or(1) >= 1, "{stats:?}");

    cg.kill_all().unwrap();
    cg.remove().unwrap();
    assert!(!mem_dir.exists());
}

#[test]
fn cpu_quota_written_and_all_removed() {
    let Some(layout) = root_layout("cpu_quota_written_and_all_removed") else {
        return;
    };
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids_max: Some(100),
    };
    let mut cg = SandboxCgroup::create(&layout, &name("cpu"), &limits).unwrap();
    let cpu_dir = cg.path_of(Controller::Cpu).unwrap();
    match layout.placement(Controller::Cpu).unwrap().version {
        CgroupVersion::V1 => {
            assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(&cpu_dir.join("cpu.cfs_period_us")), "100000");
        }
        CgroupVersion::V2 => assert_eq!(read(&cpu_dir.join("cpu.max")), "50000 100000"),
    }
    let paths: Vec<PathBuf> = cg.paths().iter().map(|p| p.to_path_buf()).collect();
    println!("paths: {paths:?}");
    assert!(paths.iter().all(|p| p.is_dir()));
    cg.remove().unwrap();
    cg.remove().unwrap(); // idempotent
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }

    // Drop removes too, and a leftover empty cgroup of the name is reused.
    let cg = SandboxCgroup::create(&layout, &name("drop"), &limits).unwrap();
    let paths: Vec<PathBuf> = cg.paths().iter().map(|p| p.to_path_buf()).collect();
    std::mem::forget(cg);
    let cg = SandboxCgroup::create(&layout, &name("drop"), &limits).unwrap();
    drop(cg);
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}
