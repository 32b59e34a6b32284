//! Metrics and health: the names of every metric the consumer records (one place, so dashboards,
//! alerts and code agree), the Prometheus recorder with explicit histogram buckets, and the HTTP
//! endpoint serving `/metrics`, `/healthz` and `/readyz`.
//!
//! Labels are bounded: outcome, stage, result, reason, kind and partition — never a session id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Records by outcome (`persisted`, `dlq`).
pub const RECORDS: &str = "chatlog_consumer_records_total";
/// Records per committed batch (histogram).
pub const BATCH_RECORDS: &str = "chatlog_consumer_batch_records";
/// Time spent per stage (`decode`, `cql`, `redis`, `commit`), histogram in seconds.
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
/// Retries by stage (`cql`, `redis`, `commit`) .
pub const RETRIES: &str = "chatlog_retries_total";
/// Uncommitted records dropped because their partition was revoked before their batch ran (the new
/// owner reads them again from the committed offset).
pub const REVOKED_DROPPED: &str = "chatlog_consumer_revoked_records_total";

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const RECORDS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// Installs the global Prometheus recorder and describes every metric.
pub fn install_recorder() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_RECORDS.into()), RECORDS_BUCKETS))
        .map_err(|e| Error::Config(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Config(format!("metrics recorder: {e}")))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS, "Records handled, by outcome (persisted, dlq).");
    describe_histogram!(BATCH_RECORDS, Unit::Count, "Records per committed transaction.");
    describe_histogram!(STAGE_DURATION, Unit::Seconds, "Time per pipeline stage.");
    describe_histogram!(E2E_LATENCY, Unit::Seconds, "Message server time to window visibility.");
    describe_gauge!(LAG, Unit::Count, "Consumer lag per assigned partition.");
    describe_counter!(TRANSACTIONS, "Kafka transactions, by result.");
    describe_counter!(DLQ_RECORDS, "Records sent to the DLQ, by reason.");
    describe_counter!(REBALANCES, "Rebalance events, by kind.");
    describe_counter!(RETRIES, "Retried CQL/Redis writes and commits, by stage.");
    describe_counter!(REVOKED_DROPPED, "Uncommitted records dropped on partition revoke.");
}

/// Liveness and readiness, set by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the consumer ready (connected to Kafka, CQL and Redis, in its group) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
