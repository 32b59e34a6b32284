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
use crate::report::{Figure, Goal};
use crate::workload::Workload;

use super::world::{Collect, World};

/// Redis connections of the history reader in P5 (`RedisConfig::connect_many`).
const HISTORY_CONNECTIONS: usize = 4;

/// Full windows (200 members) for `sessions`, written the consumer's way.
pub(super) async fn populate_windows(
    redis: &redis::aio::ConnectionManager,
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
                    member: window::member(stored.server_time_us, &avro),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        windows.insert(sid.clone(), entries);
    }
    let writer = WindowWriter::new(WindowConfig {
        ttl: Duration::from_secs(1800),
        ..WindowConfig::default()
    });
    writer.append(&mut redis.clone(), &windows).await?;
    Ok(())
}

/// About as long as our loop of `secs` ran, at least 2000 requests.
pub(super) fn n_for(m: &reads::Measured, secs: f64) -> usize {
    (m.rate * secs).max(2000.0) as usize
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
    let figures = &mut *out.figures;
    let details = &mut *out.details;
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
    let secs = plan.loop_seconds;
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
    let reads_many = reads::history_reads(&history, rpid, sessions, callers, secs).await?;
    let rb_many = reads::redis_benchmark(rpid, callers, n_for(&reads_many, secs) * 4, &zrev)?;
    let reads_one = reads::history_reads(&history, rpid, sessions, 1, secs).await?;
    let rb_one = reads::redis_benchmark(rpid, 1, n_for(&reads_one, secs) * 4, &zrev)?;
    // The same on one multiplexed connection: what the connection set buys.
    let one_connection = History::new(
        session.clone(),
        e2e_ks,
        redis.clone(),
        Codec::default(),
        HistoryConfig::default(),
    )
    .await?;
    let reads_one_connection =
        reads::history_reads(&one_connection, rpid, sessions, callers, secs).await?;
    eprintln!(
        "[bench]   history {:.0}/s vs redis-benchmark {:.0}/s ({callers}); {:.0}/s vs {:.0}/s (1)",
        reads_many.rate, rb_many.rate, reads_one.rate, rb_one.rate
    );
    eprintln!(
        "[bench]   history on one connection, {callers} callers: {:.0}/s",
        reads_one_connection.rate
    );
    eprintln!(
        "[bench]   CPU µs/op client+redis: history {:.1}+{:.1}, redis-benchmark {:.1}+{:.1}",
        reads_many.client_cpu_us,
        reads_many.redis_cpu_us,
        rb_many.client_cpu_us,
        rb_many.redis_cpu_us
    );
    figures.insert(
        "P5".to_owned(),
        Figure::ratio(
            &format!("history latest(50) reads/s, {callers} callers"),
            reads_many.rate,
            rb_many.rate,
            "redis-benchmark ZREVRANGE 0 49",
            "req/s",
            Goal::AtLeast(0.5),
        ),
    );
    details.insert(
        "P5".into(),
        json!({"callers": callers, "history": reads_many, "redis_benchmark": rb_many,
               "connections": HISTORY_CONNECTIONS, "settle_seconds_before": settled,
               "one_connection": {"history": reads_one_connection,
                                  "ratio": reads_one_connection.rate / rb_many.rate.max(1e-9)},
               "one_caller": {"history": reads_one, "redis_benchmark": rb_one,
                              "ratio": reads_one.rate / rb_one.rate.max(1e-9)}}),
    );
    Ok(rpid)
}
