//! The `sandbox` suite: namespace sandboxes on a busybox rootfs through the
//! engine API of `msb-core`, against `bwrap` and `crun` on the same tree.
//!
//! Ours, per run (warm: the rootfs is a local directory already on disk):
//! create-to-ready (`lifecycle::create` returning), the round trip of `true`
//! (with and without connecting to the agent), the idle RSS of the sandbox
//! process and of the agent, replacing the running sandbox with a new one
//! of the same name, and stopping it (`lifecycle::stop_and_wait`). The peers
//! run `/bin/true` (or `sh -c 'exit 0'`) to completion: create + run + exit.
//! A missed target is printed, never an error.

pub(crate) mod peers;
pub(crate) mod rootfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_core::agent::{ExecStart, ExitStatus, StdinMode};
use msb_core::sandbox::client::AgentConnection;
use msb_core::sandbox::lifecycle::{self, CreateOptions};
use msb_core::sandbox::programs::{agent_program, sandbox_program};
use msb_core::sandbox::spec::{AGENT_SOCKET, RootfsSpec, SandboxSpec};
use msb_core::sandbox::state::{Backend, SandboxName, StateStore};

use crate::{Result, Stats, on_path, secs};

/// The target of the sandbox issue: warm create-to-ready median.
const TARGET_CREATE: Duration = Duration::from_millis(50);
/// Unmeasured runs of each contender first.
const WARMUP_RUNS: usize = 2;
/// How long a stopping sandbox's processes get before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a sandbox may take to report ready.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// The environment of the commands we run inside.
pub(crate) const PATH: &str = "/bin:/usr/bin:/sbin:/usr/sbin";

/// What the engine needs to create our sandboxes.
pub(crate) struct Ours {
    /// The state home.
    pub(crate) home: PathBuf,
    /// The state store under `home`.
    pub(crate) store: StateStore,
    /// The sandbox process `msb-sandbox`.
    pub(crate) program: PathBuf,
    /// The static guest agent.
    pub(crate) agent: PathBuf,
    /// The busybox rootfs (a local directory).
    pub(crate) rootfs: PathBuf,
}

impl Ours {
    /// Builds the busybox rootfs and a state home under `scratch` and
    /// finds the sandbox process and the agent.
    pub(crate) fn prepare(scratch: &Path) -> Result<Ours> {
        let rootfs = scratch.join("rootfs");
        rootfs::build(&rootfs)?;
        let home = scratch.join("home");
        std::fs::create_dir_all(&home)?;
        let ours = Ours {
            store: StateStore::open(&home)?,
            program: sandbox_program(&home)?,
            agent: agent_program(&home)?,
            home,
            rootfs,
        };
        eprintln!(
            "msb-bench: sandbox process {}, agent {}, rootfs {}",
            ours.program.display(),
            ours.agent.display(),
            ours.rootfs.display()
        );
        Ok(ours)
    }
}

/// One measured run of ours.
struct OurRun {
    create: Duration,
    /// The same create with networking on (pasta, policy rules).
    create_networked: Duration,
    boot: Duration,
    exec_with_connect: Duration,
    exec_only: Duration,
    replace: Duration,
    stop: Duration,
    sandbox_rss_kib: u64,
    agent_rss_kib: Option<u64>,
    /// The agent's `comm` (to show what was measured).
    agent_comm: Option<String>,
}

/// Runs the suite: `runs` measured runs of every contender, after
/// [`WARMUP_RUNS`] unmeasured ones when `warmup`.
pub fn run(runs: usize, warmup: bool) -> Result<()> {
    if !on_path("bwrap") {
        return Err(
            "`bwrap` is not on PATH: run through `cargo xtask bench sandbox`, which installs it"
                .into(),
        );
    }
    let suite_started = Instant::now();
    let scratch = tempfile::Builder::new().prefix("msb-bench-").tempdir()?;
    let ours = Ours::prepare(scratch.path())?;
    let rootfs = ours.rootfs.clone();
    let warmups = if warmup { WARMUP_RUNS } else { 0 };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!("msb-bench: ours: {warmups} warm-up + {runs} measured runs");
    let mut measured = Vec::with_capacity(runs);
    for i in 0..warmups + runs {
        let name = SandboxName::new(format!("bench-{i}"))?;
        let outcome = runtime.block_on(our_run(&ours, &name));
        if outcome.is_err() {
            runtime.block_on(cleanup(&ours.store, &name));
        }
        let run = outcome?;
        if i >= warmups {
            measured.push(run);
        }
    }

    let mut peers = vec![
        peers::bwrap(&rootfs, "bwrap /bin/true", &["/bin/true"]),
        peers::bwrap(
            &rootfs,
            "bwrap /bin/sh -c 'exit 0'",
            &["/bin/sh", "-c", "exit 0"],
        ),
    ];
    let mut crun_unavailable = None;
    if on_path("crun") {
        match peers::crun(
            &rootfs,
            scratch.path(),
            &[&[], &["--cgroup-manager=disabled"]],
        ) {
            Ok(peer) => peers.push(peer),
            Err(e) => crun_unavailable = Some(e),
        }
    } else {
        crun_unavailable = Some("`crun` is not on PATH".to_owned());
    }
    let mut peer_stats = Vec::new();
    for peer in &peers {
        eprintln!(
            "msb-bench: {}: {warmups} warm-up + {runs} measured runs",
            peer.label
        );
        let mut samples = Vec::with_capacity(runs);
        for i in 0..warmups + runs {
            let wall = peer
                .run(i)
                .map_err(|e| format!("{} failed: {e}", peer.label))?;
            if i >= warmups {
                samples.push(wall);
            }
        }
        peer_stats.push((peer.label.clone(), Stats::of(&samples)));
    }

    report(&measured, &peer_stats, crun_unavailable.as_deref());
    println!("suite took {:.0?}", suite_started.elapsed());
    Ok(())
}

/// The spec of our sandbox `name`, filled as the facade's builder does for
/// a local directory with namespace isolation.
pub(crate) fn spec(ours: &Ours, name: &SandboxName) -> SandboxSpec {
    SandboxSpec {
        name: name.clone(),
        instance_id: String::new(),
        backend: Backend::Namespace,
        rootfs: RootfsSpec::Directory {
            path: ours.rootfs.clone(),
        },
        agent: ours.agent.clone(),
        cpus: None,
        memory_mib: None,
        pids_max: None,
        env: Vec::new(),
        workdir: None,
        hostname: name.as_str().to_owned(),
        stop_grace_ms: STOP_GRACE.as_millis() as u64,
        boot_timeout_ms: BOOT_TIMEOUT.as_millis() as u64,
        creator: None,
        volumes: Vec::new(),
        user: None,
        rlimits: Vec::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        // Like the peers (`bwrap --unshare-all`): no network beyond `lo`.
        network: msb_core::sandbox::network::NetworkSpec::disabled(),
    }
}

/// The create options of our sandboxes (`replace`: replace a running one
/// of the same name, with this stop grace).
pub(crate) fn options(ours: &Ours, replace: Option<Duration>) -> CreateOptions {
    CreateOptions {
        replace,
        detached: false,
        program: ours.program.clone(),
        doomed_vm: None,
    }
}

/// One run of ours: create, exec `true`, idle memory, replace, stop,
/// remove.
async fn our_run(ours: &Ours, name: &SandboxName) -> Result<OurRun> {
    let started = Instant::now();
    let launched = lifecycle::create(&ours.home, spec(ours, name), &options(ours, None)).await?;
    let create = started.elapsed();
    let boot = launched.ready.boot;

    let socket = ours.store.sandbox_dir(name).join(AGENT_SOCKET);
    let started = Instant::now();
    let mut conn = AgentConnection::connect(&socket).await?;
    let connected = Instant::now();
    let result = conn
        .exec(ExecStart {
            argv: vec!["true".to_owned()],
            env: vec![("PATH".to_owned(), PATH.to_owned())],
            cwd: None,
            user: None,
            tty: None,
            stdin: StdinMode::Null,
        })
        .await?;
    let exec_with_connect = started.elapsed();
    let exec_only = connected.elapsed();
    drop(conn);
    if result.status != ExitStatus::Code(0) {
        return Err(format!(
            "`true` in sandbox {name} ended with {:?}: {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        )
        .into());
    }

    // Idle: nothing runs inside but the agent.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let sandbox_pid = launched.process.pid;
    let sandbox_rss_kib = rss_kib(sandbox_pid)
        .ok_or_else(|| format!("no VmRSS for the sandbox process {sandbox_pid}"))?;
    let agent = agent_of(sandbox_pid);
    let agent_rss_kib = agent.as_ref().and_then(|(pid, _)| rss_kib(*pid));
    let agent_comm = agent.map(|(_, comm)| comm);

    let started = Instant::now();
    let replaced = lifecycle::create(
        &ours.home,
        spec(ours, name),
        &options(ours, Some(STOP_GRACE)),
    )
    .await?;
    let replace = started.elapsed();
    drop(launched);

    let started = Instant::now();
    lifecycle::stop_and_wait(&ours.store, name, &replaced.record.instance_id).await?;
    let stop = started.elapsed();
    lifecycle::remove(&ours.store, name, None)?;

    // The default configuration: networking on (pasta attached, the
    // policy's rules installed) before the agent runs.
    let mut networked = spec(ours, name);
    networked.network = msb_core::sandbox::network::NetworkSpec::default();
    let started = Instant::now();
    let launched = lifecycle::create(&ours.home, networked, &options(ours, None)).await?;
    let create_networked = started.elapsed();
    lifecycle::stop_and_wait(&ours.store, name, &launched.record.instance_id).await?;
    lifecycle::remove(&ours.store, name, None)?;
    Ok(OurRun {
        create,
        create_networked,
        boot,
        exec_with_connect,
        exec_only,
        replace,
        stop,
        sandbox_rss_kib,
        agent_rss_kib,
        agent_comm,
    })
}

/// After a failed run: kill whatever incarnation of `name` runs, then
/// remove it (best effort).
pub(crate) async fn cleanup(store: &StateStore, name: &SandboxName) {
    if let Ok(Some(record)) = store.get(name) {
        let _ = lifecycle::kill(store, name, &record.instance_id).await;
    }
    let _ = lifecycle::remove(store, name, None);
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The agent: the child of sandbox process `pid` whose command line names
/// the agent (else its first child), with its `comm`.
pub(crate) fn agent_of(pid: u32) -> Option<(u32, String)> {
    let kids = children(pid);
    let names_agent = |kid: &u32| {
        std::fs::read(format!("/proc/{kid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("agent"))
            .unwrap_or(false)
    };
    let kid = kids
        .iter()
        .copied()
        .find(names_agent)
        .or(kids.first().copied())?;
    let comm = std::fs::read_to_string(format!("/proc/{kid}/comm")).ok()?;
    Some((kid, comm.trim().to_owned()))
}

/// The children of process `pid` (of all its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

/// Prints the table, the ratios and the target.
fn report(ours: &[OurRun], peers: &[(String, Stats)], crun_unavailable: Option<&str>) {
    let of = |f: fn(&OurRun) -> Duration| Stats::of(&ours.iter().map(f).collect::<Vec<_>>());
    let create = of(|r| r.create);
    let span = |s: Stats| format!("{} ({} / {})", secs(s.median), secs(s.min), secs(s.max));
    println!();
    println!(
        "sandbox suite: {} runs, namespace isolation, busybox rootfs (warm: a local directory)",
        ours.len()
    );
    println!();
    println!(
        "{:<34} {:<28} {:<30} {:<28} {:>9}",
        "metric", "ours median (min / max)", "peer", "peer median (min / max)", "ours/peer"
    );
    let row = |metric: &str, s: Stats| {
        println!("{metric:<34} {}", span(s));
    };
    let mut first = true;
    for (label, peer) in peers {
        let ratio = create.median.as_secs_f64() / peer.median.as_secs_f64().max(1e-9);
        println!(
            "{:<34} {:<28} {:<30} {:<28} {:>8.2}x",
            if first { "create-to-ready" } else { "" },
            if first { span(create) } else { String::new() },
            label,
            span(*peer),
            ratio,
        );
        first = false;
    }
    if let Some(reason) = crun_unavailable {
        println!("{:<34} {:<28} crun: unavailable: {reason}", "", "");
    }
    row("  of which boot (spawn to ready)", of(|r| r.boot));
    row("create-to-ready, networking on", of(|r| r.create_networked));
    row("exec `true` incl. connect", of(|r| r.exec_with_connect));
    row("exec `true` excl. connect", of(|r| r.exec_only));
    row("replace (create, replacing)", of(|r| r.replace));
    row("stop (stop_and_wait)", of(|r| r.stop));
    let mem = |samples: Vec<u64>| -> String {
        let mut v = samples;
        v.sort_unstable();
        if v.is_empty() {
            return "n/a".to_owned();
        }
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "{:.1} MiB ({:.1} / {:.1})",
            mib(v[v.len() / 2]),
            mib(v[0]),
            mib(v[v.len() - 1])
        )
    };
    println!(
        "{:<34} {}",
        "RSS sandbox process (idle)",
        mem(ours.iter().map(|r| r.sandbox_rss_kib).collect())
    );
    let comm = ours
        .iter()
        .find_map(|r| r.agent_comm.as_deref())
        .unwrap_or("not found");
    println!(
        "{:<34} {}",
        format!("RSS agent (idle, `{comm}`)"),
        mem(ours.iter().filter_map(|r| r.agent_rss_kib).collect())
    );
    println!();
    let met = if create.median < TARGET_CREATE {
        "met"
    } else {
        "NOT met"
    };
    println!(
        "target: warm create-to-ready < {} median (namespace isolation): {met} ({})",
        secs(TARGET_CREATE),
        secs(create.median)
    );
    let networked = of(|r| r.create_networked);
    let met = if networked.median < TARGET_CREATE {
        "met"
    } else {
        "NOT met"
    };
    println!(
        "target, networking on (pasta): {met} ({})",
        secs(networked.median)
    );
}
