//! The typed message model: [`ChatMessage`] (schema v1, the current reader schema),
//! [`ChatMessageV2`] (schema v2), [`NewMessage`] (what a client submits), plus their enums.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kind of conversation a message belongs to (Avro enum `chatlog.SessionType`).
///
/// The variant order is the Avro symbol order: the binary encoding is the symbol index, so never
/// reorder or remove variants; append new ones in a new schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SessionType {
    /// One-to-one conversation (`SINGLE`).
    Single,
    /// Group conversation (`GROUP`).
    Group,
    /// System notifications (`SYSTEM`).
    System,
}

impl SessionType {
    /// All variants, in Avro symbol order.
    pub const ALL: [SessionType; 3] =
        [SessionType::Single, SessionType::Group, SessionType::System];

    /// The Avro symbol, e.g. `"SINGLE"`.
    pub const fn symbol(self) -> &'static str {
        match self {
            SessionType::Single => "SINGLE",
            SessionType::Group => "GROUP",
            SessionType::System => "SYSTEM",
        }
    }

    /// The index of the symbol in the shipped schemas (what goes on the wire).
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The variant at an Avro symbol index of the shipped schemas, if any.
    pub const fn from_index(index: u32) -> Option<SessionType> {
        match index {
            0 => Some(SessionType::Single),
            1 => Some(SessionType::Group),
            2 => Some(SessionType::System),
            _ => None,
        }
    }

    /// The variant for an Avro symbol, if any.
    pub fn from_symbol(symbol: &str) -> Option<SessionType> {
        Self::ALL.into_iter().find(|v| v.symbol() == symbol)
    }
}

/// Kind of payload carried in [`ChatMessage::content`] (Avro enum `chatlog.ContentType`).
///
/// The schema declares `"default": "UNKNOWN"` on this enum, so a symbol written by a newer schema
/// that this reader does not know decodes as [`ContentType::Unknown`] instead of failing.
/// The variant order is the Avro symbol order; never reorder or remove variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContentType {
    /// UTF-8 text (`TEXT`).
    Text,
    /// Image reference or thumbnail (`IMAGE`).
    Image,
    /// Voice clip reference (`VOICE`).
    Voice,
    /// Video reference (`VIDEO`).
    Video,
    /// File reference (`FILE`).
    File,
    /// Application-defined payload (`CUSTOM`).
    Custom,
    /// A kind this reader does not know (`UNKNOWN`); the resolution target for new symbols.
    Unknown,
}

impl ContentType {
    /// All variants, in Avro symbol order.
    pub const ALL: [ContentType; 7] = [
        ContentType::Text,
        ContentType::Image,
        ContentType::Voice,
        ContentType::Video,
        ContentType::File,
        ContentType::Custom,
        ContentType::Unknown,
    ];

    /// The Avro symbol, e.g. `"TEXT"`.
    pub const fn symbol(self) -> &'static str {
        match self {
            ContentType::Text => "TEXT",
            ContentType::Image => "IMAGE",
            ContentType::Voice => "VOICE",
            ContentType::Video => "VIDEO",
            ContentType::File => "FILE",
            ContentType::Custom => "CUSTOM",
            ContentType::Unknown => "UNKNOWN",
        }
    }

    /// The index of the symbol in the shipped schemas (what goes on the wire).
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The variant at an Avro symbol index of the shipped schemas, if any.
    pub const fn from_index(index: u32) -> Option<ContentType> {
        match index {
            0 => Some(ContentType::Text),
            1 => Some(ContentType::Image),
            2 => Some(ContentType::Voice),
            3 => Some(ContentType::Video),
            4 => Some(ContentType::File),
            5 => Some(ContentType::Custom),
            6 => Some(ContentType::Unknown),
            _ => None,
        }
    }

    /// The variant for an Avro symbol, if any.
    pub fn from_symbol(symbol: &str) -> Option<ContentType> {
        Self::ALL.into_iter().find(|v| v.symbol() == symbol)
    }
}

/// One chat message: the Rust form of the current schema, `chatlog.ChatMessage` v1
/// (`schemas/chat_message.avsc`). Fields are in schema order.
///
/// Build it, [`validate`](ChatMessage::validate) it and encode it with
/// [`Codec::encode`](crate::Codec::encode); [`Codec::decode`](crate::Codec::decode) gives it back
/// from bytes written under any shipped schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Server-assigned message id, a UUIDv7 string.
    pub msg_id: String,
    /// Client-generated idempotency key.
    pub client_msg_id: String,
    /// Conversation id (Kafka key, CQL partition key).
    pub session_id: String,
    /// Kind of conversation.
    pub session_type: SessionType,
    /// Per-session sequence number, `>= 1`.
    pub seq: i64,
    /// User id of the sender.
    pub sender_id: String,
    /// Kind of payload in `content`.
    pub content_type: ContentType,
    /// Opaque payload.
    pub content: Vec<u8>,
    /// Client send time, milliseconds since the Unix epoch (Avro `timestamp-millis`).
    pub send_time_ms: i64,
    /// Server accept time, microseconds since the Unix epoch (Avro `timestamp-micros`); also the
    /// CQL write timestamp.
    pub server_time_us: i64,
    /// Free-form string extensions.
    pub ext: BTreeMap<String, String>,
}

/// A message as a client submits it: every [`ChatMessage`] field but the three the server
/// assigns (`msg_id`, `seq`, `server_time`). The producer checks it
/// ([`validate`](NewMessage::validate)) before allocating anything and turns it into the
/// [`ChatMessage`] it encodes once the seq is allocated ([`assign`](NewMessage::assign)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The client's idempotency key: a retried send with the same key (same session and sender)
    /// gets the seq and `msg_id` of the first one.
    pub client_msg_id: String,
    /// Conversation id: the Kafka key, so a session always lands on the same partition.
    pub session_id: String,
    /// Kind of conversation.
    pub session_type: SessionType,
    /// User id of the sender.
    pub sender_id: String,
    /// Kind of payload.
    pub content_type: ContentType,
    /// Opaque payload.
    pub content: Vec<u8>,
    /// Client send time, ms since the Unix epoch.
    pub send_time_ms: i64,
    /// Free-form string extensions.
    pub ext: BTreeMap<String, String>,
}

impl NewMessage {
    /// The stored message: this one with the fields the server assigned.
    pub fn assign(self, msg_id: String, seq: i64, server_time_us: i64) -> ChatMessage {
        ChatMessage {
            msg_id,
            client_msg_id: self.client_msg_id,
            session_id: self.session_id,
            session_type: self.session_type,
            seq,
            sender_id: self.sender_id,
            content_type: self.content_type,
            content: self.content,
            send_time_ms: self.send_time_ms,
            server_time_us,
            ext: self.ext,
        }
    }
}

/// A message in schema v2 (`schemas/chat_message_v2.avsc`): every v1 field plus two optional
/// fields with defaults. v1 readers ignore the extra fields; a v2 reader reading v1 bytes gets the
/// defaults (`reply_to_seq = None`, `edited = false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessageV2 {
    /// The v1 fields.
    pub message: ChatMessage,
    /// Seq of the message this one replies to (same session); Avro `["null","long"]`, default null.
    pub reply_to_seq: Option<i64>,
    /// Whether this is an edited version of an earlier message; Avro `boolean`, default false.
    pub edited: bool,
}

impl From<ChatMessage> for ChatMessageV2 {
    /// Wraps a v1 message with the v2 defaults.
    fn from(message: ChatMessage) -> Self {
        ChatMessageV2 {
            message,
            reply_to_seq: None,
            edited: false,
        }
    }
}
