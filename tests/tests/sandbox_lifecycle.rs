//! Sandbox lifecycle end to end, through the public API: the busybox image
//! from a registry on loopback, the real sandbox process, the real agent,
//! the backend the KVM probe allows (namespace isolation on our hosts).

use std::path::Path;
use std::time::{Duration, Instant};

use microsandbox::{Isolation, MicrosandboxError, Sandbox, SandboxBuilder, SandboxStatus};
use test_utils::msb_test;
use test_utils::sandbox::{TestEnv, pid_ns_of_sandbox, processes_in};

/// A builder for `name` in the test's home, on the test's backend.
fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

/// Mounts (in this process's namespace) at or below `dir`.
fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_owned)
        .collect()
}

#[msb_test]
async fn create_exec_stop_and_wait_then_remove(env: TestEnv) {
    let image = env.busybox();
    let started = Instant::now();
    let sb = builder(&env, "life-1", &image)
        .env("GREETING", "hello")
        .create()
        .await
        .unwrap();
    println!("create-to-ready (cold image): {:?}", started.elapsed());
    assert_eq!(sb.status().unwrap(), SandboxStatus::Running);
    let out = sb
        .exec("sh", ["-c", "echo $GREETING; echo err >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "hello\n");
    assert_eq!(out.stderr_str(), "err\n");
    assert_eq!(out.code(), Some(3));
    // The agent is PID 1 and the hostname is the sandbox's name.
    let out = sb
        .exec("sh", ["-c", "echo $$ $(hostname); cat /proc/1/cmdline"])
        .await
        .unwrap();
    assert!(
        out.stdout_str().starts_with(&format!("{} life-1\n", ""))
            || out.stdout_str().contains("life-1"),
        "{out:?}"
    );
    assert!(out.stdout_str().contains("/.msb/agent"), "{out:?}");

    let list = Sandbox::list_in(env.home()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "life-1");
    assert_eq!(list[0].status, SandboxStatus::Running);
    assert_eq!(list[0].image, image.replace("localhost", "127.0.0.1"));

    let dir = sb.state_dir();
    let ns = pid_ns_of_sandbox(sb.pid().unwrap());
    assert!(processes_in(&ns) >= 1, "the agent runs in {}", ns.display());
    let status = sb.stop_and_wait().await.unwrap();
    assert_eq!(status, SandboxStatus::Stopped);
    assert_eq!(sb.status().unwrap(), SandboxStatus::Stopped);
    assert_eq!(processes_in(&ns), 0, "nothing is left in the sandbox");
    assert!(mounts_below(&dir).is_empty());
    assert!(
        dir.join("console.log").exists() && dir.join("runtime.log").exists(),
        "logs are kept until removal"
    );

    sb.remove_self().unwrap();
    assert!(!dir.exists());
    assert!(matches!(
        sb.status(),
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
    assert!(Sandbox::list_in(env.home()).unwrap().is_empty());
}

#[msb_test]
async fn get_list_and_remove_by_name(env: TestEnv) {
    let image = env.busybox();
    let a = builder(&env, "a", &image).create().await.unwrap();
    let b = builder(&env, "b", &image).create().await.unwrap();
    let names: Vec<String> = Sandbox::list_in(env.home())
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["a", "b"]);

    let got = Sandbox::get_in(env.home(), "b").unwrap();
    assert_eq!(got.status().unwrap(), SandboxStatus::Running);
    assert_eq!(got.pid(), b.pid());
    let out = got.exec("echo", ["via get"]).await.unwrap();
    assert_eq!(out.stdout_str(), "via get\n");
    // A non-owning handle does not stop the sandbox when dropped.
    drop(got);
    assert_eq!(b.status().unwrap(), SandboxStatus::Running);

    match Sandbox::remove_in(env.home(), "a") {
        Err(MicrosandboxError::SandboxStillRunning { name, .. }) => assert_eq!(name, "a"),
        other => panic!("removing a running sandbox: {other:?}"),
    }
    a.stop_and_wait().await.unwrap();
    Sandbox::remove_in(env.home(), "a").unwrap();
    assert!(matches!(
        Sandbox::get_in(env.home(), "a"),
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
    assert!(matches!(
        Sandbox::remove_in(env.home(), "nope"),
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
    for bad in ["a/b", "..", "", &"x".repeat(64)] {
        assert!(
            matches!(
                Sandbox::get_in(env.home(), bad),
                Err(MicrosandboxError::InvalidConfig { .. })
            ),
            "{bad:?}"
        );
    }
    b.kill().await.unwrap();
}

#[msb_test]
async fn kill_ends_a_running_sandbox_at_once(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "victim", &image)
        .stop_grace(Duration::from_secs(30))
        .create()
        .await
        .unwrap();
    let pid = sb.pid().unwrap();
    let ns = pid_ns_of_sandbox(pid);
    sb.exec("sh", ["-c", "sleep 60 >/dev/null 2>&1 &"])
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(sb.kill().await.unwrap(), SandboxStatus::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(sb.pid().is_none());
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_in(&ns) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_in(&ns), 0, "the sandbox's processes died with it");
    sb.remove_self().unwrap();
}

#[msb_test]
async fn a_killed_sandbox_process_is_reported_crashed(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "crashy", &image).create().await.unwrap();
    let dir = sb.state_dir();
    let pid = sb.pid().unwrap();
    let ns = pid_ns_of_sandbox(pid);
    sb.exec("sh", ["-c", "sleep 60 >/dev/null 2>&1 &"])
        .await
        .unwrap();
    assert!(processes_in(&ns) >= 2, "the agent and a sleep");
    // kill(1) the sandbox process from outside.
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(10), sb.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, SandboxStatus::Crashed);
    assert_eq!(
        Sandbox::list_in(env.home()).unwrap()[0].status,
        SandboxStatus::Crashed
    );
    // The agent (PID 1 inside) died with it: the kernel's parent-death
    // signal took the whole PID namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_in(&ns) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(processes_in(&ns), 0);
    assert!(mounts_below(&dir).is_empty());
    sb.remove_self().unwrap();
    assert!(!dir.exists());
}

#[msb_test]
async fn an_existing_name_fails_at_once_without_replace(env: TestEnv) {
    let image = env.busybox();
    let first = builder(&env, "taken", &image).create().await.unwrap();
    let started = Instant::now();
    let err = builder(&env, "taken", &image).create().await.unwrap_err();
    assert!(
        matches!(&err, MicrosandboxError::SandboxAlreadyExists { name } if name == "taken"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Stopped is still taken.
    first.stop_and_wait().await.unwrap();
    let err = builder(&env, "taken", &image).create().await.unwrap_err();
    assert!(
        matches!(err, MicrosandboxError::SandboxAlreadyExists { .. }),
        "{err}"
    );
    // The first sandbox is untouched by the failed attempts.
    assert_eq!(first.status().unwrap(), SandboxStatus::Stopped);
}

#[msb_test]
async fn replace_while_the_old_handle_is_alive(env: TestEnv) {
    let image = env.busybox();
    let old = builder(&env, "svc", &image).create().await.unwrap();
    let old_pid = old.pid().unwrap();
    let started = Instant::now();
    let new = builder(&env, "svc", &image)
        .replace_with_grace(Duration::from_secs(3))
        .create()
        .await
        .unwrap();
    let took = started.elapsed();
    println!("replace (busybox sh exits on SIGTERM): {took:?}");
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(5),
        "{took:?}"
    );
    assert_ne!(new.pid(), Some(old_pid));
    assert!(
        !Path::new(&format!("/proc/{old_pid}")).exists() || {
            // A zombie until tokio reaps it is not alive.
            std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
                .map_or(true, |s| s.contains(") Z"))
        }
    );
    // The old handle reports its sandbox gone and never acts on the new one.
    assert!(matches!(
        old.status(),
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
    assert!(matches!(
        old.stop().await,
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
    assert!(matches!(
        old.exec("true", [] as [&str; 0]).await,
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
    drop(old);
    assert_eq!(new.status().unwrap(), SandboxStatus::Running);
    assert_eq!(
        new.exec("echo", ["new"]).await.unwrap().stdout_str(),
        "new\n"
    );
}

#[msb_test]
async fn replace_honours_the_grace_period_and_zero_kills_at_once(env: TestEnv) {
    let image = env.busybox();
    // A sandbox whose processes ignore SIGTERM: the agent SIGKILLs them
    // after the sandbox's own stop grace (long here), so the replacer's
    // grace decides.
    let stubborn = builder(&env, "stubborn", &image)
        .stop_grace(Duration::from_secs(60))
        .create()
        .await
        .unwrap();
    let bg = stubborn.clone();
    tokio::spawn(async move {
        let _ = bg.exec("sh", ["-c", "trap '' TERM; sleep 100"]).await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grace = Duration::from_millis(1500);
    let started = Instant::now();
    let second = builder(&env, "stubborn", &image)
        .replace_with_grace(grace)
        .create()
        .await
        .unwrap();
    let took = started.elapsed();
    println!("replace with {grace:?} grace: {took:?}");
    assert!(
        took >= grace,
        "the old sandbox got its grace period: {took:?}"
    );
    assert!(took < grace + Duration::from_secs(5), "{took:?}");

    let started = Instant::now();
    let _third = builder(&env, "stubborn", &image)
        .replace_with_grace(Duration::ZERO)
        .create()
        .await
        .unwrap();
    let took = started.elapsed();
    println!("replace with zero grace: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(matches!(
        second.status(),
        Err(MicrosandboxError::SandboxNotFound { .. })
    ));
}

#[msb_test]
async fn two_concurrent_creates_of_one_name_one_wins(env: TestEnv) {
    let image = env.busybox();
    let a = builder(&env, "race", &image).create();
    let b = builder(&env, "race", &image).create();
    let (a, b) = tokio::join!(a, b);
    let (winner, loser) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (a, b) => panic!("exactly one must win: {a:?} / {b:?}"),
    };
    assert!(
        matches!(loser, MicrosandboxError::SandboxAlreadyExists { .. }),
        "{loser}"
    );
    assert_eq!(winner.status().unwrap(), SandboxStatus::Running);
    assert_eq!(Sandbox::list_in(env.home()).unwrap().len(), 1);
}

#[msb_test]
async fn dropping_the_owning_handle_stops_the_sandbox(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "scoped", &image).create().await.unwrap();
    let watcher = Sandbox::get_in(env.home(), "scoped").unwrap();
    drop(sb);
    let status = tokio::time::timeout(Duration::from_secs(15), watcher.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, SandboxStatus::Stopped);

    // A detached one keeps running.
    let sb = builder(&env, "kept", &image)
        .create_detached()
        .await
        .unwrap();
    let pid = sb.pid().unwrap();
    drop(sb);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = Sandbox::get_in(env.home(), "kept").unwrap();
    assert_eq!(kept.status().unwrap(), SandboxStatus::Running);
    assert_eq!(kept.pid(), Some(pid));
    kept.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn a_microvm_that_cannot_run_fails_promptly_with_the_reason(env: TestEnv) {
    let image = env.busybox();
    let probe = microsandbox::host::probe_with(&test_utils::probe_options_for(env.home()));
    let started = Instant::now();
    let result = Sandbox::builder("vm")
        .home(env.home())
        .image(&image)
        .isolation(Isolation::Microvm)
        .cpus(1)
        .memory(256)
        .create()
        .await;
    let took = started.elapsed();
    if probe.verdict.can_run_microvm() {
        let sb = result.unwrap();
        assert_eq!(sb.exec("echo", ["vm"]).await.unwrap().stdout_str(), "vm\n");
        return;
    }
    println!("microVM boot failure reported after {took:?}");
    match result {
        Err(MicrosandboxError::BootFailed {
            stage,
            reason,
            console_tail,
            ..
        }) => {
            println!("stage: {stage}\nreason: {reason}\nconsole tail:\n{console_tail}");
            assert!(
                reason.contains(&probe.verdict.to_string())
                    || stage == "vm configuration"
                    || stage == "vm",
                "{stage}: {reason}"
            );
        }
        other => panic!("expected BootFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Nothing is left: no record, no process.
    assert!(Sandbox::list_in(env.home()).unwrap().is_empty());
}

#[msb_test]
async fn limits_put_the_sandbox_in_its_cgroup_and_stop_removes_it(env: TestEnv) {
    if env.isolation() != "namespace" {
        println!("skipped: cgroup limits apply to namespace isolation");
        return;
    }
    let image = env.busybox();
    let sb = builder(&env, "limited", &image)
        .memory(128)
        .cpus(1)
        .pids(64)
        .create()
        .await
        .unwrap();
    // Every cgroup line of a process inside names the sandbox's cgroup for
    // the limited controllers (v1 here: memory, cpu, pids).
    let out = sb.exec("cat", ["/proc/self/cgroup"]).await.unwrap();
    let text = out.stdout_str();
    let limited: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("memory") || l.contains("pids") || l.starts_with("0::"))
        .collect();
    assert!(
        limited.iter().any(|l| l.ends_with("/microsandbox/limited")),
        "{text}"
    );
    let dirs: Vec<std::path::PathBuf> = ["memory", "pids", "cpu,cpuacct", "unified"]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("microsandbox/limited")
        })
        .filter(|p| p.exists())
        .collect();
    assert!(!dirs.is_empty(), "the sandbox's cgroup directories exist");
    sb.stop_and_wait().await.unwrap();
    for dir in &dirs {
        assert!(!dir.exists(), "{} is removed on stop", dir.display());
    }
}

#[msb_test]
async fn image_gc_keeps_the_trees_sandboxes_use(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "gc-user", &image).create().await.unwrap();
    let images = microsandbox::image::Images::open(env.home()).unwrap();
    images.remove(&image).unwrap();
    let stats = images.gc().unwrap();
    assert_eq!(stats.trees_removed, 0, "{stats:?}");
    // The sandbox's lower layer is intact: it still runs and restarts.
    assert!(sb.exec("ls", ["/bin/busybox"]).await.unwrap().success());
    sb.stop_and_wait().await.unwrap();
    let sb = Sandbox::start_in(env.home(), "gc-user").await.unwrap();
    assert!(sb.exec("true", [] as [&str; 0]).await.unwrap().success());
    sb.stop_and_wait().await.unwrap();
    sb.remove_self().unwrap();
    // No sandbox uses it any more: now it goes.
    let stats = images.gc().unwrap();
    assert_eq!(stats.trees_removed, 1, "{stats:?}");
}
