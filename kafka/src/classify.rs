//! What a Kafka error means, for the producer's sends and the consumer's transactions and group
//! membership. Kept together so that both ends read librdkafka's codes the same way.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Whether a Kafka error is transient: queue full, timeouts, transport and leadership changes
/// are; authentication, authorization, configuration, oversize records and fatal (fenced
/// idempotent producer) errors are not.
pub fn kafka_retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Canceled | KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
            false
        }
        _ => e.rdkafka_error_code().is_some_and(code_retriable),
    }
}

/// Whether an rdkafka error code is transient (see [`kafka_retriable`]).
pub fn code_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::QueueFull
            | C::MessageTimedOut
            | C::TimedOutQueue
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::ReplicaNotAvailable
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::ISRInsufficient
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::ThrottlingQuotaExceeded
            | C::Retry
            | C::PurgeInflight
            | C::PurgeQueue
            | C::Interrupted
            | C::WaitCache
    )
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
/// id). Until its next assignment it must not write windows (see the consumer's `Pipeline::write`).
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
            // No group metadata: not (or no longer) in the group (see the consumer's `Pipeline::commit`).
            | C::InvalidGroupId
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
