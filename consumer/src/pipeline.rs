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
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::kafka::{self, Context, TxProducer, TxnFailure};
use crate::telemetry::{self, Health};
use crate::{Error, Result};

/// Why a batch did not commit.
enum Failed {
    /// Nothing was committed: rewind to the batch's first offsets and redo it after a backoff.
    Rewind(String),
    /// The process must exit (fenced, or the transactional producer is broken).
    Fatal(String),
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
        let writer = MessageWriter::new(
            Arc::new(session),
            &config.cql.keyspace,
            config.writer.clone(),
        )
        .await?;
        let redis = config.redis.connect().await?;
        let consumer: BaseConsumer<Context> = kafka::consumer_config(&config.kafka)?
            .create_with_context(Context::default())
            .map_err(|e| Error::Kafka(format!("create consumer: {e}")))?;
        let producer: TxProducer = kafka::producer_config(&config.kafka)?
            .create()
            .map_err(|e| Error::Kafka(format!("create transactional producer: {e}")))?;
        let codec = Codec::new(config.batch.max_record_bytes);
        Ok(Pipeline {
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
            .map_err(|e| Error::Fatal(format!("init_transactions: {e}")))?;
        self.consumer
            .subscribe(&[&kafka.topic])
            .map_err(|e| Error::Kafka(format!("subscribe {}: {e}", kafka.topic)))?;
        self.health.set_in_group(false);
        self.health.set_ready(true);
        tracing::info!(
            topic = %kafka.topic,
            group = %kafka.group_id,
            transactional_id = %kafka.transactional_id,
            "consuming"
        );
        let mut backoff = self.config.retry.initial_backoff;
        while !self.shutdown.is_cancelled() {
            let batch = match self.collect() {
                Ok(Some(batch)) => batch,
                Ok(None) => continue,
                Err(why) => {
                    self.health.set_ready(false);
                    return Err(Error::Fatal(why));
                }
            };
            let first_offsets = first_offsets(&batch.records);
            match self.process(batch) {
                Ok(()) => backoff = self.config.retry.initial_backoff,
                Err(Failed::Rewind(why)) => {
                    tracing::warn!(reason = %why, ?backoff, "batch not committed; rewinding");
                    if let Err(why) = self.rewind(&first_offsets) {
                        // Polling on would read past the batch, and the next commit would cover
                        // it unwritten. A new instance starts from the committed offsets instead.
                        self.health.set_ready(false);
                        return Err(Error::Fatal(why));
                    }
                    self.pause(backoff);
                    backoff = (backoff * 2).min(self.config.retry.max_backoff);
                }
                Err(Failed::Fatal(why)) => {
                    self.health.set_ready(false);
                    return Err(Error::Fatal(why));
                }
            }
        }
        self.health.set_ready(false);
        tracing::info!("shutdown: last batch committed, leaving the group");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Polls until `max_records` records or `max_bytes`, `linger` after the first one, or
    /// shutdown. `None`: no records. An error: librdkafka reported a fatal consumer error (e.g.
    /// fenced by a newer member with the same `group_instance_id`); the consumer is unusable.
    fn collect(&self) -> Result<Option<Batch>, String> {
        let max = self.config.batch.max_records;
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

    /// decode → write (cql ‖ redis) → commit, for one batch.
    fn process(&self, batch: Batch) -> Result<(), Failed> {
        let Batch {
            records: batch,
            polled_from,
        } = batch;
        let records = batch.len();
        let next_offsets = next_offsets(&batch);

        let started = Instant::now();
        let mut good: Vec<Good> = Vec::with_capacity(records);
        let mut poison: Vec<Poison> = Vec::new();
        for record in batch {
            match decode::decode(&self.codec, self.config.batch.max_record_bytes, record) {
                Decoded::Good(g) => good.push(g),
                Decoded::Poison(p) => poison.push(p),
            }
        }
        observe_stage("decode", started);

        if !good.is_empty() {
            self.write(&good, polled_from)?;
            let now_us = now_micros();
            for g in &good {
                let latency = (now_us - g.message.server_time_us).max(0) as f64 / 1e6;
                metrics::histogram!(telemetry::E2E_LATENCY).record(latency);
            }
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
        metrics::counter!(telemetry::RECORDS, "outcome" => "persisted")
            .increment(good.len() as u64);
        metrics::counter!(telemetry::RECORDS, "outcome" => "dlq").increment(poison.len() as u64);
        for p in &poison {
            metrics::counter!(telemetry::DLQ_RECORDS, "reason" => p.reason).increment(1);
            tracing::warn!(
                reason = p.reason,
                detail = %p.detail,
                partition = p.record.origin.partition,
                offset = p.record.origin.offset,
                "record sent to the DLQ"
            );
        }
        tracing::debug!(
            records,
            persisted = good.len(),
            dlq = poison.len(),
            "batch committed"
        );
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
            return Err(Failed::Rewind(MEMBERSHIP_IN_DOUBT.into()));
        }
        let plan = WritePlan::new(good, self.windows.config().size);
        let fence = polled_from + self.config.kafka.window_fence();
        self.runtime.block_on(async {
            let rows = self.retry("cql", None, || self.writer.write(&plan.rows));
            let windows = async {
                if plan.windows.is_empty() {
                    return Ok(());
                }
                self.append_windows(&plan.windows, fence).await
            };
            let trimmed_first = async {
                if plan.trimmed_rows.is_empty() {
                    return Ok(());
                }
                self.retry("cql", None, || self.writer.write(&plan.trimmed_rows))
                    .await?;
                self.append_windows(&plan.windows_after_trimmed_rows, fence)
                    .await
            };
            tokio::try_join!(rows, windows, trimmed_first).map(drop)
        })
    }

    /// Appends to windows, retried like any write, never after `fence`.
    async fn append_windows(
        &self,
        sessions: &BTreeMap<String, Vec<WindowEntry>>,
        fence: BootInstant,
    ) -> Result<(), Failed> {
        self.retry("redis", Some(fence), || {
            let mut con = self.redis.clone();
            async move { self.windows.append(&mut con, sessions).await }
        })
        .await
    }

    /// Runs a CQL/Redis write until it succeeds or the stage budget is spent, and records the
    /// stage's duration. With a `fence` (window writes), no attempt starts after that instant or
    /// while this member's ownership is in doubt: the batch is rewound instead.
    async fn retry<T, F, Fut>(
        &self,
        stage: &'static str,
        fence: Option<BootInstant>,
        mut write: F,
    ) -> Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = chatlog_store::Result<T>>,
    {
        let started = Instant::now();
        let mut backoff = self.config.retry.initial_backoff;
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
                    return Err(Failed::Rewind(format!("{stage}: {why}")));
                }
            }
            match write().await {
                Ok(v) => {
                    observe_stage(stage, started);
                    return Ok(v);
                }
                Err(e) => {
                    if started.elapsed() + backoff > self.config.retry.stage_budget
                        || self.shutdown.is_cancelled()
                    {
                        return Err(Failed::Rewind(format!("{stage} write failed: {e}")));
                    }
                    metrics::counter!(telemetry::RETRIES, "stage" => stage).increment(1);
                    tracing::warn!(stage, error = %e, ?backoff, "write failed; retrying");
                    self.sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry.max_backoff);
                }
            }
        }
    }

    /// One Kafka transaction: DLQ records + the consumed offsets.
    fn commit(&self, poison: &[Poison], next_offsets: &TopicPartitionList) -> Result<(), Failed> {
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
            loop {
                match self.producer.commit_transaction(timeout) {
                    Ok(()) => return Ok(()),
                    Err(e) if kafka::classify(&e) == TxnFailure::Retry => {
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
                if let Failed::Rewind(_) = failed {
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

    fn send_dlq(&self, p: &Poison) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.config.kafka.dlq_topic)
            .headers(kafka::dlq_headers(p));
        if let Some(key) = p.record.key.as_deref() {
            record = record.key(key);
        }
        if let Some(payload) = p.record.payload.as_deref() {
            record = record.payload(payload);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue drains as the broker acknowledges; wait for room.
                    self.producer.flush(Duration::from_millis(100))?;
                    record = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn fail(&self, what: &str, e: &KafkaError) -> Failed {
        if kafka::means_membership_lost(e) {
            self.doubt_membership(e);
        }
        match kafka::classify(e) {
            TxnFailure::Fatal => Failed::Fatal(format!("{what}: {e}")),
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
