//! Why the consumer packs small partitions into shared batches (`chatlog_store::replicas`): under
//! live load a consumer batch holds a row or two of many sessions, and until stop 24 each of them
//! was a request of its own — its `messages` row(s) and its `session_latest` row. This measures
//! what Cassandra spends per row both ways: one request per partition (the old path) against
//! `MessageWriter::write` / `LatestWriter::write` now, which pack partitions with the same
//! replicas into UNLOGGED batches of up to ten. The pipeline's benchmark cannot show it through
//! its run-to-run noise (its drain writes full 100-row partitions, and its live phase runs beside
//! the producer); here the two ways alternate on one keyspace, nothing else runs, and the figure
//! is Cassandra's CPU (from `/proc`) per row, with the wall time.
//!
//! Steps: a fresh keyspace; `rounds` rounds of one row for each of `sessions` sessions (the seq
//! rising each round, as batches do), written one request per row (32 in flight, as the old path
//! did) or in one `write` call (packed), alternating, `reps` times each; first `session_latest`,
//! then `messages`.
//!
//! Run against the local stack: `dev/stack.sh up; eval "$(dev/stack.sh env)"; cargo run --release
//! --example latest_writes [sessions] [rounds] [reps]`.

use std::time::Instant;

use chatlog::process::arg_or;
use chatlog_store::messages::{BatchLimits, MessageWriter};
use chatlog_store::repo::latest::{LatestRow, LatestWriter};
use futures::{StreamExt, TryStreamExt};

/// Cassandra's CPU seconds so far (user + system).
fn cassandra_cpu(pid: u32) -> f64 {
    chatlog::process::cpu_seconds(pid).unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (sessions, rounds, reps) = (arg_or(1, 200), arg_or(2, 100), arg_or(3, 3));
    let pid = chatlog::process::stack_pid("cassandra")
        .ok_or_else(|| anyhow::anyhow!("no Cassandra of the local stack (dev/stack.sh up)"))?;
    let (cql, config) = chatlog::fresh_keyspace("latestab").await;
    let writer = LatestWriter::new(cql.clone(), &config.keyspace).await?;
    let messages =
        MessageWriter::new(cql.clone(), &config.keyspace, BatchLimits::default()).await?;
    let ids: Vec<String> = (0..sessions).map(|i| format!("s{i:05}")).collect();
    let member = chatlog_store::window::member(1, &[b'a'; 260]);
    let mut seq = 0i64;
    let mut rows_of_round = || {
        seq += 1;
        ids.iter()
            .map(|s| LatestRow {
                session_id: s.clone(),
                seq,
                version: seq,
                member: member.clone(),
            })
            .collect::<Vec<_>>()
    };
    // Warm-up: the statements, the connections, the first memtable writes.
    for _ in 0..10 {
        writer.write(&rows_of_round()).await?;
    }
    println!("{sessions} sessions × {rounds} rounds per measurement");
    let report = |what: &str, rep: usize, packed: bool, cpu: f64, secs: f64| {
        let n = (sessions * rounds) as f64;
        println!(
            "rep {rep} {what:>14} {:>8}: Cassandra {:6.2} µs CPU per row, {:8.0} rows/s",
            if packed { "packed" } else { "per row" },
            cpu / n * 1e6,
            n / secs
        );
    };
    for rep in 0..reps {
        for packed in [false, true] {
            let (cpu0, t0) = (cassandra_cpu(pid), Instant::now());
            for _ in 0..rounds {
                let rows = rows_of_round();
                if packed {
                    writer.write(&rows).await?;
                } else {
                    futures::stream::iter(rows.chunks(1).map(|one| writer.write(one)))
                        .buffer_unordered(32)
                        .try_collect::<Vec<()>>()
                        .await?;
                }
            }
            let (cpu, secs) = (cassandra_cpu(pid) - cpu0, t0.elapsed().as_secs_f64());
            report("session_latest", rep, packed, cpu, secs);
        }
    }
    let mut seq = 0i64;
    for rep in 0..reps {
        for packed in [false, true] {
            let (cpu0, t0) = (cassandra_cpu(pid), Instant::now());
            for _ in 0..rounds {
                seq += 1;
                let rows: Vec<chatlog_schemas::ChatMessage> = ids
                    .iter()
                    .map(|s| chatlog_schemas::ChatMessage {
                        content: vec![b'c'; 160],
                        ..chatlog_schemas::testing::message(s, seq)
                    })
                    .collect();
                if packed {
                    messages.write(&rows).await?;
                } else {
                    futures::stream::iter(rows.chunks(1).map(|one| messages.write(one)))
                        .buffer_unordered(32)
                        .try_collect::<Vec<_>>()
                        .await?;
                }
            }
            let (cpu, secs) = (cassandra_cpu(pid) - cpu0, t0.elapsed().as_secs_f64());
            report("messages", rep, packed, cpu, secs);
        }
    }
    Ok(())
}
