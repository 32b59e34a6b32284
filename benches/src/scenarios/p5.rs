//! P5: history `latest(50)` reads per second next to `redis-benchmark ZREVRANGE <window> 0 49` at
//! the same concurrency (and, for the record, one caller, and one multiplexed connection).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use chatlog_schemas::Codec;
use chatlog_store::history::{History, HistoryConfig};
use serde_json::json;

use crate::cpu;
use crate::plan::Plan;
use crate::reads;
use crate::workload::Workload;

use super::versus::{self, Sides};
use super::world::{Collect, World};

/// Redis connections of the history reader in P5 (`RedisConfig::connect_many`).
const HISTORY_CONNECTIONS: usize = 4;

/// Full windows (200 members) for `sessions`, written the consumer's way.
pub(super) async fn populate_windows(
    redis: &chatlog_store::RedisConnection,
    sessions: &[String],
) -> Result<()> {
    use chatlog_store::window::{self, WindowConfig, WindowEntry, WindowWriter};
    let codec = Codec::default();
    let workload = Workload::new("x", 1, 160);
    let mut windows = BTreeMap::new();
    for sid in sessions {
        let entries = (1..=200usize)
            .map(|seq| {
                let mut m = workload.message(seq);
                m.session_id.clone_from(sid);
                let sent = chatlog_producer::Sent {
                    msg_id: format!("0190a6b2-7c3e-7d4f-8a9b-{seq:012}"),
                    seq: seq as i64,
                    server_time_us: 1_732_590_000_000_000 + seq as i64,
                    partition: 0,
                    offset: 0,
                    duplicate: false,
                };
                let stored = Workload::stored(&m, &sent);
                let avro = codec.encode(&stored)?;
                Ok(WindowEntry {
                    seq: seq as i64,
                    member: window::member(stored.version(), &avro),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        windows.insert(sid.clone(), entries);
    }
    let writer = WindowWriter::new(WindowConfig {
        ttl: Duration::from_secs(1800),
        ..WindowConfig::default()
    });
    writer.append_proven(&mut redis.clone(), &windows).await?;
    Ok(())
}

/// Runs P5 on `sessions` (full windows); returns Redis's pid for P6.
pub(super) async fn run(
    plan: &Plan,
    world: &World,
    e2e_ks: &str,
    sessions: &[String],
    out: &mut Collect<'_>,
) -> Result<Option<u32>> {
    let session = world.session.clone();
    let redis = world.redis.clone();
    let callers = plan.callers;
    eprintln!(
        "[bench] P5: history latest(50), {callers} callers, {HISTORY_CONNECTIONS} Redis connections"
    );
    let connections = chatlog::redis_config()
        .connect_many(HISTORY_CONNECTIONS)
        .await?;
    let history = History::new(
        session.clone(),
        e2e_ks,
        connections,
        Codec::default(),
        HistoryConfig::default(),
    )
    .await?;
    let rpid = reads::redis_pid(&mut redis.clone()).await;
    // Cassandra may still be compacting (a previous run, the stack's start); neither P5 nor P6 uses
    // it, but it takes CPU from whichever side runs first. Wait for it as the loader does, and run
    // each of ours right next to its reference so both meet the same machine.
    let patience = Duration::from_secs(if plan.quick { 0 } else { 30 });
    let settled = cpu::Procs::detect(rpid)
        .settle("cassandra", 0.3, patience)
        .await;
    let window_key = chatlog_store::keys::window(&sessions[0]);
    let zrev = ["ZREVRANGE", window_key.as_str(), "0", "49"];
    let loops = reads::Loops::of(plan, rpid, sessions);
    let measured = versus::measure(&loops, callers, 4, &zrev, |c| {
        loops.history_reads(&history, c)
    })
    .await?;
    // The same on one multiplexed connection: what the connection set buys.
    let one_connection = History::new(
        session.clone(),
        e2e_ks,
        redis.clone(),
        Codec::default(),
        HistoryConfig::default(),
    )
    .await?;
    let reads_one_connection = loops.history_reads(&one_connection, callers).await?;
    eprintln!(
        "[bench]   history on one connection, {callers} callers: {:.0}/s",
        reads_one_connection.rate
    );
    let one_connection_ratio = reads_one_connection.rate / measured.reference_many.rate.max(1e-9);
    measured.record(
        &Sides {
            id: "P5",
            what: "history latest(50) reads/s",
            ours: "history",
            reference: "redis-benchmark ZREVRANGE 0 49",
            unit: "req/s",
            goal: 0.8,
        },
        json!({"connections": HISTORY_CONNECTIONS, "settle_seconds_before": settled,
               "one_connection": {"history": reads_one_connection,
                                  "ratio": one_connection_ratio}}),
        out,
    );
    Ok(rpid)
}
