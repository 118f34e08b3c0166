//! OCI images built in memory from real files and pushed to a
//! [`TestRegistry`] over the distribution HTTP API.
//!
//! ```no_run
//! # async fn demo() {
//! use test_utils::images::{busybox_image, Compression, ImageBuilder, LayerBuilder};
//! use test_utils::registry::TestRegistry;
//!
//! let registry = TestRegistry::start();
//! let pushed = busybox_image().push(&registry, "busybox", "latest").await.unwrap();
//! println!("{} = {}", pushed.reference, pushed.manifest_digest);
//!
//! let mut layer = LayerBuilder::new();
//! layer.file("hello.txt", b"hi\n", 0o644);
//! let custom = ImageBuilder::new()
//!     .layer(layer, Compression::Zstd)
//!     .cmd(["/bin/sh"])
//!     .push_blocking(&registry, "custom", "v1")
//!     .unwrap();
//! # }
//! ```
//!
//! Lower-level [`push_blob`] / [`push_manifest`] push arbitrary bytes, for
//! tests that need a broken image (digest mismatch, missing layer, ...).

mod fixtures;

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::registry::{FixtureError, TestRegistry};

pub use fixtures::{
    BUSYBOX_APPLETS, BUSYBOX_BINARY, DEBIAN_MIRROR, DEBIAN_SUITE, Expected, ExpectedKind,
    LAYERED_ABSENT, LAYERED_EXPECTED, LAYERED_HARDLINKS, assert_layered_tree, busybox_image,
    debian_image, debian_layers_dir, debian_rootfs, debian_rootfs_dir, layered_image,
    multi_platform_index, try_busybox_image,
};

/// The mtime of every entry a [`LayerBuilder`] writes (2023-11-14), so layer
/// digests are reproducible.
pub const FIXED_MTIME: u64 = 1_700_000_000;

/// Media types.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer (also used in Docker manifests: Docker has no zstd type).
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker uncompressed layer.
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The OCI architecture name of this host (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (default level).
    Gzip,
    /// zstd (level 3).
    Zstd,
}

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTypes {
    /// `application/vnd.oci.image.*`.
    #[default]
    Oci,
    /// `application/vnd.docker.*` (schema 2).
    Docker,
}

impl MediaTypes {
    /// The manifest media type.
    pub fn manifest(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_MANIFEST,
            Self::Docker => media::DOCKER_MANIFEST,
        }
    }

    /// The index / manifest list media type.
    pub fn index(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_INDEX,
            Self::Docker => media::DOCKER_MANIFEST_LIST,
        }
    }

    /// The config media type.
    pub fn config(self) -> &'static str {
        match self {
            Self::Oci => media::OCI_CONFIG,
            Self::Docker => media::DOCKER_CONFIG,
        }
    }

    /// The layer media type for `compression`.
    pub fn layer(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Self::Oci, Compression::None) => media::OCI_LAYER,
            (Self::Oci, Compression::Gzip) => media::OCI_LAYER_GZIP,
            (_, Compression::Zstd) => media::OCI_LAYER_ZSTD,
            (Self::Docker, Compression::None) => media::DOCKER_LAYER,
            (Self::Docker, Compression::Gzip) => media::DOCKER_LAYER_GZIP,
        }
    }
}

/// An in-memory tar layer. Paths are relative (`bin/sh`, no leading `/`);
/// every entry gets uid/gid 0 and [`FIXED_MTIME`] unless noted.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBuilder").finish_non_exhaustive()
    }
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(FIXED_MTIME);
        h.set_size(size);
        h
    }

    fn append(&mut self, mut header: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        self.tar
            .append_data(&mut header, path.trim_start_matches('/'), data)
            .expect("appending to an in-memory tar");
        self
    }

    /// A directory with `mode` (e.g. `0o755`, `0o700`, `0o1777`).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let h = Self::header(tar::EntryType::Directory, mode, 0);
        let path = format!("{}/", path.trim_end_matches('/'));
        self.append(h, &path, &[])
    }

    /// A regular file with `contents` and `mode` (e.g. `0o4755` for setuid).
    pub fn file(&mut self, path: &str, contents: &[u8], mode: u32) -> &mut Self {
        let h = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        self.append(h, path, contents)
    }

    /// A regular file owned by `uid:gid`.
    pub fn file_owned(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, path, contents)
    }

    /// A symlink `path -> target` (target as written, relative or absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path.trim_start_matches('/'), target)
            .expect("appending a symlink");
        self
    }

    /// A hard link `path` to `target` (a path earlier in this layer, relative
    /// to the root like every entry name).
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.tar
            .append_link(
                &mut h,
                path.trim_start_matches('/'),
                target.trim_start_matches('/'),
            )
            .expect("appending a hard link");
        self
    }

    /// A whiteout for `path` (`dir/.wh.name`): deletes a file or a whole
    /// directory of the layers below.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let path = path.trim_matches('/');
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        let h = Self::header(tar::EntryType::Regular, 0o644, 0);
        self.append(h, &format!("{dir}.wh.{name}"), &[])
    }

    /// An opaque marker for directory `dir` (`dir/.wh..wh..opq`): hides
    /// everything the layers below put in it.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let h = Self::header(tar::EntryType::Regular, 0o644, 0);
        self.append(h, &format!("{}/.wh..wh..opq", dir.trim_matches('/')), &[])
    }

    /// A raw entry with a caller-made header (e.g. a `../escape` path, a
    /// device node, a fifo). The path is written verbatim via the GNU
    /// long-name mechanism where needed, without any checks.
    pub fn raw(&mut self, mut header: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        let name = path.as_bytes();
        if name.len() <= 100 {
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.as_old_mut().name[name.len()..].fill(0);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.tar
                .append(&header, data)
                .expect("appending a raw entry");
        } else {
            panic!("raw entry names are limited to 100 bytes");
        }
        self
    }

    /// Copies host file `src` into the layer as `path`, keeping its mode
    /// (uid/gid 0, [`FIXED_MTIME`]).
    pub fn file_from_host(&mut self, path: &str, src: &Path) -> Result<&mut Self, FixtureError> {
        use std::os::unix::fs::PermissionsExt;
        let data =
            std::fs::read(src).map_err(FixtureError::io(format!("reading {}", src.display())))?;
        let mode = std::fs::metadata(src)
            .map_err(FixtureError::io(format!("stat {}", src.display())))?
            .permissions()
            .mode()
            & 0o7777;
        Ok(self.file(path, &data, mode))
    }

    /// Appends a host directory tree under `prefix` (`""` for the root) with
    /// its real metadata (modes, owners, mtimes; symlinks not followed; hard
    /// links within this call kept as hard links; device nodes and fifos as
    /// such). Entries are sorted, so the tar is reproducible. `skip` is
    /// called with each path relative to `src`; `true` leaves it (and, for a
    /// directory, its subtree) out.
    pub fn dir_from_host(
        &mut self,
        prefix: &str,
        src: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<&mut Self, FixtureError> {
        let mut seen = std::collections::HashMap::new();
        self.tar.follow_symlinks(false);
        self.walk(
            prefix.trim_matches('/'),
            src,
            Path::new(""),
            skip,
            &mut seen,
        )?;
        Ok(self)
    }

    fn walk(
        &mut self,
        prefix: &str,
        root: &Path,
        rel: &Path,
        skip: &dyn Fn(&Path) -> bool,
        seen: &mut std::collections::HashMap<(u64, u64), String>,
    ) -> Result<(), FixtureError> {
        use std::os::unix::fs::MetadataExt;
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(FixtureError::io(format!("reading {}", dir.display())))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(FixtureError::io(format!("reading {}", dir.display())))?;
        names.sort();
        for name in names {
            let rel_path = rel.join(&name);
            if skip(&rel_path) {
                continue;
            }
            let host = root.join(&rel_path);
            let meta = std::fs::symlink_metadata(&host)
                .map_err(FixtureError::io(format!("stat {}", host.display())))?;
            let rel_str = rel_path.to_string_lossy();
            let entry = if prefix.is_empty() {
                rel_str.to_string()
            } else {
                format!("{prefix}/{rel_str}")
            };
            let ft = meta.file_type();
            if ft.is_file() && meta.nlink() > 1 {
                if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
                    let mut h = tar::Header::new_gnu();
                    h.set_metadata(&meta);
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    let first = first.clone();
                    self.tar
                        .append_link(&mut h, &entry, &first)
                        .map_err(FixtureError::io("appending a hard link"))?;
                    continue;
                }
                seen.insert((meta.dev(), meta.ino()), entry.clone());
            }
            if ft.is_dir() {
                self.tar
                    .append_path_with_name(&host, format!("{entry}/"))
                    .map_err(FixtureError::io(format!("archiving {}", host.display())))?;
                self.walk(prefix, root, &rel_path, skip, seen)?;
            } else {
                self.tar
                    .append_path_with_name(&host, &entry)
                    .map_err(FixtureError::io(format!("archiving {}", host.display())))?;
            }
        }
        Ok(())
    }

    /// The finished, uncompressed tar.
    pub fn into_tar(self) -> Vec<u8> {
        self.tar.into_inner().expect("finishing an in-memory tar")
    }
}

/// Compresses a tar with `compression`.
pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    use std::io::Write;
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(tar.len() / 2),
                flate2::Compression::default(),
            );
            enc.write_all(tar).expect("gzip to memory");
            enc.finish().expect("gzip to memory")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd to memory"),
    }
}

/// One layer as it is pushed.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The blob (compressed as `media_type` says).
    pub blob: Vec<u8>,
    /// sha256 of `blob`.
    pub digest: String,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// The layer media type.
    pub media_type: String,
    /// The size of the uncompressed tar.
    pub uncompressed_size: u64,
}

impl BuiltLayer {
    /// Compresses `tar` and computes its digests.
    pub fn new(tar: &[u8], compression: Compression, media_types: MediaTypes) -> Self {
        let blob = compress(tar, compression);
        Self {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(tar),
            media_type: media_types.layer(compression).into(),
            uncompressed_size: tar.len() as u64,
            blob,
        }
    }
}

#[derive(Debug, Clone)]
enum LayerSource {
    Tar(Vec<u8>, Compression),
    Built(BuiltLayer, Compression),
}

/// An image's manifest, config and layers, ready to push.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest bytes exactly as pushed.
    pub manifest: Vec<u8>,
    /// sha256 of `manifest`.
    pub manifest_digest: String,
    /// The manifest media type.
    pub manifest_media_type: String,
    /// The config bytes.
    pub config: Vec<u8>,
    /// sha256 of `config`.
    pub config_digest: String,
    /// The layers, lowest first.
    pub layers: Vec<BuiltLayer>,
    /// `os` of the config.
    pub os: String,
    /// `architecture` of the config.
    pub architecture: String,
    /// `variant`, if any.
    pub variant: Option<String>,
}

/// An image pushed to a registry.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The repository name.
    pub name: String,
    /// The tag (or the digest when pushed by digest).
    pub tag: String,
    /// `127.0.0.1:PORT/name:tag`.
    pub reference: String,
    /// The registry's `Docker-Content-Digest` for the manifest (checked equal
    /// to the sha256 of the bytes pushed).
    pub manifest_digest: String,
    /// The manifest media type.
    pub manifest_media_type: String,
    /// The manifest size in bytes.
    pub manifest_size: u64,
    /// The config digest.
    pub config_digest: String,
    /// Layer blob digests, lowest first.
    pub layer_digests: Vec<String>,
    /// Layer diff ids (sha256 of the uncompressed tars), lowest first.
    pub diff_ids: Vec<String>,
    /// Layer blob sizes, lowest first.
    pub layer_sizes: Vec<u64>,
    /// Everything that was pushed.
    pub built: BuiltImage,
}

/// Builds an image from layers and a config.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<LayerSource>,
    media_types: MediaTypes,
    os: String,
    architecture: String,
    variant: Option<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    annotations: Vec<(String, String)>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// An OCI image for `linux/<host arch>` with no layers.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            media_types: MediaTypes::Oci,
            os: "linux".into(),
            architecture: host_arch().into(),
            variant: None,
            cmd: None,
            entrypoint: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            annotations: Vec::new(),
        }
    }

    /// Adds a layer (on top of the previous ones).
    pub fn layer(mut self, layer: LayerBuilder, compression: Compression) -> Self {
        self.layers
            .push(LayerSource::Tar(layer.into_tar(), compression));
        self
    }

    /// Adds a layer from an already-made uncompressed tar.
    pub fn layer_tar(mut self, tar: Vec<u8>, compression: Compression) -> Self {
        self.layers.push(LayerSource::Tar(tar, compression));
        self
    }

    /// Adds an already compressed layer (e.g. a cached one); its media type
    /// follows this image's [`MediaTypes`] and `compression`.
    pub fn layer_built(mut self, layer: BuiltLayer, compression: Compression) -> Self {
        self.layers.push(LayerSource::Built(layer, compression));
        self
    }

    /// Sets the compression of every layer added as a tar.
    pub fn compression(mut self, compression: Compression) -> Self {
        for layer in &mut self.layers {
            if let LayerSource::Tar(_, c) = layer {
                *c = compression;
            }
        }
        self
    }

    /// OCI or Docker media types.
    pub fn media_types(mut self, media_types: MediaTypes) -> Self {
        self.media_types = media_types;
        self
    }

    /// Docker schema 2 media types.
    pub fn docker(self) -> Self {
        self.media_types(MediaTypes::Docker)
    }

    /// `os` / `architecture` (and optional `variant`, e.g. `v8`).
    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Self {
        self.os = os.into();
        self.architecture = architecture.into();
        self.variant = variant.map(Into::into);
        self
    }

    /// `config.Cmd`.
    pub fn cmd<I, S>(mut self, cmd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = Some(cmd.into_iter().map(Into::into).collect());
        self
    }

    /// `config.Entrypoint`.
    pub fn entrypoint<I, S>(mut self, entrypoint: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(entrypoint.into_iter().map(Into::into).collect());
        self
    }

    /// Adds `KEY=value` entries to `config.Env`.
    pub fn env<I, S>(mut self, env: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.env.extend(env.into_iter().map(Into::into));
        self
    }

    /// `config.WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// `config.User`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Adds a manifest annotation (OCI only).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// The number of layers so far.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Compresses the layers and makes the config and manifest.
    pub fn build(&self) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self
            .layers
            .iter()
            .map(|source| match source {
                LayerSource::Tar(tar, compression) => {
                    BuiltLayer::new(tar, *compression, self.media_types)
                }
                LayerSource::Built(layer, compression) => BuiltLayer {
                    media_type: self.media_types.layer(*compression).into(),
                    ..layer.clone()
                },
            })
            .collect();

        let mut container = serde_json::Map::new();
        if let Some(cmd) = &self.cmd {
            container.insert("Cmd".into(), json!(cmd));
        }
        if let Some(ep) = &self.entrypoint {
            container.insert("Entrypoint".into(), json!(ep));
        }
        if !self.env.is_empty() {
            container.insert("Env".into(), json!(self.env));
        }
        if let Some(wd) = &self.working_dir {
            container.insert("WorkingDir".into(), json!(wd));
        }
        if let Some(user) = &self.user {
            container.insert("User".into(), json!(user));
        }
        let mut config = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": Value::Object(container),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({
                "created": "2023-11-14T22:13:20Z",
                "created_by": "microsandbox test-utils",
            })).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = sha256_digest(&config);

        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.media_types.manifest(),
            "config": {
                "mediaType": self.media_types.config(),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() && self.media_types == MediaTypes::Oci {
            let map: serde_json::Map<String, Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            manifest["annotations"] = Value::Object(map);
        }
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest JSON");
        BuiltImage {
            manifest_digest: sha256_digest(&manifest),
            manifest,
            manifest_media_type: self.media_types.manifest().into(),
            config,
            config_digest,
            layers,
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    /// Builds and pushes as `name:tag` (`tag` may also be a digest).
    pub async fn push(
        &self,
        registry: &TestRegistry,
        name: &str,
        tag: &str,
    ) -> Result<PushedImage, FixtureError> {
        self.build().push(registry, name, tag).await
    }

    /// [`ImageBuilder::push`] from synchronous code (own thread and runtime,
    /// so it also works inside an async test).
    pub fn push_blocking(
        &self,
        registry: &TestRegistry,
        name: &str,
        tag: &str,
    ) -> Result<PushedImage, FixtureError> {
        block_on(self.push(registry, name, tag))
    }
}

impl BuiltImage {
    /// Pushes the layers, config and manifest as `name:tag`.
    pub async fn push(
        &self,
        registry: &TestRegistry,
        name: &str,
        tag: &str,
    ) -> Result<PushedImage, FixtureError> {
        let base = registry.url();
        self.push_to(Target::of(registry, &base), registry, name, tag)
            .await
    }

    /// Pushes to `target` (the registry's URL with given credentials);
    /// `registry` names the pushed reference.
    pub(crate) async fn push_to(
        &self,
        target: Target<'_>,
        registry: &TestRegistry,
        name: &str,
        tag: &str,
    ) -> Result<PushedImage, FixtureError> {
        let client = client()?;
        for layer in &self.layers {
            upload_blob(&client, target, name, &layer.blob, &layer.digest).await?;
        }
        upload_blob(&client, target, name, &self.config, &self.config_digest).await?;
        let digest = put_manifest(
            &client,
            target,
            name,
            tag,
            &self.manifest_media_type,
            &self.manifest,
        )
        .await?;
        if digest != self.manifest_digest {
            return Err(FixtureError::Other(format!(
                "registry digest {digest} != pushed manifest sha256 {}",
                self.manifest_digest
            )));
        }
        Ok(PushedImage {
            name: name.into(),
            tag: tag.into(),
            reference: reference(registry, name, tag),
            manifest_digest: digest,
            manifest_media_type: self.manifest_media_type.clone(),
            manifest_size: self.manifest.len() as u64,
            config_digest: self.config_digest.clone(),
            layer_digests: self.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
            layer_sizes: self.layers.iter().map(|l| l.blob.len() as u64).collect(),
            built: self.clone(),
        })
    }
}

fn reference(registry: &TestRegistry, name: &str, tag: &str) -> String {
    if tag.starts_with("sha256:") {
        format!("{}/{name}@{tag}", registry.host())
    } else {
        registry.reference(name, tag)
    }
}

/// An image index (OCI) or manifest list (Docker) over several images.
#[derive(Debug, Clone, Default)]
pub struct IndexBuilder {
    media_types: MediaTypes,
    images: Vec<ImageBuilder>,
}

/// An index pushed to a registry.
#[derive(Debug, Clone)]
pub struct PushedIndex {
    /// `127.0.0.1:PORT/name:tag`.
    pub reference: String,
    /// The index digest.
    pub index_digest: String,
    /// The index media type.
    pub media_type: String,
    /// The index bytes as pushed.
    pub index: Vec<u8>,
    /// The platform images (each pushed by digest), in index order.
    pub images: Vec<PushedImage>,
}

impl PushedIndex {
    /// The image for `os/architecture`, if the index has one.
    pub fn image_for(&self, os: &str, architecture: &str) -> Option<&PushedImage> {
        self.images
            .iter()
            .find(|i| i.built.os == os && i.built.architecture == architecture)
    }
}

impl IndexBuilder {
    /// An empty OCI index.
    pub fn new() -> Self {
        Self::default()
    }

    /// OCI index or Docker manifest list (also sets each image's types).
    pub fn media_types(mut self, media_types: MediaTypes) -> Self {
        self.media_types = media_types;
        self
    }

    /// Adds a platform image (its `platform(...)` goes into the index).
    pub fn image(mut self, image: ImageBuilder) -> Self {
        self.images.push(image);
        self
    }

    /// Pushes every image by digest, then the index as `name:tag`.
    pub async fn push(
        &self,
        registry: &TestRegistry,
        name: &str,
        tag: &str,
    ) -> Result<PushedIndex, FixtureError> {
        let mut pushed = Vec::new();
        for image in &self.images {
            let built = image.clone().media_types(self.media_types).build();
            let digest = built.manifest_digest.clone();
            pushed.push(built.push(registry, name, &digest).await?);
        }
        let manifests: Vec<Value> = pushed
            .iter()
            .map(|p| {
                let mut platform = json!({
                    "architecture": p.built.architecture,
                    "os": p.built.os,
                });
                if let Some(v) = &p.built.variant {
                    platform["variant"] = json!(v);
                }
                json!({
                    "mediaType": p.manifest_media_type,
                    "digest": p.manifest_digest,
                    "size": p.manifest_size,
                    "platform": platform,
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": self.media_types.index(),
            "manifests": manifests,
        });
        let index = serde_json::to_vec_pretty(&index).expect("index JSON");
        let base = registry.url();
        let digest = put_manifest(
            &client()?,
            Target::of(registry, &base),
            name,
            tag,
            self.media_types.index(),
            &index,
        )
        .await?;
        Ok(PushedIndex {
            reference: reference(registry, name, tag),
            index_digest: digest,
            media_type: self.media_types.index().into(),
            index,
            images: pushed,
        })
    }

    /// [`IndexBuilder::push`] from synchronous code.
    pub fn push_blocking(
        &self,
        registry: &TestRegistry,
        name: &str,
        tag: &str,
    ) -> Result<PushedIndex, FixtureError> {
        block_on(self.push(registry, name, tag))
    }
}

/// Runs `fut` to completion on a fresh current-thread runtime on its own
/// thread (so it is fine to call from inside another runtime).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A reqwest client for the test registry: no proxy (127.0.0.1 only).
pub fn client() -> Result<reqwest::Client, FixtureError> {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| FixtureError::Other(format!("building a reqwest client: {e}")))
}

/// Where and how a push goes: a registry's base URL and the credentials
/// every request carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) base: &'a str,
    pub(crate) auth: Auth<'a>,
}

/// How push requests authenticate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// Anonymously.
    None,
    /// With HTTP basic credentials.
    Basic(&'a str, &'a str),
    /// With an `Authorization` header value (`Bearer <token>`).
    Header(&'a str),
}

impl Auth<'_> {
    fn apply(self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::None => req,
            Auth::Basic(user, password) => req.basic_auth(user, Some(password)),
            Auth::Header(value) => req.header("Authorization", value),
        }
    }
}

impl<'a> Target<'a> {
    /// `registry` with its own basic credentials, if it has any.
    fn of(registry: &'a TestRegistry, base: &'a str) -> Self {
        let auth = match registry.credentials() {
            Some((user, password)) => Auth::Basic(user, password),
            None => Auth::None,
        };
        Self { base, auth }
    }
}

pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    method: &str,
    url: &str,
    expect: &[u16],
) -> Result<reqwest::Response, FixtureError> {
    let http = |detail: String| FixtureError::Http {
        method: method.into(),
        url: url.into(),
        detail,
    };
    let resp = req.send().await.map_err(|e| http(e.to_string()))?;
    let status = resp.status().as_u16();
    if expect.contains(&status) {
        Ok(resp)
    } else {
        let body = resp.text().await.unwrap_or_default();
        Err(http(format!("status {status}: {body}")))
    }
}

/// Uploads `blob` to `name` (POST then PUT `?digest=`), skipping it when the
/// registry already has it; returns its digest.
pub async fn push_blob(
    registry: &TestRegistry,
    name: &str,
    blob: &[u8],
) -> Result<String, FixtureError> {
    let digest = sha256_digest(blob);
    let base = registry.url();
    upload_blob(&client()?, Target::of(registry, &base), name, blob, &digest).await?;
    Ok(digest)
}

pub(crate) async fn upload_blob(
    client: &reqwest::Client,
    target: Target<'_>,
    name: &str,
    blob: &[u8],
    digest: &str,
) -> Result<(), FixtureError> {
    let (base, auth) = (target.base, target.auth);
    let head_url = format!("{base}/v2/{name}/blobs/{digest}");
    let head = auth
        .apply(client.head(&head_url))
        .send()
        .await
        .map_err(|e| FixtureError::Http {
            method: "HEAD".into(),
            url: head_url.clone(),
            detail: e.to_string(),
        })?;
    if head.status().is_success() {
        return Ok(());
    }
    let post_url = format!("{base}/v2/{name}/blobs/uploads/");
    let resp = send(
        auth.apply(client.post(&post_url))
            .header("Content-Length", "0"),
        "POST",
        &post_url,
        &[202],
    )
    .await?;
    let location = resp
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| FixtureError::Http {
            method: "POST".into(),
            url: post_url.clone(),
            detail: "no Location header".into(),
        })?;
    let mut put_url = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location.to_string()
    };
    put_url.push(if put_url.contains('?') { '&' } else { '?' });
    put_url.push_str("digest=");
    put_url.push_str(digest);
    send(
        auth.apply(client.put(&put_url))
            .header("Content-Type", "application/octet-stream")
            .body(blob.to_vec()),
        "PUT",
        &put_url,
        &[201],
    )
    .await?;
    Ok(())
}

/// Pushes raw manifest (or index) bytes as `name:reference` with
/// `Content-Type: media_type`; returns the registry's `Docker-Content-Digest`.
pub async fn push_manifest(
    registry: &TestRegistry,
    name: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<String, FixtureError> {
    let base = registry.url();
    put_manifest(
        &client()?,
        Target::of(registry, &base),
        name,
        reference,
        media_type,
        bytes,
    )
    .await
}

pub(crate) async fn put_manifest(
    client: &reqwest::Client,
    target: Target<'_>,
    name: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<String, FixtureError> {
    let url = format!("{}/v2/{name}/manifests/{reference}", target.base);
    let resp = send(
        target
            .auth
            .apply(client.put(&url))
            .header("Content-Type", media_type)
            .body(bytes.to_vec()),
        "PUT",
        &url,
        &[201],
    )
    .await?;
    resp.headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| FixtureError::Http {
            method: "PUT".into(),
            url,
            detail: "no Docker-Content-Digest header".into(),
        })
}
