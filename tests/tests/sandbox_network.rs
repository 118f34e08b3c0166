//! Sandbox networking end to end: published ports, the network policy
//! (host loopback, metadata), networking off, and pasta's lifetime.
//!
//! Only loopback addresses are ever contacted: refused destinations are
//! refused inside the sandbox's own network namespace, before any packet
//! leaves it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use microsandbox::{DestinationGroup, MicrosandboxError, NetworkPolicy, Sandbox, SandboxBuilder};
use test_utils::msb_test;
use test_utils::sandbox::TestEnv;

/// A builder for `name` in the test's home, on the test's backend.
fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `script` with `sh -c` inside; (exit code, stdout + stderr).
async fn sh(sb: &Sandbox, script: &str) -> (Option<i32>, String) {
    let out = sb.exec("sh", ["-c", script]).await.unwrap();
    (
        out.code(),
        format!("{}{}", out.stdout_str(), out.stderr_str()),
    )
}

/// The pid pasta wrote for sandbox `sb`, if it ran.
fn pasta_pid(sb: &Sandbox) -> Option<u32> {
    std::fs::read_to_string(sb.state_dir().join("pasta.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live pasta (not a zombie, not a recycled pid).
fn is_live_pasta(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&cmdline).contains("--netns")
}

/// Waits up to 5 s for `pid` to be gone as a pasta.
fn pasta_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !is_live_pasta(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Skips (returns true) unless the sandbox runs in namespaces with pasta.
fn needs_pasta(env: &TestEnv) -> bool {
    if env.isolation() != "namespace" {
        println!("skipped: pasta networking is namespace isolation's");
        return true;
    }
    if !Path::new("/usr/bin/pasta").exists() && std::env::var_os("MSB_PASTA").is_none() {
        println!("skipped: pasta is not installed (Debian package passt)");
        return true;
    }
    false
}

/// An HTTP server on the host's 127.0.0.1 answering every request with
/// `greeting`; its port.
fn host_server(greeting: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            // Read the request's head, then answer and close.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{greeting}",
                    greeting.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

/// The sandbox's default gateway (pasta's mapping of the host loopback).
const GATEWAY: &str = "busybox ip route | busybox awk '/^default/ {print $3}'";

#[msb_test]
async fn a_published_port_reaches_a_server_inside(env: TestEnv) {
    if needs_pasta(&env) {
        return;
    }
    let image = env.busybox();
    let port = free_port();
    let sb = builder(&env, "net-port", &image)
        .port(port, 8080)
        .create()
        .await
        .unwrap();
    let (code, out) = sh(
        &sb,
        "mkdir -p /www && echo hello-from-inside > /www/index.html \
         && busybox httpd -p 8080 -h /www",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match got {
            Ok(body) if body.contains("hello-from-inside") => break body,
            other if Instant::now() > deadline => panic!("no answer: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    // Bound on 127.0.0.1 only.
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    assert!(listening.contains(&local), "{listening}");
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn the_loopback_group_decides_whether_the_host_loopback_is_reached(env: TestEnv) {
    if needs_pasta(&env) {
        return;
    }
    let image = env.busybox();
    let port = host_server("hello-from-host\n");
    // The request, then stdin held open a moment: pasta (2023-03) may lose
    // the answer to a connection the client half-closed first (and the
    // static busybox's wget crashes resolving).
    let fetch = format!(
        "gw=$({GATEWAY}); {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 1; }} \
         | busybox nc -w 3 $gw {port}"
    );
    let connect = format!("gw=$({GATEWAY}); busybox nc -w 3 $gw {port} </dev/null");

    let open = builder(&env, "net-lo-open", &image).create().await.unwrap();
    let (code, out) = sh(&open, &fetch).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("hello-from-host"), "{out}");
    open.stop_and_wait().await.unwrap();

    let closed = builder(&env, "net-lo-closed", &image)
        .network_policy(NetworkPolicy::allow_all().deny(DestinationGroup::Loopback))
        .create()
        .await
        .unwrap();
    let started = Instant::now();
    let (code, out) = sh(&closed, &connect).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("Permission denied"),
        "refused by the policy: {out}"
    );
    assert!(!out.contains("hello-from-host"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    closed.stop_and_wait().await.unwrap();

    let denied = builder(&env, "net-deny-all", &image)
        .network_policy(NetworkPolicy::deny_all())
        .create()
        .await
        .unwrap();
    let (code, out) = sh(&denied, &connect).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    denied.stop_and_wait().await.unwrap();
}

/// Whether `ip rule` output has the rule refusing the metadata address.
fn refuses_metadata(rules: &str) -> bool {
    rules
        .lines()
        .any(|l| l.contains("to 169.254.169.254 ") && l.trim_end().ends_with("prohibit"))
}

#[msb_test]
async fn the_default_policy_refuses_the_metadata_address(env: TestEnv) {
    if needs_pasta(&env) {
        return;
    }
    let image = env.busybox();
    let sb = builder(&env, "net-metadata", &image)
        .create()
        .await
        .unwrap();
    // The rule is there, and it is what refuses the connection: EACCES
    // ("Permission denied") from the policy rule, at once, where a missing
    // route would say "Network unreachable" and an open one would time out.
    let (_, rules) = sh(&sb, "busybox ip rule").await;
    assert!(refuses_metadata(&rules), "policy rule installed: {rules}");
    let started = Instant::now();
    let (code, out) = sh(&sb, "busybox nc -w 3 169.254.169.254 80 </dev/null").await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Root inside cannot lift it (no CAP_NET_ADMIN), nor go around it with
    // raw frames (no CAP_NET_RAW).
    let (code, out) = sh(&sb, "busybox ip rule del priority 30000").await;
    assert_ne!(code, Some(0), "{out}");
    let (_, rules) = sh(&sb, "busybox ip rule").await;
    assert!(refuses_metadata(&rules), "{rules}");
    let (_, caps) = sh(&sb, "grep CapBnd /proc/self/status").await;
    let bounding = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(bounding & (1 << 12 | 1 << 13), 0, "{caps}");
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn without_network_only_lo_exists(env: TestEnv) {
    if env.isolation() != "namespace" {
        println!("skipped: checks the namespace backend's interfaces");
        return;
    }
    let image = env.busybox();
    let port = host_server("unreachable\n");
    let sb = builder(&env, "net-off", &image)
        .disable_network()
        .create()
        .await
        .unwrap();
    let (_, links) = sh(&sb, "busybox ip -o link").await;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "{links}");
    let (code, out) = sh(&sb, &format!("busybox nc -w 2 192.0.2.1 {port} </dev/null")).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("unreachable"), "{out}");
    assert!(pasta_pid(&sb).is_none(), "no pasta without network");
    assert!(
        !sb.state_dir().join("resolv.conf").exists(),
        "no resolver configuration without network"
    );
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn a_host_port_in_use_is_a_typed_error_at_create(env: TestEnv) {
    let image = env.busybox();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = builder(&env, "net-taken", &image)
        .port(port, 80)
        .create()
        .await
        .unwrap_err();
    assert!(
        matches!(err, MicrosandboxError::PortInUse { port: p, protocol: "tcp", .. } if p == port),
        "{err:?}"
    );
    // Nothing was left behind.
    assert!(Sandbox::list_in(env.home()).unwrap().is_empty());
    // The same for UDP.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let err = builder(&env, "net-taken-udp", &image)
        .port_udp(port, 53)
        .create()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MicrosandboxError::PortInUse {
                protocol: "udp",
                ..
            }
        ),
        "{err:?}"
    );
}

#[msb_test]
async fn hosts_and_resolv_conf_are_written(env: TestEnv) {
    if needs_pasta(&env) {
        return;
    }
    let image = env.busybox();
    let sb = builder(&env, "net-files", &image)
        .hostname("box-1")
        .create()
        .await
        .unwrap();
    let (_, hosts) = sh(&sb, "cat /etc/hosts").await;
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("box-1"), "{hosts}");
    let (code, resolv) = sh(&sb, "cat /etc/resolv.conf").await;
    assert_eq!(code, Some(0), "{resolv}");
    assert!(!resolv.contains("nameserver 127."), "{resolv}");
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn no_pasta_outlives_its_sandbox(env: TestEnv) {
    if needs_pasta(&env) {
        return;
    }
    let image = env.busybox();
    // An orderly stop.
    let sb = builder(&env, "net-stop", &image).create().await.unwrap();
    let pasta = pasta_pid(&sb).expect("pasta runs");
    assert!(is_live_pasta(pasta));
    sb.stop_and_wait().await.unwrap();
    assert!(pasta_gone(pasta), "pasta {pasta} left after stop");

    // A kill.
    let sb = builder(&env, "net-kill", &image).create().await.unwrap();
    let pasta = pasta_pid(&sb).expect("pasta runs");
    sb.kill().await.unwrap();
    assert!(pasta_gone(pasta), "pasta {pasta} left after kill");

    // The sandbox process itself killed with SIGKILL.
    let sb = builder(&env, "net-crash", &image).create().await.unwrap();
    let pasta = pasta_pid(&sb).expect("pasta runs");
    let pid = sb.pid().unwrap();
    // SAFETY: kill(2) on the sandbox process this test created.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(pasta_gone(pasta), "pasta {pasta} left after kill -9");
    let _ = sb.wait().await;
}

#[msb_test]
async fn published_ports_answer_under_a_deny_all_policy(env: TestEnv) {
    if needs_pasta(&env) {
        return;
    }
    // Inbound connections through a published port are not outbound
    // destinations: the replies must pass whatever the policy says.
    let image = env.busybox();
    let port = free_port();
    let sb = builder(&env, "net-port-deny", &image)
        .port(port, 8080)
        .network_policy(NetworkPolicy::deny_all())
        .create()
        .await
        .unwrap();
    let (code, out) = sh(
        &sb,
        "mkdir -p /www && echo hi > /www/index.html && busybox httpd -p 8080 -h /www",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match got {
            Ok(body) if body.contains("hi") => break,
            other if Instant::now() > deadline => panic!("no answer: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn microvm_networking_is_configured(env: TestEnv) {
    let image = env.busybox();
    let probe = microsandbox::host::probe_with(&test_utils::probe_options_for(env.home()));
    for (name, network) in [("vm-net", true), ("vm-net-off", false)] {
        let mut b = Sandbox::builder(name)
            .home(env.home())
            .image(&image)
            .isolation(microsandbox::Isolation::Microvm)
            .memory(256);
        b = if network {
            b.port(free_port(), 80)
        } else {
            b.disable_network()
        };
        let result = b.create().await;
        if probe.verdict.can_run_microvm() {
            let sb = result.unwrap();
            sb.stop_and_wait().await.unwrap();
            continue;
        }
        // The VM cannot run here, but TSI (or plain vsock) and the port
        // map must have been accepted by libkrun.
        match result {
            Err(MicrosandboxError::BootFailed { stage, reason, .. }) => {
                println!("microVM {name}: {stage}: {reason}");
                assert_ne!(stage, "vm configuration", "{reason}");
            }
            other => panic!("expected BootFailed, got {other:?}"),
        }
    }
}
