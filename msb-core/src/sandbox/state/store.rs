//! The state store: one directory per sandbox under `<home>/sandboxes/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, Flock, FlockArg, RenameFlags, renameat2};

use super::process::ProcessIdentity;
use super::record::{Backend, RECORD_VERSION, SandboxRecord, SandboxStatus};
use super::{SandboxName, StateCorruptionKind};
use crate::{Error, Result};

/// The directory under the state home that holds one directory per sandbox.
pub const SANDBOXES_DIR: &str = "sandboxes";
/// The record file in a sandbox's directory.
pub const STATE_FILE: &str = "state.json";
/// The lock file in a sandbox's directory; updates hold an exclusive
/// `flock` on it.
pub const LOCK_FILE: &str = "lock";
/// Prefix of the store's scratch directories (staging a new sandbox, or a
/// removed one being deleted): `.tmp.<pid>.<start time>.<seq>`. Names that
/// start with `.` are never valid sandbox names, so these never collide.
const TMP_PREFIX: &str = ".tmp.";
/// The temporary file a new `state.json` is written to before the rename.
const STATE_TMP_FILE: &str = "state.json.tmp";
/// `state.json` files larger than this are refused as corrupt.
const MAX_STATE_LEN: u64 = 8 << 20;
/// How many times a lock is retried when the sandbox was replaced while
/// waiting for it.
const LOCK_ATTEMPTS: usize = 16;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Sandbox records under `<home>/sandboxes/`, safe to use from many threads
/// and processes at once.
///
/// Layout:
///
/// ```text
/// <home>/sandboxes/
///   <name>/
///     state.json        the SandboxRecord, replaced atomically on each write
///     lock              flock'ed exclusively by every update and removal
///   .tmp.<pid>.<start>.<n>/   scratch: a sandbox being staged or deleted
/// ```
///
/// Concurrency rules:
/// - **Create** stages `state.json` and `lock` in a scratch directory and
///   renames it to `<name>` with `RENAME_NOREPLACE`: the rename is the
///   claim, so of two concurrent creators exactly one wins and the other
///   gets [`Error::SandboxAlreadyExists`] at once, and a sandbox directory
///   is never visible without its record. (On a filesystem without
///   `RENAME_NOREPLACE` an exclusive `mkdir` is the claim instead.)
/// - **Reads** take no lock: `state.json` is only ever replaced by rename.
/// - **Updates and removal** hold an exclusive `flock` on `<name>/lock`.
///   Removal renames the directory away before deleting it, so a waiter
///   that then gets the lock sees the lock file is no longer linked and
///   starts over (finding the name gone, or a new sandbox under it).
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed) the store under state home `home`, and
    /// deletes scratch directories left by processes that died.
    pub fn open(home: impl AsRef<Path>) -> Result<Self> {
        let root = home.as_ref().join(SANDBOXES_DIR);
        fs::create_dir_all(&root).map_err(|source| Error::Io {
            op: "create directory",
            path: root.clone(),
            source,
        })?;
        let store = Self { root };
        store.sweep_scratch();
        Ok(store)
    }

    /// Opens the store under [`crate::paths::state_home()`].
    pub fn open_default() -> Result<Self> {
        Self::open(crate::paths::state_home())
    }

    /// `<home>/sandboxes`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<home>/sandboxes/<name>`, whether or not it exists.
    pub fn sandbox_dir(&self, name: &SandboxName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// Claims `name` for a new sandbox and records it as
    /// [`SandboxStatus::Creating`], owned by the calling process.
    ///
    /// Fails at once with [`Error::SandboxAlreadyExists`] when a record of
    /// that name exists in any state (running, stopped, crashed, corrupt,
    /// or being created by someone else); replacing it is the caller's
    /// decision ([`StateStore::remove`] first). The returned reservation
    /// must be [committed](Reservation::commit) once the sandbox process
    /// runs; dropping it removes the record again.
    pub fn create(
        &self,
        name: &SandboxName,
        config: serde_json::Value,
        backend: Backend,
    ) -> Result<Reservation> {
        let creator = ProcessIdentity::current();
        let now = SystemTime::now();
        let instance_id = new_instance_id(now);
        let record = SandboxRecord {
            version: RECORD_VERSION,
            name: name.clone(),
            instance_id: instance_id.clone(),
            config,
            status: SandboxStatus::Creating,
            pid: Some(std::process::id()),
            start_time: creator.map(|c| c.start_time),
            created_at: now,
            updated_at: now,
            backend,
        };

        let staging = self.scratch_path();
        make_dir(&staging)?;
        let result = self.publish(&staging, name, &record);
        // After a successful rename the staging path is gone (NotFound).
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %staging.display(), error = %e, "cannot remove staging directory");
            }
            _ => {}
        }
        result?;
        tracing::debug!(sandbox = %name, instance = %instance_id, "sandbox name reserved");
        Ok(Reservation {
            store: self.clone(),
            name: name.clone(),
            instance_id,
            done: false,
        })
    }

    /// Fills `staging` and moves it to `<name>` without replacing anything.
    fn publish(&self, staging: &Path, name: &SandboxName, record: &SandboxRecord) -> Result<()> {
        write_record(staging, record)?;
        let lock = staging.join(LOCK_FILE);
        File::create(&lock).map_err(|source| Error::Io {
            op: "create",
            path: lock,
            source,
        })?;
        sync_dir(staging)?;
        let dir = self.sandbox_dir(name);
        match renameat2(
            AT_FDCWD,
            staging,
            AT_FDCWD,
            &dir,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                return Err(Error::SandboxAlreadyExists {
                    name: name.to_string(),
                });
            }
            Err(Errno::EINVAL | Errno::ENOSYS) => {
                return self.publish_by_mkdir(staging, &dir, name);
            }
            Err(e) => {
                return Err(Error::Io {
                    op: "rename staged sandbox directory to",
                    path: dir,
                    source: e.into(),
                });
            }
        }
        sync_dir(&self.root)
    }

    /// The claim for filesystems without `RENAME_NOREPLACE`: an exclusive
    /// `mkdir` of `<name>`, then the staged files moved in (lock first, so
    /// a half-published directory can be locked and removed).
    fn publish_by_mkdir(&self, staging: &Path, dir: &Path, name: &SandboxName) -> Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::SandboxAlreadyExists {
                    name: name.to_string(),
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    op: "create directory",
                    path: dir.to_owned(),
                    source,
                });
            }
        }
        let moved = [LOCK_FILE, STATE_FILE].iter().try_for_each(|file| {
            fs::rename(staging.join(file), dir.join(file)).map_err(|source| Error::Io {
                op: "move staged file to",
                path: dir.join(file),
                source,
            })
        });
        if let Err(e) = moved
            .and_then(|()| sync_dir(dir))
            .and_then(|()| sync_dir(&self.root))
        {
            let _ = fs::remove_dir_all(dir);
            return Err(e);
        }
        Ok(())
    }

    /// The record of `name`, or `None` if there is none.
    ///
    /// Fails with [`Error::CorruptSandboxState`] when the directory exists
    /// but its `state.json` is missing, unreadable as a record, or names
    /// another sandbox.
    pub fn get(&self, name: &SandboxName) -> Result<Option<SandboxRecord>> {
        read_record(&self.sandbox_dir(name), name)
    }

    /// The live status of `name` (see [`SandboxRecord::live_status`]):
    /// never `Running` for a process that is gone or whose pid was reused.
    pub fn status(&self, name: &SandboxName) -> Result<SandboxStatus> {
        self.get(name)?
            .map(|r| r.live_status())
            .ok_or_else(|| not_found(name))
    }

    /// All readable records, sorted by name.
    ///
    /// A sandbox whose record is corrupt is skipped with a `warn` event
    /// rather than failing the whole listing: one damaged directory must not
    /// hide every other sandbox. [`StateStore::get`] on that name reports
    /// the corruption, and [`StateStore::remove`] can delete it. Scratch
    /// directories and entries that are not valid sandbox names are
    /// ignored. Other I/O errors fail the listing.
    pub fn list(&self) -> Result<Vec<SandboxRecord>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "read directory",
                    path: self.root.clone(),
                    source,
                });
            }
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                op: "read directory",
                path: self.root.clone(),
                source,
            })?;
            let file_name = entry.file_name();
            let Some(text) = file_name.to_str() else {
                continue;
            };
            if text.starts_with('.') {
                continue;
            }
            let Ok(name) = SandboxName::new(text) else {
                tracing::warn!(entry = %entry.path().display(), "ignoring entry that is not a valid sandbox name");
                continue;
            };
            match self.get(&name) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {} // removed meanwhile
                Err(e @ Error::CorruptSandboxState { .. }) => {
                    tracing::warn!(sandbox = %name, error = %e, "skipping sandbox with corrupt state");
                }
                Err(e) => return Err(e),
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Records `name` as running in process `pid`, with that process'
    /// start time. If `pid` is already gone, the record says
    /// [`SandboxStatus::Crashed`] instead (and is returned as such).
    pub fn set_running(&self, name: &SandboxName, pid: u32) -> Result<SandboxRecord> {
        match ProcessIdentity::of(pid) {
            Some(process) => self.set_running_process(name, process),
            None => self.update(name, None, |r| {
                r.status = SandboxStatus::Crashed;
                r.pid = Some(pid);
                r.start_time = None;
                Ok(())
            }),
        }
    }

    /// Records `name` as running in `process` (a pid and start time the
    /// caller read itself, e.g. right after spawning).
    pub fn set_running_process(
        &self,
        name: &SandboxName,
        process: ProcessIdentity,
    ) -> Result<SandboxRecord> {
        self.update(name, None, |r| {
            r.status = SandboxStatus::Running;
            r.pid = Some(process.pid);
            r.start_time = Some(process.start_time);
            Ok(())
        })
    }

    /// Records `name` as stopped in an orderly way. The last pid and start
    /// time are kept for reference.
    pub fn set_stopped(&self, name: &SandboxName) -> Result<SandboxRecord> {
        self.update(name, None, |r| {
            r.status = SandboxStatus::Stopped;
            Ok(())
        })
    }

    /// Records incarnation `instance` of `name` as running in `process`,
    /// only if no process of it is alive (a restart); otherwise
    /// [`Error::SandboxStillRunning`], so two restarts cannot both win.
    pub fn set_running_if_down(
        &self,
        name: &SandboxName,
        instance: &str,
        process: ProcessIdentity,
    ) -> Result<SandboxRecord> {
        self.update(name, Some(instance), |r| {
            if let Some(live) = r.live_process() {
                return Err(Error::SandboxStillRunning {
                    name: name.to_string(),
                    pid: live.pid,
                });
            }
            r.status = SandboxStatus::Running;
            r.pid = Some(process.pid);
            r.start_time = Some(process.start_time);
            Ok(())
        })
    }

    /// Records the final status of incarnation `instance` of `name`
    /// (`Stopped` after an orderly stop, `Crashed` when the guest died on
    /// its own). [`Error::SandboxNotFound`] when the name now belongs to
    /// another incarnation: a replaced sandbox never overwrites its successor.
    pub fn set_final_status(
        &self,
        name: &SandboxName,
        instance: &str,
        status: SandboxStatus,
    ) -> Result<SandboxRecord> {
        self.update(name, Some(instance), |r| {
            r.status = status;
            Ok(())
        })
    }

    /// Deletes the record of `name`.
    ///
    /// Refuses with [`Error::SandboxStillRunning`] while its process is
    /// alive (for a record still being created, the creator's process).
    /// A corrupt record is removed (with a `warn` event), since nothing
    /// else could ever clear it. [`Error::SandboxNotFound`] if there is
    /// no such sandbox.
    pub fn remove(&self, name: &SandboxName) -> Result<()> {
        self.remove_checked(name, None)
    }

    /// Removes `name` under its lock. Without `instance` (a user's
    /// removal), refuses while the record's process is alive. With
    /// `instance` (a reservation removing its own record), only removes
    /// that incarnation, whatever its process, and never a corrupt record.
    fn remove_checked(&self, name: &SandboxName, instance: Option<&str>) -> Result<()> {
        let dir = self.sandbox_dir(name);
        let _lock = self.lock(name)?;
        match read_record(&dir, name) {
            Ok(None) => return Err(not_found(name)),
            Ok(Some(record)) => {
                if instance.is_some_and(|i| i != record.instance_id) {
                    return Err(not_found(name));
                }
                if let (None, Some(process)) = (instance, record.live_process()) {
                    return Err(Error::SandboxStillRunning {
                        name: name.to_string(),
                        pid: process.pid,
                    });
                }
            }
            Err(e @ Error::CorruptSandboxState { .. }) => {
                if instance.is_some() {
                    return Err(e);
                }
                tracing::warn!(sandbox = %name, error = %e, "removing sandbox with corrupt state");
            }
            Err(e) => return Err(e),
        }
        // Rename first: the name disappears atomically, and lock waiters
        // see that the lock they got is no longer linked.
        let trash = self.scratch_path();
        fs::rename(&dir, &trash).map_err(|source| Error::Io {
            op: "rename sandbox directory to",
            path: trash.clone(),
            source,
        })?;
        sync_dir(&self.root)?;
        fs::remove_dir_all(&trash).map_err(|source| Error::Io {
            op: "remove directory",
            path: trash,
            source,
        })?;
        tracing::debug!(sandbox = %name, "sandbox record removed");
        Ok(())
    }

    /// Reads, changes and rewrites the record of `name` under its lock.
    /// With `instance`, only if the record is still that incarnation.
    fn update(
        &self,
        name: &SandboxName,
        instance: Option<&str>,
        change: impl FnOnce(&mut SandboxRecord) -> Result<()>,
    ) -> Result<SandboxRecord> {
        let dir = self.sandbox_dir(name);
        let _lock = self.lock(name)?;
        let mut record = read_record(&dir, name)?.ok_or_else(|| not_found(name))?;
        if instance.is_some_and(|i| i != record.instance_id) {
            return Err(not_found(name));
        }
        change(&mut record)?;
        record.updated_at = SystemTime::now().max(record.updated_at);
        write_record(&dir, &record)?;
        Ok(record)
    }

    /// Takes the exclusive lock of `name`, retrying when the sandbox was
    /// removed (and perhaps created again) while waiting.
    fn lock(&self, name: &SandboxName) -> Result<Flock<File>> {
        let path = self.sandbox_dir(name).join(LOCK_FILE);
        for _ in 0..LOCK_ATTEMPTS {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(if self.sandbox_dir(name).exists() {
                        corrupt(name, &path, StateCorruptionKind::MissingLockFile)
                    } else {
                        not_found(name)
                    });
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "open",
                        path,
                        source,
                    });
                }
            };
            let locked = lock_bounded(file, &path)?;
            let held = locked.metadata().map_err(|source| Error::Io {
                op: "stat",
                path: path.clone(),
                source,
            })?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(locked),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Io {
                        op: "stat",
                        path,
                        source,
                    });
                }
            }
        }
        Err(Error::Io {
            op: "lock (sandbox replaced repeatedly while waiting)",
            path,
            source: io::Error::from(io::ErrorKind::WouldBlock),
        })
    }

    /// A fresh scratch path for this process.
    fn scratch_path(&self) -> PathBuf {
        let start = ProcessIdentity::current().map_or(0, |p| p.start_time);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!("{TMP_PREFIX}{}.{start}.{seq}", std::process::id()))
    }

    /// Deletes scratch directories whose owning process is gone.
    fn sweep_scratch(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
                continue;
            };
            let mut parts = rest.split('.');
            let owner = (|| {
                Some(ProcessIdentity {
                    pid: parts.next()?.parse().ok()?,
                    start_time: parts.next()?.parse().ok()?,
                })
            })();
            if owner.is_some_and(|o| o.is_alive()) {
                continue;
            }
            let path = entry.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed stale scratch directory")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale scratch directory")
                }
            }
        }
    }
}

/// A claimed, not yet running sandbox name (see [`StateStore::create`]).
///
/// [`Reservation::commit`] records the sandbox process and keeps the
/// record; dropping the reservation without committing removes the
/// record and its directory, so an aborted creation leaves nothing behind.
#[derive(Debug)]
#[must_use = "dropping a reservation removes the sandbox record"]
pub struct Reservation {
    store: StateStore,
    name: SandboxName,
    instance_id: String,
    done: bool,
}

impl Reservation {
    /// The reserved name.
    pub fn name(&self) -> &SandboxName {
        &self.name
    }

    /// The new record's [`SandboxRecord::instance_id`].
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The sandbox's directory (for its sockets and logs).
    pub fn dir(&self) -> PathBuf {
        self.store.sandbox_dir(&self.name)
    }

    /// Records the sandbox process `pid` as running and keeps the record.
    /// If `pid` is already gone, the record says crashed.
    pub fn commit(self, pid: u32) -> Result<SandboxRecord> {
        match ProcessIdentity::of(pid) {
            Some(process) => self.commit_process(process),
            None => self.finish(|r| {
                r.status = SandboxStatus::Crashed;
                r.pid = Some(pid);
                r.start_time = None;
                Ok(())
            }),
        }
    }

    /// Records `process` (pid and start time) as running and keeps the
    /// record.
    pub fn commit_process(self, process: ProcessIdentity) -> Result<SandboxRecord> {
        self.finish(|r| {
            r.status = SandboxStatus::Running;
            r.pid = Some(process.pid);
            r.start_time = Some(process.start_time);
            Ok(())
        })
    }

    /// Removes the record now, reporting errors that a drop would only log.
    pub fn abandon(mut self) -> Result<()> {
        self.done = true;
        self.store
            .remove_checked(&self.name, Some(&self.instance_id))
    }

    fn finish(
        mut self,
        change: impl FnOnce(&mut SandboxRecord) -> Result<()>,
    ) -> Result<SandboxRecord> {
        let record = self
            .store
            .update(&self.name, Some(&self.instance_id), change)?;
        self.done = true;
        Ok(record)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self
            .store
            .remove_checked(&self.name, Some(&self.instance_id))
        {
            Ok(()) | Err(Error::SandboxNotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(sandbox = %self.name, error = %e, "cannot remove abandoned sandbox reservation")
            }
        }
    }
}

fn not_found(name: &SandboxName) -> Error {
    Error::SandboxNotFound {
        name: name.to_string(),
    }
}

fn corrupt(name: &SandboxName, path: &Path, reason: StateCorruptionKind) -> Error {
    Error::CorruptSandboxState {
        name: name.to_string(),
        path: path.to_owned(),
        reason,
    }
}

fn new_instance_id(now: SystemTime) -> String {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{seq:x}", std::process::id())
}

fn make_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| Error::Io {
            op: "create directory",
            path: path.to_owned(),
            source,
        })
}

/// fsyncs a directory so a rename or creation in it is durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            op: "sync directory",
            path: dir.to_owned(),
            source,
        })
}

/// Writes `record` to `<dir>/state.json` atomically: a temporary file,
/// fsync, rename over the old one, fsync of the directory. Callers hold the
/// sandbox's lock (or own `dir` exclusively).
fn write_record(dir: &Path, record: &SandboxRecord) -> Result<()> {
    let tmp = dir.join(STATE_TMP_FILE);
    let path = dir.join(STATE_FILE);
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Io {
        op: "serialize",
        path: path.clone(),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(&bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename to", &path))?;
    sync_dir(dir)
}

/// Reads `<dir>/state.json`; `None` if `dir` does not exist.
fn read_record(dir: &Path, name: &SandboxName) -> Result<Option<SandboxRecord>> {
    let path = dir.join(STATE_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match fs::symlink_metadata(dir) {
                Ok(_) => Err(corrupt(name, &path, StateCorruptionKind::MissingStateFile)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(Error::Io {
                    op: "stat",
                    path: dir.to_owned(),
                    source,
                }),
            };
        }
        Err(source) => {
            return Err(Error::Io {
                op: "open",
                path,
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_STATE_LEN {
        return Err(corrupt(
            name,
            &path,
            StateCorruptionKind::TooLarge {
                limit: MAX_STATE_LEN,
            },
        ));
    }
    // Check the version before the full shape, so a newer format is named
    // as such rather than as a parse error.
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let reason = match serde_json::from_slice::<Version>(&bytes) {
        Ok(v) if v.version != RECORD_VERSION => {
            Some(StateCorruptionKind::UnsupportedVersion { version: v.version })
        }
        _ => None,
    };
    if let Some(reason) = reason {
        return Err(corrupt(name, &path, reason));
    }
    let record: SandboxRecord = serde_json::from_slice(&bytes).map_err(|e| {
        corrupt(
            name,
            &path,
            StateCorruptionKind::InvalidJson {
                message: e.to_string(),
            },
        )
    })?;
    if record.name != *name {
        return Err(corrupt(
            name,
            &path,
            StateCorruptionKind::NameMismatch {
                recorded: record.name.to_string(),
            },
        ));
    }
    Ok(Some(record))
}

/// How long a sandbox's lock is waited for. Holders only keep it for a
/// read-modify-write of `state.json`; a holder stuck longer than this (a
/// process stopped with SIGSTOP, a hung filesystem) must not hang every
/// other caller forever.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// `flock(LOCK_EX)` on `file`, retrying non-blocking attempts for up to
/// [`LOCK_PATIENCE`]; then `Io` with `TimedOut`.
fn lock_bounded(mut file: File, path: &std::path::Path) -> Result<Flock<File>> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((back, Errno::EWOULDBLOCK)) if started.elapsed() < LOCK_PATIENCE => {
                file = back;
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(Error::Io {
                    op: "lock (held by another process for too long)",
                    path: path.to_path_buf(),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            Err((_, e)) => {
                return Err(Error::Io {
                    op: "lock",
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `mkdir` claim used where `RENAME_NOREPLACE` is unsupported.
    #[test]
    fn sandbox_publish_by_mkdir_fallback_is_exclusive() {
        let home = tempfile::tempdir().unwrap();
        let store = StateStore::open(home.path()).unwrap();
        let name = SandboxName::new("fallback").unwrap();
        let now = SystemTime::now();
        let record = SandboxRecord {
            version: RECORD_VERSION,
            name: name.clone(),
            instance_id: new_instance_id(now),
            config: serde_json::Value::Null,
            status: SandboxStatus::Stopped,
            pid: None,
            start_time: None,
            created_at: now,
            updated_at: now,
            backend: Backend::Namespace,
        };
        let dir = store.sandbox_dir(&name);
        for attempt in 0..2 {
            let staging = store.scratch_path();
            make_dir(&staging).unwrap();
            write_record(&staging, &record).unwrap();
            File::create(staging.join(LOCK_FILE)).unwrap();
            let result = store.publish_by_mkdir(&staging, &dir, &name);
            fs::remove_dir_all(&staging).unwrap();
            if attempt == 0 {
                result.unwrap();
            } else {
                assert!(matches!(result, Err(Error::SandboxAlreadyExists { .. })));
            }
        }
        // Times are stored in whole milliseconds.
        let stored = store.get(&name).unwrap().unwrap();
        assert_eq!(stored.instance_id, record.instance_id);
        assert_eq!(stored.status, SandboxStatus::Stopped);
        store.remove(&name).unwrap();
        let left: Vec<_> = fs::read_dir(store.root()).unwrap().collect();
        assert!(left.is_empty());
    }
}
