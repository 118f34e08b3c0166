//! The sandbox process for the microVM backend: libkrun runs the VM in this
//! process (`krun_start_enter` never returns while the guest lives), with
//! the rootfs over virtio-fs, the agent as the guest's first process, its
//! vsock port mapped to `<dir>/agent.sock`, and the console in
//! `<dir>/console.log`.
//!
//! Because the VM takes the main thread, a watcher thread does the rest:
//! it waits for the agent's handshake on the socket and reports `ready`,
//! then keeps that connection and turns SIGTERM/SIGINT or the creator's
//! exit into a `Shutdown` request; the guest then powers off and libkrun
//! ends the process. A guest that dies first ends the process too, without
//! a `ready` line: the creator reports that as a boot failure with the
//! console's tail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use super::{BootEvent, Reporter, StopCause, creator_gone, failed, prepare_rootfs, record_final};
use crate::krun::{KrunContext, Rlimit, VirtiofsOptions};
use crate::rootfs::{AGENT_PATH, RootfsLayout, Strategy};
use crate::sandbox::client::AgentConnection;
use crate::sandbox::namespace::DEFAULT_PATH;
use crate::sandbox::network::{NetworkPolicy, Protocol, SandboxNetwork};
use crate::sandbox::socket::SocketPath;
use crate::sandbox::spec::{
    AGENT_SOCKET, AGENT_VSOCK_PORT, CONSOLE_LOG, SandboxSpec, VolumeSource,
};
use crate::sandbox::state::SandboxStatus;
use crate::{Error, Result};

/// vCPUs and MiB when the spec does not say.
const DEFAULT_CPUS: u8 = 1;
const DEFAULT_MEMORY_MIB: u32 = 512;
/// How often the watcher retries connecting while the guest boots.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

pub(super) fn main(spec: SandboxSpec, dir: &Path, started: Instant, mut reporter: Reporter) -> i32 {
    let layout = match mount_rootfs(&spec, dir) {
        Ok(layout) => layout,
        Err(e) => {
            reporter.send(&failed("rootfs", &e));
            return 1;
        }
    };
    // Before any thread exists: namespaces are per thread, and every thread
    // libkrun starts later inherits this one's.
    let _network = match isolate_network(&spec, dir) {
        Ok(network) => network,
        Err(e) => {
            reporter.send(&failed("network", &e));
            return 1;
        }
    };
    let socket = dir.join(AGENT_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let (ctx, _socket_dir) = match configure(&spec, dir, &layout, &socket) {
        Ok(ctx) => ctx,
        Err(e) => {
            reporter.send(&failed("vm configuration", &e));
            return 1;
        }
    };
    let watcher_spec = spec.clone();
    let watcher_dir = dir.to_path_buf();
    let watcher = std::thread::Builder::new()
        .name("msb-watcher".into())
        .spawn(move || watch(watcher_spec, watcher_dir, socket, started));
    if let Err(e) = watcher {
        reporter.send(&failed("watcher thread", &e));
        return 1;
    }
    reporter.send(&BootEvent::VmStarting);
    tracing::info!(sandbox = %spec.name, "starting the VM");
    let err = ctx.start_enter();
    reporter.send(&failed("vm", &err));
    tracing::error!(error = %err, "the VM could not start");
    1
}

/// Prepares the rootfs and makes `merged` the tree to share: the overlay is
/// mounted in a private mount namespace of this process (so it goes away
/// with it); where that is not permitted, the tree is copied instead.
fn mount_rootfs(spec: &SandboxSpec, dir: &Path) -> Result<RootfsLayout> {
    let layout = prepare_rootfs(spec, dir)?;
    if layout.strategy() != Strategy::Overlay {
        return Ok(layout);
    }
    match private_mount_namespace().and_then(|()| layout.mount_overlay()) {
        Ok(()) => Ok(layout),
        Err(e) => {
            tracing::warn!(error = %e, "overlay unavailable for the VM's rootfs: copying the tree");
            let copy = layout.with_strategy(Strategy::Copy);
            copy.prepare()?;
            copy.inject_agent(&spec.agent)?;
            Ok(copy)
        }
    }
}

/// Moves this process into a mount namespace of its own, with nothing
/// propagating back to the host.
fn private_mount_namespace() -> Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    let io = |op, e: nix::errno::Errno| Error::Io {
        op,
        path: PathBuf::from("/"),
        source: e.into(),
    };
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| io("unshare mount namespace at", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| io("make private", e))
}

/// The full libkrun configuration. Also returns the directory handle a
/// long socket path is reached through, which must stay open.
fn configure(
    spec: &SandboxSpec,
    dir: &Path,
    layout: &RootfsLayout,
    socket: &Path,
) -> Result<(KrunContext, SocketPath)> {
    let krun = |source| Error::BootFailed {
        name: spec.name.to_string(),
        stage: "vm configuration".into(),
        reason: format!("{source}"),
        console_tail: String::new(),
    };
    let mut ctx = KrunContext::new().map_err(krun)?;
    ctx.set_vm_config(
        spec.cpus.unwrap_or(DEFAULT_CPUS),
        spec.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
    )
    .map_err(krun)?;
    ctx.set_root(&layout.merged).map_err(krun)?;
    let port = AGENT_VSOCK_PORT.to_string();
    let mounts = share_volumes(&mut ctx, spec).map_err(krun)?;
    let mut env = vec![
        ("PATH", DEFAULT_PATH),
        ("MSB_AGENT_VSOCK_PORT", port.as_str()),
        ("MSB_AGENT_INIT", "1"),
        ("MSB_HOSTNAME", spec.hostname.as_str()),
    ];
    if !mounts.is_empty() {
        env.push((MOUNTS_ENV, mounts.as_str()));
    }
    ctx.set_exec(AGENT_PATH, &[] as &[&str], &env)
        .map_err(krun)?;
    let rlimits: Vec<Rlimit> = spec
        .rlimits
        .iter()
        .map(|r| Rlimit::new(r.resource.as_raw(), r.soft, r.hard))
        .collect();
    ctx.set_rlimits(&rlimits).map_err(krun)?;
    ctx.set_workdir("/").map_err(krun)?;
    configure_network(&mut ctx, spec).map_err(krun)?;
    let short = SocketPath::new(socket).map_err(|source| Error::Io {
        op: "open socket directory of",
        path: socket.to_path_buf(),
        source,
    })?;
    ctx.add_vsock_port2(AGENT_VSOCK_PORT, short.as_path(), true)
        .map_err(krun)?;
    ctx.set_console_output(&dir.join(CONSOLE_LOG))
        .map_err(krun)?;
    Ok((ctx, short))
}

/// Networking of the microVM: TSI (see [`crate::sandbox::network`] for
/// why), with the published TCP ports as libkrun's port map; networking off
/// keeps the vsock device (the agent's port) without TSI.
///
/// TSI's sockets are made by libkrun in this process; [`isolate_network`]
/// puts this process in a network namespace of its own first, so the
/// policy's rules apply to them.
fn configure_network(ctx: &mut KrunContext, spec: &SandboxSpec) -> std::io::Result<()> {
    let net = &spec.network;
    ctx.disable_implicit_vsock()?;
    if !net.enabled {
        return ctx.add_vsock(0);
    }
    ctx.add_vsock(krun_sys::KRUN_TSI_HIJACK_INET)?;
    let mut map = Vec::new();
    for p in &net.ports {
        if p.protocol != Protocol::Tcp || !p.host_addr.is_loopback() {
            // libkrun's port map is TCP only, bound where libkrun decides.
            tracing::warn!(
                port = %p.pasta_spec(),
                protocol = p.protocol.name(),
                "published port not supported by TSI; skipped"
            );
            continue;
        }
        map.push((p.host_port, p.guest_port));
    }
    ctx.set_port_map(&map)?;
    Ok(())
}

/// Moves this process (the VMM) into a network namespace of its own,
/// connected to the host by pasta under the policy's rules, as a namespace
/// sandbox's is: TSI's sockets are then made inside it, where the rules
/// hold and code in the guest cannot reach them. Published ports: pasta
/// forwards each host port to the same port here, where libkrun's port map
/// listens and passes it to the guest port.
///
/// Without the privilege for a network namespace (not root), the default
/// policy degrades to the host's network with a warning (the metadata
/// refusal is then not enforced); any other policy fails the boot.
fn isolate_network(spec: &SandboxSpec, dir: &Path) -> Result<Option<SandboxNetwork>> {
    use nix::sched::{CloneFlags, unshare};
    if !spec.network.enabled {
        return Ok(None);
    }
    // pasta's external side stays in the host's namespace.
    let host_net = std::fs::File::open("/proc/self/ns/net").map_err(|source| Error::Io {
        op: "open",
        path: PathBuf::from("/proc/self/ns/net"),
        source,
    })?;
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        if spec.network.policy == NetworkPolicy::allow_all() {
            tracing::warn!(error = %e, "no network namespace for the VMM: TSI uses the host's network, the metadata address is not refused");
            return Ok(None);
        }
        return Err(Error::Io {
            op: "unshare a network namespace (needed to enforce the network policy) at",
            path: dir.to_path_buf(),
            source: e.into(),
        });
    }
    let lo = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    if !lo.as_ref().is_ok_and(|s| s.success()) {
        tracing::warn!(status = ?lo, "cannot bring up lo in the VMM's network namespace");
    }
    let mut net = spec.network.clone();
    for port in &mut net.ports {
        port.guest_port = port.host_port;
    }
    SandboxNetwork::attach_from(std::process::id(), &net, dir, Some(&host_net)).map(Some)
}

/// The agent's environment variable listing the volumes to mount in init
/// mode: comma-separated `SOURCE:GUEST[:ro]`, where `SOURCE` is a
/// virtio-fs tag, `tmpfs` or `tmpfs=<MiB>`.
pub const MOUNTS_ENV: &str = "MSB_MOUNTS";

/// The virtio-fs tag of the `index`th volume.
fn volume_tag(index: usize) -> String {
    format!("msbvol{index}")
}

/// Shares every bind and named volume over virtio-fs and returns the
/// [`MOUNTS_ENV`] value telling the agent what to mount where.
fn share_volumes(ctx: &mut KrunContext, spec: &SandboxSpec) -> std::io::Result<String> {
    let mut entries = Vec::with_capacity(spec.volumes.len());
    for (i, v) in spec.volumes.iter().enumerate() {
        let source = match &v.source {
            VolumeSource::Bind { path } | VolumeSource::Named { path, .. } => {
                let tag = volume_tag(i);
                if v.read_only {
                    let options = VirtiofsOptions {
                        shm_size: 0,
                        read_only: true,
                    };
                    ctx.add_virtiofs_with(&tag, path, options)?;
                } else {
                    ctx.add_virtiofs(&tag, path)?;
                }
                tag
            }
            VolumeSource::Tmpfs { size_mib: None } => "tmpfs".to_owned(),
            VolumeSource::Tmpfs {
                size_mib: Some(mib),
            } => format!("tmpfs={mib}"),
        };
        let ro = if v.read_only { ":ro" } else { "" };
        entries.push(format!("{source}:{}{ro}", v.guest));
    }
    Ok(entries.join(","))
}

/// The watcher thread: readiness, then stop requests.
fn watch(spec: SandboxSpec, dir: PathBuf, socket: PathBuf, started: Instant) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "watcher runtime");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let mut reporter = Reporter::default();
        let (Ok(mut sigterm), Ok(mut sigint)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            reporter.send(&BootEvent::Failed {
                stage: "signals".into(),
                reason: "cannot install signal handlers".into(),
            });
            std::process::exit(1);
        };
        let deadline = tokio::time::sleep(spec.boot_timeout());
        tokio::pin!(deadline);
        let mut conn = loop {
            tokio::select! {
                conn = AgentConnection::connect(&socket) => match conn {
                    Ok(conn) => break conn,
                    Err(_) => tokio::time::sleep(CONNECT_RETRY).await,
                },
                _ = &mut deadline => {
                    reporter.send(&BootEvent::Failed {
                        stage: "agent handshake".into(),
                        reason: format!("the guest agent did not answer within {:?}", spec.boot_timeout()),
                    });
                    std::process::exit(1);
                }
                _ = sigterm.recv() => std::process::exit(1),
                _ = sigint.recv() => std::process::exit(1),
            }
        };
        let ready = conn.ready();
        reporter.send(&BootEvent::Ready {
            agent: ready.agent_version.clone(),
            timings: ready.timings.iter().map(|t| (t.phase.clone(), t.micros)).collect(),
            boot_micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        });
        let cause = tokio::select! {
            _ = sigterm.recv() => StopCause::Signal,
            _ = sigint.recv() => StopCause::Signal,
            () = creator_gone(&spec, &dir) => StopCause::CreatorExited,
            () = conn.closed() => StopCause::AgentExited,
        };
        if cause == StopCause::AgentExited {
            // The guest is going down on its own; libkrun ends the process.
            record_final(&spec, &dir, SandboxStatus::Crashed);
            return;
        }
        record_final(&spec, &dir, SandboxStatus::Stopped);
        let grace = spec.stop_grace();
        let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
        let _ = conn.shutdown(grace_ms).await;
        // The guest powers off, and libkrun exits the process; if it hangs,
        // end the VM ourselves.
        let _ = tokio::time::timeout(grace + Duration::from_secs(2), conn.closed()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        tracing::warn!("the guest did not power off: ending the VM");
        std::process::exit(0);
    });
}
