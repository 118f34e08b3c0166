//! The image configuration of a pulled image: what its author wants a
//! container to start with (`Env`, `WorkingDir`, `User`, `Entrypoint`,
//! `Cmd`).
//!
//! The store holds the platform manifest (under the digest a pull returns)
//! and the config blob it names; [`image_config`] reads both and parses the
//! config with oci-spec's [`ImageConfiguration`]. [`RuntimeDefaults`] is
//! the part sandboxes use.
//!
//! ```no_run
//! # fn run(store: &msb_core::image::store::ImageStore, digest: &msb_core::image::Digest) -> msb_core::Result<()> {
//! use msb_core::image::config::{RuntimeDefaults, image_config};
//!
//! let config = image_config(store, digest)?;
//! let defaults = RuntimeDefaults::of(&config);
//! println!("{:?} {:?}", defaults.entrypoint, defaults.cmd);
//! # Ok(())
//! # }
//! ```

pub use oci_spec::image::ImageConfiguration;

use crate::image::Digest;
use crate::image::registry::manifest::{Manifest, parse_manifest};
use crate::image::store::ImageStore;
use crate::{Error, Result};

/// The parsed config blob of the image whose (platform) manifest is
/// `manifest_digest` in `store`.
///
/// A manifest or config that does not parse is [`Error::InvalidManifest`];
/// a missing blob is [`Error::Io`] (`NotFound`).
pub fn image_config(store: &ImageStore, manifest_digest: &Digest) -> Result<ImageConfiguration> {
    let what = manifest_digest.to_string();
    let bytes = store.read_blob(manifest_digest, false)?;
    let (_, manifest) = parse_manifest(&bytes, None, &what)?;
    let Manifest::Image(manifest) = manifest else {
        return Err(Error::InvalidManifest {
            reference: what,
            reason: "an index where an image manifest was expected".into(),
        });
    };
    let config = store.read_blob(&manifest.config.digest, false)?;
    ImageConfiguration::from_reader(&config[..]).map_err(|e| Error::InvalidManifest {
        reference: what,
        reason: format!("image config {}: {e}", manifest.config.digest),
    })
}

/// What an image's config asks of the process a sandbox runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeDefaults {
    /// `Env`, split at the first `=` (entries without one are skipped).
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, when set and non-empty.
    pub workdir: Option<String>,
    /// `User`, when set and non-empty.
    pub user: Option<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

impl RuntimeDefaults {
    /// The defaults in `config` (all empty when it has no `config` section).
    pub fn of(config: &ImageConfiguration) -> RuntimeDefaults {
        let Some(c) = config.config() else {
            return RuntimeDefaults::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        RuntimeDefaults {
            env: c
                .env()
                .iter()
                .flatten()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .filter(|(k, _)| !k.is_empty())
                .collect(),
            workdir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_read_from_the_config_section() {
        let json = br#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "A=1=2", "BROKEN"],
                "WorkingDir": "/srv",
                "User": "nobody",
                "Entrypoint": ["/bin/echo"],
                "Cmd": ["hi"]
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let config = ImageConfiguration::from_reader(&json[..]).unwrap();
        let d = RuntimeDefaults::of(&config);
        assert_eq!(
            d.env,
            vec![("PATH".into(), "/bin".into()), ("A".into(), "1=2".into())]
        );
        assert_eq!(d.workdir.as_deref(), Some("/srv"));
        assert_eq!(d.user.as_deref(), Some("nobody"));
        assert_eq!(d.entrypoint, vec!["/bin/echo"]);
        assert_eq!(d.cmd, vec!["hi"]);
    }

    #[test]
    fn a_config_without_a_config_section_has_no_defaults() {
        let json = br#"{"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}}"#;
        let config = ImageConfiguration::from_reader(&json[..]).unwrap();
        assert_eq!(RuntimeDefaults::of(&config), RuntimeDefaults::default());
    }
}
