//! The [`Producer`]: validate → allocate the seq → encode → produce, with bounded in-flight sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_schemas::{ChatMessage, Codec, Limits, NewMessage, SchemaVersion};
use chatlog_store::RedisConnection;
use chatlog_store::queues::SessionQueues;
use chatlog_store::seq::{AllocRequest, Allocation, SeqAllocator};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use scylla::client::session::Session;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::{Clock, ClockCheck};
use crate::{Error, ProducerConfig, Result};

/// The record header that names the writer schema (when [`ProducerConfig::schema_header`] is on).
pub const SCHEMA_HEADER: &str = "chatlog-schema";

/// Shards of the per-session send queues (sessions share them by hash).
const ORDER_SHARDS: usize = 1024;

/// Most sends of one session allocated and enqueued together.
const TURN_BATCH: usize = chatlog_store::seq::FAST_BATCH;

/// What a successful send stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message id (UUIDv7), the first one for a duplicate.
    pub msg_id: String,
    /// The message's seq in its session.
    pub seq: i64,
    /// The server time (µs) written into the message, the first one for a duplicate.
    pub server_time_us: i64,
    /// The Kafka partition it was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// `true` if this `client_msg_id` had been sent before: the identical record was produced
    /// again (the consumer's writes are idempotent).
    pub duplicate: bool,
}

/// Produces chat messages for Logic. Cheap to clone; clones share the Kafka client, the seq
/// allocator and the in-flight bound, and [`close`](Producer::close) closes all of them.
#[derive(Clone)]
pub struct Producer {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    kafka: FutureProducer,
    topic: String,
    codec: Codec,
    pub(crate) limits: Limits,
    seq: SeqAllocator,
    permits: Arc<Semaphore>,
    max_in_flight: u32,
    /// Per session with a turn under way: the sends waiting for the next turn.
    turns: Arc<SessionQueues<Waiting>>,
    schema_header: Option<String>,
    /// A duplicate allocation older than this is not produced again (`settle_horizon -
    /// message_timeout`, see [`ProducerConfig::settle_horizon`]).
    reproduce_within: Duration,
    /// The clock messages are stamped with, checked against Redis `TIME`.
    pub(crate) clock: Arc<ClockCheck>,
    /// What recall, edit and delete read and write besides Kafka.
    pub(crate) mutations: crate::mutate::Mutations,
}

/// A validated send with its in-flight permit, waiting for its session's next turn.
struct Waiting {
    message: NewMessage,
    permit: OwnedSemaphorePermit,
    reply: tokio::sync::oneshot::Sender<Result<Pending>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.inner.topic)
            .field("max_in_flight", &self.inner.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// A sent message's record handed to librdkafka, waiting for its delivery report.
struct Pending {
    alloc: Allocation,
    flight: InFlight,
}

/// A record handed to librdkafka, waiting for its delivery report. It holds its in-flight permit
/// until the report arrives: [`delivered`](InFlight::delivered) releases it then, and an
/// `InFlight` dropped before (the caller stopped waiting) hands the wait to a task, so the bound
/// holds either way.
///
/// Awaiting the report in the caller's own task, rather than in a task spawned per record, saves a
/// spawn and a cross-thread wake-up per send: with both on the hot path the producer spent about
/// half of its CPU in the kernel's scheduler and futexes (P3 of `dev/bench.sh`).
pub(crate) struct InFlight {
    delivery: Option<DeliveryFuture>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (Some(delivery), Some(permit)) = (self.delivery.take(), self.permit.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = delivery.await;
                drop(permit);
            });
        }
    }
}

impl Producer {
    /// Validates `config`, checks its limits against those the topic's consumers published
    /// ([`Error::LimitsAboveConsumer`]) and the host clock against Redis `TIME`
    /// ([`Error::ClockSkew`]), creates the Kafka client and the seq allocator (which prepares
    /// its statements in `keyspace`, the keyspace holding `session_seq` and
    /// `consumer_limits`).
    pub async fn new(
        config: ProducerConfig,
        session: Arc<Session>,
        keyspace: &str,
        redis: RedisConnection,
    ) -> Result<Producer> {
        Producer::with_clock(config, session, keyspace, redis, Clock::system()).await
    }

    /// [`new`](Producer::new) with `clock` instead of the host clock (a [`Clock::skewed`]
    /// clock rehearses a host whose clock is wrong).
    pub async fn with_clock(
        config: ProducerConfig,
        session: Arc<Session>,
        keyspace: &str,
        mut redis: RedisConnection,
        clock: Clock,
    ) -> Result<Producer> {
        config.validate()?;
        crate::metrics::describe();
        check_consumer_limits(&config, &session, keyspace).await?;
        let clock = Arc::new(ClockCheck::start(clock, &mut redis, config.limits.max_skew).await?);
        ClockCheck::spawn_refresh(&clock, redis.clone(), config.clock_check_interval);
        let kafka: FutureProducer = config.client_config()?.create().map_err(Error::kafka)?;
        let seq_session = session.clone();
        let seq = SeqAllocator::new(session, keyspace, redis.clone(), config.seq.clone())
            .await
            .map_err(Error::Allocation)?;
        let codec = Codec::builder()
            .limits(config.limits)
            .max_encoded_bytes(max_encoded_len(&config.limits))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let schema_header = config
            .schema_header
            .then(|| format!("{:016x}", codec.current_fingerprint()));
        let max_in_flight = u32::try_from(config.max_in_flight)
            .map_err(|_| Error::Config("max_in_flight is too large".into()))?;
        let mutations =
            crate::mutate::Mutations::new(&config, seq_session, keyspace, redis).await?;
        Ok(Producer {
            inner: Arc::new(Inner {
                kafka,
                topic: config.topic,
                codec,
                limits: config.limits,
                seq,
                permits: Arc::new(Semaphore::new(config.max_in_flight)),
                max_in_flight,
                turns: Arc::new(SessionQueues::new(ORDER_SHARDS)),
                schema_header,
                reproduce_within: config.settle_horizon.saturating_sub(config.message_timeout),
                clock,
                mutations,
            }),
        })
    }

    /// Waits for an in-flight permit (the bound sends and mutations share).
    pub(crate) async fn permit(&self) -> Result<OwnedSemaphorePermit> {
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)
    }

    /// The seq allocator this producer uses.
    pub fn allocator(&self) -> &SeqAllocator {
        &self.inner.seq
    }

    /// Sends one message: validates it (an invalid message allocates and sends nothing), allocates
    /// its seq (or finds the first allocation of its `client_msg_id`), encodes it and waits until
    /// Kafka has it (`acks=all`). Waits first if [`max_in_flight`](ProducerConfig::max_in_flight)
    /// sends are under way.
    pub async fn send(&self, message: NewMessage) -> Result<Sent> {
        let start = Instant::now();
        let result = match self.enqueue(message).await {
            Ok(pending) => pending.finish().await,
            Err(e) => Err(e),
        };
        observe(&result, start);
        result
    }

    /// Sends several messages concurrently; result `i` belongs to message `i`. Messages of one
    /// session get increasing seqs and are written to Kafka in input order.
    pub async fn send_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<Sent>> {
        let start = Instant::now();
        let count = messages.len();
        let mut by_session: HashMap<String, Vec<(usize, NewMessage)>> = HashMap::new();
        for (i, m) in messages.into_iter().enumerate() {
            by_session
                .entry(m.session_id.clone())
                .or_default()
                .push((i, m));
        }
        let sessions = by_session.into_values().map(|group| async move {
            // In order within the session: each one is enqueued before the next is allocated.
            // Its delivery is awaited by a task meanwhile, which releases the in-flight permit as
            // soon as Kafka answers: the next enqueue may be waiting for that permit.
            let mut pending = Vec::with_capacity(group.len());
            for (i, m) in group {
                let p = self.enqueue(m).await.map(|p| tokio::spawn(p.finish()));
                pending.push((i, p));
            }
            let finished = pending.into_iter().map(|(i, p)| async move {
                let r = match p {
                    Ok(task) => task.await.unwrap_or(Err(Error::Closed)),
                    Err(e) => Err(e),
                };
                (i, r)
            });
            futures::future::join_all(finished).await
        });
        let mut results: Vec<Option<Result<Sent>>> = (0..count).map(|_| None).collect();
        for (i, r) in futures::future::join_all(sessions)
            .await
            .into_iter()
            .flatten()
        {
            observe(&r, start);
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect()
    }

    /// Waits until every send started before this call is acknowledged or failed, then until
    /// librdkafka's queue is empty. Sends started meanwhile wait for the flush.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let all = self.drain(timeout).await?;
        drop(all);
        self.flush_kafka(deadline.saturating_duration_since(Instant::now()))
            .await
    }

    /// Flushes (see [`flush`](Producer::flush)), then closes the producer: later sends, on this
    /// handle's clones too, fail with [`Error::Closed`]. The Kafka client is dropped with the last
    /// clone.
    pub async fn close(self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let drained = self.drain(timeout).await;
        self.inner.permits.close();
        let flushed = self
            .flush_kafka(deadline.saturating_duration_since(Instant::now()))
            .await;
        drained.map(drop).and(flushed)
    }

    /// Takes every in-flight permit: all earlier sends are done.
    async fn drain(&self, timeout: Duration) -> Result<OwnedSemaphorePermit> {
        let permits = self.inner.permits.clone();
        match tokio::time::timeout(
            timeout,
            permits.acquire_many_owned(self.inner.max_in_flight),
        )
        .await
        {
            Ok(Ok(all)) => Ok(all),
            Ok(Err(_closed)) => Err(Error::Closed),
            Err(_elapsed) => Err(Error::kafka(KafkaError::Flush(
                RDKafkaErrorCode::OperationTimedOut,
            ))),
        }
    }

    async fn flush_kafka(&self, timeout: Duration) -> Result<()> {
        let kafka = self.inner.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.flush(timeout))
            .await
            .map_err(|_| Error::Closed)?
            .map_err(Error::kafka)
    }

    /// Validate, wait for a permit, then allocate and enqueue in the session's order. The
    /// [`Pending`] holds the permit until the delivery report, so the in-flight bound holds even if
    /// the caller stops waiting.
    ///
    /// A session's sends take turns, so Kafka order equals seq order. A turn serves every send
    /// of the session that queued while the previous turn ran (group commit): one seq call for
    /// all of them ([`SeqAllocator::allocate_many`]), then each is handed to librdkafka in seq
    /// order. An idle session's send starts a turn at once, alone. Turns run in a task, so a send
    /// is produced even if its caller stops waiting (its `client_msg_id` makes a retry
    /// identical).
    async fn enqueue(&self, message: NewMessage) -> Result<Pending> {
        let inner = &*self.inner;
        message.validate(&inner.limits)?;
        inner.clock.check()?;
        let permit = self.permit().await?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let session_id = message.session_id.clone();
        let waiting = Waiting {
            message,
            permit,
            reply,
        };
        if let Some(first) = inner.turns.queue_or_lead(&session_id, waiting) {
            // Turns run in a task of their own, never in a caller's future: a caller that stops
            // waiting cannot leave a seq allocated but not produced while later turns go on.
            // Without a runtime the drain is dropped unrun, and the send fails as closed.
            let (producer, sid) = (self.clone(), session_id.clone());
            let serve = move |batch: Vec<Waiting>| {
                let (producer, sid) = (producer.clone(), sid.clone());
                async move { producer.turn(&sid, batch).await }
            };
            inner
                .turns
                .spawn_drain(&session_id, vec![first], TURN_BATCH, serve);
        }
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// One turn: the sends in `batch` (all of `session_id`), each answered with its [`Pending`].
    async fn turn(&self, session_id: &str, batch: Vec<Waiting>) {
        let (sends, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|w| ((w.message, w.permit), w.reply))
            .unzip();
        let results = self.produce_in_order(session_id, sends).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that went away: its `Pending` drops and waits for the report itself.
            let _ = reply.send(result);
        }
    }

    /// One turn: allocates the seqs of `sends` (all of `session_id`) in one go and hands the
    /// records to librdkafka in that order. Result `i` belongs to send `i`.
    async fn produce_in_order(
        &self,
        session_id: &str,
        sends: Vec<(NewMessage, OwnedSemaphorePermit)>,
    ) -> Vec<Result<Pending>> {
        let inner = &*self.inner;
        let requests: Vec<AllocRequest> = sends
            .iter()
            .map(|(message, _)| AllocRequest {
                client_msg_id: message.client_msg_id.clone(),
                sender_id: message.sender_id.clone(),
                fingerprint: fingerprint(message),
                candidate_msg_id: uuid::Uuid::now_v7().to_string(),
                // Stamped in turn order, so server times increase with seqs.
                server_time_us: inner.clock.clock().now_us(),
            })
            .collect();
        let allocations = inner.seq.allocate_many(session_id, &requests).await;
        sends
            .into_iter()
            .zip(allocations)
            .map(|((message, permit), alloc)| {
                self.produce(message, alloc.map_err(Error::from_allocation)?, permit)
            })
            .collect()
    }

    /// Builds the message from `new` and its allocation, encodes it and hands it to librdkafka.
    fn produce(
        &self,
        new: NewMessage,
        alloc: Allocation,
        permit: OwnedSemaphorePermit,
    ) -> Result<Pending> {
        let inner = &*self.inner;
        if alloc.duplicate {
            let now = inner.clock.clock().now_us();
            let age = Duration::from_micros(now.saturating_sub(alloc.server_time_us).max(0) as u64);
            if age > inner.reproduce_within {
                return Err(Error::Settled {
                    seq: alloc.seq,
                    msg_id: alloc.msg_id,
                    age,
                });
            }
        }
        let message = new.assign(alloc.msg_id.clone(), alloc.seq, alloc.server_time_us);
        let flight = self.hand_over(&message, permit)?;
        Ok(Pending { alloc, flight })
    }

    /// Encodes `message` and hands it to librdkafka, keyed by its session (so it follows the
    /// session's earlier records on one partition), stamped with its version's time:
    /// deterministic, so a re-produced duplicate is the identical record. `permit` is held until
    /// the delivery report.
    pub(crate) fn hand_over(
        &self,
        message: &ChatMessage,
        permit: OwnedSemaphorePermit,
    ) -> Result<InFlight> {
        let inner = &*self.inner;
        let payload = inner.codec.encode(message).map_err(Error::Encode)?;
        let stamp_us = message.version() & !chatlog_schemas::FINAL_VERSION_BIT;
        let mut record = FutureRecord::to(&inner.topic)
            .key(message.session_id.as_bytes())
            .payload(&payload)
            .timestamp(stamp_us / 1000);
        let fingerprint;
        if let Some(fp) = &inner.schema_header {
            // A mutation is written under v3: name the schema it was written with.
            fingerprint = if message.is_mutated() {
                format!("{:016x}", inner.codec.fingerprint(SchemaVersion::V3))
            } else {
                fp.clone()
            };
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: SCHEMA_HEADER,
                value: Some(fingerprint.as_bytes()),
            }));
        }
        let delivery: DeliveryFuture = inner
            .kafka
            .send_result(record)
            .map_err(|(e, _record)| Error::kafka(e))?;
        Ok(InFlight {
            delivery: Some(delivery),
            permit: Some(permit),
        })
    }
}

impl InFlight {
    /// Waits for the delivery report: the record's partition and offset once Kafka has it.
    pub(crate) async fn delivered(&mut self) -> Result<(i32, i64)> {
        // Awaited in place: if this future is dropped meanwhile, `self` (still holding the delivery
        // and the permit) is dropped with it and its `Drop` takes over the wait.
        let report = match self.delivery.as_mut() {
            Some(delivery) => delivery.await,
            None => return Err(Error::Closed),
        };
        self.delivery = None;
        self.permit = None;
        match report {
            Ok(Ok(d)) => Ok((d.partition, d.offset)),
            Ok(Err((e, _message))) => Err(Error::kafka(e)),
            // The client was dropped, or the runtime is shutting down.
            Err(_canceled) => Err(Error::Closed),
        }
    }
}

impl Pending {
    async fn finish(mut self) -> Result<Sent> {
        let (partition, offset) = self.flight.delivered().await?;
        Ok(Sent {
            msg_id: std::mem::take(&mut self.alloc.msg_id),
            seq: self.alloc.seq,
            server_time_us: self.alloc.server_time_us,
            partition,
            offset,
            duplicate: self.alloc.duplicate,
        })
    }
}

fn observe(result: &Result<Sent>, start: Instant) {
    let label = match result {
        Ok(_) => "ok",
        Err(Error::Invalid(_)) => "invalid",
        Err(_) => "error",
    };
    metrics::counter!(crate::metrics::RECORDS, "result" => label).increment(1);
    metrics::histogram!(crate::metrics::SEND_DURATION).record(start.elapsed().as_secs_f64());
}

/// What a retry must repeat, hashed: the sender is part of the idempotency key itself, the
/// server-assigned fields and the client's send time (a client may stamp a retry anew) are not
/// part of it. SHA-256 of length-prefixed fields, 16 bytes in hex.
fn fingerprint(m: &NewMessage) -> String {
    let mut input = Vec::with_capacity(64 + m.content.len());
    let mut field = |bytes: &[u8]| {
        input.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        input.extend_from_slice(bytes);
    };
    field(b"chatlog-fingerprint-v1");
    field(m.session_type.symbol().as_bytes());
    field(m.content_type.symbol().as_bytes());
    field(&m.content);
    for (k, v) in &m.ext {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    // The hasher, not `openssl::sha::sha256`: on OpenSSL 3 that one-shot fetches the digest's
    // implementation on every call (EVP_Q_digest), and the hex was a `format!` per byte — with
    // them this function was 6.7 % of the sending process's samples in P3 (`p3-library`).
    let mut hasher = openssl::sha::Sha256::new();
    hasher.update(&input);
    let digest = hasher.finish();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(32);
    for b in &digest[..16] {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    hex
}

/// Refuses `config.limits` (and the largest record they allow) above those any consumer of the
/// topic published; with none published (or the table unreadable), compares with the consumer
/// defaults and only warns.
async fn check_consumer_limits(
    config: &ProducerConfig,
    session: &Session,
    keyspace: &str,
) -> Result<()> {
    let largest = max_encoded_len(&config.limits);
    let above = |limits: &Limits, max_record_bytes: usize| {
        let mut above = config.limits.exceeding(limits);
        if largest > max_record_bytes {
            above.push(format!(
                "largest encoded message = {largest} bytes > batch.max_record_bytes = \
                 {max_record_bytes}"
            ));
        }
        above
    };
    let published = match chatlog_store::limits::read(session, keyspace, &config.topic).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the consumers' limits (consumer_limits)");
            Vec::new()
        }
    };
    if published.is_empty() {
        let above = above(
            &Limits::default(),
            chatlog_schemas::DEFAULT_MAX_ENCODED_BYTES,
        );
        if !above.is_empty() {
            tracing::warn!(
                topic = %config.topic,
                above = ?above,
                "no consumer has published its limits for this topic; the producer's limits are \
                 above the consumer defaults: make sure the consumers are configured for them"
            );
        }
        return Ok(());
    }
    for p in published {
        let above = above(&p.limits, p.max_record_bytes);
        if !above.is_empty() {
            return Err(Error::LimitsAboveConsumer {
                topic: config.topic.clone(),
                instance: p.instance,
                published_at_ms: p.published_at_ms,
                above,
            });
        }
    }
    Ok(())
}

/// An upper bound of the encoded size of any message within `limits` (header, every field at its
/// largest, varint length prefixes), so valid messages never fail encoding as oversize.
pub fn max_encoded_len(limits: &Limits) -> usize {
    const VARINT: usize = 10;
    let ids = 4 * (limits.max_id_bytes + VARINT);
    let msg_id = 36 + VARINT;
    let scalars = 6 * VARINT; // session_type, seq, content_type, send_time, server_time, ext count
    let ext = limits.max_ext_bytes + limits.max_ext_entries * 2 * VARINT + 2 * VARINT;
    // v3's fields of a mutated message: reply_to_seq, edited, state, mutated_at, edit_count and
    // mutated_by (an id).
    let mutation = 5 * VARINT + limits.max_id_bytes + VARINT;
    chatlog_schemas::HEADER_LEN
        + ids
        + msg_id
        + scalars
        + limits.max_content_bytes
        + VARINT
        + ext
        + mutation
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chatlog_schemas::{ChatMessage, ContentType, SessionType};

    use super::*;

    /// The fingerprint is stored in idempotency records: a retry sent by another version of the
    /// library must hash to the same value. Pinned to SHA-256 computed outside this code
    /// (Python's hashlib over the same length-prefixed fields).
    #[test]
    fn the_fingerprint_is_the_pinned_sha256_prefix() {
        let m = NewMessage {
            client_msg_id: "c-1".into(),
            session_id: "s-1".into(),
            session_type: SessionType::Group,
            sender_id: "u-1".into(),
            content_type: ContentType::Text,
            content: b"hello".to_vec(),
            send_time_ms: 1,
            ext: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        };
        assert_eq!(fingerprint(&m), "3573898e4f7001294b71bd1a3ad738cd");
        let other = NewMessage {
            content: b"hello!".to_vec(),
            ..m
        };
        assert_ne!(fingerprint(&other), "3573898e4f7001294b71bd1a3ad738cd");
    }

    #[test]
    fn the_largest_valid_message_fits_the_codec() {
        let limits = Limits {
            max_content_bytes: 1000,
            max_id_bytes: 20,
            max_ext_entries: 3,
            max_ext_bytes: 60,
            ..Limits::default()
        };
        let id = "x".repeat(20);
        let ext = (0..3)
            .map(|i| (format!("k{i}"), "v".repeat(18)))
            .collect::<BTreeMap<_, _>>();
        let m = ChatMessage {
            msg_id: id.clone(),
            client_msg_id: id.clone(),
            session_id: id.clone(),
            session_type: SessionType::System,
            seq: chatlog_schemas::MAX_SEQ,
            sender_id: id,
            content_type: ContentType::Unknown,
            content: vec![0xFF; 1000],
            send_time_ms: i64::MAX,
            server_time_us: i64::MAX,
            ext,
            state: Default::default(),
        };
        m.validate(&limits).unwrap();
        let codec = Codec::builder()
            .limits(limits)
            .max_encoded_bytes(max_encoded_len(&limits))
            .build()
            .unwrap();
        let bytes = codec.encode(&m).unwrap();
        assert!(bytes.len() <= max_encoded_len(&limits));
        // Edited: v3, with every mutation field at its largest.
        let edited = ChatMessage {
            server_time_us: (1 << 61) - 1,
            state: chatlog_schemas::MessageState::Edited {
                at_us: chatlog_schemas::FINAL_VERSION_BIT - 1,
                count: i32::MAX as u32,
                by: "y".repeat(20),
            },
            ..m
        };
        edited.validate(&limits).unwrap();
        let bytes = codec.encode(&edited).unwrap();
        assert!(bytes.len() <= max_encoded_len(&limits));
    }
}
