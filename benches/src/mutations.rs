//! P10's two loads (issue 17): `messages` new messages over `sessions` sessions (the appends),
//! and for each of them one record of its mutated state (the mutations) — an edit with new
//! content of the same size, a recall or a delete for everyone, in turn. Both are built from an
//! index alone, so the harness keeps no message while producing and checks the stored state
//! against the same function afterwards.

use std::ops::Range;

use chatlog_producer::Sent;
use chatlog_schemas::{ChatMessage, MessageState};

use crate::workload::Workload;

/// Who deletes for everyone (a moderator, not the sender).
pub const MODERATOR: &str = "mod-00001";

/// How long after its send a message is mutated (µs): every mutation is a later version.
pub const MUTATION_DELAY_US: i64 = 30_000_000;

/// Which mutations a load holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// Message `i` gets an edit, a recall or a delete for everyone by `i % 3` (the figure).
    #[default]
    Thirds,
    /// Every message gets an edit: records as large as the appends' (the worst case for the
    /// consumer's rows; supplementary).
    Edits,
}

impl Mix {
    /// The kind of mutation message `i` gets.
    pub fn kind(self, i: usize) -> Kind {
        match (self, i % 3) {
            (Mix::Edits, _) | (Mix::Thirds, 0) => Kind::Edit,
            (Mix::Thirds, 1) => Kind::Recall,
            (Mix::Thirds, _) => Kind::Delete,
        }
    }
}

/// The kinds of mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// New content of the same size (`Edited`, count 1, by the sender).
    Edit,
    /// Recalled by its sender (no content left).
    Recall,
    /// Deleted for everyone by [`MODERATOR`] (no content left).
    Delete,
}

/// One round's sessions and messages (see the module docs).
#[derive(Debug, Clone)]
pub struct MutationLoad {
    /// The messages' shape and sessions (message `i` goes to session `i % sessions`).
    pub workload: Workload,
    /// Messages (and mutations).
    pub messages: usize,
    /// Server time of message 0 (µs); message `i` was sent `i` µs later.
    pub first_server_time_us: i64,
    /// Which mutations.
    pub mix: Mix,
}

impl MutationLoad {
    /// `messages` messages over `sessions` sessions named after `prefix`, of `content_bytes`
    /// bytes each, sent from `first_server_time_us` on. Every server time and mutation time
    /// must be in the past when the consumer reads them (it sends future ones to the DLQ): take
    /// `first_server_time_us` at least `messages + MUTATION_DELAY_US` µs before now.
    pub fn new(
        prefix: &str,
        sessions: usize,
        messages: usize,
        content_bytes: usize,
        first_server_time_us: i64,
        mix: Mix,
    ) -> MutationLoad {
        MutationLoad {
            workload: Workload::new(prefix, sessions, content_bytes),
            messages,
            first_server_time_us,
            mix,
        }
    }

    /// All indexes.
    pub fn all(&self) -> Range<usize> {
        0..self.messages
    }

    /// The seq of message `i` in its session (dense from 1: round-robin over the sessions).
    pub fn seq(&self, i: usize) -> i64 {
        (i / self.workload.sessions.len()) as i64 + 1
    }

    /// The highest seq of any session.
    pub fn max_seq(&self) -> i64 {
        self.messages.div_ceil(self.workload.sessions.len()) as i64
    }

    /// Message `i` as sent (state `Normal`): what the appends load carries.
    pub fn original(&self, i: usize) -> ChatMessage {
        let sent = Sent {
            // UUID-shaped, as the producer's, so the records have the producer's size.
            msg_id: format!("0190a6b2-7c3e-7d4f-8a9b-{i:012x}"),
            seq: self.seq(i),
            server_time_us: self.first_server_time_us + i as i64,
            partition: 0,
            offset: 0,
            duplicate: false,
        };
        Workload::stored(&self.workload.message(i), &sent)
    }

    /// The kind of mutation message `i` gets.
    pub fn kind(&self, i: usize) -> Kind {
        self.mix.kind(i)
    }

    /// Message `i` in its mutated state: same seq and ids, a version above the original's.
    pub fn mutation(&self, i: usize) -> ChatMessage {
        let mut m = self.original(i);
        let at_us = m.server_time_us + MUTATION_DELAY_US;
        match self.kind(i) {
            Kind::Edit => {
                let size = m.content.len();
                let mut content = format!("#{i:010} edited: ").into_bytes();
                content.extend(m.content.iter().rev());
                content.truncate(size);
                m.content = content;
                m.state = MessageState::Edited {
                    at_us,
                    count: 1,
                    by: m.sender_id.clone(),
                };
            }
            Kind::Recall => {
                m.content.clear();
                m.ext.clear();
                m.state = MessageState::Recalled {
                    at_us,
                    by: m.sender_id.clone(),
                };
            }
            Kind::Delete => {
                m.content.clear();
                m.ext.clear();
                m.state = MessageState::Deleted {
                    at_us,
                    by: MODERATOR.to_owned(),
                };
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use chatlog_schemas::{Codec, Limits};

    use super::*;

    fn load() -> MutationLoad {
        MutationLoad::new("unit", 7, 100, 160, 1_764_000_000_000_000, Mix::Thirds)
    }

    #[test]
    fn every_mutation_is_a_later_version_of_its_original() {
        let l = load();
        for i in l.all() {
            let (o, m) = (l.original(i), l.mutation(i));
            assert_eq!(
                (&o.session_id, o.seq, &o.msg_id),
                (&m.session_id, m.seq, &m.msg_id),
                "{i}"
            );
            assert!(m.version() > o.version(), "{i}: {m:?} not above {o:?}");
            assert!(!o.is_mutated() && m.is_mutated(), "{i}");
        }
    }

    #[test]
    fn final_states_carry_no_content_and_edits_keep_the_size() {
        let l = load();
        let mut kinds = [0; 3];
        for i in l.all() {
            let (o, m) = (l.original(i), l.mutation(i));
            match l.kind(i) {
                Kind::Edit => {
                    kinds[0] += 1;
                    assert_eq!(m.content.len(), o.content.len(), "{i}");
                    assert_ne!(m.content, o.content, "{i}");
                    assert_eq!(m.state.edit_count(), 1);
                }
                Kind::Recall | Kind::Delete => {
                    kinds[usize::from(l.kind(i) == Kind::Delete) + 1] += 1;
                    assert!(m.state.is_final(), "{i}");
                    assert!(m.content.is_empty() && m.ext.is_empty(), "{i}");
                }
            }
        }
        assert_eq!(kinds, [34, 33, 33], "a third of each kind");
        assert_eq!(
            l.mutation(2).state.mutated_by(),
            Some(MODERATOR),
            "a delete is a moderator's"
        );
    }

    #[test]
    fn the_edits_mix_edits_every_message_at_the_same_size() {
        let l = MutationLoad {
            mix: Mix::Edits,
            ..load()
        };
        for i in l.all() {
            let (o, m) = (l.original(i), l.mutation(i));
            assert_eq!(l.kind(i), Kind::Edit, "{i}");
            assert_eq!(m.content.len(), o.content.len(), "{i}");
            assert!(
                matches!(m.state, MessageState::Edited { count: 1, .. }),
                "{i}"
            );
            assert!(m.version() > o.version(), "{i}");
        }
    }

    #[test]
    fn seqs_are_dense_per_session_and_both_loads_pass_the_codec() {
        let l = load();
        let mut seqs: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for i in l.all() {
            let o = l.original(i);
            seqs.entry(o.session_id.clone()).or_default().push(o.seq);
        }
        assert_eq!(seqs.len(), 7);
        for s in seqs.values() {
            assert_eq!(*s, (1..=s.len() as i64).collect::<Vec<_>>());
            assert!(*s.last().unwrap() <= l.max_seq());
        }
        assert!(seqs.values().any(|s| *s.last().unwrap() == l.max_seq()));
        let codec = Codec::default();
        for i in l.all() {
            for m in [l.original(i), l.mutation(i)] {
                m.validate(&Limits::default())
                    .unwrap_or_else(|e| panic!("{i}: {e} ({m:?})"));
                let bytes = codec.encode(&m).expect("encode");
                let back = codec
                    .decode(&bytes)
                    .unwrap_or_else(|e| panic!("{i}: decode: {e:?} ({m:?})"));
                assert_eq!(back, m, "{i}");
            }
        }
    }
}
