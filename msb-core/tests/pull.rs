//! Pulling real images from a real registry (Debian's `docker-registry` on
//! 127.0.0.1) into a fresh store, end to end.

use std::path::Path;
use std::sync::Arc;

use msb_core::Error;
use msb_core::image::registry::Progress;
use msb_core::image::store::PullPolicy;
use msb_core::image::{Digest, PullOptions, Reference};
use test_utils::TestHome;
use test_utils::images::{
    Compression, ImageBuilder, LayerBuilder, busybox_image, layered_image, multi_platform_index,
};
use test_utils::pull::{mirror_puller, runtime, store_tmp_is_empty};
use test_utils::registry::TestRegistry;

#[test]
fn pulls_busybox_through_a_mirror_and_serves_it_warm() {
    let registry = TestRegistry::start();
    busybox_image()
        .push_blocking(&registry, "library/busybox", "latest")
        .unwrap();
    let home = TestHome::new();
    let puller = mirror_puller(&registry, &home);
    let reference: Reference = "mirror.gcr.io/library/busybox".parse().unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let options = PullOptions {
        progress: Some(Arc::new(tx)),
        ..PullOptions::default()
    };
    let rt = runtime();
    let cold = rt.block_on(puller.pull(&reference, &options)).unwrap();
    assert!(cold.fetched);
    let busybox = cold.rootfs.join("bin/busybox");
    let out = std::process::Command::new(&busybox)
        .arg("true")
        .status()
        .unwrap();
    assert!(out.success(), "the unpacked busybox runs");
    assert!(std::fs::symlink_metadata(cold.rootfs.join("bin/sh")).is_ok());
    let mut events = 0;
    while rx.try_recv().is_ok() {
        events += 1;
    }
    assert!(events > 0, "progress events were sent");

    let warm = rt.block_on(puller.pull(&reference, &options)).unwrap();
    assert!(!warm.fetched, "if-missing serves the cached image");
    assert_eq!(warm.rootfs, cold.rootfs);
    assert_eq!(warm.manifest_digest, cold.manifest_digest);
    assert!(store_tmp_is_empty(home.path()));

    let records = puller.store().list().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reference, reference);
}

#[test]
fn layered_image_applies_whiteouts_opaque_dirs_and_links() {
    let registry = TestRegistry::start();
    layered_image()
        .push_blocking(&registry, "test/layered", "v1")
        .unwrap();
    let home = TestHome::new();
    let reference: Reference = format!("{}/test/layered:v1", registry.host())
        .parse()
        .unwrap();
    let pulled = runtime()
        .block_on(mirror_puller(&registry, &home).pull(&reference, &PullOptions::default()))
        .unwrap();
    test_utils::images::assert_layered_tree(&pulled.rootfs);
}

#[test]
fn index_resolves_to_the_requested_platform() {
    let registry = TestRegistry::start();
    let index = multi_platform_index()
        .push_blocking(&registry, "test/multi", "latest")
        .unwrap();
    let home = TestHome::new();
    let reference: Reference = format!("{}/test/multi", registry.host()).parse().unwrap();
    let puller = mirror_puller(&registry, &home);
    let rt = runtime();
    for (arch, platform) in [("amd64", "linux/amd64"), ("arm64", "linux/arm64")] {
        let options = PullOptions {
            platform: platform.parse().unwrap(),
            policy: PullPolicy::Always,
            ..PullOptions::default()
        };
        let pulled = rt.block_on(puller.pull(&reference, &options)).unwrap();
        let expected: Digest = index
            .image_for("linux", arch)
            .unwrap()
            .manifest_digest
            .parse()
            .unwrap();
        assert_eq!(pulled.manifest_digest, expected, "{platform}");
    }
    let options = PullOptions {
        platform: "linux/s390x".parse().unwrap(),
        policy: PullPolicy::Always,
        ..PullOptions::default()
    };
    let err = rt.block_on(puller.pull(&reference, &options)).unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
}

#[test]
fn never_policy_without_a_cached_image_is_image_not_found() {
    let registry = TestRegistry::start();
    let home = TestHome::new();
    let reference: Reference = format!("{}/absent/image", registry.host()).parse().unwrap();
    let options = PullOptions {
        policy: PullPolicy::Never,
        ..PullOptions::default()
    };
    let err = runtime()
        .block_on(mirror_puller(&registry, &home).pull(&reference, &options))
        .unwrap_err();
    assert!(matches!(err, Error::ImageNotFound { .. }), "{err}");
}

#[test]
fn unknown_image_is_a_typed_error_and_leaves_nothing() {
    let registry = TestRegistry::start();
    let home = TestHome::new();
    let reference: Reference = format!("{}/absent/image:v9", registry.host())
        .parse()
        .unwrap();
    let err = runtime()
        .block_on(mirror_puller(&registry, &home).pull(&reference, &PullOptions::default()))
        .unwrap_err();
    assert!(matches!(err, Error::ManifestUnknown { .. }), "{err}");
    assert!(store_tmp_is_empty(home.path()));
}

#[test]
fn corrupted_layer_in_the_registry_is_a_digest_mismatch_and_caches_nothing() {
    // The middle of busybox's largest layer.
    corrupt_layer_pull(busybox_image(), |len| len / 2);
}

#[test]
fn a_layer_corrupt_from_its_first_bytes_is_still_a_digest_mismatch() {
    // 8 MiB that do not compress, corrupted right after the gzip header:
    // the layer fails to unpack long before its download ends and its
    // digest is checked. The digest mismatch, the cause, is the error.
    let mut noise = Vec::with_capacity(8 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let mut layer = LayerBuilder::new();
    layer.file("noise", &noise, 0o644);
    corrupt_layer_pull(ImageBuilder::new().layer(layer, Compression::Gzip), |_| 12);
}

/// Pushes `image`, flips the byte at `at(len)` of its largest layer in the
/// registry's own storage (which then serves content that does not match
/// the digest the manifest names), pulls it, and checks the pull fails with
/// a digest mismatch and leaves nothing behind.
fn corrupt_layer_pull(image: ImageBuilder, at: impl Fn(usize) -> usize) {
    let registry = TestRegistry::start();
    let pushed = image
        .push_blocking(&registry, "test/corrupt", "v1")
        .unwrap();
    let (layer, _) = pushed
        .layer_digests
        .iter()
        .zip(&pushed.layer_sizes)
        .max_by_key(|(_, size)| **size)
        .unwrap();
    let path = registry.blob_path(layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = at(bytes.len());
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let home = TestHome::new();
    let puller = mirror_puller(&registry, &home);
    let reference: Reference = format!("{}/test/corrupt:v1", registry.host())
        .parse()
        .unwrap();
    let err = runtime()
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    let digest: Digest = layer.parse().unwrap();
    assert!(!puller.store().has_blob(&digest), "no corrupt blob cached");
    assert!(puller.store().list().unwrap().is_empty(), "nothing tagged");
    assert!(store_tmp_is_empty(home.path()));
    assert!(
        !Path::new(
            &puller
                .store()
                .tree_path(&pushed.manifest_digest.parse().unwrap())
        )
        .exists()
    );
}

#[test]
fn a_large_layer_decoded_on_two_threads_unpacks_exactly() {
    // 32 MiB shaped like files (about 13 MiB of gzip): once its blob is in,
    // a second decoder thread takes the back of the stream (`halves`), if
    // the first has enough left. Unpacking it again from the store, where
    // the blob is whole from the start, it always has.
    let data = test_utils::fuzz::files_like(32 << 20, 11);
    let mut layer = LayerBuilder::new();
    for (i, file) in data.chunks(512 << 10).enumerate() {
        layer.file(&format!("data/{i:03}"), file, 0o644);
    }
    let registry = TestRegistry::start();
    ImageBuilder::new()
        .layer(layer, Compression::Gzip)
        .push_blocking(&registry, "test/large", "v1")
        .unwrap();
    let home = TestHome::new();
    let reference: Reference = format!("{}/test/large:v1", registry.host())
        .parse()
        .unwrap();
    let puller = mirror_puller(&registry, &home);
    let rt = runtime();
    let pulled = rt
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap();
    let check = || {
        for (i, file) in data.chunks(512 << 10).enumerate() {
            let path = pulled.rootfs.join(format!("data/{i:03}"));
            assert!(std::fs::read(&path).unwrap() == file, "{}", path.display());
        }
    };
    check();

    // A marker from another boot (see the crash test below): the tree is
    // unpacked again, from the blob in the store.
    for (i, _) in data.chunks(512 << 10).enumerate() {
        std::fs::write(pulled.rootfs.join(format!("data/{i:03}")), b"").unwrap();
    }
    let marker = pulled.rootfs.parent().unwrap().join(".complete");
    let stale = format!(
        "{}\nboot 0f0f0f0f-1111-2222-3333-444455556666\n",
        pulled.manifest_digest
    );
    std::fs::write(&marker, stale).unwrap();
    let options = PullOptions {
        policy: PullPolicy::Never,
        ..PullOptions::default()
    };
    let again = rt.block_on(puller.pull(&reference, &options)).unwrap();
    assert!(!again.fetched && again.rootfs == pulled.rootfs);
    check();
    assert!(store_tmp_is_empty(home.path()));
}

#[test]
fn concurrent_pulls_of_one_image_share_the_cache() {
    let registry = TestRegistry::start();
    busybox_image()
        .push_blocking(&registry, "test/shared", "v1")
        .unwrap();
    let home = TestHome::new();
    let reference: Reference = format!("{}/test/shared:v1", registry.host())
        .parse()
        .unwrap();
    let (a, b) = (
        mirror_puller(&registry, &home),
        mirror_puller(&registry, &home),
    );
    let options = PullOptions::default();
    let (ra, rb) = runtime().block_on(async {
        tokio::join!(a.pull(&reference, &options), b.pull(&reference, &options))
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.rootfs, rb.rootfs);
    assert!(ra.rootfs.join("bin/busybox").is_file());
    assert!(store_tmp_is_empty(home.path()));
}

#[test]
fn a_tree_that_may_have_lost_data_in_a_crash_is_unpacked_again_offline() {
    let registry = TestRegistry::start();
    busybox_image()
        .push_blocking(&registry, "test/crash", "v1")
        .unwrap();
    let home = TestHome::new();
    let puller = mirror_puller(&registry, &home);
    let reference: Reference = format!("{}/test/crash:v1", registry.host())
        .parse()
        .unwrap();
    let rt = runtime();
    let cold = rt
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap();
    let busybox = cold.rootfs.join("bin/busybox");
    let size = std::fs::metadata(&busybox).unwrap().len();

    // What a power loss soon after the pull leaves: the tree's names, some
    // of its files empty (never written back), and its marker, written in
    // a boot that is over.
    std::fs::write(&busybox, b"").unwrap();
    let marker = cold.rootfs.parent().unwrap().join(".complete");
    std::fs::write(
        &marker,
        format!(
            "{}\nboot 0f0f0f0f-1111-2222-3333-444455556666\n",
            cold.manifest_digest
        ),
    )
    .unwrap();
    // No registry from here on: the blobs in the store suffice.
    drop(registry);

    let options = PullOptions {
        policy: PullPolicy::Never,
        ..PullOptions::default()
    };
    let again = rt.block_on(puller.pull(&reference, &options)).unwrap();
    assert!(!again.fetched, "unpacked from the store, not fetched");
    assert_eq!(again.rootfs, cold.rootfs);
    assert_eq!(std::fs::metadata(&busybox).unwrap().len(), size);
    let ran = std::process::Command::new(&busybox)
        .arg("true")
        .status()
        .unwrap();
    assert!(ran.success(), "the restored busybox runs");
    assert!(puller.store().has_tree(&again.manifest_digest));
    assert!(store_tmp_is_empty(home.path()));

    // Without a layer blob it cannot be rebuilt: a `never` pull of a tree
    // of an earlier boot is then not found, as if it were not there.
    std::fs::write(
        &marker,
        format!(
            "{}\nboot 0f0f0f0f-1111-2222-3333-444455556666\n",
            again.manifest_digest
        ),
    )
    .unwrap();
    let layer = std::fs::read_dir(home.path().join("images/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::remove_file(layer).unwrap();
    let err = rt.block_on(puller.pull(&reference, &options)).unwrap_err();
    assert!(matches!(err, Error::ImageNotFound { .. }), "{err}");
    assert!(store_tmp_is_empty(home.path()));
}
