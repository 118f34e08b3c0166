//! What the tests driving the `msb` binary share: running it against a
//! test's state home with namespace isolation.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use test_utils::sandbox::{Requirement, TestEnv};

/// `msb ARGS` for the state home `home`, namespace isolation, stdin null.
pub fn msb_command(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msb"));
    cmd.args(args)
        .env("MSB_HOME", home)
        .env("MSB_ISOLATION", "namespace")
        .stdin(Stdio::null());
    cmd
}

/// Runs `msb ARGS` to the end.
pub fn msb(home: &Path, args: &[&str]) -> Output {
    msb_command(home, args).output().expect("run msb")
}

/// Runs `msb ARGS` to the end and asserts that it succeeded.
pub fn msb_ok(home: &Path, args: &[&str]) -> Output {
    let out = msb(home, args);
    assert!(out.status.success(), "msb {args:?}: {}", text(&out.stderr));
    out
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A test environment that needs no microVM.
pub fn env(name: &str) -> TestEnv {
    TestEnv::for_test(name, Requirement::Any).expect("no microVM needed")
}
