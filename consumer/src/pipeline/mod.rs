//! The consumer loop. It reads top to bottom as the protocol (see ARCHITECTURE.md):
//!
//! ```text
//! init_transactions                                 fatal → exit; a newer instance fenced us
//! loop:
//!   collect   poll until max_records, max_bytes or linger   revoked partitions' records dropped
//!             the batch's fence starts before the poll that returned its first record
//!             right after a batch: only what is queued, no linger
//!   decode    good messages | poison (reason)              each record as polled, from
//!                                                          librdkafka's memory (one copy)
//!   write     at the same time:
//!     cql     UNLOGGED batches per partition        idempotent: USING TIMESTAMP server_time
//!             (small ones of the same replicas packed)
//!             then each session's latest            monotonic: USING TIMESTAMP seq
//!     redis   one Lua call per session, pipelined   idempotent: one versioned member per seq,
//!             (window and the session's latest)       the latest max (seq, version) wins
//!   commit    begin; DLQ records; then on a commit thread, while the next batch is collected
//!             and written: send_offsets(last + 1, fresh group metadata); commit
//!   settle    before the next transaction opens; on abortable error: abort, drop the next
//!             batch, rewind to this batch's first offsets, back off, poll again
//!   a rewind that cannot seek is fatal → exit; the next instance starts from the committed offsets
//! ```
//!
//! Hostile records never stall a partition (see [`IsolationConfig`]): a DLQ copy too large for
//! the DLQ is cut (with the value's hash); a write that can never succeed (Redis `WRONGTYPE`,
//! CQL invalid request…) sends its records to the DLQ as `write_failed`, session by session and
//! then record by record; after `isolation.rewinds` rewinds in a row the batch is redone in small
//! pieces, record by record, and a record that fails while others succeed goes to the DLQ too.
//! A partition that does not move anyway is reported (`/readyz` 503 and a gauge).
//!
//! Windows are written only by a member that still owns its partitions (see [`Pipeline::write`]):
//! not once a batch is older than 80 % of the session timeout on a clock that counts suspend, and
//! not between a membership error (evicted, fenced, rebalance) and the next assignment.
//!
//! CQL and Redis are written before the transaction opens, so the transaction stays short and a
//! crash at any point leaves work that a replay redoes with identical results (0 lost: offsets move
//! only after both writes; 0 duplicated: every write is keyed by (session, seq) and deterministic).
//!
//! The loop runs on a dedicated OS thread, because rdkafka's consumer and transactional calls
//! block, and each batch's commit on a scoped thread beside it (`Pipeline::consume`); the CQL
//! and Redis writes run on the tokio runtime through its [`Handle`].
//!
//! Layout: this file holds the loop ([`Pipeline::run`]) and its setup; `collect` polls and
//! decodes a batch and rewinds it, `write` writes it (and record by record when isolating), `plan`
//! orders rows before windows the trim would cut, `commit` runs the Kafka transaction with the
//! DLQ records, `isolation` keeps the bookkeeping of rewinds, stalls and membership.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_schemas::Codec;
use chatlog_store::messages::MessageWriter;
use chatlog_store::repo::latest::LatestWriter;
use chatlog_store::window::WindowWriter;
use chatlog_store::window_start::WindowStarter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::decode::{Good, Poison, Record};
use crate::kafka::{self, Context, DlqContext, TxProducer};
use crate::telemetry::{self, Health, LogLimiter};
use crate::{Error, Result};

mod collect;
mod commit;
mod isolation;
mod plan;
mod summary;
#[cfg(test)]
mod tests;
mod write;

pub use crate::config::IsolationConfig;
use collect::{first_offsets, offset_range};
use isolation::{MembershipGate, Progress};

/// Why a batch did not commit.
enum Failed {
    /// Nothing was committed: rewind to the batch's first offsets and redo it after a backoff.
    Rewind(String),
    /// Like `Rewind`, but not the records' fault (this member may not own its partitions, or the
    /// batch outlived the window fence): never counts towards isolating records.
    Fenced(String),
    /// A write that can never succeed (see `chatlog_store::Error::is_permanent`): its records go
    /// to the DLQ as `write_failed` (see [`Pipeline::write_each`]).
    Permanent(String),
    /// The process must exit (fenced, or the transactional producer is broken).
    Fatal(Error),
}

/// The DLQ stage of a `write_failed` record: which write failed.
type Stage = &'static str;

/// A record for the DLQ: poison from the decoder, or a message that cannot be written.
struct Dead {
    poison: Poison,
    /// For `write_failed`: `cql` (no row written) or `redis` (row written, window not).
    stage: Option<Stage>,
}

impl Dead {
    fn write_failed(g: &Good, stage: Stage, why: String) -> Dead {
        Dead {
            poison: Poison {
                record: Record {
                    origin: g.origin.clone(),
                    key: Some(g.message.session_id.as_bytes().to_vec()),
                    payload: Some(g.avro.clone()),
                },
                reason: WRITE_FAILED,
                detail: why,
            },
            stage: Some(stage),
        }
    }
}

/// The DLQ reason of a message whose row or window can never be written.
pub const WRITE_FAILED: &str = "write_failed";

/// Faults the consumer injects into itself on purpose, for tests of failure paths that no real
/// dependency can be made to take on demand. All off by default; never set in production. They
/// are not part of [`Config`]: `chatlog-consumer` sets them from hidden `CHATLOG_FAULT_*`
/// environment variables only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Every seek of a rewind (after a batch that did not commit) fails as if librdkafka had
    /// refused it (`CHATLOG_FAULT_FAIL_SEEKS`). librdkafka refuses a seek only for a partition it
    /// no longer fetches (`Local: Erroneous state`) or when its broker thread does not answer
    /// within the timeout; a test can bring about neither reliably.
    pub fail_seeks: bool,
    /// Every transaction waits this long before its offsets are sent
    /// (`CHATLOG_FAULT_COMMIT_DELAY_MS`): a slow commit on demand, for the tests of what runs
    /// while one is being closed (the next batch's writes, a revocation).
    pub commit_delay: Duration,
    /// Every committed transaction's commit call returns this long late
    /// (`CHATLOG_FAULT_COMMIT_RETURN_DELAY_MS`): a commit the broker has made that the loop
    /// still sees in flight, for the test of a revocation while written batches are held.
    pub commit_return_delay: Duration,
    /// The first this many writes fail as a transient error would
    /// (`CHATLOG_FAULT_FAIL_WRITES`): a batch's write, or one record's while isolating. An
    /// outage that ends (or begins) in the middle of an isolating pass, on demand.
    pub fail_writes: u32,
    /// Every write that includes a message with this seq fails as a transient error would
    /// (`CHATLOG_FAULT_FAIL_WRITES_OF_SEQ`): records that fail every time while others are
    /// written, on demand.
    pub fail_writes_of_seq: Option<i64>,
}

/// What the loop carries from batch to batch.
struct LoopState {
    backoff: Duration,
    progress: Progress,
    summary: summary::Summary,
}

/// Batches that wait for the next transaction while a commit is slow, at most; then the loop
/// waits for the commit (see [`Pipeline::consume`]). Few: a failed commit rewinds them all.
const MAX_HELD: usize = 4;

/// Batches that wait for the commit interval, at most. The interval bounds them in time (a
/// failure rewinds at most an interval's batches); this only bounds the bookkeeping of a flood
/// of tiny batches. Until stop 26 interval holds shared [`MAX_HELD`]: at ~90 batches a second
/// that was a transaction every four batches (~22 a second), not one per interval.
const MAX_HELD_INTERVAL: usize = 64;

/// A written batch, or several merged, on its way to one transaction.
struct Ready {
    written: write::Written,
    /// Its first offset per partition (where a rewind goes back to).
    first: BTreeMap<kafka::Tp, i64>,
    /// Its first and last offset per partition.
    range: BTreeMap<kafka::Tp, (i64, i64)>,
    records: usize,
    /// Batches merged into it.
    batches: usize,
    /// This member's revocations when its first batch was collected
    /// ([`Context::revocations`]).
    revocations: u64,
}

impl Ready {
    /// Takes `later`, collected after this one, into this one's transaction.
    fn absorb(&mut self, later: Ready) {
        self.written.absorb(later.written);
        merge_firsts(&mut self.first, &later.first);
        merge_ranges(&mut self.range, later.range);
        self.records += later.records;
        self.batches += later.batches;
        self.revocations = self.revocations.min(later.revocations);
    }
}

/// Widens each partition's range in `into` to cover its range in `from`.
fn merge_ranges(into: &mut BTreeMap<kafka::Tp, (i64, i64)>, from: BTreeMap<kafka::Tp, (i64, i64)>) {
    for (tp, (lo, hi)) in from {
        let r = into.entry(tp).or_insert((lo, hi));
        *r = (r.0.min(lo), r.1.max(hi));
    }
}

/// Adds the first offsets of a later batch to `into`: where both have a partition, the earlier
/// batch's offset stays (a rewind goes back to it).
fn merge_firsts(into: &mut BTreeMap<kafka::Tp, i64>, later: &BTreeMap<kafka::Tp, i64>) {
    for (tp, offset) in later {
        into.entry(tp.clone()).or_insert(*offset);
    }
}

/// The first offsets of `ready` and then of `also` (the earlier batch's where both have one).
fn first_of(ready: Option<&Ready>, also: &BTreeMap<kafka::Tp, i64>) -> BTreeMap<kafka::Tp, i64> {
    let mut first = ready.map(|r| r.first.clone()).unwrap_or_default();
    merge_firsts(&mut first, also);
    first
}

/// A batch whose transaction is being closed on the commit thread (see [`Pipeline::consume`]).
struct Closing<'scope> {
    /// Closing it: [`commit::Closer::close`]'s result.
    thread: std::thread::ScopedJoinHandle<'scope, std::result::Result<(), KafkaError>>,
    /// The assignments seen when its transaction opened ([`commit::Opened`]).
    opened_at: u64,
    ready: Ready,
}

/// Marks the transaction being closed as closed when dropped (see [`Context::closing`]).
struct Closed<'a>(&'a Context);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A connected consumer instance, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    config: Config,
    faults: Faults,
    /// Writes still to fail ([`Faults::fail_writes`]).
    writes_to_fail: std::sync::atomic::AtomicU32,
    consumer: BaseConsumer<Context>,
    producer: TxProducer,
    codec: Codec,
    writer: MessageWriter,
    /// Each session's latest (`session_latest`), written after the batch's rows.
    latest: LatestWriter,
    windows: WindowWriter,
    /// Starts the windows the batch's records could not start ([`WindowStarter`]).
    starter: WindowStarter,
    redis: chatlog_store::RedisConnection,
    runtime: Handle,
    shutdown: CancellationToken,
    health: Arc<Health>,
    /// Whether windows may be written, as far as membership errors tell.
    membership: Cell<MembershipGate>,
    isolation: IsolationConfig,
    /// The largest DLQ record the producer and the DLQ topic take.
    dlq_capacity: usize,
    /// Gates the per-record "record sent to the DLQ" warning.
    dlq_warnings: LogLimiter,
}

impl Pipeline {
    /// Connects to CQL (applying migrations if configured), Redis and Kafka. Must be called on the
    /// tokio runtime that will serve the writes.
    pub async fn connect(
        config: Config,
        shutdown: CancellationToken,
        health: Arc<Health>,
    ) -> Result<Pipeline> {
        config.validate()?;
        let session = config.cql.connect().await?;
        if config.migrate_on_start {
            chatlog_store::migrate::apply(&session, &config.cql).await?;
        }
        // Producers of the topic refuse limits above the ones published here (issue 14, item 5).
        config.publish_limits(&session).await?;
        let session = Arc::new(session);
        let latest = LatestWriter::new(session.clone(), &config.cql.keyspace).await?;
        let codec = config.codec()?;
        let starter = WindowStarter::new(
            session.clone(),
            &config.cql.keyspace,
            config.writer.bucket_size,
            config.window.clone(),
            codec.clone(),
        )
        .await?;
        let writer = MessageWriter::new(session, &config.cql.keyspace, config.writer.clone())
            .await?
            .with_retention(config.retention.clone());
        let redis = config.redis.connect().await?;
        let consumer: BaseConsumer<Context> = kafka::consumer_config(&config.kafka)?
            .create_with_context(Context::default())
            .map_err(|e| Error::kafka("create consumer", e))?;
        let max_record_bytes = config.batch.max_record_bytes;
        let producer: TxProducer = kafka::producer_config(&config.kafka, max_record_bytes)?
            .create_with_context(DlqContext::default())
            .map_err(|e| Error::kafka("create transactional producer", e))?;
        let topic_max = kafka::dlq_topic_max_bytes(&config.kafka, Duration::from_secs(10)).await;
        let dlq_capacity = kafka::dlq_capacity(max_record_bytes, topic_max);
        if dlq_capacity < max_record_bytes + kafka::DLQ_OVERHEAD {
            tracing::warn!(
                topic = %config.kafka.dlq_topic,
                dlq_capacity,
                max_record_bytes,
                "the DLQ topic's max.message.bytes is below batch.max_record_bytes plus headers: \
                 larger poison records go to the DLQ as truncated copies (raise the topic's \
                 max.message.bytes to keep them whole)"
            );
        }
        let isolation = config.isolation.clone();
        isolation.validate()?;
        Ok(Pipeline {
            dlq_warnings: LogLimiter::new(isolation.dlq_warnings_per_second),
            isolation,
            dlq_capacity,
            windows: WindowWriter::new(config.window.clone()),
            starter,
            config,
            faults: Faults::default(),
            writes_to_fail: std::sync::atomic::AtomicU32::new(0),
            consumer,
            producer,
            codec,
            writer,
            latest,
            redis,
            runtime: Handle::current(),
            shutdown,
            health,
            membership: Cell::new(MembershipGate::default()),
        })
    }

    /// Sets how records that cannot be written are isolated (default: [`IsolationConfig`]'s).
    pub fn with_isolation(mut self, isolation: IsolationConfig) -> Result<Pipeline> {
        isolation.validate()?;
        self.dlq_warnings = LogLimiter::new(isolation.dlq_warnings_per_second);
        self.isolation = isolation;
        Ok(self)
    }

    /// Injects `faults` (tests only).
    pub fn with_faults(mut self, faults: Faults) -> Pipeline {
        if faults.fail_seeks {
            tracing::warn!("fault injection: every rewind seek fails");
        }
        if !faults.commit_delay.is_zero() {
            tracing::warn!(delay = ?faults.commit_delay, "fault injection: every commit is delayed");
        }
        if !faults.commit_return_delay.is_zero() {
            tracing::warn!(
                delay = ?faults.commit_return_delay,
                "fault injection: every commit returns late"
            );
        }
        if let Some(seq) = faults.fail_writes_of_seq {
            tracing::warn!(seq, "fault injection: every write of this seq fails");
        }
        if faults.fail_writes > 0 {
            tracing::warn!(
                writes = faults.fail_writes,
                "fault injection: the first writes fail"
            );
        }
        *self.writes_to_fail.get_mut() = faults.fail_writes;
        self.faults = faults;
        self
    }

    /// Whether the write of `messages` fails by [`Faults::fail_writes`] or
    /// [`Faults::fail_writes_of_seq`] (tests only).
    fn injected_write_failure<'a>(
        &self,
        mut messages: impl Iterator<Item = &'a Good>,
    ) -> Option<Failed> {
        use std::sync::atomic::Ordering;
        if let Some(seq) = self.faults.fail_writes_of_seq
            && messages.any(|g| g.message.seq == seq)
        {
            return Some(Failed::Rewind(format!(
                "injected write failure of seq {seq} (CHATLOG_FAULT_FAIL_WRITES_OF_SEQ)"
            )));
        }
        self.writes_to_fail
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| Failed::Rewind("injected write failure (CHATLOG_FAULT_FAIL_WRITES)".into()))
    }

    /// A fatal error as the operator should read it: being fenced by another producer with this
    /// instance's transactional id is expected once (a restarted copy of this instance took
    /// over) but loops forever when two instances are configured with the same id — say which.
    fn explain_fatal(&self, e: Error) -> Error {
        use rdkafka::types::RDKafkaErrorCode as C;
        let Error::KafkaFatal { what, source } = &e else {
            return e;
        };
        if !matches!(
            source.rdkafka_error_code(),
            Some(C::ProducerFenced | C::InvalidProducerEpoch | C::Fenced)
        ) {
            return e;
        }
        Error::Fatal(format!(
            "{what}: fenced: another instance started with this transactional_id ({:?}) and \
             took over its work. Expected once when this instance was replaced (a restart, a \
             rescheduled pod); if it repeats, two running instances share the id: give every \
             instance its own kafka.transactional_id (CHATLOG_TRANSACTIONAL_ID, e.g. \
             chatlog-consumer-<ordinal>). ({source})",
            self.config.kafka.transactional_id
        ))
    }

    /// Runs until shutdown (returns `Ok`) or a fatal error. Blocks: call it on its own thread.
    pub fn run(self) -> Result<()> {
        let kafka = &self.config.kafka;
        // Unreachable brokers time out here (retriable): a start-up failure, exit 1 — only a
        // fatal answer (fenced, a broken producer) is fatal for the instance.
        self.producer
            .init_transactions(kafka.transaction_timeout)
            .map_err(|e| match kafka::classify(&e) {
                kafka::TxnFailure::Fatal => {
                    self.explain_fatal(Error::kafka_fatal("init_transactions", e))
                }
                _ => Error::kafka(
                    format!(
                        "init_transactions: no answer from Kafka at {:?} within \
                         kafka.transaction_timeout ({:?}); is it reachable?",
                        kafka.bootstrap_servers, kafka.transaction_timeout
                    ),
                    e,
                ),
            })?;
        self.consumer
            .subscribe(&[&kafka.topic])
            .map_err(|e| Error::kafka(format!("subscribe {}", kafka.topic), e))?;
        self.health.set_in_group(false);
        self.health.set_ready(true);
        tracing::info!(
            topic = %kafka.topic,
            group = %kafka.group_id,
            transactional_id = %kafka.transactional_id,
            "consuming"
        );
        let mut st = LoopState {
            backoff: self.config.retry.initial_backoff,
            progress: Progress::default(),
            summary: summary::Summary::new(self.config.log.progress_interval, Instant::now()),
        };
        let ended = std::thread::scope(|scope| self.consume(scope, &mut st));
        self.health.set_ready(false);
        ended?;
        tracing::info!("shutdown: last batch committed, leaving the group");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// The loop of [`run`](Self::run): collect → write → commit, with each batch's commit on
    /// another thread of `scope` while the next batch is collected and written.
    ///
    /// # Why the commit overlaps the next batches
    ///
    /// A transaction's commit is round trips to the coordinator and markers in every partition:
    /// ~3 ms on average on the local stack, but its slow tail (tens to hundreds of milliseconds)
    /// held up every message that arrived meanwhile, and in a drain it was time the writes stood
    /// still. So batch N's transaction is closed ([`commit::Closer`]: offsets, commit) on a
    /// thread while batch N+1 is collected and written. If N's commit is still running then, N+1
    /// is held and N+2 collected and written too, up to [`MAX_HELD`] batches; once N's commit
    /// ends, the held batches go into one transaction (their DLQ records, each partition's
    /// highest offset).
    ///
    /// What stays as it was: a batch's offsets commit only after its rows and windows are
    /// written (it is closed only after its own writes); each session's writes keep their order
    /// (a batch is written after the previous one's writes ended); one transaction at a time (the
    /// next opens after the previous settled). If N's commit fails, the batches written since are
    /// dropped with it and all rewind to N's first offsets (their writes were the same idempotent
    /// writes a replay makes). A revocation waits in the rebalance callback for the commit being
    /// closed (`Context::closing`), so partitions leave with their last transaction committed or
    /// not, never in between; held batches are never committed after a revocation (a partition of
    /// theirs may have left, or left and come back from its committed offset): they rewind, and
    /// what is still assigned is read again. While isolating, batches run one at a time.
    ///
    /// # Why a batch may wait for the commit interval
    ///
    /// Under light traffic a batch holds a few records, and a transaction per batch made the
    /// broker's transaction work most of the stack's cost (run 2 of BENCHMARKS: Kafka 0.39 CPU at
    /// ~1 000 msg/s, ~56 transactions a second). So a batch written within
    /// `batch.commit_interval` of the last transaction's opening is held like one written during
    /// a slow commit, and the next transaction takes it with the batches written meanwhile (at
    /// most [`MAX_HELD_INTERVAL`]: the interval, not a count, bounds them); while batches are
    /// held and none is being committed, `collect` hands back when the interval ends so that
    /// they do not wait for the next record. Held batches'
    /// windows and rows are already written, so visibility does not wait for the interval.
    fn consume<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        st: &mut LoopState,
    ) -> Result<()> {
        // Whether the last round wrote a batch (see `collect`: what it left queued is not lingered on).
        let mut after_batch = false;
        let mut closing: Option<Closing<'scope>> = None;
        // Written while `closing` was still being closed, or within the commit interval: the
        // next transaction's.
        let mut held: Option<Ready> = None;
        let interval = self.config.batch.commit_interval;
        // When the last transaction was opened: the next may open `interval` later.
        let mut last_opened: Option<Instant> = None;
        let next_due = |last: Option<Instant>| last.map(|t| t + interval);
        let due = |last: Option<Instant>| next_due(last).is_none_or(|t| Instant::now() >= t);
        while !self.shutdown.is_cancelled() {
            // A commit that ended while the loop waited for records: settle it now. The loop
            // never blocks on one while idle, so rebalance callbacks keep being served.
            if let Some(c) = closing.take_if(|c| c.thread.is_finished())
                && !self.conclude(c, held.as_ref().map(|h| &h.first), st)?
            {
                // The held batches rewound with it.
                held = None;
            }
            if closing.is_none()
                && due(last_opened)
                && let Some(ready) = held.take()
            {
                closing = self.open_ready(scope, ready, st)?;
                last_opened = Some(Instant::now());
            }
            self.report_stalls(&mut st.progress);
            if let Some(line) = st.summary.due(Instant::now()) {
                tracing::info!(
                    records_per_s = format_args!("{:.1}", line.records_per_s),
                    batches = line.batches,
                    mean_batch = format_args!("{:.1}", line.mean_batch),
                    dlq = line.dlq,
                    lag = %self
                        .consumer
                        .context()
                        .lag()
                        .map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
                    "progress"
                );
            }
            // Held batches waiting only for the interval: hand back when it ends.
            let hand_back = match (&closing, &held) {
                (None, Some(_)) => next_due(last_opened),
                _ => None,
            };
            let batch = match self.collect(&st.progress, after_batch, hand_back)? {
                Some(batch) => batch,
                None => {
                    after_batch = false;
                    continue;
                }
            };
            after_batch = true;
            // Read after the polls that collected the batch: rebalance callbacks run in them.
            let revocations = self.consumer.context().revocations();
            let first = first_offsets(batch.origins());
            let range = offset_range(batch.origins());
            let records = batch.len();
            if st.progress.isolating() {
                // One at a time: the record-by-record bookkeeping follows each commit. (Nothing
                // is held: a rewind drops what was, and isolating starts with one.)
                let first = first_of(held.as_ref(), &first);
                if let Some(c) = closing.take()
                    && !self.conclude(c, Some(&first), st)?
                {
                    held = None;
                    continue;
                }
                if let Some(ready) = held.take() {
                    self.on_rewound(
                        Failed::Fenced("batches held when isolation began".into()),
                        &ready.range,
                        &first,
                        st,
                    )?;
                    continue;
                }
                match self.process(batch, true) {
                    Ok(dlq) => self.on_committed(&range, records, dlq, true, st),
                    Err(failed) => self.on_rewound(failed, &range, &first, st)?,
                }
                continue;
            }
            let written = self.write_batch(batch, false);
            let ready = match written {
                Ok(written) => Ready {
                    written,
                    first,
                    range,
                    records,
                    batches: 1,
                    revocations,
                },
                Err(failed) => {
                    // This batch and every held one rewind, after the commit being closed.
                    let all_first = first_of(held.as_ref(), &first);
                    let mut all_range = range;
                    if let Some(h) = held.take() {
                        merge_ranges(&mut all_range, h.range);
                    }
                    if let Some(c) = closing.take()
                        && !self.conclude(c, Some(&all_first), st)?
                    {
                        continue;
                    }
                    self.on_rewound(failed, &all_range, &all_first, st)?;
                    continue;
                }
            };
            let ready = match held.take() {
                Some(mut earlier) => {
                    earlier.absorb(ready);
                    earlier
                }
                None => ready,
            };
            // The commit being closed is slow, or the last transaction opened less than the
            // commit interval ago: write on, and commit this with what follows.
            let slow_commit = closing.as_ref().is_some_and(|c| !c.thread.is_finished());
            let (reason, most) = if slow_commit {
                ("commit", MAX_HELD)
            } else {
                ("interval", MAX_HELD_INTERVAL)
            };
            if (slow_commit || !due(last_opened)) && ready.batches < most {
                metrics::counter!(telemetry::BATCHES_HELD, "reason" => reason).increment(1);
                held = Some(ready);
                continue;
            }
            if let Some(c) = closing.take()
                && !self.conclude(c, Some(&ready.first), st)?
            {
                // The previous batch rewound, and these with it.
                continue;
            }
            closing = self.open_ready(scope, ready, st)?;
            last_opened = Some(Instant::now());
        }
        if let Some(c) = closing.take()
            && !self.conclude(c, held.as_ref().map(|h| &h.first), st)?
        {
            held = None;
        }
        if let Some(ready) = held.take()
            && let Some(c) = self.open_ready(scope, ready, st)?
        {
            self.conclude(c, None, st)?;
        }
        Ok(())
    }

    /// Opens the transaction of `ready` and starts closing it on a thread of `scope`; `None`
    /// when it rewound instead (its transaction failed to open, or a partition was revoked
    /// since its first batch was collected).
    fn open_ready<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        ready: Ready,
        st: &mut LoopState,
    ) -> Result<Option<Closing<'scope>>> {
        if ready.revocations != self.consumer.context().revocations() {
            let why = "partitions were revoked while written batches waited for their transaction";
            self.on_rewound(Failed::Fenced(why.into()), &ready.range, &ready.first, st)?;
            return Ok(None);
        }
        match self.open(&ready.written.poison) {
            Ok(opened) => Ok(Some(self.close_on(scope, opened, ready))),
            Err(failed) => {
                self.on_rewound(failed, &ready.range, &ready.first, st)?;
                Ok(None)
            }
        }
    }

    /// Starts closing a batch's opened transaction on a thread of `scope`.
    fn close_on<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        opened: commit::Opened,
        ready: Ready,
    ) -> Closing<'scope> {
        let context = self.consumer.context();
        let closer = self.closer();
        let offsets = ready.written.next_offsets.clone();
        // Marks the end even if closing panics (or the thread cannot start), so that no
        // revocation waits for it.
        let guard = Closed(context);
        context.closing();
        let thread = scope.spawn(move || {
            let _closed = guard;
            let started = Instant::now();
            let closed = closer.close(&offsets, &opened.group);
            write::observe_stage("commit", started);
            closed
        });
        Closing {
            thread,
            opened_at: opened.assignments,
            ready,
        }
    }

    /// Settles a batch whose transaction was being closed: on success its bookkeeping; on a
    /// failure the rewind, to its first offsets and those of `next` (the batch collected since,
    /// dropped with it). Returns whether it committed.
    fn conclude(
        &self,
        c: Closing<'_>,
        next: Option<&BTreeMap<kafka::Tp, i64>>,
        st: &mut LoopState,
    ) -> Result<bool> {
        let closed = c
            .thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let Ready {
            written,
            first,
            range,
            records,
            ..
        } = c.ready;
        match self.settle(closed, c.opened_at) {
            Ok(()) => {
                let dlq = self.committed(written);
                self.on_committed(&range, records, dlq, false, st);
                Ok(true)
            }
            Err(failed) => {
                let mut first = first;
                if let Some(next) = next {
                    merge_firsts(&mut first, next);
                }
                self.on_rewound(failed, &range, &first, st)?;
                Ok(false)
            }
        }
    }

    /// Bookkeeping after a batch committed.
    fn on_committed(
        &self,
        range: &BTreeMap<kafka::Tp, (i64, i64)>,
        records: usize,
        dlq: usize,
        isolated: bool,
        st: &mut LoopState,
    ) {
        st.summary.committed(records, dlq);
        st.backoff = self.config.retry.initial_backoff;
        if isolated || !st.progress.stuck.is_empty() {
            tracing::info!(isolating = isolated, "batch committed after rewinds");
        }
        st.progress.committed(range);
        for ((topic, partition), (_, last)) in range {
            self.producer
                .context()
                .forget_through(topic, *partition, *last);
        }
    }

    /// After a batch that did not commit: rewinds to `first` and backs off; `Err` when the
    /// instance must exit (a fatal error, or a rewind that cannot seek).
    fn on_rewound(
        &self,
        failed: Failed,
        range: &BTreeMap<kafka::Tp, (i64, i64)>,
        first: &BTreeMap<kafka::Tp, i64>,
        st: &mut LoopState,
    ) -> Result<()> {
        let (why, blame) = match failed {
            Failed::Fatal(e) => return Err(self.explain_fatal(e)),
            Failed::Fenced(why) => (why, false),
            Failed::Rewind(why) | Failed::Permanent(why) => (why, true),
        };
        let was_isolating = st.progress.isolating();
        st.progress.rewound(range, blame, self.isolation.rewinds);
        tracing::warn!(
            reason = %kafka::truncate_detail(&why, kafka::DLQ_DETAIL_MAX_BYTES),
            backoff = ?st.backoff,
            rewinds_in_a_row = st.progress.strikes,
            isolating = st.progress.isolating(),
            "batch not committed; rewinding"
        );
        if st.progress.isolating() && !was_isolating {
            tracing::warn!(
                rewinds = st.progress.strikes,
                through = ?st.progress.isolate_through,
                "a batch was rewound isolation.rewinds times in a row: redoing it \
                 in small pieces, record by record; a record whose write fails while \
                 others succeed goes to the DLQ as write_failed"
            );
        }
        // Polling on would read past the batch, and the next commit would cover it unwritten;
        // when the seek fails, a new instance starts from the committed offsets instead.
        self.rewind(first)?;
        self.pause(st.backoff);
        st.backoff = (st.backoff * 2).min(self.config.retry.max_backoff);
        Ok(())
    }

    /// Publishes the partitions that are not moving (readiness and the gauge).
    fn report_stalls(&self, progress: &mut Progress) {
        progress.keep_only(&self.consumer.context().assigned());
        let (n, why) = progress.stalled(self.isolation.stall_after, Instant::now());
        metrics::gauge!(telemetry::STALLED_PARTITIONS).set(n as f64);
        self.health.set_stalled(why);
    }

    /// Sleeps up to `d`, waking early on shutdown.
    fn pause(&self, d: Duration) {
        self.runtime.block_on(self.sleep(d));
    }

    /// Sleeps up to `d`, waking early on shutdown.
    async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}
