//! chatlog's one Kafka home, shared by the producer (Logic's library) and the consumer fleet, so
//! that both ends configure, classify and label Kafka the same way.
//!
//! Layout:
//! - [`security`]: Kafka TLS/SASL settings mapped onto librdkafka properties, and extra client
//!   properties whose secrets never print and which may not override the security settings.
//! - [`classify`]: what a Kafka error means — retriable for a send, what to do after a failed
//!   transactional call, whether the group moved on without this member.
//! - [`dlq`]: the header names of a DLQ record (read by operators and the chaos checker).
#![forbid(unsafe_code)]

pub mod classify;
pub mod dlq;
pub mod security;

pub use classify::{
    TxnFailure, classify, code_retriable, is_membership_code, kafka_retriable,
    means_membership_lost,
};
pub use security::{KafkaProtocol, KafkaSecurity, Properties};

/// Errors of the Kafka settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are inconsistent or unsupported (the message names the setting, never a
    /// secret's value).
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
