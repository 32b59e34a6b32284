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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Records by outcome (`persisted`, `dlq`), counted when their transaction committed.
pub const RECORDS: &str = "chatlog_consumer_records_total";
/// Records per committed batch (histogram).
pub const BATCH_RECORDS: &str = "chatlog_consumer_batch_records";
/// Time spent per stage (`decode`, `cql`, `redis`, `commit`), histogram in seconds. `cql` and
/// `redis` run at the same time, and are observed twice in a batch whose hot sessions have their
/// older rows written first (see `WritePlan`): they do not add up to a batch's duration.
pub const STAGE_DURATION: &str = "chatlog_consumer_stage_duration_seconds";
/// From a message's server time to its visibility in the Redis window, histogram in seconds.
pub const E2E_LATENCY: &str = "chatlog_consumer_e2e_latency_seconds";
/// Consumer lag per partition, from librdkafka statistics.
pub const LAG: &str = "chatlog_consumer_lag_records";
/// Transactions by result (`committed`, `aborted`).
pub const TRANSACTIONS: &str = "chatlog_consumer_transactions_total";
/// DLQ records by reason.
pub const DLQ_RECORDS: &str = "chatlog_consumer_dlq_records_total";
/// Rebalance events by kind (`assign`, `revoke`, `lost`).
pub const REBALANCES: &str = "chatlog_consumer_rebalances_total";
/// Retries by stage (`cql`, `redis`, `commit`).
pub const RETRIES: &str = "chatlog_consumer_retries_total";
/// Uncommitted records dropped because their partition was revoked before their batch ran (the new
/// owner reads them again from the committed offset).
pub const REVOKED_DROPPED: &str = "chatlog_consumer_revoked_records_total";
/// 1 while `/readyz` answers 200, else 0.
pub const READY: &str = "chatlog_consumer_ready";
/// Always 1; the `version` label carries the running build's version.
pub const BUILD_INFO: &str = "chatlog_consumer_build_info";
/// Assigned partitions whose batches have been rewound without a commit for longer than
/// `isolation.stall_after` (a partition that is not moving).
pub const STALLED_PARTITIONS: &str = "chatlog_consumer_stalled_partitions";
/// DLQ records sent as truncated copies (value cut, `chatlog-dlq-truncated` header) because the
/// whole record is larger than the DLQ takes.
pub const DLQ_TRUNCATED: &str = "chatlog_consumer_dlq_truncated_records_total";
/// Connections to the HTTP endpoint closed at once because `max_connections` were open.
pub const HTTP_REJECTED: &str = "chatlog_consumer_http_rejected_connections_total";

/// Batches written while the previous transaction was still committing, and committed with the
/// next one (several batches per transaction while a commit is slow).
pub const BATCHES_HELD: &str = "chatlog_consumer_batches_held_total";

/// Values of the `reason` label of [`BATCHES_HELD`].
pub const HELD_REASONS: &[&str] = &["commit", "interval"];

/// Records past their session type's retention, skipped (not written, not poison).
pub const EXPIRED: &str = "chatlog_consumer_expired_records_total";
/// Mutated messages (recall, edit, delete for everyone) among persisted records, by state.
pub const MUTATIONS: &str = "chatlog_consumer_mutations_total";
/// Windows started from the table's newest rows (a new session, or a window Redis lost).
pub const WINDOWS_STARTED: &str = "chatlog_consumer_windows_started_total";

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
    STALLED_PARTITIONS,
    DLQ_TRUNCATED,
    HTTP_REJECTED,
    BATCHES_HELD,
    EXPIRED,
    MUTATIONS,
    WINDOWS_STARTED,
];

/// Values of the `state` label of [`MUTATIONS`] (the Avro symbols of `chatlog.MessageState`,
/// lower-cased).
pub const MUTATION_STATES: &[&str] = &["edited", "recalled", "deleted"];

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
/// decoder's own checks, the codec's decode errors, and `write_failed` (a record whose CQL row or
/// window can never be written, see `Pipeline::write_each`).
pub const DLQ_REASONS: &[&str] = &[
    "write_failed",
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
    "skew",
];

/// Buckets of the stage durations: sub-millisecond decode up to a stage retried for its budget.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the end-to-end latency: milliseconds when caught up, minutes while a backlog drains.
const E2E_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Buckets of the batch size, up to above the default `batch.max_records` (20 000).
const RECORDS_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0,
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
        .map_err(|source| Error::Metrics {
            what: "metrics buckets",
            source,
        })?
        .install_recorder()
        .map_err(|source| Error::Metrics {
            what: "metrics recorder",
            source,
        })?;
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
        STALLED_PARTITIONS,
        Unit::Count,
        "Assigned partitions rewound without a commit for longer than isolation.stall_after."
    );
    describe_counter!(
        DLQ_TRUNCATED,
        "DLQ records sent as truncated copies (too large for the DLQ), with a hash of the value."
    );
    describe_counter!(
        HTTP_REJECTED,
        "HTTP connections closed at once because http max_connections were open."
    );
    describe_counter!(
        BATCHES_HELD,
        "Batches committed with the next transaction instead of their own, by reason: commit \
         (written while the previous transaction was still committing) or interval (written \
         within batch.commit_interval of the last transaction)."
    );
    describe_counter!(
        EXPIRED,
        "Records skipped because their session type's retention had passed."
    );
    describe_counter!(
        MUTATIONS,
        "Mutated messages persisted, by state (edited, recalled, deleted)."
    );
    describe_counter!(
        WINDOWS_STARTED,
        "Session windows started from the table's newest rows: once per new session, and for \
         every active session after Redis lost its windows (expiry, FLUSHALL, a restart from a \
         snapshot, a failover)."
    );
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
    metrics::counter!(DLQ_TRUNCATED).increment(0);
    metrics::counter!(HTTP_REJECTED).increment(0);
    for &reason in HELD_REASONS {
        metrics::counter!(BATCHES_HELD, "reason" => reason).increment(0);
    }
    metrics::counter!(EXPIRED).increment(0);
    metrics::counter!(WINDOWS_STARTED).increment(0);
    for &state in MUTATION_STATES {
        metrics::counter!(MUTATIONS, "state" => state).increment(0);
    }
    metrics::gauge!(STALLED_PARTITIONS).set(0.0);
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
///
/// A partition that is not moving ([`set_stalled`](Health::set_stalled)) makes it not ready too:
/// its records wait while the instance looks healthy otherwise.
#[derive(Debug)]
pub struct Health {
    connected: AtomicBool,
    group: AtomicU8,
    stalled: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            connected: AtomicBool::new(false),
            group: AtomicU8::new(GROUP_UNTRACKED),
            stalled: Mutex::new(None),
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

    /// Reports partitions that are not moving (`Some(why)`), or that all move again (`None`).
    pub fn set_stalled(&self, why: Option<String>) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        if *stalled != why {
            *stalled = why;
            drop(stalled);
            self.publish();
        }
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why it is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.connected.load(Ordering::Relaxed) {
            return Some("not connected to Kafka, CQL and Redis, or not consuming".into());
        }
        if self.group.load(Ordering::Relaxed) == GROUP_OUT {
            return Some("not (yet) a member of the consumer group".into());
        }
        // GROUP_IN, or GROUP_UNTRACKED: membership not reported
        self.stalled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

/// Limits of the HTTP endpoint, so that slow or numerous clients cannot hold it (slow loris) or
/// exhaust the process's file descriptors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Longest time a client may take to send a request's head (request line and headers),
    /// counted from the connection or the previous response; then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest time from a request's head to its response; past it the client gets 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest time a connection stays open, keep-alive included: then it is closed after its
    /// current request (at once if that takes another `request_timeout`). Frees the slots of
    /// clients that hold connections without reading; scrapers simply reconnect.
    #[serde(with = "humantime_serde")]
    pub connection_lifetime: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 64,
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

impl HttpLimits {
    /// Checks values that cannot work (a zero limit would refuse every request).
    pub fn validate(&self) -> Result<()> {
        if self.max_connections == 0 {
            return Err(Error::Config(
                "http max_connections must be at least 1".into(),
            ));
        }
        for (name, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
            ("connection_lifetime", self.connection_lifetime),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("http {name} must be above 0")));
            }
        }
        Ok(())
    }
}

/// Binds the HTTP endpoint with the default [`HttpLimits`] and serves it until `shutdown`;
/// returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    serve_with_limits(listen, HttpLimits::default(), metrics, health, shutdown).await
}

/// Binds the HTTP endpoint and serves it until `shutdown` with `limits`; returns the bound
/// address. HTTP/1.1 only (Prometheus and probes speak it). Also runs the recorder's upkeep
/// ([`METRICS_UPKEEP`]), scraped or not.
pub async fn serve_with_limits(
    listen: SocketAddr,
    limits: HttpLimits,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    limits.validate()?;
    let request_timeout = limits.request_timeout;
    let metrics_upkeep = metrics.clone();
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                match tokio::time::timeout(request_timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
                    }
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Io {
            what: format!("configuration: cannot listen on {listen}"),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        what: "configuration: the listening address".into(),
        source,
    })?;
    tokio::spawn(upkeep(metrics_upkeep, shutdown.clone()));
    tokio::spawn(accept_loop(listener, app, limits, shutdown));
    Ok(addr)
}

/// How often [`serve_with_limits`] drains the recorder's histogram samples into their buckets.
/// `PrometheusBuilder::install_recorder` leaves this upkeep to the caller (only the exporter's
/// own listener runs it): without it every sample stays in memory until a scrape renders it —
/// ~16 bytes per message for the end-to-end latency (tests/metrics_memory.rs), without bound in
/// a process nobody scrapes.
pub const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Drains the recorder's histogram samples every [`METRICS_UPKEEP`] until `shutdown`.
async fn upkeep(metrics: PrometheusHandle, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(METRICS_UPKEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => metrics.run_upkeep(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// Accepts connections while fewer than `max_connections` are open, each served by hyper with a
/// header-read timeout; closes the surplus at once; on `shutdown`, stops accepting and lets open
/// connections finish their current request.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let service = hyper_util::service::TowerToHyperService::new(app);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or the peer reset before accept: wait a little, go on.
                    tracing::warn!(error = %e, "HTTP endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!(HTTP_REJECTED).increment(1);
            drop(stream);
            continue;
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(limits.connection_lifetime) => {}
            }
            // Finish the current request, if any, but not for longer than a request may take.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request_timeout, conn).await;
        });
    }
}

/// The content type of the Prometheus text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, EXPOSITION)], state.metrics.render())
}

/// A gate for repetitive warnings: at most `per_second` pass each second; the rest are counted,
/// and the next warning that passes says how many were suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u64,
    window: Mutex<(Instant, u64)>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// At most `per_second` warnings a second (0: none).
    pub fn new(per_second: u64) -> LogLimiter {
        LogLimiter {
            per_second,
            window: Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last one that passed)` if this warning may be logged now.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        if w.1 < self.per_second {
            w.1 += 1;
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
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
                DLQ_TRUNCATED,
                HTTP_REJECTED,
                BATCHES_HELD,
                EXPIRED,
                MUTATIONS,
                WINDOWS_STARTED,
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
        h.set_stalled(Some("partition 3 has not moved for 2m".into()));
        assert!(!h.is_ready());
        assert!(h.not_ready_reason().unwrap().contains("partition 3"));
        h.set_stalled(None);
        assert!(h.is_ready());
        h.set_ready(false);
        assert!(!h.is_ready());
    }

    #[test]
    fn http_limits_refuse_zeros() {
        HttpLimits::default().validate().unwrap();
        for broken in [
            HttpLimits {
                max_connections: 0,
                ..HttpLimits::default()
            },
            HttpLimits {
                request_timeout: Duration::ZERO,
                ..HttpLimits::default()
            },
            HttpLimits {
                header_read_timeout: Duration::ZERO,
                ..HttpLimits::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }

    #[test]
    fn the_log_limiter_passes_a_few_a_second_and_counts_the_rest() {
        let l = LogLimiter::new(2);
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(900)), None);
        // A new second: the first warning reports the 2 suppressed.
        assert_eq!(l.admit(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_millis(1001)), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_millis(1002)), None);
        assert_eq!(LogLimiter::new(0).admit(t0), None);
    }
}
