//! (d)/(f) The DLQ under read_committed: exactly the poison records, each once, with the reason
//! their kind calls for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chatlog_kafka::dlq;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::record::{PoisonRecord, payload_hash};

use super::inputs::Inputs;
use super::state::Check;

/// A DLQ record as read back.
struct DlqRecord {
    key: Option<String>,
    reason: String,
    source: (String, i32, i64),
    payload_hash: Option<u64>,
    payload_len: usize,
    /// The `chatlog-dlq-truncated` header: the copy holds only the start of the value.
    truncated: Option<String>,
    /// The SHA-256 of the whole original value a truncated copy carries.
    sha256: Option<String>,
}

impl DlqRecord {
    /// Whether this DLQ record carries `p`'s value: byte for byte, or — a truncated copy — a
    /// shorter start with the whole value's SHA-256. A `wrongtype` record's value is the
    /// producer's encoding, which the harness does not keep.
    fn carries(&self, p: &PoisonRecord) -> bool {
        if p.kind == "wrongtype" {
            return true;
        }
        match &self.truncated {
            None => self.payload_hash == p.payload_hash,
            Some(_) => {
                self.sha256.is_some()
                    && self.sha256 == p.payload_sha256
                    && self.payload_len < p.payload_len
            }
        }
    }
}

fn read_dlq(kafka: &str, topic: &str, isolation: &str) -> anyhow::Result<Vec<DlqRecord>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", chatlog::unique("chaos_dlq_reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?;
    let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        ends.insert(
            p,
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?
                .1,
        );
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(m) => {
                let m = m?;
                idle_since = Instant::now();
                let header = |name: &str| {
                    m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                };
                out.push(DlqRecord {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    reason: header(dlq::REASON).unwrap_or_default(),
                    source: (
                        header(dlq::TOPIC).unwrap_or_default(),
                        header(dlq::PARTITION)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(-1),
                        header(dlq::OFFSET)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(-1),
                    ),
                    payload_hash: m.payload().map(payload_hash),
                    payload_len: m.payload().map_or(0, <[u8]>::len),
                    truncated: header(dlq::TRUNCATED),
                    sha256: header(dlq::SHA256),
                });
            }
            None => {
                // Done when every partition's position reached its end offset (control records
                // of transactions count), or after 5 quiet seconds.
                let position = consumer.position()?;
                let done = ends.iter().all(|(p, end)| {
                    matches!(
                        position.find_partition(topic, *p).map(|e| e.offset()),
                        Some(Offset::Offset(o)) if o >= *end
                    ) || *end == 0
                });
                if done || idle_since.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "reading the DLQ took over 120 s");
    }
    Ok(out)
}

pub(super) async fn dlq(c: &mut Check, inp: &Inputs<'_>) -> anyhow::Result<()> {
    let (kafka, dlq) = (inp.kafka.to_owned(), inp.dlq.to_owned());
    let committed = tokio::task::spawn_blocking({
        let (kafka, dlq) = (kafka.clone(), dlq.clone());
        move || read_dlq(&kafka, &dlq, "read_committed")
    })
    .await??;
    let uncommitted =
        tokio::task::spawn_blocking(move || read_dlq(&kafka, &dlq, "read_uncommitted")).await??;
    let d = &mut c.f.details;
    d.poison = inp.load.poison.len();
    d.dlq_committed = committed.len();
    d.dlq_uncommitted = uncommitted.len();
    d.dlq_truncated = committed.iter().filter(|r| r.truncated.is_some()).count();

    // Matched by source record (topic, partition, offset): the keys of `wrongtype` records are
    // their session's id, shared by several.
    let by_source: BTreeMap<(String, i32, i64), &PoisonRecord> = inp
        .load
        .poison
        .iter()
        .map(|p| ((inp.topic.to_owned(), p.partition, p.offset), p))
        .collect();
    let keys: BTreeSet<&str> = inp.load.poison.iter().map(|p| p.key.as_str()).collect();
    let mut seen: BTreeMap<(String, i32, i64), usize> = BTreeMap::new();
    let mut found: BTreeSet<(String, i32, i64)> = BTreeSet::new();
    let mut problems: Vec<(&str, String)> = Vec::new();
    for r in &committed {
        let poison = by_source.get(&r.source);
        let known_key = r.key.as_deref().is_some_and(|k| keys.contains(k));
        if poison.is_none() && !known_key {
            c.f.details.dlq_unexpected += 1;
            problems.push((
                "dlq_unexpected",
                format!("key {:?} reason {} from {:?}", r.key, r.reason, r.source),
            ));
            continue;
        }
        let n = seen.entry(r.source.clone()).or_default();
        *n += 1;
        if *n > 1 {
            c.f.details.dlq_duplicates += 1;
            problems.push(("dlq_duplicate", format!("{:?} from {:?}", r.key, r.source)));
            continue;
        }
        // A known key from another source offset: the poison was produced twice (a retried send).
        let Some(p) = poison else { continue };
        found.insert(r.source.clone());
        if !p.reasons.contains(&r.reason.as_str()) || !r.carries(p) {
            c.f.details.dlq_wrong_reason += 1;
            problems.push((
                "dlq_wrong_record",
                format!(
                    "{} ({}): reason {} (expected {:?}), payload {}{}",
                    p.key,
                    p.kind,
                    r.reason,
                    p.reasons,
                    if r.carries(p) { "same" } else { "differs" },
                    if r.truncated.is_some() {
                        " (truncated copy)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    for p in &inp.load.poison {
        if !found.contains(&(inp.topic.to_owned(), p.partition, p.offset)) {
            c.f.details.dlq_missing += 1;
            problems.push((
                "dlq_missing",
                format!(
                    "{} ({}) from partition {} offset {}",
                    p.key, p.kind, p.partition, p.offset
                ),
            ));
        }
    }
    for (what, text) in problems {
        c.example(what, text);
    }
    Ok(())
}
