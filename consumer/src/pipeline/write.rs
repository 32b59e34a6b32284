//! Writing a batch: decode, then CQL rows and Redis windows at the same time, each retried within
//! a budget; session by session and record by record ([`Pipeline::write_each`]) when a write can
//! never succeed or while isolating, so that only the records at fault go to the DLQ.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::Consumer;

use chatlog_store::repo::latest::{LatestRow, latest_of};
use chatlog_store::retention::Expiry;
use chatlog_store::window::{self, EntryRef};

use super::collect::{Batch, next_offsets};
use super::isolation::MEMBERSHIP_IN_DOUBT;
use super::plan::{WritePlan, by_session};
use super::{Dead, Failed, Pipeline};
use crate::clock::BootInstant;
use crate::decode::{Good, Origin};
use crate::{kafka, telemetry};

/// Sessions written at once when a batch is written session by session.
pub(super) const SESSIONS_AT_ONCE: usize = 32;

/// A written batch: what its transaction carries, and what its metrics count once it commits.
pub(super) struct Written {
    /// Its DLQ records (decoder poison and `write_failed`).
    pub(super) poison: Vec<Dead>,
    /// The offsets its transaction commits (each partition's last + 1).
    pub(super) next_offsets: rdkafka::TopicPartitionList,
    /// Records in the batch.
    records: usize,
    /// Records written (rows and windows).
    persisted: usize,
    /// Mutations among them, by state (edited, recalled, deleted).
    mutations: [u64; 3],
}

/// What one session of [`Pipeline::write_each`] could not write.
#[derive(Default)]
pub(super) struct SessionOutcome {
    /// Records whose write can never succeed.
    pub(super) dead: Vec<Dead>,
    /// Records whose write failed transiently while isolating: given up only if other records
    /// were written in the same attempt.
    pub(super) suspects: Vec<Dead>,
}

impl Written {
    /// Takes `later` (a batch collected after this one) into this one's transaction: its DLQ
    /// records after this one's, each partition's offset to commit the higher of the two.
    pub(super) fn absorb(&mut self, later: Written) {
        self.poison.extend(later.poison);
        for e in later.next_offsets.elements() {
            let (topic, partition, offset) = (e.topic(), e.partition(), e.offset());
            let ours = (self.next_offsets.find_partition(topic, partition)).map(|o| o.offset());
            let higher = match (ours, offset) {
                (Some(rdkafka::Offset::Offset(a)), rdkafka::Offset::Offset(b)) => b > a,
                (Some(_), _) => false,
                (None, _) => true,
            };
            if !higher {
                continue;
            }
            // Offsets of a collected batch are always concrete, so neither call can fail.
            let _ = if ours.is_some() {
                self.next_offsets
                    .set_partition_offset(topic, partition, offset)
            } else {
                self.next_offsets
                    .add_partition_offset(topic, partition, offset)
            };
        }
        self.records += later.records;
        self.persisted += later.persisted;
        for (ours, theirs) in self.mutations.iter_mut().zip(later.mutations) {
            *ours += theirs;
        }
    }
}

impl Pipeline {
    /// decode → write (cql ‖ redis) → commit, for one batch, all on this thread (the loop's
    /// path while isolating; otherwise it overlaps the commit with the next batch, see
    /// [`Pipeline::run`]). Returns how many records of the committed batch went to the DLQ.
    pub(super) fn process(&self, batch: Batch, isolate: bool) -> Result<usize, Failed> {
        let written = self.write_batch(batch, isolate)?;
        let started = Instant::now();
        self.commit(&written.poison, &written.next_offsets)?;
        observe_stage("commit", started);
        Ok(self.committed(written))
    }

    /// decode → write (cql ‖ redis) for one batch: what its transaction must then carry. A write
    /// that can never succeed (or, when `isolate`, any failed write) is redone session by session
    /// and record by record ([`write_each`](Self::write_each)); the records that still fail go to
    /// the DLQ with the decoder's poison.
    pub(super) fn write_batch(&self, batch: Batch, isolate: bool) -> Result<Written, Failed> {
        let records = batch.len();
        let next_offsets = next_offsets(batch.origins());
        let Batch {
            mut good,
            poison,
            polled_from,
            decode_time,
        } = batch;
        // Decoded as it was polled (see `collect`).
        metrics::histogram!(telemetry::STAGE_DURATION, "stage" => "decode")
            .record(decode_time.as_secs_f64());
        let mut poison: Vec<Dead> = poison
            .into_iter()
            .map(|p| Dead {
                poison: p,
                stage: None,
            })
            .collect();
        if self.config.retention.is_set() {
            // Past its retention: a replay must not bring it back (rows or window). Not poison.
            let now_us = chatlog_store::retention::now_us();
            let before = good.len();
            good.retain(|g| {
                self.config.retention.expiry(
                    g.message.session_type,
                    g.message.server_time_us,
                    now_us,
                ) != Expiry::Expired
            });
            metrics::counter!(telemetry::EXPIRED).increment((before - good.len()) as u64);
        }

        let mut persisted = good.len();
        let mut mutations = [0u64; 3];
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
            // One metric lookup per batch, not per message.
            let e2e = metrics::histogram!(telemetry::E2E_LATENCY);
            for g in good
                .iter()
                .filter(|g| dead.is_empty() || !dead.contains(&g.origin))
            {
                // A mutation's latency runs from the mutation, not from the original send.
                let since = g.message.state.mutated_at_us();
                let latency = (now_us - since.unwrap_or(g.message.server_time_us)).max(0);
                e2e.record(latency as f64 / 1e6);
                if since.is_some() {
                    mutations[g.message.state.index() as usize - 1] += 1;
                }
            }
            persisted -= failed.len();
            poison.extend(failed);
        }
        Ok(Written {
            poison,
            next_offsets,
            records,
            persisted,
            mutations,
        })
    }

    /// After a batch's transaction committed: its offsets in librdkafka's store, its metrics and
    /// DLQ warnings. Returns how many of its records went to the DLQ.
    pub(super) fn committed(&self, written: Written) -> usize {
        let Written {
            poison,
            next_offsets,
            records,
            persisted,
            mutations,
        } = written;
        // Mirror the committed offsets into librdkafka's offset store: its statistics then report
        // the lag (`consumer_lag_stored`); auto-commit is off, so nothing else reads them.
        if let Err(e) = self.consumer.store_offsets(&next_offsets) {
            tracing::debug!(error = %e, "store_offsets after commit");
        }

        metrics::counter!(telemetry::TRANSACTIONS, "result" => "committed").increment(1);
        metrics::histogram!(telemetry::BATCH_RECORDS).record(records as f64);
        metrics::counter!(telemetry::RECORDS, "outcome" => "persisted").increment(persisted as u64);
        metrics::counter!(telemetry::RECORDS, "outcome" => "dlq").increment(poison.len() as u64);
        for (state, n) in telemetry::MUTATION_STATES.iter().zip(mutations) {
            if n > 0 {
                metrics::counter!(telemetry::MUTATIONS, "state" => *state).increment(n);
            }
        }
        // One increment per reason per batch.
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for d in &poison {
            *by_reason.entry(d.poison.reason).or_default() += 1;
        }
        for (reason, n) in by_reason {
            metrics::counter!(telemetry::DLQ_RECORDS, "reason" => reason).increment(n);
        }
        for d in &poison {
            let p = &d.poison;
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
        poison.len()
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
    pub(super) fn write(&self, good: &[Good], polled_from: BootInstant) -> Result<(), Failed> {
        if self.membership_in_doubt() {
            metrics::counter!(telemetry::RETRIES, "stage" => "fenced").increment(1);
            return Err(Failed::Fenced(MEMBERSHIP_IN_DOUBT.into()));
        }
        if let Some(failed) = self.injected_write_failure(good.iter()) {
            return Err(failed);
        }
        let plan = WritePlan::new(good, self.windows.config().size);
        let fence = polled_from + self.config.kafka.window_fence();
        let budget = self.config.retry.stage_budget;
        let latest = latest_rows(good.iter());
        self.runtime.block_on(async {
            // Each session's latest after the rows (one stage: a retry rewrites both, which is
            // idempotent): it never names a message whose row the batch failed to write (its
            // highest seq is always among `plan.rows`).
            let rows = self.retry("cql", None, budget, || async {
                let written = self.writer.write_borrowed(&plan.rows).await?;
                self.latest.write(&latest).await?;
                Ok(written)
            });
            let windows = self.append_windows(&plan.windows, fence, budget);
            let trimmed_first = async {
                if plan.trimmed_rows.is_empty() {
                    return Ok(Vec::new());
                }
                self.retry("cql", None, budget, || {
                    self.writer.write_borrowed(&plan.trimmed_rows)
                })
                .await?;
                self.append_windows(&plan.windows_after_trimmed_rows, fence, budget)
                    .await
            };
            let (_, mut not_started, more) = tokio::try_join!(rows, windows, trimmed_first)?;
            // Every row of the batch is written now: the table has what these windows need.
            not_started.extend(more);
            self.start_windows(&not_started, fence, budget).await
        })
    }

    /// Writes `good` session by session (rows, then the window), and a session whose write fails
    /// for good (or, when `isolate`, at all) record by record in offset order. Returns the records
    /// to send to the DLQ as `write_failed`, with the stage that failed: `cql` (no row written)
    /// or `redis` (the row is written, the window is not). Everything else is written.
    ///
    /// A record is given up only on proof that it is at fault: an error that can never succeed,
    /// or — when isolating — a transient failure twice, the second time followed by a write that
    /// succeeded. If nothing was written and some failure is transient, the whole batch is
    /// rewound instead (Redis or CQL down is no reason to drop anything). Writes are idempotent
    /// and keyed by (session, seq), so writing later records before an earlier one is decided
    /// changes nothing for readers, and a replay writes the same again.
    ///
    /// Why twice: an outage that ends (or begins) while a pass runs also fails some records
    /// while others are written — records that are not at fault. So the records that failed
    /// (the suspects) are written once more, and then one record the pass did write is written
    /// again (idempotent) as a probe of the stores: a suspect that fails again while the probe,
    /// written after it, succeeds goes to the DLQ; if the probe fails too, the stores are
    /// failing and the batch rewinds.
    pub(super) fn write_each(
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
        let any_written = AtomicBool::new(false);
        let (mut dead, suspects) = self.write_sessions(good, fence, isolate, &any_written)?;
        if suspects.is_empty() {
            return Ok(dead);
        }
        if !any_written.load(Ordering::Acquire) {
            return Err(Failed::Rewind(format!(
                "isolating: no record of the batch could be written ({} failed), so the \
                 records are not at fault; rewinding",
                suspects.len()
            )));
        }
        let failed: BTreeSet<&Origin> = suspects
            .iter()
            .chain(&dead)
            .map(|d| &d.poison.record.origin)
            .collect();
        let probe = good.iter().find(|g| !failed.contains(&g.origin));
        let suspected: BTreeSet<&Origin> =
            suspects.iter().map(|d| &d.poison.record.origin).collect();
        let again = good.iter().filter(|g| suspected.contains(&g.origin));
        tracing::info!(
            records = suspected.len(),
            "isolating: records failed while others were written; writing them once more"
        );
        let (dead_again, suspects) =
            self.write_sessions(again, fence, true, &AtomicBool::new(false))?;
        dead.extend(dead_again);
        if suspects.is_empty() {
            return Ok(dead);
        }
        // The probe: a record this pass wrote, written again after the suspects failed again.
        let probed = AtomicBool::new(false);
        if let Some(g) = probe {
            self.runtime.block_on(self.write_session_each(
                &g.message.session_id,
                vec![g],
                fence,
                true,
                &probed,
            ))?;
        }
        if !probed.load(Ordering::Acquire) {
            return Err(Failed::Rewind(format!(
                "isolating: {} record(s) failed twice and a record written before failed too: \
                 the stores are failing, not the records; rewinding",
                suspects.len()
            )));
        }
        dead.extend(suspects);
        Ok(dead)
    }

    /// [`write_session_each`](Self::write_session_each) for each session of `good`, several at
    /// once: the records that can never be written, and the suspects.
    fn write_sessions<'g>(
        &self,
        good: impl IntoIterator<Item = &'g Good>,
        fence: BootInstant,
        isolate: bool,
        any_written: &AtomicBool,
    ) -> Result<(Vec<Dead>, Vec<Dead>), Failed> {
        let outcomes: Vec<SessionOutcome> = self.runtime.block_on(
            futures::stream::iter(by_session(good).into_iter().map(|(session, messages)| {
                self.write_session_each(session, messages, fence, isolate, any_written)
            }))
            .buffer_unordered(SESSIONS_AT_ONCE)
            .try_collect(),
        )?;
        let (mut dead, mut suspects) = (Vec::new(), Vec::new());
        for o in outcomes {
            dead.extend(o.dead);
            suspects.extend(o.suspects);
        }
        Ok((dead, suspects))
    }

    /// One session of [`write_each`](Self::write_each).
    pub(super) async fn write_session_each(
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
            let plan = WritePlan::new(messages.iter().copied(), self.windows.config().size);
            let latest = latest_rows(messages.iter().copied());
            let written = async {
                for rows in [&plan.trimmed_rows, &plan.rows] {
                    if !rows.is_empty() {
                        self.retry("cql", None, budget, || self.writer.write_borrowed(rows))
                            .await?;
                    }
                }
                self.retry("cql", None, budget, || self.latest.write(&latest))
                    .await?;
                let mut not_started = Vec::new();
                for windows in [&plan.windows_after_trimmed_rows, &plan.windows] {
                    not_started.extend(self.append_windows(windows, fence, budget).await?);
                }
                self.start_windows(&not_started, fence, budget).await
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
            let latest = latest_rows(std::iter::once(g));
            let row = self.retry("cql", None, budget, || async {
                self.writer.write(std::slice::from_ref(&g.message)).await?;
                self.latest.write(&latest).await
            });
            let row = match self.injected_write_failure(std::iter::once(g)) {
                Some(failed) => Err(failed),
                None => row.await,
            };
            let failed = match row {
                Err(e) => Some(("cql", e)),
                Ok(_) => {
                    let entry = EntryRef::of(&g.message, &g.avro);
                    let windows = BTreeMap::from([(session, vec![entry])]);
                    let written = async {
                        let not_started = self.append_windows(&windows, fence, budget).await?;
                        self.start_windows(&not_started, fence, budget).await
                    };
                    written.await.err().map(|e| ("redis", e))
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
    pub(super) async fn remove_from_window(
        &self,
        session: &str,
        g: &Good,
        fence: BootInstant,
        budget: Duration,
    ) -> Result<(), Failed> {
        let member = window::member(g.message.version(), &g.avro);
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
    /// Returns the sessions whose windows were empty and so not started: pass them to
    /// [`start_windows`](Self::start_windows) once their rows are written.
    pub(super) async fn append_windows<'s>(
        &self,
        sessions: &'s BTreeMap<&'s str, Vec<EntryRef<'_>>>,
        fence: BootInstant,
        budget: Duration,
    ) -> Result<Vec<&'s str>, Failed> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        self.retry("redis", Some(fence), budget, || {
            let mut con = self.redis.clone();
            async move { self.windows.append_borrowed(&mut con, sessions).await }
        })
        .await
    }

    /// Starts the windows of `sessions` from the table's newest rows (their rows written): see
    /// [`WindowStarter`]. The reads come first and are best effort (a window left empty is always
    /// safe: history reads the table, and the session's next message asks again); the append
    /// then runs under the same retries and fence as any window write, so the fence is checked
    /// right before Redis is written, after the reads, however long they took.
    pub(super) async fn start_windows(
        &self,
        sessions: &[&str],
        fence: BootInstant,
        budget: Duration,
    ) -> Result<(), Failed> {
        if sessions.is_empty() {
            return Ok(());
        }
        // The reads may take no longer than the fence leaves (a stalled Cassandra must not hold
        // the batch past its poll interval); what they did not finish stays empty.
        let Ok(started) =
            tokio::time::timeout(fence.remaining(), self.starter.read(sessions)).await
        else {
            tracing::warn!(
                sessions = sessions.len(),
                "windows left empty: reading their newest rows outlasted the window fence"
            );
            return Ok(());
        };
        if started.failed > 0 {
            tracing::warn!(
                failed = started.failed,
                error = started.first_error.as_deref().unwrap_or(""),
                "windows left empty: reading their newest rows failed (history reads the table; \
                 the session's next message tries again)"
            );
        }
        if started.deferred > 0 {
            tracing::debug!(
                deferred = started.deferred,
                "windows left for the sessions' next messages"
            );
        }
        if started.windows.is_empty() {
            return Ok(());
        }
        let windows = &started.windows;
        self.retry("redis", Some(fence), budget, || {
            let mut con = self.redis.clone();
            async move { self.windows.append_proven(&mut con, windows).await }
        })
        .await?;
        metrics::counter!(telemetry::WINDOWS_STARTED).increment(windows.len() as u64);
        Ok(())
    }

    /// Runs a CQL/Redis write until it succeeds or `budget` is spent, and records the stage's
    /// duration. An error that can never succeed is not retried ([`Failed::Permanent`]). With a
    /// `fence` (window writes), no attempt starts after that instant or while this member's
    /// ownership is in doubt: the batch is rewound instead.
    pub(super) async fn retry<T, F, Fut>(
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
}

/// Each session's latest among `good` (highest seq, then newest version).
fn latest_rows<'a>(good: impl Iterator<Item = &'a Good>) -> Vec<LatestRow> {
    latest_of(good.map(|g| {
        (
            g.message.session_id.as_str(),
            g.message.seq,
            g.message.version(),
            g.avro.as_slice(),
        )
    }))
}

pub(super) fn observe_stage(stage: &'static str, started: Instant) {
    metrics::histogram!(telemetry::STAGE_DURATION, "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}

pub(super) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
