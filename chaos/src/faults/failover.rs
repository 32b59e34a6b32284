//! `failover`: a real replica promoted while it lags, then a lossless switch back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::ctx::Ctx;
use crate::proxy::Proxy;

/// A `redis-server` replica started by the harness, killed on drop.
struct Replica {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Replica {
    fn start(
        port: u16,
        of: SocketAddr,
        dir: &std::path::Path,
        n: usize,
    ) -> anyhow::Result<Replica> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        anyhow::ensure!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "failover: port {port} (CHATLOG_REDIS_REPLICA_PORT) is taken"
        );
        let data: PathBuf = dir.join(format!("redis-replica-{n}"));
        std::fs::create_dir_all(&data)?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--replicaof", &of.ip().to_string(), &of.port().to_string()])
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
            .arg(data.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start redis-server (the replica)")?;
        Ok(Replica { child, addr })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `REPLICAOF NO ONE` to the stack's Redis when dropped armed: it is never left a replica of
/// a replica that is gone (the harness failed during the switch back).
struct PrimaryGuard {
    addr: SocketAddr,
    armed: bool,
}

impl Drop for PrimaryGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // It may be loading the replica's dataset (LOADING errors) for a while: keep asking.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let done = redis::Client::open(format!("redis://{}/", self.addr))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                .and_then(|mut con| {
                    redis::cmd("REPLICAOF")
                        .arg("NO")
                        .arg("ONE")
                        .query::<()>(&mut con)
                });
            if done.is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Switches the client proxy back to the stack's Redis when dropped armed: clients are never
/// left on a replica the harness is about to kill (the failover failed half-way).
struct ProxyBack {
    proxy: Proxy,
    primary: SocketAddr,
    armed: bool,
}

impl Drop for ProxyBack {
    fn drop(&mut self) {
        if self.armed {
            self.proxy.switch(self.primary);
        }
    }
}

async fn direct(addr: SocketAddr) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .with_context(|| format!("connect to {addr}: timed out"))??)
}

/// `INFO <section>` as a map.
async fn info(
    con: &mut redis::aio::MultiplexedConnection,
    section: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query_async(con).await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// Waits until `con` is a replica whose link is up and whose initial sync is done.
async fn wait_synced(
    con: &mut redis::aio::MultiplexedConnection,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // While it loads the dataset it may answer with errors: not synced yet.
        let last = match info(con, "replication").await {
            Ok(i)
                if i.get("master_link_status").map(String::as_str) == Some("up")
                    && i.get("master_sync_in_progress").map(String::as_str) == Some("0") =>
            {
                return Ok(());
            }
            Ok(i) => format!("{i:?}"),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the replica did not sync within {limit:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn offset(i: &BTreeMap<String, String>, key: &str) -> i64 {
    i.get(key).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

/// `failover`:
/// 1. a replica (`redis-server` on `CHATLOG_REDIS_REPLICA_PORT`) of the stack's Redis,
///    replicating through a link proxy; wait until its initial sync is done, then
///    `failover_sync` of replication under load;
/// 2. the link is cut (the replica's reconnects are refused) and the primary takes writes for
///    `failover_lag` that the replica never sees;
/// 3. `REPLICAOF NO ONE` on the replica, and the client proxy switches to it: every client's
///    connection is dropped and reconnects to the promoted replica, which is `failover_lag` behind
///    (seq counters, idempotency records, windows);
/// 4. `failover_serve` later, the stack's Redis is put back as the primary without losing
///    anything: it becomes a replica of the promoted one (full sync), writes are paused there
///    (`CLIENT PAUSE WRITE`) until both have the same replication offset, the stack's Redis is
///    promoted, the client proxy switches back and the replica is killed.
pub(super) async fn failover(ctx: &Ctx, n: usize) -> anyhow::Result<String> {
    let events = &ctx.events;
    let client_proxy = ctx
        .proxy
        .as_ref()
        .context("failover: the clients' Redis proxy is not running (a cluster run)")?;
    let primary = ctx.stack.redis_addr()?;
    let mut pc = direct(primary).await?;
    // A replica's full sync starts at once rather than after Redis's default 5 s delay.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg(0)
        .query_async(&mut pc)
        .await?;
    let link = Proxy::start(0, primary).await?;
    let replica = Replica::start(
        ctx.stack.replica_port,
        link.local_addr(),
        &ctx.opts.run_dir,
        n,
    )?;
    let mut rc = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match direct(replica.addr).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    wait_synced(&mut rc, Duration::from_secs(30)).await?;
    let synced = events.now();
    tokio::time::sleep(ctx.opts.failover_sync).await;

    // 2. Partition the replica from the primary.
    let cut_at = events.now();
    link.cut();
    tokio::time::sleep(ctx.opts.failover_lag).await;

    // 3. Promote the lagging replica; every client now talks to it.
    let primary_offset = offset(&info(&mut pc, "replication").await?, "master_repl_offset");
    let replica_offset = offset(&info(&mut rc, "replication").await?, "slave_repl_offset");
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut rc)
        .await?;
    client_proxy.switch(replica.addr);
    let mut proxy_back = ProxyBack {
        proxy: client_proxy.clone(),
        primary,
        armed: true,
    };
    let switched = events.now();
    events.redis_loss(cut_at, switched);
    events.log(format!(
        "failover: replica {} promoted {:.1}s after its link was cut, {} bytes of replication \
         stream behind the primary; every client switched to it",
        replica.addr,
        switched - cut_at,
        primary_offset - replica_offset
    ));
    tokio::time::sleep(ctx.opts.failover_serve).await;

    // 4. Switch back without losing anything.
    let mut guard = PrimaryGuard {
        addr: primary,
        armed: true,
    };
    let _: () = redis::cmd("REPLICAOF")
        .arg(replica.addr.ip().to_string())
        .arg(replica.addr.port())
        .query_async(&mut pc)
        .await?;
    wait_synced(&mut pc, Duration::from_secs(60)).await?;
    let paused = events.now();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut rc)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let master = info(&mut rc, "replication")
            .await
            .map(|i| offset(&i, "master_repl_offset"));
        let copy = info(&mut pc, "replication")
            .await
            .map(|i| offset(&i, "slave_repl_offset"));
        let (master, copy) = (master.unwrap_or(i64::MAX), copy.unwrap_or(-1));
        if copy >= master {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "failover: the stack's Redis did not catch up with the promoted replica ({copy} < {master})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut pc)
        .await?;
    guard.armed = false;
    client_proxy.switch(primary);
    proxy_back.armed = false;
    let back = events.now();
    drop(replica); // still paused: nothing more is written there
    Ok(format!(
        "replica synced at {synced:.1}s; link cut at {cut_at:.1}s; promoted and clients switched \
         at {switched:.1}s ({} bytes of replication stream lost); switched back to the stack's \
         Redis at {back:.1}s (writes paused {:.1} ms)",
        primary_offset - replica_offset,
        (back - paused) * 1000.0
    ))
}
