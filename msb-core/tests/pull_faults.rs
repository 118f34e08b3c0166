//! Pulls under faults, against the real local registry: connections dropped
//! mid-layer (through [`FaultyProxy`]), a registry that dies or is not there,
//! hostile layers, basic auth, and two processes pulling one image at once.
//!
//! Every pull is bounded in time ([`within`]); every failure must be a typed
//! error that leaves nothing half-written in the store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use msb_core::Error;
use msb_core::image::registry::{Credentials, RegistryClient, RegistryConfig, RetryPolicy};
use msb_core::image::store::ImageStore;
use msb_core::image::unpack::UnsafeEntryReason;
use msb_core::image::{Digest, PullOptions, PulledImage, Puller, Reference};
use test_utils::TestHome;
use test_utils::images::{Compression, ImageBuilder, LayerBuilder, PushedImage, busybox_image};
use test_utils::proxy::FaultyProxy;
use test_utils::pull::runtime;
use test_utils::registry::TestRegistry;

/// The longest any single pull in this file may take.
const PULL_LIMIT: Duration = Duration::from_secs(60);

/// Set in the environment of the child processes of
/// [`two_processes_pull_one_image_at_once`].
const CHILD_ENV: &str = "MSB_PULL_CHILD";
const CHILD_HOME_ENV: &str = "MSB_PULL_CHILD_HOME";
const CHILD_REF_ENV: &str = "MSB_PULL_CHILD_REF";

/// Retries quick enough for failure tests.
fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

fn puller_with(home: &Path, credentials: Credentials, retry: Option<RetryPolicy>) -> Puller {
    // Loopback registries (and the proxy) are spoken to over plain HTTP.
    let mut client = RegistryClient::new(RegistryConfig::default(), credentials).unwrap();
    if let Some(retry) = retry {
        client = client.with_retry(retry);
    }
    Puller::new(client, ImageStore::open(home).unwrap())
}

fn puller(home: &TestHome) -> Puller {
    test_utils::pull::puller(home.path(), Credentials::none())
}

/// Pulls `reference`, panicking if it takes longer than [`PULL_LIMIT`].
fn within(puller: &Puller, reference: &Reference) -> msb_core::Result<PulledImage> {
    runtime().block_on(async {
        tokio::time::timeout(PULL_LIMIT, puller.pull(reference, &PullOptions::default()))
            .await
            .unwrap_or_else(|_| panic!("pulling {reference} took over {PULL_LIMIT:?}"))
    })
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    }
}

/// Every file under `dir` (recursively, not following symlinks).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for path in entries(&d) {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Asserts the store holds no image, no tree, nothing in flight, and none of
/// `blobs`.
fn assert_nothing_cached(home: &Path, puller: &Puller, blobs: &[&str]) {
    let store = puller.store();
    assert!(store.list().unwrap().is_empty(), "nothing tagged");
    let images = home.join("images");
    assert_eq!(entries(&images.join("tmp")), Vec::<PathBuf>::new(), "tmp");
    assert_eq!(
        entries(&images.join("trees")),
        Vec::<PathBuf>::new(),
        "trees"
    );
    for blob in blobs {
        let digest: Digest = blob.parse().unwrap();
        assert!(!store.has_blob(&digest), "{blob} is not cached");
    }
}

/// The pushed image's largest layer: `(digest, size)`.
fn largest_layer(pushed: &PushedImage) -> (String, u64) {
    pushed
        .layer_digests
        .iter()
        .zip(&pushed.layer_sizes)
        .max_by_key(|(_, size)| **size)
        .map(|(d, s)| (d.clone(), *s))
        .unwrap()
}

fn reference(host: &str, name: &str) -> Reference {
    format!("{host}/{name}").parse().unwrap()
}

/// `n` bytes that do not compress (so the layer blob is about `n` bytes).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn dropped_connection_mid_layer_resumes_and_the_image_runs() {
    let registry = TestRegistry::start();
    let pushed = busybox_image()
        .push_blocking(&registry, "test/busybox", "v1")
        .unwrap();
    let (_, size) = largest_layer(&pushed);
    let cut_at = 128 << 10;
    assert!(size > 3 * cut_at, "the busybox layer ({size} bytes) is big");

    let proxy = FaultyProxy::start(registry.addr());
    proxy.cut_after(cut_at, 2);
    let home = TestHome::new();
    let puller = puller(&home);
    let started = Instant::now();
    let pulled = within(&puller, &reference(&proxy.host(), "test/busybox:v1")).unwrap();
    assert_eq!(proxy.cuts(), 2, "the proxy cut the layer download twice");
    assert!(
        proxy.connections() >= 3,
        "resumed on new connections ({})",
        proxy.connections()
    );
    assert!(
        proxy.relayed() < size + cut_at / 2,
        "resumed with Range rather than restarting ({} bytes relayed for a {size}-byte layer)",
        proxy.relayed()
    );
    eprintln!(
        "pulled in {:?} through {} connections, {} cuts",
        started.elapsed(),
        proxy.connections(),
        proxy.cuts()
    );
    assert_eq!(
        pulled.manifest_digest,
        pushed.manifest_digest.parse().unwrap()
    );
    let status = Command::new(pulled.rootfs.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success(), "the unpacked busybox runs");
    assert!(entries(&home.path().join("images/tmp")).is_empty());
}

#[test]
fn connection_dropped_on_every_attempt_is_typed_and_caches_nothing() {
    let registry = TestRegistry::start();
    let pushed = busybox_image()
        .push_blocking(&registry, "test/busybox", "v1")
        .unwrap();
    let (layer, _) = largest_layer(&pushed);

    let proxy = FaultyProxy::start(registry.addr());
    proxy.cut_always_after(32 << 10);
    let home = TestHome::new();
    let puller = puller_with(home.path(), Credentials::none(), Some(fast_retry(3)));
    let err = within(&puller, &reference(&proxy.host(), "test/busybox:v1")).unwrap_err();
    assert!(
        matches!(err, Error::BlobTruncated { .. } | Error::Http { .. }),
        "{err:?}"
    );
    assert!(
        proxy.cuts() >= 3,
        "every attempt was cut ({})",
        proxy.cuts()
    );
    assert_nothing_cached(home.path(), &puller, &[&layer, &pushed.manifest_digest]);

    // The same store then pulls fine once the network behaves.
    proxy.pass_through();
    let pulled = within(&puller, &reference(&proxy.host(), "test/busybox:v1")).unwrap();
    assert!(pulled.rootfs.join("bin/busybox").is_file());
}

#[test]
fn registry_dying_mid_pull_is_typed_bounded_and_caches_nothing() {
    let registry = TestRegistry::start();
    // Two big layers downloading at once: when the registry dies both fail,
    // one first, and the other is cancelled mid-retry.
    let pushed = ImageBuilder::new()
        .layer(
            {
                let mut l = LayerBuilder::new();
                l.file("a.bin", &noise(1 << 20, 1), 0o644);
                l
            },
            Compression::None,
        )
        .layer(
            {
                let mut l = LayerBuilder::new();
                l.file("b.bin", &noise(1 << 20, 2), 0o644);
                l
            },
            Compression::None,
        )
        .push_blocking(&registry, "test/big", "v1")
        .unwrap();

    let proxy = FaultyProxy::start(registry.addr());
    proxy.die_after(256 << 10);
    let home = TestHome::new();
    let puller = puller_with(home.path(), Credentials::none(), Some(fast_retry(3)));
    let started = Instant::now();
    let err = within(&puller, &reference(&proxy.host(), "test/big:v1")).unwrap_err();
    assert!(proxy.is_dead(), "the proxy died mid-pull");
    assert!(
        matches!(err, Error::Http { .. } | Error::BlobTruncated { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");
    let layers: Vec<&str> = pushed.layer_digests.iter().map(String::as_str).collect();
    assert_nothing_cached(home.path(), &puller, &layers);
}

#[test]
fn registry_not_listening_is_a_quick_typed_error() {
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let home = TestHome::new();
    let puller = puller(&home);
    let started = Instant::now();
    let err = within(
        &puller,
        &reference(&format!("127.0.0.1:{port}"), "test/absent:v1"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_nothing_cached(home.path(), &puller, &[]);
}

/// A raw `../escape`-style entry (written verbatim, no checks).
fn raw_file(layer: &mut LayerBuilder, path: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(1);
    layer.raw(h, path, b"pwned\n");
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let registry = TestRegistry::start();
    let outside = tempfile::Builder::new()
        .prefix("msb-pull-faults-outside-")
        .tempdir()
        .unwrap();
    let tag = format!("{}", std::process::id());
    let escape_name = format!("escape-{tag}");
    let pwned_name = format!("pwned-{tag}");
    let outside_rel = outside
        .path()
        .strip_prefix("/")
        .unwrap()
        .display()
        .to_string();

    // 1. `../escape`, deeper `../../..` climbs, and one into `outside`.
    let mut dotdot = LayerBuilder::new();
    dotdot.dir("etc", 0o755);
    raw_file(&mut dotdot, &format!("../{escape_name}"));
    // 3. `up -> ../../..` then `up/pwned`.
    let mut relative = LayerBuilder::new();
    relative.dir("a/b", 0o755);
    relative.symlink("a/b/up", "../../../../../../../../..");
    relative.file(
        &format!("a/b/up/{outside_rel}/{pwned_name}"),
        b"pwned\n",
        0o644,
    );
    // 4. The symlink in one layer, the write through it in the next.
    let mut link_layer = LayerBuilder::new();
    link_layer.symlink("up", "../..");
    let mut write_layer = LayerBuilder::new();
    write_layer.file(&format!("up/{pwned_name}"), b"pwned\n", 0o644);

    let base = || {
        let mut l = LayerBuilder::new();
        l.dir("bin", 0o755);
        l.file("bin/ok", b"ok\n", 0o644);
        l
    };
    let cases: Vec<(&str, ImageBuilder)> = vec![
        (
            "test/dotdot",
            ImageBuilder::new()
                .layer(base(), Compression::Gzip)
                .layer_tar(dotdot.into_tar(), Compression::Gzip),
        ),
        (
            "test/rel-symlink",
            ImageBuilder::new().layer(relative, Compression::Zstd),
        ),
        (
            "test/cross-layer-symlink",
            ImageBuilder::new()
                .layer(link_layer, Compression::None)
                .layer(write_layer, Compression::Gzip),
        ),
    ];

    let home = TestHome::new();
    let puller = puller(&home);
    for (name, image) in cases {
        let pushed = image.push_blocking(&registry, name, "v1").unwrap();
        let reference = reference(&registry.host(), &format!("{name}:v1"));
        let err = within(&puller, &reference).unwrap_err();
        let Error::UnsafeLayerEntry { path, reason } = &err else {
            panic!("{name}: expected UnsafeLayerEntry, got {err:?}");
        };
        eprintln!("{name}: refused {} ({reason:?})", path.display());
        assert!(
            matches!(
                reason,
                UnsafeEntryReason::ParentComponent | UnsafeEntryReason::SymlinkEscape { .. }
            ),
            "{name}: {reason:?}"
        );
        let manifest: Digest = pushed.manifest_digest.parse().unwrap();
        assert!(!puller.store().has_tree(&manifest), "{name}: no tree");
        assert!(
            !puller.store().tree_path(&manifest).exists(),
            "{name}: no tree dir"
        );
        assert_nothing_cached(home.path(), &puller, &[]);
    }

    // Nothing anywhere near the store, nor in `outside`, nor in the temp dir.
    let parent = home.path().parent().unwrap();
    let stray: Vec<PathBuf> = files_under(home.path())
        .into_iter()
        .chain(files_under(outside.path()))
        .chain(entries(parent))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == escape_name.as_str() || n == pwned_name.as_str())
        })
        .collect();
    assert_eq!(
        stray,
        Vec::<PathBuf>::new(),
        "files written outside the tree"
    );
}

#[test]
fn basic_auth_registry_needs_the_right_credentials() {
    let registry = TestRegistry::start_with_basic_auth("ci", "secret");
    busybox_image()
        .push_blocking(&registry, "private/busybox", "v1")
        .unwrap();
    let reference = reference(&registry.host(), "private/busybox:v1");

    let home = TestHome::new();
    let anonymous = puller(&home);
    let err = within(&anonymous, &reference).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_nothing_cached(home.path(), &anonymous, &[]);

    let docker = tempfile::tempdir().unwrap();
    let config = docker.path().join("config.json");
    let auth = |user: &str, pw: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    };
    let write = |user: &str, pw: &str| {
        std::fs::write(
            &config,
            format!(
                r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
                registry.host(),
                auth(user, pw)
            ),
        )
        .unwrap();
        Credentials::from_docker_config_file(&config).unwrap()
    };

    let wrong = puller_with(home.path(), write("ci", "wrong"), None);
    let err = within(&wrong, &reference).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");

    let right = puller_with(home.path(), write("ci", "secret"), None);
    let pulled = within(&right, &reference).unwrap();
    assert!(pulled.fetched);
    assert!(pulled.rootfs.join("bin/busybox").is_file());
}

/// Not a test of its own: the body of each child process of
/// [`two_processes_pull_one_image_at_once`]; a no-op otherwise.
#[test]
fn pull_child_process() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let home = PathBuf::from(std::env::var_os(CHILD_HOME_ENV).unwrap());
    let reference: Reference = std::env::var(CHILD_REF_ENV).unwrap().parse().unwrap();
    let puller = puller_with(&home, Credentials::none(), None);
    let pulled = within(&puller, &reference).unwrap();
    assert!(pulled.rootfs.join("bin/busybox").is_file());
    println!(
        "child {} pulled {}",
        std::process::id(),
        pulled.manifest_digest
    );
}

#[test]
fn two_processes_pull_one_image_at_once() {
    let registry = TestRegistry::start();
    let pushed = busybox_image()
        .push_blocking(&registry, "test/shared", "v1")
        .unwrap();
    let home = TestHome::new();
    let reference = registry.reference("test/shared", "v1");

    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args(["--exact", "pull_child_process", "--nocapture"])
            .env(CHILD_ENV, "1")
            .env(CHILD_HOME_ENV, home.path())
            .env(CHILD_REF_ENV, &reference)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn(), spawn()];
    let deadline = Instant::now() + PULL_LIMIT + Duration::from_secs(30);
    for mut child in children {
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a child pull did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("pulled sha256:"),
            "the child really pulled:\n{stdout}"
        );
    }

    let store = ImageStore::open(home.path()).unwrap();
    let records = store.list().unwrap();
    assert_eq!(records.len(), 1, "exactly one tag: {records:?}");
    let manifest: Digest = pushed.manifest_digest.parse().unwrap();
    assert_eq!(records[0].manifest_digest, manifest);
    let images = home.path().join("images");
    let trees = entries(&images.join("trees"));
    assert_eq!(trees.len(), 1, "exactly one tree: {trees:?}");
    assert!(store.has_tree(&manifest));
    assert!(entries(&images.join("tmp")).is_empty(), "tmp is empty");
    // Each blob once: the manifest, the config and the layers, nothing else.
    let mut expected: Vec<String> = pushed.layer_digests.clone();
    expected.push(pushed.config_digest.clone());
    expected.push(pushed.manifest_digest.clone());
    expected.sort();
    let mut blobs: Vec<String> = files_under(&images.join("blobs"))
        .iter()
        .map(|p| {
            let hex = p.file_name().unwrap().to_str().unwrap();
            let alg = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
            format!("{alg}:{hex}")
        })
        .collect();
    blobs.sort();
    assert_eq!(blobs, expected, "each blob exactly once");
    for blob in &expected {
        assert!(store.has_blob(&blob.parse().unwrap()));
    }
}

#[test]
fn absolute_symlinks_resolve_inside_the_image() {
    let registry = TestRegistry::start();
    let outside = tempfile::tempdir().unwrap();
    let outside_rel = outside
        .path()
        .strip_prefix("/")
        .unwrap()
        .display()
        .to_string();
    // `evil -> /` then `evil/<outside>/pwned`: `/` is the image's own root.
    let mut layer = LayerBuilder::new();
    layer.symlink("evil", "/");
    layer.file(&format!("evil/{outside_rel}/pwned"), b"inside\n", 0o644);
    ImageBuilder::new()
        .layer(layer, Compression::Gzip)
        .push_blocking(&registry, "test/abs-symlink", "v1")
        .unwrap();

    let home = TestHome::new();
    let pulled = within(
        &puller(&home),
        &reference(&registry.host(), "test/abs-symlink:v1"),
    )
    .unwrap();
    let inside = pulled.rootfs.join(&outside_rel).join("pwned");
    assert_eq!(std::fs::read(&inside).unwrap(), b"inside\n");
    assert!(
        !outside.path().join("pwned").exists(),
        "nothing written through the host's /"
    );
}
