//! The typed message model: [`ChatMessage`] (the reader form of schema v3: the v1 fields and the
//! [`MessageState`] a recall, edit or delete for everyone leaves), [`ChatMessageV2`] (schema v2),
//! [`NewMessage`] (what a client submits), plus their enums.

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

/// One chat message: the v1 fields (`schemas/chat_message.avsc`, in schema order) and its
/// [`state`](ChatMessage::state) (schema v3, `schemas/chat_message_v3.avsc`).
///
/// A message as sent is [`MessageState::Normal`] and encodes as v1, which consumers of every
/// release read. A mutation (recall, edit, delete for everyone) is the *whole* message in its new
/// state, with the same seq and a higher [`version`](ChatMessage::version): it encodes as v3 and
/// replaces the earlier version wherever the two meet (CQL cells by write timestamp, the window
/// by its version prefix), in any order.
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
    /// What has happened to the message since it was sent (schema v3; `Normal` in v1 and v2).
    pub state: MessageState,
}

/// Bit 62 of a [`ChatMessage::version`]: set for the final states (recalled, deleted for
/// everyone), so that no edit — even one issued from a read that had not yet seen the recall —
/// can outrank them and bring content back. Times in µs since 1970 stay below 2^51.
pub const FINAL_VERSION_BIT: i64 = 1 << 62;

/// What has happened to a message since it was sent (Avro enum `chatlog.MessageState` of schema
/// v3 plus the fields `mutated_at`, `mutated_by` and `edit_count`).
///
/// `at_us` is the server time of the mutation (µs since the Unix epoch, stamped by the producer
/// library above the version it replaces), `by` the user who made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageState {
    /// As sent.
    #[default]
    Normal,
    /// The content was replaced `count` times; `at_us` is the last edit.
    Edited {
        /// Server time of the last edit.
        at_us: i64,
        /// Number of edits (≥ 1).
        count: u32,
        /// Who made the last edit.
        by: String,
    },
    /// Recalled by its sender: content and ext removed. Final.
    Recalled {
        /// Server time of the recall.
        at_us: i64,
        /// Who recalled it.
        by: String,
    },
    /// Deleted for everyone (a moderator's removal): content and ext removed. Final.
    Deleted {
        /// Server time of the deletion.
        at_us: i64,
        /// Who deleted it.
        by: String,
    },
}

impl MessageState {
    /// The symbols of Avro enum `chatlog.MessageState`, in index order.
    pub const SYMBOLS: [&'static str; 4] = ["NORMAL", "EDITED", "RECALLED", "DELETED"];

    /// The Avro symbol index of this state.
    pub const fn index(&self) -> u32 {
        match self {
            MessageState::Normal => 0,
            MessageState::Edited { .. } => 1,
            MessageState::Recalled { .. } => 2,
            MessageState::Deleted { .. } => 3,
        }
    }

    /// The Avro symbol, e.g. `"RECALLED"`; also the label used in metrics and logs.
    pub const fn symbol(&self) -> &'static str {
        Self::SYMBOLS[self.index() as usize]
    }

    /// Whether the state is final (recalled or deleted): no later edit outranks it.
    pub const fn is_final(&self) -> bool {
        matches!(
            self,
            MessageState::Recalled { .. } | MessageState::Deleted { .. }
        )
    }

    /// Server time of the last mutation; `None` when `Normal`.
    pub const fn mutated_at_us(&self) -> Option<i64> {
        match self {
            MessageState::Normal => None,
            MessageState::Edited { at_us, .. }
            | MessageState::Recalled { at_us, .. }
            | MessageState::Deleted { at_us, .. } => Some(*at_us),
        }
    }

    /// Who made the last mutation; `None` when `Normal`.
    pub fn mutated_by(&self) -> Option<&str> {
        match self {
            MessageState::Normal => None,
            MessageState::Edited { by, .. }
            | MessageState::Recalled { by, .. }
            | MessageState::Deleted { by, .. } => Some(by),
        }
    }

    /// Number of edits (0 unless `Edited`).
    pub const fn edit_count(&self) -> u32 {
        match self {
            MessageState::Edited { count, .. } => *count,
            _ => 0,
        }
    }

    /// The state from its wire parts (symbol index, `mutated_at`, `mutated_by`, `edit_count`);
    /// `None` for an index outside the shipped symbols.
    pub fn from_parts(index: u32, at_us: i64, by: String, count: u32) -> Option<MessageState> {
        Some(match index {
            0 => MessageState::Normal,
            1 => MessageState::Edited { at_us, count, by },
            2 => MessageState::Recalled { at_us, by },
            3 => MessageState::Deleted { at_us, by },
            _ => return None,
        })
    }
}

impl ChatMessage {
    /// The version of this message: what orders two records of one seq everywhere they meet —
    /// the CQL write timestamp of its cells and the 16-hex-digit prefix of its window member.
    /// `server_time_us` as sent, the mutation's time once mutated, and for a final state that
    /// time with [`FINAL_VERSION_BIT`] set.
    pub const fn version(&self) -> i64 {
        match &self.state {
            MessageState::Normal => self.server_time_us,
            MessageState::Edited { at_us, .. } => *at_us,
            MessageState::Recalled { at_us, .. } | MessageState::Deleted { at_us, .. } => {
                FINAL_VERSION_BIT | *at_us
            }
        }
    }

    /// Whether the message is anything but [`MessageState::Normal`].
    pub const fn is_mutated(&self) -> bool {
        !matches!(self.state, MessageState::Normal)
    }
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
            state: MessageState::Normal,
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
