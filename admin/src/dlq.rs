//! `dlq list|show|replay`: the dead-letter queue's records, read without a consumer group
//! (partitions assigned explicitly, nothing committed, `read_committed`) from `--from-offset` to
//! each partition's end as it was at start, and replayed with their original key and bytes
//! through the producer's partitioner (the Java client's murmur2 of the key), so each lands in
//! its session's partition.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime};

use chatlog_kafka::dlq;
use chatlog_schemas::{ChatMessage, MessageState};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::cli::{DlqAction, DlqArgs, DlqSelect};
use crate::connect::Ctx;
use crate::{Error, Outcome, Result};

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader waits for the next record (or end of partition) before giving up: the
/// broker is unreachable or a partition's leader is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Characters of the detail `list` shows (the whole detail is in `show` and `--json`).
const DETAIL_CHARS: usize = 60;
/// The detail's column: its characters and the ellipsis.
const DETAIL_WIDTH: usize = DETAIL_CHARS + 1;
/// Characters of a key shown on one line of `replay` (`list` shows it whole, last).
const KEY_CHARS: usize = 40;
/// Records read ahead of the printer or the producer.
const READ_AHEAD: usize = 256;
/// Replayed records awaiting Kafka's acknowledgement at once.
const IN_FLIGHT: usize = 1000;

/// Runs `dlq`.
pub async fn run(ctx: &Ctx, args: &DlqArgs) -> Result<Outcome> {
    match &args.action {
        DlqAction::List { select, json } => list(ctx, select, *json).await,
        DlqAction::Show { partition, offset } => show(ctx, *partition, *offset).await,
        DlqAction::Replay {
            select,
            dry_run,
            rate,
            to_topic,
            quiet,
        } => {
            let opts = ReplayOpts {
                dry_run: *dry_run,
                rate: *rate,
                to_topic: to_topic.clone(),
                quiet: *quiet,
            };
            replay(ctx, select, &opts).await
        }
    }
}

// ------------------------------------------------------------------------------------ murmur2

/// Kafka's murmur2 hash of `data`, as `org.apache.kafka.common.utils.Utils.murmur2` computes it
/// (seed `0x9747b28c`, little-endian 4-byte blocks, Java's `int` arithmetic).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java takes the length as an int; a key of 2 GiB cannot be a Kafka key anyway.
    let mut h = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record under the Java client's partitioner (and librdkafka's
/// `murmur2_random`, the producer's): `toPositive(murmur2(key)) % partitions`. `partitions` must
/// be positive.
pub fn key_partition(key: &[u8], partitions: i32) -> i32 {
    // Java's toPositive: clear the sign bit (not abs).
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

// ------------------------------------------------------------------------------------ records

/// One DLQ record as read: where it is, its key, value and headers.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    /// DLQ partition.
    pub partition: i32,
    /// DLQ offset.
    pub offset: i64,
    /// The record's timestamp (ms since the Unix epoch), if it has one.
    pub timestamp_ms: Option<i64>,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value (a prefix of it on a truncated copy).
    pub value: Option<Vec<u8>>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DlqRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> DlqRecord {
        DlqRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The last header called `name`, as text (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The reason header, or `-` if the record has none (not written by a chatlog consumer).
    pub fn reason(&self) -> String {
        self.header(dlq::REASON).unwrap_or_else(|| "-".into())
    }

    /// `topic/partition@offset` of the original record, from its headers.
    pub fn origin(&self) -> String {
        let part = |h| self.header(h).unwrap_or_else(|| "?".into());
        format!(
            "{}/{}@{}",
            part(dlq::TOPIC),
            part(dlq::PARTITION),
            part(dlq::OFFSET)
        )
    }

    /// On a truncated copy: the original value's length (header `chatlog-dlq-truncated`).
    pub fn truncated_from(&self) -> Option<String> {
        self.header(dlq::TRUNCATED)
    }

    /// Bytes of the value held here.
    pub fn value_len(&self) -> usize {
        self.value.as_ref().map_or(0, Vec::len)
    }

    /// `partition/offset` in the DLQ.
    pub fn position(&self) -> String {
        format!("{}/{}", self.partition, self.offset)
    }
}

// ------------------------------------------------------------------------------------ reading

/// One partition's span to read: `start..end` (end = the high watermark at start).
#[derive(Debug, Clone, Copy)]
struct Span {
    partition: i32,
    start: i64,
    end: i64,
}

/// The DLQ as found at start, and its records arriving from a blocking reader thread.
struct Reading {
    topic: String,
    /// Each taken partition's (low, high) watermarks at start.
    marks: BTreeMap<i32, (i64, i64)>,
    /// Offsets to scan in all (progress bar length).
    total: u64,
    /// The selected records, each with the offsets scanned up to it (records taken or filtered
    /// out, and the gaps between them: the progress).
    records: mpsc::Receiver<Result<(DlqRecord, u64)>>,
}

/// Opens the DLQ (`kafka.dlq_topic`) for `select` and starts reading it on a blocking thread.
async fn read(ctx: &Ctx, select: &DlqSelect) -> Result<Reading> {
    let topic = ctx.config.kafka.dlq_topic.clone();
    let mut settings = ctx.kafka_base()?;
    // A throwaway group that never commits: the fleet's group and its offsets stay untouched,
    // and the DLQ is read as the consumers wrote it (committed transactions only).
    settings
        .set(
            "group.id",
            format!("chatlog-dlq-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let (select1, t) = (select.clone(), topic.clone());
    let (consumer, marks, spans) =
        tokio::task::spawn_blocking(move || open(settings, &t, &select1))
            .await
            .map_err(|e| Error::Other(format!("the DLQ reader stopped: {e}")))??;
    let total = spans.iter().map(|s| (s.end - s.start) as u64).sum();
    let (tx, records) = mpsc::channel(READ_AHEAD);
    let (t, select2) = (topic.clone(), select.clone());
    tokio::task::spawn_blocking(move || scan(&consumer, &t, spans, &select2, &tx));
    Ok(Reading {
        topic,
        marks,
        total,
        records,
    })
}

type Opened = (BaseConsumer, BTreeMap<i32, (i64, i64)>, Vec<Span>);

/// Creates the reader, finds the partitions and their watermarks, and assigns each non-empty
/// span.
fn open(settings: ClientConfig, topic: &str, select: &DlqSelect) -> Result<Opened> {
    let consumer: BaseConsumer = settings
        .create()
        .map_err(Error::kafka("creating the DLQ reader"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(Error::kafka(format!(
            "reading the metadata of the DLQ topic {topic:?} (is Kafka reachable at \
             kafka.bootstrap_servers?)"
        )))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(Error::Other(format!(
            "the DLQ topic {topic:?} does not exist (set it with --dlq-topic or kafka.dlq_topic)"
        )));
    }
    if let Some(p) = select.partition {
        if !partitions.contains(&p) {
            return Err(Error::Usage(format!(
                "the DLQ topic {topic:?} has no partition {p} (it has {})",
                partitions.len()
            )));
        }
        partitions.retain(|&q| q == p);
    }
    let mut marks = BTreeMap::new();
    let mut spans = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, METADATA_TIMEOUT)
            .map_err(Error::kafka(format!(
                "reading the offsets of partition {p} of the DLQ topic {topic:?}"
            )))?;
        marks.insert(p, (low, high));
        // Below the low watermark is gone (retention): start at the first record still there.
        let start = select.from_offset.map_or(low, |o| o.max(low));
        if start < high {
            spans.push(Span {
                partition: p,
                start,
                end: high,
            });
            assignment
                .add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(Error::kafka("assigning the DLQ partitions"))?;
        }
    }
    if !spans.is_empty() {
        consumer
            .assign(&assignment)
            .map_err(Error::kafka("assigning the DLQ partitions"))?;
    }
    Ok((consumer, marks, spans))
}

/// Reads each span to its end (the high watermark at start, or the end of what is committed),
/// sending the selected records; stops at `select.limit`, when the receiver is gone, or with an
/// error after [`IDLE_TIMEOUT`] without news.
fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    spans: Vec<Span>,
    select: &DlqSelect,
    tx: &mpsc::Sender<Result<(DlqRecord, u64)>>,
) {
    // Per open partition: (next offset expected, end).
    let mut open: HashMap<i32, (i64, i64)> = spans
        .iter()
        .map(|s| (s.partition, (s.start, s.end)))
        .collect();
    let mut taken = 0usize;
    let mut scanned = 0u64;
    let mut news = Instant::now();
    let mut last_error: Option<KafkaError> = None;
    // Until every span is read, --limit records are taken, or nobody listens any more (an
    // error downstream): the thread must end for the process to.
    while !open.is_empty() && select.limit.is_none_or(|l| taken < l) && !tx.is_closed() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            // With read_committed the end is the last stable offset: records of a transaction
            // still open (a consumer mid-batch) are not there yet, and are not waited for.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some((next, end)) = open.remove(&p) {
                    scanned += (end - next).max(0) as u64;
                }
                news = Instant::now();
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the DLQ");
                last_error = Some(e);
            }
            Some(Ok(m)) => {
                news = Instant::now();
                let p = m.partition();
                let Some(&(next, end)) = open.get(&p) else {
                    continue;
                };
                if m.offset() >= end {
                    scanned += (end - next).max(0) as u64;
                    open.remove(&p);
                    continue;
                }
                scanned += (m.offset() + 1 - next).max(0) as u64;
                if m.offset() + 1 >= end {
                    open.remove(&p);
                } else {
                    open.insert(p, (m.offset() + 1, end));
                }
                let record = DlqRecord::from_message(&m);
                if let Some(want) = &select.reason
                    && record.header(dlq::REASON).as_deref() != Some(want.as_str())
                {
                    continue;
                }
                taken += 1;
                if tx.blocking_send(Ok((record, scanned))).is_err() {
                    return;
                }
                // A rate-limited replay keeps the channel full for long: waiting on it is not
                // Kafka's silence.
                news = Instant::now();
            }
        }
        if news.elapsed() > IDLE_TIMEOUT {
            let why = last_error.map_or(String::new(), |e| format!(" (last error: {e})"));
            let _ = tx.blocking_send(Err(Error::Other(format!(
                "the DLQ topic {topic:?} sent nothing for {}s while partitions {:?} were not \
                 read to their end{why}; check that Kafka and the partitions' leaders are up",
                IDLE_TIMEOUT.as_secs(),
                {
                    let mut left: Vec<_> = open.keys().collect();
                    left.sort_unstable();
                    left
                }
            ))));
            return;
        }
    }
}

// ------------------------------------------------------------------------------------ list

/// `dlq list`.
async fn list(ctx: &Ctx, select: &DlqSelect, json: bool) -> Result<Outcome> {
    let mut reading = read(ctx, select).await?;
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = 0usize;
    if !json {
        println!(
            "{:<12} {:<20} {:>9} {:>10} {:<32} {:<DETAIL_WIDTH$} KEY",
            "DLQ", "REASON", "BYTES", "TRUNCATED", "ORIGIN", "DETAIL"
        );
    }
    while let Some(record) = reading.records.recv().await {
        let (r, _) = record?;
        count += 1;
        *by_reason.entry(r.reason()).or_default() += 1;
        if json {
            println!("{}", record_json(&r));
        } else {
            // A truncated copy: the original value's length (BYTES is what the DLQ holds).
            let truncated = r.truncated_from().unwrap_or_else(|| "-".into());
            println!(
                "{:<12} {:<20} {:>9} {:>10} {:<32} {:<DETAIL_WIDTH$} {}",
                r.position(),
                r.reason(),
                r.value_len(),
                truncated,
                r.origin(),
                shorten(
                    &one_line(&r.header(dlq::DETAIL).unwrap_or_default()),
                    DETAIL_CHARS
                ),
                show_key(r.key.as_deref(), usize::MAX),
            );
        }
    }
    let summary = summary_line(&reading.topic, count, &by_reason, select);
    // With --json, stdout holds only records (one object a line), so the summary goes to stderr.
    if json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(Outcome::Fine)
}

fn summary_line(
    topic: &str,
    count: usize,
    by_reason: &BTreeMap<String, usize>,
    select: &DlqSelect,
) -> String {
    let mut reasons: Vec<(&String, &usize)> = by_reason.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let limited = if select.limit.is_some_and(|l| count >= l) {
        " (--limit reached)"
    } else {
        ""
    };
    if count == 0 {
        format!("{topic}: no records selected")
    } else {
        format!(
            "{topic}: {count} record{}{limited}; by reason: {}",
            if count == 1 { "" } else { "s" },
            reasons.join(", ")
        )
    }
}

fn record_json(r: &DlqRecord) -> serde_json::Value {
    let number = |h| r.header(h).and_then(|v| v.parse::<i64>().ok());
    let utf8 = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    };
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| {
            let v = v.as_deref().map_or(serde_json::Value::Null, |v| {
                String::from_utf8_lossy(v).into_owned().into()
            });
            (k.clone(), v)
        })
        .collect();
    serde_json::json!({
        "partition": r.partition,
        "offset": r.offset,
        "timestamp_ms": r.timestamp_ms,
        "reason": r.header(dlq::REASON),
        "detail": r.header(dlq::DETAIL),
        "stage": r.header(dlq::STAGE),
        "origin_topic": r.header(dlq::TOPIC),
        "origin_partition": number(dlq::PARTITION),
        "origin_offset": number(dlq::OFFSET),
        "key": utf8(&r.key),
        "key_hex": r.key.as_deref().map(hex),
        "value_bytes": r.value_len(),
        "truncated": r.truncated_from().is_some(),
        "original_bytes": number(dlq::TRUNCATED),
        "sha256": r.header(dlq::SHA256),
        "headers": headers,
    })
}

// ------------------------------------------------------------------------------------ show

/// `dlq show PARTITION OFFSET`.
async fn show(ctx: &Ctx, partition: i32, offset: i64) -> Result<Outcome> {
    let codec = ctx.codec()?;
    let select = DlqSelect {
        reason: None,
        partition: Some(partition),
        from_offset: Some(offset),
        limit: Some(1),
    };
    let mut reading = read(ctx, &select).await?;
    let found = reading.records.recv().await.transpose()?.map(|(r, _)| r);
    let (low, high) = reading.marks.get(&partition).copied().unwrap_or((0, 0));
    let r = match found {
        Some(r) if r.offset == offset => r,
        other => {
            let next = other.map_or(String::new(), |r| format!("; the next is at {}", r.offset));
            return Err(Error::Other(format!(
                "no committed record at offset {offset} of partition {partition} of {:?} \
                 (it holds offsets {low}..{high}; an offset may be a transaction marker or an \
                 aborted record{next})",
                reading.topic
            )));
        }
    };
    let time = r.timestamp_ms.map_or("-".into(), rfc3339_ms);
    println!(
        "{:<16}{} {}  (written {time})",
        "record",
        reading.topic,
        r.position()
    );
    println!("headers");
    let width = r.headers.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &r.headers {
        let v = v
            .as_deref()
            .map_or("(null)".into(), |v| match std::str::from_utf8(v) {
                Ok(s) => s.to_owned(),
                Err(_) => format!("0x{}", hex(v)),
            });
        println!("  {k:<width$}  {v}");
    }
    let key_len = r.key.as_ref().map_or(0, Vec::len);
    println!(
        "{:<16}{}  ({key_len} bytes)",
        "key",
        show_key(r.key.as_deref(), usize::MAX)
    );
    match r.truncated_from() {
        Some(original) => println!(
            "{:<16}{} bytes held, a truncated copy of the original {original} bytes",
            "value",
            r.value_len()
        ),
        None => println!("{:<16}{} bytes", "value", r.value_len()),
    }
    if let Some(sha) = r.header(dlq::SHA256) {
        println!("{:<16}{sha}  (of the original value)", "sha256");
    }
    match r.value.as_deref().map(|v| codec.decode(v)) {
        None => println!("{:<16}none (the record has no value)", "message"),
        Some(Err(e)) => println!(
            "{:<16}does not decode: {e} (reason {})",
            "message",
            e.reason()
        ),
        Some(Ok(m)) => {
            println!("{:<16}decodes", "message");
            print_message(&m, r.key.as_deref());
        }
    }
    Ok(Outcome::Fine)
}

fn print_message(m: &ChatMessage, key: Option<&[u8]>) {
    let field = |name: &str, value: String| println!("  {name:<14}  {value}");
    field("msg_id", m.msg_id.clone());
    field("client_msg_id", m.client_msg_id.clone());
    let matches = if key == Some(m.session_id.as_bytes()) {
        "(= the key)"
    } else {
        "(≠ the key)"
    };
    field("session_id", format!("{:?} {matches}", m.session_id));
    field("session_type", m.session_type.symbol().into());
    field("seq", m.seq.to_string());
    field("sender_id", m.sender_id.clone());
    field("content_type", m.content_type.symbol().into());
    let content = match std::str::from_utf8(&m.content) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", hex(&m.content)),
    };
    field("content", format!("{content}  ({} bytes)", m.content.len()));
    field(
        "send_time",
        format!(
            "{}  ({} ms)",
            rfc3339(m.send_time_ms.saturating_mul(1000)),
            m.send_time_ms
        ),
    );
    field(
        "server_time",
        format!("{}  ({} µs)", rfc3339(m.server_time_us), m.server_time_us),
    );
    if !m.ext.is_empty() {
        let ext: Vec<String> = m.ext.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        field("ext", ext.join(", "));
    }
    let state = match &m.state {
        MessageState::Normal => "NORMAL".to_owned(),
        MessageState::Edited { at_us, count, by } => {
            format!("EDITED {count}× by {by:?} at {}", rfc3339(*at_us))
        }
        MessageState::Recalled { at_us, by } => {
            format!("RECALLED by {by:?} at {}", rfc3339(*at_us))
        }
        MessageState::Deleted { at_us, by } => {
            format!("DELETED by {by:?} at {}", rfc3339(*at_us))
        }
    };
    field("state", state);
    field("version", m.version().to_string());
}

// ------------------------------------------------------------------------------------ replay

/// The options of `dlq replay` besides the selection.
struct ReplayOpts {
    dry_run: bool,
    rate: f64,
    to_topic: Option<String>,
    quiet: bool,
}

/// Why a selected record is not replayed.
fn unreplayable(r: &DlqRecord) -> Option<&'static str> {
    if r.truncated_from().is_some() {
        // Only a prefix of the value is here: replay from the producer's copy (see the SHA-256).
        Some("truncated copy")
    } else if r.key.is_none() {
        // The partitioner needs the session id; the consumer refuses a keyless record anyway.
        Some("no key")
    } else if r.value.is_none() {
        Some("no value")
    } else {
        None
    }
}

#[derive(Default)]
struct Tally {
    replayed: usize,
    skipped: BTreeMap<&'static str, usize>,
    failed: usize,
    /// Per DLQ partition: the first and last offset taken.
    taken: BTreeMap<i32, (i64, i64)>,
}

/// `dlq replay`.
async fn replay(ctx: &Ctx, select: &DlqSelect, opts: &ReplayOpts) -> Result<Outcome> {
    if !opts.rate.is_finite() || opts.rate < 0.0 {
        return Err(Error::Usage(format!(
            "--rate must be 0 (no limit) or a positive number of records per second, not {}",
            opts.rate
        )));
    }
    let period = if opts.rate > 0.0 && !opts.dry_run {
        Some(
            Duration::try_from_secs_f64(1.0 / opts.rate)
                .map_err(|_| Error::Usage(format!("--rate {} is too small", opts.rate)))?
                .max(Duration::from_nanos(1)),
        )
    } else {
        None
    };
    let topic = opts
        .to_topic
        .clone()
        .unwrap_or_else(|| ctx.config.kafka.topic.clone());
    let partitions = partition_count(ctx.kafka_base()?, &topic).await?;
    let producer: Option<FutureProducer> = if opts.dry_run {
        None
    } else {
        Some(
            replay_settings(ctx, &topic)?
                .create()
                .map_err(Error::kafka("creating the replay producer"))?,
        )
    };

    let mut reading = read(ctx, select).await?;
    let bar = progress_bar(opts.quiet, reading.total);
    let say = |line: String| bar.suspend(|| println!("{line}"));
    let mut limiter = period.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut tally = Tally::default();
    let mut in_flight = FuturesUnordered::new();
    let mut read_error = None;
    while let Some(record) = reading.records.recv().await {
        let r = match record {
            Ok((r, scanned)) => {
                bar.set_position(scanned);
                r
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        tally
            .taken
            .entry(r.partition)
            .and_modify(|(_, last)| *last = r.offset)
            .or_insert((r.offset, r.offset));
        let line = format!("{:<12} {:<20}", r.position(), r.reason());
        let key = show_key(r.key.as_deref(), KEY_CHARS);
        if let Some(why) = unreplayable(&r) {
            *tally.skipped.entry(why).or_default() += 1;
            let more = match (why, r.truncated_from(), r.header(dlq::SHA256)) {
                ("truncated copy", Some(len), Some(sha)) => {
                    format!(" of {len} bytes, sha256 {sha}: replay it from the producer's copy")
                }
                ("truncated copy", _, _) => ": replay it from the producer's copy".into(),
                _ => String::new(),
            };
            say(format!("{line} skipped: {why}{more}  key {key}"));
            continue;
        }
        let (Some(k), Some(v)) = (r.key.as_deref(), r.value.as_deref()) else {
            continue; // unreplayable() said both are there
        };
        let expected = key_partition(k, partitions);
        let Some(producer) = &producer else {
            tally.replayed += 1;
            say(format!("{line} would go to {topic}/{expected}  key {key}"));
            continue;
        };
        if let Some(l) = &mut limiter {
            l.tick().await;
        }
        while in_flight.len() >= IN_FLIGHT {
            if let Some(done) = in_flight.next().await {
                settle(done, &topic, &mut tally, &say);
            }
        }
        match producer.send_result(FutureRecord::to(&topic).key(k).payload(v)) {
            Ok(delivery) => in_flight.push(async move { (line, key, expected, delivery.await) }),
            Err((e, _)) => {
                tally.failed += 1;
                say(format!("{line} FAILED to send: {e}  key {key}"));
            }
        }
        // Acknowledgements as they come, so lines and the bar follow the replay.
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            settle(done, &topic, &mut tally, &say);
        }
        bar.set_message(format!("{} replayed", tally.replayed));
    }
    drop(reading.records); // stops the reader if it is still going (an error, or --limit)
    while let Some(done) = in_flight.next().await {
        settle(done, &topic, &mut tally, &say);
    }
    bar.finish_and_clear();

    let skipped: usize = tally.skipped.values().sum();
    let why: Vec<String> = tally
        .skipped
        .iter()
        .map(|(w, n)| format!("{w} {n}"))
        .collect();
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join(", "))
    };
    let taken: Vec<String> = tally
        .taken
        .iter()
        .map(|(p, (first, last))| format!("partition {p} offsets {first}..={last}"))
        .collect();
    if opts.dry_run {
        println!(
            "dry run, nothing produced: would replay {} to {topic} ({partitions} partitions, \
             murmur2 of the key), skip {skipped}{why}",
            tally.replayed
        );
    } else {
        println!(
            "replayed {} to {topic} ({partitions} partitions, murmur2 of the key), skipped \
             {skipped}{why}, failed {}",
            tally.replayed, tally.failed
        );
    }
    if !taken.is_empty() {
        println!("DLQ {} taken: {}", reading.topic, taken.join("; "));
    }
    if let Some(e) = read_error {
        return Err(e);
    }
    Ok(Outcome::problems_if(skipped > 0 || tally.failed > 0))
}

type Delivered = (
    String,
    String,
    i32,
    Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
);

/// Accounts for one acknowledged (or failed) replayed record.
fn settle(done: Delivered, topic: &str, tally: &mut Tally, say: &impl Fn(String)) {
    let (line, key, expected, result) = done;
    match result {
        Ok(Ok(d)) if d.partition == expected => {
            tally.replayed += 1;
            say(format!(
                "{line} replayed to {topic}/{}@{}  key {key}",
                d.partition, d.offset
            ));
        }
        Ok(Ok(d)) => {
            // The producer's partitioner is forced, so only a partition count that changed while
            // replaying gets here; the record is not where its session's records are.
            tally.failed += 1;
            say(format!(
                "{line} MISPLACED: landed in {topic}/{}@{}, but murmur2 of the key gives \
                 partition {expected} (did the topic's partition count change?)  key {key}",
                d.partition, d.offset
            ));
        }
        Ok(Err((e, _))) => {
            tally.failed += 1;
            say(format!("{line} FAILED: {e}  key {key}"));
        }
        Err(_) => {
            tally.failed += 1;
            say(format!(
                "{line} FAILED: the producer went away before Kafka answered  key {key}"
            ));
        }
    }
}

/// The replay producer's librdkafka settings: exactly the producer library's
/// ([`chatlog_producer::ProducerConfig::client_config`]: its forced idempotence, `acks=all` and
/// `murmur2_random` partitioner), over this configuration's Kafka connection (bootstrap, TLS/SASL,
/// properties).
fn replay_settings(ctx: &Ctx, topic: &str) -> Result<ClientConfig> {
    let kafka = &ctx.config.kafka;
    let producer = chatlog_producer::ProducerConfig {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        topic: topic.to_owned(),
        security: kafka.security.clone(),
        kafka: kafka.properties.clone(),
        ..chatlog_producer::ProducerConfig::default()
    };
    producer.validate()?;
    Ok(producer.client_config()?)
}

/// The number of partitions of `topic`.
async fn partition_count(settings: ClientConfig, topic: &str) -> Result<i32> {
    let t = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = settings
            .create()
            .map_err(Error::kafka("creating a metadata client"))?;
        let metadata = probe
            .fetch_metadata(Some(&t), METADATA_TIMEOUT)
            .map_err(Error::kafka(format!(
                "reading the metadata of topic {t:?} (is Kafka reachable at \
                 kafka.bootstrap_servers?)"
            )))?;
        let n = metadata
            .topics()
            .iter()
            .filter(|m| m.name() == t && m.error().is_none())
            .map(|m| m.partitions().len())
            .sum::<usize>();
        match i32::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Other(format!(
                "the topic {t:?} to replay to does not exist (set it with --to-topic, --topic or \
                 kafka.topic)"
            ))),
        }
    })
    .await
    .map_err(|e| Error::Other(format!("the metadata request stopped: {e}")))?
}

/// A progress bar on stderr over `len` DLQ offsets; hidden with `--quiet` or when stderr is not
/// a terminal (logs, CI).
fn progress_bar(quiet: bool, len: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} DLQ offsets, {msg} (eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

// ------------------------------------------------------------------------------------ text

/// A key for one line: the text, quoted and escaped, if it is UTF-8, else hex; `-` if absent.
fn show_key(key: Option<&[u8]>, max_chars: usize) -> String {
    match key {
        None => "-".into(),
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => format!("{:?}", shorten(s, max_chars)),
            Err(_) => shorten(&format!("0x{}", hex(k)), max_chars),
        },
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// `s` on one line (a detail may hold an error's newlines).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 time of `us` µs since the Unix epoch (the number itself if out of range).
fn rfc3339(us: i64) -> String {
    u64::try_from(us)
        .ok()
        .and_then(|us| SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(us)))
        .map_or_else(
            || us.to_string(),
            |t| humantime_serde::re::humantime::format_rfc3339_micros(t).to_string(),
        )
}

/// RFC 3339 time of `ms` ms since the Unix epoch (the number itself if out of range).
fn rfc3339_ms(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .and_then(|ms| SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .map_or_else(
            || ms.to_string(),
            |t| humantime_serde::re::humantime::format_rfc3339_millis(t).to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of Kafka's own `Utils.murmur2` (the cases of its UtilsTest; rechecked with
    /// kafka-clients 4.1.1).
    #[test]
    fn murmur2_matches_kafkas() {
        for (key, expected) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn key_partition_is_javas_to_positive_modulo() {
        // Partitions Java's BuiltInPartitioner.partitionForKey gives over 7 partitions.
        assert_eq!(key_partition(b"a", 7), 5);
        assert_eq!(key_partition(b"g:42", 7), 3);
        assert_eq!(key_partition("séance-日本".as_bytes(), 7), 3);
        // toPositive clears the sign bit: a negative hash is not negated.
        let h = murmur2(b"foobar");
        assert!(h < 0);
        assert_eq!(key_partition(b"foobar", 1000), (h & 0x7fff_ffff) % 1000);
        assert_ne!(
            key_partition(b"foobar", 1000),
            h.unsigned_abs() as i32 % 1000
        );
        // The empty key hashes too (the record still has a key): Java gives 275646681.
        assert_eq!(murmur2(b""), 275_646_681);
        assert_eq!(key_partition(b"", 7), 2);
    }

    #[test]
    fn text_helpers() {
        assert_eq!(shorten("héllo", 3), "hél…");
        assert_eq!(shorten("hé", 3), "hé");
        assert_eq!(show_key(None, 5), "-");
        assert_eq!(show_key(Some("日本語".as_bytes()), 10), "\"日本語\"");
        assert_eq!(show_key(Some(&[0xff, 0x00]), 10), "0xff00");
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert_eq!(
            rfc3339(1_700_000_000_000_000),
            "2023-11-14T22:13:20.000000Z"
        );
        assert_eq!(rfc3339(-1), "-1");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
