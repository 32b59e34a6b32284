//! The cluster stack of `dev/cluster.sh`: three Kafka brokers (replication factor 3,
//! `min.insync.replicas` 2) and a Redis Cluster of three masters with a replica each, from the
//! `CHATLOG_CLUSTER_*` variables of `dev/cluster.sh env` (with the script's defaults). CQL stays
//! the single node of `dev/stack.sh`.
//!
//! The Redis helpers read the cluster's own view (`CLUSTER NODES` on a plain connection) to find
//! which node serves a slot, and drive a manual failover the way an operator would
//! (`CLUSTER FAILOVER` sent to a replica), waiting on the cluster's state rather than on time.

use std::time::{Duration, Instant};

/// The cluster's Kafka bootstrap servers.
pub fn kafka_bootstrap() -> String {
    std::env::var("CHATLOG_CLUSTER_KAFKA_BOOTSTRAP")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094".to_owned())
}

/// The Redis Cluster's nodes (`redis://127.0.0.1:<port>/`).
pub fn redis_nodes() -> Vec<String> {
    std::env::var("CHATLOG_CLUSTER_REDIS_NODES")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| {
            (16001..=16006)
                .map(|p| format!("redis://127.0.0.1:{p}/"))
                .collect()
        })
}

/// Why a cluster service is unreachable, and what to do.
pub fn hint(service: &str, address: &str) -> String {
    format!(
        "{service} of the cluster stack is not reachable at {address}: start it with \
         `dev/cluster.sh up` (logs in ~/.cache/chatlog/stack/cluster/logs)"
    )
}

/// A [`chatlog_store::RedisConfig`] for the Redis Cluster.
pub fn redis_config() -> chatlog_store::RedisConfig {
    chatlog_store::RedisConfig {
        cluster_nodes: redis_nodes(),
        // A failover takes the cluster's node timeout to be noticed; commands wait it out.
        response_timeout: Duration::from_secs(10),
        ..chatlog_store::RedisConfig::default()
    }
}

/// A cluster connection (commands routed by slot).
pub async fn redis_connection() -> chatlog_store::RedisConnection {
    redis_config()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", hint("Redis", &redis_nodes().join(","))))
}

/// Creates `topic` on the cluster's Kafka with replication factor 3.
pub async fn create_topic(topic: &str, partitions: i32) {
    crate::create_topic_on(&kafka_bootstrap(), topic, partitions, 3).await;
}

/// One node of the cluster, as `CLUSTER NODES` lists it.
pub use chatlog_store::connection::ClusterNode as Node;
/// Parses the text of `CLUSTER NODES`.
pub use chatlog_store::connection::parse_cluster_nodes as parse_nodes;

/// A plain (non-cluster) connection to one node.
pub async fn connect_node(node: &Node) -> redis::aio::MultiplexedConnection {
    connect_port(node.port)
        .await
        .unwrap_or_else(|e| panic!("redis node on {}: {e}", node.port))
}

/// A plain (non-cluster) connection to the node on `port` of 127.0.0.1.
pub async fn connect_port(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// `CLUSTER NODES` as the node on `port` sees it.
pub async fn nodes_seen_by(port: u16) -> redis::RedisResult<Vec<Node>> {
    let mut con = connect_port(port).await?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut con)
        .await?;
    Ok(parse_nodes(&text))
}

/// The first element of `ROLE` (`master`, `slave`) of the node on `port`.
pub async fn role_of(port: u16) -> redis::RedisResult<String> {
    let mut con = connect_port(port).await?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut con).await?;
    match role.first() {
        Some(redis::Value::BulkString(r)) => Ok(String::from_utf8_lossy(r).into_owned()),
        other => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "ROLE",
            format!("{other:?}"),
        ))),
    }
}

/// Waits up to `limit` until `replica` serves `slot` as a master in its own view of the cluster
/// and answers `ROLE` as a master.
async fn until_serves(replica: &Node, slot: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let promoted = nodes_seen_by(replica.port).await.is_ok_and(|seen| {
            seen.iter()
                .any(|n| n.id == replica.id && n.master && n.serves(slot))
        });
        if promoted && role_of(replica.port).await.is_ok_and(|r| r == "master") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica on {} did not take over slot {slot} in {limit:?}",
            replica.port
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ports of [`redis_nodes`].
fn node_ports() -> Vec<u16> {
    redis_nodes()
        .iter()
        .filter_map(|url| url.trim_end_matches('/').rsplit(':').next()?.parse().ok())
        .collect()
}

/// The cluster as one reachable node sees it.
pub async fn nodes() -> Vec<Node> {
    for port in node_ports() {
        if let Ok(seen) = nodes_seen_by(port).await {
            return seen;
        }
    }
    panic!("{}", hint("Redis", &redis_nodes().join(",")))
}

/// The `field:value` lines of what `command` (`INFO replication`, `CLUSTER INFO`) answers on the
/// node on `port`, as a map (values trimmed).
pub async fn fields_of(
    port: u16,
    command: &[&str],
) -> redis::RedisResult<std::collections::BTreeMap<String, String>> {
    let mut con = connect_port(port).await?;
    let text: String = redis::cmd(command[0])
        .arg(&command[1..])
        .query_async(&mut con)
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// What keeps the cluster from being whole, as `port` sees it (`None` once it is): the node
/// answers, says `cluster_state:ok`, sees three live masters serving every slot and, if it is a
/// replica, holds its master's full copy (`master_link_status:up`, no sync in progress).
async fn unsettled_at(port: u16) -> Option<String> {
    let seen = match nodes_seen_by(port).await {
        Ok(seen) => seen,
        Err(e) => return Some(format!("{port}: {e}")),
    };
    let masters: Vec<&Node> = seen.iter().filter(|n| n.master && !n.failed).collect();
    let slots: usize = masters.iter().map(|n| n.slot_count()).sum();
    if masters.len() != 3 || slots != 16384 || seen.iter().any(|n| n.failed) {
        return Some(format!(
            "{port} sees {} live masters serving {slots} slots: {seen:?}",
            masters.len()
        ));
    }
    match fields_of(port, &["CLUSTER", "INFO"]).await {
        Ok(i) if i.get("cluster_state").is_some_and(|s| s == "ok") => {}
        Ok(i) => {
            return Some(format!(
                "{port}: cluster_state {:?}",
                i.get("cluster_state")
            ));
        }
        Err(e) => return Some(format!("{port}: {e}")),
    }
    let me = seen.iter().find(|n| n.port == port)?;
    if me.master {
        return None;
    }
    match fields_of(port, &["INFO", "replication"]).await {
        Ok(i)
            if i.get("master_link_status").is_some_and(|s| s == "up")
                && i.get("master_sync_in_progress").is_some_and(|s| s == "0") =>
        {
            None
        }
        Ok(i) => Some(format!(
            "replica {port}: link {:?}, sync in progress {:?}",
            i.get("master_link_status"),
            i.get("master_sync_in_progress")
        )),
        Err(e) => Some(format!("replica {port}: {e}")),
    }
}

/// Waits up to 90 s until the whole cluster is settled: every node answers and agrees that three
/// masters serve every slot, and every replica holds its master's full copy. A fault test starts
/// from there: a replica still in its first sync (a node just restarted; the master waits a few
/// seconds before a diskless transfer) has no data to take over with, and Redis never promotes
/// it — by design, however long its master stays down.
pub async fn settled() {
    let deadline = Instant::now() + Duration::from_secs(90);
    let ports = node_ports();
    loop {
        let mut why = None;
        for &port in &ports {
            why = unsettled_at(port).await;
            if why.is_some() {
                break;
            }
        }
        let Some(why) = why else { return };
        assert!(
            Instant::now() < deadline,
            "the Redis Cluster did not settle in 90s: {why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The master serving `slot` and one replica of it, once the cluster is [`settled`] (so the
/// replica can take over).
pub async fn master_and_replica(slot: u16) -> (Node, Node) {
    settled().await;
    let all = nodes().await;
    let master = all
        .iter()
        .find(|n| n.master && !n.failed && n.serves(slot))
        .unwrap_or_else(|| panic!("no master serves slot {slot}: {all:?}"))
        .clone();
    let replica = all
        .iter()
        .find(|n| !n.master && !n.failed && n.master_id.as_deref() == Some(master.id.as_str()))
        .unwrap_or_else(|| panic!("master on {} has no replica: {all:?}", master.port))
        .clone();
    (master, replica)
}

/// A manual failover of the master serving `slot`, as an operator does it: `CLUSTER FAILOVER`
/// sent to its replica, which takes over once it has every write of the master (no write is
/// lost; the new master starts a new replication history, so the Redis epoch changes). Returns
/// once the promoted node serves the slot in its own view and answers as master, with the old
/// master's and the new master's ports.
pub async fn failover(slot: u16) -> (u16, u16) {
    let (master, replica) = master_and_replica(slot).await;
    let mut con = connect_node(&replica).await;
    redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async::<()>(&mut con)
        .await
        .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on {}: {e}", replica.port));
    until_serves(&replica, slot, Duration::from_secs(30)).await;
    (master.port, replica.port)
}

/// Session ids whose keys cover every master of the cluster, `per_master` on each (named
/// `<unique(prefix)>_<n>`, so a `<prefix>_*` glob matches them).
pub async fn sessions_on_every_master(prefix: &str, per_master: usize) -> Vec<String> {
    ids_on_every_master(prefix, per_master, chatlog_store::keys::seq).await
}

/// Ids whose key `key(id)` (`keys::seq` for a session, `keys::user` for a user, …) lands on
/// every master of the cluster, `per_master` on each, grouped by master (named
/// `<unique(prefix)>_<n>`, so a `<prefix>_*` glob matches them).
pub async fn ids_on_every_master(
    prefix: &str,
    per_master: usize,
    key: impl Fn(&str) -> String,
) -> Vec<String> {
    settled().await;
    // Masters with slots: a node just demoted may still be listed as a master without any.
    let masters: Vec<Node> = nodes()
        .await
        .into_iter()
        .filter(|n| n.master && !n.failed && !n.slots.is_empty())
        .collect();
    assert!(masters.len() >= 3, "a cluster of 3 masters: {masters:?}");
    let base = crate::unique(prefix);
    let mut by_master: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    let mut i = 0;
    while by_master.len() < masters.len() || by_master.values().any(|s| s.len() < per_master) {
        assert!(
            i < 1_000_000,
            "no {per_master} ids on every master after {i} ids: {masters:?}"
        );
        let id = format!("{base}_{i}");
        i += 1;
        let slot = chatlog_store::keys::slot(&key(&id));
        let master = masters
            .iter()
            .find(|m| m.serves(slot))
            .expect("a master per slot");
        let on = by_master.entry(master.port).or_default();
        if on.len() < per_master {
            on.push(id);
        }
    }
    by_master.into_values().flatten().collect()
}

/// The master that serves `key`'s slot, as the cluster sees it now.
pub async fn master_of(key: &str) -> Node {
    let slot = chatlog_store::keys::slot(key);
    let all = nodes().await;
    all.iter()
        .find(|n| n.master && !n.failed && n.serves(slot))
        .unwrap_or_else(|| panic!("no master serves slot {slot} of {key}: {all:?}"))
        .clone()
}

/// The first port of the cluster's Redis nodes (node `N` listens on `first + N - 1`).
fn first_redis_port() -> u16 {
    std::env::var("CHATLOG_CLUSTER_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(16001)
}

/// A master stopped by [`stop_master`].
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The stopped master.
    pub master: Node,
    /// Its replica, which takes its slots over.
    pub replica: Node,
}

/// Stops the master serving `slot` at once (`SHUTDOWN NOSAVE`: the nodes keep no data on disk,
/// so this is a crash as far as the cluster is concerned). Its replica takes over once the others
/// have not heard from it for the cluster's node timeout ([`until_promoted`]).
pub async fn stop_master(slot: u16) -> Stopped {
    let (master, replica) = master_and_replica(slot).await;
    let mut con = connect_node(&master).await;
    // The server closes the connection instead of answering.
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut con)
        .await;
    Stopped { master, replica }
}

/// Waits until the replica of a [`stop_master`] serves `slot` as a master, in its own view.
pub async fn until_promoted(stopped: &Stopped, slot: u16) {
    until_serves(&stopped.replica, slot, Duration::from_secs(60)).await;
}

/// Starts a [`stop_master`]'s node again (`dev/cluster.sh start-node`): it rejoins as the new
/// master's replica. Returns once the cluster is [`settled`] (the node holds a full copy).
pub async fn restart(stopped: &Stopped) {
    let ordinal = stopped.master.port - first_redis_port() + 1;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dev/cluster.sh");
    let status = std::process::Command::new(script)
        .args(["start-node", "redis", &ordinal.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        status.success(),
        "{script} start-node redis {ordinal}: {status}"
    );
    settled().await;
}

/// The process id of a node (`INFO server`).
pub async fn pid_of(node: &Node) -> u32 {
    let mut con = connect_node(node).await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("INFO server on {}: {e}", node.port));
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO server of {}", node.port))
}
