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
//!             then each session's latest            monotonic: USING TIMESTAMP seq
//!     redis   one Lua call per session, pipelined   idempotent: one versioned member per seq,
//!             (window and the session's latest)       the latest max (seq, version) wins
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
//!
//! Layout: this file holds the loop ([`Pipeline::run`]) and its setup; `collect` polls and
//! decodes a batch and rewinds it, `write` writes it (and record by record when isolating), `plan`
//! orders rows before windows the trim would cut, `commit` runs the Kafka transaction with the
//! DLQ records, `isolation` keeps the bookkeeping of rewinds, stalls and membership.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_schemas::Codec;
use chatlog_store::messages::MessageWriter;
use chatlog_store::repo::latest::LatestWriter;
use chatlog_store::window::WindowWriter;
use chatlog_store::window_start::WindowStarter;
use rdkafka::consumer::{BaseConsumer, Consumer};
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
}

/// A connected consumer instance, ready to [`run`](Pipeline::run).
pub struct Pipeline {
    config: Config,
    faults: Faults,
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
        self.faults = faults;
        self
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
        let mut backoff = self.config.retry.initial_backoff;
        let mut progress = Progress::default();
        let mut summary = summary::Summary::new(self.config.log.progress_interval, Instant::now());
        // Whether the last round wrote a batch (see `collect`: what it left queued is not lingered on).
        let mut after_batch = false;
        while !self.shutdown.is_cancelled() {
            self.report_stalls(&mut progress);
            if let Some(line) = summary.due(Instant::now()) {
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
            let batch = match self.collect(&progress, after_batch) {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    after_batch = false;
                    continue;
                }
                Err(e) => {
                    self.health.set_ready(false);
                    return Err(e);
                }
            };
            after_batch = true;
            let first_offsets = first_offsets(batch.origins());
            let range = offset_range(batch.origins());
            let isolate = progress.isolating();
            let records = batch.len();
            match self.process(batch, isolate) {
                Ok(dlq) => {
                    summary.committed(records, dlq);
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
                Err(Failed::Fatal(e)) => {
                    self.health.set_ready(false);
                    return Err(self.explain_fatal(e));
                }
                Err(failed) => {
                    let (why, blame) = match failed {
                        Failed::Fenced(why) => (why, false),
                        Failed::Rewind(why) | Failed::Permanent(why) => (why, true),
                        Failed::Fatal(e) => (e.to_string(), true),
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
                    if let Err(e) = self.rewind(&first_offsets) {
                        // Polling on would read past the batch, and the next commit would cover
                        // it unwritten. A new instance starts from the committed offsets instead.
                        self.health.set_ready(false);
                        return Err(e);
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
