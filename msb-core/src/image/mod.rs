//! OCI images: references and digests, the registry client, the
//! content-addressed store, layer unpacking, and [`pull`] tying them together.
//!
//! ```
//! use msb_core::image::Reference;
//!
//! let r: Reference = "localhost:5000/team/app:v1".parse()?;
//! assert_eq!(r.registry(), "localhost:5000");
//! assert_eq!(r.to_string(), "localhost:5000/team/app:v1");
//! # Ok::<(), msb_core::Error>(())
//! ```

pub mod config;
pub mod digest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use digest::{Digest, DigestAlgorithm, DigestErrorKind};
pub use pull::{PullOptions, PullTimings, PulledImage, Puller};
pub use reference::{Reference, ReferenceErrorKind};
