//! Pulling over TLS from a real registry (Debian's `docker-registry` serving
//! HTTPS on 127.0.0.1 with a certificate from a throwaway CA), with and
//! without that CA configured, and with broken CA settings.

use std::path::Path;
use std::time::{Duration, Instant};

use msb_core::Error;
use msb_core::image::registry::{Credentials, RegistryClient, RegistryConfig};
use msb_core::image::store::ImageStore;
use msb_core::image::{PullOptions, Puller, Reference};
use test_utils::TestHome;
use test_utils::images::busybox_image;
use test_utils::pull::{runtime, store_tmp_is_empty};
use test_utils::tls::{TlsRegistry, error_chain};

/// Writes `config` as `<home>/config.json` and reads it back the way
/// microsandbox does (the file only; the environment is not consulted).
fn config_from_home(home: &TestHome, config: &str) -> msb_core::Result<RegistryConfig> {
    let path = home.path().join("config.json");
    std::fs::write(&path, config).unwrap();
    RegistryConfig::from_file(&path)
}

fn puller(home: &TestHome, config: RegistryConfig) -> Puller {
    let client = RegistryClient::new(config, Credentials::none()).expect("a registry client");
    Puller::new(
        client,
        ImageStore::open(home.path()).expect("open the test store"),
    )
}

fn pushed_busybox(registry: &TlsRegistry) -> Reference {
    busybox_image()
        .push_blocking(registry.push_target(), "library/busybox", "latest")
        .unwrap();
    registry
        .reference("library/busybox", "latest")
        .parse()
        .unwrap()
}

#[test]
fn pulls_busybox_over_tls_with_the_ca_from_ca_certificates() {
    let registry = TlsRegistry::start();
    let reference = pushed_busybox(&registry);
    let home = TestHome::new();
    let config = config_from_home(&home, &registry.config_json(true)).unwrap();
    assert_eq!(
        config.endpoint(&registry.host()).base_url(),
        registry.url(),
        "the https:// mirror forces TLS for the loopback host"
    );
    let puller = puller(&home, config);

    let pulled = runtime()
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap_or_else(|e| {
            panic!(
                "pull over TLS: {}\nregistry log:\n{}",
                error_chain(&e),
                registry.log_tail(20)
            )
        });
    assert!(pulled.fetched);
    let status = std::process::Command::new(pulled.rootfs.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success(), "the unpacked busybox runs");
    assert!(store_tmp_is_empty(home.path()));
    let records = puller.store().list().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reference, reference);
}

#[test]
fn pulls_over_tls_with_the_ca_from_registry_ca_certificates() {
    let registry = TlsRegistry::start();
    let reference = pushed_busybox(&registry);
    let home = TestHome::new();
    let config = format!(
        r#"{{"registries": {{"{host}": {{"mirror": "https://{host}"}}}},
            "registry_ca_certificates": [{ca}]}}"#,
        host = registry.host(),
        ca = serde_json::Value::String(registry.ca_pem().display().to_string()),
    );
    let config = config_from_home(&home, &config).unwrap();
    let pulled = runtime()
        .block_on(puller(&home, config).pull(&reference, &PullOptions::default()))
        .unwrap_or_else(|e| panic!("pull over TLS: {}", error_chain(&e)));
    assert!(pulled.rootfs.join("bin/busybox").is_file());
}

#[test]
fn without_the_ca_the_pull_is_a_tls_error_and_caches_nothing() {
    let registry = TlsRegistry::start();
    let reference = pushed_busybox(&registry);
    let home = TestHome::new();
    let config = config_from_home(&home, &registry.config_json(false)).unwrap();
    let puller = puller(&home, config);

    let started = Instant::now();
    let err = runtime()
        .block_on(puller.pull(&reference, &PullOptions::default()))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed fast, took {:?}",
        started.elapsed()
    );
    let chain = error_chain(&err);
    match &err {
        Error::Http { url, .. } => assert!(url.starts_with(&registry.url()), "{chain}"),
        other => panic!("expected Error::Http, got {other:?}"),
    }
    assert!(
        chain.to_lowercase().contains("certificate"),
        "the cause names the certificate: {chain}"
    );
    assert!(store_tmp_is_empty(home.path()));
    assert!(puller.store().list().unwrap().is_empty(), "nothing tagged");
}

#[test]
fn a_missing_ca_file_is_an_io_error_naming_it() {
    let home = TestHome::new();
    let missing = home.path().join("no-such-ca.pem");
    let config = format!(
        r#"{{"registries": {{"127.0.0.1:1": {{"mirror": "https://127.0.0.1:1", "ca_certificates": [{}]}}}}}}"#,
        serde_json::Value::String(missing.display().to_string())
    );
    let config = config_from_home(&home, &config).unwrap();
    let err = RegistryClient::new(config, Credentials::none()).unwrap_err();
    match &err {
        Error::Io { path, .. } => assert_eq!(path, &missing),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");
}

#[test]
fn a_ca_file_without_pem_is_an_invalid_config_naming_it() {
    let home = TestHome::new();
    for (name, contents) in [
        ("garbage.pem", &b"not a certificate\n"[..]),
        ("empty.pem", &b""[..]),
    ] {
        let path = home.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let config = format!(
            r#"{{"registry_ca_certificates": [{}]}}"#,
            serde_json::Value::String(path.display().to_string())
        );
        let config = config_from_home(&home, &config).unwrap();
        let err = RegistryClient::new(config, Credentials::none()).unwrap_err();
        match &err {
            Error::InvalidRegistryConfig { origin, .. } => {
                assert_eq!(Path::new(origin), path, "{err}")
            }
            other => panic!("{name}: expected InvalidRegistryConfig, got {other:?}"),
        }
        assert!(err.to_string().contains(name), "{err}");
    }
}
