//! Pulling an image: reference → manifest → blobs in the cache → a rootfs tree.
//!
//! ```text
//!  Reference ──resolve──▶ manifest (platform) ──▶ config + layers, in parallel,
//!      │                                            streamed into the blob store
//!      │                                            (sha256 checked while writing)
//!      │                                                 │ bytes as they land
//!      │                                                 ▼ (see `tail`)
//!      └── tag ◀── tree commit ◀── one applier unpacks the layers, in order,
//!                  (all blobs in)  into a staging tree while they download
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

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use self::tail::{Tail, Tails};

use super::registry::manifest::parse_manifest;
use super::registry::{Descriptor, Manifest, Platform, Progress, ProgressSink, RegistryClient};
use super::store::{BlobWriter, ImageMeta, ImageStore, PullPolicy};
use super::unpack::{Compression, LayerSource, LayerStream, UnpackOptions, apply_layers};
use super::{Digest, Reference};
use crate::{Error, Result};

mod tail;

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
    /// Downloading config and layers (all in parallel), until the last blob
    /// is in the store.
    pub download: Duration,
    /// Applying the layers, from the first layer's start to the tree's
    /// commit. Layers are applied while later ones still download, so this
    /// overlaps `download`.
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
    /// A puller over `client` and `store`, unpacking with default options,
    /// less gzip's CRC-32: every layer's sha256 digest is verified before
    /// its tree is committed (see [`UnpackOptions::gzip_crc`]).
    pub fn new(client: RegistryClient, store: ImageStore) -> Self {
        Self {
            client,
            store,
            unpack: UnpackOptions::default().gzip_crc(false),
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
        let lease = blocking(move || {
            let lease = store.lease()?;
            // Before this pull dirties anything: trees committed a while ago
            // are made durable, cheaply (the kernel wrote them back by now).
            if let Err(e) = store.settle_trees_leased(SETTLE_AGE) {
                tracing::warn!(error = %e, "could not mark trees synced");
            }
            Ok(lease)
        });
        // The manifest is fetched meanwhile: the network part, which writes
        // nothing to the store.
        let (lease, resolved) =
            tokio::join!(lease, self.client.resolve(reference, &options.platform));
        let _lease = lease?;
        let resolved = resolved?;
        let mut timings = PullTimings {
            resolve: started.elapsed(),
            ..PullTimings::default()
        };
        tracing::debug!(%reference, digest = %resolved.digest, layers = resolved.manifest.layers.len(), "resolved");

        let mut blobs = vec![resolved.manifest.config.clone()];
        blobs.extend(resolved.manifest.layers.iter().cloned());
        let fetched = self
            .fetch_tree(
                reference,
                &resolved.digest,
                &blobs,
                options.progress.clone(),
            )
            .await?;
        timings.download = fetched.download;
        timings.unpack = fetched.unpack;
        let rootfs = fetched.rootfs;
        let (store, digest, bytes) = (
            self.store.clone(),
            resolved.digest.clone(),
            resolved.bytes.clone(),
        );
        blocking(move || store.put_blob_bytes(&digest, &bytes)).await?;

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
    /// complete, or can be unpacked again from the store's blobs (see
    /// [`unpack_stored`]).
    async fn cached(&self, reference: &Reference) -> Result<Option<PulledImage>> {
        let started = Instant::now();
        let (store, r, options) = (self.store.clone(), reference.clone(), self.unpack.clone());
        blocking(move || {
            let Some(record) = store.resolve(&r)? else {
                return Ok(None);
            };
            if !store.has_tree(&record.manifest_digest)
                && unpack_stored(&store, &record.manifest_digest, &r, &options)?.is_none()
            {
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

    /// Downloads `blobs` (the config, then the layers) into the store, all at
    /// once, while one blocking applier unpacks the layers, in order, into a
    /// staging tree, each as its bytes arrive (a [`Tail`] per layer). The
    /// tree is committed only once every blob (the config included) is
    /// verified and in the store.
    ///
    /// Any error stops everything else and is returned once no work on the
    /// pull's behalf is left running: downloads are cancelled at their
    /// network part (their temp files removed) but their store calls run to
    /// completion and are awaited, the applier stops at its next read and
    /// drops the staging tree, and nothing is committed or left in `tmp/`.
    async fn fetch_tree(
        &self,
        reference: &Reference,
        manifest: &Digest,
        blobs: &[Descriptor],
        progress: Option<Arc<dyn ProgressSink>>,
    ) -> Result<FetchedTree> {
        let started = Instant::now();
        let layers: Vec<Descriptor> = blobs[1..].to_vec();
        let tails = Tails::new(layers.len());
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let cancelled = Arc::new(AtomicBool::new(false));
        let (commit_tx, commit_rx) = oneshot::channel();
        let mut commit = Some(commit_tx);
        let mut applier = Some(self.spawn_applier(
            manifest.clone(),
            layers,
            tails.all(),
            commit_rx,
            cancelled.clone(),
        ));

        let mut tasks = JoinSet::new();
        for (index, descriptor) in blobs.iter().enumerate() {
            let (client, store, reference) =
                (self.client.clone(), self.store.clone(), reference.clone());
            let (descriptor, progress, cancel) =
                (descriptor.clone(), progress.clone(), cancel_rx.clone());
            let tail = index.checked_sub(1).map(|layer| tails.get(layer));
            tasks.spawn(async move {
                let download = Download {
                    client,
                    store,
                    reference,
                    descriptor,
                    progress,
                    tail,
                };
                download.run(cancel).await
            });
        }

        let mut first_error: Option<Error> = None;
        let mut panicked = None;
        let fail = |e: Option<Error>,
                    first_error: &mut Option<Error>,
                    commit: &mut Option<oneshot::Sender<()>>| {
            if first_error.is_none() {
                *first_error = e;
            }
            cancelled.store(true, Ordering::SeqCst);
            let _ = cancel_tx.send(true);
            // Wake an applier waiting for bytes that will not come (after
            // `cancelled`: the applier then knows this error is the one).
            tails.abort_all();
            // Dropping the sender without a commit tells the applier to drop
            // the staging tree.
            *commit = None;
        };
        let mut download = None;
        let mut outcome = None;
        // An applier error that waits for the downloads: see below.
        let mut unpack_error = None;
        while !tasks.is_empty() || applier.is_some() {
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        // Cancelled after another error, which wins.
                        Ok(Ok(false)) => {}
                        Ok(Ok(true)) => {
                            if tasks.is_empty() {
                                download = Some(started.elapsed());
                                if let Some(tx) = commit.take() {
                                    // The applier may have finished early (tree
                                    // already present): nothing to tell it.
                                    let _ = tx.send(());
                                }
                            }
                        }
                        Ok(Err(e)) => fail(Some(e), &mut first_error, &mut commit),
                        // Downloads are cancelled cooperatively, never
                        // aborted; a JoinSet only cancels on drop.
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => {
                            panicked.get_or_insert(e.into_panic());
                            fail(None, &mut first_error, &mut commit);
                        }
                    }
                }
                joined = async {
                    match applier.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                }, if applier.is_some() => {
                    applier = None;
                    match joined {
                        Ok(Ok(Some(applied))) => outcome = Some(applied),
                        // Stopped because a download failed: that error wins.
                        Ok(Ok(None)) => {}
                        // A layer that does not unpack may be one whose download is
                        // corrupt: its digest mismatch, found when the download
                        // ends, is the cause and wins. The downloads run on (their
                        // sizes bound them); without a download error this one is
                        // the pull's.
                        Ok(Err(e)) if !tasks.is_empty() && first_error.is_none() => {
                            unpack_error = Some(e);
                        }
                        Ok(Err(e)) => fail(Some(e), &mut first_error, &mut commit),
                        Err(e) => {
                            panicked.get_or_insert(e.into_panic());
                            fail(None, &mut first_error, &mut commit);
                        }
                    }
                }
            }
        }
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
        if let Some(e) = first_error.or(unpack_error) {
            return Err(e);
        }
        let (rootfs, unpack) = outcome.expect("the applier finished without error or cancellation");
        Ok(FetchedTree {
            rootfs,
            download: download.unwrap_or_default(),
            unpack,
        })
    }

    /// Starts the applier: on a blocking thread, it unpacks each layer in
    /// order into a staging tree, reading it through its [`Tail`] as it
    /// downloads, then waits for `commit` (every blob verified and in the
    /// store) and commits the tree. Returns the tree and the time from the
    /// first layer to the commit, or `None` if the pull was cancelled or
    /// `commit` dropped (the pull failed elsewhere; the staging tree is
    /// dropped).
    fn spawn_applier(
        &self,
        manifest: Digest,
        layers: Vec<Descriptor>,
        tails: Vec<Arc<Tail>>,
        commit: oneshot::Receiver<()>,
        cancelled: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Result<Option<(PathBuf, Duration)>>> {
        let store = self.store.clone();
        let options = self.unpack.clone();
        tokio::task::spawn_blocking(move || {
            if store.has_tree(&manifest) {
                return Ok(Some((store.tree_path(&manifest), Duration::ZERO)));
            }
            let compressions = layers
                .iter()
                .map(compression_of)
                .collect::<Result<Vec<_>>>()?;
            let started = Instant::now();
            let build = store.begin_tree(&manifest)?;
            let streams = tails
                .iter()
                .zip(compressions)
                .map(|(tail, compression)| {
                    let reader = CancellableReader {
                        inner: tail.reader(),
                        cancelled: &cancelled,
                    };
                    let committed = CommittedBlob {
                        tail: tail.clone(),
                        cancelled: cancelled.clone(),
                        blob: OnceLock::new(),
                    };
                    layer_stream(reader, compression).with_source(Arc::new(committed))
                })
                .collect();
            let applied = apply_layers(build.path(), streams, &options);
            if cancelled.load(Ordering::SeqCst) {
                return Ok(None);
            }
            for (layer, stats) in layers.iter().zip(applied?) {
                tracing::debug!(digest = %layer.digest, ?stats, "applied layer");
            }
            if commit.blocking_recv().is_err() {
                return Ok(None);
            }
            let rootfs = build.commit()?;
            Ok(Some((rootfs, started.elapsed())))
        })
    }
}

/// How old a committed tree must be before a pull syncs the file system to
/// mark it durable: the kernel writes dirty data back after 30 s by default
/// (`vm.dirty_expire_centisecs`), so by then the sync has little to do.
const SETTLE_AGE: Duration = Duration::from_secs(60);

/// Unpacks the tree of the stored image manifest `manifest` (tagged as
/// `reference`) from the store's blobs, without the network, and commits
/// it: for a tagged image whose tree was collected, or may have lost data
/// in a crash (see the store's tree durability). `None` if a blob it needs
/// is not in the store.
fn unpack_stored(
    store: &ImageStore,
    manifest: &Digest,
    reference: &Reference,
    options: &UnpackOptions,
) -> Result<Option<PathBuf>> {
    let _lease = store.lease()?;
    if !store.has_blob(manifest) {
        return Ok(None);
    }
    let bytes = store.read_blob(manifest, true)?;
    let Manifest::Image(image) = parse_manifest(&bytes, None, &reference.to_string())?.1 else {
        return Ok(None);
    };
    let blobs = std::iter::once(&image.config).chain(&image.layers);
    if !blobs.into_iter().all(|d| store.has_blob(&d.digest)) {
        return Ok(None);
    }
    let mut streams = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let compression = compression_of(layer)?;
        let file = store.open_blob(&layer.digest)?;
        // A second handle for the back of the layer: `pread`s leave the
        // shared file offset, which the stream reads from, alone.
        let stored = StoredBlob {
            file: file.try_clone().map_err(|source| Error::Io {
                op: "duplicate blob handle",
                path: store.blob_path(&layer.digest),
                source,
            })?,
            len: layer.size,
        };
        streams.push(layer_stream(file, compression).with_source(Arc::new(stored)));
    }
    let build = store.begin_tree(manifest)?;
    apply_layers(build.path(), streams, options)?;
    let rootfs = build.commit()?;
    tracing::info!(%reference, digest = %manifest, "unpacked the tree again from stored blobs");
    Ok(Some(rootfs))
}

/// How `layer` is compressed, from its media type.
fn compression_of(layer: &Descriptor) -> Result<Compression> {
    Compression::from_media_type(&layer.media_type).ok_or_else(|| Error::UnsupportedMediaType {
        media_type: layer.media_type.clone(),
    })
}

/// A layer's compressed stream, as the unpacker reads it: decoders read in
/// large blocks through buffers of their own; a plain tar is read a header
/// (512 bytes) at a time, so it gets a buffer here.
fn layer_stream<'r>(reader: impl Read + Send + 'r, compression: Compression) -> LayerStream<'r> {
    match compression {
        Compression::None => LayerStream::new(
            std::io::BufReader::with_capacity(1 << 20, reader),
            compression,
        ),
        _ => LayerStream::new(reader, compression),
    }
}

/// A layer's blob as it downloads, read at random once committed: lets a
/// second thread decode the back of a large layer (see [`LayerSource`]).
/// Reads fail once the pull is cancelled.
struct CommittedBlob {
    tail: Arc<Tail>,
    cancelled: Arc<AtomicBool>,
    blob: OnceLock<(Arc<File>, u64)>,
}

impl LayerSource for CommittedBlob {
    fn complete_len(&self) -> Option<u64> {
        if self.blob.get().is_none() {
            let committed = self.tail.committed()?;
            let _ = self.blob.set(committed);
        }
        self.blob.get().map(|(_, len)| *len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("pull cancelled"));
        }
        let (file, _) = self
            .blob
            .get()
            .ok_or_else(|| std::io::Error::other("the blob is not committed yet"))?;
        file.read_at(buf, offset)
    }
}

/// A blob in the store, whole (see [`LayerSource`]).
struct StoredBlob {
    file: File,
    len: u64,
}

impl LayerSource for StoredBlob {
    fn complete_len(&self) -> Option<u64> {
        Some(self.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
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
/// is cheap enough not to warrant a thread hop per chunk. Each write tells
/// the layer's [`Tail`] how far the file now goes.
struct BlobSink<'t> {
    writer: BlobWriter,
    tail: Option<&'t Tail>,
}

impl AsyncWrite for BlobSink<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = self.writer.write(buf);
        if let Some(tail) = self.tail {
            tail.advance(self.writer.flushed());
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = self.writer.flush();
        if let Some(tail) = self.tail {
            tail.advance(self.writer.flushed());
        }
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// What [`Puller::fetch_tree`] produced.
struct FetchedTree {
    rootfs: PathBuf,
    /// From the first request to the last blob committed.
    download: Duration,
    /// From the first layer applied to the tree committed (overlaps
    /// `download`).
    unpack: Duration,
}

/// One blob to download into the store.
struct Download {
    client: RegistryClient,
    store: ImageStore,
    reference: Reference,
    descriptor: Descriptor,
    progress: Option<Arc<dyn ProgressSink>>,
    /// For a layer: where the applier follows the download.
    tail: Option<Arc<Tail>>,
}

impl Download {
    /// Downloads the blob into the store unless it is there already.
    /// Returns `false` if `cancel` stopped it (nothing is left behind).
    /// A layer's tail is completed once the blob is committed; on failure
    /// the pull aborts it.
    ///
    /// Only the network part is cancellable: the store calls (`begin_blob`,
    /// `commit`) run on blocking threads, and a cancelled `spawn_blocking`
    /// would run on detached, so they are always awaited to the end.
    async fn run(self, mut cancel: watch::Receiver<bool>) -> Result<bool> {
        let Self {
            client,
            store,
            reference,
            descriptor,
            progress,
            tail,
        } = self;
        let (digest, size) = (descriptor.digest, descriptor.size);
        let d = digest.clone();
        let writer = blocking(move || store.begin_blob(&d, Some(size))).await?;
        if let Some(tail) = &tail {
            tail.start(writer.open_reader()?);
        }
        if writer.already_present() {
            if let Some(sink) = &progress {
                sink.progress(Progress {
                    digest: digest.clone(),
                    downloaded: size,
                    total: Some(size),
                });
            }
        } else {
            if *cancel.borrow() {
                return Ok(false);
            }
            let mut sink = BlobSink {
                writer,
                tail: tail.as_deref(),
            };
            let downloaded = tokio::select! {
                // The store's writer checks the digest at its commit, below.
                result = client.download_blob_to_verifier(&reference, &digest, Some(size), &mut sink, progress.as_deref()) => Some(result),
                // Also taken if the sender is gone: the pull itself was dropped.
                _ = cancel.wait_for(|cancelled| *cancelled) => None,
            };
            let Some(result) = downloaded else {
                // Dropping the writer removes its temp file.
                return Ok(false);
            };
            result?;
            let BlobSink { writer, .. } = sink;
            blocking(move || writer.commit()).await?;
        }
        if let Some(tail) = tail {
            tail.complete(size);
        }
        Ok(true)
    }
}

/// Fails reads once the pull is cancelled, so that an applier in the middle
/// of a large layer stops promptly.
struct CancellableReader<'a, R> {
    inner: R,
    cancelled: &'a AtomicBool,
}

impl<R: Read> Read for CancellableReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("pull cancelled"));
        }
        self.inner.read(buf)
    }
}
