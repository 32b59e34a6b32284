//! P3: the producer library (validate → seq allocation in Redis → Avro → idempotent produce) next to
//! Kafka's own `ProducerPerformance` with the same record size, acks=all and idempotence.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chatlog_producer::{NewMessage, Producer, ProducerConfig, Sent, SeqConfig};
use chatlog_schemas::{ChatMessage, Codec};
use futures::StreamExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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

/// Sends messages `range` of `workload` through the producer library as fast as `concurrency`
/// concurrent sends allow, from `BURST_TASKS` (16) tasks.
pub async fn burst(
    producer: &Producer,
    workload: &Workload,
    range: std::ops::Range<usize>,
    concurrency: usize,
    origin: Instant,
) -> Burst {
    let producer = producer.clone();
    burst_with(workload, range, concurrency, origin, true, move |_, m| {
        let producer = producer.clone();
        async move { producer.send(m).await.map_err(|e| e.to_string()) }
    })
    .await
}

/// Sends messages `range` of `workload` with `send` (given the message's index and the message)
/// as fast as `concurrency` concurrent sends allow, from `BURST_TASKS` (16) tasks: the same load
/// generator for the library ([`burst`]) and for the pre-assigned path ([`Preassigned`]).
/// `keep_stored`: rebuild the stored messages (after the clock stops) into [`Burst::stored`].
pub async fn burst_with<F, Fut>(
    workload: &Workload,
    range: std::ops::Range<usize>,
    concurrency: usize,
    origin: Instant,
    keep_stored: bool,
    send: F,
) -> Burst
where
    F: Fn(usize, NewMessage) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Sent, String>> + Send + 'static,
{
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
            let send = send.clone();
            let workload = workload.clone();
            let acked = acked.clone();
            let range = range.clone();
            tokio::spawn(async move {
                let mut sends = futures::stream::iter(range.skip(k).step_by(tasks))
                    .map(|i| {
                        let m = workload.message(i);
                        let sent = send(i, m);
                        let acked = acked.clone();
                        async move {
                            let r = sent.await;
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
    let stored = if keep_stored {
        sent.iter()
            .map(|(i, s)| Workload::stored(&workload.message(*i), s))
            .collect()
    } else {
        Vec::new()
    };
    Burst {
        stored,
        seconds,
        series: sampler.finish(),
        failed,
    }
}

/// P3′: the producer's produce path with the seqs given — what [`Producer::send`] does after the
/// seq allocation, re-done here step by step because the library has no public way to skip the
/// allocation: validate the message against the limits, assign msg_id, seq and server time, Avro
/// encode with a codec built as the producer builds it, build the record with the same key
/// (session id), timestamp and (if configured) schema header, and produce it through an rdkafka
/// `FutureProducer` created from the library's own [`ProducerConfig::client_config`], awaiting
/// the delivery report in the sending task. Not measured: the allocation itself, the per-session
/// turn queue, the in-flight semaphore (the load generator's bound is lower) and the per-send
/// fingerprint and metrics.
#[derive(Clone)]
pub struct Preassigned {
    kafka: FutureProducer,
    topic: Arc<str>,
    codec: Arc<Codec>,
    limits: chatlog_schemas::Limits,
    schema_header: Option<Arc<str>>,
    sessions: usize,
}

impl Preassigned {
    /// A produce path to `config.topic` with `config`'s Kafka settings; message `i` of a workload
    /// over `sessions` sessions gets seq `i / sessions + 1` (round-robin, as the sends are).
    pub fn new(config: &ProducerConfig, sessions: usize) -> Result<Preassigned> {
        let kafka: FutureProducer = config
            .client_config()
            .context("the producer's Kafka settings")?
            .create()
            .context("Kafka producer")?;
        let codec = Codec::builder()
            .limits(config.limits)
            .max_encoded_bytes(chatlog_producer::max_encoded_len(&config.limits))
            .build()
            .context("codec")?;
        let schema_header = config
            .schema_header
            .then(|| format!("{:016x}", codec.current_fingerprint()).into());
        Ok(Preassigned {
            kafka,
            topic: config.topic.as_str().into(),
            codec: Arc::new(codec),
            limits: config.limits,
            schema_header,
            sessions: sessions.max(1),
        })
    }

    /// Sends message `i` with its pre-assigned seq; waits for Kafka's acknowledgement.
    pub async fn send(&self, i: usize, new: NewMessage) -> std::result::Result<Sent, String> {
        new.validate(&self.limits).map_err(|e| e.to_string())?;
        let seq = (i / self.sessions) as i64 + 1;
        let server_time_us = chatlog::now_ms() * 1000;
        // A msg_id as long as a UUID's text, unique per message (the allocation would give one).
        let msg_id = format!("00000000-0000-7000-8000-{i:012x}");
        let message = new.assign(msg_id, seq, server_time_us);
        let payload = self.codec.encode(&message).map_err(|e| e.to_string())?;
        let mut record = FutureRecord::to(&self.topic)
            .key(message.session_id.as_bytes())
            .payload(&payload)
            .timestamp(server_time_us / 1000);
        if let Some(fp) = &self.schema_header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: chatlog_producer::SCHEMA_HEADER,
                value: Some(fp.as_bytes()),
            }));
        }
        let delivery = self
            .kafka
            .send_result(record)
            .map_err(|(e, _)| e.to_string())?;
        drop(payload);
        let (partition, offset) = match delivery.await {
            Ok(Ok(d)) => (d.partition, d.offset),
            Ok(Err((e, _))) => return Err(e.to_string()),
            Err(_) => return Err("the Kafka client went away".into()),
        };
        Ok(Sent {
            msg_id: message.msg_id,
            seq,
            server_time_us,
            partition,
            offset,
            duplicate: false,
        })
    }
}

/// Kafka's `ProducerPerformance` result (unkeyed random payloads: supplementary since P3's
/// reference is [`java_keyed`]).
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

/// What the keyed Java producer (`benches/java/KeyedProducerPerf.java`) measured over its timed
/// window (start-up and warm-up excluded), as it printed it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JavaKeyed {
    /// Records in the timed window.
    pub records: u64,
    /// Seconds of the window (first send to the end of `flush`).
    pub seconds: f64,
    /// Records per second over the window.
    pub records_per_s: f64,
    /// Mean send → acknowledgement, ms.
    pub avg_latency_ms: f64,
    /// CPU seconds of the JVM over the window (all its threads).
    pub cpu_seconds: f64,
    /// CPU seconds of the JVM before the window (start-up, compiling the source, warm-up).
    pub cpu_seconds_before_window: f64,
    /// Wall seconds from the JVM's start to the window's start.
    pub seconds_before_window: f64,
    /// Distinct records in its input file (record `i` is entry `i % entries`).
    pub entries: u64,
    /// Failed sends.
    pub errors: u64,
}

/// Writes the keyed Java producer's input: `entries` records rounded up to whole rounds over the
/// sessions, each `[u32 key length][key][u32 value length][value]`, record `i` the session id of
/// message `i` and message `i` encoded as chatlog stores it (v1 Avro, a UUID-long msg_id, seq and
/// server time filled) — so its keys follow the same round-robin and its payloads compress as
/// ours do.
pub fn write_keyed_records(workload: &Workload, path: &Path, entries: usize) -> Result<usize> {
    let s = workload.sessions.len();
    let entries = entries.div_ceil(s).max(1) * s;
    let codec = Codec::default();
    let mut out = Vec::with_capacity(entries * (workload.record_bytes() + 40));
    for i in 0..entries {
        let new = workload.message(i);
        let key = new.session_id.clone();
        let m = new.assign(
            format!("00000000-0000-7000-8000-{i:012x}"),
            (i / s) as i64 + 1,
            chatlog::now_ms() * 1000,
        );
        let value = codec.encode(&m).context("encode")?;
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(&value);
    }
    std::fs::write(path, out).with_context(|| format!("write {path:?}"))?;
    Ok(entries)
}

/// Runs `benches/java/KeyedProducerPerf.java` (a single-file program, on the Kafka jars in `lib`):
/// `warmup` untimed records, then `records` timed ones, from `records_file`.
pub fn java_keyed(
    lib: &Path,
    topic: &str,
    records: usize,
    warmup: usize,
    records_file: &Path,
) -> Result<JavaKeyed> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/KeyedProducerPerf.java");
    let out = Command::new("java")
        .arg("-Xmx512m")
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg(&source)
        .arg(chatlog::kafka_bootstrap())
        .arg(topic)
        .arg(records.to_string())
        .arg(warmup.to_string())
        .arg(records_file)
        .output()
        .context("run java (benches/java/KeyedProducerPerf.java)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().rfind(|l| l.starts_with('{')) else {
        bail!(
            "KeyedProducerPerf printed no result ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let result: JavaKeyed =
        serde_json::from_str(line).with_context(|| format!("KeyedProducerPerf printed {line}"))?;
    if result.errors > 0 {
        bail!("KeyedProducerPerf: {} sends failed", result.errors);
    }
    Ok(result)
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
