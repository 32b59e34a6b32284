//! Observability of a running consumer against real tools: its live `/metrics` passes `promtool
//! check metrics`, a real Prometheus server scrapes it and answers PromQL with the number of
//! messages the test persisted, the lag gauge reaches zero, and `/readyz` tells when Kafka is out
//! of reach. (The deployment files — alerts, dashboard, compose, Dockerfile — are checked by the
//! root package's tests/deploy.rs.)
//!
//! A missing tool fails the test with the command that installs it; nothing is skipped.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chatlog::prometheus::{families, sample};
use chatlog_consumer::telemetry;
use common::deploy_files::{
    dashboard_exprs, grafana_to_promql, metric_names_in, read, rule_exprs, tool,
};
use common::prometheus::Prometheus;
use common::{Env, poll_until, strip_ansi, workload};
use serde_json::Value;

// -------------------------------------------------------------------------------- the live endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_prometheus_counts_the_persisted_messages() {
    let promtool = tool("promtool", "prometheus");
    let env = Env::new("obs", 2, 20).await;
    let per_session = 25;
    let (sessions, _, good) = workload("o", 8, per_session);
    env.produce(&good).await;
    // Two poison records, so the DLQ series move too.
    env.produce_raw(&[
        (Some(sessions[0].clone()), Some(b"\x00not avro".to_vec())),
        (Some(sessions[1].clone()), None),
    ])
    .await;

    let consumer = env.spawn_consumer(&chatlog::unique("obs_txn"), &[]);
    let addr = consumer.http_addr().unwrap();

    let (status, body) = chatlog::http::get(addr, "/healthz").expect("GET /healthz");
    assert_eq!(status, 200, "/healthz: {body}");

    consumer.wait_readyz(200, Duration::from_secs(60)).unwrap();

    env.wait_all(&sessions, per_session, &[&consumer]).await;

    // The counters move when the transaction commits, right after the rows are visible.
    let persisted = format!("{}{{outcome=\"persisted\"}}", telemetry::RECORDS);
    let (persistedr, want) = (&persisted, good.len() as f64);
    let text = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        move || async move {
            let (status, text) = chatlog::http::get(addr, "/metrics").expect("GET /metrics");
            assert_eq!(status, 200);
            if sample(&text, persistedr) == Some(want) {
                Ok(text)
            } else {
                Err(text)
            }
        },
        |text| format!("/metrics never showed {want} persisted records:\n{text}"),
    )
    .await;
    println!("---- /metrics sample ----\n{text}");

    // promtool lints the exposition (naming, units, help text, histogram shape).
    let out = chatlog::run_with_input(&promtool, &["check", "metrics"], text.as_bytes());
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every family is exported with its type; histograms have buckets (not summaries).
    let fams = families(&text);
    // The lag gauge has its own test (it needs librdkafka statistics with an assignment).
    for name in telemetry::ALL.iter().filter(|n| **n != telemetry::LAG) {
        let want = if telemetry::HISTOGRAMS.contains(name) {
            "histogram"
        } else if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(
            fams.get(*name).map(String::as_str),
            Some(want),
            "{name} in /metrics"
        );
    }
    assert_eq!(
        sample(&text, &format!("{}{{outcome=\"dlq\"}}", telemetry::RECORDS)),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("{}{{reason=\"bad_magic\"}}", telemetry::DLQ_RECORDS)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("{}{{reason=\"empty\"}}", telemetry::DLQ_RECORDS)
        ),
        Some(1.0)
    );
    // Initialised at start: present at 0 although nothing was aborted or retried.
    assert_eq!(
        sample(
            &text,
            &format!("{}{{result=\"aborted\"}}", telemetry::TRANSACTIONS)
        ),
        Some(0.0)
    );
    assert_eq!(sample(&text, telemetry::READY), Some(1.0));
    for stage in telemetry::STAGES {
        let count = format!("{}_count{{stage=\"{stage}\"}}", telemetry::STAGE_DURATION);
        assert!(
            sample(&text, &count).is_some_and(|n| n >= 1.0),
            "{count} in /metrics"
        );
        assert!(
            text.contains(&format!(
                "{}_bucket{{stage=\"{stage}\",le=",
                telemetry::STAGE_DURATION
            )),
            "explicit buckets for stage {stage}"
        );
    }
    // No unbounded labels: no session id appears anywhere in the exposition.
    for s in &sessions {
        assert!(
            !text.contains(s.as_str()),
            "session id {s} leaked into /metrics"
        );
    }
    // Dashboards and alerts use only what a live consumer exports — except the cache row and
    // the `chatlog-cache` alerts: their series come from the processes that run chatlog-store's
    // cached repositories (Logic), never from a consumer (tests/deploy.rs checks those names
    // against chatlog-store's).
    let mut live: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    live.insert(telemetry::LAG.to_owned());
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/chatlog-consumer.json"))
            .expect("dashboard JSON");
    for (what, expr) in dashboard_exprs(&dashboard).into_iter().chain(rule_exprs()) {
        for name in metric_names_in(&expr) {
            let cache = name.starts_with("chatlog_cache_");
            assert!(
                live.contains(&name) || name == "up" || cache,
                "{what}: `{name}` in `{expr}` is not in the live /metrics"
            );
        }
    }

    // A real Prometheus scrapes the consumer; PromQL returns exactly what was persisted.
    let prometheus = Prometheus::start(&[addr]);
    let query = format!("sum({persisted})");
    let want = good.len() as f64;
    let got = prometheus.wait_for(&query, |v| v == Some(want), Duration::from_secs(60));
    println!("Prometheus: {query} = {got:?} (persisted by the test: {want})");
    assert_eq!(prometheus.scalar("up{job=\"chatlog-consumer\"}"), Some(1.0));

    // Prometheus's own parser accepts every dashboard expression, and the panels have data.
    for (_title, expr) in dashboard_exprs(&dashboard) {
        prometheus.query(&grafana_to_promql(&expr));
    }
    // The throughput panel has a sample (0/s here: the counter was complete before the first
    // scrape).
    let throughput = "sum(rate(chatlog_consumer_records_total{outcome=\"persisted\"}[1m]))";
    prometheus.wait_for(throughput, |v| v.is_some(), Duration::from_secs(30));
    // The rules loaded and evaluate without errors.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = chatlog::http::get(prometheus.addr, "/api/v1/rules").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), rule_exprs().len(), "every rule loaded: {body}");
        let evaluated = rules
            .iter()
            .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        if evaluated {
            break;
        }
        for r in &rules {
            assert_ne!(r["health"], "err", "rule failed: {r}");
        }
        assert!(Instant::now() < deadline, "rules not evaluated: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);

    consumer.terminate_cleanly(Duration::from_secs(30)).unwrap();
}

/// The lag gauge exists per assigned partition and reaches 0 once every record is committed
/// (the offsets are committed through the transactional producer, so the consumer's own view of
/// its committed offsets must come from the offsets the pipeline stores after each commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_gauge_reaches_zero_once_everything_is_committed() {
    let env = Env::new("obslag", 2, 10).await;
    let per_session = 20;
    let (sessions, _, good) = workload("l", 6, per_session);
    env.produce(&good).await;
    // The summary line every second (set through the environment, as any key can be).
    let consumer = env.spawn_consumer_with_env(
        &chatlog::unique("obslag_txn"),
        &[],
        &[("CHATLOG__LOG__PROGRESS_INTERVAL", "1s")],
    );
    let addr = consumer.http_addr().unwrap();
    env.wait_all(&sessions, per_session, &[&consumer]).await;
    // Statistics arrive every 5 s; give them a few rounds.
    let want: Vec<String> = (0..2)
        .map(|p| format!("{}{{partition=\"{p}\"}}", telemetry::LAG))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = chatlog::http::get(addr, "/metrics").expect("GET /metrics");
        let lags: Vec<Option<f64>> = want.iter().map(|s| sample(&text, s)).collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after every record was committed, {} should be 0 on partitions 0 and 1, got \
             {lags:?}. Kafka transactions commit the offsets, so librdkafka's `consumer_lag` \
             (hi - committed, with `committed` fetched once at assignment) stays -1 or stale: the \
             pipeline must `store_offsets` after each commit and the statistics callback report \
             `consumer_lag_stored` (see the report of issue 6).\n{text}",
            telemetry::LAG
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The periodic info line sums up the consuming, with the lag once statistics came.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        // Human log lines colour field names: compare the text without the escape codes.
        let log = strip_ansi(&consumer.log_text());
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(" progress ") && l.contains("lag=0"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no progress line with lag=0:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        line.contains("records_per_s=") && line.contains("mean_batch=") && line.contains("dlq=0"),
        "{line}"
    );
}

/// /healthz answers as soon as the process runs; /readyz stays 503 (and the ready gauge 0) while
/// the consumer cannot reach Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_kafka_is_unreachable() {
    let env = Env::new("obsready", 1, 10).await;
    // A port nothing listens on: no broker is ever reachable.
    let unreachable = format!("127.0.0.1:{}", chatlog::free_port());
    let consumer = env.spawn_consumer(
        &chatlog::unique("obsready_txn"),
        &["--bootstrap-servers", &unreachable],
    );
    let addr = consumer.http_addr().unwrap();
    assert_eq!(chatlog::http::get(addr, "/healthz").unwrap().0, 200);
    // Well past CQL and Redis connecting: the transactional producer cannot reach a broker.
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = chatlog::http::get(addr, "/readyz").unwrap();
    assert_eq!(status, 503, "/readyz without Kafka: {body}");
    assert!(body.starts_with("not ready"), "{body}");
    let (_, text) = chatlog::http::get(addr, "/metrics").unwrap();
    assert_eq!(sample(&text, telemetry::READY), Some(0.0), "{text}");
}
