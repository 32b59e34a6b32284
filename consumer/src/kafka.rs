//! The Kafka side: client configuration, the rebalance/statistics context, DLQ records and the
//! classification of transactional errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use std::time::Instant;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use chatlog_kafka::dlq;

use crate::config::KafkaConfig;
use crate::decode::{Origin, Poison};
use crate::{Error, Result, telemetry};

/// A (topic, partition).
pub type Tp = (String, i32);

/// Rebalance and statistics callbacks. They run inside `poll` on the pipeline thread and only
/// record what happened; the pipeline acts on it between polls.
pub struct Context {
    revoked: Mutex<BTreeSet<Tp>>,
    assigned: Mutex<BTreeSet<Tp>>,
    /// Assignments completed so far, empty ones included: librdkafka delivers one after every
    /// rebalance this member takes part in, so a new one proves membership again.
    assignments: AtomicU64,
    /// Revocations (and losses) so far: a batch written before one may hold records of a
    /// partition that left, or that left and came back (its position reset to the committed
    /// offset), so it is not committed after one (see `Pipeline::consume`).
    revocations: AtomicU64,
    /// The lag of this member's partitions, summed, at the last statistics (-1: none yet).
    lag: AtomicI64,
    /// Whether a batch's transaction is being closed on the commit thread (see
    /// `Pipeline::consume`), and its end. A revocation waits for it: a batch's offsets are committed
    /// or not before its partitions leave this member, as with a commit on the pipeline thread.
    closing: Mutex<bool>,
    closed: Condvar,
}

/// The longest a revocation waits for a transaction being closed. Closing takes at most
/// `isolation.commit_deadline` plus one `kafka.transaction_timeout` in a healthy process; past
/// this the revocation goes on (the commit then fails on the broker's generation check, and the
/// new owner redoes the batch: idempotent).
const REVOKE_WAITS_FOR_COMMIT: Duration = Duration::from_secs(120);

impl Context {
    /// The lag of this member's partitions, summed, at librdkafka's last statistics; `None`
    /// before the first.
    pub fn lag(&self) -> Option<i64> {
        Some(self.lag.load(Ordering::Relaxed)).filter(|l| *l >= 0)
    }

    /// Partitions revoked (or lost) since the last call.
    pub fn take_revoked(&self) -> BTreeSet<Tp> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many assignments (one per completed rebalance, possibly empty) this member has had.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// How many revocations (or losses) of partitions this member has had.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// A batch's transaction is about to be closed on the commit thread.
    pub(crate) fn closing(&self) {
        *self.closing.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// The transaction being closed is closed (committed or failed).
    pub(crate) fn closed(&self) {
        *self.closing.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.closed.notify_all();
    }

    /// Waits until no transaction is being closed (at most [`REVOKE_WAITS_FOR_COMMIT`]).
    fn wait_closed(&self) {
        let started = Instant::now();
        let mut closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
        while *closing {
            let left = REVOKE_WAITS_FOR_COMMIT.saturating_sub(started.elapsed());
            if left.is_zero() {
                tracing::warn!(
                    waited = ?REVOKE_WAITS_FOR_COMMIT,
                    "revocation: the last batch's commit has not ended; revoking anyway"
                );
                return;
            }
            closing = self
                .closed
                .wait_timeout(closing, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let waited = started.elapsed();
        if waited > Duration::from_millis(1) {
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                "revocation waited for the last batch's commit"
            );
        }
    }

    /// The partitions currently assigned.
    pub fn assigned(&self) -> BTreeSet<Tp> {
        self.assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn tps(tpl: &TopicPartitionList) -> impl Iterator<Item = Tp> + '_ {
    tpl.elements()
        .into_iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
}

impl Default for Context {
    fn default() -> Self {
        Context {
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            assignments: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            closing: Mutex::new(false),
            closed: Condvar::new(),
        }
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let mut total = 0i64;
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                // Offsets are committed by the transaction, which librdkafka does not see as a
                // commit; the pipeline stores them too, so `consumer_lag_stored` is the lag.
                // librdkafka reports -1 for partitions this member does not consume.
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.fetch_state == "active" && p.hi_offset == 0 {
                    // Fetched by this member and never written to: nothing stored or committed
                    // to measure from, and nothing to lag behind.
                    0
                } else {
                    -1
                };
                if *partition >= 0 && lag >= 0 {
                    metrics::gauge!(telemetry::LAG, "partition" => partition.to_string())
                        .set(lag as f64);
                    total += lag;
                }
            }
        }
        self.lag.store(total, Ordering::Relaxed);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        use rdkafka::consumer::Consumer;
        if let Rebalance::Revoke(tpl) = rebalance {
            let kind = if consumer.assignment_lost() {
                "lost"
            } else {
                "revoke"
            };
            metrics::counter!(telemetry::REBALANCES, "kind" => kind).increment(1);
            // The partitions' last batch may be committing on the commit thread: let it end.
            self.wait_closed();
            let gone: Vec<Tp> = tps(tpl).collect();
            tracing::info!(kind, partitions = ?gone, "partitions leaving this consumer");
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for tp in gone {
                assigned.remove(&tp);
                revoked.insert(tp);
            }
            self.revocations.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::counter!(telemetry::REBALANCES, "kind" => "assign").increment(1);
            let added: Vec<Tp> = tps(tpl).collect();
            tracing::info!(partitions = ?added, "partitions assigned to this consumer");
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for tp in added {
                revoked.remove(&tp);
                assigned.insert(tp);
            }
            self.assignments.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The settings every Kafka client of `config` shares: bootstrap servers, TLS/SASL, extra
/// properties (the operators' tools build their own clients on it).
pub fn client_config(config: &KafkaConfig) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    for (k, v) in config.security.properties()? {
        c.set(k, v);
    }
    for (k, v) in config.properties.iter() {
        c.set(k, v);
    }
    Ok(c)
}

/// The consumer's fetch settings unless `kafka.properties` sets them (librdkafka's defaults are
/// `fetch.min.bytes` 1, `fetch.wait.max.ms` 500 and `queued.max.messages.kbytes` 65536). With a
/// minimum of 1 byte the broker answers a fetch as soon as anything arrives, so under moderate
/// traffic the consumer makes a fetch round trip for every few records. 64 KiB lets a response
/// carry hundreds of records, and the broker waits at most 10 ms (the default `batch.linger`) for
/// them: light traffic waits about one linger more, the drain (always more than 64 KiB ready)
/// nothing; an idle consumer sends ~100 empty fetches a second per broker, a negligible cost.
///
/// The prefetch queue is capped at 16 MiB of payload instead of 64: in a drain librdkafka keeps
/// it full, and each queued record costs about twice its payload (its op and its share of the
/// decompressed batch) — a heap profile of a 1 M-record drain (heaptrack) found 116 of the 148 MB
/// peak heap there. 16 MiB is still ~55 000 records of 300 bytes, batches ahead of the writer
/// (nearly three of `batch.max_records`' 20 000): the same 1 M-record drain took 15.3 and 16.5 s
/// against 16.1 and 22.6 s, with a peak RSS of 150–156 MiB against 174–176 (BENCHMARKS.md, P7).
///
/// A fetch response is capped at 2 MiB instead of 50 (`fetch.max.bytes`). The queue's cap is
/// checked before a fetch, and what the fetch brings is added whatever its size: up to
/// `max.partition.fetch.bytes` (1 MiB) of *compressed* batches per partition, up to 50 MiB in
/// all — so the overshoot grew with the partitions assigned and with the compression ratio. A
/// heap profile of a 2 M-record drain over 8 partitions (heaptrack) found 146 of the 176 MB peak
/// heap in the prefetch queue: 78 MB of decompressed batches and 68 MB of per-record ops (304
/// bytes each), ~220 000 records where the cap means ~60 000. With 2 MiB the peak RSS of that
/// drain went 209 → 118 MiB at the same rate; a response is still tens of thousands of records
/// and a round trip of a few ms, and a batch larger than the cap still comes alone.
pub const FETCH_DEFAULTS: [(&str, &str); 4] = [
    ("fetch.min.bytes", "65536"),
    ("fetch.wait.max.ms", "10"),
    ("queued.max.messages.kbytes", "16384"),
    ("fetch.max.bytes", "2097152"),
];

/// Sets each of `defaults` that `config.properties` does not set (those were set by
/// [`client_config`] and win).
fn set_defaults(c: &mut ClientConfig, config: &KafkaConfig, defaults: &[(&str, &str)]) {
    for &(k, v) in defaults {
        if !config.properties.0.contains_key(k) {
            c.set(k, v);
        }
    }
}

/// The group consumer: manual offsets (committed by the transaction), read_committed,
/// cooperative-sticky assignment, [`FETCH_DEFAULTS`].
pub fn consumer_config(config: &KafkaConfig) -> Result<ClientConfig> {
    let mut c = client_config(config)?;
    set_defaults(&mut c, config, &FETCH_DEFAULTS);
    c.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval.as_millis().to_string(),
        )
        .set("statistics.interval.ms", "5000");
    if let Some(id) = &config.group_instance_id {
        c.set("group.instance.id", id);
    }
    Ok(c)
}

/// The transactional producer's settings unless `kafka.properties` sets them.
///
/// `retry.backoff.ms` 20 (librdkafka: 100): back-to-back transactions meet
/// `CONCURRENT_TRANSACTIONS` — the coordinator still completing the previous commit when the next
/// transaction adds its offsets — and librdkafka retries `AddOffsetsToTxn` after
/// `retry.backoff.ms`. The Java client waits 20 ms there (KAFKA-5477); at 100 ms the commit of a
/// lightly loaded consumer took 51 ms on average with a p99 bucket of 250 ms (BENCHMARKS.md, P4).
/// Other retries (produce requests) start at 20 ms too and still back off exponentially up to
/// `retry.backoff.max.ms` (1 s).
pub const TRANSACTION_DEFAULTS: [(&str, &str); 1] = [("retry.backoff.ms", "20")];

/// The transactional producer (one per consumer instance, KIP-447). Its `message.max.bytes` is
/// sized from `max_record_bytes` (see [`dlq_producer_max_bytes`]), so that a record the decoder
/// accepts as `oversize`-free always fits in the DLQ; user `properties` cannot lower it.
pub fn producer_config(config: &KafkaConfig, max_record_bytes: usize) -> Result<ClientConfig> {
    let mut c = client_config(config)?;
    set_defaults(&mut c, config, &TRANSACTION_DEFAULTS);
    c.set("transactional.id", &config.transactional_id)
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Uncompressed: a DLQ record's size on the broker is then known before it is sent.
        .set("compression.type", "none")
        .set(
            "message.max.bytes",
            dlq_producer_max_bytes(max_record_bytes).to_string(),
        );
    Ok(c)
}

/// Room kept in a DLQ record for its key, headers and the record batch framing.
pub const DLQ_OVERHEAD: usize = 16 * 1024;
/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// librdkafka's largest `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES_CEILING: usize = 1_000_000_000;
/// The `chatlog-dlq-detail` header is cut to this many bytes (on a char boundary).
pub const DLQ_DETAIL_MAX_BYTES: usize = 512;

/// The transactional producer's `message.max.bytes`: a record of `max_record_bytes` plus room for
/// its key and headers, never below librdkafka's default.
pub fn dlq_producer_max_bytes(max_record_bytes: usize) -> usize {
    max_record_bytes.saturating_add(DLQ_OVERHEAD).clamp(
        LIBRDKAFKA_MESSAGE_MAX_BYTES,
        LIBRDKAFKA_MESSAGE_MAX_BYTES_CEILING,
    )
}

/// The DLQ topic's `max.message.bytes` (its own setting or the broker's default), read with an
/// admin client. `None` when it cannot be read (no DescribeConfigs permission, old broker).
pub async fn dlq_topic_max_bytes(config: &KafkaConfig, timeout: Duration) -> Option<usize> {
    let admin: AdminClient<DefaultClientContext> = match client_config(config).and_then(|c| {
        c.create()
            .map_err(|e| Error::kafka("create admin client", e))
    }) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the DLQ topic's max.message.bytes");
            return None;
        }
    };
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let described = tokio::time::timeout(
        timeout,
        admin.describe_configs(&[ResourceSpecifier::Topic(&config.dlq_topic)], &opts),
    )
    .await;
    let value = match described {
        Ok(Ok(results)) => results.into_iter().find_map(|r| {
            r.ok()?
                .get("max.message.bytes")?
                .value
                .as_deref()?
                .parse::<usize>()
                .ok()
        }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, topic = %config.dlq_topic, "cannot describe the DLQ topic");
            None
        }
        Err(_) => None,
    };
    if value.is_none() {
        tracing::warn!(
            topic = %config.dlq_topic,
            "the DLQ topic's max.message.bytes is unknown; assuming librdkafka's default \
             (1000000): larger DLQ records are sent as truncated copies"
        );
    }
    value
}

/// The largest DLQ record (value, key and headers) that both the producer and the DLQ topic take.
pub fn dlq_capacity(max_record_bytes: usize, topic_max_bytes: Option<usize>) -> usize {
    let producer = dlq_producer_max_bytes(max_record_bytes);
    producer.min(topic_max_bytes.unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES))
}

/// Delivery reports of the transactional producer: which DLQ records the broker refused, so that
/// the next attempt of their batch sends only a truncated copy instead of failing the same way.
#[derive(Default)]
pub struct DlqContext {
    refused: Mutex<BTreeMap<Origin, String>>,
}

impl DlqContext {
    /// Why the broker refused the DLQ copy of the record from `origin`, if it did.
    pub fn refused(&self, origin: &Origin) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(origin)
            .cloned()
    }

    /// Forgets refusals of records at or before `offset` in `(topic, partition)`: committed.
    pub fn forget_through(&self, topic: &str, partition: i32, offset: i64) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|o, _| !(*o.topic == *topic && o.partition == partition && o.offset <= offset));
    }
}

impl ClientContext for DlqContext {}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = Box<Origin>;

    fn delivery(&self, result: &DeliveryResult<'_>, origin: Box<Origin>) {
        if let Err((e, _)) = result {
            tracing::warn!(
                error = %e,
                partition = origin.partition,
                offset = origin.offset,
                "the DLQ refused a record; its batch is redone with a truncated copy"
            );
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: one entry per DLQ record of uncommitted batches, forgotten at commit.
            refused.insert(*origin, e.to_string());
        }
    }
}

/// The transactional producer type.
pub type TxProducer = ThreadedProducer<DlqContext>;

/// What of a poison record's value goes to the DLQ.
#[derive(Debug, PartialEq, Eq)]
pub enum DlqPayload<'a> {
    /// The value as read.
    Whole(Option<&'a [u8]>),
    /// A prefix: the whole value does not fit in a DLQ record.
    Truncated {
        /// The first bytes of the value.
        prefix: &'a [u8],
        /// The value's length.
        original: usize,
        /// The value's SHA-256, hex.
        sha256: String,
    },
}

/// The value of a DLQ record taking at most `capacity` bytes with a key of `key_len` bytes and
/// headers of `headers_len` bytes: the whole value when it fits, else its longest prefix that
/// does (possibly empty), with its length and hash.
pub fn fit_payload(
    payload: Option<&[u8]>,
    key_len: usize,
    headers_len: usize,
    capacity: usize,
) -> DlqPayload<'_> {
    // Record framing and the truncation headers themselves (length, 64 hex digits, keys).
    const FRAMING: usize = 1024;
    let room = capacity.saturating_sub(key_len + headers_len + FRAMING);
    match payload {
        Some(v) if v.len() > room => DlqPayload::Truncated {
            prefix: &v[..room],
            original: v.len(),
            sha256: openssl::sha::sha256(v)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        },
        other => DlqPayload::Whole(other),
    }
}

/// `s` cut to at most `max` bytes on a char boundary (with `…` when cut).
pub fn truncate_detail(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

/// The headers of a DLQ record: why (`reason`, `detail` cut to [`DLQ_DETAIL_MAX_BYTES`], and for
/// `write_failed` the `stage` that failed), and where the record came from.
pub fn dlq_headers(p: &Poison, stage: Option<&str>) -> OwnedHeaders {
    let partition = p.record.origin.partition.to_string();
    let offset = p.record.origin.offset.to_string();
    let detail = truncate_detail(&p.detail, DLQ_DETAIL_MAX_BYTES);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: dlq::REASON,
            value: Some(p.reason),
        })
        .insert(Header {
            key: dlq::DETAIL,
            value: Some(detail.as_ref()),
        })
        .insert(Header {
            key: dlq::TOPIC,
            value: Some(&*p.record.origin.topic),
        })
        .insert(Header {
            key: dlq::PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: dlq::OFFSET,
            value: Some(offset.as_str()),
        });
    match stage {
        Some(stage) => headers.insert(Header {
            key: dlq::STAGE,
            value: Some(stage),
        }),
        None => headers,
    }
}

/// Adds the headers of a truncated copy: `chatlog-dlq-truncated` (the original length) and
/// `chatlog-dlq-sha256` (the original value's hash).
pub fn truncated_headers(headers: OwnedHeaders, original: usize, sha256: &str) -> OwnedHeaders {
    headers
        .insert(Header {
            key: dlq::TRUNCATED,
            value: Some(original.to_string().as_str()),
        })
        .insert(Header {
            key: dlq::SHA256,
            value: Some(sha256),
        })
}

/// Bytes of a set of headers (keys and values).
pub fn headers_len(headers: &OwnedHeaders) -> usize {
    use rdkafka::message::Headers;
    headers
        .iter()
        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
        .sum()
}

pub use chatlog_kafka::classify::{
    TxnFailure, classify, is_membership_code, means_membership_lost,
};

#[cfg(test)]
mod tests {
    use chatlog_kafka::{KafkaProtocol, KafkaSecurity};
    use chatlog_store::Secret;

    use super::*;

    #[test]
    fn security_settings_reach_both_clients() {
        let config = KafkaConfig {
            security: KafkaSecurity {
                protocol: KafkaProtocol::SaslSsl,
                sasl_mechanism: Some("SCRAM-SHA-512".into()),
                sasl_username: Some("chatlog".into()),
                sasl_password: Secret::new("pw-123"),
                ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
                ..KafkaSecurity::default()
            },
            ..KafkaConfig::default()
        };
        for c in [
            consumer_config(&config).unwrap(),
            producer_config(&config, 1 << 20).unwrap(),
        ] {
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(c.get("sasl.username"), Some("chatlog"));
            assert_eq!(c.get("sasl.password"), Some("pw-123"));
            assert_eq!(c.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        }
        assert!(!format!("{config:?}").contains("pw-123"));
    }

    #[test]
    fn consumer_reads_committed_with_manual_offsets() {
        let c = consumer_config(&KafkaConfig::default()).unwrap();
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(c.get("fetch.max.bytes"), Some("2097152"));
        let mut own = KafkaConfig::default();
        own.properties
            .0
            .insert("fetch.wait.max.ms".into(), "100".into());
        let c = consumer_config(&own).unwrap();
        assert_eq!(
            c.get("fetch.wait.max.ms"),
            Some("100"),
            "kafka.properties wins"
        );
        assert_eq!(c.get("fetch.min.bytes"), Some("65536"));
        let p = producer_config(&KafkaConfig::default(), 1 << 20).unwrap();
        assert_eq!(p.get("retry.backoff.ms"), Some("20"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("fetch.min.bytes"), None, "consumer settings only");
        assert_eq!(p.get("transactional.id"), Some("chatlog-consumer-0"));
    }

    #[test]
    fn the_dlq_producer_takes_the_largest_accepted_record() {
        let p = producer_config(&KafkaConfig::default(), 4 << 20).unwrap();
        let max: usize = p.get("message.max.bytes").unwrap().parse().unwrap();
        assert!(max >= (4 << 20) + DLQ_OVERHEAD, "{max}");
        assert_eq!(
            dlq_producer_max_bytes(10),
            1_000_000,
            "never below the default"
        );
        assert_eq!(dlq_producer_max_bytes(usize::MAX), 1_000_000_000);
        // The topic's limit wins when lower; unknown → librdkafka's default.
        assert_eq!(dlq_capacity(4 << 20, Some(1_048_588)), 1_048_588);
        assert_eq!(dlq_capacity(4 << 20, None), 1_000_000);
        assert_eq!(
            dlq_capacity(1 << 20, Some(64 << 20)),
            (1 << 20) + DLQ_OVERHEAD
        );
    }

    #[test]
    fn a_value_that_does_not_fit_is_cut_and_hashed() {
        let v = vec![7u8; 10_000];
        assert_eq!(
            fit_payload(Some(&v), 10, 100, 20_000),
            DlqPayload::Whole(Some(&v[..]))
        );
        assert_eq!(fit_payload(None, 10, 100, 0), DlqPayload::Whole(None));
        match fit_payload(Some(&v), 10, 100, 5_000) {
            DlqPayload::Truncated {
                prefix,
                original,
                sha256,
            } => {
                assert_eq!(original, 10_000);
                assert!(!prefix.is_empty() && prefix.len() + 10 + 100 < 5_000);
                assert_eq!(sha256.len(), 64);
                assert!(sha256.starts_with("24c1c39d"), "{sha256}"); // sha256 of 10 000 × 0x07
            }
            other => panic!("{other:?}"),
        }
        match fit_payload(Some(&v), 10, 100, 0) {
            DlqPayload::Truncated { prefix, .. } => assert!(prefix.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn details_are_cut_on_a_char_boundary() {
        assert_eq!(truncate_detail("short", 512), "short");
        let long = "é".repeat(600); // 1200 bytes
        let cut = truncate_detail(&long, 512);
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }
}
