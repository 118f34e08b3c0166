//! `msb pull` and `msb image ...` against a real registry on loopback.

use std::path::Path;
use std::process::{Command, Output};

use test_utils::images::busybox_image;
use test_utils::registry::TestRegistry;

fn msb(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(args)
        .env("MSB_HOME", home)
        .env_remove("MSB_REGISTRY_MIRRORS")
        .env_remove("MSB_INSECURE_REGISTRIES")
        .output()
        .expect("run msb")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pull_list_inspect_remove_gc() {
    let registry = TestRegistry::start();
    let pushed = busybox_image()
        .push_blocking(&registry, "test/busybox", "v1")
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let image = format!("{}/test/busybox:v1", registry.host());

    let out = msb(home.path(), &["pull", &image]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), pushed.manifest_digest);
    assert!(stderr(&out).contains("pulled"), "{}", stderr(&out));

    let out = msb(home.path(), &["pull", "--pull", "if-missing", &image]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("up to date"), "{}", stderr(&out));

    let out = msb(home.path(), &["image", "ls", "--format", "json"]);
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["reference"], image);
    assert_eq!(rows[0]["manifest_digest"], pushed.manifest_digest);

    let out = msb(home.path(), &["image", "ls", "-q"]);
    assert_eq!(stdout(&out).trim(), image);

    let out = msb(home.path(), &["image", "inspect", &image]);
    let record: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(record["platform"], "linux/amd64");

    let out = msb(home.path(), &["image", "rm", &image]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = msb(home.path(), &["image", "inspect", &image]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "not found has its own exit code"
    );
    assert!(stderr(&out).starts_with("msb: image"), "{}", stderr(&out));

    let out = msb(home.path(), &["image", "gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("removed 3 blobs"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 trees"), "{}", stdout(&out));
}

#[test]
fn bad_input_gets_one_line_and_a_distinct_exit_code() {
    let home = tempfile::tempdir().unwrap();
    let out = msb(home.path(), &["pull", "Not/A:Valid:Ref"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid image reference"), "{err}");

    let out = msb(home.path(), &["pull", "--pull", "sometimes", "alpine"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("pull policy"), "{}", stderr(&out));

    let out = msb(home.path(), &["pull", "--pull", "never", "alpine"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn missing_image_in_a_registry_fails_cleanly() {
    let registry = TestRegistry::start();
    let home = tempfile::tempdir().unwrap();
    let image = format!("{}/absent/image:v1", registry.host());
    let out = msb(home.path(), &["pull", &image]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("absent/image"), "{err}");
    let out = msb(home.path(), &["image", "ls", "-q"]);
    assert!(stdout(&out).trim().is_empty());
}
