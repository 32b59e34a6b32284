//! One Redis connection type for every caller: a single server (with or without replicas behind
//! Sentinel or a proxy) or a Redis Cluster ([`crate::RedisConfig::cluster_nodes`]).
//!
//! # Why one type
//!
//! Every chatlog key of a session carries the session's hash tag ([`crate::keys`]), so all of a
//! session's keys live in one Cluster slot and each script touches one slot. What differs in a
//! Cluster is the *batching across sessions*: one server takes the seq fast path of many sessions
//! in one `EVALSHA`, or the window appends of a whole Kafka batch in one pipeline, while a Cluster
//! refuses a call or a pipeline that spans slots (`CROSSSLOT`). [`RedisConnection::is_cluster`]
//! tells the batching code which to do, and [`by_slot`] runs the per-slot groups concurrently
//! (the cluster client multiplexes each node's connection, so concurrent groups bound for one node
//! share its socket, as a pipeline would).
//!
//! `MOVED`/`ASK` redirections, topology refreshes and a master failover are the cluster client's
//! (redis-rs `cluster-async`); what a failover does to the data (an older copy of a slot) is the
//! epoch's ([`crate::epoch`]): each script reads the epoch of the node that serves its slot.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A multiplexed connection to one Redis server or to a Redis Cluster. Cheap to clone (clones
/// share the connection); reconnects by itself in both modes.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server (redis-rs `ConnectionManager`).
    Single(redis::aio::ConnectionManager),
    /// A Redis Cluster: commands routed by slot, `MOVED`/`ASK` followed, and a client that is
    /// rebuilt when it keeps failing ([`ClusterHandle`]).
    Cluster(ClusterHandle),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl From<redis::aio::ConnectionManager> for RedisConnection {
    fn from(one: redis::aio::ConnectionManager) -> Self {
        RedisConnection::Single(one)
    }
}

/// A redis-rs `cluster-async` connection that is replaced by a new one, built from the seed
/// nodes, when its commands have kept failing with timeouts or I/O errors for `patience`.
///
/// # Why
///
/// The cluster client reads the slots again on `MOVED`, on a refused connection and on a lost
/// one, but not on a timeout, and its slot refresh can itself hang (the cluster chaos run: a
/// consumer whose refresh began while a master was being killed timed out on that master's
/// slots for minutes after its replica had taken over). A master that hangs instead of dying
/// (`SIGSTOP`, a stalled VM) answers nothing, so every command to its slots times out and the
/// client never learns about the failover (`tests/cluster.rs`). A new client asks the live
/// nodes for the slots, so after a failover it reaches the new master; before the failover
/// completes it may still name the old one, and the next `patience` of failures rebuilds again.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: std::sync::Arc<ClusterInner>,
}

struct ClusterInner {
    client: redis::cluster::ClusterClient,
    current: std::sync::RwLock<redis::cluster_async::ClusterConnection>,
    health: std::sync::Mutex<Health>,
    /// How long commands may keep failing before the client is rebuilt (also the least time
    /// between two rebuilds).
    patience: Duration,
    /// Longest wait for a new client (redis-rs' connection setup can hang on a hung node).
    connect_timeout: Duration,
}

#[derive(Default)]
struct Health {
    /// When the current run of failures (timeouts, I/O errors) began.
    failing_since: Option<Instant>,
    /// The latest failure.
    last_failure: Option<Instant>,
    /// A rebuild is under way.
    rebuilding: bool,
    /// When the last rebuild ended.
    rebuilt_at: Option<Instant>,
    /// Rebuilds done.
    rebuilds: u64,
}

impl ClusterHandle {
    /// Connects `client` (within `connect_timeout`, which redis-rs does not bound by itself).
    pub async fn connect(
        client: redis::cluster::ClusterClient,
        patience: Duration,
        connect_timeout: Duration,
    ) -> redis::RedisResult<ClusterHandle> {
        let first = connect_within(&client, connect_timeout).await?;
        Ok(ClusterHandle {
            inner: std::sync::Arc::new(ClusterInner {
                client,
                current: std::sync::RwLock::new(first),
                health: std::sync::Mutex::new(Health::default()),
                patience,
                connect_timeout,
            }),
        })
    }

    /// Clients built after the first (for tests and operators).
    pub fn rebuilds(&self) -> u64 {
        self.health().rebuilds
    }

    fn current(&self) -> redis::cluster_async::ClusterConnection {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes how a command ended; starts a rebuild once failures have kept coming for
    /// `patience`. Successes do not end a run of failures: while one master hangs, commands to
    /// the others succeed, and only the hung one's slots fail — a quiet `patience` without any
    /// failure does.
    fn observe<T>(&self, result: &redis::RedisResult<T>) {
        let Err(e) = result else {
            return;
        };
        let unreachable = e.is_timeout()
            || e.is_io_error()
            || e.is_connection_dropped()
            || e.kind() == redis::ErrorKind::ClusterConnectionNotFound;
        if !unreachable {
            return;
        }
        let now = Instant::now();
        let patience = self.inner.patience;
        let mut health = self.health();
        let quiet_before = health
            .last_failure
            .is_none_or(|at| now.duration_since(at) >= patience);
        if quiet_before {
            health.failing_since = Some(now);
        }
        health.last_failure = Some(now);
        let since = *health.failing_since.get_or_insert(now);
        let rested = health
            .rebuilt_at
            .is_none_or(|at| now.duration_since(at) >= patience);
        if health.rebuilding || now.duration_since(since) < patience || !rested {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        health.rebuilding = true;
        drop(health);
        let this = self.clone();
        runtime.spawn(async move {
            let built = connect_within(&this.inner.client, this.inner.connect_timeout).await;
            let mut health = this.health();
            health.rebuilding = false;
            health.rebuilt_at = Some(Instant::now());
            match built {
                Ok(fresh) => {
                    *this
                        .inner
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                    health.rebuilds += 1;
                    health.failing_since = None;
                    health.last_failure = None;
                    tracing::warn!(
                        rebuilds = health.rebuilds,
                        "redis cluster client rebuilt after its commands kept failing"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis cluster client rebuild failed; retrying");
                }
            }
        });
    }
}

async fn connect_within(
    client: &redis::cluster::ClusterClient,
    limit: Duration,
) -> redis::RedisResult<redis::cluster_async::ClusterConnection> {
    match tokio::time::timeout(limit, client.get_async_connection()).await {
        Ok(connected) => connected,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connecting to the redis cluster timed out",
        ))),
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => Box::pin(async move {
                let result = c.current().req_packed_command(cmd).await;
                c.observe(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => Box::pin(async move {
                let result = c.current().req_packed_commands(cmd, offset, count).await;
                c.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.current().get_db(),
        }
    }
}

/// Whether a connection reaches a Redis Cluster, where one call or pipeline must stay within one
/// slot. Implemented for the connection types chatlog's generic Redis code is called with.
pub trait Topology {
    /// `true` for a Redis Cluster.
    fn is_cluster(&self) -> bool;
}

impl Topology for RedisConnection {
    fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl Topology for redis::aio::ConnectionManager {
    fn is_cluster(&self) -> bool {
        false
    }
}

/// What chatlog's generic Redis code takes: a connection that knows its [`Topology`] and can be
/// cloned for concurrent per-slot calls ([`RedisConnection`], or a plain `ConnectionManager` in
/// tests and tools).
pub trait RedisLike: ConnectionLike + Topology + Clone + Send + Sync {}

impl<C: ConnectionLike + Topology + Clone + Send + Sync> RedisLike for C {}

/// Runs `run` once per group of the positions `0..n` — one group of them all on a single server
/// (one call, as before), one group per distinct slot on a Cluster (`slot_of(i)`, asked only
/// there), those concurrently — and returns the outputs in position order. `run` gets a
/// connection of its own and the positions of its group (ascending) and must return one output
/// per position.
pub async fn by_slot<C, T, E, F, Fut>(
    con: &C,
    n: usize,
    slot_of: impl Fn(usize) -> u16,
    run: F,
) -> Result<Vec<T>, E>
where
    C: Topology + Clone,
    F: Fn(C, Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    E: From<redis::RedisError>,
{
    let groups = slot_groups(con.is_cluster(), n, slot_of);
    if groups.len() == 1 {
        let (_, at) = groups.into_iter().next().expect("one group");
        let out = run(con.clone(), at).await?;
        return check_count(out, n);
    }
    let calls = groups.into_values().map(|at| {
        let fut = run(con.clone(), at.clone());
        async move { fut.await.map(|out| (at, out)) }
    });
    let mut placed: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (at, out) in futures::future::try_join_all(calls).await? {
        if out.len() != at.len() {
            return Err(count_error(out.len(), at.len()).into());
        }
        for (i, t) in at.into_iter().zip(out) {
            placed[i] = Some(t);
        }
    }
    placed
        .into_iter()
        .map(|t| t.ok_or_else(|| count_error(0, 1).into()))
        .collect()
}

/// The positions `0..n` grouped by `slot_of` (one group of them all unless `cluster`); no
/// positions are one empty group.
fn slot_groups(
    cluster: bool,
    n: usize,
    slot_of: impl Fn(usize) -> u16,
) -> BTreeMap<u16, Vec<usize>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    if !cluster || n == 0 {
        groups.insert(0, (0..n).collect());
        return groups;
    }
    for i in 0..n {
        groups.entry(slot_of(i)).or_default().push(i);
    }
    groups
}

fn check_count<T, E: From<redis::RedisError>>(out: Vec<T>, n: usize) -> Result<Vec<T>, E> {
    if out.len() == n {
        Ok(out)
    } else {
        Err(count_error(out.len(), n).into())
    }
}

fn count_error(got: usize, wanted: usize) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "replies of a slot group",
        format!("{got} replies for {wanted} commands"),
    ))
}

/// One node of a Redis Cluster, as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id.
    pub id: String,
    /// Its client address, `host:port`.
    pub address: String,
    /// Its client port.
    pub port: u16,
    /// Whether it is a master (else a replica).
    pub master: bool,
    /// Its master's id (replicas only).
    pub master_id: Option<String>,
    /// The slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Whether the cluster marks it failed (`fail` or `fail?`).
    pub failed: bool,
}

impl ClusterNode {
    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(a, b)| usize::from(b.saturating_sub(a)) + 1)
            .sum()
    }
}

/// Parses the text of `CLUSTER NODES` (lines it cannot read are skipped).
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let address = f[1].split('@').next()?.to_owned();
            let port = address.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_owned(),
                address,
                port,
                master: flags.contains(&"master"),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
                failed: flags.iter().any(|f| f.starts_with("fail")),
            })
        })
        .collect()
}

impl crate::RedisConfig {
    /// One connection per node that holds keys: the server itself, or on a Redis Cluster every
    /// master that serves slots (as `con`, a connection to it, lists them), each reached with
    /// this config's password. For what acts on one node's keyspace only, such as `SCAN`.
    pub async fn connect_masters(
        &self,
        con: &RedisConnection,
    ) -> crate::Result<Vec<RedisConnection>> {
        if !con.is_cluster() {
            return Ok(vec![con.clone()]);
        }
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut con.clone())
            .await
            .map_err(crate::Error::redis("read CLUSTER NODES"))?;
        let mut masters = Vec::new();
        for node in parse_cluster_nodes(&text) {
            if node.master && !node.failed && !node.slots.is_empty() {
                masters.push(self.connect_node(&node.address).await?);
            }
        }
        Ok(masters)
    }

    /// The URL of one node of this config's Redis Cluster (`host:port`, as `CLUSTER NODES` lists
    /// it): `rediss://` when the seed nodes use TLS.
    pub fn node_url(&self, address: &str) -> String {
        let tls = self
            .cluster_nodes
            .iter()
            .any(|n| n.starts_with("rediss://"));
        format!("{}://{address}/", if tls { "rediss" } else { "redis" })
    }

    /// A plain connection to one node of this config's Redis Cluster (see [`node_url`](Self::node_url)),
    /// with this config's password and timeouts.
    pub async fn connect_node(&self, address: &str) -> crate::Result<RedisConnection> {
        let one = crate::RedisConfig {
            url: self.node_url(address),
            cluster_nodes: Vec::new(),
            ..self.clone()
        };
        Ok(RedisConnection::Single(one.connect_single().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
a1 127.0.0.1:16001@26001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:16004@26004 slave a1 0 1700000000000 1 connected
c3 127.0.0.1:16002@26002 master,fail? - 0 0 2 connected 5461-10922 12000 [93->-b2]
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].master && nodes[0].serves(0) && nodes[0].serves(5460));
        assert!(!nodes[0].serves(5461));
        assert_eq!(nodes[0].address, "127.0.0.1:16001");
        assert_eq!(nodes[1].master_id.as_deref(), Some("a1"));
        assert!(!nodes[1].master && nodes[1].slots.is_empty());
        assert_eq!(nodes[2].slots, vec![(5461, 10922), (12000, 12000)]);
        assert!(nodes[2].failed);
        assert_eq!(nodes[2].port, 16002);
    }

    #[derive(Clone)]
    struct Fake {
        cluster: bool,
        calls: std::sync::Arc<std::sync::Mutex<Vec<Vec<usize>>>>,
    }

    impl Topology for Fake {
        fn is_cluster(&self) -> bool {
            self.cluster
        }
    }

    /// Runs `by_slot` over `slots`, each output naming its position; returns the outputs and the
    /// groups `run` was called with.
    fn run_by_slot(cluster: bool, slots: &[u16]) -> (Vec<String>, Vec<Vec<usize>>) {
        let fake = Fake {
            cluster,
            calls: Default::default(),
        };
        let out = futures::executor::block_on(by_slot(
            &fake,
            slots.len(),
            |i| slots[i],
            |con, at| async move {
                con.calls.lock().unwrap().push(at.clone());
                Ok::<_, redis::RedisError>(at.iter().map(|i| format!("#{i}")).collect())
            },
        ))
        .unwrap();
        let mut calls = fake.calls.lock().unwrap().clone();
        calls.sort();
        (out, calls)
    }

    #[test]
    fn by_slot_puts_every_reply_back_in_place() {
        let slots = [7, 3, 7, 9, 3];
        let want: Vec<String> = (0..5).map(|i| format!("#{i}")).collect();
        assert_eq!(
            run_by_slot(false, &slots),
            (want.clone(), vec![vec![0, 1, 2, 3, 4]])
        );
        assert_eq!(
            run_by_slot(true, &slots),
            (want, vec![vec![0, 2], vec![1, 4], vec![3]])
        );
        let short = futures::executor::block_on(by_slot(
            &Fake {
                cluster: true,
                calls: Default::default(),
            },
            slots.len(),
            |i| slots[i],
            |_, at| async move { Ok::<_, redis::RedisError>(vec![0; at.len() - 1]) },
        ));
        assert!(
            short.is_err(),
            "a group answering short is an error, not a shifted reply"
        );
    }

    #[test]
    fn one_group_on_a_single_server_one_per_slot_on_a_cluster() {
        let slots = [7, 3, 7, 9, 3];
        let single = slot_groups(false, slots.len(), |i| slots[i]);
        assert_eq!(
            single.into_values().collect::<Vec<_>>(),
            vec![vec![0, 1, 2, 3, 4]]
        );
        let cluster = slot_groups(true, slots.len(), |i| slots[i]);
        assert_eq!(
            cluster.into_iter().collect::<Vec<_>>(),
            vec![(3, vec![1, 4]), (7, vec![0, 2]), (9, vec![3])]
        );
        assert_eq!(slot_groups(true, 0, |_| unreachable!()).len(), 1);
    }
}
