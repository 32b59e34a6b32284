//! P3: the producer library (validate → seq allocation in Redis → Avro → idempotent produce) next to
//! Kafka's own `ProducerPerformance` with the same record size, acks=all and idempotence.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chatlog_producer::{Producer, ProducerConfig, SeqConfig};
use chatlog_schemas::ChatMessage;
use futures::StreamExt;

use crate::series::{Sampler, Series};
use crate::workload::Workload;

/// The producer library's configuration in every scenario: the defaults (lz4, linger 5 ms,
/// acks=all, idempotence), with short-lived idempotency records so a run leaves little in Redis.
pub fn producer_config(topic: &str) -> ProducerConfig {
    ProducerConfig {
        bootstrap_servers: chatlog::kafka_bootstrap(),
        topic: topic.to_owned(),
        seq: SeqConfig {
            dedup_ttl: Duration::from_secs(600),
            idle_ttl: Duration::from_secs(3600),
            ..SeqConfig::default()
        },
        ..ProducerConfig::default()
    }
}

/// What one burst of sends did.
pub struct Burst {
    /// The messages as stored (seq, msg_id and server time from the acknowledgement), by index.
    pub stored: Vec<ChatMessage>,
    /// Seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    /// Cumulative acknowledgements over time.
    pub series: Series,
    /// Failed sends.
    pub failed: usize,
}

/// Tasks a burst's sends are spread over (Logic's request handlers run on many tasks too; one task
/// polling every send would put all of them on one thread).
const BURST_TASKS: usize = 16;

/// Sends messages `range` of `workload` as fast as `concurrency` concurrent sends allow, from
/// [`BURST_TASKS`] tasks.
pub async fn burst(
    producer: &Producer,
    workload: &Workload,
    range: std::ops::Range<usize>,
    concurrency: usize,
    origin: Instant,
) -> Burst {
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let sampler = Sampler::start(origin, Duration::from_millis(50), move || {
        Some(counter.load(Ordering::Relaxed) as f64)
    });
    let started = Instant::now();
    let tasks = BURST_TASKS.min(range.len().max(1));
    let per_task = (concurrency / tasks).max(1);
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let producer = producer.clone();
            let workload = workload.clone();
            let acked = acked.clone();
            let range = range.clone();
            tokio::spawn(async move {
                let mut sends = futures::stream::iter(range.skip(k).step_by(tasks))
                    .map(|i| {
                        let producer = producer.clone();
                        let m = workload.message(i);
                        let acked = acked.clone();
                        async move {
                            let r = producer.send(m).await;
                            acked.fetch_add(1, Ordering::Relaxed);
                            r.map(|sent| (i, sent))
                        }
                    })
                    .buffer_unordered(per_task);
                let mut stored = Vec::new();
                let mut failed = 0;
                while let Some(r) = sends.next().await {
                    match r {
                        Ok(m) => stored.push(m),
                        Err(e) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("send failed: {e}");
                            }
                        }
                    }
                }
                (stored, failed)
            })
        })
        .collect();
    let mut sent = Vec::with_capacity(range.len());
    let mut failed = 0;
    for h in handles {
        match h.await {
            Ok((s, f)) => {
                sent.extend(s);
                failed += f;
            }
            Err(_) => failed += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Rebuilt after the clock stopped: the harness keeps no message while sending.
    let stored = sent
        .iter()
        .map(|(i, s)| Workload::stored(&workload.message(*i), s))
        .collect();
    Burst {
        stored,
        seconds,
        series: sampler.finish(),
        failed,
    }
}

/// Kafka's `ProducerPerformance` result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JavaPerf {
    /// Records per second it reported.
    pub records_per_s: f64,
    /// Its average latency, ms.
    pub avg_latency_ms: f64,
    /// Its summary line.
    pub summary: String,
    /// CPU seconds of the JVM (start-up included).
    pub cpu_seconds: f64,
}

/// Runs `org.apache.kafka.tools.ProducerPerformance` from the Kafka jars in `lib`.
pub fn java_producer_performance(
    lib: &Path,
    topic: &str,
    records: usize,
    record_size: usize,
) -> Result<JavaPerf> {
    // `times` after java, in the same shell, prints the JVM's CPU (children's user and system).
    let out = Command::new("sh")
        .arg("-c")
        .arg("java \"$@\" && times")
        .arg("sh")
        .arg("-Xmx512m")
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("org.apache.kafka.tools.ProducerPerformance")
        .args(["--topic", topic])
        .args(["--num-records", &records.to_string()])
        .args(["--record-size", &record_size.to_string()])
        .args(["--throughput", "-1"])
        .arg("--producer-props")
        .arg(format!("bootstrap.servers={}", chatlog::kafka_bootstrap()))
        .args([
            "acks=all",
            "enable.idempotence=true",
            "compression.type=lz4",
            "linger.ms=5",
        ])
        .output()
        .context("run java (Kafka's ProducerPerformance)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(summary) = text
        .lines()
        .rfind(|l| l.contains("records sent") && l.contains("ms avg latency"))
    else {
        bail!(
            "ProducerPerformance printed no summary: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // "N records sent, R records/sec (M MB/sec), A ms avg latency, …"
    let field = |unit: &str| -> Option<f64> {
        summary
            .split(',')
            .find(|p| p.contains(unit))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Ok(JavaPerf {
        records_per_s: field("records/sec").context("records/sec")?,
        avg_latency_ms: field("ms avg latency").unwrap_or(0.0),
        summary: summary.trim().to_owned(),
        cpu_seconds: crate::cpu::shell_times(&text),
    })
}

/// What [`raw`] produced.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RawProduced {
    /// Records.
    pub records: usize,
    /// Encoded bytes of all records (Avro single-object).
    pub bytes: usize,
}

/// Produces `messages` to `topic` as they are, keyed by session (Avro through
/// [`Codec::encode`](chatlog_schemas::Codec::encode): v1 for a message as sent, v3 for a mutated
/// one), with the library's producer settings (acks=all, idempotence, lz4, linger 5 ms): records
/// the harness builds itself — P10's appends and mutations — pre-produced for the consumer.
pub async fn raw(
    topic: &str,
    messages: impl Iterator<Item = ChatMessage>,
    in_flight: usize,
) -> Result<RawProduced> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", chatlog::kafka_bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .context("raw producer")?;
    let codec = chatlog_schemas::Codec::default();
    let mut done = RawProduced::default();
    let mut sends = futures::stream::iter(messages)
        .map(|m| {
            let producer = &producer;
            let payload = codec.encode(&m);
            async move {
                let payload = payload.with_context(|| format!("encode {m:?}"))?;
                let record = FutureRecord::to(topic)
                    .key(m.session_id.as_bytes())
                    .payload(&payload);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
                Ok::<usize, anyhow::Error>(payload.len())
            }
        })
        .buffer_unordered(in_flight.max(1));
    while let Some(bytes) = sends.next().await {
        done.records += 1;
        done.bytes += bytes?;
    }
    Ok(done)
}
