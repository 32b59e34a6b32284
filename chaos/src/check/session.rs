//! Per session: CQL rows and the Redis window, checked against the acks, one function per
//! property.

use std::collections::BTreeMap;

use chatlog_schemas::{ChatMessage, Codec};
use chatlog_store::history::History;
use chatlog_store::{keys, verify, window};
use futures::{StreamExt, TryStreamExt};

use crate::record::{Ack, Plan};

use super::cql::Rows;
use super::inputs::Inputs;
use super::order::order_violations;
use super::state::Check;

/// What is read for one session: its number, rows, window members (member, score) and the
/// verifier's report.
pub(super) struct SessionState {
    s: usize,
    rows: Rows,
    members: Vec<(Vec<u8>, f64)>,
    report: verify::Report,
}

/// Reads every session's rows, window and verifier report (16 at a time).
pub(super) async fn fetch(
    inp: &Inputs<'_>,
    history: &History,
) -> anyhow::Result<Vec<SessionState>> {
    let sessions: Vec<usize> = (0..inp.plan.sessions).collect();
    futures::stream::iter(sessions.into_iter().map(|s| {
        let session_id = inp.plan.session_id(s);
        let mut redis = inp.redis.clone();
        async move {
            let rows = inp.cql.rows(&session_id).await?;
            let members: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
                .arg(keys::window(&session_id))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut redis)
                .await?;
            let report = verify::verify_window(history, &session_id).await?;
            Ok::<_, anyhow::Error>(SessionState {
                s,
                rows,
                members,
                report,
            })
        }
    }))
    .buffer_unordered(16)
    .try_collect()
    .await
}

/// One session as its properties see it: what was read, its id and its acks.
struct Session<'a> {
    state: SessionState,
    id: String,
    acks: &'a [Option<Ack>],
}

/// Every property of one session.
pub(super) fn check_session(
    c: &mut Check,
    inp: &Inputs<'_>,
    codec: &Codec,
    state: SessionState,
) -> anyhow::Result<()> {
    let one = Session {
        id: inp.plan.session_id(state.s),
        acks: &inp.load.acks[state.s],
        state,
    };
    c.f.details.cql_rows += one.state.rows.len();
    c.f.counts.unacked += one.acks.iter().filter(|a| a.is_none()).count();
    acks_at_their_seqs(c, inp, &one);
    real_time_order(c, &one);
    rows_explained(c, inp, &one);
    if !one.state.report.window_epoch_current && !one.state.members.is_empty() {
        // Written before Redis went back in time and untouched since: history never serves it
        // (the final history sweep checks what readers get) and the next message starts it over.
        c.f.details.windows_checked += 1;
        c.f.details.windows_other_epoch += 1;
        return Ok(());
    }
    super::mutations::window_members(
        c,
        inp.plan,
        codec,
        one.state.s,
        one.acks,
        &one.state.members,
    );
    window_is_newest_rows(c, inp, codec, &one)
}

/// (a) each acknowledged message is at its seq, exactly as acknowledged (a mutated one in the
/// state its mutations left, written at that state's version), and not replaced by another
/// message. (b) no seq acknowledged twice.
fn acks_at_their_seqs(c: &mut Check, inp: &Inputs<'_>, one: &Session<'_>) {
    let (s, session_id, acks, rows) = (one.state.s, &one.id, one.acks, &one.state.rows);
    let mut seq_owner: BTreeMap<i64, usize> = BTreeMap::new();
    for ack in acks.iter().flatten() {
        c.f.counts.acked += 1;
        if ack.attempts > 1 {
            c.f.details.retried_acks += 1;
        }
        if let Some(other) = seq_owner.insert(ack.seq, ack.index) {
            c.f.details.seqs_used_twice += 1;
            c.example(
                "seq_used_twice",
                format!(
                    "{session_id}: seq {} acknowledged for {} and {}",
                    ack.seq,
                    Plan::client_msg_id(other),
                    Plan::client_msg_id(ack.index)
                ),
            );
        }
        match rows.get(&ack.seq) {
            None => {
                c.f.details.missing_rows += 1;
                c.example(
                    "missing_row",
                    format!(
                        "{session_id} seq {} ({}, acked at {:.1}s, partition {} offset {})",
                        ack.seq,
                        Plan::client_msg_id(ack.index),
                        ack.acked_at,
                        ack.partition,
                        ack.offset
                    ),
                );
            }
            Some((row, _)) if row.msg_id != ack.msg_id => {
                c.overwritten.insert((s, ack.index));
                c.f.details.overwritten_rows += 1;
                c.example(
                    "overwritten",
                    format!(
                        "{session_id} seq {}: {} acknowledged as msg_id {} at {:.1}s, the row \
                         holds msg_id {} ({})",
                        ack.seq,
                        Plan::client_msg_id(ack.index),
                        ack.msg_id,
                        ack.acked_at,
                        row.msg_id,
                        row.client_msg_id
                    ),
                );
            }
            Some((row, writetime)) if c.expected.contains_key(&(s, ack.index)) => {
                // A mutated message: its identity as sent, its state as the mutations left it,
                // written at that state's version.
                let want = inp.plan.stored(ack);
                let key = crate::record::StateKey::of(row);
                if !super::mutations::same_identity(row, &want) {
                    c.f.details.wrong_rows += 1;
                    c.example(
                        "wrong_row",
                        format!("{session_id} seq {}: row {row:?}, acked {want:?}", ack.seq),
                    );
                } else if let Some(why) = c.expected[&(s, ack.index)].judge(&key, &row.ext) {
                    c.f.details.mutation_mismatches_cql += 1;
                    c.mismatch(
                        (s, ack.index),
                        "mutation_mismatch_cql",
                        format!("{session_id} seq {}: the row is {why}", ack.seq),
                    );
                } else if *writetime != key.version {
                    c.f.details.writetime_mismatches += 1;
                    c.example(
                        "writetime_mismatch",
                        format!(
                            "{session_id} seq {}: writetime {writetime}, version {}",
                            ack.seq, key.version
                        ),
                    );
                }
            }
            Some((row, writetime)) => {
                let want = inp.plan.stored(ack);
                if *row != want {
                    c.f.details.wrong_rows += 1;
                    c.example(
                        "wrong_row",
                        format!("{session_id} seq {}: row {row:?}, acked {want:?}", ack.seq),
                    );
                } else if *writetime != ack.server_time_us {
                    c.f.details.writetime_mismatches += 1;
                    c.example(
                        "writetime_mismatch",
                        format!(
                            "{session_id} seq {}: writetime {writetime}, server time {}",
                            ack.seq, ack.server_time_us
                        ),
                    );
                }
            }
        }
    }
}

/// (e) real-time order.
fn real_time_order(c: &mut Check, one: &Session<'_>) {
    let session_id = &one.id;
    for (b, why, a) in order_violations(one.acks) {
        c.f.counts.reordered += 1;
        c.example(
            "reordered",
            format!(
                "{session_id}: {} (seq {}, p{} @{}, first try {:.2}s) vs {} (seq {}, p{} @{}, \
                 acked {:.2}s): {why}",
                Plan::client_msg_id(b.index),
                b.seq,
                b.partition,
                b.offset,
                b.first_try_at,
                Plan::client_msg_id(a.index),
                a.seq,
                a.partition,
                a.offset,
                a.acked_at
            ),
        );
    }
}

/// Every row is explained by a send; an acknowledged message has one row only.
fn rows_explained(c: &mut Check, inp: &Inputs<'_>, one: &Session<'_>) {
    let (s, session_id, acks, rows) = (one.state.s, &one.id, one.acks, &one.state.rows);
    for (seq, (row, _)) in rows {
        let index = Plan::index_of(&row.client_msg_id).filter(|&j| j < acks.len());
        match index {
            None => {
                c.f.details.unexplained_rows += 1;
                c.example(
                    "unexplained_row",
                    format!(
                        "{session_id} seq {seq}: client_msg_id {:?}",
                        row.client_msg_id
                    ),
                );
            }
            Some(j) => match &acks[j] {
                None => c.f.details.unacked_rows += 1,
                Some(ack) if ack.seq == *seq => {}
                Some(ack) => {
                    let key = (s, j);
                    let until = c.last_ack_of.get(&key).copied().unwrap_or(ack.acked_at);
                    let text = format!(
                        "{session_id} {}: acknowledged as seq {}, also stored as seq {seq}",
                        row.client_msg_id, ack.seq
                    );
                    if c.known_limit.contains(&key)
                        || inp.events.redis_lost_between(ack.first_try_at, until)
                    {
                        if c.known_limit.insert(key) {
                            c.example("known_limit_duplicate", text);
                        }
                    } else if c.dup_messages.insert(key) {
                        c.example("stored_twice", text);
                    }
                }
            },
        }
    }
}

/// (c) the window: the newest k rows, k ≤ W, byte-identical, and consistent for the verifier.
fn window_is_newest_rows(
    c: &mut Check,
    inp: &Inputs<'_>,
    codec: &Codec,
    one: &Session<'_>,
) -> anyhow::Result<()> {
    let SessionState {
        rows,
        members,
        report,
        ..
    } = &one.state;
    let session_id = &one.id;
    c.f.details.windows_checked += 1;
    let mut problem: Option<String> = None;
    if members.len() > inp.window_size {
        problem = Some(format!(
            "{} members > W = {}",
            members.len(),
            inp.window_size
        ));
    }
    let newest: Vec<&ChatMessage> = rows.values().rev().map(|(m, _)| m).collect();
    for (i, (member, score)) in members.iter().rev().enumerate() {
        if problem.is_some() {
            break;
        }
        let Some(row) = newest.get(i) else {
            problem = Some(format!(
                "member {i} from the top (score {score}) has no row"
            ));
            break;
        };
        if *score != row.seq as f64 {
            problem = Some(format!(
                "member {i} from the top has seq {score}, the newest rows have {}",
                row.seq
            ));
            break;
        }
        let want = window::member(row.version(), &codec.encode(row)?);
        if *member != want {
            problem = Some(format!(
                "member of seq {} differs from the row's bytes",
                row.seq
            ));
        }
    }
    if problem.is_none() && !report.is_consistent() {
        problem = Some(format!("verify_window: {report}"));
    }
    if let Some(p) = problem {
        c.f.counts.window_mismatches += 1;
        c.example("window_mismatch", format!("{session_id}: {p}"));
    } else if members.is_empty() {
        c.f.details.windows_empty += 1;
    } else if members.len() == inp.window_size.min(rows.len()) {
        c.f.details.windows_full += 1;
    } else {
        c.f.details.windows_short += 1;
    }
    Ok(())
}
