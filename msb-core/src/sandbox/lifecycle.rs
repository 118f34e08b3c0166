//! The creating program's side of a sandbox's life: create (with replace),
//! stop, kill, wait and remove, on the state store and the sandbox process.
//!
//! Every call after `create` names the sandbox *and its incarnation*
//! (`instance_id`): a handle to a sandbox that was since replaced finds the
//! name taken by another incarnation and reports [`Error::SandboxNotFound`]
//! rather than act on the newcomer.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::control::PinnedProcess;
use super::process::{self, BootEvent};
use super::spec::{CONSOLE_LOG, DETACHED_MARKER, RUNTIME_LOG, SandboxSpec};
use super::state::{
    Backend, ProcessIdentity, SandboxName, SandboxRecord, SandboxStatus, StateStore,
};
use crate::kvm::Verdict;
use crate::{Error, Result};

/// How long a microVM whose guest the KVM probe says cannot run is watched
/// after it started, before its boot is reported as failed.
pub const DOOMED_VM_OBSERVATION: Duration = Duration::from_millis(1500);
/// Lines of the console (and runtime log) kept in a boot failure.
pub const TAIL_LINES: usize = 20;
/// Beyond a sandbox's stop grace: time for its process to clean up.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// How to create a sandbox.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Replace an existing sandbox of the same name, giving its processes
    /// this long between SIGTERM and SIGKILL (`Duration::ZERO`: SIGKILL at
    /// once). `None`: an existing name is [`Error::SandboxAlreadyExists`].
    pub replace: Option<Duration>,
    /// Keep the sandbox running after the creating program exits.
    pub detached: bool,
    /// The sandbox process binary.
    pub program: PathBuf,
    /// For microVMs: the KVM probe's verdict, when it says guests cannot
    /// run here (the boot is then cut short, see [`DOOMED_VM_OBSERVATION`]).
    pub doomed_vm: Option<Verdict>,
}

/// What the sandbox process said when the sandbox became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyReport {
    /// The agent's software version.
    pub agent: String,
    /// The agent's boot timings, `(phase, microseconds)`.
    pub timings: Vec<(String, u64)>,
    /// From the sandbox process's start to the handshake.
    pub boot: Duration,
}

/// A sandbox that became ready.
#[derive(Debug)]
pub struct Launched {
    /// Its state record (status running, the sandbox process's identity).
    pub record: SandboxRecord,
    /// The sandbox process.
    pub process: ProcessIdentity,
    /// The sandbox process as our child: dropping it does not kill it, and
    /// tokio reaps it once it exits.
    pub child: Child,
    /// The readiness report.
    pub ready: ReadyReport,
}

/// Creates the sandbox `spec` describes under state home `home` and waits
/// until its agent is ready.
///
/// The name is claimed first (failing at once with
/// [`Error::SandboxAlreadyExists`] unless replacing); on any failure after
/// that, the sandbox process is killed, its leftovers are removed and the
/// name is released.
pub async fn create(
    home: &Path,
    mut spec: SandboxSpec,
    options: &CreateOptions,
) -> Result<Launched> {
    let store = StateStore::open(home)?;
    let name = spec.name.clone();
    if let Some(grace) = options.replace {
        replace_existing(&store, &name, grace).await?;
    }
    spec.instance_id.clear();
    spec.creator = ProcessIdentity::current();
    let reservation = store.create(&name, spec.to_json(), spec.backend)?;
    spec.instance_id = reservation.instance_id().to_owned();
    let dir = reservation.dir();
    let mut child = spawn_process(&spec, &dir, options)?;
    let Some(process) = child.id().and_then(ProcessIdentity::of) else {
        let status = child.wait().await;
        let _ = reservation.abandon();
        return Err(boot_failed(
            &spec,
            &dir,
            "sandbox process",
            format!("exited at once ({status:?})"),
        ));
    };
    let record = reservation.commit_process(process)?;
    go_ahead(&mut child).await;
    tracing::debug!(sandbox = %name, pid = process.pid, "sandbox process started");

    match wait_ready(&mut child, &spec, &dir, options.doomed_vm.as_ref()).await {
        Ok(ready) => Ok(Launched {
            record,
            process,
            child,
            ready,
        }),
        Err(e) => {
            end_child(&mut child).await;
            cleanup_leftovers(&dir, &spec.name, spec.backend);
            if let Err(remove) = store.remove(&name) {
                tracing::warn!(sandbox = %name, error = %remove, "cannot remove a sandbox that failed to boot");
            }
            Err(e)
        }
    }
}

/// Writes the spec (and the detached marker) into `dir` and starts the
/// sandbox process on it, its stderr appended to the runtime log.
fn spawn_process(spec: &SandboxSpec, dir: &Path, options: &CreateOptions) -> Result<Child> {
    let io = |op, path: PathBuf| move |source| Error::Io { op, path, source };
    spec.write_to(dir)?;
    let marker = dir.join(DETACHED_MARKER);
    if options.detached {
        mark_detached(dir, &spec.instance_id)?;
    } else if let Err(e) = std::fs::remove_file(&marker)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(io("remove", marker)(e));
    }
    let log_path = dir.join(RUNTIME_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open", log_path.clone()))?;
    Command::new(&options.program)
        .arg(dir)
        // Carries the go-ahead (see `go_ahead`).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: a terminal's Ctrl-C reaches the creator,
        // which decides; the sandbox process watches the creator anyway.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(io("spawn sandbox process", options.program.clone()))
}

/// Lets the sandbox process go on, now that the state records it: it waits
/// for this before it touches anything, so that one whose creator dies
/// before recording it (the pipe closes unwritten) exits untouched instead
/// of running where nobody can find it. A process that died meanwhile is
/// the boot report's to explain.
async fn go_ahead(child: &mut Child) {
    if let Some(mut stdin) = child.stdin.take()
        && let Err(e) = stdin.write_all(&[process::GO_AHEAD]).await
    {
        tracing::debug!(error = %e, "the sandbox process is gone before its go-ahead");
    }
}

/// Starts the stopped (or crashed) sandbox `name` again, with its rootfs
/// as it was left, and waits until it is ready. `options.replace` is
/// ignored. [`Error::SandboxStillRunning`] if it runs.
pub async fn start(home: &Path, name: &SandboxName, options: &CreateOptions) -> Result<Launched> {
    let store = StateStore::open(home)?;
    let record = store.get(name)?.ok_or_else(|| Error::SandboxNotFound {
        name: name.to_string(),
    })?;
    if let Some(process) = record.live_process() {
        return Err(Error::SandboxStillRunning {
            name: name.to_string(),
            pid: process.pid,
        });
    }
    let dir = store.sandbox_dir(name);
    let mut spec = SandboxSpec::read_from(&dir)?;
    spec.creator = ProcessIdentity::current();
    let mut child = spawn_process(&spec, &dir, options)?;
    let claimed = child
        .id()
        .and_then(ProcessIdentity::of)
        .ok_or_else(|| boot_failed(&spec, &dir, "sandbox process", "exited at once".into()))
        .and_then(|process| {
            store
                .set_running_if_down(name, &record.instance_id, process)
                .map(|record| (process, record))
        });
    let (process, record) = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            // Someone else started it meanwhile, or ours died at once.
            end_child(&mut child).await;
            return Err(e);
        }
    };
    go_ahead(&mut child).await;
    match wait_ready(&mut child, &spec, &dir, options.doomed_vm.as_ref()).await {
        Ok(ready) => Ok(Launched {
            record,
            process,
            child,
            ready,
        }),
        Err(e) => {
            end_child(&mut child).await;
            cleanup_cgroup(name, spec.backend);
            let _ = store.set_final_status(name, &record.instance_id, SandboxStatus::Crashed);
            Err(e)
        }
    }
}

/// Kills a sandbox process that failed to boot, and reaps it.
async fn end_child(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Reads the boot report until `ready` or a failure.
async fn wait_ready(
    child: &mut Child,
    spec: &SandboxSpec,
    dir: &Path,
    doomed_vm: Option<&Verdict>,
) -> Result<ReadyReport> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + spec.boot_timeout() + STOP_SLACK;
    let mut vm_started: Option<Instant> = None;
    loop {
        let until = match (vm_started, doomed_vm) {
            (Some(at), Some(_)) => (at + DOOMED_VM_OBSERVATION).min(deadline),
            _ => deadline,
        };
        let wait = until.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(wait, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None) | Err(_)) => {
                let status = child.wait().await;
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(boot_failed(
                    spec,
                    dir,
                    if vm_started.is_some() {
                        "vm"
                    } else {
                        "sandbox process"
                    },
                    format!(
                        "the sandbox process ended ({status}) before the sandbox was ready{}",
                        log_suffix(dir)
                    ),
                ));
            }
            Err(_) => {
                return Err(match (vm_started, doomed_vm) {
                    (Some(_), Some(verdict)) => boot_failed(
                        spec,
                        dir,
                        "vm",
                        format!(
                            "{verdict}; the guest was started and did not become ready within {DOOMED_VM_OBSERVATION:?}"
                        ),
                    ),
                    _ => boot_failed(
                        spec,
                        dir,
                        "boot",
                        format!("not ready within {:?}", spec.boot_timeout() + STOP_SLACK),
                    ),
                });
            }
        };
        match serde_json::from_str::<BootEvent>(&line) {
            Ok(BootEvent::VmStarting) => vm_started = Some(Instant::now()),
            Ok(BootEvent::Ready {
                agent,
                timings,
                boot_micros,
            }) => {
                return Ok(ReadyReport {
                    agent,
                    timings,
                    boot: Duration::from_micros(boot_micros),
                });
            }
            Ok(BootEvent::Failed { stage, reason }) => {
                return Err(boot_failed(spec, dir, &stage, reason));
            }
            Err(_) => tracing::warn!(line, "unexpected line from the sandbox process"),
        }
    }
}

fn boot_failed(spec: &SandboxSpec, dir: &Path, stage: &str, reason: String) -> Error {
    Error::BootFailed {
        name: spec.name.to_string(),
        stage: stage.to_owned(),
        reason,
        console_tail: tail(&dir.join(CONSOLE_LOG), TAIL_LINES),
    }
}

/// "; runtime log: …" with the runtime log's last lines, if any.
fn log_suffix(dir: &Path) -> String {
    let log = tail(&dir.join(RUNTIME_LOG), 5);
    if log.trim().is_empty() {
        String::new()
    } else {
        format!("; runtime log: {}", log.trim_end().replace('\n', " | "))
    }
}

/// The last `lines` lines of the file at `path` (at most its last 16 KiB),
/// or an empty string.
pub fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut bytes = Vec::new();
    let _ = file.take(WINDOW).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Ends and removes the sandbox that holds `name`, for a replacing create.
async fn replace_existing(store: &StateStore, name: &SandboxName, grace: Duration) -> Result<()> {
    let record = match store.get(name) {
        Ok(None) => return Ok(()),
        Ok(Some(record)) => Some(record),
        Err(Error::CorruptSandboxState { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(record) = &record {
        if record.live_status() == SandboxStatus::Creating {
            // Someone else is creating it right now: theirs wins.
            return Err(Error::SandboxAlreadyExists {
                name: name.to_string(),
            });
        }
        if let Some(process) = record.live_process()
            && let Some(pinned) = PinnedProcess::open(process)?
        {
            tracing::info!(sandbox = %name, pid = process.pid, ?grace, "replacing: stopping the old sandbox");
            pinned.terminate(grace).await?;
        }
        cleanup_leftovers(&store.sandbox_dir(name), name, record.backend);
    }
    match store.remove(name) {
        Ok(()) | Err(Error::SandboxNotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes what a sandbox process that died without cleaning up can leave
/// on the host: its cgroup (namespace isolation) and its rootfs directories.
/// Best effort, logged.
pub fn cleanup_leftovers(dir: &Path, name: &SandboxName, backend: Backend) {
    cleanup_cgroup(name, backend);
    if let Err(e) = crate::rootfs::cleanup(dir) {
        tracing::warn!(sandbox = %name, error = %e, "cannot remove the sandbox's rootfs");
    }
}

/// The record of incarnation `instance` of `name`; [`Error::SandboxNotFound`]
/// when the name is free or held by another incarnation.
pub fn record_of(store: &StateStore, name: &SandboxName, instance: &str) -> Result<SandboxRecord> {
    match store.get(name)? {
        Some(record) if record.instance_id == instance => Ok(record),
        _ => Err(Error::SandboxNotFound {
            name: name.to_string(),
        }),
    }
}

/// The stop grace a record's spec asks for.
fn grace_of(record: &SandboxRecord) -> Duration {
    serde_json::from_value::<SandboxSpec>(record.config.clone())
        .map(|s| s.stop_grace())
        .unwrap_or(super::spec::DEFAULT_STOP_GRACE)
}

/// Asks the sandbox to stop (SIGTERM to its process, which shuts the guest
/// down) and returns at once. A sandbox that is not running is left as is.
pub fn stop(store: &StateStore, name: &SandboxName, instance: &str) -> Result<()> {
    let record = record_of(store, name, instance)?;
    if let Some(process) = record.live_process()
        && let Some(pinned) = PinnedProcess::open(process)?
    {
        pinned.signal(libc::SIGTERM)?;
    }
    Ok(())
}

/// Stops the sandbox and waits until its process has exited: SIGTERM, then
/// SIGKILL once the sandbox's stop grace (plus time to clean up) is over.
/// Returns the final status.
pub async fn stop_and_wait(
    store: &StateStore,
    name: &SandboxName,
    instance: &str,
) -> Result<SandboxStatus> {
    let record = record_of(store, name, instance)?;
    end_process(store, &record, Some(grace_of(&record) + STOP_SLACK)).await
}

/// Like [`stop_and_wait`] with the SIGKILL after `timeout` instead of the
/// sandbox's own grace.
pub async fn stop_with_timeout(
    store: &StateStore,
    name: &SandboxName,
    instance: &str,
    timeout: Duration,
) -> Result<SandboxStatus> {
    let record = record_of(store, name, instance)?;
    end_process(store, &record, Some(timeout)).await
}

/// Kills the sandbox at once (SIGKILL to its process, which takes the
/// guest with it), waits for the exit, and records it as stopped.
pub async fn kill(store: &StateStore, name: &SandboxName, instance: &str) -> Result<SandboxStatus> {
    let record = record_of(store, name, instance)?;
    end_process(store, &record, None).await
}

/// SIGTERM and a wait of `grace` (or SIGKILL at once for `None`), then the
/// bookkeeping a killed process could not do.
async fn end_process(
    store: &StateStore,
    record: &SandboxRecord,
    grace: Option<Duration>,
) -> Result<SandboxStatus> {
    let Some(process) = record.live_process() else {
        return Ok(record.live_status());
    };
    if let Some(pinned) = PinnedProcess::open(process)? {
        pinned.terminate(grace.unwrap_or(Duration::ZERO)).await?;
    }
    let after = record_of(store, &record.name, &record.instance_id)?;
    if after.status == SandboxStatus::Running {
        // Killed before it could record anything: do it for it.
        cleanup_cgroup(&record.name, record.backend);
        return Ok(store
            .set_final_status(&record.name, &record.instance_id, SandboxStatus::Stopped)?
            .status);
    }
    Ok(after.live_status())
}

fn cleanup_cgroup(name: &SandboxName, backend: Backend) {
    if backend == Backend::Namespace
        && let Ok(layout) = super::cgroup::CgroupLayout::detect()
        && let Err(e) = super::cgroup::remove_stale(&layout, name.as_str())
    {
        tracing::warn!(sandbox = %name, error = %e, "cannot remove leftover cgroup");
    }
}

/// Waits until the sandbox's process has exited (however it ends) and
/// returns the live status then.
pub async fn wait(store: &StateStore, name: &SandboxName, instance: &str) -> Result<SandboxStatus> {
    let record = record_of(store, name, instance)?;
    if let Some(process) = record.live_process()
        && let Some(pinned) = PinnedProcess::open(process)?
    {
        pinned.exited().await?;
    }
    Ok(record_of(store, name, instance)?.live_status())
}

/// Removes a sandbox that is not running: its leftovers, rootfs and
/// record. [`Error::SandboxStillRunning`] while its process lives. With
/// `instance`, only that incarnation.
pub fn remove(store: &StateStore, name: &SandboxName, instance: Option<&str>) -> Result<()> {
    let record = match instance {
        Some(instance) => Some(record_of(store, name, instance)?),
        None => match store.get(name) {
            Ok(Some(record)) => Some(record),
            Ok(None) => {
                return Err(Error::SandboxNotFound {
                    name: name.to_string(),
                });
            }
            Err(Error::CorruptSandboxState { .. }) => None,
            Err(e) => return Err(e),
        },
    };
    if let Some(record) = &record {
        if let Some(process) = record.live_process() {
            return Err(Error::SandboxStillRunning {
                name: name.to_string(),
                pid: process.pid,
            });
        }
        cleanup_leftovers(&store.sandbox_dir(name), name, record.backend);
    }
    store.remove(name)
}

/// Marks the sandbox as detached: it keeps running when its creator exits.
pub fn detach(store: &StateStore, name: &SandboxName, instance: &str) -> Result<()> {
    record_of(store, name, instance)?;
    mark_detached(&store.sandbox_dir(name), instance)
}

/// Writes the detached marker of `instance` into the sandbox directory
/// `dir`: the marker names its instance, so that a sandbox process left
/// from an earlier instance in the same directory never takes it for its
/// own.
fn mark_detached(dir: &Path, instance: &str) -> Result<()> {
    let marker = dir.join(DETACHED_MARKER);
    std::fs::write(&marker, instance.as_bytes()).map_err(|source| Error::Io {
        op: "create",
        path: marker,
        source,
    })
}
