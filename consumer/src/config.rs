//! The consumer's configuration: a TOML file, then `CHATLOG_*` environment variables and CLI flags
//! on top (see `chatlog-consumer --help`). Every struct rejects unknown keys; durations are written
//! the human way (`"250ms"`, `"30s"`). The defaults work with the local stack of `dev/stack.sh`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chatlog_kafka::{KafkaSecurity, Properties};
use chatlog_schemas::{Codec, Limits};
use chatlog_store::messages::BatchLimits;
use chatlog_store::window::WindowConfig;
use chatlog_store::{CqlConfig, RedisConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Everything the consumer needs.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka: topics, group, transactions.
    pub kafka: KafkaConfig,
    /// How records are gathered into one transaction.
    pub batch: BatchConfig,
    /// What a message may hold (content, id and ext sizes) and how far ahead of this host's
    /// clock its `server_time` may be (`max_skew`); a record beyond them goes to the DLQ
    /// (`invalid`, `skew`). Published to the `consumer_limits` table at start: producers of the
    /// topic refuse to start with larger limits.
    pub limits: Limits,
    /// The CQL database.
    pub cql: CqlConfig,
    /// UNLOGGED batch limits and write concurrency for the `messages` table.
    pub writer: BatchLimits,
    /// Redis.
    pub redis: RedisConfig,
    /// The per-session window kept in Redis.
    pub window: WindowConfig,
    /// How long messages of each session type are kept (`retention.group = "90d"`; default: for
    /// ever). Rows get the rest of it as their CQL TTL, anchored at the send; a message past it
    /// is skipped (counted as `expired`), so a replay never brings it back.
    pub retention: chatlog_store::retention::Retention,
    /// Retries of CQL and Redis writes.
    pub retry: RetryConfig,
    /// Records that cannot be written: isolation, stalled partitions, commit deadline, DLQ logs.
    pub isolation: IsolationConfig,
    /// The HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpConfig,
    /// Shutdown behaviour.
    pub shutdown: ShutdownConfig,
    /// Logging beyond what `CHATLOG_LOG` filters.
    pub log: LogConfig,
    /// Apply the CQL migrations at start (the `migrate` subcommand does it alone).
    pub migrate_on_start: bool,
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// The topic the producer library writes.
    pub topic: String,
    /// Where poison records go, with `chatlog-dlq-*` reason headers, inside the same transaction.
    pub dlq_topic: String,
    /// The consumer group of the fleet.
    pub group_id: String,
    /// Stable and unique per consumer instance (e.g. `chatlog-consumer-<ordinal>`): a restarted
    /// instance with the same id fences its zombie predecessor.
    pub transactional_id: String,
    /// Static group membership id (optional): a restart within the session timeout keeps the
    /// assignment without a rebalance.
    pub group_instance_id: Option<String>,
    /// Group session timeout: how long a silent member keeps its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest time between two polls before the member is evicted; batches, retries and commits
    /// stay well below it.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Transaction timeout: the broker aborts a transaction open longer than this.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// TLS and SASL of both Kafka clients.
    pub security: KafkaSecurity,
    /// Extra librdkafka properties applied to both the consumer and the producer. Values of
    /// secret-looking keys never print; prefer `security` for credentials.
    pub properties: Properties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "chat.messages".into(),
            dlq_topic: "chat.messages.dlq".into(),
            group_id: "chatlog-persist".into(),
            transactional_id: "chatlog-consumer-0".into(),
            group_instance_id: None,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            transaction_timeout: Duration::from_secs(60),
            security: KafkaSecurity::default(),
            properties: Properties::default(),
        }
    }
}

impl KafkaConfig {
    /// librdkafka's `heartbeat.interval.ms`: from `properties`, else its default (3 s).
    pub fn heartbeat_interval(&self) -> Result<Duration> {
        match self.properties.0.get("heartbeat.interval.ms") {
            None => Ok(Duration::from_secs(3)),
            Some(ms) => ms.trim().parse().map(Duration::from_millis).map_err(|_| {
                Error::Config(format!(
                    "kafka.properties: heartbeat.interval.ms = {ms:?} is not a number of ms"
                ))
            }),
        }
    }

    /// How long after the poll that returned a batch's first record began its windows may still
    /// be written (the self-fence, see `Pipeline::write`). The coordinator evicts a member whose
    /// last heartbeat is a session timeout old, and the last heartbeat before a freeze may be a
    /// heartbeat interval old already, so a freeze of `session_timeout − heartbeat interval` can
    /// be enough; the fence is 80 % of that.
    pub fn window_fence(&self) -> Duration {
        let heartbeat = self.heartbeat_interval().unwrap_or(Duration::from_secs(3));
        self.session_timeout.saturating_sub(heartbeat).mul_f64(0.8)
    }
}

/// How records are gathered into one transaction.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most records in one transaction. Larger batches make fuller per-partition CQL batches and
    /// fewer transactions at high load; under light load batches stay small (see `linger`).
    pub max_records: usize,
    /// Most record bytes (values and keys) in one transaction: bounds the memory a batch of large
    /// records can take. A batch holds at least one record.
    pub max_bytes: usize,
    /// Longest wait for more records once the first one of a batch arrived: the latency a lone
    /// message pays to share a transaction. Under load a batch fills while the previous one is
    /// written, so this matters only when traffic is light.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Shortest time between two Kafka transactions. A batch written sooner after the last
    /// transaction opened waits (at most three more join it) and is committed with the batches
    /// written meanwhile: under light traffic each small batch would otherwise be a transaction of
    /// its own — round trips to the coordinator and a marker in every partition, most of the
    /// broker's work at a few records a batch. Visibility does not wait (windows and rows are
    /// written before the commit); what a crash replays grows by at most this much. Under load a
    /// batch takes longer than this to collect and write, and nothing waits. `0s`: a transaction
    /// per batch.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Largest record value accepted; larger ones go to the DLQ as `oversize`.
    pub max_record_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 20_000,
            max_bytes: 32 * 1024 * 1024,
            linger: Duration::from_millis(10),
            commit_interval: Duration::from_millis(100),
            max_record_bytes: 1024 * 1024,
        }
    }
}

/// Retries of CQL and Redis writes (exponential backoff with a budget per batch).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First backoff.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest backoff.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Time one batch may spend retrying a stage; past it the batch is dropped uncommitted, the
    /// consumer rewinds and polls again (so it never exceeds `max_poll_interval`), then retries.
    #[serde(with = "humantime_serde")]
    pub stage_budget: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stage_budget: Duration::from_secs(20),
        }
    }
}

/// The HTTP endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of `/metrics`, `/healthz` and `/readyz` (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Limits against slow or numerous clients: header-read and request timeouts, a connection
    /// limit and lifetime.
    pub limits: crate::telemetry::HttpLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            limits: crate::telemetry::HttpLimits::default(),
        }
    }
}

/// A TOML error as the message and the line number, never toml's quoted source line: inside an
/// inline table (`cql = { password = "…", typo = 1 }`) that line holds the password.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let at = e
        .span()
        .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
        .unwrap_or_default();
    format!("{}{at}", e.message())
}

/// The TOML value of an environment variable: a TOML literal when it is one, else a string;
/// always a string for a password and for librdkafka properties (all strings, some secret).
fn env_value(keys: &[String], raw: &str) -> toml::Value {
    if keys.last().is_some_and(|k| k.ends_with("password"))
        || keys.iter().any(|k| k == "properties")
    {
        return toml::Value::String(raw.to_owned());
    }
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets `keys` (a path of tables) to `value` in `table`, creating the tables on the way.
fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("no key")?;
    let mut at = table;
    for key in parents {
        at = match at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{key}` is a value, not a section")),
        };
    }
    at.insert(last.clone(), value);
    Ok(())
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT: time to finish and commit the current batch before exiting anyway.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(30),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// How often an info line sums up the consuming (records/s, batches, mean batch, DLQ,
    /// lag), idle or not; 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            progress_interval: Duration::from_secs(30),
        }
    }
}

/// Prefix of the environment variables that set any key of the configuration:
/// `CHATLOG__<SECTION>__<KEY>` (double underscores separate the path, case-insensitive), e.g.
/// `CHATLOG__KAFKA__GROUP_INSTANCE_ID=consumer-0`, `CHATLOG__RETENTION__GROUP=90days`,
/// `CHATLOG__WINDOW__SIZE=500`. A value is read as a TOML value when it is one (numbers, booleans,
/// arrays, quoted strings) and as a string otherwise; quote a string that looks like a number
/// (`'"123"'`). Keys ending in `password` and `kafka.properties` entries are always strings.
pub const ENV_PREFIX: &str = "CHATLOG__";

impl Config {
    /// The configuration from the TOML file at `path` (or the defaults), with every
    /// [`ENV_PREFIX`] variable among `vars` set over it. Unknown keys, in the file or the
    /// variables, are errors that name them.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let (text, source) = match path {
            Some(path) => (
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?,
                path.display().to_string(),
            ),
            None => (String::new(), "defaults".to_owned()),
        };
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{source}: {}", toml_message(&text, &e))))?;
        let mut names = Vec::new();
        for (name, value) in vars {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(Error::Config(format!(
                    "{name}: empty key in the path (use CHATLOG__SECTION__KEY)"
                )));
            }
            set_path(&mut table, &keys, env_value(&keys, &value))
                .map_err(|why| Error::Config(format!("{name}: {why}")))?;
            names.push(name);
        }
        let text = toml::to_string(&table)
            .map_err(|e| Error::Config(format!("{source}: cannot merge the environment: {e}")))?;
        Config::from_toml(&text).map_err(|e| {
            if names.is_empty() {
                Error::Config(format!("{source}: {e}"))
            } else {
                Error::Config(format!("{source} with {}: {e}", names.join(", ")))
            }
        })
    }

    /// The configuration as TOML, as `chatlog-consumer config` prints it: every key, secrets as
    /// `"***"` when set (so the text shows they are configured, never their values) and `""`
    /// when not.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("cannot print the configuration: {e}")))
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config(toml_message(text, &e)))
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<()> {
        self.cql.validate()?;
        let k = &self.kafka;
        for (name, v) in [
            ("kafka.topic", &k.topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.group_id", &k.group_id),
            ("kafka.transactional_id", &k.transactional_id),
        ] {
            if v.is_empty() {
                return Err(Error::Config(format!("{name} is empty")));
            }
        }
        k.security.properties()?;
        if k.topic == k.dlq_topic {
            return Err(Error::Config(
                "kafka.dlq_topic must differ from kafka.topic".into(),
            ));
        }
        if self.batch.max_records == 0 {
            return Err(Error::Config("batch.max_records must be at least 1".into()));
        }
        if self.batch.max_bytes < self.batch.max_record_bytes {
            return Err(Error::Config(
                "batch.max_bytes must be at least batch.max_record_bytes".into(),
            ));
        }
        if self.window.size == 0 {
            return Err(Error::Config("window.size must be at least 1".into()));
        }
        // Below a second, ordinary NTP jitter and the time in Kafka would send good records to
        // the DLQ.
        if self.limits.max_skew < Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "limits.max_skew ({:?}) must be at least 1s",
                self.limits.max_skew
            )));
        }
        // A batch must be able to reach its window writes before its fence: otherwise no window
        // would ever be written and every batch rewound.
        let heartbeat = k.heartbeat_interval()?;
        if heartbeat >= k.session_timeout {
            return Err(Error::Config(format!(
                "heartbeat.interval.ms ({heartbeat:?}) must stay below kafka.session_timeout"
            )));
        }
        let fence = k.window_fence();
        if self.batch.linger * 2 > fence {
            return Err(Error::Config(format!(
                "batch.linger ({:?}) must be at most half the window fence ({fence:?}: 80% of \
                 kafka.session_timeout minus heartbeat.interval.ms)",
                self.batch.linger
            )));
        }
        // Held batches' records are replayed after a crash, and held batches wait outside any
        // transaction: a long interval only widens the replay.
        if self.batch.commit_interval > Duration::from_secs(10) {
            return Err(Error::Config(format!(
                "batch.commit_interval ({:?}) must be at most 10s",
                self.batch.commit_interval
            )));
        }
        // One batch must fit comfortably in a transaction and between two polls.
        let budget = self.retry.stage_budget * 2 + self.batch.linger;
        if budget >= k.transaction_timeout.min(k.max_poll_interval) {
            return Err(Error::Config(format!(
                "2 × retry.stage_budget + batch.linger ({budget:?}) must stay below \
                 kafka.transaction_timeout and kafka.max_poll_interval"
            )));
        }
        Ok(())
    }
}

impl Config {
    /// The codec that enforces this consumer's `[limits]` and `batch.max_record_bytes`.
    pub fn codec(&self) -> Result<Codec> {
        Ok(Codec::builder()
            .limits(self.limits)
            .max_encoded_bytes(self.batch.max_record_bytes)
            .build()?)
    }

    /// Publishes the limits this instance enforces (`[limits]`, `batch.max_record_bytes`) to
    /// the `consumer_limits` table under (`kafka.topic`, `kafka.transactional_id`), so that
    /// producers of the topic refuse larger limits at their start. Called at start, after the
    /// migrations; a restart overwrites the row.
    pub async fn publish_limits(&self, session: &scylla::client::session::Session) -> Result<()> {
        let published = chatlog_store::limits::Published {
            instance: self.kafka.transactional_id.clone(),
            limits: self.limits,
            max_record_bytes: self.batch.max_record_bytes,
            published_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        };
        chatlog_store::limits::publish(session, &self.cql.keyspace, &self.kafka.topic, &published)
            .await?;
        tracing::info!(
            topic = %self.kafka.topic,
            instance = %published.instance,
            limits = ?self.limits,
            max_record_bytes = self.batch.max_record_bytes,
            "published this consumer's limits for producers"
        );
        Ok(())
    }
}

/// How the consumer keeps partitions moving past records that cannot be written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// Rewinds in a row (no commit in between) after which the failing batch is redone in small
    /// pieces (`batch_records`), record by record: a record whose write then fails while other
    /// records' writes succeed goes to the DLQ as `write_failed`, so its partition moves on.
    /// Errors that can never succeed (Redis WRONGTYPE, CQL invalid request) do not wait for
    /// this: their records go to the DLQ at once.
    pub rewinds: u32,
    /// Most records in one batch while isolating.
    pub batch_records: usize,
    /// Time one record's write may be retried while isolating (short: the whole piece must be
    /// written within the window fence).
    #[serde(with = "humantime_serde")]
    pub record_budget: Duration,
    /// A partition whose batches have been rewound without a commit for this long is reported as
    /// not moving: `/readyz` answers 503 with the reason and `chatlog_consumer_stalled_partitions`
    /// counts it.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Longest time a `commit_transaction` that failed with a retriable error is retried; then
    /// the transaction is aborted and the batch rewound.
    #[serde(with = "humantime_serde")]
    pub commit_deadline: Duration,
    /// At most this many "record sent to the DLQ" warnings a second; the rest are counted and the
    /// next warning logged says how many were suppressed.
    pub dlq_warnings_per_second: u64,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            rewinds: 5,
            batch_records: 64,
            record_budget: Duration::from_secs(1),
            stall_after: Duration::from_secs(60),
            commit_deadline: Duration::from_secs(30),
            dlq_warnings_per_second: 10,
        }
    }
}

impl IsolationConfig {
    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.rewinds == 0 {
            return Err(Error::Config("isolation.rewinds must be at least 1".into()));
        }
        if self.batch_records == 0 {
            return Err(Error::Config(
                "isolation.batch_records must be at least 1".into(),
            ));
        }
        if self.commit_deadline.is_zero() {
            return Err(Error::Config(
                "isolation.commit_deadline must be above 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_a_section_with_defaults_and_typed_skew() {
        let c =
            Config::from_toml("[limits]\nmax_content_bytes = 1000\nmax_skew = \"30s\"\n").unwrap();
        assert_eq!(
            c.limits,
            Limits {
                max_content_bytes: 1000,
                max_skew: Duration::from_secs(30),
                ..Limits::default()
            }
        );
        c.validate().unwrap();
        let codec = c.codec().unwrap();
        assert_eq!(codec.limits(), &c.limits);
        assert_eq!(codec.max_encoded_bytes(), c.batch.max_record_bytes);
        assert!(Config::from_toml("[limits]\nmax_contents = 1\n").is_err());
        assert!(Config::from_toml("[limits]\nmax_skew = 5\n").is_err());
        let c = Config::from_toml("[limits]\nmax_skew = \"500ms\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_skew"), "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[kafka]\ntopicc = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("topicc"), "{err}");
    }

    #[test]
    fn a_parse_error_names_the_line_but_never_quotes_it() {
        let text = "[batch]\nlinger = \"1s\"\n[cql]\nkeyspace = \"k\"\ntls = { ca_file = \"/ca.pem\", secret = \"hunter2-secret\" }\n";
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains("line 5"), "{err}");
        assert!(!err.contains("hunter2-secret"), "{err}");
    }

    #[test]
    fn durations_are_typed() {
        let c = Config::from_toml("[batch]\nlinger = \"250ms\"\n[retry]\nstage_budget = \"5s\"\n")
            .unwrap();
        assert_eq!(c.batch.linger, Duration::from_millis(250));
        assert_eq!(c.retry.stage_budget, Duration::from_secs(5));
        assert!(Config::from_toml("[batch]\nlinger = 250\n").is_err());
    }

    #[test]
    fn the_commit_interval_defaults_to_100ms_and_is_bounded() {
        assert_eq!(
            Config::default().batch.commit_interval,
            Duration::from_millis(100)
        );
        let c = Config::from_toml("[batch]\ncommit_interval = \"0s\"\n").unwrap();
        assert_eq!(
            c.batch.commit_interval,
            Duration::ZERO,
            "a transaction per batch"
        );
        c.validate().unwrap();
        let c = Config::from_toml("[batch]\ncommit_interval = \"11s\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("batch.commit_interval"), "{err}");
    }

    #[test]
    fn a_batch_holds_at_least_one_record_of_the_largest_size() {
        let mut c = Config::default();
        c.batch.max_bytes = c.batch.max_record_bytes - 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("batch.max_bytes"), "{err}");
    }

    #[test]
    fn the_window_fence_leaves_room_for_the_last_heartbeat_before_a_freeze() {
        let mut c = Config::default();
        // 10 s session, 3 s heartbeats: a 7 s freeze can evict; the fence is 80 % of that.
        assert_eq!(c.kafka.window_fence(), Duration::from_millis(5600));
        c.kafka
            .properties
            .0
            .insert("heartbeat.interval.ms".into(), "1000".into());
        assert_eq!(c.kafka.window_fence(), Duration::from_millis(7200));
        c.validate().unwrap();
        c.batch.linger = Duration::from_secs(4);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("batch.linger"), "{err}");
        c.batch.linger = Duration::from_millis(10);
        c.kafka
            .properties
            .0
            .insert("heartbeat.interval.ms".into(), "10000".into());
        assert!(
            c.validate().is_err(),
            "heartbeats slower than the session timeout"
        );
        c.kafka
            .properties
            .0
            .insert("heartbeat.interval.ms".into(), "3s".into());
        assert!(c.validate().is_err(), "not a number");
    }

    #[test]
    fn budgets_must_fit_the_transaction() {
        let mut c = Config::default();
        c.retry.stage_budget = Duration::from_secs(30);
        assert!(c.validate().is_err());
    }

    #[test]
    fn every_key_can_come_from_the_environment_over_the_file() {
        let file = std::env::temp_dir().join(format!("chatlog-env-{}.toml", std::process::id()));
        std::fs::write(&file, "[window]\nsize = 50\nttl = \"1day\"\n").unwrap();
        let vars = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let c = Config::load(
            Some(&file),
            vars(&[
                ("CHATLOG__KAFKA__GROUP_INSTANCE_ID", "consumer-7"),
                ("CHATLOG__window__size", "500"),
                ("CHATLOG__RETENTION__GROUP", "90days"),
                ("CHATLOG__CQL__PASSWORD", "1234"),
                ("CHATLOG__KAFKA__PROPERTIES__FETCH.WAIT.MAX.MS", "50"),
                (
                    "CHATLOG_TOPIC",
                    "not ours: the flags' variables are read by clap",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.group_instance_id.as_deref(), Some("consumer-7"));
        assert_eq!(c.window.size, 500, "the variable beats the file");
        assert_eq!(
            c.window.ttl,
            Duration::from_secs(86_400),
            "the file beats the default"
        );
        assert_eq!(c.retention.group, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(
            c.cql.password.expose(),
            "1234",
            "a password is always a string"
        );
        assert_eq!(c.kafka.topic, Config::default().kafka.topic);

        let err = Config::load(None, vars(&[("CHATLOG__WINDOW__SIZES", "5")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sizes") && err.contains("CHATLOG__WINDOW__SIZES"),
            "an unknown key is named with its variable: {err}"
        );
        let err = Config::load(None, vars(&[("CHATLOG__CQL__PASSWORD__X", "hunter2")]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        std::fs::remove_file(&file).ok();
    }

    #[test]
    fn the_printed_configuration_is_toml_that_reads_back_with_secrets_masked() {
        let text = Config::default().to_toml().unwrap();
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(format!("{back:?}"), format!("{:?}", Config::default()));
        let mut c = Config::default();
        c.cql.password = chatlog_store::Secret::new("hunter2");
        c.kafka.security.sasl_password = chatlog_store::Secret::new("sasl-hunter2");
        c.kafka.properties.0.insert(
            "sasl.oauthbearer.client.secret".into(),
            "oauth-hunter2".into(),
        );
        c.kafka
            .properties
            .0
            .insert("fetch.wait.max.ms".into(), "50".into());
        let text = c.to_toml().unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("password = \"***\""), "{text}");
        assert!(text.contains("\"fetch.wait.max.ms\" = \"50\""), "{text}");
    }
}
