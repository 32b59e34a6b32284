//! Test messages for chatlog's tests and benchmarks (cargo feature `testing`; enable it in a
//! crate's `[dev-dependencies]`, never in `[dependencies]`).
//!
//! One builder instead of a hand-written `ChatMessage { … }` per test file: the message of a
//! session and seq is deterministic, so a test can build it again to compare with what it reads
//! back.
//!
//! ```
//! use chatlog_schemas::testing::message;
//!
//! let m = message("s1", 3).build();
//! assert_eq!((m.msg_id.as_str(), m.client_msg_id.as_str()), ("s1-m3", "s1-c3"));
//! // An edit of the same seq: other content, a later server time.
//! let edited = message("s1", 3).version(1).build();
//! assert!(edited.server_time_us > m.server_time_us && edited.content != m.content);
//! ```

use std::collections::BTreeMap;

use crate::{ChatMessage, ContentType, SessionType};

/// The default base time of [`message`]: 2023-11-14, a fixed time in the past (the microseconds
/// of 1_700_000_000 s), so messages are old enough to be settled and identical in every run.
pub const BASE_TIME_US: i64 = 1_700_000_000_000_000;

/// A builder of the message of `session` with `seq` (see [`MessageBuilder::build`] for its fields).
pub fn message(session: &str, seq: i64) -> MessageBuilder {
    MessageBuilder {
        session: session.to_owned(),
        seq,
        base_time_us: BASE_TIME_US,
        version: 0,
        content: None,
        ext: BTreeMap::new(),
    }
}

/// Builds a test [`ChatMessage`]; start it with [`message`].
#[derive(Debug, Clone)]
#[must_use = "call build() for the message"]
pub struct MessageBuilder {
    session: String,
    seq: i64,
    base_time_us: i64,
    version: i64,
    content: Option<Vec<u8>>,
    ext: BTreeMap<String, String>,
}

impl MessageBuilder {
    /// The time the session's messages are stamped from, in µs since the Unix epoch (default
    /// [`BASE_TIME_US`]; tests that need realistic, distinct times per run pass now).
    pub fn base_time_us(mut self, base_time_us: i64) -> Self {
        self.base_time_us = base_time_us;
        self
    }

    /// Which edit of the seq this is (default 0): a higher version has other content and a later
    /// server time, as a re-written message would.
    pub fn version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }

    /// The payload instead of the default text (e.g. a fixed size for benchmarks).
    pub fn content(mut self, content: impl Into<Vec<u8>>) -> Self {
        self.content = Some(content.into());
        self
    }

    /// Adds the extension `key` = `value` (default: no extensions).
    pub fn ext(mut self, key: &str, value: impl Into<String>) -> Self {
        self.ext.insert(key.to_owned(), value.into());
        self
    }

    /// The message: `msg_id` `{session}-m{seq}`, `client_msg_id` `{session}-c{seq}`, a group
    /// session, sender `user-{seq % 7}`, text `hello {seq} v{version}`, `send_time_ms` the base
    /// time in ms, `server_time_us` the base time + `seq * 10` + version (increasing with seq,
    /// and with version within one seq).
    pub fn build(self) -> ChatMessage {
        let MessageBuilder {
            session,
            seq,
            base_time_us,
            version,
            content,
            ext,
        } = self;
        ChatMessage {
            msg_id: format!("{session}-m{seq}"),
            client_msg_id: format!("{session}-c{seq}"),
            session_type: SessionType::Group,
            seq,
            sender_id: format!("user-{}", seq % 7),
            content_type: ContentType::Text,
            content: content.unwrap_or_else(|| format!("hello {seq} v{version}").into_bytes()),
            send_time_ms: base_time_us / 1000,
            server_time_us: base_time_us + seq * 10 + version,
            ext,
            session_id: session,
        }
    }
}

impl From<MessageBuilder> for ChatMessage {
    fn from(builder: MessageBuilder) -> ChatMessage {
        builder.build()
    }
}

/// The messages of `session` with `seqs`, built with the defaults.
pub fn messages(session: &str, seqs: impl IntoIterator<Item = i64>) -> Vec<ChatMessage> {
    seqs.into_iter()
        .map(|s| message(session, s).build())
        .collect()
}
