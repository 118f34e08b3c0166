//! OCI images: pull into the local store, list, inspect, remove, collect
//! garbage.
//!
//! Images live in the state home (`$MSB_HOME`, default `~/.microsandbox`):
//! blobs by digest, shared between images, and one unpacked root filesystem
//! per image. Registry mirrors, plain-HTTP registries and extra CA
//! certificates come from `<state home>/config.json` and the environment
//! (`MSB_REGISTRY_MIRRORS`, `MSB_INSECURE_REGISTRIES`); credentials from
//! Docker's `config.json`.
//!
//! ```no_run
//! # async fn run() -> microsandbox::Result<()> {
//! use microsandbox::image::{Images, PullOptions};
//!
//! let images = Images::open_default()?;
//! let pulled = images.pull("alpine", &PullOptions::default()).await?;
//! println!("{} unpacked at {}", pulled.reference, pulled.rootfs.display());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use msb_core::image::registry::{Credentials, RegistryClient, RegistryConfig};
use msb_core::image::store::ImageStore;
use msb_core::image::{Puller, Reference};

pub use msb_core::image::registry::{Platform, Progress, ProgressSink};
use msb_core::image::store::GcOptions;
pub use msb_core::image::store::{GcStats, ImageRecord, PullPolicy};
pub use msb_core::image::{PullOptions, PullTimings, PulledImage};

use crate::error::{MicrosandboxError, Result};

/// The local image store and the registries it pulls from.
#[derive(Debug, Clone)]
pub struct Images {
    home: PathBuf,
    puller: Puller,
}

impl Images {
    /// The store in the default state home, with registry settings from its
    /// `config.json`, the environment and Docker's credentials.
    pub fn open_default() -> Result<Self> {
        Self::open(msb_core::paths::state_home())
    }

    /// The store in state home `home`, with registry settings from
    /// `home/config.json`, the environment and Docker's credentials.
    pub fn open(home: impl AsRef<Path>) -> Result<Self> {
        let home = home.as_ref().to_path_buf();
        let store_err = |source| MicrosandboxError::Store {
            path: home.join("images"),
            source: Box::new(source),
        };
        let config = RegistryConfig::load_from(&home).map_err(store_err)?;
        let credentials = Credentials::load_docker().map_err(store_err)?;
        let client = RegistryClient::new(config, credentials).map_err(store_err)?;
        let store = ImageStore::open(&home).map_err(store_err)?;
        Ok(Self {
            puller: Puller::new(client, store),
            home,
        })
    }

    /// The state home this store lives in.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Makes `reference` available as an unpacked root filesystem, pulling
    /// it as `options.policy` says (default: only if missing).
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<PulledImage> {
        let reference = parse(reference)?;
        self.puller
            .pull(&reference, options)
            .await
            .map_err(|source| match source {
                msb_core::Error::ImageNotFound { .. } => MicrosandboxError::ImageNotFound {
                    reference: reference.to_string(),
                },
                source => MicrosandboxError::Image {
                    reference: reference.to_string(),
                    source: Box::new(source),
                },
            })
    }

    /// Every image in the store, by reference.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        self.store()
            .list()
            .map_err(|source| self.store_error(source))
    }

    /// The stored image `reference`.
    pub fn inspect(&self, reference: &str) -> Result<ImageRecord> {
        let parsed = parse(reference)?;
        self.store()
            .resolve(&parsed)
            .map_err(|source| self.store_error(source))?
            .ok_or_else(|| MicrosandboxError::ImageNotFound {
                reference: parsed.to_string(),
            })
    }

    /// Untags `reference`; its blobs and tree go at the next [`gc`](Self::gc)
    /// unless another image shares them.
    pub fn remove(&self, reference: &str) -> Result<ImageRecord> {
        let parsed = parse(reference)?;
        self.store().remove(&parsed).map_err(|source| match source {
            msb_core::Error::ImageNotFound { .. } => MicrosandboxError::ImageNotFound {
                reference: parsed.to_string(),
            },
            source => self.store_error(source),
        })
    }

    /// Deletes blobs and trees no tagged image references, keeping the
    /// trees that sandboxes in this state home are built on (their image may
    /// have been untagged or re-pulled since).
    pub fn gc(&self) -> Result<GcStats> {
        let keep_trees = sandbox_trees(&self.home);
        let options = GcOptions {
            keep_trees,
            ..GcOptions::default()
        };
        self.store()
            .gc_with(&options)
            .map_err(|source| self.store_error(source))
    }

    fn store(&self) -> &ImageStore {
        self.puller.store()
    }

    fn store_error(&self, source: msb_core::Error) -> MicrosandboxError {
        MicrosandboxError::Store {
            path: self.store().root().to_path_buf(),
            source: Box::new(source),
        }
    }
}

/// The image trees the sandboxes of state home `home` use as their lower
/// layer. A sandbox whose record cannot be read keeps nothing.
fn sandbox_trees(home: &Path) -> Vec<PathBuf> {
    let Ok(store) = msb_core::sandbox::state::StateStore::open(home) else {
        return Vec::new();
    };
    store
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|record| {
            serde_json::from_value::<msb_core::sandbox::spec::SandboxSpec>(record.config).ok()
        })
        .filter_map(|spec| match spec.rootfs {
            msb_core::sandbox::spec::RootfsSpec::Image { tree, .. } => Some(tree),
            _ => None,
        })
        .collect()
}

/// Parses a pull policy: `always`, `if-missing` or `never`.
///
/// ```
/// use microsandbox::image::{pull_policy, PullPolicy};
/// assert_eq!(pull_policy("never")?, PullPolicy::Never);
/// assert!(pull_policy("sometimes").is_err());
/// # Ok::<(), microsandbox::MicrosandboxError>(())
/// ```
pub fn pull_policy(value: &str) -> Result<PullPolicy> {
    value
        .parse()
        .map_err(|source| MicrosandboxError::InvalidConfig {
            what: "pull policy",
            value: value.to_owned(),
            source: Box::new(source),
        })
}

/// Parses a platform, `os/architecture[/variant]` (e.g. `linux/arm64/v8`).
///
/// ```
/// let p = microsandbox::image::platform("linux/arm64")?;
/// assert_eq!(p.to_string(), "linux/arm64");
/// # Ok::<(), microsandbox::MicrosandboxError>(())
/// ```
pub fn platform(value: &str) -> Result<Platform> {
    value
        .parse()
        .map_err(|source| MicrosandboxError::InvalidConfig {
            what: "platform",
            value: value.to_owned(),
            source: Box::new(source),
        })
}

fn parse(reference: &str) -> Result<Reference> {
    reference
        .parse()
        .map_err(|source| MicrosandboxError::InvalidConfig {
            what: "image reference",
            value: reference.to_owned(),
            source: Box::new(source),
        })
}
