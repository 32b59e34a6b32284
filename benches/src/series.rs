//! Time series: a sampler thread that reads a cumulative counter at a fixed interval, for the
//! throughput-over-time plot and the steady-state rate of a drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `(seconds since the scenario started, cumulative count)`.
pub type Series = Vec<(f64, f64)>;

/// Samples a cumulative counter on its own thread until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Series>,
}

impl Sampler {
    /// Calls `read` every `every` (a failed read is skipped), times relative to `origin`.
    pub fn start(
        origin: Instant,
        every: Duration,
        mut read: impl FnMut() -> Option<f64> + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut series = Series::new();
            let mut next = Instant::now();
            loop {
                if let Some(v) = read() {
                    series.push((origin.elapsed().as_secs_f64(), v));
                }
                if flag.load(Ordering::Relaxed) {
                    return series;
                }
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Sampler { stop, thread }
    }

    /// Stops (after one last sample) and returns the series.
    pub fn finish(self) -> Series {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The steady-state rate of a cumulative series that goes from `from` to `to`: measured from the
/// first sample above `from` (the first progress, so start-up and group join are excluded) to the
/// first sample at or above `to`. `None` if it never got there.
pub fn steady_rate(series: &Series, from: f64, to: f64) -> Option<(f64, f64, f64)> {
    let (t0, v0) = *series.iter().find(|(_, v)| *v > from)?;
    let (t1, v1) = *series.iter().find(|(_, v)| *v >= to)?;
    if t1 <= t0 {
        return None;
    }
    Some(((v1 - v0) / (t1 - t0), t0, t1))
}

/// Per-interval rates of a cumulative series (for plots): `(t, Δv/Δt)` at each sample but the first.
pub fn rates(series: &Series) -> Series {
    series
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| (w[1].0, (w[1].1 - w[0].1) / (w[1].0 - w[0].0)))
        .collect()
}
