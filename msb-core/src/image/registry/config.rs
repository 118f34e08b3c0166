//! Registry settings: plain-HTTP ("insecure") hosts, extra CA certificates and
//! mirrors.
//!
//! # The microsandbox config file
//!
//! Read from `<MSB_HOME>/config.json` (see [`crate::paths::state_home`]); a
//! missing file means defaults. Only the `registries` and
//! `registry_ca_certificates` keys are read here; other keys belong to other
//! parts of microsandbox and are ignored.
//!
//! ```json
//! {
//!   "registries": {
//!     "docker.io":      { "mirror": "http://127.0.0.1:5000" },
//!     "mirror.gcr.io":  { "mirror": "registry.internal:5000", "insecure": true },
//!     "127.0.0.1:5001": { "insecure": true },
//!     "corp.example":   { "ca_certificates": ["/etc/corp/ca.pem"] }
//!   },
//!   "registry_ca_certificates": ["/etc/ssl/extra-ca.pem"]
//! }
//! ```
//!
//! Per registry host (as written in image references, `docker.io` for Docker
//! Hub):
//!
//! - `mirror`: an endpoint that *replaces* the registry: every request for
//!   images of that registry goes to the mirror instead, with the same
//!   repository path (`docker.io/library/alpine` → `<mirror>/v2/library/alpine/…`).
//!   The upstream is not contacted. An endpoint is `host[:port]`, optionally
//!   with a scheme: `http://` means plain HTTP, `https://` or no scheme means
//!   TLS unless the mirror host is itself insecure.
//! - `insecure`: talk plain HTTP to this host (when it is a mirror, to the
//!   mirror endpoint). Loopback hosts (`localhost`, `127.x.x.x`, `[::1]`) are
//!   always plain HTTP, as with Docker.
//! - `ca_certificates`: PEM files of extra CA certificates. reqwest trusts
//!   roots client-wide, so these are added to the trust store for all hosts;
//!   `registry_ca_certificates` is the same, not tied to a host.
//!
//! # Environment
//!
//! Applied on top of the file (an entry there wins over the file's):
//!
//! - `MSB_REGISTRY_MIRRORS="host=endpoint,host2=endpoint2"`
//! - `MSB_INSECURE_REGISTRIES="host,host2"`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Environment variable with mirror mappings: `host=endpoint,host2=endpoint2`.
pub const MIRRORS_ENV: &str = "MSB_REGISTRY_MIRRORS";
/// Environment variable with plain-HTTP hosts: `host,host2`.
pub const INSECURE_ENV: &str = "MSB_INSECURE_REGISTRIES";
/// The microsandbox config file's name under the state home.
pub const CONFIG_FILE: &str = "config.json";

/// The Docker Hub name used in references.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's v2 API.
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A place to send v2 API requests: a scheme and `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP instead of TLS.
    pub insecure: bool,
}

impl Endpoint {
    /// `http://host` or `https://host`.
    pub fn base_url(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// A mirror as configured: where requests for a registry go instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port]` of the mirror.
    pub host: String,
    /// `Some(true)` for an explicit `http://`, `Some(false)` for an explicit
    /// `https://`, `None` when no scheme was given (decided by the insecure
    /// hosts list).
    pub plain_http: Option<bool>,
}

impl Mirror {
    /// Parses `[http://|https://]host[:port][/]`.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let text = text.trim();
        let (plain_http, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (Some(true), rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            (Some(false), rest)
        } else {
            (None, text)
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains("://") || host.contains(' ') {
            return Err(Error::InvalidRegistryConfig {
                origin: origin.to_owned(),
                reason: format!("mirror endpoint {text:?} is not [scheme://]host[:port]"),
            });
        }
        Ok(Self {
            host: host.to_owned(),
            plain_http,
        })
    }
}

/// Registry settings; see the [module docs](self) for the file format.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Hosts to talk plain HTTP to.
    pub insecure: BTreeSet<String>,
    /// Registry host → mirror that replaces it.
    pub mirrors: BTreeMap<String, Mirror>,
    /// Extra CA certificate PEM files, trusted for every host.
    pub ca_certificates: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
struct FileConfig {
    #[serde(default)]
    registries: BTreeMap<String, FileRegistry>,
    #[serde(default)]
    registry_ca_certificates: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    #[serde(default)]
    mirror: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    ca_certificates: Vec<PathBuf>,
}

impl RegistryConfig {
    /// The file at `<MSB_HOME>/config.json` (if any), then the environment.
    pub fn load() -> Result<Self> {
        Self::load_from(&crate::paths::state_home())
    }

    /// The file at `<home>/config.json` (if any), then the environment.
    pub fn load_from(home: &Path) -> Result<Self> {
        let path = home.join(CONFIG_FILE);
        let mut config = Self::from_file(&path)?;
        config.apply_env(
            std::env::var(MIRRORS_ENV).ok().as_deref(),
            std::env::var(INSECURE_ENV).ok().as_deref(),
        )?;
        Ok(config)
    }

    /// The config file at `path`; a missing file gives the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io {
                op: "read registry config",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses the config file's text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let file: FileConfig =
            serde_json::from_str(text).map_err(|e| Error::InvalidRegistryConfig {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })?;
        let mut config = Self {
            ca_certificates: file.registry_ca_certificates,
            ..Self::default()
        };
        for (host, entry) in file.registries {
            let host = normalize_host(&host);
            if entry.insecure {
                config.insecure.insert(host.clone());
            }
            if let Some(mirror) = entry.mirror {
                let origin = format!("{origin} (registries.{host}.mirror)");
                config
                    .mirrors
                    .insert(host, Mirror::parse(&mirror, &origin)?);
            }
            config.ca_certificates.extend(entry.ca_certificates);
        }
        Ok(config)
    }

    /// Applies the values of [`MIRRORS_ENV`] and [`INSECURE_ENV`] (passed in so
    /// that callers and tests need not touch the process environment).
    pub fn apply_env(&mut self, mirrors: Option<&str>, insecure: Option<&str>) -> Result<()> {
        for item in mirrors.unwrap_or_default().split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (host, endpoint) =
                item.split_once('=')
                    .ok_or_else(|| Error::InvalidRegistryConfig {
                        origin: MIRRORS_ENV.to_owned(),
                        reason: format!("{item:?} is not host=endpoint"),
                    })?;
            let host = normalize_host(host.trim());
            self.mirrors
                .insert(host, Mirror::parse(endpoint, MIRRORS_ENV)?);
        }
        for host in insecure.unwrap_or_default().split(',') {
            let host = host.trim();
            if !host.is_empty() {
                self.insecure.insert(normalize_host(host));
            }
        }
        Ok(())
    }

    /// Whether `host` is spoken to over plain HTTP: listed as insecure, or a
    /// loopback host.
    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.contains(host) || is_loopback(host)
    }

    /// Where requests for images of `registry` go: its mirror if one is
    /// configured, else the registry itself (`docker.io` →
    /// `registry-1.docker.io`).
    pub fn endpoint(&self, registry: &str) -> Endpoint {
        if let Some(mirror) = self.mirrors.get(registry) {
            let insecure = mirror
                .plain_http
                .unwrap_or_else(|| self.is_insecure(&mirror.host));
            return Endpoint {
                host: mirror.host.clone(),
                insecure,
            };
        }
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        Endpoint {
            host: host.to_owned(),
            insecure: self.is_insecure(registry),
        }
    }

    /// The extra CA certificates, read and parsed.
    pub fn load_certificates(&self) -> Result<Vec<reqwest::Certificate>> {
        let mut certs = Vec::new();
        for path in &self.ca_certificates {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                op: "read CA certificate",
                path: path.clone(),
                source,
            })?;
            let bundle = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::InvalidRegistryConfig {
                    origin: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            if bundle.is_empty() {
                return Err(Error::InvalidRegistryConfig {
                    origin: path.display().to_string(),
                    reason: "no PEM certificate in file".to_owned(),
                });
            }
            certs.extend(bundle);
        }
        Ok(certs)
    }
}

/// `index.docker.io` and `registry-1.docker.io` are Docker Hub too.
fn normalize_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_config_file_and_env() {
        let text = r#"{
            "other_setting": 1,
            "registries": {
                "mirror.gcr.io": {"mirror": "http://127.0.0.1:5000"},
                "docker.io": {"mirror": "hub-mirror.internal:5000"},
                "hub-mirror.internal:5000": {"insecure": true},
                "corp.example": {"ca_certificates": ["/etc/corp/ca.pem"]}
            },
            "registry_ca_certificates": ["/x.pem"]
        }"#;
        let mut config = RegistryConfig::from_json(text, "test").unwrap();
        assert_eq!(
            config.endpoint("mirror.gcr.io"),
            Endpoint {
                host: "127.0.0.1:5000".into(),
                insecure: true
            }
        );
        // No scheme: plain HTTP because the mirror host is listed insecure.
        assert_eq!(
            config.endpoint("docker.io").base_url(),
            "http://hub-mirror.internal:5000"
        );
        assert_eq!(config.endpoint("quay.io").base_url(), "https://quay.io");
        assert_eq!(
            config.endpoint("localhost:5000").base_url(),
            "http://localhost:5000"
        );
        assert_eq!(
            config.endpoint("[::1]:5000").base_url(),
            "http://[::1]:5000"
        );
        assert_eq!(
            config.ca_certificates,
            vec![PathBuf::from("/x.pem"), PathBuf::from("/etc/corp/ca.pem")]
        );

        config
            .apply_env(
                Some("docker.io=https://other:443, ghcr.io=ghcr-mirror:5000"),
                Some("ghcr-mirror:5000,"),
            )
            .unwrap();
        assert_eq!(config.endpoint("docker.io").base_url(), "https://other:443");
        assert_eq!(
            config.endpoint("ghcr.io").base_url(),
            "http://ghcr-mirror:5000"
        );

        let mut fresh = RegistryConfig::default();
        assert_eq!(
            fresh.endpoint("docker.io").base_url(),
            "https://registry-1.docker.io"
        );
        assert!(matches!(
            fresh.apply_env(Some("nonsense"), None),
            Err(Error::InvalidRegistryConfig { .. })
        ));
        assert!(matches!(
            RegistryConfig::from_json(r#"{"registries": {"a": {"mirror": "x/y/z"}}}"#, "t"),
            Err(Error::InvalidRegistryConfig { .. })
        ));
        assert!(matches!(
            RegistryConfig::from_json(r#"{"registries": {"a": {"mirorr": "x"}}}"#, "t"),
            Err(Error::InvalidRegistryConfig { .. })
        ));
    }

    #[test]
    fn registry_config_missing_file_is_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig::from_file(&dir.path().join("config.json")).unwrap();
        assert!(config.mirrors.is_empty() && config.insecure.is_empty());
    }

    #[test]
    fn registry_config_bad_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let config = RegistryConfig {
            ca_certificates: vec![path],
            ..Default::default()
        };
        assert!(config.load_certificates().is_err());
    }
}
