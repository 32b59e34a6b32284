//! Committing a batch: one Kafka transaction with the DLQ records and the consumed offsets, and
//! what a failed transactional call means for the batch.

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::{Dead, Failed, Pipeline};
use crate::Error;
use crate::decode::Origin;
use crate::kafka::{self, DlqPayload, TxProducer, TxnFailure};
use crate::telemetry;

/// An open transaction: the group metadata its offsets go with, and the assignments this member
/// had seen when it was read.
pub(super) struct Opened {
    pub(super) group: ConsumerGroupMetadata,
    pub(super) assignments: u64,
}

/// The shortest wait given to one `commit_transaction` call near the commit deadline.
pub(super) const MIN_COMMIT_WAIT: Duration = Duration::from_secs(1);

impl Pipeline {
    /// One Kafka transaction: DLQ records + the consumed offsets, on this thread
    /// ([`open`](Self::open), [`Closer::close`], [`settle`](Self::settle)). A commit failing with
    /// retriable errors is retried until `isolation.commit_deadline`, then aborted (the batch
    /// rewinds).
    pub(super) fn commit(
        &self,
        poison: &[Dead],
        next_offsets: &TopicPartitionList,
    ) -> Result<(), Failed> {
        let opened = self.open(poison)?;
        let closed = self.closer().close(next_offsets, &opened.group);
        self.settle(closed, opened.assignments)
    }

    /// What closing a transaction needs from the pipeline (the commit thread borrows it).
    pub(super) fn closer(&self) -> Closer<'_> {
        Closer {
            producer: &self.producer,
            timeout: self.config.kafka.transaction_timeout,
            commit_deadline: self.isolation.commit_deadline,
            fault_delay: self.faults.commit_delay,
            fault_return_delay: self.faults.commit_return_delay,
        }
    }

    /// Opens a batch's transaction: begins it, sends the DLQ records into it, and returns the
    /// group metadata its offsets go with (read now: fresh, as the broker checks it). On a failure
    /// the transaction is aborted.
    pub(super) fn open(&self, poison: &[Dead]) -> Result<Opened, Failed> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.fail("begin_transaction", &e))?;
        let assignments = self.consumer.context().assignments();
        let opened = (|| {
            for p in poison {
                self.send_dlq(p)?;
            }
            // No group metadata: not (or no longer) in the group; abort and rejoin.
            self.consumer
                .group_metadata()
                .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidGroupId))
        })();
        match opened {
            Ok(group) => Ok(Opened { group, assignments }),
            Err(e) => Err(self.abort(e, assignments)),
        }
    }

    /// What a transaction's [`Closer::close`] came to: `Ok` if it committed; otherwise it is aborted and
    /// the error says what the batch does next. `opened_at`: [`Opened::assignments`].
    pub(super) fn settle(
        &self,
        closed: Result<(), KafkaError>,
        opened_at: u64,
    ) -> Result<(), Failed> {
        closed.map_err(|e| self.abort(e, opened_at))
    }

    /// Aborts the open transaction after `e` (unless `e` is fatal: nothing can be aborted then).
    /// A membership error speaks of the group generation of the transaction's metadata: an
    /// assignment after `opened_at` (the rebalance that failed it, while the commit was closed on
    /// its thread) already answers it.
    fn abort(&self, e: KafkaError, opened_at: u64) -> Failed {
        let failed = self.fail_since("commit", &e, opened_at);
        if !matches!(failed, Failed::Fatal(_)) {
            metrics::counter!(telemetry::TRANSACTIONS, "result" => "aborted").increment(1);
            if let Err(abort) = self
                .producer
                .abort_transaction(self.config.kafka.transaction_timeout)
            {
                // After a transaction timeout librdkafka can refuse to abort; only a new
                // producer (a restart of this instance) recovers.
                return Failed::Fatal(Error::kafka_fatal(
                    format!("abort_transaction failed after `{e}`"),
                    abort,
                ));
            }
        }
        failed
    }

    /// Sends one DLQ record: whole if it fits in the DLQ, else a truncated copy (a prefix of the
    /// value, its length and SHA-256); a value-less copy if the producer or the broker refused
    /// the truncated one (a DLQ topic smaller than described).
    pub(super) fn send_dlq(&self, d: &Dead) -> Result<(), KafkaError> {
        let p = &d.poison;
        let key = p.record.key.as_deref();
        let key_len = key.map_or(0, <[u8]>::len);
        let refused = self.producer.context().refused(&p.record.origin);
        let mut capacity = if refused.is_some() {
            0
        } else {
            self.dlq_capacity
        };
        loop {
            let headers = kafka::dlq_headers(p, d.stage);
            let fitted = kafka::fit_payload(
                p.record.payload.as_deref(),
                key_len,
                kafka::headers_len(&headers),
                capacity,
            );
            let (payload, headers) = match fitted {
                DlqPayload::Whole(payload) => (payload, headers),
                DlqPayload::Truncated {
                    prefix,
                    original,
                    sha256,
                } => (
                    Some(prefix),
                    kafka::truncated_headers(headers, original, &sha256),
                ),
            };
            let truncated =
                payload.map(<[u8]>::len) != p.record.payload.as_deref().map(<[u8]>::len);
            let mut record = BaseRecord::<[u8], [u8], Box<Origin>>::with_opaque_to(
                &self.config.kafka.dlq_topic,
                Box::new(p.record.origin.clone()),
            )
            .headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            let sent = loop {
                match self.producer.send(record) {
                    Ok(()) => break Ok(()),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue drains as the broker acknowledges; wait for room.
                        self.producer.flush(Duration::from_millis(100))?;
                        record = back;
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            match sent {
                Ok(()) => {
                    if truncated {
                        metrics::counter!(telemetry::DLQ_TRUNCATED).increment(1);
                    }
                    return Ok(());
                }
                // Refused locally, so not part of the transaction: send the value-less copy.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                    if capacity > 0 =>
                {
                    tracing::warn!(
                        partition = p.record.origin.partition,
                        offset = p.record.origin.offset,
                        "the producer refused a DLQ copy as too large; sending it without its value"
                    );
                    capacity = 0;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn fail(&self, what: &str, e: &KafkaError) -> Failed {
        self.fail_since(what, e, self.consumer.context().assignments())
    }

    /// [`fail`](Self::fail) for a call made while `assignments` assignments had been seen.
    fn fail_since(&self, what: &str, e: &KafkaError, assignments: u64) -> Failed {
        if kafka::means_membership_lost(e) {
            self.doubt_membership(e, assignments);
        }
        match kafka::classify(e) {
            TxnFailure::Fatal => Failed::Fatal(Error::kafka_fatal(what, e.clone())),
            // Not the records' fault: never counts towards isolating them.
            _ if kafka::means_membership_lost(e) => Failed::Fenced(format!("{what}: {e}")),
            TxnFailure::Abort | TxnFailure::Retry => Failed::Rewind(format!("{what}: {e}")),
        }
    }
}

/// Closes transactions [`Pipeline::open`] opened. Touches only the producer, so the loop runs
/// it on another thread while it collects and writes the next batch.
pub(super) struct Closer<'a> {
    producer: &'a TxProducer,
    timeout: Duration,
    commit_deadline: Duration,
    /// [`super::Faults::commit_delay`] (zero but in tests).
    fault_delay: Duration,
    /// [`super::Faults::commit_return_delay`] (zero but in tests).
    fault_return_delay: Duration,
}

impl Closer<'_> {
    /// Sends the batch's offsets and commits, retrying a commit that fails with retriable errors
    /// until `isolation.commit_deadline`.
    pub(super) fn close(
        &self,
        next_offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), KafkaError> {
        let (producer, timeout) = (self.producer, self.timeout);
        if !self.fault_delay.is_zero() {
            std::thread::sleep(self.fault_delay);
        }
        producer.send_offsets_to_transaction(next_offsets, group, timeout)?;
        let deadline = Instant::now() + self.commit_deadline;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match producer.commit_transaction(timeout.min(left.max(MIN_COMMIT_WAIT))) {
                Ok(()) => {
                    if !self.fault_return_delay.is_zero() {
                        std::thread::sleep(self.fault_return_delay);
                    }
                    return Ok(());
                }
                Err(e) if kafka::classify(&e) == TxnFailure::Retry => {
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            error = %e,
                            deadline = ?self.commit_deadline,
                            "commit_transaction still failing at isolation.commit_deadline; \
                             aborting the transaction and rewinding"
                        );
                        return Err(e);
                    }
                    metrics::counter!(telemetry::RETRIES, "stage" => "commit").increment(1);
                    tracing::warn!(error = %e, "commit_transaction failed; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }
}
