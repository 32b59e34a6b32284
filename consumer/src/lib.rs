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

pub mod clock;
pub mod config;
pub mod decode;
pub mod kafka;
pub mod pipeline;
pub mod telemetry;

pub use config::Config;
pub use pipeline::Pipeline;

/// Errors of the consumer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The CQL database or Redis failed.
    #[error(transparent)]
    Store(#[from] chatlog_store::Error),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The instance cannot go on (fenced by a newer instance with the same transactional id, or
    /// its transactional producer is broken); the process exits non-zero and is restarted.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl From<chatlog_schemas::SchemaError> for Error {
    fn from(e: chatlog_schemas::SchemaError) -> Self {
        Error::Config(e.to_string())
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
