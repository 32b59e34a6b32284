//! Typed errors of the producer and whether retrying a send can help.

use chatlog_schemas::{EncodeError, ValidationError};
use rdkafka::error::KafkaError;

/// Why a send (or the producer) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message breaks the configured limits or field rules. Nothing was allocated or sent;
    /// retrying the same input fails the same way.
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
    /// The seq could not be allocated (Redis or CQL unreachable, contention). Nothing was sent;
    /// a retry with the same `client_msg_id` is safe.
    #[error("seq allocation failed: {0}")]
    Allocation(#[source] chatlog_store::Error),
    /// The message could not be encoded although it passed validation (a bug: the producer sizes
    /// the codec for the configured limits).
    #[error("cannot encode message: {0}")]
    Encode(#[source] EncodeError),
    /// Kafka did not accept the record. If `retriable`, sending again with the same
    /// `client_msg_id` re-produces the identical record (same seq, msg_id and server time).
    #[error("kafka ({}): {source}", if *retriable { "retriable" } else { "not retriable" })]
    Kafka {
        /// Whether a retry can succeed (timeouts, full queue, broker unavailable).
        retriable: bool,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// A retried send whose first allocation is too old to be produced again: its seq could
    /// land only after history may have reported it `missing` (see
    /// [`ProducerConfig::settle_horizon`](crate::ProducerConfig::settle_horizon)). Nothing was
    /// sent. Look the seq up in history: if it is there, the first send was stored (acknowledge
    /// that); if it is missing, send the message again under a new `client_msg_id`.
    #[error(
        "client_msg_id was allocated seq {seq} ({msg_id}) {age:?} ago, past the settle horizon: \
         not produced again; look seq {seq} up in history, and if it is missing send the message \
         under a new client_msg_id"
    )]
    Settled {
        /// The seq of the first allocation.
        seq: i64,
        /// The msg_id of the first allocation.
        msg_id: String,
        /// How long ago it was allocated.
        age: std::time::Duration,
    },
    /// The `client_msg_id` (of this sender, in this session) was first sent with other content,
    /// content type or ext. Nothing was allocated or sent, and the send must not be acknowledged:
    /// a retry must resend the same message; a new message needs a new `client_msg_id`.
    #[error(
        "client_msg_id already names another message (seq {seq}, msg_id {msg_id}); not sent: a \
         retry must resend the same message"
    )]
    Conflict {
        /// The seq of the first message under this client_msg_id.
        seq: i64,
        /// Its msg_id.
        msg_id: String,
    },
    /// This host's clock is further from the reference clock (Redis `TIME`) than half of
    /// `limits.max_skew` (the other half is the consumer's). Nothing was allocated or sent: a
    /// message stamped with this clock would be refused by consumers (ahead) or make history
    /// age gaps wrongly (behind). Fix the host's clock (NTP); sends succeed again once the
    /// clock is back within bounds.
    #[error(
        "this host's clock is {offset:?} {} the reference clock (Redis TIME), more than half of          limits.max_skew ({max_skew:?}): not sent; fix the host's clock (NTP)",
        if *ahead { "ahead of" } else { "behind" }
    )]
    ClockSkew {
        /// How far the host clock is from the reference.
        offset: std::time::Duration,
        /// Whether it is ahead (else behind).
        ahead: bool,
        /// The configured `limits.max_skew`.
        max_skew: std::time::Duration,
    },
    /// The producer's limits are above those a consumer of its topic published (table
    /// `consumer_limits`): a message within them could be acknowledged and then sent to the DLQ
    /// by that consumer. The producer does not start.
    #[error(
        "producer limits above those of consumer {instance:?} of topic {topic:?} (published at          {published_at_ms} ms since the epoch): {}; lower the producer's [limits] or raise the          consumer's, else messages would be acknowledged that the consumer sends to the DLQ",
        above.join(", ")
    )]
    LimitsAboveConsumer {
        /// The topic.
        topic: String,
        /// The consumer instance (its `kafka.transactional_id`).
        instance: String,
        /// When it published its limits, ms since the Unix epoch.
        published_at_ms: i64,
        /// Each limit above the consumer's, `name = producer's > consumer's`.
        above: Vec<String>,
    },
    /// The actor may not make this mutation (Logic's policy as the library applies it: only the
    /// sender edits or recalls; the sender, an admin or the owner deletes for everyone). Nothing
    /// was sent; retrying fails the same way.
    #[error("{action} not allowed: {reason}")]
    NotAllowed {
        /// `recall`, `edit` or `delete_for_everyone`.
        action: &'static str,
        /// Why, e.g. "only the sender may edit".
        reason: String,
    },
    /// The message to mutate is not in history. `settled`: the seq is final-missing (it never
    /// was and never will be a message): retrying fails the same way. Otherwise it may still be
    /// on its way (acknowledged, not yet stored, or a seq not sent yet): it was waited for up to
    /// `mutations.wait_for_target`, and a retry later may find it.
    #[error(
        "message {seq} of session {session_id:?} not found ({})",
        if *settled { "it does not exist" } else { "not stored yet: retry later" }
    )]
    TargetNotFound {
        /// The session.
        session_id: String,
        /// The seq asked for.
        seq: i64,
        /// Whether history reports the seq final-missing.
        settled: bool,
    },
    /// The message is recalled or deleted for everyone: no edit applies to it any more. Nothing
    /// was sent.
    #[error("message is {state}: a final state, it cannot be edited")]
    Final {
        /// The state's symbol, `RECALLED` or `DELETED`.
        state: &'static str,
    },
    /// More seqs in one delete-for-me call than
    /// [`MAX_HIDE`](chatlog_store::hidden::MAX_HIDE). Nothing was written.
    #[error("{count} seqs in one call, over the limit of {max}")]
    TooManySeqs {
        /// Seqs asked.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Reading the target message (history) or writing delete-for-me rows failed (Redis or CQL
    /// unreachable). Nothing was sent; retrying is safe (a mutation is re-read and re-decided,
    /// a hide is an idempotent write).
    #[error("store: {0}")]
    Store(#[source] chatlog_store::Error),
    /// The producer was closed.
    #[error("producer is closed")]
    Closed,
    /// The configuration is invalid.
    #[error("invalid producer configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether sending the same message again (same `client_msg_id`), or asking for the same
    /// mutation again, may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Kafka { retriable, .. } => *retriable,
            // Redis or CQL may be back; the idempotency record makes the retry safe. A session
            // out of seqs (Request) stays so.
            Error::Allocation(e) => !matches!(
                e,
                chatlog_store::Error::Config(_) | chatlog_store::Error::Request(_)
            ),
            Error::TargetNotFound { settled, .. } => !*settled,
            Error::Store(e) => {
                !matches!(
                    e,
                    chatlog_store::Error::Config(_) | chatlog_store::Error::Request(_)
                ) && !e.is_permanent()
            }
            Error::Invalid(_)
            | Error::NotAllowed { .. }
            | Error::Final { .. }
            | Error::TooManySeqs { .. }
            | Error::Encode(_)
            | Error::Settled { .. }
            | Error::Conflict { .. }
            | Error::ClockSkew { .. }
            | Error::LimitsAboveConsumer { .. }
            | Error::Closed
            | Error::Config(_) => false,
        }
    }

    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Allocation(_) => "allocation",
            Error::Encode(_) => "encode",
            Error::Kafka { .. } => "kafka",
            Error::Settled { .. } => "settled",
            Error::Conflict { .. } => "conflict",
            Error::ClockSkew { .. } => "skew",
            Error::LimitsAboveConsumer { .. } => "limits",
            Error::NotAllowed { .. } => "not_allowed",
            Error::TargetNotFound { .. } => "not_found",
            Error::Final { .. } => "final",
            Error::TooManySeqs { .. } => "too_many",
            Error::Store(_) => "store",
            Error::Closed => "closed",
            Error::Config(_) => "config",
        }
    }

    /// A failed allocation: a conflicting retry is an error of its own (never retriable).
    pub(crate) fn from_allocation(e: chatlog_store::Error) -> Self {
        match e {
            chatlog_store::Error::IdempotencyConflict { seq, msg_id } => {
                Error::Conflict { seq, msg_id }
            }
            e => Error::Allocation(e),
        }
    }

    pub(crate) fn kafka(source: KafkaError) -> Self {
        Error::Kafka {
            retriable: kafka_retriable(&source),
            source,
        }
    }
}

pub use chatlog_kafka::classify::{code_retriable, kafka_retriable};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn transient_kafka_errors_are_retriable_and_fatal_ones_are_not() {
        let produce = |c| Error::kafka(KafkaError::MessageProduction(c));
        for c in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert!(produce(c).is_retriable(), "{c:?}");
        }
        for c in [
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidConfig,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::ProducerFenced,
        ] {
            assert!(!produce(c).is_retriable(), "{c:?}");
        }
        assert!(!Error::kafka(KafkaError::ClientCreation("x".into())).is_retriable());
        assert!(!Error::Closed.is_retriable());
        let not_found = |settled| Error::TargetNotFound {
            session_id: "s".into(),
            seq: 1,
            settled,
        };
        assert!(not_found(false).is_retriable());
        assert!(!not_found(true).is_retriable());
        assert!(!Error::Final { state: "RECALLED" }.is_retriable());
        assert!(
            !Error::NotAllowed {
                action: "edit",
                reason: "x".into()
            }
            .is_retriable()
        );
        assert!(!Error::Invalid(ValidationError::EmptyId { field: "sender_id" }).is_retriable());
        assert!(
            Error::Allocation(chatlog_store::Error::Redis {
                what: "x",
                source: redis::RedisError::from((redis::ErrorKind::Io, "down")),
            })
            .is_retriable()
        );
    }
}
