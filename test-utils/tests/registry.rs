//! The registry and image fixtures against the real `docker-registry`.
//!
//! Everything talks to 127.0.0.1 only. Each test is bounded by [`LIMIT`].

use std::future::Future;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use test_utils::images::{
    self, BuiltImage, ImageBuilder, LayerBuilder, busybox_image, layered_image, media,
    multi_platform_index, sha256_digest,
};
use test_utils::registry::TestRegistry;

const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test ran past its time limit")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GETs a manifest with `accept`; returns (content type, digest header, body).
async fn get_manifest(
    registry: &TestRegistry,
    name: &str,
    reference: &str,
    accept: &str,
) -> (String, String, Vec<u8>) {
    let mut req = client()
        .get(format!(
            "{}/v2/{name}/manifests/{reference}",
            registry.url()
        ))
        .header("Accept", accept);
    if let Some((u, p)) = registry.credentials() {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET manifest {name}:{reference}");
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .unwrap_or_else(|| panic!("no {h} header"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let (ct, digest) = (header("Content-Type"), header("Docker-Content-Digest"));
    (ct, digest, resp.bytes().await.unwrap().to_vec())
}

async fn get_blob(registry: &TestRegistry, name: &str, digest: &str) -> Vec<u8> {
    let resp = client()
        .get(format!("{}/v2/{name}/blobs/{digest}", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET blob {digest}");
    let body = resp.bytes().await.unwrap().to_vec();
    assert_eq!(sha256_digest(&body), digest);
    body
}

#[tokio::test]
async fn registry_starts_on_loopback_and_serves_v2() {
    bounded(async {
        let t = Instant::now();
        let registry = TestRegistry::start();
        eprintln!("registry start: {:?}", t.elapsed());
        assert!(registry.addr().ip().is_loopback());
        assert_eq!(registry.url(), format!("http://{}", registry.host()));
        assert!(registry.host().starts_with("127.0.0.1:"));
        let resp = client()
            .get(format!("{}/v2/", registry.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(registry.storage_dir().is_dir());
    })
    .await
}

#[tokio::test]
async fn busybox_push_and_fetch_manifest() {
    bounded(async {
        let registry = TestRegistry::start();
        let t = Instant::now();
        let image = busybox_image();
        let pushed = image
            .push(&registry, "library/busybox", "latest")
            .await
            .unwrap();
        eprintln!("busybox build+push: {:?}", t.elapsed());
        assert_eq!(
            pushed.reference,
            format!("{}/library/busybox:latest", registry.host())
        );
        assert_eq!(pushed.layer_digests.len(), 1);

        let (ct, digest, body) =
            get_manifest(&registry, "library/busybox", "latest", media::OCI_MANIFEST).await;
        assert_eq!(ct, media::OCI_MANIFEST);
        assert_eq!(digest, pushed.manifest_digest);
        assert_eq!(sha256_digest(&body), pushed.manifest_digest);
        // By digest too.
        let (_, by_digest, _) = get_manifest(
            &registry,
            "library/busybox",
            &pushed.manifest_digest,
            media::OCI_MANIFEST,
        )
        .await;
        assert_eq!(by_digest, pushed.manifest_digest);

        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], media::OCI_LAYER_GZIP);
        assert_eq!(
            manifest["layers"][0]["digest"],
            pushed.layer_digests[0].as_str()
        );
        let config = get_blob(&registry, "library/busybox", &pushed.config_digest).await;
        let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], images::host_arch());
        assert_eq!(config["config"]["Cmd"][0], "/bin/sh");
        assert_eq!(config["rootfs"]["diff_ids"][0], pushed.diff_ids[0].as_str());

        // The layer really holds a static busybox and its applet links.
        let blob = get_blob(&registry, "library/busybox", &pushed.layer_digests[0]).await;
        let tar = decompress(&blob, media::OCI_LAYER_GZIP);
        assert_eq!(sha256_digest(&tar), pushed.diff_ids[0]);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path == "bin/sh" {
                assert_eq!(entry.link_name().unwrap().unwrap(), Path::new("busybox"));
            }
            names.push(path);
        }
        for want in [
            "bin/busybox",
            "bin/sh",
            "bin/ls",
            "etc/passwd",
            "etc/group",
            "tmp/",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    })
    .await
}

#[tokio::test]
async fn docker_media_types_push() {
    bounded(async {
        let registry = TestRegistry::start();
        let mut layer = LayerBuilder::new();
        layer.file("hello", b"hi\n", 0o644);
        let pushed = ImageBuilder::new()
            .docker()
            .layer(layer, images::Compression::Gzip)
            .push(&registry, "dockerish", "v1")
            .await
            .unwrap();
        let (ct, digest, body) =
            get_manifest(&registry, "dockerish", "v1", media::DOCKER_MANIFEST).await;
        assert_eq!(ct, media::DOCKER_MANIFEST);
        assert_eq!(digest, pushed.manifest_digest);
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(manifest["config"]["mediaType"], media::DOCKER_CONFIG);
        assert_eq!(manifest["layers"][0]["mediaType"], media::DOCKER_LAYER_GZIP);
    })
    .await
}

#[tokio::test]
async fn layered_image_unpacks_to_the_documented_tree() {
    bounded(async {
        let registry = TestRegistry::start();
        let pushed = layered_image()
            .push(&registry, "layered", "v1")
            .await
            .unwrap();
        let (_, digest, body) = get_manifest(&registry, "layered", "v1", media::OCI_MANIFEST).await;
        assert_eq!(digest, pushed.manifest_digest);
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        let types: Vec<&str> = layers
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                media::OCI_LAYER_GZIP,
                media::OCI_LAYER_ZSTD,
                media::OCI_LAYER
            ]
        );

        // Unpack what the registry serves with a small reference unpacker
        // and compare with the documented tree.
        let root = tempfile::tempdir().unwrap();
        for (i, layer) in layers.iter().enumerate() {
            let blob = get_blob(&registry, "layered", layer["digest"].as_str().unwrap()).await;
            let tar = decompress(&blob, layer["mediaType"].as_str().unwrap());
            assert_eq!(sha256_digest(&tar), pushed.diff_ids[i]);
            reference_apply(root.path(), &tar);
        }
        images::assert_layered_tree(root.path());
        for gone in images::LAYERED_ABSENT {
            assert!(!root.path().join(gone).exists(), "{gone} should be gone");
        }
    })
    .await
}

#[tokio::test]
async fn multi_platform_index_push() {
    bounded(async {
        let registry = TestRegistry::start();
        let pushed = multi_platform_index()
            .push(&registry, "multi", "latest")
            .await
            .unwrap();
        let (ct, digest, body) = get_manifest(&registry, "multi", "latest", media::OCI_INDEX).await;
        assert_eq!(ct, media::OCI_INDEX);
        assert_eq!(digest, pushed.index_digest);
        assert_eq!(sha256_digest(&body), pushed.index_digest);
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        let amd = pushed.image_for("linux", "amd64").unwrap();
        let arm = pushed.image_for("linux", "arm64").unwrap();
        assert_ne!(amd.layer_digests, arm.layer_digests);
        for image in [amd, arm] {
            let (ct, d, _) = get_manifest(
                &registry,
                "multi",
                &image.manifest_digest,
                media::OCI_MANIFEST,
            )
            .await;
            assert_eq!(ct, media::OCI_MANIFEST);
            assert_eq!(d, image.manifest_digest);
        }
    })
    .await
}

#[tokio::test]
async fn basic_auth_registry_rejects_anonymous_and_accepts_credentials() {
    bounded(async {
        let registry = TestRegistry::start_with_basic_auth("tester", "s3cret-pw");
        assert_eq!(registry.credentials(), Some(("tester", "s3cret-pw")));
        let url = format!("{}/v2/", registry.url());

        let anon = client().get(&url).send().await.unwrap();
        assert_eq!(anon.status(), 401);
        let challenge = anon.headers()["WWW-Authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic"), "{challenge}");

        let wrong = client()
            .get(&url)
            .basic_auth("tester", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);

        let ok = client()
            .get(&url)
            .basic_auth("tester", Some("s3cret-pw"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);

        // Pushes use the registry's credentials.
        let mut layer = LayerBuilder::new();
        layer.file("secret.txt", b"auth\n", 0o644);
        let pushed = ImageBuilder::new()
            .layer(layer, images::Compression::Gzip)
            .push(&registry, "private/app", "v1")
            .await
            .unwrap();
        let anon_manifest = client()
            .get(format!("{}/v2/private/app/manifests/v1", registry.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(anon_manifest.status(), 401);
        let (_, digest, _) =
            get_manifest(&registry, "private/app", "v1", media::OCI_MANIFEST).await;
        assert_eq!(digest, pushed.manifest_digest);
    })
    .await
}

#[test]
fn registry_is_gone_after_drop() {
    let registry = TestRegistry::start();
    let (addr, pid, storage) = (registry.addr(), registry.pid(), registry.storage_dir());
    assert!(std::net::TcpStream::connect(addr).is_ok());
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(registry);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "port {addr} still open"
    );
    // Reaped: no zombie left behind under our pid.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry pid {pid} still exists"
    );
    assert!(
        !storage.exists(),
        "storage {} not removed",
        storage.display()
    );
}

#[test]
fn push_blocking_works_inside_and_outside_a_runtime() {
    let registry = TestRegistry::start();
    let mut layer = LayerBuilder::new();
    layer.file("a", b"a", 0o644);
    let image = ImageBuilder::new().layer(layer, images::Compression::None);
    let first = image.push_blocking(&registry, "sync", "v1").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let second = rt.block_on(async { image.push_blocking(&registry, "sync", "v2").unwrap() });
    assert_eq!(first.manifest_digest, second.manifest_digest);
}

#[test]
fn builds_are_reproducible() {
    let a: BuiltImage = layered_image().build();
    let b: BuiltImage = layered_image().build();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.layers.len(), 3);
}

#[tokio::test]
#[ignore = "benchmark fixture: debootstraps Debian bookworm (~40 s, network to deb.debian.org, root); run with --ignored"]
async fn debian_image_for_benchmarks() {
    let registry = TestRegistry::start();
    let t = Instant::now();
    let image = tokio::task::spawn_blocking(images::debian_image)
        .await
        .unwrap()
        .unwrap();
    eprintln!("debian rootfs + layers: {:?}", t.elapsed());
    let t = Instant::now();
    let pushed = image
        .push(&registry, "library/debian", "bookworm")
        .await
        .unwrap();
    eprintln!(
        "debian push: {:?}, layer sizes {:?}",
        t.elapsed(),
        pushed.layer_sizes
    );
    assert_eq!(pushed.layer_digests.len(), 2);
    let (_, digest, _) =
        get_manifest(&registry, "library/debian", "bookworm", media::OCI_MANIFEST).await;
    assert_eq!(digest, pushed.manifest_digest);
}

fn decompress(blob: &[u8], media_type: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut out)
            .unwrap();
    } else if media_type.ends_with("zstd") {
        out = zstd::decode_all(blob).unwrap();
    } else {
        out = blob.to_vec();
    }
    out
}

/// A deliberately simple OCI layer applier (trusted input only), to check
/// that the fixture's documented tree matches its layers.
fn reference_apply(root: &Path, tar: &[u8]) {
    use std::collections::HashSet;
    let mut written: HashSet<std::path::PathBuf> = HashSet::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        // Normalised: no trailing `/` on directory names.
        let rel: std::path::PathBuf = entry.path().unwrap().components().collect();
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        let parent = root.join(rel.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            for child in std::fs::read_dir(&parent).unwrap().flatten() {
                let p = child.path();
                if !written.contains(&p) {
                    remove_any(&p);
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&parent.join(hidden));
            continue;
        }
        let dst = root.join(&rel);
        let kind = entry.header().entry_type();
        if let Ok(meta) = std::fs::symlink_metadata(&dst)
            && !(meta.is_dir() && kind.is_dir())
        {
            remove_any(&dst);
        }
        if kind.is_hard_link() {
            let target = root.join(entry.link_name().unwrap().unwrap());
            std::fs::hard_link(target, &dst).unwrap();
        } else {
            entry.set_preserve_permissions(true);
            entry.unpack(&dst).unwrap();
            let h = entry.header();
            if test_utils::registry::is_root() && !kind.is_symlink() {
                // chown clears setuid/setgid: restore the mode afterwards.
                let (uid, gid) = (h.uid().unwrap() as u32, h.gid().unwrap() as u32);
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).unwrap();
                let mode = h.mode().unwrap();
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        written.insert(dst);
    }
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}
