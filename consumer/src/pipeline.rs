//! The consumer loop. It reads top to bottom as the protocol (see ARCHITECTURE.md):
//!
//! ```text
//! init_transactions                                 fatal → exit; a newer instance fenced us
//! loop:
//!   collect   poll until max_records, max_bytes or linger   revoked partitions' records dropped
//!             the batch's fence starts before the poll that returned its first record
//!   decode    good messages | poison (reason)
//!   write     at the same time:
//!     cql     UNLOGGED batches per partition        idempotent: USING TIMESTAMP server_time
//!     redis   one Lua call per session, pipelined   idempotent: one versioned member per seq
//!   commit    begin; DLQ records; send_offsets(last + 1, fresh group metadata); commit
//!   on abortable error: abort, rewind to the batch's first offsets, back off, poll again
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
//! block; the CQL and Redis writes run on the tokio runtime through its [`Handle`].

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use chatlog_schemas::{ChatMessage, Codec};
use chatlog_store::messages::MessageWriter;
use chatlog_store::window::{self, WindowEntry, WindowWriter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::clock::BootInstant;
use crate::config::Config;
use crate::decode::{self, Decoded, Good, Origin, Poison, Record};
use crate::kafka::{self, Context, DlqContext, DlqPayload, TxProducer, TxnFailure};
use crate::telemetry::{self, Health, LogLimiter};
use crate::{Error, Result};

/// How the consumer keeps partitions moving past records that cannot be written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// Rewinds in a row (no commit in between) after which the failing batch is redone in small
    /// pieces (`batch_records`), record by record: a record whose write then fails while other
    /// records' writes succeed goes to the DLQ as `write_failed`, so its partition moves on.
    /// Errors that can never succeed (Redis WRONGTYPE, CQL invalid request) do not wait for
    /// this: their records go to the DLQ at once.
    pub rewinds: u32,
    /// Most records in one batch while isolating.
    pub batch_records: usize,
    /// Time one record's write may be retried while isolating (short: the whole piece must be
    /// written within the window fence).
    #[serde(with = "humantime_serde")]
    pub record_budget: Duration,
    /// A partition whose batches have been rewound without a commit for this long is reported as
    /// not moving: `/readyz` answers 503 with the reason and `chatlog_consumer_stalled_partitions`
    /// counts it.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Longest time a `commit_transaction` that failed with a retriable error is retried; then
    /// the transaction is aborted and the batch rewound.
    #[serde(with = "humantime_serde")]
    pub commit_deadline: Duration,
    /// At most this many "record sent to the DLQ" warnings a second; the rest are counted and the
    /// next warning logged says how many were suppressed.
    pub dlq_warnings_per_second: u64,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            rewinds: 5,
            batch_records: 64,
            record_budget: Duration::from_secs(1),
            stall_after: Duration::from_secs(60),
            commit_deadline: Duration::from_secs(30),
            dlq_warnings_per_second: 10,
        }
    }
}

impl IsolationConfig {
    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.rewinds == 0 {
            return Err(Error::Config("isolation.rewinds must be at least 1".into()));
        }
        if self.batch_records == 0 {
            return Err(Error::Config(
                "isolation.batch_records must be at least 1".into(),
            ));
        }
        if self.commit_deadline.is_zero() {
            return Err(Error::Config(
                "isolation.commit_deadline must be above 0".into(),
            ));
        }
        Ok(())
    }
}

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
    Fatal(String),
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

/// Sessions written at once when a batch is written session by session.
const SESSIONS_AT_ONCE: usize = 32;

/// Consecutive rewinds and how long each partition has not moved; owned by [`Pipeline::run`].
#[derive(Debug, Default)]
struct Progress {
    /// Rewinds in a row that may be the records' fault.
    strikes: u32,
    /// While isolating: per partition, the last offset of the batch that failed `rewinds` times;
    /// records up to it are processed in small pieces, record by record.
    isolate_through: BTreeMap<(String, i32), i64>,
    /// Partitions rewound since their last commit: since when, and how many times.
    stuck: BTreeMap<(String, i32), (Instant, u32)>,
}

impl Progress {
    fn isolating(&self) -> bool {
        !self.isolate_through.is_empty()
    }

    /// A batch rewound; `blame`: possibly the records' fault.
    fn rewound(&mut self, batch: &BTreeMap<(String, i32), (i64, i64)>, blame: bool, rewinds: u32) {
        let now = Instant::now();
        for tp in batch.keys() {
            self.stuck.entry(tp.clone()).or_insert((now, 0)).1 += 1;
        }
        if blame {
            self.strikes += 1;
        }
        if self.strikes >= rewinds {
            for (tp, &(_, last)) in batch {
                let e = self.isolate_through.entry(tp.clone()).or_insert(last);
                *e = (*e).max(last);
            }
        }
    }

    /// A batch committed.
    fn committed(&mut self, batch: &BTreeMap<(String, i32), (i64, i64)>) {
        self.strikes = 0;
        for (tp, &(_, last)) in batch {
            self.stuck.remove(tp);
            if self
                .isolate_through
                .get(tp)
                .is_some_and(|&through| last >= through)
            {
                self.isolate_through.remove(tp);
            }
        }
    }

    /// Forgets partitions no longer assigned.
    fn keep_only(&mut self, assigned: &BTreeSet<(String, i32)>) {
        self.stuck.retain(|tp, _| assigned.contains(tp));
        self.isolate_through.retain(|tp, _| assigned.contains(tp));
    }

    /// The partitions that have not moved for `stall_after`, with a description for `/readyz`.
    fn stalled(&self, stall_after: Duration, now: Instant) -> (usize, Option<String>) {
        let stalled: Vec<String> = self
            .stuck
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= stall_after)
            .map(|((topic, partition), (since, rewinds))| {
                format!(
                    "{topic} [{partition}] rewound {rewinds} times in {:?}",
                    Duration::from_secs(now.saturating_duration_since(*since).as_secs())
                )
            })
            .collect();
        if stalled.is_empty() {
            return (0, None);
        }
        let n = stalled.len();
        let shown: Vec<&str> = stalled.iter().take(5).map(String::as_str).collect();
        (
            n,
            Some(format!(
                "{n} partition(s) not moving (batches rewound without a commit for over {:?}): \
                 {}{}",
                stall_after,
                shown.join("; "),
                if n > shown.len() { "; …" } else { "" }
            )),
        )
    }
}

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
}

/// A connected consumer instance, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    config: Config,
    faults: Faults,
    consumer: BaseConsumer<Context>,
    producer: TxProducer,
    codec: Codec,
    writer: MessageWriter,
    windows: WindowWriter,
    redis: redis::aio::ConnectionManager,
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

/// Closed by an error meaning this member may no longer own its partitions, until librdkafka
/// delivers a newer assignment (one follows every rebalance the member takes part in, even an
/// empty one, so a member that rejoins always reopens it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MembershipGate {
    /// The number of assignments seen when the last membership error came; `None`: open.
    closed_at: Option<u64>,
}

impl MembershipGate {
    /// A membership error, with `assignments` assignments seen so far.
    fn close(&mut self, assignments: u64) {
        self.closed_at = Some(assignments);
    }

    /// Whether windows may be written with `assignments` assignments seen so far; reopens once
    /// one came after the error.
    fn open(&mut self, assignments: u64) -> bool {
        match self.closed_at {
            Some(at) if assignments <= at => false,
            _ => {
                self.closed_at = None;
                true
            }
        }
    }
}

/// Records polled for one transaction.
struct Batch {
    records: Vec<Record>,
    /// When the poll that returned the first record started: the window fence counts from here,
    /// so a process frozen inside that poll or the linger after it resumes with an old fence.
    polled_from: BootInstant,
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
        let writer = MessageWriter::new(
            Arc::new(session),
            &config.cql.keyspace,
            config.writer.clone(),
        )
        .await?;
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
        let codec = config.codec()?;
        Ok(Pipeline {
            dlq_warnings: LogLimiter::new(isolation.dlq_warnings_per_second),
            isolation,
            dlq_capacity,
            windows: WindowWriter::new(config.window.clone()),
            config,
            faults: Faults::default(),
            consumer,
            producer,
            codec,
            writer,
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
        self.faults = faults;
        self
    }

    /// Runs until shutdown (returns `Ok`) or a fatal error. Blocks: call it on its own thread.
    pub fn run(self) -> Result<()> {
        let kafka = &self.config.kafka;
        self.producer
            .init_transactions(kafka.transaction_timeout)
            .map_err(|source| Error::Transactions {
                what: "init_transactions",
                source,
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
        let mut backoff = self.config.retry.initial_backoff;
        let mut progress = Progress::default();
        while !self.shutdown.is_cancelled() {
            self.report_stalls(&mut progress);
            let batch = match self.collect(&progress) {
                Ok(Some(batch)) => batch,
                Ok(None) => continue,
                Err(why) => {
                    self.health.set_ready(false);
                    return Err(Error::Fatal(why));
                }
            };
            let first_offsets = first_offsets(&batch.records);
            let range = offset_range(&batch.records);
            let isolate = progress.isolating();
            match self.process(batch, isolate) {
                Ok(()) => {
                    backoff = self.config.retry.initial_backoff;
                    if isolate || !progress.stuck.is_empty() {
                        tracing::info!(isolating = isolate, "batch committed after rewinds");
                    }
                    progress.committed(&range);
                    for ((topic, partition), (_, last)) in &range {
                        self.producer
                            .context()
                            .forget_through(topic, *partition, *last);
                    }
                }
                Err(Failed::Fatal(why)) => {
                    self.health.set_ready(false);
                    return Err(Error::Fatal(why));
                }
                Err(failed) => {
                    let (why, blame) = match failed {
                        Failed::Fenced(why) => (why, false),
                        Failed::Rewind(why) | Failed::Permanent(why) | Failed::Fatal(why) => {
                            (why, true)
                        }
                    };
                    let was_isolating = progress.isolating();
                    progress.rewound(&range, blame, self.isolation.rewinds);
                    tracing::warn!(
                        reason = %kafka::truncate_detail(&why, kafka::DLQ_DETAIL_MAX_BYTES),
                        ?backoff,
                        rewinds_in_a_row = progress.strikes,
                        isolating = progress.isolating(),
                        "batch not committed; rewinding"
                    );
                    if progress.isolating() && !was_isolating {
                        tracing::warn!(
                            rewinds = progress.strikes,
                            through = ?progress.isolate_through,
                            "a batch was rewound isolation.rewinds times in a row: redoing it \
                             in small pieces, record by record; a record whose write fails while \
                             others succeed goes to the DLQ as write_failed"
                        );
                    }
                    if let Err(why) = self.rewind(&first_offsets) {
                        // Polling on would read past the batch, and the next commit would cover
                        // it unwritten. A new instance starts from the committed offsets instead.
                        self.health.set_ready(false);
                        return Err(Error::Fatal(why));
                    }
                    self.pause(backoff);
                    backoff = (backoff * 2).min(self.config.retry.max_backoff);
                }
            }
        }
        self.health.set_ready(false);
        tracing::info!("shutdown: last batch committed, leaving the group");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Publishes the partitions that are not moving (readiness and the gauge).
    fn report_stalls(&self, progress: &mut Progress) {
        progress.keep_only(&self.consumer.context().assigned());
        let (n, why) = progress.stalled(self.isolation.stall_after, Instant::now());
        metrics::gauge!(telemetry::STALLED_PARTITIONS).set(n as f64);
        self.health.set_stalled(why);
    }

    /// Polls until `max_records` records (`isolation.batch_records` while isolating) or
    /// `max_bytes`, `linger` after the first one, or shutdown. `None`: no records. An error:
    /// librdkafka reported a fatal consumer error (e.g. fenced by a newer member with the same
    /// `group_instance_id`); the consumer is unusable.
    fn collect(&self, progress: &Progress) -> Result<Option<Batch>, String> {
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
        while batch.len() < max && bytes < max_bytes && !self.shutdown.is_cancelled() {
            let wait = match deadline {
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
                    return Err(format!("fatal consumer error: {e}"));
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

    /// decode → write (cql ‖ redis) → commit, for one batch. A write that can never succeed
    /// (or, when `isolate`, any failed write) is redone session by session and record by record
    /// ([`write_each`](Self::write_each)); the records that still fail go to the DLQ.
    fn process(&self, batch: Batch, isolate: bool) -> Result<(), Failed> {
        let Batch {
            records: batch,
            polled_from,
        } = batch;
        let records = batch.len();
        let next_offsets = next_offsets(&batch);

        let started = Instant::now();
        let mut good: Vec<Good> = Vec::with_capacity(records);
        let mut poison: Vec<Dead> = Vec::new();
        for record in batch {
            match decode::decode(&self.codec, self.config.batch.max_record_bytes, record) {
                Decoded::Good(g) => good.push(g),
                Decoded::Poison(p) => poison.push(Dead {
                    poison: p,
                    stage: None,
                }),
            }
        }
        observe_stage("decode", started);

        let mut persisted = good.len();
        if !good.is_empty() {
            // While isolating, record by record at once: a whole-batch attempt could spend the
            // window fence and leave the records no time.
            let written = if isolate {
                Err(Failed::Rewind("isolating".into()))
            } else {
                self.write(&good, polled_from)
            };
            let failed = match written {
                Ok(()) => Vec::new(),
                Err(Failed::Permanent(why)) => {
                    tracing::warn!(
                        error = %kafka::truncate_detail(&why, kafka::DLQ_DETAIL_MAX_BYTES),
                        "a write can never succeed; writing the batch session by session"
                    );
                    self.write_each(&good, polled_from, isolate)?
                }
                Err(Failed::Rewind(_)) if isolate => {
                    tracing::info!(
                        records = good.len(),
                        "isolating: writing the batch record by record"
                    );
                    self.write_each(&good, polled_from, isolate)?
                }
                Err(other) => return Err(other),
            };
            let dead: BTreeSet<&Origin> = failed.iter().map(|d| &d.poison.record.origin).collect();
            let now_us = now_micros();
            for g in good.iter().filter(|g| !dead.contains(&g.origin)) {
                let latency = (now_us - g.message.server_time_us).max(0) as f64 / 1e6;
                metrics::histogram!(telemetry::E2E_LATENCY).record(latency);
            }
            persisted -= failed.len();
            poison.extend(failed);
        }

        let started = Instant::now();
        self.commit(&poison, &next_offsets)?;
        observe_stage("commit", started);
        // Mirror the committed offsets into librdkafka's offset store: its statistics then report
        // the lag (`consumer_lag_stored`); auto-commit is off, so nothing else reads them.
        if let Err(e) = self.consumer.store_offsets(&next_offsets) {
            tracing::debug!(error = %e, "store_offsets after commit");
        }

        metrics::counter!(telemetry::TRANSACTIONS, "result" => "committed").increment(1);
        metrics::histogram!(telemetry::BATCH_RECORDS).record(records as f64);
        metrics::counter!(telemetry::RECORDS, "outcome" => "persisted").increment(persisted as u64);
        metrics::counter!(telemetry::RECORDS, "outcome" => "dlq").increment(poison.len() as u64);
        for d in &poison {
            let p = &d.poison;
            metrics::counter!(telemetry::DLQ_RECORDS, "reason" => p.reason).increment(1);
            // Rate-limited and cut: a flood of poison must not flood the logs.
            if let Some(suppressed) = self.dlq_warnings.admit(Instant::now()) {
                tracing::warn!(
                    reason = p.reason,
                    stage = d.stage.unwrap_or("decode"),
                    detail = %kafka::truncate_detail(&p.detail, kafka::DLQ_DETAIL_MAX_BYTES),
                    partition = p.record.origin.partition,
                    offset = p.record.origin.offset,
                    suppressed_since_last = suppressed,
                    "record sent to the DLQ"
                );
            }
        }
        tracing::debug!(records, persisted, dlq = poison.len(), "batch committed");
        Ok(())
    }

    /// Writes a batch's good messages: rows to CQL and each session's window to Redis, at the same
    /// time (see [`WritePlan`] for the one ordering kept).
    ///
    /// Self-fencing. A process frozen longer than the session timeout (VM suspend, container
    /// pause, SIGSTOP) has lost its partitions without knowing it; CQL writes of such a zombie
    /// are harmless (same rows, same timestamps), but its window writes after a Redis loss
    /// could refill a window with old messages below the new owner's, leaving a hole that
    /// history would trust. So windows are written only while the batch is younger than the
    /// fence ([`KafkaConfig::window_fence`](crate::config::KafkaConfig::window_fence) since the
    /// poll that returned its first record began, on CLOCK_BOOTTIME), and not at all between a
    /// membership error and the next assignment.
    fn write(&self, good: &[Good], polled_from: BootInstant) -> Result<(), Failed> {
        if self.membership_in_doubt() {
            metrics::counter!(telemetry::RETRIES, "stage" => "fenced").increment(1);
            return Err(Failed::Fenced(MEMBERSHIP_IN_DOUBT.into()));
        }
        let plan = WritePlan::new(good, self.windows.config().size);
        let fence = polled_from + self.config.kafka.window_fence();
        let budget = self.config.retry.stage_budget;
        self.runtime.block_on(async {
            let rows = self.retry("cql", None, budget, || self.writer.write(&plan.rows));
            let windows = async {
                if plan.windows.is_empty() {
                    return Ok(());
                }
                self.append_windows(&plan.windows, fence, budget).await
            };
            let trimmed_first = async {
                if plan.trimmed_rows.is_empty() {
                    return Ok(());
                }
                self.retry("cql", None, budget, || {
                    self.writer.write(&plan.trimmed_rows)
                })
                .await?;
                self.append_windows(&plan.windows_after_trimmed_rows, fence, budget)
                    .await
            };
            tokio::try_join!(rows, windows, trimmed_first).map(drop)
        })
    }

    /// Writes `good` session by session (rows, then the window), and a session whose write fails
    /// for good (or, when `isolate`, at all) record by record in offset order. Returns the records
    /// to send to the DLQ as `write_failed`, with the stage that failed: `cql` (no row written)
    /// or `redis` (the row is written, the window is not). Everything else is written.
    ///
    /// A record is given up only on proof that it is at fault: an error that can never succeed,
    /// or — when isolating — a failure while other records of the same attempt were written. If
    /// nothing was written and some failure is transient, the whole batch is rewound instead
    /// (Redis or CQL down is no reason to drop anything). Writes are idempotent and keyed by
    /// (session, seq), so writing later records before an earlier one is decided changes nothing
    /// for readers, and a replay writes the same again.
    fn write_each(
        &self,
        good: &[Good],
        polled_from: BootInstant,
        isolate: bool,
    ) -> Result<Vec<Dead>, Failed> {
        if self.membership_in_doubt() {
            metrics::counter!(telemetry::RETRIES, "stage" => "fenced").increment(1);
            return Err(Failed::Fenced(MEMBERSHIP_IN_DOUBT.into()));
        }
        let fence = polled_from + self.config.kafka.window_fence();
        let mut by_session: BTreeMap<&str, Vec<&Good>> = BTreeMap::new();
        for g in good {
            by_session
                .entry(g.message.session_id.as_str())
                .or_default()
                .push(g);
        }
        let any_written = AtomicBool::new(false);
        let outcomes: Vec<SessionOutcome> = self.runtime.block_on(
            futures::stream::iter(by_session.into_iter().map(|(session, messages)| {
                self.write_session_each(session, messages, fence, isolate, &any_written)
            }))
            .buffer_unordered(SESSIONS_AT_ONCE)
            .try_collect(),
        )?;
        let mut dead = Vec::new();
        let mut suspects = Vec::new();
        for o in outcomes {
            dead.extend(o.dead);
            suspects.extend(o.suspects);
        }
        if !suspects.is_empty() {
            if !any_written.load(Ordering::Acquire) {
                return Err(Failed::Rewind(format!(
                    "isolating: no record of the batch could be written ({} failed), so the \
                     records are not at fault; rewinding",
                    suspects.len()
                )));
            }
            dead.extend(suspects);
        }
        Ok(dead)
    }

    /// One session of [`write_each`](Self::write_each).
    async fn write_session_each(
        &self,
        session: &str,
        mut messages: Vec<&Good>,
        fence: BootInstant,
        isolate: bool,
        any_written: &AtomicBool,
    ) -> Result<SessionOutcome, Failed> {
        let budget = if isolate {
            self.isolation.record_budget
        } else {
            self.config.retry.stage_budget
        };
        let mut outcome = SessionOutcome::default();
        if !isolate {
            // The whole session at once first: most sessions of such a batch are fine.
            let owned: Vec<Good> = messages.iter().map(|g| (*g).clone()).collect();
            let plan = WritePlan::new(&owned, self.windows.config().size);
            let written = async {
                for rows in [&plan.trimmed_rows, &plan.rows] {
                    if !rows.is_empty() {
                        self.retry("cql", None, budget, || self.writer.write(rows))
                            .await?;
                    }
                }
                for windows in [&plan.windows_after_trimmed_rows, &plan.windows] {
                    self.append_windows(windows, fence, budget).await?;
                }
                Ok::<(), Failed>(())
            };
            match written.await {
                Ok(()) => {
                    any_written.store(true, Ordering::Release);
                    return Ok(outcome);
                }
                Err(Failed::Permanent(_)) => {}
                Err(other) => return Err(other),
            }
        }
        messages.sort_by_key(|g| (g.origin.partition, g.origin.offset));
        for g in messages {
            let failed = match self
                .retry("cql", None, budget, || {
                    self.writer.write(std::slice::from_ref(&g.message))
                })
                .await
            {
                Err(e) => Some(("cql", e)),
                Ok(_) => {
                    let entry = WindowEntry {
                        seq: g.message.seq,
                        member: window::member(g.message.server_time_us, &g.avro),
                    };
                    let windows = BTreeMap::from([(session.to_owned(), vec![entry])]);
                    self.append_windows(&windows, fence, budget)
                        .await
                        .err()
                        .map(|e| ("redis", e))
                }
            };
            match failed {
                None => any_written.store(true, Ordering::Release),
                Some((stage, Failed::Permanent(why))) => {
                    if stage == "cql" {
                        // The first, concurrent attempt may have put it in the window: the
                        // window must not show a message whose row will never exist.
                        self.remove_from_window(session, g, fence, budget).await?;
                    }
                    outcome.dead.push(Dead::write_failed(g, stage, why));
                }
                Some((stage, Failed::Rewind(why))) if isolate => {
                    if stage == "cql" {
                        // As above; should the batch rewind instead, the replay appends again.
                        self.remove_from_window(session, g, fence, budget).await?;
                    }
                    outcome.suspects.push(Dead::write_failed(g, stage, why));
                }
                Some((_, other)) => return Err(other),
            }
        }
        Ok(outcome)
    }

    /// Takes a message whose row can never be written out of its session's window, retried like
    /// a window write (a failure rewinds the batch: the next attempt takes the same path).
    async fn remove_from_window(
        &self,
        session: &str,
        g: &Good,
        fence: BootInstant,
        budget: Duration,
    ) -> Result<(), Failed> {
        let member = window::member(g.message.server_time_us, &g.avro);
        tracing::debug!(
            seq = g.message.seq,
            partition = g.origin.partition,
            offset = g.origin.offset,
            "taking a message whose row can never be written out of its window"
        );
        self.retry("redis", Some(fence), budget, || {
            let mut con = self.redis.clone();
            let member = member.as_slice();
            async move { self.windows.remove(&mut con, session, &[member]).await }
        })
        .await
        .or_else(|failed| match failed {
            // The key is not a window (WRONGTYPE): there is no entry to take out.
            Failed::Permanent(_) => Ok(()),
            other => Err(other),
        })
    }

    /// Appends to windows, retried like any write for up to `budget`, never after `fence`.
    async fn append_windows(
        &self,
        sessions: &BTreeMap<String, Vec<WindowEntry>>,
        fence: BootInstant,
        budget: Duration,
    ) -> Result<(), Failed> {
        if sessions.is_empty() {
            return Ok(());
        }
        self.retry("redis", Some(fence), budget, || {
            let mut con = self.redis.clone();
            async move { self.windows.append(&mut con, sessions).await }
        })
        .await
    }

    /// Runs a CQL/Redis write until it succeeds or `budget` is spent, and records the stage's
    /// duration. An error that can never succeed is not retried ([`Failed::Permanent`]). With a
    /// `fence` (window writes), no attempt starts after that instant or while this member's
    /// ownership is in doubt: the batch is rewound instead.
    async fn retry<T, F, Fut>(
        &self,
        stage: &'static str,
        fence: Option<BootInstant>,
        budget: Duration,
        mut write: F,
    ) -> Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = chatlog_store::Result<T>>,
    {
        let started = Instant::now();
        let mut backoff = self.config.retry.initial_backoff;
        let mut last_error: Option<String> = None;
        loop {
            if let Some(fence) = fence {
                let why = if BootInstant::now() > fence {
                    Some(
                        "the batch is older than the window fence (80% of the session timeout \
                         minus a heartbeat interval, since the poll that returned its first \
                         record); this consumer may have been frozen or suspended and evicted, \
                         so it does not write and re-reads instead",
                    )
                } else if self.membership_in_doubt() {
                    Some(MEMBERSHIP_IN_DOUBT)
                } else {
                    None
                };
                if let Some(why) = why {
                    metrics::counter!(telemetry::RETRIES, "stage" => "fenced").increment(1);
                    // A write that kept failing until the fence failed: that may be the records'
                    // fault (it counts towards isolating them); a fence alone is not.
                    return Err(match last_error {
                        Some(e) => Failed::Rewind(format!(
                            "{stage} write failed: {e} (retried until the window fence)"
                        )),
                        None => Failed::Fenced(format!("{stage}: {why}")),
                    });
                }
            }
            match write().await {
                Ok(v) => {
                    observe_stage(stage, started);
                    return Ok(v);
                }
                Err(e) if e.is_permanent() => {
                    return Err(Failed::Permanent(format!("{stage} write failed: {e}")));
                }
                Err(e) => {
                    if started.elapsed() + backoff > budget || self.shutdown.is_cancelled() {
                        return Err(Failed::Rewind(format!("{stage} write failed: {e}")));
                    }
                    metrics::counter!(telemetry::RETRIES, "stage" => stage).increment(1);
                    let error = e.to_string();
                    // Cut: a pipeline error lists every failed session.
                    tracing::warn!(
                        stage,
                        error = %kafka::truncate_detail(&error, kafka::DLQ_DETAIL_MAX_BYTES),
                        ?backoff,
                        "write failed; retrying"
                    );
                    last_error = Some(error);
                    self.sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry.max_backoff);
                }
            }
        }
    }

    /// One Kafka transaction: DLQ records + the consumed offsets. A commit failing with retriable
    /// errors is retried until `isolation.commit_deadline`, then aborted (the batch rewinds).
    fn commit(&self, poison: &[Dead], next_offsets: &TopicPartitionList) -> Result<(), Failed> {
        let timeout = self.config.kafka.transaction_timeout;
        self.producer
            .begin_transaction()
            .map_err(|e| self.fail("begin_transaction", &e))?;
        let attempt = (|| {
            for p in poison {
                self.send_dlq(p)?;
            }
            // No group metadata: not (or no longer) in the group; abort and rejoin.
            let group = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidGroupId))?;
            self.producer
                .send_offsets_to_transaction(next_offsets, &group, timeout)?;
            let deadline = Instant::now() + self.isolation.commit_deadline;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self
                    .producer
                    .commit_transaction(timeout.min(left.max(MIN_COMMIT_WAIT)))
                {
                    Ok(()) => return Ok(()),
                    Err(e) if kafka::classify(&e) == TxnFailure::Retry => {
                        if Instant::now() >= deadline {
                            tracing::warn!(
                                error = %e,
                                deadline = ?self.isolation.commit_deadline,
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
        })();
        match attempt {
            Ok(()) => Ok(()),
            Err(e) => {
                let failed = self.fail("commit", &e);
                if !matches!(failed, Failed::Fatal(_)) {
                    metrics::counter!(telemetry::TRANSACTIONS, "result" => "aborted").increment(1);
                    if let Err(abort) = self.producer.abort_transaction(timeout) {
                        // After a transaction timeout librdkafka can refuse to abort; only a new
                        // producer (a restart of this instance) recovers.
                        return Err(Failed::Fatal(format!(
                            "abort_transaction failed after `{e}`: {abort}"
                        )));
                    }
                }
                Err(failed)
            }
        }
    }

    /// Sends one DLQ record: whole if it fits in the DLQ, else a truncated copy (a prefix of the
    /// value, its length and SHA-256); a value-less copy if the producer or the broker refused
    /// the truncated one (a DLQ topic smaller than described).
    fn send_dlq(&self, d: &Dead) -> Result<(), KafkaError> {
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

    fn fail(&self, what: &str, e: &KafkaError) -> Failed {
        if kafka::means_membership_lost(e) {
            self.doubt_membership(e);
        }
        match kafka::classify(e) {
            TxnFailure::Fatal => Failed::Fatal(format!("{what}: {e}")),
            // Not the records' fault: never counts towards isolating them.
            _ if kafka::means_membership_lost(e) => Failed::Fenced(format!("{what}: {e}")),
            TxnFailure::Abort | TxnFailure::Retry => Failed::Rewind(format!("{what}: {e}")),
        }
    }

    /// An error said this member may no longer own its partitions: no window writes until its
    /// next assignment (a rejoin follows such errors).
    fn doubt_membership(&self, e: &KafkaError) {
        let mut gate = self.membership.get();
        if gate.closed_at.is_none() {
            tracing::warn!(
                error = %e,
                "this member may no longer own its partitions: no window writes until its next \
                 assignment"
            );
        }
        gate.close(self.consumer.context().assignments());
        self.membership.set(gate);
    }

    /// Whether window writes wait for an assignment newer than the last membership error.
    fn membership_in_doubt(&self) -> bool {
        let mut gate = self.membership.get();
        let was_closed = gate.closed_at.is_some();
        let open = gate.open(self.consumer.context().assignments());
        self.membership.set(gate);
        if open && was_closed {
            tracing::info!("assigned again after a membership error: window writes resume");
        }
        !open
    }

    /// Seeks each partition of a failed batch back to its first offset, so the next polls read
    /// the batch again. Partitions revoked meanwhile are skipped: their new owner starts from the
    /// committed offset anyway. A failed seek is an error: the position stays past the batch.
    fn rewind(&self, first_offsets: &BTreeMap<(String, i32), i64>) -> Result<(), String> {
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
                return Err(format!(
                    "seek failed: {topic} [{partition}] back to offset {offset}, the start of a \
                     batch that did not commit ({e}); exiting, so that no later commit covers \
                     that batch and the next instance resumes from the committed offsets"
                ));
            }
        }
        Ok(())
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

/// What one session of [`Pipeline::write_each`] could not write.
#[derive(Default)]
struct SessionOutcome {
    /// Records whose write can never succeed.
    dead: Vec<Dead>,
    /// Records whose write failed transiently while isolating: given up only if other records
    /// were written in the same attempt.
    suspects: Vec<Dead>,
}

/// The shortest wait given to one `commit_transaction` call near the commit deadline.
const MIN_COMMIT_WAIT: Duration = Duration::from_secs(1);

/// Why a batch is not written while a membership error is unresolved.
const MEMBERSHIP_IN_DOUBT: &str = "an error said this member may no longer own its partitions \
     (evicted, fenced or rebalancing); no window writes until its next assignment, re-reading \
     instead";

/// How one batch's good messages are written: rows to CQL and windows to Redis at the same time,
/// which takes the CQL stage out of the ack → window latency.
///
/// A message may then be in its window a few milliseconds before its row exists, which a reader
/// cannot tell from a message that arrives late: history reads the window first and trusts it
/// between its lowest and highest seq. One case could be seen: a session with more messages in
/// the batch than the window keeps. The script trims the older ones at once, and a reader looking
/// below the window would find neither copy. So for such a session the rows of those older
/// messages (`trimmed_rows`) are written first, and its window only after them — it gets only the
/// newest `window size` seqs, as the older ones would be trimmed anyway.
#[derive(Debug, Default)]
struct WritePlan {
    /// Rows written at once.
    rows: Vec<ChatMessage>,
    /// Windows written at once.
    windows: BTreeMap<String, Vec<WindowEntry>>,
    /// Rows of messages a window append would trim at once.
    trimmed_rows: Vec<ChatMessage>,
    /// Windows written once `trimmed_rows` are.
    windows_after_trimmed_rows: BTreeMap<String, Vec<WindowEntry>>,
}

impl WritePlan {
    fn new(good: &[Good], window_size: usize) -> WritePlan {
        let mut by_session: BTreeMap<&str, Vec<&Good>> = BTreeMap::new();
        for g in good {
            by_session
                .entry(g.message.session_id.as_str())
                .or_default()
                .push(g);
        }
        let mut plan = WritePlan::default();
        for (session_id, mut messages) in by_session {
            let entry = |g: &Good| WindowEntry {
                seq: g.message.seq,
                member: window::member(g.message.server_time_us, &g.avro),
            };
            let mut seqs: Vec<i64> = messages.iter().map(|g| g.message.seq).collect();
            seqs.sort_unstable();
            seqs.dedup();
            if seqs.len() <= window_size {
                plan.rows.extend(messages.iter().map(|g| g.message.clone()));
                plan.windows.insert(
                    session_id.to_owned(),
                    messages.iter().map(|g| entry(g)).collect(),
                );
                continue;
            }
            // Keep the newest `window_size` distinct seqs (every version of them) for the window.
            let lowest_kept = seqs[seqs.len() - window_size];
            messages.sort_by_key(|g| g.message.seq);
            let split = messages.partition_point(|g| g.message.seq < lowest_kept);
            let (trimmed, kept) = messages.split_at(split);
            plan.trimmed_rows
                .extend(trimmed.iter().map(|g| g.message.clone()));
            plan.rows.extend(kept.iter().map(|g| g.message.clone()));
            plan.windows_after_trimmed_rows.insert(
                session_id.to_owned(),
                kept.iter().map(|g| entry(g)).collect(),
            );
        }
        plan
    }
}

fn observe_stage(stage: &'static str, started: Instant) {
    metrics::histogram!(telemetry::STAGE_DURATION, "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The first offset of each partition in the batch (where a rewind goes back to).
fn first_offsets(batch: &[Record]) -> BTreeMap<(String, i32), i64> {
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
fn offset_range(batch: &[Record]) -> BTreeMap<(String, i32), (i64, i64)> {
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
fn next_offsets(batch: &[Record]) -> TopicPartitionList {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64) -> Record {
        Record {
            origin: Origin {
                topic: "t".into(),
                partition,
                offset,
            },
            key: None,
            payload: None,
        }
    }

    fn good(session_id: &str, seq: i64, version: i64) -> Good {
        Good {
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: seq,
            },
            message: decode::test_message(session_id, seq, version),
            avro: vec![seq as u8],
        }
    }

    fn seqs_of(rows: &[ChatMessage], session_id: &str) -> Vec<i64> {
        let mut seqs: Vec<i64> = rows
            .iter()
            .filter(|m| m.session_id == session_id)
            .map(|m| m.seq)
            .collect();
        seqs.sort_unstable();
        seqs
    }

    #[test]
    fn windows_go_with_the_rows_unless_the_append_would_trim_messages_of_the_batch() {
        // Window size 3. Session "few": 3 messages → written at once. Session "many": seqs 1..=5
        // with seq 5 twice (an edit) and out of order → seqs 1, 2 first, then the newest 3 seqs.
        let batch = [
            good("few", 7, 1),
            good("many", 5, 1),
            good("many", 2, 1),
            good("few", 8, 1),
            good("many", 1, 1),
            good("many", 4, 1),
            good("many", 3, 1),
            good("many", 5, 2),
            good("few", 9, 1),
        ];
        let plan = WritePlan::new(&batch, 3);
        assert_eq!(seqs_of(&plan.rows, "few"), [7, 8, 9]);
        assert_eq!(seqs_of(&plan.rows, "many"), [3, 4, 5, 5]);
        assert_eq!(seqs_of(&plan.trimmed_rows, "many"), [1, 2]);
        assert!(seqs_of(&plan.trimmed_rows, "few").is_empty());
        let window_seqs = |w: &BTreeMap<String, Vec<WindowEntry>>, s: &str| {
            let mut seqs: Vec<i64> = w.get(s).into_iter().flatten().map(|e| e.seq).collect();
            seqs.sort_unstable();
            seqs
        };
        assert_eq!(window_seqs(&plan.windows, "few"), [7, 8, 9]);
        assert!(!plan.windows.contains_key("many"));
        assert_eq!(
            window_seqs(&plan.windows_after_trimmed_rows, "many"),
            [3, 4, 5, 5],
            "both versions of seq 5: the script keeps the newer"
        );
        assert!(!plan.windows_after_trimmed_rows.contains_key("few"));
        // Every message is written exactly once.
        assert_eq!(plan.rows.len() + plan.trimmed_rows.len(), batch.len());
    }

    #[test]
    fn a_membership_error_closes_window_writes_until_a_newer_assignment() {
        let mut gate = MembershipGate::default();
        assert!(gate.open(0), "open at start");
        gate.close(3);
        assert!(!gate.open(3), "no assignment since the error");
        assert!(!gate.open(3), "still closed");
        assert!(gate.open(4), "a newer assignment reopens");
        assert!(gate.open(4));
        // A second error after that assignment waits for the next one again.
        gate.close(4);
        assert!(!gate.open(4));
        assert!(gate.open(7));
    }

    #[test]
    fn rewinds_in_a_row_start_isolating_until_a_commit_passes_the_failed_batch() {
        let tp = |p: i32| ("t".to_owned(), p);
        let batch = BTreeMap::from([(tp(0), (10, 20)), (tp(1), (5, 9))]);
        let mut progress = Progress::default();
        // Fences are not the records' fault: no strike.
        progress.rewound(&batch, false, 2);
        assert_eq!(progress.strikes, 0);
        progress.rewound(&batch, true, 2);
        assert!(!progress.isolating());
        progress.rewound(&batch, true, 2);
        assert!(progress.isolating());
        assert_eq!(progress.isolate_through[&tp(0)], 20);
        assert_eq!(
            progress.stuck[&tp(0)].1,
            3,
            "every rewind counts for the stall"
        );
        // A small batch of partition 0 commits, short of offset 20: still isolating there.
        progress.committed(&BTreeMap::from([(tp(0), (10, 15))]));
        assert_eq!(progress.strikes, 0);
        assert!(progress.isolating());
        assert!(!progress.stuck.contains_key(&tp(0)), "partition 0 moved");
        assert!(progress.stuck.contains_key(&tp(1)));
        progress.committed(&BTreeMap::from([(tp(0), (16, 20)), (tp(1), (5, 9))]));
        assert!(!progress.isolating());
        assert!(progress.stuck.is_empty());
    }

    #[test]
    fn a_partition_rewound_for_stall_after_is_reported_until_it_moves_or_leaves() {
        let tp = |p: i32| ("t".to_owned(), p);
        let mut progress = Progress::default();
        let batch = BTreeMap::from([(tp(3), (0, 1))]);
        progress.rewound(&batch, true, 5);
        let now = Instant::now();
        let after = Duration::from_secs(60);
        assert_eq!(progress.stalled(after, now).0, 0, "not yet");
        let (n, why) = progress.stalled(after, now + after);
        assert_eq!(n, 1);
        let why = why.unwrap();
        assert!(why.contains("t [3]") && why.contains("not moving"), "{why}");
        progress.keep_only(&BTreeSet::from([tp(4)]));
        assert_eq!(progress.stalled(after, now + after).0, 0, "revoked");
    }

    #[test]
    fn offsets_to_commit_are_last_plus_one() {
        let batch = [rec(0, 5), rec(1, 9), rec(0, 7), rec(0, 6)];
        let tpl = next_offsets(&batch);
        assert_eq!(
            tpl.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(8)
        );
        assert_eq!(
            tpl.find_partition("t", 1).unwrap().offset(),
            Offset::Offset(10)
        );
        let first = first_offsets(&batch);
        assert_eq!(first[&("t".to_owned(), 0)], 5);
        assert_eq!(first[&("t".to_owned(), 1)], 9);
    }
}
