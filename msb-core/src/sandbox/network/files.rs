//! `/etc/hosts` and `/etc/resolv.conf` of a namespace sandbox, written to
//! the sandbox directory and bind-mounted over the image's.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The sandbox's hosts file, in the sandbox directory.
pub const HOSTS_FILE: &str = "hosts";
/// The sandbox's resolver configuration, in the sandbox directory.
pub const RESOLV_FILE: &str = "resolv.conf";

/// The hosts file: `localhost` and `hostname` on loopback.
fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Whether the host's resolver configuration names only loopback
/// nameservers (a stub resolver such as systemd-resolved's 127.0.0.53).
fn loopback_only(host: &str) -> bool {
    let servers: Vec<IpAddr> = host
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    !servers.is_empty() && servers.iter().all(IpAddr::is_loopback)
}

/// The gateway of the host's IPv4 default route (`/proc/net/route`).
fn default_gateway(route: &str) -> Option<IpAddr> {
    route.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"00000000") || fields.get(7) != Some(&"00000000") {
            return None;
        }
        let raw = u32::from_str_radix(fields.get(2)?, 16).ok()?;
        (raw != 0).then(|| IpAddr::V4(Ipv4Addr::from(u32::from_be(raw))))
    })
}

/// When the host resolves through a loopback stub only: the address inside
/// the sandbox whose DNS queries pasta forwards to the host's resolver
/// (`--dns-forward`), the gateway pasta copies from the host.
pub(super) fn dns_forward() -> Option<IpAddr> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !loopback_only(&host) {
        return None;
    }
    default_gateway(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

/// The host's resolver configuration with loopback nameservers left out
/// (a stub resolver on the host's 127.0.0.53 is not the sandbox's); with
/// `forward`, pasta's DNS forwarder in their place.
fn resolv(host: &str, forward: Option<IpAddr>) -> String {
    let mut out = String::from("# written by microsandbox from the host's resolv.conf\n");
    if let Some(addr) = forward {
        out.push_str(&format!("nameserver {addr}\n"));
    }
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let loopback = words
                    .next()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_none_or(|a| a.is_loopback());
                if !loopback {
                    out.push_str(line.trim());
                    out.push('\n');
                }
            }
            Some("search" | "domain" | "options") => {
                out.push_str(line.trim());
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Writes the hosts file (always) and, with networking on, the resolver
/// configuration into `dir`. Returns `(guest path, host file)` pairs to
/// bind-mount, leaving out a file whose path in the image is a symlink
/// (`lower` is the image's tree): the mount would be refused there.
pub fn write_files(
    dir: &Path,
    lower: &Path,
    hostname: &str,
    network: bool,
) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut files = vec![("/etc/hosts", HOSTS_FILE, hosts(hostname))];
    if network {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let forward = loopback_only(&host).then(dns_forward).flatten();
        files.push(("/etc/resolv.conf", RESOLV_FILE, resolv(&host, forward)));
    }
    let mut mounts = Vec::new();
    for (guest, name, text) in files {
        let in_image = lower.join(guest.trim_start_matches('/'));
        let linked = |p: &Path| {
            p.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        };
        if linked(&in_image) || linked(&lower.join("etc")) {
            tracing::warn!(path = guest, "a symlink in the image: not replaced");
            continue;
        }
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Io {
            op: "write",
            path: path.clone(),
            source,
        })?;
        mounts.push((guest, path));
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_are_left_out() {
        let text = resolv(
            "nameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch lan\n# x\n",
            None,
        );
        assert!(text.contains("nameserver 10.255.255.53\n"));
        assert!(!text.contains("127.0.0.53"));
        assert!(text.contains("search lan\n"));
    }

    #[test]
    fn a_loopback_stub_is_replaced_by_pasta_s_forwarder() {
        let host = "nameserver 127.0.0.53\noptions edns0\n";
        assert!(loopback_only(host));
        assert!(!loopback_only(
            "nameserver 127.0.0.53\nnameserver 10.0.0.1\n"
        ));
        assert!(!loopback_only(""));
        let text = resolv(host, Some("192.0.2.1".parse().unwrap()));
        assert!(text.contains("nameserver 192.0.2.1\n"), "{text}");
        assert!(!text.contains("127.0.0.53"));
    }

    #[test]
    fn the_default_gateway_is_read_from_proc() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(default_gateway(route), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(default_gateway("Iface\n"), None);
    }

    #[test]
    fn hosts_name_the_sandbox() {
        assert!(hosts("box").contains("127.0.1.1\tbox\n"));
        assert!(hosts("box").starts_with("127.0.0.1\tlocalhost\n"));
    }
}
