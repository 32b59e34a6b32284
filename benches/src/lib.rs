//! chatlog's benchmark harness (`dev/bench.sh`): every figure of issue 8 measured side by side with
//! its reference in one run, against the local stack, reported as ratios.
//!
//! | | ours | reference | goal |
//! |---|---|---|---|
//! | P1 | end-to-end persisted msgs/s (producer library → Kafka → `chatlog-consumer` → CQL + Redis) | a raw CQL loader writing the same rows (tuned UNLOGGED batches, high concurrency) | ≥ 0.8× |
//! | P2 | the same end-to-end rate | a naive consumer: one INSERT and one synchronous offset commit per record | ≥ 5× |
//! | P3 | producer library msgs/s | Kafka's `ProducerPerformance`, same record size, acks=all, idempotence | ≥ 1.0× |
//! | P4 | acknowledgement → Redis window visibility at 50 % of the max rate, p99 | — | ≤ 100 ms |
//! | P5 | history `latest(50)` reads/s | `redis-benchmark ZREVRANGE <window> 0 49`, same concurrency | ≥ 0.5× |
//! | P6 | seq allocations/s | `redis-benchmark INCR`, same concurrency | ≥ 0.5× |
//! | P7 | consumer peak RSS (VmHWM) at max rate | — | ≤ 200 MiB |
//!
//! Order of a run: the producer library sends `messages` records (after one warm-up record per
//! session) to a fresh topic (P3, ours), `ProducerPerformance` sends as many to another (P3,
//! reference); the loader writes the stored rows into a fresh keyspace (P1 reference); the real
//! `chatlog-consumer` then drains the pre-produced topic into another keyspace (P1 drain: committed
//! offsets sampled every 50 ms, rate from the first commit to the last, start-up excluded), and
//! keeps running while the producer sends `live_messages` more at full speed (P1 live, P7) and then
//! paces at half the live rate (P4), then at a quarter (supplementary); the consumer is stopped; the naive consumer reads the same
//! topic with its own group (P2); history and the seq allocator run against `redis-benchmark` (P5,
//! P6). Everything the run created (topics, keyspaces, Redis keys, groups) is deleted at the end.
#![forbid(unsafe_code)]

pub mod child;
pub mod cpu;
pub mod kafka;
pub mod latency;
pub mod loader;
pub mod naive;
pub mod produce;
pub mod reads;
pub mod report;
pub mod series;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chatlog_producer::Producer;
use chatlog_schemas::Codec;
use chatlog_store::history::{History, HistoryConfig};
use chatlog_store::messages::BatchLimits;
use chatlog_store::seq::{SeqAllocator, SeqConfig};
use scylla::client::session::Session;
use serde::Serialize;
use serde_json::json;

use crate::child::{ConsumerChild, ConsumerSettings, ConsumerTarget};
use crate::kafka::OffsetMeter;
use crate::report::{Figure, Goal, Machine, Results};
use crate::series::{Sampler, Series};
use crate::workload::Workload;

/// Command-line options; unset sizes take the full or `--quick` defaults (see [`Plan`]).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(about = "chatlog benchmarks: P1..P7 next to their references, in one run")]
pub struct Options {
    /// Smoke-run sizes (seconds, not minutes).
    #[arg(long)]
    pub quick: bool,
    /// Messages pre-produced for P3 and drained for P1/P2.
    #[arg(long)]
    pub messages: Option<usize>,
    /// Messages of the live run (P1 live, P7).
    #[arg(long)]
    pub live_messages: Option<usize>,
    /// Sessions the messages are spread over (round-robin).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Partitions of the topics.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Bytes of message content.
    #[arg(long)]
    pub content_bytes: Option<usize>,
    /// Concurrent `send`s of the producer library at full speed.
    #[arg(long)]
    pub producer_concurrency: Option<usize>,
    /// The consumer's `batch.max_records` (CLI `--max-records`).
    #[arg(long)]
    pub max_records: Option<usize>,
    /// The consumer's `batch.linger`, ms (CLI `--linger`).
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// The consumer's `writer.concurrency` (CQL batches in flight).
    #[arg(long)]
    pub writer_concurrency: Option<usize>,
    /// The raw loader's batches in flight (per slice; two slices overlap).
    #[arg(long)]
    pub loader_concurrency: Option<usize>,
    /// Seconds of the paced latency run (P4).
    #[arg(long)]
    pub latency_seconds: Option<f64>,
    /// Seconds of the naive consumer (P2).
    #[arg(long)]
    pub naive_seconds: Option<f64>,
    /// Seconds of each read/allocation loop (P5, P6).
    #[arg(long)]
    pub loop_seconds: Option<f64>,
    /// Concurrent callers of P5 and P6 (and redis-benchmark clients).
    #[arg(long)]
    pub callers: Option<usize>,
    /// The `chatlog-consumer` binary.
    #[arg(long, default_value = "target/release/chatlog-consumer")]
    pub consumer_bin: PathBuf,
    /// Folder with the Kafka jars (default: `$CHATLOG_KAFKA_LIB`, else from `dev/stack.sh env`).
    #[arg(long)]
    pub kafka_lib: Option<PathBuf>,
    /// Where results.json, consumer.toml and the consumer's log go.
    #[arg(long, default_value = "target/bench")]
    pub out_dir: PathBuf,
    /// Run only some scenarios (for profiling): `all`, `reads` (P5 and P6 alone, on windows the
    /// harness writes itself) or `produce` (P3 alone).
    #[arg(long, value_enum, default_value_t = Only::All)]
    pub only: Only,
}

/// Which scenarios run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Only {
    /// P1…P7.
    #[default]
    All,
    /// P5 and P6.
    Reads,
    /// P3 alone.
    Produce,
}

/// The resolved sizes and settings of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Smoke sizes.
    pub quick: bool,
    /// Pre-produced messages (P1 drain, P2, P3), after one warm-up message per session.
    pub messages: usize,
    /// Live-run messages.
    pub live_messages: usize,
    /// Sessions.
    pub sessions: usize,
    /// Topic partitions.
    pub partitions: i32,
    /// Content bytes per message.
    pub content_bytes: usize,
    /// Encoded record bytes (Avro single-object).
    pub record_bytes: usize,
    /// Concurrent sends at full speed.
    pub producer_concurrency: usize,
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Loader batches in flight per slice.
    pub loader_concurrency: usize,
    /// Rows the loader groups at once (a slice).
    pub loader_slice: usize,
    /// P4 seconds.
    pub latency_seconds: f64,
    /// Sessions watched for P4.
    pub latency_probes: usize,
    /// P2 seconds.
    pub naive_seconds: f64,
    /// P5/P6 loop seconds.
    pub loop_seconds: f64,
    /// P5/P6 callers.
    pub callers: usize,
    /// The consumer binary.
    pub consumer_bin: PathBuf,
    /// Kafka jars.
    pub kafka_lib: PathBuf,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Which scenarios run.
    pub only: Only,
}

impl Options {
    /// Resolves the defaults.
    pub fn plan(&self) -> Result<Plan> {
        let q = self.quick;
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let pickf =
            |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
        let sessions = pick(self.sessions, 200, 60).max(1);
        let messages = pick(self.messages, 200_000, 3_000).max(1);
        let content_bytes = pick(self.content_bytes, 160, 160);
        let kafka_lib = match &self.kafka_lib {
            Some(p) => p.clone(),
            None => kafka_lib()?,
        };
        Ok(Plan {
            quick: q,
            messages,
            live_messages: pick(self.live_messages, 100_000, 2_000).max(1),
            sessions,
            partitions: self.partitions.unwrap_or(8).max(1),
            content_bytes,
            record_bytes: Workload::new("x", 1, content_bytes).record_bytes(),
            producer_concurrency: pick(self.producer_concurrency, 2048, 512),
            consumer: ConsumerSettings {
                max_records: pick(self.max_records, 10_000, 2000),
                linger_ms: self.linger_ms.unwrap_or(5),
                writer_concurrency: pick(self.writer_concurrency, 16, 16),
                writer_max_rows: 100,
            },
            loader_concurrency: pick(self.loader_concurrency, 64, 64),
            loader_slice: (messages / 4).max(1000),
            latency_seconds: pickf(self.latency_seconds, 20.0, 3.0),
            latency_probes: 32.min(sessions),
            naive_seconds: pickf(self.naive_seconds, 10.0, 2.0),
            loop_seconds: pickf(self.loop_seconds, 5.0, 1.0),
            callers: pick(self.callers, 50, 50).min(sessions).max(1),
            consumer_bin: self.consumer_bin.clone(),
            kafka_lib,
            out_dir: self.out_dir.clone(),
            only: self.only,
        })
    }
}

/// The Kafka jar folder: `$CHATLOG_KAFKA_LIB`, else what `dev/stack.sh env` prints.
fn kafka_lib() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os("CHATLOG_KAFKA_LIB").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    let stack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/stack.sh");
    let out = std::process::Command::new(&stack)
        .arg("env")
        .output()
        .with_context(|| format!("run {stack:?} env"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export CHATLOG_KAFKA_LIB="))
        .map(PathBuf::from)
        .context("CHATLOG_KAFKA_LIB not set and not printed by dev/stack.sh env")
}

/// What a run created, for the clean-up.
struct World {
    run: String,
    session: Arc<Session>,
    keyspaces: Vec<String>,
    topics: Vec<String>,
    groups: Vec<String>,
    redis: redis::aio::ConnectionManager,
}

impl World {
    async fn cleanup(&self) {
        kafka::delete_topics(&self.topics).await;
        delete_groups(&self.groups).await;
        for ks in &self.keyspaces {
            let _ = self
                .session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
                .await;
        }
        // Every Redis key of the run carries the run id in its hash tag.
        let mut con = self.redis.clone();
        let pattern = format!("chatlog:{{{}_*", self.run);
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut con)
                .await
            else {
                break;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("UNLINK").arg(&keys).query_async(&mut con).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

async fn delete_groups(groups: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = tokio::time::timeout(Duration::from_secs(10), admin.delete_groups(&names, &opts)).await;
}

/// Runs every scenario of `plan`; cleans up what it created even when a scenario fails.
pub async fn run(plan: &Plan) -> Result<Results> {
    std::fs::create_dir_all(&plan.out_dir).with_context(|| format!("create {:?}", plan.out_dir))?;
    if plan.only == Only::All && !plan.consumer_bin.exists() {
        bail!(
            "{:?} does not exist: build it with `cargo build --release -p chatlog-consumer`",
            plan.consumer_bin
        );
    }
    let run = chatlog::unique("bench");
    let (session, cql_e2e) = chatlog::fresh_keyspace("bench_e2e").await;
    let raw_ks = chatlog::unique("bench_raw");
    chatlog_store::migrate::apply(&session, &chatlog::cql_config(&raw_ks))
        .await
        .context("migrations of the loader keyspace")?;
    let redis = chatlog::redis_connection().await;
    let topic = chatlog::unique("bench");
    let world = World {
        run: run.clone(),
        session: session.clone(),
        keyspaces: vec![cql_e2e.keyspace.clone(), raw_ks.clone()],
        topics: vec![topic.clone(), format!("{topic}_pp"), format!("{topic}.dlq")],
        groups: vec![format!("{topic}_e2e"), format!("{topic}_naive")],
        redis: redis.clone(),
    };
    let result = scenarios(plan, &world, &topic, &cql_e2e.keyspace, &raw_ks).await;
    world.cleanup().await;
    result
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn scenarios(
    plan: &Plan,
    world: &World,
    topic: &str,
    e2e_ks: &str,
    raw_ks: &str,
) -> Result<Results> {
    let origin = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let machine = Machine::detect();
    let workload = Workload::new(&world.run, plan.sessions, plan.content_bytes);
    let mut figures = BTreeMap::new();
    let mut details: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut all_series: BTreeMap<String, Series> = BTreeMap::new();
    let mut cdf = Vec::new();
    // P5 and P6 run first, on sessions of their own whose windows are written the consumer's way.
    // Measured after the write scenarios, both sides met a machine those had left behind (Cassandra
    // compacting, Redis and the harness hundreds of MiB larger): per read the client cost 58 instead
    // of 45 µs and Redis 21 instead of 13 µs, while the reference ran later and met less of it.
    if plan.only != Only::Produce {
        let read_sessions: Vec<String> = (0..plan.callers)
            .map(|i| format!("{}_r{i}", world.run))
            .collect();
        populate_windows(&world.redis, &read_sessions).await?;
        reads(
            plan,
            world,
            e2e_ks,
            &read_sessions,
            &mut figures,
            &mut details,
        )
        .await?;
    }
    if plan.only != Only::Reads {
        pipeline(
            plan,
            world,
            topic,
            e2e_ks,
            raw_ks,
            &workload,
            origin,
            &mut Collect {
                figures: &mut figures,
                details: &mut details,
                series: &mut all_series,
                cdf: &mut cdf,
            },
        )
        .await?;
    }
    Ok(Results {
        started_unix,
        seconds: origin.elapsed().as_secs_f64(),
        machine,
        plan: serde_json::to_value(plan)?,
        figures,
        details,
        series: all_series,
        latency_cdf: cdf,
    })
}

/// Where the scenarios put what they measure.
struct Collect<'a> {
    figures: &'a mut BTreeMap<String, Figure>,
    details: &'a mut BTreeMap<String, serde_json::Value>,
    series: &'a mut BTreeMap<String, Series>,
    cdf: &'a mut Vec<(f64, f64)>,
}

/// Full windows (200 members) for `sessions`, written the consumer's way.
async fn populate_windows(
    redis: &redis::aio::ConnectionManager,
    sessions: &[String],
) -> Result<()> {
    use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};
    let codec = Codec::default();
    let workload = Workload::new("x", 1, 160);
    let mut windows = BTreeMap::new();
    for sid in sessions {
        let entries = (1..=200usize)
            .map(|seq| {
                let mut m = workload.message(seq);
                m.session_id.clone_from(sid);
                let sent = chatlog_producer::Sent {
                    msg_id: format!("0190a6b2-7c3e-7d4f-8a9b-{seq:012}"),
                    seq: seq as i64,
                    server_time_us: 1_732_590_000_000_000 + seq as i64,
                    partition: 0,
                    offset: 0,
                    duplicate: false,
                };
                let stored = Workload::stored(&m, &sent);
                let avro = codec.encode(&stored)?;
                Ok(WindowEntry {
                    seq: seq as i64,
                    member: window::member(stored.server_time_us, &avro),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        windows.insert(sid.clone(), entries);
    }
    let writer = WindowWriter::new(WindowConfig {
        ttl: Duration::from_secs(1800),
        ..WindowConfig::default()
    });
    writer.append(&mut redis.clone(), &windows).await?;
    Ok(())
}

/// P3, P1, P7, P4 and P2: everything that runs through Kafka.
#[allow(clippy::too_many_arguments)]
async fn pipeline(
    plan: &Plan,
    world: &World,
    topic: &str,
    e2e_ks: &str,
    raw_ks: &str,
    workload: &Workload,
    origin: Instant,
    out: &mut Collect<'_>,
) -> Result<()> {
    let session = world.session.clone();
    let redis = world.redis.clone();
    let s = plan.sessions;
    let n = plan.messages;
    let figures = &mut *out.figures;
    let details = &mut *out.details;
    let all_series = &mut *out.series;
    let topic_pp = format!("{topic}_pp");
    let procs = cpu::Procs::detect(reads::redis_pid(&mut redis.clone()).await);
    chatlog::create_topic(topic, plan.partitions).await;
    chatlog::create_topic(&topic_pp, plan.partitions).await;

    // ---------------------------------------------------------------- P3: producer library vs Java
    eprintln!("[bench] P3: producer library, {n} messages over {s} sessions");
    let producer = Producer::new(
        produce::producer_config(topic),
        session.clone(),
        e2e_ks,
        redis.clone(),
    )
    .await
    .context("producer")?;
    // One message per session first: each session's first seq segment is reserved (a CQL LWT)
    // outside the measurement.
    let warm = produce::burst(&producer, workload, 0..s, plan.producer_concurrency, origin).await;
    let before = procs.snapshot();
    let ours = produce::burst(
        &producer,
        workload,
        s..s + n,
        plan.producer_concurrency,
        origin,
    )
    .await;
    if warm.failed + ours.failed > 0 {
        bail!("{} sends failed", warm.failed + ours.failed);
    }
    let ours_cpu = before.until(&procs.snapshot(), &[]);
    let producer_rate = n as f64 / ours.seconds;
    eprintln!("[bench]   producer library: {producer_rate:.0} msg/s");
    eprintln!(
        "[bench] P3: Kafka ProducerPerformance, {n} records of {} bytes",
        plan.record_bytes
    );
    let before = procs.snapshot();
    let java = {
        let lib = plan.kafka_lib.clone();
        let t = topic_pp.clone();
        let bytes = plan.record_bytes;
        tokio::task::spawn_blocking(move || produce::java_producer_performance(&lib, &t, n, bytes))
            .await??
    };
    let java_cpu = before.until(&procs.snapshot(), &[("java", java.cpu_seconds)]);
    eprintln!(
        "[bench]   ProducerPerformance: {:.0} msg/s",
        java.records_per_s
    );
    figures.insert(
        "P3".to_owned(),
        Figure::ratio(
            "producer library send rate",
            producer_rate,
            java.records_per_s,
            "Kafka ProducerPerformance",
            "msg/s",
            Goal::AtLeast(1.0),
        ),
    );
    details.insert(
        "P3".into(),
        json!({"ours_seconds": ours.seconds, "java": java, "record_bytes": plan.record_bytes,
               "concurrency": plan.producer_concurrency,
               "settings": "acks=all, idempotence, lz4, linger 5 ms (both)",
               "ours_cpu_us_per_msg": cpu::per_op_us(&ours_cpu, n as u64),
               "java_cpu_us_per_msg": cpu::per_op_us(&java_cpu, n as u64)}),
    );
    all_series.insert("P3 producer library (acks)".into(), ours.series);
    if plan.only == Only::Produce {
        return Ok(());
    }
    let mut stored = warm.stored;
    stored.extend(ours.stored);

    // ------------------------------------------------------------------------- P1: raw CQL loader
    eprintln!("[bench] P1: raw CQL loader, {} rows", stored.len());
    let limits = BatchLimits {
        concurrency: plan.loader_concurrency,
        ..BatchLimits::default()
    };
    let settled_loader = procs
        .settle("cassandra", 0.3, Duration::from_secs(20))
        .await;
    let before = procs.snapshot();
    let loaded = loader::load(
        session.clone(),
        raw_ks,
        &stored,
        limits.clone(),
        plan.loader_slice,
        origin,
    )
    .await?;
    let loader_cpu = before.until(&procs.snapshot(), &[]);
    let loader_rate_1 = loaded.rows as f64 / loaded.seconds;
    eprintln!(
        "[bench]   loader: {loader_rate_1:.0} rows/s ({} batches)",
        loaded.requests
    );
    all_series.insert("P1 raw CQL loader (rows)".into(), loaded.series);

    // ------------------------------------------------------------------ P1 drain: real consumer
    let target = ConsumerTarget {
        topic: topic.to_owned(),
        group: format!("{topic}_e2e"),
        keyspace: e2e_ks.to_owned(),
    };
    let config_path = plan.out_dir.join("consumer.toml");
    std::fs::write(&config_path, child::config_toml(&target, &plan.consumer))?;
    let meter = OffsetMeter::new(&target.group, topic, plan.partitions)?;
    let pre = meter.end()?;
    eprintln!("[bench] P1: chatlog-consumer drains {pre} pre-produced records");
    let settled_drain = procs
        .settle("cassandra", 0.3, Duration::from_secs(20))
        .await;
    let committed_sampler = {
        let m = OffsetMeter::new(&target.group, topic, plan.partitions)?;
        Sampler::start(origin, Duration::from_millis(50), move || {
            m.committed().ok().map(|v| v as f64)
        })
    };
    let mut consumer = ConsumerChild::spawn(
        &plan.consumer_bin,
        &config_path,
        &plan.out_dir.join("consumer.log"),
    )?;
    let procs_c = procs.with("consumer", consumer.pid);
    let before_drain = procs_c.snapshot();
    let machine_before_drain = cpu::MachineCpu::now();
    let rss_sampler = {
        let pid = consumer.pid;
        Sampler::start(origin, Duration::from_millis(250), move || {
            child::proc_status_kib(pid, "VmRSS").map(mib)
        })
    };
    let ready_at = origin.elapsed().as_secs_f64();
    wait_committed(&meter, pre, Duration::from_secs(900), &mut consumer).await?;
    let drained_at = origin.elapsed().as_secs_f64();
    let after_drain = procs_c.snapshot();
    let drain_cpu = before_drain.until(&after_drain, &[]);
    let drain_machine = machine_before_drain.until(&cpu::MachineCpu::now());
    let metrics_after_drain = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let hwm_drain = consumer.status_kib("VmHWM").unwrap_or(0);

    // The loader once more, now that the drain is done: Cassandra's state drifts (memtable
    // flushes, compactions, other tenants), so the reference is the mean of a run before and a
    // run after the drain. It rewrites the same rows (identical work for an LSM store).
    procs
        .settle("cassandra", 0.3, Duration::from_secs(20))
        .await;
    let reloaded = loader::load(
        session.clone(),
        raw_ks,
        &stored,
        limits,
        plan.loader_slice,
        origin,
    )
    .await?;
    let loader_rate_2 = reloaded.rows as f64 / reloaded.seconds;
    let loader_rate = (loader_rate_1 + loader_rate_2) / 2.0;
    eprintln!(
        "[bench]   loader again: {loader_rate_2:.0} rows/s; reference {loader_rate:.0} rows/s"
    );
    all_series.insert("P1 raw CQL loader, again (rows)".into(), reloaded.series);
    drop(stored);
    let after_drain = procs_c.snapshot();
    let machine_after_drain = cpu::MachineCpu::now();

    // ------------------------------------------------------------------------------- P1 live
    let live = plan.live_messages;
    eprintln!("[bench] P1 live: {live} messages produced while the consumer runs");
    let live_start = origin.elapsed().as_secs_f64();
    let live_burst = produce::burst(
        &producer,
        workload,
        s + n..s + n + live,
        plan.producer_concurrency,
        origin,
    )
    .await;
    let live_end_offset = meter.end()?;
    wait_committed(
        &meter,
        live_end_offset,
        Duration::from_secs(900),
        &mut consumer,
    )
    .await?;
    let live_done = origin.elapsed().as_secs_f64();
    let live_cpu = after_drain.until(&procs_c.snapshot(), &[]);
    let live_machine = machine_after_drain.until(&cpu::MachineCpu::now());
    let hwm_live = consumer.status_kib("VmHWM").unwrap_or(0);
    let metrics_after_live = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    all_series.insert("P1 live: producer (acks)".into(), live_burst.series);

    // ------------------------------------------------------------------ P4: paced at half the max
    let live_rate = live as f64 / (live_done - live_start);
    let paced_rate = live_rate / 2.0;
    eprintln!(
        "[bench] P4: {paced_rate:.0} msg/s (half the live end-to-end rate) for {} s",
        plan.latency_seconds
    );
    let metrics_before_paced = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let machine_before_paced = cpu::MachineCpu::now();
    let procs_before_paced = procs_c.snapshot();
    let paced = latency::run(
        &producer,
        workload,
        s + n + live,
        paced_rate,
        plan.latency_seconds,
        plan.latency_probes,
        redis.clone(),
        origin,
    )
    .await?;
    let metrics_after_paced = consumer.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let paced_machine = machine_before_paced.until(&cpu::MachineCpu::now());
    let paced_cpu = procs_before_paced.until(&procs_c.snapshot(), &[]);
    let paced_stages = child::stage_summary(&metrics_before_paced, &metrics_after_paced);
    all_series.insert("P4 paced producer (acks)".into(), paced.series_acked);
    all_series.insert(
        "P4 worst latency per 250 ms (ms)".into(),
        paced.worst_per_interval,
    );
    // The same at a quarter of the max rate: where the machine has room, what is left is the
    // pipeline's own latency (on 2 shared cores, half the max rate already keeps them busy).
    let quarter_rate = live_rate / 4.0;
    eprintln!(
        "[bench] P4 (supplementary): {quarter_rate:.0} msg/s (a quarter) for {} s",
        plan.latency_seconds
    );
    let machine_before_quarter = cpu::MachineCpu::now();
    let quarter = latency::run(
        &producer,
        workload,
        s + n + live + paced.sent as usize,
        quarter_rate,
        plan.latency_seconds,
        plan.latency_probes,
        redis.clone(),
        origin,
    )
    .await?;
    let quarter_machine = machine_before_quarter.until(&cpu::MachineCpu::now());
    let final_end = meter.end()?;
    wait_committed(&meter, final_end, Duration::from_secs(300), &mut consumer).await?;
    let hwm_end = consumer.status_kib("VmHWM").unwrap_or(0);
    let status = consumer.stop(Duration::from_secs(30))?;
    let committed_series = committed_sampler.finish();
    all_series.insert(
        "P1 consumer (committed offsets)".into(),
        committed_series.clone(),
    );
    all_series.insert("P7 consumer RSS (MiB)".into(), rss_sampler.finish());
    producer.close(Duration::from_secs(10)).await?;

    // From the first commit to the last (start-up and group join excluded); a drain that took a
    // single batch has no such interval and is timed from readiness instead.
    let (drain_rate, t0, t1, drain_method) =
        match series::steady_rate(&committed_series, 0.0, pre as f64) {
            Some((rate, t0, t1)) => (rate, t0, t1, "first to last commit"),
            None => (
                pre as f64 / (drained_at - ready_at).max(1e-3),
                ready_at,
                drained_at,
                "ready to drained (one batch)",
            ),
        };
    // Seqs are dense per session (round-robin sends, no Redis loss): one bucket of slack.
    let max_seq = final_end / s as i64 + 1000;
    let rows = loader::count_rows(&session, e2e_ks, &workload.sessions, max_seq).await?;
    eprintln!(
        "[bench]   drain {drain_rate:.0} msg/s, live {live_rate:.0} msg/s; {rows} rows for {final_end} records"
    );
    if rows < final_end {
        bail!("the consumer persisted {rows} rows of {final_end} records");
    }
    figures.insert(
        "P1".to_owned(),
        Figure::ratio(
            "end-to-end persisted msg/s (pre-produced drain)",
            drain_rate,
            loader_rate,
            "raw CQL loader",
            "msg/s",
            Goal::AtLeast(0.8),
        ),
    );
    let stages = child::stage_summary("", &metrics_after_drain);
    let live_stages = child::stage_summary(&metrics_after_drain, &metrics_after_live);
    details.insert(
        "P1".into(),
        json!({
            "drain_records": pre,
            "drain_rate": drain_rate,
            "drain_rate_method": drain_method,
            "drain_first_commit_s": t0, "drain_last_commit_s": t1,
            "drain_seconds_including_startup": drained_at - ready_at,
            "drain_consumer_stages": stages,
            "live_messages": live,
            "live_rate": live_rate,
            "live_producer_rate": live as f64 / live_burst.seconds,
            "live_consumer_stages": live_stages,
            "loader_rows": loaded.rows, "loader_seconds": loaded.seconds,
            "loader_rate_before_drain": loader_rate_1, "loader_rate_after_drain": loader_rate_2,
            "loader_batches": loaded.requests, "loader_concurrency": plan.loader_concurrency,
            "loader_slice": plan.loader_slice,
            "rows_checked": rows,
            "settle_seconds_before_loader": settled_loader,
            "settle_seconds_before_drain": settled_drain,
            "drain_cpu_us_per_msg": cpu::per_op_us(&drain_cpu, pre as u64),
            "drain_machine_cpu": drain_machine,
            "live_machine_cpu": live_machine,
            "live_cpu_us_per_msg": cpu::per_op_us(&live_cpu, live as u64),
            "loader_cpu_us_per_row": cpu::per_op_us(&loader_cpu, loaded.rows as u64),
            "consumer_exit": status.to_string(),
        }),
    );

    // P4 figures.
    let h = &paced.hist;
    let ms = |q: f64| ms_at(h, q);
    eprintln!("[bench]   P4 {}", latency_line(h));
    let qh = &quarter.hist;
    eprintln!(
        "[bench]   P4 at a quarter: {}, machine {:.0} % busy",
        latency_line(qh),
        quarter_machine["busy"].as_f64().unwrap_or(0.0) * 100.0
    );
    figures.insert(
        "P4".to_owned(),
        Figure::absolute(
            "ack → Redis window visibility p99 at 50% of max rate",
            ms(0.99),
            "ms",
            Goal::AtMost(100.0),
        ),
    );
    let mut quarter_details = json!({
        "target_rate": quarter_rate, "achieved_rate": quarter.achieved_rate,
        "samples": qh.len(), "unresolved": quarter.unresolved,
        "machine_cpu": quarter_machine,
    });
    add_percentiles(&mut quarter_details, qh);
    let mut p4_details = json!({
        "target_rate": paced_rate, "achieved_rate": paced.achieved_rate,
        "sent": paced.sent, "acked": paced.acked, "samples": h.len(),
        "unresolved": paced.unresolved, "probes": plan.latency_probes,
        "poll_interval_ms": latency::POLL_INTERVAL.as_secs_f64() * 1000.0,
        "mean_ms": h.mean() / 1000.0,
        "consumer": plan.consumer, "consumer_stages": paced_stages,
        "machine_cpu": paced_machine,
        "cpu_cores_by_process": paced_cpu.iter()
            .map(|(k, v)| (k.clone(), v / plan.latency_seconds))
            .collect::<BTreeMap<_, _>>(),
        "quarter_rate": quarter_details,
    });
    add_percentiles(&mut p4_details, h);
    details.insert("P4".into(), p4_details);
    let cdf = &mut *out.cdf;
    cdf.extend((1..100).map(|p| p as f64 / 100.0).map(|q| (q, ms(q))));
    for q in [0.995, 0.999, 0.9999, 1.0] {
        cdf.push((q, ms(q)));
    }

    // P7.
    figures.insert(
        "P7".to_owned(),
        Figure::absolute(
            "consumer peak RSS (VmHWM) at max rate",
            mib(hwm_live),
            "MiB",
            Goal::AtMost(200.0),
        ),
    );
    details.insert(
        "P7".into(),
        json!({"vmhwm_after_drain_mib": mib(hwm_drain), "vmhwm_after_live_mib": mib(hwm_live),
               "vmhwm_at_end_mib": mib(hwm_end)}),
    );

    // --------------------------------------------------------------------------- P2: naive consumer
    eprintln!("[bench] P2: naive consumer for {} s", plan.naive_seconds);
    let naive_target = ConsumerTarget {
        topic: topic.to_owned(),
        group: format!("{topic}_naive"),
        keyspace: raw_ks.to_owned(),
    };
    let before = procs.snapshot();
    let naive = {
        let session = session.clone();
        let handle = tokio::runtime::Handle::current();
        let seconds = plan.naive_seconds;
        tokio::task::spawn_blocking(move || {
            naive::run(handle, session, &naive_target, seconds, n as u64, origin)
        })
        .await??
    };
    let naive_cpu = before.until(&procs.snapshot(), &[]);
    let naive_rate = naive.records as f64 / naive.seconds.max(1e-9);
    eprintln!("[bench]   naive: {naive_rate:.0} msg/s");
    all_series.insert("P2 naive consumer".into(), naive.series);
    figures.insert(
        "P2".to_owned(),
        Figure::ratio(
            "end-to-end persisted msg/s (pre-produced drain)",
            drain_rate,
            naive_rate,
            "naive consumer",
            "msg/s",
            Goal::AtLeast(5.0),
        ),
    );
    details.insert(
        "P2".into(),
        json!({"naive_records": naive.records, "naive_seconds": naive.seconds,
               "naive_cpu_us_per_msg": cpu::per_op_us(&naive_cpu, naive.records),
               "live_rate_ratio": live_rate / naive_rate.max(1e-9)}),
    );

    Ok(())
}

/// P5 and P6.
/// Redis connections of the history reader in P5 (`RedisConfig::connect_many`).
const HISTORY_CONNECTIONS: usize = 4;

async fn reads(
    plan: &Plan,
    world: &World,
    e2e_ks: &str,
    sessions: &[String],
    figures: &mut BTreeMap<String, Figure>,
    details: &mut BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    let session = world.session.clone();
    let redis = world.redis.clone();
    // ------------------------------------------------------------------------------- P5: history
    let callers = plan.callers;
    eprintln!(
        "[bench] P5: history latest(50), {callers} callers, {HISTORY_CONNECTIONS} Redis connections"
    );
    let connections = chatlog::redis_config()
        .connect_many(HISTORY_CONNECTIONS)
        .await?;
    let history = History::new(
        session.clone(),
        e2e_ks,
        connections,
        Codec::default(),
        HistoryConfig::default(),
    )
    .await?;
    let secs = plan.loop_seconds;
    let rpid = reads::redis_pid(&mut redis.clone()).await;
    // Cassandra may still be compacting (a previous run, the stack's start); neither P5 nor P6 uses
    // it, but it takes CPU from whichever side runs first. Wait for it as the loader does, and run
    // each of ours right next to its reference so both meet the same machine.
    let patience = Duration::from_secs(if plan.quick { 0 } else { 30 });
    let settled = cpu::Procs::detect(rpid)
        .settle("cassandra", 0.3, patience)
        .await;
    let window_key = chatlog_store::keys::window(&sessions[0]);
    // About as long as our loop ran, at least 2000 requests.
    let n_for = |m: &reads::Measured| (m.rate * secs).max(2000.0) as usize;
    let zrev = ["ZREVRANGE", window_key.as_str(), "0", "49"];
    let reads_many = reads::history_reads(&history, rpid, sessions, callers, secs).await?;
    let rb_many = reads::redis_benchmark(rpid, callers, n_for(&reads_many) * 4, &zrev)?;
    let reads_one = reads::history_reads(&history, rpid, sessions, 1, secs).await?;
    let rb_one = reads::redis_benchmark(rpid, 1, n_for(&reads_one) * 4, &zrev)?;
    // The same on one multiplexed connection: what the connection set buys.
    let one_connection = History::new(
        session.clone(),
        e2e_ks,
        redis.clone(),
        Codec::default(),
        HistoryConfig::default(),
    )
    .await?;
    let reads_one_connection =
        reads::history_reads(&one_connection, rpid, sessions, callers, secs).await?;
    eprintln!(
        "[bench]   history {:.0}/s vs redis-benchmark {:.0}/s ({callers}); {:.0}/s vs {:.0}/s (1)",
        reads_many.rate, rb_many.rate, reads_one.rate, rb_one.rate
    );
    eprintln!(
        "[bench]   history on one connection, {callers} callers: {:.0}/s",
        reads_one_connection.rate
    );
    eprintln!(
        "[bench]   CPU µs/op client+redis: history {:.1}+{:.1}, redis-benchmark {:.1}+{:.1}",
        reads_many.client_cpu_us,
        reads_many.redis_cpu_us,
        rb_many.client_cpu_us,
        rb_many.redis_cpu_us
    );
    figures.insert(
        "P5".to_owned(),
        Figure::ratio(
            &format!("history latest(50) reads/s, {callers} callers"),
            reads_many.rate,
            rb_many.rate,
            "redis-benchmark ZREVRANGE 0 49",
            "req/s",
            Goal::AtLeast(0.5),
        ),
    );
    details.insert(
        "P5".into(),
        json!({"callers": callers, "history": reads_many, "redis_benchmark": rb_many,
               "connections": HISTORY_CONNECTIONS, "settle_seconds_before": settled,
               "one_connection": {"history": reads_one_connection,
                                  "ratio": reads_one_connection.rate / rb_many.rate.max(1e-9)},
               "one_caller": {"history": reads_one, "redis_benchmark": rb_one,
                              "ratio": reads_one.rate / rb_one.rate.max(1e-9)}}),
    );

    // ---------------------------------------------------------------------------- P6: seq allocation
    eprintln!("[bench] P6: seq allocations, {callers} callers");
    let alloc = SeqAllocator::new(
        session.clone(),
        e2e_ks,
        redis.clone(),
        SeqConfig {
            min_segment: 10_000_000,
            max_segment: 10_000_000,
            dedup_ttl: Duration::from_secs(60),
            idle_ttl: Duration::from_secs(120),
            ..SeqConfig::default()
        },
    )
    .await?;
    let seq_sessions: Vec<String> = (0..callers)
        .map(|i| format!("{}_q{i}", world.run))
        .collect();
    for sid in &seq_sessions {
        alloc.allocate(sid, "warm", "m", 1).await?;
    }
    let incr_key = format!("chatlog:{{{}_incr}}:n", world.run);
    let incr = ["INCR", incr_key.as_str()];
    let allocs_many = reads::seq_allocations(&alloc, rpid, &seq_sessions, callers, secs).await?;
    let rb_incr_many = reads::redis_benchmark(rpid, callers, n_for(&allocs_many), &incr)?;
    let allocs_one = reads::seq_allocations(&alloc, rpid, &seq_sessions, 1, secs).await?;
    let rb_incr_one = reads::redis_benchmark(rpid, 1, n_for(&allocs_one), &incr)?;
    eprintln!(
        "[bench]   allocate {:.0}/s vs INCR {:.0}/s ({callers}); {:.0}/s vs {:.0}/s (1)",
        allocs_many.rate, rb_incr_many.rate, allocs_one.rate, rb_incr_one.rate
    );
    eprintln!(
        "[bench]   CPU µs/op client+redis: allocate {:.1}+{:.1}, redis-benchmark {:.1}+{:.1}",
        allocs_many.client_cpu_us,
        allocs_many.redis_cpu_us,
        rb_incr_many.client_cpu_us,
        rb_incr_many.redis_cpu_us
    );
    figures.insert(
        "P6".to_owned(),
        Figure::ratio(
            &format!("seq allocations/s, {callers} callers"),
            allocs_many.rate,
            rb_incr_many.rate,
            "redis-benchmark INCR",
            "op/s",
            Goal::AtLeast(0.5),
        ),
    );
    details.insert(
        "P6".into(),
        json!({"callers": callers, "allocate": allocs_many, "redis_benchmark": rb_incr_many,
               "one_caller": {"allocate": allocs_one, "redis_benchmark": rb_incr_one,
                              "ratio": allocs_one.rate / rb_incr_one.rate.max(1e-9)}}),
    );
    Ok(())
}

/// Waits until `meter`'s group has committed `target` (sum of offsets).
async fn wait_committed(
    meter: &OffsetMeter,
    target: i64,
    timeout: Duration,
    consumer: &mut ConsumerChild,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if meter.committed()? >= target {
            return Ok(());
        }
        if let Some(status) = consumer.exited() {
            bail!(
                "the consumer exited ({status}) before committing offset {target}; log {:?}",
                consumer.log
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
fn ms_at(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `p50 … ms p99 … ms (n samples)` of latency histogram `h`, for the progress lines.
fn latency_line(h: &hdrhistogram::Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms p99 {:.1} ms ({} samples)",
        ms_at(h, 0.5),
        ms_at(h, 0.99),
        h.len()
    )
}

/// Adds the reported percentiles of latency histogram `h` (ms) to the JSON object `to`.
fn add_percentiles(to: &mut serde_json::Value, h: &hdrhistogram::Histogram<u64>) {
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

/// Writes `results` as pretty JSON to `path`.
pub fn write_json(results: &Results, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text).with_context(|| format!("write {path:?}"))
}
