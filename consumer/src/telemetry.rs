//! Metrics and health: the names of every metric the consumer records (one place, so dashboards,
//! alerts and code agree), the Prometheus recorder with explicit histogram buckets, and the HTTP
//! endpoint serving `/metrics`, `/healthz` and `/readyz`.
//!
//! Naming follows Prometheus conventions: the `chatlog_` prefix, base units (seconds, records),
//! `_total` on counters, explicit buckets on every histogram. Labels are bounded: outcome, stage,
//! result, reason, kind and partition — never a session id. The known label values are recorded
//! at start-up ([`install_recorder`]), so every series exists with 0 from the first scrape and
//! `rate()`/`increase()` see the first event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Records by outcome (`persisted`, `dlq`), counted when their transaction committed.
pub const RECORDS: &str = "chatlog_consumer_records_total";
/// Records per committed batch (histogram).
pub const BATCH_RECORDS: &str = "chatlog_consumer_batch_records";
/// Time spent per stage (`decode`, `cql`, `redis`, `commit`), histogram in seconds. `cql` and
/// `redis` run at the same time, and are observed twice in a batch whose hot sessions have their
/// older rows written first (see `WritePlan`): they do not add up to a batch's duration.
pub const STAGE_DURATION: &str = "chatlog_stage_duration_seconds";
/// From a message's server time to its visibility in the Redis window, histogram in seconds.
pub const E2E_LATENCY: &str = "chatlog_e2e_latency_seconds";
/// Consumer lag per partition, from librdkafka statistics.
pub const LAG: &str = "chatlog_consumer_lag_records";
/// Transactions by result (`committed`, `aborted`).
pub const TRANSACTIONS: &str = "chatlog_transactions_total";
/// DLQ records by reason.
pub const DLQ_RECORDS: &str = "chatlog_dlq_records_total";
/// Rebalance events by kind (`assign`, `revoke`, `lost`).
pub const REBALANCES: &str = "chatlog_rebalances_total";
/// Retries by stage (`cql`, `redis`, `commit`).
pub const RETRIES: &str = "chatlog_retries_total";
/// Uncommitted records dropped because their partition was revoked before their batch ran (the new
/// owner reads them again from the committed offset).
pub const REVOKED_DROPPED: &str = "chatlog_consumer_revoked_records_total";
/// 1 while `/readyz` answers 200, else 0.
pub const READY: &str = "chatlog_consumer_ready";
/// Always 1; the `version` label carries the running build's version.
pub const BUILD_INFO: &str = "chatlog_consumer_build_info";

/// Every metric family the consumer exports. Dashboards and alert rules may use only these (a
/// histogram `h` is exported as `h_bucket`, `h_sum` and `h_count`).
pub const ALL: &[&str] = &[
    RECORDS,
    BATCH_RECORDS,
    STAGE_DURATION,
    E2E_LATENCY,
    LAG,
    TRANSACTIONS,
    DLQ_RECORDS,
    REBALANCES,
    RETRIES,
    REVOKED_DROPPED,
    READY,
    BUILD_INFO,
];

/// The histograms among [`ALL`].
pub const HISTOGRAMS: &[&str] = &[BATCH_RECORDS, STAGE_DURATION, E2E_LATENCY];

/// Values of the `outcome` label of [`RECORDS`].
pub const OUTCOMES: &[&str] = &["persisted", "dlq"];
/// Values of the `stage` label of [`STAGE_DURATION`].
pub const STAGES: &[&str] = &["decode", "cql", "redis", "commit"];
/// Values of the `stage` label of [`RETRIES`].
pub const RETRY_STAGES: &[&str] = &["cql", "redis", "commit", "fenced"];
/// Values of the `result` label of [`TRANSACTIONS`].
pub const TRANSACTION_RESULTS: &[&str] = &["committed", "aborted"];
/// Values of the `kind` label of [`REBALANCES`].
pub const REBALANCE_KINDS: &[&str] = &["assign", "revoke", "lost"];
/// Values of the `reason` label of [`DLQ_RECORDS`] (the `chatlog-dlq-reason` header): the
/// decoder's own checks and the codec's decode errors.
pub const DLQ_REASONS: &[&str] = &[
    "empty",
    "no_key",
    "oversize",
    "key_mismatch",
    "bad_magic",
    "unknown_fingerprint",
    "truncated",
    "malformed",
    "trailing_bytes",
    "invalid",
];

/// Buckets of the stage durations: sub-millisecond decode up to a stage retried for its budget.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the end-to-end latency: milliseconds when caught up, minutes while a backlog drains.
const E2E_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Buckets of the batch size, up to well above the default `batch.max_records` (10 000).
const RECORDS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
];

/// Installs the global Prometheus recorder, describes every metric and records the known label
/// combinations with 0, so dashboards and alerts see them before the first event.
pub fn install_recorder() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STAGE_DURATION.into()), STAGE_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(E2E_LATENCY.into()), E2E_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(BATCH_RECORDS.into()), RECORDS_BUCKETS)
        })
        // Any later `_seconds` histogram still renders as a histogram, never as a summary.
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), STAGE_BUCKETS))
        .map_err(|e| Error::Config(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Config(format!("metrics recorder: {e}")))?;
    describe();
    init_series();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECORDS,
        "Records whose transaction committed, by outcome (persisted, dlq)."
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "Records per committed transaction."
    );
    describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Time per pipeline stage (decode, cql, redis, commit), retries included."
    );
    describe_histogram!(
        E2E_LATENCY,
        Unit::Seconds,
        "Message server time to visibility in the Redis window."
    );
    describe_gauge!(
        LAG,
        Unit::Count,
        "Consumer lag per assigned partition, in records (librdkafka statistics)."
    );
    describe_counter!(
        TRANSACTIONS,
        "Kafka transactions, by result (committed, aborted)."
    );
    describe_counter!(
        DLQ_RECORDS,
        "Records sent to the DLQ, by reason (the chatlog-dlq-reason header)."
    );
    describe_counter!(
        REBALANCES,
        "Rebalance events, by kind (assign, revoke, lost)."
    );
    describe_counter!(
        RETRIES,
        "Retried CQL/Redis writes and transaction commits, by stage."
    );
    describe_counter!(
        REVOKED_DROPPED,
        "Uncommitted records dropped because their partition was revoked."
    );
    describe_gauge!(READY, "1 while /readyz answers 200, else 0.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the consumer's version."
    );
}

/// Registers every known series, so each exists (at 0) from the first scrape.
fn init_series() {
    for &outcome in OUTCOMES {
        metrics::counter!(RECORDS, "outcome" => outcome).increment(0);
    }
    for &result in TRANSACTION_RESULTS {
        metrics::counter!(TRANSACTIONS, "result" => result).increment(0);
    }
    for &reason in DLQ_REASONS {
        metrics::counter!(DLQ_RECORDS, "reason" => reason).increment(0);
    }
    for &kind in REBALANCE_KINDS {
        metrics::counter!(REBALANCES, "kind" => kind).increment(0);
    }
    for &stage in RETRY_STAGES {
        metrics::counter!(RETRIES, "stage" => stage).increment(0);
    }
    metrics::counter!(REVOKED_DROPPED).increment(0);
    // A registered histogram renders with zero counts until its first observation.
    for &stage in STAGES {
        drop(metrics::histogram!(STAGE_DURATION, "stage" => stage));
    }
    drop(metrics::histogram!(BATCH_RECORDS));
    drop(metrics::histogram!(E2E_LATENCY));
    metrics::gauge!(READY).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Membership not reported by the pipeline (the default).
const GROUP_UNTRACKED: u8 = 0;
const GROUP_OUT: u8 = 1;
const GROUP_IN: u8 = 2;

/// Liveness and readiness, set by the pipeline.
///
/// Ready means: connected to CQL and Redis, the transactional producer initialised with the
/// broker (so Kafka is reachable), subscribed ([`set_ready`](Health::set_ready)), and — once the
/// pipeline reports group membership with [`set_in_group`](Health::set_in_group) — a member of the
/// consumer group, holding partitions or idle.
#[derive(Debug)]
pub struct Health {
    connected: AtomicBool,
    group: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            connected: AtomicBool::new(false),
            group: AtomicU8::new(GROUP_UNTRACKED),
        }
    }
}

impl Health {
    /// Marks the consumer connected to Kafka, CQL and Redis and subscribed (or not any more).
    pub fn set_ready(&self, ready: bool) {
        self.connected.store(ready, Ordering::Relaxed);
        self.publish();
    }

    /// Reports whether the consumer is a member of its group (with an assignment, possibly
    /// empty). Until the first call, membership is not part of readiness.
    pub fn set_in_group(&self, in_group: bool) {
        let state = if in_group { GROUP_IN } else { GROUP_OUT };
        if self.group.swap(state, Ordering::Relaxed) != state {
            self.publish();
        }
    }

    /// Whether the pipeline reported membership of the group (false until it does).
    pub fn is_in_group(&self) -> bool {
        self.group.load(Ordering::Relaxed) == GROUP_IN
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why it is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.connected.load(Ordering::Relaxed) {
            return Some("not connected to Kafka, CQL and Redis, or not consuming");
        }
        match self.group.load(Ordering::Relaxed) {
            GROUP_OUT => Some("not (yet) a member of the consumer group"),
            _ => None, // GROUP_IN, or GROUP_UNTRACKED: membership not reported
        }
    }

    fn publish(&self) {
        metrics::gauge!(READY).set(if self.is_ready() { 1.0 } else { 0.0 });
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

/// Binds the HTTP endpoint and serves it until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP endpoint failed");
        }
    });
    Ok(addr)
}

/// The content type of the Prometheus text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, EXPOSITION)], state.metrics.render())
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for name in ALL {
            assert!(name.starts_with("chatlog_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            let counter = [
                RECORDS,
                TRANSACTIONS,
                DLQ_RECORDS,
                REBALANCES,
                RETRIES,
                REVOKED_DROPPED,
            ]
            .contains(name);
            assert_eq!(name.ends_with("_total"), counter, "{name}");
        }
    }

    #[test]
    fn readiness_needs_connection_and_then_group_membership() {
        let h = Health::default();
        assert!(!h.is_ready());
        h.set_ready(true);
        assert!(h.is_ready(), "membership untracked: connected is enough");
        h.set_in_group(false);
        assert!(!h.is_ready());
        assert!(!h.is_in_group());
        h.set_in_group(true);
        assert!(h.is_ready());
        assert!(h.is_in_group());
        h.set_ready(false);
        assert!(!h.is_ready());
    }
}
