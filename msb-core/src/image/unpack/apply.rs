//! Applying one layer's tar stream, entry by entry.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, makedev,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use super::fresh::{FreshDirs, Known};
use super::offload::{self, FileJob, Offload};
use super::resolve::{
    DIR_FLAGS, Resolver, is_dir, is_symlink, join, path_of, split_name, unsafe_entry,
};
use super::stream::{CopyError, TarStream};
use super::sys::{fsetxattr, lsetxattr_at, os};
use super::whiteout::{Added, OPAQUE, PREFIX, clean_except_added, remove_all_at};
use super::{
    LayerFormatErrorKind, LayerStats, MAX_SPARSE_HOLES, UnpackOptions, UnsafeEntryReason,
    format_error, read_error,
};
use crate::error::{Error, Result};

/// Size of the buffer a sparse file's contents are copied through.
const COPY_BUF: usize = 256 * 1024;

/// Apply the tar stream `reader` onto `root`. `decoded` is set once the
/// layer's decoder has decoded all of it (from the start for a layer read
/// as it is): from then on a helper thread creates some of the small files
/// (see [`offload`]).
pub(crate) fn apply_tar(
    root: &Path,
    reader: &mut dyn BufRead,
    opts: &UnpackOptions,
    decoded: &AtomicBool,
) -> Result<LayerStats> {
    let resolver = Resolver::open(root)?;
    let stream = TarStream::new(reader);
    let mut applier = Applier {
        stream: &stream,
        fresh: FreshDirs::new(resolver.root()),
        resolver,
        opts,
        stats: LayerStats::default(),
        added: Added::default(),
        deferred: Vec::new(),
        buf: Vec::new(),
        privileged: nix::unistd::geteuid().is_root(),
        offload: if opts.file_helper {
            Helper::NotStarted
        } else {
            Helper::Unavailable
        },
        decoded,
        aliased: false,
    };
    let mut archive = tar::Archive::new(&stream);
    // Entries' data the applier does not read, or writes from the stream in
    // place, is skipped by seeking (see `stream`).
    let entries = archive
        .entries_with_seek()
        .map_err(|e| read_error(None, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(None, e))?;
        applier.entry(&mut entry)?;
    }
    // Read what follows the end-of-archive marker, so that the decoder checks
    // the whole stream (gzip's CRC and length trailer, zstd's frame end).
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| read_error(None, e))?;
    applier.finish()?;
    Ok(applier.stats)
}

/// An entry's metadata, PAX overrides applied.
#[derive(Debug)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Directory metadata applied after every entry of the layer.
#[derive(Debug)]
struct Deferred {
    comps: Vec<Vec<u8>>,
    /// A mode that would stop an unprivileged caller from writing in the
    /// directory, applied last.
    mode: Option<u32>,
    mtime: TimeSpec,
}

/// One layer being applied.
struct Applier<'a, 's> {
    /// The layer's tar stream, for writing file contents in place.
    stream: &'a TarStream<'s>,
    resolver: Resolver,
    fresh: FreshDirs,
    opts: &'a UnpackOptions,
    stats: LayerStats,
    added: Added,
    deferred: Vec<Deferred>,
    /// For sparse files' contents, allocated when first needed.
    buf: Vec<u8>,
    privileged: bool,
    /// The thread creating some of the small files.
    offload: Helper,
    /// Set once the layer is decoded: see [`apply_tar`].
    decoded: &'a AtomicBool,
    /// Whether an entry of this layer was put through a symlink: under
    /// another name than its own, so that which paths the layer used no
    /// longer says which are free, and the helper gets no more files.
    aliased: bool,
}

/// The applier's file helper, started when first needed.
#[derive(Debug)]
enum Helper {
    NotStarted,
    Running(Offload),
    /// Not wanted ([`UnpackOptions::file_helper`]), or its thread could not
    /// be started: the applier does everything.
    Unavailable,
}

impl Helper {
    fn running(&mut self) -> Option<&mut Offload> {
        match self {
            Self::Running(offload) => Some(offload),
            _ => None,
        }
    }
}

/// Where to set extended attributes.
#[derive(Clone, Copy)]
enum Target<'f> {
    /// An open file or directory.
    Fd(BorrowedFd<'f>),
    /// An entry of an open directory, not followed if a symlink.
    At(BorrowedFd<'f>, &'f [u8]),
}

impl Applier<'_, '_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let name = PathBuf::from(OsString::from_vec(raw.clone()));
        let comps = split_name(&raw).map_err(|reason| unsafe_entry(&name, reason))?;
        let kind = entry.header().entry_type();
        // A path this layer used before may be a file the helper has not
        // created yet.
        if self.offload.running().is_some_and(|o| o.pending()) && self.added.contains(&join(&comps))
        {
            self.sync_files()?;
        }

        if let Some((leaf, dirs)) = comps.split_last()
            && let Some(rest) = leaf.strip_prefix(PREFIX)
        {
            return self.whiteout(dirs, leaf, rest, &name);
        }
        let meta = self.meta(entry, &name)?;
        match kind {
            EntryType::Directory => self.directory(&comps, &meta, &name)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &comps, &meta, &name)?
            }
            EntryType::Symlink => {
                let target = link_target(entry, &name)?;
                self.symlink(&comps, &target, &meta, &name)?
            }
            EntryType::Link => {
                let target = link_target(entry, &name)?;
                self.hardlink(&comps, &target, &name)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.device(entry, kind, &comps, &meta, &name)?
            }
            EntryType::XGlobalHeader => {}
            other => {
                tracing::warn!(entry = %name.display(), kind = ?other, "skipping layer entry of unsupported type");
                self.stats.skipped_other += 1;
                return Ok(());
            }
        }
        if kind != EntryType::XGlobalHeader {
            self.added.record(&comps);
        }
        Ok(())
    }

    /// The entry's metadata.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &Path) -> Result<Meta> {
        let corrupt = |e| read_error(Some(name.to_owned()), e);
        let header = entry.header();
        // Like Go's archive/tar, an empty numeric field (all NULs or spaces) is 0.
        let old = header.as_old();
        let mut meta = Meta {
            mode: numeric(&old.mode, header.mode().map(u64::from)).map_err(corrupt)? as u32,
            uid: numeric(&old.uid, header.uid()).map_err(corrupt)?,
            gid: numeric(&old.gid, header.gid()).map_err(corrupt)?,
            mtime: TimeSpec::new(
                numeric(&old.mtime, header.mtime()).map_err(corrupt)? as i64,
                0,
            ),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(corrupt)? {
            for ext in pax {
                let ext = ext.map_err(corrupt)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.push((xattr.to_vec(), value.to_vec()));
                } else if key == b"uid" {
                    meta.uid = parse_u64(value).ok_or_else(|| bad_pax(name))?;
                } else if key == b"gid" {
                    meta.gid = parse_u64(value).ok_or_else(|| bad_pax(name))?;
                } else if key == b"mtime" {
                    meta.mtime = parse_time(value).ok_or_else(|| bad_pax(name))?;
                }
            }
        }
        Ok(meta)
    }

    /// Waits for the files handed to the helper.
    fn sync_files(&mut self) -> Result<()> {
        if let Some(offload) = self.offload.running() {
            let counts = offload.sync()?;
            self.stats.xattrs_set += counts.set;
            self.stats.xattrs_failed += counts.failed;
        }
        Ok(())
    }

    /// Whether no earlier entry of the layer used `comps`, as its path or
    /// on the way to its path (a directory created for it).
    fn untouched_in_layer(&self, comps: &[&[u8]]) -> bool {
        let key = join(comps);
        !self.added.contains(&key) && !self.added.has_descendants(&key)
    }

    /// The helper, if it would take a file now: once the layer is decoded
    /// (before, the decoder and the applier keep the CPUs busy, and a third
    /// thread only adds contention: on ext4 handing files over from the
    /// start saved 10 ms a pull, from the decoder's end 16 ms), and while
    /// its queue is short.
    fn helper_wanting(&mut self) -> Option<&mut Offload> {
        if !self.decoded.load(Ordering::Acquire) {
            return None;
        }
        if let Helper::NotStarted = self.offload {
            self.offload = match Offload::start(self.resolver.root_path()) {
                Some(offload) => Helper::Running(offload),
                None => Helper::Unavailable,
            };
        }
        self.offload.running().filter(|o| o.wants())
    }

    fn io(&self, entry: &Path, op: &'static str, e: impl Into<io::Error>) -> Error {
        self.resolver.io(entry, op, e)
    }

    /// The parent directory of `comps`'s last component, created if missing.
    fn parent(&mut self, dirs: &[&[u8]], name: &Path) -> Result<Arc<OwnedFd>> {
        // With files handed over, look before creating anything: a missing
        // directory may be a file the helper has not created yet (the entry
        // must then fail as in tar order, not create a directory there),
        // and a path through a symlink may lead to such a file by another
        // name than the one the layer gave it.
        if self.offload.running().is_some_and(|o| o.pending()) {
            let found = self.resolver.dir(dirs, false, name)?.is_some();
            if !found || !self.resolver.plain() {
                self.sync_files()?;
            }
        }
        let dir = self
            .resolver
            .dir(dirs, true, name)?
            .expect("missing directories are created");
        // What is created from here on may be where a later entry's own
        // name says nothing is: the layer's paths no longer tell.
        self.aliased |= !self.resolver.plain();
        Ok(dir)
    }

    /// Make way for a new entry `leaf` in `parent`: remove what is there
    /// unless it is a directory and `keep_dir`. Returns whether a directory
    /// was kept.
    fn clear(
        &mut self,
        parent: BorrowedFd<'_>,
        leaf: &[u8],
        keep_dir: bool,
        name: &Path,
    ) -> Result<bool> {
        let st = match fstatat(parent, os(leaf), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(self.io(name, "stat", e)),
        };
        if is_dir(st.st_mode) {
            if keep_dir {
                return Ok(true);
            }
            // The helper may be creating files in it.
            self.sync_files()?;
            remove_all_at(parent, leaf).map_err(|e| self.io(name, "remove directory", e))?;
            self.resolver.invalidate();
        } else {
            unlinkat(parent, os(leaf), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| self.io(name, "remove", e))?;
            if is_symlink(st.st_mode) {
                self.resolver.invalidate();
            }
        }
        self.fresh.forget();
        Ok(false)
    }

    /// Create the entry `leaf` of `parent` with `create`; if something is
    /// in the way (`EEXIST`), make way for it ([`Applier::clear`]) and try
    /// once more. Trying first saves a `stat` per entry in a fresh tree.
    ///
    /// Returns `Ok(None)` when an existing directory was kept instead
    /// (`keep_dir`), and the creation's own error as the inner result.
    fn create_at<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        leaf: &[u8],
        keep_dir: bool,
        name: &Path,
        create: impl Fn() -> nix::Result<T>,
    ) -> Result<nix::Result<Option<T>>> {
        match create() {
            Err(Errno::EEXIST) => {}
            other => return Ok(other.map(Some)),
        }
        if self.clear(parent, leaf, keep_dir, name)? {
            return Ok(Ok(None));
        }
        Ok(create().map(Some))
    }

    fn whiteout(&mut self, dirs: &[&[u8]], leaf: &[u8], rest: &[u8], name: &Path) -> Result<()> {
        // What it removes may include files the helper has not created yet.
        self.sync_files()?;
        if leaf == OPAQUE {
            let Some(dir) = self.resolver.dir(dirs, false, name)? else {
                return Ok(());
            };
            clean_except_added(dir.as_fd(), &join(dirs), &self.added)
                .map_err(|e| self.io(name, "clear opaque directory", e))?;
            self.resolver.invalidate();
            self.fresh.forget();
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if rest.starts_with(PREFIX) {
            // Other aufs metadata (`.wh..wh.plnk`, ...): nothing to apply.
            self.stats.skipped_other += 1;
            return Ok(());
        }
        if rest.is_empty() || rest == b"." || rest == b".." {
            return Err(unsafe_entry(name, UnsafeEntryReason::InvalidWhiteout));
        }
        self.stats.whiteouts += 1;
        let Some(parent) = self.resolver.dir(dirs, false, name)? else {
            return Ok(());
        };
        let mut target = dirs.to_vec();
        target.push(rest);
        let key = join(&target);
        if self.added.contains(&key) {
            // Whiteouts only hide lower layers' entries, not this layer's.
            return Ok(());
        }
        if self.added.has_descendants(&key)
            && let Ok(dir) = openat(
                parent.as_fd(),
                os(rest),
                DIR_FLAGS,
                nix::sys::stat::Mode::empty(),
            )
        {
            clean_except_added(dir.as_fd(), &key, &self.added)
                .map_err(|e| self.io(name, "apply whiteout", e))?;
            self.resolver.invalidate();
            self.fresh.forget();
            return Ok(());
        }
        remove_all_at(parent.as_fd(), rest).map_err(|e| self.io(name, "apply whiteout", e))?;
        self.resolver.invalidate();
        self.fresh.forget();
        Ok(())
    }

    fn directory(&mut self, comps: &[&[u8]], meta: &Meta, name: &Path) -> Result<()> {
        self.stats.dirs += 1;
        let mode = meta.mode & 0o7777;
        let defer_mode = !self.privileged && mode & 0o300 != 0o300;
        let now = if defer_mode { mode | 0o700 } else { mode };
        // The parent, if the directory was created here in a known one.
        let (fd, parent) = match comps.split_last() {
            None => (self.resolver.root_dir(), None),
            Some((leaf, dirs)) => {
                let parent = self.parent(dirs, name)?;
                let perm = Mode::from_bits_truncate(now & 0o777);
                let made = self
                    .create_at(parent.as_fd(), leaf, true, name, || {
                        mkdirat(parent.as_fd(), os(leaf), perm)
                    })?
                    .map_err(|e| self.io(name, "create directory", e))?;
                let fd = openat(parent.as_fd(), os(leaf), DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.io(name, "open directory", e))?;
                let known = match made {
                    Some(()) => self.fresh.get(&join(dirs)),
                    None => {
                        // An existing directory: what it was no longer holds.
                        self.fresh.forget_dir(&join(comps));
                        None
                    }
                };
                let fd = Arc::new(fd);
                self.resolver.entered(dirs, leaf, Arc::clone(&fd));
                (fd, known)
            }
        };
        self.chown(Target::Fd(fd.as_fd()), meta, name, parent)?;
        if !self.fresh.mode_is(parent, now, true) {
            fchmod(&fd, Mode::from_bits_truncate(now)).map_err(|e| self.io(name, "chmod", e))?;
        }
        self.xattrs(Target::Fd(fd.as_fd()), meta);
        self.learn_dir(comps, meta, now, parent);
        self.deferred.push(Deferred {
            comps: comps.iter().map(|c| c.to_vec()).collect(),
            mode: defer_mode.then_some(mode),
            mtime: meta.mtime,
        });
        Ok(())
    }

    /// Record what is now known of the directory `comps` (group, setgid
    /// bit, no ACL), given the parent it was created in, if known.
    fn learn_dir(&mut self, comps: &[&[u8]], meta: &Meta, mode: u32, parent: Option<Known>) {
        let xattrs = self.opts.xattrs && !meta.xattrs.is_empty();
        // Its group: the layer's if chowned, else what creation gave it.
        let gid = if self.opts.preserve_ownership {
            u32::try_from(meta.gid).ok()
        } else {
            self.fresh.new_dir_gid(parent)
        };
        match comps.split_last() {
            None => match self.fresh.get(b"") {
                Some(root) if !xattrs => {
                    let gid = if self.opts.preserve_ownership {
                        gid
                    } else {
                        Some(root.gid)
                    };
                    match gid {
                        Some(gid) => self.fresh.root_changed(gid, mode),
                        None => self.fresh.forget_dir(b""),
                    }
                }
                _ => self.fresh.forget_dir(b""),
            },
            Some((_, dirs)) => {
                if let (Some(gid), Some(_), false) = (gid, parent, xattrs) {
                    self.fresh.created(&join(dirs), join(comps), gid, mode);
                }
            }
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[&[u8]],
        meta: &Meta,
        name: &Path,
    ) -> Result<()> {
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, UnsafeEntryReason::ReplacesRoot));
        };
        let size = entry.size();
        let sparse = entry.header().entry_type() == EntryType::GNUSparse;
        if sparse {
            // `size` is the logical size; the archive stores only the data.
            let stored = entry
                .header()
                .entry_size()
                .map_err(|e| read_error(Some(name.to_owned()), e))?;
            if size.saturating_sub(stored) > MAX_SPARSE_HOLES {
                return Err(format_error(
                    Some(name.to_owned()),
                    LayerFormatErrorKind::SparseTooLarge,
                    None,
                ));
            }
        }
        let parent = self.parent(dirs, name)?;
        let perm = meta.mode & 0o7777;
        // Any mode works for the descriptor O_CREAT returns; the right one
        // saves the fchmod below in most cases.
        let create_mode = Mode::from_bits_truncate(perm & 0o777);
        let known = self.fresh.get(&join(dirs));
        // A small file in a directory this layer created (none of the
        // root's: a lower layer filled it), at a path no earlier entry of
        // the layer used or went through, none of them through a symlink:
        // nothing else can be waiting on it (see `offload`), and nothing
        // is there yet.
        if !sparse
            && size <= offload::MAX_SIZE
            && !dirs.is_empty()
            && known.is_some()
            && !self.aliased
            && self.untouched_in_layer(comps)
            && self.helper_wanting().is_some()
        {
            let mut data = Vec::with_capacity(size as usize);
            self.stream
                .read_into(&mut data, size)
                .map_err(|e| read_error(Some(name.to_owned()), e))?;
            if data.len() as u64 != size {
                return Err(format_error(
                    Some(name.to_owned()),
                    LayerFormatErrorKind::Truncated,
                    None,
                ));
            }
            let job = FileJob {
                parent,
                leaf: leaf.to_vec(),
                name: name.to_owned(),
                data,
                create_mode,
                chmod: (!self.fresh.mode_is(known, perm, false))
                    .then(|| Mode::from_bits_truncate(perm)),
                chown: self.owner_to_set(meta, name, known)?,
                xattrs: if self.opts.xattrs {
                    meta.xattrs.clone()
                } else {
                    Vec::new()
                },
                mtime: meta.mtime,
            };
            self.stats.bytes += size;
            self.stats.files += 1;
            self.stats.files_by_helper += 1;
            self.offload.running().expect("started above").push(job);
            return Ok(());
        }
        let fd = self
            .create_at(parent.as_fd(), leaf, false, name, || {
                openat(
                    parent.as_fd(),
                    os(leaf),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    create_mode,
                )
            })?
            .map_err(|e| self.io(name, "create file", e))?
            .expect("only directories are kept");
        let mut file = File::from(fd);
        let written = if sparse {
            self.copy_sparse(entry, &mut file, name)?
        } else {
            // The data, written from where it was decoded (see `stream`).
            match self.stream.copy_to(&mut file, size) {
                Ok(()) => size,
                Err(CopyError::Short(copied)) => copied,
                Err(CopyError::Read(e)) => return Err(read_error(Some(name.to_owned()), e)),
                Err(CopyError::Write(e)) => return Err(self.io(name, "write file", e)),
            }
        };
        if written != size {
            return Err(format_error(
                Some(name.to_owned()),
                LayerFormatErrorKind::Truncated,
                None,
            ));
        }
        self.stats.bytes += written;
        self.stats.files += 1;
        // chown clears setuid bits and file capabilities: chown, then chmod,
        // then extended attributes.
        self.chown(Target::Fd(file.as_fd()), meta, name, known)?;
        if !self.fresh.mode_is(known, perm, false) {
            fchmod(&file, Mode::from_bits_truncate(perm)).map_err(|e| self.io(name, "chmod", e))?;
        }
        self.xattrs(Target::Fd(file.as_fd()), meta);
        futimens(&file, &meta.mtime, &meta.mtime).map_err(|e| self.io(name, "set times", e))?;
        Ok(())
    }

    /// Copies a sparse file's contents (the tar reader expands its map):
    /// runs of zeros become holes. Returns its length.
    fn copy_sparse<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &Path,
    ) -> Result<u64> {
        self.buf.resize(COPY_BUF, 0);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(Some(name.to_owned()), e)),
            };
            let chunk = &self.buf[..n];
            if chunk.iter().all(|&b| b == 0) {
                // A hole stays a hole (the length is set below).
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(|e| self.io(name, "seek file", e))?;
            } else {
                file.write_all(chunk)
                    .map_err(|e| self.io(name, "write file", e))?;
            }
            written += n as u64;
        }
        // A trailing hole was seeked over, not written.
        file.set_len(written)
            .map_err(|e| self.io(name, "set file length", e))?;
        Ok(written)
    }

    fn symlink(&mut self, comps: &[&[u8]], target: &[u8], meta: &Meta, name: &Path) -> Result<()> {
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, UnsafeEntryReason::ReplacesRoot));
        };
        let parent = self.parent(dirs, name)?;
        self.create_at(parent.as_fd(), leaf, false, name, || {
            symlinkat(os(target), parent.as_fd(), os(leaf))
        })?
        .map_err(|e| self.io(name, "create symlink", e))?;
        self.stats.symlinks += 1;
        let known = self.fresh.get(&join(dirs));
        let at = Target::At(parent.as_fd(), leaf);
        self.chown(at, meta, name, known)?;
        self.xattrs(at, meta);
        utimensat(
            parent.as_fd(),
            os(leaf),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io(name, "set times", e))?;
        Ok(())
    }

    fn hardlink(&mut self, comps: &[&[u8]], target: &[u8], name: &Path) -> Result<()> {
        // Its target may be a file the helper has not created yet.
        self.sync_files()?;
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, UnsafeEntryReason::ReplacesRoot));
        };
        let target_path = path_of(target);
        let escape = || {
            unsafe_entry(
                name,
                UnsafeEntryReason::HardLinkEscape {
                    target: target_path.clone(),
                },
            )
        };
        let missing = || {
            unsafe_entry(
                name,
                UnsafeEntryReason::HardLinkTargetMissing {
                    target: target_path.clone(),
                },
            )
        };
        let tcomps = split_name(target).map_err(|_| escape())?;
        let Some((tleaf, tdirs)) = tcomps.split_last() else {
            return Err(escape());
        };
        let Some(tparent) = self.resolver.dir(tdirs, false, name)? else {
            return Err(missing());
        };
        let tst = match fstatat(tparent.as_fd(), os(tleaf), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(missing()),
            Err(e) => return Err(self.io(name, "stat hard link target", e)),
        };
        let parent = self.parent(dirs, name)?;
        if let Ok(st) = fstatat(parent.as_fd(), os(leaf), AtFlags::AT_SYMLINK_NOFOLLOW)
            && (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino)
        {
            self.stats.hardlinks += 1;
            return Ok(());
        }
        self.clear(parent.as_fd(), leaf, false, name)?;
        linkat(
            tparent.as_fd(),
            os(tleaf),
            parent.as_fd(),
            os(leaf),
            AtFlags::empty(),
        )
        .map_err(|e| self.io(name, "create hard link", e))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn device<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        kind: EntryType,
        comps: &[&[u8]],
        meta: &Meta,
        name: &Path,
    ) -> Result<()> {
        let Some((leaf, dirs)) = comps.split_last() else {
            return Err(unsafe_entry(name, UnsafeEntryReason::ReplacesRoot));
        };
        let (sflag, allowed) = match kind {
            EntryType::Char => (SFlag::S_IFCHR, self.opts.allow_devices),
            EntryType::Block => (SFlag::S_IFBLK, self.opts.allow_devices),
            _ => (SFlag::S_IFIFO, self.opts.allow_fifos),
        };
        if !allowed {
            tracing::warn!(entry = %name.display(), kind = ?kind, "skipping device entry (not permitted)");
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        let corrupt = |e| read_error(Some(name.to_owned()), e);
        let header = entry.header();
        let major = header.device_major().map_err(corrupt)?.unwrap_or(0);
        let minor = header.device_minor().map_err(corrupt)?.unwrap_or(0);
        let parent = self.parent(dirs, name)?;
        let perm = Mode::from_bits_truncate(meta.mode & 0o7777);
        let made = self.create_at(parent.as_fd(), leaf, false, name, || {
            mknodat(
                parent.as_fd(),
                os(leaf),
                sflag,
                perm,
                makedev(major.into(), minor.into()),
            )
        })?;
        match made {
            Ok(_) => {}
            Err(Errno::EPERM) if sflag != SFlag::S_IFIFO => {
                tracing::warn!(entry = %name.display(), kind = ?kind, "skipping device entry (mknod not permitted)");
                self.stats.skipped_devices += 1;
                return Ok(());
            }
            Err(e) => return Err(self.io(name, "create device node", e)),
        }
        self.stats.devices += 1;
        let known = self.fresh.get(&join(dirs));
        let at = Target::At(parent.as_fd(), leaf);
        self.chown(at, meta, name, known)?;
        if !self.fresh.mode_is(known, perm.bits(), false) {
            // The node was just created by us and is not a symlink.
            fchmodat(parent.as_fd(), os(leaf), perm, FchmodatFlags::FollowSymlink)
                .map_err(|e| self.io(name, "chmod", e))?;
        }
        self.xattrs(at, meta);
        utimensat(
            parent.as_fd(),
            os(leaf),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io(name, "set times", e))?;
        Ok(())
    }

    /// Give the entry at `target` the layer's owner, unless it already has
    /// it: just created in the directory `parent` (when known) by the very
    /// owner.
    fn chown(
        &self,
        target: Target<'_>,
        meta: &Meta,
        name: &Path,
        parent: Option<Known>,
    ) -> Result<()> {
        let Some((uid, gid)) = self.owner_to_set(meta, name, parent)? else {
            return Ok(());
        };
        let (uid, gid) = (Some(uid), Some(gid));
        match target {
            Target::Fd(fd) => fchown(fd, uid, gid),
            Target::At(dir, leaf) => {
                fchownat(dir, os(leaf), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
            }
        }
        .map_err(|e| self.io(name, "chown", e))
    }

    /// The owner to give an entry created in the directory `parent` (when
    /// known), unless it has it already.
    fn owner_to_set(
        &self,
        meta: &Meta,
        name: &Path,
        parent: Option<Known>,
    ) -> Result<Option<(Uid, Gid)>> {
        if !self.opts.preserve_ownership {
            return Ok(None);
        }
        let to_id = |v: u64| u32::try_from(v).map_err(|_| bad_pax(name));
        let (uid, gid) = (to_id(meta.uid)?, to_id(meta.gid)?);
        if self.fresh.owner_is(parent, uid, gid) {
            return Ok(None);
        }
        Ok(Some((Uid::from_raw(uid), Gid::from_raw(gid))))
    }

    fn xattrs(&mut self, target: Target<'_>, meta: &Meta) {
        if !self.opts.xattrs {
            return;
        }
        for (key, value) in &meta.xattrs {
            let result = match target {
                Target::Fd(fd) => fsetxattr(fd, key, value),
                Target::At(dir, leaf) => lsetxattr_at(dir, leaf, key, value),
            };
            match result {
                Ok(()) => self.stats.xattrs_set += 1,
                Err(e) => {
                    tracing::debug!(xattr = %String::from_utf8_lossy(key), error = %e, "could not set extended attribute");
                    self.stats.xattrs_failed += 1;
                }
            }
        }
    }

    /// Apply directories' deferred modes and times, every directory after
    /// all that is below it: in reverse lexicographic order of their
    /// components, which keeps each directory's contents together (so the
    /// resolver's cached chain mostly holds the parent already) and puts
    /// them before the directory itself. A directory listed twice gets
    /// what its last entry says (the sort is stable).
    ///
    /// Only a mode taken away last (see [`Deferred::mode`]) needs that
    /// order: times alone may be set in any order, and a long list of them
    /// is split between this thread and a second one (with a resolver of
    /// its own). This is the last thing a pull does before its commit:
    /// ~3 ms for the Debian bench image's 800 directories on one thread,
    /// while the other CPU idles.
    fn finish(&mut self) -> Result<()> {
        // Creating files changes their directories' times.
        self.sync_files()?;
        let mut deferred = std::mem::take(&mut self.deferred);
        deferred.sort_by(|a, b| b.comps.cmp(&a.comps));
        let split =
            if deferred.len() < PARALLEL_DIR_TIMES || deferred.iter().any(|d| d.mode.is_some()) {
                None
            } else {
                // Between two paths: the entries of one directory stay on one
                // thread, in order.
                let mut mid = deferred.len() / 2;
                while mid < deferred.len() && deferred[mid].comps == deferred[mid - 1].comps {
                    mid += 1;
                }
                Some(mid)
            };
        let Some(mid) = split else {
            return set_dir_times(&mut self.resolver, &deferred);
        };
        let (mine, theirs) = deferred.split_at(mid);
        let root = self.resolver.root_path().to_owned();
        std::thread::scope(|scope| {
            let other = std::thread::Builder::new()
                .name("msb-unpack-times".into())
                .spawn_scoped(scope, || set_dir_times(&mut Resolver::open(&root)?, theirs));
            let Ok(other) = other else {
                return set_dir_times(&mut self.resolver, &deferred);
            };
            let first = set_dir_times(&mut self.resolver, mine);
            let second = other
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload));
            first.and(second)
        })
    }
}

/// Directories' deferred modes and times at least, for a second thread to
/// set half of them.
pub(super) const PARALLEL_DIR_TIMES: usize = 256;

/// Sets the deferred modes and times of `deferred`, in order, resolving
/// their parents with `resolver`.
fn set_dir_times(resolver: &mut Resolver, deferred: &[Deferred]) -> Result<()> {
    for d in deferred {
        let comps: Vec<&[u8]> = d.comps.iter().map(Vec::as_slice).collect();
        let name = path_of(&join(&comps));
        let fd = match comps.split_last() {
            None => resolver.root_dir(),
            Some((leaf, dirs)) => {
                let Some(parent) = resolver.dir(dirs, false, &name)? else {
                    continue;
                };
                match openat(parent.as_fd(), os(leaf), DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => Arc::new(fd),
                    // Removed or replaced later in the layer.
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                    Err(e) => return Err(resolver.io(&name, "open directory", e)),
                }
            }
        };
        if let Some(mode) = d.mode {
            fchmod(&fd, Mode::from_bits_truncate(mode))
                .map_err(|e| resolver.io(&name, "chmod", e))?;
        }
        futimens(&fd, &d.mtime, &d.mtime).map_err(|e| resolver.io(&name, "set times", e))?;
    }
    Ok(())
}

impl std::fmt::Debug for Applier<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("root", &self.resolver.root_path())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A link entry's target.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, name: &Path) -> Result<Vec<u8>> {
    match entry.link_name_bytes() {
        Some(t) if !t.is_empty() => Ok(t.into_owned()),
        _ => Err(format_error(
            Some(name.to_owned()),
            LayerFormatErrorKind::MissingLinkTarget,
            None,
        )),
    }
}

/// A malformed PAX record on `name`.
fn bad_pax(name: &Path) -> Error {
    format_error(Some(name.to_owned()), LayerFormatErrorKind::Corrupt, None)
}

/// A header's numeric field: `parsed`, or 0 when the raw field is empty.
fn numeric(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn parse_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let negative = whole.starts_with('-');
    let secs: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(if negative && nanos > 0 {
        TimeSpec::new(secs - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(secs, nanos)
    })
}
