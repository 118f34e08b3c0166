//! Registry credentials in Docker's `config.json` format.
//!
//! Only the `auths` map is read: each entry is keyed by a registry host (or a
//! URL such as `https://index.docker.io/v1/`) and holds either `auth`
//! (base64 of `username:password`) or `username` and `password`.
//! Credential helpers (`credsStore`, `credHelpers`) and `identitytoken` are
//! not supported yet.
//!
//! The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`;
//! callers can also build a [`Credentials`] by hand and inject it into the
//! client.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::config::DOCKER_HUB;
use crate::error::{Error, Result};

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// The value of a `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials by registry host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// No credentials: anonymous access only.
    pub fn none() -> Self {
        Self::default()
    }

    /// Where Docker keeps its config: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn docker_config_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// The Docker config at [`docker_config_path`](Self::docker_config_path);
    /// none when there is no such file.
    pub fn load_docker() -> Result<Self> {
        match Self::docker_config_path() {
            Some(path) => Self::from_docker_config_file(&path),
            None => Ok(Self::none()),
        }
    }

    /// The Docker config file at `path`; none when it does not exist.
    pub fn from_docker_config_file(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_docker_config(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::none()),
            Err(source) => Err(Error::Io {
                op: "read Docker config",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses a Docker `config.json`; `origin` names it in errors. Entries
    /// with neither `auth` nor `username` (e.g. those of a credential
    /// helper) are skipped.
    pub fn from_docker_config(text: &str, origin: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidRegistryConfig {
            origin: origin.to_owned(),
            reason,
        };
        let config: DockerConfig =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut creds = Self::none();
        for (key, entry) in config.auths {
            let credential = match (entry.auth.filter(|a| !a.is_empty()), entry.username) {
                (Some(auth), _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| invalid(format!("auths.{key}.auth: {e}")))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| invalid(format!("auths.{key}.auth: not UTF-8")))?;
                    let (username, password) = decoded.split_once(':').ok_or_else(|| {
                        invalid(format!("auths.{key}.auth: not username:password"))
                    })?;
                    Credential {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    }
                }
                (None, Some(username)) => Credential {
                    username,
                    password: entry.password.unwrap_or_default(),
                },
                (None, None) => continue,
            };
            creds.insert(&key, credential);
        }
        Ok(creds)
    }

    /// Adds (or replaces) the credential for `host`, which may also be written
    /// as a URL (`https://index.docker.io/v1/`).
    pub fn insert(&mut self, host: &str, credential: Credential) {
        self.by_host.insert(normalize_key(host), credential);
    }

    /// The credential for `host` (a registry, mirror, or `registry-1.docker.io`).
    pub fn get(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&normalize_key(host))
    }

    /// Whether there are no credentials at all.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/x` → `host:5000`.
fn normalize_key(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_docker_config_parsing() {
        let text = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndpdGg6Y29sb25z"},
                "127.0.0.1:5000": {"username": "alice", "password": "s3cret"},
                "ghcr.io": {},
                "http://corp.example:8443/v2/": {"auth": "Ym9iOmh1bnRlcjI="}
            },
            "credsStore": "desktop"
        }"#;
        let creds = Credentials::from_docker_config(text, "test").unwrap();
        let hub = creds.get("registry-1.docker.io").unwrap();
        assert_eq!(hub.username, "user");
        assert_eq!(hub.password, "pass:with:colons");
        assert_eq!(creds.get("docker.io"), Some(hub));
        let local = creds.get("127.0.0.1:5000").unwrap();
        assert_eq!(
            (local.username.as_str(), local.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(local.basic_header(), "Basic YWxpY2U6czNjcmV0");
        assert!(creds.get("ghcr.io").is_none());
        assert_eq!(creds.get("corp.example:8443").unwrap().username, "bob");
        assert!(!format!("{hub:?}").contains("with:colons"));

        assert!(matches!(
            Credentials::from_docker_config(r#"{"auths": {"x": {"auth": "!!"}}}"#, "t"),
            Err(Error::InvalidRegistryConfig { .. })
        ));
        assert!(
            Credentials::from_docker_config("{}", "t")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn registry_docker_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(
            Credentials::from_docker_config_file(&path)
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, r#"{"auths": {"r.example": {"auth": "YTpi"}}}"#).unwrap();
        let creds = Credentials::from_docker_config_file(&path).unwrap();
        assert_eq!(creds.get("r.example").unwrap().password, "b");
    }
}
