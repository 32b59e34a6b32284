//! Small measuring helpers the scenarios share.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use crate::child::ConsumerProcess;
use crate::kafka::OffsetMeter;
use crate::quiesce;

use super::world::Ctx;

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

/// How a timed phase found Cassandra: what bringing it to rest took (every table of the run
/// flushed, no flush or compaction left: see [`quiesce`]), then the seconds until its CPU settled.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(super) struct Rested {
    rest: quiesce::Rest,
    settle_seconds: f64,
}

/// Brings Cassandra to rest before a timed phase, so that no phase pays for the flushes and
/// compactions the one before it left (at most 120 s; 10 s with `--quick`), then waits until its
/// CPU settles (below 0.3 CPU, at most 20 s).
pub(super) async fn rest(cx: &Ctx<'_>) -> Result<Rested> {
    let keyspaces: Vec<&str> = cx.world.keyspaces.iter().map(String::as_str).collect();
    // A `--quick` run (the smoke test, in CI after the other tests) measures nothing: it flushes
    // but does not wait long for compactions those tests left.
    let patience = Duration::from_secs(if cx.plan.quick { 10 } else { 120 });
    let rest = quiesce::flush_and_wait(&cx.world.session, &keyspaces, patience).await?;
    if !rest.at_rest {
        eprintln!(
            "[bench]   Cassandra not known at rest after {:.0} s: the phase starts anyway",
            rest.seconds
        );
    }
    let settle_seconds = cx
        .procs
        .settle("cassandra", 0.3, Duration::from_secs(20))
        .await;
    Ok(Rested {
        rest,
        settle_seconds,
    })
}
