//! Blobs: `blobs/<alg>/<hex>`, written through [`BlobWriter`].

use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256, Sha512};

use super::fsutil::{create_temp_file, io_err, sync_dir};
use super::lock::{FileLock, Mode, lock};
use super::{CorruptionKind, ImageStore, StoreLease};
use crate::error::{Error, Result};
use crate::image::{Digest, DigestAlgorithm};

/// Buffer between callers' (often small, network-sized) writes and the file.
const WRITE_BUFFER: usize = 256 * 1024;

/// An incremental hash of one of the supported algorithms.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish(self) -> Result<Digest> {
        match self {
            Self::Sha256(h) => Digest::new(DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Self::Sha512(h) => Digest::new(DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        }
    }
}

/// Hashes `bytes` with `algorithm`.
pub(crate) fn digest_bytes(algorithm: DigestAlgorithm, bytes: &[u8]) -> Result<Digest> {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(bytes);
    hasher.finish()
}

impl ImageStore {
    /// Where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir(digest.algorithm()).join(digest.encoded())
    }

    /// Whether the blob `digest` is in the store. A present blob is complete
    /// and was verified when it was written.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Starts writing the blob `digest`, of `expected_size` bytes if known.
    ///
    /// Waits while another thread or process writes the same blob. If the
    /// blob is (by then) present, the writer is
    /// [`already_present`](BlobWriter::already_present): writes are
    /// discarded and [`commit`](BlobWriter::commit) succeeds at once, so the
    /// caller can skip the download. A present blob whose size differs from
    /// `expected_size` is [`Error::BlobSizeMismatch`].
    pub fn begin_blob(&self, digest: &Digest, expected_size: Option<u64>) -> Result<BlobWriter> {
        let lease = self.lease()?;
        let blob_lock = lock(&self.blob_lock_path(digest), Mode::Exclusive)?;
        let final_path = self.blob_path(digest);
        let state = match fs::symlink_metadata(&final_path) {
            Ok(meta) => {
                if let Some(expected) = expected_size.filter(|&e| e != meta.len()) {
                    return Err(Error::BlobSizeMismatch {
                        digest: digest.clone(),
                        expected,
                        actual: meta.len(),
                    });
                }
                State::Present
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let prefix = format!("blob-{}-{}", digest.algorithm(), digest.encoded());
                let (file, tmp) = create_temp_file(&self.tmp_dir(), &prefix)?;
                State::Writing(Box::new(Pending {
                    file: BufWriter::with_capacity(WRITE_BUFFER, file),
                    tmp,
                    hasher: Hasher::new(digest.algorithm()),
                    written: 0,
                    overflow: None,
                }))
            }
            Err(e) => return Err(io_err("stat blob", &final_path)(e)),
        };
        tracing::debug!(%digest, present = matches!(state, State::Present), "begin blob");
        Ok(BlobWriter {
            digest: digest.clone(),
            expected_size,
            final_path,
            state,
            _blob_lock: blob_lock,
            _lease: lease,
        })
    }

    /// Stores `bytes` as the blob `digest` (verified), returning its path.
    pub fn put_blob_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf> {
        let mut writer = self.begin_blob(digest, Some(bytes.len() as u64))?;
        writer.write_all(bytes).map_err(|e| writer.write_error(e))?;
        writer.commit()
    }

    /// Hashes `bytes` with `algorithm` and stores them, returning the digest.
    pub fn put_blob_content(&self, algorithm: DigestAlgorithm, bytes: &[u8]) -> Result<Digest> {
        let digest = digest_bytes(algorithm, bytes)?;
        self.put_blob_bytes(&digest, bytes)?;
        Ok(digest)
    }

    /// Opens the blob `digest` for reading (a missing blob is
    /// [`Error::Io`] with [`io::ErrorKind::NotFound`]).
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(io_err("open blob", path))
    }

    /// Reads the blob `digest` whole; with `verify`, hashes it again first.
    ///
    /// A blob that no longer matches its digest is removed (so that the next
    /// pull fetches it again) and reported as [`Error::CorruptStore`].
    pub fn read_blob(&self, digest: &Digest, verify: bool) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(io_err("read blob", &path))?;
        if verify {
            let actual = digest_bytes(digest.algorithm(), &bytes)?;
            if &actual != digest {
                tracing::warn!(%digest, %actual, "removing corrupt blob");
                let _lease = self.lease()?;
                let _lock = lock(&self.blob_lock_path(digest), Mode::Exclusive)?;
                if let Err(e) = fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    return Err(io_err("remove corrupt blob", &path)(e));
                }
                return Err(Error::CorruptStore {
                    path,
                    reason: CorruptionKind::ContentMismatch { actual },
                });
            }
        }
        Ok(bytes)
    }
}

enum State {
    /// The blob is in the store (it was, or this writer committed it).
    Present,
    /// Content goes to a temp file under `tmp/`.
    Writing(Box<Pending>),
}

struct Pending {
    file: BufWriter<File>,
    tmp: PathBuf,
    hasher: Hasher,
    written: u64,
    /// The total a rejected write would have brought the blob to.
    overflow: Option<u64>,
}

/// Writes one blob: hashes as it writes to a temp file under `tmp/`; only a
/// successful [`commit`](Self::commit) (digest and size verified) puts it in
/// the store. Dropped uncommitted, or failing to commit, it removes its temp
/// file: the store never holds a half-written blob.
///
/// Holds the blob's lock and a [`StoreLease`] until dropped.
pub struct BlobWriter {
    digest: Digest,
    expected_size: Option<u64>,
    final_path: PathBuf,
    state: State,
    _blob_lock: FileLock,
    _lease: StoreLease,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("digest", &self.digest)
            .field("expected_size", &self.expected_size)
            .field("already_present", &self.already_present())
            .field("written", &self.written())
            .finish()
    }
}

impl BlobWriter {
    /// The digest being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Whether the blob was already in the store when this writer began:
    /// there is nothing to download, and writes are discarded.
    pub fn already_present(&self) -> bool {
        matches!(self.state, State::Present)
    }

    /// Bytes accepted so far (0 for an already-present blob).
    pub fn written(&self) -> u64 {
        match &self.state {
            State::Present => 0,
            State::Writing(p) => p.written,
        }
    }

    /// Bytes that have reached the file so far: [`written`](Self::written)
    /// less what is still buffered in memory.
    pub fn flushed(&self) -> u64 {
        match &self.state {
            State::Present => 0,
            State::Writing(p) => p.written - p.file.buffer().len() as u64,
        }
    }

    /// A second handle on the content, for reading it while it is written:
    /// the temp file (which stays readable through this handle after the
    /// commit renames it), or the blob itself when it is already present.
    /// Read no further than [`flushed`](Self::flushed) bytes before the
    /// commit: the rest is not in the file yet, and nothing is verified
    /// before the commit.
    pub fn open_reader(&self) -> Result<File> {
        let path = match &self.state {
            State::Writing(p) => &p.tmp,
            State::Present => &self.final_path,
        };
        File::open(path).map_err(io_err("open blob for reading", path))
    }

    /// The store error inside an `io::Error` from [`Write`], if it carries one
    /// (a write past the expected size), else [`Error::Io`].
    pub fn write_error(&self, e: io::Error) -> Error {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = e.into_inner()
                && let Ok(err) = inner.downcast::<Error>()
            {
                return *err;
            }
            unreachable!("checked above that the io::Error wraps an Error");
        }
        let path = match &self.state {
            State::Writing(p) => p.tmp.clone(),
            State::Present => self.final_path.clone(),
        };
        io_err("write blob", path)(e)
    }

    /// Verifies size and digest, makes the file read-only, fsyncs it and
    /// renames it into place; returns the blob's path.
    ///
    /// Fails with [`Error::BlobSizeMismatch`] or [`Error::DigestMismatch`]
    /// (the temp file is removed either way).
    pub fn commit(mut self) -> Result<PathBuf> {
        let State::Writing(pending) = &mut self.state else {
            return Ok(self.final_path.clone());
        };
        pending
            .file
            .flush()
            .map_err(io_err("write blob", &pending.tmp))?;
        let actual_size = pending.overflow.unwrap_or(pending.written);
        if let Some(expected) = self.expected_size.filter(|&e| e != actual_size) {
            return Err(Error::BlobSizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual: actual_size,
            });
        }
        let hasher = std::mem::replace(&mut pending.hasher, Hasher::new(self.digest.algorithm()));
        let actual = hasher.finish()?;
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let file = pending.file.get_ref();
        file.set_permissions(Permissions::from_mode(0o444))
            .map_err(io_err("chmod blob", &pending.tmp))?;
        file.sync_all().map_err(io_err("sync blob", &pending.tmp))?;
        fs::rename(&pending.tmp, &self.final_path)
            .map_err(io_err("commit blob", &self.final_path))?;
        self.state = State::Present;
        if let Some(dir) = self.final_path.parent() {
            sync_dir(dir)?;
        }
        tracing::debug!(digest = %self.digest, "committed blob");
        Ok(self.final_path.clone())
    }

    fn tmp_path(&self) -> Option<&Path> {
        match &self.state {
            State::Writing(p) => Some(&p.tmp),
            State::Present => None,
        }
    }
}

impl Write for BlobWriter {
    /// Appends to the blob; a write past `expected_size` fails with an
    /// `InvalidData` error wrapping [`Error::BlobSizeMismatch`] (see
    /// [`BlobWriter::write_error`]).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let State::Writing(p) = &mut self.state else {
            return Ok(buf.len());
        };
        let total = p.written + buf.len() as u64;
        if let Some(expected) = self.expected_size.filter(|&e| total > e) {
            p.overflow = Some(total);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::BlobSizeMismatch {
                    digest: self.digest.clone(),
                    expected,
                    actual: total,
                },
            ));
        }
        let n = p.file.write(buf)?;
        p.hasher.update(&buf[..n]);
        p.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            State::Writing(p) => p.file.flush(),
            State::Present => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp_path().map(Path::to_path_buf)
            && let Err(e) = fs::remove_file(&tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %e, "could not remove temporary blob");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::store::test_support::{entries, sha256, store};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn payload() -> Vec<u8> {
        (0..200_000u32).map(|i| (i % 251) as u8).collect()
    }

    /// Writes `data` in chunks with small pauses so concurrent writers overlap.
    fn slow_write(store: &ImageStore, data: &[u8]) -> bool {
        let digest = sha256(data);
        let mut writer = store.begin_blob(&digest, Some(data.len() as u64)).unwrap();
        let present = writer.already_present();
        for chunk in data.chunks(20_000) {
            writer.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let path = writer.commit().unwrap();
        assert_eq!(path, store.blob_path(&digest));
        present
    }

    fn assert_single_blob(store: &ImageStore, data: &[u8]) {
        let digest = sha256(data);
        assert_eq!(
            entries(&store.blobs_dir(DigestAlgorithm::Sha256)),
            vec![digest.encoded().to_owned()]
        );
        assert!(entries(&store.tmp_dir()).is_empty());
        assert_eq!(store.read_blob(&digest, true).unwrap(), data);
    }

    #[test]
    fn write_commit_read() {
        let (_home, store) = store();
        let data = b"hello blob".to_vec();
        let digest = sha256(&data);
        assert!(!store.has_blob(&digest));
        let mut writer = store.begin_blob(&digest, Some(data.len() as u64)).unwrap();
        assert!(!writer.already_present());
        writer.write_all(&data[..4]).unwrap();
        writer.write_all(&data[4..]).unwrap();
        assert_eq!(writer.written(), data.len() as u64);
        let path = writer.commit().unwrap();
        assert!(store.has_blob(&digest));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(store.read_blob(&digest, true).unwrap(), data);
        assert_eq!(store.read_blob(&digest, false).unwrap(), data);
        assert!(entries(&store.tmp_dir()).is_empty());

        // A second write of the same blob is skipped.
        let writer = store.begin_blob(&digest, None).unwrap();
        assert!(writer.already_present());
        assert_eq!(writer.commit().unwrap(), path);

        // sha512 and the computed form.
        let d512 = store
            .put_blob_content(DigestAlgorithm::Sha512, &data)
            .unwrap();
        assert_eq!(d512.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(store.read_blob(&d512, true).unwrap(), data);
    }

    #[test]
    fn digest_mismatch_leaves_nothing() {
        let (_home, store) = store();
        let wanted = sha256(b"the real content");
        let mut writer = store.begin_blob(&wanted, None).unwrap();
        writer.write_all(b"something else").unwrap();
        match writer.commit() {
            Err(Error::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, wanted);
                assert_eq!(actual, sha256(b"something else"));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(!store.has_blob(&wanted));
        assert!(entries(&store.tmp_dir()).is_empty());
        assert!(entries(&store.blobs_dir(DigestAlgorithm::Sha256)).is_empty());
    }

    #[test]
    fn drop_without_commit_leaves_nothing() {
        let (_home, store) = store();
        let digest = sha256(b"abc");
        let mut writer = store.begin_blob(&digest, Some(3)).unwrap();
        writer.write_all(b"ab").unwrap();
        assert_eq!(entries(&store.tmp_dir()).len(), 1);
        drop(writer);
        assert!(entries(&store.tmp_dir()).is_empty());
        assert!(!store.has_blob(&digest));
    }

    #[test]
    fn size_mismatch() {
        let (_home, store) = store();
        let data = b"0123456789";
        let digest = sha256(data);

        // Short.
        let mut writer = store.begin_blob(&digest, Some(11)).unwrap();
        writer.write_all(data).unwrap();
        assert!(matches!(
            writer.commit(),
            Err(Error::BlobSizeMismatch {
                expected: 11,
                actual: 10,
                ..
            })
        ));

        // Long: the write itself is refused, and commit reports it too.
        let mut writer = store.begin_blob(&digest, Some(5)).unwrap();
        let err = writer.write_all(data).unwrap_err();
        assert!(matches!(
            writer.write_error(err),
            Error::BlobSizeMismatch {
                expected: 5,
                actual: 10,
                ..
            }
        ));
        assert!(matches!(
            writer.commit(),
            Err(Error::BlobSizeMismatch {
                expected: 5,
                actual: 10,
                ..
            })
        ));
        assert!(matches!(
            store.put_blob_bytes(&digest, b"012345678"),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&digest));
        assert!(entries(&store.tmp_dir()).is_empty());

        // A present blob with a different expected size.
        store.put_blob_bytes(&digest, data).unwrap();
        assert!(matches!(
            store.begin_blob(&digest, Some(9)),
            Err(Error::BlobSizeMismatch {
                expected: 9,
                actual: 10,
                ..
            })
        ));
    }

    #[test]
    fn corrupt_blob_is_detected_and_removed() {
        let (_home, store) = store();
        let digest = store
            .put_blob_content(DigestAlgorithm::Sha256, b"good")
            .unwrap();
        let path = store.blob_path(&digest);
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"evil").unwrap();
        assert_eq!(store.read_blob(&digest, false).unwrap(), b"evil");
        assert!(matches!(
            store.read_blob(&digest, true),
            Err(Error::CorruptStore {
                reason: CorruptionKind::ContentMismatch { .. },
                ..
            })
        ));
        assert!(!store.has_blob(&digest));
    }

    #[test]
    fn concurrent_writers_two_threads() {
        let (_home, store) = store();
        let data = Arc::new(payload());
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (store, data, barrier) = (store.clone(), data.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    slow_write(&store, &data)
                })
            })
            .collect();
        let mut present: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        present.sort();
        assert_eq!(present, vec![false, true], "exactly one writer wrote");
        assert_single_blob(&store, &data);
    }

    const CHILD_HOME_ENV: &str = "MSB_TEST_STORE_CHILD_HOME";
    const CHILD_TEST: &str = "image::store::blob::tests::child_role_blob_writer";

    /// Not a test by itself: the child role of
    /// `concurrent_writers_two_processes`, a no-op unless the env var is set.
    #[test]
    fn child_role_blob_writer() {
        let Some(home) = std::env::var_os(CHILD_HOME_ENV) else {
            return;
        };
        let store = ImageStore::open(home).unwrap();
        let present = slow_write(&store, &payload());
        println!("CHILD_OK present={present}");
    }

    #[test]
    fn concurrent_writers_two_processes() {
        let (home, store) = store();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..2)
            .map(|_| {
                Command::new(&exe)
                    .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
                    .env(CHILD_HOME_ENV, home.path())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut present = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // libtest prints the marker on the line of the test's name.
            let flag = stdout
                .split("CHILD_OK present=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("child did not run the writer: {stdout}"));
            present.push(flag == "true");
        }
        present.sort();
        assert_eq!(present, vec![false, true], "exactly one process wrote");
        assert_single_blob(&store, &payload());
    }
}
