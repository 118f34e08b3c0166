//! File operations end to end, through the public API (`Sandbox::fs`): the
//! busybox image from a registry on loopback, the real sandbox process, the
//! real agent, the backend the KVM probe allows (namespace isolation on our
//! hosts).

use microsandbox::sandbox::FileType;
use microsandbox::{FsErrorKind, MicrosandboxError, Sandbox, SandboxBuilder};
use test_utils::msb_test;
use test_utils::sandbox::TestEnv;
use tokio::io::AsyncReadExt;

/// A builder for `name` in the test's home, on the test's backend.
fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

/// `len` deterministic, non-repeating-looking bytes.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The kind of a [`MicrosandboxError::Fs`], panicking on anything else.
#[track_caller]
fn fs_kind<T: std::fmt::Debug>(r: microsandbox::Result<T>) -> FsErrorKind {
    match r {
        Err(MicrosandboxError::Fs { kind, .. }) => kind,
        other => panic!("expected a file-operation error, got {other:?}"),
    }
}

#[msb_test]
async fn write_and_read_files(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "fs-rw", &image).create().await.unwrap();
    let fs = sb.fs();

    // Small round trip, overwrite, append, create-new.
    fs.write("/tmp/small.txt", b"hello\n").await.unwrap();
    assert_eq!(fs.read("/tmp/small.txt").await.unwrap(), b"hello\n");
    fs.write("/tmp/small.txt", b"bye\n").await.unwrap();
    assert_eq!(fs.read_to_string("/tmp/small.txt").await.unwrap(), "bye\n");
    fs.append("/tmp/small.txt", b"again\n").await.unwrap();
    assert_eq!(
        fs.read_to_string("/tmp/small.txt").await.unwrap(),
        "bye\nagain\n"
    );
    fs.append("/tmp/appended", b"a").await.unwrap();
    assert_eq!(fs.read("/tmp/appended").await.unwrap(), b"a");
    assert_eq!(
        fs_kind(fs.create_new("/tmp/small.txt", b"x").await),
        FsErrorKind::AlreadyExists
    );
    fs.create_new("/tmp/new.txt", b"fresh").await.unwrap();
    assert_eq!(fs.read("/tmp/new.txt").await.unwrap(), b"fresh");
    // An empty file.
    fs.write("/tmp/empty", b"").await.unwrap();
    assert_eq!(fs.read("/tmp/empty").await.unwrap(), b"");

    // 16 MiB, byte for byte, both ways, whole and streamed.
    let big = pattern(16 << 20);
    fs.write("/tmp/big.bin", &big).await.unwrap();
    let back = fs.read("/tmp/big.bin").await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "16 MiB read back differs");
    let mut streamed = Vec::new();
    fs.read_stream("/tmp/big.bin")
        .await
        .unwrap()
        .read_to_end(&mut streamed)
        .await
        .unwrap();
    assert!(streamed == big, "16 MiB streamed back differs");
    // A stalled reader holds up nothing else.
    let mut slow = fs.read_stream("/tmp/big.bin").await.unwrap();
    let mut head = [0u8; 10];
    slow.read_exact(&mut head).await.unwrap();
    assert_eq!(head, big[..10]);
    fs.write("/tmp/during", b"d").await.unwrap();
    assert_eq!(fs.read("/tmp/during").await.unwrap(), b"d");
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).await.unwrap();
    assert!(rest == big[10..], "the rest of the stalled read differs");
    let written = fs.write_stream("/tmp/big2.bin", &big[..]).await.unwrap();
    assert_eq!(written, big.len() as u64);
    assert_eq!(
        fs.stat("/tmp/big2.bin").await.unwrap().size,
        big.len() as u64
    );
    let sum = sb
        .exec(
            "sh",
            [
                "-c",
                "cmp /tmp/big.bin /tmp/big2.bin && wc -c < /tmp/big2.bin",
            ],
        )
        .await
        .unwrap();
    assert!(sum.success(), "{sum:?}");
    assert_eq!(sum.stdout_str().trim(), (16 << 20).to_string());

    // Typed errors.
    assert_eq!(
        fs_kind(fs.read("/tmp/missing").await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        fs_kind(fs.read_stream("/tmp/missing").await),
        FsErrorKind::NotFound
    );
    assert_eq!(fs_kind(fs.read("/tmp").await), FsErrorKind::IsADirectory);
    assert_eq!(
        fs_kind(fs.write("/tmp", b"x").await),
        FsErrorKind::IsADirectory
    );
    assert_eq!(
        fs_kind(fs.write("/no/such/dir/f", b"x").await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        fs_kind(fs.read("tmp/small.txt").await),
        FsErrorKind::InvalidArgument
    );
    assert_eq!(
        fs_kind(fs.write("relative", b"x").await),
        FsErrorKind::InvalidArgument
    );
    assert_eq!(
        fs_kind(fs.read("/tmp/small.txt/x").await),
        FsErrorKind::NotADirectory
    );
    let err = fs.read("/tmp/missing").await.unwrap_err();
    match &err {
        MicrosandboxError::Fs { name, path, .. } => {
            assert_eq!(name, "fs-rw");
            assert_eq!(path, "/tmp/missing");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("/tmp/missing"), "{err}");

    // A file written by a command is visible through fs, and vice versa.
    let out = sb
        .exec("sh", ["-c", "printf 'from exec' > /tmp/x"])
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(fs.read("/tmp/x").await.unwrap(), b"from exec");
    fs.write("/tmp/x", b"from fs").await.unwrap();
    let out = sb.exec("cat", ["/tmp/x"]).await.unwrap();
    assert_eq!(out.stdout_str(), "from fs");

    // Still answering normally after all of the above.
    assert!(fs.exists("/tmp/x").await.unwrap());
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn directories(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "fs-dirs", &image).create().await.unwrap();
    let fs = sb.fs();

    fs.mkdir("/tmp/d").await.unwrap();
    assert_eq!(
        fs_kind(fs.mkdir("/tmp/d").await),
        FsErrorKind::AlreadyExists
    );
    assert_eq!(fs_kind(fs.mkdir("/tmp/a/b/c").await), FsErrorKind::NotFound);
    fs.mkdir_all("/tmp/a/b/c").await.unwrap();
    fs.mkdir_all("/tmp/a/b/c").await.unwrap();
    assert!(fs.stat("/tmp/a/b/c").await.unwrap().is_dir());
    fs.write("/tmp/a/file", b"f").await.unwrap();
    assert_eq!(
        fs_kind(fs.mkdir_all("/tmp/a/file").await),
        FsErrorKind::AlreadyExists
    );

    // List: names and types.
    let mut entries = fs.list("/tmp/a").await.unwrap();
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["b", "file"]);
    assert!(entries[0].metadata.is_dir());
    assert!(entries[1].metadata.is_file());
    assert_eq!(entries[1].metadata.size, 1);
    assert!(fs.list("/tmp/d").await.unwrap().is_empty());
    assert_eq!(fs_kind(fs.list("/tmp/nope").await), FsErrorKind::NotFound);
    assert_eq!(
        fs_kind(fs.list("/tmp/a/file").await),
        FsErrorKind::NotADirectory
    );
    // A listing bigger than one batch.
    let out = sb
        .exec(
            "sh",
            [
                "-c",
                "mkdir /tmp/many && cd /tmp/many && for i in $(seq 1 1500); do : > f$i; done",
            ],
        )
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(fs.list("/tmp/many").await.unwrap().len(), 1500);

    // Remove: file, wrong kinds, non-empty, recursive.
    assert_eq!(
        fs_kind(fs.remove("/tmp/a").await),
        FsErrorKind::IsADirectory
    );
    assert_eq!(
        fs_kind(fs.remove_dir("/tmp/a").await),
        FsErrorKind::DirectoryNotEmpty
    );
    assert_eq!(
        fs_kind(fs.remove_dir("/tmp/a/file").await),
        FsErrorKind::NotADirectory
    );
    fs.remove("/tmp/a/file").await.unwrap();
    assert!(!fs.exists("/tmp/a/file").await.unwrap());
    assert_eq!(
        fs_kind(fs.remove("/tmp/a/file").await),
        FsErrorKind::NotFound
    );
    fs.remove_dir("/tmp/d").await.unwrap();
    assert!(!fs.exists("/tmp/d").await.unwrap());

    // Recursive removal does not follow symlinks out of the tree.
    fs.mkdir("/tmp/keep").await.unwrap();
    fs.write("/tmp/keep/precious", b"p").await.unwrap();
    let out = sb
        .exec("ln", ["-s", "/tmp/keep", "/tmp/a/b/link"])
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert!(
        fs.symlink_metadata("/tmp/a/b/link")
            .await
            .unwrap()
            .is_symlink()
    );
    assert!(fs.stat("/tmp/a/b/link").await.unwrap().is_dir());
    fs.remove_dir_all("/tmp/a").await.unwrap();
    assert!(!fs.exists("/tmp/a").await.unwrap());
    assert_eq!(fs.read("/tmp/keep/precious").await.unwrap(), b"p");
    // A symlink itself, removed recursively, leaves its target alone.
    sb.exec("ln", ["-s", "/tmp/keep", "/tmp/l2"]).await.unwrap();
    fs.remove_dir_all("/tmp/l2").await.unwrap();
    assert!(fs.exists("/tmp/keep/precious").await.unwrap());
    assert_eq!(
        fs_kind(fs.remove_dir_all("/tmp/gone").await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        fs_kind(fs.mkdir("relative/dir").await),
        FsErrorKind::InvalidArgument
    );
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn rename_copy_stat_and_host_transfers(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "fs-cp", &image).create().await.unwrap();
    let fs = sb.fs();

    // Stat: size, mode, type, owner.
    fs.write("/tmp/s", b"12345").await.unwrap();
    let out = sb.exec("chmod", ["640", "/tmp/s"]).await.unwrap();
    assert!(out.success(), "{out:?}");
    let meta = fs.stat("/tmp/s").await.unwrap();
    assert_eq!(meta.file_type, FileType::File);
    assert!(meta.is_file() && !meta.is_dir());
    assert_eq!(meta.size, 5);
    assert_eq!(meta.mode, 0o640);
    assert_eq!(meta.uid, 0);
    let age = std::time::SystemTime::now()
        .duration_since(meta.modified)
        .unwrap_or_default();
    assert!(age.as_secs() < 600, "mtime {:?}", meta.modified);
    let root = fs.stat("/").await.unwrap();
    assert!(root.is_dir());
    assert_eq!(
        fs.stat("/dev/null").await.unwrap().file_type,
        FileType::CharDevice
    );
    assert_eq!(fs_kind(fs.stat("/tmp/none").await), FsErrorKind::NotFound);
    assert!(fs.exists("/etc/passwd").await.unwrap());
    assert!(!fs.exists("/etc/passwd/x").await.unwrap());
    assert!(!fs.exists("/nope").await.unwrap());
    assert_eq!(
        fs_kind(fs.exists("nope").await),
        FsErrorKind::InvalidArgument
    );

    // Rename.
    fs.rename("/tmp/s", "/tmp/t").await.unwrap();
    assert!(!fs.exists("/tmp/s").await.unwrap());
    assert_eq!(fs.read("/tmp/t").await.unwrap(), b"12345");
    assert_eq!(
        fs_kind(fs.rename("/tmp/s", "/tmp/u").await),
        FsErrorKind::NotFound
    );
    fs.mkdir("/tmp/full").await.unwrap();
    fs.write("/tmp/full/x", b"x").await.unwrap();
    fs.mkdir("/tmp/empty").await.unwrap();
    assert_eq!(
        fs_kind(fs.rename("/tmp/empty", "/tmp/full").await),
        FsErrorKind::DirectoryNotEmpty
    );

    // Copy: content and mode; the destination is replaced.
    fs.write("/tmp/c", b"old content that is longer")
        .await
        .unwrap();
    assert_eq!(fs.copy("/tmp/t", "/tmp/c").await.unwrap(), 5);
    assert_eq!(fs.read("/tmp/c").await.unwrap(), b"12345");
    assert_eq!(fs.copy("/tmp/t", "/tmp/c2").await.unwrap(), 5);
    assert_eq!(fs.stat("/tmp/c2").await.unwrap().mode, 0o640);
    assert_eq!(
        fs_kind(fs.copy("/tmp/none", "/tmp/c3").await),
        FsErrorKind::NotFound
    );
    assert_eq!(
        fs_kind(fs.copy("/tmp/full", "/tmp/c3").await),
        FsErrorKind::IsADirectory
    );
    assert_eq!(
        fs_kind(fs.copy("/tmp/t", "/tmp/none/c").await),
        FsErrorKind::NotFound
    );

    // Host to sandbox and back, 3 MiB + a bit, with the host file's mode.
    let host = tempfile::tempdir().unwrap();
    let data = pattern(3 * 1024 * 1024 + 17);
    let src = host.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let n = fs.copy_from_host(&src, "/tmp/in.bin").await.unwrap();
    assert_eq!(n, data.len() as u64);
    let meta = fs.stat("/tmp/in.bin").await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.mode, 0o600);
    let dst = host.path().join("out.bin");
    let n = fs.copy_to_host("/tmp/in.bin", &dst).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(std::fs::read(&dst).unwrap() == data, "round trip differs");
    // A missing guest file leaves the host untouched; a missing host file
    // is a host I/O error.
    let untouched = host.path().join("untouched");
    assert_eq!(
        fs_kind(fs.copy_to_host("/tmp/none", &untouched).await),
        FsErrorKind::NotFound
    );
    assert!(!untouched.exists());
    assert!(matches!(
        fs.copy_from_host(host.path().join("absent"), "/tmp/z")
            .await,
        Err(MicrosandboxError::Io { .. })
    ));
    sb.stop_and_wait().await.unwrap();
}
