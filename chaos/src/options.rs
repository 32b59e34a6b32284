//! What one chaos run does: the two documented sizes and every knob they set.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The documented sizes: two on the single-node stack of `dev/stack.sh`, two on the cluster
/// stack of `dev/cluster.sh` (see [`Options::cluster`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Size {
    /// 108k messages, 5 consumer kills, 10 late sends and one of every other fault kind, W = 200:
    /// ~10 % of the messages mutated, then the replay: about 4 minutes, run by CI (`dev/test.sh`
    /// runs `dev/chaos.sh ci`).
    Ci,
    /// 1,000,000 messages, 20 kills, 3 rebalances, 2 rollbacks, 2 failovers, 2 poll zombies,
    /// 2 two-producer periods, 50 late sends, 2 wrongtype sessions and one of each other kind, 1 %
    /// poison: run on demand (`dev/chaos.sh full`).
    Full,
    /// The cluster stack (three Kafka brokers, a Redis Cluster of three masters with a replica
    /// each), 300k messages: the fleet scaled 1 → 3 → 2, 2 kill -9 of a partition leader broker,
    /// 2 kill -9 of a Redis master, 5 consumer kills and the faults that mean the same on a
    /// cluster (`dev/chaos.sh cluster`, release build).
    Cluster,
    /// The cluster stack, reduced for CI: 24k messages, every cluster fault kind once, the
    /// replay (`dev/chaos.sh cluster-ci`, debug build, ≤ 6 minutes).
    ClusterCi,
}

impl Size {
    /// Whether the size runs on the cluster stack.
    pub fn cluster(self) -> bool {
        matches!(self, Size::Cluster | Size::ClusterCi)
    }
}

impl std::str::FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ci" => Ok(Size::Ci),
            "full" => Ok(Size::Full),
            "cluster" => Ok(Size::Cluster),
            "cluster-ci" => Ok(Size::ClusterCi),
            other => Err(format!(
                "unknown size {other:?} (ci|full|cluster|cluster-ci)"
            )),
        }
    }
}

/// Every setting of a run. Start from [`Options::preset`] and override fields.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// The preset this started from.
    pub size: Size,
    /// Run on the cluster stack (`dev/cluster.sh`): Kafka and Redis are the cluster's
    /// (`CHATLOG_CLUSTER_KAFKA_BOOTSTRAP`, `CHATLOG_CLUSTER_REDIS_NODES`), topics have replication
    /// factor 3, every Redis client connects to the Redis Cluster itself (no proxy), each consumer
    /// has a group instance id beside its transactional id, and only the faults that mean
    /// something on a cluster may be planned (which kinds apply where: `faults::check_plan`).
    pub cluster: bool,
    /// Messages sent through the producer library (each acknowledged once).
    pub messages: usize,
    /// Sessions they are spread over; each session sends sequentially (one in flight).
    pub sessions: usize,
    /// Sends in flight at once over all sessions.
    pub concurrency: usize,
    /// Target send rate (messages/s); the load lasts about `messages / rate` seconds and the
    /// faults are spread over that time.
    pub rate: f64,
    /// Consumer instances of the fleet.
    pub consumers: usize,
    /// kill -9 of a random consumer (restarted by the harness).
    pub kills: usize,
    /// Rebalances: an extra consumer joins, later a random member leaves with SIGTERM.
    pub rebalances: usize,
    /// Kafka broker restarts (`dev/stack.sh down kafka; up kafka`).
    pub kafka_restarts: usize,
    /// Scale-ups of the fleet: `scale_up_by` consumers join at once.
    pub scale_ups: usize,
    /// Consumers each scale-up adds.
    pub scale_up_by: usize,
    /// Scale-downs: a random consumer retires with SIGTERM (not restarted). Planned after the
    /// scale-ups.
    pub scale_downs: usize,
    /// Cluster: kill -9 of the Kafka broker that leads a partition of the topic, brought back
    /// (`dev/cluster.sh up kafka`) `broker_down` after its partitions have a new leader.
    pub broker_kills: usize,
    /// How long a killed broker stays down once its partitions moved.
    pub broker_down: Duration,
    /// Cluster: kill -9 of a Redis master; its replica takes over after the cluster node timeout,
    /// and the old node is started again (`dev/cluster.sh start-node redis N`) to rejoin as a
    /// replica.
    pub redis_master_kills: usize,
    /// Redis restarts followed by FLUSHALL (every window, seq hash and idempotency record lost).
    pub redis_restarts: usize,
    /// Cassandra SIGSTOP … SIGCONT pauses.
    pub cassandra_pauses: usize,
    /// How long Cassandra stays stopped.
    pub cassandra_pause: Duration,
    /// Consumer pauses: SIGSTOP to a random consumer, SIGCONT after `consumer_pause` (longer than
    /// the group session timeout, so its partitions move on and it resumes as a zombie).
    pub consumer_pauses: usize,
    /// How long a paused consumer stays stopped.
    pub consumer_pause: Duration,
    /// FLUSHALL Redis while a consumer is paused (a zombie then resumes against an empty Redis).
    pub pause_flush: bool,
    /// Zombie writers, a composed fault (see [`crate::faults`]): a consumer frozen inside its CQL
    /// stage past its session timeout while Redis loses its data, then resumed.
    pub zombies: usize,
    /// Poll zombies: a consumer frozen inside poll past its session timeout (FLUSHALL meanwhile).
    pub poll_zombies: usize,
    /// Rollbacks: Redis restarted from a snapshot taken `rollback_after` earlier.
    pub rollbacks: usize,
    /// How far back a rollback goes.
    pub rollback_after: Duration,
    /// Failovers to a lagging replica.
    pub failovers: usize,
    /// How long the replica replicates under load before its link is cut.
    pub failover_sync: Duration,
    /// How long the primary takes writes after the cut before the replica is promoted (the lag).
    pub failover_lag: Duration,
    /// How long the promoted replica serves before the lossless switch back.
    pub failover_serve: Duration,
    /// Periods during which two producer instances send to the same sessions.
    pub two_producers: usize,
    /// How long each period lasts.
    pub two_producers_for: Duration,
    /// Share of the sessions paired in a period.
    pub two_producers_share: f64,
    /// Late sends (produce fails after allocation; retried later).
    pub late_sends: usize,
    /// `wrongtype` faults: a fresh session's window key is made a Redis string, and
    /// [`crate::faults::WRONGTYPE_MESSAGES`] messages are sent to it: each must reach the DLQ as
    /// `write_failed` while the other sessions go on.
    pub wrongtypes: usize,
    /// How long a late send waits before its retry (keep it well below the settle horizon).
    pub late_send_hold: Duration,
    /// Reads per second of the online history oracle.
    pub oracle_rate: f64,
    /// The settle horizon the oracle holds history to: an acknowledged message must never be
    /// reported `missing` by a read that started after its ack or less than this after its
    /// allocation (see [`crate::oracle`]).
    pub settle_horizon: Duration,
    /// Poison records, as a share of `messages` (0.01 = 1 %), produced raw to the same topic.
    pub poison_ratio: f64,
    /// Share of acknowledged messages sent a second time with the same client_msg_id (a client
    /// retry after a lost ack): must get the same seq back.
    pub resend_ratio: f64,
    /// Share of acknowledged messages that get 1–3 mutations (edit, recall, delete for everyone)
    /// through instance A (see [`crate::load`]).
    pub mutation_ratio: f64,
    /// After the drain and the check: replay the topic from offset 0 into the same stores (a
    /// fresh consumer group, one kill -9 part-way) and check again (see [`crate::replay`]).
    pub replay: bool,
    /// Window size `W` of the consumers.
    pub window_size: usize,
    /// Partitions of the run's topic.
    pub partitions: i32,
    /// How long to wait for the pipeline to drain after the load and the faults.
    pub drain_timeout: Duration,
    /// Seed of every random choice (fault order and timing, victims, poison kinds, content).
    pub seed: u64,
    /// The `chatlog-consumer` binary.
    pub consumer_bin: PathBuf,
    /// The workspace root (where `dev/stack.sh` is).
    pub workspace: PathBuf,
    /// Where consumer logs and the event log go.
    pub run_dir: PathBuf,
    /// Checker self-test: after the drain, corrupt the stores and the recorded history in known
    /// ways (see [`crate::sabotage`]); the run must then report exactly
    /// [`crate::sabotage::EXPECTED`].
    pub sabotage: bool,
}

impl Options {
    /// The settings of a documented size (consumer binary, workspace and run folder defaulted;
    /// see [`default_consumer_bin`]).
    pub fn preset(size: Size) -> Options {
        let workspace = workspace_root();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        let common = Options {
            size,
            cluster: false,
            messages: 108_000,
            sessions: 250,
            concurrency: 250,
            rate: 600.0,
            consumers: 3,
            kills: 5,
            rebalances: 1,
            kafka_restarts: 1,
            scale_ups: 0,
            scale_up_by: 2,
            scale_downs: 0,
            broker_kills: 0,
            broker_down: Duration::from_secs(5),
            redis_master_kills: 0,
            redis_restarts: 1,
            cassandra_pauses: 1,
            cassandra_pause: Duration::from_secs(10),
            consumer_pauses: 1,
            consumer_pause: Duration::from_secs(15),
            pause_flush: true,
            zombies: 1,
            poll_zombies: 1,
            rollbacks: 1,
            rollback_after: Duration::from_secs(10),
            failovers: 1,
            failover_sync: Duration::from_secs(3),
            failover_lag: Duration::from_secs(3),
            failover_serve: Duration::from_secs(8),
            two_producers: 1,
            two_producers_for: Duration::from_secs(20),
            two_producers_share: 0.2,
            late_sends: 10,
            wrongtypes: 1,
            late_send_hold: Duration::from_secs(5),
            oracle_rate: 10.0,
            settle_horizon: Duration::from_secs(60),
            poison_ratio: 0.01,
            resend_ratio: 0.005,
            mutation_ratio: 0.1,
            replay: true,
            window_size: 200,
            partitions: 8,
            drain_timeout: Duration::from_secs(240),
            seed,
            consumer_bin: default_consumer_bin(&workspace, "debug"),
            workspace,
            run_dir: std::env::temp_dir().join("chatlog-chaos"),
            sabotage: false,
        };
        // On a cluster: no single-Redis fault (the proxy, FLUSHALL, a restart, a rollback, the
        // failover to a replica of the harness) and no restart of the single-node Kafka; the
        // fleet starts with one consumer and is scaled 1 → 3 → 2.
        let cluster = Options {
            cluster: true,
            consumers: 1,
            scale_ups: 1,
            scale_up_by: 2,
            scale_downs: 1,
            broker_kills: 1,
            redis_master_kills: 1,
            rebalances: 0,
            kafka_restarts: 0,
            redis_restarts: 0,
            rollbacks: 0,
            failovers: 0,
            zombies: 0,
            poll_zombies: 0,
            pause_flush: false,
            ..common.clone()
        };
        match size {
            Size::Ci => common,
            Size::ClusterCi => Options {
                messages: 24_000,
                sessions: 100,
                concurrency: 100,
                rate: 150.0,
                kills: 1,
                late_sends: 3,
                oracle_rate: 5.0,
                ..cluster
            },
            Size::Cluster => Options {
                messages: 300_000,
                sessions: 500,
                concurrency: 500,
                rate: 1000.0,
                kills: 5,
                broker_kills: 2,
                redis_master_kills: 2,
                two_producers: 2,
                two_producers_for: Duration::from_secs(40),
                late_sends: 20,
                drain_timeout: Duration::from_secs(600),
                consumer_bin: default_consumer_bin(&common.workspace, "release"),
                ..cluster
            },
            Size::Full => Options {
                messages: 1_000_000,
                sessions: 1000,
                concurrency: 500,
                rate: 2500.0,
                kills: 20,
                rebalances: 3,
                rollbacks: 2,
                failovers: 2,
                poll_zombies: 2,
                two_producers: 2,
                two_producers_for: Duration::from_secs(40),
                late_sends: 50,
                wrongtypes: 2,
                oracle_rate: 20.0,
                drain_timeout: Duration::from_secs(900),
                consumer_bin: default_consumer_bin(&common.workspace, "release"),
                ..common
            },
        }
    }

    /// How long the load should last at [`Options::rate`].
    pub fn load_duration(&self) -> Duration {
        Duration::from_secs_f64(self.messages as f64 / self.rate.max(1.0))
    }

    /// The fleet's size once every scale-up and scale-down is done (the replay's fleet).
    pub fn final_consumers(&self) -> usize {
        (self.consumers + self.scale_ups * self.scale_up_by)
            .saturating_sub(self.scale_downs)
            .max(1)
    }

    /// Poison records to produce.
    pub fn poison_count(&self) -> usize {
        (self.messages as f64 * self.poison_ratio).round() as usize
    }

    /// Refuses settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.messages >= 1, "--messages must be at least 1");
        anyhow::ensure!(
            (1..=self.messages).contains(&self.sessions),
            "--sessions must be 1..=messages"
        );
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(self.consumers >= 1, "--consumers must be at least 1");
        anyhow::ensure!(self.window_size >= 1, "--window-size must be at least 1");
        anyhow::ensure!(self.partitions >= 1, "--partitions must be at least 1");
        anyhow::ensure!(self.rate > 0.0, "--rate must be positive");
        anyhow::ensure!(
            (0.0..=0.5).contains(&self.poison_ratio) && (0.0..=0.5).contains(&self.resend_ratio),
            "--poison-ratio and --resend-ratio must be within 0..=0.5"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.mutation_ratio),
            "--mutation-ratio must be within 0..=1"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.two_producers_share),
            "--two-producers-share must be within 0..=1"
        );
        anyhow::ensure!(
            self.oracle_rate >= 0.0,
            "--oracle-rate must not be negative"
        );
        anyhow::ensure!(
            self.consumers + self.scale_ups * self.scale_up_by > self.scale_downs,
            "--scale-downs would retire every consumer"
        );
        anyhow::ensure!(
            !(self.cluster && self.consumer_pauses > 0 && self.pause_flush),
            "a consumer pause with FLUSHALL is a single-Redis fault: pass --no-pause-flush on a cluster"
        );
        Ok(())
    }
}

/// The workspace root this crate was built in (`chaos/..`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `CHATLOG_CONSUMER_BIN`, else `<workspace>/target/<profile>/chatlog-consumer` (honouring
/// `CARGO_TARGET_DIR`).
pub fn default_consumer_bin(workspace: &std::path::Path, profile: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("CHATLOG_CONSUMER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join(profile).join("chatlog-consumer")
}

/// The debug `chatlog-consumer` of this workspace for tests: `CHATLOG_CONSUMER_BIN` if set, else
/// `target/debug/chatlog-consumer`, built with `cargo build -p chatlog-consumer` when it is
/// missing or older than the sources it is built from.
pub fn debug_consumer_bin() -> anyhow::Result<PathBuf> {
    let workspace = workspace_root();
    let bin = default_consumer_bin(&workspace, "debug");
    if std::env::var_os("CHATLOG_CONSUMER_BIN").is_some_and(|p| !p.is_empty()) {
        return Ok(bin);
    }
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let stale = match built {
        None => true,
        Some(t) => ["consumer", "store", "schemas", "cql"]
            .iter()
            .any(|dir| newer_than(&workspace.join(dir), t)),
    };
    if stale {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "chatlog-consumer"])
            .current_dir(&workspace)
            .status()
            .map_err(|e| anyhow::anyhow!("cannot run `cargo build -p chatlog-consumer`: {e}"))?;
        anyhow::ensure!(
            status.success(),
            "`cargo build -p chatlog-consumer` failed ({status})"
        );
    }
    anyhow::ensure!(
        bin.is_file(),
        "{} missing after `cargo build -p chatlog-consumer`",
        bin.display()
    );
    Ok(bin)
}

/// Whether any file under `dir` (skipping `target` and tests) was modified after `t`.
fn newer_than(dir: &std::path::Path, t: std::time::SystemTime) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        let name = e.file_name();
        if path.is_dir() {
            name != "target" && name != "tests" && newer_than(&path, t)
        } else {
            e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > t)
        }
    })
}
