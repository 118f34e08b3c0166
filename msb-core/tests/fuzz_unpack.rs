//! Hostile input: layer unpacking ([`apply_layer`]) against generated hostile
//! tars and random mutations of valid ones, as a bounded, deterministic fuzz
//! loop.
//!
//! Every case runs in a fresh temporary directory holding the target `root/`
//! and a sibling `outside/` with a canary file, a directory and a symlink.
//! A lower layer first plants symlinks that point out of the root (relative,
//! absolute host paths, `..`), then the hostile layer is applied. Invariants:
//! - applying never panics;
//! - nothing outside `root/` changes or appears (the whole temporary
//!   directory minus `root/` is snapshotted and compared after every case,
//!   inode numbers and link counts included, so a hard link to an outside
//!   file is caught too);
//! - a failure is a typed error: `UnsafeLayerEntry`, `LayerFormat` or `Io`.
//!
//! `MSB_FUZZ_ITERS` sets the number of generated cases (default 1 500:
//! a few seconds in a debug build).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use msb_core::Error;
use msb_core::image::unpack::{
    Compression, LayerFormatErrorKind, UnpackOptions, UnsafeEntryReason, apply_layer,
};
use tar::EntryType;

use test_utils::fuzz::Rng;

fn fuzz_iterations() -> usize {
    test_utils::fuzz::iterations(1_500)
}

// ---------------------------------------------------------------------------
// The sandbox each case runs in.

/// A temporary directory with `root/` (the target) and `outside/`.
struct Arena {
    dir: tempfile::TempDir,
    /// The state of everything but `root/`, taken before the case.
    before: BTreeMap<PathBuf, String>,
}

impl Arena {
    fn new() -> Self {
        // tmpfs when there is one: ext4's inode churn makes the loop 10x slower.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("canary"), b"canary\n").unwrap();
        fs::set_permissions(outside.join("canary"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(outside.join("dir")).unwrap();
        std::os::unix::fs::symlink("canary", outside.join("link")).unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        let before = snapshot(dir.path());
        Self { dir, before }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Empties `root/` for the next case.
    fn reset(&self) {
        let root = self.root();
        make_removable(&root);
        fs::remove_dir_all(&root).unwrap();
        fs::create_dir(&root).unwrap();
    }

    /// Panics if anything outside `root/` changed.
    fn check(&self, what: &dyn Fn() -> String) {
        let after = snapshot(self.dir.path());
        if after != self.before {
            let mut diff = String::new();
            for (k, v) in &self.before {
                if after.get(k) != Some(v) {
                    diff.push_str(&format!("  changed/removed {}: {v}\n", k.display()));
                }
            }
            for (k, v) in &after {
                if !self.before.contains_key(k) {
                    diff.push_str(&format!("  appeared {}: {v}\n", k.display()));
                }
            }
            panic!("written outside the root by {}:\n{diff}", what());
        }
        // No hard link in the root shares an inode with an outside file.
        let outside_inodes: Vec<u64> = walk(&self.outside())
            .iter()
            .map(|p| fs::symlink_metadata(p).unwrap().ino())
            .collect();
        for p in walk(&self.root()) {
            let ino = fs::symlink_metadata(&p).unwrap().ino();
            assert!(
                !outside_inodes.contains(&ino),
                "{} is a hard link to an outside file, made by {}",
                p.display(),
                what()
            );
        }
    }
}

/// Every path under `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Type, mode, size, inode, link count, mtime and contents (files) or
/// target (symlinks) of everything under `dir` except `dir/root/**`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let root = dir.join("root");
    let mut out = BTreeMap::new();
    let mut paths: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| !p.starts_with(&root) || p == &root)
        .collect();
    paths.push(dir.to_path_buf());
    for p in paths {
        let m = fs::symlink_metadata(&p).unwrap();
        let mut desc = format!(
            "{:o} {} ino={} nlink={} uid={} mtime={}",
            m.mode(),
            if p == root || p == dir { 0 } else { m.size() },
            m.ino(),
            m.nlink(),
            m.uid(),
            if p == root || p == dir { 0 } else { m.mtime() },
        );
        if m.file_type().is_symlink() {
            desc.push_str(&format!(" -> {}", fs::read_link(&p).unwrap().display()));
        } else if m.is_file() {
            desc.push_str(&format!(" {:?}", fs::read(&p).unwrap()));
        }
        out.insert(p, desc);
    }
    // `root/` itself is recreated for every case and may get another mode
    // or owner from a `./` entry: it must only stay a directory.
    if let Some(v) = out.get_mut(&root) {
        *v = format!("dir={}", fs::symlink_metadata(&root).unwrap().is_dir());
    }
    out
}

/// Gives every directory under `dir` owner rwx, so it can be removed.
fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    for p in walk(dir) {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
        }
    }
}

// ---------------------------------------------------------------------------
// Raw tar writing: names, link names and sizes exactly as given.

/// One raw entry.
#[derive(Debug, Clone)]
struct Raw {
    name: Vec<u8>,
    kind: u8,
    link: Vec<u8>,
    mode: u32,
    data: Vec<u8>,
    /// The header's size field, when it should lie about `data`.
    size: Option<SizeField>,
    /// Device numbers for char/block entries.
    dev: (u32, u32),
    /// PAX records to put in an `x` header before this entry.
    pax: Vec<(String, Vec<u8>)>,
    /// A GNU sparse map (offset, length) for type `S` entries.
    sparse: Vec<(u64, u64)>,
    /// The GNU sparse "real size".
    real_size: u64,
}

#[derive(Debug, Clone, Copy)]
enum SizeField {
    Octal(u64),
    /// Base-256 (the high bit set), possibly negative.
    Binary(i64),
    Garbage,
}

impl Raw {
    fn new(name: &str, kind: EntryType, link: &str, data: &[u8]) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            kind: kind.as_byte(),
            link: link.as_bytes().to_vec(),
            mode: if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            },
            data: data.to_vec(),
            size: None,
            dev: (1, 3),
            pax: Vec::new(),
            sparse: Vec::new(),
            real_size: 0,
        }
    }
}

fn set_cksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

/// A numeric field: octal, or base-256 when `v` does not fit.
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    if width < 22 && v >= 1u64 << (3 * width) {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        field[0] |= 0x80;
        return;
    }
    let s = format!("{v:0width$o}");
    let s = &s.as_bytes()[s.len().saturating_sub(width)..];
    field[..s.len()].copy_from_slice(s);
    field[width] = 0;
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A GNU-format header block for `name` (truncated to 100 bytes).
fn header_block(
    name: &[u8],
    kind: u8,
    link: &[u8],
    mode: u32,
    size: u64,
    size_field: Option<SizeField>,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    match size_field {
        None => octal(&mut b[124..136], size),
        Some(SizeField::Octal(v)) => octal(&mut b[124..136], v),
        Some(SizeField::Binary(v)) => {
            let bytes = v.to_be_bytes();
            b[124..136].fill(if v < 0 { 0xff } else { 0 });
            b[128..136].copy_from_slice(&bytes);
            b[124] |= 0x80;
        }
        Some(SizeField::Garbage) => b[124..136].copy_from_slice(b"zz\x01 9-8+...\0"),
    }
    octal(&mut b[136..148], 1_000_000);
    b[156] = kind;
    let l = link.len().min(100);
    b[157..157 + l].copy_from_slice(&link[..l]);
    b[257..265].copy_from_slice(b"ustar  \0");
    b
}

/// Appends `raw` (with the GNU long-name/long-link and PAX headers it needs).
fn append(out: &mut Vec<u8>, raw: &Raw) {
    if !raw.pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in &raw.pax {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + rest.to_string().len();
            if len.to_string().len() + rest != len {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = header_block(b"PaxHeaders/x", b'x', b"", 0o644, body.len() as u64, None);
        set_cksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&body);
        pad(out);
    }
    for (bytes, kind) in [(&raw.link, b'K'), (&raw.name, b'L')] {
        if bytes.len() > 100 {
            let mut data = bytes.clone();
            data.push(0);
            let mut h = header_block(b"././@LongLink", kind, b"", 0o644, data.len() as u64, None);
            set_cksum(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(&data);
            pad(out);
        }
    }
    let mut h = header_block(
        &raw.name,
        raw.kind,
        &raw.link,
        raw.mode,
        raw.data.len() as u64,
        raw.size,
    );
    if raw.kind == b'3' || raw.kind == b'4' {
        octal(&mut h[329..337], u64::from(raw.dev.0));
        octal(&mut h[337..345], u64::from(raw.dev.1));
    }
    if raw.kind == b'S' {
        // GNU sparse: up to 4 (offset, numbytes) pairs at 386, real size at 483.
        for (i, (off, len)) in raw.sparse.iter().take(4).enumerate() {
            let at = 386 + i * 24;
            octal(&mut h[at..at + 12], *off);
            octal(&mut h[at + 12..at + 24], *len);
        }
        octal(&mut h[483..495], raw.real_size);
    }
    set_cksum(&mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(&raw.data);
    pad(out);
}

fn tar_of(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        append(&mut out, e);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

// ---------------------------------------------------------------------------
// Applying and checking.

fn opts() -> UnpackOptions {
    // As root (the suite runs as root): owners, devices, fifos and xattrs
    // all on, the most dangerous configuration.
    UnpackOptions::default()
}

/// Applies `layer` onto the arena's root and checks the invariants. Returns
/// the result for the named cases to assert on.
fn apply(
    arena: &Arena,
    layer: &[u8],
    compression: Compression,
    what: &dyn Fn() -> String,
) -> msb_core::Result<()> {
    let result = apply_layer(&arena.root(), layer, compression, &opts()).map(drop);
    match &result {
        Ok(())
        | Err(Error::UnsafeLayerEntry { .. })
        | Err(Error::LayerFormat { .. })
        | Err(Error::Io { .. }) => {}
        Err(e) => panic!("untyped error {e:?} from {}", what()),
    }
    arena.check(what);
    result
}

/// A lower layer planting ways out of the root.
fn lower_layer(outside: &Path) -> Vec<u8> {
    let abs = outside.to_str().unwrap();
    let abs_canary = outside.join("canary");
    tar_of(&[
        Raw::new("d/", EntryType::Directory, "", b""),
        Raw::new("d/f", EntryType::Regular, "", b"lower\n"),
        Raw::new("up", EntryType::Symlink, "../outside", b""),
        Raw::new("upup", EntryType::Symlink, "../../..", b""),
        Raw::new("abs", EntryType::Symlink, abs, b""),
        Raw::new(
            "abscanary",
            EntryType::Symlink,
            abs_canary.to_str().unwrap(),
            b"",
        ),
        Raw::new("dotdot", EntryType::Symlink, "..", b""),
        Raw::new("d/back", EntryType::Symlink, "../../outside", b""),
        Raw::new("loop", EntryType::Symlink, "loop", b""),
        Raw::new("self", EntryType::Symlink, ".", b""),
        Raw::new("rootlink", EntryType::Symlink, "/", b""),
    ])
}

// ---------------------------------------------------------------------------
// Generators.

/// Names, many of them hostile.
fn name(rng: &mut Rng, outside: &str) -> String {
    let fixed = [
        "f",
        "d/f",
        "d/new",
        "d",
        "d/",
        "./d/g",
        "/abs-root",
        "../escape",
        "../outside/canary",
        "./../escape",
        "d/../../escape",
        "d/./../x",
        "..",
        ".",
        "./",
        "/",
        "",
        "up/canary",
        "up/new",
        "up/dir/new",
        "upup/tmp/x",
        "abs/canary",
        "abs/new",
        "abscanary",
        "dotdot/outside/canary",
        "d/back/canary",
        "loop/x",
        "self/self/up/x",
        "rootlink/up/x",
        "rootlink/../x",
        "s",
        "s/x",
        "s/canary",
        "h",
        ".wh..",
        ".wh...",
        "d/.wh..",
        ".wh.up",
        "up/.wh.canary",
        "abs/.wh.canary",
        "d/.wh..wh..opq",
        "up/.wh..wh..opq",
        ".wh..wh..opq",
        "a\\..\\..\\x",
        "dev",
        "fifo",
    ];
    match rng.below(12) {
        0 => format!("{outside}/new"),
        1 => format!("{outside}/canary"),
        // GNU long names: deep or long, sometimes escaping at the end.
        2 => {
            let depth = 1 + rng.below(60);
            let mut s = "deep/".repeat(depth);
            s.push_str(rng.pick(&["f", "../../x", "..", "up/x"]));
            s
        }
        3 => format!(
            "{}/{}",
            "n".repeat(150 + rng.below(200)),
            rng.pick(&["f", ".."])
        ),
        _ => rng.pick(&fixed).to_owned(),
    }
}

fn link_target(rng: &mut Rng, outside: &str) -> String {
    let canary = format!("{outside}/canary");
    let fixed = [
        "..",
        "../outside/canary",
        "../../outside/canary",
        "/",
        "/etc/passwd",
        "d/f",
        "f",
        "up",
        "up/canary",
        "abs/canary",
        "abscanary",
        "s",
        "s/canary",
        "dotdot/outside/canary",
        "d/back/canary",
        "loop",
        ".",
        "",
        "d",
        "h",
    ];
    match rng.below(8) {
        0 => canary,
        1 => outside.to_owned(),
        2 => format!("{}x", "../".repeat(1 + rng.below(40))),
        _ => rng.pick(&fixed).to_owned(),
    }
}

fn random_entry(rng: &mut Rng, outside: &str) -> Raw {
    let kinds = [
        EntryType::Regular,
        EntryType::Regular,
        EntryType::Directory,
        EntryType::Symlink,
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Link,
        EntryType::Char,
        EntryType::Block,
        EntryType::Fifo,
        EntryType::Continuous,
        EntryType::GNUSparse,
        EntryType::new(b'Z'),
        EntryType::new(0),
    ];
    let kind = rng.pick(&kinds);
    let data: Vec<u8> = match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => (0..rng
            .pick(&[0usize, 1, 7, 512, 513, 3000]))
            .map(|i| i as u8)
            .collect(),
        _ => Vec::new(),
    };
    let mut raw = Raw::new(&name(rng, outside), kind, &link_target(rng, outside), &data);
    raw.mode = rng.pick(&[0o644, 0o755, 0o000, 0o4755, 0o1777, 0o7777, 0o177_777]);
    raw.dev = (rng.below(300) as u32, rng.below(300) as u32);
    if kind == EntryType::GNUSparse {
        let len = raw.data.len() as u64;
        raw.sparse = vec![(rng.pick(&[0u64, 512, 4096]), len)];
        raw.real_size = raw.sparse[0].0 + len;
        if rng.below(3) == 0 {
            // Holes and sizes that do not add up.
            raw.sparse
                .push((rng.pick(&[0u64, 1, 1 << 20]), rng.pick(&[0u64, 1, 512])));
            raw.real_size = rng.pick(&[0u64, 1, raw.real_size + 1, 1 << 20]);
        }
    }
    match rng.below(10) {
        0 => {
            raw.size = Some(SizeField::Octal(rng.pick(&[
                0u64,
                1,
                511,
                0o77_777_777_777,
            ])))
        }
        1 => {
            raw.size = Some(SizeField::Binary(rng.pick(&[
                -1i64,
                i64::MIN,
                i64::MAX,
                1 << 40,
            ])))
        }
        2 => raw.size = Some(SizeField::Garbage),
        3 => {
            let pax: &[(&str, &[u8])] = &[
                ("path", b"../pax-escape"),
                ("path", b"up/pax"),
                ("linkpath", b"../outside/canary"),
                ("size", b"-5"),
                ("size", b"99999999999999999999999"),
                ("uid", b"4294967296"),
                ("gid", b"-1"),
                ("mtime", b"-1.5"),
                ("mtime", b"1e999"),
                ("SCHILY.xattr.user.x", b"v"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.security.capability", b"\x01\x02"),
                ("SCHILY.xattr.", b""),
                ("GNU.sparse.map", b"0,1,x"),
                ("GNU.sparse.size", b"1099511627776"),
            ];
            let (k, v) = rng.pick(pax);
            raw.pax.push((k.to_owned(), v.to_vec()));
        }
        _ => {}
    }
    raw
}

/// A valid layer to mutate.
fn valid_layer() -> (Vec<u8>, Vec<usize>) {
    let entries = vec![
        Raw::new("etc/", EntryType::Directory, "", b""),
        Raw::new("etc/hostname", EntryType::Regular, "", b"demo\n"),
        Raw::new("etc/big", EntryType::Regular, "", &[7u8; 1500]),
        Raw::new("bin/", EntryType::Directory, "", b""),
        Raw::new("bin/sh", EntryType::Symlink, "busybox", b""),
        Raw::new("bin/busybox", EntryType::Regular, "", b"\x7fELF"),
        Raw::new("bin/ls", EntryType::Link, "bin/busybox", b""),
        Raw::new("tmp/", EntryType::Directory, "", b""),
        Raw::new("tmp/.wh.gone", EntryType::Regular, "", b""),
        Raw::new("var/.wh..wh..opq", EntryType::Regular, "", b""),
    ];
    let bytes = tar_of(&entries);
    // Header offsets, for checksum-preserving mutations.
    let mut headers = Vec::new();
    let mut archive = tar::Archive::new(&bytes[..]);
    for e in archive.entries().unwrap() {
        headers.push(e.unwrap().raw_header_position() as usize);
    }
    (bytes, headers)
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, headers: &[usize]) {
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            // A byte of a header, checksum fixed so the parser sees it.
            0..=2 => {
                let h = rng.pick(headers);
                let at = h + rng.below(512);
                if h + 512 <= bytes.len() {
                    let random = rng.next_u64() as u8;
                    bytes[at] = rng.pick(&[0u8, b'.', b'/', b'1', b'7', b'L', b'x', 0xff, random]);
                    let block: &mut [u8; 512] = (&mut bytes[h..h + 512]).try_into().unwrap();
                    set_cksum(block);
                }
            }
            3 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            4 => bytes.truncate(rng.below(bytes.len() + 1)),
            5 => {
                let at = rng.below(bytes.len() + 1) / 512 * 512;
                let (dup, _) = valid_layer();
                let h = rng.pick(headers);
                let block: Vec<u8> = dup[h..h + 512].to_vec();
                bytes.splice(at..at, block);
            }
            _ if bytes.len() >= headers.iter().max().unwrap() + 512 => {
                let h = rng.pick(headers);
                // Point the name at something hostile, keeping the checksum.
                let hostile: &[u8] = rng.pick(&[
                    &b"../x\0"[..],
                    b"/etc/x\0",
                    b"bin/sh/x\0",
                    b"..\0",
                    b".wh..\0",
                ]);
                bytes[h..h + hostile.len()].copy_from_slice(hostile);
                let block: &mut [u8; 512] = (&mut bytes[h..h + 512]).try_into().unwrap();
                set_cksum(block);
            }
            _ => {}
        }
    }
}

fn compress(rng: &mut Rng, tar: Vec<u8>) -> (Vec<u8>, Compression) {
    match rng.below(8) {
        0 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            let mut out = gz.finish().unwrap();
            if rng.below(2) == 0 && !out.is_empty() {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            } else if rng.below(2) == 0 {
                out.truncate(rng.below(out.len() + 1));
            }
            (out, Compression::Gzip)
        }
        1 => {
            let mut out = zstd::encode_all(&tar[..], 1).unwrap();
            if !out.is_empty() && rng.below(2) == 0 {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            (out, Compression::Zstd)
        }
        _ => (tar, Compression::None),
    }
}

#[test]
fn fuzz_unpack_never_escapes_or_panics() {
    let iters = fuzz_iterations();
    let arena = Arena::new();
    let outside = arena.outside();
    let outside_s = outside.to_str().unwrap().to_owned();
    let lower = lower_layer(&outside);
    let (valid, headers) = valid_layer();
    // `MSB_FUZZ_SEED` explores other cases; the default keeps runs repeatable.
    let seed = std::env::var("MSB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xdead_beef_f00d_cafe_u64);
    let mut rng = Rng::new(seed | 1);
    let (mut ok, mut failed) = (0usize, 0usize);
    for i in 0..iters {
        arena.reset();
        apply(&arena, &lower, Compression::None, &|| {
            "the lower layer".into()
        })
        .expect("the lower layer applies");
        let (layer, desc) = if i % 3 == 2 {
            let mut bytes = valid.clone();
            mutate(&mut rng, &mut bytes, &headers);
            (bytes, None)
        } else {
            let entries: Vec<Raw> = (0..1 + rng.below(8))
                .map(|_| random_entry(&mut rng, &outside_s))
                .collect();
            let bytes = tar_of(&entries);
            (bytes, Some(entries))
        };
        let (layer, compression) = compress(&mut rng, layer);
        let what = || match &desc {
            Some(entries) => format!("case {i}: {entries:#?}"),
            None => format!("case {i}: a mutated valid layer ({compression:?})"),
        };
        match apply(&arena, &layer, compression, &what) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    assert!(
        iters < 100 || (ok > iters / 20 && failed > iters / 20),
        "ok {ok}, failed {failed} of {iters}"
    );
}

// ---------------------------------------------------------------------------
// Named hostile cases, each with the exact typed outcome.

/// Runs one named case on a fresh arena (with the lower layer applied).
fn case(entries: &[Raw]) -> (Arena, msb_core::Result<()>) {
    let arena = Arena::new();
    let lower = lower_layer(&arena.outside());
    apply(&arena, &lower, Compression::None, &|| {
        "the lower layer".into()
    })
    .unwrap();
    let layer = tar_of(entries);
    let result = apply(&arena, &layer, Compression::None, &|| {
        format!("{entries:#?}")
    });
    (arena, result)
}

fn unsafe_reason(result: msb_core::Result<()>) -> UnsafeEntryReason {
    match result {
        Err(Error::UnsafeLayerEntry { reason, .. }) => reason,
        other => panic!("expected UnsafeLayerEntry, got {other:?}"),
    }
}

fn format_reason(result: msb_core::Result<()>) -> LayerFormatErrorKind {
    match result {
        Err(Error::LayerFormat { reason, .. }) => reason,
        other => panic!("expected LayerFormat, got {other:?}"),
    }
}

#[test]
fn dotdot_traversal_is_refused() {
    for name in ["../escape", "d/../../escape", "./../escape", "a/../../../x"] {
        let (_, r) = case(&[Raw::new(name, EntryType::Regular, "", b"x")]);
        assert_eq!(
            unsafe_reason(r),
            UnsafeEntryReason::ParentComponent,
            "{name}"
        );
    }
}

#[test]
fn absolute_names_land_inside_the_root() {
    let arena = Arena::new();
    let outside = arena.outside();
    let name = format!("{}/new", outside.display());
    let layer = tar_of(&[Raw::new(&name, EntryType::Regular, "", b"x")]);
    apply(&arena, &layer, Compression::None, &|| name.clone()).unwrap();
    let inside = arena.root().join(name.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"x");
}

#[test]
fn file_through_an_escaping_symlink_is_refused() {
    for name in [
        "up/new",
        "upup/tmp/x",
        "dotdot/outside/canary",
        "d/back/canary",
    ] {
        let (_, r) = case(&[Raw::new(name, EntryType::Regular, "", b"x")]);
        assert!(
            matches!(unsafe_reason(r), UnsafeEntryReason::SymlinkEscape { .. }),
            "{name}"
        );
    }
    // Symlink then file through it, in one layer.
    let (_, r) = case(&[
        Raw::new("s", EntryType::Symlink, "../outside", b""),
        Raw::new("s/canary", EntryType::Regular, "", b"pwned"),
    ]);
    assert!(matches!(
        unsafe_reason(r),
        UnsafeEntryReason::SymlinkEscape { .. }
    ));
}

#[test]
fn absolute_symlinks_resolve_inside_the_root() {
    // `abs` -> the host path of outside/: followed from the root, it names
    // root/<outside path>, created inside.
    let (arena, r) = case(&[Raw::new("abs/new", EntryType::Regular, "", b"x")]);
    r.unwrap();
    let inside = arena
        .root()
        .join(arena.outside().strip_prefix("/").unwrap())
        .join("new");
    assert_eq!(fs::read(inside).unwrap(), b"x");
}

#[test]
fn hard_links_to_outside_are_refused() {
    let arena = Arena::new();
    let canary = arena.outside().join("canary");
    for target in [
        "../outside/canary",
        "up/canary",
        "d/back/canary",
        "dotdot/outside/canary",
    ] {
        let (_, r) = case(&[Raw::new("h", EntryType::Link, target, b"")]);
        assert!(
            matches!(
                unsafe_reason(r),
                UnsafeEntryReason::HardLinkEscape { .. } | UnsafeEntryReason::SymlinkEscape { .. }
            ),
            "{target}"
        );
    }
    // An absolute host path is resolved inside the root, where it is missing.
    let (_, r) = case(&[Raw::new(
        "h",
        EntryType::Link,
        canary.to_str().unwrap(),
        b"",
    )]);
    assert!(matches!(
        unsafe_reason(r),
        UnsafeEntryReason::HardLinkTargetMissing { .. }
    ));
}

#[test]
fn hard_link_to_an_escaping_symlink_links_the_symlink_itself() {
    // `abscanary` is a symlink to the host's outside/canary: the hard link
    // must be to the symlink (linkat without AT_SYMLINK_FOLLOW), never to the
    // outside file.
    let (arena, r) = case(&[Raw::new("h", EntryType::Link, "abscanary", b"")]);
    r.unwrap();
    let h = fs::symlink_metadata(arena.root().join("h")).unwrap();
    assert!(h.file_type().is_symlink());
    // Writing through it afterwards is refused as well.
    let (_, r) = case(&[
        Raw::new("h", EntryType::Link, "up", b""),
        Raw::new("h/new", EntryType::Regular, "", b"x"),
    ]);
    assert!(matches!(
        unsafe_reason(r),
        UnsafeEntryReason::SymlinkEscape { .. }
    ));
}

#[test]
fn whiteouts_of_dotdot_are_refused() {
    for name in [".wh..", ".wh...", "d/.wh..", "d/.wh..."] {
        let (_, r) = case(&[Raw::new(name, EntryType::Regular, "", b"")]);
        assert_eq!(
            unsafe_reason(r),
            UnsafeEntryReason::InvalidWhiteout,
            "{name}"
        );
    }
    // Whiteouts and opaque markers below an escaping symlink.
    for name in ["up/.wh.canary", "up/.wh..wh..opq", "d/back/.wh.canary"] {
        let (_, r) = case(&[Raw::new(name, EntryType::Regular, "", b"")]);
        assert!(
            matches!(unsafe_reason(r), UnsafeEntryReason::SymlinkEscape { .. }),
            "{name}"
        );
    }
    // Whiteout of a symlink to outside removes the symlink only.
    let (arena, r) = case(&[Raw::new(".wh.abscanary", EntryType::Regular, "", b"")]);
    r.unwrap();
    assert!(fs::symlink_metadata(arena.root().join("abscanary")).is_err());
}

#[test]
fn bad_sizes_are_format_errors() {
    for size in [
        SizeField::Binary(-1),
        SizeField::Binary(i64::MIN),
        SizeField::Garbage,
        SizeField::Octal(0o77_777_777_777),
        SizeField::Binary(i64::MAX),
    ] {
        let mut e = Raw::new("f", EntryType::Regular, "", b"abc");
        e.size = Some(size);
        let (_, r) = case(&[e]);
        assert!(
            matches!(r, Err(Error::LayerFormat { .. })),
            "{size:?}: {r:?}"
        );
    }
}

#[test]
fn long_names_are_checked_like_short_ones() {
    let deep = format!("{}../../../../escape", "deep/".repeat(30));
    let (_, r) = case(&[Raw::new(&deep, EntryType::Regular, "", b"x")]);
    assert_eq!(unsafe_reason(r), UnsafeEntryReason::ParentComponent);
    let long = format!("{}/f", "n".repeat(200));
    let (arena, r) = case(&[Raw::new(&long, EntryType::Regular, "", b"x")]);
    r.unwrap();
    assert_eq!(fs::read(arena.root().join(&long)).unwrap(), b"x");
    // A long link name pointing out.
    let target = format!("{}../outside/canary", "d/../".repeat(0) + &"./".repeat(60));
    let (_, r) = case(&[Raw::new("h", EntryType::Link, &target, b"")]);
    assert!(matches!(
        unsafe_reason(r),
        UnsafeEntryReason::HardLinkEscape { .. }
    ));
}

#[test]
fn duplicate_entries_replace_each_other_inside() {
    // file then dir, dir then file, symlink replaced by file, file replaced
    // by a symlink to outside then written through.
    let (arena, r) = case(&[
        Raw::new("x", EntryType::Regular, "", b"1"),
        Raw::new("x/", EntryType::Directory, "", b""),
        Raw::new("y/", EntryType::Directory, "", b""),
        Raw::new("y/child", EntryType::Regular, "", b"c"),
        Raw::new("y", EntryType::Regular, "", b"2"),
        Raw::new("abscanary", EntryType::Regular, "", b"3"),
        Raw::new("up", EntryType::Regular, "", b"4"),
    ]);
    r.unwrap();
    let root = arena.root();
    assert!(fs::symlink_metadata(root.join("x")).unwrap().is_dir());
    assert_eq!(fs::read(root.join("y")).unwrap(), b"2");
    assert_eq!(fs::read(root.join("abscanary")).unwrap(), b"3");
    assert_eq!(fs::read(root.join("up")).unwrap(), b"4");
    let (_, r) = case(&[
        Raw::new("z", EntryType::Regular, "", b"1"),
        Raw::new("z", EntryType::Symlink, "../outside", b""),
        Raw::new("z/canary", EntryType::Regular, "", b"pwned"),
    ]);
    assert!(matches!(
        unsafe_reason(r),
        UnsafeEntryReason::SymlinkEscape { .. }
    ));
}

#[test]
fn device_nodes_stay_inside() {
    let mut c = Raw::new("dev/null", EntryType::Char, "", b"");
    c.dev = (1, 3);
    let mut b = Raw::new("up/sda", EntryType::Block, "", b"");
    b.dev = (8, 0);
    let (arena, r) = case(&[c.clone()]);
    r.unwrap();
    let m = fs::symlink_metadata(arena.root().join("dev/null")).unwrap();
    // Created (as root) or skipped, never elsewhere.
    assert!(m.mode() & 0o170000 == 0o020000 || m.is_file() || m.is_dir());
    let (_, r) = case(&[b]);
    assert!(matches!(
        unsafe_reason(r),
        UnsafeEntryReason::SymlinkEscape { .. }
    ));
}

#[test]
fn link_entries_without_targets_are_format_errors() {
    for kind in [EntryType::Symlink, EntryType::Link] {
        let (_, r) = case(&[Raw::new("l", kind, "", b"")]);
        assert_eq!(format_reason(r), LayerFormatErrorKind::MissingLinkTarget);
    }
}

/// A GNU sparse entry whose map describes a huge hole must not make the
/// unpacker write that many zero bytes (a 2 KiB layer filling the disk).
#[test]
fn sparse_entry_with_a_huge_hole_is_bounded() {
    let mut e = Raw::new("sparse", EntryType::GNUSparse, "", b"tail");
    let hole = 1u64 << 40; // 1 TiB
    e.sparse = vec![(hole, 4)];
    e.real_size = hole + 4;
    let start = std::time::Instant::now();
    let (arena, r) = case(&[e]);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(format_reason(r), LayerFormatErrorKind::SparseTooLarge);
    assert!(fs::symlink_metadata(arena.root().join("sparse")).is_err());
    // A large hole under the limit is kept as a hole: no disk space.
    let mut e = Raw::new("sparse", EntryType::GNUSparse, "", &[b'z'; 512]);
    // A trailing hole is a last, empty block at the real size.
    e.sparse = vec![(64 << 20, 512), ((64 << 20) + 512 + 4096, 0)];
    e.real_size = (64 << 20) + 512 + 4096;
    let (arena, r) = case(&[e]);
    r.unwrap();
    let m = fs::metadata(arena.root().join("sparse")).unwrap();
    assert_eq!(m.len(), (64 << 20) + 512 + 4096);
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
}

#[test]
fn small_sparse_entries_unpack_with_their_holes() {
    let mut e = Raw::new("sparse", EntryType::GNUSparse, "", &[b'a'; 512]);
    e.sparse = vec![(4096, 512)];
    e.real_size = 4096 + 512;
    let (arena, r) = case(&[e]);
    r.unwrap();
    let data = fs::read(arena.root().join("sparse")).unwrap();
    assert_eq!(data.len(), 4096 + 512);
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..].iter().all(|&b| b == b'a'));
}

/// Directories nested far deeper than any real image, then whited out by
/// the next layer, on a thread with a small stack: a typed error or
/// success, never a crash. (The recursive removal overflowed the stack and
/// aborted the process; 256 KiB and 4 000 levels show it quickly while
/// leaving other tests, which share the descriptor table, enough
/// descriptors.)
#[test]
fn deep_directories_and_their_whiteout_do_not_crash() {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let arena = Arena::new();
            let depth = 4_000;
            let mut e = Raw::new("x", EntryType::Regular, "", b"deep");
            e.pax.push((
                "path".into(),
                format!("{}f", "d/".repeat(depth)).into_bytes(),
            ));
            let layer = tar_of(&[e]);
            // Straight to apply_layer: the path-based checks cannot walk a
            // tree this deep (ENAMETOOLONG); they run once it is gone.
            let r = apply_layer(&arena.root(), &layer[..], Compression::None, &opts());
            eprintln!("deep layer: {:?}", r.as_ref().map(drop));
            let whiteout = tar_of(&[Raw::new(".wh.d", EntryType::Regular, "", b"")]);
            let r = apply_layer(&arena.root(), &whiteout[..], Compression::None, &opts());
            eprintln!("whiteout: {:?}", r.as_ref().map(drop));
            r.unwrap();
            arena.check(&|| "deep directories".into());
            assert!(!arena.root().join("d").exists());
        })
        .unwrap()
        .join()
        .unwrap();
}
