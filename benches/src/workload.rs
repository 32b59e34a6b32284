//! The messages every scenario sends: fixed-width ids and a fixed-size text body, so every record
//! has (within a byte of varint) the same encoded size and Kafka's `ProducerPerformance` can be given
//! exactly that record size.

use std::collections::BTreeMap;
use std::io::Write as _;

use chatlog_producer::{NewMessage, Sent};
use chatlog_schemas::{ChatMessage, Codec, ContentType, SessionType};

/// The sessions and message shape of one run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Session ids, `<run>_s<i>`.
    pub sessions: Vec<String>,
    /// Bytes of each message's content.
    pub content_bytes: usize,
    /// The client send time of every message (ms): fixed, so a message can be rebuilt from its
    /// index without keeping it.
    pub send_time_ms: i64,
}

const FILLER: &str = "The quick brown fox jumps over the lazy dog; chatlog persists every message \
                      once, in order, and serves the newest ones from the Redis window. ";

impl Workload {
    /// `sessions` sessions named after `run`.
    pub fn new(run: &str, sessions: usize, content_bytes: usize) -> Workload {
        Workload {
            sessions: (0..sessions.max(1))
                .map(|i| format!("{run}_s{i:05}"))
                .collect(),
            content_bytes,
            send_time_ms: chatlog::now_ms(),
        }
    }

    /// Message number `i` (round-robin over the sessions).
    pub fn message(&self, i: usize) -> NewMessage {
        let session_id = self.sessions[i % self.sessions.len()].clone();
        // Sized once: grown filler by filler it was reallocated each time; building messages was
        // 17 % of the sending process's samples in P3′ (perf) — load generator, not library.
        let mut content = Vec::with_capacity(self.content_bytes.max(12) + FILLER.len());
        let _ = write!(content, "#{i:010} ");
        while content.len() < self.content_bytes {
            content.extend_from_slice(FILLER.as_bytes());
        }
        content.truncate(self.content_bytes);
        NewMessage {
            client_msg_id: format!("c{i:010}"),
            session_id,
            session_type: SessionType::Group,
            sender_id: format!("user-{:05}", i % 10_000),
            content_type: ContentType::Text,
            content,
            send_time_ms: self.send_time_ms,
            ext: BTreeMap::new(),
        }
    }

    /// The stored message of a sent one: what the producer put into Kafka.
    pub fn stored(m: &NewMessage, sent: &Sent) -> ChatMessage {
        ChatMessage {
            msg_id: sent.msg_id.clone(),
            client_msg_id: m.client_msg_id.clone(),
            session_id: m.session_id.clone(),
            session_type: m.session_type,
            seq: sent.seq,
            sender_id: m.sender_id.clone(),
            content_type: m.content_type,
            content: m.content.clone(),
            send_time_ms: m.send_time_ms,
            server_time_us: sent.server_time_us,
            ext: m.ext.clone(),
            state: Default::default(),
        }
    }

    /// The encoded size of a typical record (what `ProducerPerformance --record-size` gets).
    pub fn record_bytes(&self) -> usize {
        let m = self.message(123_456);
        let sent = Sent {
            msg_id: "0190a6b2-7c3e-7d4f-8a9b-0c1d2e3f4a5b".into(),
            seq: 1_000,
            server_time_us: 1_732_590_000_125_456,
            partition: 0,
            offset: 0,
            duplicate: false,
        };
        Codec::default()
            .encode(&Self::stored(&m, &sent))
            .map(|b| b.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_its_index_then_filler_at_the_exact_size() {
        let w = Workload::new("run", 3, 160);
        let m = w.message(1234);
        assert_eq!(m.content.len(), 160);
        assert!(m.content.starts_with(b"#0000001234 The quick brown fox"));
        assert_eq!(m.session_id, w.sessions[1234 % 3]);
        assert_eq!(Workload::new("run", 1, 5).message(7).content, b"#0000");
    }
}
