//! Validated sandbox names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest sandbox name accepted, in bytes (names are ASCII).
pub const NAME_MAX_LEN: usize = 63;

/// Why a sandbox name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxNameErrorKind {
    /// The name is the empty string.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`NAME_MAX_LEN`].
    #[error("name must not be more than {NAME_MAX_LEN} characters (is {len})")]
    TooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// The name is `.` or `..`, or contains `..`.
    #[error("name must not be or contain a relative path component (`.`, `..`)")]
    DotPath,
    /// The name contains `/`.
    #[error("name must not contain '/'")]
    Slash,
    /// The first character is not an ASCII letter or digit.
    #[error("name must start with an ASCII letter or digit, not {0:?}")]
    InvalidStart(char),
    /// A character outside `[a-zA-Z0-9_.-]`.
    #[error("name must contain only ASCII letters, digits, '_', '.' and '-', not {0:?}")]
    InvalidChar(char),
}

/// A sandbox name: 1 to [`NAME_MAX_LEN`] characters matching
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, with no `..` anywhere.
///
/// Every valid name is a single, ordinary path component, so it can be used
/// as a directory name under the state home without further checks.
///
/// ```
/// use msb_core::sandbox::state::SandboxName;
///
/// let name = SandboxName::new("worker-1").unwrap();
/// assert_eq!(name.as_str(), "worker-1");
/// assert!(SandboxName::new("../etc").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxName(String);

impl SandboxName {
    /// Validates `name`, or returns [`Error::InvalidSandboxName`].
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match validate(&name) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(Error::InvalidSandboxName { name, reason }),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `name` against the grammar; the first problem found wins, in the
/// order: empty, too long, `.`/`..`, `/`, first character, other characters.
fn validate(name: &str) -> std::result::Result<(), SandboxNameErrorKind> {
    if name.is_empty() {
        return Err(SandboxNameErrorKind::Empty);
    }
    if name.len() > NAME_MAX_LEN {
        return Err(SandboxNameErrorKind::TooLong { len: name.len() });
    }
    if name == "." || name.contains("..") {
        return Err(SandboxNameErrorKind::DotPath);
    }
    if name.contains('/') {
        return Err(SandboxNameErrorKind::Slash);
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or_default();
    if !first.is_ascii_alphanumeric() {
        return Err(SandboxNameErrorKind::InvalidStart(first));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(SandboxNameErrorKind::InvalidChar(bad));
    }
    Ok(())
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SandboxName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SandboxName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for SandboxName {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<SandboxName> for String {
    fn from(name: SandboxName) -> String {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_name_validation_table() {
        use SandboxNameErrorKind as K;
        let max = "a".repeat(NAME_MAX_LEN);
        let over = "a".repeat(NAME_MAX_LEN + 1);
        let cases: &[(&str, Option<K>)] = &[
            ("a", None),
            ("worker-1", None),
            ("Worker_2.test", None),
            ("0abc", None),
            ("a.b", None),
            ("a-", None),
            (&max, None),
            ("", Some(K::Empty)),
            (
                &over,
                Some(K::TooLong {
                    len: NAME_MAX_LEN + 1,
                }),
            ),
            (".", Some(K::DotPath)),
            ("..", Some(K::DotPath)),
            ("a..b", Some(K::DotPath)),
            ("../etc", Some(K::DotPath)),
            ("a/b", Some(K::Slash)),
            ("/abs", Some(K::Slash)),
            (".hidden", Some(K::InvalidStart('.'))),
            ("-x", Some(K::InvalidStart('-'))),
            ("_x", Some(K::InvalidStart('_'))),
            ("é", Some(K::InvalidStart('é'))),
            ("a b", Some(K::InvalidChar(' '))),
            ("a\0b", Some(K::InvalidChar('\0'))),
            ("a:b", Some(K::InvalidChar(':'))),
            ("aé", Some(K::InvalidChar('é'))),
        ];
        for (name, want) in cases {
            let got = SandboxName::new(*name);
            match (want, got) {
                (None, Ok(n)) => assert_eq!(n.as_str(), *name),
                (Some(want), Err(Error::InvalidSandboxName { name: n, reason })) => {
                    assert_eq!(&reason, want, "name {name:?}");
                    assert_eq!(&n, name);
                }
                (want, got) => panic!("name {name:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn sandbox_name_serde_validates() {
        let n: SandboxName = serde_json::from_str("\"ok-1\"").unwrap();
        assert_eq!(n.as_str(), "ok-1");
        assert!(serde_json::from_str::<SandboxName>("\"../x\"").is_err());
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"ok-1\"");
    }
}
