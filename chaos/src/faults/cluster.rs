//! The cluster stack's faults: `broker_kill` (kill -9 of a partition leader broker, then back)
//! and `redis_master_kill` (kill -9 of a Redis master: its replica takes over; then the old node
//! back, as a replica). Both act on the processes `dev/cluster.sh` started (pid files in its
//! `run/` folder, checked against the process's command line) and bring them back through it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chatlog::cluster::{Node, fields_of as fields, nodes_seen_by, role_of};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::ctx::Ctx;
use crate::stack::{self, ClusterStack};

/// One partition of the topic as the cluster's metadata shows it.
#[derive(Debug, Clone)]
struct PartitionState {
    id: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

/// The topic's partitions (leader, replicas, ISR), from a fresh client.
async fn partitions(kafka: &str, topic: &str) -> anyhow::Result<Vec<PartitionState>> {
    let (kafka, topic) = (kafka.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PartitionState>> {
        let probe: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .create()?;
        let m = probe
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        let t = m
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .with_context(|| format!("no metadata for {topic}"))?;
        Ok(t.partitions()
            .iter()
            .map(|p| PartitionState {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
            })
            .collect())
    })
    .await?
}

/// Waits (up to `limit`) until `ok` holds for the topic's partitions; returns them.
async fn wait_partitions(
    kafka: &str,
    topic: &str,
    limit: Duration,
    what: &str,
    ok: impl Fn(&[PartitionState]) -> bool,
) -> anyhow::Result<Vec<PartitionState>> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match partitions(kafka, topic).await {
            Ok(p) if ok(&p) => return Ok(p),
            Ok(p) => format!("{p:?}"),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}; last metadata: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pid in `<cluster dir>/run/<name>.pid`, checked to be a process whose command line holds
/// every one of `marks`.
fn pid_of(cluster: &ClusterStack, name: &str, marks: &[&str]) -> anyhow::Result<u32> {
    let file = cluster.dir.join(format!("run/{name}.pid"));
    let pid: u32 = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", file.display()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("{name} (pid {pid} from {}) is not running", file.display()))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for mark in marks {
        anyhow::ensure!(
            cmdline.contains(mark),
            "pid {pid} from {} is not the cluster's {name} (command line {cmdline:?} lacks {mark:?})",
            file.display()
        );
    }
    Ok(pid)
}

/// `broker_kill`: kill -9 of the broker leading a random partition of the topic; once every
/// partition has a live leader again, `broker_down` later, `dev/cluster.sh up kafka` (which
/// starts the brokers that are not running), then back in the ISR of every partition.
pub(super) async fn broker_kill(ctx: &Ctx, rng: &mut StdRng) -> anyhow::Result<String> {
    let cluster = ctx
        .stack
        .cluster
        .as_ref()
        .context("broker_kill: not on the cluster stack")?;
    let (kafka, topic, events) = (&ctx.stack.kafka, &ctx.topic, &ctx.events);
    // Every replica in sync first: a broker killed while another one catches up would leave a
    // partition below min.insync.replicas.
    wait_partitions(
        kafka,
        topic,
        Duration::from_secs(120),
        "broker_kill: not every replica of the topic was in sync",
        |ps| {
            ps.iter()
                .all(|p| p.leader >= 0 && p.isr.len() == p.replicas.len())
        },
    )
    .await?;
    let before = partitions(kafka, topic).await?;
    let partition = before.choose(rng).context("the topic has no partitions")?;
    let broker = partition.leader;
    let led: Vec<i32> = before
        .iter()
        .filter(|p| p.leader == broker)
        .map(|p| p.id)
        .collect();
    let name = format!("kafka-{broker}");
    let pid = pid_of(
        cluster,
        &name,
        &["kafka.Kafka", &cluster.dir.to_string_lossy()],
    )?;
    stack::signal(pid, "-KILL")?;
    let killed = events.now();
    events.log(format!(
        "broker_kill: kill -9 of broker {broker} (pid {pid}, port {}), leader of partition {} \
         and of {led:?}",
        cluster.kafka_port as i32 + broker - 1,
        partition.id
    ));
    let moved = wait_partitions(
        kafka,
        topic,
        Duration::from_secs(90),
        "broker_kill: the partitions of the killed broker got no new leader",
        |ps| ps.iter().all(|p| p.leader >= 0 && p.leader != broker),
    )
    .await?;
    let moved_at = events.now();
    let new_leaders: BTreeMap<i32, i32> = moved
        .iter()
        .filter(|p| led.contains(&p.id))
        .map(|p| (p.id, p.leader))
        .collect();
    tokio::time::sleep(ctx.opts.broker_down).await;
    let restart = events.now();
    ctx.stack.cluster_script(&["up", "kafka"]).await?;
    let started = events.now();
    wait_partitions(
        kafka,
        topic,
        Duration::from_secs(180),
        "broker_kill: the restarted broker did not rejoin the ISR of every partition",
        |ps| {
            ps.iter().all(|p| {
                p.leader >= 0 && p.isr.contains(&broker) && p.isr.len() == p.replicas.len()
            })
        },
    )
    .await?;
    let in_sync = events.now();
    Ok(format!(
        "kill -9 of broker {broker} (pid {pid}) at {killed:.1}s, leader of partitions {led:?}; \
         new leaders (partition → broker) {new_leaders:?} at {moved_at:.1}s ({:.1}s); \
         `dev/cluster.sh up kafka` at {restart:.1}s, started in {:.1}s, back in every ISR at \
         {in_sync:.1}s",
        moved_at - killed,
        started - restart
    ))
}

/// The cluster as the first reachable node sees it.
async fn nodes(cluster: &ClusterStack) -> anyhow::Result<Vec<Node>> {
    let mut last = None;
    for i in 0..cluster.redis_nodes.len() {
        match nodes_seen_by(cluster.redis_port + i as u16).await {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no Redis node")))
}

/// Polls `check` every 100 ms until it holds, up to `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, check: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?} ({last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `redis_master_kill`: kill -9 of a random master that has a live replica; the replica takes
/// over once the cluster marks the master failed (node timeout 5 s) — recorded as a Redis loss
/// window (replication is asynchronous: the master's last writes may not have reached it); then
/// `dev/cluster.sh start-node redis N` starts the old node again with its cluster identity, and
/// it rejoins as a replica of the new master and syncs.
pub(super) async fn redis_master_kill(
    ctx: &Ctx,
    rng: &mut StdRng,
    began: f64,
) -> anyhow::Result<String> {
    let cluster = ctx
        .stack
        .cluster
        .as_ref()
        .context("redis_master_kill: not on the cluster stack")?;
    let events = &ctx.events;
    let all = nodes(cluster).await?;
    let pairs: Vec<(Node, Node)> = all
        .iter()
        .filter(|m| m.master && !m.failed && !m.slots.is_empty())
        .filter_map(|m| {
            let replica = all.iter().find(|r| {
                !r.master && !r.failed && r.master_id.as_deref() == Some(m.id.as_str())
            })?;
            Some((m.clone(), replica.clone()))
        })
        .collect();
    let (master, replica) = pairs
        .choose(rng)
        .cloned()
        .with_context(|| format!("redis_master_kill: no master with a live replica: {all:?}"))?;
    let ordinal = master
        .port
        .checked_sub(cluster.redis_port)
        .map(|o| o + 1)
        .context("a master outside the cluster's ports")?;
    let port_arg = master.port.to_string();
    let pid = pid_of(
        cluster,
        &format!("redis-{ordinal}"),
        &["redis-server", &port_arg],
    )?;
    // The replica has every write the master had a moment ago (asynchronous replication).
    let lag = {
        let m = fields(master.port, &["INFO", "replication"]).await?;
        let r = fields(replica.port, &["INFO", "replication"]).await?;
        let get = |i: &BTreeMap<String, String>, k: &str| -> i64 {
            i.get(k).and_then(|v| v.parse().ok()).unwrap_or(-1)
        };
        (get(&m, "master_repl_offset") - get(&r, "slave_repl_offset")).max(0)
    };
    stack::signal(pid, "-KILL")?;
    let killed = events.now();
    events.log(format!(
        "redis_master_kill: kill -9 of master redis-{ordinal} (port {}, pid {pid}, slots {:?}); \
         its replica on {} was {lag} bytes of replication stream behind a moment before",
        master.port, master.slots, replica.port
    ));
    let replica_port = replica.port;
    let slots = master.slots.clone();
    let replica_id = replica.id.clone();
    wait_until(
        Duration::from_secs(60),
        "redis_master_kill: the replica did not take over",
        || {
            let (slots, replica_id) = (slots.clone(), replica_id.clone());
            async move {
                let seen = nodes_seen_by(replica_port).await?;
                let serves = seen.iter().any(|n| {
                    n.id == replica_id && n.master && slots.iter().all(|&(a, _)| n.serves(a))
                });
                let ok = fields(replica_port, &["CLUSTER", "INFO"])
                    .await?
                    .get("cluster_state")
                    .is_some_and(|s| s == "ok");
                Ok(serves && ok && role_of(replica_port).await? == "master")
            }
        },
    )
    .await?;
    let promoted = events.now();
    events.redis_loss(killed, promoted);
    events.log(format!(
        "redis_master_kill: the replica on {replica_port} serves slots {slots:?} since \
         {promoted:.1}s ({:.1}s after the kill)",
        promoted - killed
    ));
    let ordinal_arg = ordinal.to_string();
    ctx.stack
        .cluster_script(&["start-node", "redis", &ordinal_arg])
        .await?;
    let restarted = events.now();
    let old_port = master.port;
    wait_until(
        Duration::from_secs(90),
        "redis_master_kill: the old master did not rejoin as a synced replica",
        || async move {
            if role_of(old_port).await? != "slave" {
                return Ok(false);
            }
            let i = fields(old_port, &["INFO", "replication"]).await?;
            Ok(i.get("master_link_status").is_some_and(|s| s == "up")
                && i.get("master_sync_in_progress").is_some_and(|s| s == "0")
                && i.get("master_port")
                    .is_some_and(|p| *p == replica_port.to_string()))
        },
    )
    .await?;
    let rejoined = events.now();
    Ok(format!(
        "kill -9 of master redis-{ordinal} (port {old_port}, pid {pid}, slots {slots:?}) at \
         {killed:.1}s ({:.1}s after the fault began; replica {lag} bytes behind just before); \
         replica on {replica_port} master of those slots at {promoted:.1}s ({:.1}s); \
         `dev/cluster.sh start-node redis {ordinal}` at {restarted:.1}s; rejoined as its \
         synced replica at {rejoined:.1}s",
        killed - began,
        promoted - killed
    ))
}
