//! Hostile input: manifest and index JSON parsing
//! ([`parse_manifest`]) as a bounded, deterministic fuzz loop, plus the
//! registry's `WWW-Authenticate` challenge parser.
//!
//! Valid OCI/Docker manifests and indexes are mutated structurally (values
//! swapped for other JSON types, huge and negative numbers, missing fields,
//! unknown media types, deep nesting) and byte-wise (truncation, flips,
//! insertions). Parsing must never panic, and a failure must be one of the
//! typed errors a registry answer can produce: `InvalidManifest` or
//! `UnsupportedMediaType`. Whatever parses must be internally consistent
//! (the media type matches the variant).
//!
//! `MSB_FUZZ_ITERS` sets the iteration count (default 2 500: about 4 s
//! in a debug build).

use msb_core::Error;
use msb_core::image::registry::auth::parse_challenge;
use msb_core::image::registry::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, parse_manifest,
};
use msb_core::image::registry::{Manifest, Platform};
use serde_json::{Value, json};

use test_utils::fuzz::Rng;

fn fuzz_iterations() -> usize {
    test_utils::fuzz::iterations(2_500)
}

const MEDIA_TYPES: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "",
    "text/html; charset=utf-8",
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
];

fn digest(i: usize) -> String {
    format!("sha256:{}", format!("{:x}", i % 16).repeat(64))
}

fn seeds() -> Vec<Value> {
    let layer = |i: usize| {
        json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest(i),
            "size": 1000 + i,
            "annotations": {"org.opencontainers.image.title": format!("layer{i}")}
        })
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(9), "size": 321},
        "layers": [layer(1), layer(2), layer(3)],
        "annotations": {"a": "b"}
    });
    let mut docker = manifest.clone();
    docker["mediaType"] = DOCKER_MANIFEST.into();
    let mut bare = manifest.clone();
    bare.as_object_mut().unwrap().remove("mediaType");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest(4), "size": 500,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": digest(5), "size": 501,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8",
                          "os.features": ["x"], "features": []}},
            {"mediaType": "application/vnd.in-toto+json", "digest": digest(6), "size": 7,
             "platform": {"os": "unknown", "architecture": "unknown"}}
        ]
    });
    let mut list = index.clone();
    list["mediaType"] = DOCKER_MANIFEST_LIST.into();
    let mut bare_index = index.clone();
    bare_index.as_object_mut().unwrap().remove("mediaType");
    vec![manifest, docker, bare, index, list, bare_index]
}

/// A JSON value of a random type, sometimes hostile.
fn random_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => true.into(),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(1e308),
        6 => serde_json::from_str("1e400").unwrap_or(Value::Null),
        7 => json!(""),
        8 => json!("sha256:zz"),
        9 => json!(digest(rng.below(16))),
        10 => json!([]),
        11 => json!({}),
        12 => json!(rng.pick(MEDIA_TYPES)),
        _ => json!("\u{0}\u{ffff}é".repeat(1 + rng.below(4))),
    }
}

/// Every path (object keys and array indexes) into `v`.
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(PathStep::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        PathStep::Key(k) => &mut v[k.as_str()],
        PathStep::Index(i) => &mut v[*i],
    })
}

/// A structural mutation of `doc`.
fn mutate_structure(rng: &mut Rng, doc: &mut Value) {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = all[rng.below(all.len())].clone();
    match rng.below(6) {
        // Swap a value for another type.
        0 | 1 => *at(doc, &path) = random_value(rng),
        // Remove a field or element.
        2 if !path.is_empty() => {
            let (last, parent) = path.split_last().unwrap();
            match (at(doc, parent), last) {
                (Value::Object(map), PathStep::Key(k)) => {
                    map.remove(k);
                }
                (Value::Array(items), PathStep::Index(i)) if *i < items.len() => {
                    items.remove(*i);
                }
                _ => {}
            }
        }
        // Add an unknown field or extra element.
        3 => match at(doc, &path) {
            Value::Object(map) => {
                map.insert(format!("x{}", rng.below(10)), random_value(rng));
            }
            Value::Array(items) => items.push(random_value(rng)),
            _ => {}
        },
        // Deep nesting.
        4 => {
            // Around serde_json's recursion limit (128). Deeper documents are
            // written as text in `hostile_manifests_are_typed_errors`: a
            // `Value` that deep overflows the stack on its own when
            // serialized or dropped.
            let depth = rng.pick(&[2usize, 64, 127, 128, 129, 300]);
            let mut v = random_value(rng);
            for _ in 0..depth {
                v = if rng.below(2) == 0 {
                    json!([v])
                } else {
                    json!({ "n": v })
                };
            }
            *at(doc, &path) = v;
        }
        // Media type games.
        _ => {
            if let Value::Object(map) = doc {
                map.insert("mediaType".into(), rng.pick(MEDIA_TYPES).into());
            }
        }
    }
}

/// A byte-level mutation.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let at = rng.below(b.len());
                b[at] = rng.next_u64() as u8;
            }
            1 if !b.is_empty() => {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            2 => {
                let at = rng.below(b.len() + 1);
                let piece: &[u8] = rng.pick(&[
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b"\"",
                    b",",
                    b":",
                    b"\\u0000",
                    b"\xff",
                    b"9999999999999999999999",
                ]);
                b.splice(at..at, piece.iter().copied());
            }
            3 if !b.is_empty() => {
                b.remove(rng.below(b.len()));
            }
            _ => b.truncate(rng.below(b.len() + 1)),
        }
    }
}

/// Deeply nested JSON written as text (never built as a `Value`, whose
/// recursive drop could overflow the stack on its own).
fn nested_text(depth: usize, open: &str, close: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{}{}}}"#,
        open.repeat(depth),
        close.repeat(depth)
    )
    .into_bytes()
}

/// Checks one input; returns whether it parsed.
fn check(bytes: &[u8], content_type: Option<&str>) -> bool {
    match parse_manifest(bytes, content_type, "fuzz") {
        Ok((media_type, manifest)) => {
            match &manifest {
                Manifest::Image(m) => {
                    assert!(
                        [OCI_MANIFEST, DOCKER_MANIFEST].contains(&media_type.as_str()),
                        "{media_type}"
                    );
                    for d in std::iter::once(&m.config).chain(&m.layers) {
                        // Parsed digests are valid and display as parsed.
                        assert!(
                            d.digest
                                .to_string()
                                .parse::<msb_core::image::Digest>()
                                .is_ok()
                        );
                    }
                }
                Manifest::Index(index) => {
                    assert!(
                        [OCI_INDEX, DOCKER_MANIFEST_LIST].contains(&media_type.as_str()),
                        "{media_type}"
                    );
                    // Platform selection over hostile entries never panics.
                    let _ = index.select(&Platform::host(), "fuzz");
                    let _ = index.select(&Platform::default(), "fuzz");
                }
            }
            true
        }
        Err(Error::InvalidManifest { reference, .. }) => {
            assert_eq!(reference, "fuzz");
            false
        }
        Err(Error::UnsupportedMediaType { .. }) => false,
        Err(e) => panic!("not a typed manifest error: {e:?}"),
    }
}

#[test]
fn fuzz_manifest_never_panics_and_errors_are_typed() {
    let iters = fuzz_iterations();
    let seeds = seeds();
    for seed in &seeds {
        assert!(check(&serde_json::to_vec(seed).unwrap(), None), "{seed}");
    }
    let mut rng = Rng::new(0x5eed_0f4a_115e_ed00);
    let (mut parsed, mut failed) = (0usize, 0usize);
    for i in 0..iters {
        let mut doc = seeds[rng.below(seeds.len())].clone();
        let bytes = match i % 3 {
            0 => {
                for _ in 0..=rng.below(3) {
                    mutate_structure(&mut rng, &mut doc);
                }
                serde_json::to_vec(&doc).unwrap()
            }
            1 => {
                let mut b = serde_json::to_vec_pretty(&doc).unwrap();
                mutate_bytes(&mut rng, &mut b);
                b
            }
            _ => {
                mutate_structure(&mut rng, &mut doc);
                let mut b = serde_json::to_vec(&doc).unwrap();
                mutate_bytes(&mut rng, &mut b);
                b
            }
        };
        // Content types the registry may send, right or wrong.
        let content_type = match rng.below(4) {
            0 => None,
            _ => Some(rng.pick(MEDIA_TYPES)),
        };
        if check(&bytes, content_type) {
            parsed += 1;
        } else {
            failed += 1;
        }
    }
    assert!(
        iters < 1000 || (parsed > iters / 20 && failed > iters / 20),
        "parsed {parsed}, failed {failed} of {iters}"
    );
}

/// Specific hostile documents, each a typed error (or, where the document is
/// still a valid manifest, a parse).
#[test]
fn hostile_manifests_are_typed_errors() {
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"".to_vec(), None),
        (b"".to_vec(), Some(OCI_MANIFEST)),
        (b"null".to_vec(), Some(OCI_INDEX)),
        (b"[]".to_vec(), None),
        (b"{}".to_vec(), None),
        (b"\xff\xfe{}".to_vec(), None),
        (nested_text(100_000, "[", "]"), None),
        (nested_text(100_000, "{\"a\":", "}"), Some(OCI_MANIFEST)),
        (
            format!(r#"{{"schemaVersion":2,"manifests":{}}}"#, "[".repeat(50_000)).into_bytes(),
            None,
        ),
        (
            format!(r#"{{"schemaVersion":99999999999999999999,"mediaType":"{OCI_MANIFEST}"}}"#)
                .into_bytes(),
            None,
        ),
        (
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":-1}}}}"#,
                digest(1)
            )
            .into_bytes(),
            None,
        ),
        (
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":1e999}}}}"#,
                digest(1)
            )
            .into_bytes(),
            None,
        ),
        (
            br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#.to_vec(),
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        ),
        (br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#.to_vec(), None),
        (br#"{"mediaType":7}"#.to_vec(), None),
    ];
    for (bytes, content_type) in cases {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
        assert!(!check(&bytes, content_type), "{shown:?} should fail");
    }
}

#[test]
fn fuzz_auth_challenge_never_panics() {
    let iters = fuzz_iterations() * 20;
    let seeds = [
        r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull""#,
        r#"Basic realm="Registry""#,
        r#"bearer realm=x, service="y", error="invalid_token""#,
    ];
    let pieces: &[&str] = &["\"", "\\", ",", "=", " ", "\t", "é", "realm", "Bearer", ""];
    let mut rng = Rng::new(0x000c_4a11_e96e);
    for _ in 0..iters {
        let mut s: Vec<char> = rng.pick(&seeds).chars().collect();
        for _ in 0..=rng.below(4) {
            match rng.below(3) {
                0 if !s.is_empty() => {
                    s.remove(rng.below(s.len()));
                }
                1 => s.truncate(rng.below(s.len() + 1)),
                _ => {
                    let at = rng.below(s.len() + 1);
                    let piece: Vec<char> = rng.pick(pieces).chars().collect();
                    s.splice(at..at, piece);
                }
            }
        }
        let s: String = s.into_iter().collect();
        let _ = parse_challenge(&s);
    }
}
