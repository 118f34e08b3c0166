//! Volumes, the image's config, identity and resource limits, end to end
//! through the public API: bind mounts both ways, read-only binds, named
//! volumes across sandboxes, tmpfs size limits, typed errors before
//! anything starts, the image's `Env`/`WorkingDir`/`User`/`Entrypoint`/
//! `Cmd`, rlimits and the hostname.

use microsandbox::{
    MicrosandboxError, RlimitResource, Sandbox, SandboxBuilder, Volume, VolumeErrorKind,
};
use test_utils::images::{Compression, LayerBuilder, busybox_image};
use test_utils::msb_test;
use test_utils::sandbox::TestEnv;

/// A builder for `name` in the test's home, on the test's backend.
fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

/// The busybox image with a config of its own, pushed as `test/cfg:v1`.
fn config_image(env: &TestEnv) -> String {
    let mut layer = LayerBuilder::new();
    layer.dir("srv", 0o755).dir("srv/app", 0o755);
    busybox_image()
        .layer(layer, Compression::Gzip)
        .env(["GREETING=from-image", "OVERRIDE=image"])
        .working_dir("/srv/app")
        .user("nobody")
        .entrypoint(["/bin/echo"])
        .cmd(["hello", "world"])
        .push_blocking(env.registry(), "test/cfg", "v1")
        .expect("push the config image");
    env.registry().reference("test/cfg", "v1")
}

#[msb_test]
async fn bind_volume_round_trip(env: TestEnv) {
    let image = env.busybox();
    let host = env.home().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("from-host"), "written on the host\n").unwrap();
    let file = env.home().join("single.txt");
    std::fs::write(&file, "one file\n").unwrap();
    let sb = builder(&env, "vol-bind", &image)
        .volume("/mnt/shared", |m| m.bind(&host))
        .volume("/etc/single.txt", |m| m.bind(&file))
        .create()
        .await
        .unwrap();
    let out = sb
        .shell("cat /mnt/shared/from-host /etc/single.txt && echo from the sandbox > /mnt/shared/from-guest")
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout_str(), "written on the host\none file\n");
    assert_eq!(
        std::fs::read_to_string(host.join("from-guest")).unwrap(),
        "from the sandbox\n"
    );
    sb.stop_and_wait().await.unwrap();
    // The host directory is untouched otherwise, and still there.
    assert!(host.join("from-host").exists());
}

#[msb_test]
async fn read_only_bind_refuses_writes(env: TestEnv) {
    let image = env.busybox();
    let host = env.home().join("ro");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("keep"), "original\n").unwrap();
    let sb = builder(&env, "vol-ro", &image)
        .volume("/ro", |m| m.bind(&host).read_only())
        .create()
        .await
        .unwrap();
    let out = sb.shell("cat /ro/keep; echo x > /ro/keep").await.unwrap();
    assert_eq!(out.stdout_str(), "original\n");
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr_str().contains("Read-only file system"),
        "{out:?}"
    );
    let out = sb.shell("touch /ro/new").await.unwrap();
    assert!(
        out.stderr_str().contains("Read-only file system"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("keep")).unwrap(),
        "original\n"
    );
    assert!(!host.join("new").exists());
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn named_volume_persists_across_sandboxes(env: TestEnv) {
    let image = env.busybox();
    let volume = Volume::create_in(env.home(), "data").unwrap();
    assert!(volume.path().starts_with(env.home().join("volumes")));

    let first = builder(&env, "vol-named-1", &image)
        .volume("/data", |m| m.named("data"))
        .create()
        .await
        .unwrap();
    let out = first.shell("echo persisted > /data/file").await.unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    // In use by a running sandbox: not removable.
    match Volume::remove_in(env.home(), "data") {
        Err(MicrosandboxError::VolumeInUse { name, sandboxes }) => {
            assert_eq!(name, "data");
            assert_eq!(sandboxes, vec!["vol-named-1".to_owned()]);
        }
        other => panic!("expected VolumeInUse, got {other:?}"),
    }
    first.stop_and_wait().await.unwrap();
    first.remove_self().unwrap();

    let second = builder(&env, "vol-named-2", &image)
        .volume("/data", |m| m.named("data"))
        .create()
        .await
        .unwrap();
    let out = second.shell("cat /data/file").await.unwrap();
    assert_eq!(out.stdout_str(), "persisted\n", "{out:?}");
    second.stop_and_wait().await.unwrap();

    let names: Vec<String> = Volume::list_in(env.home())
        .unwrap()
        .iter()
        .map(|v| v.name().to_owned())
        .collect();
    assert_eq!(names, vec!["data"]);
    Volume::remove_in(env.home(), "data").unwrap();
    assert!(Volume::list_in(env.home()).unwrap().is_empty());
}

#[msb_test]
async fn tmpfs_volume_has_its_size_limit(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "vol-tmpfs", &image)
        .volume("/scratch", |m| m.tmpfs().size_mib(1))
        .create()
        .await
        .unwrap();
    let out = sb
        .shell("dd if=/dev/zero of=/scratch/small bs=1024 count=512 2>/dev/null && echo ok")
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "ok\n", "{out:?}");
    let out = sb
        .shell("dd if=/dev/zero of=/scratch/big bs=1024 count=2048")
        .await
        .unwrap();
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr_str().contains("No space left on device"),
        "{out:?}"
    );
    let out = sb.shell("grep ' /scratch ' /proc/mounts").await.unwrap();
    assert!(out.stdout_str().contains("tmpfs"), "{out:?}");
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn bad_volumes_fail_before_anything_starts(env: TestEnv) {
    let image = env.busybox();
    let missing = env.home().join("does-not-exist");
    match builder(&env, "vol-bad-1", &image)
        .volume("/data", |m| m.bind(&missing))
        .create()
        .await
    {
        Err(MicrosandboxError::VolumeHostPathMissing { guest, path }) => {
            assert_eq!(guest, "/data");
            assert_eq!(path, missing);
        }
        other => panic!("expected VolumeHostPathMissing, got {other:?}"),
    }
    let host = env.home().join("exists");
    std::fs::create_dir(&host).unwrap();
    for (guest, kind) in [
        ("data", VolumeErrorKind::NotAbsolute),
        ("/a/../etc", VolumeErrorKind::ParentComponent),
        ("/", VolumeErrorKind::Root),
    ] {
        match builder(&env, "vol-bad-2", &image)
            .volume(guest, |m| m.bind(&host))
            .create()
            .await
        {
            Err(MicrosandboxError::InvalidVolume { reason, .. }) => assert_eq!(reason, kind),
            other => panic!("expected InvalidVolume({kind:?}) for {guest}, got {other:?}"),
        }
    }
    match builder(&env, "vol-bad-3", &image)
        .volume("/data", |m| m.named("nope"))
        .create()
        .await
    {
        Err(MicrosandboxError::VolumeNotFound { name }) => assert_eq!(name, "nope"),
        other => panic!("expected VolumeNotFound, got {other:?}"),
    }
    match builder(&env, "vol-bad-4", &image)
        .volume("/data", |m| m)
        .create()
        .await
    {
        Err(MicrosandboxError::InvalidVolume { reason, .. }) => {
            assert_eq!(reason, VolumeErrorKind::NoSource)
        }
        other => panic!("expected InvalidVolume(NoSource), got {other:?}"),
    }
    // Nothing was left behind: no sandbox, no state directory.
    assert!(Sandbox::list_in(env.home()).unwrap().is_empty());
    let sandboxes = env.home().join("sandboxes");
    if sandboxes.exists() {
        assert_eq!(std::fs::read_dir(&sandboxes).unwrap().count(), 0);
    }
}

#[msb_test]
async fn a_symlink_in_the_image_cannot_redirect_a_volume(env: TestEnv) {
    let target = env.home().join("escape-target");
    std::fs::create_dir(&target).unwrap();
    let mut layer = LayerBuilder::new();
    layer.symlink("evil", &target.to_string_lossy());
    busybox_image()
        .layer(layer, Compression::Gzip)
        .push_blocking(env.registry(), "test/evil", "v1")
        .expect("push the image");
    let image = env.registry().reference("test/evil", "v1");
    let sb = builder(&env, "vol-evil", &image)
        .volume("/evil/sub", |m| m.tmpfs())
        .create()
        .await;
    assert!(sb.is_err(), "a volume through a symlink was mounted");
    assert!(
        !target.join("sub").exists(),
        "the mount point was created on the host"
    );
}

#[msb_test]
async fn image_config_is_honoured(env: TestEnv) {
    let image = config_image(&env);
    let sb = builder(&env, "cfg-1", &image)
        .env("OVERRIDE", "builder")
        .create()
        .await
        .unwrap();
    let out = sb
        .exec("sh", ["-c", "echo $GREETING $OVERRIDE; pwd; id -u"])
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "from-image builder\n/srv/app\n65534\n",
        "{out:?}"
    );
    assert_eq!(sb.image_command(), vec!["/bin/echo", "hello", "world"]);
    let command = sb.image_command();
    let out = sb.exec(&command[0], &command[1..]).await.unwrap();
    assert_eq!(out.stdout_str(), "hello world\n");
    // A handle from `get` sees the same defaults.
    let again = Sandbox::get_in(env.home(), "cfg-1").unwrap();
    assert_eq!(again.image_command(), command);
    let out = again.shell("id -u; pwd").await.unwrap();
    assert_eq!(out.stdout_str(), "65534\n/srv/app\n");
    sb.stop_and_wait().await.unwrap();

    // The builder wins over the image.
    let sb = builder(&env, "cfg-2", &image)
        .user("root")
        .workdir("/tmp")
        .entrypoint(["/bin/true"])
        .create()
        .await
        .unwrap();
    let out = sb.shell("id -u; pwd").await.unwrap();
    assert_eq!(out.stdout_str(), "0\n/tmp\n", "{out:?}");
    assert_eq!(sb.image_command(), vec!["/bin/true"]);
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn rlimits_and_hostname_apply(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "ident-1", &image)
        .hostname("custom-host")
        // (Raising a hard limit needs CAP_SYS_RESOURCE, which our hosts'
        // root lacks.)
        .rlimit(RlimitResource::Nofile, 256, 512)
        .rlimit(RlimitResource::Core, 0, 0)
        .create()
        .await
        .unwrap();
    let out = sb
        .shell("ulimit -n; ulimit -Hn; ulimit -c; hostname")
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "256\n512\n0\ncustom-host\n", "{out:?}");
    sb.stop_and_wait().await.unwrap();
    sb.remove_self().unwrap();

    match builder(&env, "ident-2", &image)
        .rlimit(RlimitResource::Nofile, 10, 5)
        .create()
        .await
    {
        Err(MicrosandboxError::InvalidConfig { what, .. }) => assert_eq!(what, "rlimit"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    match builder(&env, "ident-3", &image)
        .hostname("not a hostname")
        .create()
        .await
    {
        Err(MicrosandboxError::InvalidConfig { what, .. }) => assert_eq!(what, "hostname"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(Sandbox::list_in(env.home()).unwrap().is_empty());
}

#[msb_test]
async fn microvm_volumes_are_configured(env: TestEnv) {
    let image = env.busybox();
    let host = env.home().join("vm-shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "shared\n").unwrap();
    let probe = microsandbox::host::probe_with(&test_utils::probe_options_for(env.home()));
    let result = Sandbox::builder("vm-vol")
        .home(env.home())
        .image(&image)
        .isolation(microsandbox::Isolation::Microvm)
        .memory(256)
        .volume("/shared", |m| m.bind(&host).read_only())
        .volume("/scratch", |m| m.tmpfs().size_mib(1))
        .rlimit(RlimitResource::Nofile, 256, 512)
        .create()
        .await;
    if probe.verdict.can_run_microvm() {
        let sb = result.unwrap();
        let out = sb
            .shell("cat /shared/f; ulimit -n; touch /shared/x 2>&1; grep -c ' /scratch tmpfs' /proc/mounts")
            .await
            .unwrap();
        assert!(out.stdout_str().starts_with("shared\n256\n"), "{out:?}");
        assert!(
            out.stdout_str().contains("Read-only file system"),
            "{out:?}"
        );
        sb.stop_and_wait().await.unwrap();
        return;
    }
    // The VM cannot run here, but its configuration (virtio-fs shares,
    // rlimits, the agent's environment) must have been accepted.
    match result {
        Err(MicrosandboxError::BootFailed { stage, reason, .. }) => {
            println!("microVM with volumes: {stage}: {reason}");
            assert_ne!(stage, "vm configuration", "{reason}");
        }
        other => panic!("expected BootFailed, got {other:?}"),
    }
    // A host file cannot be shared with a microVM: refused up front.
    let file = host.join("f");
    match Sandbox::builder("vm-vol-2")
        .home(env.home())
        .image(&image)
        .isolation(microsandbox::Isolation::Microvm)
        .volume("/f", |m| m.bind(&file))
        .create()
        .await
    {
        Err(MicrosandboxError::InvalidVolume { reason, .. }) => {
            assert_eq!(reason, VolumeErrorKind::NotADirectory)
        }
        other => panic!("expected InvalidVolume(NotADirectory), got {other:?}"),
    }
}
