//! The `exec` suite: commands in one running namespace sandbox (busybox
//! rootfs) through its agent, against `nsenter` entering the same
//! sandbox's namespaces (setns, as `docker exec` and `crun exec` do).
//!
//! Measured, after warm-up:
//!
//! - the round trip of `true`: with a new agent connection per exec
//!   (connect + handshake + exec, what the facade's `Sandbox::exec` does)
//!   and on one already-open connection; the peer spawns
//!   `nsenter --target <agent> --all --root --wd /bin/true` to completion;
//! - throughput through the agent: 256 MiB of `head -c … /dev/zero` read
//!   from stdout (an [`ExecSession`], bytes counted, not kept), and 256 MiB
//!   written in 1 MiB chunks to `cat > /dev/null`'s stdin; the peer pipes
//!   the same through `nsenter`.
//!
//! `crun exec` is the named peer; crun is probed as in the `sandbox` suite
//! and reported unavailable with its reason when it cannot run containers.
//! A missed target is printed, never an error.

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msb_core::agent::{ExecStart, ExitStatus, StdinMode};
use msb_core::sandbox::client::AgentConnection;
use msb_core::sandbox::exec::{ExecEvent, ExecSession};
use msb_core::sandbox::lifecycle::{self, Launched};
use msb_core::sandbox::spec::AGENT_SOCKET;
use msb_core::sandbox::state::SandboxName;

use crate::sandbox::{self, Ours, PATH, agent_of, peers};
use crate::{Result, Stats, on_path, secs};

/// The target: exec round trip median (new connection per exec).
const TARGET_ROUND_TRIP: Duration = Duration::from_millis(5);
/// The target: throughput through the agent, each direction.
const TARGET_MIB_S: f64 = 500.0;
/// Bytes moved per throughput run.
const STREAM_BYTES: usize = 256 << 20;
/// The size of each stdin write.
const STDIN_CHUNK: usize = 1 << 20;
/// Unmeasured round trips of each contender first.
const WARMUP_EXECS: usize = 10;
/// Unmeasured throughput runs of each contender first.
const WARMUP_STREAMS: usize = 1;
/// What the agent's command line is.
const AGENT_CMDLINE: &str = "/.msb/agent";

/// Runs the suite: `runs` measured round trips and `stream_runs` measured
/// throughput runs of every contender, after warm-up when `warmup`.
pub fn run(runs: usize, stream_runs: usize, warmup: bool) -> Result<()> {
    if !on_path("nsenter") {
        return Err("`nsenter` (util-linux) is not on PATH".into());
    }
    let suite_started = Instant::now();
    let scratch = tempfile::Builder::new().prefix("msb-bench-").tempdir()?;
    let ours = Ours::prepare(scratch.path())?;
    // `head` and `dd` are not among the sandbox suite's applets.
    for applet in ["head", "dd"] {
        let link = ours.rootfs.join("bin").join(applet);
        symlink("busybox", &link).map_err(|e| format!("linking {}: {e}", link.display()))?;
    }

    let crun_reason = if !on_path("crun") {
        "`crun` is not on PATH".to_owned()
    } else {
        match peers::crun(
            &ours.rootfs,
            scratch.path(),
            &[&[], &["--cgroup-manager=disabled"]],
        ) {
            Ok(_) => "not measured: crun runs containers here, but this suite enters the \
                      sandbox with nsenter instead"
                .to_owned(),
            Err(reason) => reason,
        }
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let name = SandboxName::new("bench-exec")?;
    let launched = runtime.block_on(lifecycle::create(
        &ours.home,
        sandbox::spec(&ours, &name),
        &sandbox::options(&ours, None),
    ));
    let launched = match launched {
        Ok(l) => l,
        Err(e) => {
            runtime.block_on(sandbox::cleanup(&ours.store, &name));
            return Err(e.into());
        }
    };
    let plan = Plan {
        runs,
        stream_runs,
        warmup,
    };
    let outcome = measure_all(&runtime, &ours, &name, &launched, &plan);
    let stopped = runtime.block_on(lifecycle::stop_and_wait(
        &ours.store,
        &name,
        &launched.record.instance_id,
    ));
    if stopped.is_err() {
        runtime.block_on(sandbox::cleanup(&ours.store, &name));
    } else {
        lifecycle::remove(&ours.store, &name, None)?;
    }
    drop(launched);
    let results = outcome?;
    stopped?;

    report(&results, &crun_reason);
    println!("suite took {:.0?}", suite_started.elapsed());
    Ok(())
}

/// How many runs of what.
struct Plan {
    runs: usize,
    stream_runs: usize,
    warmup: bool,
}

impl Plan {
    /// `measure` `runs` times after `warmups` unmeasured calls (when
    /// warming up).
    fn repeat(
        &self,
        what: &str,
        runs: usize,
        warmups: usize,
        mut measure: impl FnMut() -> Result<Duration>,
    ) -> Result<Vec<Duration>> {
        let warmups = if self.warmup { warmups } else { 0 };
        eprintln!("msb-bench: {what}: {warmups} warm-up + {runs} measured runs");
        let mut samples = Vec::with_capacity(runs);
        for i in 0..warmups + runs {
            let took = measure().map_err(|e| format!("{what}: {e}"))?;
            if i >= warmups {
                samples.push(took);
            }
        }
        Ok(samples)
    }
}

/// Everything measured.
struct Results {
    agent_pid: u32,
    nsenter: Vec<String>,
    exec_connect: Vec<Duration>,
    exec_open: Vec<Duration>,
    nsenter_true: Vec<Duration>,
    stdout_ours: Vec<Duration>,
    stdout_peer: Vec<Duration>,
    stdout_dd_ours: Vec<Duration>,
    stdout_dd_peer: Vec<Duration>,
    stdin_ours: Vec<Duration>,
    stdin_peer: Vec<Duration>,
}

fn measure_all(
    runtime: &tokio::runtime::Runtime,
    ours: &Ours,
    name: &SandboxName,
    launched: &Launched,
    plan: &Plan,
) -> Result<Results> {
    let socket = ours.store.sandbox_dir(name).join(AGENT_SOCKET);
    let sandbox_pid = launched.process.pid;
    let (agent_pid, _) = agent_of(sandbox_pid)
        .ok_or_else(|| format!("no agent below sandbox process {sandbox_pid}"))?;
    let cmdline = std::fs::read(format!("/proc/{agent_pid}/cmdline")).unwrap_or_default();
    let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default());
    if argv0 != AGENT_CMDLINE {
        return Err(format!(
            "process {agent_pid} below the sandbox process is `{argv0}`, not `{AGENT_CMDLINE}`"
        )
        .into());
    }
    let nsenter = nsenter_prefix(agent_pid)?;
    eprintln!(
        "msb-bench: sandbox process {sandbox_pid}, agent {agent_pid}; peer: {}",
        nsenter.join(" ")
    );

    let (runs, streams) = (plan.runs, plan.stream_runs);
    let exec_connect = plan.repeat("exec `true`, new connection", runs, WARMUP_EXECS, || {
        runtime.block_on(async {
            let started = Instant::now();
            let mut conn = AgentConnection::connect(&socket).await?;
            check_true(conn.exec(request(&["true"], StdinMode::Null)).await?)?;
            Ok(started.elapsed())
        })
    })?;
    let mut conn = runtime.block_on(AgentConnection::connect(&socket))?;
    let exec_open = plan.repeat("exec `true`, open connection", runs, WARMUP_EXECS, || {
        runtime.block_on(async {
            let started = Instant::now();
            check_true(conn.exec(request(&["true"], StdinMode::Null)).await?)?;
            Ok(started.elapsed())
        })
    })?;
    drop(conn);
    let nsenter_true = plan.repeat("nsenter /bin/true", runs, WARMUP_EXECS, || {
        let started = Instant::now();
        let status = Command::new(&nsenter[0])
            .args(&nsenter[1..])
            .arg("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("nsenter /bin/true: {status}").into());
        }
        Ok(started.elapsed())
    })?;

    let head = format!("head -c {STREAM_BYTES} /dev/zero");
    let stdout_ours = plan.repeat("ours stdout 256 MiB", streams, WARMUP_STREAMS, || {
        runtime.block_on(stdout_through_agent(&socket, &head))
    })?;
    let stdout_peer = plan.repeat("nsenter stdout 256 MiB", streams, WARMUP_STREAMS, || {
        stdout_through_nsenter(&nsenter, &head)
    })?;
    let dd = format!(
        "dd if=/dev/zero bs={STDIN_CHUNK} count={}",
        STREAM_BYTES / STDIN_CHUNK
    );
    let stdout_dd_ours =
        plan.repeat("ours stdout 256 MiB (dd)", streams, WARMUP_STREAMS, || {
            runtime.block_on(stdout_through_agent(&socket, &dd))
        })?;
    let stdout_dd_peer = plan.repeat(
        "nsenter stdout 256 MiB (dd)",
        streams,
        WARMUP_STREAMS,
        || stdout_through_nsenter(&nsenter, &dd),
    )?;
    let chunk = vec![0u8; STDIN_CHUNK];
    let stdin_ours = plan.repeat("ours stdin 256 MiB", streams, WARMUP_STREAMS, || {
        runtime.block_on(stdin_through_agent(&socket, &chunk))
    })?;
    let stdin_peer = plan.repeat("nsenter stdin 256 MiB", streams, WARMUP_STREAMS, || {
        stdin_through_nsenter(&nsenter, &chunk)
    })?;
    Ok(Results {
        agent_pid,
        nsenter,
        exec_connect,
        exec_open,
        nsenter_true,
        stdout_ours,
        stdout_peer,
        stdout_dd_ours,
        stdout_dd_peer,
        stdin_ours,
        stdin_peer,
    })
}

/// The `nsenter` command line entering the namespaces, root and working
/// directory of process `pid`: `--all --root --wd` where supported, else
/// the namespaces one by one and a `chroot` into its root.
fn nsenter_prefix(pid: u32) -> Result<Vec<String>> {
    let pid = pid.to_string();
    let candidates: [Vec<String>; 2] = [
        ["nsenter", "--target", &pid, "--all", "--root", "--wd"]
            .map(str::to_owned)
            .to_vec(),
        [
            "nsenter",
            "-t",
            &pid,
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-U",
            "--preserve-credentials",
            "chroot",
            &format!("/proc/{pid}/root"),
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut errors = Vec::new();
    for prefix in candidates {
        let output = Command::new(&prefix[0])
            .args(&prefix[1..])
            .args([
                "/bin/sh",
                "-c",
                "test -x /.msb/agent || test -e /bin/busybox",
            ])
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            return Ok(prefix);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        errors.push(format!(
            "`{}`: {} {}",
            prefix.join(" "),
            output.status,
            stderr.trim()
        ));
    }
    Err(format!("nsenter cannot enter the sandbox: {}", errors.join("; ")).into())
}

/// An exec request for `argv` with the suite's `PATH`.
fn request(argv: &[&str], stdin: StdinMode) -> ExecStart {
    ExecStart {
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("PATH".to_owned(), PATH.to_owned())],
        cwd: None,
        user: None,
        tty: None,
        stdin,
    }
}

fn check_true(result: msb_core::sandbox::client::ExecResult) -> Result<()> {
    if result.status != ExitStatus::Code(0) {
        return Err(format!(
            "`true` ended with {:?}: {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        )
        .into());
    }
    Ok(())
}

/// Drains `session` to `Exited`, counting stdout bytes; fails unless it
/// exits 0.
async fn drain(session: &mut ExecSession) -> Result<usize> {
    let mut stdout = 0;
    let mut stderr = Vec::new();
    while let Some(event) = session.next_event().await {
        match event? {
            ExecEvent::Stdout(data) => stdout += data.len(),
            ExecEvent::Stderr(data) => stderr.extend(data),
            ExecEvent::Started { .. } => {}
            ExecEvent::Exited(ExitStatus::Code(0)) => return Ok(stdout),
            ExecEvent::Exited(status) => {
                return Err(format!(
                    "the command ended with {status:?}: {}",
                    String::from_utf8_lossy(&stderr)
                )
                .into());
            }
        }
    }
    Err("the exec ended without an exit status".into())
}

/// 256 MiB of stdout from `sh -c <command>` through the agent: connect,
/// stream, exit.
async fn stdout_through_agent(socket: &std::path::Path, command: &str) -> Result<Duration> {
    let started = Instant::now();
    let conn = AgentConnection::connect(socket).await?;
    let mut session =
        ExecSession::start(conn, request(&["sh", "-c", command], StdinMode::Null)).await?;
    let got = drain(&mut session).await?;
    let took = started.elapsed();
    if got != STREAM_BYTES {
        return Err(format!("read {got} bytes of stdout, not {STREAM_BYTES}").into());
    }
    Ok(took)
}

/// 256 MiB written to `cat > /dev/null` through the agent in
/// [`STDIN_CHUNK`] writes: connect, stream, close, exit.
async fn stdin_through_agent(socket: &std::path::Path, chunk: &[u8]) -> Result<Duration> {
    let started = Instant::now();
    let conn = AgentConnection::connect(socket).await?;
    let mut session = ExecSession::start(
        conn,
        request(&["sh", "-c", "cat > /dev/null"], StdinMode::Pipe),
    )
    .await?;
    let stdin = session.stdin();
    for _ in 0..STREAM_BYTES / chunk.len() {
        stdin.write_all(chunk).await?;
    }
    stdin.close();
    drain(&mut session).await?;
    Ok(started.elapsed())
}

/// `nsenter … sh -c <command>` writing 256 MiB, its stdout piped here and
/// counted.
fn stdout_through_nsenter(nsenter: &[String], command: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(&nsenter[0])
        .args(&nsenter[1..])
        .args(["/bin/sh", "-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut got = 0;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let status = child.wait()?;
    let took = started.elapsed();
    if !status.success() || got != STREAM_BYTES {
        return Err(format!("{status}, {got} bytes of stdout").into());
    }
    Ok(took)
}

/// `nsenter … sh -c 'cat > /dev/null'` fed 256 MiB from here in
/// [`STDIN_CHUNK`] writes.
fn stdin_through_nsenter(nsenter: &[String], chunk: &[u8]) -> Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(&nsenter[0])
        .args(&nsenter[1..])
        .args(["/bin/sh", "-c", "cat > /dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    for _ in 0..STREAM_BYTES / chunk.len() {
        stdin.write_all(chunk)?;
    }
    drop(stdin);
    let status = child.wait()?;
    let took = started.elapsed();
    if !status.success() {
        return Err(format!("{status}").into());
    }
    Ok(took)
}

/// The 95th percentile (nearest rank) of `samples`.
fn p95(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (v.len() * 95).div_ceil(100).max(1);
    v[rank - 1]
}

/// MiB/s of moving [`STREAM_BYTES`] in `took`.
fn mib_s(took: Duration) -> f64 {
    STREAM_BYTES as f64 / 1048576.0 / took.as_secs_f64().max(1e-9)
}

/// Prints the table, the ratios and the targets.
fn report(r: &Results, crun_reason: &str) {
    let times = |v: &[Duration]| {
        let s = Stats::of(v);
        format!(
            "{} ({} / {}, p95 {})",
            secs(s.median),
            secs(s.min),
            secs(s.max),
            secs(p95(v))
        )
    };
    // The slowest run is the lowest rate.
    let rates = |v: &[Duration]| {
        let s = Stats::of(v);
        format!(
            "{:.0} MiB/s ({:.0} / {:.0})",
            mib_s(s.median),
            mib_s(s.max),
            mib_s(s.min)
        )
    };
    let median = |v: &[Duration]| Stats::of(v).median;
    println!();
    println!(
        "exec suite: one namespace sandbox on a busybox rootfs, {} round trips, {} x {} MiB streams per contender",
        r.exec_connect.len(),
        r.stdout_ours.len(),
        STREAM_BYTES >> 20,
    );
    println!(
        "peer: `{} <cmd>` (agent pid {})",
        r.nsenter.join(" "),
        r.agent_pid
    );
    println!("crun exec: unavailable: {crun_reason}");
    println!();
    println!(
        "{:<32} {:<40} {:<20} {:<40} {:>9}",
        "metric", "ours median (min / max)", "peer", "peer median (min / max)", "ours/peer"
    );
    let time_row = |metric: &str, ours: &[Duration], peer: Option<&[Duration]>| {
        let (label, span, ratio) = match peer {
            Some(p) => (
                "nsenter /bin/true",
                times(p),
                format!(
                    "{:.2}x",
                    median(ours).as_secs_f64() / median(p).as_secs_f64().max(1e-9)
                ),
            ),
            None => ("", String::new(), String::new()),
        };
        println!(
            "{metric:<32} {:<40} {label:<20} {span:<40} {ratio:>9}",
            times(ours)
        );
    };
    time_row(
        "exec `true`, new connection",
        &r.exec_connect,
        Some(&r.nsenter_true),
    );
    time_row("exec `true`, open connection", &r.exec_open, None);
    let rate_row = |metric: &str, label: &str, ours: &[Duration], peer: &[Duration]| {
        println!(
            "{metric:<32} {:<40} {label:<20} {:<40} {:>8.2}x",
            rates(ours),
            rates(peer),
            mib_s(median(ours)) / mib_s(median(peer)).max(1e-9),
        );
    };
    rate_row(
        "stdout throughput (head)",
        "nsenter | pipe",
        &r.stdout_ours,
        &r.stdout_peer,
    );
    rate_row(
        "stdout throughput (dd bs=1M)",
        "nsenter | pipe",
        &r.stdout_dd_ours,
        &r.stdout_dd_peer,
    );
    rate_row(
        "stdin throughput (cat)",
        "pipe | nsenter",
        &r.stdin_ours,
        &r.stdin_peer,
    );
    println!(
        "(throughput: median (slowest / fastest); ours includes connect + handshake; \
         busybox `head` reads and writes 4 KiB at a time, `dd bs=1M` 1 MiB)"
    );
    println!();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let rt = median(&r.exec_connect);
    println!(
        "target: exec round trip < {} median: {} ({}, new connection per exec)",
        secs(TARGET_ROUND_TRIP),
        met(rt < TARGET_ROUND_TRIP),
        secs(rt)
    );
    for (what, v) in [
        ("stdout (head)", &r.stdout_ours),
        ("stdout (dd bs=1M)", &r.stdout_dd_ours),
        ("stdin (cat)", &r.stdin_ours),
    ] {
        let rate = mib_s(median(v));
        println!(
            "target: {what} throughput > {TARGET_MIB_S:.0} MiB/s: {} ({rate:.0} MiB/s median)",
            met(rate > TARGET_MIB_S)
        );
    }
}
