//! Flattened rootfs trees: `trees/<manifest hex>/rootfs`, built elsewhere
//! (the unpacker) in a staging directory under `tmp/` and committed here.
//!
//! # Durability
//!
//! Syncing a tree's thousands of files at commit would cost a cold pull
//! more than the unpacking itself on a disk file system, so a tree is
//! committed without it and its marker says in which boot that was
//! (`boot <id>`, the kernel's `boot_id`). Within that boot the page cache
//! has every byte, so the tree is sound; in a later boot it may have lost
//! data the kernel had not written back before a crash (files of the right
//! names but empty), so it no longer counts as present and the puller
//! builds it again from the blobs, which are synced at their commit.
//! [`ImageStore::settle_trees`] syncs the file system once trees are old
//! enough for the kernel to have written them back anyway, and marks them
//! `synced`, which holds in any boot; cold pulls (before they write
//! anything) and the gc call it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::fsutil::{
    create_temp_dir, create_temp_file, dir_names, io_err, remove_tree_all, sync_dir, unique_name,
};
use super::lock::{Mode, lock};
use super::{ImageStore, StoreLease, tree_digest};
use crate::error::Result;
use crate::image::Digest;

/// Name of the tree directory's completion marker.
pub(crate) const COMPLETE_MARKER: &str = ".complete";
/// Name of the root filesystem inside a tree directory.
const ROOTFS: &str = "rootfs";
/// Where the kernel tells this boot's id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id, if the kernel tells it.
fn boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        let id = fs::read_to_string(BOOT_ID).ok()?;
        let id = id.trim();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
            .then(|| id.to_owned())
    })
    .as_deref()
}

/// What a tree's marker says of its contents' durability.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Durability {
    /// On stable storage: synced after the commit, or committed by a
    /// version of this code whose markers said nothing (one line).
    Synced,
    /// Committed in boot `id` and not synced since.
    Boot(String),
    /// A marker this code does not understand.
    Unknown,
}

impl Durability {
    /// Parses a marker: the digest, then `synced` or `boot <id>`.
    fn parse(marker: &str) -> Self {
        let mut lines = marker.lines().skip(1);
        match lines.next().map(str::trim) {
            None | Some("") => Self::Synced,
            Some("synced") => Self::Synced,
            Some(line) => match line.strip_prefix("boot ") {
                Some(id) if lines.next().is_none() => Self::Boot(id.trim().to_owned()),
                _ => Self::Unknown,
            },
        }
    }

    /// Whether the tree can be used in this boot.
    fn sound(&self) -> bool {
        match self {
            Self::Synced => true,
            Self::Boot(id) => boot_id() == Some(id.as_str()),
            Self::Unknown => false,
        }
    }
}

/// A marker's content: `digest`, then what `durability` says.
fn marker_content(digest: &Digest, durability: &Durability) -> String {
    match durability {
        Durability::Boot(id) => format!("{digest}\nboot {id}\n"),
        Durability::Synced | Durability::Unknown => format!("{digest}\nsynced\n"),
    }
}

/// Flushes everything on the file system holding `dir` to stable storage.
fn sync_fs(dir: &Path) -> Result<()> {
    let fd = File::open(dir).map_err(io_err("open directory", dir))?;
    nix::unistd::syncfs(fd.as_fd()).map_err(|e| io_err("sync file system", dir)(e.into()))
}

impl ImageStore {
    /// The root filesystem tree of the image whose manifest is
    /// `manifest_digest` (whether or not it exists yet; see
    /// [`has_tree`](Self::has_tree)).
    pub fn tree_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.tree_dir(manifest_digest).join(ROOTFS)
    }

    /// Whether a complete tree for `manifest_digest` is in the store, sound
    /// in this boot: its files are not synced at its commit, so one
    /// committed in an earlier boot may have lost data in a crash, and
    /// counts only once [`settle_trees`](Self::settle_trees) marked it
    /// synced.
    pub fn has_tree(&self, manifest_digest: &Digest) -> bool {
        self.tree_durability(manifest_digest)
            .is_some_and(|d| d.sound())
    }

    /// What the marker of `manifest_digest`'s tree says, if it has one.
    fn tree_durability(&self, manifest_digest: &Digest) -> Option<Durability> {
        let marker = self.tree_dir(manifest_digest).join(COMPLETE_MARKER);
        fs::read_to_string(marker)
            .ok()
            .map(|m| Durability::parse(&m))
    }

    /// Makes the trees committed in this boot at least `min_age` ago
    /// durable: syncs the file system once (by then the kernel has written
    /// most of them back by itself), then marks them `synced`. Returns how
    /// many it marked.
    ///
    /// A tree being committed, removed or marked by another process at the
    /// same time is left to it.
    pub fn settle_trees(&self, min_age: Duration) -> Result<usize> {
        let _lease = self.lease()?;
        self.settle_trees_leased(min_age)
    }

    /// [`settle_trees`](Self::settle_trees) for a caller that keeps the gc
    /// away itself (a lease, or the gc lock).
    pub(crate) fn settle_trees_leased(&self, min_age: Duration) -> Result<usize> {
        let Some(boot) = boot_id() else {
            return Ok(0);
        };
        let now = SystemTime::now();
        let trees = self.trees_dir();
        let mut pending = Vec::new();
        for name in dir_names(&trees)? {
            let Some(digest) = tree_digest(&name) else {
                continue;
            };
            let marker = trees.join(&name).join(COMPLETE_MARKER);
            let Ok(meta) = fs::symlink_metadata(&marker) else {
                continue;
            };
            let old_enough = meta
                .modified()
                .ok()
                .and_then(|at| now.duration_since(at).ok())
                .is_some_and(|age| age >= min_age);
            if old_enough && self.tree_durability(&digest) == Some(Durability::Boot(boot.into())) {
                pending.push(digest);
            }
        }
        if pending.is_empty() {
            return Ok(0);
        }
        sync_fs(&trees)?;
        let mut marked = 0;
        for digest in pending {
            let _lock = lock(&self.tree_lock_path(&digest), Mode::Exclusive)?;
            // Still this boot's commit of the same tree, not replaced since.
            if self.tree_durability(&digest) != Some(Durability::Boot(boot.into())) {
                continue;
            }
            let dir = self.tree_dir(&digest);
            let marker = dir.join(COMPLETE_MARKER);
            let (mut file, tmp) = create_temp_file(&self.tmp_dir(), "marker")?;
            let written = file
                .write_all(marker_content(&digest, &Durability::Synced).as_bytes())
                .and_then(|()| file.sync_all());
            if let Err(e) = written.and_then(|()| fs::rename(&tmp, &marker)) {
                let _ = fs::remove_file(&tmp);
                return Err(io_err("mark tree synced", &marker)(e));
            }
            sync_dir(&dir)?;
            marked += 1;
            tracing::debug!(%digest, "tree marked synced");
        }
        Ok(marked)
    }

    /// Starts building the tree for `manifest_digest`: the unpacker fills
    /// [`TreeBuild::path`] and then calls [`TreeBuild::commit`].
    ///
    /// Builds of one digest may run at once (the first commit wins); a caller
    /// that would rather not duplicate the work checks
    /// [`has_tree`](Self::has_tree) first.
    pub fn begin_tree(&self, manifest_digest: &Digest) -> Result<TreeBuild> {
        let lease = self.lease()?;
        let staging = create_temp_dir(
            &self.tmp_dir(),
            &format!("tree-{}", manifest_digest.encoded()),
        )?;
        let rootfs = staging.join(ROOTFS);
        if let Err(e) = fs::create_dir(&rootfs) {
            let _ = remove_tree_all(&staging);
            return Err(io_err("create directory", rootfs)(e));
        }
        Ok(TreeBuild {
            store: self.clone(),
            digest: manifest_digest.clone(),
            staging: Some(staging),
            rootfs,
            _lease: lease,
        })
    }

    pub(crate) fn tree_dir(&self, manifest_digest: &Digest) -> PathBuf {
        self.trees_dir().join(manifest_digest.encoded())
    }
}

/// A tree being built under `tmp/`. [`commit`](Self::commit) renames it into
/// place atomically; dropped uncommitted, it is removed.
///
/// Holds a [`StoreLease`] until dropped.
#[derive(Debug)]
pub struct TreeBuild {
    store: ImageStore,
    digest: Digest,
    /// `tmp/tree-<hex>.…`, holding `rootfs/` and, at commit, the marker.
    staging: Option<PathBuf>,
    rootfs: PathBuf,
    _lease: StoreLease,
}

impl TreeBuild {
    /// The directory to unpack the root filesystem into.
    pub fn path(&self) -> &Path {
        &self.rootfs
    }

    /// The manifest digest the tree is for.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Marks the tree complete and renames it into place, returning the
    /// final [`tree_path`](ImageStore::tree_path). If another build of the
    /// same digest committed first, this one is discarded and theirs is
    /// returned: not an error.
    ///
    /// The tree's contents are not synced (see
    /// [`has_tree`](ImageStore::has_tree)): the marker says in which boot
    /// they were committed, or, where the kernel does not tell its boot id,
    /// the file system is synced first. Commit syncs the marker and the
    /// directories it renames in.
    pub fn commit(mut self) -> Result<PathBuf> {
        let staging = self
            .staging
            .clone()
            .expect("staging is set until commit or drop");
        let durability = match boot_id() {
            Some(id) => Durability::Boot(id.to_owned()),
            None => {
                sync_fs(&staging)?;
                Durability::Synced
            }
        };
        let marker = staging.join(COMPLETE_MARKER);
        File::create(&marker)
            .and_then(|mut f| {
                f.write_all(marker_content(&self.digest, &durability).as_bytes())?;
                f.sync_all()
            })
            .map_err(io_err("write tree marker", &marker))?;
        sync_dir(&staging)?;

        let store = &self.store;
        let _lock = lock(&store.tree_lock_path(&self.digest), Mode::Exclusive)?;
        let final_dir = store.tree_dir(&self.digest);
        if store.has_tree(&self.digest) {
            tracing::debug!(digest = %self.digest, "tree already committed; discarding ours");
            return Ok(store.tree_path(&self.digest));
        }
        // An incomplete leftover (not made by this code's commits, which are
        // atomic), or a tree of an earlier boot that may have lost data:
        // move it aside, then remove it.
        if fs::symlink_metadata(&final_dir).is_ok() {
            let trash = store.tmp_dir().join(unique_name("trash"));
            fs::rename(&final_dir, &trash)
                .map_err(io_err("move aside incomplete tree", &final_dir))?;
            remove_tree_all(&trash).map_err(io_err("remove incomplete tree", &trash))?;
        }
        fs::rename(&staging, &final_dir).map_err(io_err("commit tree", &final_dir))?;
        self.staging = None;
        sync_dir(&store.trees_dir())?;
        tracing::debug!(digest = %self.digest, "committed tree");
        Ok(store.tree_path(&self.digest))
    }
}

impl Drop for TreeBuild {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take()
            && let Err(e) = remove_tree_all(&staging)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %staging.display(), error = %e, "could not remove tree staging directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::store::test_support::{commit_tree, entries, sha256, store};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Barrier};

    #[test]
    fn begin_commit() {
        let (_home, store) = store();
        let digest = sha256(b"manifest");
        assert!(!store.has_tree(&digest));
        let build = store.begin_tree(&digest).unwrap();
        fs::create_dir(build.path().join("etc")).unwrap();
        fs::write(build.path().join("etc/hostname"), b"box").unwrap();
        let path = build.commit().unwrap();
        assert_eq!(path, store.tree_path(&digest));
        assert!(store.has_tree(&digest));
        assert_eq!(fs::read(path.join("etc/hostname")).unwrap(), b"box");
        assert!(
            !path.join(COMPLETE_MARKER).exists(),
            "the marker is outside the rootfs"
        );
        assert!(entries(&store.tmp_dir()).is_empty());
    }

    #[test]
    fn drop_without_commit_leaves_nothing() {
        let (_home, store) = store();
        let digest = sha256(b"manifest");
        let build = store.begin_tree(&digest).unwrap();
        fs::create_dir(build.path().join("ro")).unwrap();
        fs::write(build.path().join("ro/f"), b"x").unwrap();
        fs::set_permissions(build.path().join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        drop(build);
        assert!(entries(&store.tmp_dir()).is_empty());
        assert!(!store.has_tree(&digest));
        assert!(entries(&store.trees_dir()).is_empty());
    }

    #[test]
    fn second_commit_is_discarded() {
        let (_home, store) = store();
        let digest = sha256(b"manifest");
        let first = store.begin_tree(&digest).unwrap();
        let second = store.begin_tree(&digest).unwrap();
        fs::write(first.path().join("who"), b"first").unwrap();
        fs::write(second.path().join("who"), b"second").unwrap();
        let a = first.commit().unwrap();
        let b = second.commit().unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read(a.join("who")).unwrap(), b"first");
        assert!(entries(&store.tmp_dir()).is_empty());
    }

    #[test]
    fn racing_commits_from_threads() {
        let (_home, store) = store();
        let digest = sha256(b"manifest");
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (store, digest, barrier) = (store.clone(), digest.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let build = store.begin_tree(&digest).unwrap();
                    fs::write(build.path().join("who"), format!("{i}")).unwrap();
                    barrier.wait();
                    build.commit().unwrap()
                })
            })
            .collect();
        let paths: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(paths.iter().all(|p| *p == store.tree_path(&digest)));
        assert!(store.has_tree(&digest));
        assert!(entries(&store.tmp_dir()).is_empty());
        assert_eq!(
            entries(&store.trees_dir()),
            vec![digest.encoded().to_owned()]
        );
    }

    #[test]
    fn incomplete_leftover_is_replaced() {
        let (_home, store) = store();
        let digest = sha256(b"manifest");
        fs::create_dir_all(store.tree_path(&digest)).unwrap();
        fs::write(store.tree_path(&digest).join("junk"), b"").unwrap();
        assert!(!store.has_tree(&digest));
        let build = store.begin_tree(&digest).unwrap();
        fs::write(build.path().join("good"), b"").unwrap();
        let path = build.commit().unwrap();
        assert!(path.join("good").exists());
        assert!(!path.join("junk").exists());
        assert!(entries(&store.tmp_dir()).is_empty());
    }

    /// Writes `digest`'s tree marker as `content`, as another boot (or an
    /// older version) would have.
    fn forge_marker(store: &ImageStore, digest: &Digest, content: &str) {
        fs::write(store.tree_dir(digest).join(COMPLETE_MARKER), content).unwrap();
    }

    #[test]
    fn a_tree_of_this_boot_is_present_one_of_an_earlier_boot_is_not() {
        let (_home, store) = store();
        let digest = sha256(b"manifest");
        commit_tree(&store, &digest);
        let marker = fs::read_to_string(store.tree_dir(&digest).join(COMPLETE_MARKER)).unwrap();
        let boot = boot_id().expect("Linux tells its boot id");
        assert_eq!(marker, format!("{digest}\nboot {boot}\n"));
        assert!(store.has_tree(&digest));

        // Committed in another boot and never synced: its files may be
        // empty after a crash.
        forge_marker(
            &store,
            &digest,
            &format!("{digest}\nboot 0f0f0f0f-1111-2222-3333-444455556666\n"),
        );
        assert!(!store.has_tree(&digest));
        // Synced, or from before markers said: sound in any boot. Anything
        // else is not trusted.
        for (content, present) in [
            (format!("{digest}\nsynced\n"), true),
            (format!("{digest}\n"), true),
            (format!("{digest}\nsomething else\n"), false),
            (format!("{digest}\nboot {boot}\nsynced\n"), false),
        ] {
            forge_marker(&store, &digest, &content);
            assert_eq!(store.has_tree(&digest), present, "{content:?}");
        }

        // A new build replaces the tree of the earlier boot.
        forge_marker(
            &store,
            &digest,
            &format!("{digest}\nboot 0f0f0f0f-1111-2222-3333-444455556666\n"),
        );
        fs::write(store.tree_path(&digest).join("f"), b"").unwrap();
        commit_tree(&store, &digest);
        assert!(store.has_tree(&digest));
        assert_eq!(fs::read(store.tree_path(&digest).join("f")).unwrap(), b"x");
        assert!(entries(&store.tmp_dir()).is_empty());
    }

    #[test]
    fn settling_marks_old_enough_trees_of_this_boot_synced() {
        let (_home, store) = store();
        let (young, other) = (sha256(b"young"), sha256(b"other boot"));
        commit_tree(&store, &young);
        commit_tree(&store, &other);
        let foreign = format!("{other}\nboot 0f0f0f0f-1111-2222-3333-444455556666\n");
        forge_marker(&store, &other, &foreign);
        // Just committed: not old enough to be worth a sync yet.
        assert_eq!(store.settle_trees(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.settle_trees(Duration::ZERO).unwrap(), 1);
        let marker =
            |d: &Digest| fs::read_to_string(store.tree_dir(d).join(COMPLETE_MARKER)).unwrap();
        assert_eq!(marker(&young), format!("{young}\nsynced\n"));
        // Another boot's tree may have lost data already: syncing now
        // cannot bring it back, so it stays as it is, to be rebuilt.
        assert_eq!(marker(&other), foreign);
        assert!(store.has_tree(&young) && !store.has_tree(&other));
        assert_eq!(store.settle_trees(Duration::ZERO).unwrap(), 0);
        assert!(entries(&store.tmp_dir()).is_empty());
    }
}
