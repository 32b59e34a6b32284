//! The single-object Avro [`Codec`] and its writer-schema registry.

use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::canonical::parsing_canonical_form;
use crate::error::{DecodeError, EncodeError, SchemaError};
use crate::fingerprint::{HEADER_LEN, MAGIC, crc64_avro, header};
use crate::model::{ChatMessage, ChatMessageV2};
use crate::scan::{self, Names};
use crate::validate::Limits;
use crate::{value, wire};

/// JSON of schema v1 (`schemas/chat_message.avsc`), the current reader and writer schema.
pub const SCHEMA_V1_JSON: &str = include_str!("../chat_message.avsc");

/// JSON of schema v2 (`schemas/chat_message_v2.avsc`): v1 plus `reply_to_seq` and `edited`.
pub const SCHEMA_V2_JSON: &str = include_str!("../chat_message_v2.avsc");

/// JSON of schema v3 (`schemas/chat_message_v3.avsc`): v2 plus `state`, `mutated_at`,
/// `mutated_by` and `edit_count` — what a mutated message is written with.
pub const SCHEMA_V3_JSON: &str = include_str!("../chat_message_v3.avsc");

/// Default maximum size of an encoded message (header + datum): 1 MiB.
pub const DEFAULT_MAX_ENCODED_BYTES: usize = 1024 * 1024;

/// The schema versions shipped with this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchemaVersion {
    /// `chat_message.avsc`.
    V1,
    /// `chat_message_v2.avsc`.
    V2,
    /// `chat_message_v3.avsc`.
    V3,
}

impl SchemaVersion {
    /// The version [`Codec::encode`] writes for a message as sent ([`MessageState::Normal`](crate::MessageState::Normal)).
    /// A mutated message is written as [`SchemaVersion::V3`]; [`Codec::decode`] reads into v3.
    pub const CURRENT: SchemaVersion = SchemaVersion::V1;

    /// All shipped versions.
    pub const ALL: [SchemaVersion; 3] = [SchemaVersion::V1, SchemaVersion::V2, SchemaVersion::V3];

    /// The schema JSON of this version, as embedded in the crate.
    pub const fn schema_json(self) -> &'static str {
        match self {
            SchemaVersion::V1 => SCHEMA_V1_JSON,
            SchemaVersion::V2 => SCHEMA_V2_JSON,
            SchemaVersion::V3 => SCHEMA_V3_JSON,
        }
    }
}

/// The CRC-64-AVRO fingerprint of a schema given as JSON: [`crc64_avro`] of its
/// [`parsing_canonical_form`], as Java and fastavro compute it.
pub fn schema_fingerprint(schema_json: &str) -> Result<u64, SchemaError> {
    Ok(crc64_avro(parsing_canonical_form(schema_json)?.as_bytes()))
}

/// A parsed writer schema with everything decoding needs.
#[derive(Debug)]
struct Entry {
    schema: Schema,
    names: Names,
    fingerprint: u64,
    header: [u8; HEADER_LEN],
}

impl Entry {
    fn parse(json: &str) -> Result<Entry, SchemaError> {
        let schema = Schema::parse_str(json).map_err(|e| SchemaError::Parse(e.to_string()))?;
        match &schema {
            Schema::Record(r) if r.name.fullname(None) == "chatlog.ChatMessage" => {}
            other => {
                let name = other
                    .name()
                    .map_or_else(|| other.to_string(), |n| n.fullname(None));
                return Err(SchemaError::NotChatMessage(name));
            }
        }
        let fingerprint = schema_fingerprint(json)?;
        Ok(Entry {
            names: Names::collect(&schema),
            header: header(fingerprint),
            fingerprint,
            schema,
        })
    }
}

/// The shipped schemas, parsed once per process.
fn shipped() -> &'static [Arc<Entry>; 3] {
    static SHIPPED: OnceLock<[Arc<Entry>; 3]> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        SchemaVersion::ALL.map(|v| {
            // The embedded schemas are fixed at compile time and covered by tests.
            Arc::new(Entry::parse(v.schema_json()).expect("shipped schema must parse"))
        })
    })
}

#[derive(Debug)]
struct Inner {
    v1: Arc<Entry>,
    v2: Arc<Entry>,
    v3: Arc<Entry>,
    /// Every known writer schema (shipped ones first), searched linearly: there are only a few.
    writers: Vec<Arc<Entry>>,
    max_encoded_bytes: usize,
    limits: Limits,
}

/// Encodes and decodes [`ChatMessage`]s in Avro single-object encoding.
///
/// Holds the shipped schemas (v1, v2, v3) indexed by fingerprint, the reader schema (v3), the
/// maximum encoded size and the validation [`Limits`]. Cloning is an `Arc` clone; a `Codec` is
/// `Send + Sync` and meant to be shared.
///
/// ```
/// use chatlog_schemas::{ChatMessage, Codec, ContentType, SessionType};
/// let codec = Codec::default();
/// let msg = ChatMessage {
///     msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".into(),
///     client_msg_id: "c-1".into(),
///     session_id: "s-1".into(),
///     session_type: SessionType::Group,
///     seq: 1,
///     sender_id: "u-1".into(),
///     content_type: ContentType::Text,
///     content: b"hello".to_vec(),
///     send_time_ms: 1_700_000_000_000,
///     server_time_us: 1_700_000_000_000_123,
///     ext: Default::default(),
///     state: Default::default(),
/// };
/// let bytes = codec.encode(&msg).unwrap();
/// assert_eq!(&bytes[..2], &[0xC3, 0x01]);
/// assert_eq!(&bytes[2..10], &codec.current_fingerprint().to_le_bytes());
/// assert_eq!(codec.decode(&bytes).unwrap(), msg);
/// ```
#[derive(Debug, Clone)]
pub struct Codec {
    inner: Arc<Inner>,
}

/// Builds a [`Codec`] with non-default settings or extra writer schemas.
#[derive(Debug, Clone)]
pub struct CodecBuilder {
    max_encoded_bytes: usize,
    limits: Limits,
    extra: Vec<String>,
    readable: Vec<SchemaVersion>,
}

impl Default for CodecBuilder {
    fn default() -> Self {
        CodecBuilder {
            max_encoded_bytes: DEFAULT_MAX_ENCODED_BYTES,
            limits: Limits::default(),
            extra: Vec::new(),
            readable: SchemaVersion::ALL.to_vec(),
        }
    }
}

impl CodecBuilder {
    /// Maximum size of an encoded message, header included (default 1 MiB).
    pub fn max_encoded_bytes(mut self, max: usize) -> Self {
        self.max_encoded_bytes = max;
        self
    }

    /// Validation limits applied by `encode*` and `decode*` (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Also accept bytes written with this writer schema (JSON of a `chatlog.ChatMessage`
    /// record), e.g. a newer version deployed on producers before consumers ship it. Such bytes
    /// are resolved into the reader schema by Avro schema resolution.
    pub fn writer_schema(mut self, schema_json: impl Into<String>) -> Self {
        self.extra.push(schema_json.into());
        self
    }

    /// Reads only these shipped versions (default: all of them), as a consumer of an older
    /// release would: bytes of the others are [`DecodeError::UnknownFingerprint`]. For tests of
    /// mixed-release fleets (what an old consumer does with a mutation).
    pub fn readable_versions(mut self, versions: &[SchemaVersion]) -> Self {
        self.readable = versions.to_vec();
        self
    }

    /// Parses the extra writer schemas and builds the codec.
    pub fn build(self) -> Result<Codec, SchemaError> {
        let [v1, v2, v3] = shipped().clone();
        let mut writers: Vec<Arc<Entry>> = SchemaVersion::ALL
            .iter()
            .zip([&v1, &v2, &v3])
            .filter(|(v, _)| self.readable.contains(v))
            .map(|(_, e)| e.clone())
            .collect();
        for json in &self.extra {
            let entry = Entry::parse(json)?;
            // Same canonical form = same schema for reading; keep the first.
            if writers.iter().all(|w| w.fingerprint != entry.fingerprint) {
                writers.push(Arc::new(entry));
            }
        }
        Ok(Codec {
            inner: Arc::new(Inner {
                v1,
                v2,
                v3,
                writers,
                max_encoded_bytes: self.max_encoded_bytes,
                limits: self.limits,
            }),
        })
    }
}

impl Default for Codec {
    /// A codec with a 1 MiB maximum encoded size and [`Limits::default`].
    fn default() -> Self {
        Codec::new(DEFAULT_MAX_ENCODED_BYTES)
    }
}

impl Codec {
    /// A codec with the shipped schemas, the given maximum encoded size (header included) and
    /// [`Limits::default`].
    pub fn new(max_encoded_bytes: usize) -> Codec {
        Codec::builder()
            .max_encoded_bytes(max_encoded_bytes)
            .build()
            .expect("shipped schemas only: cannot fail")
    }

    /// A builder for custom limits or extra writer schemas.
    pub fn builder() -> CodecBuilder {
        CodecBuilder::default()
    }

    /// The maximum encoded size, header included.
    pub fn max_encoded_bytes(&self) -> usize {
        self.inner.max_encoded_bytes
    }

    /// The validation limits applied by this codec.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Fingerprint of schema v1.
    pub fn fingerprint_v1(&self) -> u64 {
        self.inner.v1.fingerprint
    }

    /// Fingerprint of schema v2.
    pub fn fingerprint_v2(&self) -> u64 {
        self.inner.v2.fingerprint
    }

    /// Fingerprint of a shipped schema version.
    pub fn fingerprint(&self, version: SchemaVersion) -> u64 {
        self.entry(version).fingerprint
    }

    /// Fingerprint of the current schema ([`SchemaVersion::CURRENT`]), the one `encode` writes.
    pub fn current_fingerprint(&self) -> u64 {
        self.fingerprint(SchemaVersion::CURRENT)
    }

    /// Fingerprints of every writer schema this codec can decode.
    pub fn known_fingerprints(&self) -> Vec<u64> {
        self.inner.writers.iter().map(|w| w.fingerprint).collect()
    }

    /// The parsed apache-avro schema of a shipped version.
    pub fn schema(&self, version: SchemaVersion) -> &Schema {
        &self.entry(version).schema
    }

    fn entry(&self, version: SchemaVersion) -> &Entry {
        match version {
            SchemaVersion::V1 => &self.inner.v1,
            SchemaVersion::V2 => &self.inner.v2,
            SchemaVersion::V3 => &self.inner.v3,
        }
    }

    fn writer(&self, fingerprint: u64) -> Option<&Entry> {
        self.inner
            .writers
            .iter()
            .find(|w| w.fingerprint == fingerprint)
            .map(|w| &**w)
    }

    fn check_len(&self, len: usize) -> Result<(), EncodeError> {
        let max = self.inner.max_encoded_bytes;
        if len > max {
            return Err(EncodeError::Oversize { len, max });
        }
        Ok(())
    }

    /// Validates `msg` against the codec's limits and encodes it: `C3 01`, fingerprint
    /// (little-endian), binary datum — under schema v1 for a message as sent (readable by every
    /// consumer release) and under v3 for a mutated one (its state is not part of v1).
    pub fn encode(&self, msg: &ChatMessage) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(msg, &mut out)?;
        Ok(out)
    }

    /// Like [`encode`](Codec::encode) but appends to `out` (which is left as it was on error),
    /// to reuse a buffer.
    pub fn encode_into(&self, msg: &ChatMessage, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        msg.validate(&self.inner.limits)?;
        let start = out.len();
        out.reserve(HEADER_LEN + wire::datum_len_hint(msg));
        if msg.is_mutated() {
            out.reserve(16 + msg.state.mutated_by().map_or(0, str::len));
            out.extend_from_slice(&self.inner.v3.header);
            wire::encode_v3(msg, out);
        } else {
            out.extend_from_slice(&self.inner.v1.header);
            wire::encode_v1(msg, out);
        }
        if let Err(e) = self.check_len(out.len() - start) {
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Validates `msg` and encodes it with schema v2 (what a v2 producer would write).
    pub fn encode_v2(&self, msg: &ChatMessageV2) -> Result<Vec<u8>, EncodeError> {
        msg.validate(&self.inner.limits)?;
        self.encode_value(self.inner.v2.fingerprint, value::to_value_v2(msg))
    }

    /// Encodes an arbitrary apache-avro `value` with the known writer schema `fingerprint`, with
    /// no semantic validation (only conformance to the schema). For tests and tools, e.g. to
    /// write what a newer or a buggy producer would.
    pub fn encode_value(&self, fingerprint: u64, value: Value) -> Result<Vec<u8>, EncodeError> {
        let w = self
            .writer(fingerprint)
            .ok_or(EncodeError::UnknownFingerprint(fingerprint))?;
        let datum = apache_avro::to_avro_datum(&w.schema, value)
            .map_err(|e| EncodeError::Schema(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
        out.extend_from_slice(&w.header);
        out.extend_from_slice(&datum);
        self.check_len(out.len())?;
        Ok(out)
    }

    /// Checks size, marker and fingerprint; returns the writer schema and the datum bytes.
    fn split<'b>(&self, bytes: &'b [u8]) -> Result<(&Entry, &'b [u8]), DecodeError> {
        let max = self.inner.max_encoded_bytes;
        if bytes.len() > max {
            return Err(DecodeError::Oversize {
                len: bytes.len(),
                max,
            });
        }
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(DecodeError::BadMagic);
        }
        let Some((head, datum)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::Truncated);
        };
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&head[2..]);
        let fingerprint = u64::from_le_bytes(fp);
        let writer = self
            .writer(fingerprint)
            .ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
        Ok((writer, datum))
    }

    /// Decodes the datum with `writer` and resolves it into `reader` (general path).
    fn resolve(&self, writer: &Entry, reader: &Entry, datum: &[u8]) -> Result<Value, DecodeError> {
        // Bounds-check first so apache-avro never sees a count or length the input cannot back.
        scan::check_datum(&writer.schema, &writer.names, datum)?;
        let mut rest = datum;
        let v = apache_avro::from_avro_datum(&writer.schema, &mut rest, None)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        if writer.fingerprint == reader.fingerprint {
            return Ok(v);
        }
        v.resolve(&reader.schema)
            .map_err(|e| DecodeError::Malformed(format!("schema resolution failed: {e}")))
    }

    /// Decodes single-object bytes written with any known writer schema into the v3 reader
    /// schema (v1 and v2 bytes are messages as sent: [`MessageState::Normal`](crate::MessageState)),
    /// then validates the message against the codec's limits.
    ///
    /// Never panics: any input gives a message or a [`DecodeError`].
    pub fn decode(&self, bytes: &[u8]) -> Result<ChatMessage, DecodeError> {
        let (writer, datum) = self.split(bytes)?;
        let msg = if writer.fingerprint == self.inner.v1.fingerprint {
            wire::decode_v1(datum)?
        } else if writer.fingerprint == self.inner.v3.fingerprint {
            wire::decode_v3(datum)?
        } else if writer.fingerprint == self.inner.v2.fingerprint {
            value::from_value_v1(self.resolve(writer, &self.inner.v1, datum)?)?
        } else {
            value::from_value_v3(self.resolve(writer, &self.inner.v3, datum)?)?
        };
        msg.validate(&self.inner.limits)?;
        Ok(msg)
    }

    /// Decodes single-object bytes written with any known writer schema into the v2 reader
    /// schema (v1 bytes get the v2 defaults), then validates.
    pub fn decode_as_v2(&self, bytes: &[u8]) -> Result<ChatMessageV2, DecodeError> {
        let (writer, datum) = self.split(bytes)?;
        let msg = value::from_value_v2(self.resolve(writer, &self.inner.v2, datum)?)?;
        msg.validate(&self.inner.limits)?;
        Ok(msg)
    }

    /// Decodes single-object bytes written with any known writer schema into the generic value
    /// of that writer schema, without resolution or validation. For tools and tests.
    pub fn decode_value(&self, bytes: &[u8]) -> Result<(u64, Value), DecodeError> {
        let (writer, datum) = self.split(bytes)?;
        Ok((writer.fingerprint, self.resolve(writer, writer, datum)?))
    }
}
