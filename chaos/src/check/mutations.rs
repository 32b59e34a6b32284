//! Mutations: every mutated message's final state — its CQL row, its window member (when the
//! window holds it) and what the final history sweep returned — must be the state its
//! acknowledged mutation with the highest version left, or (when none was acknowledged) the
//! message as sent. An attempt that failed with a Kafka error may have landed anyway (the record
//! may be in the topic, with a version of its own): a final state such an *uncertain* attempt
//! could have written is accepted too when its version is above every acknowledged one's.
//!
//! The judging is in plain functions ([`Expected::new`], [`Expected::judge`]) so that the
//! checker's self-test can feed them hand-made histories.

use std::collections::BTreeMap;

use chatlog_schemas::Codec;
use chatlog_store::window;

use crate::record::{Ack, Mutation, MutationKind, MutationOutcome, Plan, StateKey};

pub use super::expected::Expected;
use super::inputs::Inputs;
use super::state::Check;

/// The expectations of every message with a recorded mutation, by (session, message number);
/// counts the mutations in the details, and counts as mismatches the acknowledgements that do not
/// carry what was asked and the messages the producer called nonexistent.
pub(super) fn expected(c: &mut Check, inp: &Inputs<'_>) -> BTreeMap<(usize, usize), Expected> {
    let mut by_message: BTreeMap<(usize, usize), Vec<&Mutation>> = BTreeMap::new();
    let d = &mut c.f.details;
    d.mutations = inp.load.mutations.len();
    for m in &inp.load.mutations {
        by_message.entry((m.session, m.index)).or_default().push(m);
        d.mutation_uncertain_attempts += m.uncertain_attempts as usize;
        match &m.outcome {
            MutationOutcome::Acked(a) if a.unchanged => d.mutations_unchanged += 1,
            MutationOutcome::Acked(_) => {}
            MutationOutcome::Refused(r) => *d.mutations_refused.entry(r.clone()).or_default() += 1,
            MutationOutcome::GaveUp(_) => d.mutations_given_up += 1,
        }
    }
    c.f.counts.mutations = inp
        .load
        .mutations
        .iter()
        .filter(|m| matches!(m.outcome, MutationOutcome::Acked(_)))
        .count();
    let mut out = BTreeMap::new();
    for ((s, j), list) in by_message {
        let Some(ack) = inp
            .load
            .acks
            .get(s)
            .and_then(|a| a.get(j))
            .and_then(|a| a.as_ref())
        else {
            continue;
        };
        for m in &list {
            if let Some(why) = acked_wrong(m) {
                c.mismatch(
                    (s, j),
                    "mutation_acked_wrong",
                    format!("{} seq {}: {why}", inp.plan.session_id(s), m.seq),
                );
            }
        }
        out.insert((s, j), Expected::new(&inp.plan.stored(ack), &list));
    }
    c.f.details.mutated_messages = out.len();
    for e in out.values() {
        match e.acked.state {
            "EDITED" => c.f.details.final_edited += 1,
            "RECALLED" => c.f.details.final_recalled += 1,
            "DELETED" => c.f.details.final_deleted += 1,
            _ => {}
        }
    }
    out
}

/// Why an acknowledged mutation does not carry what was asked (or a refusal that says an
/// acknowledged message does not exist).
fn acked_wrong(m: &Mutation) -> Option<String> {
    match &m.outcome {
        MutationOutcome::Acked(a) if a.unchanged => (!a.key.is_final()).then(|| {
            format!(
                "{:?} acknowledged as unchanged, but the message is {}",
                m.kind, a.key
            )
        }),
        MutationOutcome::Acked(a) => {
            let right = a.key.state == m.kind.symbol()
                && a.key.by == m.by
                && match m.kind {
                    MutationKind::Edit => Some(a.key.content_hash) == m.content_hash,
                    _ => a.key.content_len == 0,
                };
            (!right).then(|| format!("{:?} by {} acknowledged as {}", m.kind, m.by, a.key))
        }
        MutationOutcome::Refused(r) if r == "not_found" => Some(format!(
            "{:?} refused: the producer says the acknowledged message does not exist",
            m.kind
        )),
        _ => None,
    }
}

/// The parts of a message no mutation changes are those of `original`.
pub(super) fn same_identity(
    row: &chatlog_schemas::ChatMessage,
    original: &chatlog_schemas::ChatMessage,
) -> bool {
    row.msg_id == original.msg_id
        && row.client_msg_id == original.client_msg_id
        && row.session_id == original.session_id
        && row.session_type == original.session_type
        && row.seq == original.seq
        && row.sender_id == original.sender_id
        && row.content_type == original.content_type
        && row.send_time_ms == original.send_time_ms
        && row.server_time_us == original.server_time_us
}

/// The window members of one session that hold a mutated message: each in the state expected.
pub(super) fn window_members(
    c: &mut Check,
    plan: &Plan,
    codec: &Codec,
    s: usize,
    acks: &[Option<Ack>],
    members: &[(Vec<u8>, f64)],
) {
    for (member, _) in members {
        let Some((version, bytes)) = window::parse_member(member) else {
            continue; // the window check reports a member that is not one
        };
        let Ok(m) = codec.decode(bytes) else {
            continue;
        };
        let Some(j) = Plan::index_of(&m.client_msg_id) else {
            continue;
        };
        let Some(ack) = acks.get(j).and_then(|a| a.as_ref()) else {
            continue;
        };
        if ack.msg_id != m.msg_id || ack.seq != m.seq {
            continue; // another message at its seq: overwritten, counted there
        }
        let Some(exp) = c.expected.get(&(s, j)) else {
            continue;
        };
        let key = StateKey::of(&m);
        let why = if version != key.version {
            Some(format!(
                "member prefix {version} is not the message's version {}",
                key.version
            ))
        } else {
            exp.judge(&key, &m.ext)
        };
        if let Some(why) = why {
            c.f.details.mutation_mismatches_window += 1;
            c.mismatch(
                (s, j),
                "mutation_mismatch_window",
                format!("{} seq {}: window member {why}", plan.session_id(s), m.seq),
            );
        }
    }
}

/// What the final history sweep returned for each mutated message: the state expected.
pub(super) fn history(c: &mut Check, inp: &Inputs<'_>) {
    let keys: Vec<(usize, usize)> = c.expected.keys().copied().collect();
    for (s, j) in keys {
        let Some(ack) = inp.load.acks[s][j].as_ref() else {
            continue;
        };
        let Some(copy) = inp.oracle.final_copies.get(&(s, ack.seq)) else {
            continue; // not returned: counted there
        };
        if copy.msg_id != ack.msg_id {
            continue; // another message: overwritten, counted there
        }
        if let Some(why) = c.expected[&(s, j)].judge(&copy.key, &copy.ext) {
            c.f.details.mutation_mismatches_history += 1;
            c.mismatch(
                (s, j),
                "mutation_mismatch_history",
                format!(
                    "{} seq {}: the final sweep returned {why}",
                    inp.plan.session_id(s),
                    ack.seq
                ),
            );
        }
    }
}
