//! Manifests and image indexes: fetching by tag or digest, digest checks,
//! and platform selection.
//!
//! A manifest fetched by digest must hash to that digest
//! ([`Error::DigestMismatch`] otherwise). One fetched by tag is recorded under
//! the digest of the bytes received; when the registry sends
//! `Docker-Content-Digest`, the bytes must hash to it too.
//!
//! OCI (`application/vnd.oci.image.{index,manifest}.v1+json`) and Docker v2
//! (`application/vnd.docker.distribution.manifest.{list.v2,v2}+json`) media
//! types are accepted; anything else (e.g. Docker schema 1) is
//! [`Error::UnsupportedMediaType`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::{Deserialize, Deserializer};

use super::RegistryClient;
use super::blob::Hasher;
use crate::error::{Error, Result};
use crate::image::{Digest, DigestAlgorithm, Reference};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The most bytes a manifest may have (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// An image platform: `os/architecture[/variant]`.
///
/// ```
/// use msb_core::image::registry::Platform;
///
/// let p: Platform = "linux/arm64/v8".parse()?;
/// assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm64", Some("v8")));
/// assert_eq!(Platform::default().to_string(), "linux/amd64");
/// assert!("linux".parse::<Platform>().is_err());
/// # Ok::<(), msb_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in Go's naming, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v8` for `arm64`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`.
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// The platform of this host (`linux/amd64`, `linux/arm64`, …).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Self {
            os: std::env::consts::OS.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an image for `self` satisfies a request for `wanted`: same OS
    /// and architecture, and the same variant when `wanted` names one
    /// (`arm64` without a variant counts as `v8`, `arm` as `v7`).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        if self.os != wanted.os
            || normalize_arch(&self.architecture) != normalize_arch(&wanted.architecture)
        {
            return false;
        }
        match wanted.variant.as_deref() {
            None => true,
            Some(want) => {
                let arch = normalize_arch(&wanted.architecture);
                let default = default_variant(arch);
                let have = self.variant.as_deref().or(default);
                have == Some(want)
            }
        }
    }
}

fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidPlatform {
            platform: s.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(invalid());
        }
        match parts.as_slice() {
            [os, arch] | [os, arch, _] => Ok(Self {
                os: os.to_ascii_lowercase(),
                architecture: normalize_arch(&arch.to_ascii_lowercase()).to_owned(),
                variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

fn de_digest<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A content descriptor: what a manifest or index says about a blob or
/// manifest it points to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The target's media type.
    pub media_type: String,
    /// The target's digest.
    #[serde(deserialize_with = "de_digest")]
    pub digest: Digest,
    /// The target's size in bytes.
    pub size: u64,
    /// For index entries: the platform of the image.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Arbitrary metadata.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or Docker v2): the config blob and the layers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type, when it states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index (OCI) or manifest list (Docker): one manifest per platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index's own media type, when it states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

impl ImageIndex {
    /// The entry for `wanted`: the first that [satisfies](Platform::satisfies)
    /// it, else [`Error::NoMatchingPlatform`] listing the platforms there are.
    pub fn select(&self, wanted: &Platform, reference: &str) -> Result<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(wanted)))
            .ok_or_else(|| Error::NoMatchingPlatform {
                reference: reference.to_owned(),
                wanted: wanted.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(Platform::to_string))
                    .collect(),
            })
    }
}

/// A parsed manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An image manifest.
    Image(ImageManifest),
    /// An index / manifest list.
    Index(ImageIndex),
}

/// A manifest as fetched: its verified digest and raw bytes (store these, not
/// a re-serialization, so the digest stays valid).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The media type.
    pub media_type: String,
    /// The bytes as received.
    pub bytes: Vec<u8>,
    /// The parsed content.
    pub manifest: Manifest,
}

/// An image manifest for one platform, resolved from a reference.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image manifest's digest.
    pub digest: Digest,
    /// The image manifest's media type.
    pub media_type: String,
    /// The image manifest's bytes.
    pub bytes: Vec<u8>,
    /// The image manifest.
    pub manifest: ImageManifest,
    /// The index it was selected from, if the reference named one.
    pub index: Option<FetchedManifest>,
}

impl RegistryClient {
    /// The manifest or index `reference` names: by its digest when pinned
    /// (and verified against it), else by its tag (`latest` if none).
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<FetchedManifest> {
        match reference.digest() {
            Some(digest) => self.fetch_manifest_by_digest(reference, digest).await,
            None => self.fetch(reference, reference.tag_or_latest(), None).await,
        }
    }

    /// The manifest `digest` in `reference`'s repository, verified.
    pub async fn fetch_manifest_by_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<FetchedManifest> {
        self.fetch(reference, &digest.to_string(), Some(digest))
            .await
    }

    /// The image manifest for `platform`: `reference`'s manifest, or, when it
    /// is an index, the entry for `platform` from it.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage> {
        let fetched = self.fetch_manifest(reference).await?;
        let (fetched, index) = match &fetched.manifest {
            Manifest::Image(_) => (fetched, None),
            Manifest::Index(index) => {
                let entry = index.select(platform, &reference.to_string())?;
                let child = self
                    .fetch_manifest_by_digest(reference, &entry.digest)
                    .await?;
                (child, Some(fetched))
            }
        };
        match fetched.manifest {
            Manifest::Image(manifest) => Ok(ResolvedImage {
                digest: fetched.digest,
                media_type: fetched.media_type,
                bytes: fetched.bytes,
                manifest,
                index,
            }),
            // An index inside an index: not something images do.
            Manifest::Index(_) => Err(Error::UnsupportedMediaType {
                media_type: fetched.media_type,
            }),
        }
    }

    async fn fetch(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest> {
        let shown = format!("{}/{}", reference.registry(), reference.repository());
        let shown = match expected {
            Some(d) => format!("{shown}@{d}"),
            None => format!("{shown}:{tag_or_digest}"),
        };
        let path = format!("/v2/{}/manifests/{tag_or_digest}", reference.repository());
        let accept = [
            OCI_INDEX,
            OCI_MANIFEST,
            DOCKER_MANIFEST_LIST,
            DOCKER_MANIFEST,
        ]
        .join(", ");
        let response = self
            .send(reference, |http, base| {
                http.get(format!("{base}{path}")).header(ACCEPT, &accept)
            })
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(Error::ManifestUnknown { reference: shown });
        }
        if !status.is_success() {
            return Err(super::status_error(reference.registry(), response).await);
        }
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<Digest>().ok());
        let url = response.url().clone();
        let bytes = super::read_limited(
            response,
            MAX_MANIFEST_SIZE,
            &format!("manifest {shown}"),
            &url,
        )
        .await?;

        let check = |want: &Digest| -> Result<()> {
            let actual = digest_of(want.algorithm(), &bytes);
            if &actual != want {
                return Err(Error::DigestMismatch {
                    expected: want.clone(),
                    actual,
                });
            }
            Ok(())
        };
        let digest = match (expected, header_digest) {
            (Some(want), _) => {
                check(want)?;
                want.clone()
            }
            (None, Some(header)) => {
                check(&header)?;
                header
            }
            (None, None) => digest_of(DigestAlgorithm::Sha256, &bytes),
        };
        let (media_type, manifest) = parse_manifest(&bytes, header_type.as_deref(), &shown)?;
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
            manifest,
        })
    }
}

/// The digest of `bytes` with `algorithm`.
pub(crate) fn digest_of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(bytes);
    hasher.finish()
}

/// Parses manifest `bytes`, typed by the `Content-Type` the registry sent or
/// else by the document's own `mediaType` (or its shape).
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    reference: &str,
) -> Result<(String, Manifest)> {
    let invalid = |e: serde_json::Error| Error::InvalidManifest {
        reference: reference.to_owned(),
        reason: e.to_string(),
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        schema_version: Option<u32>,
    }
    let known = |t: &str| {
        [
            OCI_INDEX,
            OCI_MANIFEST,
            DOCKER_MANIFEST_LIST,
            DOCKER_MANIFEST,
        ]
        .contains(&t)
    };
    let media_type = match content_type.filter(|t| known(t)) {
        Some(t) => t.to_owned(),
        None => {
            let probe: Probe = serde_json::from_slice(bytes).map_err(invalid)?;
            match (
                probe.media_type,
                probe.manifests.is_some(),
                probe.schema_version,
            ) {
                (Some(t), _, _) => t,
                (None, true, _) => OCI_INDEX.to_owned(),
                (None, false, Some(2)) => OCI_MANIFEST.to_owned(),
                // No media type anywhere; report what the registry said.
                (None, false, _) => content_type.unwrap_or("").to_owned(),
            }
        }
    };
    let manifest = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            Manifest::Index(serde_json::from_slice(bytes).map_err(invalid)?)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            Manifest::Image(serde_json::from_slice(bytes).map_err(invalid)?)
        }
        _ => return Err(Error::UnsupportedMediaType { media_type }),
    };
    Ok((media_type, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_json(platforms: &[(&str, &str, Option<&str>)]) -> String {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut platform = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    platform["variant"] = (*v).into();
                }
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": format!("sha256:{}", format!("{i}").repeat(64)),
                    "size": 100 + i,
                    "platform": platform,
                })
            })
            .collect();
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
            .to_string()
    }

    #[test]
    fn registry_platform_selection() {
        let json = index_json(&[
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", None),
            ("linux", "amd64", None),
            ("unknown", "unknown", None),
        ]);
        let (ty, manifest) = parse_manifest(json.as_bytes(), None, "r").unwrap();
        assert_eq!(ty, OCI_INDEX);
        let Manifest::Index(index) = manifest else {
            panic!("not an index")
        };
        let pick = |p: &str| index.select(&p.parse().unwrap(), "r").map(|d| d.size);
        assert_eq!(pick("linux/amd64").unwrap(), 103);
        assert_eq!(pick("linux/x86_64").unwrap(), 103);
        assert_eq!(pick("linux/arm64/v8").unwrap(), 102);
        assert_eq!(pick("linux/arm/v7").unwrap(), 101);
        assert_eq!(pick("linux/arm/v6").unwrap(), 100);
        assert_eq!(index.select(&Platform::default(), "r").unwrap().size, 103);
        match pick("linux/riscv64") {
            Err(Error::NoMatchingPlatform {
                reference,
                wanted,
                available,
            }) => {
                assert_eq!(reference, "r");
                assert_eq!(wanted, "linux/riscv64");
                assert_eq!(
                    available,
                    [
                        "linux/arm/v6",
                        "linux/arm/v7",
                        "linux/arm64",
                        "linux/amd64",
                        "unknown/unknown"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pick("linux/arm64/v9"),
            Err(Error::NoMatchingPlatform { .. })
        ));
    }

    #[test]
    fn registry_manifest_media_types() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"sha256:{}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":9,"digest":"sha256:{}"}}]}}"#,
            "a".repeat(64),
            "b".repeat(64)
        );
        let (ty, m) = parse_manifest(docker.as_bytes(), Some("application/json"), "r").unwrap();
        assert_eq!(ty, DOCKER_MANIFEST);
        let Manifest::Image(m) = m else { panic!() };
        assert_eq!(m.layers[0].size, 9);
        let schema1 = r#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            parse_manifest(
                schema1.as_bytes(),
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                "r"
            ),
            Err(Error::UnsupportedMediaType { .. })
        ));
        let bad_digest = docker.replace(&"a".repeat(64), "zz");
        assert!(matches!(
            parse_manifest(bad_digest.as_bytes(), None, "r"),
            Err(Error::InvalidManifest { .. })
        ));
    }
}
