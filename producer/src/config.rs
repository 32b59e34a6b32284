//! [`ProducerConfig`]: where to produce, how to batch, and how much may be in flight. Unknown keys
//! are rejected, so a typo in a config file is an error instead of a silently ignored setting.

use std::time::Duration;

use chatlog_kafka::{KafkaSecurity, Properties};
use chatlog_schemas::Limits;
use chatlog_store::seq::SeqConfig;
use serde::Deserialize;

use crate::{Error, Result};

/// The librdkafka settings the producer always sets; `kafka` may repeat them only with these
/// values. Idempotence gives per-partition order without duplicates across internal retries,
/// `acks=all` is required by it, and `murmur2_random` is the Java client's partitioner, so a
/// session lands on the same partition as from a Java or Go producer (librdkafka's default,
/// `consistent_random`, uses CRC32 and would not).
pub const FORCED_KAFKA_SETTINGS: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
];

/// Compression codec of produced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: smallest, slowest.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4: fast, good ratio on chat text (the default).
    #[default]
    Lz4,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

/// Settings of [`Producer`](crate::Producer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// The topic of chat messages (partitioned by session id).
    pub topic: String,
    /// Compression of produced batches: `none`, `gzip`, `snappy` or `lz4`.
    pub compression: Compression,
    /// How long librdkafka waits to fill a batch (`linger.ms`); latency traded for throughput.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most sends in flight at once (validated, allocated, not yet acknowledged by Kafka). A send
    /// beyond this waits: backpressure instead of unbounded memory.
    pub max_in_flight: usize,
    /// How long Kafka may take to acknowledge a record, retries included (`message.timeout.ms`);
    /// after that the send fails with a retriable error.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// The settle horizon of history (must equal the readers'
    /// [`HistoryConfig::settle_horizon`](chatlog_store::history::HistoryConfig::settle_horizon)):
    /// a gap younger than this is reported `pending`, an older one `missing`, which clients take
    /// as final. So a retried send (same `client_msg_id`) is re-produced under its first seq only
    /// while it can still land inside the horizon — its first allocation younger than
    /// `settle_horizon - message_timeout`; later it fails with [`Error::Settled`]. Must be larger
    /// than `message_timeout`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub settle_horizon: Duration,
    /// Limits of a message, checked before anything is allocated or sent (the consumer checks
    /// the same ones, with its own `[limits]`): sizes, and `max_skew`, the clock skew tolerated
    /// between producers and consumers. [`Producer::new`](crate::Producer::new) refuses limits
    /// above those a consumer of the topic published, so nothing is acknowledged that a
    /// consumer would send to the DLQ.
    pub limits: Limits,
    /// How often the host clock is read against the reference clock (Redis `TIME`); in between,
    /// each send checks the host clock against the last reading advanced by the monotonic clock
    /// (no round trip). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub clock_check_interval: Duration,
    /// Seq allocation settings.
    pub seq: SeqConfig,
    /// Add a `chatlog-schema` header (the writer schema fingerprint, 16 hex digits) to each
    /// record. The payload carries the fingerprint anyway; the header lets tools route records
    /// without reading payloads.
    pub schema_header: bool,
    /// TLS and SASL of the Kafka client.
    pub security: KafkaSecurity,
    /// Extra librdkafka settings (e.g. `client.id`), applied after the ones above; values of
    /// secret-looking keys never print. The settings of [`FORCED_KAFKA_SETTINGS`] cannot be
    /// changed.
    pub kafka: Properties,
    /// Settings of recall, edit and delete for everyone ([`Producer::recall`](crate::Producer::recall)
    /// and its siblings).
    pub mutations: MutationsConfig,
}

/// Settings of the mutations (`[mutations]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MutationsConfig {
    /// How long a mutation waits for its target message to be stored when history does not have
    /// it yet (sent and acknowledged, still on its way through Kafka and the consumer): it reads
    /// again with backoff until then, and fails with a retriable
    /// [`Error::TargetNotFound`](crate::Error::TargetNotFound) after. Default 5 s; `"0s"` reads
    /// once.
    #[serde(with = "humantime_serde")]
    pub wait_for_target: Duration,
}

impl Default for MutationsConfig {
    fn default() -> Self {
        MutationsConfig {
            wait_for_target: Duration::from_secs(5),
        }
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic: "chat.messages".to_owned(),
            compression: Compression::Lz4,
            linger: Duration::from_millis(5),
            max_in_flight: 10_000,
            message_timeout: Duration::from_secs(30),
            settle_horizon: Duration::from_secs(60),
            limits: Limits::default(),
            clock_check_interval: Duration::from_secs(30),
            seq: SeqConfig::default(),
            schema_header: false,
            security: KafkaSecurity::default(),
            kafka: Properties::default(),
            mutations: MutationsConfig::default(),
        }
    }
}

/// Most permits a tokio semaphore can hold, and what `acquire_many` can take at once.
const MAX_IN_FLIGHT: usize = 1 << 24;

impl ProducerConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.bootstrap_servers.trim().is_empty() {
            return bad("bootstrap_servers is empty".into());
        }
        if self.topic.trim().is_empty() {
            return bad("topic is empty".into());
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return bad(format!("max_in_flight must be 1..={MAX_IN_FLIGHT}"));
        }
        if self.message_timeout < Duration::from_millis(1) {
            return bad("message_timeout must be at least 1ms".into());
        }
        if self.settle_horizon <= self.message_timeout {
            return bad(format!(
                "settle_horizon ({:?}) must be larger than message_timeout ({:?}): a record may \
                 land message_timeout after its send, and must still land inside the horizon",
                self.settle_horizon, self.message_timeout
            ));
        }
        if self.limits.max_skew < Duration::from_secs(1) {
            return bad(format!(
                "limits.max_skew ({:?}) must be at least 1s",
                self.limits.max_skew
            ));
        }
        if self.clock_check_interval < Duration::from_millis(100) {
            return bad("clock_check_interval must be at least 100ms".into());
        }
        if self.mutations.wait_for_target > self.settle_horizon {
            return bad(format!(
                "mutations.wait_for_target ({:?}) must not exceed settle_horizon ({:?}): a target \
                 absent that long is reported missing anyway",
                self.mutations.wait_for_target, self.settle_horizon
            ));
        }
        self.security
            .properties()
            .map_err(|e| Error::Config(e.to_string()))?;
        for (key, value) in self.kafka.iter() {
            let forced = FORCED_KAFKA_SETTINGS
                .iter()
                .find(|(k, _)| k == key || (*k == "acks" && key == "request.required.acks"));
            if let Some((k, v)) = forced {
                let same = value == v || (*k == "acks" && value == "-1");
                if !same {
                    return bad(format!(
                        "kafka.{key} = {value:?} conflicts with the forced setting {k}={v}"
                    ));
                }
            }
        }
        self.seq
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(())
    }

    /// The librdkafka configuration: the settings above, `security`, then `kafka`, then the
    /// forced ones.
    pub fn client_config(&self) -> Result<rdkafka::ClientConfig> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", millis(self.linger))
            .set("message.timeout.ms", millis(self.message_timeout))
            // Never let librdkafka's own queue be the bound: the semaphore is.
            .set(
                "queue.buffering.max.messages",
                self.max_in_flight.max(100_000).to_string(),
            );
        let security = self
            .security
            .properties()
            .map_err(|e| Error::Config(e.to_string()))?;
        for (k, v) in security {
            c.set(k, v);
        }
        for (k, v) in self.kafka.iter() {
            c.set(k, v);
        }
        for (k, v) in FORCED_KAFKA_SETTINGS {
            c.set(k, v);
        }
        Ok(c)
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().min(i32::MAX as u128).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config_and_rejects_typos() {
        let c: ProducerConfig = toml::from_str(
            r#"
            bootstrap_servers = "k1:9092,k2:9092"
            topic = "t"
            compression = "snappy"
            linger = "2ms"
            max_in_flight = 50
            message_timeout = "10s"
            schema_header = true
            clock_check_interval = "5s"
            [mutations]
            wait_for_target = "2s"
            [limits]
            max_content_bytes = 4096
            max_skew = "4s"
            [seq]
            min_segment = 10
            max_segment = 100
            dedup_ttl = "1h"
            idle_ttl = "0s"
            serial_consistency = "local_serial"
            [kafka]
            "client.id" = "logic-1"
            acks = "all"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.compression, Compression::Snappy);
        assert_eq!(c.linger, Duration::from_millis(2));
        assert_eq!(c.limits.max_content_bytes, 4096);
        assert_eq!(c.limits.max_id_bytes, Limits::default().max_id_bytes);
        assert_eq!(c.limits.max_skew, Duration::from_secs(4));
        assert_eq!(c.clock_check_interval, Duration::from_secs(5));
        assert_eq!(c.mutations.wait_for_target, Duration::from_secs(2));
        assert_eq!(c.seq.dedup_ttl, Duration::from_secs(3600));
        assert_eq!(c.seq.idle_ttl, Duration::ZERO);
        let kc = c.client_config().unwrap();
        assert_eq!(kc.get("partitioner"), Some("murmur2_random"));
        assert_eq!(kc.get("enable.idempotence"), Some("true"));
        assert_eq!(kc.get("compression.type"), Some("snappy"));
        assert_eq!(kc.get("client.id"), Some("logic-1"));

        for typo in [
            "topik = \"x\"",
            "[limits]\nmax_content = 1",
            "[seq]\nmin_segmnt = 1",
            "compression = \"zstd\"",
            "[mutations]\nwait_for = \"1s\"",
        ] {
            assert!(
                toml::from_str::<ProducerConfig>(typo).is_err(),
                "accepted {typo}"
            );
        }
    }

    #[test]
    fn defaults_are_valid_and_forced_settings_cannot_change() {
        let d = ProducerConfig::default();
        d.validate().unwrap();
        assert_eq!(d.topic, "chat.messages");
        assert_eq!(d.compression, Compression::Lz4);
        for (k, v) in [
            ("partitioner", "consistent_random"),
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("request.required.acks", "1"),
        ] {
            let mut c = ProducerConfig::default();
            c.kafka.0.insert(k.into(), v.into());
            assert!(matches!(c.validate(), Err(Error::Config(_))), "{k}={v}");
        }
        let mut c = ProducerConfig {
            max_in_flight: 0,
            ..ProducerConfig::default()
        };
        assert!(c.validate().is_err());
        c.max_in_flight = 1;
        c.seq.max_segment = 1;
        assert!(c.validate().is_err(), "seq config is validated too");
        let c = ProducerConfig {
            settle_horizon: Duration::from_secs(30),
            ..ProducerConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("settle_horizon"), "{err}");
        let mut c = ProducerConfig::default();
        c.mutations.wait_for_target = c.settle_horizon + Duration::from_secs(1);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("mutations.wait_for_target"), "{err}");
        let mut c = ProducerConfig::default();
        c.limits.max_skew = Duration::from_millis(10);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_skew"), "{err}");
    }
}

#[cfg(test)]
mod security_tests {
    use chatlog_kafka::KafkaProtocol;
    use chatlog_store::Secret;

    use super::*;

    #[test]
    fn security_reaches_the_client_and_never_prints() {
        let c = ProducerConfig {
            security: KafkaSecurity {
                protocol: KafkaProtocol::SaslSsl,
                sasl_mechanism: Some("PLAIN".into()),
                sasl_username: Some("logic".into()),
                sasl_password: Secret::new("pw-logic-42"),
                ..KafkaSecurity::default()
            },
            ..ProducerConfig::default()
        };
        c.validate().unwrap();
        let kc = c.client_config().unwrap();
        assert_eq!(kc.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(kc.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(kc.get("sasl.username"), Some("logic"));
        assert_eq!(kc.get("sasl.password"), Some("pw-logic-42"));
        assert!(!format!("{c:?}").contains("pw-logic-42"));
        let broken = ProducerConfig {
            security: KafkaSecurity {
                protocol: KafkaProtocol::SaslSsl,
                ..KafkaSecurity::default()
            },
            ..ProducerConfig::default()
        };
        assert!(broken.validate().is_err() && broken.client_config().is_err());
    }
}
