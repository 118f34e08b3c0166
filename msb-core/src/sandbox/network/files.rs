//! `/etc/hosts` and `/etc/resolv.conf` of a namespace sandbox, written to
//! the sandbox directory and bind-mounted over the image's.

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

/// The host's resolver configuration with loopback nameservers left out
/// (a stub resolver on the host's 127.0.0.53 is not the sandbox's).
fn resolv(host: &str) -> String {
    let mut out = String::from("# written by microsandbox from the host's resolv.conf\n");
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
        files.push(("/etc/resolv.conf", RESOLV_FILE, resolv(&host)));
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
        let text = resolv("nameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch lan\n# x\n");
        assert!(text.contains("nameserver 10.255.255.53\n"));
        assert!(!text.contains("127.0.0.53"));
        assert!(text.contains("search lan\n"));
    }

    #[test]
    fn hosts_name_the_sandbox() {
        assert!(hosts("box").contains("127.0.1.1\tbox\n"));
        assert!(hosts("box").starts_with("127.0.0.1\tlocalhost\n"));
    }
}
