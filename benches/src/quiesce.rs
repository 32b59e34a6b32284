//! Cassandra brought to rest before a timed write phase: every table the run wrote flushed, and
//! no flush or compaction left running.
//!
//! # Why
//!
//! P1 compares phases that each write the same 2 M rows — the loader, the consumer's drain, the
//! loader again — one after the other on one node. Cassandra defers part of every phase's cost:
//! the rows still in the memtables when it ends are flushed, and the SSTables that flush
//! completes are compacted, during whatever runs next. Stop 26 read it in the node's log (a
//! `--only pipeline` run): the 80 MiB left of the first loader run was flushed 10 s into the drain,
//! which gave its table a fourth SSTable, and the compaction of those four (~530 MB) took the
//! drain's next 20 s; the loader's run after the drain met no compaction at all (the drain's table
//! reached four SSTables only in the live phase after it). The CPU settle the phases already waited
//! for could not see this: at a phase's start the node is idle, the work comes due later.
//!
//! # How
//!
//! The stack has no JMX (no `nodetool flush`), but a schema change flushes the table it changes
//! (the node logs `Enqueuing flush of <table>, Reason: SCHEMA_CHANGE`, and the `ALTER` returns
//! once the flush is queued) — a change that changes something: the comment carries the time.
//! This is how Cassandra 4 and 5 reload a table's metadata (observed, not a documented promise;
//! the node's log shows whether it still holds). So every table of the given keyspaces gets its
//! comment set, then the node's flush and compaction thread pools (`system_views.thread_pools`)
//! and its SSTable tasks (`system_views.sstable_tasks`) are read until they stay empty. A node
//! without those views (ScyllaDB, Cassandra 3) is flushed and not waited for (`at_rest` false).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use scylla::client::session::Session;

/// The thread pools whose work a flush sets off (names as `system_views.thread_pools` gives them,
/// matched case-insensitively by these fragments).
const POOLS: [&str; 2] = ["flush", "compaction"];

/// How often the thread pools are read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// Consecutive idle reads that count as at rest: a compaction is queued by the flush's post-flush
/// step, so one idle read right after a flush could come before it.
const IDLE_READS: usize = 3;

/// What bringing the node to rest took.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rest {
    /// Tables flushed.
    pub tables: usize,
    /// Seconds from the first flush to rest (or to the end of the patience).
    pub seconds: f64,
    /// Whether the node came to rest within the patience.
    pub at_rest: bool,
}

/// Flushes every table of `keyspaces` and waits (at most `patience`) until no flush or compaction
/// runs or waits on the node.
pub async fn flush_and_wait(
    session: &Session,
    keyspaces: &[&str],
    patience: Duration,
) -> Result<Rest> {
    let started = Instant::now();
    // A new comment each time: an ALTER that changes nothing is no schema change, and flushes
    // nothing (the first version of this set the same comment every time, and only its first
    // call flushed).
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut tables = 0;
    for ks in keyspaces {
        let names = session
            .query_unpaged(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (ks,),
            )
            .await
            .with_context(|| format!("list the tables of {ks}"))?
            .into_rows_result()?;
        for name in names.rows::<(String,)>()? {
            let (table,) = name?;
            session
                .query_unpaged(
                    format!(
                        "ALTER TABLE {ks}.{table} WITH comment = \
                         'chatlog bench: flushed before a timed phase ({stamp})'"
                    ),
                    (),
                )
                .await
                .with_context(|| format!("flush {ks}.{table} (a schema change flushes)"))?;
            tables += 1;
        }
    }
    let mut idle = 0;
    while started.elapsed() < patience {
        let Ok(busy) = busy(session).await else {
            // No views to watch: flushed, not known to be at rest.
            break;
        };
        idle = if busy { 0 } else { idle + 1 };
        if idle >= IDLE_READS {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Rest {
        tables,
        seconds: started.elapsed().as_secs_f64(),
        at_rest: idle >= IDLE_READS,
    })
}

/// Whether a flush or compaction runs or waits on the node, or an SSTable task is under way.
async fn busy(session: &Session) -> Result<bool> {
    let pools = session
        .query_unpaged(
            "SELECT name, active_tasks, pending_tasks FROM system_views.thread_pools",
            (),
        )
        .await
        .context("read system_views.thread_pools")?
        .into_rows_result()?;
    for row in pools.rows::<(String, i32, i32)>()? {
        let (name, active, pending) = row?;
        let name = name.to_lowercase();
        if POOLS.iter().any(|p| name.contains(p)) && active + pending > 0 {
            return Ok(true);
        }
    }
    let tasks = session
        .query_unpaged("SELECT keyspace_name FROM system_views.sstable_tasks", ())
        .await
        .context("read system_views.sstable_tasks")?
        .into_rows_result()?;
    Ok(tasks.rows_num() > 0)
}
