//! An async client for the OCI distribution (registry v2) API: manifests and
//! blobs, with token and basic auth, Docker credentials, plain-HTTP
//! registries, extra CA certificates and mirrors.
//!
//! - [`RegistryClient`]: the client; cheap to clone (clones share the HTTP
//!   connection pool and the token cache), so layers can be downloaded in
//!   parallel from clones.
//! - [`config`]: [`RegistryConfig`], from `<MSB_HOME>/config.json` and env.
//! - [`credentials`]: [`Credentials`], from Docker's `config.json`.
//! - [`auth`]: `WWW-Authenticate` parsing and the token flow.
//! - [`manifest`]: fetching manifests and indexes, digest checks, platform
//!   selection.
//! - [`blob`]: streamed, verified, resumable blob downloads with progress.
//!
//! Docker Hub: references name it `docker.io`; requests go to
//! `registry-1.docker.io`.

pub mod auth;
pub mod blob;
pub mod config;
pub mod credentials;
pub mod manifest;

#[cfg(test)]
mod test_server;

use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};

pub use blob::{Progress, ProgressFn, ProgressSink, RetryPolicy};
pub use config::{Endpoint, Mirror, RegistryConfig};
pub use credentials::{Credential, Credentials};
pub use manifest::{
    Descriptor, FetchedManifest, ImageIndex, ImageManifest, Manifest, Platform, ResolvedImage,
};

use crate::error::{Error, Result};
use crate::image::Reference;
use auth::{AuthCache, AuthTarget};

/// How long a response may send nothing before it counts as dropped.
const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The user agent sent with every request.
const USER_AGENT: &str = concat!("microsandbox/", env!("CARGO_PKG_VERSION"));

/// A registry client. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
    retry: RetryPolicy,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: RegistryConfig,
    credentials: Credentials,
    auth: AuthCache,
}

impl RegistryClient {
    /// A client with `config` (its CA certificates are read now) and
    /// `credentials`.
    pub fn new(config: RegistryConfig, credentials: Credentials) -> Result<Self> {
        let http = Self::http(&config, DEFAULT_READ_TIMEOUT)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                credentials,
                auth: AuthCache::default(),
            }),
            retry: RetryPolicy::default(),
        })
    }

    /// The same client, but a response that sends nothing for `timeout`
    /// counts as a dropped connection (a stalled blob download is then
    /// resumed, within the retry policy). Default: 60 s.
    pub fn with_read_timeout(self, timeout: std::time::Duration) -> Result<Self> {
        let http = Self::http(&self.inner.config, timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config: self.inner.config.clone(),
                credentials: self.inner.credentials.clone(),
                auth: AuthCache::default(),
            }),
            retry: self.retry,
        })
    }

    /// The HTTP client for `config`, its CA certificates read now.
    fn http(config: &RegistryConfig, read_timeout: std::time::Duration) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(std::time::Duration::from_secs(30))
            // A stalled body counts as a dropped connection (and is resumed).
            .read_timeout(read_timeout);
        for cert in config.load_certificates()? {
            builder = builder.add_root_certificate(cert);
        }
        builder.build().map_err(|source| Error::Http {
            url: String::new(),
            source,
        })
    }

    /// A client configured from `<MSB_HOME>/config.json`, the
    /// `MSB_REGISTRY_MIRRORS`/`MSB_INSECURE_REGISTRIES` environment, and the
    /// Docker credentials file.
    pub fn from_env() -> Result<Self> {
        Self::new(RegistryConfig::load()?, Credentials::load_docker()?)
    }

    /// The same client with another retry policy for blob downloads.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Sends the request `build` makes from the endpoint's base URL
    /// (`https://host`) for `reference`'s registry, authenticating as the
    /// registry demands. Returns any response but `401`.
    pub(crate) async fn send(
        &self,
        reference: &Reference,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let inner = &*self.inner;
        let endpoint = inner.config.endpoint(reference.registry());
        let base = endpoint.base_url();
        let scope = auth::pull_scope(reference.repository());
        let mut authorization = inner.auth.get(&endpoint.host, &scope);
        let mut authenticated = false;
        loop {
            let mut request = build(&inner.http, &base);
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value);
            }
            let request = request.build().map_err(|source| Error::Http {
                url: base.clone(),
                source,
            })?;
            let url = request.url().to_string();
            let response = inner
                .http
                .execute(request)
                .await
                .map_err(|source| Error::Http { url, source })?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_challenge);
            let unauthorized = || Error::Unauthorized {
                registry: reference.registry().to_owned(),
                repository: reference.repository().to_owned(),
            };
            let (Some(challenge), false) = (challenge, authenticated) else {
                return Err(unauthorized());
            };
            authenticated = true;
            // Only now, when the registry asks: this may run a credential helper.
            let credential = inner.credentials.lookup(&endpoint.host).await?;
            let target = AuthTarget {
                registry: reference.registry(),
                repository: reference.repository(),
                host: &endpoint.host,
                scope: &scope,
                credential: credential.as_ref(),
            };
            tracing::debug!(host = %endpoint.host, %scope, ?challenge, "registry authentication");
            authorization =
                Some(auth::authenticate(&inner.http, &inner.auth, &challenge, &target).await?);
        }
    }
}

/// The error for a non-success `response` from `registry`: the message of the
/// registry's JSON error body (`{"errors":[{"code":…,"message":…}]}`) when
/// there is one.
pub(crate) async fn status_error(registry: &str, response: reqwest::Response) -> Error {
    let status = response.status();
    let url = response.url().clone();
    let message = match read_limited(response, 64 << 10, "error body", &url).await {
        Ok(body) => error_message(&body),
        Err(_) => None,
    };
    Error::Registry {
        registry: registry.to_owned(),
        status: status.as_u16(),
        message: message.unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_owned()
        }),
    }
}

fn error_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = body
        .errors
        .into_iter()
        .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (true, _) => e.message,
            (false, true) => e.code,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Reads `response`'s body, failing with [`Error::TooLarge`] past `limit`
/// bytes (hostile or broken registries must not make us buffer without
/// bound).
pub(crate) async fn read_limited(
    response: reqwest::Response,
    limit: u64,
    what: &str,
    url: &reqwest::Url,
) -> Result<Vec<u8>> {
    let too_large = || Error::TooLarge {
        what: what.to_owned(),
        limit,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| Error::Http {
            url: url.to_string(),
            source,
        })?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
