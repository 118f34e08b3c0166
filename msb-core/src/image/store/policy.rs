//! When to pull an image that may already be cached.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// When to pull an image from its registry.
///
/// ```
/// use msb_core::image::store::PullPolicy;
///
/// assert_eq!(PullPolicy::default(), PullPolicy::IfMissing);
/// assert_eq!("always".parse::<PullPolicy>()?, PullPolicy::Always);
/// assert_eq!("missing".parse::<PullPolicy>()?, PullPolicy::IfMissing);
/// assert_eq!(PullPolicy::IfMissing.to_string(), "if-missing");
/// assert!(!PullPolicy::IfMissing.needs_pull(true));
/// assert!("sometimes".parse::<PullPolicy>().is_err());
/// # Ok::<(), msb_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PullPolicy {
    /// Pull only when the image is not cached (`if-missing`, also `missing`).
    #[default]
    IfMissing,
    /// Always ask the registry (`always`); blobs already cached are not
    /// downloaded again.
    Always,
    /// Never pull (`never`): an uncached image is
    /// [`Error::ImageNotFound`].
    Never,
}

impl PullPolicy {
    /// Whether to contact the registry, given whether the image is cached.
    /// (For [`Never`](Self::Never) and an uncached image this is `false`;
    /// the caller reports [`Error::ImageNotFound`].)
    pub fn needs_pull(self, cached: bool) -> bool {
        match self {
            Self::IfMissing => !cached,
            Self::Always => true,
            Self::Never => false,
        }
    }

    /// The policy's name, as parsed and displayed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IfMissing => "if-missing",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

impl FromStr for PullPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "if-missing" | "missing" => Ok(Self::IfMissing),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(Error::InvalidPullPolicy {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_decides() {
        for p in [PullPolicy::IfMissing, PullPolicy::Always, PullPolicy::Never] {
            assert_eq!(p.to_string().parse::<PullPolicy>().unwrap(), p);
        }
        assert!(matches!(
            "IfMissing".parse::<PullPolicy>(),
            Err(Error::InvalidPullPolicy { value }) if value == "IfMissing"
        ));
        assert!(PullPolicy::IfMissing.needs_pull(false));
        assert!(PullPolicy::Always.needs_pull(true));
        assert!(!PullPolicy::Never.needs_pull(false));
    }
}
