//! A process nobody scrapes keeps its metrics memory bounded. `metrics-exporter-prometheus`
//! keeps every histogram sample until it is drained — by a scrape's render or by an upkeep the
//! exporter's own listener runs, which a recorder installed for our own HTTP server does not get.
//! The consumer records one end-to-end latency sample per message, so without upkeep an
//! unscraped consumer grew by ~8 bytes per message, forever (found while profiling P7, issue 18).
//!
//! Its own test binary: the recorder is global to the process, and the test reads the process's
//! peak resident memory.

use std::time::Duration;

use chatlog_consumer::telemetry::{self, Health, HttpLimits, METRICS_UPKEEP};
use tokio_util::sync::CancellationToken;

/// Samples recorded per round, and rounds: 8 M samples, ~66 MB if none is ever drained.
const PER_ROUND: usize = 1_000_000;
const ROUNDS: usize = 8;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_do_not_pile_up_in_a_consumer_nobody_scrapes() {
    let handle = telemetry::install_recorder().expect("recorder");
    let shutdown = CancellationToken::new();
    let _addr = telemetry::serve_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        HttpLimits::default(),
        handle,
        std::sync::Arc::new(Health::default()),
        shutdown.clone(),
    )
    .await
    .expect("serve");
    let e2e = metrics::histogram!(telemetry::E2E_LATENCY);
    let before = peak_rss_kib();
    for _ in 0..ROUNDS {
        for i in 0..PER_ROUND {
            e2e.record((i % 1000) as f64 / 1e4);
        }
        // Time passing as it does in a running consumer (the upkeep runs on a timer; there is
        // no event to wait for): a round of samples per upkeep period and a bit.
        tokio::time::sleep(METRICS_UPKEEP + Duration::from_millis(200)).await;
    }
    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    shutdown.cancel();
    // Undrained, the 8 M samples alone take ~66 MB; drained every period, about two rounds
    // (~17 MB) at most are ever held.
    assert!(
        grown_mib < 40,
        "peak RSS grew by {grown_mib} MiB for {} samples nobody scraped",
        PER_ROUND * ROUNDS
    );
}
