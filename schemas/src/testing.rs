//! Test messages for chatlog's tests and benchmarks (cargo feature `testing`; enable it in a
//! crate's `[dev-dependencies]`, never in `[dependencies]`).
//!
//! One builder instead of a hand-written `ChatMessage { … }` per test file: the message of a
//! session and seq is deterministic, so a test can build it again to compare with what it reads
//! back. A test that needs another field says so with struct update syntax.
//!
//! ```
//! use chatlog_schemas::ChatMessage;
//! use chatlog_schemas::testing::{BASE_TIME_US, message, message_at};
//!
//! let m = message("s1", 3);
//! assert_eq!((m.msg_id.as_str(), m.client_msg_id.as_str()), ("s1-m3", "s1-c3"));
//! // An edit of the same seq: other content, a later server time.
//! let edited = message_at("s1", 3, BASE_TIME_US, 1);
//! assert!(edited.server_time_us > m.server_time_us && edited.content != m.content);
//! let image = ChatMessage { content: vec![0, 255], ..message("s1", 4) };
//! assert_eq!(image.seq, 4);
//! ```

use std::collections::BTreeMap;

use crate::{ChatMessage, ContentType, MessageState, SCHEMA_V2_JSON, SessionType};

/// The default base time of [`message`]: 2023-11-14, a fixed time in the past (the microseconds
/// of 1_700_000_000 s), so messages are old enough to be settled and identical in every run.
pub const BASE_TIME_US: i64 = 1_700_000_000_000_000;

/// The message of `session` with `seq` at [`BASE_TIME_US`]: [`message_at`] with version 0.
pub fn message(session: &str, seq: i64) -> ChatMessage {
    message_at(session, seq, BASE_TIME_US, 0)
}

/// The message of `session` with `seq`, stamped from `base_time_us` (µs since the Unix epoch;
/// tests that need realistic, distinct times per run pass now); `version` tells edits of one seq
/// apart: a higher version has other content and a later server time.
///
/// Its fields: `msg_id` `{session}-m{seq}`, `client_msg_id` `{session}-c{seq}`, a group session,
/// sender `user-{seq % 7}`, text `hello {seq} v{version}`, `send_time_ms` the base time in ms,
/// `server_time_us` the base time + `seq * 10` + version (increasing with seq, and with version
/// within one seq), no extensions.
pub fn message_at(session: &str, seq: i64, base_time_us: i64, version: i64) -> ChatMessage {
    ChatMessage {
        msg_id: format!("{session}-m{seq}"),
        client_msg_id: format!("{session}-c{seq}"),
        session_id: session.to_owned(),
        session_type: SessionType::Group,
        seq,
        sender_id: format!("user-{}", seq % 7),
        content_type: ContentType::Text,
        content: format!("hello {seq} v{version}").into_bytes(),
        send_time_ms: base_time_us / 1000,
        server_time_us: base_time_us + seq * 10 + version,
        ext: BTreeMap::new(),
        state: Default::default(),
    }
}

/// `m` edited by its sender at `at_us` (its `count`th edit) to `content`.
pub fn edited(m: &ChatMessage, at_us: i64, count: u32, content: &[u8]) -> ChatMessage {
    ChatMessage {
        content: content.to_vec(),
        state: MessageState::Edited {
            at_us,
            count,
            by: m.sender_id.clone(),
        },
        ..m.clone()
    }
}

/// `m` recalled by its sender at `at_us`: content and ext removed.
pub fn recalled(m: &ChatMessage, at_us: i64) -> ChatMessage {
    ChatMessage {
        content: Vec::new(),
        ext: BTreeMap::new(),
        state: MessageState::Recalled {
            at_us,
            by: m.sender_id.clone(),
        },
        ..m.clone()
    }
}

/// `m` deleted for everyone by `by` at `at_us`: content and ext removed.
pub fn deleted(m: &ChatMessage, at_us: i64, by: &str) -> ChatMessage {
    ChatMessage {
        content: Vec::new(),
        ext: BTreeMap::new(),
        state: MessageState::Deleted {
            at_us,
            by: by.to_owned(),
        },
        ..m.clone()
    }
}

/// The messages of `session` with `seqs` ([`message`] of each).
pub fn messages(session: &str, seqs: impl IntoIterator<Item = i64>) -> Vec<ChatMessage> {
    seqs.into_iter().map(|s| message(session, s)).collect()
}

/// Schema v2 with one more `ContentType` symbol at the end, as a newer producer might ship: for
/// tests of how a reader resolves a symbol it does not know.
pub fn schema_v2_with_content_type(symbol: &str) -> serde_json::Value {
    let mut schema: serde_json::Value =
        serde_json::from_str(SCHEMA_V2_JSON).expect("the shipped v2 schema is JSON");
    let fields = schema["fields"].as_array_mut().expect("v2 has fields");
    let content_type = fields
        .iter_mut()
        .find(|f| f["name"] == "content_type")
        .expect("v2 has content_type");
    content_type["type"]["symbols"]
        .as_array_mut()
        .expect("content_type is an enum")
        .push(symbol.into());
    schema
}
