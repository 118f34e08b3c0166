//! Registry credentials in Docker's `config.json` format, including Docker
//! credential helpers.
//!
//! # Where credentials come from
//!
//! For a registry host the credential source is chosen as Docker's
//! `configfile` does, first match wins:
//!
//! 1. `credHelpers`: a map from registry host to a helper suffix. An entry
//!    for the host names the helper for it; an entry whose suffix is the
//!    empty string means "use `auths` for this host", even when `credsStore`
//!    is set.
//! 2. `credsStore`: one helper suffix for every other host.
//! 3. `auths`: each entry is keyed by a registry host (or a URL such as
//!    `https://index.docker.io/v1/`) and holds `auth` (base64 of
//!    `username:password`), or `username` and `password`, or an
//!    `identitytoken`.
//!
//! When a helper is configured for a host, its answer is the answer: an
//! `auths` entry for the same host is not consulted (Docker overwrites it
//! with the helper's answer too).
//!
//! Docker Hub is `docker.io`, `index.docker.io`, `registry-1.docker.io` or
//! `https://index.docker.io/v1/` in keys; all of them name it.
//!
//! # The helper protocol
//!
//! A helper with suffix `x` is the executable `docker-credential-x`, found
//! on the search path (`$PATH` unless [`Credentials::with_helper_path`] says
//! otherwise). For a host it is run as `docker-credential-x get`, with the
//! server URL on its stdin (the host, e.g. `127.0.0.1:5000`, or
//! `https://index.docker.io/v1/` for Docker Hub, no newline), and answers on
//! stdout with `{"ServerURL": …, "Username": …, "Secret": …}`.
//!
//! - A non-zero exit with `credentials not found in native keychain` as its
//!   output means "no credentials": access is anonymous.
//! - A helper missing from the search path, any other non-zero exit, output
//!   that is not that JSON, or no answer within the timeout (30 s, see
//!   [`Credentials::with_helper_timeout`]; the helper is then killed) is an
//!   [`Error::CredentialHelper`] naming the helper and the server.
//!
//! Helpers run lazily, only when a registry asks for credentials for their
//! host ([`Credentials::resolve`]); a helper's answer is cached per host for
//! the life of the [`Credentials`] (clones share the cache). Failures are not
//! cached.
//!
//! # Identity tokens
//!
//! An `identitytoken` in an `auths` entry, or a helper answering with
//! Username `<token>`, is an identity token: an OAuth2 refresh token for the
//! registry's token endpoint (`grant_type=refresh_token`). It is kept as
//! [`HostCredential::IdentityToken`], never sent as a basic-auth password
//! (Docker does not either). The registry client's token flow does not yet
//! exchange refresh tokens, so [`Credentials::lookup`], which the client
//! uses, treats such a host as anonymous and logs a warning.
//!
//! Not done: Docker CLI's guess of a default `credsStore` when the config
//! names none (it probes for `docker-credential-desktop`, `pass`, …); only
//! helpers the config names are run.
//!
//! The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`;
//! callers can also build a [`Credentials`] by hand and inject it into the
//! client.
//!
//! # Example
//!
//! ```
//! use msb_core::image::registry::Credentials;
//! use msb_core::image::registry::credentials::HostCredential;
//!
//! # fn main() -> msb_core::Result<()> {
//! let creds = Credentials::from_docker_config(
//!     r#"{
//!         "auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"}},
//!         "credHelpers": {"ghcr.io": "gh", "127.0.0.1:5000": ""},
//!         "credsStore": "desktop"
//!     }"#,
//!     "example",
//! )?;
//! assert_eq!(creds.helper_for("ghcr.io"), Some("gh"));
//! assert_eq!(creds.helper_for("registry-1.docker.io"), Some("desktop"));
//! assert_eq!(creds.helper_for("127.0.0.1:5000"), None); // "" opts out: auths
//!
//! let rt = tokio::runtime::Builder::new_current_thread()
//!     .enable_all()
//!     .build()
//!     .unwrap();
//! // From `auths`: no helper runs.
//! match rt.block_on(creds.resolve("127.0.0.1:5000"))? {
//!     Some(HostCredential::Basic(c)) => assert_eq!(c.username, "alice"),
//!     other => panic!("{other:?}"),
//! }
//! // `docker-credential-gh` is nowhere on an empty search path: a typed error.
//! let err = rt
//!     .block_on(creds.clone().with_helper_path("").resolve("ghcr.io"))
//!     .unwrap_err();
//! assert!(matches!(err, msb_core::Error::CredentialHelper { .. }), "{err}");
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::config::DOCKER_HUB;
use crate::error::{Error, Result};

/// The server URL Docker uses for Docker Hub in `auths` keys and with
/// credential helpers.
pub const DOCKER_HUB_SERVER_URL: &str = "https://index.docker.io/v1/";

/// How long a credential helper may take to answer, by default.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a helper prints (on stdout, exiting non-zero) when it has nothing
/// for the server.
const NOT_FOUND_MESSAGE: &str = "credentials not found in native keychain";

/// The Username a helper answers with when its Secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// The most helper output read, per stream.
const HELPER_OUTPUT_LIMIT: u64 = 1 << 20;

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

/// An identity token: an OAuth2 refresh token for a registry's token
/// endpoint. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityToken(String);

impl IdentityToken {
    /// Wraps `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityToken(<redacted>)")
    }
}

/// What is known for one registry host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostCredential {
    /// A username and password (or access token), sent as basic auth.
    Basic(Credential),
    /// An identity token (see the [module docs](self#identity-tokens)).
    IdentityToken {
        /// The user it was issued to, when the config says.
        username: Option<String>,
        /// The token.
        token: IdentityToken,
    },
}

/// Why a Docker credential helper gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialHelperErrorKind {
    /// The helper's name would not be a plain file name
    /// (`docker-credential-<name>` with a `/` in it, or empty).
    #[error("not a valid helper name")]
    InvalidName,
    /// No executable of that name in any directory of the search path.
    #[error("not found in any of: {}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"))]
    NotFound {
        /// The directories looked in, in order.
        searched: Vec<PathBuf>,
    },
    /// The helper could not be started (or its pipes failed).
    #[error("could not run {path}: {source}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The helper failed: a non-zero exit other than "credentials not
    /// found".
    #[error("{status}: {message}")]
    Failed {
        /// How it ended.
        status: ExitStatus,
        /// The first non-empty line of its stderr, else of its stdout
        /// (truncated to 200 characters).
        message: String,
    },
    /// The helper exited 0 but its stdout is not the credentials JSON.
    #[error("invalid answer: {reason}")]
    InvalidOutput {
        /// What is wrong with it (never quotes the output itself).
        reason: String,
    },
    /// The helper did not answer in time; it was killed.
    #[error("no answer within {timeout:?} (killed)")]
    TimedOut {
        /// The limit it ran under.
        timeout: Duration,
    },
}

/// Credentials by registry host: static ones (`auths`, [`insert`]) and
/// credential helpers, run lazily. See the [module docs](self).
///
/// [`insert`]: Credentials::insert
#[derive(Debug, Clone)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
    identity_tokens: BTreeMap<String, (Option<String>, IdentityToken)>,
    creds_store: Option<String>,
    /// Normalized host → helper suffix; `""` means "use `auths`".
    cred_helpers: BTreeMap<String, String>,
    /// Where helpers are looked for; `None`: `$PATH` at lookup time.
    helper_path: Option<OsString>,
    helper_timeout: Duration,
    /// Helpers' answers per normalized host, shared by clones.
    cache: Arc<Mutex<HashMap<String, HelperAnswerCell>>>,
}

/// One host's helper answer, filled by the first lookup that succeeds.
type HelperAnswerCell = Arc<OnceCell<Option<HostCredential>>>;

impl Default for Credentials {
    fn default() -> Self {
        Self {
            by_host: BTreeMap::new(),
            identity_tokens: BTreeMap::new(),
            creds_store: None,
            cred_helpers: BTreeMap::new(),
            helper_path: None,
            helper_timeout: DEFAULT_HELPER_TIMEOUT,
            cache: Arc::default(),
        }
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// A helper's answer on stdout. Go's JSON decoder (Docker's) matches field
/// names case-insensitively; the usual spellings are accepted.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(default, rename = "Username", alias = "username")]
    username: String,
    #[serde(default, rename = "Secret", alias = "secret")]
    secret: String,
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

    /// Parses a Docker `config.json`; `origin` names it in errors. `auths`
    /// entries with neither `auth`, `username` nor `identitytoken` (e.g.
    /// those a credential helper left) are skipped. No helper is run here.
    pub fn from_docker_config(text: &str, origin: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidRegistryConfig {
            origin: origin.to_owned(),
            reason,
        };
        let config: DockerConfig =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut creds = Self::none();
        for (key, entry) in config.auths {
            let basic = match (entry.auth.filter(|a| !a.is_empty()), entry.username) {
                (Some(auth), _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|e| invalid(format!("auths.{key}.auth: {e}")))?;
                    let decoded = String::from_utf8(decoded)
                        .map_err(|_| invalid(format!("auths.{key}.auth: not UTF-8")))?;
                    let (username, password) = decoded.split_once(':').ok_or_else(|| {
                        invalid(format!("auths.{key}.auth: not username:password"))
                    })?;
                    Some(Credential {
                        username: username.to_owned(),
                        password: password.to_owned(),
                    })
                }
                (None, Some(username)) => Some(Credential {
                    username,
                    password: entry.password.unwrap_or_default(),
                }),
                (None, None) => None,
            };
            // Docker stores an identity token with an empty password: the
            // token, not the `auth`, is what authenticates.
            match (entry.identitytoken.filter(|t| !t.is_empty()), basic) {
                (Some(token), basic) => {
                    let username = basic.map(|b| b.username).filter(|u| !u.is_empty());
                    creds
                        .identity_tokens
                        .insert(normalize_key(&key), (username, IdentityToken(token)));
                }
                (None, Some(basic)) => creds.insert(&key, basic),
                (None, None) => {}
            }
        }
        if let Some(store) = config.creds_store.filter(|s| !s.is_empty()) {
            check_helper_name(&store).map_err(|()| invalid(format!("credsStore: {store:?}")))?;
            creds.creds_store = Some(store);
        }
        for (host, helper) in config.cred_helpers {
            if !helper.is_empty() {
                check_helper_name(&helper)
                    .map_err(|()| invalid(format!("credHelpers.{host}: {helper:?}")))?;
            }
            creds.cred_helpers.insert(normalize_key(&host), helper);
        }
        Ok(creds)
    }

    /// Adds (or replaces) the credential for `host`, which may also be written
    /// as a URL (`https://index.docker.io/v1/`). Like an `auths` entry, it is
    /// not used for a host that has a credential helper.
    pub fn insert(&mut self, host: &str, credential: Credential) {
        self.by_host.insert(normalize_key(host), credential);
    }

    /// The same credentials with `docker-credential-<helper>` for every host
    /// without a `credHelpers` entry (Docker's `credsStore`).
    pub fn with_creds_store(mut self, helper: impl Into<String>) -> Self {
        self.creds_store = Some(helper.into()).filter(|h| !h.is_empty());
        self
    }

    /// The same credentials with `docker-credential-<helper>` for `host`
    /// (a `credHelpers` entry; an empty `helper` means "use the static
    /// credentials for this host").
    pub fn with_cred_helper(mut self, host: &str, helper: impl Into<String>) -> Self {
        self.cred_helpers.insert(normalize_key(host), helper.into());
        self
    }

    /// The same credentials, looking for helpers in the directories of
    /// `path` (`PATH` syntax: `/a:/b`) instead of `$PATH`.
    pub fn with_helper_path(mut self, path: impl Into<OsString>) -> Self {
        self.helper_path = Some(path.into());
        self
    }

    /// The same credentials, killing a helper that has not answered within
    /// `timeout` (default [`DEFAULT_HELPER_TIMEOUT`]).
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The suffix of the credential helper for `host` (`desktop` for
    /// `docker-credential-desktop`), if one is configured.
    pub fn helper_for(&self, host: &str) -> Option<&str> {
        match self.cred_helpers.get(&normalize_key(host)) {
            Some(helper) if helper.is_empty() => None,
            Some(helper) => Some(helper),
            None => self.creds_store.as_deref(),
        }
    }

    /// The static credential for `host` (a registry, mirror, or
    /// `registry-1.docker.io`): from `auths` or [`insert`](Self::insert).
    /// Runs no helper and ignores them; the registry client uses
    /// [`lookup`](Self::lookup).
    pub fn get(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&normalize_key(host))
    }

    /// What is known for `host`, running its credential helper (once per
    /// host, see the [module docs](self)) if it has one. `None`: anonymous.
    pub async fn resolve(&self, host: &str) -> Result<Option<HostCredential>> {
        let key = normalize_key(host);
        let Some(helper) = self.helper_for(&key) else {
            if let Some((username, token)) = self.identity_tokens.get(&key) {
                return Ok(Some(HostCredential::IdentityToken {
                    username: username.clone(),
                    token: token.clone(),
                }));
            }
            return Ok(self.by_host.get(&key).cloned().map(HostCredential::Basic));
        };
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(cache.entry(key.clone()).or_default())
        };
        let server = server_url(&key);
        let answer = cell
            .get_or_try_init(|| async {
                let path = match &self.helper_path {
                    Some(path) => path.clone(),
                    None => std::env::var_os("PATH").unwrap_or_default(),
                };
                run_helper(helper, &server, &path, self.helper_timeout)
                    .await
                    .map_err(|reason| Error::CredentialHelper {
                        helper: helper_program(helper),
                        server: server.clone(),
                        reason,
                    })
            })
            .await?;
        Ok(answer.clone())
    }

    /// The basic-auth credential for `host`, as the registry client sends it:
    /// [`resolve`](Self::resolve), with an identity token counted as
    /// anonymous (with a warning) since the client cannot exchange one yet.
    pub async fn lookup(&self, host: &str) -> Result<Option<Credential>> {
        Ok(match self.resolve(host).await? {
            Some(HostCredential::Basic(credential)) => Some(credential),
            Some(HostCredential::IdentityToken { .. }) => {
                tracing::warn!(
                    host,
                    "the Docker credential for this registry is an identity token \
                     (an OAuth2 refresh token), which is not supported yet; continuing anonymously"
                );
                None
            }
            None => None,
        })
    }

    /// Whether there are no credentials at all: no static ones, no identity
    /// tokens and no helpers.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
            && self.identity_tokens.is_empty()
            && self.creds_store.is_none()
            && self.cred_helpers.values().all(String::is_empty)
    }
}

/// `Ok` when `docker-credential-<name>` is a plain file name.
fn check_helper_name(name: &str) -> std::result::Result<(), ()> {
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        Err(())
    } else {
        Ok(())
    }
}

fn helper_program(helper: &str) -> String {
    format!("docker-credential-{helper}")
}

/// The server URL a helper is asked about for the normalized `key`.
fn server_url(key: &str) -> String {
    if key == DOCKER_HUB {
        DOCKER_HUB_SERVER_URL.to_owned()
    } else {
        key.to_owned()
    }
}

/// The executable `name` in the first directory of `search` that has one.
fn find_program(
    name: &str,
    search: &OsStr,
) -> std::result::Result<PathBuf, CredentialHelperErrorKind> {
    use std::os::unix::fs::PermissionsExt;
    let mut searched = Vec::new();
    for dir in std::env::split_paths(search).filter(|d| !d.as_os_str().is_empty()) {
        let candidate = dir.join(name);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
        searched.push(dir);
    }
    Err(CredentialHelperErrorKind::NotFound { searched })
}

/// Runs `docker-credential-<helper> get` for `server`: see the
/// [module docs](self#the-helper-protocol).
async fn run_helper(
    helper: &str,
    server: &str,
    search: &OsStr,
    timeout: Duration,
) -> std::result::Result<Option<HostCredential>, CredentialHelperErrorKind> {
    check_helper_name(helper).map_err(|()| CredentialHelperErrorKind::InvalidName)?;
    let path = find_program(&helper_program(helper), search)?;
    let spawn_error = |source| CredentialHelperErrorKind::Spawn {
        path: path.clone(),
        source,
    };
    tracing::debug!(helper = %path.display(), server, "running credential helper");
    let mut command = tokio::process::Command::new(&path);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = spawn(&mut command).map_err(spawn_error)?;
    let stdin = child.stdin.take();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("stdout and stderr are piped");
    };
    let exchange = async {
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A helper may exit without reading: its answer still counts.
                let _ = stdin.write_all(server.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let ((), out, err, status) = tokio::join!(
            write,
            read_limited(stdout),
            read_limited(stderr),
            child.wait()
        );
        Ok::<_, std::io::Error>((out?, err?, status?))
    };
    let (out, err, status) = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result.map_err(spawn_error)?,
        Err(_) => {
            tracing::warn!(helper = %path.display(), server, ?timeout, "credential helper timed out; killing it");
            // SIGKILL, and reap it.
            let _ = child.kill().await;
            return Err(CredentialHelperErrorKind::TimedOut { timeout });
        }
    };
    let out = String::from_utf8_lossy(&out);
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        if out.trim() == NOT_FOUND_MESSAGE || err.trim() == NOT_FOUND_MESSAGE {
            tracing::debug!(helper = %path.display(), server, "credential helper has no credentials");
            return Ok(None);
        }
        let message = first_line(&err)
            .or_else(|| first_line(&out))
            .unwrap_or_default();
        return Err(CredentialHelperErrorKind::Failed { status, message });
    }
    let answer: HelperAnswer =
        serde_json::from_str(&out).map_err(|e| CredentialHelperErrorKind::InvalidOutput {
            reason: describe_json_error(&e),
        })?;
    tracing::debug!(helper = %path.display(), server, username = %answer.username, "credential helper answered");
    Ok(match (answer.username.as_str(), answer.secret) {
        (TOKEN_USERNAME, secret) if !secret.is_empty() => Some(HostCredential::IdentityToken {
            username: None,
            token: IdentityToken(secret),
        }),
        ("", secret) if secret.is_empty() => None,
        (_, secret) => Some(HostCredential::Basic(Credential {
            username: answer.username,
            password: secret,
        })),
    })
}

/// Spawns `command`, retrying briefly while the executable is busy (a
/// helper just written can be, while another thread of this process forks).
fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

async fn read_limited(stream: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    stream
        .take(HELPER_OUTPUT_LIMIT)
        .read_to_end(&mut buf)
        .await?;
    Ok(buf)
}

/// The first non-empty line of `text`, at most 200 characters.
fn first_line(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(200).collect())
}

/// A JSON error, without quoting the text: data errors can contain values
/// (a secret, in the wrong place).
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = e.to_string();
    let safe = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => true,
        Category::Data => {
            message.starts_with("missing field") || message.starts_with("unknown field")
        }
    };
    if safe {
        message
    } else {
        format!(
            "unexpected JSON value at line {} column {}",
            e.line(),
            e.column()
        )
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

    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    }

    #[test]
    fn registry_docker_config_helper_precedence() {
        let text = r#"{
            "auths": {
                "a.example": {"auth": "YTpi"},
                "b.example": {"auth": "YTpi"},
                "https://index.docker.io/v1/": {"auth": "YTpi"}
            },
            "credsStore": "store",
            "credHelpers": {
                "a.example": "special",
                "b.example": "",
                "https://index.docker.io/v1/": "hub"
            }
        }"#;
        let creds = Credentials::from_docker_config(text, "t").unwrap();
        assert_eq!(creds.helper_for("a.example"), Some("special"));
        assert_eq!(
            creds.helper_for("b.example"),
            None,
            "\"\" opts out of credsStore"
        );
        assert_eq!(creds.helper_for("c.example"), Some("store"));
        for hub in ["registry-1.docker.io", "docker.io", DOCKER_HUB_SERVER_URL] {
            assert_eq!(creds.helper_for(hub), Some("hub"), "{hub}");
        }
        assert_eq!(
            server_url(&normalize_key("registry-1.docker.io")),
            DOCKER_HUB_SERVER_URL
        );
        assert_eq!(
            server_url(&normalize_key("http://127.0.0.1:5000/v2/")),
            "127.0.0.1:5000"
        );
        // `get` is the static view; `resolve` follows the precedence.
        assert_eq!(creds.get("a.example").unwrap().username, "a");
        match block_on(creds.resolve("b.example")).unwrap() {
            Some(HostCredential::Basic(c)) => assert_eq!(c.password, "b"),
            other => panic!("{other:?}"),
        }
        assert!(!creds.is_empty());
        let only_helpers = Credentials::none().with_creds_store("x");
        assert!(!only_helpers.is_empty());
        assert!(Credentials::none().with_cred_helper("h", "").is_empty());

        for bad in [
            r#"{"credsStore": "../evil"}"#,
            r#"{"credHelpers": {"h": "a/b"}}"#,
        ] {
            assert!(
                matches!(
                    Credentials::from_docker_config(bad, "t"),
                    Err(Error::InvalidRegistryConfig { .. })
                ),
                "{bad}"
            );
        }
        // An empty credsStore is no helper.
        assert_eq!(
            Credentials::from_docker_config(r#"{"credsStore": ""}"#, "t")
                .unwrap()
                .helper_for("x"),
            None
        );
    }

    #[test]
    fn registry_identity_token_is_kept_not_sent() {
        let text = r#"{"auths": {
            "t.example": {"auth": "dXNlcjo=", "identitytoken": "refresh-me"},
            "u.example": {"identitytoken": "tok2"}
        }}"#;
        let creds = Credentials::from_docker_config(text, "t").unwrap();
        assert!(creds.get("t.example").is_none(), "no basic credential");
        match block_on(creds.resolve("t.example")).unwrap() {
            Some(HostCredential::IdentityToken { username, token }) => {
                assert_eq!(username.as_deref(), Some("user"));
                assert_eq!(token.secret(), "refresh-me");
                assert!(!format!("{token:?}").contains("refresh-me"));
            }
            other => panic!("{other:?}"),
        }
        match block_on(creds.resolve("u.example")).unwrap() {
            Some(HostCredential::IdentityToken {
                username: None,
                token,
            }) => {
                assert_eq!(token, IdentityToken::new("tok2"));
            }
            other => panic!("{other:?}"),
        }
        // The client's view: anonymous.
        assert_eq!(block_on(creds.lookup("t.example")).unwrap(), None);
        assert!(!creds.is_empty());
    }

    #[test]
    fn registry_helper_json_errors_do_not_quote_values() {
        let e = serde_json::from_str::<HelperAnswer>(r#"{"Username": "u", "Secret": 12345}"#)
            .err()
            .unwrap();
        let reason = describe_json_error(&e);
        assert!(!reason.contains("12345"), "{reason}");
        let e = serde_json::from_str::<HelperAnswer>("{").err().unwrap();
        assert!(describe_json_error(&e).contains("EOF"));
        assert_eq!(
            first_line("\n\n  boom: no  \nsecond"),
            Some("boom: no".into())
        );
        assert_eq!(first_line(" \n"), None);
    }
}
