//! Keeping partitions moving past records that cannot be written: the isolation settings, the
//! bookkeeping of rewinds in a row and of partitions that do not move, and the membership gate
//! that stops window writes after a membership error until the next assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use serde::Deserialize;

use super::Pipeline;
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

/// Consecutive rewinds and how long each partition has not moved; owned by [`Pipeline::run`].
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Rewinds in a row that may be the records' fault.
    pub(super) strikes: u32,
    /// While isolating: per partition, the last offset of the batch that failed `rewinds` times;
    /// records up to it are processed in small pieces, record by record.
    pub(super) isolate_through: BTreeMap<(String, i32), i64>,
    /// Partitions rewound since their last commit: since when, and how many times.
    pub(super) stuck: BTreeMap<(String, i32), (Instant, u32)>,
}

impl Progress {
    pub(super) fn isolating(&self) -> bool {
        !self.isolate_through.is_empty()
    }

    /// A batch rewound; `blame`: possibly the records' fault.
    pub(super) fn rewound(
        &mut self,
        batch: &BTreeMap<(String, i32), (i64, i64)>,
        blame: bool,
        rewinds: u32,
    ) {
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
    pub(super) fn committed(&mut self, batch: &BTreeMap<(String, i32), (i64, i64)>) {
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
    pub(super) fn keep_only(&mut self, assigned: &BTreeSet<(String, i32)>) {
        self.stuck.retain(|tp, _| assigned.contains(tp));
        self.isolate_through.retain(|tp, _| assigned.contains(tp));
    }

    /// The partitions that have not moved for `stall_after`, with a description for `/readyz`.
    pub(super) fn stalled(&self, stall_after: Duration, now: Instant) -> (usize, Option<String>) {
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

/// Closed by an error meaning this member may no longer own its partitions, until librdkafka
/// delivers a newer assignment (one follows every rebalance the member takes part in, even an
/// empty one, so a member that rejoins always reopens it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MembershipGate {
    /// The number of assignments seen when the last membership error came; `None`: open.
    pub(super) closed_at: Option<u64>,
}

impl MembershipGate {
    /// A membership error, with `assignments` assignments seen so far.
    pub(super) fn close(&mut self, assignments: u64) {
        self.closed_at = Some(assignments);
    }

    /// Whether windows may be written with `assignments` assignments seen so far; reopens once
    /// one came after the error.
    pub(super) fn open(&mut self, assignments: u64) -> bool {
        match self.closed_at {
            Some(at) if assignments <= at => false,
            _ => {
                self.closed_at = None;
                true
            }
        }
    }
}

/// Why a batch is not written while a membership error is unresolved.
pub(super) const MEMBERSHIP_IN_DOUBT: &str = "an error said this member may no longer own its partitions \
     (evicted, fenced or rebalancing); no window writes until its next assignment, re-reading \
     instead";

impl Pipeline {
    /// An error said this member may no longer own its partitions: no window writes until its
    /// next assignment (a rejoin follows such errors).
    pub(super) fn doubt_membership(&self, e: &KafkaError) {
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
    pub(super) fn membership_in_doubt(&self) -> bool {
        let mut gate = self.membership.get();
        let was_closed = gate.closed_at.is_some();
        let open = gate.open(self.consumer.context().assignments());
        self.membership.set(gate);
        if open && was_closed {
            tracing::info!("assigned again after a membership error: window writes resume");
        }
        !open
    }
}
