//! Registry authentication: `WWW-Authenticate` challenges, the bearer token
//! flow of the distribution token spec, basic auth, and a cache of the
//! resulting `Authorization` values per endpoint and scope.
//!
//! The flow: a request is sent with the cached authorization for its
//! `(endpoint host, scope)` if any. On `401` the challenge is parsed:
//!
//! - `Bearer realm=…,service=…`: a token is fetched with
//!   `GET <realm>?service=<service>&scope=repository:<name>:pull`, sending the
//!   registry's credential as basic auth when there is one (anonymous
//!   otherwise). The token (`token` or `access_token`) is cached for
//!   `expires_in` seconds (60 when absent, as the spec says), less a margin.
//! - `Basic`: the registry's credential is sent as basic auth; without one the
//!   request fails with [`Error::Unauthorized`].
//!
//! The request is then retried once; a second `401` is
//! [`Error::Unauthorized`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::credentials::Credential;
use crate::error::{Error, Result};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// The token endpoint URL.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
    /// `Basic realm="…"`.
    Basic,
}

/// Parses one `WWW-Authenticate` header value; `None` for an unknown scheme or
/// a bearer challenge without a realm.
///
/// ```
/// use msb_core::image::registry::auth::{parse_challenge, Challenge};
///
/// let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#);
/// assert_eq!(c, Some(Challenge::Bearer {
///     realm: "https://auth.docker.io/token".into(),
///     service: Some("registry.docker.io".into()),
///     scope: None,
/// }));
/// assert_eq!(parse_challenge(r#"Basic realm="Registry""#), Some(Challenge::Basic));
/// ```
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty())?,
            service: get("service"),
            scope: get("scope"),
        })
    } else if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else {
        None
    }
}

/// `k=v, k2="quoted \" value"` → pairs.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), value.trim_end().to_owned()));
    }
}

/// The pull scope for `repository`.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

#[derive(Debug, Clone)]
struct Cached {
    authorization: String,
    expires: Option<Instant>,
}

/// `Authorization` header values by `(endpoint host, scope)`.
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    entries: Mutex<HashMap<(String, String), Cached>>,
}

impl AuthCache {
    pub(crate) fn get(&self, host: &str, scope: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let cached = entries.get(&(host.to_owned(), scope.to_owned()))?;
        match cached.expires {
            Some(expires) if Instant::now() >= expires => None,
            _ => Some(cached.authorization.clone()),
        }
    }

    fn put(&self, host: &str, scope: &str, cached: Cached) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert((host.to_owned(), scope.to_owned()), cached);
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Who is being authenticated: for error messages and the credential.
pub(crate) struct AuthTarget<'a> {
    pub(crate) registry: &'a str,
    pub(crate) repository: &'a str,
    pub(crate) host: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) credential: Option<&'a Credential>,
}

/// Answers `challenge`, caches the result, and returns the `Authorization`
/// value to retry with.
pub(crate) async fn authenticate(
    http: &reqwest::Client,
    cache: &AuthCache,
    challenge: &Challenge,
    target: &AuthTarget<'_>,
) -> Result<String> {
    let unauthorized = || Error::Unauthorized {
        registry: target.registry.to_owned(),
        repository: target.repository.to_owned(),
    };
    let cached = match challenge {
        Challenge::Basic => Cached {
            authorization: target.credential.ok_or_else(unauthorized)?.basic_header(),
            expires: None,
        },
        Challenge::Bearer { realm, service, .. } => {
            let mut url = reqwest::Url::parse(realm).map_err(|e| Error::Registry {
                registry: target.registry.to_owned(),
                status: 401,
                message: format!("invalid token realm {realm:?}: {e}"),
            })?;
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = service {
                    query.append_pair("service", service);
                }
                query.append_pair("scope", target.scope);
            }
            let mut request = http.get(url.clone());
            if let Some(credential) = target.credential {
                request = request.header(reqwest::header::AUTHORIZATION, credential.basic_header());
            }
            let response = request.send().await.map_err(|source| Error::Http {
                url: url.to_string(),
                source,
            })?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                return Err(unauthorized());
            }
            if !status.is_success() {
                return Err(Error::Registry {
                    registry: target.registry.to_owned(),
                    status: status.as_u16(),
                    message: format!("token endpoint {url}: {status}"),
                });
            }
            let body = super::read_limited(response, 1 << 20, "token response", &url).await?;
            let token: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| Error::Registry {
                    registry: target.registry.to_owned(),
                    status: status.as_u16(),
                    message: format!("invalid token response: {e}"),
                })?;
            let expires_in = token.expires_in;
            let token = token
                .token
                .or(token.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Error::Registry {
                    registry: target.registry.to_owned(),
                    status: status.as_u16(),
                    message: "token response has no token".to_owned(),
                })?;
            // Renew a little early so a token does not expire mid-request.
            let lifetime = Duration::from_secs(token_lifetime(expires_in));
            Cached {
                authorization: format!("Bearer {token}"),
                expires: Some(Instant::now() + lifetime),
            }
        }
    };
    cache.put(target.host, target.scope, cached.clone());
    Ok(cached.authorization)
}

/// Seconds to cache a token for: `expires_in` (default 60) less 10%.
fn token_lifetime(expires_in: Option<u64>) -> u64 {
    let secs = expires_in.unwrap_or(60).max(1);
    secs - secs / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_challenge_parsing() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:1/token",service="x",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("x".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=https://a/t, service = "s\"q""#),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("s\"q".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Basic"), Some(Challenge::Basic));
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(token_lifetime(None), 54);
        assert_eq!(token_lifetime(Some(300)), 270);
    }
}
