//! Blob downloads: streamed to a writer or a file while hashing, resumed on a
//! dropped connection, verified at the end.
//!
//! - Each chunk is hashed (with the digest's own algorithm) and counted as it
//!   is written; nothing is buffered beyond one chunk.
//! - When the connection drops or the body ends short, the download is retried
//!   up to [`RetryPolicy::attempts`] times in all, with exponential backoff,
//!   asking for the rest with `Range: bytes=<n>-`. A `206` answer continues
//!   where it stopped; a `200` (the server ignored the range) is read from the
//!   start with the first `n` bytes skipped, so a plain writer never needs
//!   rewinding. `5xx`, `408` and `429` answers are retried the same way.
//! - At the end the size must match (short after the last attempt:
//!   [`Error::BlobTruncated`]; more than expected: [`Error::TooLarge`], checked
//!   before writing) and the digest must match ([`Error::DigestMismatch`]).
//! - [`RegistryClient::download_blob_to_path`] writes `<path>.partial` and
//!   renames it to `path` only once the blob is verified; on any failure (or
//!   if the future is dropped) the partial file is removed, so `path` exists
//!   only with verified content.
//! - Progress: [`Progress`] events go to a [`ProgressSink`] (an `mpsc`
//!   sender, or a closure in [`ProgressFn`]) at the start, about every
//!   256 KiB, and at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::Digest as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::RegistryClient;
use crate::error::{Error, Result};
use crate::image::{Digest, DigestAlgorithm, Reference};

/// How often (in bytes) progress is reported.
const PROGRESS_STEP: u64 = 256 << 10;

/// One progress report for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The blob.
    pub digest: Digest,
    /// Bytes received and written so far.
    pub downloaded: u64,
    /// The blob's size, when known.
    pub total: Option<u64>,
}

/// Receives [`Progress`] events. Must not block: it is called from the
/// download loop.
pub trait ProgressSink: Send + Sync {
    /// One event.
    fn progress(&self, event: Progress);
}

impl ProgressSink for tokio::sync::mpsc::UnboundedSender<Progress> {
    fn progress(&self, event: Progress) {
        let _ = self.send(event);
    }
}

/// Events are dropped while the channel is full (a progress bar only needs
/// the latest).
impl ProgressSink for tokio::sync::mpsc::Sender<Progress> {
    fn progress(&self, event: Progress) {
        let _ = self.try_send(event);
    }
}

/// A closure as a [`ProgressSink`].
#[derive(Debug, Clone, Copy)]
pub struct ProgressFn<F>(pub F);

impl<F: Fn(Progress) + Send + Sync> ProgressSink for ProgressFn<F> {
    fn progress(&self, event: Progress) {
        (self.0)(event)
    }
}

/// How blob downloads retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting 0.5 s, 1 s, 2 s, 4 s.
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Incremental sha256/sha512.
#[derive(Debug, Clone)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
            _ => Self::Sha256(sha2::Sha256::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Self::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Self::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest::new(algorithm, hex).expect("a hash's hex is a valid digest")
    }
}

/// `<path>.partial`: where [`RegistryClient::download_blob_to_path`] writes
/// before the rename.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Removes the partial file unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why one attempt stopped.
enum Stop {
    /// Worth retrying: a dropped connection, a short body, a transient status.
    Retry { error: Error, truncated: bool },
    /// Not worth retrying.
    Fatal(Error),
}

/// The state of one blob download across attempts.
struct Download<'a> {
    digest: &'a Digest,
    total: Option<u64>,
    got: u64,
    /// `None` when the writer verifies the digest.
    hasher: Option<Hasher>,
    progress: Option<&'a dyn ProgressSink>,
    reported: u64,
}

impl Download<'_> {
    fn report(&mut self, force: bool) {
        if let Some(sink) = self.progress
            && (force || self.got - self.reported >= PROGRESS_STEP)
        {
            self.reported = self.got;
            sink.progress(Progress {
                digest: self.digest.clone(),
                downloaded: self.got,
                total: self.total,
            });
        }
    }
}

impl RegistryClient {
    /// Downloads blob `digest` of `reference`'s repository into `writer`,
    /// verified; returns its size. `size` (from the descriptor) is checked
    /// when given, and should be: without it a short body can only be caught
    /// by the digest check.
    ///
    /// On error, `writer` may have received part of the blob.
    pub async fn download_blob<W: AsyncWrite + Unpin + Send>(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        writer: &mut W,
        progress: Option<&dyn ProgressSink>,
    ) -> Result<u64> {
        let hasher = Some(Hasher::new(digest.algorithm()));
        self.download(reference, digest, size, writer, progress, hasher)
            .await
    }

    /// [`download_blob`](Self::download_blob) into a writer that checks the
    /// digest itself, as the blob store's writer does when it commits: the
    /// bytes are hashed once, not twice. Whoever calls this must commit
    /// through that check.
    pub(crate) async fn download_blob_to_verifier<W: AsyncWrite + Unpin + Send>(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        writer: &mut W,
        progress: Option<&dyn ProgressSink>,
    ) -> Result<u64> {
        self.download(reference, digest, size, writer, progress, None)
            .await
    }

    /// Downloads into `writer`, resuming and retrying; checks the digest
    /// when given a `hasher`.
    async fn download<W: AsyncWrite + Unpin + Send>(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        writer: &mut W,
        progress: Option<&dyn ProgressSink>,
        hasher: Option<Hasher>,
    ) -> Result<u64> {
        let mut state = Download {
            digest,
            total: size,
            got: 0,
            hasher,
            progress,
            reported: 0,
        };
        state.report(true);
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let stop = match self.attempt(reference, &mut state, writer).await {
                Ok(()) => match state.total {
                    Some(total) if state.got < total => Stop::Retry {
                        error: Error::BlobTruncated {
                            digest: digest.clone(),
                            expected: total,
                            got: state.got,
                        },
                        truncated: true,
                    },
                    _ => break,
                },
                Err(stop) => stop,
            };
            match stop {
                Stop::Fatal(error) => return Err(error),
                Stop::Retry { error, truncated } => {
                    if attempt >= attempts {
                        return Err(match (truncated, state.total) {
                            (true, Some(expected)) => Error::BlobTruncated {
                                digest: digest.clone(),
                                expected,
                                got: state.got,
                            },
                            _ => error,
                        });
                    }
                    let wait = self.retry.backoff(attempt);
                    tracing::warn!(%digest, got = state.got, attempt, ?wait, error = %error, "blob download interrupted; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        writer.flush().await.map_err(|source| Error::Io {
            op: "write blob",
            path: PathBuf::from(digest.to_string()),
            source,
        })?;
        if let Some(hasher) = state.hasher.take() {
            let actual = hasher.finish();
            if &actual != digest {
                return Err(Error::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        state.report(true);
        Ok(state.got)
    }

    /// Downloads blob `digest` to `path` via `<path>.partial` (see the
    /// [module docs](self)); returns its size.
    ///
    /// Two downloads of one blob to one path at once are the caller's to
    /// prevent (the cache locks per digest).
    pub async fn download_blob_to_path(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: Option<u64>,
        path: &Path,
        progress: Option<&dyn ProgressSink>,
    ) -> Result<u64> {
        let partial = partial_path(path);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(io("create", &partial))?;
        let mut guard = RemoveOnDrop(Some(partial.clone()));
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let got = self
            .download_blob(reference, digest, size, &mut writer, progress)
            .await?;
        let file = writer.into_inner();
        file.sync_all().await.map_err(io("sync", &partial))?;
        drop(file);
        tokio::fs::rename(&partial, path)
            .await
            .map_err(io("rename into place", path))?;
        guard.0 = None;
        Ok(got)
    }

    /// One request: continues `state` from `state.got`. `Ok` when the body
    /// ended cleanly (maybe short).
    async fn attempt<W: AsyncWrite + Unpin + Send>(
        &self,
        reference: &Reference,
        state: &mut Download<'_>,
        writer: &mut W,
    ) -> std::result::Result<(), Stop> {
        let path = format!("/v2/{}/blobs/{}", reference.repository(), state.digest);
        let offset = state.got;
        let response = self
            .send(reference, |http, base| {
                let request = http.get(format!("{base}{path}"));
                if offset > 0 {
                    request.header(RANGE, format!("bytes={offset}-"))
                } else {
                    request
                }
            })
            .await
            .map_err(|error| match error {
                Error::Http { .. } => Stop::Retry {
                    error,
                    truncated: false,
                },
                other => Stop::Fatal(other),
            })?;
        let status = response.status();
        let mut skip = match status {
            StatusCode::OK => offset,
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    return Err(Stop::Fatal(Error::Registry {
                        registry: reference.registry().to_owned(),
                        status: status.as_u16(),
                        message: format!(
                            "asked for bytes from {offset}, got Content-Range from {start:?}"
                        ),
                    }));
                }
                0
            }
            s if s.is_server_error()
                || s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                let error = super::status_error(reference.registry(), response).await;
                return Err(Stop::Retry {
                    error,
                    truncated: false,
                });
            }
            _ => {
                return Err(Stop::Fatal(
                    super::status_error(reference.registry(), response).await,
                ));
            }
        };
        if state.total.is_none() && status == StatusCode::OK {
            state.total = response.content_length();
        }
        let url = response.url().to_string();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| Stop::Retry {
                error: Error::Http {
                    url: url.clone(),
                    source,
                },
                truncated: true,
            })?;
            let mut data = &chunk[..];
            if skip > 0 {
                let n = skip.min(data.len() as u64) as usize;
                data = &data[n..];
                skip -= n as u64;
            }
            if data.is_empty() {
                continue;
            }
            if let Some(total) = state.total
                && state.got + data.len() as u64 > total
            {
                return Err(Stop::Fatal(Error::TooLarge {
                    what: format!("blob {}", state.digest),
                    limit: total,
                }));
            }
            writer.write_all(data).await.map_err(|source| {
                Stop::Fatal(Error::Io {
                    op: "write blob",
                    path: PathBuf::from(state.digest.to_string()),
                    source,
                })
            })?;
            if let Some(hasher) = &mut state.hasher {
                hasher.update(data);
            }
            state.got += data.len() as u64;
            state.report(false);
        }
        if skip > 0 {
            // A full-length answer shorter than what we already had.
            return Err(Stop::Retry {
                error: Error::BlobTruncated {
                    digest: state.digest.clone(),
                    expected: state.total.unwrap_or(offset),
                    got: offset - skip,
                },
                truncated: true,
            });
        }
        Ok(())
    }
}

/// `bytes 100-199/200` → 100.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_backoff_and_ranges() {
        let policy = RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let waits: Vec<u128> = (1..=4).map(|r| policy.backoff(r).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(
            partial_path(Path::new("/a/b/sha256-x")),
            Path::new("/a/b/sha256-x.partial")
        );
    }
}
