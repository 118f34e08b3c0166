//! Pulling through the distribution token flow: Debian's `docker-registry`
//! with `auth: token` and a token service (test_utils::token), both on
//! 127.0.0.1. The registry answers `401 Bearer realm=…`, msb-core fetches a
//! token (anonymously or with the credential from a Docker `config.json`)
//! and retries.

use std::future::Future;
use std::time::Duration;

use msb_core::Error;
use msb_core::image::registry::{Credentials, RegistryClient, RegistryConfig};
use msb_core::image::store::ImageStore;
use msb_core::image::{PullOptions, PulledImage, Puller, Reference};
use test_utils::TestHome;
use test_utils::images::busybox_image;
use test_utils::token::{SERVICE, TokenAuthRegistry, TokenPolicy, docker_config_json};

/// Every pull in this file must finish within this.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

fn puller(home: &TestHome, credentials: Credentials) -> Puller {
    let config = RegistryConfig::from_json("{}", "test").unwrap();
    let client = RegistryClient::new(config, credentials).unwrap();
    Puller::new(client, ImageStore::open(home.path()).unwrap())
}

fn run<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(PULL_TIMEOUT, fut)
                .await
                .expect("the pull finished in time")
        })
}

fn pull(puller: &Puller, reference: &Reference) -> Result<PulledImage, Error> {
    run(puller.pull(reference, &PullOptions::default()))
}

/// Credentials read back from a Docker `config.json` written to a temp dir.
fn credentials_from_config(host: &str, user: &str, password: &str) -> Credentials {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, docker_config_json(host, user, password)).unwrap();
    let credentials = Credentials::from_docker_config_file(&path).unwrap();
    assert!(credentials.get(host).is_some(), "config.json parsed");
    credentials
}

fn assert_runs(result: &PulledImage) {
    let status = std::process::Command::new(result.rootfs.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success(), "the unpacked busybox runs");
}

#[test]
fn anonymous_pull_goes_through_the_bearer_flow() {
    let registry = TokenAuthRegistry::start(TokenPolicy::anonymous_pull());
    registry
        .push_blocking(&busybox_image().build(), "library/busybox", "latest")
        .unwrap();
    let home = TestHome::new();
    let reference: Reference = format!("{}/library/busybox:latest", registry.host())
        .parse()
        .unwrap();
    let pulled = pull(&puller(&home, Credentials::none()), &reference).unwrap();
    assert!(pulled.fetched);
    assert_runs(&pulled);

    let requests = registry.token_requests();
    let anonymous: Vec<_> = requests.iter().filter(|r| r.user.is_none()).collect();
    assert!(
        !anonymous.is_empty(),
        "msb-core asked for a token: {requests:?}"
    );
    for request in &anonymous {
        assert_eq!(request.service.as_deref(), Some(SERVICE));
        assert_eq!(request.scopes, ["repository:library/busybox:pull"]);
        assert_eq!(request.status, 200);
    }
}

#[test]
fn credentials_are_required_when_the_service_says_so() {
    let (user, password) = ("alice", "s3cret-pw");
    let registry = TokenAuthRegistry::start(TokenPolicy::user(user, password));
    registry
        .push_blocking(&busybox_image().build(), "team/busybox", "v1")
        .unwrap();
    let host = registry.host();
    let reference: Reference = format!("{host}/team/busybox:v1").parse().unwrap();
    let scope = "repository:team/busybox:pull";

    // No credentials: the token service refuses, the pull is Unauthorized.
    let home = TestHome::new();
    let err = pull(&puller(&home, Credentials::none()), &reference).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    let refused = registry.token_requests();
    assert!(
        refused
            .iter()
            .any(|r| r.user.is_none() && r.status == 401 && r.scopes == [scope]),
        "{refused:?}"
    );

    // A wrong password: Unauthorized too.
    let wrong = credentials_from_config(&host, user, "not-the-password");
    let err = pull(&puller(&home, wrong), &reference).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

    // The right credentials from config.json: the pull succeeds.
    let right = credentials_from_config(&host, user, password);
    let pulled = pull(&puller(&home, right), &reference).unwrap();
    assert!(pulled.fetched);
    assert_runs(&pulled);

    let requests = registry.token_requests();
    let granted: Vec<_> = requests
        .iter()
        .filter(|r| r.user.as_deref() == Some(user) && r.status == 200)
        .collect();
    assert!(!granted.is_empty(), "{requests:?}");
    for request in granted {
        assert_eq!(request.service.as_deref(), Some(SERVICE));
        assert_eq!(request.scopes, [scope]);
    }
    assert!(
        requests
            .iter()
            .filter(|r| r.user.as_deref() == Some(user))
            .any(|r| r.status == 401),
        "the wrong password was refused: {requests:?}"
    );
}

#[test]
fn an_anonymous_token_does_not_grant_push() {
    let registry = TokenAuthRegistry::start(TokenPolicy::anonymous_pull());
    let scope = "repository:some/repo:pull,push";
    let start_upload = |basic: Option<(&str, &str)>| {
        run(async {
            let token = registry.fetch_token(scope, basic).await.unwrap();
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .post(format!(
                    "{}/v2/some/repo/blobs/uploads/",
                    registry.registry().url()
                ))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Length", "0")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(start_upload(None), 401, "a pull-only token cannot upload");
    assert_eq!(
        start_upload(Some(registry.admin())),
        202,
        "the admin's push token can"
    );
}
