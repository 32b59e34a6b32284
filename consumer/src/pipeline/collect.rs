//! Collecting a batch: polling until it is full or has lingered, the offsets it covers, and
//! rewinding to its first offsets after a failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::Pipeline;
use super::isolation::Progress;
use crate::clock::BootInstant;
use crate::decode::{Origin, Record};
use crate::{Error, Result, kafka, telemetry};

/// Records polled for one transaction.
pub(super) struct Batch {
    pub(super) records: Vec<Record>,
    /// When the poll that returned the first record started: the window fence counts from here,
    /// so a process frozen inside that poll or the linger after it resumes with an old fence.
    pub(super) polled_from: BootInstant,
}

/// How long [`Pipeline::collect`] polls an idle topic before it returns no batch.
const IDLE_RETURN: Duration = Duration::from_secs(1);

impl Pipeline {
    /// Polls until `max_records` records (`isolation.batch_records` while isolating) or
    /// `max_bytes`, `linger` after the first one, or shutdown. `None`: no records. An error:
    /// librdkafka reported a fatal consumer error (e.g. fenced by a newer member with the same
    /// `group_instance_id`); the consumer is unusable.
    pub(super) fn collect(&self, progress: &Progress) -> Result<Option<Batch>> {
        let max = if progress.isolating() {
            self.isolation
                .batch_records
                .min(self.config.batch.max_records)
        } else {
            self.config.batch.max_records
        };
        let max_bytes = self.config.batch.max_bytes;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut deadline: Option<Instant> = None;
        let mut polled_from: Option<BootInstant> = None;
        let started = Instant::now();
        while batch.len() < max && bytes < max_bytes && !self.shutdown.is_cancelled() {
            let wait = match deadline {
                // Idle: hand back to the loop now and then, for its periodic work (the summary
                // line, stall reports).
                None if started.elapsed() >= IDLE_RETURN => break,
                None => Duration::from_millis(100),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left
                }
            };
            let poll_started = BootInstant::now();
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    let record = Record {
                        origin: Origin {
                            topic: m.topic().to_owned(),
                            partition: m.partition(),
                            offset: m.offset(),
                        },
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                    };
                    if batch.is_empty() {
                        tracing::debug!(
                            partition = record.origin.partition,
                            offset = record.origin.offset,
                            "first record of a batch polled"
                        );
                    }
                    polled_from.get_or_insert(poll_started);
                    bytes += record.bytes();
                    batch.push(record);
                    deadline.get_or_insert_with(|| Instant::now() + self.config.batch.linger);
                }
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(Error::kafka_fatal("fatal consumer error", e));
                }
                Some(Err(e)) => {
                    if kafka::means_membership_lost(&e) {
                        self.doubt_membership(&e);
                    }
                    tracing::warn!(error = %e, "consumer error");
                }
                None => {}
            }
            // librdkafka reports a rebalance protocol only once the member has joined its group.
            if !self.health.is_in_group() {
                let joined = !matches!(
                    self.consumer.rebalance_protocol(),
                    rdkafka::consumer::RebalanceProtocol::None
                );
                self.health.set_in_group(joined);
            }
            // A partition revoked during this poll is no longer ours: its uncommitted records
            // belong to the next owner, which reads them again from the committed offset.
            let revoked = self.consumer.context().take_revoked();
            if !revoked.is_empty() {
                let before = batch.len();
                batch.retain(|r| !revoked.contains(&(r.origin.topic.clone(), r.origin.partition)));
                bytes = batch.iter().map(Record::bytes).sum();
                if batch.is_empty() {
                    polled_from = None;
                }
                let dropped = before - batch.len();
                if dropped > 0 {
                    metrics::counter!(telemetry::REVOKED_DROPPED).increment(dropped as u64);
                    tracing::info!(dropped, "dropped uncommitted records of revoked partitions");
                }
            }
        }
        Ok(polled_from.map(|polled_from| Batch {
            polled_from,
            records: batch,
        }))
    }

    /// Seeks each partition of a failed batch back to its first offset, so the next polls read
    /// the batch again. Partitions revoked meanwhile are skipped: their new owner starts from the
    /// committed offset anyway. A failed seek is an error: the position stays past the batch.
    pub(super) fn rewind(&self, first_offsets: &BTreeMap<(String, i32), i64>) -> Result<()> {
        let assigned = self.consumer.context().assigned();
        for ((topic, partition), offset) in first_offsets {
            if !assigned.contains(&(topic.clone(), *partition)) {
                continue;
            }
            let sought = if self.faults.fail_seeks {
                Err(KafkaError::Seek(
                    "injected (CHATLOG_FAULT_FAIL_SEEKS)".into(),
                ))
            } else {
                self.consumer.seek(
                    topic,
                    *partition,
                    Offset::Offset(*offset),
                    Duration::from_secs(10),
                )
            };
            if let Err(e) = sought {
                let what = format!(
                    "seek failed: {topic} [{partition}] back to offset {offset}, the start of a \
                     batch that did not commit; exiting, so that no later commit covers that \
                     batch and the next instance resumes from the committed offsets"
                );
                return Err(Error::kafka_fatal(what, e));
            }
        }
        Ok(())
    }
}

/// The first offset of each partition in the batch (where a rewind goes back to).
pub(super) fn first_offsets(batch: &[Record]) -> BTreeMap<(String, i32), i64> {
    let mut first = BTreeMap::new();
    for r in batch {
        first
            .entry((r.origin.topic.clone(), r.origin.partition))
            .and_modify(|o: &mut i64| *o = (*o).min(r.origin.offset))
            .or_insert(r.origin.offset);
    }
    first
}

/// The first and last offset of each partition in the batch.
pub(super) fn offset_range(batch: &[Record]) -> BTreeMap<(String, i32), (i64, i64)> {
    let mut range: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for r in batch {
        let o = r.origin.offset;
        range
            .entry((r.origin.topic.clone(), r.origin.partition))
            .and_modify(|(lo, hi)| {
                *lo = (*lo).min(o);
                *hi = (*hi).max(o);
            })
            .or_insert((o, o));
    }
    range
}

/// The offsets to commit: last processed + 1 per partition.
pub(super) fn next_offsets(batch: &[Record]) -> TopicPartitionList {
    let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in batch {
        let e = last
            .entry((r.origin.topic.as_str(), r.origin.partition))
            .or_insert(r.origin.offset);
        *e = (*e).max(r.origin.offset);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        // A batch holds only assigned partitions, so adding cannot fail on a bad offset.
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
    }
    tpl
}
