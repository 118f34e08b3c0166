//! Load, the short version for the suite (the long one is
//! `cargo xtask soak`): many sandboxes alive at once through the public
//! API, each running several commands, then all stopped and removed with
//! nothing left behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use microsandbox::{Sandbox, SandboxBuilder, SandboxStatus};
use test_utils::msb_test;
use test_utils::sandbox::TestEnv;

/// Sandboxes alive at once.
const SANDBOXES: usize = 20;
/// Commands run in each.
const EXECS: usize = 5;
/// The bound on the whole round on our 2-core hosts.
const BOUND: Duration = Duration::from_secs(20);

/// A builder for `name` in the test's home, on the test's backend.
fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

/// The PID namespace of the sandbox whose sandbox process is
/// `sandbox_pid` (its agent, that process's child, is PID 1 there). Root
/// links cannot find a sandbox's processes: after `pivot_root` in its own
/// mount namespace a sandboxed root reads as `/` from the host.
fn pid_ns_of_sandbox(sandbox_pid: u32) -> PathBuf {
    let parent_of = |pid: &str| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("PPid:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|p| parent_of(p) == Some(sandbox_pid))
        .and_then(|p| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok())
        .expect("the sandbox's agent")
}

/// Host processes living in any of `namespaces`.
fn processes_in(namespaces: &[PathBuf]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let ns = std::fs::read_link(e.path().join("ns/pid")).ok()?;
            namespaces.contains(&ns).then_some(pid)
        })
        .collect()
}

#[msb_test]
async fn twenty_sandboxes_at_once_each_running_five_execs(env: TestEnv) {
    let image = env.busybox();
    // The first create pulls and unpacks the image; the round measures the
    // rest (warm image), as a busy host would see it.
    let warm = builder(&env, "load-warm", &image).create().await.unwrap();
    warm.stop_and_wait().await.unwrap();
    warm.remove_self().unwrap();

    let started = Instant::now();
    let creates = (0..SANDBOXES).map(|i| {
        let b = builder(&env, &format!("load-{i}"), &image).pids(64);
        async move { b.create().await }
    });
    let sandboxes: Vec<Sandbox> = futures_join_all(creates)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let created = started.elapsed();
    assert_eq!(Sandbox::list_in(env.home()).unwrap().len(), SANDBOXES);
    for sb in &sandboxes {
        assert_eq!(sb.status().unwrap(), SandboxStatus::Running);
    }

    let runs = sandboxes.iter().enumerate().map(|(i, sb)| {
        let sb = sb.clone();
        async move {
            for n in 0..EXECS {
                let out = sb.shell(&format!("echo {i}-{n}")).await.unwrap();
                assert_eq!(out.stdout_str(), format!("{i}-{n}\n"));
                assert!(out.success());
            }
        }
    });
    futures_join_all(runs).await;
    let executed = started.elapsed();

    let dirs: Vec<_> = sandboxes.iter().map(Sandbox::state_dir).collect();
    let namespaces: Vec<PathBuf> = sandboxes
        .iter()
        .map(|sb| pid_ns_of_sandbox(sb.pid().unwrap()))
        .collect();
    assert_eq!(
        processes_in(&namespaces).len(),
        SANDBOXES,
        "one agent each, idle"
    );
    let stops = sandboxes
        .iter()
        .map(|sb| async move { sb.stop_and_wait().await });
    for status in futures_join_all(stops).await {
        assert_eq!(status.unwrap(), SandboxStatus::Stopped);
    }
    for sb in &sandboxes {
        sb.remove_self().unwrap();
    }
    let total = started.elapsed();
    println!(
        "{SANDBOXES} sandboxes: created in {created:?}, {} execs done at {executed:?} \
         ({:.0} execs/s), all stopped and removed at {total:?}",
        SANDBOXES * EXECS,
        (SANDBOXES * EXECS) as f64 / (executed - created).as_secs_f64().max(1e-9)
    );
    assert!(total < BOUND, "the round took {total:?} (bound {BOUND:?})");
    assert!(Sandbox::list_in(env.home()).unwrap().is_empty());
    for dir in &dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert_eq!(
        processes_in(&namespaces),
        Vec::<u32>::new(),
        "processes left"
    );
    let home = env.home().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(&home)),
        "mounts left under the home"
    );
}

/// Runs all `futures` concurrently on the test's runtime (tasks, so a
/// multi-threaded runtime spreads them), returning their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    // Polling them together in this task is enough: the work is in the
    // sandboxes and agents, not here.
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (fut, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}
