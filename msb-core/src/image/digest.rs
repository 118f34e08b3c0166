//! Content digests such as `sha256:<64 hex>`, as found in image references,
//! manifests and blob descriptors.
//!
//! Only the two algorithms the OCI image specification registers are
//! accepted: `sha256` and `sha512`. The encoded part must be lowercase hex of
//! exactly the algorithm's length, as `go-digest` requires.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// SHA-256: 64 hex characters.
    Sha256,
    /// SHA-512: 128 hex characters.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name as written in a digest (`sha256`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// How many hex characters an encoded digest of this algorithm has.
    ///
    /// ```
    /// use msb_core::image::DigestAlgorithm;
    /// assert_eq!(DigestAlgorithm::Sha256.hex_len(), 64);
    /// assert_eq!(DigestAlgorithm::Sha512.hex_len(), 128);
    /// ```
    pub const fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }

    /// The algorithm called `name`, if it is a supported one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestErrorKind {
    /// There is no `:` between the algorithm and the encoded value.
    #[error("expected <algorithm>:<hex>")]
    MissingSeparator,
    /// The algorithm is neither `sha256` nor `sha512`.
    #[error("unsupported algorithm {0:?} (expected sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// The encoded value has the wrong length for its algorithm.
    #[error("{algorithm} needs {expected} hex characters, found {actual}")]
    WrongLength {
        /// The digest's algorithm.
        algorithm: DigestAlgorithm,
        /// The length that algorithm requires.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// The encoded value holds something other than `0-9a-f`.
    #[error("encoded value must be lowercase hex")]
    NotLowercaseHex,
}

/// A validated content digest: an algorithm and its lowercase hex value.
///
/// ```
/// use msb_core::image::{Digest, DigestAlgorithm};
///
/// let hex = "a".repeat(64);
/// let digest: Digest = format!("sha256:{hex}").parse()?;
/// assert_eq!(digest.algorithm(), DigestAlgorithm::Sha256);
/// assert_eq!(digest.encoded(), hex);
/// assert_eq!(digest.to_string(), format!("sha256:{hex}"));
///
/// assert!("sha256:abc".parse::<Digest>().is_err());
/// assert!("md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>().is_err());
/// # Ok::<(), msb_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    /// A digest from its parts, e.g. the hex of a hash just computed.
    ///
    /// ```
    /// use msb_core::image::{Digest, DigestAlgorithm};
    ///
    /// let digest = Digest::new(DigestAlgorithm::Sha512, "0".repeat(128))?;
    /// assert!(digest.to_string().starts_with("sha512:000"));
    /// assert!(Digest::new(DigestAlgorithm::Sha512, "0".repeat(64)).is_err());
    /// # Ok::<(), msb_core::Error>(())
    /// ```
    pub fn new(algorithm: DigestAlgorithm, encoded: impl Into<String>) -> Result<Self> {
        let hex = encoded.into();
        check_encoded(algorithm, &hex).map_err(|reason| Error::InvalidDigest {
            digest: format!("{algorithm}:{hex}"),
            reason,
        })?;
        Ok(Self { algorithm, hex })
    }

    /// The digest's algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The encoded value: lowercase hex, without the `sha256:` prefix.
    pub fn encoded(&self) -> &str {
        &self.hex
    }

    /// Parses `s`, returning only the reason on failure (the caller adds
    /// context, e.g. the image reference the digest came from).
    pub(crate) fn parse_kind(s: &str) -> std::result::Result<Self, DigestErrorKind> {
        let (name, hex) = s.split_once(':').ok_or(DigestErrorKind::MissingSeparator)?;
        let algorithm = DigestAlgorithm::from_name(name)
            .ok_or_else(|| DigestErrorKind::UnsupportedAlgorithm(name.to_owned()))?;
        check_encoded(algorithm, hex)?;
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

fn check_encoded(
    algorithm: DigestAlgorithm,
    hex: &str,
) -> std::result::Result<(), DigestErrorKind> {
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DigestErrorKind::NotLowercaseHex);
    }
    if hex.len() != algorithm.hex_len() {
        return Err(DigestErrorKind::WrongLength {
            algorithm,
            expected: algorithm.hex_len(),
            actual: hex.len(),
        });
    }
    Ok(())
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse_kind(s).map_err(|reason| Error::InvalidDigest {
            digest: s.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> DigestErrorKind {
        match s.parse::<Digest>() {
            Err(Error::InvalidDigest { digest, reason }) => {
                assert_eq!(digest, s);
                reason
            }
            other => panic!("{s:?}: expected InvalidDigest, got {other:?}"),
        }
    }

    #[test]
    fn parses_and_displays_both_algorithms() {
        for (algorithm, len) in [
            (DigestAlgorithm::Sha256, 64),
            (DigestAlgorithm::Sha512, 128),
        ] {
            let hex: String = "0123456789abcdef".chars().cycle().take(len).collect();
            let text = format!("{algorithm}:{hex}");
            let digest: Digest = text.parse().unwrap();
            assert_eq!(digest.algorithm(), algorithm);
            assert_eq!(digest.encoded(), hex);
            assert_eq!(digest.to_string(), text);
            assert_eq!(Digest::new(algorithm, hex).unwrap(), digest);
        }
    }

    #[test]
    fn rejects_invalid_digests() {
        let hex64 = "f".repeat(64);
        assert_eq!(kind(""), DigestErrorKind::MissingSeparator);
        assert_eq!(kind(&hex64), DigestErrorKind::MissingSeparator);
        assert_eq!(
            kind(&format!("md5:{hex64}")),
            DigestErrorKind::UnsupportedAlgorithm("md5".into())
        );
        assert_eq!(
            kind(&format!("SHA256:{hex64}")),
            DigestErrorKind::UnsupportedAlgorithm("SHA256".into())
        );
        assert_eq!(
            kind(&format!("sha384:{}", "f".repeat(96))),
            DigestErrorKind::UnsupportedAlgorithm("sha384".into())
        );
        assert_eq!(
            kind(&format!(":{hex64}")),
            DigestErrorKind::UnsupportedAlgorithm(String::new())
        );
        assert_eq!(
            kind("sha256:abc"),
            DigestErrorKind::WrongLength {
                algorithm: DigestAlgorithm::Sha256,
                expected: 64,
                actual: 3
            }
        );
        assert_eq!(
            kind(&format!("sha512:{hex64}")),
            DigestErrorKind::WrongLength {
                algorithm: DigestAlgorithm::Sha512,
                expected: 128,
                actual: 64
            }
        );
        assert_eq!(
            kind(&format!("sha256:{hex64}f")),
            DigestErrorKind::WrongLength {
                algorithm: DigestAlgorithm::Sha256,
                expected: 64,
                actual: 65
            }
        );
        assert_eq!(
            kind(&format!("sha256:{}", "F".repeat(64))),
            DigestErrorKind::NotLowercaseHex
        );
        assert_eq!(
            kind(&format!("sha256:{}", "g".repeat(64))),
            DigestErrorKind::NotLowercaseHex
        );
        assert_eq!(
            kind(&format!("sha256:{hex64}:")),
            DigestErrorKind::NotLowercaseHex
        );
        assert_eq!(
            kind("sha256:"),
            DigestErrorKind::WrongLength {
                algorithm: DigestAlgorithm::Sha256,
                expected: 64,
                actual: 0
            }
        );
    }

    #[test]
    fn new_validates_and_names_the_digest() {
        let err = Digest::new(DigestAlgorithm::Sha256, "xyz").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid digest \"sha256:xyz\": encoded value must be lowercase hex"
        );
    }
}
