//! Escape attempts from inside a sandbox, end to end through the public API:
//! each test plays a hostile workload (root inside, or `nobody`) that tries
//! to reach the host — its files, processes, loopback services, kernel
//! settings, devices, memory and PIDs — and checks both that the attempt
//! fails inside and that the host is unaffected afterwards.
//!
//! The image is the fixture busybox (Debian's busybox-static), so applets
//! are invoked as `busybox <applet>`; the backend is the one the KVM probe
//! allows (namespace isolation on our hosts, the weaker of the two, which
//! is why it is the one attacked here).

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use microsandbox::sandbox::ExecOutput;
use microsandbox::{MicrosandboxError, Sandbox, SandboxBuilder};
use test_utils::msb_test;
use test_utils::sandbox::{TestEnv, pid_ns_of_sandbox, processes_in};

/// A builder for `name` in the test's home, on the test's backend.
fn builder(env: &TestEnv, name: &str, image: &str) -> SandboxBuilder {
    Sandbox::builder(name)
        .home(env.home())
        .image(image)
        .isolation(env.isolation().parse().unwrap())
}

/// Runs `script` with the image's busybox shell, as root inside.
async fn sh(sb: &Sandbox, script: &str) -> ExecOutput {
    sb.exec("/bin/busybox", ["sh", "-c", script])
        .await
        .unwrap_or_else(|e| panic!("exec of {script:?}: {e}"))
}

/// Both output streams, for assertion messages and secret searches.
fn all_output(out: &ExecOutput) -> String {
    format!("{}{}", out.stdout_str(), out.stderr_str())
}

/// A host file with a random secret in a fresh host directory.
struct HostSecret {
    _dir: tempfile::TempDir,
    path: String,
    content: String,
}

impl HostSecret {
    fn new() -> HostSecret {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.txt");
        let content = format!(
            "HOST-SECRET-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        std::fs::write(&path, &content).unwrap();
        HostSecret {
            path: path.to_string_lossy().into_owned(),
            content,
            _dir: dir,
        }
    }

    /// Panics unless the file still holds exactly the secret.
    fn assert_unchanged(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.path).unwrap(),
            self.content,
            "the host file was modified from inside"
        );
    }
}

/// A host `sleep 60` that must outlive every attempt; killed on drop.
struct HostSleeper(Child);

impl HostSleeper {
    fn start() -> HostSleeper {
        HostSleeper(Command::new("sleep").arg("60").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn assert_alive(&mut self) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the host process {} was killed from inside",
            self.pid()
        );
    }
}

impl Drop for HostSleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The host's process count (entries of its /proc).
fn host_process_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

/// Mount points in the host's (this process's) mount namespace.
fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(4).unwrap_or_default().to_owned())
        .collect()
}

/// A host path, hex-free and shell-safe, or a panic.
fn shell_safe(path: &str) -> &str {
    assert!(
        path.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
        "{path}"
    );
    path
}

#[msb_test]
async fn host_files_are_out_of_reach(env: TestEnv) {
    let image = env.busybox();
    let secret = HostSecret::new();
    let path = shell_safe(&secret.path);
    let sb = builder(&env, "esc-files", &image).create().await.unwrap();

    // Direct paths, `..` walks, and every root/cwd link procfs offers.
    let script = format!(
        r#"
        try() {{ echo "== $1"; busybox cat "$1" 2>&1; }}
        try {path}
        try /../../../..{path}
        try /tmp/../../..{path}
        try /proc/1/root{path}
        try /proc/self/root/..{path}
        try /proc/self/root/../../..{path}
        try /proc/self/cwd/../../..{path}
        for p in /proc/[0-9]*; do
            try $p/root{path}
            try $p/root/../..{path}
            try $p/cwd/../../..{path}
        done
        echo pwned > {path} 2>/dev/null && echo WROTE
        busybox mkdir -p $(busybox dirname {path}) && echo pwned > {path} && echo WROTE-OWN-COPY
        exit 0
        "#
    );
    let out = sh(&sb, &script).await;
    let text = all_output(&out);
    assert!(
        !text.contains(&secret.content),
        "the host secret was read from inside:\n{text}"
    );
    secret.assert_unchanged();

    // A search of the whole visible filesystem (procfs and sysfs aside).
    let out = sh(
        &sb,
        &format!(
            "busybox grep -rl '{}' / --exclude-dir=proc --exclude-dir=sys 2>/dev/null; exit 0",
            secret.content
        ),
    )
    .await;
    // Our own write above (a sandbox-private copy) says "pwned", never the secret.
    assert!(
        !all_output(&out).contains("secret.txt"),
        "found: {}",
        all_output(&out)
    );

    // The sandbox sees its own /etc, not the host's.
    let out = sh(
        &sb,
        "busybox cat /etc/passwd; echo ==; busybox cat /etc/shadow 2>&1; echo ==; busybox cat /etc/hostname 2>&1; exit 0",
    )
    .await;
    let text = out.stdout_str();
    let image_passwd =
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    assert!(text.starts_with(image_passwd), "{text}");
    if let Ok(shadow) = std::fs::read_to_string("/etc/shadow")
        && let Some(root_line) = shadow.lines().find(|l| l.starts_with("root:"))
    {
        assert!(
            !text.contains(root_line),
            "host /etc/shadow visible: {text}"
        );
    }
    if let Ok(host_passwd) = std::fs::read_to_string("/etc/passwd") {
        assert_ne!(text.split("==").next().unwrap(), host_passwd);
    }
    secret.assert_unchanged();
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn host_processes_are_invisible(env: TestEnv) {
    let image = env.busybox();
    let mut sleeper = HostSleeper::start();
    let sb = builder(&env, "esc-ps", &image).create().await.unwrap();
    let out = sh(
        &sb,
        "busybox ps -o pid,args; echo ==; busybox ls /proc | busybox grep '^[0-9]' ; echo ==; \
         busybox cat /proc/1/cmdline; echo; busybox readlink /proc/self/ns/pid",
    )
    .await;
    let text = out.stdout_str();
    let sections: Vec<&str> = text.split("==\n").collect();
    assert_eq!(sections.len(), 3, "{text}");
    // PID 1 is the agent; only a handful of processes (agent, sh, ps, ...).
    assert!(sections[2].starts_with("/.msb/agent"), "{text}");
    let pids: Vec<u32> = sections[1]
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(pids.contains(&1), "{text}");
    assert!(pids.len() < 10, "too many processes visible: {pids:?}");
    assert!(
        !sections[0].contains("sleep 60") && !sections[0].contains("escape-"),
        "host processes visible:\n{text}"
    );
    assert!(!pids.contains(&sleeper.pid()) || sleeper.pid() < 10);
    // Its own PID namespace, not the host's.
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let inner_ns = sections[2].lines().nth(1).unwrap_or_default();
    assert!(inner_ns.starts_with("pid:["), "{text}");
    assert_ne!(inner_ns, host_ns.to_string_lossy());
    sleeper.assert_alive();
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn host_processes_cannot_be_signalled(env: TestEnv) {
    let image = env.busybox();
    let mut sleeper = HostSleeper::start();
    let sb = builder(&env, "esc-kill", &image).create().await.unwrap();
    let host_pid = sleeper.pid();
    let out = sh(&sb, &format!("busybox kill -9 {host_pid}")).await;
    assert!(!out.success(), "kill of host pid {host_pid}: {out:?}");
    let out = sh(&sb, &format!("busybox kill -STOP {host_pid}")).await;
    assert!(!out.success(), "{out:?}");
    // `kill -1` reaches every process the caller may signal: only the
    // sandbox's own (the agent, PID 1, ignores it).
    let _ = sb
        .exec("/bin/busybox", ["kill", "-9", "-1"])
        .await
        .map_err(|e| println!("kill -1: {e}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    sleeper.assert_alive();
    let state = std::fs::read_to_string(format!("/proc/{host_pid}/stat")).unwrap();
    assert!(
        !state.contains(") T"),
        "the host process was stopped: {state}"
    );
    // The sandbox itself survives its own `kill -1` (PID 1 is immune).
    let out = sh(&sb, "echo alive").await;
    assert_eq!(out.stdout_str(), "alive\n");
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn host_loopback_services_are_unreachable_with_networking_off(env: TestEnv) {
    let image = env.busybox();
    // One listener on every host address: loopback and the host's own.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut targets = vec!["127.0.0.1".to_owned()];
    // The host's primary address, if it has a route (UDP connect sends nothing).
    if let Ok(udp) = UdpSocket::bind("0.0.0.0:0")
        && udp.connect("10.255.255.254:9").is_ok()
        && let Ok(addr) = udp.local_addr()
    {
        targets.push(addr.ip().to_string());
    }
    // The listener is really reachable from the host.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let (mut probe, _) = listener.accept().unwrap();
    let _ = probe.read(&mut [0; 1]);

    // Networking off: the sandbox has nothing but its own `lo`.
    let sb = builder(&env, "esc-net", &image)
        .disable_network()
        .create()
        .await
        .unwrap();
    let out = sh(
        &sb,
        "busybox cat /proc/net/dev | busybox tail -n +3 | busybox cut -d: -f1",
    )
    .await;
    let ifaces: Vec<&str> = out.stdout_str().leak().lines().map(str::trim).collect();
    assert_eq!(ifaces, ["lo"], "the sandbox sees more than its own lo");
    for ip in &targets {
        let out = sh(
            &sb,
            &format!(
                "echo hi | busybox timeout 5 busybox nc -w 2 {ip} {port} && echo NC-CONNECTED; \
                 busybox timeout 5 busybox wget -q -T 2 -O - http://{ip}:{port}/ && echo WGET-CONNECTED; exit 0"
            ),
        )
        .await;
        let text = all_output(&out);
        assert!(!text.contains("CONNECTED"), "{ip}:{port} reached: {text}");
    }
    // Nothing arrived at the host listener.
    std::thread::sleep(Duration::from_millis(100));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection reached the host listener: {other:?}"),
    }
    sb.stop_and_wait().await.unwrap();
}

/// The host's first real block device (`major:minor`), e.g. `8:0`.
fn host_block_device() -> Option<String> {
    let mut devices: Vec<_> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            !name.starts_with("loop") && !name.starts_with("ram")
        })
        .collect();
    devices.sort();
    let dev = std::fs::read_to_string(devices.first()?.join("dev")).ok()?;
    Some(dev.trim().to_owned())
}

#[msb_test]
async fn root_inside_holds_no_host_privilege(env: TestEnv) {
    let image = env.busybox();
    let secret = HostSecret::new();
    let path = shell_safe(&secret.path);
    let sb = builder(&env, "esc-root", &image).create().await.unwrap();
    let out = sh(&sb, "busybox id -u").await;
    assert_eq!(out.stdout_str(), "0\n", "the attempts run as root inside");

    // Kernel settings: /proc/sys and the sysrq trigger. Written with the
    // host's own value, so that even a successful write changes nothing.
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = sh(
        &sb,
        "v=$(busybox cat /proc/sys/kernel/core_pattern) && echo \"$v\" > /proc/sys/kernel/core_pattern && echo WROTE-CORE-PATTERN; \
         echo 4 > /proc/sys/kernel/printk_ratelimit_burst 2>/dev/null && echo WROTE-SYSCTL; \
         : > /proc/sysrq-trigger && echo OPENED-SYSRQ; \
         busybox head -c 16 /proc/kcore > /dev/null && echo READ-KCORE; exit 0",
    )
    .await;
    let text = all_output(&out);
    println!("{text}");
    for marker in [
        "WROTE-CORE-PATTERN",
        "WROTE-SYSCTL",
        "OPENED-SYSRQ",
        "READ-KCORE",
    ] {
        assert!(!text.contains(marker), "{marker}: {text}");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    // Unmounting or remounting the protections, or a fresh procfs, must not
    // give a writable /proc/sys back.
    let out = sh(
        &sb,
        "busybox umount /proc/sys 2>&1; busybox umount -l /proc/sys 2>&1; \
         busybox mount -o remount,rw /proc/sys 2>&1; \
         busybox mkdir -p /mnt/p && busybox mount -t proc proc /mnt/p 2>&1; \
         for f in /proc/sys/kernel/core_pattern /mnt/p/sys/kernel/core_pattern; do \
           [ -e $f ] && v=$(busybox cat $f) && echo \"$v\" > $f && echo WROTE-$f; done; \
         : > /proc/sysrq-trigger && echo OPENED-SYSRQ; exit 0",
    )
    .await;
    let text = all_output(&out);
    println!("{text}");
    assert!(
        !text.contains("WROTE-") && !text.contains("OPENED-SYSRQ"),
        "{text}"
    );

    // Modules, device nodes on host disks, the host clock.
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let dev = host_block_device().unwrap_or_else(|| "8:0".to_owned());
    let (major, minor) = dev.split_once(':').unwrap();
    let out = sh(
        &sb,
        &format!(
            "echo junk > /tmp/evil.ko; busybox insmod /tmp/evil.ko 2>&1 && echo INSMOD-OK; \
             busybox rmmod loop 2>&1 && echo RMMOD-OK; \
             busybox mknod /disk b {major} {minor} 2>&1 && echo MKNOD-OK; \
             busybox mknod /tmp/disk b {major} {minor} 2>&1 && echo MKNOD-TMP-OK; \
             busybox head -c 512 /disk > /dev/null 2>&1 && echo READ-DISK; \
             busybox date -s 2001-01-01 2>&1 | busybox grep -q 2001 && [ $(busybox date +%Y) = 2001 ] && echo CLOCK-SET; \
             exit 0"
        ),
    )
    .await;
    let text = all_output(&out);
    println!("{text}");
    for marker in [
        "INSMOD-OK",
        "RMMOD-OK",
        "MKNOD-OK",
        "MKNOD-TMP-OK",
        "READ-DISK",
        "CLOCK-SET",
    ] {
        assert!(!text.contains(marker), "{marker}: {text}");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/modules").unwrap_or_default(),
        modules,
        "host modules changed"
    );

    // Mounts made inside stay inside.
    let before = host_mounts();
    let out = sh(
        &sb,
        "busybox mount -t tmpfs evil /etc 2>&1; busybox mount -t tmpfs evil2 /mnt 2>&1; \
         busybox mount --bind / /mnt 2>&1; busybox mount | busybox grep -c evil; exit 0",
    )
    .await;
    println!("mounts inside: {}", all_output(&out));
    let after = host_mounts();
    assert!(
        after.len() <= before.len() + 2 && !after.iter().any(|m| m == "/etc" || m == "/mnt"),
        "a mount made inside appeared on the host"
    );

    // unshare / nsenter: new namespaces nest inside the sandbox's, and
    // PID 1's namespaces *are* the sandbox's.
    let out = sh(
        &sb,
        &format!(
            "busybox nsenter -t 1 -m -u -i -n -p busybox cat {path} 2>&1; \
             busybox nsenter -t 1 -U -m busybox cat {path} 2>&1; \
             busybox unshare -m -p -f -U -r busybox cat /proc/1/root{path} 2>&1; \
             busybox unshare -m busybox sh -c 'busybox cat {path}' 2>&1; \
             busybox chroot /proc/1/root busybox cat {path} 2>&1; exit 0"
        ),
    )
    .await;
    let text = all_output(&out);
    println!("{text}");
    assert!(
        !text.contains(&secret.content),
        "the host secret was read: {text}"
    );
    secret.assert_unchanged();
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn setuid_inside_gives_no_host_root(env: TestEnv) {
    let image = env.busybox();
    let secret = HostSecret::new();
    let path = shell_safe(&secret.path);
    let sb = builder(&env, "esc-suid", &image).create().await.unwrap();
    // As root inside: a setuid-root copy of busybox on the rootfs (/tmp is
    // nosuid), the classic way back to root for a dropped workload. The
    // sandbox's seccomp filter refuses new set-id files outright; the copy
    // stays an ordinary executable for the attempts below.
    let out = sh(
        &sb,
        "busybox cp /bin/busybox /busybox.suid && busybox chmod 755 /busybox.suid && \
         ! busybox chmod 4755 /busybox.suid && ! busybox chmod g+s /busybox.suid && \
         busybox ls -ln /busybox.suid",
    )
    .await;
    assert!(out.success(), "set-id bits refused: {out:?}");
    assert!(
        out.stdout_str().contains("-rwxr-xr-x"),
        "no set-id bit: {out:?}"
    );

    // As nobody: the exec option, or `busybox su` where the agent does not
    // support users yet.
    let as_nobody = |script: String| {
        let sb = sb.clone();
        async move {
            match sb
                .exec_with("/bin/busybox", |o| {
                    o.args(["sh", "-c", &script]).user("nobody")
                })
                .await
            {
                Err(MicrosandboxError::ExecFailed { kind, message, .. }) => {
                    println!("exec as nobody unsupported ({kind:?}: {message}): using su");
                    sb.exec(
                        "/bin/busybox",
                        ["su", "nobody", "-s", "/bin/sh", "-c", &script],
                    )
                    .await
                    .unwrap()
                }
                other => other.unwrap(),
            }
        }
    };
    let out = as_nobody("busybox id -u".into()).await;
    assert_eq!(out.stdout_str(), "65534\n", "{out:?}");

    // The setuid binary gives root *inside* (that is the sandbox's own
    // business), and that root still cannot touch the host.
    let out = as_nobody(format!(
        "/busybox.suid id -u; /busybox.suid cat {path} 2>&1; \
         /busybox.suid sh -c 'v=$(cat /proc/sys/kernel/core_pattern); echo \"$v\" > /proc/sys/kernel/core_pattern && echo WROTE-CORE-PATTERN' 2>&1; \
         /busybox.suid mknod /tmp/d b 8 0 2>&1 && echo MKNOD-OK; \
         /busybox.suid nsenter -t 1 -m -u -i -n -p /busybox.suid cat {path} 2>&1; exit 0"
    ))
    .await;
    let text = all_output(&out);
    println!("setuid attempts as nobody:\n{text}");
    assert!(!text.contains(&secret.content), "{text}");
    assert!(!text.contains("WROTE-CORE-PATTERN"), "{text}");
    assert!(!text.contains("MKNOD-OK"), "{text}");
    secret.assert_unchanged();
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn reboot_inside_ends_only_the_sandbox(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "esc-boot", &image).create().await.unwrap();
    // Only with PID 1 being the agent (a PID namespace of our own) is a
    // forced reboot safe to try: reboot(2) then ends that namespace.
    let out = sh(&sb, "busybox cat /proc/1/cmdline").await;
    assert!(out.stdout_str().starts_with("/.msb/agent"), "{out:?}");
    assert_ne!(
        std::fs::read_link("/proc/self/ns/pid").unwrap(),
        Path::new(
            &sh(&sb, "busybox readlink /proc/self/ns/pid")
                .await
                .stdout_str()
                .trim()
                .to_owned()
        )
    );
    let started = Instant::now();
    let result = sb.exec("/bin/busybox", ["reboot", "-f"]).await;
    println!("reboot -f inside: {result:?}");
    // The sandbox may be gone (its PID 1 killed); the host and we are fine.
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sb.status() {
                Ok(microsandbox::SandboxStatus::Running)
                    if started.elapsed() < Duration::from_secs(2) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        }
    })
    .await
    .unwrap();
    println!("sandbox after reboot -f: {status:?}");
    let _ = sb.kill().await;
}

#[msb_test]
async fn a_memory_hog_is_stopped_inside(env: TestEnv) {
    let image = env.busybox();
    let sb = builder(&env, "esc-mem", &image)
        .memory(64)
        .create()
        .await
        .unwrap();
    let started = Instant::now();
    // dd allocates (and fills) a 200 MiB buffer: over the 64 MiB limit.
    let result = sb
        .exec_with("/bin/busybox", |o| {
            o.args(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"])
                .timeout(Duration::from_secs(30))
        })
        .await;
    println!("memory hog: {result:?} after {:?}", started.elapsed());
    match &result {
        Ok(out) => assert!(!out.success(), "a 200 MiB buffer fit in 64 MiB: {out:?}"),
        Err(e) => println!("the hog's exec failed (acceptable: the hog did not run): {e}"),
    }
    // A held-memory variant: a shell variable growing past the limit.
    let result = sb
        .exec_with("/bin/busybox", |o| {
            o.args([
                "sh",
                "-c",
                "x=$(busybox head -c 150m /dev/zero | busybox tr '\\0' a); echo ${#x}",
            ])
            .timeout(Duration::from_secs(60))
        })
        .await;
    println!("held memory: {:?}", result.as_ref().map(|o| o.code()));
    if let Ok(out) = &result {
        assert_ne!(out.stdout_str(), "157286400\n", "150 MiB held under 64 MiB");
    }
    // The sandbox survives its hog.
    let out = sh(&sb, "echo alive").await;
    assert_eq!(out.stdout_str(), "alive\n");
    sb.stop_and_wait().await.unwrap();
}

#[msb_test]
async fn a_fork_bomb_is_contained(env: TestEnv) {
    let image = env.busybox();
    let limit = 32;
    let sb = builder(&env, "esc-fork", &image)
        .pids(limit)
        .create()
        .await
        .unwrap();
    let ns = pid_ns_of_sandbox(sb.pid().unwrap());
    assert_ne!(ns, std::fs::read_link("/proc/self/ns/pid").unwrap());
    let baseline = host_process_count();

    // The classic bomb, bounded by `timeout`: it runs into the limit
    // ("can't fork") and collapses.
    let started = Instant::now();
    let out = sb
        .exec_with("/bin/busybox", |o| {
            o.args([
                "sh",
                "-c",
                "busybox timeout 5 busybox sh -c 'f(){ f | f & }; f; wait'; echo done",
            ])
            .timeout(Duration::from_secs(30))
        })
        .await;
    println!(
        "classic fork bomb: {:?} after {:?}",
        out.as_ref().map(|o| (o.code(), o.stderr.len())),
        started.elapsed()
    );
    if let Ok(out) = &out {
        assert!(
            out.stderr_str().contains("can't fork"),
            "the bomb never hit the limit: {}",
            out.stderr_str()
        );
    }

    // A sustained one: 200 sleepers asked for, at most the limit granted.
    let bomb = sb.clone();
    let bomb = tokio::spawn(async move {
        bomb.exec_with("/bin/busybox", |o| {
            o.args([
                "sh",
                "-c",
                "i=0; while [ $i -lt 200 ]; do busybox sleep 8 & i=$((i+1)); done 2>/dev/null; wait",
            ])
            .timeout(Duration::from_secs(20))
        })
        .await
    });
    let (mut peak, mut host_peak) = (0, 0);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        peak = peak.max(processes_in(&ns));
        host_peak = host_peak.max(host_process_count().saturating_sub(baseline));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("sustained: at most {peak} sandbox processes (limit {limit}), host +{host_peak}");
    assert!(
        peak >= limit as usize / 2,
        "the sleepers did not start: {peak}"
    );
    assert!(
        peak <= limit as usize,
        "the sandbox exceeded its pids limit: {peak}"
    );
    // Loose (other tests run alongside): the host's count did not explode.
    assert!(
        host_peak < 1000,
        "the host's process count exploded: +{host_peak}"
    );
    // Stopping ends every bomb process.
    sb.kill().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), bomb).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_in(&ns) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(processes_in(&ns), 0, "bomb processes outlived the sandbox");
}

/// Root inside a sandbox started by root is host uid 0 (the identity map;
/// see `msb-core`'s `namespace` module), so a file it creates on a
/// writable bind volume is owned by host root: a setuid bit (or a file
/// capability) set there would hold on the host, for any host user who can
/// reach the directory. The sandbox's seccomp filter refuses to make set-id
/// files and file capabilities at all, so none can appear.
#[msb_test]
async fn setuid_files_on_a_bind_volume_do_not_give_host_root(env: TestEnv) {
    let image = env.busybox();
    let host = tempfile::tempdir().unwrap();
    let sb = builder(&env, "esc-vol", &image)
        .volume("/vol", |m| m.bind(host.path()))
        .create()
        .await
        .unwrap();
    let out = sh(
        &sb,
        "busybox cp /bin/busybox /vol/busybox.suid && busybox chmod 4755 /vol/busybox.suid; \
         busybox ls -ln /vol",
    )
    .await;
    println!("{}", all_output(&out));
    assert!(
        all_output(&out).contains("Operation not permitted"),
        "chmod 4755 refused: {}",
        all_output(&out)
    );
    sb.stop_and_wait().await.unwrap();
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(host.path().join("busybox.suid")) {
        assert!(
            !(meta.uid() == 0 && meta.mode() & 0o4000 != 0),
            "the sandbox left a setuid-root binary on the host: uid {}, mode {:o}",
            meta.uid(),
            meta.mode()
        );
    }
}
