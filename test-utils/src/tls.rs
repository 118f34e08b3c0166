//! A TLS registry for tests: a throwaway CA and a server certificate for
//! `127.0.0.1` / `localhost` made with the `openssl` command-line tool, and
//! Debian's `docker-registry` serving HTTPS with them on `127.0.0.1`.
//!
//! Fixtures are pushed over plain HTTP to a companion [`TestRegistry`]; the
//! TLS registry serves the *same* storage directory (distribution's
//! filesystem driver reads whatever is on disk), so anything pushed with
//! [`TlsRegistry::push_target`] can be pulled over TLS from
//! [`TlsRegistry::host`].
//!
//! ```no_run
//! use test_utils::images::busybox_image;
//! use test_utils::tls::TlsRegistry;
//!
//! let registry = TlsRegistry::start();
//! busybox_image()
//!     .push_blocking(registry.push_target(), "library/busybox", "latest")
//!     .unwrap();
//! // Pull `{registry.host()}/library/busybox` with `registry.config_json(true)`.
//! ```
//!
//! microsandbox treats loopback registries as plain HTTP; the config from
//! [`TlsRegistry::config_json`] forces TLS by mapping the host to itself as a
//! mirror with an explicit `https://` scheme.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::{
    FixtureError, READY_TIMEOUT, TestRegistry, read_tail, start_on_free_port, tail,
};

/// Where Debian's `openssl` package puts the command-line tool.
pub const OPENSSL_BINARY: &str = "/usr/bin/openssl";

/// A throwaway certificate authority and a server certificate it signed for
/// `IP:127.0.0.1` and `DNS:localhost`, as PEM files in a temp dir.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA (EC P-256, self-signed, `CA:TRUE`) and the server
    /// key and certificate.
    pub fn generate() -> Result<Self, FixtureError> {
        crate::registry::ensure_package(Path::new(OPENSSL_BINARY), "openssl")?;
        let dir = tempfile::Builder::new()
            .prefix("msb-test-ca-")
            .tempdir()
            .map_err(FixtureError::io("creating the CA temp dir"))?;
        let d = dir.path();
        let p = |name: &str| d.join(name).display().to_string();
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .map_err(FixtureError::io(
            "writing the server certificate extensions",
        ))?;
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=microsandbox test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("server.pem"),
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
        ])?;
        Ok(Self { dir })
    }

    /// The CA certificate (PEM): what a client must trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM), signed by the CA.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The CA certificate as a reqwest root.
    pub fn reqwest_certificate(&self) -> Result<reqwest::Certificate, FixtureError> {
        let pem = std::fs::read(self.ca_pem()).map_err(FixtureError::io("reading the CA"))?;
        reqwest::Certificate::from_pem(&pem)
            .map_err(|e| FixtureError::Other(format!("parsing the test CA: {e}")))
    }
}

/// Runs `openssl ARGS`; a failure carries the tail of its stderr.
pub(crate) fn openssl(args: &[&str]) -> Result<(), FixtureError> {
    let out = Command::new(OPENSSL_BINARY)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(FixtureError::io("running openssl"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FixtureError::Other(format!(
            "openssl {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 10)
        )))
    }
}

/// `docker-registry` serving HTTPS on `127.0.0.1` with a [`TestCa`]
/// certificate, over the storage of a plain [`TestRegistry`] used for
/// pushing. Killed and removed on drop.
#[derive(Debug)]
pub struct TlsRegistry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    ca: TestCa,
    plain: TestRegistry,
}

impl TlsRegistry {
    /// Starts the pair. Panics (with the registry's log tail) if it cannot;
    /// see [`TlsRegistry::try_start`].
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("starting the TLS test registry: {e}"))
    }

    /// Generates a CA, starts a plain registry for pushing, then a TLS
    /// registry over the same storage, and waits until `GET /v2/` answers
    /// over TLS (verified against the CA).
    pub fn try_start() -> Result<Self, FixtureError> {
        let ca = TestCa::generate()?;
        let plain = TestRegistry::try_start()?;
        let dir = tempfile::Builder::new()
            .prefix("msb-test-tls-registry-")
            .tempdir()
            .map_err(FixtureError::io("creating the TLS registry temp dir"))?;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca.reqwest_certificate()?)
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(1))
            .build()
            .map_err(|e| FixtureError::Other(format!("building a reqwest client: {e}")))?;

        let (child, addr) = start_on_free_port(
            dir.path(),
            |addr| {
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {storage}\n  \
                     cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: {addr}\n  secret: msb-test-registry-secret\n  \
                     tls:\n    certificate: {cert}\n    key: {key}\n",
                    storage = plain.storage_dir().display(),
                    cert = ca.server_cert().display(),
                    key = ca.server_key().display(),
                )
            },
            |child, addr, log| wait_ready(child, &probe, addr, log),
        )?;
        Ok(Self {
            child,
            addr,
            dir,
            ca,
            plain,
        })
    }

    /// The plain-HTTP registry sharing this one's storage: push fixtures
    /// here (e.g. `busybox_image().push_blocking(r.push_target(), ..)`).
    pub fn push_target(&self) -> &TestRegistry {
        &self.plain
    }

    /// The CA that signed the server certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The CA certificate PEM file.
    pub fn ca_pem(&self) -> PathBuf {
        self.ca.ca_pem()
    }

    /// The TLS socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT` (TLS), the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The full reference of `name:tag` on the TLS registry.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("{}/{name}:{tag}", self.host())
    }

    /// A reqwest client (no proxy) that trusts only the test CA.
    pub fn client(&self) -> Result<reqwest::Client, FixtureError> {
        reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(self.ca.reqwest_certificate()?)
            .tls_built_in_root_certs(false)
            .build()
            .map_err(|e| FixtureError::Other(format!("building a reqwest client: {e}")))
    }

    /// A microsandbox `config.json` that forces TLS for [`Self::host`] (the
    /// host mirrors itself with an explicit `https://` endpoint, since
    /// loopback hosts are plain HTTP by default) and, with `trust_ca`, trusts
    /// the test CA for it through `ca_certificates`.
    pub fn config_json(&self, trust_ca: bool) -> String {
        let ca = if trust_ca {
            format!(
                r#", "ca_certificates": [{}]"#,
                serde_json::Value::String(self.ca_pem().display().to_string())
            )
        } else {
            String::new()
        };
        format!(
            r#"{{"registries": {{"{host}": {{"mirror": "https://{host}"{ca}}}}}}}"#,
            host = self.host()
        )
    }

    /// The last `lines` lines of the TLS registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.dir.path().join("registry.log"), lines)
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then the plain registry (and the shared storage), the CA and the
        // config dir are dropped.
    }
}

/// Polls `GET https://addr/v2/` (verified against the CA) until it answers
/// 200, the process exits, or [`READY_TIMEOUT`] passes.
fn wait_ready(
    child: &mut Child,
    probe: &reqwest::Client,
    addr: SocketAddr,
    log: &Path,
) -> Result<(), FixtureError> {
    let url = format!("https://{addr}/v2/");
    let deadline = Instant::now() + READY_TIMEOUT;
    // One runtime for the whole wait: the client's pooled connections belong
    // to the runtime they were made on.
    crate::images::block_on(async {
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
            let last = match probe.get(&url).send().await {
                Ok(resp) if resp.status().as_u16() == 200 => return Ok(()),
                Ok(resp) => format!("status {}", resp.status()),
                Err(e) => error_chain(&e),
            };
            if Instant::now() >= deadline {
                return Err(FixtureError::Registry(format!(
                    "GET {url} not ready after {READY_TIMEOUT:?} ({last}):\n{}",
                    read_tail(log, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// `e` and all its sources, joined with `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
