//! P9: a warm conversation list of 200 conversations (`CachedConversationRepo<CqlConversationRepo>`,
//! the first page of 200 with each conversation's latest message), lists per second and p99,
//! next to `redis-benchmark MGET` of 200 keys at the same concurrency (goal ≥ 0.3×).
//!
//! Set-up through the repositories' own API: each caller's user joins the same 200 sessions
//! (`ConversationRepo::join`), each session gets a latest message (`LatestWriter`, as the
//! consumer writes it), and one list per user warms the cache and the sessions' Redis latests.

use std::sync::Arc;

use anyhow::{Result, bail};
use chatlog_schemas::Codec;
use chatlog_store::cache::{Cache, CacheConfig};
use chatlog_store::repo::conversations::{
    CachedConversationRepo, ConversationConfig, ConversationRepo, CqlConversationRepo,
};
use chatlog_store::repo::latest::{LatestReader, LatestRow, LatestWriter};
use chatlog_store::window;
use serde_json::json;

use crate::reads;
use crate::workload::Workload;

use super::versus::{self, Sides};
use super::world::{Collect, Reads, World};

/// Conversations in the list (and keys of the MGET).
const CONVERSATIONS: usize = 200;

/// Redis connections of the cache and the latest reader (as P5's history reader has).
const CACHE_CONNECTIONS: usize = 4;

/// Joins written at once during the set-up.
const SETUP_CONCURRENCY: usize = 64;

/// The latest message of each of `sessions` (seq 7, distinct times so the list has an order to
/// sort), as the consumer writes it: the window member of an Avro record of the run's size.
fn latest_rows(sessions: &[String], content_bytes: usize) -> Result<Vec<LatestRow>> {
    let codec = Codec::default();
    let workload = Workload::new("x", 1, content_bytes);
    let base_us = 1_732_590_000_000_000i64;
    sessions
        .iter()
        .enumerate()
        .map(|(i, sid)| {
            let seq = 7;
            let time = base_us + i as i64 * 1000;
            let mut m = workload.message(seq);
            m.session_id.clone_from(sid);
            let sent = chatlog_producer::Sent {
                msg_id: format!("0190a6b2-7c3e-7d4f-8a9b-{i:012}"),
                seq: seq as i64,
                server_time_us: time,
                partition: 0,
                offset: 0,
                duplicate: false,
            };
            let avro = codec.encode(&Workload::stored(&m, &sent))?;
            Ok(LatestRow {
                session_id: sid.clone(),
                seq: seq as i64,
                version: time,
                member: window::member(time, &avro),
            })
        })
        .collect()
}

/// Writes the reference's `CONVERSATIONS` string keys (one hash tag, so that MGET would work on a
/// Redis Cluster too), each as large as a session's latest message; returns them.
async fn reference_keys(world: &World, bytes: usize) -> Result<Vec<String>> {
    let value = vec![b'x'; bytes];
    let keys: Vec<String> = (0..CONVERSATIONS)
        .map(|i| format!("chatlog:{{{}_mget}}:{i}", world.run))
        .collect();
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("SET")
            .arg(key)
            .arg(&value)
            .arg("EX")
            .arg(1800)
            .ignore();
    }
    pipe.query_async::<()>(&mut world.redis.clone()).await?;
    Ok(keys)
}

/// Runs P9 against Redis (`rpid`, its pid) and the run's keyspace `e2e_ks`.
pub(super) async fn run(cx: Reads<'_>, out: &mut Collect<'_>) -> Result<()> {
    let callers = cx.plan.callers;
    eprintln!(
        "[bench] P9: conversation list of {CONVERSATIONS}, {callers} callers, \
         {CACHE_CONNECTIONS} Redis connections"
    );
    let config = ConversationConfig::default();
    let db = Arc::new(
        CqlConversationRepo::new(cx.world.session.clone(), cx.e2e_ks, config.clone()).await?,
    );
    let users: Vec<String> = (0..callers)
        .map(|i| format!("{}_v{i}", cx.world.run))
        .collect();
    let sessions: Vec<String> = (0..CONVERSATIONS)
        .map(|i| format!("{}_c{i}", cx.world.run))
        .collect();
    let pairs: Vec<(&String, &String)> = users
        .iter()
        .flat_map(|u| sessions.iter().map(move |s| (u, s)))
        .collect();
    for chunk in pairs.chunks(SETUP_CONCURRENCY) {
        futures::future::try_join_all(chunk.iter().map(|(u, s)| db.join(u, s, 1_000_000))).await?;
    }
    let rows = latest_rows(&sessions, cx.plan.content_bytes)?;
    let member_bytes = rows[0].member.len();
    LatestWriter::new(cx.world.session.clone(), cx.e2e_ks)
        .await?
        .write(&rows)
        .await?;
    let connections = chatlog::redis_config()
        .connect_many(CACHE_CONNECTIONS)
        .await?;
    let cache = Cache::new(connections.clone(), CacheConfig::default(), "conversations")?;
    let latest = LatestReader::new(
        cx.world.session.clone(),
        cx.e2e_ks,
        Some(connections),
        config.latest_ttl,
    )
    .await?;
    let cached = Arc::new(CachedConversationRepo::new(
        db.clone(),
        cache,
        latest,
        config,
    )?);
    // Warm: each user's list loaded once, every session's Redis latest filled from CQL.
    for user in &users {
        cached.conversations(user, CONVERSATIONS, None).await?;
    }
    let keys = reference_keys(cx.world, member_bytes).await?;
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    let loops = reads::Loops::of(cx.plan, cx.rpid, &users);
    let lists_before = db.db_reads();
    let measured = versus::measure(&loops, callers, 1, &mget, |c| {
        loops.conversation_lists(&cached, CONVERSATIONS, c)
    })
    .await?;
    let loads = db.db_reads() - lists_before;
    if loads > 0 {
        bail!("the warm cache read {loads} membership lists from the database during P9");
    }
    measured.record(
        &Sides {
            id: "P9",
            what: "conversation list of 200 (warm) lists/s",
            ours: "conversations",
            reference: "redis-benchmark MGET 200 keys",
            unit: "req/s",
            goal: 0.3,
        },
        json!({"connections": CACHE_CONNECTIONS, "conversations": CONVERSATIONS,
               "latest_message_bytes": member_bytes,
               "p99_ms": {"conversations": measured.ours_many().p99_ms,
                          "redis_benchmark": measured.reference_many.p99_ms},
               "database_lists_while_cached": loads}),
        out,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn latest_rows_order_by_time_and_carry_the_record() {
        let sessions: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
        let rows = latest_rows(&sessions, 160).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.windows(2).all(|w| w[0].version < w[1].version));
        let by_session: BTreeMap<&str, usize> = rows
            .iter()
            .map(|r| (r.session_id.as_str(), r.member.len()))
            .collect();
        assert!(by_session.values().all(|&n| n > 16 + 160));
    }
}
