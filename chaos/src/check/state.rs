//! The checker's state while it runs: the findings, and the sets of messages that later checks
//! consult (a resend decides whether an extra row is explained, an overwrite is counted once).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Examples kept per category.
const EXAMPLES: usize = 10;

/// The summary counts of a run (the checker's findings and the run's report carry them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Acknowledged messages (distinct).
    pub acked: usize,
    /// Messages never acknowledged (gave up).
    pub unacked: usize,
    /// See [`crate::check`].
    pub lost: usize,
    /// See [`crate::check`].
    pub duplicated: usize,
    /// See [`crate::check`].
    pub reordered: usize,
    /// See [`crate::check`].
    pub window_mismatches: usize,
    /// See [`crate::check`] and [`crate::oracle`].
    pub overwritten: usize,
    /// See [`crate::oracle`].
    pub false_missing: usize,
    /// Mutated messages whose CQL row, window member or final history read is not the state
    /// their acknowledged mutations left (see [`crate::check`]).
    pub mutation_mismatches: usize,
    /// Acknowledged mutations.
    pub mutations: usize,
}

/// Everything the checker counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// The summary counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Acknowledged seqs that the final sweep (every session read with `after` from 0 to its end)
    /// neither returned nor reported: history's view ends below them. Fails the run; printed on a
    /// line of its own.
    pub not_returned: usize,
    /// The parts of the counts.
    pub details: Details,
    /// Up to 10 examples per problem.
    pub examples: BTreeMap<String, Vec<String>>,
}

/// The parts of the summary counts, and what is only informative.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Details {
    /// Acknowledged messages without a row at their seq (→ lost).
    pub missing_rows: usize,
    /// Rows at an acknowledged seq that hold the acknowledged message (same msg_id) but differ
    /// from it in some field (→ lost).
    pub wrong_rows: usize,
    /// Acknowledged messages whose (session, seq) row holds another message (another msg_id)
    /// after the drain (→ overwritten).
    pub overwritten_rows: usize,
    /// Acknowledged messages the online oracle saw replaced by another message at their seq
    /// (→ overwritten; counted once with the above).
    pub overwritten_online: usize,
    /// (session, seq) that a read returned with another message's content (→ overwritten).
    pub content_mismatches: usize,
    /// (session, seq) reported missing by a read that began after the message's ack (→ false
    /// missing).
    pub missing_after_ack: usize,
    /// (session, seq) reported missing less than the settle horizon after the allocation of the
    /// message acknowledged there (→ false missing).
    pub missing_within_horizon: usize,
    /// The online oracle's reads and what they reported.
    pub oracle: crate::oracle::Observations,
    /// Rows whose writetime() is not the message's server time (→ lost).
    pub writetime_mismatches: usize,
    /// Acknowledged messages stored or allocated twice (→ duplicated).
    pub duplicated_messages: usize,
    /// (session, seq) acknowledged for two different messages (→ duplicated).
    pub seqs_used_twice: usize,
    /// Rows whose client_msg_id no send of the run explains (→ duplicated).
    pub unexplained_rows: usize,
    /// Messages stored twice because Redis lost the idempotency records between two sends of
    /// them: the documented limit of the seq allocator (not counted as duplicated).
    pub known_limit_duplicates: usize,
    /// Rows of messages whose sends never got an ack (allowed: the send may have reached Kafka).
    pub unacked_rows: usize,
    /// Resends (same client_msg_id after an ack).
    pub resends: usize,
    /// Resends that got the same seq and msg_id back.
    pub resends_same_seq: usize,
    /// Resends of an acknowledged client_msg_id with another content.
    pub conflicting_resends: usize,
    /// Conflicting resends refused with `conflict`, as they must be.
    pub conflicting_refused: usize,
    /// Conflicting resends acknowledged (→ overwritten: the client was told its edit is the
    /// message), unless Redis lost the idempotency record between the two sends (the known limit:
    /// the edit is then stored as a second message, counted in `known_limit_duplicates`).
    pub conflicting_acked: usize,
    /// Conflicting resends that ended with another error (informative).
    pub conflicting_other: usize,
    /// Acks with a retry before them (attempts > 1).
    pub retried_acks: usize,
    /// Rows read from CQL for the run's sessions.
    pub cql_rows: usize,
    /// Windows checked (sessions).
    pub windows_checked: usize,
    /// Windows holding min(W, rows) members.
    pub windows_full: usize,
    /// Windows holding fewer (after a FLUSHALL): fine if they are the newest rows.
    pub windows_short: usize,
    /// Empty windows.
    pub windows_empty: usize,
    /// Windows written in another Redis epoch (a session quiet since a rollback or failover): not
    /// served, not compared.
    pub windows_other_epoch: usize,
    /// Mutations the load asked for (any outcome).
    pub mutations: usize,
    /// Acknowledged mutations that changed nothing (a recall or delete of a final message).
    pub mutations_unchanged: usize,
    /// Mutations refused by the producer, by reason (`final`: an edit of a recalled or deleted
    /// message).
    pub mutations_refused: BTreeMap<String, usize>,
    /// Mutations given up (never acknowledged nor refused).
    pub mutations_given_up: usize,
    /// Failed mutation attempts that may have produced the mutation anyway (Kafka errors).
    pub mutation_uncertain_attempts: usize,
    /// Messages with at least one recorded mutation.
    pub mutated_messages: usize,
    /// Mutated messages expected edited, recalled, deleted at the end.
    pub final_edited: usize,
    /// See `final_edited`.
    pub final_recalled: usize,
    /// See `final_edited`.
    pub final_deleted: usize,
    /// CQL rows of mutated messages not in the expected state (→ mutation mismatches).
    pub mutation_mismatches_cql: usize,
    /// Window members of mutated messages not in the expected state (→ mutation mismatches).
    pub mutation_mismatches_window: usize,
    /// Final-sweep copies of mutated messages not in the expected state (→ mutation mismatches).
    pub mutation_mismatches_history: usize,
    /// Poison records produced.
    pub poison: usize,
    /// DLQ records read under read_committed.
    pub dlq_committed: usize,
    /// DLQ records read under read_uncommitted (includes aborted transactions' records).
    pub dlq_uncommitted: usize,
    /// Committed DLQ records that are truncated copies (the record was larger than the DLQ takes).
    pub dlq_truncated: usize,
    /// Poison records missing from the DLQ (→ lost).
    pub dlq_missing: usize,
    /// DLQ records of a source record already seen (→ duplicated).
    pub dlq_duplicates: usize,
    /// DLQ records that are not one of the run's poison records (→ duplicated).
    pub dlq_unexpected: usize,
    /// DLQ records with a reason other than the one their kind calls for (→ lost: the record is
    /// not there as expected).
    pub dlq_wrong_reason: usize,
}

/// The checker's state: the findings, and the messages (session, number) already judged.
#[derive(Default)]
pub(super) struct Check {
    /// What is counted.
    pub(super) f: Findings,
    /// Acknowledged messages stored or allocated twice.
    pub(super) dup_messages: BTreeSet<(usize, usize)>,
    /// Acknowledged messages replaced by another message at their seq.
    pub(super) overwritten: BTreeSet<(usize, usize)>,
    /// Messages stored twice because Redis lost their idempotency record (the known limit).
    pub(super) known_limit: BTreeSet<(usize, usize)>,
    /// When a message was last acknowledged (its resend's or conflicting resend's ack).
    pub(super) last_ack_of: BTreeMap<(usize, usize), f64>,
    /// (session, seq) of edits stored as messages of their own under the known limit: reads
    /// return the edited content there, which is no mismatch.
    pub(super) known_limit_edits: BTreeSet<(usize, i64)>,
    /// What each mutated message may be at the end.
    pub(super) expected: BTreeMap<(usize, usize), super::expected::Expected>,
    /// Mutated messages found in another state (each counted once).
    pub(super) mismatched: BTreeSet<(usize, usize)>,
}

impl Check {
    /// Keeps `text` as an example of `what` (up to [`EXAMPLES`] each).
    pub(super) fn example(&mut self, what: &str, text: String) {
        let list = self.f.examples.entry(what.to_owned()).or_default();
        if list.len() < EXAMPLES {
            list.push(text);
        }
    }

    /// Counts message `key` as a mutation mismatch (once) and keeps `text` as an example of
    /// `what`.
    pub(super) fn mismatch(&mut self, key: (usize, usize), what: &str, text: String) {
        self.mismatched.insert(key);
        self.example(what, text);
    }

    /// The summary counts from their parts.
    pub(super) fn finish(mut self) -> Findings {
        self.f.counts.mutation_mismatches = self.mismatched.len();
        self.f.counts.overwritten = self.overwritten.len() + self.f.details.content_mismatches;
        let d = &self.f.details;
        self.f.counts.lost = d.missing_rows
            + d.wrong_rows
            + d.writetime_mismatches
            + d.dlq_missing
            + d.dlq_wrong_reason;
        self.f.counts.duplicated = d.duplicated_messages
            + d.seqs_used_twice
            + d.unexplained_rows
            + d.dlq_duplicates
            + d.dlq_unexpected;
        self.f
    }
}
