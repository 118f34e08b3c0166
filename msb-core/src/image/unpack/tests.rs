//! Tests: real tar archives built in memory and applied to temp directories.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

/// A layer under construction.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    /// An entry whose name and link name are written raw into an old-style
    /// header, so that hostile names (`..`) get through.
    fn raw(mut self, name: &str, kind: EntryType, link: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8], mode: u32) -> Self {
        self.raw(name, EntryType::Regular, "", mode, data)
    }

    fn dir(self, name: &str, mode: u32) -> Self {
        self.raw(name, EntryType::Directory, "", mode, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(name, EntryType::Symlink, target, 0o777, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(name, EntryType::Link, target, 0o644, b"")
    }

    fn with_mtime(
        mut self,
        name: &str,
        kind: EntryType,
        mode: u32,
        mtime: u64,
        data: &[u8],
    ) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn opts() -> UnpackOptions {
    UnpackOptions::default().preserve_ownership(false)
}

fn apply(root: &Path, layer: &[u8]) -> Result<LayerStats> {
    apply_layer(root, layer, Compression::None, &opts())
}

/// A temp dir with `root` inside and a sentinel file next to it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    /// On tmpfs when there is one: for tests creating many files.
    fn fast() -> Self {
        let shm = Path::new("/dev/shm");
        Self::in_dir(if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        })
    }

    fn in_dir(dir: tempfile::TempDir) -> Self {
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::write(dir.path().join("sentinel"), b"untouched").unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Nothing but `root` and the unchanged sentinel is outside the root.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["root", "sentinel"]);
        assert_eq!(
            fs::read(self.dir.path().join("sentinel")).unwrap(),
            b"untouched"
        );
    }
}

fn assert_unsafe(result: Result<LayerStats>, check: impl Fn(&UnsafeEntryReason) -> bool) {
    match result {
        Err(Error::UnsafeLayerEntry { reason, .. }) if check(&reason) => {}
        other => panic!("expected an unsafe-entry error, got {other:?}"),
    }
}

#[test]
fn files_dirs_symlinks_hardlinks_modes_mtimes() {
    let sb = Sandbox::new();
    let root = sb.root();
    let layer = Layer::new()
        .with_mtime("etc/", EntryType::Directory, 0o750, 1_234_567, b"")
        .with_mtime("etc/motd", EntryType::Regular, 0o4755, 1_111_111, b"hello")
        .symlink("etc/link", "motd")
        .hardlink("etc/hard", "etc/motd")
        .dir("usr/share/doc", 0o1777)
        .file("/abs/file", b"x", 0o644)
        .bytes();
    let stats = apply(&root, &layer).unwrap();
    assert_eq!(stats.entries, 6);
    assert_eq!(stats.files, 2);
    assert_eq!(stats.bytes, 6);
    assert_eq!(stats.symlinks, 1);
    assert_eq!(stats.hardlinks, 1);

    let motd = fs::symlink_metadata(root.join("etc/motd")).unwrap();
    assert_eq!(motd.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(motd.mtime(), 1_111_111);
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap(),
        Path::new("motd")
    );
    assert_eq!(
        fs::symlink_metadata(root.join("etc/link")).unwrap().mtime(),
        1_000_000
    );
    assert_eq!(
        fs::metadata(root.join("etc/hard")).unwrap().ino(),
        motd.ino()
    );
    let etc = fs::metadata(root.join("etc")).unwrap();
    assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        etc.mtime(),
        1_234_567,
        "dir mtimes are applied after the entries"
    );
    let doc = fs::metadata(root.join("usr/share/doc")).unwrap();
    assert_eq!(doc.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(fs::read(root.join("abs/file")).unwrap(), b"x");
    sb.assert_outside_untouched();
}

#[test]
fn every_directory_gets_its_own_mtime_after_its_contents() {
    let sb = Sandbox::new();
    let root = sb.root();
    let dir = EntryType::Directory;
    let layer = Layer::new()
        .with_mtime("a/", dir, 0o755, 100, b"")
        .with_mtime("a/b/", dir, 0o755, 200, b"")
        .file("a/b/f", b"f", 0o644)
        .with_mtime("a/b/c/", dir, 0o755, 300, b"")
        .file("a/b/c/g", b"g", 0o644)
        .with_mtime("a/x/", dir, 0o755, 400, b"")
        .with_mtime("z/", dir, 0o755, 500, b"")
        .file("z/y", b"y", 0o644)
        // Listed again, after entries inside it: the last entry wins.
        .with_mtime("a/", dir, 0o755, 600, b"")
        .file("a/b/late", b"late", 0o644)
        .bytes();
    apply(&root, &layer).unwrap();
    for (path, mtime) in [
        ("a", 600),
        ("a/b", 200),
        ("a/b/c", 300),
        ("a/x", 400),
        ("z", 500),
    ] {
        assert_eq!(
            fs::metadata(root.join(path)).unwrap().mtime(),
            mtime,
            "{path}"
        );
    }
    assert_eq!(fs::read(root.join("a/b/late")).unwrap(), b"late");
    sb.assert_outside_untouched();
}

/// Enough directories for their times to be set on two threads (see
/// `Applier::finish`): every one gets its own, a directory listed twice its
/// last, wherever the split falls.
#[test]
fn many_directories_get_their_mtimes_on_two_threads() {
    let sb = Sandbox::new();
    let root = sb.root();
    let dir = EntryType::Directory;
    let n = 2 * super::apply::PARALLEL_DIR_TIMES as u64 + 10;
    let mut layer = Layer::new();
    for i in 0..n {
        let name = format!("d{i:04}/");
        layer = layer
            .with_mtime(&name, dir, 0o755, 1000 + i, b"")
            .file(&format!("d{i:04}/f"), b"f", 0o644)
            .with_mtime(&format!("d{i:04}/sub/"), dir, 0o755, 5000 + i, b"");
    }
    // Listed again late, each: the split keeps both entries of one path on
    // one thread, in order.
    for i in (0..n).step_by(7) {
        layer = layer.with_mtime(&format!("d{i:04}/"), dir, 0o755, 9000 + i, b"");
    }
    apply(&root, &layer.bytes()).unwrap();
    for i in 0..n {
        let want = if i % 7 == 0 { 9000 + i } else { 1000 + i };
        let top = fs::metadata(root.join(format!("d{i:04}"))).unwrap();
        assert_eq!(top.mtime() as u64, want, "d{i:04}");
        let sub = fs::metadata(root.join(format!("d{i:04}/sub"))).unwrap();
        assert_eq!(sub.mtime() as u64, 5000 + i, "d{i:04}/sub");
    }
    sb.assert_outside_untouched();
}

/// Set in the child process of
/// [`unprivileged_directories_get_modes_that_lock_their_owner_out_last`]:
/// the root to unpack into, as `nobody`.
const AS_NOBODY_ROOT: &str = "MSB_TEST_UNPACK_AS_NOBODY_ROOT";

/// Directories whose modes would stop an unprivileged caller from writing
/// or searching in them (`0600`, `0500`) get them only after everything
/// below them; as root nothing is deferred, so the test runs the unpack as
/// `nobody` in a child process (the test binary itself).
#[test]
fn unprivileged_directories_get_modes_that_lock_their_owner_out_last() {
    let dir = EntryType::Directory;
    let layer = Layer::new()
        .with_mtime("top/", dir, 0o500, 100, b"")
        .with_mtime("top/locked/", dir, 0o600, 200, b"")
        .file("top/locked/f", b"f", 0o644)
        .with_mtime("top/locked/deeper/", dir, 0o500, 300, b"")
        .file("top/locked/deeper/g", b"g", 0o644)
        .with_mtime("top/open/", dir, 0o755, 400, b"")
        .bytes();
    if let Some(root) = std::env::var_os(AS_NOBODY_ROOT) {
        assert!(!nix::unistd::geteuid().is_root());
        apply(Path::new(&root), &layer).unwrap();
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the unpack as nobody");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = scratch.path().join("root");
    fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "image::unpack::tests::unprivileged_directories_get_modes_that_lock_their_owner_out_last"])
        .env(AS_NOBODY_ROOT, &root)
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(status.success(), "the unpack as nobody failed: {status}");
    for (path, mode, mtime) in [
        ("top", 0o500, 100),
        ("top/locked", 0o600, 200),
        ("top/locked/deeper", 0o500, 300),
        ("top/open", 0o755, 400),
    ] {
        let meta = fs::metadata(root.join(path)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
        assert_eq!(meta.mtime(), mtime, "{path}");
        assert_eq!(meta.uid(), 65534, "{path}");
    }
    assert_eq!(fs::read(root.join("top/locked/deeper/g")).unwrap(), b"g");
}

#[test]
fn gzip_and_zstd_layers() {
    let layer = Layer::new().file("a/b", b"compressed", 0o644).bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&layer[..], 3).unwrap();
    for (data, c) in [(gz, Compression::Gzip), (zst, Compression::Zstd)] {
        assert_eq!(Compression::from_magic(&data), c);
        let sb = Sandbox::new();
        apply_layer(&sb.root(), &data[..], c, &opts()).unwrap();
        assert_eq!(fs::read(sb.root().join("a/b")).unwrap(), b"compressed");
    }
}

#[test]
fn truncated_or_corrupt_streams_are_format_errors() {
    let layer = Layer::new().file("big", &vec![7u8; 100_000], 0o644).bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&layer[..], 3).unwrap();
    let cases: Vec<(Vec<u8>, Compression)> = vec![
        (gz[..gz.len() / 2].to_vec(), Compression::Gzip),
        (gz[..gz.len() - 4].to_vec(), Compression::Gzip),
        (zst[..zst.len() / 2].to_vec(), Compression::Zstd),
        (layer[..50_000].to_vec(), Compression::None),
        (b"\x1f\x8bnot gzip at all".to_vec(), Compression::Gzip),
        (vec![0xff; 1024], Compression::None),
    ];
    for (i, (data, c)) in cases.into_iter().enumerate() {
        let sb = Sandbox::new();
        match apply_layer(&sb.root(), &data[..], c, &opts()) {
            Err(Error::LayerFormat { .. }) => {}
            other => panic!("case {i}: expected a format error, got {other:?}"),
        }
    }
}

#[test]
fn whiteouts_remove_lower_files_and_dirs() {
    let sb = Sandbox::new();
    let root = sb.root();
    let lower = Layer::new()
        .file("etc/gone", b"1", 0o644)
        .file("etc/kept", b"1", 0o644)
        .file("var/cache/x/y", b"1", 0o644)
        .bytes();
    apply(&root, &lower).unwrap();
    let upper = Layer::new()
        .file("etc/.wh.gone", b"", 0o644)
        .file("var/cache/.wh.x", b"", 0o644)
        .file("etc/.wh.never-existed", b"", 0o644)
        .bytes();
    let stats = apply(&root, &upper).unwrap();
    assert_eq!(stats.whiteouts, 3);
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("etc/.wh.gone").exists());
    assert!(root.join("etc/kept").exists());
    assert!(!root.join("var/cache/x").exists());
    assert!(root.join("var/cache").is_dir());
}

#[test]
fn opaque_dir_keeps_same_layer_entries() {
    let sb = Sandbox::new();
    let root = sb.root();
    let lower = Layer::new()
        .file("opt/old", b"1", 0o644)
        .file("opt/sub/old", b"1", 0o644)
        .file("opt/app/lower", b"1", 0o644)
        .bytes();
    apply(&root, &lower).unwrap();
    // Same-layer additions both before and after the marker survive; lower
    // contents (also inside a directory this layer re-declares) do not.
    let upper = Layer::new()
        .dir("opt/", 0o755)
        .file("opt/new-before", b"2", 0o644)
        .dir("opt/app/", 0o755)
        .file("opt/.wh..wh..opq", b"", 0o644)
        .file("opt/new-after", b"2", 0o644)
        .bytes();
    let stats = apply(&root, &upper).unwrap();
    assert_eq!(stats.opaque_dirs, 1);
    let mut names: Vec<_> = fs::read_dir(root.join("opt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["app", "new-after", "new-before"]);
    assert_eq!(fs::read_dir(root.join("opt/app")).unwrap().count(), 0);
}

#[test]
fn replacing_entries_of_another_type() {
    let sb = Sandbox::new();
    let root = sb.root();
    let lower = Layer::new()
        .file("d/inner", b"1", 0o644)
        .file("f", b"1", 0o644)
        .file("keep/lower", b"1", 0o644)
        .symlink("s", "keep")
        .bytes();
    apply(&root, &lower).unwrap();
    let upper = Layer::new()
        .file("d", b"now a file", 0o600)
        .dir("f", 0o700)
        .dir("keep", 0o711)
        .dir("s", 0o755)
        .bytes();
    apply(&root, &upper).unwrap();
    assert_eq!(fs::read(root.join("d")).unwrap(), b"now a file");
    assert!(root.join("f").is_dir());
    assert!(
        root.join("keep/lower").exists(),
        "dir over dir keeps contents"
    );
    let keep = fs::metadata(root.join("keep")).unwrap();
    assert_eq!(keep.permissions().mode() & 0o7777, 0o711);
    assert!(fs::symlink_metadata(root.join("s")).unwrap().is_dir());
    assert!(fs::read_dir(root.join("s")).unwrap().next().is_none());
}

#[test]
fn relative_symlinks_inside_the_tree_are_followed() {
    let sb = Sandbox::new();
    let root = sb.root();
    let layer = Layer::new()
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .symlink("usr/lib64", "../usr/./lib")
        .file("lib/a", b"a", 0o644)
        .file("usr/lib64/b", b"b", 0o644)
        .bytes();
    apply(&root, &layer).unwrap();
    assert_eq!(fs::read(root.join("usr/lib/a")).unwrap(), b"a");
    assert_eq!(fs::read(root.join("usr/lib/b")).unwrap(), b"b");
    sb.assert_outside_untouched();
}

#[test]
fn parent_components_are_refused() {
    for name in ["../x", "a/../../x", "a/../x", "./../sentinel"] {
        let sb = Sandbox::new();
        let layer = Layer::new().file(name, b"pwned", 0o644).bytes();
        assert_unsafe(apply(&sb.root(), &layer), |r| {
            *r == UnsafeEntryReason::ParentComponent
        });
        sb.assert_outside_untouched();
    }
}

#[test]
fn absolute_symlink_parent_resolves_inside_the_root() {
    let sb = Sandbox::new();
    let root = sb.root();
    // `evil -> /`, then a path through it to the sandbox dir: `/` is the
    // image's root, so `pwned` lands inside the tree, never next to it.
    let outside = sb.dir.path().join("pwned");
    let through = format!("evil{}", outside.display());
    let layer = Layer::new()
        .symlink("evil", "/")
        .file(&through, b"pwned", 0o644)
        .bytes();
    apply(&root, &layer).unwrap();
    let inside = root.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    sb.assert_outside_untouched();
}

#[test]
fn absolute_symlink_chain_resolves_inside_the_root() {
    let sb = Sandbox::new();
    let root = sb.root();
    let layer = Layer::new()
        .dir("run", 0o755)
        .dir("var", 0o755)
        .symlink("var/run", "/run")
        .symlink("a", "b")
        .symlink("b", "/var/run")
        .file("a/pwned", b"pwned", 0o644)
        .file("var/run/lock", b"lock", 0o644)
        .bytes();
    apply(&root, &layer).unwrap();
    assert_eq!(fs::read(root.join("run/pwned")).unwrap(), b"pwned");
    assert_eq!(fs::read(root.join("run/lock")).unwrap(), b"lock");
    sb.assert_outside_untouched();
}

#[test]
fn symlink_climbing_out_is_refused_even_from_a_lower_layer() {
    let sb = Sandbox::new();
    let root = sb.root();
    apply(&root, &Layer::new().symlink("up", "../../..").bytes()).unwrap();
    apply(&root, &Layer::new().symlink("d/up", "../..").bytes()).unwrap();
    for name in ["up/x", "d/up/sentinel"] {
        let layer = Layer::new().file(name, b"pwned", 0o644).bytes();
        assert_unsafe(apply(&root, &layer), |r| {
            matches!(r, UnsafeEntryReason::SymlinkEscape { .. })
        });
        sb.assert_outside_untouched();
    }
}

#[test]
fn symlink_loop_is_refused() {
    let sb = Sandbox::new();
    let layer = Layer::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"", 0o644)
        .bytes();
    assert_unsafe(apply(&sb.root(), &layer), |r| {
        *r == UnsafeEntryReason::SymlinkLoop
    });
    sb.assert_outside_untouched();
}

#[test]
fn escaping_hard_links_are_refused() {
    let sb = Sandbox::new();
    let root = sb.root();
    let layer = Layer::new().hardlink("h", "../../etc/passwd").bytes();
    assert_unsafe(apply(&root, &layer), |r| {
        matches!(r, UnsafeEntryReason::HardLinkEscape { .. })
    });
    let layer = Layer::new().hardlink("h", "../sentinel").bytes();
    assert_unsafe(apply(&root, &layer), |r| {
        matches!(r, UnsafeEntryReason::HardLinkEscape { .. })
    });
    let layer = Layer::new()
        .symlink("out", "..")
        .hardlink("h", "out/sentinel")
        .bytes();
    assert_unsafe(apply(&root, &layer), |r| {
        matches!(r, UnsafeEntryReason::SymlinkEscape { .. })
    });
    // An absolute symlink resolves from the tree's root: the host's
    // `sentinel` is not reachable through it.
    let layer = Layer::new()
        .symlink("abs", &sb.dir.path().display().to_string())
        .hardlink("h2", "abs/sentinel")
        .bytes();
    assert_unsafe(apply(&root, &layer), |r| {
        matches!(r, UnsafeEntryReason::HardLinkTargetMissing { .. })
    });
    let layer = Layer::new().hardlink("h3", "does/not/exist").bytes();
    assert_unsafe(apply(&root, &layer), |r| {
        matches!(r, UnsafeEntryReason::HardLinkTargetMissing { .. })
    });
    assert!(!root.join("h").exists() && !root.join("h2").exists());
    assert_eq!(
        fs::metadata(sb.dir.path().join("sentinel"))
            .unwrap()
            .nlink(),
        1
    );
    sb.assert_outside_untouched();
}

#[test]
fn final_symlink_is_replaced_not_followed() {
    let sb = Sandbox::new();
    let root = sb.root();
    let target = sb.dir.path().join("sentinel").display().to_string();
    let layer = Layer::new()
        .symlink("f", &target)
        .file("f", b"replaced", 0o644)
        .bytes();
    apply(&root, &layer).unwrap();
    assert_eq!(fs::read(root.join("f")).unwrap(), b"replaced");
    sb.assert_outside_untouched();
}

#[test]
fn devices_skipped_when_not_permitted() {
    let sb = Sandbox::new();
    let layer = Layer::new()
        .raw("dev/null", EntryType::Char, "", 0o666, b"")
        .raw("run/fifo", EntryType::Fifo, "", 0o600, b"")
        .bytes();
    let o = opts().allow_devices(false).allow_fifos(true);
    let stats = apply_layer(&sb.root(), &layer[..], Compression::None, &o).unwrap();
    assert_eq!(stats.skipped_devices, 1);
    assert_eq!(stats.devices, 1);
    assert!(!sb.root().join("dev/null").exists());
    let fifo = fs::symlink_metadata(sb.root().join("run/fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    assert_eq!(fifo.permissions().mode() & 0o777, 0o600);
}

#[test]
fn media_types() {
    use Compression as C;
    for (mt, c) in [
        ("application/vnd.oci.image.layer.v1.tar", Some(C::None)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(C::Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(C::Zstd)),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(C::Gzip),
        ),
        ("application/vnd.oci.image.manifest.v1+json", None),
    ] {
        assert_eq!(C::from_media_type(mt), c, "{mt}");
    }
}

#[test]
fn ownership_and_xattrs_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let sb = Sandbox::new();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.msb", &b"1"[..]), ("uid", &b"4321"[..])])
        .unwrap();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o4755);
    h.set_size(1);
    h.set_uid(1);
    h.set_gid(1234);
    h.set_mtime(5);
    b.append_data(&mut h, "bin/su", &b"x"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let o = UnpackOptions::default().preserve_ownership(true);
    let stats = apply_layer(&sb.root(), &layer[..], Compression::None, &o).unwrap();
    assert_eq!(stats.xattrs_set + stats.xattrs_failed, 1);
    let md = fs::metadata(sb.root().join("bin/su")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (4321, 1234),
        "PAX uid overrides the header"
    );
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o4755,
        "setuid survives chown"
    );
}

/// A layer of owned entries, for the ownership tests: (name, type, mode,
/// (uid, gid)); a symlink is named `link=>target`.
fn owned_layer(entries: &[(&str, EntryType, u32, (u64, u64))]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for &(name, kind, mode, (uid, gid)) in entries {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(0);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(7);
        match name.split_once("=>") {
            Some((link, target)) => b.append_link(&mut h, link, target).unwrap(),
            None => b.append_data(&mut h, name, &b""[..]).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// A sandbox and options that give entries their owners: only as root.
fn owning_sandbox() -> Option<(Sandbox, UnpackOptions)> {
    nix::unistd::geteuid().is_root().then(|| {
        (
            Sandbox::new(),
            UnpackOptions::default().preserve_ownership(true),
        )
    })
}

fn mode_and_owner(path: &Path) -> (u32, u32, u32) {
    let md = fs::symlink_metadata(path).unwrap();
    (md.permissions().mode() & 0o7777, md.uid(), md.gid())
}

#[test]
fn setgid_parents_and_lower_layers_never_leak_their_group_or_bit() {
    // Entries created in a setgid directory get its group (and, for
    // directories, its setgid bit) from the kernel: whatever skips chown or
    // chmod for entries in directories it created must not skip them here.
    let Some((sb, o)) = owning_sandbox() else {
        return;
    };
    let root = sb.root();
    let (dir, file) = (EntryType::Directory, EntryType::Regular);
    let lower = owned_layer(&[
        ("shared/", dir, 0o2775, (0, 1234)),
        ("shared/f", file, 0o644, (0, 0)),
        ("shared/sub/", dir, 0o755, (0, 0)),
        ("shared/sub/g", file, 0o644, (0, 0)),
        ("plain/", dir, 0o755, (0, 0)),
        ("plain/h", file, 0o640, (0, 0)),
        ("plain/x", file, 0o666, (0, 0)),
        ("plain/y", file, 0o755, (5, 6)),
    ]);
    apply_layer(&root, &lower[..], Compression::None, &o).unwrap();
    assert_eq!(mode_and_owner(&root.join("shared")), (0o2775, 0, 1234));
    assert_eq!(mode_and_owner(&root.join("shared/f")), (0o644, 0, 0));
    assert_eq!(mode_and_owner(&root.join("shared/sub")), (0o755, 0, 0));
    assert_eq!(mode_and_owner(&root.join("shared/sub/g")), (0o644, 0, 0));
    assert_eq!(mode_and_owner(&root.join("plain/h")), (0o640, 0, 0));
    // 0o666 is more than the umask lets through: chmod is still needed.
    assert_eq!(mode_and_owner(&root.join("plain/x")), (0o666, 0, 0));
    assert_eq!(mode_and_owner(&root.join("plain/y")), (0o755, 5, 6));

    // An upper layer: `plain` becomes setgid and group 1234 in a lower
    // layer's directory; the entries below it must still get their own.
    let upper = owned_layer(&[
        ("plain/", dir, 0o2755, (0, 1234)),
        ("plain/new", file, 0o644, (0, 0)),
        ("plain/newdir/", dir, 0o755, (0, 0)),
    ]);
    apply_layer(&root, &upper[..], Compression::None, &o).unwrap();
    assert_eq!(mode_and_owner(&root.join("plain")), (0o2755, 0, 1234));
    assert_eq!(mode_and_owner(&root.join("plain/new")), (0o644, 0, 0));
    assert_eq!(mode_and_owner(&root.join("plain/newdir")), (0o755, 0, 0));
}

#[test]
fn a_known_directory_replaced_by_a_symlink_is_known_no_more() {
    let Some((sb, o)) = owning_sandbox() else {
        return;
    };
    let root = sb.root();
    let (dir, file) = (EntryType::Directory, EntryType::Regular);
    // `d` becomes a symlink to the setgid `e`: `d/f` lands in `e`.
    let layer = owned_layer(&[
        ("d/", dir, 0o755, (0, 0)),
        ("e/", dir, 0o2777, (0, 1234)),
        ("d=>e", EntryType::Symlink, 0o777, (0, 0)),
        ("d/f", file, 0o644, (0, 0)),
        ("d/g/", dir, 0o755, (0, 0)),
    ]);
    apply_layer(&root, &layer[..], Compression::None, &o).unwrap();
    assert_eq!(mode_and_owner(&root.join("e/f")), (0o644, 0, 0));
    assert_eq!(mode_and_owner(&root.join("e/g")), (0o755, 0, 0));
}

#[test]
fn a_default_acl_on_the_root_does_not_change_modes() {
    // With a default ACL the kernel ignores the umask and masks new entries'
    // modes with the ACL instead: here, nothing for group and others.
    let sb = Sandbox::new();
    let root = sb.root();
    // POSIX ACL xattr: version 2, then (tag u16, perm u16, id u32) entries:
    // user::rwx, group::---, other::---.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(u32::MAX.to_le_bytes());
    }
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and name, and a buffer of its length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"system.posix_acl_default".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    if rc != 0 {
        eprintln!(
            "skipped: no POSIX ACLs here ({})",
            std::io::Error::last_os_error()
        );
        return;
    }
    let layer = Layer::new()
        .file("f", b"x", 0o644)
        .dir("d/", 0o755)
        .file("d/g", b"y", 0o644)
        .symlink("d/l", "g")
        .bytes();
    apply(&root, &layer).unwrap();
    assert_eq!(mode_and_owner(&root.join("f")).0, 0o644);
    assert_eq!(mode_and_owner(&root.join("d")).0, 0o755);
    assert_eq!(mode_and_owner(&root.join("d/g")).0, 0o644);
}

#[test]
fn files_created_by_the_helper_end_up_as_in_tar_order() {
    let sb = Sandbox::new();
    let root = sb.root();
    let mut layer = Layer::new().with_mtime("d/", EntryType::Directory, 0o755, 2_000_000, b"");
    for i in 0..300u64 {
        let mode = if i % 2 == 0 { 0o640 } else { 0o755 };
        let data = format!("file {i}\n");
        layer = layer.with_mtime(
            &format!("d/f{i}"),
            EntryType::Regular,
            mode,
            1_000_000 + i,
            data.as_bytes(),
        );
    }
    // Later entries of the layer at the paths of files handed over: each
    // must see the file created first.
    let layer = layer
        .file("d/f5", b"second f5\n", 0o600)
        .dir("d/f6", 0o700)
        .file("d/f6/inside", b"in\n", 0o644)
        .symlink("d/f7", "f1")
        .hardlink("d/hard", "d/f8")
        .file("d/.wh.f9", b"", 0o644)
        .raw("d/f10", EntryType::Link, "d/f11", 0o644, b"")
        .bytes();
    let stats = apply(&root, &layer).unwrap();
    assert!(stats.files_by_helper > 0, "{stats:?}");
    let d = root.join("d");
    for i in (0..300u64).filter(|i| ![5, 6, 7, 10].contains(i)) {
        let path = d.join(format!("f{i}"));
        assert_eq!(fs::read(&path).unwrap(), format!("file {i}\n").as_bytes());
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = if i % 2 == 0 { 0o640 } else { 0o755 };
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{i}");
        assert_eq!(meta.mtime(), 1_000_000 + i as i64, "{i}");
    }
    assert_eq!(fs::read(d.join("f5")).unwrap(), b"second f5\n");
    assert_eq!(
        fs::metadata(d.join("f5")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::symlink_metadata(d.join("f6")).unwrap().is_dir());
    assert_eq!(fs::read(d.join("f6/inside")).unwrap(), b"in\n");
    assert_eq!(fs::read_link(d.join("f7")).unwrap(), Path::new("f1"));
    assert_eq!(
        fs::metadata(d.join("hard")).unwrap().ino(),
        fs::metadata(d.join("f8")).unwrap().ino()
    );
    // A whiteout hides lower layers' entries, not this layer's own.
    assert_eq!(fs::read(d.join("f9")).unwrap(), b"file 9\n");
    assert_eq!(
        fs::metadata(d.join("f10")).unwrap().ino(),
        fs::metadata(d.join("f11")).unwrap().ino()
    );
    // The directory's time is set after every file in it was created.
    assert_eq!(fs::metadata(&d).unwrap().mtime(), 2_000_000);
    sb.assert_outside_untouched();
}

#[test]
fn a_file_the_helper_cannot_create_is_a_typed_error() {
    let sb = Sandbox::new();
    let root = sb.root();
    // Longer than NAME_MAX: creating it fails with ENAMETOOLONG.
    let long = format!("d/{}", "n".repeat(300));
    let layer = Layer::new()
        .dir("d", 0o755)
        .with_mtime(&long, EntryType::Regular, 0o644, 1_000_000, b"data")
        .bytes();
    match apply(&root, &layer) {
        Err(Error::Io { op, path, source }) => {
            assert_eq!(op, "create file");
            assert_eq!(path, root.join(&long));
            assert_eq!(source.raw_os_error(), Some(libc::ENAMETOOLONG));
        }
        other => panic!("{other:?}"),
    }
    sb.assert_outside_untouched();
}

/// A directory `d` and 60 files in it: handed to the helper, they keep it
/// busy while the applier reaches the entries appended after them.
fn busy_helper_layer() -> Layer {
    let mut layer = Layer::new().dir("d", 0o755);
    for i in 0..60 {
        layer = layer.file(&format!("d/a{i}"), &[b'a'; 4096], 0o644);
    }
    layer
}

#[test]
fn a_path_through_a_file_the_helper_creates_fails_as_in_tar_order() {
    for through in ["d/f1/x", "d/link/x"] {
        let sb = Sandbox::new();
        let root = sb.root();
        let layer = busy_helper_layer()
            .file("d/f1", b"one\n", 0o644)
            .symlink("d/link", "f1")
            .file(through, b"x\n", 0o644)
            .bytes();
        match apply(&root, &layer) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR), "{through}")
            }
            other => panic!("{through}: {other:?}"),
        }
        // Not turned into a directory on the way.
        assert_eq!(fs::read(root.join("d/f1")).unwrap(), b"one\n", "{through}");
        sb.assert_outside_untouched();
    }
}

/// Everything about the tree at `root` a layer decides: per path its type,
/// mode, times, content or target, and which paths share an inode.
fn tree_state(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            out.push(path.clone());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, &mut paths);
    let mut first_of_inode = std::collections::HashMap::new();
    paths
        .iter()
        .map(|path| {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(path).unwrap();
            let ty = meta.file_type();
            let what = if ty.is_symlink() {
                format!("link {}", fs::read_link(path).unwrap().display())
            } else if ty.is_dir() {
                "dir".to_owned()
            } else {
                let first = first_of_inode.entry(meta.ino()).or_insert(rel.clone());
                let data = fs::read(path).unwrap();
                let sum = data
                    .iter()
                    .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b.into()));
                format!("file of {} bytes ({sum:x}) same as {first}", data.len())
            };
            // Directories created on the way have the time of the run.
            let mtime = match meta.mtime() {
                t if t < 1_000_000_000 => t.to_string(),
                _ => "now".to_owned(),
            };
            format!("{rel}: {what} mode {:o} mtime {mtime}", meta.mode())
        })
        .collect()
}

/// An error's kind, to compare two outcomes.
fn outcome(result: &Result<LayerStats>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(Error::Io { op, source, .. }) => format!("io {op} {:?}", source.raw_os_error()),
        Err(Error::UnsafeLayerEntry { reason, .. }) => format!("unsafe {reason:?}"),
        Err(Error::LayerFormat { reason, .. }) => format!("format {reason:?}"),
        Err(e) => format!("other {e}"),
    }
}

#[test]
fn the_file_helper_never_changes_the_outcome() {
    // `n/s` may become a symlink to `n` itself: `n/s/f5` is then `n/f5`,
    // a file the helper may not have created yet, by another name.
    let names = [
        "n/a", "n/b", "n/m", "n/m/c", "n/a/x", "n/l", "n/l/x", "n/f3", "n/f3/y", "n/m/l", "lo/x",
        "lo/new", "n/f70", "n/s", "n/s", "n/s", "n/s/f5", "n/s/f5", "n/s/f5", "n/s/f7/x",
        "n/s/m/c", "n/l/c",
    ];
    let whiteouts = [
        "n/.wh.a",
        "n/.wh.f5",
        "n/.wh.m",
        "n/m/.wh..wh..opq",
        "n/.wh..wh..opq",
        "lo/.wh.x",
    ];
    let targets = ["a", "m", "f3", "../lo", "/n/a", "c", ".", ".", "/n"];
    let hard = ["n/a", "n/f1", "n/m/c", "lo/x", "n/f69"];
    let lower = Layer::new()
        .dir("lo", 0o755)
        .file("lo/x", b"lower x\n", 0o644)
        .symlink("lo/s", "x")
        .bytes();
    let seed = std::env::var("MSB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f11e_u64);
    let mut rng = test_utils::fuzz::Rng::new(seed);
    let mut helped = 0;
    // Other tests running meanwhile are only slowed down.
    offload::TEST_DELAY_US.store(200, std::sync::atomic::Ordering::Relaxed);
    for case in 0..test_utils::fuzz::iterations(150) {
        let mut layer = Layer::new().dir("n", 0o755).dir("n/m", 0o750);
        for i in 0..rng.below(90) {
            let data = vec![b'0' + (i % 10) as u8; 1 + rng.below(3000)];
            layer = layer.with_mtime(
                &format!("n/f{i}"),
                EntryType::Regular,
                0o600 + rng.below(0o200) as u32,
                1_000_000 + i as u64,
                &data,
            );
        }
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(12) {
            layer = match rng.below(7) {
                6 => {
                    // A filler by another name, through a symlink to `n`.
                    let name = format!("n/s/f{}", rng.below(10));
                    ops.push(format!("symlink n/s -> ., file {name}"));
                    layer.symlink("n/s", ".").file(&name, b"aliased\n", 0o600)
                }
                0 => {
                    let (name, data) = (rng.pick(&names), format!("data {}\n", rng.below(1000)));
                    ops.push(format!("file {name}"));
                    layer.file(name, data.as_bytes(), 0o644)
                }
                1 => {
                    let name = rng.pick(&names);
                    ops.push(format!("dir {name}"));
                    layer.dir(name, 0o755)
                }
                2 => {
                    let (name, target) = (rng.pick(&names), rng.pick(&targets));
                    ops.push(format!("symlink {name} -> {target}"));
                    layer.symlink(name, target)
                }
                3 => {
                    let (name, target) = (rng.pick(&names), rng.pick(&hard));
                    ops.push(format!("hardlink {name} => {target}"));
                    layer.hardlink(name, target)
                }
                4 => {
                    let name = rng.pick(&whiteouts);
                    ops.push(format!("whiteout {name}"));
                    layer.file(name, b"", 0o644)
                }
                _ => {
                    let name = format!("n/f{}", rng.below(90));
                    ops.push(format!("file {name}"));
                    layer.file(&name, b"again\n", 0o640)
                }
            };
        }
        let layer = layer.bytes();
        let mut results = Vec::new();
        for helper in [true, false] {
            let sb = Sandbox::fast();
            let o = opts().file_helper(helper);
            apply_layer(&sb.root(), &lower[..], Compression::None, &o).unwrap();
            let result = apply_layer(&sb.root(), &layer[..], Compression::None, &o);
            if let Ok(stats) = &result {
                helped += stats.files_by_helper;
            }
            let state = result.as_ref().ok().map(|_| tree_state(&sb.root()));
            results.push((outcome(&result), state));
            sb.assert_outside_untouched();
        }
        assert_eq!(results[0], results[1], "case {case}: {ops:#?}");
    }
    offload::TEST_DELAY_US.store(0, std::sync::atomic::Ordering::Relaxed);
    assert!(helped > 0, "the helper took files");
}

#[test]
fn a_file_the_helper_creates_is_replaced_through_a_symlink_as_in_tar_order() {
    let sb = Sandbox::new();
    let root = sb.root();
    // d/s/f is d/f by another name.
    let layer = busy_helper_layer()
        .file("d/f", b"first\n", 0o644)
        .symlink("d/s", ".")
        .file("d/s/f", b"second\n", 0o600)
        .bytes();
    let stats = apply(&root, &layer).unwrap();
    assert!(stats.files_by_helper > 0, "{stats:?}");
    assert_eq!(fs::read(root.join("d/f")).unwrap(), b"second\n");
    assert_eq!(
        fs::metadata(root.join("d/f")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    sb.assert_outside_untouched();
}
