//! Keeping partitions moving past records that cannot be written (settings:
//! [`IsolationConfig`](crate::config::IsolationConfig)): the bookkeeping of rewinds in a row and
//! of partitions that do not move, and the membership gate that stops window writes after a
//! membership error until the next assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;

use super::Pipeline;

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
        // A later error already closed it further: keep that.
        self.closed_at = Some(self.closed_at.map_or(assignments, |at| at.max(assignments)));
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
    /// An error said this member may no longer own its partitions: no window writes until an
    /// assignment after the `assignments` seen when the failed call was made (a rejoin follows
    /// such errors).
    pub(super) fn doubt_membership(&self, e: &KafkaError, assignments: u64) {
        let mut gate = self.membership.get();
        if gate.closed_at.is_none() {
            tracing::warn!(
                error = %e,
                "this member may no longer own its partitions: no window writes until its next \
                 assignment"
            );
        }
        gate.close(assignments);
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
