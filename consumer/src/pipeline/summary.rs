//! The periodic info line that sums up the consuming (`log.progress_interval`): what an operator
//! tailing the log wants between the per-batch debug lines and silence.

use std::time::{Duration, Instant};

/// Counts committed batches between two summary lines.
#[derive(Debug)]
pub(super) struct Summary {
    every: Duration,
    since: Instant,
    batches: u64,
    records: u64,
    dlq: u64,
}

/// What one summary line says.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Line {
    pub(super) records_per_s: f64,
    pub(super) batches: u64,
    pub(super) mean_batch: f64,
    pub(super) dlq: u64,
}

impl Summary {
    pub(super) fn new(every: Duration, now: Instant) -> Summary {
        Summary {
            every,
            since: now,
            batches: 0,
            records: 0,
            dlq: 0,
        }
    }

    /// A committed batch of `records`, `dlq` of them sent to the DLQ.
    pub(super) fn committed(&mut self, records: usize, dlq: usize) {
        self.batches += 1;
        self.records += records as u64;
        self.dlq += dlq as u64;
    }

    /// The line due at `now` (and a new period), or `None` before `every` has passed or when
    /// turned off (`every` = 0).
    pub(super) fn due(&mut self, now: Instant) -> Option<Line> {
        let elapsed = now.saturating_duration_since(self.since);
        if self.every.is_zero() || elapsed < self.every {
            return None;
        }
        let line = Line {
            records_per_s: self.records as f64 / elapsed.as_secs_f64().max(1e-9),
            batches: self.batches,
            mean_batch: if self.batches == 0 {
                0.0
            } else {
                self.records as f64 / self.batches as f64
            },
            dlq: self.dlq,
        };
        *self = Summary::new(self.every, now);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_per_period_with_rate_and_mean_batch_and_none_when_off() {
        let t0 = Instant::now();
        let mut s = Summary::new(Duration::from_secs(10), t0);
        s.committed(300, 1);
        s.committed(100, 0);
        assert_eq!(s.due(t0 + Duration::from_secs(9)), None);
        let line = s.due(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            line,
            Line {
                records_per_s: 40.0,
                batches: 2,
                mean_batch: 200.0,
                dlq: 1
            }
        );
        // A new period: idle, still a line (a heartbeat).
        let idle = s.due(t0 + Duration::from_secs(20)).unwrap();
        assert_eq!((idle.batches, idle.records_per_s), (0, 0.0));
        let mut off = Summary::new(Duration::ZERO, t0);
        off.committed(5, 0);
        assert_eq!(off.due(t0 + Duration::from_secs(3600)), None);
    }
}
