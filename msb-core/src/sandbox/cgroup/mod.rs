//! Resource limits for a sandbox process: memory, CPU and PIDs, through
//! cgroup v2, the cgroup v1 controllers, or a hybrid of both.
//!
//! [`CgroupLayout::detect`] reads `/proc/self/mountinfo` and classifies the
//! host:
//!
//! - [`CgroupLayout::V2`]: one unified hierarchy; its root's
//!   `cgroup.controllers` says which controllers can be used.
//! - [`CgroupLayout::V1`]: one hierarchy per (group of) controller(s).
//! - [`CgroupLayout::Hybrid`]: v1 hierarchies for some controllers plus a
//!   unified hierarchy (usually carrying no resource controller). A
//!   controller is used from its v1 hierarchy, else from the unified one if
//!   it is listed there.
//! - [`CgroupLayout::None`]: no cgroup filesystem at all.
//!
//! [`CgroupLayout::plan`] says which controller, in which hierarchy, enforces
//! each requested limit, and fails with [`Error::CgroupUnavailable`] when one
//! cannot be enforced: a limit is never silently ignored.
//!
//! [`SandboxCgroup::create`] makes `microsandbox/<name>` under each
//! hierarchy a limit needs (directly under the hierarchy's mount point), and
//! writes the limits:
//!
//! | limit          | v2                            | v1                                           |
//! |----------------|-------------------------------|----------------------------------------------|
//! | `memory_bytes` | `memory.max`                  | `memory.limit_in_bytes`                      |
//! | `cpus`         | `cpu.max` = `"Q 100000"`      | `cpu.cfs_period_us` = 100000, `cpu.cfs_quota_us` = Q |
//! | `pids_max`     | `pids.max`                    | `pids.max`                                   |
//!
//! with `Q = round(cpus × 100000)` µs (at least 1000, the kernel's minimum).
//! On v2 the needed controllers are first enabled in the root's and in
//! `microsandbox/`'s `cgroup.subtree_control`. Swap is not limited: on a
//! host with swap, memory beyond the limit is swapped rather than OOM-killed.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sandbox::state::SandboxName;
use crate::{Error, Result};

/// The directory created under each hierarchy, holding one cgroup per
/// sandbox.
pub const PARENT_DIR: &str = "microsandbox";

/// The CFS period used for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest CFS quota the kernel accepts, in microseconds.
pub const CPU_MIN_QUOTA_US: u64 = 1_000;

/// How long [`SandboxCgroup::remove`] retries while the cgroup is still
/// populated by exiting processes.
pub const REMOVE_RETRY: Duration = Duration::from_secs(1);

/// v1 controller names recognised in `cgroup` mount options.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// A controller a [`Limits`] field is enforced by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    /// `memory`: [`Limits::memory_bytes`].
    Memory,
    /// `cpu`: [`Limits::cpus`].
    Cpu,
    /// `pids`: [`Limits::pids_max`].
    Pids,
}

impl Controller {
    /// All controllers, in the order limits are written.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a controller cannot be used ([`Error::CgroupUnavailable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// No cgroup filesystem (v1 or v2) is mounted.
    #[error("no cgroup filesystem is mounted")]
    NoCgroupFs,
    /// No v1 hierarchy has the controller and the unified hierarchy (if any)
    /// does not list it in its `cgroup.controllers`.
    #[error("no v1 hierarchy has it and the unified hierarchy {} does not offer it", unified.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()))]
    NotMounted {
        /// The unified hierarchy's mount point, if one is mounted.
        unified: Option<PathBuf>,
    },
    /// The v2 hierarchy at `root` does not list the controller in its
    /// `cgroup.controllers` (it is bound to a v1 hierarchy, or not
    /// delegated).
    #[error("not listed in {}/cgroup.controllers", root.display())]
    NotInV2 {
        /// The v2 hierarchy's mount point.
        root: PathBuf,
    },
}

/// A cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// cgroup v1 (one hierarchy per controller group).
    V1,
    /// cgroup v2 (the unified hierarchy).
    V2,
}

/// Where a limit is enforced: a controller in a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The controller.
    pub controller: Controller,
    /// The version of the hierarchy it lives in.
    pub version: CgroupVersion,
    /// The hierarchy's mount point.
    pub hierarchy: PathBuf,
}

/// The cgroup filesystems of this host, as seen from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only the unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
        /// The controllers its root offers (`cgroup.controllers`).
        controllers: Vec<String>,
    },
    /// Only v1 hierarchies.
    V1 {
        /// Each v1 controller's hierarchy mount point (co-mounted controllers,
        /// like `cpu,cpuacct`, share one).
        controllers: BTreeMap<String, PathBuf>,
    },
    /// v1 hierarchies with controllers plus a unified hierarchy.
    Hybrid {
        /// Each v1 controller's hierarchy mount point.
        v1: BTreeMap<String, PathBuf>,
        /// The unified hierarchy's mount point.
        unified: PathBuf,
        /// The controllers the unified hierarchy offers (often none).
        unified_controllers: Vec<String>,
    },
    /// No cgroup filesystem.
    None,
}

impl CgroupLayout {
    /// Detects the layout from `/proc/self/mountinfo` (and the unified
    /// hierarchy's `cgroup.controllers`).
    pub fn detect() -> Result<Self> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
        Self::from_mountinfo(&text)
    }

    /// Classifies the cgroup mounts listed in `mountinfo` (the text of a
    /// `/proc/<pid>/mountinfo`); the first mount of each hierarchy wins.
    pub fn from_mountinfo(mountinfo: &str) -> Result<Self> {
        let mut v1: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut unified: Option<PathBuf> = None;
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mount_point), Some(fstype), Some(super_opts)) =
                (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match *fstype {
                "cgroup2" if unified.is_none() => unified = Some(mount_point),
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) && !v1.contains_key(opt) {
                            v1.insert(opt.to_owned(), mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        let unified_controllers = |root: &Path| -> Result<Vec<String>> {
            let path = root.join("cgroup.controllers");
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                op: "read",
                path,
                source,
            })?;
            Ok(text.split_whitespace().map(str::to_owned).collect())
        };
        Ok(match (unified, v1.is_empty()) {
            (Some(root), true) => CgroupLayout::V2 {
                controllers: unified_controllers(&root)?,
                root,
            },
            (Some(unified), false) => CgroupLayout::Hybrid {
                unified_controllers: unified_controllers(&unified)?,
                unified,
                v1,
            },
            (None, false) => CgroupLayout::V1 { controllers: v1 },
            (None, true) => CgroupLayout::None,
        })
    }

    /// Where `controller` would be used, or why it cannot be.
    pub fn placement(&self, controller: Controller) -> Result<Placement> {
        let name = controller.name();
        let v1 = |hierarchy: &PathBuf| Placement {
            controller,
            version: CgroupVersion::V1,
            hierarchy: hierarchy.clone(),
        };
        let v2 = |root: &PathBuf| Placement {
            controller,
            version: CgroupVersion::V2,
            hierarchy: root.clone(),
        };
        let unavailable = |reason| Error::CgroupUnavailable { controller, reason };
        match self {
            CgroupLayout::V2 { root, controllers } => {
                if controllers.iter().any(|c| c == name) {
                    Ok(v2(root))
                } else {
                    Err(unavailable(UnavailableReason::NotInV2 {
                        root: root.clone(),
                    }))
                }
            }
            CgroupLayout::V1 { controllers } => controllers
                .get(name)
                .map(v1)
                .ok_or_else(|| unavailable(UnavailableReason::NotMounted { unified: None })),
            CgroupLayout::Hybrid {
                v1: controllers,
                unified,
                unified_controllers,
            } => {
                if let Some(hierarchy) = controllers.get(name) {
                    Ok(v1(hierarchy))
                } else if unified_controllers.iter().any(|c| c == name) {
                    Ok(v2(unified))
                } else {
                    Err(unavailable(UnavailableReason::NotMounted {
                        unified: Some(unified.clone()),
                    }))
                }
            }
            CgroupLayout::None => Err(unavailable(UnavailableReason::NoCgroupFs)),
        }
    }

    /// Where each limit set in `limits` would be enforced (in
    /// [`Controller::ALL`] order), after checking the values; fails with
    /// [`Error::CgroupUnavailable`] for the first that cannot be.
    pub fn plan(&self, limits: &Limits) -> Result<Vec<Placement>> {
        limits.validate()?;
        limits
            .requested()
            .into_iter()
            .map(|c| self.placement(c))
            .collect()
    }
}

/// Decodes the octal escapes (`\040` etc.) of a mountinfo path field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resource limits for a sandbox; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (v1 rounds it down to a page multiple).
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs (0.5 = half of one CPU), as a CFS quota over a
    /// [`CPU_PERIOD_US`] period.
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: Option<u64>,
}

impl Limits {
    /// The controllers the set limits need, in [`Controller::ALL`] order.
    pub fn requested(&self) -> Vec<Controller> {
        let mut out = Vec::new();
        if self.memory_bytes.is_some() {
            out.push(Controller::Memory);
        }
        if self.cpus.is_some() {
            out.push(Controller::Cpu);
        }
        if self.pids_max.is_some() {
            out.push(Controller::Pids);
        }
        out
    }

    /// The CFS quota for [`Limits::cpus`], in microseconds per
    /// [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpus
            .map(|cpus| ((cpus * CPU_PERIOD_US as f64).round() as u64).max(CPU_MIN_QUOTA_US))
    }

    /// Checks the values: memory and CPUs must be positive (CPUs finite).
    pub fn validate(&self) -> Result<()> {
        if self.memory_bytes == Some(0) {
            return Err(Error::InvalidCgroupLimit {
                limit: "memory_bytes",
                reason: "must be positive",
            });
        }
        if let Some(cpus) = self.cpus
            && !(cpus.is_finite() && cpus > 0.0)
        {
            return Err(Error::InvalidCgroupLimit {
                limit: "cpus",
                reason: "must be a positive, finite number",
            });
        }
        Ok(())
    }
}

/// Usage figures of a [`SandboxCgroup`]; `None` where its controller is not
/// part of the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Memory in use, bytes (`memory.current` / `memory.usage_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// OOM kills so far (`oom_kill` in `memory.events` / `memory.oom_control`).
    pub oom_kills: Option<u64>,
    /// Tasks in the cgroup (`pids.current`).
    pub pids: Option<u64>,
}

/// One directory of a [`SandboxCgroup`].
#[derive(Debug, Clone)]
struct Dir {
    path: PathBuf,
    version: CgroupVersion,
    controllers: Vec<Controller>,
}

/// The cgroup(s) of one sandbox: `microsandbox/<name>` in each hierarchy its
/// limits need. Dropping it removes them, best effort (one attempt each);
/// [`SandboxCgroup::remove`] waits for exiting processes and reports errors.
#[derive(Debug)]
pub struct SandboxCgroup {
    name: String,
    placements: Vec<Placement>,
    dirs: Vec<Dir>,
}

impl SandboxCgroup {
    /// Creates the cgroups for sandbox `name` (validated as a
    /// [`SandboxName`]) and writes `limits`. A leftover empty cgroup of the
    /// same name is replaced; a populated one is [`Error::CgroupBusy`]. On
    /// failure whatever was created is removed again.
    pub fn create(layout: &CgroupLayout, name: &str, limits: &Limits) -> Result<Self> {
        let name = SandboxName::new(name)?.as_str().to_owned();
        let placements = layout.plan(limits)?;

        // Group the placements by hierarchy: one directory each.
        let mut dirs: Vec<Dir> = Vec::new();
        for p in &placements {
            let path = p.hierarchy.join(PARENT_DIR).join(&name);
            match dirs.iter_mut().find(|d| d.path == path) {
                Some(d) => d.controllers.push(p.controller),
                None => dirs.push(Dir {
                    path,
                    version: p.version,
                    controllers: vec![p.controller],
                }),
            }
        }

        let mut cgroup = SandboxCgroup {
            name,
            placements,
            dirs: Vec::new(),
        };
        for dir in dirs {
            let parent = dir.path.parent().expect("has a parent").to_path_buf();
            let hierarchy = parent.parent().expect("has a parent").to_path_buf();
            let enable = if dir.version == CgroupVersion::V2 {
                dir.controllers
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                String::new()
            };
            if !enable.is_empty() {
                write_file(&hierarchy.join("cgroup.subtree_control"), &enable)?;
            }
            mkdir(&parent, true)?;
            if !enable.is_empty() {
                write_file(&parent.join("cgroup.subtree_control"), &enable)?;
            }
            if let Err(e) = mkdir(&dir.path, false) {
                let Error::Io { source, .. } = &e else {
                    return Err(e);
                };
                if source.kind() != ErrorKind::AlreadyExists {
                    return Err(e);
                }
                // A leftover from a sandbox that crashed: reuse only if empty.
                rmdir_retrying(&dir.path, Duration::ZERO)?;
                mkdir(&dir.path, false)?;
            }
            cgroup.dirs.push(dir);
        }
        for dir in &cgroup.dirs {
            for c in &dir.controllers {
                write_limit(dir, *c, limits)?;
            }
        }
        Ok(cgroup)
    }

    /// The sandbox name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where each limit is enforced.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The cgroup directories (one per hierarchy used).
    pub fn paths(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.path.as_path()).collect()
    }

    /// The directory enforcing `controller`, if it is part of this cgroup.
    pub fn path_of(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&controller))
            .map(|d| d.path.as_path())
    }

    /// Moves process `pid` (and all its threads) into every directory.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        for dir in &self.dirs {
            write_file(&dir.path.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the cgroup (in any of its directories), sorted.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            out.extend(read_procs(&dir.path)?);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Sends SIGKILL to every process in the cgroup, repeating (a few
    /// times) while new ones keep appearing. Processes are not waited for.
    pub fn kill_all(&self) -> Result<()> {
        for _ in 0..16 {
            let pids = self.pids()?;
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let Ok(pid) = libc::pid_t::try_from(pid) else {
                    continue;
                };
                // SAFETY: kill(2) takes plain integers and touches no memory
                // of ours; a failure (ESRCH: already gone) is ignored.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Current usage.
    pub fn stats(&self) -> Result<CgroupStats> {
        let mut stats = CgroupStats::default();
        if let Some(dir) = self.dir_of(Controller::Memory) {
            let (usage, events, key) = match dir.version {
                CgroupVersion::V2 => ("memory.current", "memory.events", "oom_kill"),
                CgroupVersion::V1 => ("memory.usage_in_bytes", "memory.oom_control", "oom_kill"),
            };
            stats.memory_bytes = Some(read_u64(&dir.path.join(usage))?);
            let text = read_file(&dir.path.join(events))?;
            stats.oom_kills = text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            });
        }
        if let Some(dir) = self.dir_of(Controller::Pids) {
            stats.pids = Some(read_u64(&dir.path.join("pids.current"))?);
        }
        Ok(stats)
    }

    /// Removes every directory. While one is still populated (processes
    /// exiting), retries for up to [`REMOVE_RETRY`], then fails with
    /// [`Error::CgroupBusy`]; the handle stays usable for another try
    /// (e.g. after [`SandboxCgroup::kill_all`]). Idempotent.
    pub fn remove(&mut self) -> Result<()> {
        while let Some(dir) = self.dirs.last() {
            rmdir_retrying(&dir.path, REMOVE_RETRY)?;
            self.dirs.pop();
        }
        Ok(())
    }

    fn dir_of(&self, controller: Controller) -> Option<&Dir> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&controller))
    }
}

/// Removes what a sandbox named `name` left in the cgroup hierarchies of
/// `layout` (its process was killed before it could clean up): every
/// process still in `microsandbox/<name>` gets SIGKILL, then the directories
/// are removed, waiting up to [`REMOVE_RETRY`] for the processes to go.
/// Nothing there is not an error.
pub fn remove_stale(layout: &CgroupLayout, name: &str) -> Result<()> {
    let name = SandboxName::new(name)?;
    let mut dirs: Vec<PathBuf> = Controller::ALL
        .iter()
        .filter_map(|c| layout.placement(*c).ok())
        .map(|p| p.hierarchy.join(PARENT_DIR).join(name.as_str()))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        for _ in 0..16 {
            let pids = read_procs(dir)?;
            if pids.is_empty() {
                break;
            }
            for pid in pids
                .into_iter()
                .filter_map(|p| libc::pid_t::try_from(p).ok())
            {
                // SAFETY: kill(2) takes plain integers and touches no memory
                // of ours; ESRCH (already gone) is ignored.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        rmdir_retrying(dir, REMOVE_RETRY)?;
    }
    Ok(())
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(&dir.path);
        }
    }
}

/// Writes the file(s) of `controller`'s limit into `dir`.
fn write_limit(dir: &Dir, controller: Controller, limits: &Limits) -> Result<()> {
    let p = |f: &str| dir.path.join(f);
    match (controller, dir.version) {
        (Controller::Memory, version) => {
            if let Some(bytes) = limits.memory_bytes {
                let file = match version {
                    CgroupVersion::V2 => "memory.max",
                    CgroupVersion::V1 => "memory.limit_in_bytes",
                };
                write_file(&p(file), &bytes.to_string())?;
            }
        }
        (Controller::Cpu, CgroupVersion::V2) => {
            if let Some(quota) = limits.cpu_quota_us() {
                write_file(&p("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
        }
        (Controller::Cpu, CgroupVersion::V1) => {
            if let Some(quota) = limits.cpu_quota_us() {
                write_file(&p("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&p("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        (Controller::Pids, _) => {
            if let Some(max) = limits.pids_max {
                write_file(&p("pids.max"), &max.to_string())?;
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Io {
        op: "write cgroup file",
        path: path.into(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read cgroup file",
        path: path.into(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| Error::Io {
        op: "parse cgroup file",
        path: path.into(),
        source: std::io::Error::new(ErrorKind::InvalidData, format!("not a number: {text:?}")),
    })
}

fn read_procs(dir: &Path) -> Result<Vec<u32>> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Io {
            op: "read cgroup file",
            path: dir.join("cgroup.procs"),
            source,
        }),
    }
}

fn mkdir(path: &Path, exist_ok: bool) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if exist_ok && e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Io {
            op: "create cgroup",
            path: path.into(),
            source,
        }),
    }
}

/// `rmdir` that retries on `EBUSY` for up to `patience`; a missing directory
/// counts as removed.
fn rmdir_retrying(path: &Path, patience: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if start.elapsed() >= patience {
                    return Err(Error::CgroupBusy {
                        path: path.into(),
                        pids: read_procs(path)?,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Io {
                    op: "remove cgroup",
                    path: path.into(),
                    source,
                });
            }
        }
    }
}
