//! A switchable TCP proxy: the harness's stand-in for a virtual IP (or a Sentinel-aware client)
//! in front of Redis, and for the network link between a primary and its replica.
//!
//! Every Redis client of a run (the harness's producers, history oracle and checker, and every
//! consumer process) connects to the **client proxy** instead of Redis itself. A failover
//! [`switch`](Proxy::switch)es its backend: every open connection is dropped at once (as a VIP
//! move or a Sentinel-driven reconnect does) and new connections go to the new primary. The
//! replica replicates through a second proxy, the **link**, which [`cut`](Proxy::cut) closes and
//! keeps closed (the replica's reconnects are refused): a network partition between primary and
//! replica, so the replica lags.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The current backend (`None`: connections are refused) and a generation that every switch
/// bumps; a connection lives only as long as its generation is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    backend: Option<SocketAddr>,
    generation: u64,
}

/// A running proxy (cheap to clone). It stops when the last clone is dropped.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    local: SocketAddr,
    route: watch::Sender<Route>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
        // Connection tasks see the sender go and end.
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:port` (0: any free port) and forwards to `backend`.
    pub async fn start(port: u16, backend: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let local = listener.local_addr()?;
        let (route, _) = watch::channel(Route {
            backend: Some(backend),
            generation: 0,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(listener, route.subscribe(), accepted.clone()));
        Ok(Proxy {
            inner: Arc::new(Inner {
                local,
                route,
                accepted,
                task,
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.inner.local)
    }

    /// The backend new connections go to (`None`: cut).
    pub fn backend(&self) -> Option<SocketAddr> {
        self.inner.route.borrow().backend
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// New connections go to `backend`; every open connection is dropped now.
    pub fn switch(&self, backend: SocketAddr) {
        self.set(Some(backend));
    }

    /// Drops every open connection and refuses new ones (accepts and closes them at once).
    pub fn cut(&self) {
        self.set(None);
    }

    fn set(&self, backend: Option<SocketAddr>) {
        self.inner.route.send_modify(|r| {
            r.backend = backend;
            r.generation += 1;
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    route: watch::Receiver<Route>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let route = route.clone();
        tokio::spawn(async move {
            let _ = forward(client, route).await;
        });
    }
}

/// One client connection: to the backend of the moment, until either side closes or the route
/// changes.
async fn forward(mut client: TcpStream, mut route: watch::Receiver<Route>) -> std::io::Result<()> {
    let at = *route.borrow_and_update();
    let Some(backend) = at.backend else {
        return Ok(()); // cut: closed at once
    };
    let _ = client.set_nodelay(true);
    let mut server = tokio::select! {
        s = TcpStream::connect(backend) => s?,
        _ = route.changed() => return Ok(()),
    };
    let _ = server.set_nodelay(true);
    loop {
        tokio::select! {
            r = copy_bidirectional(&mut client, &mut server) => { r?; return Ok(()); }
            changed = route.changed() => {
                // A new generation (or the proxy is gone): drop both sides.
                if changed.is_err() || route.borrow_and_update().generation != at.generation {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every read with its tag followed by what it read.
    async fn tagged_echo(tag: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut out = vec![tag];
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn ask(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        s.write_all(b"x").await?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn switch_drops_open_connections_and_routes_new_ones_to_the_new_backend() {
        let (a, b) = (tagged_echo(b'a').await, tagged_echo(b'b').await);
        let proxy = Proxy::start(0, a).await.unwrap();
        let mut c1 = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(ask(&mut c1).await.unwrap(), b"ax");
        proxy.switch(b);
        // The old connection is closed: a read sees EOF (or the write fails).
        let mut buf = [0u8; 2];
        let old = async {
            c1.write_all(b"x").await?;
            c1.read(&mut buf).await
        };
        assert!(matches!(old.await, Ok(0) | Err(_)), "old connection kept");
        let mut c2 = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(ask(&mut c2).await.unwrap(), b"bx");
        assert_eq!(proxy.backend(), Some(b));

        proxy.cut();
        let mut c3 = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert!(ask(&mut c3).await.is_err(), "a cut proxy must refuse");
        assert!(
            ask(&mut c2).await.is_err(),
            "a cut proxy must drop open connections"
        );
        proxy.switch(a);
        let mut c4 = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(ask(&mut c4).await.unwrap(), b"ax");
        assert_eq!(proxy.accepted(), 4);
    }
}
