//! What one mutated message may be at the end of a run: the state its acknowledged mutation with
//! the highest version left, or one an *uncertain* attempt (a Kafka error after it may have
//! landed) could have left above it. Plain data and judgement, no I/O: the checker's state holds
//! one per mutated message, and [`super::mutations`] compares the stores with it.

use std::collections::BTreeMap;

use chatlog_schemas::FINAL_VERSION_BIT;

use crate::record::{Mutation, MutationKind, MutationOutcome, StateKey};

/// A state an uncertain attempt could have left.
#[derive(Debug, Clone)]
struct Possible {
    kind: MutationKind,
    by: String,
    content_hash: Option<u64>,
}

impl Possible {
    fn could_be(&self, got: &StateKey) -> bool {
        let final_bit = got.version & FINAL_VERSION_BIT != 0;
        got.state == self.kind.symbol()
            && got.by == self.by
            && match self.kind {
                MutationKind::Edit => {
                    !final_bit && got.edit_count >= 1 && Some(got.content_hash) == self.content_hash
                }
                MutationKind::Recall | MutationKind::DeleteForEveryone => {
                    final_bit && got.content_len == 0
                }
            }
    }
}

/// What one mutated message may be at the end.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The state left by the acknowledged mutation with the highest version, or the message as
    /// sent when none was acknowledged.
    pub acked: StateKey,
    /// The message's ext as sent (kept by edits, removed by recall and delete).
    ext: BTreeMap<String, String>,
    /// What uncertain attempts could have left.
    uncertain: Vec<Possible>,
    /// Acknowledged mutations of the message.
    pub acked_mutations: usize,
}

impl Expected {
    /// The expectation for a message stored as `original` (the acknowledged send) with the
    /// recorded `mutations` (of this message only, any outcome).
    pub fn new(original: &chatlog_schemas::ChatMessage, mutations: &[&Mutation]) -> Expected {
        let mut acked = StateKey::of(original);
        let mut acked_mutations = 0;
        let mut uncertain = Vec::new();
        for m in mutations {
            if let MutationOutcome::Acked(a) = &m.outcome {
                acked_mutations += 1;
                if a.key.version > acked.version {
                    acked = a.key.clone();
                }
            }
            if m.uncertain_attempts > 0 {
                uncertain.push(Possible {
                    kind: m.kind,
                    by: m.by.clone(),
                    content_hash: m.content_hash,
                });
            }
        }
        Expected {
            acked,
            ext: original.ext.clone(),
            uncertain,
            acked_mutations,
        }
    }

    /// Whether a copy of the message whose mutable part is `got` (with ext `ext`) is a final
    /// state the record allows; `Some(why)` if not.
    pub fn judge(&self, got: &StateKey, ext: &BTreeMap<String, String>) -> Option<String> {
        let final_state = got.is_final();
        if final_state && (got.content_len != 0 || !ext.is_empty()) {
            return Some(format!(
                "{got}: a recalled or deleted message with content or ext left"
            ));
        }
        if !final_state && *ext != self.ext {
            return Some(format!("{got}: ext {ext:?}, sent with {:?}", self.ext));
        }
        if *got == self.acked {
            return None;
        }
        if got.version > self.acked.version && self.uncertain.iter().any(|p| p.could_be(got)) {
            return None;
        }
        Some(format!(
            "{got}; the last acknowledged state is {}{}",
            self.acked,
            if self.uncertain.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} uncertain attempts could have left a higher one)",
                    self.uncertain.len()
                )
            }
        ))
    }
}
