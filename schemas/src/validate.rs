//! Semantic validation shared by the producer (before encoding) and the consumer (after
//! decoding): the schema says what a message looks like, [`Limits`] say what is acceptable.

use crate::model::{ChatMessage, ChatMessageV2};

/// Size limits a [`ChatMessage`] must respect. Every limit is inclusive (`len <= max` passes).
///
/// ```
/// use chatlog_schemas::Limits;
/// let strict = Limits { max_content_bytes: 4096, ..Limits::default() };
/// assert_eq!(strict.max_id_bytes, 128);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

impl Limits {
    /// The default limits: 64 KiB content, 128-byte ids, 32 ext entries, 4 KiB of ext.
    pub const DEFAULT: Limits = Limits {
        max_content_bytes: 64 * 1024,
        max_id_bytes: 128,
        max_ext_entries: 32,
        max_ext_bytes: 4 * 1024,
    };
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
            ValidationError::ContentTooLarge { .. } => "content_too_large",
            ValidationError::TooManyExtEntries { .. } => "too_many_ext_entries",
            ValidationError::ExtTooLarge { .. } => "ext_too_large",
            ValidationError::NegativeTime { .. } => "negative_time",
            ValidationError::ReplyToSeqNotPositive { .. } => "reply_to_seq_not_positive",
        }
    }

    /// The schema field the error is about, e.g. `"session_id"`.
    pub fn field(&self) -> &'static str {
        match self {
            ValidationError::EmptyId { field }
            | ValidationError::HashTagBreaker { field }
            | ValidationError::IdTooLong { field, .. }
            | ValidationError::NegativeTime { field, .. } => field,
            ValidationError::SeqNotPositive { .. } => "seq",
            ValidationError::ContentTooLarge { .. } => "content",
            ValidationError::TooManyExtEntries { .. } | ValidationError::ExtTooLarge { .. } => {
                "ext"
            }
            ValidationError::ReplyToSeqNotPositive { .. } => "reply_to_seq",
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
    /// Checks the message against `limits`; returns the first problem found, in field order.
    ///
    /// The producer runs this before encoding and the consumer after decoding (both through
    /// [`Codec`](crate::Codec)), so both sides agree on what is acceptable.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        check_id("msg_id", &self.msg_id, limits)?;
        check_id("client_msg_id", &self.client_msg_id, limits)?;
        check_id("session_id", &self.session_id, limits)?;
        if self.session_id.contains('}') {
            return Err(ValidationError::HashTagBreaker {
                field: "session_id",
            });
        }
        if self.seq < 1 {
            return Err(ValidationError::SeqNotPositive { seq: self.seq });
        }
        check_id("sender_id", &self.sender_id, limits)?;
        if self.content.len() > limits.max_content_bytes {
            return Err(ValidationError::ContentTooLarge {
                len: self.content.len(),
                max: limits.max_content_bytes,
            });
        }
        if self.send_time_ms < 0 {
            return Err(ValidationError::NegativeTime {
                field: "send_time",
                value: self.send_time_ms,
            });
        }
        if self.server_time_us < 0 {
            return Err(ValidationError::NegativeTime {
                field: "server_time",
                value: self.server_time_us,
            });
        }
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

impl ChatMessageV2 {
    /// Checks the v1 fields as [`ChatMessage::validate`] does, then `reply_to_seq >= 1` if present.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        self.message.validate(limits)?;
        match self.reply_to_seq {
            Some(seq) if seq < 1 => Err(ValidationError::ReplyToSeqNotPositive { seq }),
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
        }
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
    }
}
