//! Message schemas of chatlog: the Avro schemas, the typed [`ChatMessage`], validation
//! ([`Limits`]) and the single-object Avro [`Codec`].
//!
//! # Schemas
//!
//! `chatlog.ChatMessage` is defined in the crate's `.avsc` files, embedded with `include_str!`:
//!
//! | version | file | fingerprint |
//! |---|---|---|
//! | v1 (written for a message as sent) | `chat_message.avsc` | [`Codec::fingerprint_v1`] |
//! | v2 (v1 + `reply_to_seq` `["null","long"]` = null, `edited` `boolean` = false) | `chat_message_v2.avsc` | [`Codec::fingerprint_v2`] |
//! | v3 (v2 + `state` enum [`MessageState`] = `NORMAL`, `mutated_at` `timestamp-micros` = 0, `mutated_by` string = "", `edit_count` int = 0; written for a recalled, edited or deleted message) | `chat_message_v3.avsc` | [`Codec::fingerprint`]`(SchemaVersion::V3)` |
//!
//! The reader form is [`ChatMessage`]: the v1 fields and its [`MessageState`]. A message as sent
//! is written as v1, which consumers of every release read; only a mutation (the whole message
//! in its new state, same seq, higher [`ChatMessage::version`]) is written as v3, so a consumer
//! of an older release sends mutations to its DLQ as `unknown_fingerprint` — never a crash, and
//! never a silent downgrade of a recall to the original — and they replay safely once it is
//! upgraded (the highest version wins wherever versions meet).
//!
//! Fields of v1, in order: `msg_id` string (UUIDv7), `client_msg_id` string, `session_id` string,
//! `session_type` enum [`SessionType`], `seq` long, `sender_id` string, `content_type` enum
//! [`ContentType`] (enum default `UNKNOWN`), `content` bytes, `send_time` long
//! `timestamp-millis`, `server_time` long `timestamp-micros`, `ext` map of strings.
//!
//! A shipped `.avsc` must never change in a way that changes its Parsing Canonical Form (field
//! names, types, order, symbols): bytes already in Kafka and Redis name their writer schema by
//! fingerprint. Add a new version instead; `tests/codec.rs` pins the fingerprints.
//!
//! # Wire format: Avro single-object encoding
//!
//! ```text
//! offset  size  content
//! 0       2     C3 01                       marker (format version 1)
//! 2       8     CRC-64-AVRO fingerprint     of the writer schema's Parsing Canonical Form,
//!                                           little-endian (u64::to_le_bytes)
//! 10      n     Avro binary datum           of the record, written with that schema
//! ```
//!
//! The fingerprint is [`crc64_avro`] (the specification's 64-bit Rabin `fingerprint64`) of the
//! [`parsing_canonical_form`] (computed here, not by apache-avro 0.21, whose canonical form of
//! logical types disagrees with Java and fastavro); no registry server is involved. A reader looks the fingerprint up among the
//! schemas it ships ([`Codec`] holds v1, v2 and any extra from [`CodecBuilder::writer_schema`]),
//! decodes the datum with that writer schema and resolves it into its reader schema (Avro schema
//! resolution: fields unknown to the reader are skipped, missing ones take their defaults, unknown
//! `ContentType` symbols become `UNKNOWN`). An unknown fingerprint is a
//! [`DecodeError::UnknownFingerprint`], never a panic: the consumer sends such records to the DLQ.
//!
//! # Decoding pipeline
//!
//! [`Codec::decode`] checks, in order: the size against the codec's maximum (before any parsing),
//! the marker, the fingerprint, the datum (bounds-checked: no count or length the input cannot
//! back is ever allocated), that nothing follows the datum, and finally
//! [`ChatMessage::validate`] with the codec's [`Limits`]. Each failure is one [`DecodeError`]
//! variant with a stable [`reason`](DecodeError::reason) label for DLQ headers and metrics.
//!
//! When the writer schema is the reader schema (the common case), a hand-written decoder reads the
//! datum straight into [`ChatMessage`]; other writer schemas go through apache-avro's generic
//! `Value` and schema resolution. Encoding always writes the current schema with the hand-written
//! encoder. Both are checked against apache-avro (property tests) and against Python `fastavro`,
//! an independent implementation (`tests/interop_fastavro.rs`).
//!
//! # Test support
//!
//! The cargo feature `testing` adds the module `chatlog_schemas::testing`: the deterministic test
//! messages every crate's tests and benchmarks build (enable it only in `[dev-dependencies]`).
#![forbid(unsafe_code)]

mod canonical;
mod codec;
mod error;
mod fingerprint;
mod model;
mod scan;
#[cfg(feature = "testing")]
pub mod testing;
mod validate;
mod value;
mod wire;

pub use canonical::parsing_canonical_form;
pub use codec::{
    Codec, CodecBuilder, DEFAULT_MAX_ENCODED_BYTES, SCHEMA_V1_JSON, SCHEMA_V2_JSON, SCHEMA_V3_JSON,
    SchemaVersion, schema_fingerprint,
};
pub use error::{DecodeError, EncodeError, SchemaError};
pub use fingerprint::{HEADER_LEN, MAGIC, crc64_avro, header};
pub use model::{
    ChatMessage, ChatMessageV2, ContentType, FINAL_VERSION_BIT, MessageState, NewMessage,
    SessionType,
};
pub use validate::{Limits, MAX_SEQ, ValidationError};
pub use value::{to_value_v1, to_value_v2, to_value_v3};

/// Re-export of the apache-avro crate this codec is built on (for [`Codec::encode_value`],
/// [`Codec::decode_value`] and [`Codec::schema`]).
pub use apache_avro;
