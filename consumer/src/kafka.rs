//! The Kafka side: client configuration, the rebalance/statistics context, DLQ records and the
//! classification of transactional errors.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::decode::Poison;
use crate::{Result, telemetry};

/// A (topic, partition).
pub type Tp = (String, i32);

/// Rebalance and statistics callbacks. They run inside `poll` on the pipeline thread and only
/// record what happened; the pipeline acts on it between polls.
#[derive(Default)]
pub struct Context {
    revoked: Mutex<BTreeSet<Tp>>,
    assigned: Mutex<BTreeSet<Tp>>,
    /// Assignments completed so far, empty ones included: librdkafka delivers one after every
    /// rebalance this member takes part in, so a new one proves membership again.
    assignments: AtomicU64,
}

impl Context {
    /// Partitions revoked (or lost) since the last call.
    pub fn take_revoked(&self) -> BTreeSet<Tp> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many assignments (one per completed rebalance, possibly empty) this member has had.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// The partitions currently assigned.
    pub fn assigned(&self) -> BTreeSet<Tp> {
        self.assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn tps(tpl: &TopicPartitionList) -> impl Iterator<Item = Tp> + '_ {
    tpl.elements()
        .into_iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                // Offsets are committed by the transaction, which librdkafka does not see as a
                // commit; the pipeline stores them too, so `consumer_lag_stored` is the lag.
                // librdkafka reports -1 for partitions this member does not consume.
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.fetch_state == "active" && p.hi_offset == 0 {
                    // Fetched by this member and never written to: nothing stored or committed
                    // to measure from, and nothing to lag behind.
                    0
                } else {
                    -1
                };
                if *partition >= 0 && lag >= 0 {
                    metrics::gauge!(telemetry::LAG, "partition" => partition.to_string())
                        .set(lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        use rdkafka::consumer::Consumer;
        if let Rebalance::Revoke(tpl) = rebalance {
            let kind = if consumer.assignment_lost() {
                "lost"
            } else {
                "revoke"
            };
            metrics::counter!(telemetry::REBALANCES, "kind" => kind).increment(1);
            let gone: Vec<Tp> = tps(tpl).collect();
            tracing::info!(kind, partitions = ?gone, "partitions leaving this consumer");
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for tp in gone {
                assigned.remove(&tp);
                revoked.insert(tp);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::counter!(telemetry::REBALANCES, "kind" => "assign").increment(1);
            let added: Vec<Tp> = tps(tpl).collect();
            tracing::info!(partitions = ?added, "partitions assigned to this consumer");
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for tp in added {
                revoked.remove(&tp);
                assigned.insert(tp);
            }
            self.assignments.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn base(config: &KafkaConfig) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    for (k, v) in config.security.properties()? {
        c.set(k, v);
    }
    for (k, v) in config.properties.iter() {
        c.set(k, v);
    }
    Ok(c)
}

/// The group consumer: manual offsets (committed by the transaction), read_committed,
/// cooperative-sticky assignment.
pub fn consumer_config(config: &KafkaConfig) -> Result<ClientConfig> {
    let mut c = base(config)?;
    c.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000");
    if let Some(id) = &config.group_instance_id {
        c.set("group.instance.id", id);
    }
    Ok(c)
}

/// The transactional producer (one per consumer instance, KIP-447).
pub fn producer_config(config: &KafkaConfig) -> Result<ClientConfig> {
    let mut c = base(config)?;
    c.set("transactional.id", &config.transactional_id)
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all");
    Ok(c)
}

/// The transactional producer type.
pub type TxProducer = ThreadedProducer<DefaultProducerContext>;

/// The headers of a DLQ record: why, and where the record came from.
pub fn dlq_headers(p: &Poison) -> OwnedHeaders {
    let partition = p.record.origin.partition.to_string();
    let offset = p.record.origin.offset.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "chatlog-dlq-reason",
            value: Some(p.reason),
        })
        .insert(Header {
            key: "chatlog-dlq-detail",
            value: Some(p.detail.as_str()),
        })
        .insert(Header {
            key: "chatlog-dlq-topic",
            value: Some(p.record.origin.topic.as_str()),
        })
        .insert(Header {
            key: "chatlog-dlq-partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "chatlog-dlq-offset",
            value: Some(offset.as_str()),
        })
}

/// What to do about a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFailure {
    /// Call it again (e.g. a commit that timed out).
    Retry,
    /// Abort the transaction, rewind to the committed offsets and redo the batch.
    Abort,
    /// The producer is unusable (fenced by a newer instance, or a broken state): exit.
    Fatal,
}

/// Classifies an error of a transactional call.
pub fn classify(e: &KafkaError) -> TxnFailure {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => TxnFailure::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => TxnFailure::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => TxnFailure::Retry,
        _ => TxnFailure::Abort,
    }
}

/// Whether `e` means this member may no longer own its partitions: the group moved on without it
/// (evicted, fenced, a rebalance under way, a newer instance with its static id or transactional
/// id). Until its next assignment it must not write windows (see `Pipeline::write`).
pub fn means_membership_lost(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(is_membership_code)
}

/// The error codes of [`means_membership_lost`].
pub fn is_membership_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // The group coordinator no longer knows this member or its generation.
        C::UnknownMemberId
            | C::IllegalGeneration
            | C::RebalanceInProgress
            | C::FencedInstanceId
            | C::FencedMemberEpoch
            | C::StaleMemberEpoch
            // librdkafka's own view: evicted, or it gave up the partitions.
            | C::AssignmentLost
            | C::PollExceeded
            | C::Fenced
            // A newer producer with this transactional id: another instance owns the work.
            | C::ProducerFenced
            | C::InvalidProducerEpoch
            // No group metadata: not (or no longer) in the group (see `Pipeline::commit`).
            | C::InvalidGroupId
    )
}

#[cfg(test)]
mod tests {
    use chatlog_store::Secret;
    use chatlog_store::security::{KafkaProtocol, KafkaSecurity};

    use super::*;

    #[test]
    fn security_settings_reach_both_clients() {
        let config = KafkaConfig {
            security: KafkaSecurity {
                protocol: KafkaProtocol::SaslSsl,
                sasl_mechanism: Some("SCRAM-SHA-512".into()),
                sasl_username: Some("chatlog".into()),
                sasl_password: Secret::new("pw-123"),
                ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
                ..KafkaSecurity::default()
            },
            ..KafkaConfig::default()
        };
        for c in [
            consumer_config(&config).unwrap(),
            producer_config(&config).unwrap(),
        ] {
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(c.get("sasl.username"), Some("chatlog"));
            assert_eq!(c.get("sasl.password"), Some("pw-123"));
            assert_eq!(c.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        }
        assert!(!format!("{config:?}").contains("pw-123"));
    }

    #[test]
    fn membership_errors_are_told_from_transient_ones() {
        use RDKafkaErrorCode as C;
        for code in [
            C::UnknownMemberId,
            C::IllegalGeneration,
            C::RebalanceInProgress,
            C::FencedInstanceId,
            C::ProducerFenced,
            C::AssignmentLost,
            C::PollExceeded,
        ] {
            assert!(is_membership_code(code), "{code:?}");
        }
        for code in [
            C::NotCoordinator,
            C::CoordinatorLoadInProgress,
            C::RequestTimedOut,
            C::BrokerTransportFailure,
            C::MessageTimedOut,
            C::ConcurrentTransactions,
        ] {
            assert!(!is_membership_code(code), "{code:?}");
        }
        assert!(means_membership_lost(&KafkaError::ConsumerCommit(
            C::IllegalGeneration
        )));
        assert!(means_membership_lost(&KafkaError::MessageConsumption(
            C::PollExceeded
        )));
        assert!(!means_membership_lost(&KafkaError::Seek("x".into())));
    }

    #[test]
    fn consumer_reads_committed_with_manual_offsets() {
        let c = consumer_config(&KafkaConfig::default()).unwrap();
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        let p = producer_config(&KafkaConfig::default()).unwrap();
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("transactional.id"), Some("chatlog-consumer-0"));
    }
}
