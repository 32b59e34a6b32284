//! Poison records: produced raw with rdkafka to the load's topic, spread over the run, each
//! recorded with what the DLQ must show for it.

use std::collections::BTreeMap;
use std::time::Duration;

use chatlog_schemas::{ChatMessage, Codec, ContentType, SessionType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::load::Load;
use crate::record::{PoisonRecord, payload_hash, sha256_hex};

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

/// Every `HUGE_EVERY`-th poison record is `huge`: [`HUGE_BYTES`] produced lz4-compressed, which
/// the broker takes (its limit applies to the compressed batch) but no DLQ copy of it fits.
pub const HUGE_EVERY: usize = 50;

/// The size of a `huge` poison value: 2 MiB.
pub const HUGE_BYTES: usize = 2 * 1024 * 1024;

/// A `huge` poison value: compressible text (lz4 takes it far below the broker's 1 MB limit).
fn huge_payload(i: usize) -> Vec<u8> {
    let line = format!("chaos huge poison {i}: 2 MiB of compressible text. ");
    line.bytes().cycle().take(HUGE_BYTES).collect()
}

/// Produces `count` poison records to `topic`, spread evenly over `over`, never while `load` holds
/// its sends back ([`Load::hold`]); returns them (plus the number of retried productions).
pub async fn poison(
    kafka: &str,
    topic: &str,
    run: &str,
    count: usize,
    over: Duration,
    seed: u64,
    load: Load,
) -> anyhow::Result<(Vec<PoisonRecord>, usize)> {
    let events = load.events().clone();
    let mut gate = load.gate();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5")
        .create()?;
    // `huge` records: lz4, and a client limit above their uncompressed size (librdkafka checks
    // it before compressing; the broker checks the compressed batch).
    let lz4: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "300000")
        .set("compression.type", "lz4")
        .set("message.max.bytes", (2 * HUGE_BYTES).to_string())
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
        // Held back with the messages (a poll zombie waits for an idle topic).
        let _ = gate.wait_for(|open| *open).await;
        let (kind, reasons) = if i % HUGE_EVERY == HUGE_EVERY / 2 {
            ("huge", &["oversize"][..])
        } else {
            POISON_KINDS[rng.random_range(0..POISON_KINDS.len())]
        };
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
            "huge" => Some(huge_payload(i)),
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
                    state: Default::default(),
                };
                let mut b = codec.encode(&m)?;
                if kind == "truncated" {
                    b.truncate(b.len() - 7);
                }
                Some(b)
            }
            _ => None, // empty
        };
        let payload_hash = payload.as_deref().map(payload_hash);
        let payload_len = payload.as_ref().map_or(0, Vec::len);
        let payload_sha256 = payload.as_deref().map(sha256_hex);
        let producer = if kind == "huge" { &lz4 } else { &producer }.clone();
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
                                payload_len,
                                payload_sha256,
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
