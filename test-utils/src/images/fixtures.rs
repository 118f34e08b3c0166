//! The fixture images: busybox, a layered image exercising whiteouts, a
//! multi-platform index and a realistic Debian image for benchmarks.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{BuiltLayer, Compression, ImageBuilder, IndexBuilder, LayerBuilder, MediaTypes};
use crate::registry::{FixtureError, ensure_package, is_root, tail};

/// Where Debian's `busybox-static` puts busybox.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// The applets linked to `/bin/busybox` in [`busybox_image`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "echo", "true", "false", "sleep", "env", "id", "uname", "mkdir",
    "rm", "rmdir", "cp", "mv", "ln", "pwd", "test", "[", "wc", "head", "tail", "grep", "printf",
    "touch", "stat", "hostname", "whoami", "sync", "yes", "chmod", "chown", "date", "df", "du",
    "find", "mount", "ps", "readlink", "sed", "sort", "tee", "tr", "uniq", "xargs", "kill",
];

/// A busybox image for `linux/<host arch>`: `/bin/busybox` from Debian's
/// `busybox-static` (installed on demand), symlinks `/bin/<applet>` for
/// [`BUSYBOX_APPLETS`], `/etc/passwd`, `/etc/group`, `/tmp` (1777), `/root`
/// (0700); `Cmd ["/bin/sh"]`, `PATH` set, `WorkingDir /`. One gzip layer.
/// Panics if busybox cannot be had; see [`try_busybox_image`].
pub fn busybox_image() -> ImageBuilder {
    try_busybox_image().unwrap_or_else(|e| panic!("building the busybox image: {e}"))
}

/// [`busybox_image`], returning errors.
pub fn try_busybox_image() -> Result<ImageBuilder, FixtureError> {
    let busybox = Path::new(BUSYBOX_BINARY);
    ensure_package(busybox, "busybox-static")?;
    let bytes = std::fs::read(busybox).map_err(FixtureError::io("reading /bin/busybox"))?;
    if has_interpreter(&bytes) {
        return Err(FixtureError::Other(
            "/bin/busybox is dynamically linked (package `busybox`); install `busybox-static`"
                .into(),
        ));
    }
    let mut layer = LayerBuilder::new();
    layer.dir("bin", 0o755);
    layer.file("bin/busybox", &bytes, 0o755);
    for applet in BUSYBOX_APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.dir("etc", 0o755);
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
    layer.file("etc/hostname", b"busybox\n", 0o644);
    layer.dir("root", 0o700);
    layer.dir("tmp", 0o1777);
    layer.dir("proc", 0o555);
    layer.dir("sys", 0o555);
    layer.dir("dev", 0o755);
    Ok(ImageBuilder::new()
        .layer(layer, Compression::Gzip)
        .cmd(["/bin/sh"])
        .env(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        .working_dir("/"))
}

/// Whether an ELF file has a `PT_INTERP` program header (is dynamic).
fn has_interpreter(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false; // only 64-bit little-endian is checked
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3)
            .unwrap_or(false)
    })
}

/// What one entry of an unpacked tree must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedKind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(&'static [u8]),
    /// A symlink with this target.
    Symlink(&'static str),
}

/// One entry of [`LAYERED_EXPECTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Relative to the rootfs.
    pub path: &'static str,
    /// What it is.
    pub kind: ExpectedKind,
    /// `mode & 0o7777` (not checked for symlinks).
    pub mode: u32,
    /// Owner uid and gid (checked only when the check runs as root).
    pub owner: (u32, u32),
}

const fn e(path: &'static str, kind: ExpectedKind, mode: u32) -> Expected {
    Expected {
        path,
        kind,
        mode,
        owner: (0, 0),
    }
}

use ExpectedKind::{Dir, File, Symlink};

/// The complete tree after unpacking all three layers of [`layered_image`]
/// (nothing else may exist; no `.wh.` entry may remain).
///
/// What each layer does:
///
/// 1. base: `bin/tool` (0755), `bin/suid-tool` (04755), `data/original` with
///    hard link `data/hardlink`, symlinks `data/link-rel -> original`,
///    `data/link-abs -> /data/original`, `data/dangling -> does-not-exist`;
///    `etc/hostname`, `etc/removed-file`, `etc/replaced-by-dir` (a file);
///    `opt/removed-dir/{a,sub/b}`, `opt/recreated/old`; `private/` (0700)
///    with `secret` and `kept` (0600); `var/opaque/{old1,old2,olddir/x}`.
/// 2. whiteouts `etc/.wh.removed-file` (file), `opt/.wh.removed-dir` and
///    `opt/.wh.recreated` (directories); `etc/hostname` rewritten;
///    `etc/replaced-by-dir/` now a directory with `inner`; `var/opaque/`
///    (now 0750) made opaque (`.wh..wh..opq`) with only `new`;
///    `usr/share/doc/a` and its hard link `usr/share/doc/b`.
/// 3. `bin/tool` replaced (0700, new contents); `opt/recreated/new` (the
///    directory comes back without `old`); `private/.wh.secret`;
///    `data/link-abs` replaced by a regular file (an unpacker that writes
///    through the old symlink clobbers `data/original`: caught here);
///    `shared/` (02775) with `owned` (0640, uid/gid 1000).
pub const LAYERED_EXPECTED: &[Expected] = &[
    e("bin", Dir, 0o755),
    e("bin/suid-tool", File(b"suid\n"), 0o4755),
    e("bin/tool", File(b"#!/bin/sh\necho tool v3\n"), 0o700),
    e("data", Dir, 0o755),
    e("data/dangling", Symlink("does-not-exist"), 0o777),
    e("data/hardlink", File(b"shared content\n"), 0o644),
    e("data/link-abs", File(b"now a file\n"), 0o644),
    e("data/link-rel", Symlink("original"), 0o777),
    e("data/original", File(b"shared content\n"), 0o644),
    e("etc", Dir, 0o755),
    e("etc/hostname", File(b"layer2\n"), 0o644),
    e("etc/replaced-by-dir", Dir, 0o755),
    e("etc/replaced-by-dir/inner", File(b"inner\n"), 0o644),
    e("opt", Dir, 0o755),
    e("opt/recreated", Dir, 0o755),
    e("opt/recreated/new", File(b"new\n"), 0o644),
    e("private", Dir, 0o700),
    e("private/kept", File(b"kept\n"), 0o600),
    e("shared", Dir, 0o2775),
    Expected {
        path: "shared/owned",
        kind: File(b"owned\n"),
        mode: 0o640,
        owner: (1000, 1000),
    },
    e("usr", Dir, 0o755),
    e("usr/share", Dir, 0o755),
    e("usr/share/doc", Dir, 0o755),
    e("usr/share/doc/a", File(b"doc\n"), 0o644),
    e("usr/share/doc/b", File(b"doc\n"), 0o644),
    e("var", Dir, 0o755),
    e("var/opaque", Dir, 0o750),
    e("var/opaque/new", File(b"new\n"), 0o644),
];

/// Pairs of paths in the final [`layered_image`] tree that are one inode.
pub const LAYERED_HARDLINKS: &[(&str, &str)] = &[
    ("data/hardlink", "data/original"),
    ("usr/share/doc/b", "usr/share/doc/a"),
];

/// Paths some layer of [`layered_image`] created and a later one removed.
pub const LAYERED_ABSENT: &[&str] = &[
    "etc/removed-file",
    "opt/removed-dir",
    "opt/removed-dir/a",
    "opt/removed-dir/sub/b",
    "opt/recreated/old",
    "private/secret",
    "var/opaque/old1",
    "var/opaque/old2",
    "var/opaque/olddir",
];

/// Three uncompressed-size-tiny layers (gzip, zstd, plain) exercising
/// whiteouts, opaque dirs, hard links, symlinks and modes; the final tree is
/// [`LAYERED_EXPECTED`] (+ [`LAYERED_HARDLINKS`]), checked by
/// [`assert_layered_tree`].
pub fn layered_image() -> ImageBuilder {
    let mut l1 = LayerBuilder::new();
    l1.dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool v1\n", 0o755)
        .file("bin/suid-tool", b"suid\n", 0o4755)
        .dir("data", 0o755)
        .file("data/original", b"shared content\n", 0o644)
        .hardlink("data/hardlink", "data/original")
        .symlink("data/link-rel", "original")
        .symlink("data/link-abs", "/data/original")
        .symlink("data/dangling", "does-not-exist")
        .dir("etc", 0o755)
        .file("etc/hostname", b"base\n", 0o644)
        .file("etc/removed-file", b"gone\n", 0o644)
        .file("etc/replaced-by-dir", b"file\n", 0o644)
        .dir("opt", 0o755)
        .dir("opt/removed-dir", 0o755)
        .file("opt/removed-dir/a", b"a\n", 0o644)
        .dir("opt/removed-dir/sub", 0o755)
        .file("opt/removed-dir/sub/b", b"b\n", 0o644)
        .dir("opt/recreated", 0o755)
        .file("opt/recreated/old", b"old\n", 0o644)
        .dir("private", 0o700)
        .file("private/secret", b"secret\n", 0o600)
        .file("private/kept", b"kept\n", 0o600)
        .dir("var", 0o755)
        .dir("var/opaque", 0o755)
        .file("var/opaque/old1", b"old1\n", 0o644)
        .file("var/opaque/old2", b"old2\n", 0o644)
        .dir("var/opaque/olddir", 0o755)
        .file("var/opaque/olddir/x", b"x\n", 0o644);

    let mut l2 = LayerBuilder::new();
    l2.dir("etc", 0o755)
        .whiteout("etc/removed-file")
        .file("etc/hostname", b"layer2\n", 0o644)
        .dir("etc/replaced-by-dir", 0o755)
        .file("etc/replaced-by-dir/inner", b"inner\n", 0o644)
        .dir("opt", 0o755)
        .whiteout("opt/removed-dir")
        .whiteout("opt/recreated")
        .dir("usr", 0o755)
        .dir("usr/share", 0o755)
        .dir("usr/share/doc", 0o755)
        .file("usr/share/doc/a", b"doc\n", 0o644)
        .hardlink("usr/share/doc/b", "usr/share/doc/a")
        .dir("var", 0o755)
        .dir("var/opaque", 0o750)
        .opaque("var/opaque")
        .file("var/opaque/new", b"new\n", 0o644);

    let mut l3 = LayerBuilder::new();
    l3.dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool v3\n", 0o700)
        .dir("data", 0o755)
        .file("data/link-abs", b"now a file\n", 0o644)
        .dir("opt", 0o755)
        .dir("opt/recreated", 0o755)
        .file("opt/recreated/new", b"new\n", 0o644)
        .dir("private", 0o700)
        .whiteout("private/secret")
        .dir("shared", 0o2775)
        .file_owned("shared/owned", b"owned\n", 0o640, 1000, 1000);

    ImageBuilder::new()
        .layer(l1, Compression::Gzip)
        .layer(l2, Compression::Zstd)
        .layer(l3, Compression::None)
        .cmd(["/bin/tool"])
        .env(["PATH=/bin", "LAYERED=1"])
        .working_dir("/data")
}

/// Panics with every difference between the tree at `root` and
/// [`LAYERED_EXPECTED`] / [`LAYERED_HARDLINKS`]. Ownership is compared only
/// when running as root.
pub fn assert_layered_tree(root: &Path) {
    let mut found = BTreeMap::new();
    collect(root, Path::new(""), &mut found);
    let mut problems = Vec::new();
    for exp in LAYERED_EXPECTED {
        let Some(meta) = found.remove(exp.path) else {
            problems.push(format!("missing: {}", exp.path));
            continue;
        };
        let full = root.join(exp.path);
        let ft = meta.file_type();
        match exp.kind {
            Dir if !ft.is_dir() => problems.push(format!("{}: not a directory", exp.path)),
            File(want) => {
                if !ft.is_file() {
                    problems.push(format!("{}: not a regular file", exp.path));
                } else if std::fs::read(&full).ok().as_deref() != Some(want) {
                    problems.push(format!("{}: contents differ", exp.path));
                }
            }
            Symlink(want) => {
                if !ft.is_symlink() {
                    problems.push(format!("{}: not a symlink", exp.path));
                } else if std::fs::read_link(&full).ok() != Some(PathBuf::from(want)) {
                    problems.push(format!("{}: symlink target differs", exp.path));
                }
            }
            Dir => {}
        }
        if !ft.is_symlink() && meta.permissions().mode() & 0o7777 != exp.mode {
            problems.push(format!(
                "{}: mode {:o}, want {:o}",
                exp.path,
                meta.permissions().mode() & 0o7777,
                exp.mode
            ));
        }
        if is_root() && (meta.uid(), meta.gid()) != exp.owner {
            problems.push(format!(
                "{}: owner {}:{}, want {}:{}",
                exp.path,
                meta.uid(),
                meta.gid(),
                exp.owner.0,
                exp.owner.1
            ));
        }
    }
    for extra in found.keys() {
        problems.push(format!("unexpected entry: {extra}"));
    }
    for (a, b) in LAYERED_HARDLINKS {
        let ino = |p: &str| std::fs::symlink_metadata(root.join(p)).map(|m| (m.dev(), m.ino()));
        match (ino(a), ino(b)) {
            (Ok(x), Ok(y)) if x == y => {}
            _ => problems.push(format!("{a} and {b} are not hard links of one file")),
        }
    }
    assert!(
        problems.is_empty(),
        "layered image tree at {} differs:\n  {}",
        root.display(),
        problems.join("\n  ")
    );
}

fn collect(root: &Path, rel: &Path, out: &mut BTreeMap<String, std::fs::Metadata>) {
    let Ok(dir) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in dir.flatten() {
        let rel_path = rel.join(entry.file_name());
        let Ok(meta) = std::fs::symlink_metadata(root.join(&rel_path)) else {
            continue;
        };
        let is_dir = meta.is_dir();
        out.insert(rel_path.to_string_lossy().into_owned(), meta);
        if is_dir {
            collect(root, &rel_path, out);
        }
    }
}

/// An OCI index with `linux/amd64` and `linux/arm64` (variant `v8`) images:
/// each one tiny gzip layer with `etc/platform` (`linux/amd64\n` or
/// `linux/arm64\n`) and a platform-only file `<arch>-only`.
/// `Cmd ["/bin/sh"]`. Push with [`IndexBuilder::push`].
pub fn multi_platform_index() -> IndexBuilder {
    let image = |arch: &str, variant: Option<&str>| {
        let mut layer = LayerBuilder::new();
        layer
            .dir("etc", 0o755)
            .file("etc/platform", format!("linux/{arch}\n").as_bytes(), 0o644)
            .file(&format!("{arch}-only"), arch.as_bytes(), 0o644);
        ImageBuilder::new()
            .platform("linux", arch, variant)
            .layer(layer, Compression::Gzip)
            .cmd(["/bin/sh"])
            .env([format!("PLATFORM=linux/{arch}")])
    };
    IndexBuilder::new()
        .image(image("amd64", None))
        .image(image("arm64", Some("v8")))
}

/// The Debian suite [`debian_rootfs`] bootstraps.
pub const DEBIAN_SUITE: &str = "bookworm";
/// The mirror it uses (the Debian package archive).
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// `<workspace>/target/msb/fixtures/debian-rootfs`.
pub fn debian_rootfs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-utils lives one level below the workspace root")
        .join("target/msb/fixtures/debian-rootfs")
}

/// The cached `debootstrap --variant=minbase` tree of Debian
/// [`DEBIAN_SUITE`], built on first use (about 40 s; needs root, installs
/// `debootstrap` on demand). Concurrent callers wait on a file lock; the tree
/// appears atomically (built beside it, then renamed).
pub fn debian_rootfs() -> Result<PathBuf, FixtureError> {
    let dir = debian_rootfs_dir();
    if dir.join("etc/debian_version").exists() {
        return Ok(dir);
    }
    ensure_package(Path::new("/usr/sbin/debootstrap"), "debootstrap")?;
    let parent = dir.parent().expect("a parent");
    std::fs::create_dir_all(parent).map_err(FixtureError::io("creating the fixtures dir"))?;
    let tmp = parent.join(format!("debian-rootfs.tmp-{}", std::process::id()));
    let lock = parent.join("debian-rootfs.lock");
    let script = format!(
        "test -e '{dir}/etc/debian_version' && exit 0; rm -rf '{tmp}'; \
         debootstrap --variant=minbase {DEBIAN_SUITE} '{tmp}' {DEBIAN_MIRROR} && \
         rm -rf '{tmp}'/var/cache/apt/archives/*.deb '{tmp}'/var/lib/apt/lists/* && \
         rm -rf '{dir}' '{layers}' && mv '{tmp}' '{dir}'",
        dir = dir.display(),
        tmp = tmp.display(),
        layers = debian_layers_dir().display(),
    );
    let started = std::time::Instant::now();
    let out = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(FixtureError::io("running debootstrap"))?;
    if !out.status.success() || !dir.join("etc/debian_version").exists() {
        let log =
            std::fs::read_to_string(tmp.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(FixtureError::Other(format!(
            "debootstrap exited with {}:\n{}\n{}\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 10),
            tail(&String::from_utf8_lossy(&out.stderr), 10),
            tail(&log, 20)
        )));
    }
    tracing::info!(elapsed = ?started.elapsed(), "built the debian fixture rootfs");
    Ok(dir)
}

/// `<workspace>/target/msb/fixtures/debian-layers`: the compressed layers
/// of [`debian_image`], cached (removed whenever the rootfs is rebuilt).
pub fn debian_layers_dir() -> PathBuf {
    debian_rootfs_dir().with_file_name("debian-layers")
}

/// A realistic Debian [`DEBIAN_SUITE`] minbase image for benchmarks, from
/// [`debian_rootfs`]: two gzip layers (default level), everything but `/usr`
/// first, then `/usr` (device nodes under `/dev` and the contents of `/proc`,
/// `/sys` are left out). `Cmd ["bash"]`. The compressed layers are cached in
/// [`debian_layers_dir`], so only the first call pays for gzip.
pub fn debian_image() -> Result<ImageBuilder, FixtureError> {
    let root = debian_rootfs()?;
    let layers = match read_cached_layers(&debian_layers_dir()) {
        Some(layers) => layers,
        None => {
            let in_pseudo = |p: &Path| {
                ["dev", "proc", "sys"]
                    .iter()
                    .any(|d| p.starts_with(d) && p != Path::new(d))
            };
            let mut rest = LayerBuilder::new();
            rest.dir_from_host("", &root, &|p| p.starts_with("usr") || in_pseudo(p))?;
            let mut usr = LayerBuilder::new();
            usr.dir_from_host("", &root, &|p| !p.starts_with("usr"))?;
            let layers: Vec<BuiltLayer> = [rest, usr]
                .into_iter()
                .map(|l| BuiltLayer::new(&l.into_tar(), Compression::Gzip, MediaTypes::Oci))
                .collect();
            write_cached_layers(&debian_layers_dir(), &layers);
            layers
        }
    };
    let mut image = ImageBuilder::new();
    for layer in layers {
        image = image.layer_built(layer, Compression::Gzip);
    }
    Ok(image
        .cmd(["bash"])
        .env(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]))
}

/// Reads `<n>.blob` + `<n>.meta` (digest, diff id, uncompressed size).
fn read_cached_layers(dir: &Path) -> Option<Vec<BuiltLayer>> {
    let mut layers = Vec::new();
    for n in 0.. {
        let Ok(meta) = std::fs::read_to_string(dir.join(format!("{n}.meta"))) else {
            break;
        };
        let mut lines = meta.lines();
        let (digest, diff_id, size) = (lines.next()?, lines.next()?, lines.next()?);
        layers.push(BuiltLayer {
            blob: std::fs::read(dir.join(format!("{n}.blob"))).ok()?,
            digest: digest.into(),
            diff_id: diff_id.into(),
            media_type: MediaTypes::Oci.layer(Compression::Gzip).into(),
            uncompressed_size: size.parse().ok()?,
        });
    }
    (!layers.is_empty()).then_some(layers)
}

/// Best effort: written beside, then renamed into place.
fn write_cached_layers(dir: &Path, layers: &[BuiltLayer]) {
    let tmp = dir.with_file_name(format!("debian-layers.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&tmp)?;
        for (n, l) in layers.iter().enumerate() {
            std::fs::write(tmp.join(format!("{n}.blob")), &l.blob)?;
            let meta = format!("{}\n{}\n{}\n", l.digest, l.diff_id, l.uncompressed_size);
            std::fs::write(tmp.join(format!("{n}.meta")), meta)?;
        }
        std::fs::rename(&tmp, dir)
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, "could not cache the debian fixture layers");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
