//! Pulling an image: reference → manifest → blobs in the cache → a rootfs tree.
//!
//! ```text
//!  Reference ──resolve──▶ manifest (platform) ──▶ config + layers, in parallel,
//!      │                                            streamed into the blob store
//!      │                                            (sha256 checked while writing)
//!      └── tag ◀── tree commit ◀── layers applied in order into a staging tree
//! ```
//!
//! Every step is restartable and leaves nothing half-written: blobs are
//! committed only once their digest checks out, the tree is built in the
//! store's staging area and renamed into place, and the reference is tagged
//! last. A [`StoreLease`](super::store::StoreLease) keeps garbage collection
//! away for the whole pull.
//!
//! With [`PullPolicy::IfMissing`] a cached image costs two small file reads,
//! whatever its size.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::task::JoinSet;

use super::registry::{Descriptor, Platform, Progress, ProgressSink, RegistryClient};
use super::store::{BlobWriter, ImageMeta, ImageStore, PullPolicy};
use super::unpack::{Compression, UnpackOptions, apply_layer};
use super::{Digest, Reference};
use crate::{Error, Result};

/// How to pull.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// The platform to select from an index (default `linux/amd64`).
    pub platform: Platform,
    /// When to contact the registry.
    pub policy: PullPolicy,
    /// Where per-layer download progress goes, e.g. a CLI's progress bars.
    pub progress: Option<Arc<dyn ProgressSink>>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("policy", &self.policy)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A pulled image, ready to boot from.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The normalized reference.
    pub reference: Reference,
    /// The platform-specific manifest's digest.
    pub manifest_digest: Digest,
    /// The flattened root filesystem (read-only by convention: sandboxes
    /// assemble their own writable rootfs on top of it).
    pub rootfs: PathBuf,
    /// Whether the registry was contacted.
    pub fetched: bool,
    /// Timings of the pull.
    pub timings: PullTimings,
}

/// Where a pull spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub struct PullTimings {
    /// Manifest resolution.
    pub resolve: Duration,
    /// Downloading config and layers (all in parallel).
    pub download: Duration,
    /// Applying the layers.
    pub unpack: Duration,
    /// The whole pull.
    pub total: Duration,
}

/// Pulls images from registries into an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct Puller {
    client: RegistryClient,
    store: ImageStore,
    unpack: UnpackOptions,
}

impl Puller {
    /// A puller over `client` and `store`, unpacking with default options.
    pub fn new(client: RegistryClient, store: ImageStore) -> Self {
        Self {
            client,
            store,
            unpack: UnpackOptions::default(),
        }
    }

    /// The store images land in.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Makes `reference` available as a rootfs tree, contacting the registry
    /// as `options.policy` says.
    pub async fn pull(&self, reference: &Reference, options: &PullOptions) -> Result<PulledImage> {
        let started = Instant::now();
        if options.policy != PullPolicy::Always {
            if let Some(image) = self.cached(reference).await? {
                return Ok(image);
            }
            if options.policy == PullPolicy::Never {
                return Err(Error::ImageNotFound {
                    reference: reference.clone(),
                });
            }
        }
        let store = self.store.clone();
        let _lease = blocking(move || store.lease()).await?;
        let mut timings = PullTimings::default();

        let resolved = self.client.resolve(reference, &options.platform).await?;
        timings.resolve = started.elapsed();
        tracing::debug!(%reference, digest = %resolved.digest, layers = resolved.manifest.layers.len(), "resolved");

        let download_started = Instant::now();
        let mut blobs = vec![resolved.manifest.config.clone()];
        blobs.extend(resolved.manifest.layers.iter().cloned());
        self.download_all(reference, &blobs, options.progress.clone())
            .await?;
        let (store, digest, bytes) = (
            self.store.clone(),
            resolved.digest.clone(),
            resolved.bytes.clone(),
        );
        blocking(move || store.put_blob_bytes(&digest, &bytes)).await?;
        timings.download = download_started.elapsed();

        let unpack_started = Instant::now();
        let rootfs = self
            .unpack_tree(&resolved.digest, &resolved.manifest.layers)
            .await?;
        timings.unpack = unpack_started.elapsed();

        let size = resolved.bytes.len() as u64 + blobs.iter().map(|d| d.size).sum::<u64>();
        let meta = ImageMeta {
            platform: Some(options.platform.to_string()),
            size,
        };
        let (store, r, digest) = (
            self.store.clone(),
            reference.clone(),
            resolved.digest.clone(),
        );
        blocking(move || store.tag(&r, &digest, meta)).await?;
        timings.total = started.elapsed();
        tracing::info!(%reference, digest = %resolved.digest, ?timings, "pulled");
        Ok(PulledImage {
            reference: reference.clone(),
            manifest_digest: resolved.digest,
            rootfs,
            fetched: true,
            timings,
        })
    }

    /// The cached image for `reference`, if it is tagged and its tree is
    /// complete.
    async fn cached(&self, reference: &Reference) -> Result<Option<PulledImage>> {
        let started = Instant::now();
        let (store, r) = (self.store.clone(), reference.clone());
        blocking(move || {
            let Some(record) = store.resolve(&r)? else {
                return Ok(None);
            };
            if !store.has_tree(&record.manifest_digest) {
                return Ok(None);
            }
            Ok(Some(PulledImage {
                rootfs: store.tree_path(&record.manifest_digest),
                manifest_digest: record.manifest_digest,
                reference: r,
                fetched: false,
                timings: PullTimings {
                    total: started.elapsed(),
                    ..PullTimings::default()
                },
            }))
        })
        .await
    }

    /// Downloads every blob not yet in the store, all at once.
    async fn download_all(
        &self,
        reference: &Reference,
        blobs: &[Descriptor],
        progress: Option<Arc<dyn ProgressSink>>,
    ) -> Result<()> {
        let mut tasks = JoinSet::new();
        for descriptor in blobs {
            let (client, store, reference) =
                (self.client.clone(), self.store.clone(), reference.clone());
            let (digest, size) = (descriptor.digest.clone(), descriptor.size);
            let progress = progress.clone();
            tasks.spawn(async move {
                let d = digest.clone();
                let writer = blocking(move || store.begin_blob(&d, Some(size))).await?;
                if writer.already_present() {
                    if let Some(sink) = &progress {
                        sink.progress(Progress {
                            digest: digest.clone(),
                            downloaded: size,
                            total: Some(size),
                        });
                    }
                    return Ok(());
                }
                let mut sink = BlobSink { writer };
                client
                    .download_blob(
                        &reference,
                        &digest,
                        Some(size),
                        &mut sink,
                        progress.as_deref(),
                    )
                    .await?;
                let BlobSink { writer } = sink;
                blocking(move || writer.commit()).await.map(drop)
            });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let outcome = match joined {
                Ok(outcome) => outcome,
                // Aborted below after another blob failed: that error wins.
                Err(e) if e.is_cancelled() => continue,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            if let (Err(e), None) = (outcome, &first_error) {
                // Stop the others: their writers drop and remove their
                // temporary files.
                tasks.abort_all();
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Applies `layers` in order into a staging tree and commits it.
    async fn unpack_tree(&self, manifest: &Digest, layers: &[Descriptor]) -> Result<PathBuf> {
        let store = self.store.clone();
        let manifest = manifest.clone();
        let layers = layers.to_vec();
        let options = self.unpack.clone();
        blocking(move || {
            if store.has_tree(&manifest) {
                return Ok(store.tree_path(&manifest));
            }
            let build = store.begin_tree(&manifest)?;
            for layer in &layers {
                let file = store.open_blob(&layer.digest)?;
                let compression = match Compression::from_media_type(&layer.media_type) {
                    Some(c) => c,
                    None => {
                        return Err(Error::UnsupportedMediaType {
                            media_type: layer.media_type.clone(),
                        });
                    }
                };
                let reader = std::io::BufReader::with_capacity(1 << 20, file);
                let stats = apply_layer(build.path(), reader, compression, &options)?;
                tracing::debug!(digest = %layer.digest, ?stats, "applied layer");
            }
            build.commit()
        })
        .await
    }
}

/// Runs blocking store and unpack work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Adapts a [`BlobWriter`] (a local file) to [`AsyncWrite`]. Writes go
/// straight to the page cache in chunks of at most one network read, which
/// is cheap enough not to warrant a thread hop per chunk.
struct BlobSink {
    writer: BlobWriter,
}

impl AsyncWrite for BlobSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.writer.write(buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.writer.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}
