//! The real `chatlog-consumer` binary as the benchmarks run it: its configuration file, its start
//! (through the root kit's [`ConsumerProcess`], which also reads its memory, GETs its `/metrics`
//! and stops it), and the per-stage figures read from two `/metrics` texts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
pub use chatlog::process::{ConsumerProcess, proc_status_kib};
use chatlog::prometheus::Histogram;

/// The consumer settings a scenario runs with (reported in the results).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerSettings {
    /// `batch.max_records`.
    pub max_records: usize,
    /// `batch.linger`, ms.
    pub linger_ms: u64,
    /// `writer.concurrency` (CQL batches in flight).
    pub writer_concurrency: usize,
    /// `writer.max_rows` (rows per UNLOGGED batch).
    pub writer_max_rows: usize,
}

/// What the consumer reads and writes.
#[derive(Debug, Clone)]
pub struct ConsumerTarget {
    /// Topic to consume.
    pub topic: String,
    /// Consumer group (also the transactional id's stem).
    pub group: String,
    /// CQL keyspace (migrated already).
    pub keyspace: String,
}

/// The configuration file of one consumer instance.
pub fn config_toml(target: &ConsumerTarget, s: &ConsumerSettings) -> String {
    let nodes = chatlog::cql_nodes()
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# Written by chatlog-bench.
[kafka]
bootstrap_servers = {bootstrap:?}
topic = {topic:?}
dlq_topic = "{topic}.dlq"
group_id = {group:?}
transactional_id = "{group}-0"

[batch]
max_records = {max_records}
linger = "{linger}ms"

[cql]
nodes = [{nodes}]
keyspace = {keyspace:?}

[writer]
concurrency = {concurrency}
max_rows = {max_rows}

[redis]
url = {redis:?}

[window]
ttl = "30m"

[http]
listen = "127.0.0.1:0"
"#,
        bootstrap = chatlog::kafka_bootstrap(),
        topic = target.topic,
        group = target.group,
        max_records = s.max_records,
        linger = s.linger_ms,
        keyspace = target.keyspace,
        concurrency = s.writer_concurrency,
        max_rows = s.writer_max_rows,
        redis = chatlog::redis_url(),
    )
}

/// Starts `bin --config <config>` with its log in `log`, and waits until it reports ready.
pub async fn spawn(bin: &Path, config: &Path, log: &Path) -> Result<ConsumerProcess> {
    let consumer = ConsumerProcess::spawn(
        bin,
        [Path::new("--config"), config],
        &[("CHATLOG_LOG", "warn,chatlog_consumer=info")],
        log,
    )
    .context("build it: cargo build --release -p chatlog-consumer")?;
    // Off the async workers: the scenario's samplers run on them meanwhile.
    tokio::task::spawn_blocking(move || {
        consumer.wait_readyz(200, Duration::from_secs(60))?;
        Ok(consumer)
    })
    .await?
}

/// Per stage of the consumer (`decode`, `cql`, `redis`, `commit`) between two `/metrics` texts:
/// batches, mean and p99 bucket bound (ms); plus records per batch.
pub fn stage_summary(before: &str, after: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for stage in ["decode", "cql", "redis", "commit"] {
        let h = since(
            before,
            after,
            "chatlog_consumer_stage_duration_seconds",
            &[("stage", stage)],
        );
        out.insert(
            stage.to_owned(),
            serde_json::json!({
                "batches": h.count,
                "mean_ms": h.mean() * 1000.0,
                "p99_bucket_ms": h.quantile_bound(0.99) * 1000.0,
            }),
        );
    }
    let b = since(before, after, "chatlog_consumer_batch_records", &[]);
    out.insert("records_per_batch".to_owned(), serde_json::json!(b.mean()));
    let e = since(before, after, "chatlog_consumer_e2e_latency_seconds", &[]);
    out.insert(
        "consumer_e2e_latency".to_owned(),
        serde_json::json!({"mean_ms": e.mean() * 1000.0,
                           "p99_bucket_ms": e.quantile_bound(0.99) * 1000.0}),
    );
    serde_json::Value::Object(out)
}

/// Histogram `name` (its series with `labels`) observed between the `/metrics` texts `before`
/// and `after`.
fn since(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> Histogram {
    Histogram::parse(after, name, labels).since(&Histogram::parse(before, name, labels))
}
