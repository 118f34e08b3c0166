//! The content-addressed image cache under the state home.
//!
//! Everything lives under `<home>/images/` (`<home>` is
//! [`state_home`](crate::paths::state_home) unless a caller opens another):
//!
//! ```text
//! images/
//!   blobs/<alg>/<hex>      immutable, read-only content: manifests, configs, layers;
//!                          a file here always hashes to its name
//!   tmp/                   in-progress writes (blob `.part` files, tree staging
//!                          directories, index temp files); on the same filesystem
//!                          as everything else so that commits are atomic renames
//!   index.json             normalized reference -> manifest digest, platform,
//!                          pulled-at time (unix seconds) and size
//!   trees/<hex>/rootfs/    flattened root filesystem of the image whose manifest
//!                          digest has encoded value <hex>
//!   trees/<hex>/.complete  marker (the digest, then `boot <id>` or `synced`) written
//!                          before the tree is renamed into place; a tree without it
//!                          is ignored and collected, one of an earlier boot not
//!                          `synced` is unpacked again (see [`ImageStore::has_tree`])
//!   locks/gc.lock          store-wide lock: shared by every writer, exclusive for gc
//!   locks/index.lock       exclusive while `index.json` is read-modified-written
//!   locks/blob-<alg>-<hex>.lock, locks/tree-<hex>.lock
//!                          per-digest locks, exclusive while that entry is written
//! ```
//!
//! Rules that keep the cache consistent across processes:
//!
//! - Nothing appears under `blobs/`, `trees/` or `index.json` half-written:
//!   content is written under `tmp/`, verified, fsynced and then renamed in.
//!   A tree's thousands of files are the exception, not fsynced one by one:
//!   its marker records the boot, and a tree that may have lost data in a
//!   crash is unpacked again from the (fsynced) blobs.
//! - A blob writer holds its digest's lock for its whole life, so a second
//!   process pulling the same blob waits, then finds it present and skips it.
//! - Every writer ([`BlobWriter`], [`TreeBuild`], tagging) holds a
//!   [`StoreLease`] (the gc lock, shared); a pull should hold one from its
//!   first blob until it has tagged the image, so gc never collects blobs that
//!   are about to become referenced. [`ImageStore::gc`] takes the gc lock
//!   exclusively, so it waits for those; do not call it from a thread of a
//!   process that holds a lease or writer itself (it would wait for itself).
//! - Lock order: gc lock, then index or per-digest locks.
//!
//! All of it is synchronous `std::fs` code; async callers wrap it in
//! `spawn_blocking`.
//!
//! ```
//! use msb_core::image::store::{ImageMeta, ImageStore};
//! use msb_core::image::{Digest, DigestAlgorithm, Reference};
//! use std::io::Write;
//!
//! let home = std::env::temp_dir().join(format!("msb-store-doc-{}", std::process::id()));
//! let store = ImageStore::open(&home)?;
//!
//! let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
//! let wrong: Digest = format!("sha256:{}", "0".repeat(64)).parse()?;
//! let mut writer = store.begin_blob(&wrong, Some(manifest.len() as u64))?;
//! writer.write_all(manifest).unwrap();
//! // The content does not hash to the digest asked for: nothing is cached.
//! assert!(matches!(writer.commit(), Err(msb_core::Error::DigestMismatch { .. })));
//! assert!(!store.has_blob(&wrong));
//!
//! let digest = store.put_blob_content(DigestAlgorithm::Sha256, manifest)?;
//! let reference: Reference = "localhost:5000/app:v1".parse()?;
//! store.tag(&reference, &digest, ImageMeta::default())?;
//! assert_eq!(store.resolve(&reference)?.unwrap().manifest_digest, digest);
//! # std::fs::remove_dir_all(&home).unwrap();
//! # Ok::<(), msb_core::Error>(())
//! ```

mod blob;
mod fsutil;
mod gc;
mod lock;
mod policy;
mod refs;
mod tree;

use std::path::{Path, PathBuf};

pub use blob::BlobWriter;
pub use gc::{GcOptions, GcStats};
pub use lock::StoreLease;
pub use policy::PullPolicy;
pub use refs::{ImageMeta, ImageRecord};
pub use tree::TreeBuild;

use crate::error::Result;
use crate::image::{Digest, DigestAlgorithm};
use fsutil::io_err;

/// The content-addressed image cache rooted at `<home>/images`.
///
/// Cheap to clone; it holds only its root path. Every method takes the locks
/// it needs, so one store may be used from many threads and processes.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// The blob half of [`ImageStore`]; the same type under the name callers
/// that only move blobs may prefer.
pub type BlobStore = ImageStore;

/// Why the store is considered corrupt (see
/// [`Error::CorruptStore`](crate::Error::CorruptStore)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The file is not valid JSON (or not of the expected shape).
    #[error("invalid JSON at line {line}, column {column}")]
    InvalidJson {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// `index.json` has a format version this code does not know.
    #[error("unsupported index version {0}")]
    UnsupportedVersion(u32),
    /// An `index.json` entry whose reference or digest does not parse.
    #[error("invalid index entry {key:?}")]
    InvalidEntry {
        /// The entry's key (the reference as stored).
        key: String,
    },
    /// A stored blob does not hash to its name.
    #[error("content hashes to {actual}")]
    ContentMismatch {
        /// The digest of the content found.
        actual: Digest,
    },
    /// A stored manifest is not an OCI/Docker manifest or index.
    #[error("not an image manifest or index")]
    NotAManifest,
}

const ALGORITHMS: [DigestAlgorithm; 2] = [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512];

/// The manifest digest a directory under `trees/` is named for, if its
/// name is one (a hex digest of a known algorithm).
fn tree_digest(name: &str) -> Option<Digest> {
    ALGORITHMS
        .iter()
        .find_map(|&alg| Digest::new(alg, name).ok())
}

impl ImageStore {
    /// Opens (creating as needed) the store under `home`, i.e. at
    /// `home/images`.
    pub fn open(home: impl AsRef<Path>) -> Result<Self> {
        let store = Self {
            root: home.as_ref().join("images"),
        };
        let mut dirs = vec![store.tmp_dir(), store.trees_dir(), store.locks_dir()];
        dirs.extend(ALGORITHMS.iter().map(|&alg| store.blobs_dir(alg)));
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        Ok(store)
    }

    /// Opens the store under [`state_home`](crate::paths::state_home).
    pub fn open_default() -> Result<Self> {
        Self::open(crate::paths::state_home())
    }

    /// The store's root, `<home>/images`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self, alg: DigestAlgorithm) -> PathBuf {
        self.root.join("blobs").join(alg.as_str())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use sha2::{Digest as _, Sha256};

    pub(crate) fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open store");
        (dir, store)
    }

    pub(crate) fn sha256(bytes: &[u8]) -> Digest {
        Digest::new(DigestAlgorithm::Sha256, hex::encode(Sha256::digest(bytes))).expect("digest")
    }

    /// Commits a tree for `digest` holding one small file.
    pub(crate) fn commit_tree(store: &ImageStore, digest: &Digest) {
        let build = store.begin_tree(digest).expect("begin tree");
        std::fs::write(build.path().join("f"), b"x").expect("write file");
        build.commit().expect("commit tree");
    }

    /// Names of the entries directly in `dir`, sorted.
    pub(crate) fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}
