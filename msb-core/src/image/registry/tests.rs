//! Protocol tests against a real HTTP server on 127.0.0.1 (see
//! `test_server`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::manifest::{DOCKER_MANIFEST_LIST, OCI_MANIFEST, digest_of};
use super::test_server::{Reply, Request, TestServer};
use super::*;
use crate::image::{Digest, DigestAlgorithm};

const LIMIT: Duration = Duration::from_secs(20);

fn sha256(bytes: &[u8]) -> Digest {
    digest_of(DigestAlgorithm::Sha256, bytes)
}

fn blob_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

fn client(credentials: Credentials) -> RegistryClient {
    RegistryClient::new(RegistryConfig::default(), credentials)
        .unwrap()
        .with_retry(fast_retry(3))
}

fn alice() -> Credentials {
    let mut creds = Credentials::none();
    creds.insert(
        "127.0.0.1", // wrong host: must not be used
        Credential {
            username: "mallory".into(),
            password: "x".into(),
        },
    );
    creds
}

fn image_manifest(layer: &Digest, size: usize) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                   "digest": sha256(b"{}").to_string()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "size": size, "digest": layer.to_string()}],
    })
    .to_string()
    .into_bytes()
}

fn path_of(request: &Request) -> &str {
    request.path.split('?').next().unwrap_or_default()
}

#[tokio::test]
async fn registry_bearer_token_flow() {
    tokio::time::timeout(LIMIT, async {
        let blob = blob_bytes(5000);
        let blob_digest = sha256(&blob);
        let manifest = image_manifest(&blob_digest, blob.len());
        let realm = Arc::new(OnceLock::<String>::new());
        let token_requests = Arc::new(AtomicUsize::new(0));
        let server = {
            let (realm, token_requests, blob, manifest, blob_digest) = (
                realm.clone(),
                token_requests.clone(),
                blob.clone(),
                manifest.clone(),
                blob_digest.clone(),
            );
            TestServer::start(move |req| {
                if path_of(req) == "/token" {
                    token_requests.fetch_add(1, Ordering::SeqCst);
                    let query_ok = req.path.contains("service=x")
                        && req.path.contains("scope=repository%3Ateam%2Fapp%3Apull");
                    let creds_ok = req.header("authorization")
                        == Some(
                            &Credential {
                                username: "alice".into(),
                                password: "s3cret".into(),
                            }
                            .basic_header()[..],
                        );
                    return if query_ok && creds_ok {
                        Reply::new(200, r#"{"token":"tok123","expires_in":300}"#)
                    } else {
                        Reply::new(401, "")
                    };
                }
                if req.header("authorization") != Some("Bearer tok123") {
                    let challenge = format!(
                        r#"Bearer realm="{}",service="x",scope="repository:team/app:pull""#,
                        realm.get().unwrap()
                    );
                    return Reply::new(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)
                        .header("WWW-Authenticate", challenge);
                }
                match path_of(req) {
                    "/v2/team/app/manifests/v1" => {
                        Reply::new(200, manifest.clone()).header("Content-Type", OCI_MANIFEST)
                    }
                    p if p == format!("/v2/team/app/blobs/{blob_digest}") => {
                        Reply::new(200, blob.clone())
                    }
                    _ => Reply::new(404, ""),
                }
            })
            .await
        };
        realm
            .set(format!("http://{}/token", server.host()))
            .unwrap();
        let reference: Reference = format!("{}/team/app:v1", server.host()).parse().unwrap();

        let mut creds = alice();
        creds.insert(
            &server.host(),
            Credential {
                username: "alice".into(),
                password: "s3cret".into(),
            },
        );
        let client = client(creds);
        let fetched = client.fetch_manifest(&reference).await.unwrap();
        assert_eq!(fetched.digest, sha256(&manifest));
        let Manifest::Image(image) = &fetched.manifest else {
            panic!("not an image manifest")
        };
        assert_eq!(image.layers[0].digest, blob_digest);

        let mut out = Vec::new();
        let n = client
            .download_blob(
                &reference,
                &blob_digest,
                Some(blob.len() as u64),
                &mut out,
                None,
            )
            .await
            .unwrap();
        assert_eq!((n, out), (blob.len() as u64, blob.clone()));
        // The token for the scope was cached: fetched once for both requests.
        assert_eq!(token_requests.load(Ordering::SeqCst), 1);
        // A clone shares the cache.
        client.clone().fetch_manifest(&reference).await.unwrap();
        assert_eq!(token_requests.load(Ordering::SeqCst), 1);

        // Anonymous: the token endpoint refuses, so the registry does too.
        match self::client(alice()).fetch_manifest(&reference).await {
            Err(Error::Unauthorized {
                registry,
                repository,
            }) => {
                assert_eq!((registry, repository.as_str()), (server.host(), "team/app"));
            }
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn registry_basic_auth() {
    tokio::time::timeout(LIMIT, async {
        let manifest = image_manifest(&sha256(b"layer"), 5);
        let expected_header = Credential {
            username: "bob".into(),
            password: "hunter2".into(),
        }
        .basic_header();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (manifest, seen, expected_header) =
                (manifest.clone(), seen.clone(), expected_header.clone());
            TestServer::start(move |req| {
                seen.lock()
                    .unwrap()
                    .push(req.header("authorization").map(str::to_owned));
                if req.header("authorization") != Some(&expected_header[..]) {
                    return Reply::new(401, "").header("WWW-Authenticate", r#"Basic realm="r""#);
                }
                // No Content-Type: typed from the document's mediaType.
                Reply::new(200, manifest.clone())
            })
            .await
        };
        let reference: Reference = format!("{}/app", server.host()).parse().unwrap();

        let mut creds = Credentials::none();
        creds.insert(
            &format!("http://{}/", server.host()),
            Credential {
                username: "bob".into(),
                password: "hunter2".into(),
            },
        );
        let client = client(creds);
        let fetched = client.fetch_manifest(&reference).await.unwrap();
        assert_eq!(fetched.media_type, OCI_MANIFEST);
        client.fetch_manifest(&reference).await.unwrap();
        // First request anonymous, then basic; the second fetch sends basic
        // straight away.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], None);
        assert!(
            seen[1..]
                .iter()
                .all(|h| h.as_deref() == Some(&expected_header[..]))
        );

        assert!(matches!(
            self::client(Credentials::none())
                .fetch_manifest(&reference)
                .await,
            Err(Error::Unauthorized { .. })
        ));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn registry_index_platforms_mirror_and_digest_checks() {
    tokio::time::timeout(LIMIT, async {
        let amd64 = image_manifest(&sha256(b"amd64 layer"), 11);
        let arm64 = image_manifest(&sha256(b"arm64 layer"), 11);
        let tampered_child = sha256(b"what the index promises");
        let entry = |digest: &Digest, size: usize, arch: &str, variant: Option<&str>| {
            let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                platform["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": digest.to_string(), "size": size, "platform": platform,
            })
        };
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                entry(&sha256(&arm64), arm64.len(), "arm64", Some("v8")),
                entry(&sha256(&amd64), amd64.len(), "amd64", None),
                entry(&tampered_child, 10, "riscv64", None),
            ],
        })
        .to_string()
        .into_bytes();
        let server = {
            let (index, amd64, arm64, tampered_child) = (
                index.clone(),
                amd64.clone(),
                arm64.clone(),
                tampered_child.clone(),
            );
            TestServer::start(move |req| {
                let path = path_of(req);
                let by_digest = |d: &Digest| path == format!("/v2/library/app/manifests/{d}");
                if path == "/v2/library/app/manifests/latest" {
                    Reply::new(200, index.clone())
                        .header("Content-Type", DOCKER_MANIFEST_LIST)
                        .header("Docker-Content-Digest", sha256(&index).to_string())
                } else if path == "/v2/library/app/manifests/lying" {
                    Reply::new(200, amd64.clone())
                        .header("Content-Type", OCI_MANIFEST)
                        .header("Docker-Content-Digest", sha256(b"other").to_string())
                } else if by_digest(&sha256(&amd64)) {
                    Reply::new(200, amd64.clone()).header("Content-Type", OCI_MANIFEST)
                } else if by_digest(&sha256(&arm64)) {
                    Reply::new(200, arm64.clone()).header("Content-Type", OCI_MANIFEST)
                } else if by_digest(&tampered_child) {
                    Reply::new(200, amd64.clone()).header("Content-Type", OCI_MANIFEST)
                } else {
                    Reply::new(
                        404,
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                    )
                }
            })
            .await
        };
        // Reached through a mirror: `mirror.example` is mapped to the server.
        let mut config = RegistryConfig::default();
        config
            .apply_env(
                Some(&format!("mirror.example=http://{}", server.host())),
                None,
            )
            .unwrap();
        let client = RegistryClient::new(config, Credentials::none()).unwrap();
        let reference: Reference = "mirror.example/library/app".parse().unwrap();

        let resolved = client
            .resolve(&reference, &Platform::default())
            .await
            .unwrap();
        assert_eq!(resolved.digest, sha256(&amd64));
        assert_eq!(resolved.bytes, amd64);
        let index_fetched = resolved.index.expect("resolved through the index");
        assert_eq!(index_fetched.digest, sha256(&index));
        assert_eq!(index_fetched.media_type, DOCKER_MANIFEST_LIST);

        let arm = client
            .resolve(&reference, &"linux/arm64".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(arm.digest, sha256(&arm64));

        match client
            .resolve(&reference, &"linux/s390x".parse().unwrap())
            .await
        {
            Err(Error::NoMatchingPlatform {
                reference,
                wanted,
                available,
            }) => {
                assert_eq!(reference, "mirror.example/library/app:latest");
                assert_eq!(wanted, "linux/s390x");
                assert_eq!(
                    available,
                    ["linux/arm64/v8", "linux/amd64", "linux/riscv64"]
                );
            }
            other => panic!("{other:?}"),
        }

        // The index points at a digest the registry serves other bytes for.
        match client
            .resolve(&reference, &"linux/riscv64".parse().unwrap())
            .await
        {
            Err(Error::DigestMismatch { expected, actual }) => {
                assert_eq!((expected, actual), (tampered_child.clone(), sha256(&amd64)));
            }
            other => panic!("{other:?}"),
        }
        // By tag, the bytes must match Docker-Content-Digest.
        let lying: Reference = "mirror.example/library/app:lying".parse().unwrap();
        assert!(matches!(
            client.fetch_manifest(&lying).await,
            Err(Error::DigestMismatch { .. })
        ));
        // By digest in the reference.
        let pinned: Reference = format!("mirror.example/library/app@{}", sha256(&arm64))
            .parse()
            .unwrap();
        assert_eq!(
            client.fetch_manifest(&pinned).await.unwrap().digest,
            sha256(&arm64)
        );

        let missing: Reference = "mirror.example/library/app:nope".parse().unwrap();
        match client.fetch_manifest(&missing).await {
            Err(Error::ManifestUnknown { reference }) => {
                assert_eq!(reference, "mirror.example/library/app:nope");
            }
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("test timed out");
}

/// A blob server: `respond(attempt, request, blob)` scripts each answer.
async fn blob_server(
    blob: Vec<u8>,
    respond: impl Fn(usize, &Request, &[u8]) -> Reply + Send + Sync + 'static,
) -> (TestServer, Arc<Mutex<Vec<Option<String>>>>) {
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let server = {
        let ranges = ranges.clone();
        TestServer::start(move |req| {
            let mut ranges = ranges.lock().unwrap();
            ranges.push(req.header("range").map(str::to_owned));
            respond(ranges.len(), req, &blob)
        })
        .await
    };
    (server, ranges)
}

fn range_start(req: &Request) -> Option<usize> {
    req.header("range")?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

#[tokio::test]
async fn registry_blob_resumes_after_dropped_connection() {
    tokio::time::timeout(LIMIT, async {
        let blob = blob_bytes(700_000);
        let digest = sha256(&blob);
        let (server, ranges) = blob_server(blob.clone(), |attempt, req, blob| {
            let start = range_start(req).unwrap_or(0);
            let rest = blob[start..].to_vec();
            let reply = if start > 0 {
                Reply::new(206, rest).header(
                    "Content-Range",
                    format!("bytes {start}-{}/{}", blob.len() - 1, blob.len()),
                )
            } else {
                Reply::new(200, rest)
            };
            // The first two connections drop mid-body.
            if attempt <= 2 {
                reply.cut_after(300_000)
            } else {
                reply
            }
        })
        .await;
        let reference: Reference = format!("{}/team/app", server.host()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let n = client(Credentials::none())
            .download_blob_to_path(
                &reference,
                &digest,
                Some(blob.len() as u64),
                &dest,
                Some(&tx),
            )
            .await
            .unwrap();
        assert_eq!(n, blob.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), blob);
        assert!(!blob::partial_path(&dest).exists());
        assert_eq!(
            *ranges.lock().unwrap(),
            [
                None,
                Some("bytes=300000-".to_owned()),
                Some("bytes=600000-".to_owned())
            ]
        );
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        assert_eq!(events.first().unwrap().downloaded, 0);
        let last = events.last().unwrap();
        assert_eq!(
            (last.downloaded, last.total, &last.digest),
            (blob.len() as u64, Some(blob.len() as u64), &digest)
        );
        assert!(
            events
                .windows(2)
                .all(|w| w[0].downloaded <= w[1].downloaded)
        );
        assert!(events.len() >= 3);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn registry_blob_restarts_when_range_ignored() {
    tokio::time::timeout(LIMIT, async {
        let blob = blob_bytes(200_000);
        let digest = sha256(&blob);
        // Ranges are ignored: always the whole blob with 200.
        let (server, ranges) = blob_server(blob.clone(), |attempt, _req, blob| {
            let reply = Reply::new(200, blob.to_vec());
            if attempt == 1 {
                reply.cut_after(123_456)
            } else {
                reply
            }
        })
        .await;
        let reference: Reference = format!("{}/team/app", server.host()).parse().unwrap();
        let mut out = Vec::new();
        let calls = AtomicUsize::new(0);
        let sink = ProgressFn(|_p: Progress| {
            calls.fetch_add(1, Ordering::SeqCst);
        });
        client(Credentials::none())
            .download_blob(
                &reference,
                &digest,
                Some(blob.len() as u64),
                &mut out,
                Some(&sink),
            )
            .await
            .unwrap();
        assert_eq!(out, blob);
        assert_eq!(ranges.lock().unwrap().len(), 2);
        assert!(calls.load(Ordering::SeqCst) >= 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn registry_blob_digest_mismatch_leaves_nothing() {
    tokio::time::timeout(LIMIT, async {
        let blob = blob_bytes(50_000);
        let digest = sha256(&blob);
        let (server, _) = blob_server(blob.clone(), |_, _, blob| {
            let mut wrong = blob.to_vec();
            wrong[100] ^= 1;
            Reply::new(200, wrong)
        })
        .await;
        let reference: Reference = format!("{}/team/app", server.host()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        match client(Credentials::none())
            .download_blob_to_path(&reference, &digest, Some(blob.len() as u64), &dest, None)
            .await
        {
            Err(Error::DigestMismatch { expected, actual }) => {
                assert_eq!(expected, digest);
                assert_ne!(actual, digest);
            }
            other => panic!("{other:?}"),
        }
        assert!(!dest.exists());
        assert!(!blob::partial_path(&dest).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // More bytes than the descriptor says: refused before writing them.
        let (server, _) = blob_server(blob.clone(), |_, _, blob| {
            Reply::new(200, [blob, b"extra"].concat())
        })
        .await;
        let reference: Reference = format!("{}/team/app", server.host()).parse().unwrap();
        assert!(matches!(
            client(Credentials::none())
                .download_blob_to_path(&reference, &digest, Some(blob.len() as u64), &dest, None)
                .await,
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn registry_blob_truncated_after_retries() {
    tokio::time::timeout(LIMIT, async {
        let blob = blob_bytes(80_000);
        let digest = sha256(&blob);
        // Every answer (ranged or not) drops after 10 000 bytes.
        let (server, ranges) = blob_server(blob.clone(), |_, req, blob| {
            let start = range_start(req).unwrap_or(0);
            let status = if start > 0 { 206 } else { 200 };
            Reply::new(status, blob[start..].to_vec())
                .header(
                    "Content-Range",
                    format!("bytes {start}-{}/{}", blob.len() - 1, blob.len()),
                )
                .cut_after(10_000)
        })
        .await;
        let reference: Reference = format!("{}/team/app", server.host()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob");
        match client(Credentials::none())
            .download_blob_to_path(&reference, &digest, Some(blob.len() as u64), &dest, None)
            .await
        {
            Err(Error::BlobTruncated {
                digest: d,
                expected,
                got,
            }) => {
                assert_eq!((d, expected, got), (digest.clone(), 80_000, 30_000));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ranges.lock().unwrap().len(), 3);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // A clean but short answer (Content-Length itself short) is truncation too.
        let (server, _) = blob_server(blob.clone(), |_, _, blob| {
            Reply::new(200, blob[..1000].to_vec())
        })
        .await;
        let reference: Reference = format!("{}/team/app", server.host()).parse().unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            client(Credentials::none())
                .with_retry(fast_retry(2))
                .download_blob(&reference, &digest, Some(blob.len() as u64), &mut out, None)
                .await,
            Err(Error::BlobTruncated { got: 1000, .. })
        ));
    })
    .await
    .expect("test timed out");
}
