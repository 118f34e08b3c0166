//! Sandbox networking: on by default, published ports, and a policy of
//! which destinations code inside may reach.
//!
//! # Namespace isolation: pasta
//!
//! The sandbox has its own network namespace. With networking off it holds
//! only `lo`. With networking on, the sandbox process starts Debian's
//! `pasta` (package `passt`, user-mode networking: no root, no bridge, no
//! NAT rules on the host) attached to that namespace, *before* the agent is
//! released to run:
//!
//! ```text
//! pasta --config-net --foreground --quiet [--runas 0:0]
//!       -t none|127.0.0.1/8080:80,... -u none|... -T none -U none
//!       [--no-map-gw] --userns /proc/<pid>/ns/user --netns /proc/<pid>/ns/net
//!       -P <sandbox dir>/pasta.pid
//! ```
//!
//! - `--config-net` gives the namespace a copy of the host's address and
//!   default route; pasta turns the namespace's connections into ordinary
//!   host sockets.
//! - `-t`/`-u` publish host ports (bound on 127.0.0.1 unless told
//!   otherwise); `-T none -U none` turn off pasta's default of forwarding
//!   every port bound on the *host's* loopback into the namespace (which
//!   would bypass the policy), and `-t none -u none` its default of
//!   publishing every port bound inside.
//! - pasta maps the namespace's gateway address onto the host's loopback;
//!   `--no-map-gw` turns that off when the policy denies
//!   [`DestinationGroup::Loopback`].
//! - `--runas 0:0` as root: pasta otherwise drops to `nobody` before
//!   opening the namespaces, which `nobody` may not do.
//! - `--foreground`: pasta stays the sandbox process's child, with
//!   `PR_SET_PDEATHSIG`=`SIGKILL`, so it dies with the sandbox process even
//!   on `kill -9`, and is killed and reaped on every stop. (pasta keeps the
//!   namespace alive through its own descriptors: it does not leave by
//!   itself.) The pid file (`-P`) is written once the namespace is
//!   configured and is the readiness signal.
//!
//! `/etc/hosts` (`localhost` and the sandbox's hostname) and
//! `/etc/resolv.conf` are files of the sandbox directory bind-mounted over
//! the image's. The resolvers are the host's non-loopback nameservers,
//! reached through pasta; when the host only has a loopback stub (e.g.
//! systemd-resolved's 127.0.0.53), the sandbox's nameserver is the gateway
//! address and pasta forwards its DNS queries to the host's resolver
//! (`--dns-forward`). Either way DNS is subject to the policy: denying the
//! loopback group (stub case) or the resolver's group cuts name resolution.
//!
//! The [`policy`] is enforced from outside: see its docs.
//!
//! # microVMs: TSI
//!
//! A microVM uses libkrun's transparent socket impersonation (TSI): the
//! guest kernel hands `AF_INET` sockets to the VMM over vsock, which makes
//! them as ordinary sockets of the sandbox process. TSI needs no host
//! device, bridge, privilege or helper process, and published ports are
//! libkrun's port map — the same model as pasta's, so both backends behave
//! alike. A virtio-net device with a user-mode backend (passt/gvproxy)
//! would give the guest a full network stack (ICMP, raw sockets) at the
//! cost of one more process per sandbox. Networking off: the vsock device
//! is added without TSI (the agent's own vsock port keeps working).

pub mod policy;

mod files;
mod netns;
mod pasta;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use files::{HOSTS_FILE, RESOLV_FILE, write_files};
pub use pasta::Pasta;
pub use policy::{Action, Cidr, Destination, DestinationGroup, NetworkPolicy, Rule};

use crate::{Error, Result};

/// `CAP_NET_ADMIN` and `CAP_NET_RAW` (`linux/capability.h`): dropped from
/// the sandbox's bounding set when networking is on, so that root inside
/// can neither rewrite the policy's rules nor send raw frames past them.
pub const DROPPED_CAPABILITIES: [libc::c_int; 2] = [12, 13];

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded to a port inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host address the port is bound on (127.0.0.1 by default).
    pub host_addr: IpAddr,
    /// The host port.
    pub host_port: u16,
    /// The port inside.
    pub guest_port: u16,
}

impl PortMapping {
    /// `host_port` on 127.0.0.1 to `guest_port`.
    pub fn local(protocol: Protocol, host_port: u16, guest_port: u16) -> PortMapping {
        PortMapping {
            protocol,
            host_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port,
            guest_port,
        }
    }

    /// pasta's `-t`/`-u` spec: `127.0.0.1/8080:80`.
    pub fn pasta_spec(&self) -> String {
        format!("{}/{}:{}", self.host_addr, self.host_port, self.guest_port)
    }

    /// Fails with [`Error::PortInUse`] when the host port cannot be bound
    /// now (it is bound and released again at once).
    ///
    /// ```
    /// use msb_core::sandbox::network::{PortMapping, Protocol};
    ///
    /// let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let port = taken.local_addr().unwrap().port();
    /// let mapping = PortMapping::local(Protocol::Tcp, port, 80);
    /// assert!(mapping.check_available().is_err());
    /// ```
    pub fn check_available(&self) -> Result<()> {
        let addr = SocketAddr::new(self.host_addr, self.host_port);
        let bound = match self.protocol {
            Protocol::Tcp => TcpListener::bind(addr).map(drop),
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
        };
        bound.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied => {
                Error::PortInUse {
                    addr: self.host_addr,
                    port: self.host_port,
                    protocol: self.protocol.name(),
                }
            }
            _ => Error::NetworkSetup {
                step: "check a published port",
                reason: format!("cannot bind {addr}/{}: {e}", self.protocol.name()),
            },
        })
    }
}

/// A sandbox's network configuration, part of its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Whether the sandbox reaches anything beyond its own `lo`.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Which destinations may be reached.
    #[serde(default)]
    pub policy: NetworkPolicy,
}

fn enabled() -> bool {
    true
}

impl Default for NetworkSpec {
    /// Networking on, no published ports, [`NetworkPolicy::default`].
    fn default() -> NetworkSpec {
        NetworkSpec {
            enabled: true,
            ports: Vec::new(),
            policy: NetworkPolicy::default(),
        }
    }
}

impl NetworkSpec {
    /// Networking off: only `lo`.
    pub fn disabled() -> NetworkSpec {
        NetworkSpec {
            enabled: false,
            ..NetworkSpec::default()
        }
    }

    /// Checks every published port: no host port twice, none of them 0,
    /// each one free on the host ([`PortMapping::check_available`]).
    pub fn check_ports(&self) -> Result<()> {
        for (i, p) in self.ports.iter().enumerate() {
            if p.host_port == 0 || p.guest_port == 0 {
                return Err(Error::NetworkSetup {
                    step: "check a published port",
                    reason: format!("port 0 in {}/{}", p.pasta_spec(), p.protocol.name()),
                });
            }
            let twice = self.ports[..i].iter().any(|q| {
                q.protocol == p.protocol
                    && q.host_port == p.host_port
                    && (q.host_addr == p.host_addr
                        || q.host_addr.is_unspecified()
                        || p.host_addr.is_unspecified())
            });
            if twice {
                return Err(Error::PortInUse {
                    addr: p.host_addr,
                    port: p.host_port,
                    protocol: p.protocol.name(),
                });
            }
            p.check_available()?;
        }
        Ok(())
    }
}

/// The host side of a namespace sandbox's network: pasta, while it runs.
/// Dropping it kills and reaps pasta.
#[derive(Debug)]
pub struct SandboxNetwork {
    pasta: Option<Pasta>,
}

impl SandboxNetwork {
    /// Connects the network namespace of `pid` (blocked before its
    /// `execve`, see `NamespaceSpec::before_release`) as `spec` says:
    /// installs the policy's rules, starts pasta and waits until it has
    /// configured the namespace, then decides the gateway address.
    /// Nothing to do when networking is off.
    pub fn attach(pid: u32, spec: &NetworkSpec, dir: &Path) -> Result<SandboxNetwork> {
        Self::attach_from(pid, spec, dir, None)
    }

    /// [`attach`](Self::attach), with pasta run in the network namespace
    /// `outer` rather than the caller's (see [`Pasta::start_from`]).
    pub fn attach_from(
        pid: u32,
        spec: &NetworkSpec,
        dir: &Path,
        outer: Option<&std::fs::File>,
    ) -> Result<SandboxNetwork> {
        if !spec.enabled {
            return Ok(SandboxNetwork { pasta: None });
        }
        let ns = netns::Netns::open(pid)?;
        // Refusals first: nothing can pass while pasta comes up.
        ns.ip_batch(false, &spec.policy.ip_rules(false))?;
        ns.ip_batch(true, &spec.policy.ip_rules(true))?;
        let pasta = Pasta::start_from(pid, spec, dir, outer)?;
        for v6 in [false, true] {
            if let Some(gw) = ns.default_gateway(v6)? {
                ns.ip_batch(v6, &[spec.policy.gateway_rule(gw)])?;
            }
        }
        tracing::info!(
            pid,
            pasta = pasta.pid(),
            ports = spec.ports.len(),
            "sandbox network attached"
        );
        Ok(SandboxNetwork { pasta: Some(pasta) })
    }

    /// pasta's pid, when it runs.
    pub fn pasta_pid(&self) -> Option<u32> {
        self.pasta.as_ref().map(Pasta::pid)
    }

    /// Kills and reaps pasta.
    pub fn stop(&mut self) {
        if let Some(mut pasta) = self.pasta.take() {
            pasta.stop();
        }
    }
}

impl Drop for SandboxNetwork {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_default_to_networking_on() {
        let spec: NetworkSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, NetworkSpec::default());
        assert!(spec.enabled);
        assert!(!NetworkSpec::disabled().enabled);
    }

    #[test]
    fn pasta_specs() {
        let p = PortMapping::local(Protocol::Tcp, 8080, 80);
        assert_eq!(p.pasta_spec(), "127.0.0.1/8080:80");
    }

    #[test]
    fn ports_taken_or_twice_are_refused() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let spec = NetworkSpec {
            ports: vec![PortMapping::local(Protocol::Tcp, port, 80)],
            ..NetworkSpec::default()
        };
        assert!(matches!(
            spec.check_ports(),
            Err(Error::PortInUse { port: p, protocol: "tcp", .. }) if p == port
        ));
        drop(taken);
        spec.check_ports().unwrap();
        let twice = NetworkSpec {
            ports: vec![
                PortMapping::local(Protocol::Udp, port, 80),
                PortMapping::local(Protocol::Udp, port, 81),
            ],
            ..NetworkSpec::default()
        };
        assert!(matches!(twice.check_ports(), Err(Error::PortInUse { .. })));
    }
}
