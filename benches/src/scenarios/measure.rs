//! Small measuring helpers the scenarios share.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use crate::child::ConsumerProcess;
use crate::kafka::OffsetMeter;

/// KiB → MiB.
pub(super) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Waits until `meter`'s group has committed `target` (sum of offsets); returns what it had
/// committed then.
pub(super) async fn wait_committed(
    meter: &OffsetMeter,
    target: i64,
    timeout: Duration,
    consumer: &mut ConsumerProcess,
) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let committed = meter.committed()?;
        if committed >= target {
            return Ok(committed);
        }
        if let Some(status) = consumer.exited() {
            bail!(
                "the consumer exited ({status}) before committing offset {target}; log {:?}",
                consumer.log_path()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the consumer did not commit offset {target} within {timeout:?} (committed {})",
                meter.committed()?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of latency histogram `h` (µs) at quantile `q`, in ms.
pub(super) fn ms_at(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `p50 … ms p99 … ms (n samples)` of latency histogram `h`, for the progress lines.
pub(super) fn latency_line(h: &hdrhistogram::Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms p99 {:.1} ms ({} samples)",
        ms_at(h, 0.5),
        ms_at(h, 0.99),
        h.len()
    )
}

/// Adds the reported percentiles of latency histogram `h` (ms) to the JSON object `to`.
pub(super) fn add_percentiles(to: &mut serde_json::Value, h: &hdrhistogram::Histogram<u64>) {
    for (key, q) in [
        ("p50_ms", 0.5),
        ("p90_ms", 0.9),
        ("p99_ms", 0.99),
        ("p999_ms", 0.999),
    ] {
        to[key] = json!(ms_at(h, q));
    }
    to["max_ms"] = json!(h.max() as f64 / 1000.0);
}
