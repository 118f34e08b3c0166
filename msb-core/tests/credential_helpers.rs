//! Docker credential helpers (`credsStore`, `credHelpers`): real helper
//! executables (`#!/bin/sh` scripts named `docker-credential-<x>`) in a temp
//! directory that the [`Credentials`] search for helpers in (the process'
//! `PATH` is never changed: tests run in parallel), and one pull from a
//! basic-auth registry whose credentials come from a helper.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msb_core::Error;
use msb_core::image::registry::Credentials;
use msb_core::image::registry::credentials::{
    CredentialHelperErrorKind, DOCKER_HUB_SERVER_URL, HostCredential,
};
use msb_core::image::{PullOptions, Reference};
use test_utils::TestHome;
use test_utils::images::busybox_image;
use test_utils::registry::TestRegistry;

/// A directory of helper scripts.
struct Helpers {
    dir: tempfile::TempDir,
}

impl Helpers {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `docker-credential-<name>` running `body` under `/bin/sh`.
    fn add(&self, name: &str, body: &str) -> &Self {
        let path = self.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// `config.json` text parsed, looking for helpers only here.
    fn credentials(&self, config: &str) -> Credentials {
        Credentials::from_docker_config(config, "test config")
            .unwrap()
            .with_helper_path(self.path())
    }

    /// A file in the directory.
    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), fut)
                .await
                .expect("finished in time")
        })
}

/// A helper answering `{"Username": user, "Secret": secret}`.
fn answering(user: &str, secret: &str) -> String {
    format!(r#"cat >/dev/null; echo '{{"ServerURL":"x","Username":"{user}","Secret":"{secret}"}}'"#)
}

fn basic(creds: &Credentials, host: &str) -> (String, String) {
    match block_on(creds.resolve(host)).unwrap() {
        Some(HostCredential::Basic(c)) => (c.username, c.password),
        other => panic!("{host}: {other:?}"),
    }
}

fn helper_error(creds: &Credentials, host: &str) -> (String, String, CredentialHelperErrorKind) {
    match block_on(creds.resolve(host)) {
        Err(Error::CredentialHelper {
            helper,
            server,
            reason,
        }) => (helper, server, reason),
        other => panic!("{host}: expected a credential helper error, got {other:?}"),
    }
}

#[test]
fn cred_helpers_beat_creds_store_beat_auths() {
    let helpers = Helpers::new();
    helpers
        .add("special", &answering("from-special", "s1"))
        .add("store", &answering("from-store", "s2"));
    let creds = helpers.credentials(
        r#"{
            "auths": {
                "a.example": {"auth": "YXV0aHM6cHc="},
                "b.example": {"auth": "YXV0aHM6cHc="},
                "c.example": {"auth": "YXV0aHM6cHc="}
            },
            "credHelpers": {"a.example": "special", "c.example": ""},
            "credsStore": "store"
        }"#,
    );
    assert_eq!(
        basic(&creds, "a.example"),
        ("from-special".into(), "s1".into())
    );
    assert_eq!(
        basic(&creds, "b.example"),
        ("from-store".into(), "s2".into())
    );
    assert_eq!(basic(&creds, "c.example"), ("auths".into(), "pw".into()));
    // A host with no auths entry at all: credsStore.
    assert_eq!(basic(&creds, "d.example:5000").0, "from-store");

    // Without credsStore, a host without a credHelpers entry uses auths.
    let creds = helpers.credentials(
        r#"{"auths": {"b.example": {"auth": "YXV0aHM6cHc="}},
            "credHelpers": {"a.example": "special"}}"#,
    );
    assert_eq!(basic(&creds, "a.example").0, "from-special");
    assert_eq!(basic(&creds, "b.example").0, "auths");
    assert_eq!(block_on(creds.resolve("z.example")).unwrap(), None);
}

#[test]
fn helper_gets_the_server_url_on_stdin() {
    let helpers = Helpers::new();
    // Echoes its argument and stdin back.
    helpers.add(
        "echo",
        r#"url=$(cat); printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}' "$url" "$url" "$1""#,
    );
    let creds = helpers.credentials(r#"{"credsStore": "echo"}"#);
    assert_eq!(
        basic(&creds, "127.0.0.1:5000"),
        ("127.0.0.1:5000".into(), "get".into())
    );
    // Docker Hub is asked about by Docker's key for it, whatever host the
    // client talks to.
    assert_eq!(
        basic(&creds, "registry-1.docker.io").0,
        DOCKER_HUB_SERVER_URL
    );
    assert_eq!(
        basic(&creds, "https://index.docker.io/v1/").0,
        DOCKER_HUB_SERVER_URL
    );
    // A credHelpers entry keyed by Docker's Hub URL covers the API host.
    let creds = helpers.credentials(r#"{"credHelpers": {"https://index.docker.io/v1/": "echo"}}"#);
    assert_eq!(
        basic(&creds, "registry-1.docker.io").0,
        DOCKER_HUB_SERVER_URL
    );
}

#[test]
fn credentials_not_found_means_anonymous() {
    let helpers = Helpers::new();
    helpers.add(
        "empty",
        "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
    );
    let creds =
        helpers.credentials(r#"{"auths": {"h.example": {"auth": "YTpi"}}, "credsStore": "empty"}"#);
    // The helper's answer wins over auths, as in Docker.
    assert_eq!(block_on(creds.resolve("h.example")).unwrap(), None);
    assert_eq!(block_on(creds.lookup("h.example")).unwrap(), None);
}

#[test]
fn helper_missing_from_the_search_path_is_a_typed_error() {
    let helpers = Helpers::new();
    let creds = helpers.credentials(r#"{"credHelpers": {"h.example:5000": "nope"}}"#);
    let (helper, server, reason) = helper_error(&creds, "h.example:5000");
    assert_eq!(helper, "docker-credential-nope");
    assert_eq!(server, "h.example:5000");
    match reason {
        CredentialHelperErrorKind::NotFound { searched } => {
            assert_eq!(searched, [helpers.path().to_path_buf()])
        }
        other => panic!("{other:?}"),
    }
    // Not executable counts as missing too.
    std::fs::write(helpers.path().join("docker-credential-nope"), "#!/bin/sh\n").unwrap();
    assert!(matches!(
        helper_error(&creds, "h.example:5000").2,
        CredentialHelperErrorKind::NotFound { .. }
    ));
}

#[test]
fn failing_helper_is_a_typed_error_with_its_first_stderr_line() {
    let helpers = Helpers::new();
    helpers.add(
        "broken",
        "cat >/dev/null; echo 'some stdout'; echo 'keychain is locked' >&2; echo 'more detail' >&2; exit 1",
    );
    let creds = helpers.credentials(r#"{"credsStore": "broken"}"#);
    let err = block_on(creds.resolve("r.example")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("docker-credential-broken"), "{text}");
    assert!(text.contains("r.example"), "{text}");
    let Error::CredentialHelper { reason, .. } = err else {
        panic!("{err:?}")
    };
    match reason {
        CredentialHelperErrorKind::Failed { status, message } => {
            assert_eq!(status.code(), Some(1));
            assert_eq!(message, "keychain is locked");
        }
        other => panic!("{other:?}"),
    }
    // Failures are not cached: a fixed helper is run again.
    helpers.add("broken", &answering("fixed", "pw"));
    assert_eq!(basic(&creds, "r.example").0, "fixed");
}

#[test]
fn bad_json_is_a_typed_error() {
    let helpers = Helpers::new();
    helpers
        .add("garbage", "cat >/dev/null; echo 'this is not json'")
        .add(
            "wrongtype",
            r#"cat >/dev/null; echo '{"Username": "u", "Secret": 1234567}'"#,
        );
    let creds = helpers.credentials(r#"{"credHelpers": {"g": "garbage", "w": "wrongtype"}}"#);
    assert!(matches!(
        helper_error(&creds, "g").2,
        CredentialHelperErrorKind::InvalidOutput { .. }
    ));
    let (_, _, reason) = helper_error(&creds, "w");
    assert!(
        matches!(reason, CredentialHelperErrorKind::InvalidOutput { .. }),
        "{reason:?}"
    );
    assert!(!reason.to_string().contains("1234567"), "{reason}");
}

#[test]
fn slow_helper_times_out_and_is_killed() {
    let helpers = Helpers::new();
    let pid_file = helpers.file("slow.pid");
    helpers.add(
        "slow",
        &format!("echo $$ > '{}'; exec sleep 30", pid_file.display()),
    );
    let creds = helpers
        .credentials(r#"{"credsStore": "slow"}"#)
        .with_helper_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let (helper, server, reason) = helper_error(&creds, "slow.example");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (helper.as_str(), server.as_str()),
        ("docker-credential-slow", "slow.example")
    );
    assert!(
        matches!(reason, CredentialHelperErrorKind::TimedOut { timeout } if timeout == Duration::from_millis(500)),
        "{reason:?}"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Killed and reaped: no process (not even a zombie) is left.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "helper {pid} still exists"
    );
}

#[test]
fn answers_are_cached_per_host_and_helpers_run_only_when_asked() {
    let helpers = Helpers::new();
    let log = helpers.file("runs.log");
    helpers.add(
        "counted",
        &format!(
            r#"url=$(cat); echo "$url" >> '{}'; echo '{{"Username":"u","Secret":"p"}}'"#,
            log.display()
        ),
    );
    let creds = helpers.credentials(
        r#"{"credsStore": "counted", "credHelpers": {"static.example": ""},
            "auths": {"static.example": {"auth": "YTpi"}}}"#,
    );
    let runs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(runs(), "", "building Credentials runs no helper");
    assert_eq!(basic(&creds, "static.example").0, "a");
    assert_eq!(runs(), "", "a host without a helper runs none");

    let clone = creds.clone();
    assert_eq!(basic(&creds, "one.example").0, "u");
    assert_eq!(basic(&creds, "one.example").0, "u");
    assert_eq!(basic(&clone, "http://one.example/v2/").0, "u");
    assert_eq!(
        runs(),
        "one.example\n",
        "one run for one host, clones share it"
    );
    assert_eq!(basic(&creds, "two.example").0, "u");
    assert_eq!(runs(), "one.example\ntwo.example\n");
}

#[test]
fn token_username_from_a_helper_is_an_identity_token() {
    let helpers = Helpers::new();
    helpers.add("idtok", &answering("<token>", "refresh-token-value"));
    let creds = helpers.credentials(r#"{"credsStore": "idtok"}"#);
    match block_on(creds.resolve("r.example")).unwrap() {
        Some(HostCredential::IdentityToken { username, token }) => {
            assert_eq!(username, None);
            assert_eq!(token.secret(), "refresh-token-value");
        }
        other => panic!("{other:?}"),
    }
    // Never sent as a password: the client goes anonymous.
    assert_eq!(block_on(creds.lookup("r.example")).unwrap(), None);
}

fn pull(
    home: &TestHome,
    registry: &TestRegistry,
    credentials: Credentials,
    repository: &str,
) -> msb_core::Result<msb_core::image::PulledImage> {
    let reference: Reference = format!("{}/{repository}", registry.host()).parse().unwrap();
    let puller = test_utils::pull::puller(home.path(), credentials);
    test_utils::pull::runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            puller.pull(&reference, &PullOptions::default()),
        )
        .await
        .expect("the pull finished in time")
    })
}

#[test]
fn pull_from_a_basic_auth_registry_with_credentials_from_a_helper() {
    let registry = TestRegistry::start_with_basic_auth("ci", "helper-secret");
    busybox_image()
        .push_blocking(&registry, "private/busybox", "v1")
        .unwrap();
    let helpers = Helpers::new();
    let log = helpers.file("runs.log");
    // Answers only for this registry's host, as a keychain would.
    helpers.add(
        "e2e",
        &format!(
            r#"url=$(cat); echo "$url" >> '{log}'
if [ "$url" = '{host}' ]; then
  echo '{{"ServerURL":"{host}","Username":"ci","Secret":"helper-secret"}}'
else
  echo 'credentials not found in native keychain'; exit 1
fi"#,
            log = log.display(),
            host = registry.host(),
        ),
    );
    let creds = helpers.credentials(r#"{"credsStore": "e2e"}"#);
    let home = TestHome::new();
    let pulled = pull(&home, &registry, creds, "private/busybox:v1").unwrap();
    assert!(pulled.fetched);
    assert!(pulled.rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{}\n", registry.host()),
        "the helper ran once, for the registry"
    );

    // A helper with nothing for the registry: anonymous, and refused.
    helpers.add(
        "nothing",
        "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
    );
    let err = pull(
        &TestHome::new(),
        &registry,
        helpers.credentials(r#"{"credsStore": "nothing"}"#),
        "private/busybox:v1",
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");

    // A broken helper fails the pull with its typed error.
    let err = pull(
        &TestHome::new(),
        &registry,
        helpers.credentials(r#"{"credsStore": "missing"}"#),
        "private/busybox:v1",
    )
    .unwrap_err();
    assert!(matches!(err, Error::CredentialHelper { .. }), "{err:?}");
}

#[test]
fn an_anonymous_registry_never_runs_the_helper() {
    let registry = TestRegistry::start();
    busybox_image()
        .push_blocking(&registry, "library/busybox", "latest")
        .unwrap();
    let helpers = Helpers::new();
    // `docker-credential-missing` does not exist: running it would fail.
    let creds = helpers.credentials(r#"{"credsStore": "missing"}"#);
    let pulled = pull(&TestHome::new(), &registry, creds, "library/busybox:latest").unwrap();
    assert!(pulled.fetched);
}
