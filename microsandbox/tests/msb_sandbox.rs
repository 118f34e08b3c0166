//! `msb run`, `create`, `exec`, `ps`, `stop`, `rm` driven as a user would,
//! with namespace isolation and the busybox image from a registry on
//! loopback.

mod common;

use std::process::Command;

use common::{env, msb, msb_ok, text};

#[test]
fn run_propagates_the_exit_code_and_output() {
    let env = env("msb_sandbox");
    let image = env.busybox();
    let home = env.home();
    let out = msb(
        home,
        &[
            "run",
            &image,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 42",
        ],
    );
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err\n"));
    // The ephemeral sandbox is gone.
    let out = msb(home, &["ps", "-q"]);
    assert_eq!(text(&out.stdout), "");

    let out = msb(home, &["run", &image, "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));

    let missing = format!("{}/test/missing:v1", env.registry().host());
    let out = msb(home, &["run", &missing, "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("msb: ") && err.lines().count() == 1,
        "{err}"
    );

    let out = msb(home, &["run", "--isolation", "bogus", &image]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error: {}",
        text(&out.stderr)
    );
}

#[test]
fn create_exec_ps_stop_rm() {
    let env = env("msb_sandbox");
    let image = env.busybox();
    let home = env.home();
    let out = msb_ok(home, &["create", "--name", "box", "-e", "WHO=msb", &image]);
    assert_eq!(text(&out.stdout), "box\n");

    let out = msb(
        home,
        &["exec", "box", "--", "sh", "-c", "echo $WHO; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "msb\n");

    let out = msb(home, &["create", "--name", "box", &image]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "name exists: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("already exists"));

    let out = msb(home, &["ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], "box");
    assert_eq!(rows[0]["status"], "running");
    assert_eq!(rows[0]["isolation"], "namespace");

    let out = msb(home, &["rm", "box"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "still running: {}",
        text(&out.stderr)
    );
    msb_ok(home, &["stop", "box"]);
    let out = msb(home, &["inspect", "box"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["status"], "stopped");
    msb_ok(home, &["rm", "box"]);
    let out = msb(home, &["inspect", "box"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_msb"))
        .arg("--help")
        .output()
        .unwrap();
    let help = text(&out.stdout);
    for command in [
        "run", "create", "stop", "exec", "ls", "inspect", "rm", "pull", "image", "doctor",
    ] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

#[test]
fn logs_start_and_stop_with_a_timeout() {
    let env = env("msb_sandbox");
    let image = env.busybox();
    let home = env.home();
    msb_ok(home, &["create", "--name", "lg", &image]);
    let out = msb(
        home,
        &[
            "exec",
            "lg",
            "--",
            "sh",
            "-c",
            "echo to-the-console > /proc/1/fd/1; echo kept > /root/kept",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = msb(home, &["logs", "lg", "--source", "console"]);
    assert!(
        text(&out.stdout).contains("to-the-console"),
        "{}",
        text(&out.stdout)
    );
    let out = msb(home, &["logs", "lg", "--source", "runtime", "--tail", "1"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );

    // A command ignoring SIGTERM is killed after the timeout.
    let out = msb(
        home,
        &[
            "exec",
            "lg",
            "--",
            "sh",
            "-c",
            "busybox setsid sh -c \"trap '' TERM; sleep 60\" >/dev/null 2>&1 &",
        ],
    );
    assert!(out.status.success());
    let started = std::time::Instant::now();
    msb_ok(home, &["stop", "lg", "--timeout", "0.5"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(8));

    // Started again, with its files as it left them.
    msb_ok(home, &["start", "lg"]);
    let out = msb(home, &["exec", "lg", "--", "cat", "/root/kept"]);
    assert_eq!(text(&out.stdout), "kept\n", "{}", text(&out.stderr));
    let out = msb(home, &["start", "lg"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "already running: {}",
        text(&out.stderr)
    );
    msb_ok(home, &["rm", "--force", "lg"]);
}

#[test]
fn exec_streams_stdin_with_dash_i_and_completions_exist() {
    let env = env("msb_sandbox");
    let image = env.busybox();
    let home = env.home();
    assert!(
        msb(home, &["create", "--name", "io", &image])
            .status
            .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_msb"))
        .args(["exec", "-i", "io", "--", "sh", "-c", "tr a-z A-Z"])
        .env("MSB_HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "SHOUT\n");
    assert!(msb(home, &["rm", "-f", "io"]).status.success());

    let out = msb(home, &["completions", "bash"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("_msb"),
        "a bash completion function"
    );
}

#[test]
fn run_without_a_command_runs_the_image_command() {
    let env = env("msb_sandbox");
    test_utils::images::busybox_image()
        .entrypoint(["/bin/echo", "from"])
        .cmd(["the", "image"])
        .push_blocking(env.registry(), "test/cmd", "v1")
        .expect("push the image");
    let image = env.registry().reference("test/cmd", "v1");
    let out = msb(env.home(), &["run", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the image\n");
}

#[test]
fn exec_dash_t_runs_on_a_pseudo_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: util-linux `script` (to give msb a terminal) is not installed");
        return;
    }
    let env = env("msb_sandbox");
    let image = env.busybox();
    let home = env.home();
    assert!(
        msb(home, &["create", "--name", "tty", &image])
            .status
            .success()
    );
    // `script` gives msb a terminal of its own, as a user's shell would.
    let inner = format!(
        "{} exec -t tty -- sh -c 'tty -s && echo on-a-tty; echo $TERM'",
        env!("CARGO_BIN_EXE_msb")
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("MSB_HOME", home)
        .env("MSB_ISOLATION", "namespace")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.contains("on-a-tty"), "{stdout}");
    assert!(stdout.contains("xterm"), "{stdout}");
    assert!(msb(home, &["rm", "-f", "tty"]).status.success());
}
