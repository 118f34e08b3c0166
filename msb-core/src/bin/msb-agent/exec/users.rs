//! Who an exec runs as: `ExecStart::user` resolved against the sandbox's own
//! `/etc/passwd` and `/etc/group`.
//!
//! The agent is static and has no NSS, so the files are parsed here. The
//! accepted forms are `name`, `uid`, `uid:gid`, `name:group` (and the mixes
//! `name:gid`, `uid:group`). A name that is not in the files is
//! [`UserError::NoSuchUser`] / [`UserError::NoSuchGroup`]; a numeric uid that
//! is not in `/etc/passwd` is allowed (gid 0, `HOME=/`, as container
//! runtimes do).

use std::fs;

/// The identity an exec switches to before `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub uid: libc::uid_t,
    /// The primary group id.
    pub gid: libc::gid_t,
    /// Supplementary groups: the `/etc/group` entries naming the user as a
    /// member (empty for a user without a passwd entry).
    pub groups: Vec<libc::gid_t>,
    /// The home directory from `/etc/passwd` (`/` without an entry).
    pub home: String,
}

/// Why a `user` could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// The user part names no `/etc/passwd` entry.
    #[error("no such user: {name}")]
    NoSuchUser {
        /// The user as given.
        name: String,
    },
    /// The group part names no `/etc/group` entry.
    #[error("no such group: {name}")]
    NoSuchGroup {
        /// The group as given.
        name: String,
    },
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: libc::gid_t,
    members: Vec<String>,
}

/// Resolves `spec` against the sandbox's `/etc/passwd` and `/etc/group`
/// (a missing file counts as empty).
pub fn resolve(spec: &str) -> Result<Identity, UserError> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_in(spec, &passwd, &group)
}

/// [`resolve`] against the given file contents.
fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user_part.parse::<libc::uid_t>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid).cloned(),
        Err(_) => Some(
            users
                .iter()
                .find(|e| !user_part.is_empty() && e.name == user_part)
                .cloned()
                .ok_or_else(|| UserError::NoSuchUser {
                    name: user_part.to_owned(),
                })?,
        ),
    };
    let uid = match (&entry, user_part.parse::<libc::uid_t>()) {
        (Some(e), _) => e.uid,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => unreachable!("a name without an entry was refused above"),
    };
    let gid = match group_part {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| !g.is_empty() && e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoSuchGroup { name: g.to_owned() })?,
        },
    };
    let mut supplementary = Vec::new();
    if let Some(e) = &entry {
        for g in &groups {
            if g.members.contains(&e.name) && !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home: entry.map_or_else(|| "/".to_owned(), |e| e.home),
    })
}

/// The well-formed entries of an `/etc/passwd` (comments, blank and
/// malformed lines are skipped).
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

/// The well-formed entries of an `/etc/group`.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "# users\n\
        root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\n\
        nogroup:x:65534:\n\
        app:x:1000:\n\
        wheel:x:10:root,app\n\
        audio:x:29:app\n";

    fn id(spec: &str) -> Result<Identity, UserError> {
        resolve_in(spec, PASSWD, GROUP)
    }

    #[test]
    fn a_name_takes_ids_home_and_memberships_from_the_files() {
        assert_eq!(
            id("app").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![10, 29],
                home: "/home/app".into()
            }
        );
        assert_eq!(id("nobody").unwrap().groups, Vec::<u32>::new());
    }

    #[test]
    fn numeric_forms_need_no_entry() {
        let known = id("65534").unwrap();
        assert_eq!((known.uid, known.gid), (65534, 65534));
        assert_eq!(known.home, "/nonexistent");
        let unknown = id("4242").unwrap();
        assert_eq!((unknown.uid, unknown.gid), (4242, 0));
        assert_eq!(unknown.home, "/");
        let pair = id("4242:4343").unwrap();
        assert_eq!((pair.uid, pair.gid), (4242, 4343));
    }

    #[test]
    fn a_group_part_overrides_the_primary_group() {
        let i = id("app:wheel").unwrap();
        assert_eq!((i.uid, i.gid), (1000, 10));
        let i = id("root:65534").unwrap();
        assert_eq!((i.uid, i.gid), (0, 65534));
        let i = id("1000:audio").unwrap();
        assert_eq!((i.uid, i.gid), (1000, 29));
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(
            id("ghost"),
            Err(UserError::NoSuchUser {
                name: "ghost".into()
            })
        );
        assert_eq!(
            id("app:ghosts"),
            Err(UserError::NoSuchGroup {
                name: "ghosts".into()
            })
        );
        assert!(id("").is_err());
        assert!(resolve_in("root", "", "").is_err());
    }
}
