//! A real OCI registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on `127.0.0.1` with a free port and a temporary storage directory.
//!
//! ```no_run
//! let registry = test_utils::registry::TestRegistry::start();
//! println!("push to {}", registry.host()); // 127.0.0.1:PORT
//! // dropped: the process is killed and reaped, the storage removed
//! ```
//!
//! The binary is installed on demand (`apt-get install docker-registry`, as
//! root; see [`ensure_package`]). Each registry gets its own config file,
//! storage and log under one temp dir.

mod install;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use install::tail;
pub use install::{APT_LOCK, ensure_package, is_root};

/// Where Debian's `docker-registry` package puts the binary.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// Where Debian's `apache2-utils` package puts `htpasswd`.
pub const HTPASSWD_BINARY: &str = "/usr/bin/htpasswd";

/// How long [`TestRegistry::start`] waits for `GET /v2/` to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from the registry and image fixtures.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A package the fixture needs is missing and could not be installed.
    #[error("installing {package}: {detail}")]
    Install {
        /// The Debian package.
        package: String,
        /// What went wrong (apt's stderr tail, or why no install was tried).
        detail: String,
    },
    /// The registry process failed to start or to become ready.
    #[error("docker-registry: {0}")]
    Registry(String),
    /// The registry answered a push request unexpectedly.
    #[error("{method} {url}: {detail}")]
    Http {
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// Status and body, or the transport error.
        detail: String,
    },
    /// Building a fixture failed (tar, compression, debootstrap, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Any other fixture failure.
    #[error("{0}")]
    Other(String),
}

impl FixtureError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// A running `docker-registry` on `127.0.0.1`, killed and removed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts an anonymous registry. Panics (with the registry's stderr tail)
    /// if it cannot; see [`TestRegistry::try_start`].
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("starting the test registry: {e}"))
    }

    /// Starts a registry that requires HTTP basic auth (`htpasswd`, bcrypt)
    /// for every request, with one user. Panics if it cannot.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::try_start_with_basic_auth(user, password)
            .unwrap_or_else(|e| panic!("starting the basic-auth test registry: {e}"))
    }

    /// Starts an anonymous registry.
    pub fn try_start() -> Result<Self, FixtureError> {
        Self::launch(None, None)
    }

    /// Starts a registry requiring basic auth for `user` / `password`.
    pub fn try_start_with_basic_auth(user: &str, password: &str) -> Result<Self, FixtureError> {
        Self::launch(Some((user.to_string(), password.to_string())), None)
    }

    /// Starts a registry whose config ends with `auth_yaml`, a top-level
    /// `auth:` block written by the caller (e.g. token auth, see
    /// [`crate::token`]). [`TestRegistry::credentials`] is `None`: the caller
    /// decides how pushes authenticate.
    pub fn try_start_with_auth_yaml(auth_yaml: &str) -> Result<Self, FixtureError> {
        Self::launch(None, Some(auth_yaml))
    }

    fn launch(
        credentials: Option<(String, String)>,
        auth_yaml: Option<&str>,
    ) -> Result<Self, FixtureError> {
        ensure_package(Path::new(REGISTRY_BINARY), "docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("msb-test-registry-")
            .tempdir()
            .map_err(FixtureError::io("creating the registry temp dir"))?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).map_err(FixtureError::io("creating registry storage"))?;

        let auth = match (auth_yaml, &credentials) {
            (Some(yaml), _) => yaml.to_string(),
            (None, None) => String::new(),
            (None, Some((user, password))) => {
                let htpasswd = dir.path().join("htpasswd");
                write_htpasswd(&htpasswd, user, password)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: msb-test-registry\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };

        let (child, addr) = start_on_free_port(
            dir.path(),
            |addr| {
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                     cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: {addr}\n  secret: msb-test-registry-secret\n\
                     {auth}",
                    storage = storage.display(),
                )
            },
            |child, addr, log| wait_ready(child, addr, log, READY_TIMEOUT),
        )?;
        Ok(TestRegistry {
            child,
            addr,
            dir,
            credentials,
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The full reference of `name:tag` on this registry.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.host())
    }

    /// The basic-auth user and password, when it requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The storage root (`<tmp>/storage`), e.g. for corrupting a blob on disk.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the blob with `digest` (`sha256:...`) lies in storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// The last `lines` lines of the registry's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.dir.path().join("registry.log"), lines)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
        // The TempDir field removes config and storage after this.
    }
}

/// Starts `docker-registry` in `dir` on a free port of 127.0.0.1 with the
/// config `yaml_for(addr)`, and waits with `ready`. A free port can be taken
/// between probing and binding: then it retries on another (5 tries).
pub(crate) fn start_on_free_port(
    dir: &Path,
    yaml_for: impl Fn(SocketAddr) -> String,
    ready: impl Fn(&mut Child, SocketAddr, &Path) -> Result<(), FixtureError>,
) -> Result<(Child, SocketAddr), FixtureError> {
    let mut last_err = None;
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (mut child, log_path) = spawn_registry(dir, &yaml_for(addr))?;
        match ready(&mut child, addr, &log_path) {
            Ok(()) => return Ok((child, addr)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let in_use = read_tail(&log_path, 20).contains("address already in use");
                last_err = Some(e);
                if !in_use {
                    break;
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| FixtureError::Registry("did not start".into())))
}

/// Writes `yaml` as `dir/config.yml` and starts `docker-registry serve` on
/// it, logging to `dir/registry.log`; the child dies with the spawning
/// thread. Returns the child and the log's path.
pub(crate) fn spawn_registry(dir: &Path, yaml: &str) -> Result<(Child, PathBuf), FixtureError> {
    let config = dir.join("config.yml");
    std::fs::write(&config, yaml).map_err(FixtureError::io("writing registry config"))?;
    let log_path = dir.join("registry.log");
    let log =
        std::fs::File::create(&log_path).map_err(FixtureError::io("creating the registry log"))?;
    let log2 = log
        .try_clone()
        .map_err(FixtureError::io("cloning the log"))?;
    let mut command = Command::new(REGISTRY_BINARY);
    command
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    die_with_parent(&mut command);
    without_huge_pages(&mut command);
    let child = command
        .spawn()
        .map_err(FixtureError::io("spawning docker-registry"))?;
    Ok((child, log_path))
}

pub(crate) fn read_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read(path).unwrap_or_default();
    tail(&String::from_utf8_lossy(&log), lines)
}

/// Polls `GET /v2/` until it answers 200 (or 401 with auth), the process
/// exits, or `timeout` passes.
fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    log: &Path,
    timeout: Duration,
) -> Result<(), FixtureError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(FixtureError::io("polling docker-registry"))?
        {
            return Err(FixtureError::Registry(format!(
                "exited with {status} before becoming ready:\n{}",
                read_tail(log, 20)
            )));
        }
        if let Ok(code) = http_status(addr, "/v2/")
            && (code == 200 || code == 401)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FixtureError::Registry(format!(
                "GET /v2/ on {addr} not ready after {timeout:?}:\n{}",
                read_tail(log, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, FixtureError> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(FixtureError::io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(FixtureError::io("finding a free port"))?
        .port())
}

/// A minimal blocking `GET` returning the status code (readiness probe; works
/// inside or outside an async runtime).
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// Writes a bcrypt htpasswd file with `htpasswd -Bbn` (apache2-utils,
/// installed on demand).
fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<(), FixtureError> {
    ensure_package(Path::new(HTPASSWD_BINARY), "apache2-utils")?;
    let out = Command::new(HTPASSWD_BINARY)
        .args(["-Bbn", user, password])
        .stdin(Stdio::null())
        .output()
        .map_err(FixtureError::io("running htpasswd"))?;
    if !out.status.success() {
        return Err(FixtureError::Other(format!(
            "htpasswd -Bbn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::write(path, &out.stdout).map_err(FixtureError::io("writing htpasswd"))
}

/// Makes the kernel kill the child when the thread that spawned it dies, so a
/// crashed or killed test run leaves no registry behind. (Drop already kills
/// it on every orderly exit; tests own their registry on their own thread.)
pub(crate) fn die_with_parent(command: &mut Command) {
    prctl_before_exec(
        command,
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
    );
}

/// Keeps the child's memory in small pages (`PR_SET_THP_DISABLE`, inherited
/// across exec). The registry's Go runtime asks for transparent huge pages
/// for its heap, and on these VMs a huge page the hypervisor took back
/// costs milliseconds to fault in: 3 of 20 bench pulls had a blob request
/// stall for 40-70 ms zeroing them (`clear_page_erms` under
/// `do_huge_pmd_anonymous_page`), none of 20 without. Benchmarks share the
/// registry between us and the peers: its stalls only blurred both.
fn without_huge_pages(command: &mut Command) {
    prctl_before_exec(command, libc::PR_SET_THP_DISABLE, 1);
}

/// Has the child call `prctl(option, arg)` before it execs.
fn prctl_before_exec(command: &mut Command, option: libc::c_int, arg: libc::c_ulong) {
    let set = move || {
        // Variadic: every argument goes as the full register the kernel reads.
        let unused: libc::c_ulong = 0;
        // SAFETY: these prctl options take integers and touch no memory of
        // ours; the unused arguments are zero, as the kernel requires.
        if unsafe { libc::prctl(option, arg, unused, unused, unused) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: `set` runs between fork and exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(set);
    }
}
