//! Collecting a batch: polling until it is full or has lingered, the offsets it covers, and
//! rewinding to its first offsets after a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::Pipeline;
use super::isolation::Progress;
use crate::clock::BootInstant;
use crate::decode::{self, Decoded, Good, Origin, Poison};
use crate::{Error, Result, kafka, telemetry};

/// Records polled for one transaction, decoded as they were polled (from the Kafka client's
/// memory: each record's bytes are copied once).
pub(super) struct Batch {
    /// Records that decoded into valid messages, in poll order.
    pub(super) good: Vec<Good>,
    /// Records for the DLQ, in poll order.
    pub(super) poison: Vec<Poison>,
    /// When the poll that returned the first record started: the window fence counts from here,
    /// so a process frozen inside that poll or the linger after it resumes with an old fence.
    pub(super) polled_from: BootInstant,
    /// Time spent decoding (the `decode` stage), estimated from a sample of the records.
    pub(super) decode_time: Duration,
}

impl Batch {
    /// Where every record of the batch came from.
    pub(super) fn origins(&self) -> impl Iterator<Item = &Origin> {
        (self.good.iter().map(|g| &g.origin)).chain(self.poison.iter().map(|p| &p.record.origin))
    }

    /// Records in the batch.
    pub(super) fn len(&self) -> usize {
        self.good.len() + self.poison.len()
    }
}

/// One record in this many has its decoding timed for the `decode` stage.
const DECODE_SAMPLE: u32 = 16;

/// How long [`Pipeline::collect`] polls an idle topic before it returns no batch.
const IDLE_RETURN: Duration = Duration::from_secs(1);

/// One poll's wait on an idle topic.
const IDLE_POLL: Duration = Duration::from_millis(100);

impl Pipeline {
    /// Polls until `max_records` records (`isolation.batch_records` while isolating) or
    /// `max_bytes`, `linger` after the first one, or shutdown, decoding each record as it comes.
    /// `None`: no records. An error: librdkafka reported a fatal consumer error (e.g. fenced by a
    /// newer member with the same `group_instance_id`); the consumer is unusable.
    ///
    /// `after_batch`: the loop has just written a batch. Records already queued then arrived
    /// while it was written — they have waited about as long as linger would make them, and
    /// more are fetched while this batch is written — so the batch takes what is queued (up to
    /// `max_records` / `max_bytes`, however long polling and decoding them takes) and does not
    /// linger for more.
    ///
    /// `hand_back`: while no record has come, return no batch at this instant (held batches
    /// wait for it to be committed; see `batch.commit_interval`).
    pub(super) fn collect(
        &self,
        progress: &Progress,
        after_batch: bool,
        hand_back: Option<Instant>,
    ) -> Result<Option<Batch>> {
        let max = if progress.isolating() {
            self.isolation
                .batch_records
                .min(self.config.batch.max_records)
        } else {
            self.config.batch.max_records
        };
        let max_bytes = self.config.batch.max_bytes;
        let mut good: Vec<Good> = Vec::new();
        let mut poison: Vec<Poison> = Vec::new();
        let mut bytes = 0;
        let mut deadline: Option<Instant> = None;
        let mut polled_from: Option<BootInstant> = None;
        // Decoding: records decoded, the time of the timed ones, the skew check's clock reading
        // (read once per batch, again only for a record that looks ahead of it).
        let mut decoded: u32 = 0;
        let mut decode_sampled = Duration::ZERO;
        let mut skew_clock: Option<decode::Clock> = None;
        // The topic's name, shared by every record's origin.
        let mut topic: Option<Arc<str>> = None;
        // First poll without waiting: whether records are queued already.
        let mut probe = after_batch;
        let mut queued_only = false;
        let started = Instant::now();
        while good.len() + poison.len() < max && bytes < max_bytes && !self.shutdown.is_cancelled()
        {
            let now = Instant::now();
            let wait = match deadline {
                None if probe => Duration::ZERO,
                // Idle: hand back to the loop now and then, for its periodic work (the summary
                // line, stall reports), and when held batches are due.
                None if started.elapsed() >= IDLE_RETURN => break,
                None if hand_back.is_some_and(|t| now >= t) => break,
                None => hand_back.map_or(IDLE_POLL, |t| IDLE_POLL.min(t - now)),
                // Not waiting for anything, so no linger to cut the batch short either: it ends
                // when the queue is empty (below), full, or at `max_bytes`.
                Some(_) if queued_only => Duration::ZERO,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left
                }
            };
            let probing = std::mem::take(&mut probe);
            let empty = good.is_empty() && poison.is_empty();
            // Only a batch's first record needs the time its poll started (the fence).
            let poll_started = empty.then(BootInstant::now);
            let mut nothing = false;
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    let origin = Origin {
                        topic: match &topic {
                            Some(t) if **t == *m.topic() => t.clone(),
                            _ => topic.insert(Arc::from(m.topic())).clone(),
                        },
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    if empty {
                        tracing::debug!(
                            partition = origin.partition,
                            offset = origin.offset,
                            "first record of a batch polled"
                        );
                        queued_only = probing;
                    }
                    if let Some(at) = poll_started {
                        polled_from.get_or_insert(at);
                    }
                    bytes += m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len);
                    // Every DECODE_SAMPLE-th record is timed (the stage's time is scaled from
                    // them): two clock calls per record cost about as much as the copies saved.
                    let clock = skew_clock.get_or_insert_with(decode::Clock::cached);
                    let timed = decoded.is_multiple_of(DECODE_SAMPLE).then(Instant::now);
                    match decode::decode_borrowed(&self.codec, origin, m.key(), m.payload(), clock)
                    {
                        Decoded::Good(g) => good.push(g),
                        Decoded::Poison(p) => poison.push(p),
                    }
                    decoded += 1;
                    if let Some(t) = timed {
                        decode_sampled += t.elapsed();
                    }
                    deadline.get_or_insert_with(|| Instant::now() + self.config.batch.linger);
                }
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(Error::kafka_fatal("fatal consumer error", e));
                }
                Some(Err(e)) => {
                    if kafka::means_membership_lost(&e) {
                        self.doubt_membership(&e, self.consumer.context().assignments());
                    }
                    tracing::warn!(error = %e, "consumer error");
                }
                None => nothing = true,
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
                let before = good.len() + poison.len();
                let kept = |o: &Origin| !revoked.contains(&(o.topic.to_string(), o.partition));
                good.retain(|g| kept(&g.origin));
                poison.retain(|p| kept(&p.record.origin));
                bytes = good.iter().map(Good::bytes).sum::<usize>()
                    + poison.iter().map(|p| p.record.bytes()).sum::<usize>();
                if good.is_empty() && poison.is_empty() {
                    polled_from = None;
                }
                let dropped = before - good.len() - poison.len();
                if dropped > 0 {
                    metrics::counter!(telemetry::REVOKED_DROPPED).increment(dropped as u64);
                    tracing::info!(dropped, "dropped uncommitted records of revoked partitions");
                }
            }
            // The queue the previous batch left is drained: go and write this batch.
            if queued_only && nothing {
                break;
            }
        }
        // Records 0, S, 2S… were timed: scale their time to all of them.
        let timed = decoded.div_ceil(DECODE_SAMPLE).max(1);
        let decode_time = decode_sampled.mul_f64(f64::from(decoded) / f64::from(timed));
        Ok(polled_from.map(|polled_from| Batch {
            good,
            poison,
            polled_from,
            decode_time,
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
pub(super) fn first_offsets<'a>(
    batch: impl IntoIterator<Item = &'a Origin>,
) -> BTreeMap<(String, i32), i64> {
    offset_range(batch)
        .into_iter()
        .map(|(tp, (first, _))| (tp, first))
        .collect()
}

/// The first and last offset of each partition in the batch.
pub(super) fn offset_range<'a>(
    batch: impl IntoIterator<Item = &'a Origin>,
) -> BTreeMap<(String, i32), (i64, i64)> {
    // Keyed by the borrowed topic while scanning: no string per record.
    let mut range: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
    for origin in batch {
        let o = origin.offset;
        range
            .entry((&origin.topic, origin.partition))
            .and_modify(|(lo, hi)| {
                *lo = (*lo).min(o);
                *hi = (*hi).max(o);
            })
            .or_insert((o, o));
    }
    range
        .into_iter()
        .map(|((topic, partition), r)| ((topic.to_owned(), partition), r))
        .collect()
}

/// The offsets to commit: last processed + 1 per partition.
pub(super) fn next_offsets<'a>(batch: impl IntoIterator<Item = &'a Origin>) -> TopicPartitionList {
    let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for origin in batch {
        let e = last
            .entry((&origin.topic, origin.partition))
            .or_insert(origin.offset);
        *e = (*e).max(origin.offset);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in last {
        // A batch holds only assigned partitions, so adding cannot fail on a bad offset.
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
    }
    tpl
}
