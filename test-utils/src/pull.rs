//! Pullers wired to a test registry and an isolated state home.

use std::path::Path;

use msb_core::image::Puller;
use msb_core::image::registry::{Credentials, RegistryClient, RegistryConfig};
use msb_core::image::store::ImageStore;

use crate::TestHome;
use crate::registry::TestRegistry;

/// A puller into `home`'s store with default registry settings (loopback
/// registries are plain HTTP) and `credentials`.
pub fn puller(home: &Path, credentials: Credentials) -> Puller {
    let client = RegistryClient::new(RegistryConfig::default(), credentials)
        .expect("a registry client with default settings");
    Puller::new(client, ImageStore::open(home).expect("open the test store"))
}

/// A puller into `home`'s store whose config maps `mirror.gcr.io` to
/// `registry`, as a user's `<MSB_HOME>/config.json` would.
pub fn mirror_puller(registry: &TestRegistry, home: &TestHome) -> Puller {
    let config = RegistryConfig::from_json(
        &format!(
            r#"{{"registries": {{"mirror.gcr.io": {{"mirror": "http://{}"}}}}}}"#,
            registry.host()
        ),
        "test",
    )
    .expect("a valid mirror config");
    let client = RegistryClient::new(config, Credentials::none()).expect("a registry client");
    Puller::new(
        client,
        ImageStore::open(home.path()).expect("open the test store"),
    )
}

/// A two-worker runtime, like the machine the suite runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Whether the store under `home` has no in-progress entries left.
pub fn store_tmp_is_empty(home: &Path) -> bool {
    std::fs::read_dir(home.join("images/tmp")).map_or(true, |mut d| d.next().is_none())
}
