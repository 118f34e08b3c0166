//! The `soak` suite: many namespace sandboxes (busybox rootfs) alive at
//! once, each running commands through its agent in a loop for a bounded
//! time; then all are stopped and removed, and the host is checked for
//! anything left behind.
//!
//! Reported: sandboxes held at once, create time, execs and execs per
//! second, failures (any error or unexpected output; must be 0) and leaks
//! (must be 0): sandbox processes or agents still alive, processes rooted
//! in the state home, mounts under it, cgroup directories of ours under
//! `/sys/fs/cgroup/*/microsandbox/`, state directories left in the home.
//! Failures or leaks make the suite fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use msb_core::agent::{ExecStart, ExitStatus, StdinMode};
use msb_core::sandbox::client::AgentConnection;
use msb_core::sandbox::lifecycle::{self, Launched};
use msb_core::sandbox::spec::AGENT_SOCKET;
use msb_core::sandbox::state::SandboxName;

use crate::sandbox::{self, Ours, PATH};
use crate::{Result, Stats, secs};

/// Creates in flight at once (the 2-core hosts gain nothing from more).
const CREATE_CONCURRENCY: usize = 8;
/// The `pids` limit of each sandbox: gives each one a cgroup, so that
/// cgroup cleanup is part of what is soaked.
const PIDS_MAX: u64 = 64;

/// Execs and failures, shared by the exec loops.
#[derive(Default)]
struct Counters {
    execs: AtomicU64,
    failures: AtomicU64,
}

/// Runs the suite: `count` sandboxes, each exec'ing in a loop for `seconds`.
pub fn run(count: usize, seconds: u64) -> Result<()> {
    let suite_started = Instant::now();
    let scratch = tempfile::Builder::new().prefix("msb-soak-").tempdir()?;
    let ours = Arc::new(Ours::prepare(scratch.path())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Unique per run: cgroups are named after sandboxes, host-wide.
    let names: Vec<SandboxName> = (0..count)
        .map(|i| SandboxName::new(format!("soak{}-{i}", std::process::id())))
        .collect::<std::result::Result<_, _>>()?;

    eprintln!("msb-bench: soak: creating {count} sandboxes");
    let started = Instant::now();
    let (launched, mut failures) = runtime.block_on(create_all(&ours, &names));
    let create_time = started.elapsed();
    let held = launched.len();
    eprintln!(
        "msb-bench: soak: {held} sandboxes alive after {}; exec'ing for {seconds}s",
        secs(create_time)
    );
    let sandbox_pids: Vec<u32> = launched.iter().map(|(_, l)| l.process.pid).collect();
    let agent_pids: Vec<u32> = sandbox_pids
        .iter()
        .filter_map(|pid| sandbox::agent_of(*pid).map(|(agent, _)| agent))
        .collect();
    // The sandboxes' PID namespaces: what any process of theirs lives in
    // (root links cannot tell, a pivoted root reads as `/` from here).
    let pid_namespaces: Vec<PathBuf> = agent_pids
        .iter()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok())
        .collect();
    // While they run, so that the leak check below is known to look where
    // the cgroups are.
    let cgroups_alive = cgroup_dirs(&names).len();

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let latencies = runtime.block_on(exec_loops(
        &ours,
        &launched,
        Duration::from_secs(seconds),
        &counters,
    ));
    let exec_time = started.elapsed();
    failures += counters.failures.load(Ordering::Relaxed);

    eprintln!("msb-bench: soak: stopping and removing");
    let started = Instant::now();
    failures += runtime.block_on(stop_all(&ours, &names, launched));
    let stop_time = started.elapsed();
    drop(runtime);

    let leaks = leaks(&ours, &names, &sandbox_pids, &agent_pids, &pid_namespaces);
    let execs = counters.execs.load(Ordering::Relaxed);
    let lat = Stats::of(&latencies);

    println!();
    println!("== msb-bench soak ==");
    println!(
        "sandboxes held at once  {held} of {count} (busybox rootfs, namespace isolation, pids.max {PIDS_MAX})"
    );
    println!(
        "create all              {} ({CREATE_CONCURRENCY} at a time)",
        secs(create_time)
    );
    println!(
        "execs                   {execs} in {} = {:.0} execs/s (new agent connection per exec)",
        secs(exec_time),
        execs as f64 / exec_time.as_secs_f64().max(1e-9)
    );
    println!(
        "exec latency            min {} / median {} / max {}",
        secs(lat.min),
        secs(lat.median),
        secs(lat.max)
    );
    println!("stop + remove all       {}", secs(stop_time));
    println!(
        "checked                 {} sandbox processes, {} agents, {} PID namespaces, {cgroups_alive} cgroup dirs seen while running",
        sandbox_pids.len(),
        agent_pids.len(),
        pid_namespaces.len()
    );
    println!("failures                {failures}");
    println!("leaks                   {}", leaks.len());
    for leak in &leaks {
        println!("  {leak}");
    }
    println!("suite took {:.0?}", suite_started.elapsed());
    if failures > 0 || !leaks.is_empty() {
        return Err(format!("soak: {failures} failures, {} leaks", leaks.len()).into());
    }
    Ok(())
}

/// Creates every sandbox, [`CREATE_CONCURRENCY`] at a time: the launched
/// ones, and how many failed to launch.
async fn create_all(
    ours: &Arc<Ours>,
    names: &[SandboxName],
) -> (Vec<(SandboxName, Launched)>, u64) {
    let limit = Arc::new(tokio::sync::Semaphore::new(CREATE_CONCURRENCY));
    let mut tasks = Vec::new();
    for name in names {
        let (ours, name, limit) = (ours.clone(), name.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut spec = sandbox::spec(&ours, &name);
            spec.pids_max = Some(PIDS_MAX);
            let launched =
                lifecycle::create(&ours.home, spec, &sandbox::options(&ours, None)).await;
            (name, launched)
        }));
    }
    let (mut launched, mut failures) = (Vec::new(), 0);
    for task in tasks {
        match task.await {
            Ok((name, Ok(l))) => launched.push((name, l)),
            Ok((name, Err(e))) => {
                eprintln!("msb-bench: soak: creating {name}: {e}");
                failures += 1;
            }
            Err(e) => {
                eprintln!("msb-bench: soak: a create task failed: {e}");
                failures += 1;
            }
        }
    }
    (launched, failures)
}

/// One exec loop per sandbox until `duration` has passed: `echo <name>`
/// over a new agent connection each time, its output checked. Returns every
/// exec's latency.
async fn exec_loops(
    ours: &Arc<Ours>,
    launched: &[(SandboxName, Launched)],
    duration: Duration,
    counters: &Arc<Counters>,
) -> Vec<Duration> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for (name, _) in launched {
        let socket = ours.store.sandbox_dir(name).join(AGENT_SOCKET);
        let (name, counters) = (name.as_str().to_owned(), counters.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                match exec_echo(&socket, &name).await {
                    Ok(()) => {
                        latencies.push(started.elapsed());
                        counters.execs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("msb-bench: soak: exec in {name}: {e}");
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        match task.await {
            Ok(latencies) => all.extend(latencies),
            Err(e) => {
                eprintln!("msb-bench: soak: an exec loop failed: {e}");
                counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    all
}

/// `echo <word>` in the sandbox behind `socket`; an error unless it prints
/// exactly that and exits 0.
async fn exec_echo(socket: &Path, word: &str) -> Result<()> {
    let mut conn = AgentConnection::connect(socket).await?;
    let result = conn
        .exec(ExecStart {
            argv: vec!["echo".to_owned(), word.to_owned()],
            env: vec![("PATH".to_owned(), PATH.to_owned())],
            cwd: None,
            user: None,
            tty: None,
            stdin: StdinMode::Null,
        })
        .await?;
    let stdout = String::from_utf8_lossy(&result.stdout);
    if result.status != ExitStatus::Code(0) || stdout != format!("{word}\n") {
        return Err(format!(
            "`echo {word}` ended with {:?}, printed {stdout:?}, stderr {:?}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        )
        .into());
    }
    Ok(())
}

/// Stops (concurrently) and removes every sandbox; the number of failures.
async fn stop_all(
    ours: &Arc<Ours>,
    names: &[SandboxName],
    launched: Vec<(SandboxName, Launched)>,
) -> u64 {
    let mut failures = 0;
    let mut tasks = Vec::new();
    for (name, l) in launched {
        let ours = ours.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = lifecycle::stop_and_wait(&ours.store, &name, &l.record.instance_id).await;
            drop(l);
            (name, stopped)
        }));
    }
    for task in tasks {
        match task.await {
            Ok((_, Ok(_))) => {}
            Ok((name, Err(e))) => {
                eprintln!("msb-bench: soak: stopping {name}: {e}");
                failures += 1;
                sandbox::cleanup(&ours.store, &name).await;
            }
            Err(e) => {
                eprintln!("msb-bench: soak: a stop task failed: {e}");
                failures += 1;
            }
        }
    }
    for name in names {
        match ours.store.get(name) {
            Ok(Some(_)) => {
                if let Err(e) = lifecycle::remove(&ours.store, name, None) {
                    eprintln!("msb-bench: soak: removing {name}: {e}");
                    failures += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("msb-bench: soak: reading the state of {name}: {e}");
                failures += 1;
            }
        }
    }
    failures
}

/// Everything of ours still on the host after stop and remove.
fn leaks(
    ours: &Ours,
    names: &[SandboxName],
    sandbox_pids: &[u32],
    agent_pids: &[u32],
    pid_namespaces: &[PathBuf],
) -> Vec<String> {
    let mut leaks = Vec::new();
    // Processes: the sandbox processes and agents we started (unless the
    // pid was reused by something else), and anything rooted in our home.
    let alive = |pid: u32, what: &str| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(what))
            .unwrap_or(false)
    };
    for pid in sandbox_pids {
        if alive(*pid, "msb-sandbox") {
            leaks.push(format!("sandbox process {pid} still alive"));
        }
    }
    for pid in agent_pids {
        if alive(*pid, "/.msb/agent") {
            leaks.push(format!("agent {pid} still alive"));
        }
    }
    for pid in processes_rooted_in(&ours.home) {
        leaks.push(format!("process {pid} rooted in the state home"));
    }
    for (pid, ns) in processes_in(pid_namespaces) {
        leaks.push(format!(
            "process {pid} still in a sandbox's {}",
            ns.display()
        ));
    }
    // Mounts (in our mount namespace) under the home.
    let home = ours.home.to_string_lossy().into_owned();
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines().filter(|l| l.contains(&home)) {
            leaks.push(format!("mount: {line}"));
        }
    }
    // cgroup directories: microsandbox/<name> under every hierarchy.
    for path in cgroup_dirs(names) {
        leaks.push(format!("cgroup {}", path.display()));
    }
    // State directories.
    match ours.store.list() {
        Ok(records) => {
            for record in records {
                leaks.push(format!("state record of {}", record.name));
            }
        }
        Err(e) => leaks.push(format!("cannot list the state store: {e}")),
    }
    for name in names {
        let dir = ours.store.sandbox_dir(name);
        if dir.exists() {
            leaks.push(format!("state directory {}", dir.display()));
        }
    }
    leaks
}

/// The existing cgroup directories of `names`, in every hierarchy.
fn cgroup_dirs(names: &[SandboxName]) -> Vec<PathBuf> {
    cgroup_parents()
        .iter()
        .flat_map(|dir| names.iter().map(move |n| dir.join(n.as_str())))
        .filter(|p| p.exists())
        .collect()
}

/// Processes living in any of the PID namespaces `namespaces`.
fn processes_in(namespaces: &[PathBuf]) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let ns = std::fs::read_link(e.path().join("ns/pid")).ok()?;
            namespaces.contains(&ns).then_some((pid, ns))
        })
        .collect()
}

/// `/sys/fs/cgroup/<hierarchy>/microsandbox` (and the unified root's).
fn cgroup_parents() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("microsandbox")];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join("microsandbox")));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Processes whose root directory lies below `dir`.
fn processes_rooted_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let root = std::fs::read_link(e.path().join("root")).ok()?;
            root.starts_with(dir).then_some(pid)
        })
        .collect()
}
