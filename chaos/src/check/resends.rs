//! The resends: a second send with the same client_msg_id must get the same seq and msg_id back;
//! one with another content must be refused. They run first: they decide which extra rows are
//! explained.

use crate::record::Plan;

use super::inputs::Inputs;
use super::state::Check;

/// Resends of acknowledged messages: the same seq and msg_id, or a known-limit duplicate.
pub(super) fn resends(c: &mut Check, inp: &Inputs<'_>) {
    c.f.details.resends = inp.load.resends.len();
    for r in &inp.load.resends {
        let key = (r.session, r.index);
        c.last_ack_of.insert(key, r.acked_at);
        if r.seq == r.first_seq && r.same_msg_id {
            c.f.details.resends_same_seq += 1;
            continue;
        }
        let text = format!(
            "{} {}: first ack seq {} at {:.1}s, resend got seq {} at {:.1}s (same msg_id: {})",
            inp.plan.session_id(r.session),
            Plan::client_msg_id(r.index),
            r.first_seq,
            r.first_acked_at,
            r.seq,
            r.acked_at,
            r.same_msg_id
        );
        // The first send's idempotency record was written when it was allocated, which may be
        // before a loss that ends before its ack arrived (a failover switching clients while the
        // record sat on the old primary): the interval starts at its first attempt.
        let first_try = inp.load.acks[r.session][r.index]
            .as_ref()
            .map_or(r.first_acked_at, |a| a.first_try_at);
        if inp.events.redis_lost_between(first_try, r.acked_at) {
            c.known_limit.insert(key);
            c.example("known_limit_duplicate", text);
        } else {
            c.dup_messages.insert(key);
            c.example("resend_got_another_seq", text);
        }
    }
}

/// Conflicting resends: refused, or acknowledged — an overwrite unless Redis lost the first
/// send's idempotency record in between.
pub(super) fn conflicting(c: &mut Check, inp: &Inputs<'_>) {
    c.f.details.conflicting_resends = inp.load.conflicting.len();
    // (session, seq) of edits stored as messages of their own under the known limit: reads
    // return the edited content there, which is no mismatch.
    for r in &inp.load.conflicting {
        let key = (r.session, r.index);
        match r.outcome.as_str() {
            "conflict" => c.f.details.conflicting_refused += 1,
            "acked" => {
                c.f.details.conflicting_acked += 1;
                let text = format!(
                    "{} {}: another content with the same client_msg_id acknowledged at {:.1}s                      (seq {:?})",
                    inp.plan.session_id(r.session),
                    Plan::client_msg_id(r.index),
                    r.at,
                    r.acked_seq
                );
                if inp.events.redis_lost_between(r.first_try_at, r.at) {
                    c.known_limit.insert(key);
                    c.last_ack_of.insert(key, r.at);
                    if let Some(seq) = r.acked_seq {
                        c.known_limit_edits.insert((r.session, seq));
                    }
                    c.example("known_limit_duplicate", text);
                } else {
                    c.overwritten.insert(key);
                    c.example("conflicting_resend_acked", text);
                }
            }
            _ => c.f.details.conflicting_other += 1,
        }
    }
}
