//! The checker's self-test (`--sabotage`): after the drain, damage the stores and the recorded
//! history in known ways, one per kind of finding, so a run must report exactly [`EXPECTED`]. A
//! checker that reports zeros on a damaged store would be worthless; this proves it is not.
//!
//! | damage | finding |
//! |---|---|
//! | the CQL row of session 0's first message deleted (and its window member) | 1 lost (missing row) |
//! | session 1's first message written again at seq 0 | 1 duplicated (stored twice) |
//! | the newest member of session 2's window removed (a stale window) | 1 window mismatch |
//! | the recorded Kafka offsets of session 3's 6th and 7th acks swapped | 1 reordered |
//! | one DLQ record produced again, outside any transaction | 1 duplicated (DLQ) |
//! | the recorded offset of poison record 0 moved | 1 lost (poison missing from the DLQ) |
//! | the recorded msg_id of session 4's 4th ack replaced (its row now holds another message than the one acknowledged there) | 1 overwritten |
//! | a read that reported session 5's 3rd ack's seq missing 1 s after its ack, added to the oracle's observations | 1 false missing |
//! | one more message of session 6 in the history, given up on (never acknowledged) | 1 unacked |
//! | session 8's window loses its newest member and is marked as written in another Redis epoch (as a session quiet since a failover is left) | nothing: history never serves such a window, so the checker counts it in `windows_other_epoch` and compares nothing |
//! | an acknowledged recall of an unmutated message of session 7 added to the history (its row, window member and history copy still hold the message as sent: as if the recall had been undone) | 1 mutation mismatch |

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chatlog_store::keys;
use chatlog_store::messages::{BatchLimits, MessageWriter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use scylla::client::session::Session;

use crate::events::Events;
use crate::load::{LoadResult, Plan};
use crate::oracle::{Observations, Seen};
use crate::record::{Mutation, MutationAck, MutationKind, MutationOutcome, StateKey};
use crate::report::RunInfo;
use crate::stack::Stack;
use chatlog_schemas::FINAL_VERSION_BIT;

/// (lost, duplicated, reordered, window mismatches, overwritten, false missing, unacked, mutation
/// mismatches) a sabotaged run reports.
pub const EXPECTED: (usize, usize, usize, usize, usize, usize, usize, usize) =
    (2, 2, 1, 1, 1, 1, 1, 1);

/// Applies the damage of the module docs.
pub async fn corrupt(
    load: &mut LoadResult,
    observations: &mut Observations,
    plan: &Plan,
    session: &Arc<Session>,
    run: &RunInfo,
    stack: &Stack,
    events: &Events,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        plan.sessions >= 9 && plan.per_session.iter().all(|&n| n >= 50) && load.poison.len() >= 2,
        "--sabotage needs at least 9 sessions of 50 messages and 2 poison records"
    );
    let ack = |s: usize, j: usize| {
        load.acks[s][j]
            .clone()
            .with_context(|| format!("session {s} message {j} was not acknowledged"))
    };

    // Session 0: the first message's row disappears.
    let first = ack(0, 0)?;
    let delete = session
        .prepare(chatlog_store::messages::delete_row_cql(&run.keyspace))
        .await?;
    session
        .execute_unpaged(
            &delete,
            (
                plan.session_id(0),
                chatlog_store::messages::bucket_of(
                    first.seq,
                    chatlog_store::messages::DEFAULT_BUCKET_SIZE,
                ),
                first.seq,
            ),
        )
        .await?;
    // With W above the session's length its window holds that seq too: it goes with the row, so
    // that the window is still exactly the newest rows and only the row is missing.
    let mut redis = stack.redis().await?;
    let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
        .arg(keys::window(&plan.session_id(0)))
        .arg(first.seq)
        .arg(first.seq)
        .query_async(&mut redis)
        .await?;

    // Session 1: the first message again at seq 0.
    let mut copy = plan.stored(&ack(1, 0)?);
    copy.seq = 0;
    MessageWriter::new(session.clone(), &run.keyspace, BatchLimits::default())
        .await?
        .write(&[copy])
        .await?;

    // Session 2: the window loses its newest member.
    let _: Vec<(Vec<u8>, f64)> = redis::cmd("ZPOPMAX")
        .arg(keys::window(&plan.session_id(2)))
        .query_async(&mut redis)
        .await?;

    // Session 8: the same damage, in a window of another epoch (not served, not a finding).
    let _: Vec<(Vec<u8>, f64)> = redis::cmd("ZPOPMAX")
        .arg(keys::window(&plan.session_id(8)))
        .query_async(&mut redis)
        .await?;
    let _: () = redis::cmd("SET")
        .arg(keys::window_epoch(&plan.session_id(8)))
        .arg("0:0")
        .query_async(&mut redis)
        .await?;

    let victim = ack(5, 2)?;
    // Session 7: a message the load did not mutate.
    let mutated: std::collections::BTreeSet<usize> = load
        .mutations
        .iter()
        .filter(|m| m.session == 7)
        .map(|m| m.index)
        .collect();
    let j = (0..plan.per_session[7])
        .find(|j| !mutated.contains(j))
        .context("session 7: every message was mutated")?;
    let recalled = ack(7, j)?;

    // Session 3: two acks' offsets swapped in the history.
    let (a, b) = (ack(3, 5)?, ack(3, 6)?);
    if let Some(x) = load.acks[3][5].as_mut() {
        x.offset = b.offset;
    }
    if let Some(y) = load.acks[3][6].as_mut() {
        y.offset = a.offset;
    }

    // Session 4: "another message" was acknowledged at the seq of its 4th message.
    if let Some(x) = load.acks[4][3].as_mut() {
        x.msg_id = "00000000-0000-7000-8000-000000000000".into();
    }

    // Session 5: a read reported its 3rd message missing a second after its ack.
    observations.missing.insert(
        (5, victim.seq),
        Seen {
            first: victim.acked_at + 1.0,
            last: victim.acked_at + 1.0,
            op: "sabotage",
        },
    );

    // Session 6: one more message, which the harness gave up on.
    load.acks[6].push(None);

    // Session 7: "a recall was acknowledged" for a message the load did not mutate.
    let sender = plan.message(7, j).sender_id;
    let at_us = recalled.server_time_us + 1;
    load.mutations.push(Mutation {
        session: 7,
        index: j,
        seq: recalled.seq,
        kind: MutationKind::Recall,
        by: sender.clone(),
        content_hash: None,
        first_try_at: recalled.acked_at,
        ended_at: recalled.acked_at,
        attempts: 1,
        uncertain_attempts: 0,
        outcome: MutationOutcome::Acked(MutationAck {
            key: StateKey {
                version: FINAL_VERSION_BIT | at_us,
                state: "RECALLED",
                content_hash: crate::record::payload_hash(&[]),
                content_len: 0,
                edit_count: 0,
                by: sender,
            },
            unchanged: false,
            partition: recalled.partition,
            offset: recalled.offset + 1,
        }),
    });

    // Poison record 0 "was written elsewhere".
    load.poison[0].offset += 1_000_000;

    // One DLQ record twice.
    let (kafka, dlq) = (stack.kafka.clone(), run.dlq.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("group.id", chatlog::unique("chaos_sabotage"))
            .set("isolation.level", "read_committed")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&dlq, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let m = loop {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                break m?.detach();
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "the DLQ is empty");
        };
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .create()?;
        let mut record = FutureRecord::<[u8], [u8]>::to(&dlq);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        if let Some(h) = m.headers() {
            record = record.headers(h.clone());
        }
        futures::executor::block_on(producer.send(record, Duration::from_secs(30)))
            .map_err(|(e, _)| e)?;
        Ok(())
    })
    .await??;
    events.log(format!(
        "SABOTAGE: deleted 1 row, wrote 1 copy, removed 1 window member, swapped 2 offsets, moved 1 \
         poison offset, duplicated 1 DLQ record, replaced 1 acknowledged msg_id, added 1 missing \
         report, added 1 unacknowledged message, added 1 acknowledged recall; expected (lost, \
         duplicated, reordered, window, overwritten, false missing, unacked, mutation \
         mismatches) = {EXPECTED:?}"
    ));
    Ok(())
}
