//! The sandbox process for namespace isolation: the agent is PID 1 of new
//! user, mount, PID, UTS, IPC and network namespaces over the rootfs, in a
//! cgroup with the spec's limits, serving the listening socket it inherits.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use super::{BootEvent, Reporter, StopCause, creator_gone, failed, prepare_rootfs, record_final};
use crate::rootfs::AGENT_PATH;
use crate::sandbox::cgroup::{CgroupLayout, Limits, SandboxCgroup};
use crate::sandbox::client::AgentConnection;
use crate::sandbox::namespace::{
    BeforeRelease, DEFAULT_PATH, Mount, MountSource, NamespaceChild, NamespaceSpec, Rlimit,
    SandboxRoot, Stdio, spawn,
};
use crate::sandbox::network::{self, SandboxNetwork};
use crate::sandbox::spec::{AGENT_SOCKET, CONSOLE_LOG, SandboxSpec, VolumeSource};
use crate::sandbox::state::SandboxStatus;
use crate::{Error, Result};

/// Extra time, beyond the grace period, the agent gets to exit after a
/// shutdown request before its PID namespace is killed.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

pub(super) fn main(spec: SandboxSpec, dir: &Path, started: Instant, mut reporter: Reporter) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            reporter.send(&failed("runtime", &e));
            return 1;
        }
    };
    runtime.block_on(run(spec, dir, started, reporter))
}

/// Everything set up before the agent runs; dropped in reverse on failure.
struct Booted {
    child: NamespaceChild,
    cgroup: Option<SandboxCgroup>,
    /// pasta, with networking on.
    network: Option<SandboxNetwork>,
}

async fn run(spec: SandboxSpec, dir: &Path, started: Instant, mut reporter: Reporter) -> i32 {
    // Handlers first: a SIGTERM during boot must not kill us before the
    // cleanup below can run.
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            reporter.send(&failed("signals", &e));
            return 1;
        }
    };
    let socket = dir.join(AGENT_SOCKET);
    let mut booted = match boot(&spec, dir) {
        Ok(b) => b,
        Err((stage, e)) => {
            reporter.send(&failed(stage, &e));
            return 1;
        }
    };
    let pid1_exit = match pidfd_watch(&booted.child) {
        Ok(w) => w,
        Err(e) => {
            reporter.send(&failed("watch agent", &e));
            return 1;
        }
    };

    // The handshake, racing the agent's death, the deadline and a stop.
    let handshake = tokio::select! {
        conn = AgentConnection::connect(&socket) => conn.map_err(|e| ("agent handshake", e.to_string())),
        _ = pid1_exit.readable() => Err(("agent", exit_reason(&mut booted.child))),
        _ = tokio::time::sleep(spec.boot_timeout()) => Err(("agent handshake", format!(
            "the agent did not answer within {:?}", spec.boot_timeout()))),
        _ = sigterm.recv() => Err(("boot", "stopped by SIGTERM before it was ready".into())),
        _ = sigint.recv() => Err(("boot", "stopped by SIGINT before it was ready".into())),
    };
    let mut conn = match handshake {
        Ok(conn) => conn,
        Err((stage, reason)) => {
            reporter.send(&BootEvent::Failed {
                stage: stage.into(),
                reason,
            });
            teardown(booted, &socket);
            return 1;
        }
    };
    let ready = conn.ready();
    reporter.send(&BootEvent::Ready {
        agent: ready.agent_version.clone(),
        timings: ready
            .timings
            .iter()
            .map(|t| (t.phase.clone(), t.micros))
            .collect(),
        boot_micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    });
    tracing::info!(sandbox = %spec.name, elapsed = ?started.elapsed(), "sandbox ready");

    let cause = tokio::select! {
        _ = sigterm.recv() => StopCause::Signal,
        _ = sigint.recv() => StopCause::Signal,
        () = creator_gone(&spec, dir) => StopCause::CreatorExited,
        _ = pid1_exit.readable() => StopCause::AgentExited,
        () = conn.closed() => StopCause::AgentExited,
    };
    tracing::info!(?cause, "stopping");
    if cause != StopCause::AgentExited {
        let grace = spec.stop_grace();
        let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        if let Err(e) = conn.shutdown(grace_ms).await {
            tracing::warn!(error = %e, "cannot ask the agent to shut down");
        }
        if tokio::time::timeout(grace + SHUTDOWN_SLACK, pid1_exit.readable())
            .await
            .is_err()
        {
            tracing::warn!("the agent did not exit in time: killing the sandbox");
        }
    }
    drop(pid1_exit);
    let _ = booted.child.kill(libc::SIGKILL);
    match booted.child.wait() {
        Ok(status) => tracing::info!(?status, "agent exited"),
        Err(e) => tracing::warn!(error = %e, "cannot reap the agent"),
    }
    teardown(booted, &socket);
    let status = if cause == StopCause::AgentExited {
        SandboxStatus::Crashed
    } else {
        SandboxStatus::Stopped
    };
    record_final(&spec, dir, status);
    i32::from(cause == StopCause::AgentExited)
}

/// Rootfs, console, cgroup and the agent as PID 1. Errors carry the stage.
fn boot(spec: &SandboxSpec, dir: &Path) -> std::result::Result<Booted, (&'static str, Error)> {
    let layout = prepare_rootfs(spec, dir).map_err(|e| ("rootfs", e))?;
    let socket = dir.join(AGENT_SOCKET);
    let listener = crate::sandbox::socket::bind(&socket).map_err(|source| {
        (
            "agent socket",
            Error::Io {
                op: "bind",
                path: socket.clone(),
                source,
            },
        )
    })?;
    let console_path = dir.join(CONSOLE_LOG);
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console_path)
        .map_err(|source| {
            (
                "console",
                Error::Io {
                    op: "open",
                    path: console_path.clone(),
                    source,
                },
            )
        })?;
    let cgroup = create_cgroup(spec).map_err(|e| ("cgroup", e))?;

    let net_files = network::write_files(dir, &layout.lower, &spec.hostname, spec.network.enabled)
        .map_err(|e| ("network", e))?;
    let mut ns = NamespaceSpec::new(SandboxRoot::Layout(layout), [AGENT_PATH]);
    ns.hostname = spec.hostname.clone();
    ns.env = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("MSB_AGENT_LISTEN_FD".into(), "0".into()),
        ("MSB_HOSTNAME".into(), spec.hostname.clone().into()),
    ];
    ns.mounts = net_files
        .into_iter()
        .map(|(guest, host)| Mount {
            target: guest.into(),
            source: MountSource::Bind(host),
            read_only: false,
        })
        .chain(volume_mounts(spec))
        .collect();
    // The network is attached while the agent still waits to be released:
    // the policy's rules and pasta are in place before it runs.
    let attached = std::rc::Rc::new(std::cell::RefCell::new(None));
    if spec.network.enabled {
        ns.drop_capabilities = network::DROPPED_CAPABILITIES.to_vec();
        let (slot, net, dir) = (attached.clone(), spec.network.clone(), dir.to_path_buf());
        ns.before_release = Some(BeforeRelease(Box::new(move |pid| {
            *slot.borrow_mut() = Some(SandboxNetwork::attach(pid, &net, &dir)?);
            Ok(())
        })));
    }
    ns.rlimits = spec
        .rlimits
        .iter()
        .map(|r| Rlimit {
            resource: r.resource.as_raw(),
            soft: r.soft,
            hard: r.hard,
        })
        .collect();
    ns.die_with_parent = true;
    ns.stdin = Stdio::Fd(OwnedFd::from(listener));
    ns.stdout = Stdio::Fd(clone_fd(&console, &console_path).map_err(|e| ("console", e))?);
    ns.stderr = Stdio::Fd(OwnedFd::from(console));
    let spawned = spawn(ns);
    let network = attached.borrow_mut().take();
    let child = spawned.map_err(|e| match e {
        e @ Error::NetworkSetup { .. } => ("network", e),
        e => ("spawn", e),
    })?;
    if let Some(cgroup) = &cgroup {
        cgroup.add_pid(child.pid()).map_err(|e| ("cgroup", e))?;
    }
    tracing::info!(pid = child.pid(), "agent started as PID 1");
    Ok(Booted {
        child,
        cgroup,
        network,
    })
}

/// The spec's volumes as mounts inside the sandbox's mount namespace.
fn volume_mounts(spec: &SandboxSpec) -> Vec<Mount> {
    spec.volumes
        .iter()
        .map(|v| Mount {
            target: v.guest.clone().into(),
            source: match &v.source {
                VolumeSource::Bind { path } | VolumeSource::Named { path, .. } => {
                    MountSource::Bind(path.clone())
                }
                VolumeSource::Tmpfs { size_mib } => MountSource::Tmpfs {
                    size_bytes: size_mib.map(|m| u64::from(m) * 1024 * 1024),
                },
            },
            read_only: v.read_only,
        })
        .collect()
}

fn clone_fd(file: &File, path: &Path) -> Result<OwnedFd> {
    file.as_fd()
        .try_clone_to_owned()
        .map_err(|source| Error::Io {
            op: "duplicate descriptor of",
            path: path.to_path_buf(),
            source,
        })
}

/// The sandbox's cgroup when the spec sets a limit; `None` otherwise.
fn create_cgroup(spec: &SandboxSpec) -> Result<Option<SandboxCgroup>> {
    let limits = Limits {
        memory_bytes: spec.memory_mib.map(|m| u64::from(m) * 1024 * 1024),
        cpus: spec.cpus.map(f64::from),
        pids_max: spec.pids_max,
    };
    if limits.requested().is_empty() {
        return Ok(None);
    }
    let layout = CgroupLayout::detect()?;
    SandboxCgroup::create(&layout, spec.name.as_str(), &limits).map(Some)
}

/// A pollable handle on PID 1's exit.
fn pidfd_watch(child: &NamespaceChild) -> Result<AsyncFd<OwnedFd>> {
    let io = |source| Error::SandboxProcess {
        op: "watch",
        pid: child.pid(),
        source,
    };
    let pidfd = child
        .pidfd()
        .ok_or_else(|| io(std::io::Error::from(std::io::ErrorKind::Unsupported)))?;
    let dup = pidfd.try_clone().map_err(io)?;
    crate::sandbox::control::pollable(dup).map_err(io)
}

/// "exited with …" for an agent that died during boot.
fn exit_reason(child: &mut NamespaceChild) -> String {
    match child.wait() {
        Ok(status) => format!("the agent exited before it was ready ({status})"),
        Err(e) => format!("the agent exited before it was ready ({e})"),
    }
}

/// Removes what the sandbox process made: the cgroup and the socket. The
/// rootfs stays until the sandbox is removed; its overlay mount lived in
/// the sandbox's mount namespace and went with it.
fn teardown(booted: Booted, socket: &Path) {
    let Booted {
        mut child,
        cgroup,
        network,
    } = booted;
    let _ = child.kill(libc::SIGKILL);
    let _ = child.wait();
    if let Some(mut network) = network {
        network.stop();
    }
    if let Some(mut cgroup) = cgroup
        && cgroup.remove().is_err()
    {
        let _ = cgroup.kill_all();
        if let Err(e) = cgroup.remove() {
            tracing::warn!(error = %e, "cannot remove the sandbox's cgroup");
        }
    }
    let _ = std::fs::remove_file(socket);
}
