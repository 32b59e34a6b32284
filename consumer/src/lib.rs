//! chatlog's consumer: the persistence stage of the pipeline, run as a fleet in one consumer group.
//!
//! Each instance reads `chat.messages` in Kafka transactions, writes messages to the CQL database
//! as UNLOGGED single-partition batches, keeps each session's Redis window of newest messages,
//! sends poison records to a DLQ inside the same transaction as the offsets, and serves
//! Prometheus metrics. Replays after any crash leave identical state: exactly-once in effect.
//!
//! Layout (the binary `chatlog-consumer` is a thin CLI over these):
//! - [`clock`]: CLOCK_BOOTTIME, the self-fence's clock (counts suspend).
//! - [`config`]: the configuration (TOML + env + flags), with a doc comment on every field.
//! - [`decode`]: stage 1 — record → message or poison with a reason.
//! - [`kafka`]: client settings, rebalance/statistics context, DLQ headers, error classification.
//! - [`pipeline`]: the loop — collect, decode, CQL, Redis, commit — and its failure handling.
//! - [`telemetry`]: metric names, the Prometheus recorder, `/metrics` `/healthz` `/readyz`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod kafka;
pub mod pipeline;
pub mod telemetry;

pub use config::Config;
pub use pipeline::Pipeline;

/// Errors of the consumer. Where another library failed, its error is the typed `source`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (the consumer's own checks).
    #[error("configuration: {0}")]
    Config(String),
    /// The configured limits are invalid for the codec.
    #[error("configuration: {0}")]
    Schema(#[from] chatlog_schemas::SchemaError),
    /// The Kafka TLS/SASL settings or client properties are invalid.
    #[error(transparent)]
    KafkaSettings(#[from] chatlog_kafka::Error),
    /// The CQL database or Redis failed.
    #[error(transparent)]
    Store(#[from] chatlog_store::Error),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka: {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The Prometheus recorder could not be built or installed.
    #[error("configuration: {what}: {source}")]
    Metrics {
        /// What was being done.
        what: &'static str,
        /// The exporter's error.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
    /// A socket or thread could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka call failed in a way the instance cannot go on from: fenced by a newer instance
    /// with the same transactional id, a broken transactional producer, a fatal consumer error,
    /// a rewind that could not seek. Fatal like [`Error::Fatal`].
    #[error("fatal: {what}: {source}")]
    KafkaFatal {
        /// What failed, and what it means.
        what: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The instance cannot go on for a reason of its own (the pipeline thread could not start or
    /// panicked, the last batch outlived the shutdown timeout); the process exits non-zero and is
    /// restarted.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl Error {
    /// Whether the instance must stop and be replaced (exit code 3), as opposed to a failure to
    /// start or to reach a dependency.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Fatal(_) | Error::KafkaFatal { .. })
    }

    pub(crate) fn kafka_fatal(what: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::KafkaFatal {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn kafka(what: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            what: what.into(),
            source,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
