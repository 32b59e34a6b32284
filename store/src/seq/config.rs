//! [`SeqConfig`]: the allocator's settings, and the adaptive segment step.

use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};
use serde::Deserialize;

use crate::{Error, Result};

/// The serial consistency of the Paxos phase of the ceiling LWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialMode {
    /// `SERIAL`: linearizable across every datacenter. Required if more than one datacenter may
    /// allocate seqs of the same session.
    #[default]
    Serial,
    /// `LOCAL_SERIAL`: linearizable within the local datacenter only (faster; safe only when a
    /// session's seqs are allocated from one datacenter).
    LocalSerial,
}

impl SerialMode {
    pub(crate) fn serial(self) -> SerialConsistency {
        match self {
            SerialMode::Serial => SerialConsistency::Serial,
            SerialMode::LocalSerial => SerialConsistency::LocalSerial,
        }
    }

    pub(crate) fn read(self) -> Consistency {
        match self {
            SerialMode::Serial => Consistency::Serial,
            SerialMode::LocalSerial => Consistency::LocalSerial,
        }
    }

    pub(crate) fn commit(self) -> Consistency {
        match self {
            SerialMode::Serial => Consistency::Quorum,
            SerialMode::LocalSerial => Consistency::LocalQuorum,
        }
    }
}

/// Settings of the seq allocator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeqConfig {
    /// Smallest segment reserved per LWT (also the first segment of a session). Default 100.
    pub min_segment: i64,
    /// Largest segment reserved per LWT; also the largest gap a Redis loss can cause. Default
    /// 10 000.
    pub max_segment: i64,
    /// A segment used up faster than this makes the next one as large as would last this long at
    /// the rate the last one was used (at least twice, at most [`GROWTH_MAX`] times as large); one
    /// that lasted more than twice this makes the next one half as large. Default 1 minute.
    #[serde(with = "humantime_serde")]
    pub segment_target_lifetime: Duration,
    /// How long an idempotency record `(session, sender, client_msg_id) → allocation` is kept: a retried
    /// send within this time gets the first allocation back. Default 24 hours.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// A session's Redis seq hash expires after this long without an allocation (memory of idle
    /// sessions); the next allocation then takes the recover path, leaving a gap. `0s` = never.
    /// Default 30 days.
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// Serial consistency of the ceiling LWTs (`serial` or `local_serial`). Default `serial`.
    pub serial_consistency: SerialMode,
    /// Rounds (fast path, reservation) one allocation may take before giving up under contention.
    /// Default 16.
    pub max_attempts: u32,
    /// Redis replicas that must hold an allocation before its seq is handed out (Redis `WAIT`,
    /// sent in the same pipeline as the fast-path call). Seqs never repeat without it (a failover
    /// is a new epoch, see the module docs); with it, a failover to one of those replicas also
    /// keeps the idempotency records and the session's segment (no recovery gap). `0` (default):
    /// no wait. With replicas, `1` costs one replica round trip per fast-path call (one call
    /// serves a batch of concurrent requests, see the module docs).
    pub wait_replicas: u32,
    /// How long `WAIT` may take to gather [`wait_replicas`](Self::wait_replicas) acknowledgements;
    /// fewer by then fails the allocation with [`Error::NotReplicated`] (retriable). While it waits,
    /// later commands on the allocator's Redis connection queue behind it; keep it well below the
    /// Redis `response_timeout` (2 s by default). Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
}

impl Default for SeqConfig {
    fn default() -> Self {
        SeqConfig {
            min_segment: 100,
            max_segment: 10_000,
            segment_target_lifetime: Duration::from_secs(60),
            dedup_ttl: Duration::from_secs(24 * 3600),
            idle_ttl: Duration::from_secs(30 * 24 * 3600),
            serial_consistency: SerialMode::Serial,
            max_attempts: 16,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
        }
    }
}

impl SeqConfig {
    /// Checks the values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        if self.min_segment < 1 {
            return Err(Error::Config("seq.min_segment must be >= 1".into()));
        }
        if self.max_segment < self.min_segment {
            return Err(Error::Config(
                "seq.max_segment must be >= seq.min_segment".into(),
            ));
        }
        if self.dedup_ttl.as_millis() < 1 {
            return Err(Error::Config("seq.dedup_ttl must be at least 1ms".into()));
        }
        if self.max_attempts < 2 {
            return Err(Error::Config("seq.max_attempts must be >= 2".into()));
        }
        if self.wait_replicas > 0 && self.wait_timeout.as_millis() < 1 {
            return Err(Error::Config(
                "seq.wait_timeout must be at least 1ms when seq.wait_replicas > 0 (0 would make \
                 Redis WAIT block forever)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The size of the next segment, given the previous one's size and how long it lasted.
    pub fn next_step(&self, prev_step: i64, installed_at_ms: i64, now_ms: i64) -> i64 {
        let (min, max) = (self.min_segment, self.max_segment.max(self.min_segment));
        if prev_step <= 0 {
            return min;
        }
        let prev = prev_step.clamp(min, max);
        if installed_at_ms <= 0 {
            return prev;
        }
        let lived = now_ms.saturating_sub(installed_at_ms);
        let target = duration_ms(self.segment_target_lifetime).max(1);
        let next = if lived < target {
            // Sized by the rate, not doubled: a session that starts busy reaches its size in one
            // or two reservations instead of one per doubling (each an LWT, the allocation's
            // dearest step). Bounded per step, so a burst does not jump to the largest gap. A
            // segment installed "in the future" (clock skew between instances) has no rate: it
            // counts as fast, twice as large.
            let factor = if lived < 0 {
                2
            } else {
                (target / lived.max(1)).clamp(2, GROWTH_MAX)
            };
            prev.saturating_mul(factor)
        } else if lived > target.saturating_mul(2) {
            prev / 2
        } else {
            prev
        };
        next.clamp(min, max)
    }
}

/// The most a segment may grow over the previous one (see
/// [`SeqConfig::segment_target_lifetime`]).
pub const GROWTH_MAX: i64 = 16;

pub(super) fn duration_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}
