//! Error types of the codec. Every error carries a stable `reason()` label for DLQ headers and
//! metric labels.

use crate::validate::ValidationError;

/// Why bytes could not be decoded into a message. Decoding never panics; every bad input maps to
/// exactly one of these.
///
/// Checks run in this order: size ([`Oversize`](DecodeError::Oversize), before any parsing),
/// header ([`Truncated`](DecodeError::Truncated) / [`BadMagic`](DecodeError::BadMagic) /
/// [`UnknownFingerprint`](DecodeError::UnknownFingerprint)), datum
/// ([`Truncated`](DecodeError::Truncated) / [`Malformed`](DecodeError::Malformed) /
/// [`TrailingBytes`](DecodeError::TrailingBytes)), then semantics
/// ([`Invalid`](DecodeError::Invalid)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the header or the datum is complete (this includes empty input).
    #[error("input truncated")]
    Truncated,
    /// The input does not start with the single-object marker `C3 01`.
    #[error("not Avro single-object encoding (bad magic bytes)")]
    BadMagic,
    /// The writer schema fingerprint in the header is not one of the known schemas.
    #[error("unknown writer schema fingerprint {0:#018x}")]
    UnknownFingerprint(u64),
    /// The input is longer than the codec's maximum encoded size (checked before parsing).
    #[error("encoded message is {len} bytes, over the maximum of {max}")]
    Oversize {
        /// Input length in bytes.
        len: usize,
        /// The codec's maximum.
        max: usize,
    },
    /// The datum does not conform to the writer schema (bad varint, enum or union index, UTF-8,
    /// …) or cannot be resolved into the reader schema.
    #[error("malformed datum: {0}")]
    Malformed(String),
    /// A complete datum is followed by extra bytes.
    #[error("trailing bytes after the datum")]
    TrailingBytes,
    /// The message decoded but breaks the codec's [`Limits`](crate::Limits) or field rules.
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// A short, stable snake_case label, used as the DLQ reason header and as a metric label:
    /// `truncated`, `bad_magic`, `unknown_fingerprint`, `oversize`, `malformed`,
    /// `trailing_bytes` or `invalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes => "trailing_bytes",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message breaks the codec's [`Limits`](crate::Limits) or field rules.
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
    /// The encoded message would be longer than the codec's maximum encoded size.
    #[error("encoded message is {len} bytes, over the maximum of {max}")]
    Oversize {
        /// Encoded length in bytes.
        len: usize,
        /// The codec's maximum.
        max: usize,
    },
    /// The requested writer schema fingerprint is not known to the codec.
    #[error("unknown writer schema fingerprint {0:#018x}")]
    UnknownFingerprint(u64),
    /// apache-avro rejected the value for the schema (only from
    /// [`Codec::encode_value`](crate::Codec::encode_value)).
    #[error("value does not match the writer schema: {0}")]
    Schema(String),
}

impl EncodeError {
    /// A short, stable snake_case label: `invalid`, `oversize`, `unknown_fingerprint` or
    /// `schema_mismatch`.
    pub fn reason(&self) -> &'static str {
        match self {
            EncodeError::Invalid(_) => "invalid",
            EncodeError::Oversize { .. } => "oversize",
            EncodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            EncodeError::Schema(_) => "schema_mismatch",
        }
    }
}

/// A writer schema given to [`CodecBuilder::writer_schema`](crate::CodecBuilder::writer_schema)
/// could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The JSON is not a valid Avro schema.
    #[error("invalid Avro schema: {0}")]
    Parse(String),
    /// The schema is not a record named `chatlog.ChatMessage`, so it cannot be resolved into the
    /// reader schema.
    #[error("writer schema must be the record chatlog.ChatMessage, got {0}")]
    NotChatMessage(String),
}
