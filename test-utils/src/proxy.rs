//! [`FaultyProxy`]: a real TCP proxy on `127.0.0.1` in front of an upstream
//! (the test registry) that injects network faults into what it relays back.
//!
//! It runs on its own thread with a private single-threaded tokio runtime.
//! Every accepted connection gets its own upstream connection; bytes from the
//! client go upstream untouched, bytes from upstream are counted per
//! connection (headers included) and the active [`Fault`] decides what
//! happens once a connection has relayed more than its threshold downstream:
//!
//! - [`FaultyProxy::cut_after`]: forward exactly `bytes`, then close the
//!   client connection (a dropped connection mid-body), for the first `times`
//!   connections that cross the threshold; later ones pass through.
//! - [`FaultyProxy::stall_after`]: forward `bytes`, then keep the connection
//!   open and silent.
//! - [`FaultyProxy::die_after`]: forward `bytes`, then close every connection
//!   and the listener: the "registry" is gone and connecting is refused.
//!
//! Small responses (manifests, configs) stay below a threshold chosen
//! smaller than a layer, so only layer downloads are hit. Dropping the proxy
//! stops it and joins its thread.
//!
//! ```no_run
//! use test_utils::proxy::FaultyProxy;
//! # let upstream: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
//! let proxy = FaultyProxy::start(upstream);
//! proxy.cut_after(64 << 10, 2);
//! // ... pull from proxy.host() ...
//! assert_eq!(proxy.cuts(), 2);
//! ```

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to a connection once it has relayed more than the
/// fault's `bytes` downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay everything.
    None,
    /// Close the connection after `bytes`; `remaining` more times (then relay
    /// everything).
    Cut {
        /// Bytes forwarded before the cut.
        bytes: u64,
        /// Cuts left; `usize::MAX` for every connection.
        remaining: usize,
    },
    /// Stop forwarding after `bytes` but keep the connection open.
    Stall {
        /// Bytes forwarded before the stall.
        bytes: u64,
    },
    /// After `bytes`, close every connection and stop listening.
    Die {
        /// Bytes forwarded before dying.
        bytes: u64,
    },
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    cuts: AtomicUsize,
    stalls: AtomicUsize,
    connections: AtomicUsize,
    relayed: AtomicU64,
    /// `true` once the proxy must stop (dropped, or died).
    stop: watch::Sender<bool>,
}

/// What one connection does at its threshold, decided when it crosses it.
enum Action {
    Cut,
    Stall,
    Die,
}

impl Shared {
    /// The threshold for a connection at `relayed` bytes that wants to relay
    /// `len` more: `Some((allowed, action))` if it crosses one now.
    fn check(&self, relayed: u64, len: usize) -> Option<(usize, Action)> {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let end = relayed + len as u64;
        let (bytes, action) = match *fault {
            Fault::None => return None,
            Fault::Cut { remaining: 0, .. } => return None,
            Fault::Cut { bytes, .. } => (bytes, Action::Cut),
            Fault::Stall { bytes } => (bytes, Action::Stall),
            Fault::Die { bytes } => (bytes, Action::Die),
        };
        if end <= bytes {
            return None;
        }
        if let Fault::Cut { remaining, .. } = &mut *fault
            && *remaining != usize::MAX
        {
            *remaining -= 1;
        }
        let allowed = bytes.saturating_sub(relayed).min(len as u64) as usize;
        Some((allowed, action))
    }
}

/// A fault-injecting TCP proxy on `127.0.0.1`; see the [module docs](self).
#[derive(Debug)]
pub struct FaultyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FaultyProxy {
    /// Starts a pass-through proxy to `upstream` on a free port of
    /// `127.0.0.1`. Panics if it cannot bind.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = StdListener::bind(("127.0.0.1", 0)).expect("bind the proxy on 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("make the proxy listener non-blocking");
        let addr = listener.local_addr().expect("the proxy's address");
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::None),
            cuts: AtomicUsize::new(0),
            stalls: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            relayed: AtomicU64::new(0),
            stop,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("faulty-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the proxy's runtime");
                runtime.block_on(serve(listener, thread_shared));
                // Dropping the runtime cancels every connection task, which
                // closes their sockets.
            })
            .expect("spawn the proxy thread");
        Self {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Sets the fault for connections from now on (connections past their
    /// threshold already are not affected again).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Relay everything from now on.
    pub fn pass_through(&self) {
        self.set_fault(Fault::None);
    }

    /// Closes the first `times` connections that relay more than `bytes`
    /// downstream, right after their `bytes`-th byte; `usize::MAX` cuts
    /// every such connection.
    pub fn cut_after(&self, bytes: u64, times: usize) {
        self.set_fault(Fault::Cut {
            bytes,
            remaining: times,
        });
    }

    /// Cuts every connection that relays more than `bytes` downstream.
    pub fn cut_always_after(&self, bytes: u64) {
        self.cut_after(bytes, usize::MAX);
    }

    /// Stops forwarding on connections past `bytes`, keeping them open.
    pub fn stall_after(&self, bytes: u64) {
        self.set_fault(Fault::Stall { bytes });
    }

    /// When a connection passes `bytes`, closes every connection and the
    /// listener, as if the upstream process died.
    pub fn die_after(&self, bytes: u64) {
        self.set_fault(Fault::Die { bytes });
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections stalled so far.
    pub fn stalls(&self) -> usize {
        self.shared.stalls.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Bytes relayed downstream (to clients) so far, over all connections.
    pub fn relayed(&self) -> u64 {
        self.shared.relayed.load(Ordering::SeqCst)
    }

    /// Whether it has stopped (died, or is being dropped).
    pub fn is_dead(&self) -> bool {
        *self.shared.stop.borrow()
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: StdListener, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "faulty proxy: listener");
            return;
        }
    };
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let mut stop = shared.stop.subscribe();
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        _ = relay(client, &shared) => {}
                    }
                });
            }
        }
    }
}

/// Relays one connection until either side ends it or a fault does.
/// Returning drops (closes) both sockets.
async fn relay(client: TcpStream, shared: &Shared) {
    let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        // The client half-closed: keep relaying the answer.
        std::future::pending::<()>().await
    };
    let down = async {
        let mut relayed = 0u64;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match upstream_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = client_write.shutdown().await;
                    return;
                }
                Ok(n) => n,
            };
            let (allowed, action) = match shared.check(relayed, n) {
                Some((allowed, action)) => (allowed, Some(action)),
                None => (n, None),
            };
            if allowed > 0 {
                if client_write.write_all(&buf[..allowed]).await.is_err() {
                    return;
                }
                relayed += allowed as u64;
                shared.relayed.fetch_add(allowed as u64, Ordering::SeqCst);
            }
            match action {
                None => {}
                Some(Action::Cut) => {
                    let _ = client_write.flush().await;
                    shared.cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Some(Action::Stall) => {
                    shared.stalls.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                Some(Action::Die) => {
                    let _ = client_write.flush().await;
                    shared.stop.send_replace(true);
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
