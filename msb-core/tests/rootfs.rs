//! Per-sandbox rootfs assembly against the real kernel: overlay mounts made
//! in a private mount namespace (a child process started through util-linux
//! `unshare`), the copy fallback, agent injection and cleanup.
//!
//! The test harness is multi-threaded and a mount namespace must not leak
//! into the other tests, so every mount happens in a re-executed copy of this
//! binary that runs only [`child_entry`], with `MSB_ROOTFS_CHILD` naming its
//! role. Run normally, `child_entry` does nothing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use msb_core::Error;
use msb_core::rootfs::{
    AGENT_PATH, RootfsErrorKind, RootfsLayout, RootfsSource, Strategy, cleanup, copy_tree,
};

const ROLE: &str = "MSB_ROOTFS_CHILD";
const LOWER: &str = "MSB_ROOTFS_LOWER";
const SANDBOX: &str = "MSB_ROOTFS_SANDBOX";
const USERNS: &str = "MSB_ROOTFS_USERNS";

// ---------------------------------------------------------------------------
// The child side: runs inside `unshare --mount --propagation private`.

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return; // run as an ordinary test: nothing to do
    };
    let lower = PathBuf::from(std::env::var(LOWER).unwrap());
    let sandbox = PathBuf::from(std::env::var(SANDBOX).unwrap());
    if role == "btrfs" {
        btrfs_child(&lower, &sandbox);
        println!("child {role}: done");
        return;
    }
    let layout = RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(lower))
        .with_strategy(Strategy::Overlay);
    layout.mount_overlay().expect("overlay mounts in the child");
    let m = &layout.merged;
    let line = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap()))
        .expect("the overlay is in this namespace's mount table")
        .to_owned();
    assert!(line.contains(" - overlay overlay "), "{line}");
    let userns = std::env::var_os(USERNS).is_some();
    assert_eq!(line.contains("userxattr"), userns, "{line}");
    match role.as_str() {
        "edit" => {
            fs::write(m.join("new.txt"), "made in the sandbox").unwrap();
            fs::create_dir(m.join("newdir")).unwrap();
            fs::remove_file(m.join("etc/deleteme")).unwrap();
            fs::write(m.join("etc/config"), "changed").unwrap(); // copy-up
            assert!(!m.join("etc/deleteme").exists());
            let agent = fs::read(m.join(AGENT_PATH.trim_start_matches('/'))).unwrap();
            assert_eq!(agent, b"#!/bin/sh\necho agent\n");
            let mode = fs::metadata(m.join(".msb/agent"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
            // Cleanup refuses to walk into the mounted overlay.
            match cleanup(&sandbox) {
                Err(Error::InvalidRootfs {
                    reason: RootfsErrorKind::StillMounted,
                    ..
                }) => {}
                other => panic!("cleanup of a mounted rootfs: {other:?}"),
            }
        }
        "count" => {
            let n = fs::read_dir(m.join("d0")).unwrap().count();
            assert_eq!(n, 1000, "the merged view shows the lower's files");
        }
        "busybox" => {
            let run = |script: &str| {
                let out = Command::new("chroot")
                    .arg(m)
                    .args(["/bin/busybox", "sh", "-c", script])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{script}: {out:?}");
                String::from_utf8(out.stdout).unwrap()
            };
            let status = Command::new("chroot")
                .arg(m)
                .args(["/bin/busybox", "true"])
                .status()
                .unwrap();
            assert!(status.success(), "busybox runs from the merged root");
            assert_eq!(run("test -x /.msb/agent && echo ok"), "ok\n");
            run("echo hi > /hello && rm /bin/busybox.deleteme 2>/dev/null; true");
            assert_eq!(run("cat /hello"), "hi\n");
        }
        other => panic!("unknown role {other}"),
    }
    println!("child {role}: done");
}

/// On a loop-mounted btrfs (mounted in this private namespace only): the
/// reflink strategy shares every file's data with the tree.
fn btrfs_child(scratch: &Path, sandbox_rel: &Path) {
    let image = scratch.join("btrfs.img");
    let mnt = scratch.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let ok = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    ok(Command::new("mkfs.btrfs").arg("-q").arg(&image));
    ok(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&mnt));
    let lower = mnt.join("image");
    make_lower(&lower);
    fs::write(lower.join("big"), vec![7u8; 1 << 20]).unwrap();
    let sandbox = mnt.join(sandbox_rel);
    let layout = RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(lower.clone()))
        .with_strategy(Strategy::Reflink);
    layout.prepare().unwrap();
    assert_eq!(snapshot(&layout.merged), snapshot(&lower));
    let stats = copy_tree(&lower, &mnt.join("copy2"), true).unwrap();
    assert_eq!(
        stats.reflinked, 4,
        "every non-empty file is reflinked: {stats:?}"
    );
    assert_eq!(stats.bytes_copied, 0);
    let stats = copy_tree(&lower, &mnt.join("copy3"), false).unwrap();
    assert_eq!(stats.reflinked, 0);
    cleanup(&sandbox).unwrap();
}

// ---------------------------------------------------------------------------
// Helpers.

fn unshare_available() -> bool {
    Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs [`child_entry`] with `role` in a new private mount namespace (and a
/// new user namespace with root mapped, when `userns` or when not root).
fn run_child(role: &str, lower: &Path, sandbox: &Path, userns: bool) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    if userns || !nix::unistd::geteuid().is_root() {
        cmd.args(["--user", "--map-root-user"]).env(USERNS, "1");
    }
    cmd.args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(LOWER, lower)
        .env(SANDBOX, sandbox);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("child {role}: done")),
        "child {role} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry below `root`: relative path → a description of type and
/// content (file bytes, link target, mode).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut map = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mode = meta.mode() & 0o7777;
            let desc = if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_file() {
                format!("file {mode:o} {:?}", fs::read(&path).unwrap())
            } else {
                format!("special {mode:o} {:?} {}", meta.file_type(), meta.rdev())
            };
            map.insert(rel, desc);
        }
    }
    map
}

fn count_entries(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            n += 1;
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    n
}

/// Mount points of this process's mount namespace.
fn host_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// A small image-like tree.
fn make_lower(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("etc/config"), "original").unwrap();
    fs::write(root.join("etc/deleteme"), "to be deleted").unwrap();
    fs::write(root.join("bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
}

fn fake_agent(dir: &Path) -> PathBuf {
    let agent = dir.join("agent-bin");
    fs::write(&agent, "#!/bin/sh\necho agent\n").unwrap();
    agent
}

// ---------------------------------------------------------------------------
// Overlay in a private mount namespace.

fn overlay_edit_round_trip(userns: bool) {
    if !unshare_available() {
        println!("skipped: util-linux unshare is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("image");
    make_lower(&lower);
    let before = snapshot(&lower);
    let sandbox = tmp.path().join("sandboxes/s1");
    let layout = RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(lower.clone()))
        .with_strategy(Strategy::Overlay);
    layout.prepare().unwrap();
    let agent = layout.inject_agent(&fake_agent(tmp.path())).unwrap();
    assert_eq!(agent, layout.upper.join(".msb/agent"));
    // Idempotent.
    assert_eq!(layout.inject_agent(&fake_agent(tmp.path())).unwrap(), agent);

    run_child("edit", &lower, &sandbox, userns);

    assert_eq!(snapshot(&lower), before, "the image tree is unchanged");
    assert!(
        !lower.join(".msb").exists(),
        "the agent is not in the image tree"
    );
    assert_eq!(
        fs::read_to_string(layout.upper.join("new.txt")).unwrap(),
        "made in the sandbox"
    );
    assert!(layout.upper.join("newdir").is_dir());
    assert_eq!(
        fs::read_to_string(layout.upper.join("etc/config")).unwrap(),
        "changed"
    );
    let whiteout = fs::symlink_metadata(layout.upper.join("etc/deleteme")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "deletion is a whiteout"
    );
    assert_eq!(whiteout.rdev(), 0, "whiteouts are char devices 0:0");
    let merged = layout.merged.to_str().unwrap().to_owned();
    assert!(
        !host_mounts().contains(&merged),
        "no mount at {merged} leaked into the host's namespace"
    );
    assert_eq!(
        count_entries(&layout.merged),
        0,
        "merged is an empty mount point here"
    );

    cleanup(&sandbox).unwrap();
    assert!(!sandbox.join("rootfs").exists());
    assert_eq!(snapshot(&lower), before);
}

#[test]
fn overlay_in_private_mount_namespace_leaves_the_image_untouched() {
    overlay_edit_round_trip(false);
}

#[test]
fn overlay_in_user_namespace_uses_userxattr() {
    overlay_edit_round_trip(true);
}

#[test]
fn assembly_cost_does_not_grow_with_the_image() {
    if !unshare_available() {
        println!("skipped: util-linux unshare is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("big");
    for d in 0..10 {
        let dir = lower.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            fs::write(dir.join(format!("f{f}")), [b'x'; 16]).unwrap();
        }
    }
    let sandbox = tmp.path().join("sandboxes/big");
    let layout = RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(lower.clone()))
        .with_strategy(Strategy::Overlay);
    let started = std::time::Instant::now();
    layout.prepare().unwrap();
    layout.inject_agent(&fake_agent(tmp.path())).unwrap();
    let took = started.elapsed();
    // rootfs, upper, work, merged, upper/.msb, upper/.msb/agent
    assert_eq!(count_entries(&sandbox), 6, "constant number of entries");
    run_child("count", &lower, &sandbox, false);
    let after = count_entries(&sandbox);
    assert!(after <= 8, "mounting adds only overlay's work dir: {after}");
    println!("assembled over 10,000 files in {took:?}, {after} entries");
    cleanup(&sandbox).unwrap();
}

#[test]
fn busybox_image_runs_from_the_merged_root() {
    use msb_core::image::{PullOptions, Reference};
    use test_utils::TestHome;
    use test_utils::images::busybox_image;
    use test_utils::registry::TestRegistry;

    if !unshare_available() || Command::new("chroot").arg("--version").output().is_err() {
        println!("skipped: util-linux unshare or coreutils chroot is not installed");
        return;
    }
    let registry = TestRegistry::start();
    busybox_image()
        .push_blocking(&registry, "library/busybox", "latest")
        .unwrap();
    let home = TestHome::new();
    let puller = test_utils::pull::mirror_puller(&registry, &home);
    let reference: Reference = "mirror.gcr.io/library/busybox".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pulled = rt
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap();
    let before = snapshot(&pulled.rootfs);

    let sandbox = home.path().join("sandboxes/bb");
    let source = RootfsSource::Image {
        tree: pulled.rootfs.clone(),
    };
    let layout = RootfsLayout::for_sandbox(&sandbox, &source);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            layout.strategy(),
            Strategy::Overlay,
            "this host can overlay"
        );
    }
    let layout = layout.with_strategy(Strategy::Overlay);
    layout.prepare().unwrap();
    layout
        .inject_agent(&pulled.rootfs.join("bin/busybox"))
        .unwrap();
    run_child("busybox", &pulled.rootfs, &sandbox, false);

    assert_eq!(
        snapshot(&pulled.rootfs),
        before,
        "the image tree is unchanged"
    );
    assert_eq!(
        fs::read_to_string(layout.upper.join("hello")).unwrap(),
        "hi\n"
    );
    cleanup(&sandbox).unwrap();
    assert!(!sandbox.join("rootfs").exists());
}

// ---------------------------------------------------------------------------
// Copy fallback.

#[test]
fn reflink_strategy_shares_data_on_btrfs() {
    let have_btrfs = fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("btrfs"));
    let have_mkfs = Command::new("mkfs.btrfs").arg("--version").output().is_ok();
    if !nix::unistd::geteuid().is_root() || !have_btrfs || !have_mkfs || !unshare_available() {
        println!("skipped: needs root, btrfs, mkfs.btrfs (btrfs-progs) and unshare");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    run_child("btrfs", tmp.path(), Path::new("sandboxes/r"), false);
    let mnt = tmp.path().join("mnt");
    assert_eq!(
        count_entries(&mnt),
        0,
        "the btrfs mount stayed in the child's namespace"
    );
}

#[test]
fn copy_fallback_reproduces_links_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/file"), "data").unwrap();
    fs::set_permissions(src.join("a/file"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("suid"), "x").unwrap();
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(src.join("empty"), "").unwrap();
    fs::hard_link(src.join("a/file"), src.join("a/b/hardlink")).unwrap();
    std::os::unix::fs::symlink("../file", src.join("a/b/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", src.join("dangling")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::create_dir(src.join("ro")).unwrap();
    fs::write(src.join("ro/inside"), "in a read-only dir").unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o1777)).unwrap();

    let dst = tmp.path().join("dst");
    let stats = copy_tree(&src, &dst, true).unwrap();
    assert_eq!(snapshot(&dst), snapshot(&src));
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 3);
    assert_eq!(stats.specials, 1);
    let a = fs::metadata(dst.join("a/file")).unwrap();
    let b = fs::metadata(dst.join("a/b/hardlink")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard links stay hard links");
    assert_ne!(a.ino(), fs::metadata(src.join("a/file")).unwrap().ino());
    assert_eq!(
        fs::symlink_metadata(dst.join("a/file")).unwrap().mtime(),
        fs::symlink_metadata(src.join("a/file")).unwrap().mtime()
    );
    println!("copy stats: {stats:?}");

    // The same through a layout forced to copy, with the agent in merged.
    let sandbox = tmp.path().join("sandboxes/c");
    let layout = RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(src.clone()))
        .with_strategy(Strategy::Copy);
    assert_eq!(layout.strategy(), Strategy::Copy);
    layout.prepare().unwrap();
    layout.prepare().unwrap(); // idempotent
    let agent = layout.inject_agent(&fake_agent(tmp.path())).unwrap();
    assert_eq!(agent, layout.merged.join(".msb/agent"));
    assert!(!src.join(".msb").exists());
    let mut expected = snapshot(&src);
    expected.insert(".msb".into(), "dir 755".into());
    expected.insert(
        ".msb/agent".into(),
        format!("file 755 {:?}", b"#!/bin/sh\necho agent\n"),
    );
    assert_eq!(snapshot(&layout.merged), expected);
    cleanup(&sandbox).unwrap();
    assert!(!sandbox.join("rootfs").exists());
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn strategy_is_detected_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("image");
    make_lower(&lower);
    let strategy = Strategy::detect(&lower, &tmp.path().join("sandboxes/x"));
    println!("strategy here: {strategy}");
    if nix::unistd::geteuid().is_root() {
        assert_eq!(strategy, Strategy::Overlay);
    }
    assert!(
        !tmp.path().join("sandboxes").exists(),
        "detection creates nothing"
    );
}

// ---------------------------------------------------------------------------
// Errors and cleanup.

#[test]
fn missing_or_non_directory_lower_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = tmp.path().join("s");
    for strategy in [Strategy::Overlay, Strategy::Copy] {
        let missing =
            RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(tmp.path().join("nope")))
                .with_strategy(strategy);
        match missing.prepare() {
            Err(Error::InvalidRootfs {
                path,
                reason: RootfsErrorKind::Missing,
            }) => assert_eq!(path, tmp.path().join("nope")),
            other => panic!("{other:?}"),
        }
    }
    fs::write(tmp.path().join("file"), "").unwrap();
    let file = RootfsLayout::for_sandbox(
        &sandbox,
        &RootfsSource::Image {
            tree: tmp.path().join("file"),
        },
    );
    assert!(matches!(
        file.prepare(),
        Err(Error::InvalidRootfs {
            reason: RootfsErrorKind::NotADirectory,
            ..
        })
    ));
    assert!(!sandbox.exists(), "nothing created on error");
}

#[test]
fn separator_in_a_path_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, c) in [("a,b", ','), ("a:b", ':')] {
        let lower = tmp.path().join(name);
        fs::create_dir(&lower).unwrap();
        let layout =
            RootfsLayout::for_sandbox(&tmp.path().join("s"), &RootfsSource::Directory(lower))
                .with_strategy(Strategy::Overlay);
        match layout.prepare() {
            Err(Error::InvalidRootfs {
                reason: RootfsErrorKind::OverlayUnsafeChar(got),
                ..
            }) => assert_eq!(got, c),
            other => panic!("{name}: {other:?}"),
        }
        // The same for the sandbox side.
        let ok_lower = tmp.path().join("fine");
        fs::create_dir_all(&ok_lower).unwrap();
        let layout = RootfsLayout::for_sandbox(
            &tmp.path().join(format!("sb{name}")),
            &RootfsSource::Directory(ok_lower),
        )
        .with_strategy(Strategy::Overlay);
        assert!(matches!(
            layout.mount_overlay(),
            Err(Error::InvalidRootfs {
                reason: RootfsErrorKind::OverlayUnsafeChar(_),
                ..
            })
        ));
    }
}

#[test]
fn cleanup_removes_read_only_and_foreign_entries_without_following_links() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), "keep me").unwrap();
    let sandbox = tmp.path().join("sandboxes/c");
    let lower = tmp.path().join("image");
    make_lower(&lower);
    let layout = RootfsLayout::for_sandbox(&sandbox, &RootfsSource::Directory(lower.clone()))
        .with_strategy(Strategy::Overlay);
    layout.prepare().unwrap();
    let up = &layout.upper;
    fs::create_dir_all(up.join("ro/deeper")).unwrap();
    fs::write(up.join("ro/deeper/f"), "x").unwrap();
    fs::set_permissions(up.join("ro/deeper/f"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(up.join("ro/deeper"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(up.join("ro"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(up.join("tmp")).unwrap();
    fs::write(up.join("tmp/theirs"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, up.join("tmp/escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), up.join("escape-file")).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(up.join("tmp/theirs"), Some(12345), Some(12345)).unwrap();
        std::os::unix::fs::chown(up.join("tmp"), Some(4242), Some(4242)).unwrap();
    }
    fs::set_permissions(up.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(&layout.work, fs::Permissions::from_mode(0o000)).unwrap();

    cleanup(&sandbox).unwrap();
    assert!(!sandbox.join("rootfs").exists());
    assert!(sandbox.exists(), "only the rootfs is removed");
    assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "keep me");
    cleanup(&sandbox).unwrap(); // nothing left: still fine
    assert!(lower.join("etc/config").exists());
}
