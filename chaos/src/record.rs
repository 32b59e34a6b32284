//! What the load sends and what it records: the plan (deterministic messages), every
//! acknowledged send, resend and poison record. A leaf module: the load writes these, the checker
//! and the oracle read them, and none of them is imported back here.

use std::collections::BTreeMap;

use chatlog_producer::NewMessage;
use chatlog_schemas::{ChatMessage, ContentType, MessageState, SessionType};
use serde::Serialize;

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

    /// The new content of the `k`-th mutation of message `j` of session `s` when it is an edit:
    /// recognisable as an edit of that message ([`Plan::is_edit_of`]) and unique per edit, so
    /// a stored content names the edit that wrote it.
    pub fn edit_content(&self, s: usize, j: usize, k: usize) -> Vec<u8> {
        format!("chaos {} s{s} #{j} edit {k}", self.run).into_bytes()
    }

    /// Whether `content` is one of the edit contents of message `j` of session `s`.
    pub fn is_edit_of(&self, s: usize, j: usize, content: &[u8]) -> bool {
        let prefix = format!("chaos {} s{s} #{j} edit ", self.run);
        content
            .strip_prefix(prefix.as_bytes())
            .and_then(|k| std::str::from_utf8(k).ok())
            .is_some_and(|k| k.parse::<usize>().is_ok())
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
            state: Default::default(),
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
    /// The producer instance that sent it.
    pub via: Via,
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

/// A second send of an acknowledged message with the same client_msg_id but another content (a
/// client bug or a hostile client): the producer must refuse it (`conflict`), never acknowledge it.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictingResend {
    /// Session number.
    pub session: usize,
    /// Message number.
    pub index: usize,
    /// When the first send's first attempt started (s since start).
    pub first_try_at: f64,
    /// When the conflicting send ended (s since start).
    pub at: f64,
    /// `conflict` (refused as it must be), `acked` or the reason of the last other error.
    pub outcome: String,
    /// The seq it was acknowledged with, if it was.
    pub acked_seq: Option<i64>,
}

/// What a mutation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationKind {
    /// `Producer::edit` by the sender.
    Edit,
    /// `Producer::recall` by the sender.
    Recall,
    /// `Producer::delete_for_everyone`, by the sender or an admin.
    DeleteForEveryone,
}

impl MutationKind {
    /// The state symbol a landed mutation of this kind leaves (`EDITED`, `RECALLED`, `DELETED`).
    pub fn symbol(self) -> &'static str {
        match self {
            MutationKind::Edit => "EDITED",
            MutationKind::Recall => "RECALLED",
            MutationKind::DeleteForEveryone => "DELETED",
        }
    }
}

/// The part of a message a mutation changes, as the checker compares it: version, state symbol,
/// content (hash and length), edit count and who made the last mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateKey {
    /// [`ChatMessage::version`].
    pub version: i64,
    /// The state's symbol (`NORMAL`, `EDITED`, `RECALLED`, `DELETED`).
    pub state: &'static str,
    /// [`payload_hash`] of the content.
    pub content_hash: u64,
    /// Content length.
    pub content_len: usize,
    /// Edits so far (0 unless edited).
    pub edit_count: u32,
    /// Who made the last mutation (empty as sent).
    pub by: String,
}

impl StateKey {
    /// The key of `m`.
    pub fn of(m: &ChatMessage) -> StateKey {
        StateKey {
            version: m.version(),
            state: m.state.symbol(),
            content_hash: payload_hash(&m.content),
            content_len: m.content.len(),
            edit_count: m.state.edit_count(),
            by: m.state.mutated_by().unwrap_or_default().to_owned(),
        }
    }

    /// Whether the state is final (recalled or deleted).
    pub fn is_final(&self) -> bool {
        self.state == MessageState::SYMBOLS[2] || self.state == MessageState::SYMBOLS[3]
    }
}

impl std::fmt::Display for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} v{} ({} bytes, hash {:016x}, edits {}, by {:?})",
            self.state, self.version, self.content_len, self.content_hash, self.edit_count, self.by
        )
    }
}

/// One mutation the load asked for (retried like a send until acknowledged, refused or given up).
#[derive(Debug, Clone, Serialize)]
pub struct Mutation {
    /// Session number.
    pub session: usize,
    /// Message number within the session.
    pub index: usize,
    /// The message's seq.
    pub seq: i64,
    /// Which mutation.
    pub kind: MutationKind,
    /// Who asked (the sender, or an admin's user id).
    pub by: String,
    /// [`payload_hash`] of the new content of an edit.
    pub content_hash: Option<u64>,
    /// When the first attempt started (s since the run started).
    pub first_try_at: f64,
    /// When it ended (ack, refusal, give-up).
    pub ended_at: f64,
    /// Attempts made.
    pub attempts: u32,
    /// Failed attempts that may have produced it anyway (a Kafka error: the record may be in
    /// the topic). Each may have landed with a version of its own.
    pub uncertain_attempts: u32,
    /// How it ended.
    pub outcome: MutationOutcome,
}

/// How a mutation ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MutationOutcome {
    /// Acknowledged: the message in its new state is in Kafka.
    Acked(MutationAck),
    /// Refused by the producer (`final`, `not_allowed`, …): nothing of the last attempt was
    /// produced.
    Refused(String),
    /// Given up after [`crate::load::GIVE_UP`] (or the load closed); the last error's reason.
    GaveUp(String),
}

/// What an acknowledged mutation returned.
#[derive(Debug, Clone, Serialize)]
pub struct MutationAck {
    /// The message's state after it ([`StateKey::of`] of the returned message).
    pub key: StateKey,
    /// The producer changed nothing (a recall or delete of a message already final): `key` is
    /// the state found.
    pub unchanged: bool,
    /// Kafka partition (of the mutation's record; -1 when unchanged).
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
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
    /// [`payload_hash`] of its value (None: no value).
    pub payload_hash: Option<u64>,
    /// Length of its value.
    pub payload_len: usize,
    /// SHA-256 of its value, lowercase hex (what a truncated DLQ copy carries).
    pub payload_sha256: Option<String>,
}

/// What the load did.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Acknowledged sends, by session then index (None: never acknowledged).
    pub acks: Vec<Vec<Option<Ack>>>,
    /// Second sends of acknowledged messages.
    pub resends: Vec<Resend>,
    /// Conflicting second sends of acknowledged messages.
    pub conflicting: Vec<ConflictingResend>,
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
    /// Mutations of acknowledged messages (edit, recall, delete for everyone), in the order they
    /// ended.
    pub mutations: Vec<Mutation>,
    /// Failed mutation attempts by reason (`not_found`, `kafka`, `final`, …).
    pub mutation_errors: BTreeMap<String, usize>,
}

/// A message the load has acknowledged, as the online oracle looks it up by seq.
#[derive(Debug, Clone)]
pub struct LiveAck {
    /// Message number within the session.
    pub index: usize,
    /// Its msg_id.
    pub msg_id: String,
    /// When it was acknowledged (s since the run started).
    pub acked_at: f64,
}

/// The number of the producer instance that sent a message, for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Instance A.
    A,
    /// Instance B (during `two_producers`).
    B,
    /// A late send: allocated by the broken instance, produced later through A.
    Late,
}

/// FNV-1a of a payload (the checker compares DLQ payloads with what was produced).
pub fn payload_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    openssl::sha::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
