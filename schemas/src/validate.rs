//! Semantic validation shared by the producer (before encoding) and the consumer (after
//! decoding): the schema says what a message looks like, [`Limits`] say what is acceptable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::model::{ChatMessage, ChatMessageV2, MessageState, NewMessage};

/// The largest seq (and `reply_to_seq`) a message may carry: 2^53. JavaScript clients read a
/// seq as an IEEE double, which holds every integer up to 2^53 exactly and no longer tells
/// 2^53 + 1 from 2^53; the allocator never hands out more, validation refuses more.
pub const MAX_SEQ: i64 = 1 << 53;

/// Limits a [`ChatMessage`] must respect. Every limit is inclusive (`len <= max` passes).
///
/// The same type is the `[limits]` section of the producer's and the consumer's configuration
/// (unknown keys refused, missing ones default, `max_skew` written like `"10s"`); a producer
/// refuses to start with limits above a consumer's (see `chatlog_store::limits`).
///
/// ```
/// use chatlog_schemas::Limits;
/// let strict = Limits { max_content_bytes: 4096, ..Limits::default() };
/// assert_eq!(strict.max_id_bytes, 128);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Maximum length of `content`, in bytes. Default 64 KiB.
    pub max_content_bytes: usize,
    /// Maximum length of each id field (`msg_id`, `client_msg_id`, `session_id`, `sender_id`), in
    /// bytes. Default 128.
    pub max_id_bytes: usize,
    /// Maximum number of entries in `ext`. Default 32.
    pub max_ext_entries: usize,
    /// Maximum total size of `ext` (sum of key and value lengths), in bytes. Default 4 KiB.
    pub max_ext_bytes: usize,
    /// The clock skew tolerated between any producer and any consumer. A consumer sends a record
    /// whose `server_time` is more than this ahead of its own clock to the DLQ (reason `skew`);
    /// a producer refuses to send while its clock is more than half of this away from the
    /// reference clock (Redis `TIME`), leaving the other half to the consumer's clock. Only the
    /// future is refused on the consumer: an old `server_time` is a legitimate replay. Default
    /// 10 s.
    #[serde(with = "humantime_serde")]
    pub max_skew: Duration,
}

impl Limits {
    /// The default limits: 64 KiB content, 128-byte ids, 32 ext entries, 4 KiB of ext, 10 s of
    /// clock skew.
    pub const DEFAULT: Limits = Limits {
        max_content_bytes: 64 * 1024,
        max_id_bytes: 128,
        max_ext_entries: 32,
        max_ext_bytes: 4 * 1024,
        max_skew: Duration::from_secs(10),
    };

    /// `max_skew` in microseconds (the unit of `server_time`).
    pub fn max_skew_us(&self) -> i64 {
        i64::try_from(self.max_skew.as_micros()).unwrap_or(i64::MAX)
    }

    /// Checks a message's `server_time` against the reader's clock `now_us`: more than
    /// [`max_skew`](Limits::max_skew) in the future is [`ValidationError::ServerTimeAhead`].
    /// The past is never refused (a record replayed after a long outage is old, not skewed).
    pub fn check_server_time(
        &self,
        server_time_us: i64,
        now_us: i64,
    ) -> Result<(), ValidationError> {
        let ahead_us = server_time_us.saturating_sub(now_us);
        if ahead_us > self.max_skew_us() {
            return Err(ValidationError::ServerTimeAhead {
                ahead: Duration::from_micros(ahead_us.unsigned_abs()),
                max: self.max_skew,
            });
        }
        Ok(())
    }

    /// The limits of `self` that are above those of `other`, each as `name = mine, above
    /// theirs`; empty when every limit is within `other`'s. A producer whose limits exceed a
    /// consumer's could acknowledge messages that consumer sends to the DLQ.
    pub fn exceeding(&self, other: &Limits) -> Vec<String> {
        let mut out = Vec::new();
        for (name, mine, theirs) in [
            (
                "max_content_bytes",
                self.max_content_bytes,
                other.max_content_bytes,
            ),
            ("max_id_bytes", self.max_id_bytes, other.max_id_bytes),
            (
                "max_ext_entries",
                self.max_ext_entries,
                other.max_ext_entries,
            ),
            ("max_ext_bytes", self.max_ext_bytes, other.max_ext_bytes),
        ] {
            if mine > theirs {
                out.push(format!("{name} = {mine} > {theirs}"));
            }
        }
        if self.max_skew > other.max_skew {
            out.push(format!(
                "max_skew = {:?} > {:?}",
                self.max_skew, other.max_skew
            ));
        }
        out
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Why a message is semantically invalid. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A required id field is the empty string.
    #[error("field `{field}` must not be empty")]
    EmptyId {
        /// Field name as in the schema, e.g. `"msg_id"`.
        field: &'static str,
    },
    /// `session_id` contains `}`. The session's Redis keys are `chatlog:{<session_id>}:…`, and
    /// Redis Cluster hashes what lies between the first `{` and the next `}`: a `}` inside the id
    /// would cut that hash tag short (or empty it), and the session's keys could land in
    /// different slots, where its scripts fail with CROSSSLOT.
    #[error("field `{field}` must not contain `}}` (it would end the Redis Cluster hash tag)")]
    HashTagBreaker {
        /// Field name as in the schema.
        field: &'static str,
    },
    /// An id field is longer than [`Limits::max_id_bytes`].
    #[error("field `{field}` is {len} bytes, over the limit of {max}")]
    IdTooLong {
        /// Field name as in the schema.
        field: &'static str,
        /// Actual length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `seq` is below 1 (seqs start at 1).
    #[error("field `seq` must be >= 1, got {seq}")]
    SeqNotPositive {
        /// The offending value.
        seq: i64,
    },
    /// `seq` (or `reply_to_seq`) is above [`MAX_SEQ`] (2^53): a JavaScript client would read
    /// it as a neighbouring seq.
    #[error("field `{field}` is {seq}, above the largest seq 2^53 = {max}")]
    SeqOutOfRange {
        /// `"seq"` or `"reply_to_seq"`.
        field: &'static str,
        /// The offending value.
        seq: i64,
        /// [`MAX_SEQ`].
        max: i64,
    },
    /// `server_time` is further ahead of the checking clock than [`Limits::max_skew`]
    /// ([`Limits::check_server_time`]; not part of [`ChatMessage::validate`], which has no clock).
    #[error(
        "field `server_time` is {ahead:?} ahead of this host's clock, over the max_skew of {max:?}"
    )]
    ServerTimeAhead {
        /// How far ahead.
        ahead: Duration,
        /// The limit.
        max: Duration,
    },
    /// `content` is longer than [`Limits::max_content_bytes`].
    #[error("field `content` is {len} bytes, over the limit of {max}")]
    ContentTooLarge {
        /// Actual length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `ext` has more entries than [`Limits::max_ext_entries`].
    #[error("field `ext` has {count} entries, over the limit of {max}")]
    TooManyExtEntries {
        /// Actual number of entries.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The keys and values of `ext` add up to more than [`Limits::max_ext_bytes`].
    #[error("field `ext` holds {bytes} bytes of keys and values, over the limit of {max}")]
    ExtTooLarge {
        /// Sum of key and value lengths in bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A timestamp field is negative (before the Unix epoch).
    #[error("field `{field}` must not be negative, got {value}")]
    NegativeTime {
        /// `"send_time"` or `"server_time"`.
        field: &'static str,
        /// The offending value.
        value: i64,
    },
    /// A mutated message's `mutated_at` is not after its `server_time`, or reaches
    /// [`FINAL_VERSION_BIT`](crate::FINAL_VERSION_BIT) (a mutation always follows the send; its
    /// time must leave the final bit free).
    #[error("field `mutated_at` is {at_us}, not in (server_time = {server_time_us}, 2^62)")]
    MutationTimeOutOfRange {
        /// The offending `mutated_at`.
        at_us: i64,
        /// The message's `server_time`.
        server_time_us: i64,
    },
    /// An edited message's `edit_count` is 0 or above `i32::MAX` (the Avro `int`).
    #[error("field `edit_count` is {count}: an edited message has 1 ..= 2^31-1 edits")]
    EditCountOutOfRange {
        /// The offending count.
        count: u32,
    },
    /// A recalled or deleted message still carries content or ext: a final state holds none.
    #[error("a {state} message must carry no content and no ext")]
    ContentNotRemoved {
        /// `"RECALLED"` or `"DELETED"`.
        state: &'static str,
    },
    /// `reply_to_seq` (schema v2) is present but below 1.
    #[error("field `reply_to_seq` must be >= 1 when present, got {seq}")]
    ReplyToSeqNotPositive {
        /// The offending value.
        seq: i64,
    },
}

impl ValidationError {
    /// A short, stable snake_case label for metrics and logs, e.g. `"empty_id"`.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::EmptyId { .. } => "empty_id",
            ValidationError::HashTagBreaker { .. } => "hash_tag_breaker",
            ValidationError::IdTooLong { .. } => "id_too_long",
            ValidationError::SeqNotPositive { .. } => "seq_not_positive",
            ValidationError::SeqOutOfRange { .. } => "seq_out_of_range",
            ValidationError::ServerTimeAhead { .. } => "skew",
            ValidationError::ContentTooLarge { .. } => "content_too_large",
            ValidationError::TooManyExtEntries { .. } => "too_many_ext_entries",
            ValidationError::ExtTooLarge { .. } => "ext_too_large",
            ValidationError::NegativeTime { .. } => "negative_time",
            ValidationError::ReplyToSeqNotPositive { .. } => "reply_to_seq_not_positive",
            ValidationError::MutationTimeOutOfRange { .. } => "mutation_time_out_of_range",
            ValidationError::EditCountOutOfRange { .. } => "edit_count_out_of_range",
            ValidationError::ContentNotRemoved { .. } => "content_not_removed",
        }
    }

    /// The schema field the error is about, e.g. `"session_id"`.
    pub fn field(&self) -> &'static str {
        match self {
            ValidationError::EmptyId { field }
            | ValidationError::HashTagBreaker { field }
            | ValidationError::IdTooLong { field, .. }
            | ValidationError::NegativeTime { field, .. }
            | ValidationError::SeqOutOfRange { field, .. } => field,
            ValidationError::SeqNotPositive { .. } => "seq",
            ValidationError::ServerTimeAhead { .. } => "server_time",
            ValidationError::ContentTooLarge { .. } => "content",
            ValidationError::TooManyExtEntries { .. } | ValidationError::ExtTooLarge { .. } => {
                "ext"
            }
            ValidationError::ReplyToSeqNotPositive { .. } => "reply_to_seq",
            ValidationError::MutationTimeOutOfRange { .. } => "mutated_at",
            ValidationError::EditCountOutOfRange { .. } => "edit_count",
            ValidationError::ContentNotRemoved { .. } => "content",
        }
    }
}

fn check_id(field: &'static str, value: &str, limits: &Limits) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::EmptyId { field });
    }
    if value.len() > limits.max_id_bytes {
        return Err(ValidationError::IdTooLong {
            field,
            len: value.len(),
            max: limits.max_id_bytes,
        });
    }
    Ok(())
}

impl ChatMessage {
    /// Checks the message against `limits`; returns the first problem found: the fields the
    /// server assigns first (`msg_id`, `seq`, `server_time`), then the client's as
    /// [`NewMessage::validate`] checks them, each group in field order.
    ///
    /// The producer runs this before encoding and the consumer after decoding (both through
    /// [`Codec`](crate::Codec)), so both sides agree on what is acceptable.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        check_id("msg_id", &self.msg_id, limits)?;
        if self.seq < 1 {
            return Err(ValidationError::SeqNotPositive { seq: self.seq });
        }
        if self.seq > MAX_SEQ {
            return Err(ValidationError::SeqOutOfRange {
                field: "seq",
                seq: self.seq,
                max: MAX_SEQ,
            });
        }
        check_time("server_time", self.server_time_us)?;
        client_fields!(self).check(limits)?;
        self.check_state(limits)
    }

    /// The state's own rules: a mutation after the send and below the final bit, a known
    /// author, 1 or more edits, nothing left of a recalled or deleted message's content.
    fn check_state(&self, limits: &Limits) -> Result<(), ValidationError> {
        let (Some(at_us), Some(by)) = (self.state.mutated_at_us(), self.state.mutated_by()) else {
            return Ok(());
        };
        if at_us <= self.server_time_us || at_us >= crate::FINAL_VERSION_BIT {
            return Err(ValidationError::MutationTimeOutOfRange {
                at_us,
                server_time_us: self.server_time_us,
            });
        }
        check_id("mutated_by", by, limits)?;
        match &self.state {
            MessageState::Edited { count, .. } if *count == 0 || i32::try_from(*count).is_err() => {
                Err(ValidationError::EditCountOutOfRange { count: *count })
            }
            state if state.is_final() && (!self.content.is_empty() || !self.ext.is_empty()) => {
                Err(ValidationError::ContentNotRemoved {
                    state: state.symbol(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl NewMessage {
    /// Checks the fields a client supplies against `limits`, in field order; returns the first
    /// problem found. A message that passes becomes, with any `msg_id`, seq in `1..=MAX_SEQ`
    /// and non-negative server time, a [`ChatMessage`] that passes [`ChatMessage::validate`].
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        client_fields!(self).check(limits)
    }
}

/// The fields a client supplies, borrowed from a [`ChatMessage`] or a [`NewMessage`] (the macro
/// below, as both name them alike): one check for both.
struct ClientFields<'a> {
    client_msg_id: &'a str,
    session_id: &'a str,
    sender_id: &'a str,
    content: &'a [u8],
    send_time_ms: i64,
    ext: &'a BTreeMap<String, String>,
}

/// The [`ClientFields`] of a [`ChatMessage`] or a [`NewMessage`].
macro_rules! client_fields {
    ($m:expr) => {
        ClientFields {
            client_msg_id: &$m.client_msg_id,
            session_id: &$m.session_id,
            sender_id: &$m.sender_id,
            content: &$m.content,
            send_time_ms: $m.send_time_ms,
            ext: &$m.ext,
        }
    };
}
use client_fields;

impl ClientFields<'_> {
    fn check(&self, limits: &Limits) -> Result<(), ValidationError> {
        check_id("client_msg_id", self.client_msg_id, limits)?;
        check_id("session_id", self.session_id, limits)?;
        if self.session_id.contains('}') {
            return Err(ValidationError::HashTagBreaker {
                field: "session_id",
            });
        }
        check_id("sender_id", self.sender_id, limits)?;
        if self.content.len() > limits.max_content_bytes {
            return Err(ValidationError::ContentTooLarge {
                len: self.content.len(),
                max: limits.max_content_bytes,
            });
        }
        check_time("send_time", self.send_time_ms)?;
        if self.ext.len() > limits.max_ext_entries {
            return Err(ValidationError::TooManyExtEntries {
                count: self.ext.len(),
                max: limits.max_ext_entries,
            });
        }
        let ext_bytes: usize = self.ext.iter().map(|(k, v)| k.len() + v.len()).sum();
        if ext_bytes > limits.max_ext_bytes {
            return Err(ValidationError::ExtTooLarge {
                bytes: ext_bytes,
                max: limits.max_ext_bytes,
            });
        }
        Ok(())
    }
}

fn check_time(field: &'static str, value: i64) -> Result<(), ValidationError> {
    if value < 0 {
        return Err(ValidationError::NegativeTime { field, value });
    }
    Ok(())
}

impl ChatMessageV2 {
    /// Checks the v1 fields as [`ChatMessage::validate`] does, then `reply_to_seq >= 1` if present.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        self.message.validate(limits)?;
        match self.reply_to_seq {
            Some(seq) if seq < 1 => Err(ValidationError::ReplyToSeqNotPositive { seq }),
            Some(seq) if seq > MAX_SEQ => Err(ValidationError::SeqOutOfRange {
                field: "reply_to_seq",
                seq,
                max: MAX_SEQ,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContentType, SessionType};
    use std::collections::BTreeMap;

    fn valid() -> ChatMessage {
        ChatMessage {
            msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".into(),
            client_msg_id: "c-1".into(),
            session_id: "s-1".into(),
            session_type: SessionType::Single,
            seq: 1,
            sender_id: "u-1".into(),
            content_type: ContentType::Text,
            content: b"hi".to_vec(),
            send_time_ms: 0,
            server_time_us: 0,
            ext: BTreeMap::new(),
            state: Default::default(),
        }
    }

    #[test]
    fn valid_message_passes_and_limits_are_inclusive() {
        let l = Limits::default();
        valid().validate(&l).unwrap();
        let mut m = valid();
        m.msg_id = "x".repeat(l.max_id_bytes);
        m.content = vec![0; l.max_content_bytes];
        for i in 0..l.max_ext_entries {
            m.ext.insert(format!("{i:02}"), String::new());
        }
        m.validate(&l).unwrap();
    }

    #[test]
    fn each_problem_has_its_variant_and_field() {
        let l = Limits::default();
        type Mutation = Box<dyn Fn(&mut ChatMessage)>;
        let cases: Vec<(Mutation, &str, &str)> = vec![
            (Box::new(|m| m.msg_id.clear()), "empty_id", "msg_id"),
            (
                Box::new(|m| m.client_msg_id.clear()),
                "empty_id",
                "client_msg_id",
            ),
            (Box::new(|m| m.session_id.clear()), "empty_id", "session_id"),
            (Box::new(|m| m.sender_id.clear()), "empty_id", "sender_id"),
            (
                Box::new(|m| m.session_id = "}g:42".into()),
                "hash_tag_breaker",
                "session_id",
            ),
            (
                Box::new(|m| m.session_id = "g}42".into()),
                "hash_tag_breaker",
                "session_id",
            ),
            (
                Box::new(|m| m.session_id = "s".repeat(129)),
                "id_too_long",
                "session_id",
            ),
            (
                Box::new(|m| m.sender_id = "s".repeat(129)),
                "id_too_long",
                "sender_id",
            ),
            (Box::new(|m| m.seq = 0), "seq_not_positive", "seq"),
            (Box::new(|m| m.seq = i64::MIN), "seq_not_positive", "seq"),
            (Box::new(|m| m.seq = MAX_SEQ + 1), "seq_out_of_range", "seq"),
            (Box::new(|m| m.seq = i64::MAX), "seq_out_of_range", "seq"),
            (
                Box::new(|m| m.content = vec![1; 64 * 1024 + 1]),
                "content_too_large",
                "content",
            ),
            (
                Box::new(|m| m.send_time_ms = -1),
                "negative_time",
                "send_time",
            ),
            (
                Box::new(|m| m.server_time_us = -1),
                "negative_time",
                "server_time",
            ),
            (
                Box::new(|m| {
                    for i in 0..33 {
                        m.ext.insert(i.to_string(), String::new());
                    }
                }),
                "too_many_ext_entries",
                "ext",
            ),
            (
                Box::new(|m| {
                    m.ext.insert("k".into(), "v".repeat(4096));
                }),
                "ext_too_large",
                "ext",
            ),
        ];
        for (mutate, reason, field) in cases {
            let mut m = valid();
            mutate(&mut m);
            let err = m.validate(&l).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(err.field(), field, "{err}");
            assert!(
                err.to_string().contains(field),
                "message names the field: {err}"
            );
            // The producer checks the client's part before anything is allocated: the same
            // verdict for the client's fields, none for those the server assigns.
            let client_part = client_part(&m).validate(&l);
            if ["msg_id", "seq", "server_time"].contains(&field) {
                assert_eq!(client_part, Ok(()), "{field} is assigned by the server");
            } else {
                assert_eq!(client_part, Err(err), "{field}");
            }
        }
    }

    fn client_part(m: &ChatMessage) -> NewMessage {
        NewMessage {
            client_msg_id: m.client_msg_id.clone(),
            session_id: m.session_id.clone(),
            session_type: m.session_type,
            sender_id: m.sender_id.clone(),
            content_type: m.content_type,
            content: m.content.clone(),
            send_time_ms: m.send_time_ms,
            ext: m.ext.clone(),
        }
    }

    #[test]
    fn a_valid_new_message_assigned_valid_server_fields_is_a_valid_message() {
        let l = Limits::default();
        let m = valid();
        let assigned = client_part(&m).assign(m.msg_id.clone(), m.seq, m.server_time_us);
        assert_eq!(assigned, m);
        assigned.validate(&l).unwrap();
    }

    #[test]
    fn seq_up_to_2_pow_53_passes() {
        let mut m = valid();
        m.seq = MAX_SEQ;
        m.validate(&Limits::default()).unwrap();
        // The bound is where an IEEE double stops telling integers apart.
        assert_eq!(MAX_SEQ as f64 + 1.0, MAX_SEQ as f64);
        assert_ne!((MAX_SEQ - 1) as f64, MAX_SEQ as f64);
    }

    #[test]
    fn skew_only_the_future_beyond_max_skew_is_refused() {
        let l = Limits::default();
        let now = 1_700_000_000_000_000;
        let max = l.max_skew_us();
        l.check_server_time(now + max, now).unwrap();
        l.check_server_time(now - 365 * 86_400 * 1_000_000, now)
            .unwrap();
        l.check_server_time(0, now).unwrap();
        let err = l.check_server_time(now + max + 1, now).unwrap_err();
        assert_eq!((err.reason(), err.field()), ("skew", "server_time"));
        assert!(err.to_string().contains("ahead"), "{err}");
        assert!(l.check_server_time(i64::MAX, i64::MIN).is_err());
    }

    #[test]
    fn limits_above_anothers_are_named() {
        let d = Limits::default();
        assert!(d.exceeding(&d).is_empty());
        let small = Limits {
            max_content_bytes: 10,
            ..d
        };
        assert!(small.exceeding(&d).is_empty());
        assert_eq!(
            d.exceeding(&small),
            vec![format!("max_content_bytes = 65536 > 10")]
        );
        let patient = Limits {
            max_skew: Duration::from_secs(60),
            max_ext_entries: 33,
            ..d
        };
        let above = patient.exceeding(&d);
        assert_eq!(above.len(), 2, "{above:?}");
        assert!(above[1].starts_with("max_skew"), "{above:?}");
    }

    #[test]
    fn limits_parse_with_defaults_and_refuse_unknown_keys() {
        #[derive(Deserialize)]
        struct Wrap {
            limits: Limits,
        }
        let w: Wrap =
            from_json("{\"limits\": {\"max_content_bytes\": 4096, \"max_skew\": \"2s\"}}");
        assert_eq!(
            w.limits,
            Limits {
                max_content_bytes: 4096,
                max_skew: Duration::from_secs(2),
                ..Limits::default()
            }
        );
        assert!(
            serde_json::from_str::<Wrap>("{\"limits\": {\"max_content\": 1}}").is_err(),
            "typo refused"
        );
        assert!(
            serde_json::from_str::<Wrap>("{\"limits\": {\"max_skew\": 10}}").is_err(),
            "a duration needs its unit"
        );
    }

    fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn v2_checks_reply_to_seq() {
        let l = Limits::default();
        let mut m = ChatMessageV2::from(valid());
        m.validate(&l).unwrap();
        m.reply_to_seq = Some(0);
        assert_eq!(
            m.validate(&l),
            Err(ValidationError::ReplyToSeqNotPositive { seq: 0 })
        );
        m.reply_to_seq = Some(MAX_SEQ + 1);
        assert_eq!(
            m.validate(&l).map_err(|e| e.reason()),
            Err("seq_out_of_range")
        );
    }

    #[test]
    fn mutated_states_have_their_own_rules() {
        let l = Limits::default();
        let mut m = valid();
        m.server_time_us = 1_000;
        let edit = |at_us, count, by: &str| MessageState::Edited {
            at_us,
            count,
            by: by.into(),
        };
        m.state = edit(1_001, 1, "u-1");
        m.validate(&l).unwrap();
        for (state, reason) in [
            (edit(1_000, 1, "u-1"), "mutation_time_out_of_range"),
            (
                edit(crate::FINAL_VERSION_BIT, 1, "u-1"),
                "mutation_time_out_of_range",
            ),
            (edit(1_001, 0, "u-1"), "edit_count_out_of_range"),
            (edit(1_001, 1 << 31, "u-1"), "edit_count_out_of_range"),
            (edit(1_001, 1, ""), "empty_id"),
            (
                MessageState::Recalled {
                    at_us: 1_001,
                    by: "u-1".into(),
                },
                "content_not_removed",
            ),
        ] {
            let bad = ChatMessage {
                state: state.clone(),
                ..m.clone()
            };
            let err = bad.validate(&l).unwrap_err();
            assert_eq!(err.reason(), reason, "{state:?}");
        }
        // A recall or deletion with content and ext removed is valid; ext alone is refused too.
        let mut gone = ChatMessage {
            content: Vec::new(),
            state: MessageState::Deleted {
                at_us: 1_001,
                by: "admin".into(),
            },
            ..m.clone()
        };
        gone.validate(&l).unwrap();
        assert!(gone.version() > crate::FINAL_VERSION_BIT);
        gone.ext.insert("mention".into(), "u-2".into());
        assert_eq!(
            gone.validate(&l).unwrap_err().reason(),
            "content_not_removed"
        );
    }
}
