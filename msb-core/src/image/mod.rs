//! OCI images: references and digests (pulling and unpacking land here too).
//!
//! ```
//! use msb_core::image::Reference;
//!
//! let r: Reference = "localhost:5000/team/app:v1".parse()?;
//! assert_eq!(r.registry(), "localhost:5000");
//! assert_eq!(r.to_string(), "localhost:5000/team/app:v1");
//! # Ok::<(), msb_core::Error>(())
//! ```

pub mod digest;
pub mod reference;

pub use digest::{Digest, DigestAlgorithm, DigestErrorKind};
pub use reference::{Reference, ReferenceErrorKind};
