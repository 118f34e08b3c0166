//! Applying OCI image layers onto a root filesystem directory, safely against
//! hostile tarballs.
//!
//! [`apply_layer`] streams one layer (a tar archive, optionally gzip or zstd
//! compressed) onto a directory with the semantics of containerd and umoci:
//! regular files, directories, symlinks, hard links, device nodes and fifos,
//! modes (setuid/setgid/sticky included), ownership, modification times and
//! `SCHILY.xattr.*` extended attributes; `.wh.<name>` whiteouts delete
//! `<name>` from lower layers and `.wh..wh..opq` makes a directory opaque.
//! Apply the layers of an image bottom-up, one call each, onto the same root.
//!
//! # Safety against hostile layers
//!
//! Nothing is ever written outside `root`, not even transiently. Every entry's
//! parent directory is reached from an open descriptor of `root`, one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`, and the entry
//! itself is created with `*at` system calls that never follow a final
//! symlink. Symlinks met on the way (created by a lower layer or earlier in the
//! same layer) are followed inside the tree: an absolute target is resolved
//! from `root` (the image's own `/`, as containerd does), never from the
//! host's. Refused with [`Error::UnsafeLayerEntry`]:
//!
//! - names (and hard-link targets) with a `..` component; a leading `/` is
//!   stripped, as containerd does, so absolute names are relative to `root`;
//! - parents reached through a symlink whose `..` components climb above
//!   `root`, and symlink loops;
//! - hard links whose target is missing or outside the tree.
//!
//! A corrupt or truncated tar, gzip or zstd stream is [`Error::LayerFormat`].
//!
//! # Threads
//!
//! A compressed layer is decompressed on a thread of its own while its
//! entries are applied, and the next layer decompresses ahead. Once a layer
//! is decompressed (a plain tar: from the start), a second thread creates
//! some of its small files, those in directories the layer itself created,
//! while the applier goes on; the applier waits for it before anything that
//! could touch such a file, so the result is the same as in tar order.
//!
//! # Errors and cleanup
//!
//! On an error the layer is left partly applied: the caller owns cleanup.
//! Unpack an image into a fresh temporary directory next to its final place
//! and rename it into place only once every layer applied successfully.
//!
//! ```
//! use msb_core::image::unpack::{apply_layer, Compression, UnpackOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let mut tar = tar::Builder::new(Vec::new());
//! let mut header = tar::Header::new_gnu();
//! header.set_size(5);
//! header.set_mode(0o644);
//! header.set_entry_type(tar::EntryType::Regular);
//! tar.append_data(&mut header, "etc/hostname", &b"demo\n"[..])?;
//! let layer = tar.into_inner()?;
//!
//! let stats = apply_layer(dir.path(), &layer[..], Compression::None, &UnpackOptions::default())?;
//! assert_eq!(stats.entries, 1);
//! assert_eq!(std::fs::read(dir.path().join("etc/hostname"))?, b"demo\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod affinity;
mod apply;
mod decode;
mod fresh;
mod gzip;
mod halves;
mod inflate;
mod offload;
mod resolve;
mod stream;
mod sys;
#[cfg(test)]
mod tests;
mod whiteout;

pub(crate) use whiteout::remove_all_counting;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// The most bytes of holes one GNU sparse entry may describe.
///
/// A sparse map costs a few bytes per hole of any size, and the tar reader
/// hands holes over as zeros to read through: without a bound, a 2 KiB layer
/// describing a 1 TiB hole made the unpacker write 1 TiB of zeros (found by
/// `tests/fuzz_unpack.rs`, `sparse_entry_with_a_huge_hole_is_bounded`). Holes
/// are now kept as holes (nothing reaches the disk), and this caps the zeros
/// read through: 16 GiB, well above real sparse files in images.
pub const MAX_SPARSE_HOLES: u64 = 16 << 30;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (possibly several concatenated members).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type implies, or `None` when the media
    /// type is not a known layer type.
    ///
    /// ```
    /// use msb_core::image::unpack::Compression;
    /// assert_eq!(
    ///     Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
    ///     Some(Compression::Zstd)
    /// );
    /// assert_eq!(
    ///     Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ///     Some(Compression::Gzip)
    /// );
    /// assert_eq!(Compression::from_media_type("application/json"), None);
    /// ```
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        // Parameters such as `; charset=` never appear on layers, but ignore them.
        let media_type = media_type.split(';').next().unwrap_or("").trim();
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The compression the first bytes of a blob show (gzip's `1f 8b`, zstd's
    /// `28 b5 2f fd`), else [`Compression::None`].
    ///
    /// ```
    /// use msb_core::image::unpack::Compression;
    /// assert_eq!(Compression::from_magic(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
    /// assert_eq!(Compression::from_magic(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
    /// assert_eq!(Compression::from_magic(b"etc/"), Compression::None);
    /// ```
    pub fn from_magic(bytes: &[u8]) -> Self {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Random access to a layer's compressed bytes, once all of them are there.
///
/// A gzip layer is one deflate stream, which one thread decodes from its
/// start. Given the whole stream, a second thread can decode its back half
/// meanwhile: [`apply_layers`] does that for a large gzip layer whose
/// [`LayerStream`] has a source, once [`complete_len`](Self::complete_len)
/// says all of it can be read.
pub trait LayerSource: Send + Sync {
    /// The layer's length in bytes, once all of it can be read with
    /// [`read_at`](Self::read_at) and will not change; `None` until then
    /// (it is asked again as decoding goes on).
    fn complete_len(&self) -> Option<u64>;

    /// Reads bytes at `offset` into `buf`, as `pread` does.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

/// One layer for [`apply_layers`]: its stream, how it is compressed and,
/// optionally, random access to the same bytes (see [`LayerSource`]).
pub struct LayerStream<'r> {
    reader: Box<dyn Read + Send + 'r>,
    compression: Compression,
    source: Option<Arc<dyn LayerSource + 'r>>,
}

impl<'r> LayerStream<'r> {
    /// The layer `reader` reads, compressed as `compression`.
    pub fn new(reader: impl Read + Send + 'r, compression: Compression) -> Self {
        Self {
            reader: Box::new(reader),
            compression,
            source: None,
        }
    }

    /// Adds random access to the layer's bytes (`reader`'s, from its
    /// start), for decoding a large gzip layer on two threads.
    pub fn with_source(mut self, source: Arc<dyn LayerSource + 'r>) -> Self {
        self.source = Some(source);
        self
    }
}

impl fmt::Debug for LayerStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerStream")
            .field("compression", &self.compression)
            .field("source", &self.source.is_some())
            .finish_non_exhaustive()
    }
}

/// The tar stream of a compressed layer, decoded as [`apply_layer`] decodes
/// it: gzip through msb's own streaming inflater (libdeflate's design; its
/// CRC-32 checked if [`UnpackOptions::gzip_crc`]), zstd through libzstd.
/// Read it in large buffers: the decoder writes straight into them.
///
/// ```
/// use std::io::{Read, Write};
/// use msb_core::image::unpack::{decompress, Compression, UnpackOptions};
///
/// let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
/// gz.write_all(b"a layer's tar stream")?;
/// let gz = gz.finish()?;
/// let mut tar = Vec::new();
/// decompress(&gz[..], Compression::Gzip, &UnpackOptions::default())?.read_to_end(&mut tar)?;
/// assert_eq!(tar, b"a layer's tar stream");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decompress<'r>(
    reader: impl Read + Send + 'r,
    compression: Compression,
    options: &UnpackOptions,
) -> std::io::Result<Box<dyn Read + Send + 'r>> {
    decode::decoder(reader, compression, options.gzip_crc)
}

/// How [`apply_layer`] treats what needs privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackOptions {
    /// Give entries the uid/gid the layer records (`lchown`). Default: when
    /// running as root (euid 0). Otherwise everything belongs to the caller.
    pub preserve_ownership: bool,
    /// Create character and block devices. Default: when running as root.
    /// When false, or when the kernel refuses (`EPERM`, e.g. in a user
    /// namespace), device entries are skipped with a warning and counted in
    /// [`LayerStats::skipped_devices`].
    pub allow_devices: bool,
    /// Create fifos (which needs no privilege). Default: true. Skipped fifos
    /// count in [`LayerStats::skipped_devices`] too.
    pub allow_fifos: bool,
    /// Apply `SCHILY.xattr.*` extended attributes (best effort: failures are
    /// counted in [`LayerStats::xattrs_failed`], never fatal). Default: true.
    pub xattrs: bool,
    /// Check gzip's CRC-32 of each member. Default: true. Each member's
    /// length is checked either way. The [puller](crate::image::Puller)
    /// turns this off: it verifies every layer's sha256 digest before it
    /// commits the tree, which covers the CRC and more, and skipping it
    /// saves about 5% of inflating.
    pub gzip_crc: bool,
    /// Once a layer is decoded, let a second thread create some of its
    /// small files (see the module docs). Default: when more than one CPU
    /// is available to the process. The tree is the same either way.
    pub file_helper: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = nix::unistd::geteuid().is_root();
        Self {
            preserve_ownership: root,
            allow_devices: root,
            allow_fifos: true,
            xattrs: true,
            gzip_crc: true,
            file_helper: std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
        }
    }
}

impl UnpackOptions {
    /// Set [`UnpackOptions::preserve_ownership`].
    pub fn preserve_ownership(mut self, yes: bool) -> Self {
        self.preserve_ownership = yes;
        self
    }

    /// Set [`UnpackOptions::allow_devices`].
    pub fn allow_devices(mut self, yes: bool) -> Self {
        self.allow_devices = yes;
        self
    }

    /// Set [`UnpackOptions::allow_fifos`].
    pub fn allow_fifos(mut self, yes: bool) -> Self {
        self.allow_fifos = yes;
        self
    }

    /// Set [`UnpackOptions::xattrs`].
    pub fn xattrs(mut self, yes: bool) -> Self {
        self.xattrs = yes;
        self
    }

    /// Set [`UnpackOptions::gzip_crc`].
    pub fn gzip_crc(mut self, yes: bool) -> Self {
        self.gzip_crc = yes;
        self
    }

    /// Set [`UnpackOptions::file_helper`].
    pub fn file_helper(mut self, yes: bool) -> Self {
        self.file_helper = yes;
        self
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Tar entries read (whiteouts and skipped entries included).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Regular files created.
    pub files: u64,
    /// Of `files`, those a second thread created (see the module docs).
    pub files_by_helper: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub devices: u64,
    /// Device nodes and fifos skipped (not permitted).
    pub skipped_devices: u64,
    /// Entries of other types (e.g. GNU volume labels) skipped.
    pub skipped_other: u64,
    /// `.wh.<name>` whiteouts applied.
    pub whiteouts: u64,
    /// `.wh..wh..opq` opaque markers applied.
    pub opaque_dirs: u64,
    /// Extended attributes set.
    pub xattrs_set: u64,
    /// Extended attributes that could not be set (e.g. `ENOTSUP`, `EPERM`).
    pub xattrs_failed: u64,
}

/// Why a layer entry was refused ([`Error::UnsafeLayerEntry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsafeEntryReason {
    /// The name has a `..` component.
    ParentComponent,
    /// The name has a NUL byte or is otherwise unusable.
    InvalidName,
    /// A non-directory entry names the root itself.
    ReplacesRoot,
    /// A whiteout names `.`, `..` or nothing.
    InvalidWhiteout,
    /// A parent component is a symlink whose target climbs above the root.
    SymlinkEscape {
        /// Where the symlink is, relative to the root.
        symlink: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// Too many symlinks were followed resolving the name (a loop).
    SymlinkLoop,
    /// A hard link's target has a `..` component or resolves outside the tree.
    HardLinkEscape {
        /// The link target as written in the layer.
        target: PathBuf,
    },
    /// A hard link's target does not exist in the tree.
    HardLinkTargetMissing {
        /// The link target as written in the layer.
        target: PathBuf,
    },
}

impl fmt::Display for UnsafeEntryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ParentComponent => f.write_str("the name has a `..` component"),
            Self::InvalidName => f.write_str("the name is not a usable path"),
            Self::ReplacesRoot => f.write_str("a non-directory entry names the root"),
            Self::InvalidWhiteout => f.write_str("the whiteout names no removable entry"),
            Self::SymlinkEscape { symlink, target } => write!(
                f,
                "parent symlink {} -> {} leads outside the root",
                symlink.display(),
                target.display()
            ),
            Self::SymlinkLoop => f.write_str("too many levels of symbolic links"),
            Self::HardLinkEscape { target } => {
                write!(
                    f,
                    "hard link target {} is outside the root",
                    target.display()
                )
            }
            Self::HardLinkTargetMissing { target } => {
                write!(f, "hard link target {} does not exist", target.display())
            }
        }
    }
}

/// What is wrong with a malformed layer ([`Error::LayerFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerFormatErrorKind {
    /// The stream ended early.
    Truncated,
    /// The tar, gzip or zstd data is invalid.
    Corrupt,
    /// A hard or symbolic link entry has no target.
    MissingLinkTarget,
    /// A GNU sparse entry describes more than
    /// [`MAX_SPARSE_HOLES`] bytes of holes.
    SparseTooLarge,
}

impl fmt::Display for LayerFormatErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "the stream is truncated",
            Self::Corrupt => "the stream is corrupt",
            Self::MissingLinkTarget => "a link entry has no target",
            Self::SparseTooLarge => "a sparse entry describes too large a hole",
        })
    }
}

/// Apply one layer, read from `reader` and compressed as `compression`, onto
/// the directory `root`, streaming (the tar is never copied to disk). A
/// compressed layer is decompressed on a second thread while its entries
/// are applied.
///
/// Returns what was done. See the [module docs](self) for semantics, the
/// safety guarantees and why the caller must unpack into a temporary
/// directory: on error the layer is left partly applied.
pub fn apply_layer(
    root: &Path,
    reader: impl Read + Send,
    compression: Compression,
    opts: &UnpackOptions,
) -> Result<LayerStats> {
    let mut applied = apply_layers(root, vec![LayerStream::new(reader, compression)], opts)?;
    Ok(applied.pop().expect("one layer applied"))
}

/// Apply `layers` in order onto the directory `root`, as one
/// [`apply_layer`] call each would, but with the next layer decompressing
/// while the current one is applied, and the back half of a large gzip
/// layer with a [`LayerSource`] decompressing on a thread of its own. Stops
/// at the first error.
///
/// Returns what was done, per layer.
///
/// ```
/// use msb_core::image::unpack::{apply_layers, Compression, LayerStream, UnpackOptions};
///
/// let layer = |name: &str| -> Vec<u8> {
///     let mut tar = tar::Builder::new(Vec::new());
///     let mut header = tar::Header::new_gnu();
///     header.set_size(0);
///     header.set_mode(0o644);
///     tar.append_data(&mut header, name, &b""[..]).unwrap();
///     tar.into_inner().unwrap()
/// };
/// let (lower, upper) = (layer("a"), layer("b"));
/// let dir = tempfile::tempdir()?;
/// let layers = vec![
///     LayerStream::new(&lower[..], Compression::None),
///     LayerStream::new(&upper[..], Compression::None),
/// ];
/// let stats = apply_layers(dir.path(), layers, &UnpackOptions::default())?;
/// assert_eq!(stats.len(), 2);
/// assert!(dir.path().join("a").exists() && dir.path().join("b").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn apply_layers<'r>(
    root: &Path,
    layers: Vec<LayerStream<'r>>,
    opts: &UnpackOptions,
) -> Result<Vec<LayerStats>> {
    let mut applied = Vec::with_capacity(layers.len());
    let mut failed = None;
    decode::decompressed_layers(
        layers,
        opts.gzip_crc,
        |tar, decoded| match apply::apply_tar(root, tar, opts, decoded) {
            Ok(stats) => {
                applied.push(stats);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        },
    );
    match failed {
        Some(e) => Err(e),
        None => Ok(applied),
    }
}

/// An [`Error::LayerFormat`], classifying an I/O error from the decoder.
pub(crate) fn format_error(
    entry: Option<PathBuf>,
    reason: LayerFormatErrorKind,
    source: Option<std::io::Error>,
) -> Error {
    Error::LayerFormat {
        entry,
        reason,
        source,
    }
}

/// An [`Error::LayerFormat`] for a read error from the layer stream.
pub(crate) fn read_error(entry: Option<PathBuf>, source: std::io::Error) -> Error {
    let reason = if source.kind() == std::io::ErrorKind::UnexpectedEof {
        LayerFormatErrorKind::Truncated
    } else {
        LayerFormatErrorKind::Corrupt
    };
    format_error(entry, reason, Some(source))
}
