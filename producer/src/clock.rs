//! The producer's clock, and its check against a reference clock (Redis `TIME`).
//!
//! The producer stamps every message's `server_time` with its host's clock. That time is the
//! rows' write timestamp, the window's version and what history ages gaps by, so a host whose
//! clock is off by more than half of `limits.max_skew` refuses to send ([`Error::ClockSkew`]):
//! ahead, its messages would reach the consumer's DLQ as `skew` after being acknowledged;
//! behind, history would age gaps too early and report a seq `missing` (final) while its send
//! is still retried.
//!
//! The reference is Redis `TIME` (every producer already talks to that Redis): read once when
//! the producer starts — a start on a skewed host fails — and again every
//! `clock_check_interval`. Between two readings each send compares the host clock with the last
//! reading advanced by the monotonic clock: two clock reads, no round trip, and a wall clock
//! that jumps between readings is caught at the next send.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chatlog_store::RedisConnection;

use crate::metrics::CLOCK_OFFSET;
use crate::{Error, Result};

/// The host's wall clock as the producer reads it. [`Clock::system`] is the host clock itself;
/// [`Clock::skewed`] adds a fixed offset, to rehearse a host with a wrong clock (drills and
/// tests) without touching the real one.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_us: Arc<AtomicI64>,
}

impl Clock {
    /// The host clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The host clock plus `offset_us` microseconds (negative: behind).
    pub fn skewed(offset_us: i64) -> Clock {
        let clock = Clock::default();
        clock.set_offset_us(offset_us);
        clock
    }

    /// Moves this clock (and its clones) to the host clock plus `offset_us`: a clock that jumps.
    pub fn set_offset_us(&self, offset_us: i64) {
        self.offset_us.store(offset_us, Ordering::Relaxed);
    }

    /// Now, in microseconds since the Unix epoch.
    pub fn now_us(&self) -> i64 {
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        host.saturating_add(self.offset_us.load(Ordering::Relaxed))
    }
}

/// One reading of the reference clock.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The reference time (µs since the epoch) at `at`.
    reference_us: i64,
    /// The monotonic instant the reference time belongs to (the middle of the round trip).
    at: Instant,
    /// Half the round trip: how far off `at` may be.
    uncertainty_us: i64,
}

/// The host clock checked against the reference: see the module docs.
#[derive(Debug)]
pub(crate) struct ClockCheck {
    clock: Clock,
    reading: Mutex<Reading>,
    /// Half of `limits.max_skew`: the other half is the consumer's.
    allowed: Duration,
    max_skew: Duration,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Reads Redis `TIME` and brackets it with the monotonic clock.
async fn read(redis: &mut RedisConnection) -> Result<Reading> {
    let before = Instant::now();
    let (secs, us): (i64, i64) = redis::cmd("TIME")
        .query_async(redis)
        .await
        .map_err(|source| {
            Error::Allocation(chatlog_store::Error::Redis {
                what: "read the reference clock (TIME)",
                source,
            })
        })?;
    let half = before.elapsed() / 2;
    Ok(Reading {
        reference_us: secs.saturating_mul(1_000_000).saturating_add(us),
        at: before + half,
        uncertainty_us: micros(half) + 1,
    })
}

impl ClockCheck {
    /// Reads the reference clock once and checks the host clock against it.
    pub(crate) async fn start(
        clock: Clock,
        redis: &mut RedisConnection,
        max_skew: Duration,
    ) -> Result<ClockCheck> {
        let check = ClockCheck {
            reading: Mutex::new(read(redis).await?),
            clock,
            allowed: max_skew / 2,
            max_skew,
        };
        let (offset, _) = check.offset_us();
        metrics::gauge!(CLOCK_OFFSET).set(offset as f64 / 1e6);
        check.check()?;
        Ok(check)
    }

    /// The clock messages are stamped with.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    fn reading(&self) -> Reading {
        *self.reading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host clock minus the reference now (the last reading advanced by the monotonic
    /// clock), with the reading's uncertainty.
    fn offset_us(&self) -> (i64, i64) {
        let r = self.reading();
        let reference = r.reference_us.saturating_add(micros(r.at.elapsed()));
        (
            self.clock.now_us().saturating_sub(reference),
            r.uncertainty_us,
        )
    }

    /// `Ok` unless the host clock is proven further than half of `max_skew` from the reference.
    pub(crate) fn check(&self) -> Result<()> {
        let (offset, uncertainty) = self.offset_us();
        if offset
            .unsigned_abs()
            .saturating_sub(uncertainty.unsigned_abs())
            > micros(self.allowed).unsigned_abs()
        {
            return Err(Error::ClockSkew {
                offset: Duration::from_micros(offset.unsigned_abs()),
                ahead: offset > 0,
                max_skew: self.max_skew,
            });
        }
        Ok(())
    }

    /// Reads the reference clock again (a failed read keeps the last reading: the monotonic
    /// clock carries it on).
    async fn refresh(&self, redis: &mut RedisConnection) {
        match read(redis).await {
            Ok(r) => {
                *self.reading.lock().unwrap_or_else(|e| e.into_inner()) = r;
                let (offset, _) = self.offset_us();
                metrics::gauge!(CLOCK_OFFSET).set(offset as f64 / 1e6);
                if let Err(e) = self.check() {
                    tracing::error!(error = %e, "producer clock check");
                }
            }
            Err(e) => tracing::warn!(error = %e, "producer clock check: keeping the last reading"),
        }
    }

    /// Reads the reference every `interval` until the producer is dropped.
    pub(crate) fn spawn_refresh(
        this: &Arc<ClockCheck>,
        mut redis: RedisConnection,
        interval: Duration,
    ) {
        let weak: Weak<ClockCheck> = Arc::downgrade(this);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(check) = weak.upgrade() else { return };
                check.refresh(&mut redis).await;
            }
        });
    }
}
