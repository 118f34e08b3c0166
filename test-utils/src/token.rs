//! A real `docker-registry` with **token** authentication, plus the token
//! service it trusts, both on `127.0.0.1`.
//!
//! ```no_run
//! use test_utils::token::{TokenAuthRegistry, TokenPolicy};
//!
//! let registry = TokenAuthRegistry::start(TokenPolicy::anonymous_pull());
//! let image = test_utils::images::busybox_image().build();
//! registry.push_blocking(&image, "library/busybox", "latest").unwrap();
//! // pull `registry.host()/library/busybox` through the bearer flow
//! assert!(registry.token_requests().iter().any(|r| r.scopes
//!     .contains(&"repository:library/busybox:pull,push".to_string())));
//! ```
//!
//! The token service signs ES256 JWTs with an EC P-256 key (generated with
//! the `openssl` command-line tool into a temp dir) and puts the self-signed
//! certificate in the header's `x5c`; the registry's `rootcertbundle` is that
//! certificate. Who gets which actions:
//!
//! - the internal admin ([`TokenAuthRegistry::admin`]): `pull` and `push`;
//! - a configured user with the right password: `pull`;
//! - anonymous requests: `pull` when [`TokenPolicy::allow_anonymous_pull`],
//!   otherwise `401`;
//! - a wrong password: `401`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::images::{Auth, BuiltImage, PushedImage, Target, block_on, client, send};
use crate::registry::{FixtureError, TestRegistry};
use crate::tls::openssl;

/// The `service` the registry names in its challenge (the JWT `aud`).
pub const SERVICE: &str = "msb-test";
/// The JWT `iss` the registry trusts.
pub const ISSUER: &str = "msb-test-issuer";
/// Where Debian's `openssl` package puts the binary.
pub const OPENSSL_BINARY: &str = "/usr/bin/openssl";

/// Who the token service grants `pull` to.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    /// Grant `pull` to requests without credentials.
    pub allow_anonymous_pull: bool,
    /// `(user, password)` pairs granted `pull`.
    pub users: Vec<(String, String)>,
}

impl TokenPolicy {
    /// Anonymous pulls allowed, no users.
    pub fn anonymous_pull() -> Self {
        Self {
            allow_anonymous_pull: true,
            users: Vec::new(),
        }
    }

    /// Pulls need `user` / `password`; anonymous requests get `401`.
    pub fn user(user: &str, password: &str) -> Self {
        Self {
            allow_anonymous_pull: false,
            users: vec![(user.to_string(), password.to_string())],
        }
    }
}

/// One request the token service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `service` query parameter.
    pub service: Option<String>,
    /// Every `scope` query parameter, decoded.
    pub scopes: Vec<String>,
    /// The basic-auth user, when one was sent (even a wrong one).
    pub user: Option<String>,
    /// The status the service answered.
    pub status: u16,
}

/// The signing key and certificate, in a temp dir.
#[derive(Debug)]
struct Signer {
    key: PathBuf,
    cert_pem: PathBuf,
    cert_der_b64: String,
}

#[derive(Debug)]
struct Shared {
    signer: Signer,
    policy: TokenPolicy,
    admin: (String, String),
    requests: Mutex<Vec<TokenRequest>>,
    next_jti: AtomicU64,
    stop: watch::Sender<bool>,
}

/// The token service: HTTP/1.1 on `127.0.0.1`, its own thread and runtime,
/// stopped on drop.
#[derive(Debug)]
pub struct TokenService {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TokenService {
    fn start(
        signer: Signer,
        policy: TokenPolicy,
        admin: (String, String),
    ) -> Result<Self, FixtureError> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(FixtureError::io("binding the token service"))?;
        listener
            .set_nonblocking(true)
            .map_err(FixtureError::io("making the token listener non-blocking"))?;
        let addr = listener
            .local_addr()
            .map_err(FixtureError::io("the token service's address"))?;
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            signer,
            policy,
            admin,
            requests: Mutex::new(Vec::new()),
            next_jti: AtomicU64::new(1),
            stop,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("token-service-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the token service's runtime");
                runtime.block_on(serve(listener, thread_shared));
            })
            .map_err(FixtureError::io("spawning the token service thread"))?;
        Ok(Self {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A token-auth `docker-registry` and its token service; see the
/// [module docs](self).
#[derive(Debug)]
pub struct TokenAuthRegistry {
    // Field order: the registry stops before the token service and the key
    // dir go away.
    registry: TestRegistry,
    service: TokenService,
    _dir: tempfile::TempDir,
}

impl TokenAuthRegistry {
    /// Starts both. Panics if it cannot; see [`TokenAuthRegistry::try_start`].
    pub fn start(policy: TokenPolicy) -> Self {
        Self::try_start(policy)
            .unwrap_or_else(|e| panic!("starting the token-auth test registry: {e}"))
    }

    /// Generates the key and certificate, starts the token service, then the
    /// registry trusting it.
    pub fn try_start(policy: TokenPolicy) -> Result<Self, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("msb-test-token-")
            .tempdir()
            .map_err(FixtureError::io("creating the token temp dir"))?;
        let signer = Signer::generate(dir.path())?;
        let admin_password = format!(
            "admin-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let cert = signer.cert_pem.clone();
        let service =
            TokenService::start(signer, policy, ("msb-admin".to_string(), admin_password))?;
        let yaml = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    \
             issuer: {ISSUER}\n    rootcertbundle: {cert}\n",
            realm = service.realm(),
            cert = cert.display(),
        );
        let registry = TestRegistry::try_start_with_auth_yaml(&yaml)?;
        Ok(Self {
            registry,
            service,
            _dir: dir,
        })
    }

    /// The registry (its `credentials()` is `None`).
    pub fn registry(&self) -> &TestRegistry {
        &self.registry
    }

    /// `127.0.0.1:PORT` of the registry.
    pub fn host(&self) -> String {
        self.registry.host()
    }

    /// The token service.
    pub fn token_service(&self) -> &TokenService {
        &self.service
    }

    /// The internal admin's user and password (granted `pull,push`).
    pub fn admin(&self) -> (&str, &str) {
        let (u, p) = &self.service.shared.admin;
        (u, p)
    }

    /// Every request the token service answered so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.service
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fetches a token for `scope` from the token service as `basic`
    /// (`None`: anonymous). `Err` carries a non-200 status.
    pub async fn fetch_token(
        &self,
        scope: &str,
        basic: Option<(&str, &str)>,
    ) -> Result<String, FixtureError> {
        let url = self.service.realm();
        let client = client()?;
        let mut req = client
            .get(&url)
            .query(&[("service", SERVICE), ("scope", scope)]);
        if let Some((user, password)) = basic {
            req = req.basic_auth(user, Some(password));
        }
        let resp = send(req, "GET", &url, &[200]).await?;
        let body: Value = resp.json().await.map_err(|e| FixtureError::Http {
            method: "GET".into(),
            url: url.clone(),
            detail: e.to_string(),
        })?;
        body["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| FixtureError::Other(format!("token response without token: {body}")))
    }

    /// Pushes `image` as `name:tag` with an admin `pull,push` token.
    pub async fn push(
        &self,
        image: &BuiltImage,
        name: &str,
        tag: &str,
    ) -> Result<PushedImage, FixtureError> {
        let token = self
            .fetch_token(&format!("repository:{name}:pull,push"), Some(self.admin()))
            .await?;
        let bearer = format!("Bearer {token}");
        let base = self.registry.url();
        let target = Target {
            base: &base,
            auth: Auth::Header(&bearer),
        };
        image.push_to(target, &self.registry, name, tag).await
    }

    /// [`TokenAuthRegistry::push`] from synchronous code.
    pub fn push_blocking(
        &self,
        image: &BuiltImage,
        name: &str,
        tag: &str,
    ) -> Result<PushedImage, FixtureError> {
        block_on(self.push(image, name, tag))
    }
}

impl Signer {
    /// An EC P-256 key and a self-signed certificate for it, in `dir`.
    fn generate(dir: &Path) -> Result<Self, FixtureError> {
        let key = dir.join("key.pem");
        let cert_pem = dir.join("cert.pem");
        let cert_der = dir.join("cert.der");
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            path_str(&key)?,
        ])?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            path_str(&key)?,
            "-out",
            path_str(&cert_pem)?,
            "-days",
            "2",
            "-sha256",
            "-subj",
            "/CN=msb-test-token-signer",
        ])?;
        openssl(&[
            "x509",
            "-in",
            path_str(&cert_pem)?,
            "-outform",
            "DER",
            "-out",
            path_str(&cert_der)?,
        ])?;
        let der = std::fs::read(&cert_der).map_err(FixtureError::io("reading cert.der"))?;
        Ok(Self {
            key,
            cert_pem,
            cert_der_b64: base64_std(&der),
        })
    }

    /// An ES256 JWT over `claims`, the certificate in `x5c`.
    fn sign(&self, claims: &Value) -> Result<String, FixtureError> {
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_der_b64]});
        let input = format!(
            "{}.{}",
            base64_url(header.to_string().as_bytes()),
            base64_url(claims.to_string().as_bytes())
        );
        let der = openssl_sign(&self.key, input.as_bytes())?;
        let raw = der_signature_to_raw(&der).ok_or_else(|| {
            FixtureError::Other("openssl wrote a malformed ECDSA signature".into())
        })?;
        Ok(format!("{input}.{}", base64_url(&raw)))
    }
}

fn path_str(path: &Path) -> Result<&str, FixtureError> {
    path.to_str()
        .ok_or_else(|| FixtureError::Other(format!("non-UTF-8 path {}", path.display())))
}

/// `openssl dgst -sha256 -sign key`: a DER ECDSA signature of `data`.
fn openssl_sign(key: &Path, data: &[u8]) -> Result<Vec<u8>, FixtureError> {
    use std::io::Write;
    let mut child = Command::new(OPENSSL_BINARY)
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FixtureError::io("running openssl dgst"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(data)
        .map_err(FixtureError::io("writing to openssl dgst"))?;
    let out = child
        .wait_with_output()
        .map_err(FixtureError::io("waiting for openssl dgst"))?;
    if !out.status.success() {
        return Err(FixtureError::Other(format!(
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// A DER `SEQUENCE { INTEGER r, INTEGER s }` → the 64-byte JWS `r || s`.
pub fn der_signature_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    fn length(bytes: &[u8], pos: &mut usize) -> Option<usize> {
        let first = *bytes.get(*pos)?;
        *pos += 1;
        if first < 0x80 {
            return Some(first as usize);
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 2 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..n {
            len = (len << 8) | *bytes.get(*pos)? as usize;
            *pos += 1;
        }
        Some(len)
    }
    let mut pos = 0;
    if *der.get(pos)? != 0x30 {
        return None;
    }
    pos += 1;
    let seq_len = length(der, &mut pos)?;
    if pos + seq_len != der.len() {
        return None;
    }
    let mut out = [0u8; 64];
    for half in 0..2 {
        if *der.get(pos)? != 0x02 {
            return None;
        }
        pos += 1;
        let len = length(der, &mut pos)?;
        let mut int = der.get(pos..pos + len)?;
        pos += len;
        while int.len() > 1 && int[0] == 0 {
            int = &int[1..];
        }
        if int.len() > 32 {
            return None;
        }
        let start = half * 32 + (32 - int.len());
        out[start..half * 32 + 32].copy_from_slice(int);
    }
    (pos == der.len()).then_some(out)
}

/// Standard base64 with padding (Docker `config.json` `auth`, `x5c`).
pub fn base64_std(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Unpadded base64url (JWS segments).
pub fn base64_url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A Docker `config.json` with `auths.<host>.auth` = base64 `user:password`.
pub fn docker_config_json(host: &str, user: &str, password: &str) -> String {
    json!({"auths": {host: {"auth": base64_std(format!("{user}:{password}").as_bytes())}}})
        .to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        handle(stream, &shared),
                    )
                    .await;
                });
            }
        }
    }
}

/// Reads one request, answers it, closes the connection.
async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authorization = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = if method != "GET" || path != "/token" {
        (404, json!({"error": "not found"}))
    } else {
        answer(shared, query, authorization.as_deref())
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let body = body.to_string();
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"msb-test-token\"\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Decides and signs; records the request.
fn answer(shared: &Shared, query: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "service" => service = Some(percent_decode(v)),
            "scope" => scopes.push(percent_decode(v)),
            _ => {}
        }
    }
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64_std(format!("{user}:{password}").as_bytes())
        )
    };
    // (subject, may push); None: refused.
    let (user, grant) = match authorization {
        None => (
            None,
            shared
                .policy
                .allow_anonymous_pull
                .then(|| (String::new(), false)),
        ),
        Some(header) => {
            let (admin_user, admin_password) = &shared.admin;
            let user = decode_basic_user(header);
            let grant = if header == basic(admin_user, admin_password) {
                Some((admin_user.clone(), true))
            } else {
                shared
                    .policy
                    .users
                    .iter()
                    .find(|(u, p)| header == basic(u, p))
                    .map(|(u, _)| (u.clone(), false))
            };
            (user, grant)
        }
    };
    let mut record = TokenRequest {
        service: service.clone(),
        scopes: scopes.clone(),
        user,
        status: 401,
    };
    let result = match grant {
        None => (401, json!({"errors": [{"code": "UNAUTHORIZED"}]})),
        Some((subject, may_push)) => {
            let access: Vec<Value> = scopes
                .iter()
                .filter_map(|scope| {
                    let mut it = scope.splitn(3, ':');
                    let (kind, rest) = (it.next()?, it.next()?);
                    let actions = it.next()?;
                    if kind != "repository" {
                        return None;
                    }
                    let granted: Vec<&str> = actions
                        .split(',')
                        .filter(|a| *a == "pull" || (*a == "push" && may_push))
                        .collect();
                    Some(json!({"type": "repository", "name": rest, "actions": granted}))
                })
                .collect();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let claims = json!({
                "iss": ISSUER,
                "sub": subject,
                "aud": service.as_deref().unwrap_or(SERVICE),
                "exp": now + 300,
                "nbf": now.saturating_sub(10),
                "iat": now,
                "jti": format!("msb-{}", shared.next_jti.fetch_add(1, Ordering::Relaxed)),
                "access": access,
            });
            match shared.signer.sign(&claims) {
                Ok(token) => {
                    record.status = 200;
                    (
                        200,
                        json!({"token": token, "access_token": token, "expires_in": 300}),
                    )
                }
                Err(e) => {
                    tracing::error!("signing a token: {e}");
                    record.status = 500;
                    (500, json!({"error": e.to_string()}))
                }
            }
        }
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);
    result
}

/// The user of a `Basic` header (for the record), if it decodes.
fn decode_basic_user(header: &str) -> Option<String> {
    let encoded = header.strip_prefix("Basic ")?.trim();
    let out = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(out).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(u, _)| u.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_std(b""), "");
        assert_eq!(base64_std(b"f"), "Zg==");
        assert_eq!(base64_std(b"fo"), "Zm8=");
        assert_eq!(base64_std(b"foo"), "Zm9v");
        assert_eq!(base64_std(b"foob"), "Zm9vYg==");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(
            decode_basic_user(&format!("Basic {}", base64_std(b"alice:pw"))).as_deref(),
            Some("alice")
        );
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull"),
            "repository:a/b:pull"
        );
    }

    #[test]
    fn der_signatures_become_64_bytes() {
        // r with a leading zero (33 bytes), s short (31 bytes).
        let mut r = vec![0u8];
        r.extend([0x80; 32]);
        let s = vec![0x01; 31];
        let mut der = vec![0x30, (2 + r.len() + 2 + s.len()) as u8, 0x02, r.len() as u8];
        der.extend(&r);
        der.extend([0x02, s.len() as u8]);
        der.extend(&s);
        let raw = der_signature_to_raw(&der).unwrap();
        assert_eq!(&raw[..32], &[0x80; 32]);
        assert_eq!(raw[32], 0);
        assert_eq!(&raw[33..], &[0x01; 31]);
        assert!(der_signature_to_raw(&der[..der.len() - 1]).is_none());
    }
}
