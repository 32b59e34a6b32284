//! The stack under test: its addresses (the `CHATLOG_*` variables of `dev/stack.sh env`), the
//! checks that it is up, and the service-level faults (`dev/stack.sh down|up`, SIGSTOP/SIGCONT of
//! Cassandra, FLUSHALL).
//!
//! The harness restarts Kafka and Redis through `dev/stack.sh` **with the current environment**, so
//! `CHATLOG_STACK_DIR` and the `CHATLOG_*_PORT` variables select which stack it acts on. Before
//! anything it checks that those variables and the addresses it tests (`CHATLOG_KAFKA_BOOTSTRAP`,
//! `CHATLOG_CQL_NODES`, `CHATLOG_REDIS_URL`) name the same stack: restarting one Kafka while
//! testing another would be a meaningless (and, on a shared machine, harmful) run.
//!
//! On the cluster stack ([`ClusterStack`], `dev/cluster.sh`) Kafka and Redis are the cluster's
//! (`CHATLOG_CLUSTER_KAFKA_BOOTSTRAP`, `CHATLOG_CLUSTER_REDIS_NODES`, checked against
//! `CHATLOG_CLUSTER_*_PORT` the same way) and CQL is still `dev/stack.sh`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Where the stack is and how to drive it.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// CQL contact points.
    pub cql_nodes: Vec<String>,
    /// The stack's Redis (`CHATLOG_REDIS_URL`): what `dev/stack.sh` restarts and snapshots.
    pub redis_url: String,
    /// The URL the run's Redis clients use instead (the harness's proxy, see [`crate::proxy`]);
    /// `None`: the stack's Redis itself.
    pub client_redis_url: Option<String>,
    /// Port of the replica a `failover` starts (`CHATLOG_REDIS_REPLICA_PORT`, default the
    /// stack's Redis port + 1).
    pub replica_port: u16,
    /// Port of the client proxy (`CHATLOG_CHAOS_REDIS_PROXY_PORT`, default 0: any free port).
    pub proxy_port: u16,
    /// `dev/stack.sh`.
    pub script: PathBuf,
    /// The stack's state folder (`CHATLOG_STACK_DIR`, default `~/.cache/chatlog/stack`).
    pub dir: PathBuf,
    /// The cluster stack of `dev/cluster.sh`, when the run is on it: Kafka ([`Stack::kafka`]) is
    /// then the cluster's, and every Redis client connects to the Redis Cluster.
    pub cluster: Option<ClusterStack>,
}

/// The cluster stack of `dev/cluster.sh` (its `CHATLOG_CLUSTER_*` variables and port defaults).
#[derive(Debug, Clone)]
pub struct ClusterStack {
    /// The Redis Cluster's nodes (`redis://127.0.0.1:<port>/`), all six.
    pub redis_nodes: Vec<String>,
    /// The first Redis node's port (`CHATLOG_CLUSTER_REDIS_PORT`): node `i` (1-based) listens on
    /// `redis_port + i - 1`.
    pub redis_port: u16,
    /// The first broker's port (`CHATLOG_CLUSTER_KAFKA_PORT`): broker (node id) `i` listens on
    /// `kafka_port + i - 1`.
    pub kafka_port: u16,
    /// `dev/cluster.sh`.
    pub script: PathBuf,
    /// Its state folder (`<stack dir>/cluster`): pid files in `run/`.
    pub dir: PathBuf,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn port_of(address: &str) -> Option<u16> {
    let host_port = address
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://")
        .split('/')
        .next()?;
    let host_port = host_port.rsplit('@').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

impl Stack {
    /// The stack named by the environment; refuses addresses that do not belong to the stack
    /// `dev/stack.sh` would act on.
    pub fn from_env(workspace: &Path, cluster: bool) -> anyhow::Result<Stack> {
        let script = workspace.join("dev/stack.sh");
        anyhow::ensure!(
            script.is_file(),
            "{} not found (pass --workspace)",
            script.display()
        );
        let dir = match env("CHATLOG_STACK_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let cache = env("CHATLOG_CACHE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(env("HOME").unwrap_or_else(|| "/root".into()))
                            .join(".cache/chatlog")
                    });
                cache.join("stack")
            }
        };
        let port = |name: &str, default: u16| -> anyhow::Result<u16> {
            env(name)
                .map(|v| v.parse().with_context(|| format!("{name}={v:?}")))
                .unwrap_or(Ok(default))
        };
        let redis_port = port("CHATLOG_REDIS_PORT", 6390)?;
        let cluster = if cluster {
            let kafka_port = port("CHATLOG_CLUSTER_KAFKA_PORT", 19092)?;
            let redis_port = port("CHATLOG_CLUSTER_REDIS_PORT", 16001)?;
            let redis_nodes = chatlog::cluster::redis_nodes();
            let kafka = chatlog::cluster::kafka_bootstrap();
            for (var, address, port_var, port) in [
                (
                    "CHATLOG_CLUSTER_KAFKA_BOOTSTRAP",
                    kafka.clone(),
                    "CHATLOG_CLUSTER_KAFKA_PORT",
                    kafka_port,
                ),
                (
                    "CHATLOG_CLUSTER_REDIS_NODES",
                    redis_nodes.join(","),
                    "CHATLOG_CLUSTER_REDIS_PORT",
                    redis_port,
                ),
            ] {
                let first = address.split(',').next().unwrap_or_default();
                if port_of(first) != Some(port) {
                    bail!(
                        "{var}={address} is not the cluster dev/cluster.sh drives ({port_var} = \
                         {port}): the harness would kill one node and test another. Run \
                         `eval \"$(dev/cluster.sh env)\"` with the same variables."
                    );
                }
            }
            let script = workspace.join("dev/cluster.sh");
            anyhow::ensure!(script.is_file(), "{} not found", script.display());
            Some(ClusterStack {
                redis_nodes,
                redis_port,
                kafka_port,
                script,
                dir: dir.join("cluster"),
            })
        } else {
            None
        };
        let stack = Stack {
            kafka: match &cluster {
                Some(_) => chatlog::cluster::kafka_bootstrap(),
                None => chatlog::kafka_bootstrap(),
            },
            cql_nodes: chatlog::cql_nodes(),
            redis_url: chatlog::redis_url(),
            client_redis_url: None,
            replica_port: port("CHATLOG_REDIS_REPLICA_PORT", redis_port.saturating_add(1))?,
            proxy_port: port("CHATLOG_CHAOS_REDIS_PROXY_PORT", 0)?,
            script,
            dir,
            cluster,
        };
        let pairs = [
            (
                "CHATLOG_KAFKA_BOOTSTRAP",
                stack.kafka.clone(),
                "CHATLOG_KAFKA_PORT",
                port("CHATLOG_KAFKA_PORT", 9092)?,
            ),
            (
                "CHATLOG_CQL_NODES",
                stack.cql_nodes.join(","),
                "CHATLOG_CQL_PORT",
                port("CHATLOG_CQL_PORT", 9042)?,
            ),
            (
                "CHATLOG_REDIS_URL",
                stack.redis_url.clone(),
                "CHATLOG_REDIS_PORT",
                redis_port,
            ),
        ];
        for (addr_var, address, port_var, port) in pairs {
            if stack.cluster.is_some() && addr_var != "CHATLOG_CQL_NODES" {
                continue; // the cluster's, checked above
            }
            let first = address.split(',').next().unwrap_or_default();
            if port_of(first) != Some(port) {
                bail!(
                    "{addr_var}={address} is not the stack dev/stack.sh drives ({port_var} = {port}): \
                     the harness would restart one service and test another. \
                     Run `eval \"$(dev/stack.sh env)\"` with the same variables."
                );
            }
        }
        Ok(stack)
    }

    /// Fails loudly unless Kafka, CQL and Redis answer and Cassandra's pid file is ours.
    pub async fn preflight(&self) -> anyhow::Result<()> {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let probe: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &kafka)
                .create()?;
            probe
                .fetch_metadata(None, Duration::from_secs(15))
                .map_err(|e| anyhow::anyhow!("{}: {e}", chatlog::stack_hint("Kafka", &kafka)))?;
            Ok(())
        })
        .await??;
        let cql = chatlog_store::CqlConfig {
            nodes: self.cql_nodes.clone(),
            username: chatlog::cql_username(),
            password: chatlog::cql_password(),
            ..Default::default()
        };
        cql.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}",
                chatlog::stack_hint("CQL database", &self.cql_nodes.join(","))
            )
        })?;
        let mut redis = self.redis().await?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut redis)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}: {e}", chatlog::stack_hint("Redis", &self.redis_url))
            })?;
        anyhow::ensure!(pong == "PONG", "Redis answered {pong:?} to PING");
        self.cassandra_pid()?;
        Ok(())
    }

    /// The URL Redis clients of the run use (the proxy once it runs).
    pub fn client_redis_url(&self) -> &str {
        self.client_redis_url.as_deref().unwrap_or(&self.redis_url)
    }

    /// The stack's Redis as a socket address (for the proxy and the replica).
    pub fn redis_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs as _;
        let host_port = self
            .redis_url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or_default();
        let host_port = host_port.rsplit('@').next().unwrap_or_default();
        host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(std::net::SocketAddr::is_ipv4))
            .with_context(|| format!("CHATLOG_REDIS_URL={} has no host:port", self.redis_url))
    }

    /// A reconnecting Redis connection, as the run's clients connect (through the proxy; on the
    /// cluster stack, to the Redis Cluster).
    pub async fn redis(&self) -> anyhow::Result<chatlog_store::RedisConnection> {
        if let Some(cluster) = &self.cluster {
            return chatlog_store::RedisConfig {
                cluster_nodes: cluster.redis_nodes.clone(),
                ..Self::cluster_redis_config()
            }
            .connect()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}",
                    chatlog::cluster::hint("Redis", &cluster.redis_nodes.join(","))
                )
            });
        }
        let url = self.client_redis_url();
        chatlog_store::RedisConfig {
            url: url.to_owned(),
            ..Default::default()
        }
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", chatlog::stack_hint("Redis", url)))
    }

    /// The Redis settings of the harness's own cluster clients: those of the test kit (commands
    /// wait out a failover, which takes the cluster's node timeout to be noticed).
    fn cluster_redis_config() -> chatlog_store::RedisConfig {
        chatlog::cluster::redis_config()
    }

    /// Topics' replication factor: 3 on the cluster (min.insync.replicas 2), else 1.
    pub fn replication(&self) -> i32 {
        if self.cluster.is_some() { 3 } else { 1 }
    }

    /// Runs `dev/cluster.sh <args>` with the current environment (which selects the cluster).
    pub async fn cluster_script(&self, args: &[&str]) -> anyhow::Result<()> {
        let cluster = self.cluster.as_ref().context("not on the cluster stack")?;
        let out = tokio::process::Command::new(&cluster.script)
            .args(args)
            .output()
            .await
            .with_context(|| format!("run {}", cluster.script.display()))?;
        if !out.status.success() {
            bail!(
                "dev/cluster.sh {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs `dev/stack.sh <args>` with the current environment (which selects the stack).
    pub async fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(&self.script)
            .args(args)
            .output()
            .await
            .with_context(|| format!("run {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "dev/stack.sh {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The pid of the stack's Cassandra, checked to be a Cassandra of this stack folder.
    pub fn cassandra_pid(&self) -> anyhow::Result<u32> {
        let file = self.dir.join("run/cassandra.pid");
        let pid: u32 = std::fs::read_to_string(&file)
            .with_context(|| {
                format!(
                    "cannot read {} (the harness pauses the Cassandra that dev/stack.sh started; \
                     set CHATLOG_STACK_DIR to its folder)",
                    file.display()
                )
            })?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", file.display()))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).with_context(|| {
            format!(
                "Cassandra (pid {pid} from {}) is not running",
                file.display()
            )
        })?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        anyhow::ensure!(
            cmdline.contains("CassandraDaemon") && cmdline.contains(&*self.dir.to_string_lossy()),
            "pid {pid} from {} is not this stack's Cassandra",
            file.display()
        );
        Ok(pid)
    }

    /// Creates a topic ([`Stack::replication`]) and waits until its metadata shows every
    /// partition with a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .create()?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = tokio::time::timeout(
            Duration::from_secs(60),
            admin.create_topics(
                &[NewTopic::new(
                    name,
                    partitions,
                    TopicReplication::Fixed(self.replication()),
                )],
                &opts,
            ),
        )
        .await
        .context("create topic: timed out")??;
        for r in results {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        let (kafka, name) = (self.kafka.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let probe: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &kafka)
                .create()?;
            for _ in 0..100 {
                if let Ok(m) = probe.fetch_metadata(Some(&name), Duration::from_secs(5))
                    && m.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bail!("topic {name} has no leaders after 10 s")
        })
        .await?
    }
}

/// SIGCONT on drop: Cassandra (or a consumer) is never left stopped, even if the harness fails
/// or panics during a pause.
pub use chatlog::{Resume, signal};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_each_address_form() {
        assert_eq!(port_of("127.0.0.1:19092"), Some(19092));
        assert_eq!(port_of("redis://127.0.0.1:6390/"), Some(6390));
        assert_eq!(port_of("redis://user@host:16390/0"), Some(16390));
        assert_eq!(port_of("host"), None);
    }
}
