//! The static guest agent (`msb-agent`) as PID 1 of a namespace sandbox with
//! a busybox rootfs, driven over a socketpair with the real protocol.
//!
//! The agent binary comes from `MSB_AGENT_BIN`, or is built the way
//! `cargo xtask build-agent` builds it (static, into `target/msb/agent`; a
//! no-op when current, cargo's lock on that directory serializes concurrent
//! builds). Needs root (or unprivileged user namespaces), as
//! `tests/namespace.rs` does.

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use msb_core::agent::{
    ExecStart, ExitStatus, Frame, FrameReader, FrameWriter, Message, SUPPORTED_VERSIONS, StdinMode,
    host_handshake,
};
use msb_core::sandbox::namespace::{NamespaceSpec, SandboxRoot, Stdio, spawn};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(20);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The agent binary: `MSB_AGENT_BIN`, or a static release build (what
/// `cargo xtask build-agent` produces, at the same path).
fn agent_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("MSB_AGENT_BIN") {
        return bin.into();
    }
    let root = workspace_root();
    let triple = std::env::var("TARGET").ok().unwrap_or_else(|| {
        let out = Command::new("rustc").arg("-vV").output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap()
            .to_owned()
    });
    let target_dir = root.join("target/msb/agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "msb-core",
            "--no-default-features",
            "--bin",
            "msb-agent",
            "--target",
            &triple,
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .expect("run cargo build for the agent");
    assert!(status.success(), "building the static agent failed");
    target_dir.join(&triple).join("release/msb-agent")
}

/// A busybox rootfs with the agent at /.msb/agent.
fn rootfs(dir: &Path, agent: &Path) -> PathBuf {
    let tree = dir.join("rootfs");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::create_dir_all(tree.join(".msb")).unwrap();
    fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    fs::copy(agent, tree.join(".msb/agent")).unwrap();
    tree
}

fn exec(argv: &[&str]) -> Message {
    Message::ExecStart(ExecStart {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/bin".into())],
        cwd: Some("/".into()),
        user: None,
        tty: None,
        stdin: StdinMode::Null,
    })
}

#[derive(Debug, Default)]
struct Outcome {
    pid: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exited: Option<ExitStatus>,
}

#[tokio::test(flavor = "current_thread")]
async fn agent_runs_execs_as_pid1_and_shuts_down() {
    if !Path::new("/bin/busybox").exists() {
        println!("skipped: /bin/busybox (Debian busybox-static) is not installed");
        return;
    }
    let started = Instant::now();
    let agent = tokio::task::spawn_blocking(agent_binary).await.unwrap();
    eprintln!(
        "agent binary ready in {:.1?}: {}",
        started.elapsed(),
        agent.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let tree = rootfs(dir.path(), &agent);
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut spec = NamespaceSpec::new(SandboxRoot::Directory(tree), ["/.msb/agent"]);
    spec.env.push(("MSB_AGENT_FD".into(), "0".into()));
    spec.stdin = Stdio::Fd(OwnedFd::from(guest));
    spec.stdout = Stdio::Null;
    let mut child = spawn(spec).expect("spawn the agent as PID 1");

    host.set_nonblocking(true).unwrap();
    let host = tokio::net::UnixStream::from_std(host).unwrap();
    let (r, w) = host.into_split();
    let (mut reader, mut writer) = (FrameReader::new(r), FrameWriter::new(w));
    let ready = timeout(
        STEP,
        host_handshake(&mut reader, &mut writer, SUPPORTED_VERSIONS, "agent-e2e"),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake");
    assert_eq!(ready.version, SUPPORTED_VERSIONS.max);
    assert!(ready.agent_version.starts_with("msb-agent/"), "{ready:?}");
    assert!(!ready.timings.is_empty(), "{ready:?}");

    // One exec on stream 1, then two at once on streams 3 and 5.
    let script = "echo hi; echo err >&2; exit 3";
    writer
        .write_frame(&Frame::new(1, exec(&["/bin/busybox", "sh", "-c", script])))
        .await
        .unwrap();
    let one = timeout(STEP, collect(&mut reader, &[1]))
        .await
        .expect("exec on stream 1 timed out");
    let o = &one[&1];
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n", "{o:?}");
    assert_eq!(o.exited, Some(ExitStatus::Code(3)), "{o:?}");
    assert!(o.pid.is_some_and(|p| p > 1), "{o:?}");

    // The second sleeps longer, so both are running at once.
    let a = "sleep 0.3; echo a; exit 0";
    let b = "echo b; sleep 0.1; kill -9 $$";
    writer
        .write_frame(&Frame::new(3, exec(&["/bin/busybox", "sh", "-c", a])))
        .await
        .unwrap();
    writer
        .write_frame(&Frame::new(5, exec(&["/bin/busybox", "sh", "-c", b])))
        .await
        .unwrap();
    let both = timeout(STEP, collect(&mut reader, &[3, 5]))
        .await
        .expect("concurrent execs timed out");
    assert_eq!(both[&3].stdout, b"a\n", "{both:?}");
    assert_eq!(both[&3].exited, Some(ExitStatus::Code(0)), "{both:?}");
    assert_eq!(both[&5].stdout, b"b\n", "{both:?}");
    assert_eq!(
        both[&5].exited,
        Some(ExitStatus::Signal {
            signal: 9,
            core_dumped: false
        }),
        "{both:?}"
    );

    // A missing program is a typed error, not a hang.
    writer
        .write_frame(&Frame::new(7, exec(&["/nope"])))
        .await
        .unwrap();
    let frame = timeout(STEP, reader.expect_frame("Error"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.stream, 7);
    assert!(
        matches!(&frame.message, Message::Error(e) if e.kind == msb_core::agent::ErrorKind::NotFound),
        "{frame:?}"
    );

    writer
        .write_frame(&Frame::new(0, Message::Shutdown { grace_ms: 1000 }))
        .await
        .unwrap();
    // The host sees the connection end.
    let end = timeout(STEP, reader.read_frame())
        .await
        .expect("EOF timed out");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Reads frames until every stream in `streams` has exited.
async fn collect<R>(reader: &mut FrameReader<R>, streams: &[u32]) -> HashMap<u32, Outcome>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut out: HashMap<u32, Outcome> = streams.iter().map(|&s| (s, Outcome::default())).collect();
    while out.values().any(|o| o.exited.is_none()) {
        let frame = reader.expect_frame("exec output").await.unwrap();
        let o = out
            .get_mut(&frame.stream)
            .unwrap_or_else(|| panic!("frame on an unexpected stream: {frame:?}"));
        assert!(o.exited.is_none(), "frame after Exited: {frame:?}");
        match frame.message {
            Message::ExecStarted { pid } => o.pid = Some(pid),
            Message::Stdout(b) => o.stdout.extend(b),
            Message::Stderr(b) => o.stderr.extend(b),
            Message::Exited(s) => o.exited = Some(s),
            other => panic!("unexpected {other:?} on stream {}", frame.stream),
        }
    }
    out
}
