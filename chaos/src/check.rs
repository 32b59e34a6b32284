//! The checker: the recorded history (every acknowledged send, every resend, every poison record,
//! every fault, and what the online oracle's reads said) against what CQL, Redis and the DLQ hold
//! once the pipeline has drained.
//!
//! Definitions (docs/RELIABILITY.md explains them at length):
//!
//! - **lost**: acknowledged messages with no row at their (session, seq), or whose row is the same
//!   message (msg_id) but differs in some field (client_msg_id, content, sender, types, times,
//!   ext) or whose `writetime()` is not its server time; plus poison records missing from the DLQ.
//! - **duplicated**: acknowledged messages stored a second time (another row of the session holds
//!   their client_msg_id, or a resend with the same client_msg_id got another seq or msg_id); a
//!   (session, seq) acknowledged for two different messages; rows no send explains; DLQ records
//!   present more than once (same source partition and offset) or not poison at all. A second copy
//!   caused by Redis losing the idempotency records between the two sends is the documented limit
//!   of the seq allocator and is reported apart (`known_limit_duplicates`), not here.
//! - **reordered**: real-time order. An ack `b` is reordered if some message acknowledged before
//!   `b`'s first attempt began has a seq not below `b`'s, or (in the session's partition) an
//!   offset not below `b`'s, or `b` went to another partition than the session's. Sequential
//!   sends, two producers at once and late sends are all held to it (see [`order_violations`]).
//! - **window mismatches**: sessions whose Redis window is not exactly the newest k rows of CQL for
//!   the session (k ≤ W, contiguous from the newest row down, each member byte-identical to
//!   `version prefix + Avro` of that row), or that `chatlog_store::verify::verify_window` does not
//!   call consistent. An empty or shorter window (after FLUSHALL) is fine; a wrong one is not.
//! - **overwritten**: acknowledged messages whose (session, seq) row holds another message (another
//!   msg_id) after the drain, or that an oracle read saw replaced by another message at their seq
//!   after their ack (each message once); plus (session, seq) that a read returned with another
//!   message's content. Not counted again in *lost*.
//! - **false missing**: see [`crate::oracle`]: (session, seq) holding an acknowledged message that
//!   a read reported `missing` after the message's ack or within the settle horizon of its
//!   allocation. Acknowledged seqs the final sweep did not return are counted apart
//!   (`not_returned`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_schemas::{ChatMessage, Codec};
use chatlog_store::history::{History, HistoryConfig};
use chatlog_store::messages::{self, DEFAULT_BUCKET_SIZE, MessageRow, bucket_of};
use chatlog_store::window::{self, WindowConfig};
use chatlog_store::{keys, verify};
use futures::{StreamExt, TryStreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use serde::Serialize;

use crate::events::Events;
use crate::record::{Ack, LoadResult, Plan, PoisonRecord, payload_hash};

/// Examples kept per category.
const EXAMPLES: usize = 10;

/// Everything the checker counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Acknowledged messages (distinct).
    pub acked: usize,
    /// Messages never acknowledged (gave up).
    pub unacked: usize,
    /// See the module docs.
    pub lost: usize,
    /// See the module docs.
    pub duplicated: usize,
    /// See the module docs.
    pub reordered: usize,
    /// See the module docs.
    pub window_mismatches: usize,
    /// See the module docs.
    pub overwritten: usize,
    /// See the module docs.
    pub false_missing: usize,
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

struct Check {
    f: Findings,
}

impl Check {
    fn example(&mut self, what: &str, text: String) {
        let list = self.f.examples.entry(what.to_owned()).or_default();
        if list.len() < EXAMPLES {
            list.push(text);
        }
    }
}

/// CQL statements of the checker.
pub struct Cql {
    session: Arc<Session>,
    keyspace: String,
    ceiling: PreparedStatement,
    range: PreparedStatement,
    writetimes: PreparedStatement,
    count: PreparedStatement,
}

/// One session's rows: seq → (message, writetime).
type Rows = BTreeMap<i64, (ChatMessage, i64)>;

/// What is read for one session: its number, rows, window members (member, score) and the
/// verifier's report.
type SessionState = (usize, Rows, Vec<(Vec<u8>, f64)>, verify::Report);

impl Cql {
    /// Prepares the statements of `keyspace`.
    pub async fn new(session: Arc<Session>, keyspace: &str) -> anyhow::Result<Cql> {
        Ok(Cql {
            ceiling: session
                .prepare(messages::select_session_max_seq_cql(keyspace))
                .await?,
            range: session
                .prepare(messages::select_range_desc_cql(keyspace))
                .await?,
            writetimes: session
                .prepare(messages::select_writetimes_cql(keyspace))
                .await?,
            count: session
                .prepare(format!(
                    "SELECT COUNT(*) FROM {keyspace}.messages WHERE session_id = ? AND bucket = ?"
                ))
                .await?,
            keyspace: keyspace.to_owned(),
            session,
        })
    }

    /// The keyspace.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    async fn buckets(&self, session_id: &str) -> anyhow::Result<std::ops::RangeInclusive<i64>> {
        let ceiling = self
            .session
            .execute_unpaged(&self.ceiling, (session_id,))
            .await?
            .into_rows_result()?
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(c,)| c)
            .unwrap_or(0);
        Ok(0..=bucket_of(ceiling, DEFAULT_BUCKET_SIZE))
    }

    /// Rows of one session.
    async fn rows(&self, session_id: &str) -> anyhow::Result<Rows> {
        let mut out = Rows::new();
        for bucket in self.buckets(session_id).await? {
            let result = self
                .session
                .execute_unpaged(&self.range, (session_id, bucket, i64::MIN, i64::MAX))
                .await?
                .into_rows_result()?;
            for row in result.rows::<MessageRow>()? {
                let m = messages::row_to_message(row?);
                out.insert(m.seq, (m, i64::MIN));
            }
            let result = self
                .session
                .execute_unpaged(&self.writetimes, (session_id, bucket))
                .await?
                .into_rows_result()?;
            for row in result.rows::<(i64, Option<i64>)>()? {
                let (seq, wt) = row?;
                if let Some(r) = out.get_mut(&seq) {
                    r.1 = wt.unwrap_or(-1);
                }
            }
        }
        Ok(out)
    }

    /// Rows over all of `sessions` (COUNT per partition).
    pub async fn count(&self, sessions: &[String]) -> anyhow::Result<i64> {
        let counts: Vec<i64> = futures::stream::iter(sessions.iter().map(|s| async move {
            let mut n = 0;
            for bucket in self.buckets(s).await? {
                let (c,): (i64,) = self
                    .session
                    .execute_unpaged(&self.count, (s.as_str(), bucket))
                    .await?
                    .into_rows_result()?
                    .single_row()?;
                n += c;
            }
            Ok::<_, anyhow::Error>(n)
        }))
        .buffer_unordered(16)
        .try_collect()
        .await?;
        Ok(counts.iter().sum())
    }
}

/// Waits until the row count of `sessions` is the same twice in a row, 2 s apart.
pub async fn wait_stable(
    cql: &Cql,
    sessions: &[String],
    limit: Duration,
    events: &Events,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + limit;
    let mut last = cql.count(sessions).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = cql.count(sessions).await?;
        if now == last {
            events.log(format!("CQL row count stable at {now}"));
            return Ok(now);
        }
        events.log(format!("CQL row count still moving: {last} → {now}"));
        anyhow::ensure!(
            Instant::now() < deadline,
            "CQL row count not stable within {limit:?}"
        );
        last = now;
    }
}

/// Inputs of [`check`].
pub struct Inputs<'a> {
    /// What was sent.
    pub plan: &'a Plan,
    /// What was acknowledged.
    pub load: &'a LoadResult,
    /// CQL.
    pub cql: &'a Cql,
    /// Redis.
    pub redis: redis::aio::ConnectionManager,
    /// `W`.
    pub window_size: usize,
    /// Kafka bootstrap servers.
    pub kafka: &'a str,
    /// The input topic.
    pub topic: &'a str,
    /// The DLQ topic.
    pub dlq: &'a str,
    /// The event log (Redis loss intervals).
    pub events: &'a Events,
    /// What the online oracle saw (and the final sweep).
    pub oracle: &'a crate::oracle::Observations,
    /// The settle horizon (see [`crate::oracle`]).
    pub horizon: Duration,
}

/// The history settings of the run's readers (the oracle and the window verifier): the consumers'
/// `W` and the run's settle horizon, everything else the defaults.
pub fn history_config(window_size: usize, settle_horizon: Duration) -> HistoryConfig {
    HistoryConfig {
        window: WindowConfig {
            size: window_size,
            ..WindowConfig::default()
        },
        settle_horizon,
        ..HistoryConfig::default()
    }
}

/// Runs every check.
pub async fn check(inp: Inputs<'_>) -> anyhow::Result<Findings> {
    let mut c = Check {
        f: Findings::default(),
    };
    let codec = Codec::default();
    let history = History::new(
        inp.cql.session.clone(),
        inp.cql.keyspace(),
        inp.redis.clone(),
        Codec::default(),
        history_config(inp.window_size, inp.horizon),
    )
    .await?;

    // Resends first: they decide which extra rows are explained.
    let mut dup_messages: BTreeSet<(usize, usize)> = BTreeSet::new();
    // Acknowledged messages (session, number) replaced by another message at their seq.
    let mut overwritten: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut known_limit: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut last_ack_of: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    c.f.details.resends = inp.load.resends.len();
    for r in &inp.load.resends {
        let key = (r.session, r.index);
        last_ack_of.insert(key, r.acked_at);
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
            known_limit.insert(key);
            c.example("known_limit_duplicate", text);
        } else {
            dup_messages.insert(key);
            c.example("resend_got_another_seq", text);
        }
    }

    // Conflicting resends: refused, or acknowledged — an overwrite unless Redis lost the first
    // send's idempotency record in between.
    c.f.details.conflicting_resends = inp.load.conflicting.len();
    // (session, seq) of edits stored as messages of their own under the known limit: reads
    // return the edited content there, which is no mismatch.
    let mut known_limit_edits: BTreeSet<(usize, i64)> = BTreeSet::new();
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
                    known_limit.insert(key);
                    last_ack_of.insert(key, r.at);
                    if let Some(seq) = r.acked_seq {
                        known_limit_edits.insert((r.session, seq));
                    }
                    c.example("known_limit_duplicate", text);
                } else {
                    overwritten.insert(key);
                    c.example("conflicting_resend_acked", text);
                }
            }
            _ => c.f.details.conflicting_other += 1,
        }
    }

    // Per session: CQL rows and the Redis window, checked against the acks.
    let sessions: Vec<usize> = (0..inp.plan.sessions).collect();
    let fetched: Vec<SessionState> = futures::stream::iter(sessions.into_iter().map(|s| {
        let session_id = inp.plan.session_id(s);
        let mut redis = inp.redis.clone();
        let history = &history;
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
            Ok::<_, anyhow::Error>((s, rows, members, report))
        }
    }))
    .buffer_unordered(16)
    .try_collect()
    .await?;

    for (s, rows, members, report) in fetched {
        let session_id = inp.plan.session_id(s);
        let acks = &inp.load.acks[s];
        c.f.details.cql_rows += rows.len();

        // (a) each acknowledged message is at its seq, exactly as acknowledged, and not
        // replaced by another message. (b) no seq acknowledged twice.
        let mut seq_owner: BTreeMap<i64, usize> = BTreeMap::new();
        for ack in acks.iter().flatten() {
            c.f.acked += 1;
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
                    overwritten.insert((s, ack.index));
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
        // (e) real-time order.
        for (b, why, a) in order_violations(acks) {
            c.f.reordered += 1;
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
        c.f.unacked += acks.iter().filter(|a| a.is_none()).count();

        // Every row is explained by a send; an acknowledged message has one row only.
        for (seq, (row, _)) in &rows {
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
                        let until = last_ack_of.get(&key).copied().unwrap_or(ack.acked_at);
                        let text = format!(
                            "{session_id} {}: acknowledged as seq {}, also stored as seq {seq}",
                            row.client_msg_id, ack.seq
                        );
                        if known_limit.contains(&key)
                            || inp.events.redis_lost_between(ack.first_try_at, until)
                        {
                            if known_limit.insert(key) {
                                c.example("known_limit_duplicate", text);
                            }
                        } else if dup_messages.insert(key) {
                            c.example("stored_twice", text);
                        }
                    }
                },
            }
        }

        // (c) the window: the newest k rows, k ≤ W, byte-identical.
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
            let want = window::member(row.server_time_us, &codec.encode(row)?);
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
            c.f.window_mismatches += 1;
            c.example("window_mismatch", format!("{session_id}: {p}"));
        } else if members.is_empty() {
            c.f.details.windows_empty += 1;
        } else if members.len() == inp.window_size.min(rows.len()) {
            c.f.details.windows_full += 1;
        } else {
            c.f.details.windows_short += 1;
        }
    }
    c.f.details.duplicated_messages = dup_messages.len();
    c.f.details.known_limit_duplicates = known_limit.difference(&dup_messages).count();

    // (d)/(f) the DLQ under read_committed: exactly the poison records, each once.
    dlq(&mut c, &inp).await?;

    // (g) what the online oracle and the final sweep saw.
    let o = inp.oracle;
    c.f.details.overwritten_online = o.overwritten.len();
    for (key, text) in &o.overwritten {
        if overwritten.insert(*key) {
            c.example("overwritten_online", text.clone());
        }
    }
    let content_mismatches: Vec<&String> = o
        .content_mismatches
        .iter()
        .filter(|(key, _)| !known_limit_edits.contains(key))
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
    c.f.false_missing = false_missing.len();
    c.f.overwritten = overwritten.len() + c.f.details.content_mismatches;
    c.f.details.oracle = o.clone();

    let d = &c.f.details;
    c.f.lost =
        d.missing_rows + d.wrong_rows + d.writetime_mismatches + d.dlq_missing + d.dlq_wrong_reason;
    c.f.duplicated = d.duplicated_messages
        + d.seqs_used_twice
        + d.unexplained_rows
        + d.dlq_duplicates
        + d.dlq_unexpected;
    Ok(c.f)
}

/// Acks of one session that break real-time order: `(b, why, a)` where `a` was acknowledged
/// before `b`'s first attempt began, yet `b` did not get a higher seq, or (same partition) a higher
/// Kafka offset; and acks on another partition than the session's (`a` is then the first ack on
/// the session's partition). Sequential sends, two producers sending at once and late sends are
/// all held to this: whatever was acknowledged before a send started is ordered before it.
pub fn order_violations(acks: &[Option<Ack>]) -> Vec<(&Ack, &'static str, &Ack)> {
    let all: Vec<&Ack> = acks.iter().flatten().collect();
    let mut out = Vec::new();
    let Some(first) = all.first() else {
        return out;
    };
    // The session's partition: the one most of its acks name.
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for a in &all {
        *counts.entry(a.partition).or_default() += 1;
    }
    let partition = counts
        .iter()
        .max_by_key(|(p, n)| (**n, std::cmp::Reverse(**p)))
        .map_or(first.partition, |(p, _)| *p);
    let home = all
        .iter()
        .find(|a| a.partition == partition)
        .copied()
        .unwrap_or(first);
    // Acks by ack time, with the running maximum of seq and offset (and who holds it).
    let mut by_ack: Vec<&Ack> = all.clone();
    by_ack.sort_by(|x, y| x.acked_at.total_cmp(&y.acked_at));
    let mut max_seq: Vec<&Ack> = Vec::with_capacity(by_ack.len());
    let mut max_offset: Vec<Option<&Ack>> = Vec::with_capacity(by_ack.len());
    for (i, a) in by_ack.iter().enumerate() {
        let prev_seq = if i == 0 { *a } else { max_seq[i - 1] };
        max_seq.push(if a.seq > prev_seq.seq { a } else { prev_seq });
        let prev_off = if i == 0 { None } else { max_offset[i - 1] };
        let here = (a.partition == partition).then_some(*a);
        max_offset.push(match (prev_off, here) {
            (Some(p), Some(h)) => Some(if h.offset > p.offset { h } else { p }),
            (p, h) => p.or(h),
        });
    }
    for b in &all {
        if b.partition != partition {
            out.push((*b, "another partition than the session's", home));
            continue;
        }
        let before = by_ack.partition_point(|a| a.acked_at < b.first_try_at);
        if before == 0 {
            continue;
        }
        let a = max_seq[before - 1];
        if a.seq >= b.seq {
            out.push((
                *b,
                "seq not above that of a message acknowledged before it was sent",
                a,
            ));
        } else if let Some(a) = max_offset[before - 1]
            && a.offset >= b.offset
        {
            out.push((
                *b,
                "offset not above that of a message acknowledged before it was sent",
                a,
            ));
        }
    }
    out
}

/// A DLQ record as read back.
struct DlqRecord {
    key: Option<String>,
    reason: String,
    source: (String, i32, i64),
    payload_hash: Option<u64>,
    payload_len: usize,
    /// The `chatlog-dlq-truncated` header: the copy holds only the start of the value.
    truncated: Option<String>,
    /// The SHA-256 of the whole original value a truncated copy carries.
    sha256: Option<String>,
}

/// Header of a DLQ copy that holds only the start of the record's value.
const DLQ_TRUNCATED: &str = "chatlog-dlq-truncated";
/// Header with the SHA-256 (hex) of the original value of a truncated DLQ copy.
const DLQ_SHA256: &str = "chatlog-dlq-sha256";

impl DlqRecord {
    /// Whether this DLQ record carries `p`'s value: byte for byte, or — a truncated copy — a
    /// shorter start with the whole value's SHA-256. A `wrongtype` record's value is the
    /// producer's encoding, which the harness does not keep.
    fn carries(&self, p: &PoisonRecord) -> bool {
        if p.kind == "wrongtype" {
            return true;
        }
        match &self.truncated {
            None => self.payload_hash == p.payload_hash,
            Some(_) => {
                self.sha256.is_some()
                    && self.sha256 == p.payload_sha256
                    && self.payload_len < p.payload_len
            }
        }
    }
}

fn read_dlq(kafka: &str, topic: &str, isolation: &str) -> anyhow::Result<Vec<DlqRecord>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", chatlog::unique("chaos_dlq_reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?;
    let meta = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        ends.insert(
            p,
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))?
                .1,
        );
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle_since = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(m) => {
                let m = m?;
                idle_since = Instant::now();
                let header = |name: &str| {
                    m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                };
                out.push(DlqRecord {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    reason: header("chatlog-dlq-reason").unwrap_or_default(),
                    source: (
                        header("chatlog-dlq-topic").unwrap_or_default(),
                        header("chatlog-dlq-partition")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(-1),
                        header("chatlog-dlq-offset")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(-1),
                    ),
                    payload_hash: m.payload().map(payload_hash),
                    payload_len: m.payload().map_or(0, <[u8]>::len),
                    truncated: header(DLQ_TRUNCATED),
                    sha256: header(DLQ_SHA256),
                });
            }
            None => {
                // Done when every partition's position reached its end offset (control records
                // of transactions count), or after 5 quiet seconds.
                let position = consumer.position()?;
                let done = ends.iter().all(|(p, end)| {
                    matches!(
                        position.find_partition(topic, *p).map(|e| e.offset()),
                        Some(Offset::Offset(o)) if o >= *end
                    ) || *end == 0
                });
                if done || idle_since.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "reading the DLQ took over 120 s");
    }
    Ok(out)
}

async fn dlq(c: &mut Check, inp: &Inputs<'_>) -> anyhow::Result<()> {
    let (kafka, dlq) = (inp.kafka.to_owned(), inp.dlq.to_owned());
    let committed = tokio::task::spawn_blocking({
        let (kafka, dlq) = (kafka.clone(), dlq.clone());
        move || read_dlq(&kafka, &dlq, "read_committed")
    })
    .await??;
    let uncommitted =
        tokio::task::spawn_blocking(move || read_dlq(&kafka, &dlq, "read_uncommitted")).await??;
    let d = &mut c.f.details;
    d.poison = inp.load.poison.len();
    d.dlq_committed = committed.len();
    d.dlq_uncommitted = uncommitted.len();
    d.dlq_truncated = committed.iter().filter(|r| r.truncated.is_some()).count();

    // Matched by source record (topic, partition, offset): the keys of `wrongtype` records are
    // their session's id, shared by several.
    let by_source: BTreeMap<(String, i32, i64), &PoisonRecord> = inp
        .load
        .poison
        .iter()
        .map(|p| ((inp.topic.to_owned(), p.partition, p.offset), p))
        .collect();
    let keys: BTreeSet<&str> = inp.load.poison.iter().map(|p| p.key.as_str()).collect();
    let mut seen: BTreeMap<(String, i32, i64), usize> = BTreeMap::new();
    let mut found: BTreeSet<(String, i32, i64)> = BTreeSet::new();
    let mut problems: Vec<(&str, String)> = Vec::new();
    for r in &committed {
        let poison = by_source.get(&r.source);
        let known_key = r.key.as_deref().is_some_and(|k| keys.contains(k));
        if poison.is_none() && !known_key {
            c.f.details.dlq_unexpected += 1;
            problems.push((
                "dlq_unexpected",
                format!("key {:?} reason {} from {:?}", r.key, r.reason, r.source),
            ));
            continue;
        }
        let n = seen.entry(r.source.clone()).or_default();
        *n += 1;
        if *n > 1 {
            c.f.details.dlq_duplicates += 1;
            problems.push(("dlq_duplicate", format!("{:?} from {:?}", r.key, r.source)));
            continue;
        }
        // A known key from another source offset: the poison was produced twice (a retried send).
        let Some(p) = poison else { continue };
        found.insert(r.source.clone());
        if !p.reasons.contains(&r.reason.as_str()) || !r.carries(p) {
            c.f.details.dlq_wrong_reason += 1;
            problems.push((
                "dlq_wrong_record",
                format!(
                    "{} ({}): reason {} (expected {:?}), payload {}{}",
                    p.key,
                    p.kind,
                    r.reason,
                    p.reasons,
                    if r.carries(p) { "same" } else { "differs" },
                    if r.truncated.is_some() {
                        " (truncated copy)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    for p in &inp.load.poison {
        if !found.contains(&(inp.topic.to_owned(), p.partition, p.offset)) {
            c.f.details.dlq_missing += 1;
            problems.push((
                "dlq_missing",
                format!(
                    "{} ({}) from partition {} offset {}",
                    p.key, p.kind, p.partition, p.offset
                ),
            ));
        }
    }
    for (what, text) in problems {
        c.example(what, text);
    }
    Ok(())
}
