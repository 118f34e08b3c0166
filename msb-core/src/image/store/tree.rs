//! Flattened rootfs trees: `trees/<manifest hex>/rootfs`, built elsewhere
//! (the unpacker) in a staging directory under `tmp/` and committed here.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::fsutil::{create_temp_dir, io_err, remove_tree_all, sync_dir, unique_name};
use super::lock::{Mode, lock};
use super::{ImageStore, StoreLease};
use crate::error::Result;
use crate::image::Digest;

/// Name of the tree directory's completion marker.
pub(crate) const COMPLETE_MARKER: &str = ".complete";
/// Name of the root filesystem inside a tree directory.
const ROOTFS: &str = "rootfs";

impl ImageStore {
    /// The root filesystem tree of the image whose manifest is
    /// `manifest_digest` (whether or not it exists yet; see
    /// [`has_tree`](Self::has_tree)).
    pub fn tree_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.tree_dir(manifest_digest).join(ROOTFS)
    }

    /// Whether a complete tree for `manifest_digest` is in the store.
    pub fn has_tree(&self, manifest_digest: &Digest) -> bool {
        fs::symlink_metadata(self.tree_dir(manifest_digest).join(COMPLETE_MARKER))
            .is_ok_and(|m| m.is_file())
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
    /// The unpacker is responsible for having written (and, if it wants
    /// durability across power loss, synced) the tree's contents; commit
    /// syncs the marker and the directories it renames in.
    pub fn commit(mut self) -> Result<PathBuf> {
        let staging = self
            .staging
            .clone()
            .expect("staging is set until commit or drop");
        let marker = staging.join(COMPLETE_MARKER);
        File::create(&marker)
            .and_then(|mut f| {
                f.write_all(format!("{}\n", self.digest).as_bytes())?;
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
        // atomic): move it aside, then remove it.
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
    use crate::image::store::test_support::{entries, sha256, store};
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
}
