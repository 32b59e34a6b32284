//! (g) What the online oracle and the final sweep saw: overwrites, content mismatches, false
//! `missing` reports, acknowledged seqs history never returned.

use super::inputs::Inputs;
use super::state::Check;

/// Counts what the oracle's reads reported against the record.
pub(super) fn online(c: &mut Check, inp: &Inputs<'_>) {
    // (g) what the online oracle and the final sweep saw.
    let o = inp.oracle;
    c.f.details.overwritten_online = o.overwritten.len();
    for (key, text) in &o.overwritten {
        if c.overwritten.insert(*key) {
            c.example("overwritten_online", text.clone());
        }
    }
    let content_mismatches: Vec<&String> = o
        .content_mismatches
        .iter()
        .filter(|(key, _)| !c.known_limit_edits.contains(key))
        .map(|(_, text)| text)
        .collect();
    c.f.details.content_mismatches = content_mismatches.len();
    for text in content_mismatches {
        c.example("content_mismatch", text.clone());
    }
    let false_missing = crate::oracle::judge_missing(
        o,
        inp.plan,
        &inp.load.acks,
        |us| inp.events.since_start(us),
        inp.horizon.as_secs_f64(),
    );
    c.f.not_returned = o.not_returned.len();
    for text in o.not_returned.values() {
        c.example("not_returned", text.clone());
    }
    for text in false_missing.values() {
        if text.contains("after its ack") {
            c.f.details.missing_after_ack += 1;
            c.example("false_missing_after_ack", text.clone());
        } else {
            c.f.details.missing_within_horizon += 1;
            c.example("false_missing_within_horizon", text.clone());
        }
    }
    c.f.counts.false_missing = false_missing.len();
    c.f.details.oracle = o.clone();
}
