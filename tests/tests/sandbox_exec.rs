//! Running commands in a sandbox, end to end: collected and streamed
//! output, stdin, timeouts, start failures, many commands at once.

use std::time::{Duration, Instant};

use microsandbox::sandbox::{ExecErrorKind, ExecEvent};
use microsandbox::{ExitStatus, MicrosandboxError, Sandbox, SandboxBuilder};
use test_utils::msb_test;
use test_utils::sandbox::TestEnv;

fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

async fn sandbox(env: &TestEnv, name: &str) -> Sandbox {
    let image = env.busybox();
    builder(env, name, &image).create().await.unwrap()
}

/// A deterministic, incompressible-looking pattern.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[msb_test]
async fn exit_codes_signals_and_separate_streams(env: TestEnv) {
    let sb = sandbox(&env, "codes").await;
    let out = sb.shell("echo out; echo err >&2; exit 5").await.unwrap();
    assert_eq!(out.code(), Some(5));
    assert!(!out.success());
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let out = sb.exec("true", [] as [&str; 0]).await.unwrap();
    assert!(out.success());
    let out = sb.shell("kill -9 $$").await.unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Signal {
            signal: 9,
            core_dumped: false
        }
    );
    let out = sb
        .exec_with("sh", |o| {
            o.args(["-c", "echo $A $B; pwd"])
                .env("A", "1")
                .env("B", "two")
                .cwd("/tmp")
        })
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "1 two\n/tmp\n");
}

#[msb_test]
async fn large_output_and_large_stdin_arrive_complete(env: TestEnv) {
    let sb = sandbox(&env, "bulk").await;
    let started = Instant::now();
    let out = sb
        .exec("head", ["-c", "67108864", "/dev/zero"])
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(out.success(), "{:?}", out.stderr_str());
    assert_eq!(out.stdout.len(), 64 << 20);
    assert!(out.stdout.iter().all(|&b| b == 0));
    println!(
        "64 MiB of output in {took:?} ({:.0} MiB/s)",
        64.0 / took.as_secs_f64()
    );

    let input = pattern(16 << 20);
    let started = Instant::now();
    let out = sb
        .exec_with("cat", |o| o.stdin_bytes(input.clone()))
        .await
        .unwrap();
    println!("16 MiB through cat in {:?}", started.elapsed());
    assert!(out.success());
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin arrives complete and in order");
}

#[msb_test]
async fn a_timeout_kills_the_command(env: TestEnv) {
    let sb = sandbox(&env, "slow").await;
    let started = Instant::now();
    let err = sb
        .exec_with("sleep", |o| o.arg("30").timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MicrosandboxError::ExecTimeout { timeout, .. } if *timeout == Duration::from_millis(300)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // It is gone, and the sandbox goes on.
    let out = sb
        .shell("ps -o args | grep -c '^sleep 30' || true")
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "0", "{}", out.stdout_str());
    assert!(sb.exec("true", [] as [&str; 0]).await.unwrap().success());
}

#[msb_test]
async fn commands_that_cannot_start_say_why(env: TestEnv) {
    let sb = sandbox(&env, "failing").await;
    sb.shell("printf '#!/no/such/interpreter\\n' > /tmp/notexec; chmod 755 /tmp/notexec; echo x > /tmp/plain; chmod 644 /tmp/plain; cp /bin/busybox /root/private; chmod 700 /root/private; chmod 755 /root")
        .await
        .unwrap();
    let kind = |r: Result<_, MicrosandboxError>| match r {
        Err(MicrosandboxError::ExecFailed { kind, .. }) => kind,
        other => panic!("expected ExecFailed, got {other:?}"),
    };
    assert_eq!(
        kind(sb.exec("no-such-program", [] as [&str; 0]).await),
        ExecErrorKind::NotFound
    );
    assert_eq!(
        kind(sb.exec("/bin/nope", [] as [&str; 0]).await),
        ExecErrorKind::NotFound
    );
    // No execute bit at all: not executable; executable, but not by this
    // user: permission denied.
    assert_eq!(
        kind(sb.exec("/tmp/plain", [] as [&str; 0]).await),
        ExecErrorKind::NotExecutable
    );
    assert_eq!(
        kind(
            sb.exec_with("/root/private", |o| o.arg("true").user("nobody"))
                .await
        ),
        ExecErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(sb.exec("/tmp", [] as [&str; 0]).await),
        ExecErrorKind::NotExecutable
    );
    assert_eq!(
        kind(sb.exec("/tmp/notexec", [] as [&str; 0]).await),
        ExecErrorKind::NotExecutable
    );
    assert_eq!(
        kind(sb.exec_with("true", |o| o.cwd("/nonexistent")).await),
        ExecErrorKind::BadCwd
    );
    assert_eq!(
        kind(sb.exec_with("true", |o| o.user("ghost")).await),
        ExecErrorKind::NoSuchUser
    );
    // The sandbox is fine afterwards.
    assert!(sb.exec("true", [] as [&str; 0]).await.unwrap().success());
}

#[msb_test]
async fn fifty_commands_at_once_do_not_wait_on_each_other(env: TestEnv) {
    let sb = sandbox(&env, "many").await;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let sb = sb.clone();
        set.spawn(async move {
            let out = sb.shell(&format!("sleep 0.5; echo {i}")).await.unwrap();
            (i, out)
        });
    }
    let mut seen = Vec::new();
    while let Some(result) = set.join_next().await {
        let (i, out) = result.unwrap();
        assert_eq!(out.stdout_str(), format!("{i}\n"));
        seen.push(i);
    }
    let took = started.elapsed();
    println!("50 concurrent 0.5 s commands took {took:?}");
    assert_eq!(seen.len(), 50);
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: they ran one after another"
    );
}

#[msb_test]
async fn streaming_with_stdin_signals_and_an_early_close(env: TestEnv) {
    let sb = sandbox(&env, "stream").await;

    // Events arrive in order; stdin is echoed back.
    let mut cat = sb.exec_stream("cat", |o| o.stdin_pipe()).await.unwrap();
    assert!(matches!(
        cat.next().await,
        Some(Ok(ExecEvent::Started { .. }))
    ));
    let stdin = cat.stdin();
    stdin.write_all(b"ping\n").await.unwrap();
    match cat.next().await {
        Some(Ok(ExecEvent::Stdout(bytes))) => assert_eq!(bytes, b"ping\n"),
        other => panic!("{other:?}"),
    }
    stdin.close();
    assert_eq!(cat.wait().await.unwrap(), ExitStatus::Code(0));

    // A reader that stops early: writing more gives a non-fatal error, and
    // the command's result is still there.
    let head = sb
        .exec_stream("head", |o| o.args(["-c", "10"]).stdin_pipe())
        .await
        .unwrap();
    let stdin = head.stdin();
    let big = pattern(16 << 20);
    let writer = tokio::spawn(async move { stdin.write_all(&big).await });
    let out = tokio::time::timeout(Duration::from_secs(20), head.output())
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(out.stdout.len(), 10);
    assert_eq!(out.code(), Some(0));
    let written = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the writer is released")
        .unwrap();
    assert!(
        matches!(written, Err(MicrosandboxError::StdinClosed { .. })),
        "{written:?}"
    );

    // Signals reach the command.
    let sleeper = sb.exec_stream("sleep", |o| o.arg("30")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sleeper.signal(15).unwrap();
    assert_eq!(
        sleeper.wait().await.unwrap(),
        ExitStatus::Signal {
            signal: 15,
            core_dumped: false
        }
    );
}

#[msb_test]
async fn a_slow_reader_blocks_only_its_own_command(env: TestEnv) {
    let sb = sandbox(&env, "slowread").await;
    // A command with far more output than the flow-control window, not
    // read for a while.
    let mut flood = sb
        .exec_stream("head", |o| o.args(["-c", "33554432", "/dev/zero"]))
        .await
        .unwrap();
    assert!(matches!(
        flood.next().await,
        Some(Ok(ExecEvent::Started { .. }))
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Other commands are not held up meanwhile.
    let started = Instant::now();
    for _ in 0..5 {
        assert!(sb.exec("true", [] as [&str; 0]).await.unwrap().success());
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Reading resumes the flood, which arrives complete.
    let out = flood.output().await.unwrap();
    assert_eq!(out.stdout.len(), 32 << 20);
}

#[msb_test]
async fn the_first_commands_output_is_kept_in_the_logs(env: TestEnv) {
    use microsandbox::sandbox::{LogOptions, LogSource};
    let sb = sandbox(&env, "firstlog").await;
    sb.shell("echo first; echo oops >&2").await.unwrap();
    sb.shell("echo second").await.unwrap();
    let mut lines: Vec<String> = sb
        .logs(LogOptions::default().sources([LogSource::FirstCommand]))
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    // Stdout and stderr are two pipes: their lines may interleave either way.
    lines.sort();
    assert_eq!(lines, ["first", "oops"]);
    // The console and runtime logs are there too.
    let runtime = sb
        .logs(LogOptions::default().sources([LogSource::Runtime]).tail(50))
        .unwrap();
    assert!(
        runtime.iter().any(|l| l.text.contains("sandbox ready")),
        "{runtime:?}"
    );
}
