//! Faults beyond `pull_faults.rs`: a registry that stalls mid-blob, a disk
//! that fills up during a pull, and a sandbox state lock left behind by a
//! process that died.
//!
//! After each fault the state must be consistent (nothing half-written in
//! the store), nothing leaked, and the next call must succeed or say exactly
//! why not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use msb_core::Error;
use msb_core::image::registry::{Credentials, RegistryClient, RegistryConfig, RetryPolicy};
use msb_core::image::store::ImageStore;
use msb_core::image::{Digest, PullOptions, PulledImage, Puller, Reference};
use msb_core::sandbox::state::{Backend, LOCK_FILE, SandboxName, SandboxStatus, StateStore};
use test_utils::images::{Compression, ImageBuilder, LayerBuilder, PushedImage};
use test_utils::proxy::FaultyProxy;
use test_utils::pull::{runtime, store_tmp_is_empty};
use test_utils::registry::TestRegistry;

/// The longest any single pull in this file may take.
const PULL_LIMIT: Duration = Duration::from_secs(60);

fn puller(home: &Path, read_timeout: Duration, attempts: u32) -> Puller {
    let client = RegistryClient::new(RegistryConfig::default(), Credentials::none())
        .unwrap()
        .with_read_timeout(read_timeout)
        .unwrap()
        .with_retry(RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
        });
    Puller::new(client, ImageStore::open(home).unwrap())
}

/// Pulls `reference`, panicking if it takes longer than [`PULL_LIMIT`].
fn within(puller: &Puller, reference: &str) -> msb_core::Result<PulledImage> {
    let reference: Reference = reference.parse().unwrap();
    runtime().block_on(async {
        tokio::time::timeout(PULL_LIMIT, puller.pull(&reference, &PullOptions::default()))
            .await
            .unwrap_or_else(|_| panic!("pulling {reference} took over {PULL_LIMIT:?}"))
    })
}

use test_utils::fuzz::noise;

/// An image of one gzip layer holding `files`.
fn push(registry: &TestRegistry, name: &str, files: &[(&str, Vec<u8>)]) -> PushedImage {
    let mut layer = LayerBuilder::new();
    layer.dir("data", 0o755);
    for (path, contents) in files {
        layer.file(path, contents, 0o644);
    }
    ImageBuilder::new()
        .layer(layer, Compression::Gzip)
        .push_blocking(registry, name, "v1")
        .unwrap()
}

/// Everything under `dir`, recursively (not following symlinks).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The store holds nothing half-written: `tmp/` is empty and every tree
/// has its `.complete` marker.
fn assert_store_consistent(home: &Path) {
    assert!(
        store_tmp_is_empty(home),
        "images/tmp holds {:?}",
        files_under(&home.join("images/tmp"))
    );
    if let Ok(trees) = std::fs::read_dir(home.join("images/trees")) {
        for tree in trees {
            let tree = tree.unwrap().path();
            assert!(
                tree.join(".complete").exists(),
                "incomplete tree {} left in the store",
                tree.display()
            );
        }
    }
}

/// The `io::Error` somewhere in `err`'s source chain, if any.
fn io_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

// ---------------------------------------------------------------------------
// A registry that stops sending mid-blob.

#[test]
fn registry_stalling_mid_blob_times_out_bounded_then_resumes() {
    let registry = TestRegistry::start();
    let pushed = push(
        &registry,
        "test/stall",
        &[("data/noise", noise(1 << 20, 7))],
    );
    let layer: Digest = pushed.layer_digests[0].parse().unwrap();
    let proxy = FaultyProxy::start(registry.addr());
    let reference = format!("{}/test/stall:v1", proxy.host());

    // Every connection stalls after 256 KiB. With two attempts the blob
    // cannot complete: a typed error, within a few read timeouts.
    proxy.stall_after(256 << 10);
    let home = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = within(&puller(home.path(), Duration::from_secs(1), 2), &reference).unwrap_err();
    let took = started.elapsed();
    eprintln!("stalled pull failed after {took:?}: {err}");
    assert!(
        matches!(
            err,
            Error::Http { .. } | Error::BlobTruncated { .. } | Error::Io { .. }
        ),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(proxy.stalls() >= 1);
    assert_store_consistent(home.path());
    let store = ImageStore::open(home.path()).unwrap();
    assert!(!store.has_blob(&layer), "a stalled blob is not cached");
    assert!(store.list().unwrap().is_empty());

    // With retries to spare, each stalled connection counts as dropped and
    // the download resumes where it stopped, until it completes.
    let started = Instant::now();
    let pulled = within(&puller(home.path(), Duration::from_secs(1), 20), &reference).unwrap();
    eprintln!(
        "resumed through {} stalls in {:?}",
        proxy.stalls(),
        started.elapsed()
    );
    assert_eq!(
        std::fs::read(pulled.rootfs.join("data/noise")).unwrap(),
        noise(1 << 20, 7)
    );
    assert!(proxy.stalls() >= 4, "{} stalls", proxy.stalls());
    assert_store_consistent(home.path());

    // A registry that stalls before the manifest is complete.
    proxy.stall_after(100);
    let other = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = within(&puller(other.path(), Duration::from_secs(1), 2), &reference).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert_store_consistent(other.path());
}

// ---------------------------------------------------------------------------
// A full disk.

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not permitted.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::piped())
            .output()
            .ok()?;
        if !status.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Bytes in use.
    fn used(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.path()).unwrap();
        (st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Whether `err` says the disk is full.
fn is_no_space(err: &Error) -> bool {
    io_cause(err).is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
}

#[test]
fn disk_full_during_pull_is_typed_leaves_nothing_half_written_then_pulls() {
    let Some(disk) = Tmpfs::mount("8m") else {
        return;
    };
    let registry = TestRegistry::start();
    // Unpacks to 18 MiB from a small, compressible layer: the disk fills up
    // while unpacking.
    let pattern: Vec<u8> = (0..6 << 20).map(|i| (i % 251) as u8).collect();
    let unpack_big = push(
        &registry,
        "test/unpack-big",
        &[
            ("data/a", pattern.clone()),
            ("data/b", pattern.clone()),
            ("data/c", pattern.clone()),
        ],
    );
    assert!(unpack_big.layer_sizes[0] < 2 << 20);
    // A 12 MiB layer that does not compress: the disk fills up downloading.
    let download_big = push(
        &registry,
        "test/download-big",
        &[("data/n", noise(12 << 20, 3))],
    );

    let home = disk.path().join("home");
    let cases = [
        (&unpack_big, "while unpacking"),
        (&download_big, "while downloading"),
    ];
    for (image, when) in cases {
        let err = within(&puller(&home, Duration::from_secs(30), 2), &image.reference).unwrap_err();
        eprintln!("disk full {when}: {err}");
        assert!(is_no_space(&err), "{when}: not an ENOSPC error: {err:?}");
        assert!(
            matches!(err, Error::Io { .. } | Error::Http { .. }),
            "{when}: {err:?}"
        );
        assert_store_consistent(&home);
        let store = ImageStore::open(&home).unwrap();
        assert!(store.list().unwrap().is_empty(), "{when}: nothing tagged");
        // Whatever remains is whole (at most the small layer blob): the
        // failed work was cleaned up, not left filling the disk.
        assert!(
            disk.used() < 2 << 20,
            "{when}: {} bytes left in use: {:?}",
            disk.used(),
            files_under(&home)
        );
    }

    // With room, the same home pulls both.
    disk.resize("64m");
    for (image, _) in cases {
        let pulled = within(&puller(&home, Duration::from_secs(30), 2), &image.reference).unwrap();
        assert!(pulled.rootfs.join("data").is_dir());
    }
    let a = ImageStore::open(&home).unwrap().list().unwrap();
    assert_eq!(a.len(), 2);
    assert_store_consistent(&home);
}

// ---------------------------------------------------------------------------
// A stale sandbox state lock.

#[test]
fn stale_state_lock_of_a_dead_process_blocks_nothing() {
    let home = tempfile::tempdir().unwrap();
    let store = StateStore::open(home.path()).unwrap();
    let name = SandboxName::new("stale-lock").unwrap();
    let reservation = store
        .create(
            &name,
            serde_json::json!({"image": "busybox"}),
            Backend::Namespace,
        )
        .unwrap();
    reservation.commit(std::process::id()).unwrap();
    store.set_stopped(&name).unwrap();

    // Another process takes the record's lock (as an update would) and is
    // killed while holding it: its lock file stays behind.
    let lock = store.sandbox_dir(&name).join(LOCK_FILE);
    let mut holder = Command::new("flock")
        .arg("-o") // the lock is held by flock itself, not by its child
        .arg(&lock)
        .args(["sleep", "600"])
        .spawn()
        .unwrap();
    // Wait until it holds the lock.
    let started = Instant::now();
    loop {
        let probe = Command::new("flock")
            .args(["-n", "-x"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap();
        if !probe.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "flock never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its `sleep` child (which does not hold the lock), reaped below.
    let child = Command::new("pgrep")
        .args(["-P", &holder.id().to_string()])
        .output()
        .unwrap();
    let child = String::from_utf8_lossy(&child.stdout).trim().to_owned();
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    assert!(lock.exists(), "the lock file is left behind");

    // Updates, removal and a new create under the same name all go ahead,
    // promptly.
    let started = Instant::now();
    store.set_stopped(&name).unwrap();
    assert_eq!(store.status(&name).unwrap(), SandboxStatus::Stopped);
    store.remove(&name).unwrap();
    assert!(store.get(&name).unwrap().is_none());
    let again = store
        .create(
            &name,
            serde_json::json!({"image": "busybox"}),
            Backend::Namespace,
        )
        .unwrap();
    drop(again);
    assert!(store.get(&name).unwrap().is_none());
    assert!(started.elapsed() < Duration::from_secs(5));

    if !child.is_empty() {
        let _ = Command::new("kill").args(["-9", &child]).status();
    }
}

// ---------------------------------------------------------------------------
// A hostile, deeply nested image in the store.

/// A tar whose one file is `depth` directories down (a GNU long name), then
/// optionally an entry that is refused.
fn deep_layer(depth: usize, then_refused: bool) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    tar.append_data(&mut h, format!("{}f", "d/".repeat(depth)), &b"deep"[..])
        .unwrap();
    if then_refused {
        // A hard link to a missing target: refused after the deep tree.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        tar.append_link(&mut h, "l", "missing").unwrap();
    }
    tar.into_inner().unwrap()
}

/// Trees nested deeper than PATH_MAX are removed from the store: by the
/// failed pull that staged one, and by gc once untagged. (Path-based
/// removal failed with ENAMETOOLONG, leaving the tree in `tmp/` and making
/// every later gc fail.)
#[test]
fn trees_deeper_than_path_max_are_removed() {
    let registry = TestRegistry::start();
    let depth = 3000; // 6 000 bytes of path, under the descriptor limit
    for (name, refused) in [("test/deep-bad", true), ("test/deep", false)] {
        ImageBuilder::new()
            .layer_tar(deep_layer(depth, refused), Compression::Gzip)
            .push_blocking(&registry, name, "v1")
            .unwrap();
    }
    let home = tempfile::tempdir().unwrap();
    let puller = puller(home.path(), Duration::from_secs(30), 2);

    let err = within(&puller, &registry.reference("test/deep-bad", "v1")).unwrap_err();
    assert!(matches!(err, Error::UnsafeLayerEntry { .. }), "{err:?}");
    assert_store_consistent(home.path());

    let reference = registry.reference("test/deep", "v1");
    within(&puller, &reference).unwrap();
    let store = ImageStore::open(home.path()).unwrap();
    store.remove(&reference.parse().unwrap()).unwrap();
    let stats = store.gc().unwrap();
    assert_eq!(stats.trees_removed, 1, "{stats:?}");
    assert!(
        std::fs::read_dir(home.path().join("images/trees"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_store_consistent(home.path());
}
