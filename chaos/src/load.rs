//! The load: messages sent through the real producer library (`chatlog_producer::Producer`) the
//! way Logic sends them, and poison records produced raw with rdkafka to the same topic. Every
//! acknowledged send and every poison record is recorded: that history is what the checker holds
//! the stores to.
//!
//! - Each session sends sequentially (the next message after the previous one's ack), so within a
//!   session the acknowledgement order is the allocation order; sessions run concurrently, with at
//!   most `concurrency` sends in flight and paced to `rate` messages/s overall.
//! - A failed send is retried with the same `client_msg_id` (backoff 0.2 → 5 s, for up to
//!   [`GIVE_UP`]), as Logic does: the producer's idempotency record gives the same seq back.
//! - A share of acknowledged messages is sent a second time right away (a client retry after a
//!   lost ack): it must return the same seq and msg_id, marked duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatlog_producer::{NewMessage, Producer};
use chatlog_schemas::{ChatMessage, Codec, ContentType, SessionType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::sync::{Mutex, Semaphore};

use crate::events::Events;

/// How long one message is retried before the harness gives up on it (it is then "unacked").
pub const GIVE_UP: Duration = Duration::from_secs(300);

/// The messages of a run: deterministic from (session, index).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Run id, the prefix of every session id.
    pub run: String,
    /// Sessions.
    pub sessions: usize,
    /// Messages per session.
    pub per_session: Vec<usize>,
    /// Base of `send_time_ms`.
    pub base_ms: i64,
}

impl Plan {
    /// `messages` spread over `sessions` as evenly as possible.
    pub fn new(run: &str, messages: usize, sessions: usize) -> Plan {
        let per_session = (0..sessions)
            .map(|s| messages / sessions + usize::from(s < messages % sessions))
            .collect();
        Plan {
            run: run.to_owned(),
            sessions,
            per_session,
            base_ms: chatlog::now_ms(),
        }
    }

    /// The id of session `s`.
    pub fn session_id(&self, s: usize) -> String {
        format!("{}-s{s}", self.run)
    }

    /// The client_msg_id of message `j` (unique within its session).
    pub fn client_msg_id(j: usize) -> String {
        format!("cm-{j}")
    }

    /// The message index a client_msg_id names.
    pub fn index_of(client_msg_id: &str) -> Option<usize> {
        client_msg_id.strip_prefix("cm-")?.parse().ok()
    }

    /// The message Logic sends as message `j` of session `s`.
    pub fn message(&self, s: usize, j: usize) -> NewMessage {
        let filler = (s * 7919 + j * 104_729) % 160;
        let mut content = format!("chaos {} s{s} #{j} ", self.run).into_bytes();
        content.extend((0..filler).map(|i| b'a' + (i % 26) as u8));
        let mut ext = BTreeMap::new();
        if j.is_multiple_of(10) {
            ext.insert("chaos".to_owned(), format!("{s}/{j}"));
        }
        NewMessage {
            client_msg_id: Self::client_msg_id(j),
            session_id: self.session_id(s),
            session_type: if s.is_multiple_of(2) {
                SessionType::Group
            } else {
                SessionType::Single
            },
            sender_id: format!("user-{}", (s + j) % 13),
            content_type: ContentType::Text,
            content,
            send_time_ms: self.base_ms + j as i64,
            ext,
        }
    }

    /// The complete message the producer stored for an acknowledged send.
    pub fn stored(&self, ack: &Ack) -> ChatMessage {
        let m = self.message(ack.session, ack.index);
        ChatMessage {
            msg_id: ack.msg_id.clone(),
            client_msg_id: m.client_msg_id,
            session_id: m.session_id,
            session_type: m.session_type,
            seq: ack.seq,
            sender_id: m.sender_id,
            content_type: m.content_type,
            content: m.content,
            send_time_ms: m.send_time_ms,
            server_time_us: ack.server_time_us,
            ext: m.ext,
        }
    }
}

/// One acknowledged send.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    /// Session number.
    pub session: usize,
    /// Message number within the session.
    pub index: usize,
    /// Seq handed out.
    pub seq: i64,
    /// msg_id handed out.
    pub msg_id: String,
    /// Server time stamped (µs).
    pub server_time_us: i64,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Attempts it took (1 = no retry).
    pub attempts: u32,
    /// When the first attempt started (s since the run started).
    pub first_try_at: f64,
    /// When it was acknowledged (s since the run started).
    pub acked_at: f64,
    /// The producer said it was a duplicate of an earlier allocation (a retry whose earlier
    /// attempt had allocated).
    pub duplicate: bool,
}

/// A second send of an acknowledged message with the same client_msg_id.
#[derive(Debug, Clone, Serialize)]
pub struct Resend {
    /// Session number.
    pub session: usize,
    /// Message number.
    pub index: usize,
    /// The seq of the first ack.
    pub first_seq: i64,
    /// The seq this send got (must equal `first_seq`).
    pub seq: i64,
    /// Whether the msg_id equals the first ack's.
    pub same_msg_id: bool,
    /// Whether the producer marked it duplicate.
    pub duplicate: bool,
    /// When the first ack arrived (s since start).
    pub first_acked_at: f64,
    /// When this one was acknowledged.
    pub acked_at: f64,
}

/// A poison record produced raw.
#[derive(Debug, Clone, Serialize)]
pub struct PoisonRecord {
    /// Its key (unique per poison record).
    pub key: String,
    /// What is wrong with it.
    pub kind: &'static str,
    /// DLQ reasons the consumer may legitimately give it.
    pub reasons: &'static [&'static str],
    /// Partition it was written to.
    pub partition: i32,
    /// Offset it was written at.
    pub offset: i64,
    /// [`crate::check::payload_hash`] of its value (None: no value).
    pub payload_hash: Option<u64>,
}

/// What the load did.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Acknowledged sends, by session then index (None: never acknowledged).
    pub acks: Vec<Vec<Option<Ack>>>,
    /// Second sends of acknowledged messages.
    pub resends: Vec<Resend>,
    /// Failed attempts by reason (`kafka`, `allocation`, …).
    pub errors: BTreeMap<String, usize>,
    /// Failed attempts the producer called not retriable (retried anyway).
    pub not_retriable_errors: usize,
    /// A few error texts, for the report.
    pub error_examples: Vec<String>,
    /// Poison records produced (acknowledged).
    pub poison: Vec<PoisonRecord>,
    /// Poison records whose production failed and was retried (a retry may write it twice).
    pub poison_retries: usize,
}

struct Shared {
    plan: Plan,
    producer: Producer,
    events: Events,
    permits: Semaphore,
    ticket: AtomicU64,
    acked: AtomicU64,
    rate: f64,
    resend_ratio: f64,
    seed: u64,
    out: Mutex<LoadResult>,
}

/// Sends every message of `plan` (and the resends) through `producer`; returns the history.
pub async fn run(
    plan: Plan,
    producer: Producer,
    events: Events,
    concurrency: usize,
    rate: f64,
    resend_ratio: f64,
    seed: u64,
) -> LoadResult {
    let sessions = plan.sessions;
    let acks = plan.per_session.iter().map(|&n| vec![None; n]).collect();
    let shared = Arc::new(Shared {
        plan,
        producer,
        events,
        permits: Semaphore::new(concurrency),
        ticket: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        rate,
        resend_ratio,
        seed,
        out: Mutex::new(LoadResult {
            acks,
            ..LoadResult::default()
        }),
    });
    let start = tokio::time::Instant::now();
    let workers: Vec<_> = (0..sessions)
        .map(|s| {
            let shared = shared.clone();
            tokio::spawn(async move { session_worker(shared, s, start).await })
        })
        .collect();
    let progress = {
        let shared = shared.clone();
        let total: usize = shared.plan.per_session.iter().sum();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            tick.tick().await;
            loop {
                tick.tick().await;
                let acked = shared.acked.load(Ordering::Relaxed);
                shared
                    .events
                    .log(format!("load: {acked} of {total} acknowledged"));
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    progress.abort();
    let _ = progress.await;
    let shared = Arc::into_inner(shared).expect("workers are done");
    shared.out.into_inner()
}

async fn session_worker(shared: Arc<Shared>, s: usize, start: tokio::time::Instant) {
    let mut rng = StdRng::seed_from_u64(shared.seed ^ (s as u64).wrapping_mul(0x9E37_79B9));
    for j in 0..shared.plan.per_session[s] {
        let ticket = shared.ticket.fetch_add(1, Ordering::Relaxed);
        let due = start + Duration::from_secs_f64(ticket as f64 / shared.rate);
        tokio::time::sleep_until(due).await;
        let message = shared.plan.message(s, j);
        let first_try_at = shared.events.now();
        let Some((sent, attempts)) = send_with_retry(&shared, &message).await else {
            continue;
        };
        let ack = Ack {
            session: s,
            index: j,
            seq: sent.seq,
            msg_id: sent.msg_id.clone(),
            server_time_us: sent.server_time_us,
            partition: sent.partition,
            offset: sent.offset,
            attempts,
            first_try_at,
            acked_at: shared.events.now(),
            duplicate: sent.duplicate,
        };
        let resend = rng.random_bool(shared.resend_ratio);
        shared.out.lock().await.acks[s][j] = Some(ack.clone());
        shared.acked.fetch_add(1, Ordering::Relaxed);
        if resend && let Some((again, _)) = send_with_retry(&shared, &message).await {
            shared.out.lock().await.resends.push(Resend {
                session: s,
                index: j,
                first_seq: ack.seq,
                seq: again.seq,
                same_msg_id: again.msg_id == ack.msg_id,
                duplicate: again.duplicate,
                first_acked_at: ack.acked_at,
                acked_at: shared.events.now(),
            });
        }
    }
}

async fn send_with_retry(
    shared: &Shared,
    message: &NewMessage,
) -> Option<(chatlog_producer::Sent, u32)> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = {
            let _permit = shared.permits.acquire().await.ok()?;
            shared.producer.send(message.clone()).await
        };
        match result {
            Ok(sent) => return Some((sent, attempts)),
            Err(e) => {
                let mut out = shared.out.lock().await;
                *out.errors.entry(e.reason().to_owned()).or_default() += 1;
                if !e.is_retriable() {
                    out.not_retriable_errors += 1;
                }
                if out.error_examples.len() < 10 {
                    out.error_examples.push(format!(
                        "{:.1}s {}: {e}",
                        shared.events.now(),
                        e.reason()
                    ));
                }
                drop(out);
                let hopeless = matches!(
                    e,
                    chatlog_producer::Error::Invalid(_)
                        | chatlog_producer::Error::Closed
                        | chatlog_producer::Error::Config(_)
                );
                if hopeless || started.elapsed() > GIVE_UP {
                    shared.events.log(format!(
                        "giving up on {}/{} after {attempts} attempts: {e}",
                        message.session_id, message.client_msg_id
                    ));
                    return None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The kinds of poison, with the DLQ reasons the consumer may give each.
const POISON_KINDS: [(&str, &[&str]); 6] = [
    ("garbage", &["bad_magic"]),
    ("unknown_fingerprint", &["unknown_fingerprint"]),
    ("oversize", &["oversize"]),
    ("truncated", &["truncated", "malformed"]),
    ("key_mismatch", &["key_mismatch"]),
    ("empty", &["empty"]),
];

/// Bytes above the consumers' `batch.max_record_bytes` (the harness configures 8 KiB).
pub const OVERSIZE_BYTES: usize = 16 * 1024;

/// Produces `count` poison records to `topic`, spread evenly over `over`; returns them (plus the
/// number of retried productions).
pub async fn poison(
    kafka: &str,
    topic: &str,
    run: &str,
    count: usize,
    over: Duration,
    seed: u64,
    events: Events,
) -> anyhow::Result<(Vec<PoisonRecord>, usize)> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5")
        .create()?;
    let codec = Codec::default();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x005E_ED0F_9015);
    let start = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(count);
    let mut retries = 0;
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..count {
        let due = start + over.mul_f64(i as f64 / count.max(1) as f64);
        // Keep acknowledging while waiting for the next one's time.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                Some(done) = pending.next(), if !pending.is_empty() => {
                    let (rec, tries): (PoisonRecord, usize) = done?;
                    retries += tries;
                    out.push(rec);
                }
            }
        }
        let (kind, reasons) = POISON_KINDS[rng.random_range(0..POISON_KINDS.len())];
        let key = format!("{run}-poison-{i}");
        let payload: Option<Vec<u8>> = match kind {
            "garbage" => {
                let mut b: Vec<u8> = (0..rng.random_range(1..200))
                    .map(|_| rng.random())
                    .collect();
                if b[0] == chatlog_schemas::MAGIC[0] {
                    b[0] = b'x';
                }
                Some(b)
            }
            "unknown_fingerprint" => {
                let mut b = chatlog_schemas::MAGIC.to_vec();
                b.extend((0..8).map(|_| rng.random::<u8>()));
                b.extend_from_slice(format!("chaos poison {i}").as_bytes());
                Some(b)
            }
            "oversize" => Some(vec![b'z'; OVERSIZE_BYTES]),
            "truncated" | "key_mismatch" => {
                let m = ChatMessage {
                    msg_id: format!("poison-{i}"),
                    client_msg_id: format!("poison-{i}"),
                    session_id: format!("{run}-poisonmsg-{i}"),
                    session_type: SessionType::Group,
                    seq: 1,
                    sender_id: "chaos".into(),
                    content_type: ContentType::Text,
                    content: format!("poison {i} with some content to cut").into_bytes(),
                    send_time_ms: chatlog::now_ms(),
                    server_time_us: chatlog::now_ms() * 1000,
                    ext: BTreeMap::new(),
                };
                let mut b = codec.encode(&m)?;
                if kind == "truncated" {
                    b.truncate(b.len() - 7);
                }
                Some(b)
            }
            _ => None, // empty
        };
        let payload_hash = payload.as_deref().map(crate::check::payload_hash);
        let producer = producer.clone();
        let events = events.clone();
        pending.push(async move {
            let mut tries = 0;
            loop {
                let mut record = FutureRecord::<str, [u8]>::to(topic).key(key.as_str());
                if let Some(p) = payload.as_deref() {
                    record = record.payload(p);
                }
                match producer.send(record, Duration::from_secs(60)).await {
                    Ok(d) => {
                        return Ok::<_, anyhow::Error>((
                            PoisonRecord {
                                key,
                                kind,
                                reasons,
                                partition: d.partition,
                                offset: d.offset,
                                payload_hash,
                            },
                            tries,
                        ));
                    }
                    Err((e, _)) => {
                        tries += 1;
                        events.log(format!("poison {key}: produce failed ({e}); retrying"));
                        anyhow::ensure!(tries < 30, "poison {key}: {e}");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        });
    }
    while let Some(done) = pending.next().await {
        let (rec, tries) = done?;
        retries += tries;
        out.push(rec);
    }
    Ok((out, retries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_spreads_messages_and_names_round_trip() {
        let plan = Plan::new("r", 10, 3);
        assert_eq!(plan.per_session, vec![4, 3, 3]);
        assert_eq!(Plan::index_of(&Plan::client_msg_id(42)), Some(42));
        assert_eq!(Plan::index_of("other"), None);
        // Deterministic: the checker rebuilds exactly what was sent.
        assert_eq!(plan.message(2, 7), plan.message(2, 7));
        assert_ne!(plan.message(2, 7).content, plan.message(2, 8).content);
        assert!(plan.message(1, 3).session_id.ends_with("-s1"));
    }
}
