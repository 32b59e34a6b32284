//! Stage 1: turn Kafka records into messages, or into poison with a reason. Never fails, never
//! panics: every record ends up either persisted or in the DLQ.

use std::sync::Arc;

use chatlog_schemas::{ChatMessage, Codec};

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Topic (shared by the records of a batch: no string per record).
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A record read from Kafka (owned: the batch outlives the poll that read it).
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it came from.
    pub origin: Origin,
    /// Its key (the producer sets `session_id`).
    pub key: Option<Vec<u8>>,
    /// Its value (Avro single-object bytes).
    pub payload: Option<Vec<u8>>,
}

impl Record {
    /// Bytes of its key and value.
    pub fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// A record that decoded into a valid message.
#[derive(Debug, Clone)]
pub struct Good {
    /// Where it came from.
    pub origin: Origin,
    /// The message.
    pub message: ChatMessage,
    /// The record's bytes as written (any known schema version); kept as-is in the window.
    pub avro: Vec<u8>,
}

impl Good {
    /// Bytes of its record's key (the session id) and value.
    pub fn bytes(&self) -> usize {
        self.message.session_id.len() + self.avro.len()
    }
}

/// A record that cannot be persisted, with why.
#[derive(Debug, Clone)]
pub struct Poison {
    /// The record.
    pub record: Record,
    /// A short stable label (`bad_magic`, `unknown_fingerprint`, `oversize`, `key_mismatch`…),
    /// used as DLQ header and metric label.
    pub reason: &'static str,
    /// A human-readable explanation.
    pub detail: String,
}

/// Either outcome of decoding one record.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// Persist it.
    Good(Good),
    /// Send it to the DLQ.
    Poison(Poison),
}

/// Now, in microseconds since the Unix epoch (the unit of `server_time`).
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Decodes one record. The size is checked by the codec before any parsing (its maximum encoded
/// size is `batch.max_record_bytes`, see [`Config::codec`](crate::Config::codec)); its
/// [`Limits`](chatlog_schemas::Limits) (the consumer's `[limits]`) after decoding, including
/// `max_skew`: a `server_time` further ahead of this host's clock goes to the DLQ as `skew`.
pub fn decode(codec: &Codec, record: Record) -> Decoded {
    decode_at(codec, record, now_us())
}

/// The wall clock of the skew check.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// This instant (µs since the Unix epoch), whatever the time (tests).
    Fixed(i64),
    /// A reading of the clock, read again when a record looks ahead of it. The check only bounds
    /// `server_time` from above, so a record it accepts with an older reading it accepts with a
    /// fresher one too: the verdicts are those of a reading per record, without the clock call
    /// per record.
    Cached(i64),
}

impl Clock {
    /// A [`Clock::Cached`] read now.
    pub fn cached() -> Clock {
        Clock::Cached(now_us())
    }

    fn now_us(&self) -> i64 {
        match *self {
            Clock::Fixed(t) | Clock::Cached(t) => t,
        }
    }
}

/// [`decode`] with the clock read by the caller (`now_us`, µs since the Unix epoch). A good
/// record's value moves into [`Good::avro`] (no copy).
pub fn decode_at(codec: &Codec, record: Record, now_us: i64) -> Decoded {
    let mut clock = Clock::Fixed(now_us);
    match check(
        codec,
        record.key.as_deref(),
        record.payload.as_deref(),
        &mut clock,
    ) {
        Ok(message) => Decoded::Good(Good {
            origin: record.origin,
            message,
            avro: record.payload.unwrap_or_default(),
        }),
        Err((reason, detail)) => Decoded::Poison(Poison {
            record,
            reason,
            detail,
        }),
    }
}

/// [`decode_at`] of a record still in the Kafka client's memory (the consumer's path): decoded
/// from the borrowed bytes, which are copied once — into [`Good::avro`], or into the poison's
/// [`Record`] for the DLQ.
pub fn decode_borrowed(
    codec: &Codec,
    origin: Origin,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    clock: &mut Clock,
) -> Decoded {
    match check(codec, key, payload, clock) {
        Ok(message) => Decoded::Good(Good {
            origin,
            message,
            avro: payload.unwrap_or_default().to_vec(),
        }),
        Err((reason, detail)) => Decoded::Poison(Poison {
            record: Record {
                origin,
                key: key.map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
            },
            reason,
            detail,
        }),
    }
}

/// The message of a record, or the reason and detail it is poison.
fn check(
    codec: &Codec,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    clock: &mut Clock,
) -> Result<ChatMessage, (&'static str, String)> {
    let Some(payload) = payload else {
        return Err(("empty", "record has no value".into()));
    };
    // The producer keys every record by its session: a keyless record was partitioned by chance,
    // so the order of its session is not kept (and nothing can check which session it claims).
    let Some(key) = key else {
        return Err((
            "no_key",
            "record has no key (chatlog producers key every record by session_id)".into(),
        ));
    };
    let message = codec
        .decode(payload)
        .map_err(|e| (e.reason(), e.to_string()))?;
    // The key decides the partition, hence the order of a session: a record keyed for another
    // session was produced wrongly and would break ordering guarantees.
    if key != message.session_id.as_bytes() {
        let detail = format!(
            "record key {:?} differs from session_id {:?}",
            String::from_utf8_lossy(key),
            message.session_id
        );
        return Err(("key_mismatch", detail));
    }
    // A future server time would be written as the rows' write timestamp (no later correction
    // could win over it) and win every version comparison in the window; so would a future
    // mutation time (the version of a mutated message). The past is fine: an old record replayed
    // after an outage is old, not skewed.
    let newest_us = message
        .state
        .mutated_at_us()
        .map_or(message.server_time_us, |at| at.max(message.server_time_us));
    let limits = codec.limits();
    if let Clock::Cached(at) = clock
        && limits.check_server_time(newest_us, *at).is_err()
    {
        // Ahead of the cached reading: read the clock again before calling it skew.
        *at = now_us();
    }
    if let Err(e) = limits.check_server_time(newest_us, clock.now_us()) {
        let detail = format!("{e} (seq {} of {:?})", message.seq, message.session_id);
        return Err(("skew", detail));
    }
    Ok(message)
}

/// A valid message for unit tests.
#[cfg(test)]
pub(crate) fn test_message(session_id: &str, seq: i64, server_time_us: i64) -> ChatMessage {
    ChatMessage {
        msg_id: format!("m{seq}"),
        client_msg_id: format!("c{seq}"),
        session_id: session_id.into(),
        session_type: chatlog_schemas::SessionType::Group,
        seq,
        sender_id: "u1".into(),
        content_type: chatlog_schemas::ContentType::Text,
        content: b"hi".to_vec(),
        send_time_ms: 1,
        server_time_us,
        ext: Default::default(),
        state: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, payload: Option<Vec<u8>>) -> Record {
        Record {
            origin: Origin {
                topic: "t".into(),
                partition: 0,
                offset: 7,
            },
            key: key.map(|k| k.as_bytes().to_vec()),
            payload,
        }
    }

    fn message() -> ChatMessage {
        test_message("s1", 1, 1000)
    }

    fn reason(d: Decoded) -> &'static str {
        match d {
            Decoded::Poison(p) => p.reason,
            Decoded::Good(g) => panic!("expected poison, got {:?}", g.message),
        }
    }

    #[test]
    fn good_record_decodes() {
        let codec = Codec::default();
        let bytes = codec.encode(&message()).unwrap();
        match decode(&codec, record(Some("s1"), Some(bytes.clone()))) {
            Decoded::Good(g) => {
                assert_eq!(g.message, message());
                assert_eq!(g.avro, bytes);
            }
            Decoded::Poison(p) => panic!("{p:?}"),
        }
    }

    #[test]
    fn every_bad_record_gets_a_reason() {
        let codec = Codec::default();
        let good = codec.encode(&message()).unwrap();
        assert_eq!(reason(decode(&codec, record(Some("s1"), None))), "empty");
        assert_eq!(
            reason(decode(
                &Codec::new(10),
                record(Some("s1"), Some(good.clone()))
            )),
            "oversize"
        );
        assert_eq!(
            reason(decode(&codec, record(Some("other"), Some(good.clone())))),
            "key_mismatch"
        );
        assert_eq!(
            reason(decode(
                &codec,
                record(Some("s1"), Some(b"garbage!!!!!".to_vec()))
            )),
            "bad_magic"
        );
        assert_eq!(
            reason(decode(&codec, record(None, Some(good.clone())))),
            "no_key",
            "a valid message without a key"
        );
        let mut unknown = good.clone();
        unknown[2] ^= 0xff;
        assert_eq!(
            reason(decode(&codec, record(Some("s1"), Some(unknown)))),
            "unknown_fingerprint"
        );
        let truncated = good[..good.len() - 3].to_vec();
        assert!(matches!(
            decode(&codec, record(Some("s1"), Some(truncated))),
            Decoded::Poison(_)
        ));
    }

    #[test]
    fn skew_is_only_a_server_time_too_far_in_the_future() {
        let codec = Codec::default();
        let now = 1_700_000_000_000_000;
        let max = codec.limits().max_skew_us();
        let at = |server_time_us: i64| {
            let bytes = codec
                .encode(&test_message("s1", 1, server_time_us))
                .unwrap();
            decode_at(&codec, record(Some("s1"), Some(bytes)), now)
        };
        assert!(matches!(at(now + max), Decoded::Good(_)));
        // A year old: a replay after an outage, not skew.
        assert!(matches!(at(now - 365 * 86_400_000_000), Decoded::Good(_)));
        match at(now + max + 1) {
            Decoded::Poison(p) => {
                assert_eq!(p.reason, "skew");
                assert!(p.detail.contains("ahead"), "{}", p.detail);
            }
            Decoded::Good(g) => panic!("accepted {:?}", g.message),
        }
    }

    /// A consumer of a release before mutations reads v1 and v2 only: a mutation record (v3)
    /// goes to its DLQ as `unknown_fingerprint` (replayed once it is upgraded: the highest version
    /// wins whatever the order), while messages as sent (v1) still decode.
    #[test]
    fn an_older_release_sends_a_recall_or_edit_record_to_the_dlq_and_still_reads_v1() {
        use chatlog_schemas::{MessageState, SchemaVersion};
        let current = Codec::default();
        let older = Codec::builder()
            .readable_versions(&[SchemaVersion::V1, SchemaVersion::V2])
            .build()
            .unwrap();
        let sent = message();
        let at_us = sent.server_time_us + 1;
        let recalled = ChatMessage {
            content: Vec::new(),
            ext: Default::default(),
            state: MessageState::Recalled {
                at_us,
                by: sent.sender_id.clone(),
            },
            ..sent.clone()
        };
        let edited = ChatMessage {
            content: b"edited".to_vec(),
            state: MessageState::Edited {
                at_us,
                count: 1,
                by: sent.sender_id.clone(),
            },
            ..sent.clone()
        };
        for mutated in [recalled, edited] {
            let bytes = current.encode(&mutated).unwrap();
            assert_eq!(
                reason(decode(&older, record(Some("s1"), Some(bytes.clone())))),
                "unknown_fingerprint",
                "{:?}",
                mutated.state
            );
            match decode(&current, record(Some("s1"), Some(bytes))) {
                Decoded::Good(g) => assert_eq!(g.message, mutated),
                Decoded::Poison(p) => panic!("the current release refused {p:?}"),
            }
        }
        let bytes = current.encode(&sent).unwrap();
        match decode(&older, record(Some("s1"), Some(bytes))) {
            Decoded::Good(g) => assert_eq!(g.message, sent),
            Decoded::Poison(p) => panic!("the older release refused a message as sent: {p:?}"),
        }
    }

    /// The consumer decodes records from the Kafka client's memory: same verdicts, same bytes
    /// kept (the window member is built from them), same DLQ copy.
    #[test]
    fn borrowed_and_owned_decoding_agree() {
        let codec = Codec::default();
        let good = codec.encode(&message()).unwrap();
        let cases: Vec<(Option<&str>, Option<Vec<u8>>)> = vec![
            (Some("s1"), Some(good.clone())),
            (Some("s1"), None),
            (None, Some(good.clone())),
            (Some("other"), Some(good.clone())),
            (Some("s1"), Some(b"garbage!!!!!".to_vec())),
            (Some("s1"), Some(good[..good.len() - 3].to_vec())),
        ];
        let now = now_us();
        for (key, payload) in cases {
            let r = record(key, payload);
            let borrowed = decode_borrowed(
                &codec,
                r.origin.clone(),
                r.key.as_deref(),
                r.payload.as_deref(),
                &mut Clock::Fixed(now),
            );
            match (decode_at(&codec, r.clone(), now), borrowed) {
                (Decoded::Good(a), Decoded::Good(b)) => {
                    assert_eq!(a.message, b.message);
                    assert_eq!(a.avro, b.avro);
                    assert_eq!(b.avro, good, "the record's bytes, as read");
                    assert_eq!(a.origin, b.origin);
                }
                (Decoded::Poison(a), Decoded::Poison(b)) => {
                    assert_eq!((a.reason, &a.detail), (b.reason, &b.detail));
                    assert_eq!(b.record.key, r.key);
                    assert_eq!(b.record.payload, r.payload);
                    assert_eq!(b.record.origin, r.origin);
                }
                (a, b) => panic!("owned {a:?} vs borrowed {b:?}"),
            }
        }
    }

    /// A cached clock reading gives the verdicts of a fresh one: a record ahead of an old reading
    /// is checked against the clock read again, and a record truly ahead is still skew.
    #[test]
    fn a_cached_clock_is_read_again_before_a_record_is_called_skew() {
        let codec = Codec::default();
        let max = codec.limits().max_skew_us();
        let real = now_us();
        let rec = |server_time_us: i64| {
            let bytes = codec
                .encode(&test_message("s1", 1, server_time_us))
                .unwrap();
            record(Some("s1"), Some(bytes))
        };
        let borrowed = |r: &Record, clock: &mut Clock| {
            decode_borrowed(
                &codec,
                r.origin.clone(),
                r.key.as_deref(),
                r.payload.as_deref(),
                clock,
            )
        };
        // A reading an hour old: a message of now is ahead of it, yet not skewed.
        let mut clock = Clock::Cached(real - 3_600_000_000);
        assert!(matches!(borrowed(&rec(real), &mut clock), Decoded::Good(_)));
        assert!(clock.now_us() >= real, "read again");
        let mut clock = Clock::Cached(real - 3_600_000_000);
        match borrowed(&rec(real + max + 60_000_000), &mut clock) {
            Decoded::Poison(p) => assert_eq!(p.reason, "skew"),
            Decoded::Good(g) => panic!("accepted {:?}", g.message),
        }
        // A fixed clock is never read again (decode_at's instant).
        let mut fixed = Clock::Fixed(real - 3_600_000_000);
        match borrowed(&rec(real), &mut fixed) {
            Decoded::Poison(p) => assert_eq!(p.reason, "skew"),
            Decoded::Good(g) => panic!("accepted {:?}", g.message),
        }
    }

    #[test]
    fn seq_above_2_pow_53_is_invalid() {
        let codec = Codec::default();
        let bytes = codec
            .encode_value(
                codec.fingerprint_v1(),
                chatlog_schemas::to_value_v1(&test_message("s1", chatlog_schemas::MAX_SEQ + 1, 1)),
            )
            .unwrap();
        match decode(&codec, record(Some("s1"), Some(bytes))) {
            Decoded::Poison(p) => {
                assert_eq!(p.reason, "invalid");
                assert!(p.detail.contains("2^53"), "{}", p.detail);
            }
            Decoded::Good(g) => panic!("accepted {:?}", g.message),
        }
    }
}
