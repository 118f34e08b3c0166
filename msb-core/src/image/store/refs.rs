//! Tags: `index.json`, mapping normalized references to manifest digests.
//!
//! Readers load the file without locking (it is only ever replaced by an
//! atomic rename); writers hold a [`StoreLease`](super::StoreLease) and the
//! index lock while they read, modify, write a temp file and rename it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fsutil::{create_temp_file, io_err, sync_dir, unix_now};
use super::lock::{Mode, lock};
use super::{CorruptionKind, ImageStore};
use crate::error::{Error, Result};
use crate::image::{Digest, Reference};

const INDEX_VERSION: u32 = 1;

/// What a pull records about an image besides its manifest digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMeta {
    /// The platform the manifest was chosen for, e.g. `linux/amd64`.
    pub platform: Option<String>,
    /// The image's size in bytes (manifest, config and layers as stored).
    pub size: u64,
}

/// A tagged image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The normalized reference it is tagged under.
    pub reference: Reference,
    /// The digest of its (platform-specific) manifest.
    pub manifest_digest: Digest,
    /// The platform the manifest was chosen for.
    pub platform: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// When it was tagged (whole seconds).
    pub pulled_at: SystemTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: BTreeMap<String, Entry>,
}

impl Default for IndexFile {
    fn default() -> Self {
        Self {
            version: INDEX_VERSION,
            images: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    manifest_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    size: u64,
    /// Seconds since the Unix epoch.
    pulled_at: u64,
}

impl ImageStore {
    /// Tags `reference` (normalized) as the image whose manifest is
    /// `manifest_digest`, replacing any previous tag; returns the record.
    ///
    /// The manifest blob must already be in the store (an [`Error::Io`] with
    /// [`io::ErrorKind::NotFound`] otherwise): a tag only ever names a
    /// complete image.
    pub fn tag(
        &self,
        reference: &Reference,
        manifest_digest: &Digest,
        meta: ImageMeta,
    ) -> Result<ImageRecord> {
        let _lease = self.lease()?;
        if !self.has_blob(manifest_digest) {
            return Err(io_err(
                "tag image: manifest blob",
                self.blob_path(manifest_digest),
            )(io::ErrorKind::NotFound.into()));
        }
        let _lock = lock(&self.index_lock_path(), Mode::Exclusive)?;
        let mut index = self.load_index()?;
        let entry = Entry {
            manifest_digest: manifest_digest.to_string(),
            platform: meta.platform,
            size: meta.size,
            pulled_at: unix_now(),
        };
        let record = self.record(&reference.to_string(), &entry)?;
        index.images.insert(reference.to_string(), entry);
        self.save_index(&index)?;
        tracing::debug!(%reference, %manifest_digest, "tagged image");
        Ok(record)
    }

    /// The image tagged `reference`, if any.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<ImageRecord>> {
        let key = reference.to_string();
        let index = self.load_index()?;
        index
            .images
            .get(&key)
            .map(|entry| self.record(&key, entry))
            .transpose()
    }

    /// Every tagged image, ordered by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let index = self.load_index()?;
        index
            .images
            .iter()
            .map(|(key, entry)| self.record(key, entry))
            .collect()
    }

    /// Untags `reference` and returns what it named
    /// ([`Error::ImageNotFound`] if nothing). Its blobs and tree stay until
    /// [`gc`](Self::gc) finds them unreferenced.
    pub fn remove(&self, reference: &Reference) -> Result<ImageRecord> {
        let _lease = self.lease()?;
        let _lock = lock(&self.index_lock_path(), Mode::Exclusive)?;
        let key = reference.to_string();
        let mut index = self.load_index()?;
        let Some(entry) = index.images.remove(&key) else {
            return Err(Error::ImageNotFound {
                reference: reference.clone(),
            });
        };
        let record = self.record(&key, &entry)?;
        self.save_index(&index)?;
        tracing::debug!(%reference, "untagged image");
        Ok(record)
    }

    fn record(&self, key: &str, entry: &Entry) -> Result<ImageRecord> {
        let invalid = || Error::CorruptStore {
            path: self.index_path(),
            reason: CorruptionKind::InvalidEntry {
                key: key.to_owned(),
            },
        };
        Ok(ImageRecord {
            reference: key.parse().map_err(|_| invalid())?,
            manifest_digest: entry.manifest_digest.parse().map_err(|_| invalid())?,
            platform: entry.platform.clone(),
            size: entry.size,
            pulled_at: UNIX_EPOCH + Duration::from_secs(entry.pulled_at),
        })
    }

    fn load_index(&self) -> Result<IndexFile> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(IndexFile::default()),
            Err(e) => return Err(io_err("read image index", path)(e)),
        };
        let index: IndexFile = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptStore {
            path: path.clone(),
            reason: CorruptionKind::InvalidJson {
                line: e.line(),
                column: e.column(),
            },
        })?;
        if index.version != INDEX_VERSION {
            return Err(Error::CorruptStore {
                path,
                reason: CorruptionKind::UnsupportedVersion(index.version),
            });
        }
        Ok(index)
    }

    /// Replaces `index.json` atomically. Callers hold the index lock.
    fn save_index(&self, index: &IndexFile) -> Result<()> {
        let path = self.index_path();
        let json = serde_json::to_vec_pretty(index).expect("the index serializes");
        let (mut file, tmp) = create_temp_file(&self.tmp_dir(), "index.json")?;
        let written = file
            .write_all(&json)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write image index", path)(e));
        }
        sync_dir(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::DigestAlgorithm;
    use crate::image::store::test_support::{entries, store};

    fn reference(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn tag_resolve_list_remove() {
        let (_home, store) = store();
        let m1 = store
            .put_blob_content(DigestAlgorithm::Sha256, b"{\"m\":1}")
            .unwrap();
        let m2 = store
            .put_blob_content(DigestAlgorithm::Sha256, b"{\"m\":2}")
            .unwrap();
        let alpine = reference("alpine");
        let app = reference("localhost:5000/team/app:v1");

        assert_eq!(store.resolve(&alpine).unwrap(), None);
        assert!(store.list().unwrap().is_empty());

        let meta = ImageMeta {
            platform: Some("linux/amd64".into()),
            size: 42,
        };
        let rec = store.tag(&alpine, &m1, meta.clone()).unwrap();
        assert_eq!(rec.reference.to_string(), "docker.io/library/alpine:latest");
        // Normalized: another spelling of the same reference resolves.
        let got = store
            .resolve(&reference("docker.io/library/alpine:latest"))
            .unwrap()
            .unwrap();
        assert_eq!(got, rec);
        assert_eq!(got.manifest_digest, m1);
        assert_eq!(got.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(got.size, 42);
        assert!(got.pulled_at > UNIX_EPOCH);

        store.tag(&app, &m2, ImageMeta::default()).unwrap();
        // Retagging replaces.
        store.tag(&alpine, &m2, meta).unwrap();
        let list = store.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].reference, alpine);
        assert_eq!(list[0].manifest_digest, m2);
        assert_eq!(list[1].reference, app);

        assert_eq!(store.remove(&alpine).unwrap().manifest_digest, m2);
        assert!(matches!(
            store.remove(&alpine),
            Err(Error::ImageNotFound { reference }) if reference == alpine
        ));
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(entries(&store.tmp_dir()).is_empty());
        // Blobs stay after untagging.
        assert!(store.has_blob(&m2));
    }

    #[test]
    fn tag_requires_manifest_blob() {
        let (_home, store) = store();
        let missing: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert!(matches!(
            store.tag(&reference("alpine"), &missing, ImageMeta::default()),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound
        ));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn corrupt_index_is_reported() {
        let (_home, store) = store();
        fs::write(store.index_path(), b"{not json").unwrap();
        assert!(matches!(
            store.list(),
            Err(Error::CorruptStore {
                reason: CorruptionKind::InvalidJson { line: 1, .. },
                ..
            })
        ));
        fs::write(store.index_path(), br#"{"version":9,"images":{}}"#).unwrap();
        assert!(matches!(
            store.list(),
            Err(Error::CorruptStore {
                reason: CorruptionKind::UnsupportedVersion(9),
                ..
            })
        ));
        fs::write(
            store.index_path(),
            br#"{"version":1,"images":{"alpine":{"manifest_digest":"md5:x","size":0,"pulled_at":0}}}"#,
        )
        .unwrap();
        assert!(matches!(
            store.list(),
            Err(Error::CorruptStore {
                reason: CorruptionKind::InvalidEntry { .. },
                ..
            })
        ));
    }
}
