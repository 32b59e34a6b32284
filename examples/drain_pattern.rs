//! Why P1's drain costs Cassandra more CPU per row than its loader (22 against 17 µs in run 12)
//! although both write the same rows through the same `MessageWriter`: is it how the consumer
//! writes (batches of ~18 000 records over 200 sessions — 91 rows a partition, 16 in flight, a
//! barrier per batch, a `session_latest` row per session beside them) or what runs beside
//! Cassandra on two shared cores (the consumer, Kafka, Redis)? Here the ways alternate on one
//! keyspace with nothing else running, and the figure is Cassandra's CPU (from `/proc`) per row.
//!
//! Ways: `loader` (one call for all the rows, 32 in flight: the reference's), `drain` (the rows in
//! consumer-sized batches one after the other, 16 in flight, with their `session_latest` rows),
//! `drain-x2` (as drain, two batches in flight: the next batch's rows start while the last ones
//! of the previous are written, as overlapping the consumer's stages would), `drain-c32` (as
//! drain, 32 in flight), `loader+burn` (the loader while a thread of this process spins for half
//! of every millisecond: a stand-in for the CPU the drain's other processes take).
//!
//! Each way's figure is Cassandra's CPU per row while it writes, then with what follows until
//! Cassandra is idle (its flushes and compactions land unevenly: read that one over many reps).
//!
//! Run against the local stack: `dev/stack.sh up; eval "$(dev/stack.sh env)"; cargo run --release
//! --example drain_pattern [rows] [reps]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chatlog::process::arg_or;
use chatlog_store::messages::{BatchLimits, MessageWriter};
use chatlog_store::repo::latest::{LatestRow, LatestWriter};
use futures::{StreamExt, TryStreamExt};

/// Waits until Cassandra (`pid`) is idle: under a tenth of a core over 2 s, at most 3 min.
async fn until_idle(pid: u32) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(180) {
        let before = cassandra_cpu(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        if cassandra_cpu(pid) - before < 0.2 {
            return;
        }
    }
}

/// Cassandra's CPU seconds so far (user + system).
fn cassandra_cpu(pid: u32) -> f64 {
    chatlog::process::cpu_seconds(pid).unwrap_or(0.0)
}

const SESSIONS: usize = 200;

/// The `session_latest` rows of a batch: each session's highest seq.
fn latest_rows(chunk: &[chatlog_schemas::ChatMessage]) -> Vec<LatestRow> {
    let mut highest = std::collections::BTreeMap::new();
    for m in chunk {
        highest.insert(m.session_id.as_str(), m.seq);
    }
    let member = chatlog_store::window::member(1, &[b'a'; 260]);
    highest
        .into_iter()
        .map(|(s, seq)| LatestRow {
            session_id: s.to_owned(),
            seq,
            version: seq,
            member: member.clone(),
        })
        .collect()
}

/// Records of a consumer batch in P1's drain (run 12: 18 193 on average).
const DRAIN_BATCH: usize = 18_200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (rows, reps) = (arg_or(1, 500_000), arg_or(2, 3));
    let pid = chatlog::process::stack_pid("cassandra")
        .ok_or_else(|| anyhow::anyhow!("no Cassandra of the local stack (dev/stack.sh up)"))?;
    let (cql, config) = chatlog::fresh_keyspace("drainab").await;
    let writer = |concurrency| {
        MessageWriter::new(
            cql.clone(),
            &config.keyspace,
            BatchLimits {
                concurrency,
                ..BatchLimits::default()
            },
        )
    };
    let (w16, w32) = (writer(16).await?, writer(32).await?);
    let latest = LatestWriter::new(cql.clone(), &config.keyspace).await?;
    let ids: Vec<String> = (0..SESSIONS).map(|i| format!("s{i:05}")).collect();
    let content = vec![b'c'; 160];
    let mut next_seq = 0i64;
    // The next `rows` rows, round-robin over the sessions as the bench's workload sends them.
    let mut batch = |rows: usize| {
        let first = next_seq;
        next_seq += rows.div_ceil(SESSIONS) as i64;
        (0..rows)
            .map(|i| chatlog_schemas::ChatMessage {
                content: content.clone(),
                ..chatlog_schemas::testing::message(
                    &ids[i % SESSIONS],
                    first + (i / SESSIONS) as i64 + 1,
                )
            })
            .collect::<Vec<_>>()
    };
    // Warm-up.
    w32.write(&batch(100_000)).await?;
    until_idle(pid).await;
    let ways = ["loader", "drain", "drain-x2", "drain-c32", "loader+burn"];
    println!("{rows} rows per measurement, {reps} reps");
    for rep in 0..reps {
        // Alternate the order so that no way always follows another's compaction.
        let order: Vec<&str> = if rep % 2 == 0 {
            ways.to_vec()
        } else {
            ways.iter().rev().copied().collect()
        };
        for way in order {
            let all = batch(rows);
            let burning = Arc::new(AtomicBool::new(way == "loader+burn"));
            let burner = {
                let burning = burning.clone();
                std::thread::spawn(move || {
                    while burning.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_micros(500) {
                            std::hint::spin_loop();
                        }
                        std::thread::sleep(Duration::from_micros(500));
                    }
                })
            };
            let (cpu0, t0) = (cassandra_cpu(pid), Instant::now());
            match way {
                "loader" | "loader+burn" => {
                    w32.write(&all).await?;
                }
                _ => {
                    let w = if way == "drain-c32" { &w32 } else { &w16 };
                    // drain-x2: two batches in flight, the next batch's rows go out while the
                    // last ones of the previous batch are still being written.
                    let in_flight = if way == "drain-x2" { 2 } else { 1 };
                    futures::stream::iter(all.chunks(DRAIN_BATCH).map(|chunk| {
                        let latest = &latest;
                        async move {
                            let rows = latest_rows(chunk);
                            let (a, b) = tokio::join!(w.write(chunk), latest.write(&rows));
                            a?;
                            b?;
                            anyhow::Ok(())
                        }
                    }))
                    .buffered(in_flight)
                    .try_collect::<Vec<()>>()
                    .await?;
                }
            }
            let (cpu, secs) = (cassandra_cpu(pid) - cpu0, t0.elapsed().as_secs_f64());
            burning.store(false, Ordering::Relaxed);
            let _ = burner.join();
            // Then until Cassandra is idle (under a tenth of a core over 2 s, at most 3 min):
            // the flushes and compactions these rows caused count as theirs.
            let settle = Instant::now();
            until_idle(pid).await;
            let with_settle = cassandra_cpu(pid) - cpu0;
            println!(
                "rep {rep} {way:>12}: Cassandra {:6.2} µs CPU per row while writing, {:6.2} with \
                 its settle ({:4.0} s), {:8.0} rows/s",
                cpu / rows as f64 * 1e6,
                with_settle / rows as f64 * 1e6,
                settle.elapsed().as_secs_f64(),
                rows as f64 / secs
            );
        }
    }
    Ok(())
}
