//! The run's event log: every phase and every fault, with its time since the start of the run,
//! printed to stderr and appended to `<run dir>/events.log`; faults are also kept for the report.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// One of [`crate::faults::Kind::name`].
    pub kind: String,
    /// Seconds since the start of the run when the fault began.
    pub at_secs: f64,
    /// Wall clock (ms since the Unix epoch) when the fault began.
    pub at_unix_ms: u128,
    /// How long the fault took (until the service was back).
    pub took_secs: f64,
    /// What exactly was done.
    pub detail: String,
}

struct State {
    file: Option<std::fs::File>,
    faults: Vec<Fault>,
    /// Intervals (seconds since start) during which Redis lost or could lose its data.
    redis_losses: Vec<(f64, f64)>,
}

/// The shared event log of a run (cheap to clone).
#[derive(Clone)]
pub struct Events {
    start: Instant,
    unix_start_us: i64,
    state: Arc<Mutex<State>>,
    quiet: bool,
}

impl Events {
    /// A log appending to `path` (created with its folder); `quiet` keeps stderr silent.
    pub fn new(path: &Path, quiet: bool) -> anyhow::Result<Events> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Events {
            start: Instant::now(),
            unix_start_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
            state: Arc::new(Mutex::new(State {
                file: Some(file),
                faults: Vec::new(),
                redis_losses: Vec::new(),
            })),
            quiet,
        })
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The wall clock (µs since the Unix epoch) when the run started.
    pub fn unix_start_us(&self) -> i64 {
        self.unix_start_us
    }

    /// A wall-clock time (µs since the Unix epoch, e.g. a server time) as seconds since the
    /// run started.
    pub fn since_start(&self, unix_us: i64) -> f64 {
        (unix_us - self.unix_start_us) as f64 / 1e6
    }

    /// The instant the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs one line.
    pub fn log(&self, what: impl AsRef<str>) {
        let line = format!("[chaos {:>8.3}s] {}", self.now(), what.as_ref());
        if !self.quiet {
            eprintln!("{line}");
        }
        if let Some(f) = self.lock().file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Records a fault that began at `at` (seconds since start) and is over now.
    pub fn fault(&self, kind: &str, at: f64, detail: impl Into<String>) {
        let detail = detail.into();
        let took = self.now() - at;
        self.log(format!("FAULT {kind} (took {took:.1}s): {detail}"));
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .saturating_sub((took * 1000.0) as u128);
        self.lock().faults.push(Fault {
            kind: kind.to_owned(),
            at_secs: at,
            at_unix_ms,
            took_secs: took,
            detail,
        });
    }

    /// Records that Redis may have lost data between `from` and `to` (seconds since start).
    pub fn redis_loss(&self, from: f64, to: f64) {
        self.lock().redis_losses.push((from, to));
    }

    /// Whether a Redis data loss overlaps `[from, to]` (seconds since start).
    pub fn redis_lost_between(&self, from: f64, to: f64) -> bool {
        self.lock()
            .redis_losses
            .iter()
            .any(|&(a, b)| a <= to && b >= from)
    }

    /// The faults so far.
    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }
}
