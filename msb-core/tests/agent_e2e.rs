//! The static guest agent (`msb-agent`) as PID 1 of a namespace sandbox with
//! a busybox rootfs, driven over a socketpair with the real protocol.
//!
//! The agent binary comes from `MSB_AGENT_BIN`, or is built the way
//! `cargo xtask build-agent` builds it (static, into `target/msb/agent`; a
//! no-op when current, cargo's lock on that directory serializes concurrent
//! builds). Needs root (or unprivileged user namespaces), as
//! `tests/namespace.rs` does.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use msb_core::agent::{
    ErrorKind, ExecStart, ExitStatus, Frame, FrameReader, FrameWriter, INITIAL_WINDOW, Message,
    MessageKind, Ready, RecvWindow, SUPPORTED_VERSIONS, SendWindow, StdinMode, TtySize,
    host_handshake,
};
use msb_core::sandbox::namespace::{NamespaceSpec, SandboxRoot, Stdio, spawn};
use tokio::sync::{Mutex, Notify};
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
    // Users and groups for `ExecStart::user` (the agent parses these).
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        tree.join("etc/group"),
        "root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n",
    )
    .unwrap();
    // Executable by root only: `PermissionDenied` for anyone else.
    fs::write(
        tree.join("bin/private"),
        "#!/bin/busybox sh\necho private\n",
    )
    .unwrap();
    fs::set_permissions(
        tree.join("bin/private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    tree
}

fn exec(argv: &[&str]) -> Message {
    exec_with(argv, StdinMode::Null)
}

fn exec_with(argv: &[&str], stdin: StdinMode) -> Message {
    Message::ExecStart(ExecStart {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/bin".into())],
        cwd: Some("/".into()),
        user: None,
        tty: None,
        stdin,
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
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut reader, mut writer, ready) = start_agent(dir.path()).await;
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

    shut_down(&mut child, &mut reader, &mut writer).await;
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

type HostReader = FrameReader<tokio::net::unix::OwnedReadHalf>;
type HostWriter = FrameWriter<tokio::net::unix::OwnedWriteHalf>;

/// Starts the agent as PID 1 of a fresh sandbox and does the handshake.
async fn start_agent(
    dir: &Path,
) -> (
    msb_core::sandbox::namespace::NamespaceChild,
    HostReader,
    HostWriter,
    Ready,
) {
    let agent = tokio::task::spawn_blocking(agent_binary).await.unwrap();
    let tree = rootfs(dir, &agent);
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut spec = NamespaceSpec::new(SandboxRoot::Directory(tree), ["/.msb/agent"]);
    spec.env.push(("MSB_AGENT_FD".into(), "0".into()));
    spec.stdin = Stdio::Fd(OwnedFd::from(guest));
    spec.stdout = Stdio::Null;
    let child = spawn(spec).expect("spawn the agent as PID 1");
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
    (child, reader, writer, ready)
}

/// Sends `Shutdown`, then checks the host sees the connection end and the
/// sandbox's PID 1 (the agent) exits 0.
async fn shut_down(
    child: &mut msb_core::sandbox::namespace::NamespaceChild,
    reader: &mut HostReader,
    writer: &mut HostWriter,
) {
    writer
        .write_frame(&Frame::new(0, Message::Shutdown { grace_ms: 1000 }))
        .await
        .unwrap();
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

/// What a piped exec produced.
#[derive(Debug, Default)]
struct Piped {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exited: Option<ExitStatus>,
    /// Whether the agent sent `StdinClosed`.
    stdin_closed: bool,
    /// Stdin bytes the host sent before stopping.
    sent: usize,
}

/// A deterministic byte pattern (xorshift), so order and loss both show.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Feeds `input` to the exec on `stream` (already started with a piped
/// stdin) while reading its output, as a well-behaved host: stdin never
/// exceeds the credit the agent granted (waiting for `WindowUpdate`), stdout
/// and stderr credit is returned with `WindowUpdate` as output is consumed,
/// and sending stops at `StdinClosed`. Sends `StdinClose` after the input
/// when `close`. Returns once the exec has exited.
async fn pipe_through(
    reader: &mut HostReader,
    writer: &mut HostWriter,
    stream: u32,
    input: &[u8],
    close: bool,
) -> Piped {
    let writer = Mutex::new(writer);
    let credit = RefCell::new(SendWindow::new());
    let stop = Cell::new(false);
    let wake = Notify::new();
    let sent = Cell::new(0usize);

    let feed = async {
        let mut offset = 0;
        while offset < input.len() && !stop.get() {
            let n = credit
                .borrow()
                .sendable((input.len() - offset).min(256 * 1024));
            if n == 0 {
                wake.notified().await;
                continue;
            }
            credit.borrow_mut().consume(n);
            writer
                .lock()
                .await
                .write_data(MessageKind::Stdin, stream, &input[offset..offset + n])
                .await
                .unwrap();
            offset += n;
            sent.set(offset);
        }
        if close && !stop.get() {
            writer
                .lock()
                .await
                .write_frame(&Frame::new(stream, Message::StdinClose))
                .await
                .unwrap();
        }
    };

    let drain = async {
        let mut piped = Piped::default();
        let mut window = RecvWindow::new();
        while piped.exited.is_none() {
            let frame = reader.expect_frame("piped exec output").await.unwrap();
            assert_eq!(frame.stream, stream, "{frame:?}");
            let n = frame.message.flow_len();
            if n > 0 {
                // The agent must respect the credit we gave it.
                window
                    .on_data(stream, n)
                    .expect("agent overran stdout credit");
                if let Some(increment) = window.on_consumed(n) {
                    writer
                        .lock()
                        .await
                        .write_frame(&Frame::new(stream, Message::WindowUpdate { increment }))
                        .await
                        .unwrap();
                }
            }
            match frame.message {
                Message::ExecStarted { .. } => {}
                Message::Stdout(b) => piped.stdout.extend(b),
                Message::Stderr(b) => piped.stderr.extend(b),
                Message::WindowUpdate { increment } => {
                    assert!(!piped.stdin_closed, "WindowUpdate after StdinClosed");
                    credit.borrow_mut().grant(stream, increment).unwrap();
                    wake.notify_one();
                }
                Message::StdinClosed => {
                    assert!(!piped.stdin_closed, "StdinClosed twice");
                    piped.stdin_closed = true;
                    stop.set(true);
                    wake.notify_one();
                }
                Message::Exited(s) => piped.exited = Some(s),
                other => panic!("unexpected {other:?} on stream {stream}"),
            }
        }
        stop.set(true);
        wake.notify_one();
        piped
    };

    let ((), mut piped) = tokio::join!(feed, drain);
    piped.sent = sent.get();
    piped
}

#[tokio::test(flavor = "current_thread")]
async fn agent_pipes_stdin_under_flow_control() {
    if !Path::new("/bin/busybox").exists() {
        println!("skipped: /bin/busybox (Debian busybox-static) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut reader, mut writer, _) = start_agent(dir.path()).await;
    let long = Duration::from_secs(60);

    // 16 MiB through cat: complete and in order, both directions under
    // credit.
    let input = pattern(16 << 20);
    writer
        .write_frame(&Frame::new(
            1,
            exec_with(&["/bin/busybox", "cat"], StdinMode::Pipe),
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let p = timeout(
        long,
        pipe_through(&mut reader, &mut writer, 1, &input, true),
    )
    .await
    .expect("16 MiB through cat timed out");
    eprintln!("16 MiB through cat in {:.1?}", started.elapsed());
    assert_eq!(p.exited, Some(ExitStatus::Code(0)), "stderr {:?}", p.stderr);
    assert!(!p.stdin_closed);
    assert_eq!(p.stdout.len(), input.len());
    assert!(p.stdout == input, "cat's output differs from its input");

    // head stops reading after 10 bytes: StdinClosed, exit 0, no hang.
    let input = pattern(4 << 20);
    writer
        .write_frame(&Frame::new(
            3,
            exec_with(&["/bin/busybox", "head", "-c", "10"], StdinMode::Pipe),
        ))
        .await
        .unwrap();
    let p = timeout(
        STEP,
        pipe_through(&mut reader, &mut writer, 3, &input, false),
    )
    .await
    .expect("head timed out");
    assert!(p.stdin_closed, "{:?} sent {}", p.exited, p.sent);
    assert_eq!(p.exited, Some(ExitStatus::Code(0)));
    assert_eq!(p.stdout, input[..10]);
    assert!(p.sent < input.len(), "sent all {} bytes", p.sent);

    // StdinClose is EOF: cat exits 0 with what it got.
    writer
        .write_frame(&Frame::new(
            5,
            exec_with(&["/bin/busybox", "cat"], StdinMode::Pipe),
        ))
        .await
        .unwrap();
    let p = timeout(
        STEP,
        pipe_through(&mut reader, &mut writer, 5, b"hello\n", true),
    )
    .await
    .expect("cat after StdinClose timed out");
    assert_eq!(p.stdout, b"hello\n");
    assert_eq!(p.exited, Some(ExitStatus::Code(0)));
    assert!(!p.stdin_closed);

    // Stdin past the granted window is an error on that stream only: the
    // process (which never reads) is ended and the agent keeps serving.
    writer
        .write_frame(&Frame::new(
            7,
            exec_with(&["/bin/busybox", "sleep", "30"], StdinMode::Pipe),
        ))
        .await
        .unwrap();
    let over = pattern(INITIAL_WINDOW as usize);
    for chunk in over.chunks(msb_core::agent::MAX_PAYLOAD_LEN as usize) {
        writer
            .write_data(MessageKind::Stdin, 7, chunk)
            .await
            .unwrap();
    }
    writer
        .write_data(MessageKind::Stdin, 7, b"x")
        .await
        .unwrap();
    let error = timeout(STEP, async {
        loop {
            let frame = reader.expect_frame("Error").await.unwrap();
            assert_eq!(frame.stream, 7, "{frame:?}");
            match frame.message {
                Message::ExecStarted { .. } | Message::WindowUpdate { .. } => {}
                Message::Error(e) => break e,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("no Error for a window overrun");
    assert_eq!(
        error.kind,
        msb_core::agent::ErrorKind::ProtocolViolation,
        "{error:?}"
    );
    writer
        .write_frame(&Frame::new(0, Message::Ping { nonce: 42 }))
        .await
        .unwrap();
    let pong = timeout(STEP, reader.expect_frame("Pong"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong.message, Message::Pong { nonce: 42 });

    shut_down(&mut child, &mut reader, &mut writer).await;
}

/// Starts the agent as PID 1 of a fresh sandbox, listening on a Unix socket
/// at `dir/agent.sock` that the host bound (passed in as fd 0,
/// `MSB_AGENT_LISTEN_FD=0`). Returns the sandbox and the socket's path.
async fn start_listening_agent(
    dir: &Path,
) -> (msb_core::sandbox::namespace::NamespaceChild, PathBuf) {
    let agent = tokio::task::spawn_blocking(agent_binary).await.unwrap();
    let tree = rootfs(dir, &agent);
    let path = dir.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut spec = NamespaceSpec::new(SandboxRoot::Directory(tree), ["/.msb/agent"]);
    spec.env.push(("MSB_AGENT_LISTEN_FD".into(), "0".into()));
    spec.stdin = Stdio::Fd(OwnedFd::from(listener));
    spec.stdout = Stdio::Null;
    let child = spawn(spec).expect("spawn the agent as PID 1");
    (child, path)
}

/// Connects to a listening agent and does the handshake.
async fn connect(path: &Path) -> (HostReader, HostWriter, Ready) {
    let stream = timeout(STEP, tokio::net::UnixStream::connect(path))
        .await
        .expect("connect timed out")
        .expect("connect to the agent");
    let (r, w) = stream.into_split();
    let (mut reader, mut writer) = (FrameReader::new(r), FrameWriter::new(w));
    let ready = timeout(
        STEP,
        host_handshake(&mut reader, &mut writer, SUPPORTED_VERSIONS, "agent-e2e"),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake");
    (reader, writer, ready)
}

/// Runs `script` under busybox sh on `stream` and returns what it did.
async fn run_script(
    reader: &mut HostReader,
    writer: &mut HostWriter,
    stream: u32,
    script: &str,
) -> Outcome {
    writer
        .write_frame(&Frame::new(
            stream,
            exec(&["/bin/busybox", "sh", "-c", script]),
        ))
        .await
        .unwrap();
    let mut all = timeout(STEP, collect(reader, &[stream]))
        .await
        .unwrap_or_else(|_| panic!("{script:?} timed out"));
    all.remove(&stream).unwrap()
}

/// Starts `sleep 30` on `stream` and returns its pid once it runs.
async fn start_sleep(reader: &mut HostReader, writer: &mut HostWriter, stream: u32) -> u32 {
    writer
        .write_frame(&Frame::new(stream, exec(&["/bin/busybox", "sleep", "30"])))
        .await
        .unwrap();
    let frame = timeout(STEP, reader.expect_frame("ExecStarted"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.stream, stream, "{frame:?}");
    match frame.message {
        Message::ExecStarted { pid } => pid,
        other => panic!("expected ExecStarted, got {other:?}"),
    }
}

/// Waits (bounded) for PID 1 to exit and returns its exit code.
async fn exit_code(child: &mut msb_core::sandbox::namespace::NamespaceChild) -> Option<i32> {
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const SIGTERMED: ExitStatus = ExitStatus::Signal {
    signal: libc::SIGTERM,
    core_dumped: false,
};

#[tokio::test(flavor = "current_thread")]
async fn agent_serves_many_connections_on_a_listening_socket() {
    if !Path::new("/bin/busybox").exists() {
        println!("skipped: /bin/busybox (Debian busybox-static) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, path) = start_listening_agent(dir.path()).await;

    // Three clients at once, each with its own handshake.
    let ((mut r0, mut w0, ready), (mut r1, mut w1, _), (mut r2, mut w2, _)) =
        tokio::join!(connect(&path), connect(&path), connect(&path));
    let phases: Vec<&str> = ready.timings.iter().map(|t| t.phase.as_str()).collect();
    assert!(phases.contains(&"listening"), "{ready:?}");
    assert!(phases.contains(&"ready"), "{ready:?}");

    // Stream 1 on every connection: the id spaces are independent.
    let (a, b, c) = tokio::join!(
        run_script(&mut r0, &mut w0, 1, "echo zero"),
        run_script(&mut r1, &mut w1, 1, "sleep 0.1; echo one >&2; exit 1"),
        run_script(&mut r2, &mut w2, 1, "echo two; exit 2"),
    );
    assert_eq!(
        (a.stdout.as_slice(), a.exited),
        (&b"zero\n"[..], Some(ExitStatus::Code(0)))
    );
    assert_eq!(
        (b.stderr.as_slice(), b.exited),
        (&b"one\n"[..], Some(ExitStatus::Code(1)))
    );
    assert_eq!(
        (c.stdout.as_slice(), c.exited),
        (&b"two\n"[..], Some(ExitStatus::Code(2)))
    );

    // Closing a connection kills the processes it started, and only those.
    let orphan = start_sleep(&mut r0, &mut w0, 3).await;
    let survivor = start_sleep(&mut r2, &mut w2, 3).await;
    drop((r0, w0));
    let check = format!(
        "i=0; while kill -0 {orphan} 2>/dev/null; do i=$((i+1)); [ $i -gt 400 ] && exit 1; sleep 0.05; done; kill -0 {survivor}"
    );
    let gone = run_script(&mut r1, &mut w1, 3, &check).await;
    assert_eq!(gone.exited, Some(ExitStatus::Code(0)), "{gone:?}");

    // The agent keeps accepting.
    let (mut r3, mut w3, _) = connect(&path).await;
    let late = run_script(&mut r3, &mut w3, 1, "echo late").await;
    assert_eq!(late.stdout, b"late\n");
    w3.write_frame(&Frame::new(0, Message::Ping { nonce: 7 }))
        .await
        .unwrap();
    let pong = timeout(STEP, r3.expect_frame("Pong"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong.message, Message::Pong { nonce: 7 });

    // Shutdown on one connection ends the whole agent: the other
    // connection's exec is terminated and reported, every connection ends,
    // PID 1 exits 0.
    let started = Instant::now();
    w1.write_frame(&Frame::new(0, Message::Shutdown { grace_ms: 1000 }))
        .await
        .unwrap();
    let exited = timeout(STEP, r2.expect_frame("Exited"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exited.stream, 3, "{exited:?}");
    assert_eq!(exited.message, Message::Exited(SIGTERMED));
    for reader in [&mut r1, &mut r2, &mut r3] {
        let end = timeout(STEP, reader.read_frame())
            .await
            .expect("EOF timed out");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
    assert_eq!(exit_code(&mut child).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn agent_shuts_down_gracefully_on_sigterm() {
    if !Path::new("/bin/busybox").exists() {
        println!("skipped: /bin/busybox (Debian busybox-static) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut reader, mut writer, _) = start_agent(dir.path()).await;
    start_sleep(&mut reader, &mut writer, 1).await;

    let started = Instant::now();
    child.kill(libc::SIGTERM).unwrap();
    let exited = timeout(STEP, reader.expect_frame("Exited"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exited.stream, 1, "{exited:?}");
    assert_eq!(exited.message, Message::Exited(SIGTERMED));
    let end = timeout(STEP, reader.read_frame())
        .await
        .expect("EOF timed out");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(exit_code(&mut child).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// An `ExecStart` with every knob (`PATH=/bin`).
fn exec_full(
    argv: &[&str],
    cwd: &str,
    user: Option<&str>,
    tty: Option<TtySize>,
    stdin: StdinMode,
) -> Message {
    Message::ExecStart(ExecStart {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/bin".into())],
        cwd: Some(cwd.into()),
        user: user.map(str::to_owned),
        tty,
        stdin,
    })
}

/// Reads `stream`'s frames, adding its stdout to `seen`, until `seen`
/// contains `needle`. Panics at `Exited` or an error first.
async fn read_until(reader: &mut HostReader, stream: u32, seen: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + STEP;
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = timeout(left, reader.expect_frame("tty output"))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "waiting for {needle:?} timed out; output so far: {:?}",
                    String::from_utf8_lossy(seen)
                )
            })
            .unwrap();
        assert_eq!(frame.stream, stream, "{frame:?}");
        match frame.message {
            Message::ExecStarted { .. } => {}
            Message::Stdout(b) => seen.extend(b),
            other => panic!(
                "unexpected {other:?} while waiting for {needle:?}; output so far: {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn agent_runs_execs_on_a_tty() {
    if !Path::new("/bin/busybox").exists() {
        println!("skipped: /bin/busybox (Debian busybox-static) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut reader, mut writer, _) = start_agent(dir.path()).await;
    let size = TtySize { rows: 24, cols: 80 };

    // A tty without stdin: stdin, stdout and stderr are the terminal, and
    // stderr arrives as Stdout.
    let script = "tty -s && echo yes; stty size; echo err >&2; echo $TERM";
    writer
        .write_frame(&Frame::new(
            1,
            exec_full(
                &["/bin/busybox", "sh", "-c", script],
                "/",
                None,
                Some(size),
                StdinMode::Null,
            ),
        ))
        .await
        .unwrap();
    let all = timeout(STEP, collect(&mut reader, &[1]))
        .await
        .expect("tty exec timed out");
    let o = &all[&1];
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "yes\r\n24 80\r\nerr\r\nxterm\r\n",
        "{o:?}"
    );
    assert!(o.stderr.is_empty(), "{o:?}");
    assert_eq!(o.exited, Some(ExitStatus::Code(0)), "{o:?}");

    // Input through the tty, a resize in between, then `StdinClose` types
    // ^D, which ends `cat`.
    let script = "stty size; read x; stty size; echo got $x; cat; echo done";
    writer
        .write_frame(&Frame::new(
            3,
            exec_full(
                &["/bin/busybox", "sh", "-c", script],
                "/",
                None,
                Some(size),
                StdinMode::Pipe,
            ),
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut reader, 3, &mut seen, "24 80\r\n").await;
    writer
        .write_frame(&Frame::new(
            3,
            Message::Resize(TtySize {
                rows: 30,
                cols: 100,
            }),
        ))
        .await
        .unwrap();
    writer
        .write_frame(&Frame::new(3, Message::Stdin(b"hello\n".to_vec())))
        .await
        .unwrap();
    read_until(&mut reader, 3, &mut seen, "got hello\r\n").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("30 100\r\n"), "{text:?}");
    writer
        .write_frame(&Frame::new(3, Message::Stdin(b"abc\n".to_vec())))
        .await
        .unwrap();
    writer
        .write_frame(&Frame::new(3, Message::StdinClose))
        .await
        .unwrap();
    let rest = timeout(STEP, collect(&mut reader, &[3]))
        .await
        .expect("cat on a tty did not end at StdinClose");
    seen.extend(&rest[&3].stdout);
    let text = String::from_utf8_lossy(&seen).into_owned();
    // The terminal echoes input, and cat prints it again.
    assert!(text.ends_with("abc\r\nabc\r\ndone\r\n"), "{text:?}");
    assert_eq!(rest[&3].exited, Some(ExitStatus::Code(0)), "{rest:?}");

    shut_down(&mut child, &mut reader, &mut writer).await;
}

/// Sends `message` on `stream` and returns the kind of the `Error` that
/// must come back.
async fn start_error(
    reader: &mut HostReader,
    writer: &mut HostWriter,
    stream: u32,
    message: Message,
) -> ErrorKind {
    let what = format!("{message:?}");
    writer
        .write_frame(&Frame::new(stream, message))
        .await
        .unwrap();
    let frame = timeout(STEP, reader.expect_frame("Error"))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .unwrap();
    assert_eq!(frame.stream, stream, "{what}: {frame:?}");
    match frame.message {
        Message::Error(e) => e.kind,
        other => panic!("{what}: expected Error, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn agent_runs_execs_as_users_and_types_start_failures() {
    if !Path::new("/bin/busybox").exists() {
        println!("skipped: /bin/busybox (Debian busybox-static) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut reader, mut writer, _) = start_agent(dir.path()).await;
    let ids = "id -u; id -g; id -G; echo $HOME";
    let as_user = |stream, user| {
        Frame::new(
            stream,
            exec_full(
                &["/bin/busybox", "sh", "-c", ids],
                "/",
                Some(user),
                None,
                StdinMode::Null,
            ),
        )
    };

    // By name: ids, supplementary groups and HOME from the files.
    writer.write_frame(&as_user(1, "nobody")).await.unwrap();
    let o = timeout(STEP, collect(&mut reader, &[1]))
        .await
        .unwrap()
        .remove(&1)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "65534\n65534\n65534 50\n/nonexistent\n",
        "{o:?}"
    );
    assert_eq!(o.exited, Some(ExitStatus::Code(0)), "{o:?}");

    // By uid:gid, with no passwd entry: no supplementary groups, HOME=/.
    writer.write_frame(&as_user(3, "1234:4321")).await.unwrap();
    let o = timeout(STEP, collect(&mut reader, &[3]))
        .await
        .unwrap()
        .remove(&3)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "1234\n4321\n4321\n/\n",
        "{o:?}"
    );

    // name:group.
    writer
        .write_frame(&as_user(5, "nobody:staff"))
        .await
        .unwrap();
    let o = timeout(STEP, collect(&mut reader, &[5]))
        .await
        .unwrap()
        .remove(&5)
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("65534\n50\n"),
        "{o:?}"
    );

    // Unknown users and groups.
    let unknown = exec_full(
        &["/bin/busybox", "true"],
        "/",
        Some("ghost"),
        None,
        StdinMode::Null,
    );
    assert_eq!(
        start_error(&mut reader, &mut writer, 7, unknown).await,
        ErrorKind::NoSuchUser
    );
    let unknown = exec_full(
        &["/bin/busybox", "true"],
        "/",
        Some("nobody:ghosts"),
        None,
        StdinMode::Null,
    );
    assert_eq!(
        start_error(&mut reader, &mut writer, 9, unknown).await,
        ErrorKind::NoSuchUser
    );

    // Each way a program can fail to start.
    let cases: &[(&[&str], &str, Option<&str>, ErrorKind)] = &[
        (&["nope"], "/", None, ErrorKind::NotFound),
        (&["/bin/nope"], "/", None, ErrorKind::NotFound),
        (&["./busybox"], "/", None, ErrorKind::NotFound),
        (&["/etc/passwd"], "/", None, ErrorKind::NotExecutable),
        (&["passwd"], "/etc", None, ErrorKind::NotFound),
        (&["./passwd"], "/etc", None, ErrorKind::NotExecutable),
        (&["/etc"], "/", None, ErrorKind::NotExecutable),
        (
            &["/bin/private"],
            "/",
            Some("nobody"),
            ErrorKind::PermissionDenied,
        ),
        (
            &["/bin/busybox", "true"],
            "/missing",
            None,
            ErrorKind::BadCwd,
        ),
        (
            &["/bin/busybox", "true"],
            "/etc/passwd",
            None,
            ErrorKind::BadCwd,
        ),
    ];
    for (i, (argv, cwd, user, kind)) in cases.iter().enumerate() {
        let stream = 101 + 2 * i as u32;
        let got = start_error(
            &mut reader,
            &mut writer,
            stream,
            exec_full(argv, cwd, *user, None, StdinMode::Null),
        )
        .await;
        assert_eq!(got, *kind, "{argv:?} in {cwd} as {user:?}");
    }
    // As root the private program runs.
    let o = {
        writer
            .write_frame(&Frame::new(
                201,
                exec_full(&["/bin/private"], "/", None, None, StdinMode::Null),
            ))
            .await
            .unwrap();
        timeout(STEP, collect(&mut reader, &[201]))
            .await
            .unwrap()
            .remove(&201)
            .unwrap()
    };
    assert_eq!(o.stdout, b"private\n", "{o:?}");

    shut_down(&mut child, &mut reader, &mut writer).await;
}
