//! Image references (`alpine`, `localhost:5000/foo:tag`,
//! `ghcr.io/org/app@sha256:...`), parsed and normalized exactly as Docker's
//! `reference.ParseNormalizedNamed` does, then given the implied `latest` tag
//! when neither tag nor digest is present (as `docker pull` does).
//!
//! The grammar, written out by hand from `distribution/reference`:
//!
//! ```text
//! reference  := [registry "/"] path [":" tag] ["@" digest]
//! registry   := host [":" port]       host := domain | "[" ipv6 "]"
//! domain     := label ("." label)*    label := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! path       := component ("/" component)*
//! component  := [a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := sha256:<64 lowercase hex> | sha512:<128 lowercase hex>
//! ```
//!
//! The first path element is the registry only if it contains `.` or `:`, is
//! `localhost`, or contains an uppercase letter (repository names cannot);
//! otherwise the registry is `docker.io`. `index.docker.io` is `docker.io`, and
//! one-element Docker Hub names live under `library/`. The registry and path
//! together may not exceed 255 characters.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestErrorKind};
use crate::error::{Error, Result};

/// Docker Hub, the registry of names without one.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy name of Docker Hub, normalized to [`DOCKER_HUB`].
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// The namespace of Docker Hub's official images.
const OFFICIAL_PREFIX: &str = "library/";
/// The tag of a reference that names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest `registry/repository` Docker accepts.
pub const NAME_MAX_LEN: usize = 255;
/// The longest tag Docker accepts.
const TAG_MAX_LEN: usize = 128;

/// Why an image reference is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceErrorKind {
    /// The reference is the empty string.
    #[error("reference is empty")]
    Empty,
    /// `registry/repository` is longer than [`NAME_MAX_LEN`].
    #[error("repository name must not be more than 255 characters (is {len})")]
    TooLong {
        /// The length of the normalized `registry/repository`.
        len: usize,
    },
    /// The repository path contains an uppercase letter.
    #[error("repository name must be lowercase")]
    Uppercase,
    /// The reference is 64 hex characters, which Docker reads as an image ID.
    #[error("cannot specify 64-byte hexadecimal strings as a repository name")]
    AmbiguousHexName,
    /// The registry is not a `host[:port]`.
    #[error("invalid registry {0:?}")]
    InvalidRegistry(String),
    /// The repository path does not follow the grammar.
    #[error("invalid repository name {0:?}")]
    InvalidRepository(String),
    /// The tag does not follow the grammar.
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    /// The digest is malformed or uses an unsupported algorithm.
    #[error("invalid digest: {0}")]
    InvalidDigest(DigestErrorKind),
}

/// A normalized image reference: registry, repository, and a tag, a digest,
/// or both.
///
/// Parsing never leaves both tag and digest empty: a bare name gets the tag
/// `latest`. When both are present, both are kept and the digest is what
/// should be fetched.
///
/// ```
/// use msb_core::image::Reference;
///
/// let r: Reference = "alpine".parse()?;
/// assert_eq!(r.registry(), "docker.io");
/// assert_eq!(r.repository(), "library/alpine");
/// assert_eq!(r.tag(), Some("latest"));
/// assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
/// assert_eq!(r.familiar(), "alpine:latest");
///
/// let r: Reference = "[::1]:5000/team/app:v1.2".parse()?;
/// assert_eq!((r.registry(), r.repository(), r.tag()), ("[::1]:5000", "team/app", Some("v1.2")));
///
/// assert!("Alpine".parse::<Reference>().is_err());
/// # Ok::<(), msb_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry host, with its port if any (`docker.io`,
    /// `localhost:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `None` only for a reference pinned by digest alone.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference is pinned to one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag, or `latest` for a reference pinned by digest alone: the name
    /// under which such an image can be listed.
    ///
    /// ```
    /// use msb_core::image::Reference;
    ///
    /// let digest = format!("sha256:{}", "e".repeat(64));
    /// let r: Reference = format!("alpine@{digest}").parse()?;
    /// assert_eq!(r.tag(), None);
    /// assert_eq!(r.tag_or_latest(), "latest");
    /// assert_eq!(r.digest().map(|d| d.to_string()), Some(digest));
    /// # Ok::<(), msb_core::Error>(())
    /// ```
    pub fn tag_or_latest(&self) -> &str {
        self.tag().unwrap_or(DEFAULT_TAG)
    }

    /// The short form Docker shows users (its `FamiliarString`): without
    /// `docker.io/`, and without `library/` for official images.
    ///
    /// Unlike Docker, `docker.io/` stays when the repository's first element
    /// would otherwise read as a registry (`docker.io/my.org/app`), so the
    /// short form always parses back to the same reference.
    ///
    /// ```
    /// use msb_core::image::Reference;
    ///
    /// let familiar = |s: &str| s.parse::<Reference>().map(|r| r.familiar());
    /// assert_eq!(familiar("docker.io/library/alpine")?, "alpine:latest");
    /// assert_eq!(familiar("index.docker.io/user/repo:1")?, "user/repo:1");
    /// assert_eq!(familiar("localhost:5000/foo")?, "localhost:5000/foo:latest");
    /// # Ok::<(), msb_core::Error>(())
    /// ```
    pub fn familiar(&self) -> String {
        let repository = self.repository.as_str();
        let first = repository.split('/').next().unwrap_or_default();
        if self.registry != DOCKER_HUB || (repository.contains('/') && names_registry(first)) {
            return self.to_string();
        }
        let name = repository
            .strip_prefix(OFFICIAL_PREFIX)
            .filter(|official| !official.contains('/'))
            .unwrap_or(repository);
        format!("{name}{}", self.suffix())
    }

    /// The same image from another registry, e.g. a mirror: the repository,
    /// tag and digest stay, normalized as if the result had been parsed.
    ///
    /// `registry` must be one that parsing would recognize as a registry
    /// (it contains `.`, `:` or an uppercase letter, or is `localhost`) and
    /// has no path, so that the result's
    /// [`Display`](fmt::Display) form still parses back to it.
    ///
    /// ```
    /// use msb_core::image::Reference;
    ///
    /// let r: Reference = "alpine:3.20".parse()?;
    /// let mirrored = r.with_registry("mirror.gcr.io")?;
    /// assert_eq!(mirrored.to_string(), "mirror.gcr.io/library/alpine:3.20");
    /// assert_eq!(r.with_registry("127.0.0.1:5000")?.familiar(), "127.0.0.1:5000/library/alpine:3.20");
    /// assert!(r.with_registry("mirror").is_err());
    /// # Ok::<(), msb_core::Error>(())
    /// ```
    pub fn with_registry(&self, registry: &str) -> Result<Self> {
        let candidate = format!("{registry}/{}{}", self.repository, self.suffix());
        if registry.contains('/') || !names_registry(registry) {
            return Err(Error::InvalidReference {
                reference: candidate,
                reason: ReferenceErrorKind::InvalidRegistry(registry.to_owned()),
            });
        }
        candidate.parse()
    }

    /// `:tag` and `@digest`, as present.
    fn suffix(&self) -> String {
        let mut suffix = String::new();
        if let Some(tag) = &self.tag {
            suffix.push(':');
            suffix.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            suffix.push('@');
            suffix.push_str(&digest.to_string());
        }
        suffix
    }

    /// The parser proper; [`FromStr`] adds the input to the error.
    fn parse_kind(s: &str) -> std::result::Result<Self, ReferenceErrorKind> {
        if s.is_empty() {
            return Err(ReferenceErrorKind::Empty);
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceErrorKind::AmbiguousHexName);
        }
        let (registry, remainder) = split_registry(s);
        // Docker checks case on everything before the first ':' of the
        // remainder, before any other validation.
        let remote = remainder.split(':').next().unwrap_or_default();
        if remote.to_lowercase() != remote {
            return Err(ReferenceErrorKind::Uppercase);
        }
        // Neither tag nor digest may contain '@', and the path holds neither
        // ':' nor '@': the first of each marks where the next part starts.
        let (name, digest) = match remainder.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (remainder.as_str(), None),
        };
        let (path, tag) = match name.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (name, None),
        };
        if !is_valid_registry(registry) {
            return Err(ReferenceErrorKind::InvalidRegistry(registry.to_owned()));
        }
        if !path.split('/').all(is_valid_path_component) {
            return Err(ReferenceErrorKind::InvalidRepository(path.to_owned()));
        }
        if let Some(tag) = tag.filter(|tag| !is_valid_tag(tag)) {
            return Err(ReferenceErrorKind::InvalidTag(tag.to_owned()));
        }
        let len = registry.len() + 1 + path.len();
        if len > NAME_MAX_LEN {
            return Err(ReferenceErrorKind::TooLong { len });
        }
        let digest = digest
            .map(Digest::parse_kind)
            .transpose()
            .map_err(ReferenceErrorKind::InvalidDigest)?;
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository: path.to_owned(),
            tag,
            digest,
        })
    }
}

/// Splits `s` into its registry and the rest, as Docker's `splitDockerDomain`:
/// the first element is a registry only if [`names_registry`] says so.
fn split_registry(s: &str) -> (&str, String) {
    let (registry, rest) = match s.split_once('/') {
        Some((first, rest)) if names_registry(first) => (first, rest),
        _ => (DOCKER_HUB, s),
    };
    let registry = if registry == LEGACY_DOCKER_HUB {
        DOCKER_HUB
    } else {
        registry
    };
    if registry == DOCKER_HUB && !rest.contains('/') {
        (registry, format!("{OFFICIAL_PREFIX}{rest}"))
    } else {
        (registry, rest.to_owned())
    }
}

/// Whether Docker reads a leading path element as a registry rather than a
/// Docker Hub namespace.
fn names_registry(first: &str) -> bool {
    first == "localhost" || first.contains(['.', ':']) || first.to_lowercase() != first
}

/// `host[:port]`, with `host` a DNS name, an IPv4 address, or `[ipv6]`.
fn is_valid_registry(registry: &str) -> bool {
    // Split off ":port", looking past the colons of a bracketed IPv6 address.
    let host_end = if registry.starts_with('[') {
        registry.find(']').map_or(registry.len(), |i| i + 1)
    } else {
        registry.find(':').unwrap_or(registry.len())
    };
    let (host, port) = registry.split_at(host_end);
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|addr| {
            !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        }),
        None => host.split('.').all(is_valid_domain_label),
    };
    host_ok && port_ok
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_valid_domain_label(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_valid_path_component(component: &str) -> bool {
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !is_alnum(first) || !is_alnum(last) {
        return false;
    }
    // Every maximal run of non-alphanumerics must be a valid separator.
    component
        .split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        .all(|sep| matches!(sep, "" | "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
}

/// `[\w][\w.-]{0,127}` with ASCII `\w`.
fn is_valid_tag(tag: &str) -> bool {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [first, rest @ ..] => {
            tag.len() <= TAG_MAX_LEN
                && is_word(*first)
                && rest.iter().all(|&b| is_word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse_kind(s).map_err(|reason| Error::InvalidReference {
            reference: s.to_owned(),
            reason,
        })
    }
}

/// The fully normalized form, `registry/repository[:tag][@digest]`, which
/// parses back to an equal [`Reference`].
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.registry, self.repository, self.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn parse(s: &str) -> Reference {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn reason(s: &str) -> ReferenceErrorKind {
        match s.parse::<Reference>() {
            Err(Error::InvalidReference { reference, reason }) => {
                assert_eq!(reference, s);
                reason
            }
            other => panic!("{s:?} should be rejected, got {other:?}"),
        }
    }

    /// Docker's normalization table: input, normalized string, familiar string.
    #[test]
    fn normalizes_like_docker() {
        let d256 = format!("sha256:{HEX64}");
        let d512 = format!("sha512:{HEX64}{HEX64}");
        let cases: Vec<(String, String, String)> = [
            ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
            (
                "alpine:3.20",
                "docker.io/library/alpine:3.20",
                "alpine:3.20",
            ),
            (
                "library/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "docker.io/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "docker.io/library/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "index.docker.io/alpine",
                "docker.io/library/alpine:latest",
                "alpine:latest",
            ),
            (
                "index.docker.io/library/alpine:edge",
                "docker.io/library/alpine:edge",
                "alpine:edge",
            ),
            (
                "index.docker.io/user/repo",
                "docker.io/user/repo:latest",
                "user/repo:latest",
            ),
            (
                "user/repo",
                "docker.io/user/repo:latest",
                "user/repo:latest",
            ),
            (
                "docker/docker",
                "docker.io/docker/docker:latest",
                "docker/docker:latest",
            ),
            (
                "library/a/b",
                "docker.io/library/a/b:latest",
                "library/a/b:latest",
            ),
            (
                "a/b/c/d/e",
                "docker.io/a/b/c/d/e:latest",
                "a/b/c/d/e:latest",
            ),
            (
                "test_com",
                "docker.io/library/test_com:latest",
                "test_com:latest",
            ),
            (
                "test.com:tag",
                "docker.io/library/test.com:tag",
                "test.com:tag",
            ),
            (
                "test.com:5000",
                "docker.io/library/test.com:5000",
                "test.com:5000",
            ),
            (
                "test.com/repo:tag",
                "test.com/repo:tag",
                "test.com/repo:tag",
            ),
            (
                "test:5000/repo",
                "test:5000/repo:latest",
                "test:5000/repo:latest",
            ),
            (
                "test:5000/repo:tag",
                "test:5000/repo:tag",
                "test:5000/repo:tag",
            ),
            (
                "lowercase:Uppercase",
                "docker.io/library/lowercase:Uppercase",
                "lowercase:Uppercase",
            ),
            (
                "foo_bar.com:8080",
                "docker.io/library/foo_bar.com:8080",
                "foo_bar.com:8080",
            ),
            (
                "foo/foo_bar.com:8080",
                "docker.io/foo/foo_bar.com:8080",
                "foo/foo_bar.com:8080",
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux",
                "sub-dom1.foo.com/bar/baz/quux:latest",
                "sub-dom1.foo.com/bar/baz/quux:latest",
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io/test.example.com/my-app:test.example.com",
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com",
                "xn--n3h.com/myimage:xn--n3h.com",
                "xn--n3h.com/myimage:xn--n3h.com",
            ),
            (
                "localhost/foo",
                "localhost/foo:latest",
                "localhost/foo:latest",
            ),
            (
                "localhost:5000/foo",
                "localhost:5000/foo:latest",
                "localhost:5000/foo:latest",
            ),
            (
                "localhost:5000/foo/bar:tag",
                "localhost:5000/foo/bar:tag",
                "localhost:5000/foo/bar:tag",
            ),
            (
                "127.0.0.1:5000/a/b:tag",
                "127.0.0.1:5000/a/b:tag",
                "127.0.0.1:5000/a/b:tag",
            ),
            (
                "192.168.1.1/foo",
                "192.168.1.1/foo:latest",
                "192.168.1.1/foo:latest",
            ),
            ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest"),
            (
                "[2001:db8::1]/repo",
                "[2001:db8::1]/repo:latest",
                "[2001:db8::1]/repo:latest",
            ),
            (
                "[2001:db8:1:2:3:4:5:6]/repo:tag",
                "[2001:db8:1:2:3:4:5:6]/repo:tag",
                "[2001:db8:1:2:3:4:5:6]/repo:tag",
            ),
            (
                "[2001:db8::]:5000/repo",
                "[2001:db8::]:5000/repo:latest",
                "[2001:db8::]:5000/repo:latest",
            ),
            (
                "[FE80::1]:5000/repo",
                "[FE80::1]:5000/repo:latest",
                "[FE80::1]:5000/repo:latest",
            ),
            // An uppercase first element can only be a registry.
            ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest"),
            (
                "Docker.io/alpine",
                "Docker.io/alpine:latest",
                "Docker.io/alpine:latest",
            ),
            // Docker Hub namespaces that look like registries keep `docker.io/`.
            (
                "docker.io/my.org/app",
                "docker.io/my.org/app:latest",
                "docker.io/my.org/app:latest",
            ),
            (
                "docker.io/localhost/app",
                "docker.io/localhost/app:latest",
                "docker.io/localhost/app:latest",
            ),
            (
                "docker.io/my.app",
                "docker.io/library/my.app:latest",
                "my.app:latest",
            ),
            // Names that merely look like a registry without a '/'.
            (
                "localhost",
                "docker.io/library/localhost:latest",
                "localhost:latest",
            ),
            (
                "localhost:5000",
                "docker.io/library/localhost:5000",
                "localhost:5000",
            ),
            // Separators.
            (
                "a__b/c_d.e",
                "docker.io/a__b/c_d.e:latest",
                "a__b/c_d.e:latest",
            ),
            (
                "a-----b",
                "docker.io/library/a-----b:latest",
                "a-----b:latest",
            ),
            (
                "a-b.c_d__e",
                "docker.io/library/a-b.c_d__e:latest",
                "a-b.c_d__e:latest",
            ),
            ("0/1:_", "docker.io/0/1:_", "0/1:_"),
            // A 64-hex name is fine once it carries a tag.
            (
                &format!("{HEX64}:tag"),
                &format!("docker.io/library/{HEX64}:tag"),
                &format!("{HEX64}:tag"),
            ),
            (
                &format!("{HEX64}/x"),
                &format!("docker.io/{HEX64}/x:latest"),
                &format!("{HEX64}/x:latest"),
            ),
        ]
        .into_iter()
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
        .chain([
            (
                format!("alpine@{d256}"),
                format!("docker.io/library/alpine@{d256}"),
                format!("alpine@{d256}"),
            ),
            (
                format!("alpine:3@{d256}"),
                format!("docker.io/library/alpine:3@{d256}"),
                format!("alpine:3@{d256}"),
            ),
            (
                format!("test:5000/repo@{d256}"),
                format!("test:5000/repo@{d256}"),
                format!("test:5000/repo@{d256}"),
            ),
            (
                format!("test:5000/repo:tag@{d256}"),
                format!("test:5000/repo:tag@{d256}"),
                format!("test:5000/repo:tag@{d256}"),
            ),
            (
                format!("registry.example.com/ns/img@{d256}"),
                format!("registry.example.com/ns/img@{d256}"),
                format!("registry.example.com/ns/img@{d256}"),
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"),
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"),
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"),
            ),
        ])
        .collect();
        for (input, normalized, familiar) in cases {
            let r = parse(&input);
            assert_eq!(r.to_string(), normalized, "display of {input:?}");
            assert_eq!(r.familiar(), familiar, "familiar of {input:?}");
            assert_eq!(parse(&normalized), r, "reparse of {input:?}");
            assert_eq!(parse(&familiar), r, "familiar reparse of {input:?}");
        }
    }

    #[test]
    fn exposes_parts() {
        let r = parse(&format!("registry.example.com/ns/img:v1@sha256:{HEX64}"));
        assert_eq!(r.registry(), "registry.example.com");
        assert_eq!(r.repository(), "ns/img");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.tag_or_latest(), "v1");
        let digest = r.digest().unwrap();
        assert_eq!(digest.algorithm(), crate::image::DigestAlgorithm::Sha256);
        assert_eq!(digest.encoded(), HEX64);

        let r = parse("[::1]:5000/x");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("[::1]:5000", "x", Some("latest"))
        );
        assert_eq!(r.digest(), None);

        let r = parse(&format!("localhost/x@sha512:{HEX64}{HEX64}"));
        assert_eq!((r.tag(), r.tag_or_latest()), (None, "latest"));
    }

    #[test]
    fn rejects_like_docker() {
        use ReferenceErrorKind as K;
        let repo = |s: &str| K::InvalidRepository(s.to_owned());
        let registry = |s: &str| K::InvalidRegistry(s.to_owned());
        let tag = |s: &str| K::InvalidTag(s.to_owned());
        let cases = [
            ("", K::Empty),
            (HEX64, K::AmbiguousHexName),
            ("Uppercase", K::Uppercase),
            ("ALPINE:latest", K::Uppercase),
            ("docker/Docker", K::Uppercase),
            ("user/Repo:tag", K::Uppercase),
            ("localhost:5000/Foo", K::Uppercase),
            ("example.com/ns/Img", K::Uppercase),
            ("alpine@SHA256:abc", K::Uppercase),
            ("ÄLPINE", K::Uppercase),
            ("-docker", repo("library/-docker")),
            ("docker-", repo("library/docker-")),
            ("docker/-docker", repo("docker/-docker")),
            ("aa/asdf$$^/aa", repo("aa/asdf$$^/aa")),
            ("a..b", repo("library/a..b")),
            ("a___b", repo("library/a___b")),
            ("a._b", repo("library/a._b")),
            ("a-.b", repo("library/a-.b")),
            ("a/", repo("a/")),
            ("a//b", repo("a//b")),
            ("/a", repo("/a")),
            ("alpinė", repo("library/alpinė")),
            ("a b", repo("library/a b")),
            (":tag", repo("library/")),
            ("@sha256:abc", repo("library/")),
            ("example.com/", repo("")),
            ("https://github.com/docker/docker", registry("https:")),
            ("::1/repo", registry("::1")),
            ("[fe80::1%eth0]:5000/repo", registry("[fe80::1%eth0]:5000")),
            ("[2001:db8::1]:/repo", registry("[2001:db8::1]:")),
            ("[2001:db8::1]x/repo", registry("[2001:db8::1]x")),
            ("[]/repo", repo("[]/repo")),
            ("[::1/repo", registry("[::1")),
            ("foo.com:abc/bar", registry("foo.com:abc")),
            ("foo.com:/bar", registry("foo.com:")),
            ("foo.com:1:2/bar", registry("foo.com:1:2")),
            ("-foo.com/bar", registry("-foo.com")),
            ("foo.com-/bar", registry("foo.com-")),
            ("foo..com/bar", registry("foo..com")),
            (".foo.com/bar", registry(".foo.com")),
            ("my_registry.com/bar", registry("my_registry.com")),
            ("test.com/foo:", tag("")),
            ("foo:-tag", tag("-tag")),
            ("foo:.tag", tag(".tag")),
            ("foo:ta g", tag("ta g")),
            ("foo:a:b", tag("a:b")),
            ("foo:a/b", registry("foo:a")),
            (
                "alpine@",
                K::InvalidDigest(DigestErrorKind::MissingSeparator),
            ),
            (
                "alpine@sha256",
                K::InvalidDigest(DigestErrorKind::MissingSeparator),
            ),
            (
                "alpine:tag@md5:abc",
                K::InvalidDigest(DigestErrorKind::UnsupportedAlgorithm("md5".into())),
            ),
            (
                "alpine@sha256:abc@sha256:abc",
                K::InvalidDigest(DigestErrorKind::NotLowercaseHex),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(reason(input), expected, "{input:?}");
        }

        let d = |hex: String| format!("alpine@sha256:{hex}");
        assert_eq!(
            reason(&d("F".repeat(64))),
            K::InvalidDigest(DigestErrorKind::NotLowercaseHex)
        );
        assert!(matches!(
            reason(&d("f".repeat(63))),
            K::InvalidDigest(DigestErrorKind::WrongLength { actual: 63, .. })
        ));
        assert!(matches!(
            reason(&format!("alpine@sha512:{HEX64}")),
            K::InvalidDigest(DigestErrorKind::WrongLength {
                expected: 128,
                actual: 64,
                ..
            })
        ));
        assert_eq!(
            reason(&format!("alpine@sha384:{HEX64}")),
            K::InvalidDigest(DigestErrorKind::UnsupportedAlgorithm("sha384".into()))
        );
    }

    #[test]
    fn enforces_length_limits() {
        // "docker.io/library/" is 18 characters of the 255.
        let name = "a".repeat(NAME_MAX_LEN - 18);
        assert_eq!(
            parse(&name).to_string().len(),
            NAME_MAX_LEN + ":latest".len()
        );
        let long = format!("{name}a");
        assert_eq!(reason(&long), ReferenceErrorKind::TooLong { len: 256 });
        let host = format!("{}.com", "r".repeat(240));
        assert!(matches!(
            reason(&format!("{host}/{}", "x".repeat(20))),
            ReferenceErrorKind::TooLong { .. }
        ));

        let tag = "t".repeat(128);
        assert_eq!(parse(&format!("alpine:{tag}")).tag(), Some(tag.as_str()));
        assert_eq!(
            reason(&format!("alpine:{tag}t")),
            ReferenceErrorKind::InvalidTag(format!("{tag}t"))
        );
    }

    #[test]
    fn error_messages_name_the_input() {
        let err = "docker/Docker".parse::<Reference>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid image reference \"docker/Docker\": repository name must be lowercase"
        );
        let err = "alpine@sha256:abc".parse::<Reference>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid image reference \"alpine@sha256:abc\": invalid digest: sha256 needs 64 hex characters, found 3"
        );
    }

    #[test]
    fn with_registry_swaps_the_registry() {
        let digest = format!("sha256:{HEX64}");
        let r = parse(&format!("alpine:3@{digest}"));
        let m = r.with_registry("mirror.gcr.io").unwrap();
        assert_eq!(
            m.to_string(),
            format!("mirror.gcr.io/library/alpine:3@{digest}")
        );
        assert_eq!((m.tag(), m.digest()), (r.tag(), r.digest()));

        let local = parse("localhost:5000/foo");
        assert_eq!(
            local.with_registry("index.docker.io").unwrap().to_string(),
            "docker.io/library/foo:latest"
        );
        assert_eq!(
            local.with_registry("[::1]:5000").unwrap().to_string(),
            "[::1]:5000/foo:latest"
        );
        assert_eq!(
            local.with_registry("localhost").unwrap().to_string(),
            "localhost/foo:latest"
        );
        assert_eq!(
            parse("docker.io/a/b").with_registry("docker.io").unwrap(),
            parse("a/b")
        );

        for bad in [
            "mirror",
            "",
            "mirror.io/prefix",
            "a@b.com",
            "bad_host.com",
            "host.com:port",
            "[::1",
        ] {
            match local.with_registry(bad) {
                Err(Error::InvalidReference {
                    reason: ReferenceErrorKind::InvalidRegistry(r),
                    ..
                }) => {
                    assert_eq!(r, bad)
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = format!("{}.com", "r".repeat(250));
        assert!(matches!(
            local.with_registry(&long),
            Err(Error::InvalidReference {
                reason: ReferenceErrorKind::TooLong { .. },
                ..
            })
        ));
    }

    /// A tiny deterministic generator (xorshift64*), enough to cover the grammar.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
        /// A string of `len` characters from `alphabet`, `len` drawn from `lens`.
        fn chars(&mut self, alphabet: &str, lens: std::ops::Range<usize>) -> String {
            let len = lens.start + self.below(lens.len());
            let alphabet = alphabet.as_bytes();
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())] as char)
                .collect()
        }
    }

    const ALNUM: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

    fn path_component(g: &mut Gen) -> String {
        let mut c = g.chars(ALNUM, 1..7);
        for _ in 0..g.below(3) {
            c.push_str(g.pick(&[".", "_", "__", "-", "--", "---"]));
            let run = g.chars(ALNUM, 1..5);
            c.push_str(&run);
        }
        c
    }

    #[test]
    fn generated_references_round_trip() {
        let registries = [
            "",
            "docker.io/",
            "index.docker.io/",
            "localhost/",
            "localhost:5000/",
            "example.com/",
            "registry-1.example.co.uk:443/",
            "127.0.0.1:5000/",
            "[::1]:5000/",
            "[2001:db8::1]/",
            "Reg.Example:8/",
            "Upper/",
        ];
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let registry = g.pick(&registries);
            let mut path: Vec<String> = (0..1 + g.below(4))
                .map(|_| path_component(&mut g))
                .collect();
            if registry.is_empty() && path.len() > 1 {
                // A leading element with a '.' would itself be a registry.
                path[0] = path[0].replace('.', "_");
            }
            let path = path.join("/");
            let tag = (g.below(2) == 0).then(|| {
                let first = g.chars("abcXYZ019_", 1..2);
                first + &g.chars("abcXYZ019_.-", 0..20)
            });
            let digest = match g.below(3) {
                0 => None,
                1 => Some(format!("sha256:{}", g.chars("0123456789abcdef", 64..65))),
                _ => Some(format!("sha512:{}", g.chars("0123456789abcdef", 128..129))),
            };
            let mut input = format!("{registry}{path}");
            if let Some(tag) = &tag {
                input = format!("{input}:{tag}");
            }
            if let Some(digest) = &digest {
                input = format!("{input}@{digest}");
            }

            let r = parse(&input);
            assert_eq!(parse(&r.to_string()), r, "display round trip of {input:?}");
            assert_eq!(parse(&r.familiar()), r, "familiar round trip of {input:?}");
            assert_eq!(
                r.to_string().parse::<Reference>().unwrap().to_string(),
                r.to_string()
            );

            let expected_registry = match registry.trim_end_matches('/') {
                "" | "index.docker.io" => DOCKER_HUB,
                other => other,
            };
            assert_eq!(r.registry(), expected_registry, "{input:?}");
            let official = r.registry() == DOCKER_HUB && !path.contains('/');
            let expected_path = if official {
                format!("library/{path}")
            } else {
                path.clone()
            };
            assert_eq!(r.repository(), expected_path, "{input:?}");
            let expected_tag = tag.or_else(|| digest.is_none().then(|| DEFAULT_TAG.to_owned()));
            assert_eq!(r.tag(), expected_tag.as_deref(), "{input:?}");
            assert_eq!(r.digest().map(ToString::to_string), digest, "{input:?}");

            let mirror = r.with_registry("mirror.example.com:5000").unwrap();
            assert_eq!(mirror.repository(), r.repository());
            assert_eq!(parse(&mirror.to_string()), mirror);

            // An uppercase letter anywhere in the path is rejected.
            let at = g.below(path.len());
            if path.as_bytes()[at].is_ascii_lowercase() {
                let mut upper = path.clone();
                upper.replace_range(at..=at, &path[at..=at].to_ascii_uppercase());
                let prefix = if registry.is_empty() {
                    "docker.io/"
                } else {
                    registry
                };
                let bad = format!("{prefix}{upper}");
                assert_eq!(reason(&bad), ReferenceErrorKind::Uppercase, "{bad:?}");
            }
        }
    }
}
