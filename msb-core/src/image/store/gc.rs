//! Garbage collection: remove blobs and trees no tagged image reaches, and
//! stale temporary entries.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::fsutil::{dir_names, io_err, remove_tree_all};
use super::lock::{Mode, lock};
use super::tree::COMPLETE_MARKER;
use super::{ALGORITHMS, CorruptionKind, ImageStore, tree_digest};
use crate::error::{Error, Result};
use crate::image::Digest;

/// How [`ImageStore::gc_with`] treats temporary entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Entries under `tmp/` last modified more recently than this are kept.
    ///
    /// While gc runs no writer can be live (gc holds the gc lock exclusively
    /// and every writer holds it shared), so every `tmp/` entry is a leftover
    /// of a crashed process; the grace period guards against writers that do
    /// not follow the protocol.
    pub tmp_grace: Duration,
    /// Trees to keep (a tree directory, or a path inside one) whether or not
    /// a tagged image reaches them:
    /// the lower layers of existing sandboxes, whose image may have been
    /// untagged (or replaced by a newer pull) since they were created.
    pub keep_trees: Vec<std::path::PathBuf>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            tmp_grace: Duration::from_secs(10 * 60),
            keep_trees: Vec::new(),
        }
    }
}

/// What a gc removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Unreferenced blobs removed.
    pub blobs_removed: usize,
    /// Unreferenced or incomplete trees removed.
    pub trees_removed: usize,
    /// Stale entries removed from `tmp/`.
    pub tmp_removed: usize,
    /// Bytes of regular files removed, all kinds together.
    pub bytes_freed: u64,
}

impl ImageStore {
    /// [`gc_with`](Self::gc_with) the default options.
    pub fn gc(&self) -> Result<GcStats> {
        self.gc_with(&GcOptions::default())
    }

    /// Removes every blob and tree not reachable from a tagged image, stale
    /// `tmp/` entries and unused per-digest lock files.
    ///
    /// An image reaches its manifest blob, the config and layers the
    /// manifest lists, and, for an image index, the manifests it lists (and
    /// theirs, when stored); and its tree. Waits for every
    /// [`StoreLease`](super::StoreLease) to be released first, so must not be
    /// called by a thread whose process holds one.
    ///
    /// A tagged manifest that is stored but not a manifest aborts the gc with
    /// [`Error::CorruptStore`], removing nothing.
    pub fn gc_with(&self, options: &GcOptions) -> Result<GcStats> {
        let _gc = lock(&self.gc_lock_path(), Mode::Exclusive)?;
        // Trees kept from here on should survive a crash too.
        self.settle_trees_leased(Duration::ZERO)?;
        let (live_blobs, live_trees) = self.reachable()?;
        let mut stats = GcStats::default();

        for alg in ALGORITHMS {
            let dir = self.blobs_dir(alg);
            for name in dir_names(&dir)? {
                let Ok(digest) = Digest::new(alg, name.as_str()) else {
                    tracing::warn!(path = %dir.join(&name).display(), "ignoring unexpected file in blob store");
                    continue;
                };
                if !live_blobs.contains(&digest) {
                    let path = dir.join(&name);
                    stats.bytes_freed +=
                        remove_tree_all(&path).map_err(io_err("remove blob", &path))?;
                    stats.blobs_removed += 1;
                    tracing::debug!(%digest, "gc removed blob");
                }
            }
        }

        let trees = self.trees_dir();
        for name in dir_names(&trees)? {
            if tree_digest(&name).is_none() {
                tracing::warn!(path = %trees.join(&name).display(), "ignoring unexpected entry in trees");
                continue;
            }
            let path = trees.join(&name);
            let complete =
                fs::symlink_metadata(path.join(COMPLETE_MARKER)).is_ok_and(|m| m.is_file());
            let in_use = options.keep_trees.iter().any(|t| t.starts_with(&path));
            if !complete || !(live_trees.contains(&name) || in_use) {
                stats.bytes_freed +=
                    remove_tree_all(&path).map_err(io_err("remove tree", &path))?;
                stats.trees_removed += 1;
                tracing::debug!(tree = %name, "gc removed tree");
            }
        }

        let tmp = self.tmp_dir();
        let now = SystemTime::now();
        for name in dir_names(&tmp)? {
            let path = tmp.join(&name);
            let modified = fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .map_err(io_err("stat temporary entry", &path))?;
            // A leftover of a process that is gone (killed mid-pull) goes at
            // once: before, `msb image gc` right after a `kill -9` of `msb
            // pull` kept every partial blob for the grace period (found by
            // `microsandbox/tests/faults.rs`).
            if now.duration_since(modified).unwrap_or_default() >= options.tmp_grace
                || owner_is_gone(&name)
            {
                stats.bytes_freed +=
                    remove_tree_all(&path).map_err(io_err("remove temporary entry", &path))?;
                stats.tmp_removed += 1;
            }
        }

        // No writer holds a per-digest lock now (they take them after the gc
        // lock), so their files can go; the next writer recreates them.
        let locks = self.locks_dir();
        for name in dir_names(&locks)? {
            if name.ends_with(".lock") && (name.starts_with("blob-") || name.starts_with("tree-")) {
                let path = locks.join(&name);
                if let Err(e) = fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    return Err(io_err("remove lock file", path)(e));
                }
            }
        }

        tracing::info!(?stats, "image store gc");
        Ok(stats)
    }

    /// The blobs and tree names (manifest hex) reachable from tagged images.
    fn reachable(&self) -> Result<(HashSet<Digest>, HashSet<String>)> {
        let mut blobs = HashSet::new();
        let mut trees = HashSet::new();
        let mut manifests = Vec::new();
        for record in self.list()? {
            trees.insert(record.manifest_digest.encoded().to_owned());
            manifests.push(record.manifest_digest);
        }
        while let Some(manifest) = manifests.pop() {
            if !blobs.insert(manifest.clone()) {
                continue;
            }
            let bytes = match fs::read(self.blob_path(&manifest)) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(%manifest, "tagged manifest is missing from the store");
                    continue;
                }
                Err(e) => return Err(io_err("read manifest", self.blob_path(&manifest))(e)),
            };
            let not_a_manifest = || Error::CorruptStore {
                path: self.blob_path(&manifest),
                reason: CorruptionKind::NotAManifest,
            };
            let json: Value = serde_json::from_slice(&bytes).map_err(|_| not_a_manifest())?;
            let refs = descriptors(&json).ok_or_else(not_a_manifest)?;
            for (digest, is_manifest) in refs {
                if is_manifest {
                    trees.insert(digest.encoded().to_owned());
                    manifests.push(digest);
                } else {
                    blobs.insert(digest);
                }
            }
        }
        Ok((blobs, trees))
    }
}

/// The digests a manifest (OCI or Docker v2) or index (OCI index, Docker
/// manifest list) refers to, each with whether it is itself a manifest.
/// `None` if `json` is neither, or a descriptor's digest is malformed.
fn descriptors(json: &Value) -> Option<Vec<(Digest, bool)>> {
    let obj = json.as_object()?;
    let digest_of = |d: &Value| -> Option<Digest> { d.get("digest")?.as_str()?.parse().ok() };
    let mut out = Vec::new();
    let mut known = false;
    if let Some(config) = obj.get("config") {
        out.push((digest_of(config)?, false));
        known = true;
    }
    for (field, is_manifest) in [("layers", false), ("blobs", false), ("manifests", true)] {
        if let Some(list) = obj.get(field) {
            for d in list.as_array()? {
                out.push((digest_of(d)?, is_manifest));
            }
            known = true;
        }
    }
    known.then_some(out)
}

/// Whether the process whose id a temporary entry's name records
/// (`<prefix>.<pid>.<counter>.<nanos>`, see `unique_name`) has exited.
/// False when unsure: no such name, our own process, or no `/proc`.
fn owner_is_gone(name: &str) -> bool {
    let mut parts = name.rsplitn(4, '.');
    let (Some(_nanos), Some(_counter), Some(pid)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    pid != std::process::id()
        && Path::new("/proc/self").exists()
        && !Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::store::ImageMeta;
    use crate::image::store::test_support::{commit_tree, entries, sha256, store};
    use crate::image::{DigestAlgorithm, Reference};
    use serde_json::json;
    use std::fs::File;

    /// Stores a small but real OCI image (config, `layers`, manifest) and
    /// returns its manifest digest.
    fn put_image(store: &ImageStore, layers: &[&[u8]]) -> (Digest, Vec<Digest>) {
        let mut blobs = Vec::new();
        let mut layer_descs = Vec::new();
        for layer in layers {
            let d = store
                .put_blob_content(DigestAlgorithm::Sha256, layer)
                .unwrap();
            layer_descs.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(),
                "size": layer.len(),
            }));
            blobs.push(d);
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        }))
        .unwrap();
        let config_digest = store
            .put_blob_content(DigestAlgorithm::Sha256, &config)
            .unwrap();
        blobs.push(config_digest.clone());
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layer_descs,
        }))
        .unwrap();
        // It is a real OCI manifest.
        oci_spec::image::ImageManifest::from_reader(&manifest[..]).unwrap();
        let manifest_digest = store
            .put_blob_content(DigestAlgorithm::Sha256, &manifest)
            .unwrap();
        (manifest_digest, blobs)
    }

    #[test]
    fn gc_removes_fresh_leftovers_of_exited_processes_only() {
        let (_home, store) = store();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let leftover = store
            .tmp_dir()
            .join(format!("blob-sha256-ab.{dead}.3.0badf00d"));
        fs::write(&leftover, b"partial").unwrap();
        let ours = store
            .tmp_dir()
            .join(format!("blob-sha256-cd.{}.1.0badf00d", std::process::id()));
        fs::write(&ours, b"partial").unwrap();
        let init = store.tmp_dir().join("tree-ef.1.2.0badf00d");
        fs::create_dir(&init).unwrap();
        let stats = store.gc().unwrap();
        assert_eq!(stats.tmp_removed, 1, "{stats:?}");
        assert!(!leftover.exists());
        assert!(ours.exists() && init.exists());
        assert!(!owner_is_gone("blob-fresh.part") && !owner_is_gone("a.b.c.d"));
    }

    #[test]
    fn gc_keeps_reachable_and_removes_the_rest() {
        let (_home, store) = store();
        let shared: &[u8] = b"shared layer";
        let (keep, keep_blobs) = put_image(&store, &[shared, b"layer a"]);
        let (drop_m, drop_blobs) = put_image(&store, &[shared, b"layer b"]);
        let stray = store
            .put_blob_content(DigestAlgorithm::Sha512, b"stray")
            .unwrap();
        let kept_ref: Reference = "localhost:5000/keep:1".parse().unwrap();
        let dropped_ref: Reference = "localhost:5000/drop:1".parse().unwrap();
        store.tag(&kept_ref, &keep, ImageMeta::default()).unwrap();
        store
            .tag(&dropped_ref, &drop_m, ImageMeta::default())
            .unwrap();
        store.remove(&dropped_ref).unwrap();
        commit_tree(&store, &keep);
        commit_tree(&store, &drop_m);
        commit_tree(&store, &sha256(b"never tagged"));

        // A stale temp file (an hour old) and a fresh one.
        let stale = store.tmp_dir().join("blob-stale.part");
        File::create(&stale)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let fresh = store.tmp_dir().join("blob-fresh.part");
        fs::write(&fresh, b"").unwrap();

        let stats = store.gc().unwrap();
        // drop's manifest, config and "layer b", plus the stray blob.
        assert_eq!(stats.blobs_removed, 4, "{stats:?}");
        assert_eq!(stats.trees_removed, 2, "{stats:?}");
        assert_eq!(stats.tmp_removed, 1, "{stats:?}");
        assert!(stats.bytes_freed > 0);

        assert!(store.has_blob(&keep));
        for d in &keep_blobs {
            assert!(store.has_blob(d), "{d} is referenced");
        }
        assert!(!store.has_blob(&drop_m));
        assert!(store.has_blob(&drop_blobs[0]), "the shared layer stays");
        assert!(!store.has_blob(&drop_blobs[1]));
        assert!(!store.has_blob(&drop_blobs[2]));
        assert!(!store.has_blob(&stray));
        assert!(store.has_tree(&keep));
        assert!(!store.has_tree(&drop_m));
        assert_eq!(entries(&store.trees_dir()), vec![keep.encoded().to_owned()]);
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert_eq!(entries(&store.locks_dir()), vec!["gc.lock", "index.lock"]);

        // Idempotent; and a zero grace removes the fresh one too.
        let stats = store
            .gc_with(&GcOptions {
                tmp_grace: Duration::ZERO,
                ..GcOptions::default()
            })
            .unwrap();
        assert_eq!(
            (stats.blobs_removed, stats.trees_removed, stats.tmp_removed),
            (0, 0, 1)
        );
        assert!(!store.read_blob(&keep, true).unwrap().is_empty());
    }

    #[test]
    fn gc_follows_image_indexes() {
        let (_home, store) = store();
        let (amd64, amd64_blobs) = put_image(&store, &[b"amd64 layer"]);
        let (arm64, arm64_blobs) = put_image(&store, &[b"arm64 layer"]);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64.to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm64.to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64"}},
            ],
        }))
        .unwrap();
        let index_digest = store
            .put_blob_content(DigestAlgorithm::Sha256, &index)
            .unwrap();
        store
            .tag(
                &"localhost:5000/multi:1".parse().unwrap(),
                &index_digest,
                ImageMeta::default(),
            )
            .unwrap();
        let stats = store.gc().unwrap();
        assert_eq!(stats.blobs_removed, 0);
        for d in [&index_digest, &amd64, &arm64]
            .into_iter()
            .chain(&amd64_blobs)
            .chain(&arm64_blobs)
        {
            assert!(store.has_blob(d));
        }
    }

    #[test]
    fn gc_refuses_a_corrupt_manifest() {
        let (_home, store) = store();
        let bogus = store
            .put_blob_content(DigestAlgorithm::Sha256, b"{\"hello\":1}")
            .unwrap();
        let stray = store
            .put_blob_content(DigestAlgorithm::Sha256, b"stray")
            .unwrap();
        store
            .tag(
                &"localhost:5000/bad:1".parse().unwrap(),
                &bogus,
                ImageMeta::default(),
            )
            .unwrap();
        assert!(matches!(
            store.gc(),
            Err(Error::CorruptStore {
                reason: CorruptionKind::NotAManifest,
                ..
            })
        ));
        assert!(store.has_blob(&stray), "nothing removed");
    }
}
